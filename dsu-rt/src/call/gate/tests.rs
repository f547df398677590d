//! The gate under contention: shared and exclusive callers, nested calls, updates.

use super::*;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::call::thread;

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
    stress_exclusion(|n, i| (n + i) % 3 == 0);
}

/// As `stress_exclusion_holds`, with runs of exclusive calls long enough for their holders to
/// clear the stripe mask between the shared calls.
#[test]
fn stress_exclusion_holds_across_cleared_masks() {
    stress_exclusion(|n, i| (n + i) % (2 * QUIET_HOLDS as u64) != 0);
}

/// Four threads call, exclusively when `excl(call number, thread number)`, while the manager
/// takes the gate 200 times.
fn stress_exclusion(excl: fn(u64, u64) -> bool) {
    let g = Arc::new(Gate::new());
    let inside = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hs = Vec::new();
    for i in 0..4 {
        let (g, inside, writers, stop) = (g.clone(), inside.clone(), writers.clone(), stop.clone());
        hs.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let excl = excl(n, i);
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

/// Many writers queue on one gate, a few readers mix in, and an update takes the gate
/// again and again: every call finishes (no wakeup is lost), and no
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
    info.frame.store(1, Ordering::Relaxed);
    g.enter(Access::Shared, t, stripe_of(t), false, "t");
    g.enter(Access::Exclusive, t, stripe_of(t), true, "Store::set");
}

fn mask(g: &Gate) -> usize {
    (g.state.word.load(Ordering::SeqCst) >> MASK_SHIFT) & MASK
}

#[test]
fn a_run_of_exclusive_holds_clears_the_mask_and_a_reader_is_still_seen_after() {
    let g = Gate::new();
    let st = stripe_of(me());
    g.enter(Access::Shared, me(), st, false, "t");
    g.leave(Access::Shared, st);
    assert_ne!(mask(&g), 0);
    // Alternating calls move the entry counts between holds: the mask stays.
    for _ in 0..3 * QUIET_HOLDS {
        g.enter(Access::Exclusive, me(), st, false, "t");
        g.leave(Access::Exclusive, st);
        g.enter(Access::Shared, me(), st, false, "t");
        g.leave(Access::Shared, st);
    }
    assert_ne!(mask(&g), 0);
    // A run of exclusive holds with no shared call clears it.
    for _ in 0..=QUIET_HOLDS {
        g.enter(Access::Exclusive, me(), st, false, "t");
        g.leave(Access::Exclusive, st);
    }
    assert_eq!(mask(&g), 0);
    // A reader on another thread publishes its stripe again, and a writer sees it.
    let g = Arc::new(g);
    let (inside, out) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let reader = {
        let (g, inside, out) = (g.clone(), inside.clone(), out.clone());
        std::thread::spawn(move || {
            let st = stripe_of(me());
            g.enter(Access::Shared, me(), st, false, "t");
            inside.wait();
            out.wait();
            g.leave(Access::Shared, st);
        })
    };
    inside.wait();
    assert_ne!(mask(&g), 0);
    assert!(!g.try_enter(Access::Exclusive, st, false));
    assert_eq!(g.in_flight(), (1, false));
    out.wait();
    reader.join().unwrap();
    g.enter(Access::Exclusive, me(), st, false, "t");
    assert_eq!(g.in_flight(), (0, true));
    g.leave(Access::Exclusive, st);
}

#[test]
fn a_claim_on_a_held_gate_is_taken_back() {
    let g = Arc::new(Gate::new());
    g.enter(Access::Exclusive, me(), stripe_of(me()), false, "t");
    let other = {
        let g = g.clone();
        std::thread::spawn(move || g.try_enter(Access::Exclusive, stripe_of(me()), false))
    };
    assert!(!other.join().unwrap());
    assert_eq!(g.state.word.load(Ordering::SeqCst) & WRITERS, ONE_WRITER);
    g.leave(Access::Exclusive, stripe_of(me()));
    assert_eq!(g.in_flight(), (0, false));
    assert_eq!(g.state.word.load(Ordering::SeqCst) & WRITERS, 0);
}
