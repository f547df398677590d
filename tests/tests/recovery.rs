//! Faults after the swap: a new version whose health check fails is rolled back to the old
//! code and the old state; a new version that panics after commit poisons only its component;
//! an update that meets a shutdown ends cleanly. All under client load.

use std::time::{Duration, Instant};

use anyhow::Result;
use dsu::Outcome;
use dsu_tests::*;

fn app(v: &str) -> std::path::PathBuf {
    program("app", v)
}

/// A generated transfer moves the fields it keeps (`map` here) into the new state. When the
/// update then rolls back, the new state is freed without them: the old state still owns the
/// map. (Dropping the whole new state freed the running map's table and strings: the lookups
/// below then read freed memory.)
#[test]
fn a_rollback_after_a_generated_transfer_leaves_the_moved_fields_to_the_old_state() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let unhealthy = build_patch(&app("v1"), &app("v2-storehealth"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let value = |i: usize| format!("value-{i:04}-long-enough-to-be-on-the-heap");
    for i in 0..1000 {
        c.cmd(&format!("set k{i} {}", value(i)))?;
    }
    let rec = p.apply(&unhealthy, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("store self-test failed with 1000 keys"),
        "{reason}"
    );
    // Allocate and free (the map grows past its old table), then read every value back.
    for i in 1000..5000 {
        c.cmd(&format!("set k{i} {}", value(i)))?;
    }
    for i in 0..5000 {
        assert_eq!(c.cmd(&format!("lookup k{i}"))?, value(i), "key k{i}");
    }
    assert_eq!(c.cmd("len")?, "5000");
    assert_eq!(c.cmd("version")?, "v1");
    Ok(())
}

#[test]
fn a_rollback_after_a_migration_that_rewrote_moved_fields_gives_the_old_state_back_whole(
) -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let migrating = build_patch(&app("v1"), &app("v2-migrate"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let value = |i: usize| format!("value-{i:04}-long-enough-to-be-on-the-heap");
    for i in 0..1000 {
        c.cmd(&format!("set k{i} {}", value(i)))?;
    }
    // `migrate` clears the map the transfer moved (freeing its keys, values and table) and
    // fills it again; the health check then fails.
    let rec = p.apply(&migrating, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("store self-test failed with 20000 keys after the migration"),
        "{reason}"
    );
    for i in 1000..3000 {
        c.cmd(&format!("set k{i} {}", value(i)))?;
    }
    for i in 0..3000 {
        assert_eq!(c.cmd(&format!("lookup k{i}"))?, value(i), "key k{i}");
    }
    assert_eq!(c.cmd("len")?, "3000");
    assert_eq!(c.cmd("version")?, "v1");
    Ok(())
}

#[test]
fn a_failed_health_check_rolls_back_to_the_old_code_and_the_old_state() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let unhealthy = build_patch(&app("v1"), &app("v2-health"))?;
    let good = build_patch(&app("v1"), &app("v2-field"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 10")?, "10");
    let (load, seen) = counter_load_through(&p, 4, &["v1", "v2-field"])?;
    load.wait_for_calls(200);

    // v2-health changes Counter's state type (a new field) and its self-test fails: the
    // transfer ran, the new code was installed, and both are undone.
    let rec = p.apply(&unhealthy, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("the health check (`health_check`) of component `Counter` failed")
            && reason.contains("counter self-test failed at n=")
            && reason.contains("rolled back"),
        "{reason}"
    );
    load.wait_for_calls(200);
    assert_eq!(c.cmd("version")?, "v1");
    let status = p.status()?;
    let counter = status
        .components
        .iter()
        .find(|s| s.id == "Counter")
        .unwrap();
    assert_eq!(counter.version, 1);
    assert_eq!(status.history[0].outcome, Outcome::RolledBack);

    // The old state is intact: no add was lost, before, during or after the attempt.
    let rec = p.apply(&good, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    load.wait_for_calls(200);
    assert_no_failures(&load.stop());
    let n: u64 = c.cmd("get")?.parse()?;
    assert_eq!(n, 10 + total_adds(&seen));
    assert!(c.cmd("version")?.starts_with("v2-field ops="));
    Ok(())
}

#[test]
fn a_panic_after_commit_poisons_its_component_and_nothing_else() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let crash = build_patch(&app("v1"), &app("v2-crash"))?;
    let mut p = Process::start(&exe)?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 3")?, "3");
    assert_eq!(c.cmd("set a 1")?, "ok");
    let (load, seen) = counter_load(&p, 4, "v2-crash")?;
    load.wait_for_calls(200);
    let rec = p.apply(&crash, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");

    // The new `Store::set` panics half-way through a change. As without dsu, the panic unwinds
    // the caller's thread (the server's thread of this connection), not the process.
    let mut victim = p.connect()?;
    assert_eq!(victim.cmd("set b 2")?, "ok");
    let e = victim.cmd("set boom 3").unwrap_err();
    assert!(e.to_string().contains("connection closed"), "{e:#}");
    assert!(p.alive());
    // Store is poisoned, as a Mutex would be: its calls panic on their callers' threads.
    let mut next = p.connect()?;
    assert!(next.cmd("lookup a").is_err());
    let status = p.status()?;
    let store = status.components.iter().find(|s| s.id == "Store").unwrap();
    assert_eq!(store.poisoned, vec!["set".to_string()]);
    assert_eq!(store.in_flight, 0, "a panicking call left the gate held");
    // Every other component goes on: the counter load saw no failure and lost nothing.
    load.wait_for_calls(200);
    assert_no_failures(&load.stop());
    let n: u64 = c.cmd("get")?.parse()?;
    assert_eq!(n, 3 + total_adds(&seen));
    assert_eq!(c.cmd("version")?, "v2-crash");
    let counter = status
        .components
        .iter()
        .find(|s| s.id == "Counter")
        .unwrap();
    assert!(counter.poisoned.is_empty());

    // v3-fixed fixes `set` and adds a field to Store's state. Applied as usual, it is refused:
    // it would carry the state the panic left into the new version and end the poison.
    let fix = build_patch(&app("v2-crash"), &app("v3-fixed"))?;
    let rec = p.apply(&fix, None)?;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("poisoned instances: Store (set)")
            && reason.contains("nothing changed")
            && reason.contains("--clear-poison"),
        "{reason}"
    );
    assert!(rec.cleared_poison.is_empty());
    let store_now = |p: &Process| -> Result<dsu::ComponentStatus> {
        let status = p.status()?;
        Ok(status
            .components
            .into_iter()
            .find(|s| s.id == "Store")
            .unwrap())
    };
    let store = store_now(&p)?;
    let state_before = store.state.clone();
    assert_eq!(
        (store.version, store.poisoned),
        (2, vec!["set".to_string()])
    );
    assert!(p.connect()?.cmd("lookup a").is_err(), "still poisoned");
    assert_eq!(c.cmd("version")?, "v2-crash");

    // Asked to, the update takes the state as the panic left it (the map holds `boom`) and
    // the poison ends with the commit.
    let rec = p.apply_clearing_poison(&fix)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(rec.cleared_poison, vec!["Store (set)".to_string()]);
    let store = store_now(&p)?;
    assert_eq!(store.version, 3);
    assert_ne!(
        store.state, state_before,
        "the state was transferred to v3's type"
    );
    assert!(store.poisoned.is_empty(), "{:?}", store.poisoned);
    let mut c = p.connect()?;
    assert_eq!(c.cmd("version")?, "v3-fixed");
    assert_eq!(c.cmd("lookup a")?, "1");
    assert_eq!(c.cmd("lookup boom")?, "3");
    assert_eq!(c.cmd("set boom 4")?, "ok");
    assert_eq!(c.cmd("lookup boom")?, "4");
    assert_eq!(c.cmd("get")?, n.to_string());
    Ok(())
}

#[test]
fn an_update_that_meets_a_shutdown_ends_before_the_process_does() -> Result<()> {
    let quit = |v: &str| program("quit", v);
    let exe = build_base(&quit("v1"))?;
    let pkg = build_patch(&quit("v1"), &quit("v2"))?;
    let mut p = Process::start(&exe)?;
    let p_socket = p.socket.clone();
    let port = p.port;

    // A call keeps Worker busy, so the first update waits in prepare-to-die...
    let hold = Duration::from_millis(1500);
    let before_hold = Instant::now();
    let holder = {
        let mut conn = p.connect()?;
        std::thread::spawn(move || conn.cmd("hold 1500"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p
        .status()?
        .components
        .iter()
        .any(|c| c.id == "Worker" && c.in_flight == 1)
    {
        assert!(Instant::now() < deadline, "the hold never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let apply = |socket: std::path::PathBuf, pkg: std::path::PathBuf| {
        std::thread::spawn(move || {
            dsu::control::request(
                &socket,
                &dsu::control::Request::Apply {
                    package: pkg,
                    timeout_ms: Some(10_000),
                    policy: None,
                    clear_poison: false,
                },
            )
        })
    };
    let first = apply(p_socket.clone(), pkg.clone());
    std::thread::sleep(Duration::from_millis(200));
    // ...a second one queues behind it...
    let second = apply(p_socket.clone(), pkg.clone());
    std::thread::sleep(Duration::from_millis(200));
    // ...and the program shuts its runtime down meanwhile.
    let mut c = Conn::open(port)?;
    assert_eq!(c.cmd("quit")?, "bye");
    // The shutdown waited for the update in progress: it committed once the hold ended. The
    // hold began after `before_hold`, so a shutdown that waited answers no sooner than `hold`
    // after it; one that did not answers about 400 ms after it. (Checking a flag the holder's
    // thread sets raced with that thread being scheduled.)
    let waited = before_hold.elapsed();
    assert!(
        waited >= hold,
        "the shutdown did not wait: `bye` after {waited:?}"
    );
    let first = first.join().unwrap()?.report.expect("a report");
    assert_eq!(first.outcome, Outcome::Committed, "{first:#?}");
    // The queued one got an answer, not a closed connection: refused, nothing applied.
    let second = second.join().unwrap()?.report.expect("a report");
    assert_eq!(second.outcome, Outcome::Refused, "{second:#?}");
    assert!(
        second.reason.unwrap_or_default().contains("shutting down"),
        "{:?}",
        second.id
    );
    assert_eq!(holder.join().unwrap()?, "held");
    // The control socket is gone; the process exits on its own.
    assert!(!p_socket.exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.alive() {
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn forty_updates_and_rollbacks_under_load_fail_no_request() -> Result<()> {
    const CYCLES: usize = 10;
    let exe = build_base(&app("v1"))?;
    let forward = build_patch(&app("v1"), &app("v2-code"))?;
    let back = build_patch_on(&app("v2-code"), &app("v1"), Some(&app("v1")))?;
    let panics = build_patch(&app("v1"), &app("v2-panic"))?;
    let unhealthy = build_patch(&app("v1"), &app("v2-health"))?;
    let mut p = Process::start(&exe)?;
    let seen = per_client(4);
    let s = seen.clone();
    // Each client: `add 1` must grow, `version` must be one of the two versions.
    let load = Load::start(p.port, 4, move |conn, c, i| {
        let mut st = s[c].lock().unwrap_or_else(|e| e.into_inner());
        if i % 2 == 0 {
            let n: u64 = conn.cmd("add 1")?.parse()?;
            anyhow::ensure!(
                n > st.last_add,
                "add went backwards: {n} after {}",
                st.last_add
            );
            st.last_add = n;
            st.adds += 1;
        } else {
            let v = conn.cmd("version")?;
            anyhow::ensure!(v == "v1" || v.starts_with("v2 total="), "version {v:?}");
        }
        Ok(())
    })?;
    load.wait_for_calls(100);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..CYCLES {
        for (pkg, expect) in [
            (&panics, Outcome::RolledBack),
            (&unhealthy, Outcome::RolledBack),
            (&forward, Outcome::Committed),
            (&back, Outcome::Committed),
        ] {
            let rec = p.apply(pkg, None)?;
            assert_eq!(rec.outcome, expect, "{rec:#?}");
            outcomes.push(rec.outcome);
            load.wait_for_calls(20);
        }
    }
    let elapsed = started.elapsed();
    let report = load.stop();
    assert_no_failures(&report);
    assert!(p.alive());
    let mut c = p.connect()?;
    assert_eq!(c.cmd("get")?, total_adds(&seen).to_string());
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(p.status()?.history.len(), 4 * CYCLES);
    // The figures RELIABILITY.md quotes.
    eprintln!(
        "{} updates ({} committed, {} rolled back) in {:.1} s under 4 clients: {} requests, {} \
         failed",
        outcomes.len(),
        outcomes
            .iter()
            .filter(|o| **o == Outcome::Committed)
            .count(),
        outcomes
            .iter()
            .filter(|o| **o == Outcome::RolledBack)
            .count(),
        elapsed.as_secs_f64(),
        report.ok,
        report.failures.len()
    );
    Ok(())
}
