#[dsu::state]
pub union Bits {
    int: u64,
    float: f64,
}

fn main() {}
