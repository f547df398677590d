#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn get(&self) -> u64 {
        self.n
    }

    pub fn prepare_to_die() {}
}

fn main() {}
