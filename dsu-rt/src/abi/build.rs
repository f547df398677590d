//! Facts about this build of the runtime, compared against a patch's before it is loaded.

/// Version of the loader/patch protocol. Bumped whenever what crosses the boundary changes
/// (and spelled out in `abi/facts.rs`).
pub const PATCH_FORMAT: u32 = 2;
/// The rustc that built this copy of the runtime (`release (commit)`).
pub const RUSTC: &str = env!("DSU_RUSTC_VERSION");
/// The target triple.
pub const TARGET: &str = env!("DSU_TARGET");
/// The runtime's version.
pub const DSU_RT: &str = env!("CARGO_PKG_VERSION");
/// Whether debug assertions are on (a crate may change its types' layout with them).
pub const DEBUG_ASSERTIONS: bool = cfg!(debug_assertions);
/// Whether this copy of the runtime links tokio, tracing and log from the shared library
/// (`dsu-shared`, the `shared` feature), rather than holding copies of its own.
pub const SHARED_DEPENDENCIES: bool = cfg!(feature = "shared");

/// Which build of each crate with process-wide state this copy of the runtime is linked
/// against, one `name=id` per crate. A `TypeId` is derived from its crate's identity, which
/// cargo derives from the crate's version and features, so two artifacts agree here only if
/// they were built against the same build of that crate. A patch built against another one
/// would read the host's tokio and tracing values (a channel, a span) with other layouts.
pub fn dependency_builds() -> String {
    use std::any::TypeId;
    use std::hash::{Hash, Hasher};
    let id = |t: TypeId| {
        // `DefaultHasher::new` has fixed keys: the same in every artifact of one toolchain.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    [
        ("tokio", id(TypeId::of::<tokio::sync::Semaphore>())),
        ("tracing-core", id(TypeId::of::<tracing_core::Level>())),
        ("log", id(TypeId::of::<log::Level>())),
    ]
    .iter()
    .map(|(name, id)| format!("{name}={id}"))
    .collect::<Vec<_>>()
    .join(" ")
}
