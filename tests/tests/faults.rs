//! Faults during a live update, each injected while clients are calling the process.
//!
//! Every test checks that the process keeps serving (no client call fails, and every client's
//! results stay consistent: its counter results grow, and once a newer version answered it an
//! older one never does again), that the state is intact afterwards (every `add` a client saw
//! answered is in the counter and in the `TOTAL` global), that the outcome and a one-line
//! reason are in the update's record and in the process's history, and, where it makes sense,
//! that a good update still applies afterwards.
//!
//! One test per class of fault: packages that cannot be read; packages for another program,
//! base or toolchain; libraries that do not match their manifest; manifests that understate
//! the update; state transfers that fail; a `prepare_to_die` hook that panics; a component that
//! never becomes passive; a protocol instance that never ends; two applies at once; control
//! clients that stall or send garbage.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dsu::control::Response;
use dsu::{Outcome, UpdateRecord};
use dsu_tests::*;

fn app(v: &str) -> PathBuf {
    program("app", v)
}

fn ledger(v: &str) -> PathBuf {
    program("ledger", v)
}

/// Clients of the counter on `p` for the length of a test, and what the test added itself.
struct Served {
    load: Load,
    seen: Arc<Vec<Mutex<Seen>>>,
    /// The test's own connection.
    conn: Conn,
    /// What the test added to the counter through `conn`.
    own_adds: u64,
}

impl Served {
    /// Adds `k` through the test's own connection and returns the counter's value.
    fn add(&mut self, k: u64) -> Result<u64> {
        let n = self.conn.cmd(&format!("add {k}"))?.parse()?;
        self.own_adds += k;
        Ok(n)
    }

    /// Stops the clients; asserts that none of their calls failed and that the counter and the
    /// `TOTAL` global hold every add that was answered. Returns the test's connection and the
    /// counter's value.
    fn finish(self) -> Result<(Conn, u64)> {
        let report = self.load.stop();
        assert_no_failures(&report);
        let mut conn = self.conn;
        let expected = self.own_adds + total_adds(&self.seen);
        let n: u64 = conn.cmd("get")?.parse()?;
        assert_eq!(
            n, expected,
            "the counter lost or invented adds: {n}, but the clients and the test made {expected}"
        );
        assert_eq!(conn.cmd("total")?, n.to_string(), "the global `TOTAL`");
        Ok((conn, n))
    }
}

/// Starts 4 clients on `p` (see [`counter_load_through`]) after adding 5 through a connection
/// of the test's own, and waits until they are calling.
fn serve(p: &Process, versions: &[&'static str]) -> Result<Served> {
    let mut conn = p.connect()?;
    assert_eq!(conn.cmd("add 5")?, "5");
    let (load, seen) = counter_load_through(p, 4, versions)?;
    load.wait_for_calls(200);
    Ok(Served {
        load,
        seen,
        conn,
        own_adds: 5,
    })
}

/// Applies `package` and checks that it was refused, for a reason saying every piece of
/// `reason`, and recorded; the clients must have gone on calling meanwhile.
fn refused(p: &Process, s: &Served, package: &Path, reason: &[&str]) -> Result<UpdateRecord> {
    let rec = p
        .apply(package, None)
        .with_context(|| format!("apply {}", package.display()))?;
    assert_recorded(p, &rec, Outcome::Refused, reason);
    assert!(
        rec.components.is_empty(),
        "a refused update names components it swapped: {rec:#?}"
    );
    s.load.wait_for_calls(20);
    Ok(rec)
}

/// Asserts that the process runs `version`, with `Counter` at `component_version`, and has
/// exactly the history `outcomes`, in order.
fn assert_state(
    p: &Process,
    version: &str,
    component_version: u32,
    outcomes: &[Outcome],
) -> Result<()> {
    let status = p.status()?;
    assert_eq!(status.version, version);
    let counter = status
        .components
        .iter()
        .find(|c| c.id == "Counter")
        .expect("a `Counter` component");
    assert_eq!(counter.version, component_version, "{status:#?}");
    let got: Vec<Outcome> = status.history.iter().map(|h| h.outcome).collect();
    assert_eq!(got, outcomes, "{:#?}", status.history);
    let ids: Vec<u64> = status.history.iter().map(|h| h.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "history out of order: {ids:?}"
    );
    Ok(())
}

/// A shared library that is certainly not a dsu patch.
fn system_library() -> PathBuf {
    for p in [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("no system shared library (libz, libm) found to put inside a package");
}

/// Deterministic pseudo-random bytes (so a failure can be reproduced).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect()
}

#[test]
fn unreadable_packages_are_refused_and_recorded_while_clients_call() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let dir = tempfile::tempdir()?;
    let bytes = std::fs::read(&good)?;
    let file = |name: &str, content: &[u8]| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, content)?;
        Ok(path)
    };

    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            file("half.dsu", &bytes[..bytes.len() / 2])?,
            vec!["truncated", "ends inside the library"],
        ),
        (
            file("short.dsu", &bytes[..40])?,
            vec!["truncated", "ends inside the manifest"],
        ),
        (file("empty.dsu", b"")?, vec!["truncated"]),
        // An ELF file: the program's own executable.
        (exe.clone(), vec!["not a dsu package"]),
        (
            file("noise.dsu", &noise(4096, 7))?,
            vec!["not a dsu package"],
        ),
        (
            dir.path().join("missing.dsu"),
            vec!["cannot read the package", "missing.dsu"],
        ),
    ];
    let mut outcomes = Vec::new();
    for (path, reason) in &cases {
        let rec = refused(&p, &s, path, reason)?;
        assert_eq!(rec.from, "1.0.0");
        outcomes.push(Outcome::Refused);
    }
    assert_state(&p, "1.0.0", 1, &outcomes)?;

    // The process is healthy: the package the truncated ones were cut from applies.
    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    s.load.wait_for_calls(200);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    outcomes.push(Outcome::Committed);
    assert_state(&p, "2.0.0", 2, &outcomes)
}

