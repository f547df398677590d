//! Swap: with every affected gate and type lock held, the new tables, the transferred states
//! and the converted globals are installed. Until the update commits the swap can be undone:
//! the old tables, states and globals are kept. [`to_commit`] runs the in-place sequence from
//! ready to die on: transfer, install, check, then commit or roll back.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use std::time::Instant;

use super::fault::{self, Fault, Point};
use super::plan::Plan;
use super::prepare::Ready;
use super::record::{ms, Outcome, UpdateRecord};
use super::transfer::{self, Produced};
use super::{check, commit, poison, staging};
use crate::call::component::{Table, TypeInner};
use crate::call::global::{self, GlobalEntry};
use crate::call::thread::lock;

/// With every affected component ready to die: transfer, swap, check, then commit or roll
/// back. Returns whether the update committed.
pub(crate) fn to_commit(
    plan: &Plan,
    ready: &Ready,
    clear_poison: bool,
    fault: Option<Fault>,
    program: &str,
    rec: &mut UpdateRecord,
) -> bool {
    // A call may have poisoned an instance while prepare-to-die waited for it.
    let poisoned = match poison::check(ready.slots.iter().map(|(_, s)| s), clear_poison) {
        Ok(p) => p,
        Err(reason) => {
            commit::release(plan, ready);
            rec.pause_ms = ms(ready.pending_at.elapsed());
            rec.outcome = Outcome::Refused;
            rec.reason = Some(reason);
            return false;
        }
    };
    let guards = lock_types(plan);
    let t0 = Instant::now();
    let produced = transfer::run(plan, ready);
    rec.transfer_ms = ms(t0.elapsed());
    let produced = match produced.and_then(|p| match fault::hit(fault, Point::Transfer) {
        Ok(()) => Ok(p),
        Err(reason) => Err((p, reason)),
    }) {
        Ok(p) => p,
        Err((produced, reason)) => {
            drop(guards);
            commit::roll_back(plan, ready, produced, rec, reason);
            return false;
        }
    };
    let swapped = install(plan, ready, &produced, guards);
    // What `migrate` writes with `dsu::write_staged` is moved into place only if the
    // checks pass, and with the commit; a rollback deletes it.
    staging::begin();
    let staged = check::run(plan, ready)
        .and_then(|()| fault::hit(fault, Point::Check))
        .and_then(|()| staging::commit());
    let staged = match staged {
        Ok(s) => s,
        Err(reason) => {
            staging::discard();
            swapped.undo(plan, ready, &produced);
            commit::roll_back(plan, ready, produced, rec, reason);
            return false;
        }
    };
    drop(swapped);
    fault::hit(fault, Point::Commit).expect("a fault at commit only kills");
    // The files are the new version's from here: before any call can acknowledge a write.
    staged.finish(program, &rec.to);
    // The gates are still held: no call sees the poison end before the new version runs.
    rec.cleared_poison = poison::describe(&poisoned);
    poison::clear(&poisoned);
    commit::commit(plan, ready, produced, rec);
    true
}

/// Every affected type's lock, taken in id order (the plan's) before the transfers run, so that
/// no instance is registered between the transfer and the install.
pub(crate) fn lock_types(plan: &Plan) -> Vec<MutexGuard<'_, TypeInner>> {
    plan.types.iter().map(|t| lock(&t.ty.inner)).collect()
}

/// An installed swap that can still be undone.
pub(crate) struct Swapped<'a> {
    guards: Vec<MutexGuard<'a, TypeInner>>,
    old_tables: Vec<&'static Table>,
    /// Each converted global's id and the entry it replaced.
    replaced_globals: Vec<(String, Option<GlobalEntry>)>,
}

/// Installs the plan's tables in each type and instance, the produced states and globals.
pub(crate) fn install<'a>(
    plan: &Plan,
    ready: &Ready,
    produced: &Produced,
    mut guards: Vec<MutexGuard<'a, TypeInner>>,
) -> Swapped<'a> {
    let old_tables: Vec<&'static Table> = guards.iter().map(|g| g.table).collect();
    for (t, inner) in plan.types.iter().zip(guards.iter_mut()) {
        inner.table = t.new_table;
        inner.version += 1;
        if let Some(tr) = t.transfer {
            inner.transfers.push(tr);
        }
    }
    install_tables(ready, &|i| plan.types[i].new_table);
    for s in &produced.states {
        s.slot.state.store(s.new, Ordering::Release);
    }
    let mut replaced_globals = Vec::new();
    let mut registry = lock(global::registry());
    for (g, desc, new) in &produced.globals {
        // The old value stays allocated: code of an older version may have cached a pointer.
        let old = registry.insert(
            g.id(),
            GlobalEntry {
                fingerprint: g.new_fingerprint,
                ptr: *new,
                desc,
            },
        );
        replaced_globals.push((g.id(), old));
    }
    drop(registry);
    Swapped {
        guards,
        old_tables,
        replaced_globals,
    }
}

fn install_tables(ready: &Ready, tables: &dyn Fn(usize) -> &'static Table) {
    for (i, slot) in &ready.slots {
        // Release: readers outside the gate (status) see a complete table; callers are ordered
        // by the gate's release.
        slot.table
            .store(tables(*i) as *const Table as *mut Table, Ordering::Release);
    }
}

impl Swapped<'_> {
    /// Puts the old tables, states and globals back.
    pub(crate) fn undo(mut self, plan: &Plan, ready: &Ready, produced: &Produced) {
        for ((t, inner), old) in plan
            .types
            .iter()
            .zip(self.guards.iter_mut())
            .zip(&self.old_tables)
        {
            inner.table = old;
            inner.version -= 1;
            if t.transfer.is_some() {
                inner.transfers.pop();
            }
        }
        install_tables(ready, &|i| self.old_tables[i]);
        for s in &produced.states {
            s.slot.state.store(s.old, Ordering::Release);
        }
        let mut registry = lock(global::registry());
        for (id, old) in self.replaced_globals {
            match old {
                Some(e) => registry.insert(id, e),
                None => registry.remove(&id),
            };
        }
    }
}
