//! Pre-copy, on the old process's side (DESIGN.md §8, "Pre-copy"): after the new process has
//! started and before the pause, the states' [`LazyMap`](crate::LazyMap)s stream to it while this
//! process serves, the iterative pre-copy of live VM migration. Round after round, each
//! component is held as a `&mut self` call would hold it for one batch (about 500 µs of
//! serialization), the batch goes to the new process once the component is released, and the
//! pass then leaves the component to its callers as long again. A map records the slots written
//! after they were sent (`abi/lazy/precopy.rs`); a round sends those. The pre-copy ends once a
//! round leaves at most [`PAUSE_LEFT`] slots per component to send, and the pause then sends
//! only those.
//!
//! The batches are frames on the hand-off channel before the descriptors: `u64 LE` length, then
//! a MessagePack [`Chunk`]; a zero length ends them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stream::{de_bytes, encode, guarded, ser_bytes};
use super::successor::Successor;
use crate::abi::lazy::precopy::{new_epoch, sending, Mode};
use crate::call::component::Slot;
use crate::call::invoke::with_exclusive;
use crate::update::plan::{all_slots, whole_process};
use crate::update::record::{ms, Precopy};

/// Set to `0` in the old process's environment: no pre-copy (the whole state goes in the pause,
/// as before pre-copy existed; for comparisons).
pub(crate) const DISABLE_ENV: &str = "DSU_PRECOPY";

/// A round that leaves at most this many slots per component to send ends the pre-copy.
pub(crate) const PAUSE_LEFT: usize = 4096;
/// How long a batch holds a component, about.
const HOLD: Duration = Duration::from_micros(500);
/// The pre-copy gives up converging after this long (writes faster than it streams); the pause
/// then sends what is left, which is correct, only longer.
const MAX_TIME: Duration = Duration::from_secs(30);

/// One batch: a component's state serialized with its maps' delta forms.
#[derive(Serialize, Deserialize)]
pub(crate) struct Chunk {
    pub(crate) component: String,
    /// The state type's id and schema fingerprint in the old process.
    pub(crate) state: String,
    pub(crate) schema: u64,
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub(crate) bytes: Vec<u8>,
}

struct Todo {
    slot: Arc<Slot>,
    /// Slots per batch, adjusted so that a batch holds the component about [`HOLD`].
    budget: usize,
    left: usize,
}

/// Whether this process pre-copies (`DSU_PRECOPY=0` turns it off).
pub(crate) fn enabled() -> bool {
    std::env::var(DISABLE_ENV).map_or(true, |v| v != "0")
}

/// Streams the batches and the end frame to `successor`; returns the hand-off's epoch (for the
/// pause's stream and for [`forget`]) and what was done. On an error the maps may hold tracks:
/// the caller calls [`forget`].
pub(crate) fn run(successor: &mut Successor, timeout: Duration) -> Result<(u64, Precopy), String> {
    let epoch = new_epoch();
    let started = Instant::now();
    let mut report = Precopy::default();
    let plan = whole_process(timeout);
    let mut todo: Vec<Todo> = all_slots(&plan)
        .into_iter()
        .map(|(_, slot)| Todo {
            slot,
            budget: 1024,
            left: usize::MAX,
        })
        .collect();
    while !todo.is_empty() {
        report.rounds += 1;
        let mut i = 0;
        while i < todo.len() {
            let t = &mut todo[i];
            let got = with_exclusive(&t.slot, "dsu: hand-off pre-copy", |state| {
                let layout = t.slot.current_table().desc.state;
                let save = layout.save?;
                let held = Instant::now();
                let (bytes, batch) = sending(Mode::Batch, epoch, t.budget, || {
                    guarded(
                        &format!("pre-copying the state of component `{}`", t.slot.ty.id),
                        // SAFETY: `state` is a live state of the type `layout` describes, and
                        // the component is held: nothing changes it while it is read.
                        || unsafe { save(state) },
                    )
                });
                Some((bytes, batch, held.elapsed(), layout.id(), layout.schema()))
            });
            let Some((bytes, batch, held, state, schema)) = got else {
                // A `rebuild` state: nothing to send.
                todo.remove(i);
                continue;
            };
            let bytes = bytes?;
            if batch.maps == 0 {
                // No map in the state: it goes whole in the pause.
                todo.remove(i);
                continue;
            }
            report.batches += 1;
            report.entries += batch.sent as u64;
            report.longest_hold_ms = report.longest_hold_ms.max(ms(held));
            t.left = batch.left;
            let scale = HOLD.as_secs_f64() / held.as_secs_f64().max(1e-6);
            t.budget = ((t.budget as f64 * scale.clamp(0.5, 2.0)) as usize).clamp(64, 1 << 16);
            let chunk = Chunk {
                component: t.slot.ty.id.clone(),
                state,
                schema,
                bytes,
            };
            let mut frame = Vec::new();
            encode(&chunk, &mut frame).map_err(|e| format!("cannot encode a batch: {e}"))?;
            successor.send_frame(&frame)?;
            // Leave the component to its callers as long as the batch held it.
            std::thread::sleep(held);
            i += 1;
        }
        let converged = todo.iter().all(|t| t.left <= PAUSE_LEFT);
        if converged || started.elapsed() >= MAX_TIME {
            break;
        }
    }
    report.left_at_pause = todo.iter().map(|t| t.left as u64).sum();
    successor.send_frame(&[])?;
    report.ms = ms(started.elapsed());
    Ok((epoch, report))
}

/// The hand-off did not commit: every map forgets what it sent (so that writes stop recording
/// slots, and a later hand-off starts over). Takes each component as a batch does.
pub(crate) fn forget(timeout: Duration) {
    let plan = whole_process(timeout);
    for (_, slot) in all_slots(&plan) {
        with_exclusive(&slot, "dsu: hand-off pre-copy", |state| {
            let Some(save) = slot.current_table().desc.state.save else {
                return;
            };
            let (r, _) = sending(Mode::Forget, 0, 0, || {
                guarded("forgetting a pre-copy", || {
                    // SAFETY: as in `run`.
                    unsafe { save(state) }
                })
            });
            if let Err(e) = r {
                log::warn!(
                    "dsu: {e}; the maps of `{}` keep recording writes until they are dropped",
                    slot.ty.id
                );
            }
        });
    }
}
