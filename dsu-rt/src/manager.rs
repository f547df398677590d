//! The update manager: one update at a time, as the sequence of its stages. An in-place update
//! is verify → validate → load → plan → wait for the policy → prepare → transfer → swap →
//! check → commit, or roll back (each stage a file of `update/`); a hand-off is the same up to
//! prepare, then streams the state to a new process (`handoff/engine.rs`). Any failure before
//! the commit leaves the running version as it was, with its state; every outcome is a record
//! in the history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::abi::desc::StateLayout;
use crate::abi::shared::Shared;
use crate::call::component;
use crate::call::thread::lock;
use crate::handoff::{self, engine::Predecessor};
use crate::package::policy::Policy;
use crate::package::signing::PublicKey;
use crate::package::{Change, Engine, Package};
use crate::update::fault::{self, Point};
use crate::update::load::{self, LoadedPatch};
use crate::update::plan::{self, Plan};
use crate::update::prepare::prepare;
use crate::update::record::{component_statuses, ms, ApplyOptions, Outcome, Status, UpdateRecord};
use crate::update::{commit, poison, swap, validate, verify, wait};

static MANAGER: Shared<Manager> = Shared::new("manager", Manager::new);

/// The process's update manager (one per process: a patch reaches the host's).
pub(crate) fn manager() -> &'static Manager {
    MANAGER.get()
}

pub(crate) struct Manager {
    /// Serialises updates: a second apply waits and then sees the first one's result.
    apply_lock: Mutex<()>,
    inner: Mutex<ManagerInner>,
    /// Set when the runtime shuts down: later updates are refused.
    shutting_down: AtomicBool,
}

struct ManagerInner {
    program: String,
    version: String,
    history: Vec<UpdateRecord>,
    next_id: u64,
    patch_dir: Option<PathBuf>,
    staged: Vec<Staged>,
    /// The running layout of every state type, by id (seeded from the host binary).
    states: Option<HashMap<String, &'static StateLayout>>,
    /// When not empty, only packages signed by one of these keys are applied.
    trusted: Vec<PublicKey>,
}

/// An update validated and loaded, waiting for `commit_staged`.
struct Staged {
    id: u64,
    record: UpdateRecord,
    patch: LoadedPatch,
}

impl Manager {
    pub(crate) fn new() -> Self {
        Manager {
            apply_lock: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            inner: Mutex::new(ManagerInner {
                program: String::new(),
                version: "base".to_string(),
                history: Vec::new(),
                next_id: 1,
                patch_dir: None,
                staged: Vec::new(),
                states: None,
                trusted: Vec::new(),
            }),
        }
    }

    pub(crate) fn configure(
        &self,
        program: Option<String>,
        version: Option<String>,
        patch_dir: Option<PathBuf>,
    ) {
        let mut m = lock(&self.inner);
        if let Some(p) = program {
            m.program = p;
        }
        if let Some(v) = version {
            m.version = v;
        }
        if patch_dir.is_some() {
            m.patch_dir = patch_dir;
        }
    }

