//! Poison across an update (DESIGN.md §5, "Poison"). An instance is poisoned when a call of a
//! `&mut self` method panicked in it: its state may be half-changed. An update that replaces
//! its code carries that state on (a transfer reads it, `migrate` and `health_check` run on
//! the result, a hand-off streams it), and would end the poison without anyone having looked
//! at the state. So such an update is refused, with nothing changed, unless the operator asks
//! for the poison to be cleared (`clear_poison`, `cargo dsu apply --clear-poison`): then the
//! new version takes the state as the panic left it, and the poison ends when the update
//! commits. A rollback keeps it.

use std::sync::Arc;

use crate::call::component::Slot;

/// The poisoned instances among `slots`. With `clear` false, a poisoned one refuses the update:
/// the reason names each with the method that poisoned it and says how to go on.
pub(crate) fn check<'a>(
    slots: impl IntoIterator<Item = &'a Arc<Slot>>,
    clear: bool,
) -> Result<Vec<Arc<Slot>>, String> {
    let poisoned: Vec<Arc<Slot>> = slots
        .into_iter()
        .filter(|s| s.poisoned_by().is_some())
        .cloned()
        .collect();
    if poisoned.is_empty() || clear {
        return Ok(poisoned);
    }
    let which = describe(&poisoned).join(", ");
    Err(format!(
        "the update covers poisoned instances: {which} (a call of that `&mut self` method \
         panicked and may have left the state half-changed). The update would carry that state \
         into the new version and end the poison, so it was refused and nothing changed. Check \
         or repair the state and call `Handle::clear_poison`, or apply again with \
         `--clear-poison` (`clear_poison: true` in the request) to let the new version take the \
         state as it is"
    ))
}

/// Each poisoned instance as `Component (method)`, for the reason and the record.
pub(crate) fn describe(poisoned: &[Arc<Slot>]) -> Vec<String> {
    poisoned
        .iter()
        .map(|s| format!("{} ({})", s.ty.id, s.poisoned_by().unwrap_or("?")))
        .collect()
}

/// Ends the poison of instances an update took over: called with their gates still held, just
/// before the commit opens them.
pub(crate) fn clear(poisoned: &[Arc<Slot>]) {
    for s in poisoned {
        s.clear_poison();
    }
}
