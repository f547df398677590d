//! Case `global_change`: the `#[dsu::global] static LIMIT: Mutex<u32>` (a byte quota) is used by
//! two components, `Uploads` (reads it) and `Admin` (sets it). In v2 its type becomes
//! `Mutex<u64>` and both components' code changes accordingly; `main` does not touch it.
//! Expected: category 3 (global data shared by several components).

use std::sync::Mutex;

/// The quota of bytes all uploads together may use.
#[dsu::global]
static LIMIT: Mutex<u64> = Mutex::new(1 << 20);

#[dsu::state]
#[derive(Default)]
pub struct Uploads {
    used: u64,
}

#[dsu::component]
impl Uploads {
    pub fn upload(&mut self, bytes: u32) -> bool {
        let limit = *LIMIT.lock().unwrap();
        let fits = self.used + u64::from(bytes) <= limit;
        if fits {
            self.used += u64::from(bytes);
        }
        fits
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Admin {
    changes: u64,
}

#[dsu::component]
impl Admin {
    pub fn set_limit(&mut self, bytes: u32) -> u64 {
        *LIMIT.lock().unwrap() = u64::from(bytes);
        self.changes += 1;
        self.changes
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let uploads = rt.register(Uploads::default());
    let admin = rt.register(Admin::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.split_once(' ') {
            Some(("limit", n)) => println!("change #{}", admin.set_limit(n.parse().unwrap_or(0))),
            _ => println!("{}", uploads.upload(line.trim().parse().unwrap_or(0))),
        }
    }
}
