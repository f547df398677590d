//! The entry gate of a component instance.
//!
//! A gate is a reader-writer lock built for calls that mostly share: a shared (`&self`) call
//! must not write to a cache line that other cores' shared calls write too, or two threads
//! calling the same component run slower than one.
//!
//! - **The control word** holds a writer count (a `&mut self` call or the update manager holds
//!   the component exclusively when it is non-zero), a pending bit (an update is preparing: new
//!   *outer* calls wait), a waiters bit (someone may be asleep on the gate) and a mask of the
//!   reader stripes in use.
//! - **Writers claim by adding.** An exclusive caller adds one to the writer count and looks at
//!   the word the addition returns: the count was zero, nothing pending, no reader, so it holds
//!   the gate; otherwise it takes its claim back at once. One `lock xadd` and no read before it:
//!   a compare-exchange needs the word read first, and that read waits for the previous call's
//!   release to complete. A claim taken back is seen by others as the gate being held for an
//!   instant; whoever takes the count back to zero wakes the sleepers (`release_writer`).
//! - **Reader stripes:** shared holders are counted in [`STRIPES`] cache-line-sized counters,
//!   and each thread always uses the same one (`ThreadInfo::stripe`). A shared call increments
//!   its stripe and then reads the control word; an exclusive caller claims and then sums the
//!   stripes the mask in the claimed word names. Both sides use `SeqCst` so that, in the single
//!   total order of those operations, either the reader sees the claim (and backs off) or the
//!   writer sees the reader's count (and backs off). The first time a stripe is used on a
//!   gate, its bit is set in the mask with a read-modify-write whose result is checked the same
//!   way, so a writer never skips a stripe that holds a reader.
//!
//! **A quiet mask is cleared.** A run of `&mut self` calls with no `&self` call between them
//! would read every used stripe on every call. So a holder that has seen the stripes' entry
//! counts (each stripe also counts the shared calls that entered through it) unchanged for
//! [`QUIET_HOLDS`] holds in a row clears the mask while it holds the gate; no reader is inside
//! then, and none can enter before it releases. The next shared call on each stripe publishes
//! its bit again with the read-modify-write above, whose result it checks: either it comes
//! before a writer's claim, and the claim returns the word with the bit, or after, and it sees
//! the claim and backs off. Alternating calls never clear the mask (the counts move between
//! holds), so they pay nothing for it.
//!
//! Writers do not hold the gate while they wait for readers to drain: a reader may be in the
//! middle of a call chain that enters this gate again (a nested shared call), and it must not
//! find the gate closed. A writer that finds readers takes its claim back and sleeps until the
//! last of them leaves; so does the update manager, which retries.
//!
//! Blocked callers spin briefly, then sleep on a futex word of their kind (readers, writers),
//! with no mutex in between: a writer's release that sees the waiters bit clears it, bumps the
//! words and wakes every reader and one writer; the last reader to leave wakes one writer. A
//! woken writer that gets in sets the bit again, so its own release wakes the next: with 50 threads queued on a `&mut self`
//! method, each release wakes one thread instead of all of them, as std's `RwLock` does.
//!
//! Orderings: besides the `SeqCst` pairs above, entering is an acquire and leaving a release,
//! so everything a call did to the state happens-before the next exclusive holder (another
//! call or the update manager, which swaps tables and transfers state while it holds the
//! gate). A waiter reads its futex word, then sets the waiters bit, then re-checks its
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

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::thread::{ThreadInfo, STRIPES};
use futex::{futex_wait, futex_wake};

const PENDING: usize = 2;
const WAITERS: usize = 4;
/// Bit `MASK_SHIFT + i` of the control word: stripe `i` has been used on this gate.
const MASK_SHIFT: u32 = 3;
/// The stripe bits of the control word, shifted down.
const MASK: usize = (1 << STRIPES) - 1;
/// One claim on the writer count, the control word's bits from `WRITER_SHIFT` up. The holder
/// is the one whose addition found the count at zero (with no reader and no pending update in
/// its way); an addition that found it taken is taken back at once.
const WRITER_SHIFT: u32 = 16;
const ONE_WRITER: usize = 1 << WRITER_SHIFT;
const WRITERS: usize = !(ONE_WRITER - 1);
const _: () = assert!(MASK_SHIFT as usize + STRIPES <= WRITER_SHIFT as usize);

