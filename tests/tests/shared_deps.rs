//! End-to-end (issue 14, items 4 and 5): one copy of every dependency with process-wide
//! state. The `spawn` program links tokio, tracing and log from dsu-shared, the dynamic
//! library it shares with its patches; its v2 patch spawns a task, sleeps, runs a blocking
//! closure and logs, all on the running process's runtime and subscriber, and receives from a
//! channel the process created. A patch built against another build of tokio is refused.

use anyhow::Result;
use dsu::Outcome;
use dsu_tests::*;

fn spawn(v: &str) -> std::path::PathBuf {
    program("spawn", v)
}

#[test]
fn patched_code_spawns_sleeps_and_logs_on_the_hosts_runtime_inside_the_callers_span() -> Result<()>
{
    let exe = build_base(&spawn("v1"))?;
    let pkg = build_patch(&spawn("v1"), &spawn("v2"))?;
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("trace.log");
    let p = Process::start_with_env(&exe, &[("SPAWN_TRACE", trace.as_os_str())])?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("work 5")?, "v1 done 1");
    // A value sent into the host's channel before the update, read by patched code after it.
    assert_eq!(c.cmd("send 7")?, "sent");

    let rec = p.apply(&pkg, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(c.cmd("version")?, "v2");
    // v2's `work` spawns a task that sleeps 20 ms and doubles, then a blocking closure adds 1:
    // without the host's runtime context `tokio::spawn` would panic in patched code.
    assert_eq!(c.cmd("work 20")?, "v2 done 2 41");
    assert_eq!(c.cmd("take")?, "v2 took 7");
    assert_eq!(c.cmd("send 8")?, "sent");
    assert_eq!(c.cmd("take")?, "v2 took 8");

    // The host's subscriber recorded patched code's events with their fields, inside the span
    // the host opened for the request (also in the spawned task, which took the span along).
    let log = std::fs::read_to_string(&trace)?;
    let line = |needle: &str| -> String {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in the trace:\n{log}"))
            .to_string()
    };
    let v1 = line("work v1");
    assert!(
        v1.contains("request{cmd=work}") && v1.contains("ms=5"),
        "{v1}"
    );
    let v2 = line("work v2");
    assert!(
        v2.contains("request{cmd=work}") && v2.contains("ms=20"),
        "{v2}"
    );
    let slept = line("slept in a task spawned by patched code");
    assert!(
        slept.contains("request{cmd=work}") && slept.contains("slept=20"),
        "{slept}"
    );
    Ok(())
}

#[test]
fn another_build_of_tokio_is_refused_in_place_and_a_patch_built_against_it_does_not_load(
) -> Result<()> {
    // The analysis: v3 asks tokio for one more feature, so tokio is another build.
    let o = run_cargo_dsu([
        "check",
        spawn("v1").to_str().unwrap(),
        spawn("v3").to_str().unwrap(),
        "--engine",
        "in-place",
    ])?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("dependency `tokio`"), "{out}");
    assert!(
        out.contains("features [io-util, net, rt-multi-thread, sync, time]"),
        "{out}"
    );
    assert!(
        out.contains("features [fs, io-util, net, rt-multi-thread, sync, time]"),
        "{out}"
    );
    assert!(out.contains("holds process-wide state"), "{out}");

    // Such a patch built anyway (a stale or hand-made one) is refused when it is loaded, and
    // the service goes on. It is built in a target directory of its own: its build of
    // dsu-shared (tokio with `fs`) would replace the one the other tests link.
    let exe = build_base(&spawn("v1"))?;
    let mut opts = cargo_dsu::patch::PatchOptions::new(spawn("v1"), spawn("v3"));
    opts.target_dir = Some(programs_target().join("other-tokio"));
    let built = cargo_dsu::patch::build(&opts)?;
    let pkg = programs_target()
        .join("packages")
        .join("spawn-other-tokio.dsu");
    std::fs::create_dir_all(pkg.parent().expect("a file in a dir"))?;
    built.package.write(&pkg)?;

    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("trace.log");
    let p = Process::start_with_env(&exe, &[("SPAWN_TRACE", trace.as_os_str())])?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("work 1")?, "v1 done 1");
    let rec = p.apply(&pkg, None)?;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("another build of `tokio`"),
        "names the crate: {reason}"
    );
    assert_eq!(c.cmd("version")?, "v1");
    assert_eq!(c.cmd("work 1")?, "v1 done 2");
    Ok(())
}
