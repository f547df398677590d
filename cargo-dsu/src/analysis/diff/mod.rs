//! The diff of items: what changed between the facts of the old and the new version, one
//! stage per kind of item. Each stage records what it finds (changes, refusals, the
//! components the update touches) in [`Findings`], classified with the taxonomy's words. Uses
//! the source model, the version model and the taxonomy.

use std::collections::{BTreeSet, HashSet};

use super::facts::{component_only, Facts};
use super::taxonomy::{Change, Refusal};

pub(super) mod components;
pub(super) mod environment;
pub(super) mod globals;
pub(super) mod outside;
pub(super) mod states;

/// The facts of both versions.
pub(super) struct Pair<'a> {
    pub(super) old: &'a Facts,
    pub(super) new: &'a Facts,
    /// Helpers only components call (see [`component_only`]), in each version.
    pub(super) old_component_only: HashSet<String>,
    pub(super) new_component_only: HashSet<String>,
}

impl<'a> Pair<'a> {
    pub(super) fn new(old: &'a Facts, new: &'a Facts) -> Pair<'a> {
        Pair {
            old,
            new,
            old_component_only: component_only(old),
            new_component_only: component_only(new),
        }
    }
}

/// What the stages found so far.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) changes: Vec<Change>,
    /// What the in-place engine cannot apply.
    pub(super) refusals: Vec<Refusal>,
    /// The ids of the components the update touches.
    pub(super) affected: BTreeSet<String>,
}
