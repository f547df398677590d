//! Compile-time diagnostics of the dsu attribute macros.
//!
//! `tests/ui/*.rs` must fail to compile with exactly the errors in the `.stderr` next to them;
//! `tests/ui/pass/*.rs` must compile. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p dsu-macros --test ui`, then review every change.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
