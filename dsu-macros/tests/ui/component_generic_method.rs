#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn add<T: Into<u64>>(&mut self, k: T) -> u64 {
        self.n += k.into();
        self.n
    }
}

fn main() {}
