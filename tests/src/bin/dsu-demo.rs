//! The live-update demonstration: builds examples/counter v1, v2 and v3, starts v1, keeps
//! clients calling it, applies v1 -> v2 -> v3 live and prints a timeline.
//!
//! `cargo run -p dsu-tests --bin dsu-demo`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dsu_tests::{build_base, build_patch_on, repo_root, Load, Process};

const CLIENTS: usize = 4;
const KEYS_PER_CLIENT: u64 = 25;

fn main() -> Result<()> {
    let example = repo_root().join("examples/counter");
    let versions = ["v1", "v2", "v3"];
    let dirs: Vec<_> = versions.iter().map(|v| example.join(v)).collect();
    let what = [
        "",
        "bug fix in one component: `top` returned the least hit key (code only)",
        "the state gains a field: generated transfer, the new field starts at its default",
    ];

    eprintln!(
        "dsu demo: examples/counter, updated live v1 -> v2 -> v3 while {CLIENTS} clients call it\n"
    );
    eprintln!("{:>12} counter v1 (the base)", "Building");
    let exe = build_base(&dirs[0])?;
    let mut packages = Vec::new();
    for w in dirs.windows(2) {
        eprintln!(
            "{:>12} patch {} -> {}",
            "Building",
            w[0].file_name().unwrap().to_string_lossy(),
            w[1].file_name().unwrap().to_string_lossy()
        );
        packages.push(build_patch_on(&w[0], &w[1], Some(&dirs[0]))?);
    }
    let p = Process::start(&exe)?;
    eprintln!(
        "{:>12} counter v1 on 127.0.0.1:{}, control socket {}\n",
        "Started",
        p.port,
        p.socket.display()
    );

    // Each client hits its own keys and checks every count goes up by exactly one.
    let expected: Arc<Vec<Mutex<HashMap<String, u64>>>> =
        Arc::new((0..CLIENTS).map(|_| Mutex::new(HashMap::new())).collect());
    let exp = expected.clone();
    let load = Load::start(p.port, CLIENTS, move |conn, c, i| {
        let key = format!("c{c}k{}", (i * 7 + c as u64) % KEYS_PER_CLIENT);
        let n: u64 = conn.cmd(&format!("hit {key}"))?.parse()?;
        let mut mine = exp[c].lock().unwrap();
        let want = mine.get(&key).copied().unwrap_or(0) + 1;
        ensure!(n == want, "hit {key} returned {n}, expected {want}");
        mine.insert(key, n);
        Ok(())
    })?;

    let mut c = p.connect()?;
    println!(
        "{:<3} {:<16} {:<10} {:>10} {:>10} {:>10} {:>10}   {:>8} {:>7} {:>8}  change",
        "#",
        "update",
        "outcome",
        "prepare",
        "pause",
        "transfer",
        "total",
        "before",
        "during",
        "after"
    );
    let settle = Duration::from_millis(800);
    let mut tops = vec![];
    for (i, pkg) in packages.iter().enumerate() {
        // Requests served in the same span of time before, during and after each update.
        let mark = load.completed();
        std::thread::sleep(settle);
        let before = load.completed() - mark;
        tops.push(c.cmd("top")?);
        let t0 = load.completed();
        let started = Instant::now();
        let rec = p.apply(pkg, None).context("apply")?;
        let apply_time = started.elapsed();
        let during = load.completed() - t0;
        let mark = load.completed();
        std::thread::sleep(settle);
        let after = load.completed() - mark;
        println!(
            "{:<3} {:<16} {:<10} {:>7.3} ms {:>7.3} ms {:>7.3} ms {:>7.3} ms   {:>8} {:>7} {:>8}  {} [{}]",
            i + 1,
            format!("{} -> {}", rec.from, rec.to),
            format!("{:?}", rec.outcome).to_lowercase(),
            rec.prepare_ms,
            rec.pause_ms,
            rec.transfer_ms,
            apply_time.as_secs_f64() * 1000.0,
            before,
            during,
            after,
            what[i + 1],
            rec.components.join(", "),
        );
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "update {} failed: {:?}",
            i + 1,
            rec.reason
        );
    }
    tops.push(c.cmd("top")?);
    let report = load.stop();
    println!();
    println!(
        "requests served: {}, failed: {}",
        report.ok,
        report.failures.len()
    );
    for f in report.failures.iter().take(5) {
        println!("  failure: {f}");
    }
    println!(
        "`top` by version: v1 {:?} (the bug), v2 {:?}, v3 {:?}",
        tops[0], tops[1], tops[2]
    );
    println!("`version` now: {}", c.cmd("version")?);
    // Every hit made by every client is in the state, across both updates.
    let mut checked = 0;
    for mine in expected.iter() {
        for (k, n) in mine.lock().unwrap().iter() {
            let got: u64 = c.cmd(&format!("get {k}"))?.parse()?;
            ensure!(got == *n, "state lost: {k} = {got}, {n} hits were made");
            checked += 1;
        }
    }
    println!("state: all {checked} keys read back with every hit counted");
    ensure!(
        report.failures.is_empty(),
        "{} requests failed",
        report.failures.len()
    );
    Ok(())
}
