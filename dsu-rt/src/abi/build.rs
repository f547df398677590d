//! Facts about this build of the runtime, compared against a patch's before it is loaded.

/// The rustc that built this copy of the runtime (`release (commit)`).
pub const RUSTC: &str = env!("DSU_RUSTC_VERSION");
/// The target triple.
pub const TARGET: &str = env!("DSU_TARGET");
/// The runtime's version.
pub const DSU_RT: &str = env!("CARGO_PKG_VERSION");
/// Whether debug assertions are on (a crate may change its types' layout with them).
pub const DEBUG_ASSERTIONS: bool = cfg!(debug_assertions);
