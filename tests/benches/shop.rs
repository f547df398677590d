//! The axum example with dsu against the same source with dsu compiled out (`--cfg dsu_off`),
//! under wrk (issue 14, "Measure"): throughput and p99 latency.
//!
//! `cargo bench -p dsu-tests --bench shop [-- --runs 3 --seconds 5 --connections 64]`
//!
//! examples/shop v1 is built twice in release, each in a target directory of its own (the
//! two builds differ in their rustflags, and a path dependency's dylib, dsu-shared, has one
//! file name per directory). Each run starts one build, creates `--items` items, drives it
//! with `wrk -t2 -c CONNECTIONS --latency` for `--seconds` (GETs of random items) and stops
//! it; the two builds alternate, and which goes first rotates. Reported: the medians over
//! `--runs`, and dsu's ratio to `dsu_off`.

mod kv;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use dsu_tests::shop::{wrk, Http};
use kv::{machine, median, Opts};

const OPTIONS: &[kv::Spec] = &[
    ("runs", "3", "repetitions (each runs both builds)"),
    ("seconds", "5", "wrk's duration per run"),
    ("connections", "64", "wrk's connections"),
    ("items", "1000", "items created before the load"),
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

/// One wrk run against `exe`: (requests per second, p99 latency in ms).
fn measure(exe: &Path, o: &Opts) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(exe)
        .args(["--port", "0", "--socket"])
        .arg(dir.path().join("shop.sock"))
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
    let items: usize = o.get("items")?;
    let mut c = Http::connect(port)?;
    for i in 0..items {
        let (s, _) = c.call(
            "POST",
            "/items",
            &format!("{{\"name\":\"i{i}\",\"price_cents\":1}}"),
        )?;
        ensure!(s == 201, "POST /items: {s}");
    }
    let script = dir.path().join("get.lua");
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
        .arg(format!("{}s", o.get::<u32>("seconds")?))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()?;
    let _ = child.kill();
    let _ = child.wait();
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
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| wrk_ms(v.trim()))
        .transpose()?
        .with_context(|| format!("no 99% latency in:\n{text}"))?;
    Ok((rps, p99))
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
                m.0,
                m.1
            );
            if dsu {
                on_r.push(m)
            } else {
                off_r.push(m)
            }
        }
    }
    let med =
        |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (on_rps, off_rps) = (med(&on_r, |m| m.0), med(&off_r, |m| m.0));
    let (on_p99, off_p99) = (med(&on_r, |m| m.1), med(&off_r, |m| m.1));
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
    Ok(())
}
