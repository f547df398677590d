//! Transfer: with every affected gate held, each instance's state is converted to the new
//! version's type, and so is each global whose type changes. A transfer only reads the old
//! value, so until the swap installs them nothing of the running program has changed: a failed
//! transfer drops what the others produced and the old version runs on with its state.

use std::sync::Arc;

use super::plan::Plan;
use super::prepare::Ready;
use crate::abi::desc::{GlobalDesc, GlobalTransferDesc};
use crate::call::component::Slot;
use crate::call::global;
use crate::call::thread::lock;

/// What the transfers produced, not yet installed.
pub(crate) struct Produced {
    /// (index of the type in the plan, instance, old state, new state).
    pub(crate) states: Vec<(usize, Arc<Slot>, *mut (), *mut ())>,
    /// (transfer, the patch's descriptor of the global, new value).
    pub(crate) globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc, *mut ())>,
}

/// Runs every transfer. On a failure, returns what was produced so far (to be discarded) and
/// why.
pub(crate) fn run(plan: &Plan, ready: &Ready) -> Result<Produced, (Produced, String)> {
    let mut produced = Produced {
        states: Vec::new(),
        globals: Vec::new(),
    };
    for (i, slot) in &ready.slots {
        let Some(t) = plan.types[*i].transfer else {
            continue;
        };
        // Relaxed: the manager holds the gate (acquired with Acquire).
        let old = slot.state.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `old` is a live state of the running type, whose layout equals `t.old`
        // (checked in `plan`); the transfer only reads it.
        match unsafe { (t.transfer)(old) } {
            Ok(new) => produced.states.push((*i, slot.clone(), old, new)),
            Err(f) => {
                let reason = format!(
                    "the state transfer of component `{}` {f}; rolled back, the old version keeps \
                     running with its state",
                    slot.ty.id
                );
                return Err((produced, reason));
            }
        }
    }
    // Globals whose type changes: converted like states, installed with them.
    for (g, desc) in &plan.globals {
        let running = lock(global::registry()).get(&g.id()).map(|e| e.ptr);
        let Some(old) = running else { continue };
        // SAFETY: the entry holds a live value of the running type, whose fingerprint is the
        // transfer's `old_fingerprint` (checked in `plan`); every user is passive.
        match unsafe { (g.transfer)(old) } {
            Ok(new) => produced.globals.push((g, desc, new)),
            Err(f) => {
                let reason = format!(
                    "the transfer of global `{}` {f}; rolled back, the old version keeps running \
                     with its state",
                    g.id()
                );
                return Err((produced, reason));
            }
        }
    }
    Ok(produced)
}

impl Produced {
    /// Drops everything the transfers produced: the update rolls back.
    pub(crate) fn discard(self, plan: &Plan) {
        for (g, _, new) in self.globals {
            // SAFETY: produced by this transfer, and not (or no longer) published.
            unsafe { (g.drop_new)(new) };
        }
        for (i, _, _, new) in self.states {
            let t = plan.types[i].transfer.expect("transferred with a transfer");
            // SAFETY: produced by this transfer; no caller saw it (the gates are still held).
            unsafe { (t.drop_new)(new) };
        }
    }

    /// The update commits: each new state with lazy maps makes them its own (the components are
    /// still held).
    pub(crate) fn settle(&self, plan: &Plan) {
        for (i, _, _, new) in &self.states {
            let t = plan.types[*i]
                .transfer
                .expect("transferred with a transfer");
            if let Some(settle) = t.settle {
                // SAFETY: the installed new state, of the type the transfer produced; the
                // manager holds its gate.
                unsafe { settle(*new) };
            }
        }
    }

    /// The background conversions the committed update needs: one per new state with lazy maps.
    pub(crate) fn background(&self, plan: &Plan) -> Vec<super::convert::Pass> {
        let mut passes = Vec::new();
        for (i, slot, _, new) in &self.states {
            let t = plan.types[*i]
                .transfer
                .expect("transferred with a transfer");
            if let Some(step) = t.convert_some {
                passes.push(super::convert::Pass::new(slot.clone(), *new, step));
            }
        }
        passes
    }

    /// Releases the old states once the update committed and the callers were let go (freeing a
    /// large state must not lengthen the pause). Old globals stay allocated: code of an older
    /// version may have cached a pointer.
    pub(crate) fn release_old(self, plan: &Plan) {
        for (i, _, old, _) in self.states {
            let t = plan.types[i].transfer.expect("transferred with a transfer");
            // SAFETY: the transfer succeeded, so the old state is released exactly once, here.
            unsafe { (t.release_old)(old) };
        }
    }
}
