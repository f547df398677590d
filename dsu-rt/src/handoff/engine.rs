//! The hand-off engine's sequence, on the old process's side (DESIGN.md section 8): validate,
//! start the new executable, prepare (every connection between two requests, every component
//! held), stream the state, wait for ready, commit. Any failure kills the new process and
//! releases everything: this process serves on, unchanged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stream::{encode, guarded, SavedState, Stream, FORMAT};
use super::successor::{spawn_successor, DEFAULT_READY_TIMEOUT};
use crate::abi::build;
use crate::abi::lazy::precopy::{sending, Mode};
use crate::call::component::Slot;
use crate::call::global;
use crate::call::thread::lock;
use crate::package::policy::Policy;
use crate::package::Package;
use crate::sockets;
use crate::update::commit::release_after;
use crate::update::fault::{self, Fault, Point};
use crate::update::prepare::{prepare, Ready};
use crate::update::record::{ms, ApplyOptions, Outcome, UpdateRecord};
use crate::update::validate::{check_base, check_program};
use crate::update::{plan, poison};

/// What the old process passes on besides the state: who it is and what it went through.
pub(crate) struct Predecessor {
    pub(crate) program: String,
    pub(crate) version: String,
    pub(crate) history: Vec<UpdateRecord>,
    pub(crate) next_id: u64,
}

/// Validate: checks a hand-off package against this process.
pub(crate) fn check(pkg: &Package, opts: &ApplyOptions, program: &str) -> Result<(), String> {
    let man = &pkg.manifest;
    if man.target != build::TARGET {
        return Err(format!(
            "the new version was built for `{}`, this machine runs `{}`",
            man.target,
            build::TARGET
        ));
    }
    if !pkg.library.starts_with(b"\x7fELF") {
        return Err(
            "the hand-off package does not carry an executable (no ELF header); rebuild it \
             with `cargo dsu diff --engine handoff`"
                .to_string(),
        );
    }
    check_program(program, man)?;
    no_migration(man)?;
    let policy = opts.policy.clone().unwrap_or_else(|| man.policy.clone());
    if policy != Policy::default() {
        return Err(format!(
            "a hand-off runs as soon as possible; the policy `{policy:?}` is for in-place \
             updates (apply without a policy)"
        ));
    }
    check_base(man)?;
    Ok(())
}

/// A hand-off runs no `migrate` hook: the new process starts from its own `main`, and the files
/// stay as the old version wrote them while the new one appends in its own format (kvstore v6
/// would write format-2 lines into a format-1 journal, which the next start drops). So an
/// update whose package changes data on disk (category 5) is refused by this engine.
pub(crate) fn no_migration(man: &crate::package::Manifest) -> Result<(), String> {
    let mut hooks: Vec<&str> = man
        .changes
        .iter()
        .filter(|c| c.category == 5)
        .map(|c| c.item.as_str())
        .collect();
    if hooks.is_empty() {
        return Ok(());
    }
    hooks.dedup();
    Err(format!(
        "this update changes data on disk ({}), and a process hand-off does not run `migrate`: \
         the new process would write its format into files still in the old one. Apply the \
         change to the data in place first (an update without `--engine handoff`), then the \
         rest by hand-off; nothing changed",
        hooks.join(", ")
    ))
}

