#[dsu::state]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Default for Counter {
    fn default() -> Self {
        Counter { n: 0 }
    }
}

fn main() {}
