//! The entry gate of a component instance.
//!
//! One word of state: a writer bit (a `&mut self` call or the update manager holds the
//! component exclusively), a pending bit (an update is preparing: new *outer* calls wait), a
//! waiters bit (someone sleeps on the condvar) and a count of shared holders.
//!
//! Orderings: entering the gate is an `Acquire` and leaving it a `Release`, so everything a
//! call did to the state happens-before the next exclusive holder (another call or the update
//! manager, which swaps tables and transfers state while it holds the writer bit). Setting the
//! pending bit is a plain read-modify-write with no data attached (`Relaxed` would do; `AcqRel`
//! is used so the manager's observation of the counts that follow is ordered after it). The
//! waiters bit is only set with the condvar's mutex held and by a compare-exchange against the
//! exact blocked state the waiter observed; every release that sees the bit takes the mutex
//! before notifying, so no wakeup is lost.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::thread::{lock, ThreadInfo};

const WRITER: usize = 1;
const PENDING: usize = 2;
const WAITERS: usize = 4;
const READER: usize = 8;
const READERS: usize = !(READER - 1);

/// See the module documentation.
pub struct Gate {
    state: AtomicUsize,
    /// The thread holding the writer bit for a call (null when it is the manager or free).
    owner: AtomicPtr<ThreadInfo>,
    lock: Mutex<()>,
    wake: Condvar,
}

