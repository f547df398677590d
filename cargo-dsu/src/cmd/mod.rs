//! One module per command; this module holds what several of them share: the output format,
//! the `--engine` argument, loading and analysing two versions, and describing an update
//! record. The commands may use everything below them (`patch`, `analysis`, `report`,
//! `baseline`, `shell`, `exit`); nothing below uses them.

pub mod apply;
pub mod check;
pub mod diff;
pub mod keygen;
pub mod status;
pub mod watch;

use std::path::Path;

use anyhow::Result;
use clap::ValueEnum;
use dsu::{Engine, Outcome};

use crate::analysis::{self, Analysis, Source};
use crate::report;
use crate::shell::Shell;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Human,
    Json,
}

/// `--engine`: how the update is applied (DESIGN.md sections 5 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EngineArg {
    /// Load new code into the running process (refused when a change is outside components).
    InPlace,
    /// Start the new executable, hand it the sockets and the state; the old process exits.
    Handoff,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::InPlace => Engine::InPlace,
            EngineArg::Handoff => Engine::Handoff,
        }
    }
}

/// Resolves OLD (a path or `git:REV`), loads both versions and analyses them.
pub(crate) fn analyse(
    old: &str,
    new: &Path,
    shell: &Shell,
    target_dir: Option<&Path>,
) -> Result<Analysis> {
    let new_v = analysis::load_version(new)?;
    let old_path = match Source::parse(old) {
        Source::Path(p) => p,
        Source::Git(rev) => {
            let base = target_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| new_v.dir.join("target"));
            crate::baseline::checkout(&new_v.dir, &rev, &base.join("dsu").join("git"), shell)?
        }
    };
    let old_v = analysis::load_version(&old_path)?;
    if old_v.version == new_v.version {
        shell.warn(format!(
            "both versions of `{}` are {}: the process's update history and `cargo dsu status` \
             will not tell the running version from the one before; bump `version` in NEW's \
             Cargo.toml",
            new_v.name, new_v.version
        ));
    }
    shell.status(
        "Analyzing",
        format!("{} {} -> {}", new_v.name, old_v.version, new_v.version),
    );
    analysis::analyze(&old_v, &new_v)
}

pub(crate) fn print_report(shell: &Shell, a: &Analysis, format: Format) {
    match format {
        Format::Human => shell.out(&report::human(a)),
        Format::Json => shell.out(&report::json(a)),
    }
}

/// "the new process is pid N", for a committed hand-off.
pub(crate) fn new_process(r: &dsu::UpdateRecord) -> String {
    match r.new_pid {
        Some(pid) => format!("the new process is pid {pid}"),
        None => "the process did not report the new pid".to_string(),
    }
}

/// One update, as a line or a few.
pub(crate) fn describe_record(r: &dsu::UpdateRecord) -> String {
    let mut s = format!("update {}: {} -> {}: {:?}", r.id, r.from, r.to, r.outcome).to_lowercase();
    if r.engine == Engine::Handoff {
        if r.outcome == Outcome::Committed {
            s.push_str(&format!(
                " by hand-off ({}; pause {:.3} ms, transfer {:.3} ms)",
                new_process(r),
                r.pause_ms,
                r.transfer_ms
            ));
        } else {
            s.push_str(" (hand-off)");
        }
    } else if r.outcome == Outcome::Committed {
        s.push_str(&format!(
            " (components: {}; prepare {:.3} ms, pause {:.3} ms, transfer {:.3} ms)",
            if r.components.is_empty() {
                "none".into()
            } else {
                r.components.join(", ")
            },
            r.prepare_ms,
            r.pause_ms,
            r.transfer_ms
        ));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!("\n  reason: {reason}"));
    }
    if !r.cleared_poison.is_empty() {
        s.push_str(&format!(
            "\n  poison cleared (state taken as it was): {}",
            r.cleared_poison.join(", ")
        ));
    }
    for b in &r.busy {
        s.push_str(&format!(
            "\n  busy: {}{} on thread `{}` (tid {}) for {:.0} ms",
            b.component,
            b.method
                .as_deref()
                .map(|m| format!("::{m}"))
                .unwrap_or_default(),
            b.thread,
            b.tid,
            b.busy_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: &str, engine: &str, new_pid: Option<u32>) -> dsu::UpdateRecord {
        serde_json::from_value(serde_json::json!({
            "id": 3, "from": "1.0.0", "to": "2.0.0", "started_unix_ms": 0,
            "outcome": outcome, "reason": null, "components": ["Engine"], "changes": [],
            "attempts": 1, "policy_wait_ms": 0.0, "prepare_ms": 1.0, "pause_ms": 2.0,
            "transfer_ms": 3.0, "total_ms": 6.0, "busy": [],
            "engine": engine, "new_pid": new_pid,
        }))
        .expect("an update record")
    }

    #[test]
    fn a_hand_off_is_named_in_the_history_with_the_new_pid() {
        assert_eq!(
            describe_record(&record("committed", "handoff", Some(1234))),
            "update 3: 1.0.0 -> 2.0.0: committed by hand-off (the new process is pid 1234; \
             pause 2.000 ms, transfer 3.000 ms)"
        );
        assert_eq!(
            describe_record(&record("refused", "handoff", None)),
            "update 3: 1.0.0 -> 2.0.0: refused (hand-off)"
        );
        // In place, as before: no engine named.
        assert_eq!(
            describe_record(&record("committed", "in-place", None)),
            "update 3: 1.0.0 -> 2.0.0: committed (components: Engine; prepare 1.000 ms, \
             pause 2.000 ms, transfer 3.000 ms)"
        );
    }
}
