//! Update constraints: protocols idle, registered threads parked at update points, the
//! `prepare_to_die` hook; and log records and tracing events from patched code reaching the
//! host's logger and subscriber.

use std::sync::{Arc, Mutex};

use anyhow::{ensure, Result};
use dsu::Outcome;
use dsu_tests::*;

fn ledger(v: &str) -> std::path::PathBuf {
    program("ledger", v)
}

#[test]
fn protocols_finish_and_threads_park_before_the_update() -> Result<()> {
    let exe = build_base(&ledger("v1"))?;
    let pkg = build_patch(&ledger("v1"), &ledger("v2"))?;
    let pkg = with_manifest(&pkg, "ledger-park", |m| m.constraints.park_threads = true)?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    // Transactions of several calls: begin, three writes, commit, each answered by the version
    // that began it. An update that split one would show a mix.
    let load = Load::start(p.port, 3, move |conn, _, _| {
        let v = conn.cmd("begin")?;
        for x in 1..=3 {
            std::thread::sleep(std::time::Duration::from_micros(300));
            let w = conn.cmd(&format!("write {x}"))?;
            ensure!(
                w == v,
                "write answered by {w} inside a transaction begun by {v}"
            );
        }
        let e = conn.cmd("commit")?;
        ensure!(
            e == v,
            "commit answered by {e} for a transaction begun by {v}"
        );
        seen.lock().unwrap().push(v);
        Ok(())
    })?;
    load.wait_for_calls(50);
    let iters_before: u64 = c.cmd("iters")?.parse()?;
    assert!(iters_before > 0, "the worker is not running");
    let rec = p.apply(&pkg, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    load.wait_for_calls(50);
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    let v = versions.lock().unwrap();
    assert!(v.iter().any(|x| x == "v1") && v.iter().any(|x| x == "v2"));
    // The worker was parked at its update point: no iteration straddled the update.
    assert_eq!(c.cmd("splits")?, "0");
    let iters_after: u64 = c.cmd("iters")?.parse()?;
    assert!(iters_after > iters_before, "the worker did not resume");
    // The hook ran once, on the old version, and its effect was carried over.
    assert_eq!(c.cmd("prepared")?, "1");
    assert_eq!(c.cmd("begin")?, "v2");
    assert_eq!(c.cmd("commit")?, "v2");
    Ok(())
}

#[test]
fn an_open_protocol_instance_aborts_the_update_until_it_ends() -> Result<()> {
    let exe = build_base(&ledger("v1"))?;
    let pkg = build_patch(&ledger("v1"), &ledger("v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("begin")?, "v1");
    assert_eq!(c.cmd("write 5")?, "v1");
    let rec = p.apply(&pkg, Some(300))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    let reason = rec.reason.unwrap();
    assert!(
        reason.contains("protocol `txn`") && reason.contains("1 instance(s)"),
        "{reason}"
    );
    // The transaction goes on, on the old version, and ends.
    assert_eq!(c.cmd("write 6")?, "v1");
    assert_eq!(c.cmd("commit")?, "v1");
    assert_eq!(
        c.cmd("prepared")?,
        "0",
        "the hook ran although the update never got that far"
    );
    let rec = p.apply(&pkg, Some(2000))?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(c.cmd("begin")?, "v2");
    Ok(())
}

#[test]
fn log_records_from_patched_code_reach_the_hosts_logger() -> Result<()> {
    let exe = build_base(&ledger("v1"))?;
    let pkg = build_patch(&ledger("v1"), &ledger("v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("log")?, "v1");
    assert_eq!(p.apply(&pkg, None)?.outcome, Outcome::Committed);
    assert_eq!(c.cmd("log")?, "v2");
    let logs = c.cmd("logs")?;
    assert!(logs.contains("INFO note from v1"), "{logs}");
    assert!(logs.contains("INFO note from v2, patched code"), "{logs}");
    // The runtime's own record of the update went to the same logger.
    assert!(logs.contains("committed"), "{logs}");
    Ok(())
}

#[test]
fn tracing_events_and_spans_from_patched_sync_code_reach_the_hosts_subscriber() -> Result<()> {
    // ledger does not use dsu-shared: the patch has its own copy of tracing-core, which the
    // runtime points at the host's dispatcher when it loads the patch.
    let exe = build_base(&ledger("v1"))?;
    let pkg = build_patch(&ledger("v1"), &ledger("v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("trace")?, "v1");
    assert_eq!(p.apply(&pkg, None)?.outcome, Outcome::Committed);
    assert_eq!(c.cmd("trace")?, "v2");
    let traces = c.cmd("traces")?;
    let line = |needle: &str| -> String {
        traces
            .split('|')
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {traces}"))
            .to_string()
    };
    let v1 = line("traced from v1");
    assert!(
        v1.contains("request{cmd=\"trace\"}") && v1.contains("answer=1"),
        "{v1}"
    );
    // The event's fields, the host's span it was called in, and the span patched code opened
    // inside it, nested.
    let v2 = line("traced from v2, patched code");
    assert!(
        v2.contains("request{cmd=\"trace\"}:inner{depth=1}") && v2.contains("answer=42"),
        "{v2}"
    );
    Ok(())
}
