//! Records the toolchain this copy of the runtime was built with. A patch carries its own
//! copy of the runtime, so comparing these strings at load time tells whether host and patch
//! were built by the same rustc for the same target: the precondition for sharing any
//! Rust-layout type across the boundary.
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .expect("dsu-rt build script: could not run `rustc -vV`");
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .unwrap_or("unknown");
    let commit = text
        .lines()
        .find_map(|l| l.strip_prefix("commit-hash: "))
        .unwrap_or("unknown");
    println!("cargo:rustc-env=DSU_RUSTC_VERSION={release} ({commit})");
    println!(
        "cargo:rustc-env=DSU_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
