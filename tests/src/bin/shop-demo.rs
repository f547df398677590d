//! The async live-update demonstration: examples/shop, an axum JSON service whose state lives
//! in components, is updated live through six versions while wrk drives it with 64 keep-alive
//! connections: a handler bug fix, a state layout change, a new route, a changed protocol
//! between two components (all in place), and a change to `main` (a process hand-off that
//! passes every connection on between two requests).
//!
//! `cargo run -p dsu-tests --bin shop-demo` (needs wrk: `apt-get install wrk`)

use std::time::Duration;

use anyhow::{ensure, Result};

const ITEMS: usize = 1_000;

fn main() -> Result<()> {
    eprintln!("dsu shop demo: examples/shop updated live v1 -> v6 while wrk drives it (64 connections); v5 -> v6 changes `main`: a process hand-off\n");
    let run = dsu_tests::shop::run(ITEMS, Duration::from_millis(1500), &mut |l| {
        eprintln!("{l}")
    })?;
    println!();
    println!(
        "{:<3} {:<14} {:>3}  {:>9} {:>9} {:>9} {:>9}  engine",
        "#", "update", "cat", "prepare", "pause", "transfer", "applied"
    );
    for (i, s) in run.steps.iter().enumerate() {
        let r = &s.record;
        println!(
            "{:<3} {:<14} {:>3}  {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6.0} ms  {}",
            i + 1,
            format!("{} -> {}", r.from, r.to),
            s.category,
            r.prepare_ms,
            r.pause_ms,
            r.transfer_ms,
            s.took.as_secs_f64() * 1000.0,
            match r.new_pid {
                Some(pid) => format!("hand-off (now pid {pid})"),
                None => "in place".to_string(),
            }
        );
    }
    println!("\nwrk:\n{}", run.wrk.trim_end());
    println!(
        "\nrequests: {}; socket errors: {}; non-2xx/3xx responses: {}; version now: {}",
        run.requests, run.socket_errors, run.non_2xx_3xx, run.version
    );
    println!(
        "all {} items created before the first update read back after the last",
        run.items_checked
    );
    ensure!(run.socket_errors == 0, "wrk reported socket errors");
    ensure!(run.non_2xx_3xx == 0, "wrk reported non-2xx/3xx responses");
    Ok(())
}
