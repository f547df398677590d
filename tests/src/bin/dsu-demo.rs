//! The live-update demonstration: examples/kvstore, a Redis-protocol server, is updated live
//! through seven versions while redis-benchmark drives it, and a timeline is printed. The last
//! update changes `main`, so it is applied by process hand-off: a new process takes over the
//! sockets, the connections and the state.
//!
//! `cargo run -p dsu-tests --bin dsu-demo` (needs redis-tools: `apt-get install redis-tools`)

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
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

fn commands(c: &mut Client) -> u64 {
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO"]) else {
        return 0;
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let Some(benchmark) = which("redis-benchmark") else {
        bail!("the demo drives kvstore with redis-benchmark, which is not installed: `apt-get install redis-tools`");
    };
    let example = repo_root().join("examples/kvstore");
    let versions = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"];
    eprintln!("dsu demo: examples/kvstore updated live v1 -> v7 while redis-benchmark drives it (50 clients, pipelined); v6 -> v7 changes `main`: a process hand-off\n");
    eprintln!("{:>12} kvstore v1 (the base) and cargo-dsu", "Building");
    let exe = build_base(&example.join("v1"))?;
    let work = programs_target().join("demo");
    std::fs::create_dir_all(&work)?;
    let mut packages = Vec::new();
    for w in versions.windows(2) {
        eprintln!("{:>12} cargo dsu diff {} {}", "Running", w[0], w[1]);
        let out = work.join(format!("{}-{}.dsu", w[0], w[1]));
        let o = run_cargo_dsu([
            "diff".into(),
            "-q".into(),
            example.join(w[0]).into_os_string(),
            example.join(w[1]).into_os_string(),
            "-o".into(),
            out.clone().into_os_string(),
        ])?;
        ensure!(
            o.status.success(),
            "cargo dsu diff {} {} failed:\n{}{}",
            w[0],
            w[1],
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        packages.push(out);
    }

    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("kv.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new(&exe)
        .args(["--port", &port.to_string(), "--socket"])
        .arg(&socket)
        .arg("--data")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(server.stdout.take().context("stdout")?).read_line(&mut ready)?;
    ensure!(ready.trim() == "ready", "kvstore did not start");
    let mut c = Client::connect(port);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut args = vec!["MSET".to_string()];
        for i in chunk {
            args.push(format!("key-{i}"));
            args.push(format!("value-{i}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ensure!(c.cmd(&a) == Reply::Simple("OK".into()), "MSET failed");
    }
    eprintln!(
        "{:>12} kvstore v1 on 127.0.0.1:{port} with {KEYS} keys; redis-benchmark running\n",
        "Started"
    );
    let mut bench = Command::new(&benchmark)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "50",
            "-P",
            "16",
            "-t",
            "set,get",
            "-l",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    println!(
        "{:<3} {:<14} {:>3}  {:>9} {:>9} {:>9}  {:>9} {:>8} {:>9}  what changed",
        "#", "update", "cat", "prepare", "pause", "transfer", "before/s", "during", "after/s"
    );
    let window = Duration::from_millis(1000);
    std::thread::sleep(window);
    // The process a hand-off started, which this demo must stop at the end.
    let mut successor = None;
    for (i, pkg) in packages.iter().enumerate() {
        let m = dsu::Package::read(pkg)?.manifest;
        let c0 = commands(&mut c);
        std::thread::sleep(window);
        let c1 = commands(&mut c);
        let t = Instant::now();
        let resp = request(
            &socket,
            &Request::Apply {
                package: pkg.clone(),
                timeout_ms: None,
                policy: None,
                clear_poison: false,
            },
        )?;
        let took = t.elapsed();
        let c2 = commands(&mut c);
        std::thread::sleep(window);
        let c3 = commands(&mut c);
        let rec = resp.report.context("no report")?;
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "update {} not committed: {:?}",
            i + 1,
            rec.reason
        );
        if let Some(pid) = rec.new_pid {
            successor = Some(pid);
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
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut args = vec!["MGET".to_string()];
        args.extend(chunk.iter().map(|i| format!("key-{i}")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let Reply::Array(values) = c.cmd(&a) else {
            bail!("MGET failed")
        };
        for (i, v) in chunk.iter().zip(values) {
            ensure!(
                v == Reply::Bulk(Some(format!("value-{i}").into_bytes())),
                "key-{i} lost"
            );
        }
    }
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
    let _ = server.kill();
    let _ = server.wait();
    if let Some(pid) = successor {
        // SAFETY: kill(2) of the process this demo's hand-off started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    Ok(())
}
