//! Prepare to die: the affected components are brought to their safe state. Registered threads
//! park at their update points, protocols run their instances in progress to the end, every
//! affected gate is marked pending (new outer calls wait), the `prepare_to_die` hooks run, and
//! the manager takes every gate at once. If that does not happen within the timeout, everything
//! is released and the update aborts, naming the calls that kept it busy.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{all_slots, Plan};
use super::record::{ms, BusyCall};
use crate::abi::desc::MethodDesc;
use crate::call::component::Slot;
use crate::call::invoke;
use crate::call::thread::{self, lock};

/// The safe state, reached: every affected gate held by the manager, with the type locks that
/// keep new instances from being registered until the swap is done.
pub(crate) struct Ready {
    pub(crate) slots: Vec<(usize, Arc<Slot>)>,
    pub(crate) pending_at: Instant,
    pub(crate) prepared_at: Instant,
}

pub(crate) struct Abort {
    pub(crate) reason: String,
    pub(crate) busy: Vec<BusyCall>,
    pub(crate) waited: Duration,
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

pub(crate) fn prepare(plan: &Plan) -> Result<Ready, Abort> {
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
            let mut names = reg.parking.busy_threads(&all);
            let tasks = reg.parking.busy_tasks();
            let mut shown: Vec<String> = names
                .iter()
                .map(|(n, t)| format!("`{n}` (tid {t})"))
                .collect();
            shown.extend(tasks.iter().map(|n| format!("task `{n}`")));
            names.extend(tasks.into_iter().map(|n| (format!("task {n}"), 0)));
            return Err(abort(
                format!(
                    "{busy} of {total} registered thread(s) and task(s) did not reach an update \
                     point within {} ms: {}",
                    plan.timeout.as_millis(),
                    shown.join(", ")
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
                        let on = if b.tid == 0 {
                            b.thread.clone()
                        } else {
                            format!("thread `{}` (tid {})", b.thread, b.tid)
                        };
                        format!(
                            "`{}::{}` on {on} for {:.0} ms",
                            b.component,
                            b.method.as_deref().unwrap_or("?"),
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
            first_seen.entry((t.os_tid, t.outer_calls())).or_insert(now);
        }
    }
    for (n, (_, s)) in slots.iter().enumerate() {
        for (k, m) in s.tasks.snapshot().into_iter().enumerate() {
            first_seen.entry(task_key(n, k, m)).or_insert(now);
        }
    }
}

/// The key under which an async call in flight is first seen: no thread holds it, so it is
/// named by its instance, its place among that instance's async calls, and its method.
fn task_key(slot: usize, k: usize, m: &'static MethodDesc) -> (i64, u64) {
    (
        -1 - (slot as i64),
        ((k as u64) << 48) ^ (m as *const MethodDesc as u64),
    )
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
                .get(&(t.os_tid, t.outer_calls()))
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
    // Async calls, which are on no thread's stack while suspended at an `.await`; one being
    // polled right now is on its thread's stack too and was listed above.
    for (n, (_, s)) in slots.iter().enumerate() {
        for (k, m) in s.tasks.snapshot().into_iter().enumerate() {
            let since = first_seen.get(&task_key(n, k, m)).copied().unwrap_or(now);
            let listed = out.iter().any(|b| {
                b.tid != 0 && b.component == s.ty.id && b.method.as_deref() == Some(m.name)
            });
            if !listed {
                out.push(BusyCall {
                    component: s.ty.id.clone(),
                    method: Some(m.name.to_string()),
                    thread: "an async task".to_string(),
                    tid: 0,
                    busy_ms: ms(now - since),
                });
            }
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
                thread: format!(
                    "threads too deep to track ({} call(s) in flight)",
                    readers.max(writer as usize)
                ),
                tid: 0,
                busy_ms: 0.0,
            });
        }
    }
    out
}
