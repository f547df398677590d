#[dsu::state]
pub struct Slot<T> {
    value: T,
}

fn main() {}
