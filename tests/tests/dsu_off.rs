//! `--cfg dsu_off`: the same, unmodified examples/kvstore/v1 builds with the runtime compiled out
//! and serves requests: components behind plain `RwLock`s, the `STATS` global a plain static,
//! the journal replayed at start, and no control socket (such a build cannot be updated).
//!
//! The build goes to target/dsu-off, so its RUSTFLAGS never invalidate the normal builds.
//! Programs using the rest of the API (protocols, hooks, registered threads, update points)
//! are built too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu_tests::repo_root;
use dsu_tests::resp::{Client, Reply};

/// Builds the program at `dir` (relative to the repository) with `--cfg dsu_off` (added to any
/// RUSTFLAGS already set) and returns its executable.
fn build_off(dir: &str) -> Result<PathBuf> {
    // Every program named `kvstore` is written to the same target/dsu-off/debug/kvstore: build
    // and copy it away under a lock, so the tests running in parallel never swap binaries.
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    rustflags.push_str(" --cfg dsu_off");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(repo_root().join(dir).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", repo_root().join("target/dsu-off"))
        .env("RUSTFLAGS", rustflags.trim())
        // It would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build")?;
    ensure!(out.status.success(), "building {dir} with dsu_off failed");
    let exe = cargo_metadata::Message::parse_stream(&out.stdout[..])
        .filter_map(|m| match m {
            Ok(cargo_metadata::Message::CompilerArtifact(a)) => a.executable,
            _ => None,
        })
        .last()
        .ok_or_else(|| anyhow!("cargo built no executable for {dir}"))?;
    let bin = repo_root().join("target/dsu-off/bin");
    std::fs::create_dir_all(&bin)?;
    let copy = bin.join(dir.replace('/', "-"));
    std::fs::copy(&exe, &copy).with_context(|| format!("copy {exe} to {}", copy.display()))?;
    Ok(copy)
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(exe: &Path, dir: &Path) -> Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(exe)
        .args(["--port", &port.to_string(), "--socket"])
        .arg(dir.join("kv.sock"))
        .arg("--data")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let server = Server { child, port };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(
        line == "ready\n",
        "kvstore printed {line:?} instead of `ready`"
    );
    Ok(server)
}

fn info(c: &mut Client, field: &str) -> Result<u64> {
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO"]) else {
        bail!("INFO did not answer a bulk string");
    };
    let info = String::from_utf8(info)?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in INFO:\n{info}"))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

#[test]
fn kvstore_built_with_dsu_off_serves_requests() -> Result<()> {
    let exe = build_off("examples/kvstore/v1")?;
    // No dsu runtime in the binary: neither the control socket's listener nor the tables' traps.
    let bytes = std::fs::read(&exe)?;
    for absent in [
        &b"dsu-control-listener"[..],
        &b"was removed or changed its signature in an update"[..],
    ] {
        ensure!(
            !bytes.windows(absent.len()).any(|w| w == absent),
            "the dsu_off binary contains `{}`: the runtime was not compiled out",
            String::from_utf8_lossy(absent)
        );
    }

    let dir = tempfile::tempdir()?;
    let server = start(&exe, dir.path())?;
    ensure!(
        !dir.path().join("kv.sock").exists(),
        "a dsu_off build must not open a control socket"
    );
    let mut c = Client::connect(server.port);
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
    // `&mut self` and `&self` methods of Keyspace and Journal, through Engine.
    assert_eq!(c.cmd(&["SET", "a", "1"]), ok());
    assert_eq!(c.cmd(&["GET", "a"]), bulk("1"));
    assert_eq!(c.cmd(&["GET", "nope"]), Reply::Bulk(None));
    assert_eq!(c.cmd(&["MSET", "b", "2", "c", "3"]), ok());
    assert_eq!(
        c.cmd(&["MGET", "a", "b", "c"]),
        Reply::Array(vec![bulk("1"), bulk("2"), bulk("3")])
    );
    // v1's behaviour, bug included: EXISTS stops at the first missing key.
    assert_eq!(c.cmd(&["EXISTS", "a", "nope", "b"]), Reply::Int(1));
    assert_eq!(c.cmd(&["DEL", "c"]), Reply::Int(1));
    assert_eq!(c.cmd(&["DBSIZE"]), Reply::Int(2));
    // Pipelined requests, answered in one write.
    c.send(&[b"INCR", b"n"]);
    c.send(&[b"INCR", b"n"]);
    c.send(&[b"GET", b"n"]);
    assert_eq!(c.read(), Reply::Int(1));
    assert_eq!(c.read(), Reply::Int(2));
    assert_eq!(c.read(), bulk("2"));

    // `&mut self` calls from many connections at once are exclusive: no increment is lost.
    let (threads, each) = (8, 200);
    let port = server.port;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for _ in 0..each {
                    assert!(matches!(c.cmd(&["INCR", "shared"]), Reply::Int(_)));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow!("a client thread panicked"))?;
    }
    assert_eq!(
        c.cmd(&["GET", "shared"]),
        bulk(&(threads * each).to_string())
    );

    // The STATS global, a plain static in this build, counts as with dsu.
    ensure!(info(&mut c, "total_connections_received")? >= 1 + threads as u64);
    let writes = info(&mut c, "aof_writes")?;
    ensure!(
        writes >= 5 + (threads * each) as u64,
        "aof_writes = {writes}"
    );
    drop(c);
    drop(server);

    // The journal replays at start: a new process has the same data.
    let server = start(&exe, dir.path())?;
    let mut c = Client::connect(server.port);
    assert_eq!(
        c.cmd(&["MGET", "a", "b", "c", "n", "shared"]),
        Reply::Array(vec![
            bulk("1"),
            bulk("2"),
            Reply::Bulk(None),
            bulk("2"),
            bulk(&(threads * each).to_string()),
        ])
    );
    Ok(())
}

#[test]
fn programs_using_protocols_hooks_and_update_points_build_with_dsu_off() -> Result<()> {
    // ledger: `#[dsu::protocol]`, a `prepare_to_die` hook, registered threads and
    // `dsu::update_point!()`; kvstore v6: a `migrate` hook.
    for dir in ["tests/programs/ledger/v1", "examples/kvstore/v6"] {
        build_off(dir)?;
    }
    Ok(())
}
