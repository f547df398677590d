//! End-to-end: a program's v1 runs as a child process; a patch built from a newer version is
//! applied through the control socket while client threads keep calling it. Every test checks
//! that the new behaviour is visible, the state is intact and no call failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use dsu::Outcome;
use dsu_tests::*;

fn app(v: &str) -> std::path::PathBuf {
    program("app", v)
}

fn committed(rec: &dsu::UpdateRecord) {
    assert_eq!(
        rec.outcome,
        Outcome::Committed,
        "update not committed: {rec:#?}"
    );
}

#[test]
fn code_only_change_under_load() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 5")?, "5");
    let (load, _) = counter_load(&p, 4, "v2")?;
    load.wait_for_calls(200);
    let rec = p.apply(&pkg, None)?;
    committed(&rec);
    assert_eq!(rec.components, vec!["Counter".to_string()]);
    load.wait_for_calls(200);
    let report = load.stop();
    assert_no_failures(&report);
    // The state is intact: every add (5, then one per client call) is in the counter, and the
    // global the new code reads has seen every one of them too.
    let n: u64 = c.cmd("get")?.parse()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_eq!(c.cmd("total")?, n.to_string());
    assert_eq!(c.cmd("add 1")?, (n + 1).to_string());
    let status = p.status()?;
    assert_eq!(status.version, "2.0.0");
    let counter = status
        .components
        .iter()
        .find(|s| s.id == "Counter")
        .unwrap();
    assert_eq!(counter.version, 2);
    assert_eq!(status.history.len(), 1);
    Ok(())
}

#[test]
fn state_gains_a_field_with_a_generated_default() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-field"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 10")?, "10");
    let (load, _) = counter_load(&p, 4, "v2-field")?;
    load.wait_for_calls(200);
    let rec = p.apply(&pkg, None)?;
    committed(&rec);
    load.wait_for_calls(200);
    assert_no_failures(&load.stop());
    // `n` came through the transfer; `ops` started at its default and counts adds since.
    let n: u64 = c.cmd("get")?.parse()?;
    assert!(n > 10, "the counter lost its value: {n}");
    let ops: u64 = c
        .cmd("version")?
        .strip_prefix("v2-field ops=")
        .unwrap()
        .parse()?;
    assert!(
        ops <= n - 10,
        "ops={ops} counts more adds than happened after the update"
    );
    assert_eq!(c.cmd("add 1")?, (n + 1).to_string());
    assert_eq!(c.cmd("version")?, format!("v2-field ops={}", ops + 1));
    // The base's code registers a new counter, with the base's state type: the runtime carries
    // it through the update's transfer, and it runs the new version.
    assert_eq!(c.cmd("fresh 5")?, "6 v2-field ops=2");
    Ok(())
}

#[test]
fn hand_written_transfer() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-transfer"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    for i in 0..100 {
        assert_eq!(c.cmd(&format!("set k{i} v{i}"))?, "ok");
    }
    let load = Load::start(p.port, 3, |conn, client, i| {
        let key = format!("c{client}-{}", i % 50);
        let val = format!("val{i}");
        ensure!(conn.cmd(&format!("set {key} {val}"))? == "ok");
        let got = conn.cmd(&format!("lookup {key}"))?;
        ensure!(
            got == val || got.starts_with(&format!("{val} (writes ")),
            "lookup {key} after set {val} gave {got:?}"
        );
        Ok(())
    })?;
    load.wait_for_calls(300);
    let rec = p.apply(&pkg, None)?;
    committed(&rec);
    load.wait_for_calls(300);
    assert_no_failures(&load.stop());
    // Every value kept before the update went through the hand-written transfer.
    for i in 0..100 {
        assert_eq!(c.cmd(&format!("lookup k{i}"))?, format!("v{i} (writes 1)"));
    }
    assert_eq!(c.cmd("set k7 new")?, "ok");
    assert_eq!(c.cmd("lookup k7")?, "new (writes 2)");
    assert_eq!(c.cmd("len")?, "250");
    Ok(())
}