#[test]
fn packages_for_another_program_base_or_toolchain_are_refused_while_clients_call() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let other_program = build_patch(&ledger("v1"), &ledger("v2"))?;
    // Built from v2-field, not from the v1 the process runs.
    let other_base = build_patch_on(&app("v2-field"), &app("v2-transfer"), Some(&app("v1")))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;

    let mut outcomes = Vec::new();
    let mut check = |package: &Path, reason: &[&str]| -> Result<()> {
        refused(&p, &s, package, reason)?;
        outcomes.push(Outcome::Refused);
        Ok(())
    };
    check(
        &other_program,
        &["the package is for program `ledger`, this process is `app`"],
    )?;
    check(
        &other_base,
        &[
            "another version of component `Counter`",
            "running version's source",
        ],
    )?;
    let base = with_manifest(&good, "faults-other-base", |m| {
        for b in &mut m.base {
            b.code ^= 1;
        }
    })?;
    check(&base, &["another version of component"])?;
    let rustc = with_manifest(&good, "faults-other-rustc", |m| {
        m.rustc = "1.0.0 (0000000 1970-01-01)".into()
    })?;
    check(
        &rustc,
        &["rustc `1.0.0 (0000000 1970-01-01)`", "rebuild the patch"],
    )?;
    let target = with_manifest(&good, "faults-other-target", |m| {
        m.target = "sparc64-unknown-openbsd".into()
    })?;
    check(&target, &["target `sparc64-unknown-openbsd`"])?;
    let runtime = with_manifest(&good, "faults-other-dsu-rt", |m| m.dsu_rt = "0.0.1".into())?;
    check(&runtime, &["dsu-rt `0.0.1`"])?;
    let profile = with_manifest(&good, "faults-other-profile", |m| {
        m.debug_assertions = !m.debug_assertions
    })?;
    check(&profile, &["debug assertions", "profile"])?;
    // A manifest requiring a component the patch does not contain.
    let forced = with_manifest(&good, "faults-forced-unknown", |m| {
        m.constraints.components = vec!["Nowhere".into()]
    })?;
    check(
        &forced,
        &["requires component `Nowhere` to be updated, but the patch does not contain it"],
    )?;

    let (_, n) = s.finish()?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("get")?, n.to_string());
    assert_state(&p, "1.0.0", 1, &outcomes)?;
    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    outcomes.push(Outcome::Committed);
    assert_state(&p, "2.0.0", 2, &outcomes)
}

