#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn add(&mut self, k: impl Into<u64>) -> u64 {
        self.n += k.into();
        self.n
    }
}

fn main() {}