/// How a caller wants to enter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    Shared,
    Exclusive,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            state: AtomicUsize::new(0),
            owner: AtomicPtr::new(std::ptr::null_mut()),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn blocks(s: usize, access: Access, nested: bool) -> bool {
        let pending = s & PENDING != 0 && !nested;
        match access {
            Access::Shared => s & WRITER != 0 || pending,
            Access::Exclusive => s & (WRITER | READERS) != 0 || pending,
        }
    }

    /// Enters the gate. `nested` is true when the thread is already inside a dsu call: such a
    /// call passes a pending update (it is part of a call chain the update waits to drain).
    #[inline]
    pub(crate) fn enter(&self, access: Access, me: *const ThreadInfo, nested: bool, who: &str) {
        match access {
            Access::Shared => {
                // Acquire: pairs with the Release of the previous exclusive holder.
                let prev = self.state.fetch_add(READER, Ordering::Acquire);
                if prev & (WRITER | PENDING) == 0 || (prev & WRITER == 0 && nested) {
                    return;
                }
                // Undo the optimistic increment; Release pairs with a drain check that may
                // have seen it.
                let prev = self.state.fetch_sub(READER, Ordering::Release);
                self.after_release(prev, READER);
            }
            Access::Exclusive => {
                // Acquire: pairs with the Release of the previous holder.
                if self
                    .state
                    .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.owner.store(me as *mut _, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.enter_slow(access, me, nested, who);
    }

    #[cold]
    fn enter_slow(&self, access: Access, me: *const ThreadInfo, nested: bool, who: &str) {
        let inside = || {
            // SAFETY: `me` is null or the live info of this thread.
            unsafe { me.as_ref() }.is_some_and(|t| t.is_inside(self as *const Gate as *const ()))
        };
        {
            let mut guard = lock(&self.lock);
            loop {
                let s = self.state.load(Ordering::Relaxed);
                if !Self::blocks(s, access, nested) {
                    let next = match access {
                        Access::Shared => s + READER,
                        Access::Exclusive => s | WRITER,
                    };
                    // Acquire: as in the fast path.
                    if self
                        .state
                        .compare_exchange(s, next, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        if access == Access::Exclusive {
                            self.owner.store(me as *mut _, Ordering::Relaxed);
                        }
                        return;
                    }
                    continue;
                }
                // A thread waiting for a gate it is itself holding would wait forever.
                let self_owned = s & WRITER != 0
                    && !me.is_null()
                    && std::ptr::eq(self.owner.load(Ordering::Relaxed), me);
                if self_owned || (access == Access::Exclusive && s & READERS != 0 && inside()) {
                    drop(guard);
                    panic!(
                        "dsu: re-entrant call `{who}`: this thread is already inside a call on \
                         this component instance and would deadlock; call the method directly \
                         on `self` instead of through a handle"
                    );
                }
                if s & WAITERS == 0
                    && self
                        .state
                        .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err()
                {
                    continue;
                }
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Leaves the gate.
    #[inline]
    pub(crate) fn leave(&self, access: Access) {
        match access {
            Access::Shared => {
                // Release: publishes this call's effects to the next exclusive holder.
                let prev = self.state.fetch_sub(READER, Ordering::Release);
                self.after_release(prev, READER);
            }
            Access::Exclusive => {
                self.owner.store(std::ptr::null_mut(), Ordering::Relaxed);
                // Release: as above.
                let prev = self.state.fetch_and(!WRITER, Ordering::Release);
                self.after_release(prev, WRITER);
            }
        }
    }

    #[inline]
    fn after_release(&self, prev: usize, released: usize) {
        if prev & WAITERS != 0 {
            let now = if released == WRITER {
                prev & !WRITER
            } else {
                prev - READER
            };
            // Only a release that can unblock someone needs to wake: the last reader or a writer.
            if now & (READERS | WRITER) == 0 || released == WRITER {
                self.wake_all();
            }
        }
    }

    #[cold]
    fn wake_all(&self) {
        let _g = lock(&self.lock);
        // Relaxed: the waiters re-check the state under the mutex.
        self.state.fetch_and(!WAITERS, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// Marks the gate pending: from now on new outer calls wait.
    pub(crate) fn set_pending(&self) {
        self.state.fetch_or(PENDING, Ordering::AcqRel);
    }

    /// Clears the pending bit (update aborted) and wakes the waiting callers.
    pub(crate) fn clear_pending(&self) {
        let prev = self.state.fetch_and(!PENDING, Ordering::AcqRel);
        if prev & WAITERS != 0 {
            self.wake_all();
        }
    }

    /// Takes the gate for the update manager if no call is in flight. The gate must be pending.
    pub(crate) fn try_lock_for_update(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        if s & (WRITER | READERS) != 0 {
            return false;
        }
        // Acquire: everything the last calls did to the state is visible to the manager.
        self.state
            .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases a gate taken by `try_lock_for_update`, clearing the pending bit too.
    pub(crate) fn unlock_after_update(&self) {
        // Release: the new table and state are published to every caller that enters next.
        let prev = self.state.fetch_and(!(WRITER | PENDING), Ordering::Release);
        if prev & WAITERS != 0 {
            self.wake_all();
        }
    }

    /// Releases the manager's hold but keeps the gate pending (another gate of the same update
    /// could not be taken; the manager will try again).
    pub(crate) fn unlock_keep_pending(&self) {
        let prev = self.state.fetch_and(!WRITER, Ordering::Release);
        if prev & WAITERS != 0 {
            self.wake_all();
        }
    }

    /// Calls in flight: (shared holders, whether an exclusive call holds it).
    pub(crate) fn in_flight(&self) -> (usize, bool) {
        let s = self.state.load(Ordering::Relaxed);
        (s / READER, s & WRITER != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::thread;

    fn me() -> *const ThreadInfo {
        thread::current()
    }

    #[test]
    fn shared_calls_overlap_and_exclusive_waits() {
        let g = Gate::new();
        g.enter(Access::Shared, me(), false, "t");
        g.enter(Access::Shared, me(), true, "t");
        assert_eq!(g.in_flight(), (2, false));
        g.leave(Access::Shared);
        g.leave(Access::Shared);
        g.enter(Access::Exclusive, me(), false, "t");
        assert_eq!(g.in_flight(), (0, true));
        g.leave(Access::Exclusive);
        assert_eq!(g.in_flight(), (0, false));
    }

    #[test]
    fn pending_blocks_outer_calls_but_not_nested_ones() {
        let g = Arc::new(Gate::new());
        g.set_pending();
        // A nested call passes.
        g.enter(Access::Shared, me(), true, "t");
        g.leave(Access::Shared);
        g.enter(Access::Exclusive, me(), true, "t");
        g.leave(Access::Exclusive);
        // An outer call waits until the pending bit is cleared.
        let entered = Arc::new(AtomicU64::new(0));
        let h = {
            let (g, entered) = (g.clone(), entered.clone());
            std::thread::spawn(move || {
                g.enter(Access::Shared, thread::current(), false, "t");
                entered.store(1, Ordering::SeqCst);
                g.leave(Access::Shared);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            entered.load(Ordering::SeqCst),
            0,
            "outer call passed a pending gate"
        );
        assert!(g.try_lock_for_update());
        g.unlock_after_update();
        h.join().unwrap();
        assert_eq!(entered.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn manager_cannot_lock_while_a_call_is_in_flight() {
        let g = Gate::new();
        g.enter(Access::Shared, me(), false, "t");
        g.set_pending();
        assert!(!g.try_lock_for_update());
        g.leave(Access::Shared);
        assert!(g.try_lock_for_update());
        g.unlock_after_update();
        assert_eq!(g.in_flight(), (0, false));
    }

    /// Stress: many threads mixing shared and exclusive calls while a "manager" repeatedly
    /// takes the gate; exclusive sections and the manager's hold must never overlap anything.
    #[test]
    fn stress_exclusion_holds() {
        let g = Arc::new(Gate::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let writers = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut hs = Vec::new();
        for i in 0..4 {
            let (g, inside, writers, stop) =
                (g.clone(), inside.clone(), writers.clone(), stop.clone());
            hs.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let excl = (n + i) % 3 == 0;
                    let acc = if excl {
                        Access::Exclusive
                    } else {
                        Access::Shared
                    };
                    g.enter(acc, thread::current(), false, "t");
                    if excl {
                        assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0);
                        assert_eq!(inside.load(Ordering::SeqCst), 0);
                        std::hint::spin_loop();
                        writers.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        inside.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(writers.load(Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                    g.leave(acc);
                    n += 1;
                }
                n
            }));
        }
        for _ in 0..200 {
            g.set_pending();
            while !g.try_lock_for_update() {
                std::thread::yield_now();
            }
            assert_eq!(inside.load(Ordering::SeqCst), 0);
            assert_eq!(writers.load(Ordering::SeqCst), 0);
            g.unlock_after_update();
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(total > 0);
        assert_eq!(g.in_flight(), (0, false));
    }

    #[test]
    #[should_panic(expected = "re-entrant call")]
    fn reentrant_exclusive_call_panics_instead_of_deadlocking() {
        let g = Gate::new();
        let t = me();
        // Simulate the call stack bookkeeping the call path does.
        // SAFETY: `t` is this thread's live info.
        let info = unsafe { &*t };
        info.slots[0].store(&g as *const Gate as *mut (), Ordering::Relaxed);
        info.depth.store(1, Ordering::Relaxed);
        g.enter(Access::Shared, t, false, "t");
        g.enter(Access::Exclusive, t, true, "Store::set");
    }
}