#[test]
fn a_library_that_does_not_match_its_manifest_is_refused_while_clients_call() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let other_base = build_patch_on(&app("v2-field"), &app("v2-transfer"), Some(&app("v1")))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let dir = tempfile::tempdir()?;
    // The correct package's manifest, around another library.
    let disguised = |name: &str, library: Vec<u8>| -> Result<PathBuf> {
        let mut pkg = dsu::Package::read(&good)?;
        pkg.library = library;
        let path = dir.path().join(name);
        pkg.write(&path)?;
        Ok(path)
    };

    let mut outcomes = Vec::new();
    // A patch built against another base (v2-field, whose `Counter` has a field more), in a
    // manifest copied from a correct package: the manifest's checks all pass, and only the
    // layouts the library itself carries can tell.
    let lying = disguised("lying.dsu", dsu::Package::read(&other_base)?.library)?;
    refused(
        &p,
        &s,
        &lying,
        &[
            "the patch expects state type `Counter`",
            "{n, ops}",
            "the process runs",
            "{n}",
            "another base",
        ],
    )?;
    outcomes.push(Outcome::Refused);
    // The same library in its own manifest with the base left out.
    let no_base = with_manifest(&other_base, "faults-other-base-unlisted", |m| {
        m.base.clear()
    })?;
    refused(
        &p,
        &s,
        &no_base,
        &["the patch expects state type `Counter`"],
    )?;
    outcomes.push(Outcome::Refused);

    s.load.wait_for_calls(100);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("len")?, "0", "the `Store` changed");
    assert_state(&p, "1.0.0", 1, &outcomes)?;
    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    outcomes.push(Outcome::Committed);
    assert_state(&p, "2.0.0", 2, &outcomes)
}

/// A library that is no dsu patch, in a package whose manifest is correct: refused, nothing
/// changed, recorded, with a one-line reason (abi_stable's error text spans several lines).
#[test]
fn a_foreign_library_is_refused_with_a_one_line_reason() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let dir = tempfile::tempdir()?;
    let libraries = [
        ("a system library", std::fs::read(system_library())?),
        ("bytes that are no library", noise(64 * 1024, 11)),
    ];
    let mut multi_line = Vec::new();
    for (what, library) in libraries {
        let mut pkg = dsu::Package::read(&good)?;
        pkg.library = library;
        let path = dir.path().join("foreign.dsu");
        pkg.write(&path)?;
        let rec = p.apply(&path, None)?;
        assert_eq!(rec.outcome, Outcome::Refused, "{what}: {rec:#?}");
        let reason = rec.reason.clone().unwrap_or_default();
        assert!(reason.contains("not a dsu patch"), "{what}: {reason:?}");
        assert!(
            p.status()?.history.last() == Some(&rec),
            "{what}: not in the history"
        );
        if reason.contains('\n') {
            multi_line.push(format!("{what}: {reason:?}"));
        }
        s.load.wait_for_calls(20);
    }
    let (mut c, _) = s.finish()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert_state(&p, "1.0.0", 1, &[Outcome::Refused, Outcome::Refused])?;
    assert!(
        multi_line.is_empty(),
        "refusal reasons that are not one line:\n{}",
        multi_line.join("\n")
    );
    Ok(())
}

/// A correct library whose manifest understates the update: no changes, no constraints. What is
/// swapped, and what must be passive for it, comes from the library's descriptors, so the
/// update is as safe as with the honest manifest; only the history repeats the manifest's
/// claims.
#[test]
fn a_manifest_that_understates_the_update_does_not_make_it_unsafe() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let claim = dsu::package::Change {
        item: "nothing".into(),
        file: String::new(),
        line: 0,
        category: 1,
        description: "no change at all".into(),
    };
    let understated = with_manifest(&good, "faults-understated", |m| {
        m.changes = vec![claim.clone()];
        m.constraints = dsu::Constraints::default();
    })?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let rec = p.apply(&understated, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    // The runtime found the changed component itself and made it passive: the clients (which
    // fail on an old answer after a new one, or a lost add) saw one clean switch.
    assert_eq!(rec.components, vec!["Counter".to_string()]);
    assert_eq!(
        rec.changes,
        vec![claim],
        "the history keeps the manifest's claim"
    );
    wait_until_all_saw_new(&s.seen);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_state(&p, "2.0.0", 2, &[Outcome::Committed])
}

