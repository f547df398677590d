//! A patch's facts, as bytes in a section of its own (`.dsu_facts`): the build facts the
//! loader compares with the host's (patch format, runtime version, rustc, target, debug
//! assertions, shared dependencies). The loader reads them from the library file, before the
//! library is opened (`update/facts.rs`): opening it runs its static initialisers, so a
//! library refused on what its root module says would already have run code.
//!
//! The text is `DSUFACTS1` then one `key=value` per line, built at compile time (no pointer,
//! so nothing in the section needs relocating), and stays in every patch because the root
//! module refers to it.

use super::build::{DEBUG_ASSERTIONS, DSU_RT, PATCH_FORMAT, RUSTC, SHARED_DEPENDENCIES, TARGET};

/// Name of the section.
pub const SECTION: &str = ".dsu_facts";
/// How the section's text begins.
pub const MAGIC: &str = "DSUFACTS1\n";

const fn yes_no(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

const FORMAT_TEXT: &str = match PATCH_FORMAT {
    2 => "2",
    _ => panic!("spell the new PATCH_FORMAT out in abi/facts.rs"),
};

const PARTS: [&str; 13] = [
    MAGIC,
    "format=",
    FORMAT_TEXT,
    "\ndsu_rt=",
    DSU_RT,
    "\nrustc=",
    RUSTC,
    "\ntarget=",
    TARGET,
    "\ndebug_assertions=",
    yes_no(DEBUG_ASSERTIONS),
    "\nshared_dependencies=",
    yes_no(SHARED_DEPENDENCIES),
];

const fn total_len(parts: &[&str]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n + 1
}

const LEN: usize = total_len(&PARTS);

const fn joined(parts: &[&str]) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let mut at = 0;
    let mut i = 0;
    while i < parts.len() {
        let b = parts[i].as_bytes();
        let mut j = 0;
        while j < b.len() {
            out[at] = b[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out[at] = b'\n';
    out
}

/// This build's facts, in the section the loader reads.
#[used]
#[link_section = ".dsu_facts"]
pub static FACTS: [u8; LEN] = joined(&PARTS);

/// This build's facts as text: what a patch built here carries.
pub fn text() -> &'static str {
    std::str::from_utf8(&FACTS).expect("the facts are built from strings")
}

/// The value of `key` in a facts text.
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.strip_prefix(MAGIC)?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_are_this_builds() {
        let t = text();
        assert!(t.starts_with(MAGIC) && t.ends_with('\n'), "{t:?}");
        assert_eq!(value(t, "format"), Some(PATCH_FORMAT.to_string().as_str()));
        assert_eq!(value(t, "dsu_rt"), Some(DSU_RT));
        assert_eq!(value(t, "rustc"), Some(RUSTC));
        assert_eq!(value(t, "target"), Some(TARGET));
        assert_eq!(value(t, "debug_assertions"), Some(yes_no(DEBUG_ASSERTIONS)));
        assert_eq!(
            value(t, "shared_dependencies"),
            Some(yes_no(SHARED_DEPENDENCIES))
        );
        assert_eq!(value(t, "nothing"), None);
        assert_eq!(value("format=2\n", "format"), None, "no magic, no facts");
    }
}
