//! The axum example with dsu against the same source with dsu compiled out (`--cfg dsu_off`),
//! under wrk (issue 14, "Measure"): throughput and p99 latency; and a code-only update under wrk.
//!
//! `cargo bench -p dsu-tests --bench shop [-- --runs 3 --seconds 5 --connections 64]`
//!
//! examples/shop v1 is built twice in release, each in a target directory of its own (the
//! two builds differ in their rustflags, and a path dependency's dylib, dsu-shared, has one
//! file name per directory). Each run starts one build, creates `--items` items, drives it
//! with `wrk -t2 -c CONNECTIONS --latency` for `--seconds` (GETs of random items) and stops
//! it; the two builds alternate, and which goes first rotates. Reported: the medians over
//! `--runs`, and dsu's ratio to `dsu_off`.
//!
//! Then `--update-runs` times: a fresh dsu build with the items, wrk for one second, then wrk
//! for another second with the update v1 -> v2 (a code-only change) applied half-way through
//! it. Reported: the pause the server recorded, and wrk's maximum latency in the second of the
//! update beside the second before it.

mod kv;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use dsu::control::{request, Request};
use dsu_tests::shop::{wrk, Http};
use kv::{machine, median, Opts};

const OPTIONS: &[kv::Spec] = &[
    ("runs", "3", "repetitions (each runs both builds)"),
    ("seconds", "5", "wrk's duration per run"),
    ("connections", "64", "wrk's connections"),
    ("items", "1000", "items created before the load"),
    ("update-runs", "5", "processes updated v1 -> v2 under wrk"),
];

/// Builds shop v1 in release into `target`, with `extra` rustflags besides the shop's own.
fn build(target: &Path, extra: &str) -> Result<PathBuf> {
    let dir = dsu_tests::repo_root().join("examples/shop/v1");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--release", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", target);
    if !extra.is_empty() {
        // RUSTFLAGS replaces the config's `rustflags`: give them again.
        cmd.env("RUSTFLAGS", format!("-C prefer-dynamic -C rpath {extra}"));
    }
    let status = cmd.status().context("run cargo build")?;
    ensure!(
        status.success(),
        "building the shop in {} failed",
        target.display()
    );
    Ok(target.join("release/shop"))
}

/// A started shop with `items` items: (the process, its port).
fn start(exe: &Path, socket: &Path, items: usize) -> Result<(std::process::Child, u16)> {
    let mut child = Command::new(exe)
        .args(["--port", "0", "--socket"])
        .arg(socket)
        // `cargo bench` puts the workspace's target directory on LD_LIBRARY_PATH, with a
        // libdsu_shared.so of another build; the shop's own is beside it (its RUNPATH).
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let Some(port) = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse::<u16>().ok())
    else {
        let _ = child.kill();
        bail!("the shop did not start: {line:?}");
    };
    let mut c = Http::connect(port)?;
    for i in 0..items {
        let (s, _) = c.call(
            "POST",
            "/items",
            &format!("{{\"name\":\"i{i}\",\"price_cents\":1}}"),
        )?;
        ensure!(s == 201, "POST /items: {s}");
    }
    Ok((child, port))
}

