//! `#[dsu::protocol]`: counting protocol instances in progress.
//!
//! A protocol is a sequence of calls (begin ... end) that an update must not split. The runtime
//! counts instances in progress per protocol name. While an update waits for a protocol to be
//! idle, new `begin` calls from outside any dsu call wait; calls that continue or end an
//! instance go on, so the count can reach zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::thread::{self, lock};
use crate::abi::desc::ProtocolRef;
use crate::abi::shared::Shared;

/// The runtime-owned state of one protocol (shared by host and patches).
pub struct ProtocolState {
    pub(crate) name: String,
    pub(crate) active: AtomicI64,
    pub(crate) blocked: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl ProtocolState {
    fn new(name: &str) -> Self {
        ProtocolState {
            name: name.to_string(),
            active: AtomicI64::new(0),
            blocked: AtomicBool::new(false),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    /// Instances in progress.
    pub fn active(&self) -> i64 {
        // Relaxed: a count read for decisions re-checked under the lock, and for reports.
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn block(&self) {
        let _g = lock(&self.lock);
        self.blocked.store(true, Ordering::Relaxed);
    }

    pub(crate) fn unblock(&self) {
        let _g = lock(&self.lock);
        self.blocked.store(false, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// Waits until no instance is in progress or `deadline` passes.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> bool {
        let mut g = lock(&self.lock);
        loop {
            if self.active() <= 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

// `ProtocolRef` is declared with the descriptors (`abi/desc.rs`); its behaviour is here.
impl ProtocolRef {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The shared state.
    pub fn state(&self) -> &'static ProtocolState {
        // Acquire: pairs with the Release below, so the pointee is initialised.
        let p = self.resolved.load(Ordering::Acquire) as *const ProtocolState;
        if !p.is_null() {
            // SAFETY: only ever set to a leaked `Arc` owned by the registry, never freed.
            return unsafe { &*p };
        }
        let st = state(self.name);
        self.resolved
            .store(st as *const _ as *mut _, Ordering::Release);
        st
    }

    /// Before a `begin` call: waits while an update is quiescing this protocol (only calls from
    /// outside any dsu call wait; nested ones are part of work the update is draining).
    #[inline]
    pub fn before_begin(&self) {
        let st = self.state();
        // Relaxed: re-checked under the lock below.
        if !st.blocked.load(Ordering::Relaxed) {
            return;
        }
        let t = thread::current();
        // SAFETY: null or this thread's live info.
        if unsafe { t.as_ref() }.is_some_and(|t| t.depth() > 0) {
            return;
        }
        let mut g = lock(&st.lock);
        while st.blocked.load(Ordering::Relaxed) {
            g = st.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// After a `begin` call returned.
    #[inline]
    pub fn begun(&self) {
        // Relaxed: the count is read under the lock by waiters after `ended` notifies.
        self.state().active.fetch_add(1, Ordering::Relaxed);
    }

    /// After an `end` call returned.
    #[inline]
    pub fn ended(&self) {
        let st = self.state();
        let prev = st.active.fetch_sub(1, Ordering::Relaxed);
        if prev <= 0 {
            // An `end` without a `begin`: keep the count meaningful.
            st.active.fetch_add(1, Ordering::Relaxed);
        }
        if prev <= 1 {
            let _g = lock(&st.lock);
            st.changed.notify_all();
        }
    }
}

/// Every protocol's state, by name (the host's, also in a patch).
static PROTOCOLS: Shared<Mutex<HashMap<String, Arc<ProtocolState>>>> =
    Shared::new("protocols", || Mutex::new(HashMap::new()));

/// The shared state of the protocol `name`, created on first use.
pub fn state(name: &str) -> &'static ProtocolState {
    let mut map = lock(PROTOCOLS.get());
    let st = map
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(ProtocolState::new(name)))
        .clone();
    // The registry owns the Arc for the life of the process.
    // SAFETY: the registry and its entries are never dropped, so the pointee lives forever.
    unsafe { &*Arc::as_ptr(&st) }
}
