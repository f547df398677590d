//! The entry gate of a component instance.
//!
//! A gate is a reader-writer lock built for calls that mostly share: a shared (`&self`) call
//! must not write to a cache line that other cores' shared calls write too, or two threads
//! calling the same component run slower than one.
//!
//! - **The control word** holds a writer bit (a `&mut self` call or the update manager holds
//!   the component exclusively), a pending bit (an update is preparing: new *outer* calls
//!   wait), a waiters bit (someone may be asleep on the gate) and a mask of the reader stripes in
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
//! Blocked callers spin briefly, then sleep on a futex word of their kind (readers, writers),
//! with no mutex in between: a writer's release that sees the waiters bit clears it, bumps the
//! words and wakes every reader and one writer; the last reader to leave wakes one writer. A woken writer that gets in sets the
//! bit again, so its own release wakes the next: with 50 threads queued on a `&mut self`
//! method, each release wakes one thread instead of all of them, as std's `RwLock` does.
//!
//! Orderings: besides the `SeqCst` pairs above, entering is an acquire and leaving a release,
//! so everything a call did to the state happens-before the next exclusive holder (another
//! call or the update manager, which swaps tables and transfers state while it holds the
//! writer bit). A waiter reads its futex word, then sets the waiters bit, then re-checks its
//! condition, then sleeps only if the word has not moved; a release changes the gate, then
//! reads the bit, then bumps the word and wakes (all `SeqCst`). Either the waiter's re-check
//! sees the release, or the release sees the bit and the sleep returns or is woken.
//!
//! **Async callers** never sleep on the futex: [`Gate::poll_enter`] registers the task's waker
//! in a list beside the futex words, announces the wait with the same waiters bit, looks again,
//! and returns `Pending`. Every wake (any of the three kinds) also wakes every registered
//! waker; each woken task polls again and, if still kept out, registers again. A task that
//! holds the gate across an `.await` is counted like a thread inside a call, so the update
//! manager waits for it the same way.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::thread::{ThreadInfo, STRIPES};

const WRITER: usize = 1;
const PENDING: usize = 2;
const WAITERS: usize = 4;
/// Bit `MASK_SHIFT + i` of the control word: stripe `i` has been used on this gate.
const MASK_SHIFT: u32 = 3;

/// Attempts a blocked caller makes before it sleeps.
const SPINS: usize = 100;

/// A reader count on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicUsize);

/// The control word, and the owner beside it on the same cache line.
#[repr(align(64))]
struct Control {
    word: AtomicUsize,
    /// The thread holding the writer bit, when its call stack does not show the hold (see
    /// [`Gate::set_owner`]); null otherwise.
    owner: AtomicPtr<ThreadInfo>,
    /// Futex words blocked readers and writers sleep on; a wake bumps them.
    readers_seq: AtomicU32,
    writers_seq: AtomicU32,
}

/// Whom a release wakes.
#[derive(Clone, Copy)]
enum Wake {
    /// The last reader left: only a writer can have been waiting for that. One is enough.
    Writer,
    /// A writer left: one writer may go next, and every reader may.
    WriterAndReaders,
    /// The pending bit was cleared: everyone looks again.
    Everyone,
}

