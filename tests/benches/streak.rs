//! Memory across a streak of updates (issue 15, item 5): one kvstore process updated `--updates`
//! times in place, alternating v1 -> v2 and v2 -> v1 (a code-only change to the engine's
//! helper), with the resident memory (VmRSS) read after each update.
//!
//! `cargo bench -p dsu-tests --bench streak [-- --updates 100 --keys 100000]`
//!
//! Every patch library stays mapped for the rest of the process (DESIGN.md: old libraries are
//! never unloaded), so memory may grow by up to one library per update; the target is that it
//! grows by no more than that. Reported: VmRSS after loading the keys and after update 1, 10,
//! 50 and the last, the growth per update from update 1 to the last (the first update also pays
//! for the runtime's first load), and each patch library's size. Afterwards every key is read
//! back and the version checked, so a streak that lost state cannot report a figure.

mod kv;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use dsu_tests::proc_status_kib;
use kv::{bench_target, kvstore, machine, Client, Opts, Server};

const OPTIONS: &[kv::Spec] = &[
    (
        "updates",
        "100",
        "updates applied, alternating v1 -> v2 and v2 -> v1",
    ),
    ("keys", "100000", "keys loaded before the first update"),
];

/// The release package OLD -> NEW, built against v1's Cargo.lock (what the process runs).
fn package(from: &str, to: &str) -> Result<PathBuf> {
    let mut opts = cargo_dsu::patch::PatchOptions::new(kvstore(from), kvstore(to));
    opts.release = true;
    opts.target_dir = Some(bench_target());
    opts.base_lock = Some(kvstore("v1").join("Cargo.lock"));
    let out = bench_target()
        .join("packages")
        .join(format!("streak-{from}-{to}.dsu"));
    std::fs::create_dir_all(out.parent().expect("a file in a directory"))?;
    cargo_dsu::patch::build(&opts)?.package.write(&out)?;
    Ok(out)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn library_size(p: &Path) -> Result<usize> {
    Ok(dsu::Package::read(p)?.library.len())
}

fn main() -> Result<()> {
    let o = Opts::parse(
        "kvstore's memory across a streak of in-place updates",
        OPTIONS,
    )?;
    let updates: usize = o.get("updates")?;
    let keys: usize = o.get("keys")?;
    ensure!(updates >= 2, "--updates must be at least 2");
    let exe = kv::cargo_build(&kvstore("v1"), true)?;
    let forth = package("v1", "v2")?;
    let back = package("v2", "v1")?;
    let (lib_forth, lib_back) = (library_size(&forth)?, library_size(&back)?);

    let dir = tempfile::tempdir()?;
    let port = kv::free_port()?;
    let server = Server::start(
        &exe,
        port,
        &dir.path().join("ctl.sock"),
        &dir.path().join("data"),
    )?;
    let mut c = Client::connect_within(port, Duration::from_secs(10))?;
    kv::preload(&mut c, keys)?;
    let pid = server.pid();
    let loaded = proc_status_kib(pid, "VmRSS:")?;
    let mut after = Vec::with_capacity(updates);
    for i in 0..updates {
        let pkg = if i % 2 == 0 { &forth } else { &back };
        let rec = server.apply(pkg)?;
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "update {} ({} -> {}) was not committed: {:?}",
            i + 1,
            rec.from,
            rec.to,
            rec.reason
        );
        after.push(proc_status_kib(pid, "VmRSS:")?);
    }
    // The state came through every update.
    ensure!(c.dbsize()? == keys as i64, "keys were lost in the streak");
    let lost = kv::check(
        &mut c,
        &(0..keys)
            .step_by((keys / 1000).max(1))
            .map(|i| (kv::preload_key(i), kv::preload_value(i)))
            .collect::<Vec<_>>(),
    )?;
    ensure!(lost.total() == 0, "values changed in the streak: {lost:?}");
    let expected = if updates.is_multiple_of(2) {
        "1.0.0"
    } else {
        "2.0.0"
    };
    ensure!(
        server.version()? == expected,
        "the streak ended on another version"
    );

    let per_update = (after[updates - 1] as f64 - after[0] as f64) / (updates - 1) as f64;
    println!("{}", machine());
    println!("{}", o.line());
    println!("| point | VmRSS | over the loaded process |");
    println!("|---|---|---|");
    println!("| {keys} keys loaded | {} | |", mib(loaded as f64));
    for n in [1, 10, 50, updates] {
        if n <= updates {
            let v = after[n - 1] as f64;
            println!(
                "| after update {n} | {} | +{} |",
                mib(v),
                mib(v - loaded as f64)
            );
        }
    }
    println!();
    println!(
        "growth per update, update 1 to {updates}: {:.0} KiB; patch libraries: v1 -> v2 {:.0} KiB, v2 -> v1 {:.0} KiB ({})",
        per_update,
        lib_forth as f64 / 1024.0,
        lib_back as f64 / 1024.0,
        if per_update * 1024.0 <= lib_forth.max(lib_back) as f64 {
            "at most one library per update: met"
        } else {
            "more than one library per update: missed"
        }
    );
    Ok(())
}
