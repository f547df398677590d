//! Check: with the new version installed and the components still held, each new version's
//! `migrate` hook runs (data on disk, category 5), then each one's `health_check`. A failure
//! rolls the whole update back.

use super::plan::Plan;
use super::prepare::Ready;
use crate::call::invoke;

/// Runs the migrations, then the health checks; the first failure is the reason to roll back.
pub(crate) fn run(plan: &Plan, ready: &Ready) -> Result<(), String> {
    let checks = |i: usize| {
        let desc = plan.types[i].new_table.desc;
        [
            desc.migrate.map(|m| (m, "the data migration (`migrate`)")),
            desc.health_check
                .map(|h| (h, "the health check (`health_check`)")),
        ]
    };
    for pass in 0..2 {
        for (i, slot) in &ready.slots {
            let Some((hook, what)) = checks(*i)[pass] else {
                continue;
            };
            if let Err(e) = invoke::call_check_locked(slot, hook) {
                return Err(format!(
                    "{what} of component `{}` failed: {e}; rolled back, the old version keeps \
                     running with its state",
                    slot.ty.id
                ));
            }
        }
    }
    Ok(())
}
