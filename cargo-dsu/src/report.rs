//! Rendering an analysis: human text, or one versioned JSON document.

use std::fmt::Write;

use serde::Serialize;

use crate::analysis::Analysis;

/// Version of the JSON report format.
pub const REPORT_FORMAT: &str = "dsu-diff/1";

const CATEGORIES: [&str; 7] = [
    "",
    "one component",
    "protocol between components",
    "global data",
    "global algorithm",
    "data on disk",
    "environment",
];

/// The taxonomy name of a category.
pub fn category_name(c: u8) -> &'static str {
    CATEGORIES.get(c as usize).copied().unwrap_or("unknown")
}

/// The human report.
pub fn human(a: &Analysis) -> String {
    let mut s = String::new();
    let verdict = if a.refused() {
        format!("REFUSED ({} problem(s) below)", a.refusals.len())
    } else if a.changes.is_empty() {
        "no changes".to_string()
    } else {
        format!(
            "can be applied in place (category {}: {})",
            a.category(),
            category_name(a.category())
        )
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
    if a.refused() {
        let _ = writeln!(s, "\nrefused:");
        for r in &a.refusals {
            let at = if r.line > 0 {
                format!("{}:{}", r.file, r.line)
            } else {
                r.file.clone()
            };
            let _ = writeln!(s, "  {at}  {}: {}", r.item, r.reason);
            let _ = writeln!(s, "      to make it possible: {}", r.fix);
        }
    } else if !a.changes.is_empty() {
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
    applicable: bool,
    category: u8,
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
        applicable: !a.refused(),
        category: a.category(),
        changes: &a.changes,
        refusals: &a.refusals,
        constraints: &a.constraints,
    })
    .expect("a report serialises")
}
