//! The analysis behind `cargo dsu diff` and `check`: what changed between two versions, the
//! category of each change in the update taxonomy (DESIGN.md section 2), the constraints the
//! running system must meet before the update, what cannot be applied in place, and which
//! engine applies the update (DESIGN.md section 8): in place where possible, else a process
//! hand-off where that can apply every refused change.
//!
//! Stages, each a module, lower ones never importing upper ones:
//!
//! - [`version`]: the two versions, as cargo describes them;
//! - `facts`: the source model, what the diff needs to know of one version's syn trees;
//! - `diff`: what changed between the facts of both versions, one stage per kind of item;
//! - `taxonomy`: the kinds and categories of change, constraints, refusals, the engine.
//!
//! The layer may use `source`, `transfer` and `cargo` below it, never `patch` or the
//! commands above it.

mod diff;
mod facts;
mod taxonomy;
pub mod version;

use anyhow::{bail, Result};
use dsu::Engine;
use serde::Serialize;

use crate::source;
use diff::{components, environment, globals, outside, states, Findings, Pair};

pub use facts::pretty;
pub use taxonomy::{
    category_name, Change, Constraints, EnginePlan, Kind, Refusal, DEFAULT_TIMEOUT_MS,
    IN_PLACE_REASON,
};
pub use version::{load_version, Source, Version};

/// The result of comparing two versions.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub old: Version,
    pub new: Version,
    pub changes: Vec<Change>,
    /// What the in-place engine cannot apply.
    pub refusals: Vec<Refusal>,
    pub constraints: Constraints,
    /// The engine (chosen automatically unless [`Analysis::choose_engine`] is told otherwise).
    pub plan: EnginePlan,
}

impl Analysis {
    /// Whether the update cannot be applied in place.
    pub fn refused(&self) -> bool {
        !self.refusals.is_empty()
    }

    /// Whether the planned engine can apply the update.
    pub fn applicable(&self) -> bool {
        self.plan.engine.is_some()
    }

    /// The refusals a hand-off cannot apply either.
    pub fn blocking(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter().filter(|r| !r.handoff_ok)
    }

    /// Whether a process hand-off can apply the update.
    pub fn handoff_possible(&self) -> bool {
        self.blocking().next().is_none() && self.new.bin.is_some() && self.migrations().is_empty()
    }

    /// The changes to data on disk (category 5: `migrate` hooks), which a hand-off does not run.
    pub fn migrations(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.category == 5)
            .map(|c| c.item.clone())
            .collect();
        m.dedup();
        m
    }

    /// Chooses the engine: `forced` (from `--engine`), else in place when nothing is refused,
    /// else a hand-off when it can apply every refused change. The choice and its reasons go
    /// into [`Analysis::plan`].
    pub fn choose_engine(&mut self, forced: Option<Engine>) {
        self.plan = taxonomy::plan_engine(forced, &self.refusals, &self.new, &self.migrations());
    }

    /// The highest category among the changes.
    pub fn category(&self) -> u8 {
        self.changes.iter().map(|c| c.category).max().unwrap_or(0)
    }

    /// The manifest's view of the changes.
    pub fn manifest_changes(&self) -> Vec<dsu::package::Change> {
        self.changes
            .iter()
            .map(|c| dsu::package::Change {
                item: c.item.clone(),
                file: c.file.clone(),
                line: c.line,
                category: c.category,
                description: c.description.clone(),
            })
            .collect()
    }
}

/// Compares two versions.
pub fn analyze(old: &Version, new: &Version) -> Result<Analysis> {
    if old.name != new.name {
        bail!(
            "`{}` and `{}` are two different crates; give two versions of the same package",
            old.name,
            new.name
        );
    }
    let facts_old = facts::facts(&source::load_crate(&old.dir, &old.root)?);
    let facts_new = facts::facts(&source::load_crate(&new.dir, &new.root)?);
    let pair = Pair::new(&facts_old, &facts_new);
    let mut found = Findings::default();
    environment::runtime(old, new, &mut found);
    components::components(&pair, &mut found);
    let changed_states = states::states(&pair, &mut found);
    globals::globals(&pair, &changed_states, &mut found);
    globals::transfers(&pair, &mut found);
    outside::outside(&pair, &mut found);
    outside::statics(&pair, &mut found);
    environment::dependencies(old, new, &mut found)?;
    environment::allocator(&pair, &mut found);
    environment::toolchain(old, new, &mut found);
    environment::cargo_configuration(old, new, &mut found);

    let Findings {
        mut changes,
        refusals,
        affected,
    } = found;
    let constraints = taxonomy::constraints(&facts_new, affected, &changes);
    changes.sort_by(|x, y| {
        (x.file.as_str(), x.line, &x.item).cmp(&(y.file.as_str(), y.line, &y.item))
    });
    let mut a = Analysis {
        old: old.clone(),
        new: new.clone(),
        changes,
        refusals,
        constraints,
        plan: EnginePlan {
            requested: None,
            engine: None,
            reasons: Vec::new(),
        },
    };
    a.choose_engine(None);
    Ok(a)
}
