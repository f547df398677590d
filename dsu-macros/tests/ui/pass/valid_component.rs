// `#[dsu::transfer]` expands to `#[cfg(dsu_patch)]` items; a crate that does not declare that
// cfg (as this one, built by trybuild) gets an `unexpected_cfgs` warning.
#![allow(unexpected_cfgs)]

use std::sync::atomic::{AtomicU64, Ordering};

#[dsu::global]
static TOTAL: AtomicU64 = AtomicU64::new(0);

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        TOTAL.fetch_add(k, Ordering::Relaxed);
        self.n
    }

    pub fn get(&self) -> u64 {
        self.n
    }

    pub fn prepare_to_die(&mut self) {
        self.n = 0;
    }
}

#[dsu::state]
#[derive(Default)]
pub enum Txn {
    #[default]
    Idle,
    Open(Vec<String>),
}

#[dsu::component(id = "example.txn")]
impl Txn {
    #[dsu::protocol(begin = "txn")]
    pub fn begin(&mut self) {
        *self = Txn::Open(Vec::new());
    }

    pub fn write(&mut self, line: &str) -> bool {
        match self {
            Txn::Open(lines) => {
                lines.push(line.to_string());
                true
            }
            Txn::Idle => false,
        }
    }

    #[dsu::protocol(end = "txn")]
    pub fn commit(&mut self) -> Vec<String> {
        match std::mem::take(self) {
            Txn::Open(lines) => lines,
            Txn::Idle => Vec::new(),
        }
    }
}

/// Compiled only into patches (where `old::Counter` exists): checks the macro accepts the shape.
#[dsu::transfer]
fn upgrade_counter(old: &old::Counter) -> Counter {
    Counter { n: old.n }
}

fn main() {}
