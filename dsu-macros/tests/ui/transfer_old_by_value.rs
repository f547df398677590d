#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::transfer]
fn upgrade(old: old::Counter) -> Counter {
    Counter { n: old.n }
}

fn main() {}
