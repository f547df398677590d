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
    shared_needs_prefer_dynamic();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}

/// With the `shared` feature the program links dsu-shared, a Rust dylib, and a Rust dylib
/// cannot be linked beside the toolchain's `libstd.so` unless std is a shared library too
/// (`-C prefer-dynamic`): rustc would say "cannot satisfy dependencies so `std` only shows up
/// once", once per std crate. Say what to do instead, once, before rustc does.
fn shared_needs_prefer_dynamic() {
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if std::env::var_os("CARGO_FEATURE_SHARED").is_none() {
        return;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let prefer_dynamic = flags
        .windows(2)
        .any(|w| w[0] == "-C" && w[1] == "prefer-dynamic")
        || flags.contains(&"-Cprefer-dynamic");
    if !prefer_dynamic {
        eprintln!(
            "error: dsu's `shared` feature links tokio, tracing and log as one Rust dylib \
             (dsu-shared), and a program that links a Rust dylib must be built with \
             `-C prefer-dynamic` (std is then a shared library too).\n\
             Add this to the program's .cargo/config.toml (cargo dsu builds its patches with the \
             same file):\n\n\
             [build]\n\
             rustflags = [\"-C\", \"prefer-dynamic\", \"-C\", \"rpath\"]\n"
        );
        std::process::exit(1);
    }
}
