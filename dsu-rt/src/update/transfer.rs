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
    pub(crate) states: Vec<NewState>,
    /// (transfer, the patch's descriptor of the global, new value).
    pub(crate) globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc, *mut ())>,
}

/// One instance's transferred state.
pub(crate) struct NewState {
    /// The index of the type in the plan.
    pub(crate) i: usize,
    pub(crate) slot: Arc<Slot>,
    /// The running state, and the new one.
    pub(crate) old: *mut (),
    pub(crate) new: *mut (),
    /// The copy of the running state the transfer read instead of it, if any (see [`run`]).
    pub(crate) copy: Option<StateCopy>,
}

/// A copy of a running state, made before a generated transfer whose new version has a
/// `migrate` hook (see [`run`]).
pub(crate) struct StateCopy {
    pub(crate) ptr: *mut (),
    /// Drops a whole state of the running type (the original, once the update commits).
    pub(crate) drop_old: unsafe fn(*mut ()),
}

/// Runs every transfer.
///
/// A generated transfer moves the fields it keeps: the new state and the one it read share
/// them until the update ends. A `migrate` hook may change those fields (replace a `String`,
/// clear a map), which frees memory the state it was read from still points to; a health
/// check that fails after it would then roll back to a state with dangling fields. So when the
/// new version has a `migrate` hook, the transfer reads a copy of the running state (made
/// through its serde form, as a hand-off would carry it) and the running state shares nothing
/// with the new one: a rollback puts it back untouched and drops the new state whole (leaking
/// the copy, whose moved fields the migration may have freed); a commit frees the copy without
/// the moved fields and the original whole. The copy costs a pause that grows with the state,
/// only for updates with a `migrate` hook. On a failure, returns what was produced so far (to be discarded) and
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
        let copy = if t.generated && plan.types[*i].new_table.desc.migrate.is_some() {
            match copy_of(slot, old) {
                Ok(c) => Some(c),
                Err(reason) => return Err((produced, reason)),
            }
        } else {
            None
        };
        let from = copy.as_ref().map_or(old, |c| c.ptr);
        // SAFETY: `from` is a live state of the running type (the running state or its copy),
        // whose layout equals `t.old` (checked in `plan`); the transfer only reads it.
        match unsafe { (t.transfer)(from) } {
            Ok(new) => produced.states.push(NewState {
                i: *i,
                slot: slot.clone(),
                old,
                new,
                copy,
            }),
            Err(f) => {
                if let Some(c) = copy {
                    // SAFETY: the copy is ours alone, and the failed transfer left it whole.
                    unsafe { (c.drop_old)(c.ptr) };
                }
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

/// A copy of the running state `old` of `slot`, through its serde form.
fn copy_of(slot: &Slot, old: *mut ()) -> Result<StateCopy, String> {
    let desc = slot.current_table().desc;
    let layout = desc.state;
    let (Some(save), Some(load)) = (layout.save, layout.load) else {
        return Err(format!(
            "component `{}`: the new version has a `migrate` hook, and a rollback after it needs a \
             copy of the running state, which a `rebuild` state cannot make; write a \
             `#[dsu::transfer]` for it (it clones what it keeps); nothing changed",
            slot.ty.id
        ));
    };
    let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `old` is the live state of this table's type; the gate is held.
        let bytes = unsafe { save(old) }?;
        load(&bytes)
    }))
    .unwrap_or_else(|p| {
        Err(format!(
            "panicked: {}",
            crate::abi::desc::payload_message(&*p)
        ))
    });
    match copied {
        Ok(ptr) => Ok(StateCopy {
            ptr,
            drop_old: desc.drop_state,
        }),
        Err(e) => Err(format!(
            "component `{}`: copying the running state failed: {e} (a copy is made before a transfer whose new version has a \
             `migrate` hook); nothing changed",
            slot.ty.id
        )),
    }
}

impl Produced {
    /// Drops everything the transfers produced: the update rolls back.
    pub(crate) fn discard(self, plan: &Plan) {
        for (g, _, new) in self.globals {
            // SAFETY: produced by this transfer, and not (or no longer) published.
            unsafe { (g.drop_new)(new) };
        }
        for s in self.states {
            let t = plan.types[s.i]
                .transfer
                .expect("transferred with a transfer");
            if s.copy.is_some() {
                // The copy's moved fields are the new state's now (or were freed by the
                // migration): the new state is dropped whole and the copy is leaked.
                // SAFETY: produced by this transfer; no caller saw it (the gates are still held).
                unsafe { (plan.types[s.i].new_table.desc.drop_state)(s.new) };
            } else {
                // SAFETY: produced by this transfer; no caller saw it (the gates are still held).
                unsafe { (t.drop_new)(s.new) };
            }
        }
    }

    /// The update commits: each new state with lazy maps makes them its own (the components are
    /// still held).
    pub(crate) fn settle(&self, plan: &Plan) {
        for s in &self.states {
            let t = plan.types[s.i]
                .transfer
                .expect("transferred with a transfer");
            if let Some(settle) = t.settle {
                // SAFETY: the installed new state, of the type the transfer produced; the
                // manager holds its gate.
                unsafe { settle(s.new) };
            }
        }
    }

    /// The background conversions the committed update needs: one per new state with lazy maps.
    pub(crate) fn background(&self, plan: &Plan) -> Vec<super::convert::Pass> {
        let mut passes = Vec::new();
        for s in &self.states {
            let t = plan.types[s.i]
                .transfer
                .expect("transferred with a transfer");
            if let Some(step) = t.convert_some {
                passes.push(super::convert::Pass::new(s.slot.clone(), s.new, step));
            }
        }
        passes
    }

    /// Releases the old states once the update committed and the callers were let go (freeing a
    /// large state must not lengthen the pause). Old globals stay allocated: code of an older
    /// version may have cached a pointer.
    pub(crate) fn release_old(self, plan: &Plan) {
        for s in self.states {
            let t = plan.types[s.i]
                .transfer
                .expect("transferred with a transfer");
            match s.copy {
                Some(c) => {
                    // SAFETY: the transfer read the copy, so it is released without its moved
                    // fields; the original shared nothing with the new state.
                    unsafe { (t.release_old)(c.ptr) };
                    // SAFETY: as above; released exactly once, here.
                    unsafe { (c.drop_old)(s.old) };
                }
                // SAFETY: the transfer succeeded, so the old state is released exactly once,
                // here.
                None => unsafe { (t.release_old)(s.old) },
            }
        }
    }
}