#[test]
fn two_components_updated_together_while_a_call_chain_runs_through_both() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-chain"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    c.cmd("put before kept")?;
    let seen = per_client(4);
    let s = seen.clone();
    // `put` goes Front -> Store and Front -> Counter: a chain through two updated components
    // (and an unchanged one) while the update waits for them to be passive.
    let load = Load::start(p.port, 4, move |conn, client, i| {
        let mut st = s[client].lock().unwrap();
        let key = format!("c{client}-{i}");
        let reply = conn.cmd(&format!("put {key} val{i}"))?;
        let stored = conn.cmd(&format!("lookup {key}"))?;
        if reply.starts_with(&format!("stored-v2 {key} #")) {
            st.saw_new = true;
            ensure!(stored == format!("VAL{i}"), "new put stored {stored:?}");
        } else {
            ensure!(
                reply.starts_with(&format!("stored {key} #")),
                "bad reply {reply:?}"
            );
            ensure!(!st.saw_new, "the old Front answered after the new one");
            // The value was stored by whichever Store version ran the nested call.
            ensure!(
                stored == format!("val{i}") || stored == format!("VAL{i}"),
                "stored {stored:?}"
            );
        }
        Ok(())
    })?;
    load.wait_for_calls(300);
    let rec = p.apply(&pkg, None)?;
    committed(&rec);
    assert_eq!(
        rec.components,
        vec!["Front".to_string(), "Store".to_string()]
    );
    load.wait_for_calls(300);
    // Every client must reach the new version (on a loaded 2-core machine one may not have
    // been scheduled within the first calls after the update).
    wait_until_all_saw_new(&seen);
    assert_no_failures(&load.stop());
    assert_eq!(c.cmd("lookup before")?, "kept");
    assert!(c.cmd("put after x")?.starts_with("stored-v2 after #"));
    assert_eq!(c.cmd("lookup after")?, "X");
    Ok(())
}

#[test]
fn a_dsu_global_is_kept_across_the_update() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 7")?, "7");
    assert_eq!(c.cmd("total")?, "7");
    committed(&p.apply(&pkg, None)?);
    // The patched code reads the host's instance of the global...
    assert_eq!(c.cmd("version")?, "v2 total=7");
    // ... and its writes land in it: the host's code reads them.
    assert_eq!(c.cmd("add 3")?, "10");
    assert_eq!(c.cmd("total")?, "10");
    assert_eq!(c.cmd("version")?, "v2 total=10");
    Ok(())
}

#[test]
fn host_with_a_custom_global_allocator() -> Result<()> {
    let v1 = program("alloc", "v1");
    let exe = build_base(&v1)?;
    let pkg = build_patch(&v1, &program("alloc", "v2"))?;
    let mut p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add first")?, "1");
    let allocs_before: u64 = c.cmd("allocs")?.parse()?;
    // Strings cross the boundary both ways: arguments allocated by the host are freed by the
    // patch, results allocated by the patch are freed by the host. The host's allocator aborts
    // the process on a block it did not hand out.
    let load = Load::start(p.port, 3, |conn, client, i| {
        let n: usize = conn.cmd(&format!("add c{client}x{i}"))?.parse()?;
        ensure!(n >= 1);
        let d = conn.cmd("describe")?;
        ensure!(
            d.starts_with("v1:") || d.starts_with("v2:"),
            "describe gave {d:?}"
        );
        if i % 50 == 49 {
            conn.cmd("take")?;
        }
        Ok(())
    })?;
    load.wait_for_calls(300);
    committed(&p.apply(&pkg, None)?);
    load.wait_for_calls(600);
    assert_no_failures(&load.stop());
    assert!(p.alive(), "the host died: memory crossed allocators");
    c.cmd("take")?;
    assert_eq!(c.cmd("add mixed")?, "1");
    assert_eq!(c.cmd("describe")?, "v2:MIXED");
    assert_eq!(c.cmd("take")?, "MIXED");
    let allocs_after: u64 = c.cmd("allocs")?.parse()?;
    assert!(
        allocs_after > allocs_before,
        "the patch's allocations did not go through the host's allocator"
    );
    assert!(p.alive());
    Ok(())
}

