//! A Rust `dylib` that contains std statically cannot be linked beside the toolchain's
//! `libstd.so` ("cannot satisfy dependencies so `std` only shows up once", one error per std
//! crate). Say what to do instead, once, before rustc does.

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let prefer_dynamic = flags
        .windows(2)
        .any(|w| w[0] == "-C" && w[1] == "prefer-dynamic")
        || flags.contains(&"-Cprefer-dynamic");
    if !prefer_dynamic {
        eprintln!(
            "error: dsu-shared is a Rust dylib, and a program that links it must be built with \
             `-C prefer-dynamic` (std is then one shared library too).\n\
             Add this to the program's .cargo/config.toml (cargo dsu builds its patches with the \
             same file):\n\n\
             [build]\n\
             rustflags = [\"-C\", \"prefer-dynamic\", \"-C\", \"rpath\"]\n"
        );
        std::process::exit(1);
    }
}
