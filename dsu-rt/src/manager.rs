//! The update manager: validate -> load -> prepare to die -> swap + transfer -> commit, or
//! refuse / abort / roll back with nothing changed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::abi::desc::{
    ComponentDesc, GlobalDesc, GlobalTransferDesc, ProtocolRole, StateLayout, TransferDesc,
};
use crate::abi::root::{this_artifact, PatchDescriptors};
use crate::abi::shared::Shared;
use crate::call::component::{self, ComponentType, Slot, Table, TypeInner};
use crate::call::invoke::{self, COUNTING};
use crate::call::protocol::{self, ProtocolState};
use crate::call::thread::lock;
use crate::call::{global, thread};
use crate::package::policy::{self, Policy};
use crate::package::signing::PublicKey;
use crate::package::{Change, Engine, Package};
use crate::update::load as loader;

/// How an update ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied: the new version runs.
    Committed,
    /// Refused before anything was touched (validation failed).
    Refused,
    /// Prepare-to-die did not reach the safe state in time; nothing changed.
    Aborted,
    /// The policy never allowed the update to start; nothing changed.
    GivenUp,
    /// A state transfer failed; old tables and state restored.
    RolledBack,
    /// Loaded and validated, waiting for an operator's commit.
    Staged,
}

/// A call (or thread, or protocol) that kept an update from reaching its safe state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BusyCall {
    pub component: String,
    pub method: Option<String>,
    pub thread: String,
    pub tid: i64,
    /// How long it was seen busy (at least).
    pub busy_ms: f64,
}

/// One entry of the update history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpdateRecord {
    pub id: u64,
    pub from: String,
    pub to: String,
    pub started_unix_ms: u64,
    pub outcome: Outcome,
    /// Why it was refused, aborted, given up or rolled back.
    pub reason: Option<String>,
    /// Components whose tables were (or would have been) swapped.
    pub components: Vec<String>,
    pub changes: Vec<Change>,
    pub attempts: u32,
    pub policy_wait_ms: f64,
    /// From marking the components pending to reaching the safe state.
    pub prepare_ms: f64,
    /// How long new calls to the updated components waited (pending to release).
    pub pause_ms: f64,
    pub transfer_ms: f64,
    pub total_ms: f64,
    pub busy: Vec<BusyCall>,
    /// The engine that applied (or tried to apply) the update.
    #[serde(default)]
    pub engine: Engine,
    /// A committed hand-off: the process that now serves (this record is the old process's
    /// last word).
    #[serde(default)]
    pub new_pid: Option<u32>,
}

/// What `apply` returns: the update's history record.
pub type UpdateReport = UpdateRecord;

/// Per-request overrides of the package's settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyOptions {
    pub timeout_ms: Option<u64>,
    pub policy: Option<Policy>,
}

/// A component type in a status report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentStatus {
    pub id: String,
    /// 1 for the base version, +1 per update applied to it.
    pub version: u32,
    pub instances: usize,
    /// Calls in flight right now, over all instances.
    pub in_flight: usize,
    pub methods: Vec<String>,
    /// For each poisoned instance, the `&mut self` method whose panic poisoned it.
    #[serde(default)]
    pub poisoned: Vec<String>,
    pub code: String,
    pub state: String,
}

/// The process's update status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub program: String,
    pub version: String,
    pub pid: u32,
    pub rustc: String,
    pub target: String,
    pub dsu_rt: String,
    pub components: Vec<ComponentStatus>,
    pub staged: Vec<u64>,
    pub history: Vec<UpdateRecord>,
}

/// The process's update manager (the host's, also in a patch).
static MANAGER: Shared<Manager> = Shared::new("manager", Manager::new);

pub(crate) fn manager() -> &'static Manager {
    MANAGER.get()
}

pub(crate) struct Manager {
    /// Serialises updates: a second apply waits and then sees the first one's result.
    apply_lock: Mutex<()>,
    inner: Mutex<ManagerInner>,
    /// Set when the runtime shuts down: later updates are refused.
    shutting_down: std::sync::atomic::AtomicBool,
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

struct Staged {
    id: u64,
    record: UpdateRecord,
    patch: LoadedPatch,
}

/// A validated, loaded package.
struct LoadedPatch {
    package_manifest: crate::package::Manifest,
    descriptors: &'static PatchDescriptors,
}

/// What an update will do, computed against the running state.
struct Plan {
    types: Vec<TypeUpdate>,
    protocols: Vec<&'static ProtocolState>,
    park_threads: bool,
    timeout: Duration,
    policy: Policy,
    new_states: Vec<&'static StateLayout>,
    /// Globals whose type changes, with their transfers and the patch's descriptors.
    globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc)>,
}

