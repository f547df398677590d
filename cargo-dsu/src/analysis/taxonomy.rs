//! The taxonomy: the kinds of change and their categories (DESIGN.md section 2), what a
//! change requires of the running system (its constraint), why part of an update cannot be
//! applied in place (a refusal), and the choice of the engine that applies it (section 8).
//! Uses only the version model.

use std::collections::BTreeSet;

use dsu::Engine;
use serde::Serialize;

use super::facts::Facts;
use super::version::Version;

/// What kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ComponentAdded,
    ComponentRemoved,
    MethodAdded,
    MethodRemoved,
    BodyChanged,
    SignatureChanged,
    ProtocolChanged,
    StateAdded,
    FieldAdded,
    FieldRemoved,
    FieldRenamed,
    FieldRetyped,
    StateChanged,
    GlobalAdded,
    GlobalRetyped,
    GlobalInitChanged,
    TransferAdded,
    OutsideChanged,
    StaticReachable,
    DependencyChanged,
    AllocatorChanged,
    DataMigration,
}

/// The categories of the update taxonomy, by increasing severity; the index is the number.
const CATEGORIES: [&str; 8] = [
    "",
    "one component",
    "protocol between components",
    "global data",
    "global algorithm",
    "data on disk",
    "environment",
    "whole program",
];

/// Hardware or build-environment requirements: the dependency versions, the toolchain, the
/// global allocator. The in-place engine refuses them (a patch is built like the running
/// process and allocates with its allocator); a hand-off starts a new build.
pub const ENVIRONMENT: u8 = 6;

/// Code outside components (`main`, free functions the program calls, other impls): only a
/// hand-off, which replaces the whole program, applies it.
pub const WHOLE_PROGRAM: u8 = 7;

/// The taxonomy name of a category.
pub fn category_name(c: u8) -> &'static str {
    CATEGORIES.get(c as usize).copied().unwrap_or("unknown")
}

/// One change, classified.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub kind: Kind,
    /// The item, e.g. `Store::get`, `state Entry`, `field Entry.created`.
    pub item: String,
    pub file: String,
    pub line: u32,
    /// Category in the update taxonomy (see [`category_name`]).
    pub category: u8,
    pub description: String,
    /// What it requires of the running system.
    pub constraint: String,
}

/// The item of the refusal of a version that does not depend on the dsu runtime.
pub const RUNTIME_ITEM: &str = "dsu runtime";

/// Why (part of) the update cannot be applied in place.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub item: String,
    pub file: String,
    pub line: u32,
    pub reason: String,
    /// What would make it possible.
    pub fix: String,
    /// Whether a process hand-off can apply it. A hand-off replaces the whole program (`main`
    /// and all other code, the dependencies, the toolchain, the allocator), so only what it
    /// still shares with the in-place engine stops it: the state must be transferred, and the
    /// new version must be a program it can start.
    pub handoff_ok: bool,
}

impl Refusal {
    /// `file:line` (or the file alone when the refusal has no line).
    pub fn at(&self) -> String {
        if self.line > 0 {
            format!("{}:{}", self.file, self.line)
        } else {
            self.file.clone()
        }
    }
}

/// The reason for the in-place engine when nothing stands in its way.
pub const IN_PLACE_REASON: &str = "every change is inside components: applied in place";

/// Which engine applies the update, and why (see [`Analysis::choose_engine`]).
#[derive(Clone, Debug, Serialize)]
pub struct EnginePlan {
    /// The engine asked for with `--engine` (None: chosen automatically).
    pub requested: Option<Engine>,
    /// The engine that applies the update; None when it cannot be applied.
    pub engine: Option<Engine>,
    /// One line each: why this engine (or why none).
    pub reasons: Vec<String>,
}

/// The constraints derived from the changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Constraints {
    pub components: Vec<String>,
    pub protocols_idle: Vec<String>,
    pub park_threads: bool,
    pub timeout_ms: u64,
}

/// Prepare-to-die timeout of an update unless told otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// The constraint of a change only a process hand-off can apply.
pub(super) const NOT_IN_PLACE: &str = "a process hand-off (cannot be applied in place)";

/// Why a changed dependency is refused in place.
pub(super) const SAME_DEPENDENCIES: &str =
    "a patch must be built with exactly the dependency versions of the running build";

