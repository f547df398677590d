// A state is either carried by a hand-off (through serde) or rebuilt by `main`, not both.
#[dsu::state(rebuild, own_serde)]
pub struct Journal {
    written: u64,
}

fn main() {}