struct TypeUpdate {
    ty: Arc<ComponentType>,
    new_table: &'static Table,
    transfer: Option<&'static TransferDesc>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Manager {
    pub(crate) fn new() -> Self {
        Manager {
            apply_lock: Mutex::new(()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
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

    /// The refusal of an update that arrives while the process shuts down.
    fn refuse_if_shutting_down(&self) -> Result<(), String> {
        if let Some(pid) = crate::handoff::superseded_by() {
            return Err(format!(
                "this process was replaced by a hand-off (the new process is pid {pid}) and is \
                 exiting; apply the update again: the control socket now reaches the new process"
            ));
        }
        // SeqCst: pairs with `begin_shutdown`.
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(
                "the process is shutting down; the update was not applied (apply it to \
                        the process that replaces this one)"
                    .into(),
            );
        }
        Ok(())
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

    /// The signature check, first of all (nothing of the package is used before it).
    fn check_signature(&self, pkg: &Package) -> Result<(), String> {
        let m = lock(&self.inner);
        if m.trusted.is_empty() {
            return Ok(());
        }
        let trusted = || {
            m.trusted
                .iter()
                .map(|k| k.id())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match pkg.signer() {
            None => Err(format!(
                "the package is not signed, and this process applies only packages signed by a \
                 trusted key ({}); sign it with `cargo dsu diff --sign KEY`",
                trusted()
            )),
            Some(k) if !m.trusted.contains(k) => Err(format!(
                "the package is signed by key {}, which this process does not trust (trusted: \
                 {}); sign it with a trusted key, or add the key to the process's trusted keys",
                k.id(),
                trusted()
            )),
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn history(&self) -> Vec<UpdateRecord> {
        lock(&self.inner).history.clone()
    }

    pub(crate) fn status(&self) -> Status {
        let components = component::types_snapshot()
            .into_iter()
            .map(|ty| {
                let inner = lock(&ty.inner);
                let slots = inner.live_slots();
                ComponentStatus {
                    id: ty.id.clone(),
                    version: inner.version,
                    instances: slots.len(),
                    in_flight: slots
                        .iter()
                        .map(|s| {
                            let (readers, writer) = s.gate.in_flight();
                            readers + writer as usize
                        })
                        .sum(),
                    methods: inner
                        .table
                        .desc
                        .methods
                        .iter()
                        .map(|m| m.name.to_string())
                        .collect(),
                    poisoned: slots
                        .iter()
                        .filter_map(|s| {
                            // Relaxed: a snapshot for the report.
                            let m = s.poisoned.load(Ordering::Relaxed);
                            // SAFETY: method descriptors are never freed.
                            unsafe { m.as_ref() }.map(|m| m.name.to_string())
                        })
                        .collect(),
                    code: format!("{:016x}", inner.table.desc.code),
                    state: format!("{:016x}", inner.table.desc.state.fingerprint()),
                }
            })
            .collect();
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

    /// A new history entry, refused until it gets further.
    fn new_record(&self, to: String, changes: Vec<Change>) -> UpdateRecord {
        let mut m = lock(&self.inner);
        let id = m.next_id;
        m.next_id += 1;
        UpdateRecord {
            id,
            from: m.version.clone(),
            to,
            started_unix_ms: unix_ms(),
            outcome: Outcome::Refused,
            reason: None,
            components: Vec::new(),
            changes,
            attempts: 0,
            policy_wait_ms: 0.0,
            prepare_ms: 0.0,
            pause_ms: 0.0,
            transfer_ms: 0.0,
            total_ms: 0.0,
            busy: Vec::new(),
            engine: Engine::InPlace,
            new_pid: None,
        }
    }

    /// Records the refusal of a package that could not be read (truncated, not a package,
    /// unreadable file): nothing was opened or changed.
    pub(crate) fn refuse_unreadable(&self, path: &std::path::Path, reason: String) -> UpdateRecord {
        let _serial = lock(&self.apply_lock);
        let mut rec = self.new_record(format!("? ({})", path.display()), Vec::new());
        rec.reason = Some(reason);
        self.record(rec)
    }

    /// Applies a package (see the module documentation). Never panics on bad input: every
    /// failure is an outcome in the returned record, also kept in the history.
    pub(crate) fn apply(&self, pkg: Package, opts: &ApplyOptions) -> UpdateRecord {
        let _serial = lock(&self.apply_lock);
        let started = Instant::now();
        let mut rec = self.new_record(pkg.manifest.to.clone(), pkg.manifest.changes.clone());
        if pkg.manifest.engine == Engine::Handoff {
            return self.handoff(pkg, rec, opts, started);
        }
        let patch = match self
            .refuse_if_shutting_down()
            .and_then(|()| self.load(pkg, rec.id))
        {
            Ok(p) => p,
            Err(reason) => {
                rec.reason = Some(reason);
                rec.total_ms = ms(started.elapsed());
                return self.record(rec);
            }
        };
        let policy = opts
            .policy
            .clone()
            .unwrap_or_else(|| patch.package_manifest.policy.clone());
        if policy == Policy::Staged {
            // Validate now, so the operator is told at once whether it could apply.
            if let Err(reason) = self.plan(&patch, opts) {
                rec.reason = Some(reason);
                rec.total_ms = ms(started.elapsed());
                return self.record(rec);
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
                rec.reason = Some(reason);
                rec.total_ms = ms(started.elapsed());
                return self.record(rec);
            }
        };
        plan.policy = policy;
        rec.components = plan.types.iter().map(|t| t.ty.id.clone()).collect();
        let attempts = 1 + plan.policy.retries();
        for attempt in 1..=attempts {
            rec.attempts = attempt;
            let wait_start = Instant::now();
            if let Err(reason) = wait_for_policy(&plan) {
                rec.policy_wait_ms += ms(wait_start.elapsed());
                rec.outcome = Outcome::GivenUp;
                rec.reason = Some(reason);
                rec.total_ms = ms(started.elapsed());
                return self.record(rec);
            }
            rec.policy_wait_ms += ms(wait_start.elapsed());
            match prepare(&plan) {
                Ok(ready) => {
                    rec.prepare_ms = ms(ready.prepared_at - ready.pending_at);
                    let res = swap(&plan, ready, &mut rec);
                    if res.is_ok() {
                        let mut m = lock(&self.inner);
                        let states = m.states.get_or_insert_with(host_states);
                        for s in &plan.new_states {
                            states.insert(s.id(), s);
                        }
                    }
                    rec.total_ms = ms(started.elapsed());
                    return self.record(rec);
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
        rec.total_ms = ms(started.elapsed());
        self.record(rec)
    }

    /// Applies a hand-off package (DESIGN.md section 8, `handoff.rs`): every connection
    /// between two requests, every component held, the state streamed to the new executable;
    /// the update commits when it reports ready, and this process then exits (after its caller
    /// has answered the initiator). Any failure kills the new process and releases everything:
    /// this process serves on, unchanged.
    fn handoff(
        &self,
        pkg: Package,
        mut rec: UpdateRecord,
        opts: &ApplyOptions,
        started: Instant,
    ) -> UpdateRecord {
        rec.engine = Engine::Handoff;
        let done = |mut rec: UpdateRecord, reason: Option<String>| {
            if reason.is_some() {
                rec.reason = reason;
            }
            rec.total_ms = ms(started.elapsed());
            self.record(rec)
        };
        let exe = match self
            .refuse_if_shutting_down()
            .and_then(|()| self.check_signature(&pkg))
            .and_then(|()| self.check_handoff(&pkg, opts))
            .and_then(|()| self.write_payload(&pkg, rec.id, "handoff", 0o700))
        {
            Ok(exe) => exe,
            Err(reason) => return done(rec, Some(reason)),
        };
        let man = &pkg.manifest;
        let timeout = Duration::from_millis(opts.timeout_ms.unwrap_or(man.timeout_ms).max(1));
        let ready_timeout = match man.ready_timeout_ms {
            0 => crate::handoff::DEFAULT_READY_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        // 0. The new executable starts (up to its runtime's start) while this one serves.
        let mut successor = match crate::handoff::spawn_successor(&exe) {
            Ok(s) => s,
            Err(reason) => {
                rec.outcome = Outcome::RolledBack;
                let reason = format!("{reason}; the old process keeps serving, unchanged");
                return done(rec, Some(reason));
            }
        };
        // 1. Sockets: nothing more accepted or read; every connection finishes its request.
        let pending_at = Instant::now();
        let gate = crate::sockets::gate();
        gate.close();
        if let Err(busy) = gate.wait_idle(pending_at + timeout) {
            successor.kill();
            gate.open();
            rec.outcome = Outcome::Aborted;
            rec.prepare_ms = ms(pending_at.elapsed());
            rec.pause_ms = rec.prepare_ms;
            let reason = format!(
                "{busy} connection(s) were still serving a request after {} ms; nothing changed",
                timeout.as_millis()
            );
            return done(rec, Some(reason));
        }
        // 2. Components: every one held at its gate, protocols idle, threads parked.
        let plan = self.whole_process_plan(timeout);
        rec.components = plan.types.iter().map(|t| t.ty.id.clone()).collect();
        let ready = match prepare(&plan) {
            Ok(r) => r,
            Err(abort) => {
                successor.kill();
                gate.open();
                rec.outcome = Outcome::Aborted;
                rec.prepare_ms = ms(pending_at.elapsed());
                rec.pause_ms = rec.prepare_ms;
                rec.busy = abort.busy;
                return done(rec, Some(abort.reason));
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
        // 3. Stream, wait for ready.
        let t0 = Instant::now();
        let stream = self.stream(&ready);
        rec.transfer_ms = ms(t0.elapsed());
        let result = match stream {
            Ok((bytes, snap)) => successor.feed(
                &bytes,
                snap,
                crate::handoff::control_socket(),
                ready_timeout,
            ),
            Err(reason) => {
                successor.kill();
                Err(reason)
            }
        };
        match result {
            Ok(()) => {}
            Err(reason) => {
                release(&ready);
                rec.outcome = Outcome::RolledBack;
                rec.pause_ms = ms(pending_at.elapsed());
                return done(
                    rec,
                    Some(format!(
                        "{reason}; the old process keeps serving, unchanged"
                    )),
                );
            }
        };
        // 4. Commit: the new process opens its sockets; this one never opens its own again.
        rec.outcome = Outcome::Committed;
        rec.new_pid = Some(successor.pid());
        rec.pause_ms = ms(pending_at.elapsed());
        rec.total_ms = ms(started.elapsed());
        if let Err(reason) = successor.commit(&rec) {
            successor.kill();
            release(&ready);
            rec.outcome = Outcome::RolledBack;
            rec.new_pid = None;
            return done(
                rec,
                Some(format!(
                    "{reason}; it was killed and the old process keeps serving"
                )),
            );
        }
        let rec = done(rec, None);
        lock(&self.inner).version = rec.to.clone();
        crate::handoff::superseded(rec.new_pid.unwrap_or_default());
        rec
    }

    /// A package for another program is refused (either name may be unset).
    fn check_program(&self, man: &crate::package::Manifest) -> Result<(), String> {
        let program = lock(&self.inner).program.clone();
        if !program.is_empty() && !man.program.is_empty() && program != man.program {
            return Err(format!(
                "the package is for program `{}`, this process is `{program}`",
                man.program
            ));
        }
        Ok(())
    }

    /// Checks a hand-off package against this process.
    fn check_handoff(&self, pkg: &Package, opts: &ApplyOptions) -> Result<(), String> {
        let man = &pkg.manifest;
        if man.target != crate::abi::build::TARGET {
            return Err(format!(
                "the new version was built for `{}`, this machine runs `{}`",
                man.target,
                crate::abi::build::TARGET
            ));
        }
        if !pkg.library.starts_with(b"\x7fELF") {
            return Err(
                "the hand-off package does not carry an executable (no ELF header); rebuild it \
                 with `cargo dsu diff --engine handoff`"
                    .to_string(),
            );
        }
        self.check_program(man)?;
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

    /// Writes a package's payload to a file of its own in the patch directory.
    fn write_payload(
        &self,
        pkg: &Package,
        id: u64,
        kind: &str,
        mode: u32,
    ) -> Result<PathBuf, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.patch_dir()?;
        let path = dir.join(format!("{kind}-{id}-{}", sanitize(&pkg.manifest.to)));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, &pkg.library)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The directory patches (and hand-off executables) are written to, created if needed.
    fn patch_dir(&self) -> Result<PathBuf, String> {
        let dir = lock(&self.inner).patch_dir.clone();
        let dir = dir.unwrap_or_else(|| {
            let tmp = std::env::temp_dir();
            sweep_stale_patch_dirs(&tmp);
            tmp.join(format!("dsu-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the patch directory {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// A plan that holds every component, protocol and registered thread of the process.
    fn whole_process_plan(&self, timeout: Duration) -> Plan {
        let mut all: Vec<Arc<ComponentType>> = lock(component::types()).values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let mut protocol_names = std::collections::BTreeSet::new();
        let types = all
            .into_iter()
            .map(|ty| {
                let table = lock(&ty.inner).table;
                for m in table.desc.methods {
                    if let ProtocolRole::Begin(n) | ProtocolRole::End(n) = m.protocol {
                        protocol_names.insert(n.to_string());
                    }
                }
                TypeUpdate {
                    ty,
                    new_table: table,
                    transfer: None,
                }
            })
            .collect();
        Plan {
            types,
            protocols: protocol_names.iter().map(|n| protocol::state(n)).collect(),
            park_threads: true,
            timeout,
            policy: Policy::default(),
            new_states: Vec::new(),
            globals: Vec::new(),
        }
    }

    /// Serializes what a hand-off passes, with every component held.
    fn stream(&self, ready: &Ready) -> Result<(Vec<u8>, crate::sockets::Snapshot), String> {
        use crate::handoff::SavedState;
        let mut components = Vec::new();
        let mut instance: HashMap<String, usize> = HashMap::new();
        for (_, slot) in &ready.slots {
            let n = instance.entry(slot.ty.id.clone()).or_insert(0);
            let layout = slot.current_table().desc.state;
            // Relaxed: the manager holds the gate.
            let state = slot.state.load(Ordering::Relaxed);
            let bytes = match layout.save {
                None => None,
                Some(save) => Some(crate::handoff::guarded(
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
                Some(save) => Some(crate::handoff::guarded(
                    &format!("serializing global `{id}`"),
                    || {
                        // SAFETY: the entry holds a live value of `e.desc`'s type, and every
                        // component (its only users outside `main`) is held.
                        unsafe { save(e.ptr) }
                    },
                )?),
            };
            globals.push(SavedState {
                id: id.clone(),
                instance: 0,
                state: id.clone(),
                schema: e.desc.schema,
                bytes,
            });
        }
        let snap = crate::sockets::snapshot()
            .map_err(|e| format!("cannot duplicate the sockets to pass: {e}"))?;
        let (program, version, history, next_id) = {
            let m = lock(&self.inner);
            (
                m.program.clone(),
                m.version.clone(),
                m.history.clone(),
                m.next_id,
            )
        };
        let stream = crate::handoff::Stream {
            format: crate::handoff::FORMAT,
            program,
            version,
            pid: std::process::id(),
            components,
            globals,
            connections: snap.connections.clone(),
            history,
            next_id,
        };
        let mut bytes = Vec::new();
        crate::handoff::encode(&stream, &mut bytes)
            .map_err(|e| format!("cannot encode the state stream: {e}"))?;
        Ok((bytes, snap))
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

    /// Checks the manifest, loads the library from a path of its own, checks its root and
    /// adopts the host's context.
    fn load(&self, pkg: Package, id: u64) -> Result<LoadedPatch, String> {
        self.check_signature(&pkg)?;
        let man = &pkg.manifest;
        let host = [
            ("rustc", man.rustc.as_str(), crate::abi::build::RUSTC),
            ("target", man.target.as_str(), crate::abi::build::TARGET),
            ("dsu-rt", man.dsu_rt.as_str(), crate::abi::build::DSU_RT),
        ];
        for (what, pkgv, hostv) in host {
            if pkgv != hostv {
                return Err(format!(
                    "the package was built with {what} `{pkgv}`, this process with `{hostv}`; \
                     rebuild the patch with the base's toolchain and Cargo.lock"
                ));
            }
        }
        if man.debug_assertions != crate::abi::build::DEBUG_ASSERTIONS {
            return Err(format!(
                "the package was built with debug assertions {}, this process {}; build the \
                 patch with the base's profile (--release or not)",
                on_off(man.debug_assertions),
                on_off(crate::abi::build::DEBUG_ASSERTIONS)
            ));
        }
        self.check_program(man)?;
        let dir = self.patch_dir()?;
        // dlopen hands back the library it already has for a path it has seen, so every patch
        // gets a path of its own.
        let path = dir.join(format!("patch-{id}-{}.so", sanitize(&man.to)));
        std::fs::write(&path, &pkg.library)
            .map_err(|e| format!("cannot write the patch library to {}: {e}", path.display()))?;
        let loaded = loader::load(&path).map_err(|e| {
            // Nothing will ever run from this file; a library that did get mapped stays mapped.
            let _ = std::fs::remove_file(&path);
            e.to_string()
        })?;
        Ok(LoadedPatch {
            package_manifest: pkg.manifest,
            descriptors: loaded.descriptors,
        })
    }

    /// Validates a loaded patch against the running state and computes what to swap.
    fn plan(&self, patch: &LoadedPatch, opts: &ApplyOptions) -> Result<Plan, String> {
        let man = &patch.package_manifest;
        let d = patch.descriptors;
        let running_states: HashMap<String, &'static StateLayout> = {
            let mut m = lock(&self.inner);
            m.states.get_or_insert_with(host_states).clone()
        };
        check_base(man)?;
        // Old definitions the patch carries must be the running ones.
        for s in d.states.iter().filter(|s| s.is_old) {
            let id = s.id();
            match running_states.get(&id) {
                Some(r) if r.fingerprint() == s.fingerprint() => {}
                Some(r) => {
                    return Err(format!(
                        "the patch expects state type `{id}` as {}, but the process runs {}; the \
                         patch was built against another base",
                        describe(s),
                        describe(r)
                    ))
                }
                None => {
                    return Err(format!(
                        "the patch carries an old definition of `{id}`, which this process does \
                         not have; the patch was built against another program"
                    ))
                }
            }
        }
        let olds: HashSet<String> = d
            .states
            .iter()
            .filter(|s| s.is_old)
            .map(|s| s.id())
            .collect();
        for s in d.states.iter().filter(|s| !s.is_old) {
            let id = s.id();
            if let Some(r) = running_states.get(&id) {
                if r.fingerprint() != s.fingerprint() && !olds.contains(&id) {
                    return Err(format!(
                        "state type `{id}` changed ({} -> {}) but the patch carries no old \
                         definition of it to transfer from; build the patch with `cargo dsu diff`",
                        describe(r),
                        describe(s)
                    ));
                }
            }
        }
        // Globals are shared with the host: a global whose type changes needs the patch's
        // transfer from the running type.
        let running_globals = running_globals();
        let mut globals = Vec::new();
        for g in d.globals {
            if let Some(fp) = running_globals.get(&g.id()) {
                if *fp != g.fingerprint {
                    let t = d.global_transfers.iter().find(|t| {
                        t.id() == g.id()
                            && t.new_fingerprint == g.fingerprint
                            && t.old_fingerprint == *fp
                    });
                    match t {
                        Some(t) => globals.push((*t, *g)),
                        None => {
                            return Err(format!(
                                "global `{}` changed type and the patch carries no transfer from \
                                 the running type; build the patch with `cargo dsu diff`",
                                g.id()
                            ))
                        }
                    }
                }
            }
        }
        let host_descs: HashMap<String, &'static ComponentDesc> = this_artifact()
            .components
            .iter()
            .map(|c| (c.id(), *c))
            .collect();
        let forced: HashSet<&str> = man
            .constraints
            .components
            .iter()
            .map(String::as_str)
            .collect();
        let mut types = Vec::new();
        let mut protocol_names: HashSet<String> =
            man.constraints.protocols_idle.iter().cloned().collect();
        let mut seen = HashSet::new();
        for p in d.components {
            let id = p.id();
            if !seen.insert(id.clone()) {
                return Err(format!("the patch defines component `{id}` twice"));
            }
            let ty = match find_type(&id) {
                Some(ty) => ty,
                None => match host_descs.get(&id) {
                    // Declared by the host but not registered yet: update it all the same, so
                    // that later registrations of the old version are transferred.
                    Some(h) => component::type_for(h),
                    // New in this version: nothing runs it yet.
                    None => continue,
                },
            };
            let mut inner = lock(&ty.inner);
            let running = inner.table.desc;
            // A patch carries the old definition of every state type it transfers, also of one
            // whose own fingerprint is unchanged but which holds a changed type in a container.
            let state_changed = running.state.fingerprint() != p.state.fingerprint()
                || olds.contains(&p.state.id());
            let changed = state_changed || running.code != p.code || forced.contains(id.as_str());
            if !changed {
                let missing = component::resolve_cells(&inner, p);
                if !missing.is_empty() {
                    return Err(format!(
                        "the patch calls {} of component `{id}`, which the running version does \
                         not have, but does not update `{id}`",
                        missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                continue;
            }
            let transfer = if state_changed {
                let t = d.transfers.iter().find(|t| {
                    t.new.fingerprint() == p.state.fingerprint()
                        && t.old.fingerprint() == running.state.fingerprint()
                });
                match t {
                    Some(t) => Some(*t),
                    None => {
                        return Err(format!(
                            "the state of component `{id}` changed ({} -> {}) and the patch \
                             carries no transfer from the running layout; write a \
                             `#[dsu::transfer]` or let `cargo dsu diff` generate one",
                            describe(running.state),
                            describe(p.state)
                        ))
                    }
                }
            } else {
                None
            };
            for m in running.methods.iter().chain(p.methods) {
                if let ProtocolRole::Begin(n) | ProtocolRole::End(n) = m.protocol {
                    protocol_names.insert(n.to_string());
                }
            }
            let new_table = inner.table_for(p);
            let missing = component::resolve_cells(&inner, p);
            debug_assert!(missing.is_empty());
            drop(inner);
            types.push(TypeUpdate {
                ty,
                new_table,
                transfer,
            });
        }
        for id in &forced {
            if !types.iter().any(|t| t.ty.id == *id) {
                return Err(format!(
                    "the package requires component `{id}` to be updated, but the patch does \
                     not contain it"
                ));
            }
        }
        types.sort_by(|a, b| a.ty.id.cmp(&b.ty.id));
        let mut protocol_names: Vec<String> = protocol_names.into_iter().collect();
        protocol_names.sort();
        Ok(Plan {
            types,
            protocols: protocol_names.iter().map(|n| protocol::state(n)).collect(),
            // A global's type changes (category 3): registered threads park whatever the
            // manifest says, since the library's own descriptors show it.
            park_threads: man.constraints.park_threads || !globals.is_empty(),
            timeout: Duration::from_millis(opts.timeout_ms.unwrap_or(man.timeout_ms).max(1)),
            policy: Policy::default(),
            new_states: d.states.iter().filter(|s| !s.is_old).copied().collect(),
            globals,
        })
    }
}

/// The base the package was built against must be what runs.
fn check_base(man: &crate::package::Manifest) -> Result<(), String> {
    for b in &man.base {
        if let Some(ty) = find_type(&b.id) {
            let code = lock(&ty.inner).table.desc.code;
            if code != b.code {
                return Err(format!(
                    "the package was built against another version of component `{}` than the \
                     one running (code {:016x}, running {:016x}); build it from the running \
                     version's source",
                    b.id, b.code, code
                ));
            }
        }
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

fn describe(s: &StateLayout) -> String {
    let fields: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
    format!("{} bytes {{{}}}", s.size, fields.join(", "))
}

fn find_type(id: &str) -> Option<Arc<ComponentType>> {
    lock(component::types()).get(id).cloned()
}

fn host_states() -> HashMap<String, &'static StateLayout> {
    this_artifact()
        .states
        .iter()
        .filter(|s| !s.is_old)
        .map(|s| (s.id(), *s))
        .collect()
}

fn running_globals() -> HashMap<String, u64> {
    let mut all: HashMap<String, u64> = this_artifact()
        .globals
        .iter()
        .map(|g| (g.id(), g.fingerprint))
        .collect();
    for (id, e) in lock(global::registry()).iter() {
        all.insert(id.clone(), e.fingerprint);
    }
    all
}

fn all_slots(plan: &Plan) -> Vec<(usize, Arc<Slot>)> {
    let mut v = Vec::new();
    for (i, t) in plan.types.iter().enumerate() {
        for s in lock(&t.ty.inner).live_slots() {
            v.push((i, s));
        }
    }
    v
}

fn wait_for_policy(plan: &Plan) -> Result<(), String> {
    match &plan.policy {
        Policy::Asap { .. } | Policy::Staged => Ok(()),
        Policy::Window {
            start,
            end,
            give_up_ms,
            ..
        } => {
            let deadline = Instant::now() + Duration::from_millis(*give_up_ms);
            loop {
                if policy::in_window(*start, *end, policy::now_minutes()) {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "the update window {}-{} UTC did not open within {give_up_ms} ms",
                        String::from(*start),
                        String::from(*end)
                    ));
                }
                std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
            }
        }
        Policy::RateBelow {
            calls_per_sec,
            sample_ms,
            give_up_ms,
            ..
        } => {
            let deadline = Instant::now() + Duration::from_millis(*give_up_ms);
            let sample = Duration::from_millis((*sample_ms).max(1));
            // Relaxed: a switch for a statistics counter.
            COUNTING.store(true, Ordering::Relaxed);
            let result = loop {
                let slots = all_slots(plan);
                let before: Vec<u64> = slots
                    .iter()
                    .map(|(_, s)| s.calls.load(Ordering::Relaxed))
                    .collect();
                let t0 = Instant::now();
                std::thread::sleep(sample);
                let secs = t0.elapsed().as_secs_f64();
                let busiest = slots
                    .iter()
                    .zip(before)
                    .map(|((_, s), b)| {
                        let n = s.calls.load(Ordering::Relaxed).saturating_sub(b);
                        (n as f64 / secs, s.ty.id.clone())
                    })
                    .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
                if busiest.0 < *calls_per_sec {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(format!(
                        "component `{}` stayed at {:.0} calls/s, above the policy's bound of \
                         {calls_per_sec} calls/s, for {give_up_ms} ms",
                        busiest.1, busiest.0
                    ));
                }
            };
            COUNTING.store(false, Ordering::Relaxed);
            result
        }
    }
}

/// The safe state, reached: every affected gate held by the manager, with the type locks that
/// keep new instances from being registered until the swap is done.
struct Ready {
    slots: Vec<(usize, Arc<Slot>)>,
    pending_at: Instant,
    prepared_at: Instant,
}

struct Abort {
    reason: String,
    busy: Vec<BusyCall>,
    waited: Duration,
}

/// Releases everything prepare-to-die took, on every exit path.
struct Release<'a> {
    plan: &'a Plan,
    pending: Vec<Arc<Slot>>,
    parked: bool,
    armed: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for s in &self.pending {
            s.gate.clear_pending();
        }
        for p in &self.plan.protocols {
            p.unblock();
        }
        if self.parked {
            thread::registry().parking.release();
        }
    }
}

fn prepare(plan: &Plan) -> Result<Ready, Abort> {
    let start = Instant::now();
    let deadline = start + plan.timeout;
    let mut release = Release {
        plan,
        pending: Vec::new(),
        parked: false,
        armed: true,
    };
    let abort = |reason: String, busy: Vec<BusyCall>| Abort {
        reason,
        busy,
        waited: start.elapsed(),
    };
    // Registered threads first, while every gate is open: they finish what they are doing and
    // stop at their update point. (Parking them after gates were marked pending would catch
    // them between two calls of one iteration, which is not their safe point.)
    if plan.park_threads {
        release.parked = true;
        let reg = thread::registry();
        if let Err((busy, total)) = reg.parking.request_and_wait(deadline) {
            let all = lock(&reg.all).clone();
            let names = reg.parking.busy_threads(&all);
            return Err(abort(
                format!(
                    "{busy} of {total} registered thread(s) did not reach an update point within \
                     {} ms: {}",
                    plan.timeout.as_millis(),
                    names
                        .iter()
                        .map(|(n, t)| format!("`{n}` (tid {t})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                names
                    .into_iter()
                    .map(|(thread, tid)| BusyCall {
                        component: String::new(),
                        method: None,
                        thread,
                        tid,
                        busy_ms: ms(start.elapsed()),
                    })
                    .collect(),
            ));
        }
    }
    // Then protocols: new instances wait, instances in progress run to their end.
    for p in &plan.protocols {
        p.block();
    }
    for p in &plan.protocols {
        if !p.wait_idle(deadline) {
            return Err(abort(
                format!(
                    "protocol `{}` still had {} instance(s) in progress after {} ms",
                    p.name,
                    p.active(),
                    plan.timeout.as_millis()
                ),
                Vec::new(),
            ));
        }
    }
    let pending_at = Instant::now();
    let mut slots = all_slots(plan);
    for (_, s) in &slots {
        s.gate.set_pending();
        release.pending.push(s.clone());
    }
    // prepare_to_die hooks run on a helper thread, so a hook stuck behind a busy call cannot
    // keep the manager from honouring its timeout.
    let hooks: Vec<(Arc<Slot>, usize, String)> = slots
        .iter()
        .filter_map(|(_, s)| {
            let desc = s.current_table().desc;
            desc.prepare_to_die.map(|i| (s.clone(), i, s.ty.id.clone()))
        })
        .collect();
    if !hooks.is_empty() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dsu-prepare-to-die".into())
            .spawn(move || {
                for (slot, i, id) in hooks {
                    if let Err(p) = invoke::call_hook(&slot, i) {
                        let _ = tx.send(Err(format!(
                            "the `prepare_to_die` hook of `{id}` panicked: {p}"
                        )));
                        return;
                    }
                }
                let _ = tx.send(Ok(()));
            })
            .map_err(|e| {
                abort(
                    format!("cannot start the prepare-to-die thread: {e}"),
                    Vec::new(),
                )
            })?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(abort(reason, Vec::new())),
            Err(_) => {
                let busy = busy_calls(&slots, &HashMap::new());
                return Err(abort(
                    format!(
                        "the `prepare_to_die` hooks did not finish within {} ms",
                        plan.timeout.as_millis()
                    ),
                    busy,
                ));
            }
        }
    }
    // Drain: take every gate at once. A gate that cannot be taken releases the others, so a
    // call chain through two affected components never waits on the manager holding one.
    let mut first_seen: HashMap<(i64, u64), Instant> = HashMap::new();
    let mut spins = 0u32;
    let mut last_scan = Instant::now();
    loop {
        let mut taken = 0;
        for (_, s) in &slots {
            if s.gate.try_lock_for_update() {
                taken += 1;
            } else {
                break;
            }
        }
        if taken == slots.len() {
            // Instances registered while we waited must be in the update too.
            let now_slots = all_slots(plan);
            let missing: Vec<_> = now_slots
                .iter()
                .filter(|(_, n)| !slots.iter().any(|(_, s)| Arc::ptr_eq(s, n)))
                .cloned()
                .collect();
            if missing.is_empty() {
                release.armed = false;
                return Ok(Ready {
                    slots,
                    pending_at,
                    prepared_at: Instant::now(),
                });
            }
            for (_, s) in &slots {
                s.gate.unlock_keep_pending();
            }
            for (_, s) in &missing {
                s.gate.set_pending();
                release.pending.push(s.clone());
            }
            slots.extend(missing);
            continue;
        }
        for (_, s) in &slots[..taken] {
            s.gate.unlock_keep_pending();
        }
        let now = Instant::now();
        if now.duration_since(last_scan) > Duration::from_millis(5) {
            last_scan = now;
            note_busy(&slots, &mut first_seen);
        }
        if now >= deadline {
            note_busy(&slots, &mut first_seen);
            let busy = busy_calls(&slots, &first_seen);
            let who = if busy.is_empty() {
                "calls in flight".to_string()
            } else {
                busy.iter()
                    .map(|b| {
                        format!(
                            "`{}::{}` on thread `{}` (tid {}) for {:.0} ms",
                            b.component,
                            b.method.as_deref().unwrap_or("?"),
                            b.thread,
                            b.tid,
                            b.busy_ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(abort(
                format!(
                    "the components did not become passive within {} ms: busy: {who}",
                    plan.timeout.as_millis()
                ),
                busy,
            ));
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else if spins < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn note_busy(slots: &[(usize, Arc<Slot>)], first_seen: &mut HashMap<(i64, u64), Instant>) {
    let threads = lock(&thread::registry().all).clone();
    let now = Instant::now();
    for t in threads {
        if t.depth() == 0 {
            continue;
        }
        let frames = (t.depth() as usize).min(thread::TRACKED);
        let on_ours = t.slots[..frames].iter().any(|p| {
            let p = p.load(Ordering::Relaxed) as *const ();
            slots
                .iter()
                .any(|(_, s)| std::ptr::eq(&s.gate as *const _ as *const (), p))
        });
        if on_ours {
            first_seen
                .entry((t.os_tid, t.seq.load(Ordering::Relaxed)))
                .or_insert(now);
        }
    }
}

fn busy_calls(
    slots: &[(usize, Arc<Slot>)],
    first_seen: &HashMap<(i64, u64), Instant>,
) -> Vec<BusyCall> {
    let threads = lock(&thread::registry().all).clone();
    let now = Instant::now();
    let mut out = Vec::new();
    for t in threads {
        let depth = t.depth() as usize;
        for i in 0..depth.min(thread::TRACKED) {
            let p = t.slots[i].load(Ordering::Relaxed) as *const ();
            let Some((_, s)) = slots
                .iter()
                .find(|(_, s)| std::ptr::eq(&s.gate as *const _ as *const (), p))
            else {
                continue;
            };
            let m = t.methods[i].load(Ordering::Relaxed);
            // SAFETY: method descriptors are statics of the host or of a never-unloaded patch.
            let method = unsafe { m.as_ref() }.map(|m| m.name.to_string());
            let since = first_seen
                .get(&(t.os_tid, t.seq.load(Ordering::Relaxed)))
                .copied()
                .unwrap_or(now);
            out.push(BusyCall {
                component: s.ty.id.clone(),
                method,
                thread: t.name.clone(),
                tid: t.os_tid,
                busy_ms: ms(now - since),
            });
        }
    }
    // Gates held by threads the registry does not track (deeper than TRACKED frames).
    for (_, s) in slots {
        let (readers, writer) = s.gate.in_flight();
        let listed = out.iter().filter(|b| b.component == s.ty.id).count();
        if (readers > 0 || writer) && listed == 0 {
            out.push(BusyCall {
                component: s.ty.id.clone(),
                method: None,
                thread: format!("{} call(s) in flight", readers.max(writer as usize)),
                tid: 0,
                busy_ms: 0.0,
            });
        }
    }
    out
}

/// Swaps tables and transfers state with every affected gate held. On a failed transfer,
/// nothing is installed and the old state is untouched.
fn swap(plan: &Plan, ready: Ready, rec: &mut UpdateRecord) -> Result<(), ()> {
    // Hold every affected type's lock (in id order) so that no instance is registered between
    // the transfer and the install.
    let guards: Vec<MutexGuard<'_, TypeInner>> =
        plan.types.iter().map(|t| lock(&t.ty.inner)).collect();
    let t0 = Instant::now();
    let mut transferred: Vec<(usize, Arc<Slot>, *mut (), *mut ())> = Vec::new();
    let mut failure = None;
    for (i, slot) in &ready.slots {
        let Some(t) = plan.types[*i].transfer else {
            continue;
        };
        // Relaxed: the manager holds the gate (acquired with Acquire).
        let old = slot.state.load(Ordering::Relaxed);
        // SAFETY: `old` is a live state of the running type, whose layout equals `t.old`
        // (checked in `plan`); the transfer only reads it.
        match unsafe { (t.transfer)(old) } {
            Ok(new) => transferred.push((*i, slot.clone(), old, new)),
            Err(f) => {
                failure = Some(format!(
                    "the state transfer of component `{}` {f}; rolled back, the old version keeps \
                     running with its state",
                    slot.ty.id
                ));
                break;
            }
        }
    }
    // Globals whose type changes: converted like states, installed with them.
    let mut new_globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc, *mut ())> =
        Vec::new();
    if failure.is_none() {
        for (g, desc) in &plan.globals {
            let running = lock(global::registry()).get(&g.id()).map(|e| e.ptr);
            let Some(old) = running else { continue };
            // SAFETY: the entry holds a live value of the running type, whose fingerprint is
            // the transfer's `old_fingerprint` (checked in `plan`); every user is passive.
            match unsafe { (g.transfer)(old) } {
                Ok(new) => new_globals.push((g, desc, new)),
                Err(f) => {
                    failure = Some(format!(
                        "the transfer of global `{}` {f}; rolled back, the old version keeps \
                         running with its state",
                        g.id()
                    ));
                    break;
                }
            }
        }
    }
    rec.transfer_ms = ms(t0.elapsed());
    // Drops what the transfers produced, lets the callers go on the old version, records why.
    let roll_back =
        |transferred: &[(usize, Arc<Slot>, *mut (), *mut ())],
         new_globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc, *mut ())>,
         rec: &mut UpdateRecord,
         reason: String| {
            for (g, _, new) in new_globals {
                // SAFETY: produced by this transfer, and not (or no longer) published.
                unsafe { (g.drop_new)(new) };
            }
            for (i, _, _, new) in transferred {
                let t = plan.types[*i]
                    .transfer
                    .expect("transferred with a transfer");
                // SAFETY: produced by this transfer; no caller saw it (the gates are still held).
                unsafe { (t.drop_new)(*new) };
            }
            for (_, s) in &ready.slots {
                s.gate.unlock_after_update();
            }
            release_after(plan);
            rec.pause_ms = ms(ready.pending_at.elapsed());
            rec.outcome = Outcome::RolledBack;
            rec.reason = Some(reason);
        };
    if let Some(reason) = failure {
        drop(guards);
        roll_back(&transferred, new_globals, rec, reason);
        return Err(());
    }
    let mut guards = guards;
    let old_tables: Vec<&'static Table> = guards.iter().map(|g| g.table).collect();
    for (t, inner) in plan.types.iter().zip(guards.iter_mut()) {
        inner.table = t.new_table;
        inner.version += 1;
        if let Some(tr) = t.transfer {
            inner.transfers.push(tr);
        }
    }
    let install = |tables: &dyn Fn(usize) -> &'static Table| {
        for (i, slot) in &ready.slots {
            // Release: readers outside the gate (status) see a complete table; callers are
            // ordered by the gate's release below.
            slot.table
                .store(tables(*i) as *const Table as *mut Table, Ordering::Release);
        }
    };
    install(&|i| plan.types[i].new_table);
    for (_, slot, _, new) in &transferred {
        slot.state.store(*new, Ordering::Release);
    }
    let mut replaced_globals = Vec::new();
    {
        let mut registry = lock(global::registry());
        for (g, desc, new) in &new_globals {
            // The old value stays allocated: code of an older version may have cached a pointer.
            let old = registry.insert(
                g.id(),
                global::GlobalEntry {
                    fingerprint: g.new_fingerprint,
                    ptr: *new,
                    desc,
                },
            );
            replaced_globals.push((g.id(), old));
        }
    }
    // Data on disk (category 5): each new version's `migrate` hook, then each new version's
    // `health_check`, with the components still held. A failure rolls the whole update back.
    let checks = |i: usize| {
        let desc = plan.types[i].new_table.desc;
        [
            desc.migrate.map(|m| (m, "the data migration (`migrate`)")),
            desc.health_check
                .map(|h| (h, "the health check (`health_check`)")),
        ]
    };
    let mut check_failure = None;
    'checks: for pass in 0..2 {
        for (i, slot) in &ready.slots {
            let Some((hook, what)) = checks(*i)[pass] else {
                continue;
            };
            if let Err(e) = invoke::call_check_locked(slot, hook) {
                check_failure = Some(format!(
                    "{what} of component `{}` failed: {e}; rolled back, the old version keeps \
                     running with its state",
                    slot.ty.id
                ));
                break 'checks;
            }
        }
    }
    if let Some(reason) = check_failure {
        for ((t, inner), old) in plan.types.iter().zip(guards.iter_mut()).zip(&old_tables) {
            inner.table = old;
            inner.version -= 1;
            if t.transfer.is_some() {
                inner.transfers.pop();
            }
        }
        install(&|i| old_tables[i]);
        for (_, slot, old, _) in &transferred {
            slot.state.store(*old, Ordering::Release);
        }
        {
            let mut registry = lock(global::registry());
            for (id, old) in replaced_globals {
                match old {
                    Some(e) => registry.insert(id, e),
                    None => registry.remove(&id),
                };
            }
        }
        drop(guards);
        roll_back(&transferred, new_globals, rec, reason);
        return Err(());
    }
    drop(guards);
    for (_, s) in &ready.slots {
        s.gate.unlock_after_update();
    }
    release_after(plan);
    rec.pause_ms = ms(ready.pending_at.elapsed());
    rec.outcome = Outcome::Committed;
    // The old states are released after the callers are let go: freeing a large state must not
    // lengthen the pause.
    for (i, _, old, _) in transferred {
        let t = plan.types[i].transfer.expect("transferred with a transfer");
        // SAFETY: the transfer succeeded, so the old state is released exactly once, here.
        unsafe { (t.release_old)(old) };
    }
    Ok(())
}

fn release_after(plan: &Plan) {
    for p in &plan.protocols {
        p.unblock();
    }
    if plan.park_threads {
        thread::registry().parking.release();
    }
}

/// Removes the default patch directories (`$TMPDIR/dsu-PID`) of processes that have ended.
///
/// A process keeps its patch libraries on disk while it runs (a backtrace through patched
/// code reads them), and never knows when it is killed; so each process that loads a patch
/// sweeps the directories its dead predecessors left. Only directories named `dsu-PID` whose
/// process is gone are touched, only `patch-*.so` files are removed from them, and a directory
/// with anything else in it is left alone.
fn sweep_stale_patch_dirs(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dsu-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let n = f.file_name();
            let n = n.to_string_lossy();
            // Patch libraries, and the executables of hand-offs (a process started by one moves
            // its executable into its own directory, so these are only failed ones').
            if (n.starts_with("patch-") && n.ends_with(".so")) || n.starts_with("handoff-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        // Fails, and leaves the directory, if anything else is in it.
        let _ = std::fs::remove_dir(&dir);
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

    #[test]
    fn patch_files_get_paths_of_their_own() {
        assert_eq!(sanitize("2.0.0-rc/1 x"), "2.0.0-rc_1_x");
    }

    #[test]
    fn patch_dirs_of_ended_processes_are_swept_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let mk = |name: &str, files: &[&str]| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            for f in files {
                std::fs::write(d.join(f), b"x").unwrap();
            }
            d
        };
        let stale = mk(&format!("dsu-{dead}"), &["patch-1-v2.so", "patch-2-v3.so"]);
        let mine = mk(&format!("dsu-{}", std::process::id()), &["patch-1-v2.so"]);
        let foreign = mk("dsu-notapid", &["patch-1-v2.so"]);
        let kept = mk(
            &format!("dsu-{}", dead + 1_000_000),
            &["patch-1-v2.so", "notes.txt"],
        );
        sweep_stale_patch_dirs(tmp.path());
        assert!(!stale.exists(), "a dead process's patches are removed");
        assert!(
            mine.join("patch-1-v2.so").exists(),
            "this process's are kept"
        );
        assert!(
            foreign.join("patch-1-v2.so").exists(),
            "not a dsu-PID directory"
        );
        assert!(
            kept.join("notes.txt").exists(),
            "only patch libraries are removed"
        );
        assert!(!kept.join("patch-1-v2.so").exists());
    }
}