/// A change, classified.
pub(super) fn change(
    kind: Kind,
    item: &str,
    file: &str,
    line: u32,
    category: u8,
    description: String,
    constraint: String,
) -> Change {
    Change {
        kind,
        item: item.to_string(),
        file: file.to_string(),
        line,
        category,
        description,
        constraint,
    }
}

/// Chooses the engine: `forced` (from `--engine`), else in place when nothing is refused,
/// else a hand-off when it can apply every refused change (only possible when `new` has a
/// binary to start).
pub(super) fn plan_engine(
    forced: Option<Engine>,
    refusals: &[Refusal],
    new: &Version,
    migrations: &[String],
) -> EnginePlan {
    let refused = !refusals.is_empty();
    let handoff_lines: Vec<String> = refusals
        .iter()
        .map(|r| format!("{} ({}): {}", r.item, r.at(), r.reason))
        .collect();
    let blocking = refusals.iter().filter(|r| !r.handoff_ok).count();
    // Why a hand-off cannot apply it (None: it can).
    let handoff_blocked = if blocking > 0 {
        let why = if refusals
            .iter()
            .any(|r| !r.handoff_ok && r.item == RUNTIME_ITEM)
        {
            "a process without the dsu runtime takes no update"
        } else {
            "the state must be transferred by both engines"
        };
        Some(format!(
            "{blocking} problem(s) that a hand-off cannot apply either ({why})"
        ))
    } else if new.bin.is_none() {
        Some(format!(
            "a hand-off starts the new version's executable, but package `{}` has no \
             binary target",
            new.name
        ))
    } else if !migrations.is_empty() {
        Some(format!(
            "the update changes data on disk ({}), and a hand-off runs no `migrate`: apply \
             that change in place first, then the rest",
            migrations.join(", ")
        ))
    } else {
        None
    };
    let (engine, reasons) = match (forced, refused, handoff_blocked) {
        (Some(Engine::InPlace), false, _) => (
            Some(Engine::InPlace),
            vec![
                "forced with --engine in-place".to_string(),
                IN_PLACE_REASON.to_string(),
            ],
        ),
        (None, false, _) => (Some(Engine::InPlace), vec![IN_PLACE_REASON.to_string()]),
        (Some(Engine::InPlace), true, None) => (
            None,
            vec![
                "forced with --engine in-place, which cannot apply the problem(s) above"
                    .to_string(),
                "a hand-off can apply every one of them: run without `--engine in-place` \
                 (or with `--engine handoff`)"
                    .to_string(),
            ],
        ),
        (None, true, None) => (Some(Engine::Handoff), handoff_lines),
        (Some(Engine::Handoff), _, None) => {
            let mut reasons = vec!["forced with --engine handoff".to_string()];
            reasons.extend(handoff_lines);
            (Some(Engine::Handoff), reasons)
        }
        (forced, _, Some(why)) => {
            let mut reasons = Vec::new();
            if let Some(e) = forced {
                reasons.push(format!("forced with --engine {}", e.as_str()));
            }
            if refused && forced != Some(Engine::Handoff) {
                reasons.push(format!(
                    "{} problem(s) that the in-place engine cannot apply",
                    refusals.len()
                ));
            }
            reasons.push(why);
            (None, reasons)
        }
    };
    EnginePlan {
        requested: forced,
        engine,
        reasons,
    }
}

/// The constraints of an update: the `affected` components passive, the protocols they take
/// part in idle, and registered threads parked when a change is shared (category 3 or more).
pub(super) fn constraints(
    new: &Facts,
    affected: BTreeSet<String>,
    changes: &[Change],
) -> Constraints {
    let mut protocols: BTreeSet<String> = BTreeSet::new();
    for c in new.components.values().filter(|c| affected.contains(&c.id)) {
        for m in c.methods.values() {
            if let Some(p) = &m.protocol {
                if let Some(name) = p.split('"').nth(1) {
                    protocols.insert(name.to_string());
                }
            }
        }
    }
    Constraints {
        components: affected.into_iter().collect(),
        protocols_idle: protocols.into_iter().collect(),
        park_threads: changes.iter().any(|c| c.category >= 3),
        timeout_ms: DEFAULT_TIMEOUT_MS,
    }
}
