#[dsu::global]
static mut TOTAL: u64 = 0;

fn main() {}
