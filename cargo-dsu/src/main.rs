//! `cargo dsu`: see the library for everything it does.

fn main() {
    std::process::exit(cargo_dsu::cli::main());
}
