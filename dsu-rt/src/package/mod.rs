//! Live update packages: the manifest and library a package carries, its signature, and the
//! policy that says when it may be applied. Imports: `abi` (the build facts) only.

#[cfg(not(dsu_off))]
mod manifest;
#[cfg(not(dsu_off))]
pub(crate) mod policy;
/// Signed packages: keys and signatures.
// With `dsu_off` no package is read, so signing and checking go unused.
#[cfg_attr(dsu_off, allow(dead_code))]
pub mod signing;

#[cfg(not(dsu_off))]
pub use manifest::*;
