//! Convert: after an update that took [`LazyMap`](crate::LazyMap)s over committed, a
//! background thread converts their remaining entries, about 200 µs of work at a time with the
//! component held as a `&mut self` call would hold it, so that no call waits for more than one
//! batch. Entries a call touches first are converted by that call.
//!
//! After each batch the pass sleeps as long as the batch took: the gate lets a releasing holder
//! in again before a woken waiter runs, so a pass that re-entered at once kept a reader waiting
//! for most of the pass (measured: 103 ms at 10^6 entries, `cargo bench -p dsu-tests --bench
//! lazy`). The pass takes at most half of the component's time, and about twice as long.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::abi::desc::payload_message;
use crate::call::component::Slot;
use crate::call::invoke::with_exclusive;
use crate::call::thread::lock;
use serde::{Deserialize, Serialize};

/// How far the background conversion of a component's `LazyMap`s has come.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Conversion {
    /// Entries still of the previous type after the last batch (0: done).
    pub left: u64,
    pub batches: u64,
    /// The longest time the pass held the component for one batch: what a call waited for the
    /// conversion at most.
    pub longest_batch_ms: f64,
    /// From the commit to the last batch.
    pub elapsed_ms: f64,
    /// The pass stopped before the end (a conversion panicked; see the log).
    pub stopped: bool,
}

/// The last pass of each instance (by slot address), for the status. Host-only: passes and the
/// status both run in the host's runtime.
fn passes() -> &'static Mutex<HashMap<usize, Conversion>> {
    static PASSES: OnceLock<Mutex<HashMap<usize, Conversion>>> = OnceLock::new();
    PASSES.get_or_init(Default::default)
}

/// The conversion of these instances (summed), if any had a pass.
pub(crate) fn progress(slots: &[Arc<Slot>]) -> Option<Conversion> {
    let passes = lock(passes());
    let mut found = slots
        .iter()
        .filter_map(|s| passes.get(&(Arc::as_ptr(s) as usize)))
        .peekable();
    found.peek()?;
    Some(found.fold(Conversion::default(), |a, c| Conversion {
        left: a.left + c.left,
        batches: a.batches + c.batches,
        longest_batch_ms: a.longest_batch_ms.max(c.longest_batch_ms),
        elapsed_ms: a.elapsed_ms.max(c.elapsed_ms),
        stopped: a.stopped || c.stopped,
    }))
}

/// Entries converted between two looks at the clock.
const BATCH: usize = 128;
/// How long the pass holds the component at a time (then a little more: the last `BATCH`).
/// 1024 entries at a time took up to 3.7 ms at 10^7 entries (BENCHMARKS.md §3, "Incremental").
const HOLD: Duration = Duration::from_micros(200);

/// The least time the pass leaves the component to its callers between two batches.
const MIN_GAP: Duration = Duration::from_micros(20);

/// The background conversion of one new state.
pub(crate) struct Pass {
    slot: Arc<Slot>,
    /// The new state, as installed; the pass ends when a later update replaces it.
    state: usize,
    step: unsafe fn(*mut (), usize) -> usize,
}

impl Pass {
    pub(crate) fn new(
        slot: Arc<Slot>,
        state: *mut (),
        step: unsafe fn(*mut (), usize) -> usize,
    ) -> Self {
        Pass {
            slot,
            state: state as usize,
            step,
        }
    }

    /// Starts the pass on a thread of its own.
    pub(crate) fn start(self) {
        let id = self.slot.ty.id.clone();
        let spawned = std::thread::Builder::new()
            .name("dsu-convert".into())
            .spawn(move || self.run());
        if let Err(e) = spawned {
            log::warn!(
                "dsu: no thread for the background conversion of `{id}` ({e}); its entries are \
                 converted as calls touch them"
            );
        }
    }

    fn run(self) {
        let started = Instant::now();
        let key = Arc::as_ptr(&self.slot) as usize;
        let id = self.slot.ty.id.clone();
        let mut p = Conversion::default();
        lock(passes()).insert(key, p.clone());
        loop {
            let mut held = Duration::ZERO;
            let r = with_exclusive(&self.slot, "dsu: background conversion", |state| {
                if state as usize != self.state {
                    return None;
                }
                let t = Instant::now();
                let r = catch_unwind(AssertUnwindSafe(|| loop {
                    // SAFETY: the state this pass was made for (checked above), of the type
                    // whose `convert_some` this is; the gate is held exclusively.
                    let left = unsafe { (self.step)(state, BATCH) };
                    if left == 0 || t.elapsed() >= HOLD {
                        break left;
                    }
                }));
                held = t.elapsed();
                Some(r)
            });
            // A later update replaced the state; its own pass (or its transfer) goes on.
            let Some(r) = r else { return };
            p.batches += 1;
            p.longest_batch_ms = p.longest_batch_ms.max(held.as_secs_f64() * 1000.0);
            p.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            match r {
                Err(e) => {
                    p.stopped = true;
                    lock(passes()).insert(key, p);
                    log::error!(
                        "dsu: the background conversion of `{id}` stopped: converting an entry \
                         panicked: {}; the entries left are converted as calls touch them (and \
                         such a call panics the same way)",
                        payload_message(&*e)
                    );
                    return;
                }
                Ok(left) => {
                    p.left = left as u64;
                    lock(passes()).insert(key, p.clone());
                    if left == 0 {
                        log::info!(
                            "dsu: the entries of `{id}` are converted ({} batches, {:.1} ms, \
                             longest batch {:.3} ms)",
                            p.batches,
                            p.elapsed_ms,
                            p.longest_batch_ms
                        );
                        return;
                    }
                    std::thread::sleep(held.max(MIN_GAP));
                }
            }
        }
    }
}