#[test]
fn a_panicking_transfer_rolls_back_and_the_old_version_keeps_serving() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let bad = build_patch(&app("v1"), &app("v2-panic"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let mut p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 5")?, "5");
    let (load, _) = counter_load(&p, 4, "v2")?;
    load.wait_for_calls(200);
    let rec = p.apply(&bad, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("panicked") && reason.contains("refusing to transfer a counter"),
        "{reason}"
    );
    load.wait_for_calls(200);
    assert_no_failures(&load.stop());
    assert!(p.alive());
    // Old code, old state, and nothing lost.
    assert_eq!(c.cmd("version")?, "v1");
    let n: u64 = c.cmd("get")?.parse()?;
    assert!(n > 5);
    assert_eq!(c.cmd("add 1")?, (n + 1).to_string());
    // A transfer that returns an error is rolled back the same way.
    let failing = build_patch(&app("v1"), &app("v2-error"))?;
    let rec = p.apply(&failing, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("returned an error: a counter at"),
        "{reason}"
    );
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("get")?, (n + 1).to_string());
    let status = p.status()?;
    assert_eq!(status.version, "1.0.0");
    assert_eq!(status.history[0].outcome, Outcome::RolledBack);
    assert_eq!(status.history[1].outcome, Outcome::RolledBack);
    // The process is healthy: a good update applies afterwards.
    committed(&p.apply(&good, None)?);
    assert_eq!(c.cmd("version")?, format!("v2 total={}", n + 1));
    Ok(())
}

#[test]
fn a_component_that_never_becomes_passive_aborts_the_update_within_its_timeout() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-slow"))?;
    let p = Process::start(&exe)?;
    let holding_done = Arc::new(AtomicBool::new(false));
    let holder = {
        let mut conn = p.connect()?;
        let done = holding_done.clone();
        std::thread::spawn(move || {
            let r = conn.cmd("hold 15000");
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    // Calls to other components go on throughout.
    let (load, _) = counter_load(&p, 2, "v2")?;
    // Wait until the hold is in flight.
    let mut in_flight = false;
    for _ in 0..500 {
        let st = p.status()?;
        if st
            .components
            .iter()
            .any(|c| c.id == "Slow" && c.in_flight == 1)
        {
            in_flight = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(in_flight, "the hold call never showed as in flight");
    load.wait_for_calls(50);
    let rec = p.apply(&pkg, Some(300))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    assert!(
        !holding_done.load(Ordering::SeqCst),
        "apply returned only after the busy call ended"
    );
    let busy = rec
        .busy
        .iter()
        .find(|b| b.component == "Slow")
        .expect("Slow reported busy");
    assert_eq!(busy.method.as_deref(), Some("hold"));
    assert!(busy.tid > 0);
    assert!(busy.busy_ms >= 200.0, "{busy:?}");
    let reason = rec.reason.clone().unwrap();
    assert!(
        reason.contains("`Slow::hold`") && reason.contains("300 ms"),
        "{reason}"
    );
    // With retries, the policy tries again and then gives up with a report; never forces.
    let retrying = dsu::Policy::Asap {
        retries: 2,
        retry_delay_ms: 50,
    };
    let rec = p.apply_with(&pkg, Some(100), Some(retrying))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    assert_eq!(rec.attempts, 3);
    assert!(rec.reason.unwrap().starts_with("gave up after 3 attempts"));
    assert!(!holding_done.load(Ordering::SeqCst));
    load.wait_for_calls(100);
    assert_no_failures(&load.stop());
    // Nothing changed, and the component is not stuck behind the aborted update.
    let mut c = p.connect()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("hold 1")?, "held");
    let status = p.status()?;
    assert_eq!(status.version, "1.0.0");
    assert_eq!(status.history[0].outcome, Outcome::Aborted);
    assert_eq!(status.history.len(), 2);
    drop(p);
    match holder.join() {
        Ok(Ok(r)) => bail!("the hold finished although the process was killed: {r}"),
        _ => Ok(()),
    }
}