    /// Refuses every later update.
    pub(crate) fn begin_shutdown(&self) {
        // SeqCst: an apply that takes the lock after this store sees it; pairs with the
        // control server's count of requests being executed.
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Waits for the update in progress, if any, to end.
    pub(crate) fn wait_for_update(&self) {
        drop(lock(&self.apply_lock));
    }

    /// Adds keys to the trusted set: from then on, unsigned packages and packages signed by
    /// other keys are refused.
    pub(crate) fn trust(&self, keys: impl IntoIterator<Item = PublicKey>) {
        let mut m = lock(&self.inner);
        for k in keys {
            if !m.trusted.contains(&k) {
                m.trusted.push(k);
            }
        }
    }

    pub(crate) fn history(&self) -> Vec<UpdateRecord> {
        lock(&self.inner).history.clone()
    }

    pub(crate) fn status(&self) -> Status {
        let components = component_statuses();
        let m = lock(&self.inner);
        Status {
            program: m.program.clone(),
            version: m.version.clone(),
            pid: std::process::id(),
            rustc: crate::abi::build::RUSTC.to_string(),
            target: crate::abi::build::TARGET.to_string(),
            dsu_rt: crate::abi::build::DSU_RT.to_string(),
            components,
            staged: m.staged.iter().map(|s| s.id).collect(),
            history: m.history.clone(),
        }
    }

    /// Records the refusal of a package that could not be read (truncated, not a package,
    /// unreadable file): nothing was opened or changed.
    pub(crate) fn refuse_unreadable(&self, path: &Path, reason: String) -> UpdateRecord {
        let _serial = lock(&self.apply_lock);
        let mut rec = self.new_record(format!("? ({})", path.display()), Vec::new());
        rec.reason = Some(reason);
        self.record(rec)
    }

    /// Applies a package. Never panics on bad input: every failure is an outcome in the
    /// returned record, also kept in the history.
    pub(crate) fn apply(&self, pkg: Package, opts: &ApplyOptions) -> UpdateRecord {
        let _serial = lock(&self.apply_lock);
        let started = Instant::now();
        let mut rec = self.new_record(pkg.manifest.to.clone(), pkg.manifest.changes.clone());
        if pkg.manifest.engine == Engine::Handoff {
            return self.handoff(pkg, rec, opts, started);
        }
        // Verify, validate, load: nothing of the patch runs before its manifest is checked.
        let patch = match self
            .refuse_if_shutting_down()
            .and_then(|()| self.verify(&pkg))
            .and_then(|()| validate::check_toolchain(&pkg.manifest))
            .and_then(|()| validate::check_program(&self.program(), &pkg.manifest))
            .and_then(|()| load::patch_dir(lock(&self.inner).patch_dir.clone()))
            .and_then(|dir| load::load_patch(pkg, rec.id, &dir))
        {
            Ok(p) => p,
            Err(reason) => return self.end(rec, Some(reason), started),
        };
        rec.load_ms = ms(started.elapsed());
        let policy = opts
            .policy
            .clone()
            .unwrap_or_else(|| patch.manifest.policy.clone());
        if policy == Policy::Staged {
            // Plan now, so the operator is told at once whether it could apply.
            if let Err(reason) = self.plan(&patch, opts) {
                return self.end(rec, Some(reason), started);
            }
            rec.outcome = Outcome::Staged;
            rec.total_ms = ms(started.elapsed());
            let mut m = lock(&self.inner);
            m.staged.push(Staged {
                id: rec.id,
                record: rec.clone(),
                patch,
            });
            m.history.push(rec.clone());
            return rec;
        }
        self.run(patch, rec, opts, policy, started)
    }

    /// Applies a staged update.
    pub(crate) fn commit_staged(
        &self,
        id: u64,
        opts: &ApplyOptions,
    ) -> Result<UpdateRecord, String> {
        let _serial = lock(&self.apply_lock);
        self.refuse_if_shutting_down()?;
        let staged = {
            let mut m = lock(&self.inner);
            let pos = m.staged.iter().position(|s| s.id == id).ok_or_else(|| {
                format!("no staged update with id {id}; `status` lists the staged ones")
            })?;
            m.staged.remove(pos)
        };
        let mut rec = staged.record;
        rec.from = lock(&self.inner).version.clone();
        let policy = match opts.policy.clone() {
            Some(Policy::Staged) | None => Policy::default(),
            Some(p) => p,
        };
        Ok(self.run(staged.patch, rec, opts, policy, Instant::now()))
    }

    /// The in-place engine from the plan on: each attempt waits for the policy and prepares;
    /// once every affected component is ready to die, one attempt runs to a commit or a
    /// rollback.
    fn run(
        &self,
        patch: LoadedPatch,
        mut rec: UpdateRecord,
        opts: &ApplyOptions,
        policy: Policy,
        started: Instant,
    ) -> UpdateRecord {
        let mut plan = match self.plan(&patch, opts) {
            Ok(p) => p,
            Err(reason) => {
                rec.outcome = Outcome::Refused;
                return self.end(rec, Some(reason), started);
            }
        };
        plan.policy = policy;
        rec.components = plan.types.iter().map(|t| t.ty.id.clone()).collect();
        // Refused at once, before any wait; checked again once the components are held.
        let slots = plan::all_slots(&plan);
        if let Err(reason) = poison::check(slots.iter().map(|(_, s)| s), opts.clear_poison) {
            rec.outcome = Outcome::Refused;
            return self.end(rec, Some(reason), started);
        }
        drop(slots);
        let fault = match fault::take() {
            Ok(f) => f,
            Err(reason) => {
                rec.outcome = Outcome::Refused;
                return self.end(rec, Some(reason), started);
            }
        };
        let attempts = 1 + plan.policy.retries();
        for attempt in 1..=attempts {
            rec.attempts = attempt;
            let wait_start = Instant::now();
            let waited = wait::wait_for_policy(&plan);
            rec.policy_wait_ms += ms(wait_start.elapsed());
            if let Err(reason) = waited {
                rec.outcome = Outcome::GivenUp;
                return self.end(rec, Some(reason), started);
            }
            match prepare(&plan) {
                Ok(ready) => {
                    rec.prepare_ms = ms(ready.prepared_at - ready.pending_at);
                    if let Err(reason) = fault::hit(fault, Point::Prepare) {
                        commit::release(&plan, &ready);
                        rec.pause_ms = ms(ready.pending_at.elapsed());
                        rec.outcome = Outcome::Aborted;
                        return self.end(rec, Some(reason), started);
                    }
                    if swap::to_commit(
                        &plan,
                        &ready,
                        opts.clear_poison,
                        fault,
                        &self.program(),
                        &mut rec,
                    ) {
                        let mut m = lock(&self.inner);
                        let states = m.states.get_or_insert_with(plan::host_states);
                        for s in &plan.new_states {
                            states.insert(s.id(), s);
                        }
                    }
                    return self.end(rec, None, started);
                }
                Err(abort) => {
                    rec.prepare_ms = ms(abort.waited);
                    rec.pause_ms = ms(abort.waited);
                    rec.busy = abort.busy;
                    rec.reason = Some(abort.reason);
                    rec.outcome = Outcome::Aborted;
                    if attempt < attempts {
                        std::thread::sleep(plan.policy.retry_delay());
                    }
                }
            }
        }
        if attempts > 1 {
            let reason = rec.reason.take().unwrap_or_default();
            rec.reason = Some(format!("gave up after {attempts} attempts; last: {reason}"));
        }
        self.end(rec, None, started)
    }

    /// Applies a hand-off package: validated here, run by `handoff::engine`. On a commit this
    /// process is marked superseded: it exits once its caller has answered the initiator.
    fn handoff(
        &self,
        pkg: Package,
        mut rec: UpdateRecord,
        opts: &ApplyOptions,
        started: Instant,
    ) -> UpdateRecord {
        rec.engine = Engine::Handoff;
        let exe = match self
            .refuse_if_shutting_down()
            .and_then(|()| self.verify(&pkg))
            .and_then(|()| handoff::engine::check(&pkg, opts, &self.program()))
            .and_then(|()| poison::check(&component::all_live_slots(), opts.clear_poison).map(drop))
            .and_then(|()| load::patch_dir(lock(&self.inner).patch_dir.clone()))
            .and_then(|dir| load::write_payload(&dir, &pkg, rec.id, "handoff", 0o700))
        {
            Ok(exe) => exe,
            Err(reason) => return self.end(rec, Some(reason), started),
        };
        let fault = match fault::take() {
            Ok(f) => f,
            Err(reason) => {
                rec.outcome = Outcome::Refused;
                return self.end(rec, Some(reason), started);
            }
        };
        let from = {
            let m = lock(&self.inner);
            Predecessor {
                program: m.program.clone(),
                version: m.version.clone(),
                history: m.history.clone(),
                next_id: m.next_id,
            }
        };
        handoff::engine::run(&pkg, &exe, opts, from, fault, &mut rec, started);
        let rec = self.end(rec, None, started);
        if rec.outcome == Outcome::Committed {
            handoff::superseded(rec.new_pid.unwrap_or_default());
        }
        rec
    }

    /// A process started by a hand-off takes its predecessor's history (and the commit's
    /// record, once it comes).
    pub(crate) fn adopt_history(&self, history: Vec<UpdateRecord>, next_id: u64) {
        let mut m = lock(&self.inner);
        let mut h = history;
        h.append(&mut m.history);
        m.history = h;
        m.next_id = m.next_id.max(next_id);
    }

    /// Appends the record of the hand-off that started this process.
    pub(crate) fn record_handoff(&self, rec: UpdateRecord) {
        let mut m = lock(&self.inner);
        m.next_id = m.next_id.max(rec.id + 1);
        m.history.push(rec);
    }

    // --- helpers of the sequence ---

    /// The refusal of an update that arrives while the process shuts down.
    fn refuse_if_shutting_down(&self) -> Result<(), String> {
        if let Some(pid) = handoff::superseded_by() {
            return Err(format!(
                "this process was replaced by a hand-off (the new process is pid {pid}) and is \
                 exiting; apply the update again: the control socket now reaches the new process"
            ));
        }
        // SeqCst: pairs with `begin_shutdown`.
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(
                "the process is shutting down; the update was not applied (apply it to the \
                 process that replaces this one)"
                    .into(),
            );
        }
        Ok(())
    }

