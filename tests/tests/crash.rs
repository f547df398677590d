//! Crash safety (DESIGN.md §5, "Crash safety"): kvstore v5 is killed (SIGKILL, injected with
//! `DSU_FAULT_FILE`) at each step of its in-place update to v6, whose `migrate` moves the
//! journal to a new format, and started again on the same data directory. Each time it comes up
//! serving every write it had acknowledged, with the journal entirely in the old format and
//! nothing left beside it. After an update that committed, the old binary refuses the migrated
//! files and the new one serves them.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dsu_tests::repo_root;
use dsu_tests::resp::{Client, Reply};

fn version(v: &str) -> PathBuf {
    repo_root().join("examples/kvstore").join(v)
}

/// A kvstore process; killed when dropped.
struct Kv {
    child: Child,
    port: u16,
    socket: PathBuf,
}

impl Drop for Kv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Spawns kvstore on `work/data`; returns it and its port.
fn spawn(exe: &Path, work: &Path, faults: Option<&Path>) -> (Child, u16) {
    let (socket, port) = (work.join("kv.sock"), free_port());
    let mut cmd = Command::new(exe);
    cmd.args(["--port", &port.to_string(), "--socket"])
        .arg(&socket)
        .arg("--data")
        .arg(work.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = faults {
        cmd.env("DSU_FAULT_FILE", f);
    }
    (cmd.spawn().unwrap(), port)
}

/// Starts kvstore on `work/data` and waits for it to say `ready`.
fn start(exe: &Path, work: &Path, faults: Option<&Path>) -> Kv {
    let (mut child, port) = spawn(exe, work, faults);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "ready" {
        let out = child.wait_with_output().unwrap();
        panic!(
            "kvstore did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Kv {
        child,
        port,
        socket: work.join("kv.sock"),
    }
}

fn run_dsu(args: &[&str]) -> Output {
    dsu_tests::run_cargo_dsu(args).unwrap()
}

fn apply(kv: &Kv, pkg: &Path) -> Output {
    run_dsu(&[
        "apply",
        pkg.to_str().unwrap(),
        "--socket",
        kv.socket.to_str().unwrap(),
    ])
}

/// `cargo dsu diff` of kvstore versions `from` and `to` into `out`, with `engine` (`--engine
/// ENGINE`) if given.
fn diff(from: &str, to: &str, engine: Option<&str>, out: &Path) -> Output {
    let (from, to) = (version(from), version(to));
    let mut args = vec!["diff", from.to_str().unwrap(), to.to_str().unwrap()];
    if let Some(e) = engine {
        args.extend(["--engine", e]);
    }
    args.extend(["-o", out.to_str().unwrap()]);
    run_dsu(&args)
}

/// `diff` that must succeed.
fn package(from: &str, to: &str, engine: Option<&str>, out: &Path) {
    let o = diff(from, to, engine, out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "diff {from} {to}: {err}");
}

/// Writes keys `from..to` (and deletes every tenth), each acknowledged before the next.
fn write_keys(c: &mut Client, from: usize, to: usize) {
    for i in from..to {
        let (k, v) = (format!("key-{i}"), format!("value-{i} with spaces"));
        assert_eq!(c.cmd(&["SET", &k, &v]), Reply::Simple("OK".into()));
        if i % 10 == 0 {
            assert_eq!(c.cmd(&["DEL", &k]), Reply::Int(1));
        }
    }
}

/// Every acknowledged write of keys `0..to` is there (the deleted ones absent).
fn assert_keys(c: &mut Client, to: usize) {
    for i in 0..to {
        let want = (i % 10 != 0).then(|| format!("value-{i} with spaces").into_bytes());
        assert_eq!(
            c.cmd(&["GET", &format!("key-{i}")]),
            Reply::Bulk(want),
            "key-{i} after the restart"
        );
    }
}

/// The names in the data directory, sorted.
fn names(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn journal_format(data: &Path) -> u8 {
    let text = std::fs::read_to_string(data.join("kvstore.aof")).unwrap();
    if text.starts_with("KVAOF 2\n") {
        2
    } else {
        assert!(
            text.lines().all(|l| !l.contains(':')),
            "a v1 journal: {text}"
        );
        1
    }
}

/// Waits for a process the fault killed, and checks that SIGKILL is what ended it.
fn wait_killed(kv: &mut Kv) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = kv.child.try_wait().unwrap() {
            assert_eq!(status.signal(), Some(9), "killed by the fault: {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the fault did not kill kvstore");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kvstore_killed_at_each_step_of_an_update_comes_back_with_every_write() {
    let (old, new) = (
        dsu_tests::build_base(&version("v5")).unwrap(),
        dsu_tests::build_base(&version("v6")).unwrap(),
    );
    let pkgs = tempfile::tempdir().unwrap();
    let pkg = pkgs.path().join("v5-v6.dsu");
    package("v5", "v6", None, &pkg);
    // By hand-off it is refused: the new process would run no `migrate` and append its format
    // to the old journal.
    let o = diff(
        "v5",
        "v6",
        Some("handoff"),
        &pkgs.path().join("v5-v6-handoff.dsu"),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("a hand-off runs no `migrate`") && out.contains("journal::Journal::migrate"),
        "{out}"
    );

    for point in ["prepare", "transfer", "check", "commit"] {
        let work = tempfile::tempdir().unwrap();
        let (data, faults) = (work.path().join("data"), work.path().join("faults"));
        let mut kv = start(&old, work.path(), Some(&faults));
        write_keys(&mut Client::connect(kv.port), 0, 300);
        std::fs::write(&faults, format!("{point} kill\n")).unwrap();
        let o = apply(&kv, &pkg);
        assert_ne!(o.status.code(), Some(0), "the update cannot have committed");
        wait_killed(&mut kv);
        // What the kill left: after `migrate`, the staged journal; mid-commit, the record too.
        let left = names(&data);
        match point {
            "check" => assert!(left.contains(&"kvstore.aof.dsu-staged".into()), "{left:?}"),
            "commit" => assert!(
                left.contains(&".dsu-commit".into())
                    && left.contains(&"kvstore.aof.dsu-backup".into()),
                "{left:?}"
            ),
            _ => {}
        }
        // Started again (as a supervisor would, the same binary): serving, every write there,
        // the journal entirely in the old format, nothing beside it.
        let kv = start(&old, work.path(), None);
        let mut c = Client::connect(kv.port);
        assert_keys(&mut c, 300);
        assert_eq!(journal_format(&data), 1, "killed at {point}");
        assert_eq!(names(&data), ["kvstore.aof"], "killed at {point}");
        // It keeps taking writes, and the same update applies to it.
        write_keys(&mut c, 300, 400);
        let o = apply(&kv, &pkg);
        assert_eq!(
            o.status.code(),
            Some(0),
            "after a kill at {point}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_keys(&mut c, 400);
        assert_eq!(journal_format(&data), 2);
        eprintln!("killed at {point}: restarted with all 400 keys, the update then committed");
        if point != "commit" {
            continue;
        }

        // A crash after the commit: the v5 binary would not read the new journal, and refuses
        // to start on it rather than lose it; the v6 binary serves every write.
        write_keys(&mut c, 400, 450);
        drop(c);
        drop(kv);
        assert_eq!(names(&data), [".dsu-format", "kvstore.aof"]);
        let refused = spawn(&old, work.path(), None).0.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{err}");
        assert!(
            err.contains("kvstore 6.0.0") && err.contains("start version 6.0.0 or newer"),
            "{err}"
        );
        assert_eq!(
            journal_format(&data),
            2,
            "the refused start touched nothing"
        );
        let kv = start(&new, work.path(), None);
        assert_keys(&mut Client::connect(kv.port), 450);
    }
}

/// Waits until nothing accepts on `port` (the processes that served it are gone).
fn wait_port_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "something still serves port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The same for a hand-off (v4 -> v5, forced): a new process killed after it read the stream
/// leaves the old one serving; an old process killed after the new one was ready, before the
/// commit, takes the new one with it (it was never told to commit), and a restart serves every
/// write.
#[test]
fn kvstore_killed_on_either_side_of_a_handoff_comes_back_with_every_write() {
    let old = dsu_tests::build_base(&version("v4")).unwrap();
    let pkgs = tempfile::tempdir().unwrap();
    let pkg = pkgs.path().join("v4-v5-handoff.dsu");
    package("v4", "v5", Some("handoff"), &pkg);

    for side in ["receive", "send"] {
        let work = tempfile::tempdir().unwrap();
        let (data, faults) = (work.path().join("data"), work.path().join("faults"));
        let mut kv = start(&old, work.path(), Some(&faults));
        let mut c = Client::connect(kv.port);
        write_keys(&mut c, 0, 300);
        std::fs::write(&faults, format!("{side} kill\n")).unwrap();
        let o = apply(&kv, &pkg);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_ne!(o.status.code(), Some(0), "{out}");
        if side == "receive" {
            // The old process noticed and serves on, on the same connection.
            assert!(out.contains("rolledback"), "{out}");
            assert_keys(&mut c, 300);
            write_keys(&mut c, 300, 400);
        } else {
            wait_killed(&mut kv);
            wait_port_closed(kv.port);
            drop(c);
            drop(kv);
            kv = start(&old, work.path(), None);
            c = Client::connect(kv.port);
            assert_keys(&mut c, 300);
            write_keys(&mut c, 300, 400);
        }
        assert_eq!(names(&data), ["kvstore.aof"], "killed at {side}");
        assert_eq!(journal_format(&data), 1);
        // The hand-off then commits, and the new process has every write.
        let o = apply(&kv, &pkg);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(0), "after a kill at {side}: {out}");
        let pid = dsu_tests::status_at(&kv.socket).unwrap().pid;
        let _new = dsu_tests::KillPid(pid);
        assert_ne!(pid, kv.child.id());
        assert_keys(&mut c, 400);
        eprintln!("killed at {side}: all 400 keys served, the hand-off then committed");
    }
}
