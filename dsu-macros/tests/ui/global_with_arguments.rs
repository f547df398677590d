use std::sync::atomic::AtomicU64;

#[dsu::global(name = "total")]
static TOTAL: AtomicU64 = AtomicU64::new(0);

fn main() {}