/// Sleeps while `word` holds `seen` (returns at once if it does not; may return spuriously).
fn futex_wait(word: &AtomicU32, seen: u32) {
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind the pointer, which lives as long as the
    // gate; a null timeout waits without a deadline.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes up to `n` threads sleeping on `word`.
fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// See the module documentation.
pub struct Gate {
    state: Control,
    readers: [Stripe; STRIPES],
    /// Tasks waiting to enter (see the module documentation); touched only by waits and wakes.
    wakers: Mutex<Vec<Waker>>,
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
                readers_seq: AtomicU32::new(0),
                writers_seq: AtomicU32::new(0),
            },
            readers: Default::default(),
            wakers: Mutex::new(Vec::new()),
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
        if self.try_enter(access, stripe, nested) {
            return;
        }
        self.enter_slow(access, me, stripe, nested, who);
    }

    /// One attempt to enter without waiting.
    #[inline(always)]
    fn try_enter(&self, access: Access, stripe: usize, nested: bool) -> bool {
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
            // Retries when the word changed under the compare-exchange (a wait announced, a
            // stripe came into use) rather than report a gate that may be free as taken: a
            // blocked caller would go to sleep with nobody left to wake it.
            Access::Exclusive => loop {
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
                    continue;
                }
                if self.readers_in(s) != 0 {
                    self.release_writer();
                    return false;
                }
                return true;
            },
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
        // Spin a little before sleeping: calls are short, and sleeping costs two system
        // calls (std's `RwLock` spins the same way). Only an attempt that can succeed is made, so spinning costs no writes.
        for _ in 0..SPINS {
            std::hint::spin_loop();
            let s = self.state.word.load(Ordering::Relaxed);
            let free = !Self::blocks(s, nested)
                && (access == Access::Shared || self.readers_in(s) == 0)
                && s & WAITERS == 0;
            if free && self.try_enter(access, stripe, nested) {
                return;
            }
        }
        let inside = || {
            // SAFETY: `me` is null or the live info of this thread.
            unsafe { me.as_ref() }.is_some_and(|t| t.is_inside(self as *const Gate as *const ()))
        };
        let (seq, count) = match access {
            Access::Shared => (&self.state.readers_seq, 0),
            Access::Exclusive => (&self.state.writers_seq, 1),
        };
        let mut slept = false;
        loop {
            if self.try_enter(access, stripe, nested) {
                if slept && count == 1 {
                    // Writers are woken one at a time, and the release that woke this one
                    // cleared the bit: other writers may still sleep, so set it again for
                    // this call's release to wake the next (std's futex `RwLock` does the
                    // same).
                    self.state.word.fetch_or(WAITERS, Ordering::SeqCst);
                }
                return;
            }
            let s = self.state.word.load(Ordering::SeqCst);
            // A thread waiting for a gate it is itself holding would wait forever.
            let self_owned = s & WRITER != 0
                && !me.is_null()
                && std::ptr::eq(self.state.owner.load(Ordering::Relaxed), me);
            // SAFETY: `me` is null or the live info of this thread.
            let inside_exclusive = unsafe { me.as_ref() }
                .is_some_and(|t| t.is_inside_exclusive(self as *const Gate as *const ()));
            if self_owned || inside_exclusive || (access == Access::Exclusive && inside()) {
                panic!(
                    "dsu: re-entrant call `{who}`: this thread is already inside a call on \
                     this component instance and would deadlock; call the method directly \
                     on `self` instead of through a handle"
                );
            }
            // Read the futex word, announce the wait, then look again: a release before the
            // announcement is seen by the second look; one after it sees the bit, bumps the
            // word and wakes, so the wait below either returns at once (the word moved) or is
            // woken.
            let seen = seq.load(Ordering::SeqCst);
            self.state.word.fetch_or(WAITERS, Ordering::SeqCst);
            if self.try_enter(access, stripe, nested) {
                return;
            }
            futex_wait(seq, seen);
            slept = true;
        }
    }

    /// Leaves the gate. `stripe` must be the one given to `enter`.
    #[inline(always)]
    pub(crate) fn leave(&self, access: Access, stripe: usize) {
        match access {
            Access::Shared => self.leave_shared(stripe),
            Access::Exclusive => self.release_writer(),
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

    /// Wakes sleepers after a release that saw the waiters bit.
    ///
    /// The bit is cleared only by a wake that also wakes every reader and at least one
    /// writer: each of those either gets in or sets the bit again before it sleeps, and a woken
    /// writer that gets in sets it again too (other writers may still sleep). A wake of one
    /// writer alone (the last reader left) leaves the bit set, since readers asleep on the
    /// writer bit or an update are not woken by it and still need the next release to see them.
    #[cold]
    fn wake(&self, how: Wake) {
        let (writers, readers) = match how {
            Wake::Writer => (1, 0),
            Wake::WriterAndReaders => (1, i32::MAX),
            Wake::Everyone => (i32::MAX, i32::MAX),
        };
        if readers > 0 {
            self.state.word.fetch_and(!WAITERS, Ordering::SeqCst);
        }
        // SeqCst: after the clear, so a sleeper that read the old word is woken or finds the
        // word moved (see `enter_slow`).
        self.state.writers_seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.state.writers_seq, writers);
        if readers > 0 {
            self.state.readers_seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(&self.state.readers_seq, readers);
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    /// Enters the gate from a task: `Ready` once entered, `Pending` (with the task's waker
    /// registered) while it is kept out. Never blocks the thread. The arguments are those of
    /// [`enter`](Self::enter); `me` is the thread polling, which may differ from poll to poll.
    pub(crate) fn poll_enter(
        &self,
        access: Access,
        me: *const ThreadInfo,
        stripe: usize,
        nested: bool,
        who: &str,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.try_enter(access, stripe, nested) {
            return Poll::Ready(());
        }
        let here = self as *const Gate as *const ();
        // SAFETY: `me` is null or the live info of this thread.
        let me_ref = unsafe { me.as_ref() };
        let inside = me_ref.is_some_and(|t| t.is_inside(here));
        let inside_exclusive = me_ref.is_some_and(|t| t.is_inside_exclusive(here));
        if (inside && access == Access::Exclusive) || inside_exclusive {
            // The call being polled on this thread holds this gate: waiting would never end.
            panic!(
                "dsu: re-entrant call `{who}`: this task is already inside a call on this \
                 component instance and would deadlock; call the method directly on `self` \
                 instead of through a handle"
            );
        }
        {
            let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // Announce, then look again (as `enter_slow` does): a release before the announcement is
        // seen by this look; one after it sees the bit and wakes the registered waker.
        self.state.word.fetch_or(WAITERS, Ordering::SeqCst);
        if self.try_enter(access, stripe, nested) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Names `me` as the thread holding the writer bit, for a hold the thread's call stack does
    /// not show (the caller holds the gate exclusively). Cleared by [`clear_owner`] before the
    /// release.
    ///
    /// [`clear_owner`]: Self::clear_owner
    pub(crate) fn set_owner(&self, me: *const ThreadInfo) {
        // Relaxed: only read by this thread's own re-entrant attempt, or compared against
        // another thread's info, which it can never equal.
        self.state.owner.store(me as *mut _, Ordering::Relaxed);
    }

    /// Clears what [`set_owner`](Self::set_owner) set (the caller still holds the gate).
    pub(crate) fn clear_owner(&self) {
        // Relaxed: as in `set_owner`.
        self.state
            .owner
            .store(std::ptr::null_mut(), Ordering::Relaxed);
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
mod tests;
