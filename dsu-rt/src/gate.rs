//! The entry gate of a component instance.
//!
//! A gate is a reader-writer lock built for calls that mostly share: a shared (`&self`) call
//! must not write to a cache line that other cores' shared calls write too, or two threads
//! calling the same component run slower than one.
//!
//! - **The control word** holds a writer bit (a `&mut self` call or the update manager holds
//!   the component exclusively), a pending bit (an update is preparing: new *outer* calls
//!   wait), a waiters bit (someone sleeps on the condvar) and a mask of the reader stripes in
//!   use.
//! - **Reader stripes:** shared holders are counted in [`STRIPES`] cache-line-sized counters,
//!   and each thread always uses the same one (`ThreadInfo::stripe`). A shared call increments
//!   its stripe and then reads the control word; an exclusive holder sets the writer bit and
//!   then sums the stripes the mask names. Both sides use `SeqCst` so that, in the single total
//!   order of those operations, either the reader sees the writer bit (and backs off) or the
//!   writer sees the reader's count (and backs off). The first time a stripe is used on a
//!   gate, its bit is set in the mask with a read-modify-write whose result is checked the same
//!   way, so a writer never skips a stripe that holds a reader.
//!
//! Writers do not hold the writer bit while they wait for readers to drain: a reader may be
//! in the middle of a call chain that enters this gate again (a nested shared call), and it
//! must not find the gate closed. A writer that finds readers releases the bit and sleeps
//! until the last of them leaves; so does the update manager, which retries.
//!
//! Orderings: besides the `SeqCst` pairs above, entering is an acquire and leaving a release,
//! so everything a call did to the state happens-before the next exclusive holder (another
//! call or the update manager, which swaps tables and transfers state while it holds the
//! writer bit). The waiters bit is set with the condvar's mutex held, and the waiter re-checks
//! its condition after setting it; every release that can unblock someone and sees the bit
//! takes the mutex before notifying, so no wakeup is lost.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::thread::{lock, ThreadInfo};

const WRITER: usize = 1;
const PENDING: usize = 2;
const WAITERS: usize = 4;
/// Bit `MASK_SHIFT + i` of the control word: stripe `i` has been used on this gate.
const MASK_SHIFT: u32 = 3;

/// Attempts a blocked caller makes before it sleeps.
const SPINS: usize = 100;

/// Reader stripes per gate. Threads are assigned stripes round-robin, so up to this many
/// threads calling at once never share a counter.
pub(crate) const STRIPES: usize = 8;

/// A reader count on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicUsize);

/// The control word, and the owner beside it on the same cache line.
#[repr(align(64))]
struct Control {
    word: AtomicUsize,
    /// The thread holding the writer bit for a call (null when it is the manager or free).
    owner: AtomicPtr<ThreadInfo>,
}

/// Callers asleep on a gate, by kind (protected by the gate's mutex).
#[derive(Default)]
struct Sleepers {
    readers: usize,
    writers: usize,
}

/// Whom a release wakes.
#[derive(Clone, Copy)]
enum Wake {
    /// The last reader left: only a writer can have been waiting for that.
    Writer,
    /// A writer left: one writer may go next, and every reader may.
    WriterAndReaders,
    /// The pending bit was cleared: everyone re-checks.
    Everyone,
}