#[test]
fn a_failing_state_transfer_rolls_back_while_clients_call() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let panicking = build_patch(&app("v1"), &app("v2-panic"))?;
    let failing = build_patch(&app("v1"), &app("v2-error"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let mut p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;

    let rec = p.apply(&panicking, None)?;
    assert_recorded(
        &p,
        &rec,
        Outcome::RolledBack,
        &["panicked", "refusing to transfer a counter at"],
    );
    assert_eq!(rec.components, vec!["Counter".to_string()]);
    s.load.wait_for_calls(100);
    let rec = p.apply(&failing, None)?;
    assert_recorded(
        &p,
        &rec,
        Outcome::RolledBack,
        &["returned an error: a counter at", "cannot be migrated"],
    );
    s.load.wait_for_calls(100);
    assert!(p.alive());
    assert_state(&p, "1.0.0", 1, &[Outcome::RolledBack, Outcome::RolledBack])?;

    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    s.load.wait_for_calls(200);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_state(
        &p,
        "2.0.0",
        2,
        &[Outcome::RolledBack, Outcome::RolledBack, Outcome::Committed],
    )
}

#[test]
fn a_panicking_prepare_to_die_hook_aborts_while_clients_call() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    // v2-hookpanic's hook panics while the counter is below 1,000,000; it runs on the version
    // being replaced, so it is the update after v2-hookpanic that meets it.
    let with_hook = build_patch(&app("v1"), &app("v2-hookpanic"))?;
    let past_hook = build_patch_on(&app("v2-hookpanic"), &app("v2-code"), Some(&app("v1")))?;
    let mut p = Process::start(&exe)?;
    let mut s = serve(&p, &["v1", "v2-hookpanic", "v2 total="])?;
    let rec = p.apply(&with_hook, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    s.load.wait_for_calls(200);

    let rec = p.apply(&past_hook, None)?;
    assert_recorded(
        &p,
        &rec,
        Outcome::Aborted,
        &[
            "the `prepare_to_die` hook of `Counter` panicked",
            "is not ready to die",
        ],
    );
    assert_eq!(rec.from, "2.0.0-hookpanic");
    // The callers held back while the hook ran were let go: the clients go on, on the version
    // the hook belongs to.
    s.load.wait_for_calls(200);
    assert!(p.alive());
    assert_eq!(s.conn.cmd("version")?, "v2-hookpanic");
    assert_state(
        &p,
        "2.0.0-hookpanic",
        2,
        &[Outcome::Committed, Outcome::Aborted],
    )?;

    // Once the hook's condition is met, the same package applies.
    s.add(1_000_000)?;
    let rec = p.apply(&past_hook, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    assert_eq!(rec.components, vec!["Counter".to_string()]);
    s.load.wait_for_calls(200);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_state(
        &p,
        "2.0.0",
        3,
        &[Outcome::Committed, Outcome::Aborted, Outcome::Committed],
    )
}

/// While an update waits for a busy component, `status` answers, new callers of the component
/// wait and are let go on the old version when the update aborts, and other components serve
/// as usual.
#[test]
fn a_component_that_never_becomes_passive_aborts_and_status_answers_meanwhile() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-slow"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1"])?;
    let slow_in_flight = |p: &Process| -> Result<usize> {
        Ok(p.status()?
            .components
            .iter()
            .find(|c| c.id == "Slow")
            .map_or(0, |c| c.in_flight))
    };
    let mut holder = p.connect()?;
    let mut waiter = p.connect()?;
    let timeout_ms = 1500;
    let (rec, held, waited, polls) = std::thread::scope(|scope| -> Result<_> {
        let held = scope.spawn(move || holder.cmd("hold 3000"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while slow_in_flight(&p)? != 1 {
            ensure!(
                Instant::now() < deadline,
                "the hold never showed as in flight"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let update = scope.spawn(|| p.apply(&pkg, Some(timeout_ms)));
        std::thread::sleep(Duration::from_millis(300));
        // A new caller of the busy component: held back while the update is pending.
        let waited = scope.spawn(move || waiter.cmd("hold 1"));
        let mut polls = 0;
        let mut slowest = Duration::ZERO;
        while !update.is_finished() {
            let t = Instant::now();
            let status = p.status()?;
            slowest = slowest.max(t.elapsed());
            if update.is_finished() {
                break;
            }
            polls += 1;
            assert!(
                status.history.is_empty(),
                "an update in progress is in the history: {:#?}",
                status.history
            );
            let slow = status.components.iter().find(|c| c.id == "Slow").unwrap();
            assert!(slow.in_flight >= 1, "{slow:?}");
            assert_eq!(slow.version, 1);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            slowest < Duration::from_millis(500),
            "status took {slowest:?} during the update"
        );
        let rec = update.join().expect("the apply thread")?;
        let waited = waited.join().expect("the waiting caller")?;
        let held = held.join().expect("the holding caller")?;
        Ok((rec, held, waited, polls))
    })?;
    assert!(
        polls >= 5,
        "status answered only {polls} times while the update waited"
    );
    assert_recorded(
        &p,
        &rec,
        Outcome::Aborted,
        &[
            &format!("did not become passive within {timeout_ms} ms"),
            "`Slow::hold`",
        ],
    );
    let busy = rec
        .busy
        .iter()
        .find(|b| b.component == "Slow")
        .expect("`Slow` reported busy");
    assert_eq!(busy.method.as_deref(), Some("hold"));
    assert!(busy.busy_ms >= timeout_ms as f64 * 0.8, "{busy:?}");
    assert_eq!(held, "held");
    assert_eq!(waited, "held", "the waiting caller was not served by v1");

    // Once the component is idle, the same package applies.
    let rec = p.apply(&pkg, Some(timeout_ms))?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    assert_eq!(rec.components, vec!["Slow".to_string()]);
    s.load.wait_for_calls(100);
    let (mut c, _) = s.finish()?;
    assert_eq!(c.cmd("hold 1")?, "held-v2");
    assert_eq!(c.cmd("version")?, "v1");
    let status = p.status()?;
    assert_eq!(status.version, "2.0.0-slow");
    let history: Vec<Outcome> = status.history.iter().map(|h| h.outcome).collect();
    assert_eq!(history, [Outcome::Aborted, Outcome::Committed]);
    Ok(())
}

#[test]
fn a_protocol_instance_that_never_ends_aborts_while_transactions_go_on() -> Result<()> {
    let exe = build_base(&ledger("v1"))?;
    let pkg = build_patch(&ledger("v1"), &ledger("v2"))?;
    let p = Process::start(&exe)?;
    let mut open = p.connect()?;
    assert_eq!(open.cmd("begin")?, "v1");
    assert_eq!(open.cmd("write 5")?, "v1");
    // Clients running whole transactions: each answered throughout by the version that began
    // it, and no client sees v1 again once it saw v2.
    let seen = per_client(3);
    let s = seen.clone();
    let load = Load::start(p.port, 3, move |conn, c, _| {
        let v = conn.cmd("begin")?;
        for x in 1..=2 {
            let w = conn.cmd(&format!("write {x}"))?;
            ensure!(w == v, "write answered by {w} inside a transaction of {v}");
        }
        let e = conn.cmd("commit")?;
        ensure!(e == v, "commit answered by {e} for a transaction of {v}");
        let mut st = s[c].lock().unwrap();
        match v.as_str() {
            "v1" => ensure!(!st.saw_new, "v1 began a transaction after v2 had"),
            "v2" => st.saw_new = true,
            other => anyhow::bail!("unexpected version {other:?}"),
        }
        Ok(())
    })?;
    load.wait_for_calls(100);

    let rec = p.apply(&pkg, Some(500))?;
    assert_recorded(
        &p,
        &rec,
        Outcome::Aborted,
        &["protocol `txn` still had 1 instance(s) in progress after 500 ms"],
    );
    load.wait_for_calls(100);
    // The open transaction goes on, on the old version, and ends; the hook never ran.
    assert_eq!(open.cmd("write 6")?, "v1");
    assert_eq!(open.cmd("prepared")?, "0");
    assert_eq!(open.cmd("commit")?, "v1");

    let rec = p.apply(&pkg, Some(5000))?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    wait_until_all_saw_new(&seen);
    assert_no_failures(&load.stop());
    assert_eq!(open.cmd("prepared")?, "1");
    assert_eq!(open.cmd("begin")?, "v2");
    assert_eq!(open.cmd("commit")?, "v2");
    let status = p.status()?;
    assert_eq!(status.version, "2.0.0");
    let history: Vec<Outcome> = status.history.iter().map(|h| h.outcome).collect();
    assert_eq!(history, [Outcome::Aborted, Outcome::Committed]);
    Ok(())
}

/// Applies `a` and `b` from two threads at once; returns their records in the order the process
/// ran them.
fn apply_both(p: &Process, a: &Path, b: &Path) -> Result<(UpdateRecord, UpdateRecord)> {
    let start = Barrier::new(2);
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| {
            start.wait();
            p.apply(a, None)
        });
        let tb = scope.spawn(|| {
            start.wait();
            p.apply(b, None)
        });
        (
            ta.join().expect("apply thread"),
            tb.join().expect("apply thread"),
        )
    });
    let (ra, rb) = (ra?, rb?);
    Ok(if ra.id < rb.id { (ra, rb) } else { (rb, ra) })
}

