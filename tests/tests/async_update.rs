//! End-to-end, async (issue 14, items 1 and 2): a tokio service whose components have `async
//! fn` methods, on a `current_thread` runtime, is updated in place under load. The update
//! waits for an async call in flight (suspended at an `.await`, on no thread's stack) without
//! stalling the one thread that runs every connection; a call that outlasts the timeout aborts
//! the update, which names it, and the service serves on.

use std::time::{Duration, Instant};

use anyhow::Result;
use dsu::Outcome;
use dsu_tests::*;

fn tasks(v: &str) -> std::path::PathBuf {
    program("tasks", v)
}

#[test]
fn an_async_service_on_one_thread_is_updated_under_load_and_a_stuck_call_aborts_cleanly(
) -> Result<()> {
    let exe = build_base(&tasks("v1"))?;
    let pkg = build_patch(&tasks("v1"), &tasks("v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 5")?, "5");
    let (load, seen) = counter_load(&p, 4, "v2")?;
    load.wait_for_calls(200);

    // 1. A `&self` call suspended in `tokio::time::sleep` for 3 s: an update with a 300 ms
    //    timeout aborts, naming it, and nothing changes.
    let holder = std::thread::spawn({
        let port = p.port;
        move || Conn::open(port).and_then(|mut h| h.cmd("hold 3000"))
    });
    std::thread::sleep(Duration::from_millis(200));
    let rec = p.apply(&pkg, Some(300))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("`Counter::hold` on an async task"),
        "the abort names the async call: {reason}"
    );
    assert!(rec
        .busy
        .iter()
        .any(|b| b.component == "Counter" && b.method.as_deref() == Some("hold")));
    // The service went on serving while the update waited (the load is still calling).
    let before = load.completed();
    load.wait_for_calls(before + 100);
    assert_eq!(c.cmd("version")?, "v1");
    let held = holder.join().expect("holder thread")?;
    assert!(held.starts_with("held "), "{held}");

    // 2. A call in flight for 500 ms: the update waits for it (its timeout is 5 s) and
    //    commits; the one runtime thread kept serving every other connection meanwhile.
    let holder = std::thread::spawn({
        let port = p.port;
        move || Conn::open(port).and_then(|mut h| h.cmd("hold 500"))
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let rec = p.apply(&pkg, Some(5000))?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the update waited for the call in flight"
    );
    assert!(holder.join().expect("holder thread")?.starts_with("held "));
    wait_until_all_saw_new(&seen);
    let report = load.stop();
    assert_no_failures(&report);
    // Every add is in the counter: 5 and one per client call.
    let n: u64 = c.cmd("get")?.parse()?;
    assert_eq!(n, 5 + total_adds(&seen));
    assert_eq!(c.cmd("version")?, "v2");
    assert_eq!(c.cmd("add 1")?, (n + 1).to_string());
    Ok(())
}

#[test]
fn a_long_lived_task_parks_at_its_update_point_and_its_next_iteration_runs_the_new_code(
) -> Result<()> {
    let exe = build_base(&tasks("v1"))?;
    let pkg = build_patch(&tasks("v1"), &tasks("v2"))?;
    // The update waits for registered threads and tasks (as one that changes a global's type
    // would).
    let pkg = with_manifest(&pkg, "tasks-park", |m| m.constraints.park_threads = true)?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let ticks = |c: &mut Conn| -> Result<u64> { Ok(c.cmd("ticks")?.parse()?) };
    let wait_for_ticks = |c: &mut Conn, above: u64| -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = ticks(c)?;
            if t > above {
                return Ok(t);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the background task stopped at {t}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let t = wait_for_ticks(&mut c, 2)?;
    assert!(t < 1000, "v1 ticks by 1: {t}");

    // 1. The task sleeps 3 s before its next update point: the update gives up after its
    //    timeout, naming the task, and the service serves on.
    assert_eq!(c.cmd("stall 3000")?, "ok");
    // The loop iterates every 10 ms: within 100 ms one iteration has taken the stall.
    std::thread::sleep(Duration::from_millis(100));
    let rec = p.apply(&pkg, Some(300))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(reason.contains("task `purge`"), "names the task: {reason}");
    assert!(
        !reason.contains("idler"),
        "an idle task is parked: {reason}"
    );
    assert_eq!(c.cmd("add 2")?, "2");
    assert_eq!(c.cmd("version")?, "v1");

    // 2. Once it loops again it parks at its update point; the update commits (the other
    //    task, `idler`, sleeps for an hour inside `idle`, where it counts as parked), and its
    //    next iteration runs v2's `tick` (which adds 1000).
    let now = ticks(&mut c)?;
    let before = wait_for_ticks(&mut c, now)?;
    let rec = p.apply(&pkg, Some(5000))?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    let after = wait_for_ticks(&mut c, before + 999)?;
    assert!(after >= before + 1000, "{before} -> {after}");
    assert_eq!(c.cmd("version")?, "v2");
    Ok(())
}
