//! What the host and a patch share across the boundary: the descriptors the macros generate,
//! their fingerprints, the patch's root, the forwarding allocator and the process-wide
//! singletons a patch adopts. This layer imports nothing else of the crate.

// With `--cfg dsu_off` only the build facts are compiled.
#[cfg(not(dsu_off))]
pub(crate) mod alloc;
#[cfg(not(dsu_off))]
pub(crate) mod artifact;
pub mod build;
// The map a type change converts incrementally: plain data, in every build.
#[cfg(not(dsu_off))]
pub(crate) mod desc;
#[cfg(not(dsu_off))]
pub(crate) mod facts;
#[cfg(not(dsu_off))]
pub mod fingerprint;
pub(crate) mod lazy;
#[cfg(not(dsu_off))]
pub(crate) mod root;
#[cfg(not(dsu_off))]
pub(crate) mod shared;
// Files a `migrate` hook writes as part of its update; in every build.
pub(crate) mod staged;
#[cfg(not(dsu_off))]
pub(crate) mod trace;
#[cfg(not(dsu_off))]
pub(crate) mod transfer;
