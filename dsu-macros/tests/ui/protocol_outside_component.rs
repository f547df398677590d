#[dsu::protocol(begin = "txn")]
pub fn begin() {}

fn main() {}
