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
//! See DESIGN.md for the architecture.

mod alloc;
mod component;
mod context;
pub mod control;
mod desc;
mod error;
pub mod fingerprint;
mod gate;
mod global;
mod loader;
mod manager;
pub mod package;
mod policy;
mod protocol;
mod runtime;
mod thread;

pub use component::{register, Component, Handle, State};
pub use dsu_macros::{component, global, protocol, state, transfer};
pub use error::Error;
pub use global::Global;
pub use manager::{
    ApplyOptions, BusyCall, ComponentStatus, Outcome, Status, UpdateRecord, UpdateReport,
};
pub use package::{Constraints, Manifest, Package};
pub use policy::{Policy, TimeOfDay};
pub use runtime::{Runtime, RuntimeBuilder};
pub use thread::{register_thread, ThreadRegistration};

/// A thread-level safe point. A thread registered with [`Runtime::register_thread`] parks here
/// while an update that requires parked threads is applied; elsewhere it costs one relaxed load.
#[macro_export]
macro_rules! update_point {
    () => {
        $crate::__private::update_point()
    };
}

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
    pub use crate::loader::{patch_root_module, PatchDescriptors, PatchRoot, PatchRootRef};
    pub use crate::patch_root;
    pub use crate::protocol::ProtocolRef;
    pub use crate::thread::update_point;
    pub use abi_stable;
    pub use linkme;

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
