//! Wait: an update whose policy says when it may start (a time window, a call rate below a
//! bound) waits for that moment here, or gives up, before anything is touched.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{all_slots, Plan};
use crate::call::component::{Slot, WATCH_COUNT};
use crate::package::policy::{self, Policy};

pub(crate) fn wait_for_policy(plan: &Plan) -> Result<(), String> {
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
            // The instances whose calls are being counted (each sample looks again: the plan's
            // instances may come and go).
            let mut counted: Vec<Arc<Slot>> = Vec::new();
            let result = loop {
                let slots = all_slots(plan);
                for (_, s) in &slots {
                    if !counted.iter().any(|c| Arc::ptr_eq(c, s)) {
                        // Relaxed: a switch for a statistics counter.
                        s.watch.fetch_or(WATCH_COUNT, Ordering::Relaxed);
                        counted.push(s.clone());
                    }
                }
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
            for s in counted {
                // Relaxed: as above.
                s.watch.fetch_and(!WATCH_COUNT, Ordering::Relaxed);
            }
            result
        }
    }
}
