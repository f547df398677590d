//! # dsu: dynamic software updating for Rust
//!
//! A program built from `#[dsu::component]`s can be updated while it runs: a patch built from a
//! newer version of its source is loaded into the process, the changed components are brought
//! to a safe state (*prepare to die*), their tables are swapped, their state is transferred to
//! the new types, and they resume. An update either happens completely or not at all.
//!
//! ```
//! #[dsu::state]
//! #[derive(Default)]
//! pub struct Counter { n: u64 }
//!
//! #[dsu::component]
//! impl Counter {
//!     pub fn add(&mut self, k: u64) -> u64 { self.n += k; self.n }
//!     pub fn get(&self) -> u64 { self.n }
//! }
//!
//! fn main() -> Result<(), dsu::Error> {
//!     // A real program also gives `.control_socket("counter.sock")`, where
//!     // `cargo dsu apply` and `cargo dsu status` reach it.
//!     let rt = dsu::Runtime::builder().version("1.0.0").start()?;
//!     let counter = rt.register(Counter::default());
//!     let other = counter.clone(); // handles are Clone + Send + Sync
//!     std::thread::spawn(move || other.add(2)).join().unwrap();
//!     assert_eq!(counter.add(1), 3); // through the component's gate and table
//!     assert_eq!(rt.status().components[0].id, "Counter");
//!     Ok(())
//! }
//! ```
//!
//! ## Building without dsu
//!
//! `RUSTFLAGS="--cfg dsu_off"` compiles the same source with the runtime left out: a component
//! handle is an `Arc<RwLock<T>>` whose methods take the lock and call the method, globals are
//! plain statics, and no control socket is opened, so **such a build cannot be updated**. It is
//! the baseline dsu's cost is measured against (see `off.rs` and BENCHMARKS.md).
//!
//! See DESIGN.md for the architecture.

// With `--cfg dsu_off`, `off` stands in for everything but the error type and the build facts.
#[cfg(not(dsu_off))]
mod alloc;
#[cfg(not(dsu_off))]
mod component;
#[cfg(not(dsu_off))]
mod context;
#[cfg(not(dsu_off))]
pub mod control;
#[cfg(not(dsu_off))]
mod desc;
mod error;
#[cfg(not(dsu_off))]
pub mod fingerprint;
#[cfg(not(dsu_off))]
mod gate;
#[cfg(not(dsu_off))]
mod global;
#[cfg(not(dsu_off))]
mod handoff;
#[cfg(not(dsu_off))]
mod loader;
#[cfg(not(dsu_off))]
mod manager;
#[cfg(dsu_off)]
mod off;
#[cfg(not(dsu_off))]
pub mod package;
#[cfg(not(dsu_off))]
mod policy;
#[cfg(not(dsu_off))]
mod protocol;
#[cfg(not(dsu_off))]
mod runtime;
/// Signed packages: keys and signatures.
// With `dsu_off` no package is read, so signing and checking go unused.
#[cfg_attr(dsu_off, allow(dead_code))]
pub mod signing;
/// Named descriptors: inherited listeners (systemd socket activation) and passing descriptors
/// between processes.
pub mod sockets;
#[cfg(not(dsu_off))]
mod thread;

#[cfg(not(dsu_off))]
pub use component::{register, Component, Handle, State};
pub use dsu_macros::{component, global, protocol, state, transfer};
pub use error::Error;
#[cfg(not(dsu_off))]
pub use global::Global;
#[cfg(not(dsu_off))]
pub use manager::{
    ApplyOptions, BusyCall, ComponentStatus, Outcome, Status, UpdateRecord, UpdateReport,
};
#[cfg(dsu_off)]
pub use off::{
    register, register_thread, Component, Global, Handle, Runtime, RuntimeBuilder,
    ThreadRegistration,
};
#[cfg(not(dsu_off))]
pub use package::{Constraints, Engine, Manifest, Package};
#[cfg(not(dsu_off))]
pub use policy::{Policy, TimeOfDay};
#[cfg(not(dsu_off))]
pub use runtime::{Runtime, RuntimeBuilder};
pub use sockets::{listener, Connection, Listener};
#[cfg(not(dsu_off))]
pub use thread::{register_thread, ThreadRegistration};

/// A thread-level safe point. A thread registered with [`Runtime::register_thread`] parks here
/// while an update that requires parked threads is applied; elsewhere it costs one relaxed load
/// (and nothing with `--cfg dsu_off`).
#[macro_export]
macro_rules! update_point {
    () => {
        $crate::__private::update_point()
    };
}

/// Not public API: what the macros' `dsu_off` expansions use.
#[cfg(dsu_off)]
#[doc(hidden)]
pub use off::private as __private;

/// Facts about this build of the runtime, compared against a patch's before it is loaded.
pub mod build {
    /// The rustc that built this copy of the runtime (`release (commit)`).
    pub const RUSTC: &str = env!("DSU_RUSTC_VERSION");
    /// The target triple.
    pub const TARGET: &str = env!("DSU_TARGET");
    /// The runtime's version.
    pub const DSU_RT: &str = env!("CARGO_PKG_VERSION");
    /// Whether debug assertions are on (a crate may change its types' layout with them).
    pub const DEBUG_ASSERTIONS: bool = cfg!(debug_assertions);
}

/// Not public API: what the macros' generated code uses.
#[cfg(not(dsu_off))]
#[doc(hidden)]
pub mod __private {
    pub use crate::alloc::ForwardAlloc;
    pub use crate::component::{
        catch, drop_state, finish, stale_call, Call, Component, Proxy, RawHandle, State,
    };
    pub use crate::context::adopt;
    pub use crate::desc::{
        CallResult, ComponentDesc, ErasedFn, FieldLayout, GlobalDesc, GlobalTransferDesc,
        IndexCell, MethodDesc, ProtocolRole, Receiver, StateKind, StateLayout, TransferDesc,
        TransferFailure,
    };
    pub use crate::fingerprint;
    pub use crate::global::Global;
    pub use crate::handoff::{load_state, save_state};
    pub use crate::loader::{patch_root_module, PatchDescriptors, PatchRoot, PatchRootRef};
    pub use crate::patch_root;
    pub use crate::protocol::ProtocolRef;
    pub use crate::thread::update_point;
    pub use abi_stable;
    pub use linkme;
    pub use serde;

    pub use crate::loader::transfer::{
        generated_transfer, moved, user_transfer, user_transfer_fallible, Moved,
    };

    /// Every component of this artifact (host binary or patch).
    #[linkme::distributed_slice]
    pub static COMPONENTS: [&'static ComponentDesc];
    /// Every state type of this artifact, including a patch's `old` copies.
    #[linkme::distributed_slice]
    pub static STATES: [&'static StateLayout];
    /// Every `#[dsu::global]` of this artifact.
    #[linkme::distributed_slice]
    pub static GLOBALS: [&'static GlobalDesc];
    /// Every state transfer of this artifact (only patches have any).
    #[linkme::distributed_slice]
    pub static TRANSFERS: [&'static TransferDesc];
    /// Every global transfer of this artifact (only patches have any).
    #[linkme::distributed_slice]
    pub static GLOBAL_TRANSFERS: [&'static GlobalTransferDesc];
}
