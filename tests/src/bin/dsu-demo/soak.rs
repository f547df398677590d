//! `dsu-demo --soak N`: N updates of kvstore under redis-benchmark (50 clients, pipelined),
//! v1 and v2 in turn, in place and by hand-off, every other one meeting an injected fault
//! (`DSU_FAULT_FILE`): a failed transfer, a failed health check, a prepare-to-die that times
//! out, a new process that fails after reading the hand-off stream. Reports requests, error
//! replies, keys lost and resident memory at the start and the end; fails if any request got an
//! error or any key was lost, or if an update ended other than as its fault says.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use dsu::Outcome;

use super::{build_package, info_field, missing_keys, Server};

/// One step of the soak's cycle: how the update is applied and the fault it meets.
struct Step {
    handoff: bool,
    fault: Option<&'static str>,
}

/// The cycle the soak repeats: half the updates meet a fault, three in eight are hand-offs.
const CYCLE: [Step; 8] = [
    Step {
        handoff: false,
        fault: None,
    },
    Step {
        handoff: false,
        fault: Some("transfer fail"),
    },
    Step {
        handoff: true,
        fault: None,
    },
    Step {
        handoff: false,
        fault: Some("check fail"),
    },
    Step {
        handoff: false,
        fault: None,
    },
    Step {
        handoff: false,
        fault: Some("prepare fail"),
    },
    Step {
        handoff: true,
        fault: Some("receive fail"),
    },
    Step {
        handoff: true,
        fault: None,
    },
];

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(updates: usize, work: &Path) -> Result<()> {
    let example = super::repo_root().join("examples/kvstore");
    eprintln!("dsu demo --soak {updates}: kvstore v1 <-> v2 under redis-benchmark, in place and by hand-off, every other update meeting an injected fault\n");
    // (in place, hand-off) packages from each version to the other.
    let mut pkgs = Vec::new();
    for (from, to) in [("v1", "v2"), ("v2", "v1")] {
        let inplace = build_package(&example, from, to, None, work)?;
        let handoff = build_package(&example, from, to, Some("handoff"), work)?;
        pkgs.push((inplace, handoff));
    }
    let faults = work.join("soak-faults");
    std::fs::write(&faults, b"")?;
    let mut server = Server::start(
        &example.join("v1"),
        &[("DSU_FAULT_FILE", faults.as_os_str())],
    )?;
    let mut c = server.client();
    server.preload(&mut c)?;
    let rss_start = vm_rss_kib(server.pid());
    let mut bench = server.benchmark()?;
    eprintln!(
        "{:>12} kvstore v1 (pid {}) with {} keys, {} KiB resident; redis-benchmark running\n",
        "Started",
        server.pid(),
        super::KEYS,
        rss_start
    );
    // The load's rate without updates, measured just before the soak in the same run.
    let (b0, bt) = (
        info_field(&mut c, "total_commands_processed"),
        Instant::now(),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let baseline =
        (info_field(&mut c, "total_commands_processed") - b0) as f64 / bt.elapsed().as_secs_f64();
    drop(c);
    let at_start = info_field(&mut server.client(), "total_commands_processed");
    let t0 = Instant::now();
    let (mut at, mut committed, mut faulted, mut handoffs) = (0usize, 0, 0, 0);
    for i in 0..updates {
        let step = &CYCLE[i % CYCLE.len()];
        let (inplace, handoff) = &pkgs[at];
        let pkg: &PathBuf = if step.handoff { handoff } else { inplace };
        std::fs::write(
            &faults,
            step.fault.map(|f| format!("{f}\n")).unwrap_or_default(),
        )?;
        let rec = super::apply(&server.socket, pkg)?;
        match step.fault {
            None => {
                ensure!(
                    rec.outcome == Outcome::Committed,
                    "update {} ({} -> {}) did not commit: {:?}",
                    i + 1,
                    rec.from,
                    rec.to,
                    rec.reason
                );
                committed += 1;
                at = 1 - at;
                if step.handoff {
                    handoffs += 1;
                    server.pid = rec.new_pid.context("a hand-off without a new pid")?;
                }
            }
            Some(f) => {
                let reason = rec.reason.clone().unwrap_or_default();
                ensure!(
                    matches!(rec.outcome, Outcome::Aborted | Outcome::RolledBack)
                        && reason.contains("injected fault"),
                    "update {} should have met `{f}`: {:?} {reason}",
                    i + 1,
                    rec.outcome
                );
                faulted += 1;
            }
        }
        ensure!(
            bench.try_wait()?.is_none(),
            "redis-benchmark stopped at update {}",
            i + 1
        );
        ensure!(
            dsu_tests::status_at(&server.socket)?.pid == server.pid,
            "update {}: the serving process is not the one expected",
            i + 1
        );
        if (i + 1) % 10 == 0 {
            eprintln!(
                "{:>12} {:>3} updates: {committed} committed ({handoffs} by hand-off), {faulted} faulted; pid {}, {} KiB resident",
                "Soaking",
                i + 1,
                server.pid,
                vm_rss_kib(server.pid)
            );
        }
    }
    let took = t0.elapsed();
    let _ = bench.kill();
    let _ = bench.wait();
    let mut c = server.client();
    let requests = info_field(&mut c, "total_commands_processed");
    let during = (requests - at_start) as f64 / took.as_secs_f64();
    let errors = info_field(&mut c, "total_error_replies");
    let lost = missing_keys(&mut c)?;
    let rss_end = vm_rss_kib(server.pid);
    println!(
        "soak: {updates} updates in {:.1} s ({committed} committed, {handoffs} of them by hand-off; {faulted} met an injected fault and changed nothing)",
        took.as_secs_f64()
    );
    println!(
        "requests served (INFO total_commands_processed): {requests}; error replies: {errors}; keys lost: {lost} of {}",
        super::KEYS
    );
    println!(
        "throughput: {during:.0} requests/s during the soak, {baseline:.0} requests/s in the 2 s \
         before it without updates (ratio {:.2})",
        during / baseline
    );
    println!(
        "resident memory of the serving process: {rss_start} KiB at the start, {rss_end} KiB at the end (pid {})",
        server.pid
    );
    ensure!(errors == 0, "{errors} requests got an error reply");
    ensure!(lost == 0, "{lost} keys were lost");
    Ok(())
}
