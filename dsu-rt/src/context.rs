//! The process's runtime context: the one object a patch adopts.
//!
//! Everything the runtime knows lives behind one [`Context`], created by the host on first use.
//! A patch has its own copy of this crate, statics included; its root's `adopt` function points
//! the patch's copy at the host's context, thread registry, allocator and logger, so that the
//! registry, globals and handles a patch sees are the host's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use crate::alloc::{ForwardAlloc, HostAlloc, HOST_ALLOC};
use crate::component::TypeMap;
use crate::global::GlobalEntry;
use crate::manager::Manager;
use crate::protocol::ProtocolState;
use crate::thread::{self, ThreadInfo};

/// See the module documentation.
pub struct Context {
    pub(crate) components: Mutex<TypeMap>,
    pub(crate) globals: Mutex<HashMap<String, GlobalEntry>>,
    pub(crate) protocols: Mutex<HashMap<String, Arc<ProtocolState>>>,
    pub(crate) threads: thread::Registry,
    pub(crate) manager: Manager,
}

static CTX: AtomicPtr<Context> = AtomicPtr::new(std::ptr::null_mut());

/// The process's context (the host's, also when called from a patch).
#[inline]
pub(crate) fn ctx() -> &'static Context {
    // Acquire: pairs with the Release of the CAS in `init` (or the store in `adopt`), so the
    // context is fully initialised before it is used.
    let p = CTX.load(Ordering::Acquire);
    if p.is_null() {
        init()
    } else {
        // SAFETY: only ever set to a leaked context that lives for the rest of the process.
        unsafe { &*p }
    }
}

#[cold]
fn init() -> &'static Context {
    let fresh = Box::into_raw(Box::new(Context {
        components: Mutex::new(HashMap::new()),
        globals: Mutex::new(HashMap::new()),
        protocols: Mutex::new(HashMap::new()),
        threads: thread::Registry::new(),
        manager: Manager::new(),
    }));
    // AcqRel: publish ours (Release) or see the winner's (Acquire).
    match CTX.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just leaked; lives for the rest of the process.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above.
            unsafe { &*winner }
        }
    }
}

/// What the host hands a patch at load.
pub struct HostContext {
    pub(crate) ctx: &'static Context,
    pub(crate) thread_current: fn() -> *const ThreadInfo,
    pub(crate) alloc: &'static HostAlloc,
    pub(crate) logger: &'static dyn log::Log,
    pub(crate) max_level: log::LevelFilter,
}

impl HostContext {
    pub(crate) fn of_this_process() -> HostContext {
        HostContext {
            ctx: ctx(),
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
    CTX.store(
        host.ctx as *const Context as *mut Context,
        Ordering::Release,
    );
    // The patch's copy of `log` has its own (empty) logger slot: point it at the host's.
    let _ = log::set_logger(host.logger);
    log::set_max_level(host.max_level);
}
