// The transfer expands to `#[cfg(dsu_patch)]` items; a real crate declares that cfg (see the
// README), this test crate does not.
#![allow(unexpected_cfgs)]

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