/// See the module documentation.
pub struct Gate {
    state: Control,
    readers: [Stripe; STRIPES],
    lock: Mutex<Sleepers>,
    /// Where blocked shared callers sleep.
    readers_wake: Condvar,
    /// Where blocked exclusive callers sleep. Writers are woken one at a time: waking all of
    /// them for every release (when 50 threads queue on a `&mut self` method) costs more than
    /// the calls.
    writers_wake: Condvar,
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

#[inline]
fn used_bit(stripe: usize) -> usize {
    1 << (MASK_SHIFT as usize + stripe)
}

/// The stripe a thread's shared calls count in (stripe 0 for a thread being torn down).
#[inline]
pub(crate) fn stripe_of(me: *const ThreadInfo) -> usize {
    // SAFETY: `me` is null or the live info of this thread.
    unsafe { me.as_ref() }.map_or(0, |t| t.stripe)
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            state: Control {
                word: AtomicUsize::new(0),
                owner: AtomicPtr::new(std::ptr::null_mut()),
            },
            readers: Default::default(),
            lock: Mutex::new(Sleepers::default()),
            readers_wake: Condvar::new(),
            writers_wake: Condvar::new(),
        }
    }

    /// Whether the control word `s` keeps out a caller (shared callers: only the writer and
    /// pending bits; readers are checked separately by exclusive callers).
    #[inline]
    fn blocks(s: usize, nested: bool) -> bool {
        s & WRITER != 0 || (s & PENDING != 0 && !nested)
    }

    /// Shared holders counted in the stripes that the control word `s` marks as used.
    #[inline]
    fn readers_in(&self, s: usize) -> usize {
        let mut mask = s >> MASK_SHIFT;
        let mut n = 0;
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            // SeqCst: pairs with the readers' increments (see the module documentation).
            n += self.readers[i % STRIPES].0.load(Ordering::SeqCst);
            mask &= mask - 1;
        }
        n
    }

    /// Enters the gate. `nested` is true when the thread is already inside a dsu call: such a
    /// call passes a pending update (it is part of a call chain the update waits to drain).
    /// `stripe` is [`stripe_of`] the calling thread; `leave` must be given the same one.
    #[inline(always)]
    pub(crate) fn enter(
        &self,
        access: Access,
        me: *const ThreadInfo,
        stripe: usize,
        nested: bool,
        who: &str,
    ) {
        if self.try_enter(access, me, stripe, nested) {
            return;
        }
        self.enter_slow(access, me, stripe, nested, who);
    }

    /// One attempt to enter without waiting.
    #[inline(always)]
    fn try_enter(
        &self,
        access: Access,
        me: *const ThreadInfo,
        stripe: usize,
        nested: bool,
    ) -> bool {
        match access {
            Access::Shared => {
                let count = &self.readers[stripe % STRIPES].0;
                // SeqCst: see the module documentation (this is also the acquire of the call).
                count.fetch_add(1, Ordering::SeqCst);
                let mut s = self.state.word.load(Ordering::SeqCst);
                if s & used_bit(stripe) == 0 {
                    // First use of this stripe on this gate: publish it, and judge the gate
                    // by the word the publication saw.
                    s = self.state.word.fetch_or(used_bit(stripe), Ordering::SeqCst);
                }
                if !Self::blocks(s, nested) {
                    return true;
                }
                // Back off; a writer waiting for readers to drain may be waiting for this one.
                self.leave_shared(stripe);
                false
            }
            Access::Exclusive => {
                let s = self.state.word.load(Ordering::Relaxed);
                if Self::blocks(s, nested) {
                    return false;
                }
                // SeqCst: see the module documentation (this is also the acquire of the call).
                if self
                    .state
                    .word
                    .compare_exchange(s, s | WRITER, Ordering::SeqCst, Ordering::Relaxed)
                    .is_err()
                {
                    return false;
                }
                if self.readers_in(s) != 0 {
                    self.release_writer();
                    return false;
                }
                self.state.owner.store(me as *mut _, Ordering::Relaxed);
                true
            }
        }
    }

    #[cold]
    fn enter_slow(
        &self,
        access: Access,
        me: *const ThreadInfo,
        stripe: usize,
        nested: bool,
        who: &str,
    ) {
        // Spin a little before sleeping: calls are short, and a caller that sleeps on the
        // condvar costs every release that follows a wakeup (std's `RwLock` spins the same
        // way). Only an attempt that can succeed is made, so spinning costs no writes.
        for _ in 0..SPINS {
            std::hint::spin_loop();
            let s = self.state.word.load(Ordering::Relaxed);
            let free = !Self::blocks(s, nested)
                && (access == Access::Shared || self.readers_in(s) == 0)
                && s & WAITERS == 0;
            if free && self.try_enter(access, me, stripe, nested) {
                return;
            }
        }
        let inside = || {
            // SAFETY: `me` is null or the live info of this thread.
            unsafe { me.as_ref() }.is_some_and(|t| t.is_inside(self as *const Gate as *const ()))
        };
        let mut guard = lock(&self.lock);
        loop {
            if self.try_enter_locked(access, me, stripe, nested) {
                if guard.readers + guard.writers == 0 {
                    // Nobody else sleeps: releases can skip the mutex again. (A new sleeper
                    // sets the bit under the mutex, which this thread holds.)
                    self.state.word.fetch_and(!WAITERS, Ordering::SeqCst);
                }
                return;
            }
            let s = self.state.word.load(Ordering::SeqCst);
            // A thread waiting for a gate it is itself holding would wait forever.
            let self_owned = s & WRITER != 0
                && !me.is_null()
                && std::ptr::eq(self.state.owner.load(Ordering::Relaxed), me);
            if self_owned || (access == Access::Exclusive && inside()) {
                drop(guard);
                panic!(
                    "dsu: re-entrant call `{who}`: this thread is already inside a call on \
                     this component instance and would deadlock; call the method directly \
                     on `self` instead of through a handle"
                );
            }
            // Announce the wait, then look again: a release that happened before the
            // announcement is seen now; one after it sees the bit and wakes us.
            self.state.word.fetch_or(WAITERS, Ordering::SeqCst);
            if self.try_enter_locked(access, me, stripe, nested) {
                return;
            }
            // Counted while asleep, so that no release clears the bit under a sleeper.
            match access {
                Access::Shared => {
                    guard.readers += 1;
                    guard = self
                        .readers_wake
                        .wait(guard)
                        .unwrap_or_else(|e| e.into_inner());
                    guard.readers -= 1;
                }
                Access::Exclusive => {
                    guard.writers += 1;
                    guard = self
                        .writers_wake
                        .wait(guard)
                        .unwrap_or_else(|e| e.into_inner());
                    guard.writers -= 1;
                }
            }
        }
    }

    /// `try_enter` for a caller holding the mutex: ignores the waiters bit (the caller is one
    /// of the waiters).
    fn try_enter_locked(
        &self,
        access: Access,
        me: *const ThreadInfo,
        stripe: usize,
        nested: bool,
    ) -> bool {
        match access {
            Access::Shared => {
                let count = &self.readers[stripe % STRIPES].0;
                // SeqCst: as in `try_enter`.
                count.fetch_add(1, Ordering::SeqCst);
                let s = self.state.word.fetch_or(used_bit(stripe), Ordering::SeqCst);
                if !Self::blocks(s, nested) {
                    return true;
                }
                count.fetch_sub(1, Ordering::SeqCst);
                self.notify_if_drained_locked();
                false
            }
            Access::Exclusive => loop {
                let s = self.state.word.load(Ordering::SeqCst);
                if Self::blocks(s, nested) {
                    return false;
                }
                if self
                    .state
                    .word
                    .compare_exchange(s, s | WRITER, Ordering::SeqCst, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                if self.readers_in(s) != 0 {
                    self.release_writer_locked();
                    return false;
                }
                self.state.owner.store(me as *mut _, Ordering::Relaxed);
                return true;
            },
        }
    }

    /// Leaves the gate. `stripe` must be the one given to `enter`.
    #[inline(always)]
    pub(crate) fn leave(&self, access: Access, stripe: usize) {
        match access {
            Access::Shared => self.leave_shared(stripe),
            Access::Exclusive => {
                self.state
                    .owner
                    .store(std::ptr::null_mut(), Ordering::Relaxed);
                self.release_writer();
            }
        }
    }

    #[inline(always)]
    fn leave_shared(&self, stripe: usize) {
        // SeqCst: publishes this call's effects (release) and pairs with a waiter's
        // announcement (see `enter_slow`).
        self.readers[stripe % STRIPES]
            .0
            .fetch_sub(1, Ordering::SeqCst);
        let s = self.state.word.load(Ordering::SeqCst);
        if s & WAITERS != 0 {
            self.after_last_reader(s);
        }
    }

    /// A reader left while someone waits: only the last reader can unblock anyone (a writer
    /// waiting for the drain); readers waiting for a writer or an update are woken by those.
    #[cold]
    fn after_last_reader(&self, s: usize) {
        if self.readers_in(s) == 0 {
            self.wake(Wake::Writer);
        }
    }

    /// `after_last_reader` for a caller that holds the mutex. The waiters bit stays set: the
    /// caller is a waiter itself and may go on to wait.
    fn notify_if_drained_locked(&self) {
        let s = self.state.word.load(Ordering::SeqCst);
        if s & WAITERS != 0 && self.readers_in(s) == 0 {
            self.notify(Wake::Writer);
        }
    }

    /// Clears the writer bit (which the caller holds), waking waiters.
    #[inline]
    fn release_writer(&self) {
        // Release (SeqCst): publishes the holder's effects to whoever enters next. A
        // subtraction, because the bit is known to be set: on x86 it is one `lock xadd`, where
        // a `fetch_and` is a compare-exchange loop.
        let prev = self.state.word.fetch_sub(WRITER, Ordering::SeqCst);
        if prev & WAITERS != 0 {
            self.wake(Wake::WriterAndReaders);
        }
    }

    /// `release_writer` for a caller that holds the mutex. The waiters bit stays set: the
    /// caller is a waiter itself and may go on to wait.
    fn release_writer_locked(&self) {
        let prev = self.state.word.fetch_sub(WRITER, Ordering::SeqCst);
        if prev & WAITERS != 0 {
            self.notify(Wake::WriterAndReaders);
        }
    }

    /// Wakes sleepers after a release that saw the waiters bit.
    #[cold]
    fn wake(&self, how: Wake) {
        let g = lock(&self.lock);
        if g.readers + g.writers == 0 {
            // Whoever set the bit got in without sleeping. Clearing it is safe under the
            // mutex: a caller about to sleep sets it again first.
            self.state.word.fetch_and(!WAITERS, Ordering::SeqCst);
            return;
        }
        self.notify(how);
    }

    /// Notifies, the mutex held. Sleepers that are not woken stay counted, so the waiters bit
    /// stays set and the next release wakes the next one.
    fn notify(&self, how: Wake) {
        match how {
            Wake::Writer => self.writers_wake.notify_one(),
            Wake::WriterAndReaders => {
                self.writers_wake.notify_one();
                self.readers_wake.notify_all();
            }
            Wake::Everyone => {
                self.writers_wake.notify_all();
                self.readers_wake.notify_all();
            }
        }
    }

    /// Marks the gate pending: from now on new outer calls wait.
    pub(crate) fn set_pending(&self) {
        self.state.word.fetch_or(PENDING, Ordering::SeqCst);
    }

    /// Clears the pending bit (update aborted) and wakes the waiting callers.
    pub(crate) fn clear_pending(&self) {
        let prev = self.state.word.fetch_and(!PENDING, Ordering::SeqCst);
        if prev & WAITERS != 0 {
            self.wake(Wake::Everyone);
        }
    }

    /// Takes the gate for the update manager if no call is in flight. The gate must be pending.
    pub(crate) fn try_lock_for_update(&self) -> bool {
        let s = self.state.word.load(Ordering::SeqCst);
        if s & WRITER != 0 || self.readers_in(s) != 0 {
            return false;
        }
        // SeqCst: as for an exclusive call; everything the last calls did to the state is
        // visible to the manager.
        if self
            .state
            .word
            .compare_exchange(s, s | WRITER, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if self.readers_in(s) != 0 {
            self.release_writer();
            return false;
        }
        true
    }

    /// Releases a gate taken by `try_lock_for_update`, clearing the pending bit too.
    pub(crate) fn unlock_after_update(&self) {
        // Release (SeqCst): the new table and state are published to every caller that enters
        // next.
        let prev = self
            .state
            .word
            .fetch_and(!(WRITER | PENDING), Ordering::SeqCst);
        if prev & WAITERS != 0 {
            self.wake(Wake::Everyone);
        }
    }

    /// Releases the manager's hold but keeps the gate pending (another gate of the same update
    /// could not be taken; the manager will try again).
    pub(crate) fn unlock_keep_pending(&self) {
        self.release_writer();
    }

    /// Calls in flight: (shared holders, whether an exclusive call holds it).
    pub(crate) fn in_flight(&self) -> (usize, bool) {
        let s = self.state.word.load(Ordering::SeqCst);
        (self.readers_in(s), s & WRITER != 0)
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
        g.enter(Access::Shared, me(), stripe_of(me()), false, "t");
        g.enter(Access::Shared, me(), stripe_of(me()), true, "t");
        assert_eq!(g.in_flight(), (2, false));
        g.leave(Access::Shared, stripe_of(thread::current()));
        g.leave(Access::Shared, stripe_of(thread::current()));
        g.enter(Access::Exclusive, me(), stripe_of(me()), false, "t");
        assert_eq!(g.in_flight(), (0, true));
        g.leave(Access::Exclusive, stripe_of(thread::current()));
        assert_eq!(g.in_flight(), (0, false));
    }

    #[test]
    fn pending_blocks_outer_calls_but_not_nested_ones() {
        let g = Arc::new(Gate::new());
        g.set_pending();
        // A nested call passes.
        g.enter(Access::Shared, me(), stripe_of(me()), true, "t");
        g.leave(Access::Shared, stripe_of(thread::current()));
        g.enter(Access::Exclusive, me(), stripe_of(me()), true, "t");
        g.leave(Access::Exclusive, stripe_of(thread::current()));
        // An outer call waits until the pending bit is cleared.
        let entered = Arc::new(AtomicU64::new(0));
        let h = {
            let (g, entered) = (g.clone(), entered.clone());
            std::thread::spawn(move || {
                g.enter(
                    Access::Shared,
                    thread::current(),
                    stripe_of(thread::current()),
                    false,
                    "t",
                );
                entered.store(1, Ordering::SeqCst);
                g.leave(Access::Shared, stripe_of(thread::current()));
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
        g.enter(Access::Shared, me(), stripe_of(me()), false, "t");
        g.set_pending();
        assert!(!g.try_lock_for_update());
        g.leave(Access::Shared, stripe_of(thread::current()));
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
                    g.enter(
                        acc,
                        thread::current(),
                        stripe_of(thread::current()),
                        false,
                        "t",
                    );
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
                    g.leave(acc, stripe_of(thread::current()));
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

    /// A writer waiting for readers must not close the gate to them: a reader in the middle
    /// of a call chain may enter the same gate again before it leaves.
    #[test]
    fn a_waiting_writer_lets_a_readers_nested_call_in() {
        let g = Arc::new(Gate::new());
        g.enter(Access::Shared, me(), stripe_of(me()), false, "t");
        let h = {
            let g = g.clone();
            std::thread::spawn(move || {
                let t = thread::current();
                g.enter(Access::Exclusive, t, stripe_of(t), false, "w");
                g.leave(Access::Exclusive, stripe_of(t));
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        // The nested call of the chain that is already inside.
        g.enter(Access::Shared, me(), stripe_of(me()), true, "t");
        g.leave(Access::Shared, stripe_of(me()));
        g.leave(Access::Shared, stripe_of(me()));
        h.join().unwrap();
        assert_eq!(g.in_flight(), (0, false));
    }

    /// More threads than stripes, so some share a counter; every thread's calls finish (no
    /// lost wakeup) and exclusive sections never overlap anything.
    #[test]
    fn stress_more_threads_than_stripes() {
        let g = Arc::new(Gate::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let writers = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..2 * STRIPES + 1)
            .map(|i| {
                let (g, inside, writers) = (g.clone(), inside.clone(), writers.clone());
                std::thread::spawn(move || {
                    let t = thread::current();
                    for n in 0..2_000usize {
                        let excl = (n + i) % 5 == 0;
                        let acc = if excl {
                            Access::Exclusive
                        } else {
                            Access::Shared
                        };
                        g.enter(acc, t, stripe_of(t), false, "t");
                        if excl {
                            assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0);
                            assert_eq!(inside.load(Ordering::SeqCst), 0);
                            writers.fetch_sub(1, Ordering::SeqCst);
                        } else {
                            inside.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(writers.load(Ordering::SeqCst), 0);
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                        g.leave(acc, stripe_of(t));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(g.in_flight(), (0, false));
    }

    /// Many writers queue on one gate (woken one at a time), a few readers mix in, and an
    /// update takes the gate again and again: every call finishes (no wakeup is lost), and no
    /// two holders overlap.
    #[test]
    fn stress_queued_writers_and_updates() {
        let g = Arc::new(Gate::new());
        let holders = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..32)
            .map(|i| {
                let (g, holders) = (g.clone(), holders.clone());
                std::thread::spawn(move || {
                    let t = thread::current();
                    let acc = if i % 8 == 0 {
                        Access::Shared
                    } else {
                        Access::Exclusive
                    };
                    for _ in 0..1_000 {
                        g.enter(acc, t, stripe_of(t), false, "t");
                        if acc == Access::Exclusive {
                            assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0);
                            holders.fetch_sub(1, Ordering::SeqCst);
                        }
                        g.leave(acc, stripe_of(t));
                    }
                })
            })
            .collect();
        for _ in 0..100 {
            g.set_pending();
            while !g.try_lock_for_update() {
                std::thread::yield_now();
            }
            assert_eq!(holders.load(Ordering::SeqCst), 0);
            g.unlock_after_update();
        }
        for h in hs {
            h.join().unwrap();
        }
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
        g.enter(Access::Shared, t, stripe_of(t), false, "t");
        g.enter(Access::Exclusive, t, stripe_of(t), true, "Store::set");
    }
}