/// The first ended before the second began, and the second saw its result.
fn assert_serialised(p: &Process, first: &UpdateRecord, second: &UpdateRecord) -> Result<()> {
    assert_eq!(second.id, first.id + 1);
    assert_recorded(p, first, Outcome::Committed, &[]);
    assert_recorded(
        p,
        second,
        Outcome::Refused,
        &["built against another version of component"],
    );
    assert_eq!(
        second.from, first.to,
        "the second did not see the first's result"
    );
    // Millisecond clock: allow 2 ms of rounding.
    assert!(
        second.started_unix_ms + 2 >= first.started_unix_ms + first.total_ms as u64,
        "the updates overlapped: {first:#?} {second:#?}"
    );
    let history = p.status()?.history;
    assert_eq!(history, vec![first.clone(), second.clone()]);
    Ok(())
}

#[test]
fn concurrent_applies_are_serialised_and_the_second_sees_the_first() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let code = build_patch(&app("v1"), &app("v2-code"))?;
    let slow = build_patch(&app("v1"), &app("v2-slow"))?;

    // The same package twice: one commits; the other finds the process no longer at the base
    // it was built for.
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let (first, second) = apply_both(&p, &code, &code)?;
    assert_serialised(&p, &first, &second)?;
    s.load.wait_for_calls(200);
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_eq!(p.status()?.version, "2.0.0");

    // Two packages built from the same base for different components: whichever runs second
    // is refused too, since each expects every component of v1.
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    let (first, second) = apply_both(&p, &code, &slow)?;
    assert_serialised(&p, &first, &second)?;
    s.load.wait_for_calls(200);
    let (mut c, n) = s.finish()?;
    let status = p.status()?;
    assert_eq!(status.version, first.to);
    if first.to == "2.0.0" {
        assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
        assert_eq!(c.cmd("hold 1")?, "held");
    } else {
        assert_eq!(c.cmd("version")?, "v1");
        assert_eq!(c.cmd("hold 1")?, "held-v2");
    }
    Ok(())
}

