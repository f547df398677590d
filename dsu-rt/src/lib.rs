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

// The layers, bottom to top: abi, call, package, update, sockets, handoff, manager, control,
// runtime; each imports only from the layers below it (DESIGN.md, section 3; checked by
// tests/layers.rs).
// With `--cfg dsu_off`, `off` stands in for everything but the error type, the build facts,
// signing and the named descriptors.
mod abi;
#[cfg(not(dsu_off))]
mod call;
#[cfg(not(dsu_off))]
pub mod control;
mod error;
#[cfg(not(dsu_off))]
mod handoff;
#[cfg(not(dsu_off))]
mod manager;
#[cfg(dsu_off)]
mod off;
pub mod package;
#[cfg(not(dsu_off))]
mod runtime;
pub mod sockets;
#[cfg(not(dsu_off))]
mod update;

// With the `shared` feature, tokio, tracing and log come from the one dynamic library the
// program and its patches share; naming it here is what links it.
#[cfg(feature = "shared")]
use dsu_shared as _;

// The public API.
pub use abi::build;
#[cfg(not(dsu_off))]
pub use abi::fingerprint;
pub use abi::lazy::LazyMap;
pub use abi::staged::write_staged;
#[cfg(not(dsu_off))]
pub use call::component::{register, Component, Handle, State};
#[cfg(not(dsu_off))]
pub use call::global::Global;
#[cfg(not(dsu_off))]
pub use call::thread::{
    register_task, register_thread, TaskRegistration, TaskUpdatePoint, ThreadRegistration,
};
pub use dsu_macros::{component, global, protocol, state, transfer};
pub use error::Error;
#[cfg(dsu_off)]
pub use off::{
    register, register_task, register_thread, Component, Global, Handle, Runtime, RuntimeBuilder,
    TaskRegistration, TaskUpdatePoint, ThreadRegistration,
};
#[cfg(not(dsu_off))]
pub use package::policy::{Policy, TimeOfDay};
pub use package::signing;
#[cfg(not(dsu_off))]
pub use package::{Constraints, Engine, Manifest, Package};
#[cfg(not(dsu_off))]
pub use runtime::{Runtime, RuntimeBuilder};
pub use sockets::{listener, Connection, Listener};
#[cfg(feature = "tokio")]
pub use sockets::{AsyncConnection, AsyncListener, HandoffSignal};
#[cfg(not(dsu_off))]
pub use update::convert::Conversion;
#[cfg(not(dsu_off))]
pub use update::record::{
    ApplyOptions, BusyCall, ComponentStatus, Outcome, Precopy, Status, UpdateRecord, UpdateReport,
};

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
pub mod __private {
    pub use crate::off::private::*;
    pub use crate::patch_root;
}

/// Not public API: what the macros' generated code uses.
#[cfg(not(dsu_off))]
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::alloc::ForwardAlloc;
    pub use crate::abi::artifact::{COMPONENTS, GLOBALS, GLOBAL_TRANSFERS, STATES, TRANSFERS};
    pub use crate::abi::desc::{
        CallResult, ComponentDesc, ErasedFn, FieldLayout, GlobalDesc, GlobalTransferDesc,
        IndexCell, MethodDesc, ProtocolRef, ProtocolRole, Receiver, StateKind, StateLayout,
        TransferDesc, TransferFailure,
    };
    pub use crate::abi::fingerprint;
    pub use crate::abi::lazy::{lazy_drop, lazy_free, lazy_peek, LazyStep};
    pub use crate::abi::root::{patch_root_module, PatchDescriptors, PatchRoot, PatchRootRef};
    pub use crate::abi::transfer::{
        free_moved_entries, generated_transfer, moved, user_transfer, user_transfer_fallible,
        Moved, MovedEntries, MovedMap,
    };
    pub use crate::call::component::{drop_state, Component, Proxy, RawHandle, State};
    pub use crate::call::future::{call_future, stale_call_future, AsyncCall, CallFuture};
    pub use crate::call::global::Global;
    pub use crate::call::invoke::{catch, finish, stale_call, Call};
    pub use crate::call::thread::update_point;
    pub use crate::handoff::{load_state, save_state};
    pub use crate::patch_root;
    pub use crate::update::load::adopt;
    pub use abi_stable;
    pub use linkme;
    pub use serde;
}

/// Not public API: the entry points of the fuzz targets in fuzz/.
#[cfg(not(dsu_off))]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::handoff::fuzzing::{read_channel, seed_channel};
}

#[cfg(not(dsu_off))]
/// Defines a patch's root: its layout-checked abi_stable header, its `adopt` entry point and
/// its forwarding global allocator. cargo-dsu appends `::dsu::__private::patch_root!{}` to the
/// crate root of every patch it generates; a program never writes it.
#[doc(hidden)]
#[macro_export]
macro_rules! patch_root {
    () => {
        #[global_allocator]
        static __DSU_ALLOC: $crate::__private::ForwardAlloc = $crate::__private::ForwardAlloc::new();

        #[doc(hidden)]
        unsafe extern "C" fn __dsu_adopt(host: *const ()) {
            // SAFETY: the loader passes its `HostContext` after checking the toolchain.
            unsafe { $crate::__private::adopt(host, &__DSU_ALLOC) }
        }

        #[doc(hidden)]
        fn __dsu_root_module() -> $crate::__private::PatchRootRef {
            $crate::__private::patch_root_module(__dsu_adopt)
        }

        // What `#[abi_stable::export_root_module]` expands to, with paths through this crate so
        // that the patch needs no direct dependency on abi_stable.
        #[no_mangle]
        #[doc(hidden)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::abi_stable::library::LibHeader = {
            pub extern "C" fn _sabi_erased_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(__dsu_root_module)
            }
            type __SabiModule = <$crate::__private::PatchRootRef as $crate::__private::abi_stable::library::IntoRootModuleResult>::Module;
            // SAFETY: `_sabi_erased_module` returns the root module of type `__SabiModule`.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<__SabiModule>(
                    _sabi_erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