/// What one wrk run reported.
struct Wrk {
    rps: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// wrk against `port` for `seconds`, GETs of random items among `items`.
fn wrk_run(port: u16, seconds: u32, o: &Opts, script_dir: &Path) -> Result<Wrk> {
    let items: usize = o.get("items")?;
    let script = script_dir.join("get.lua");
    std::fs::write(
        &script,
        format!("request = function() return wrk.format(\"GET\", \"/items/\" .. math.random(1, {items})) end\n"),
    )?;
    let res = Command::new(wrk()?)
        .args(["-t", "2", "--latency", "-s"])
        .arg(&script)
        .arg("-c")
        .arg(o.get::<u32>("connections")?.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()?;
    let text = String::from_utf8_lossy(&res.stdout).into_owned();
    ensure!(
        !text.contains("Socket errors") && !text.contains("Non-2xx"),
        "wrk saw errors:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in:\n{text}"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| wrk_ms(v.trim()))
        .transpose()?
        .with_context(|| format!("no 99% latency in:\n{text}"))?;
    // `Latency   AVG   STDEV   MAX   +/- STDEV` (the thread stats).
    let max_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(wrk_ms)
        .transpose()?
        .with_context(|| format!("no maximum latency in:\n{text}"))?;
    Ok(Wrk {
        rps,
        p99_ms,
        max_ms,
    })
}

/// One wrk run of `--seconds` against `exe`.
fn measure(exe: &Path, o: &Opts) -> Result<Wrk> {
    let dir = tempfile::tempdir()?;
    let (mut child, port) = start(exe, &dir.path().join("shop.sock"), o.get("items")?)?;
    let r = wrk_run(port, o.get("seconds")?, o, dir.path());
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// A code-only update (v1 -> v2, the handler fix) under wrk: the pause the server reports,
/// and wrk's maximum latency over one second with the update in its middle, beside the
/// same over the second just before it on the same process.
fn measure_update(exe: &Path, package: &Path, o: &Opts) -> Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("shop.sock");
    let (mut child, port) = start(exe, &socket, o.get("items")?)?;
    let result = (|| {
        let quiet = wrk_run(port, 1, o, dir.path())?;
        let applier = {
            let (socket, package) = (socket.clone(), package.to_path_buf());
            std::thread::spawn(move || -> Result<dsu::UpdateRecord> {
                std::thread::sleep(Duration::from_millis(500));
                let resp = request(
                    &socket,
                    &Request::Apply {
                        package,
                        timeout_ms: None,
                        policy: None,
                        clear_poison: false,
                    },
                )?;
                resp.report.context("no report")
            })
        };
        let during = wrk_run(port, 1, o, dir.path())?;
        let rec = applier.join().expect("the applying thread")?;
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "the update was not committed: {:?}",
            rec.reason
        );
        Ok((rec.pause_ms, during.max_ms, quiet.max_ms))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// wrk's `1.23ms` / `456.00us` / `1.02s` in ms.
fn wrk_ms(v: &str) -> Result<f64> {
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("a latency `{v}`")
    };
    Ok(n.parse::<f64>()? * scale)
}

fn main() -> Result<()> {
    let o = Opts::parse("examples/shop with dsu against dsu_off, under wrk", OPTIONS)?;
    let base = dsu_tests::repo_root().join("target/dsu-shop-bench");
    let on = build(&base.join("dsu"), "")?;
    let off = build(&base.join("off"), "--cfg dsu_off")?;
    // The patch v1 -> v2 in release, in the dsu build's target directory (its dsu-shared).
    let shop = dsu_tests::repo_root().join("examples/shop");
    let mut popts = cargo_dsu::patch::PatchOptions::new(shop.join("v1"), shop.join("v2"));
    popts.release = true;
    popts.target_dir = Some(base.join("dsu"));
    let package = base.join("v1-v2.dsu");
    cargo_dsu::patch::build(&popts)?.package.write(&package)?;

    let runs: usize = o.get("runs")?;
    let (mut on_r, mut off_r) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for dsu in order {
            let m = measure(if dsu { &on } else { &off }, &o)?;
            eprintln!(
                "run {}: {:<7} {:>10.0} req/s  p99 {:.2} ms",
                run + 1,
                if dsu { "dsu" } else { "dsu_off" },
                m.rps,
                m.p99_ms
            );
            if dsu {
                on_r.push(m)
            } else {
                off_r.push(m)
            }
        }
    }
    let mut updates = Vec::new();
    for run in 0..o.get::<usize>("update-runs")? {
        let u = measure_update(&on, &package, &o)?;
        eprintln!(
            "update {}: pause {:.3} ms, wrk max latency {:.2} ms in the second of the update, {:.2} ms in the second before",
            run + 1,
            u.0,
            u.1,
            u.2
        );
        updates.push(u);
    }
    let med = |v: &[Wrk], f: fn(&Wrk) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (on_rps, off_rps) = (med(&on_r, |m| m.rps), med(&off_r, |m| m.rps));
    let (on_p99, off_p99) = (med(&on_r, |m| m.p99_ms), med(&off_r, |m| m.p99_ms));
    let umed = |f: fn(&(f64, f64, f64)) -> f64| median(&updates.iter().map(f).collect::<Vec<_>>());
    println!("{}", machine());
    println!("{}", o.line());
    println!("| build | req/s (median) | p99 ms (median) |");
    println!("|---|---|---|");
    println!("| dsu | {on_rps:.0} | {on_p99:.2} |");
    println!("| dsu_off | {off_rps:.0} | {off_p99:.2} |");
    println!(
        "| dsu / dsu_off | {:.3} | {:.3} |",
        on_rps / off_rps,
        on_p99 / off_p99
    );
    println!();
    println!("| v1 -> v2 in place under wrk (median of {}) | pause at the server ms | wrk max latency ms, second of the update | wrk max latency ms, second before |", updates.len());
    println!("|---|---|---|---|");
    println!(
        "| | {:.3} (max {:.3}) | {:.2} | {:.2} |",
        umed(|u| u.0),
        updates.iter().map(|u| u.0).fold(0.0, f64::max),
        umed(|u| u.1),
        umed(|u| u.2)
    );
    Ok(())
}
