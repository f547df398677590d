//! Socket activation: a program started by systemd's `systemd-socket-activate` takes over the
//! listener it is handed (`dsu::listener`), and can be updated live as usual.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dsu::Outcome;
use dsu_tests::*;

/// `systemd-socket-activate`, or a loud failure saying how to get it.
fn socket_activate() -> &'static str {
    let tool = "systemd-socket-activate";
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install Debian's `systemd` package (.ci/run does)"
    );
    tool
}

/// Starts `exe` under `systemd-socket-activate`, listening on a free port with the descriptor
/// named `app`, and opens the first connection (which starts the program). Returns the
/// activator (the program, once it has exec'd), the port and that connection.
fn activate(
    exe: &std::path::Path,
    socket: &std::path::Path,
) -> Result<(std::process::Child, u16, Conn)> {
    let tool = socket_activate();
    // A free port for systemd-socket-activate to listen on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let activator = Command::new(tool)
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--fdname=app")
        .arg("--")
        .arg(exe)
        .args(["--port", "0", "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start systemd-socket-activate")?;
    // The program starts on the first connection; that connection is served by it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match Conn::open(port) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => bail!("systemd-socket-activate never listened on {port}: {e}"),
        }
    };
    Ok((activator, port, c))
}

#[test]
fn a_socket_activated_program_serves_on_the_listener_it_was_handed() -> Result<()> {
    let exe = build_base(&program("quit", "v1"))?;
    let pkg = build_patch(&program("quit", "v1"), &program("quit", "v2"))?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("ctl.sock");
    let (mut activator, port, mut c) = activate(&exe, &socket)?;
    let guard = KillOnDrop(&mut activator);
    assert_eq!(c.cmd("version")?, "v1");
    // It took over the listener it was handed (asked for port 0, it serves on systemd's port).
    let stdout = guard.0.stdout.take().expect("piped");
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready)?;
    assert_eq!(ready.trim(), format!("ready {port}"));

    // And it is updated live like any other.
    let resp = dsu::control::request(
        &socket,
        &dsu::control::Request::Apply {
            package: pkg,
            timeout_ms: None,
            policy: None,
            clear_poison: false,
        },
    )?;
    let rec = resp.report.context("an apply report")?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(c.cmd("version")?, "v2");
    assert_eq!(Conn::open(port)?.cmd("version")?, "v2");
    Ok(())
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_socket_activated_program_is_handed_off_with_its_listener_and_its_clients() -> Result<()> {
    let exe = build_base(&program("quit", "v1"))?;
    let dir = tempfile::tempdir()?;
    // The same change, applied by a hand-off this time: the new process must get systemd's
    // listener (named `app`) and the open connection from the old one.
    let pkg = handoff_package()?;
    let socket = dir.path().join("ctl.sock");
    let (mut activator, port, mut c) = activate(&exe, &socket)?;
    let old_pid = activator.id();
    let _guard = KillOnDrop(&mut activator);
    assert_eq!(c.cmd("version")?, "v1");

    let resp = dsu::control::request(
        &socket,
        &dsu::control::Request::Apply {
            package: pkg,
            timeout_ms: None,
            policy: None,
            clear_poison: false,
        },
    )?;
    let rec = resp.report.context("an apply report")?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(rec.engine, dsu::Engine::Handoff);
    let new_pid = rec.new_pid.context("the new pid")?;
    let _new = KillPid(new_pid);
    assert_ne!(new_pid, old_pid);
    // The connection opened before the hand-off is served by the new process, and so are new
    // ones, on systemd's port.
    assert_eq!(c.cmd("version")?, "v2");
    assert_eq!(Conn::open(port)?.cmd("version")?, "v2");
    let status = dsu::control::request(&socket, &dsu::control::Request::Status)?
        .status
        .context("a status")?;
    assert_eq!(status.pid, new_pid);
    assert_eq!(status.version, "2.0.0");
    Ok(())
}

/// `cargo dsu diff --engine handoff` of the quit program, v1 -> v2, built once for the tests
/// of this file (they run side by side).
fn handoff_package() -> Result<std::path::PathBuf> {
    static BUILT: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pkg) = built.as_ref() {
        return Ok(pkg.clone());
    }
    let pkg = programs_target()
        .join("packages")
        .join("quit-1.0.0-to-2.0.0-handoff.dsu");
    let (v1, v2) = (program("quit", "v1"), program("quit", "v2"));
    let o = run_cargo_dsu([
        "diff",
        "--engine",
        "handoff",
        "-q",
        v1.to_str().context("a UTF-8 path")?,
        v2.to_str().context("a UTF-8 path")?,
        "-o",
        pkg.to_str().context("a UTF-8 path")?,
    ])?;
    if !o.status.success() {
        bail!(
            "cargo dsu diff failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    *built = Some(pkg.clone());
    Ok(pkg)
}

fn apply(
    socket: &std::path::Path,
    pkg: &std::path::Path,
    timeout_ms: Option<u64>,
) -> Result<dsu::UpdateRecord> {
    let resp = dsu::control::request(
        socket,
        &dsu::control::Request::Apply {
            package: pkg.to_path_buf(),
            timeout_ms,
            policy: None,
            clear_poison: false,
        },
    )?;
    resp.report.context("an apply report")
}

#[test]
fn a_handoff_waits_for_the_request_in_progress_and_aborts_if_it_does_not_end() -> Result<()> {
    let exe = build_base(&program("quit", "v1"))?;
    let pkg = handoff_package()?;
    let p = Process::start(&exe)?;
    // A request that runs for 3 s: a hand-off given 300 ms cannot pass it.
    let mut busy = Conn::open(p.port)?;
    let holder = std::thread::spawn(move || busy.cmd("hold 3000").map(|reply| (reply, busy)));
    std::thread::sleep(Duration::from_millis(300));
    let rec = apply(&p.socket, &pkg, Some(300))?;
    assert_eq!(rec.outcome, Outcome::Aborted, "{rec:#?}");
    assert_eq!(rec.engine, dsu::Engine::Handoff);
    assert_eq!(rec.new_pid, None);
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason
            .contains("1 connection(s) were still serving a request after 300 ms; nothing changed"),
        "{reason}"
    );
    // Nothing changed: the request completes, its connection and new ones are served.
    let mut other = Conn::open(p.port)?;
    assert_eq!(other.cmd("version")?, "v1");
    let (reply, mut busy) = holder.join().expect("the holding client")?;
    assert_eq!(reply, "held");
    assert_eq!(busy.cmd("version")?, "v1");
    // Between requests, the same hand-off commits, and both connections move.
    let rec = apply(&p.socket, &pkg, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    let _new = KillPid(rec.new_pid.context("the new pid")?);
    assert_eq!(busy.cmd("version")?, "v2");
    assert_eq!(other.cmd("version")?, "v2");
    Ok(())
}
