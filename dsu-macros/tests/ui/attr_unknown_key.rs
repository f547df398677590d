#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component(nme = "x")]
impl Counter {
    pub fn get(&self) -> u64 {
        self.n
    }
}

fn main() {}