/// Sends raw bytes to the control socket (then, if `close`, ends the request side) and returns
/// the reply line.
fn raw_request(socket: &Path, bytes: &[u8], close: bool) -> Result<Response> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // The process may stop reading before the end of an oversized request; its reply is what
    // counts.
    let _ = conn.write_all(bytes);
    if close {
        let _ = conn.shutdown(std::net::Shutdown::Write);
    }
    read_reply(&mut conn)
}

/// Reads one reply line. (Only the line: after refusing an oversized request, the process closes
/// the connection with the rest of the request unread, and the kernel then resets it.)
fn read_reply(conn: &mut UnixStream) -> Result<Response> {
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .context("read the control reply")?;
    ensure!(line.ends_with('\n'), "the reply is not a line: {line:?}");
    serde_json::from_str(&line)
        .with_context(|| format!("the reply is not a control response: {line:?}"))
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_reply_and_changes_nothing() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;

    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let mut noise_line = noise(4096, 3);
    noise_line.retain(|b| *b != b'\n');
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("random bytes", noise_line, true, "malformed request"),
        (
            "a line over 64 KiB",
            long,
            false,
            "request larger than 65536 bytes",
        ),
        (
            "invalid JSON",
            b"{\"op\": \"apply\", \"package\": \n".to_vec(),
            false,
            "malformed request",
        ),
        (
            "an unknown op",
            b"{\"op\":\"reboot\"}\n".to_vec(),
            false,
            "unknown variant `reboot`",
        ),
        (
            "a field of the wrong type",
            b"{\"op\":\"apply\",\"package\":5}\n".to_vec(),
            false,
            "malformed request",
        ),
        (
            "JSON that is not an object",
            b"[1,2,3]\n".to_vec(),
            false,
            "malformed request",
        ),
        (
            "bytes that are not UTF-8",
            b"{\"op\":\"status\xff\xfe\"}\n".to_vec(),
            false,
            "malformed request",
        ),
        ("an empty line", b"\n".to_vec(), false, "malformed request"),
        (
            "a commit of an update never staged",
            b"{\"op\":\"commit\",\"id\":77}\n".to_vec(),
            false,
            "no staged update with id 77",
        ),
    ];
    for (what, bytes, close, error) in cases {
        let resp = raw_request(&p.socket, &bytes, close).with_context(|| what.to_string())?;
        assert!(!resp.ok, "{what}: accepted: {resp:?}");
        assert!(
            resp.report.is_none() && resp.status.is_none(),
            "{what}: {resp:?}"
        );
        let text = resp.error.unwrap_or_default();
        assert!(text.contains(error), "{what}: error {text:?}");
        assert!(!text.contains('\n'), "{what}: error {text:?}");
        s.load.wait_for_calls(20);
    }
    // A connection closed without a request gets no reply and harms nothing.
    drop(UnixStream::connect(&p.socket)?);

    // Nothing changed, nothing was recorded, and the process still takes a real request.
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert_state(&p, "1.0.0", 1, &[])?;
    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    Ok(())
}