/// Runs the hand-off of the validated package whose executable is `exe`, writing how it went
/// into `rec`. On a commit, the caller records it and marks this process superseded.
pub(crate) fn run(
    pkg: &Package,
    exe: &Path,
    opts: &ApplyOptions,
    from: Predecessor,
    fault: Option<Fault>,
    rec: &mut UpdateRecord,
    started: Instant,
) {
    let fail = |rec: &mut UpdateRecord, reason: String| rec.reason = Some(reason);
    let man = &pkg.manifest;
    let timeout = Duration::from_millis(opts.timeout_ms.unwrap_or(man.timeout_ms).max(1));
    let ready_timeout = match man.ready_timeout_ms {
        0 => DEFAULT_READY_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    // 0. The new executable starts (up to its runtime's start) while this one serves.
    let mut successor = match spawn_successor(exe, fault::receive_action(fault)) {
        Ok(s) => s,
        Err(reason) => {
            rec.outcome = Outcome::RolledBack;
            let reason = format!("{reason}; the old process keeps serving, unchanged");
            return fail(rec, reason);
        }
    };
    // 0b. Pre-copy: the states' lazy maps stream to it while this process serves.
    let epoch = if super::precopy::enabled() && crate::abi::lazy::track::any_alive() {
        match super::precopy::run(&mut successor, timeout) {
            Ok((epoch, report)) => {
                rec.precopy = Some(report);
                Some(epoch)
            }
            Err(reason) => {
                successor.kill();
                super::precopy::forget(timeout);
                rec.outcome = Outcome::RolledBack;
                return fail(
                    rec,
                    format!("{reason}; the old process keeps serving, unchanged"),
                );
            }
        }
    } else {
        match successor.send_frame(&[]) {
            Ok(()) => None,
            Err(reason) => {
                successor.kill();
                rec.outcome = Outcome::RolledBack;
                return fail(
                    rec,
                    format!("{reason}; the old process keeps serving, unchanged"),
                );
            }
        }
    };
    let forget = || {
        if epoch.is_some() {
            super::precopy::forget(timeout);
        }
    };
    // 1. Sockets: nothing more accepted or read; every connection finishes its request.
    let pending_at = Instant::now();
    let gate = sockets::gate();
    gate.close();
    if let Err(busy) = gate.wait_idle(pending_at + timeout) {
        successor.kill();
        gate.open();
        forget();
        rec.outcome = Outcome::Aborted;
        rec.prepare_ms = ms(pending_at.elapsed());
        rec.pause_ms = rec.prepare_ms;
        let reason = format!(
            "{busy} connection(s) were still serving a request after {} ms; nothing changed",
            timeout.as_millis()
        );
        return fail(rec, reason);
    }
    // 2. Components: every one held at its gate, protocols idle, threads parked.
    let plan = plan::whole_process(timeout);
    rec.components = plan.types.iter().map(|t| t.ty.id.clone()).collect();
    let ready = match prepare(&plan) {
        Ok(r) => r,
        Err(abort) => {
            successor.kill();
            gate.open();
            forget();
            rec.outcome = Outcome::Aborted;
            rec.prepare_ms = ms(pending_at.elapsed());
            rec.pause_ms = rec.prepare_ms;
            rec.busy = abort.busy;
            return fail(rec, abort.reason);
        }
    };
    rec.prepare_ms = ms(pending_at.elapsed());
    let release = |ready: &Ready| {
        for (_, s) in &ready.slots {
            s.gate.unlock_after_update();
        }
        release_after(&plan);
        gate.open();
    };
    // A call may have poisoned an instance while prepare-to-die waited for it. The stream
    // carries no poison: with `clear_poison` the new process starts with the states as they are.
    let poisoned = match poison::check(ready.slots.iter().map(|(_, s)| s), opts.clear_poison) {
        Ok(p) => p,
        Err(reason) => {
            successor.kill();
            release(&ready);
            forget();
            rec.outcome = Outcome::Refused;
            rec.pause_ms = ms(pending_at.elapsed());
            return fail(rec, reason);
        }
    };
    // 3. Stream, wait for ready.
    let t0 = Instant::now();
    let stream = match epoch {
        Some(e) => sending(Mode::Final, e, 0, || stream(&ready.slots, from)).0,
        None => stream(&ready.slots, from),
    };
    rec.transfer_ms = ms(t0.elapsed());
    let result = match stream {
        Ok((bytes, snap)) => successor
            .feed(&bytes, snap, super::control_socket(), ready_timeout)
            .and_then(|()| fault::hit(fault, Point::Send).inspect_err(|_| successor.kill())),
        Err(reason) => {
            successor.kill();
            Err(reason)
        }
    };
    match result {
        Ok(()) => {}
        Err(reason) => {
            release(&ready);
            forget();
            rec.outcome = Outcome::RolledBack;
            rec.pause_ms = ms(pending_at.elapsed());
            return fail(
                rec,
                format!("{reason}; the old process keeps serving, unchanged"),
            );
        }
    };
    // 4. Commit: the new process opens its sockets; this one never opens its own again.
    rec.outcome = Outcome::Committed;
    rec.new_pid = Some(successor.pid());
    rec.pause_ms = ms(pending_at.elapsed());
    rec.total_ms = ms(started.elapsed());
    rec.cleared_poison = poison::describe(&poisoned);
    if let Err(reason) = successor.commit(rec) {
        successor.kill();
        release(&ready);
        forget();
        rec.outcome = Outcome::RolledBack;
        rec.new_pid = None;
        rec.cleared_poison.clear();
        fail(
            rec,
            format!("{reason}; it was killed and the old process keeps serving"),
        );
        return;
    }
    // Held for good: this process drops their states just before it exits.
    super::successor::hold_until_exit(ready.slots.iter().map(|(_, s)| s.clone()).collect());
}

/// Stream: serializes what a hand-off passes (`slots`, every component instance, held).
pub(super) fn stream(
    slots: &[(usize, Arc<Slot>)],
    from: Predecessor,
) -> Result<(Vec<u8>, sockets::Snapshot), String> {
    let mut components = Vec::new();
    let mut instance: HashMap<String, usize> = HashMap::new();
    for (_, slot) in slots {
        let n = instance.entry(slot.ty.id.clone()).or_insert(0);
        let layout = slot.current_table().desc.state;
        // Relaxed: the manager holds the gate.
        let state = slot.state.load(Ordering::Relaxed);
        let bytes = match layout.save {
            None => None,
            Some(save) => Some(guarded(
                &format!("serializing the state of component `{}`", slot.ty.id),
                || {
                    // SAFETY: `state` is a live state of the type `layout` describes, and the
                    // gate is held: nothing changes it while it is read.
                    unsafe { save(state) }
                },
            )?),
        };
        components.push(SavedState {
            id: slot.ty.id.clone(),
            instance: *n,
            state: layout.id(),
            schema: layout.schema(),
            bytes,
        });
        *n += 1;
    }
    let mut globals = Vec::new();
    for (id, e) in lock(global::registry()).iter() {
        let bytes = match e.desc.save {
            None => None,
            Some(save) => Some(guarded(&format!("serializing global `{id}`"), || {
                // SAFETY: the entry holds a live value of `e.desc`'s type, and every component
                // (its only users outside `main`) is held.
                unsafe { save(e.ptr) }
            })?),
        };
        globals.push(SavedState {
            id: id.clone(),
            instance: 0,
            state: id.clone(),
            schema: e.desc.schema,
            bytes,
        });
    }
    let snap =
        sockets::snapshot().map_err(|e| format!("cannot duplicate the sockets to pass: {e}"))?;
    let stream = Stream {
        format: FORMAT,
        program: from.program,
        version: from.version,
        pid: std::process::id(),
        components,
        globals,
        connections: snap.connections.clone(),
        history: from.history,
        next_id: from.next_id,
    };
    let mut bytes = Vec::new();
    encode(&stream, &mut bytes).map_err(|e| format!("cannot encode the state stream: {e}"))?;
    Ok((bytes, snap))
}
