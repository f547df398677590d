#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component(id = "a", id = "b", nme = "x")]
impl Counter {
    pub fn get(&self) -> u64 {
        self.n
    }
}

fn main() {}
