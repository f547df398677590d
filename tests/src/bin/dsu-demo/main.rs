//! The live-update demonstration: examples/kvstore, a Redis-protocol server, is updated live
//! through seven versions while redis-benchmark drives it, and a timeline is printed. The last
//! update changes `main`, so it is applied by process hand-off: a new process takes over the
//! sockets, the connections and the state.
//!
//! `cargo run -p dsu-tests --bin dsu-demo` (needs redis-tools: `apt-get install redis-tools`);
//! `-- --soak [N]` runs the soak instead (`soak.rs`: N updates, 100 by default, with faults and
//! hand-offs).

mod soak;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dsu::control::{request, Request};
use dsu_tests::resp::{Client, Reply};
use dsu_tests::{build_base, programs_target, repo_root, run_cargo_dsu};

const KEYS: usize = 10_000;

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}

fn info_field(c: &mut Client, field: &str) -> u64 {
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO"]) else {
        return 0;
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `cargo dsu diff` of two kvstore versions (with `--engine ENGINE` if given) into `work`.
fn build_package(
    example: &Path,
    from: &str,
    to: &str,
    engine: Option<&str>,
    work: &Path,
) -> Result<PathBuf> {
    let suffix = engine.map(|e| format!("-{e}")).unwrap_or_default();
    let out = work.join(format!("{from}-{to}{suffix}.dsu"));
    eprintln!(
        "{:>12} cargo dsu diff {from} {to}{}",
        "Running",
        engine.map(|e| format!(" --engine {e}")).unwrap_or_default()
    );
    let mut args: Vec<std::ffi::OsString> = vec![
        "diff".into(),
        "-q".into(),
        example.join(from).into_os_string(),
        example.join(to).into_os_string(),
        "-o".into(),
        out.clone().into_os_string(),
    ];
    if let Some(e) = engine {
        args.extend(["--engine".into(), e.into()]);
    }
    let o = run_cargo_dsu(args)?;
    ensure!(
        o.status.success(),
        "cargo dsu diff {from} {to} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out)
}

/// Applies `pkg` through the control socket; returns the update's record.
fn apply(socket: &Path, pkg: &Path) -> Result<dsu::UpdateRecord> {
    let resp = request(
        socket,
        &Request::Apply {
            package: pkg.to_path_buf(),
            timeout_ms: None,
            policy: None,
            clear_poison: false,
        },
    )?;
    resp.report.context("no report in the reply")
}

/// How many of the `KEYS` keys `preload` loaded no longer read back with their values.
fn missing_keys(c: &mut Client) -> Result<usize> {
    let mut lost = 0;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut args = vec!["MGET".to_string()];
        args.extend(chunk.iter().map(|i| format!("key-{i}")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let Reply::Array(values) = c.cmd(&a) else {
            bail!("MGET failed")
        };
        lost += chunk
            .iter()
            .zip(values)
            .filter(|(i, v)| *v != Reply::Bulk(Some(format!("value-{i}").into_bytes())))
            .count();
    }
    Ok(lost)
}

/// A kvstore process the demo started (and, after hand-offs, the one serving now).
struct Server {
    first: Child,
    pid: u32,
    port: u16,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Builds and starts the kvstore version in `version_dir`, with `env` added.
    fn start(version_dir: &Path, env: &[(&str, &OsStr)]) -> Result<Server> {
        let exe = build_base(version_dir)?;
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("kv.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut first = Command::new(&exe)
            .args(["--port", &port.to_string(), "--socket"])
            .arg(&socket)
            .arg("--data")
            .arg(dir.path().join("data"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        BufReader::new(first.stdout.take().context("stdout")?).read_line(&mut ready)?;
        ensure!(ready.trim() == "ready", "kvstore did not start");
        Ok(Server {
            pid: first.id(),
            first,
            port,
            socket,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Loads `KEYS` keys.
    fn preload(&self, c: &mut Client) -> Result<()> {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let mut args = vec!["MSET".to_string()];
            for i in chunk {
                args.push(format!("key-{i}"));
                args.push(format!("value-{i}"));
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            ensure!(c.cmd(&a) == Reply::Simple("OK".into()), "MSET failed");
        }
        Ok(())
    }

    /// redis-benchmark against it, in a loop: 50 clients, 16 commands pipelined, SET and GET.
    fn benchmark(&self) -> Result<Child> {
        let Some(benchmark) = which("redis-benchmark") else {
            bail!("the demo drives kvstore with redis-benchmark, which is not installed: `apt-get install redis-tools`");
        };
        let port = self.port.to_string();
        let args = [
            "-p", &port, "-c", "50", "-P", "16", "-t", "set,get", "-l", "-q",
        ];
        Ok(Command::new(benchmark)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.first.kill();
        let _ = self.first.wait();
        if self.pid != self.first.id() {
            // SAFETY: kill(2) of the process this demo's hand-off started.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        }
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let soak = match args.next().as_deref() {
        None => None,
        Some("--soak") => Some(match args.next() {
            None => 100,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--soak takes a number of updates, not `{n}`"))?,
        }),
        Some(other) => bail!("unknown argument `{other}`; usage: dsu-demo [--soak [UPDATES]]"),
    };
    ensure!(
        which("redis-benchmark").is_some(),
        "the demo drives kvstore with redis-benchmark, which is not installed: `apt-get install redis-tools`"
    );
    let work = programs_target().join("demo");
    std::fs::create_dir_all(&work)?;
    if let Some(updates) = soak {
        return soak::run(updates, &work);
    }
    let example = repo_root().join("examples/kvstore");
    let versions = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"];
    eprintln!("dsu demo: examples/kvstore updated live v1 -> v7 while redis-benchmark drives it (50 clients, pipelined); v6 -> v7 changes `main`: a process hand-off\n");
    let mut packages = Vec::new();
    for w in versions.windows(2) {
        packages.push(build_package(&example, w[0], w[1], None, &work)?);
    }
    eprintln!("{:>12} kvstore v1 (the base)", "Building");
    let mut server = Server::start(&example.join("v1"), &[])?;
    let port = server.port;
    let socket = server.socket.clone();
    let mut c = server.client();
    server.preload(&mut c)?;
    eprintln!(
        "{:>12} kvstore v1 on 127.0.0.1:{port} with {KEYS} keys; redis-benchmark running\n",
        "Started"
    );
    let mut bench = server.benchmark()?;

    println!(
        "{:<3} {:<14} {:>3}  {:>9} {:>9} {:>9}  {:>9} {:>8} {:>9}  what changed",
        "#", "update", "cat", "prepare", "pause", "transfer", "before/s", "during", "after/s"
    );
    let window = Duration::from_millis(1000);
    std::thread::sleep(window);
    for (i, pkg) in packages.iter().enumerate() {
        let m = dsu::Package::read(pkg)?.manifest;
        let c0 = info_field(&mut c, "total_commands_processed");
        std::thread::sleep(window);
        let c1 = info_field(&mut c, "total_commands_processed");
        let t = Instant::now();
        let rec = apply(&socket, pkg)?;
        let took = t.elapsed();
        let c2 = info_field(&mut c, "total_commands_processed");
        std::thread::sleep(window);
        let c3 = info_field(&mut c, "total_commands_processed");
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "update {} not committed: {:?}",
            i + 1,
            rec.reason
        );
        if let Some(pid) = rec.new_pid {
            server.pid = pid;
        }
        let category = m.changes.iter().map(|c| c.category).max().unwrap_or(0);
        let mut what: Vec<String> = m
            .changes
            .iter()
            .filter(|c| c.category == category)
            .map(|c| c.item.clone())
            .collect();
        what.dedup();
        let more = what.len().saturating_sub(3);
        what.truncate(3);
        if more > 0 {
            what.push(format!("+{more} more"));
        }
        if let Some(pid) = rec.new_pid {
            what.push(format!("(hand-off: now pid {pid})"));
        }
        println!(
            "{:<3} {:<14} {:>3}  {:>6.3} ms {:>6.3} ms {:>6.3} ms  {:>9} {:>8} {:>9}  {}",
            i + 1,
            format!("{} -> {}", rec.from, rec.to),
            category,
            rec.prepare_ms,
            rec.pause_ms,
            rec.transfer_ms,
            (c1 - c0) as f64 / window.as_secs_f64(),
            format!("{} in {:.0}ms", c2 - c1, took.as_secs_f64() * 1000.0),
            (c3 - c2) as f64 / window.as_secs_f64(),
            what.join(", ")
        );
    }
    let _ = bench.kill();
    let _ = bench.wait();
    // Every key loaded at the start is still there.
    let lost = missing_keys(&mut c)?;
    ensure!(
        lost == 0,
        "{lost} of the {KEYS} keys loaded at the start were lost"
    );
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO"]) else {
        bail!("INFO failed")
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    let field = |f: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(f))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    println!();
    println!(
        "requests served: {}; error replies: {}; connections: {}; version now: {}",
        field("total_commands_processed:"),
        field("total_error_replies:"),
        field("total_connections_received:"),
        field("kvstore_version:")
    );
    println!("all {KEYS} keys loaded at the start read back with their values");
    drop(server);
    Ok(())
}