    fn verify(&self, pkg: &Package) -> Result<(), String> {
        verify::check_signature(&lock(&self.inner).trusted, pkg)
    }

    fn program(&self) -> String {
        lock(&self.inner).program.clone()
    }

    fn plan(&self, patch: &LoadedPatch, opts: &ApplyOptions) -> Result<Plan, String> {
        let running = lock(&self.inner)
            .states
            .get_or_insert_with(plan::host_states)
            .clone();
        plan::plan(patch, opts, &running)
    }

    /// A new history entry, refused until it gets further.
    fn new_record(&self, to: String, changes: Vec<Change>) -> UpdateRecord {
        let mut m = lock(&self.inner);
        let id = m.next_id;
        m.next_id += 1;
        UpdateRecord::new(id, m.version.clone(), to, changes)
    }

    /// Ends an update: the reason (if given) and the total time go into the record, which is
    /// kept in the history and logged.
    fn end(&self, mut rec: UpdateRecord, reason: Option<String>, started: Instant) -> UpdateRecord {
        if reason.is_some() {
            rec.reason = reason;
        }
        rec.total_ms = ms(started.elapsed());
        self.record(rec)
    }

    fn record(&self, rec: UpdateRecord) -> UpdateRecord {
        let mut m = lock(&self.inner);
        if rec.outcome == Outcome::Committed {
            m.version = rec.to.clone();
        }
        m.history.push(rec.clone());
        match rec.outcome {
            Outcome::Committed => log::info!(
                "dsu: update {} committed: {} -> {} ({} components, pause {:.3} ms)",
                rec.id,
                rec.from,
                rec.to,
                rec.components.len(),
                rec.pause_ms
            ),
            _ => log::warn!(
                "dsu: update {} ({} -> {}) {:?}: {}",
                rec.id,
                rec.from,
                rec.to,
                rec.outcome,
                rec.reason.as_deref().unwrap_or("")
            ),
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Manifest;

    fn manager_in(dir: &std::path::Path) -> Manager {
        let m = Manager::new();
        m.configure(
            Some("prog".into()),
            Some("1.0.0".into()),
            Some(dir.to_path_buf()),
        );
        m
    }

    fn package(edit: impl FnOnce(&mut Manifest), library: &[u8]) -> Package {
        let mut manifest = Manifest::for_this_toolchain("prog", "1.0.0", "2.0.0");
        edit(&mut manifest);
        Package::new(manifest, library.to_vec())
    }

    #[test]
    fn with_trusted_keys_only_their_signatures_get_in_before_the_library_is_looked_at() {
        use crate::signing::SecretKey;
        let m = Manager::new();
        let trusted = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        m.trust([trusted.public()]);
        // The library is garbage: a refusal that mentions the signature, not the library, shows
        // the signature is checked first.
        let unsigned = package(|_| {}, b"not a library");
        let signed_by = |k: &SecretKey| Package::from_bytes(&unsigned.to_signed_bytes(k)).unwrap();
        let opts = ApplyOptions::default();
        let r = m.apply(unsigned.clone(), &opts);
        assert!(r.reason.unwrap().contains("the package is not signed"));
        let r = m.apply(signed_by(&other), &opts);
        let reason = r.reason.unwrap();
        assert!(
            reason.contains(&format!("signed by key {}", other.public().id()))
                && reason.contains("does not trust"),
            "{reason}"
        );
        let r = m.apply(signed_by(&trusted), &opts);
        assert_eq!(r.outcome, Outcome::Refused);
        let reason = r.reason.unwrap();
        assert!(
            !reason.contains("sign") && !reason.contains("trust"),
            "{reason}"
        );
        assert_eq!(m.history().len(), 3);
    }

    #[test]
    fn after_shutdown_begins_updates_are_refused_and_recorded() {
        let m = Manager::new();
        m.begin_shutdown();
        m.wait_for_update();
        let r = m.apply(package(|_| {}, b"x"), &ApplyOptions::default());
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(r.reason.unwrap().contains("the process is shutting down"));
        assert!(m
            .commit_staged(1, &ApplyOptions::default())
            .unwrap_err()
            .contains("shutting down"));
        assert_eq!(m.history().len(), 1);
    }

    #[test]
    fn refusals_change_nothing_and_are_kept_in_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager_in(dir.path());
        let opts = ApplyOptions::default();
        let r = m.apply(package(|m| m.rustc = "0.0.1 (x)".into(), b""), &opts);
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(r.reason.unwrap().contains("rustc `0.0.1 (x)`"));
        let r = m.apply(
            package(|m| m.target = "riscv64gc-unknown-none-elf".into(), b""),
            &opts,
        );
        assert!(r
            .reason
            .unwrap()
            .contains("target `riscv64gc-unknown-none-elf`"));
        let r = m.apply(
            package(|m| m.debug_assertions = !m.debug_assertions, b""),
            &opts,
        );
        assert!(r.reason.unwrap().contains("debug assertions"));
        let r = m.apply(package(|m| m.program = "other".into(), b""), &opts);
        assert!(r.reason.unwrap().contains("for program `other`"));
        let r = m.apply(package(|_| {}, b"not a shared library"), &opts);
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(
            r.reason.unwrap().contains("not a dsu patch"),
            "refused as a library"
        );
        let h = m.history();
        assert_eq!(
            h.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(h.iter().all(|r| r.outcome == Outcome::Refused));
        assert_eq!(m.status().version, "1.0.0");
    }

    #[test]
    fn committing_an_unknown_staged_update_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager_in(dir.path());
        let e = m.commit_staged(42, &ApplyOptions::default()).unwrap_err();
        assert!(e.contains("no staged update with id 42"));
    }
}
