//! Commit or roll back: the held gates open (callers go on, on the new version or the old one),
//! protocols and parked threads are released, and the record says how the update ended.

use super::plan::Plan;
use super::prepare::Ready;
use super::record::{ms, Outcome, UpdateRecord};
use super::transfer::Produced;
use crate::call::thread;

/// The new version runs: the callers are let go, then the old states are released.
pub(crate) fn commit(plan: &Plan, ready: &Ready, produced: Produced, rec: &mut UpdateRecord) {
    produced.settle(plan);
    release(plan, ready);
    rec.pause_ms = ms(ready.pending_at.elapsed());
    rec.outcome = Outcome::Committed;
    let passes = produced.background(plan);
    produced.release_old(plan);
    for p in passes {
        p.start();
    }
}

/// The old version runs on with its state: what the transfers produced is dropped and the
/// callers are let go.
pub(crate) fn roll_back(
    plan: &Plan,
    ready: &Ready,
    produced: Produced,
    rec: &mut UpdateRecord,
    reason: String,
) {
    produced.discard(plan);
    release(plan, ready);
    rec.pause_ms = ms(ready.pending_at.elapsed());
    rec.outcome = Outcome::RolledBack;
    rec.reason = Some(reason);
}

/// Opens every gate the manager holds, then releases protocols and threads.
pub(crate) fn release(plan: &Plan, ready: &Ready) {
    for (_, s) in &ready.slots {
        s.gate.unlock_after_update();
    }
    release_after(plan);
}

/// Releases the protocols and the parked threads an update held.
pub(crate) fn release_after(plan: &Plan) {
    for p in &plan.protocols {
        p.unblock();
    }
    if plan.park_threads {
        thread::registry().parking.release();
    }
}