/// Attempts a blocked caller makes before it sleeps.
const SPINS: usize = 100;

/// A reader count on a cache line of its own: the shared holders counting in it (low 32 bits)
/// and, above them, how many shared calls ever entered through it (wrapping).
#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// What a shared call adds to its stripe on entry; leaving subtracts [`READER_OUT`].
const READER_IN: u64 = 1 + (1 << 32);
const READER_OUT: u64 = 1;
/// The holders part of a stripe.
const HOLDERS: u64 = (1 << 32) - 1;

/// Exclusive holds in a row, with no shared call in between, after which the holder clears the
/// stripe mask (see `quiet_hold`).
const QUIET_HOLDS: u32 = 8;

/// The control word, and the owner beside it on the same cache line.
#[repr(align(64))]
struct Control {
    word: AtomicUsize,
    /// The thread holding the gate exclusively, when its call stack does not show the hold (see
    /// [`Gate::set_owner`]); null otherwise.
    owner: AtomicPtr<ThreadInfo>,
    /// Futex words blocked readers and writers sleep on; a wake bumps them.
    readers_seq: AtomicU32,
    writers_seq: AtomicU32,
    /// Written only by an exclusive holder: the stripes' entry counts as the last hold saw
    /// them, and how many holds in a row saw them unchanged (see `quiet_hold`).
    entries_seen: AtomicU64,
    quiet: AtomicU32,
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
                entries_seen: AtomicU64::new(0),
                quiet: AtomicU32::new(0),
            },
            readers: Default::default(),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// Whether the control word `s` keeps out a caller (shared callers: only the writer and
    /// pending bits; readers are checked separately by exclusive callers).
    #[inline]
    fn blocks(s: usize, nested: bool) -> bool {
        s & WRITERS != 0 || (s & PENDING != 0 && !nested)
    }

    /// Shared holders counted in the stripes that the control word `s` marks as used.
    #[inline]
    fn readers_in(&self, s: usize) -> usize {
        self.stripes(s).0
    }

    /// The stripes that the control word `s` marks as used: (shared holders, the sum of their
    /// entry counts, wrapping).
    #[inline]
    fn stripes(&self, s: usize) -> (usize, u64) {
        let mut mask = (s >> MASK_SHIFT) & MASK;
        let (mut holders, mut entries) = (0, 0u64);
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            // SeqCst: pairs with the readers' increments (see the module documentation).
            let c = self.readers[i % STRIPES].0.load(Ordering::SeqCst);
            holders += (c & HOLDERS) as usize;
            entries = entries.wrapping_add(c >> 32);
            mask &= mask - 1;
        }
        (holders, entries)
    }

    /// An exclusive hold that found stripes in the mask and no reader in them, with the
    /// stripes' entry counts summed to `entries`: after [`QUIET_HOLDS`] such holds in a row with
    /// no shared call entering in between, the holder clears the mask, so that the holds after
    /// it read no stripe at all (see the module documentation).
    #[inline]
    fn quiet_hold(&self, entries: u64) {
        let c = &self.state;
        // Relaxed: only the exclusive holder touches these; holds are ordered by the gate.
        if c.entries_seen.load(Ordering::Relaxed) != entries {
            c.entries_seen.store(entries, Ordering::Relaxed);
            c.quiet.store(0, Ordering::Relaxed);
            return;
        }
        let q = c.quiet.load(Ordering::Relaxed) + 1;
        if q < QUIET_HOLDS {
            c.quiet.store(q, Ordering::Relaxed);
            return;
        }
        c.quiet.store(0, Ordering::Relaxed);
        // SeqCst: in the total order with the readers' publications; no reader holds the gate
        // (this hold counted none, and none can enter while it holds).
        c.word.fetch_and(!(MASK << MASK_SHIFT), Ordering::SeqCst);
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
                count.fetch_add(READER_IN, Ordering::SeqCst);
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
            // One read-modify-write that needs no word read before it: a compare-exchange
            // would (and the read waits for the previous call's release to complete).
            Access::Exclusive => {
                // SeqCst: see the module documentation (this is also the acquire of the call).
                let s = self.state.word.fetch_add(ONE_WRITER, Ordering::SeqCst);
                if Self::blocks(s, nested) {
                    self.release_writer();
                    return false;
                }
                if s & (MASK << MASK_SHIFT) != 0 {
                    let (holders, entries) = self.stripes(s);
                    if holders != 0 {
                        self.release_writer();
                        return false;
                    }
                    self.quiet_hold(entries);
                }
                true
            }
        }
    }

    /// Whether an exclusive attempt could succeed now (the slow path looks before it claims,
    /// so that a claim taken back is rare and sleepers are not woken for nothing).
    fn exclusive_free(&self, nested: bool) -> bool {
        let s = self.state.word.load(Ordering::SeqCst);
        !Self::blocks(s, nested) && self.readers_in(s) == 0
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
        // calls (std's `RwLock` spins the same way). Only an attempt that can succeed is made,
        // so spinning costs no writes.
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
        // An exclusive caller here claims only a gate that looks free (see `exclusive_free`).
        let attempt = || {
            (access == Access::Shared || self.exclusive_free(nested))
                && self.try_enter(access, stripe, nested)
        };
        let mut slept = false;
        loop {
            if attempt() {
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
            let self_owned = s & WRITERS != 0
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
            if attempt() {
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
            .fetch_sub(READER_OUT, Ordering::SeqCst);
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

    /// Takes back one claim on the writer count (the holder's, or one that found the gate
    /// taken), waking waiters if it was the last.
    ///
    /// Only the last claim to go wakes: a caller that went to sleep saw the count above zero
    /// after it announced its wait, so the subtraction that brings the count to zero comes after
    /// the announcement and sees the bit. A claim that found another holder leaves the wake to
    /// that holder, so callers arriving while a call holds the gate wake nobody.
    #[inline]
    fn release_writer(&self) {
        // Release (SeqCst): publishes the holder's effects to whoever enters next.
        let prev = self.state.word.fetch_sub(ONE_WRITER, Ordering::SeqCst);
        if prev & WAITERS != 0 && prev & WRITERS == ONE_WRITER {
            self.wake(Wake::WriterAndReaders);
        }
    }

    /// Wakes sleepers after a release that saw the waiters bit.
    ///
    /// The bit is cleared only by a wake that also wakes every reader and at least one
    /// writer: each of those either gets in or sets the bit again before it sleeps, and a woken
    /// writer that gets in sets it again too (other writers may still sleep). A wake of one
    /// writer alone (the last reader left) leaves the bit set, since readers asleep on the
    /// gate being held or on an update are not woken by it and still need the next release to
    /// see them.
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

    /// Names `me` as the thread holding the gate exclusively, for a hold the thread's call stack does
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
        if s & WRITERS != 0 || self.readers_in(s) != 0 {
            return false;
        }
        // SeqCst: as for an exclusive call; everything the last calls did to the state is
        // visible to the manager. A compare-exchange, not a claim: a pending gate keeps outer
        // callers out, and a failed claim would wake them for nothing.
        if self
            .state
            .word
            .compare_exchange(s, s + ONE_WRITER, Ordering::SeqCst, Ordering::Relaxed)
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
        // The pending bit first, then the manager's claim: a caller that looks in between
        // finds the gate held and waits for the release below.
        self.state.word.fetch_and(!PENDING, Ordering::SeqCst);
        let prev = self.state.word.fetch_sub(ONE_WRITER, Ordering::SeqCst);
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
        (self.readers_in(s), s & WRITERS != 0)
    }
}

mod futex;
#[cfg(test)]
mod tests;
