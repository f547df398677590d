//! The soak as a whole-process bench (issue 17, item 1): `dsu-demo --soak UPDATES` run
//! `--runs` times. Each run applies the updates (in place and by hand-off, half of them meeting
//! injected faults) under redis-benchmark and measures the load's rate during the soak against
//! its rate in the 2 s just before it, in the same process; a run that lost a key or got an
//! error reply fails the bench. Reported: each run's figures and the median ratio.
//!
//! `cargo bench -p dsu-tests --bench soak [-- --updates 100 --runs 3]`

mod kv;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use kv::{machine, Opts};

const OPTIONS: &[kv::Spec] = &[
    ("updates", "100", "updates per run"),
    ("runs", "3", "runs of the soak"),
];

/// The number after `prefix` in `line`.
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn main() -> Result<()> {
    let o = Opts::parse("the demo's soak of updates and faults under load", OPTIONS)?;
    let (updates, runs): (usize, usize) = (o.get("updates")?, o.get("runs")?);
    println!("{}", machine());
    let mut ratios = Vec::new();
    for run in 1..=runs {
        let out = Command::new(env!("CARGO_BIN_EXE_dsu-demo"))
            .args(["--soak", &updates.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "soak run {run} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("run {run}:\n{text}");
        ratios.push(number_after(&text, "(ratio ").context("no ratio in the soak's report")?);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median over {runs} runs: the load ran at {:.2} of its rate without updates",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
