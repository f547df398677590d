//! Plan: a loaded patch is checked against the running state (its old definitions must be the
//! running ones, every changed state and global needs a transfer), and what the update will
//! swap is computed: the component types, their new tables and transfers, the protocols to
//! quiesce, whether registered threads park, the globals that change type.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::load::LoadedPatch;
use super::record::ApplyOptions;
use super::validate::check_base;
use crate::abi::desc::{
    ComponentDesc, GlobalDesc, GlobalTransferDesc, ProtocolRole, StateLayout, TransferDesc,
};
use crate::abi::root::this_artifact;
use crate::call::component::{self, ComponentType, Slot, Table};
use crate::call::global;
use crate::call::protocol::{self, ProtocolState};
use crate::call::thread::lock;
use crate::package::policy::Policy;

/// What an update will do, computed against the running state.
pub(crate) struct Plan {
    pub(crate) types: Vec<TypeUpdate>,
    pub(crate) protocols: Vec<&'static ProtocolState>,
    pub(crate) park_threads: bool,
    pub(crate) timeout: Duration,
    pub(crate) policy: Policy,
    pub(crate) new_states: Vec<&'static StateLayout>,
    /// Globals whose type changes, with their transfers and the patch's descriptors.
    pub(crate) globals: Vec<(&'static GlobalTransferDesc, &'static GlobalDesc)>,
}

/// One component type the update swaps.
pub(crate) struct TypeUpdate {
    pub(crate) ty: Arc<ComponentType>,
    pub(crate) new_table: &'static Table,
    pub(crate) transfer: Option<&'static TransferDesc>,
}

/// Validates a loaded patch against the running state and computes what to swap.
pub(crate) fn plan(
    patch: &LoadedPatch,
    opts: &ApplyOptions,
    running_states: &HashMap<String, &'static StateLayout>,
) -> Result<Plan, String> {
    let man = &patch.manifest;
    let d = patch.descriptors;
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
        let ty = match component::find_type(&id) {
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
        let state_changed =
            running.state.fingerprint() != p.state.fingerprint() || olds.contains(&p.state.id());
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

/// A plan that holds every component, protocol and registered thread of the process.
pub(crate) fn whole_process(timeout: Duration) -> Plan {
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

fn describe(s: &StateLayout) -> String {
    let fields: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
    format!("{} bytes {{{}}}", s.size, fields.join(", "))
}

pub(crate) fn host_states() -> HashMap<String, &'static StateLayout> {
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

pub(crate) fn all_slots(plan: &Plan) -> Vec<(usize, Arc<Slot>)> {
    let mut v = Vec::new();
    for (i, t) in plan.types.iter().enumerate() {
        for s in lock(&t.ty.inner).live_slots() {
            v.push((i, s));
        }
    }
    v
}
