//! Update policies and refusals, through the control socket.

use std::time::Duration;

use anyhow::Result;
use dsu::control::Request;
use dsu::{Outcome, Policy, TimeOfDay};
use dsu_tests::*;

fn app(v: &str) -> std::path::PathBuf {
    program("app", v)
}

fn tod(minutes: u32) -> TimeOfDay {
    TimeOfDay {
        minutes: minutes % (24 * 60),
    }
}

fn now_minutes() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs / 60) % (24 * 60)) as u32
}

#[test]
fn a_staged_update_waits_for_the_operators_commit() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let rec = p.apply_with(&pkg, None, Some(Policy::Staged))?;
    assert_eq!(rec.outcome, Outcome::Staged);
    assert_eq!(c.cmd("version")?, "v1");
    let status = p.status()?;
    assert_eq!(status.staged, vec![rec.id]);
    let resp = p.control(&Request::Commit {
        id: rec.id + 100,
        timeout_ms: None,
        clear_poison: false,
    })?;
    assert!(!resp.ok && resp.error.unwrap().contains("no staged update"));
    let resp = p.control(&Request::Commit {
        id: rec.id,
        timeout_ms: None,
        clear_poison: false,
    })?;
    assert_eq!(resp.report.unwrap().outcome, Outcome::Committed);
    assert!(c.cmd("version")?.starts_with("v2"));
    assert!(p.status()?.staged.is_empty());
    Ok(())
}

#[test]
fn a_window_policy_applies_only_inside_its_window() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    let now = now_minutes();
    // A window that opens in two hours: given up after 300 ms, nothing changed.
    let closed = Policy::Window {
        start: tod(now + 120),
        end: tod(now + 180),
        give_up_ms: 300,
        retries: 0,
    };
    let rec = p.apply_with(&pkg, None, Some(closed))?;
    assert_eq!(rec.outcome, Outcome::GivenUp, "{rec:#?}");
    assert!(rec.reason.unwrap().contains("did not open"));
    assert_eq!(c.cmd("version")?, "v1");
    // A window around now.
    let open = Policy::Window {
        start: tod(now + 24 * 60 - 5),
        end: tod(now + 5),
        give_up_ms: 300,
        retries: 0,
    };
    assert_eq!(
        p.apply_with(&pkg, None, Some(open))?.outcome,
        Outcome::Committed
    );
    assert!(c.cmd("version")?.starts_with("v2"));
    Ok(())
}

#[test]
fn a_rate_policy_waits_for_the_load_to_drop() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let pkg = build_patch(&app("v1"), &app("v2-code"))?;
    let p = Process::start(&exe)?;
    let load = Load::start(p.port, 2, |conn, _, _| {
        conn.cmd("add 1")?;
        Ok(())
    })?;
    load.wait_for_calls(100);
    let strict = Policy::RateBelow {
        calls_per_sec: 1.0,
        sample_ms: 100,
        give_up_ms: 400,
        retries: 0,
    };
    let rec = p.apply_with(&pkg, None, Some(strict))?;
    assert_eq!(rec.outcome, Outcome::GivenUp, "{rec:#?}");
    assert!(rec.reason.unwrap().contains("`Counter`"));
    let report = load.stop();
    assert!(report.failures.is_empty());
    // Once the load is gone, the same bound is met.
    std::thread::sleep(Duration::from_millis(50));
    let relaxed = Policy::RateBelow {
        calls_per_sec: 1.0,
        sample_ms: 100,
        give_up_ms: 5_000,
        retries: 0,
    };
    assert_eq!(
        p.apply_with(&pkg, None, Some(relaxed))?.outcome,
        Outcome::Committed
    );
    Ok(())
}

#[test]
fn packages_that_do_not_match_the_process_are_refused_with_nothing_changed() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let other_program = build_patch(&program("alloc", "v1"), &program("alloc", "v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    c.cmd("add 3")?;
    // Only the owner may talk to the control socket.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p.socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    let rec = p.apply(&other_program, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("for program `alloc-host`"));

    let toolchain = with_manifest(&good, "app-other-rustc", |m| {
        m.rustc = "1.0.0 (0000000)".into()
    })?;
    let rec = p.apply(&toolchain, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("rustc `1.0.0 (0000000)`"));

    let base = with_manifest(&good, "app-other-base", |m| {
        for b in &mut m.base {
            b.code ^= 1;
        }
    })?;
    let rec = p.apply(&base, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("another version of component"));

    // A truncated file and a file that is not a package: refused (and recorded), not a crash.
    let bytes = std::fs::read(&good)?;
    let dir = tempfile::tempdir()?;
    let truncated = dir.path().join("truncated.dsu");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let rec = p.apply(&truncated, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("truncated"));
    let rec = p.apply(&exe, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("not a dsu package"));

    // A library that is not a patch, inside a well-formed package.
    let foreign = with_manifest(&good, "app-foreign-lib", |_| {})?;
    let mut pkg = dsu::Package::read(&foreign)?;
    pkg.library = std::fs::read(find_system_library())?;
    pkg.write(&foreign)?;
    let rec = p.apply(&foreign, None)?;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(rec.reason.unwrap().contains("not a dsu patch"));

    // Nothing changed, and every refusal is in the history.
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("get")?, "3");
    let status = p.status()?;
    assert_eq!(status.history.len(), 6);
    assert!(status.history.iter().all(|r| r.outcome == Outcome::Refused));
    // And the right package still applies.
    assert_eq!(p.apply(&good, None)?.outcome, Outcome::Committed);
    Ok(())
}

/// A shared library that is certainly not a dsu patch.
fn find_system_library() -> std::path::PathBuf {
    for p in [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("no system shared library found to use as a foreign library");
}