#[test]
fn stalled_control_clients_block_no_one_and_are_dropped() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1", "v2 total="])?;
    // Clients that connect and send nothing, and one that sends half a request (fewer than the
    // connections the process serves at once).
    let mut stalled: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&p.socket))
        .collect::<std::io::Result<_>>()?;
    let mut half = UnixStream::connect(&p.socket)?;
    half.write_all(b"{\"op\":\"sta")?;
    let stalled_at = Instant::now();

    // Meanwhile: status answers at once, and an update applies under load.
    for _ in 0..5 {
        let t = Instant::now();
        let status = p.status()?;
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "status took {:?} with stalled clients",
            t.elapsed()
        );
        assert_eq!(status.version, "1.0.0");
    }
    let rec = p.apply(&good, None)?;
    assert_recorded(&p, &rec, Outcome::Committed, &[]);
    s.load.wait_for_calls(200);

    // The stalled clients are answered with an error once the read timeout passes.
    half.set_read_timeout(Some(Duration::from_secs(30)))?;
    let resp = read_reply(&mut half)?;
    let waited = stalled_at.elapsed();
    // (What the reply says: `a_stalled_control_client_is_told_it_timed_out`.)
    assert!(!resp.ok && resp.error.is_some(), "{resp:?}");
    assert!(
        waited >= dsu::control::READ_TIMEOUT - Duration::from_secs(1),
        "dropped after {waited:?}"
    );
    for conn in &mut stalled {
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let resp = read_reply(conn)?;
        assert!(!resp.ok && resp.error.is_some(), "{resp:?}");
    }
    let (mut c, n) = s.finish()?;
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));
    assert_state(&p, "2.0.0", 2, &[Outcome::Committed])
}

/// A control client that stalls half-way through its request is dropped after the read timeout
/// with a reply that says so (not the raw socket error).
#[test]
fn a_stalled_control_client_is_told_it_timed_out() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let p = Process::start(&exe)?;
    let s = serve(&p, &["v1"])?;
    let mut half = UnixStream::connect(&p.socket)?;
    half.write_all(b"{\"op\":\"sta")?;
    half.set_read_timeout(Some(Duration::from_secs(30)))?;
    let resp = read_reply(&mut half)?;
    let (mut c, _) = s.finish()?;
    assert_eq!(c.cmd("version")?, "v1");
    assert!(!resp.ok, "{resp:?}");
    let text = resp.error.unwrap_or_default();
    assert!(
        text.contains("within 10 s") && !text.contains("os error"),
        "the reply does not say that the request did not arrive in time: {text:?}"
    );
    Ok(())
}
