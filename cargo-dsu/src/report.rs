//! Rendering an analysis: human text, or one versioned JSON document.

use std::fmt::Write;

use dsu::Engine;
use serde::Serialize;

use crate::analysis::Analysis;

/// Version of the JSON report format.
pub const REPORT_FORMAT: &str = "dsu-diff/1";

pub use crate::analysis::category_name;

/// What an engine does, for the report's `engine:` line.
fn engine_summary(e: Engine) -> &'static str {
    match e {
        Engine::InPlace => "new code is loaded into the running process",
        Engine::Handoff => {
            "the new executable is started, takes over the sockets and the state, and the old \
             process exits once it is ready"
        }
    }
}

/// The human report.
pub fn human(a: &Analysis) -> String {
    let mut s = String::new();
    let category = format!("category {}: {}", a.category(), category_name(a.category()));
    let verdict = match a.plan.engine {
        Some(Engine::InPlace) if a.changes.is_empty() => "no changes".to_string(),
        Some(Engine::InPlace) => format!("can be applied in place ({category})"),
        Some(Engine::Handoff) => format!("can be applied by process hand-off ({category})"),
        None if a.refusals.is_empty() => "REFUSED (see the engine below)".to_string(),
        None if a.handoff_possible() && a.plan.requested == Some(Engine::InPlace) => {
            format!(
                "REFUSED in place ({} problem(s) below); a hand-off can apply it",
                a.refusals.len()
            )
        }
        None => format!("REFUSED ({} problem(s) below)", a.refusals.len()),
    };
    let _ = writeln!(
        s,
        "{} {} -> {}: {verdict}",
        a.new.name, a.old.version, a.new.version
    );
    if !a.changes.is_empty() {
        let _ = writeln!(s, "\nchanges:");
    }
    for c in &a.changes {
        let at = if c.line > 0 {
            format!("{}:{}", c.file, c.line)
        } else {
            c.file.clone()
        };
        let _ = writeln!(s, "  [{}] {at}  {}: {}", c.category, c.item, c.description);
        let _ = writeln!(s, "      requires: {}", c.constraint);
    }
    if !a.applicable() && !a.refusals.is_empty() {
        let _ = writeln!(s, "\nrefused:");
        for r in &a.refusals {
            let _ = writeln!(s, "  {}  {}: {}", r.at(), r.item, r.reason);
            let _ = writeln!(s, "      to make it possible: {}", r.fix);
            let _ = writeln!(
                s,
                "      {}",
                if r.handoff_ok {
                    "a hand-off can apply it"
                } else {
                    "a hand-off cannot apply it either"
                }
            );
        }
    }
    let _ = match a.plan.engine {
        Some(e) => writeln!(s, "\nengine: {} ({})", e.as_str(), engine_summary(e)),
        None => writeln!(s, "\nengine: none"),
    };
    for r in &a.plan.reasons {
        let _ = writeln!(s, "  {r}");
    }
    if a.applicable() && !a.changes.is_empty() {
        let k = &a.constraints;
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(s, "\nconstraints:");
        let _ = writeln!(s, "  passive components: {}", list(&k.components));
        let _ = writeln!(s, "  idle protocols:     {}", list(&k.protocols_idle));
        let _ = writeln!(
            s,
            "  parked threads:     {}",
            if k.park_threads { "yes" } else { "no" }
        );
        let _ = writeln!(s, "  timeout:            {} ms", k.timeout_ms);
    }
    s
}

#[derive(Serialize)]
struct Doc<'a> {
    format: &'static str,
    program: &'a str,
    from: &'a str,
    to: &'a str,
    /// Whether the engine below can apply the update.
    applicable: bool,
    /// `in-place`, `handoff`, or null when the update cannot be applied.
    engine: Option<Engine>,
    /// What `--engine` asked for: `in-place`, `handoff`, or null (chosen automatically).
    engine_requested: Option<Engine>,
    engine_reasons: &'a [String],
    category: u8,
    /// The category's name in the taxonomy (`whole program` for 7).
    category_name: &'static str,
    changes: &'a [crate::analysis::Change],
    refusals: &'a [crate::analysis::Refusal],
    constraints: &'a crate::analysis::Constraints,
}

/// The JSON report.
pub fn json(a: &Analysis) -> String {
    serde_json::to_string_pretty(&Doc {
        format: REPORT_FORMAT,
        program: &a.new.name,
        from: &a.old.version,
        to: &a.new.version,
        applicable: a.applicable(),
        engine: a.plan.engine,
        engine_requested: a.plan.requested,
        engine_reasons: &a.plan.reasons,
        category: a.category(),
        category_name: category_name(a.category()),
        changes: &a.changes,
        refusals: &a.refusals,
        constraints: &a.constraints,
    })
    .expect("a report serialises")
}
