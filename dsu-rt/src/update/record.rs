//! What an update leaves behind: its record in the history, the busy calls that kept it from
//! its safe state, and the status report. Every stage writes into the record; nothing here
//! changes the running program.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::call::component;
use crate::call::thread::lock;
use crate::package::policy::Policy;
use crate::package::{Change, Engine};

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
    /// Checking the package and loading its library (in place), before any component is held.
    #[serde(default)]
    pub load_ms: f64,
    pub busy: Vec<BusyCall>,
    /// The engine that applied (or tried to apply) the update.
    #[serde(default)]
    pub engine: Engine,
    /// A committed hand-off: the process that now serves (this record is the old process's
    /// last word).
    #[serde(default)]
    pub new_pid: Option<u32>,
    /// A hand-off's pre-copy, before its pause (`None`: none ran; no `LazyMap` in the process,
    /// or `DSU_PRECOPY=0`).
    #[serde(default)]
    pub precopy: Option<Precopy>,
    /// The poisoned instances the update took over as they were, asked to by `clear_poison`
    /// (each as `Component (method)`): their poison was cleared when it committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared_poison: Vec<String>,
}

/// What a hand-off's pre-copy did while the old process served (DESIGN.md §8, "Pre-copy").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Precopy {
    /// From the first batch to the end frame.
    pub ms: f64,
    pub rounds: u64,
    pub batches: u64,
    /// Entries sent (an entry written meanwhile counts each time it is sent).
    pub entries: u64,
    /// The longest a batch held a component: what a call waited for the pre-copy at most.
    pub longest_hold_ms: f64,
    /// Entries left for the pause to send.
    pub left_at_pause: u64,
}

/// What `apply` returns: the update's history record.
pub type UpdateReport = UpdateRecord;

/// Per-request overrides of the package's settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyOptions {
    pub timeout_ms: Option<u64>,
    pub policy: Option<Policy>,
    /// Take over poisoned instances as they are (and clear their poison on a commit) instead
    /// of refusing the update (see `update::poison`).
    #[serde(default)]
    pub clear_poison: bool,
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
    /// The background conversion of the component's lazy maps after the last update that
    /// took them over, if any (over all instances).
    #[serde(default)]
    pub conversion: Option<super::convert::Conversion>,
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

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl UpdateRecord {
    /// A new history entry, refused until it gets further.
    pub(crate) fn new(id: u64, from: String, to: String, changes: Vec<Change>) -> UpdateRecord {
        UpdateRecord {
            id,
            from,
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
            load_ms: 0.0,
            busy: Vec::new(),
            engine: Engine::InPlace,
            new_pid: None,
            precopy: None,
            cleared_poison: Vec::new(),
        }
    }
}

/// Every registered component type, for the status report.
pub(crate) fn component_statuses() -> Vec<ComponentStatus> {
    component::types_snapshot()
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
                    .filter_map(|s| s.poisoned_by().map(str::to_string))
                    .collect(),
                code: format!("{:016x}", inner.table.desc.code),
                state: format!("{:016x}", inner.table.desc.state.fingerprint()),
                conversion: super::convert::progress(&slots),
            }
        })
        .collect()
}
