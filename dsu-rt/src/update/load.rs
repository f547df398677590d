//! Load: the patch library is opened from a path of its own, its root checked against this
//! process (format, dsu-rt, rustc, target, debug assertions) before any of its code runs, and
//! then its `adopt` is called with the host's context and its descriptors read. A library is
//! never unloaded (DESIGN.md says why).

use std::path::Path;
use std::sync::atomic::Ordering;

use abi_stable::library::lib_header_from_path;

use crate::abi::alloc::{ForwardAlloc, HostAlloc, HOST_ALLOC};
use crate::abi::build;
use crate::abi::root::{PatchDescriptors, PatchRootRef, PATCH_FORMAT};
use crate::abi::shared;
use crate::call::thread::{self, ThreadInfo};

/// What the host hands a patch at load: the process's shared registries (`abi/shared.rs`),
/// its thread-local call tracking, its allocator and its logger.
pub struct HostContext {
    shared: *const (),
    thread_current: fn() -> *const ThreadInfo,
    alloc: &'static HostAlloc,
    logger: &'static dyn log::Log,
    max_level: log::LevelFilter,
}

impl HostContext {
    fn of_this_process() -> HostContext {
        HostContext {
            shared: shared::host_table(),
            thread_current: thread::host_current,
            alloc: &HOST_ALLOC,
            logger: log::logger(),
            max_level: log::max_level(),
        }
    }
}

/// Runs inside the patch (its copy of this crate): adopts the host's context.
///
/// # Safety
/// `host` must point to a live [`HostContext`] built by a copy of this crate of the same
/// version, by the same rustc for the same target (the loader checks before calling).
pub unsafe fn adopt(host: *const (), alloc: &ForwardAlloc) {
    // SAFETY: caller's contract.
    let host = unsafe { &*(host as *const HostContext) };
    alloc.adopt(host.alloc);
    thread::FORWARD.store(host.thread_current as *mut (), Ordering::Relaxed);
    // SAFETY: the table is the host's, of this crate's version (caller's contract), and nothing
    // of the patch has run yet, so none of its `Shared` statics is resolved.
    unsafe { shared::adopt(host.shared) };
    // The patch's copy of `log` has its own (empty) logger slot: point it at the host's.
    let _ = log::set_logger(host.logger);
    log::set_max_level(host.max_level);
}

/// A loaded, adopted patch.
pub(crate) struct Loaded {
    pub(crate) descriptors: &'static PatchDescriptors,
}

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a dsu patch, or built against an incompatible dsu-rt: {0}")]
    Root(String),
    #[error("the patch was built {what} `{patch}`, this process {what} `{host}`; rebuild the patch with the base's toolchain")]
    Mismatch {
        what: &'static str,
        patch: String,
        host: String,
    },
}

/// abi_stable's errors span several indented lines; a refusal reason is one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens the library at `path` (a path no other library was loaded from), checks its root and
/// adopts the host's context. The library is never unloaded.
pub(crate) fn load(path: &Path) -> Result<Loaded, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| LoadError::Root(one_line(&e)))?;
    let root = header
        .init_root_module::<PatchRootRef>()
        .map_err(|e| LoadError::Root(one_line(&e)))?;
    let checks: [(&'static str, String, String); 5] = [
        (
            "with patch format",
            root.format().to_string(),
            PATCH_FORMAT.to_string(),
        ),
        (
            "against dsu-rt",
            root.dsu_rt().to_string(),
            build::DSU_RT.to_string(),
        ),
        (
            "with rustc",
            root.rustc().to_string(),
            build::RUSTC.to_string(),
        ),
        (
            "for target",
            root.target().to_string(),
            build::TARGET.to_string(),
        ),
        (
            "with debug assertions",
            root.debug_assertions().to_string(),
            build::DEBUG_ASSERTIONS.to_string(),
        ),
    ];
    for (what, patch, host) in checks {
        if patch != host {
            return Err(LoadError::Mismatch { what, patch, host });
        }
    }
    let host = Box::leak(Box::new(HostContext::of_this_process()));
    // SAFETY: the toolchain and runtime version match (checked above), so the patch's copy of
    // `HostContext` has this layout; the context lives for the rest of the process.
    unsafe { (root.adopt())(host as *const HostContext as *const ()) };
    let d = (root.descriptors())() as *const PatchDescriptors;
    // SAFETY: `descriptors` returns a leaked `PatchDescriptors` built by the same compiler and
    // runtime version (checked above).
    let descriptors = unsafe { &*d };
    Ok(Loaded { descriptors })
}
