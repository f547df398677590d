//! `#[dsu::global]` statics (added, retyped, a changed initializer) and hand-written
//! `#[dsu::transfer]` functions.

use std::collections::HashSet;

use super::super::facts::{last, mentions};
use super::super::taxonomy::{change, Kind, Refusal};
use super::{Findings, Pair};

/// Compares the globals of both versions; `changed_names` are the changed state types.
pub(in crate::analysis) fn globals(p: &Pair, changed_names: &HashSet<String>, a: &mut Findings) {
    let (fo, fn_) = (p.old, p.new);
    let new_component_only = &p.new_component_only;
    for (key, n) in &fn_.globals {
        let users: Vec<String> = fn_
            .components
            .values()
            .filter(|c| c.idents.contains(last(key)))
            .map(|c| c.id.clone())
            .collect();
        match fo.globals.get(key) {
            None => a.changes.push(change(
                Kind::GlobalAdded,
                &format!("global {key}"),
                &n.file,
                n.line,
                1,
                "new global".into(),
                "none".into(),
            )),
            Some(o) if o.ty != n.ty || mentions(&n.ty_ast, changed_names) => {
                a.changes.push(change(
                    Kind::GlobalRetyped,
                    &format!("global {key}"),
                    &n.file,
                    n.line,
                    3,
                    format!(
                        "{}; used by {}",
                        if o.ty == n.ty {
                            format!("its type `{}` changed", n.ty)
                        } else {
                            format!("type changed: `{}` -> `{}`", o.ty, n.ty)
                        },
                        if users.is_empty() {
                            "no component".into()
                        } else {
                            users
                                .iter()
                                .map(|u| format!("`{u}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                    "every user passive, registered threads parked".into(),
                ));
                let outside_users: Vec<&String> = fn_
                    .outside
                    .iter()
                    .filter(|(k, o)| {
                        o.idents.contains(last(key)) && !new_component_only.contains(*k)
                    })
                    .map(|(k, _)| k)
                    .collect();
                let plain_state = fn_
                    .states
                    .values()
                    .any(|s| s.name == n.ty && changed_names.contains(&s.name));
                if !outside_users.is_empty() {
                    a.refusals.push(Refusal {
                        item: format!("global {key}"),
                        file: n.file.clone(),
                        line: n.line,
                        reason: format!(
                            "global `{key}` changes type, and code outside components ({}) uses it: that code keeps the old value",
                            outside_users.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
                        ),
                        fix: "reach the global only from components (call a component method from that code), or keep its type".into(),
                        handoff_ok: true,
                    });
                }
                // Independent of the above: a hand-off must transfer the value too.
                if !plain_state {
                    a.refusals.push(Refusal {
                        item: format!("global {key}"),
                        file: n.file.clone(),
                        line: n.line,
                        reason: format!("global `{key}` changes type to `{}`, which is not a changed `#[dsu::state]` type: no transfer can be generated", n.ty),
                        fix: "make the global's type a `#[dsu::state]` struct (the transfer is then generated field by field), or keep its type".into(),
                        handoff_ok: false,
                    });
                }
                for u in users {
                    a.affected.insert(u);
                }
            }
            Some(o) if o.init != n.init => a.changes.push(change(
                Kind::GlobalInitChanged,
                &format!("global {key}"),
                &n.file,
                n.line,
                1,
                "initializer changed: no effect on the running process, which keeps its instance"
                    .into(),
                "none".into(),
            )),
            _ => {}
        }
    }
}

/// Hand-written transfers new in NEW.
pub(in crate::analysis) fn transfers(p: &Pair, a: &mut Findings) {
    let (fo, fn_) = (p.old, p.new);
    for t in &fn_.transfers {
        if !fo.transfers.contains(t) {
            if let Some(s) = fn_.states.get(t) {
                a.changes.push(change(
                    Kind::TransferAdded,
                    &format!("transfer to {t}"),
                    &s.file,
                    s.line,
                    1,
                    "hand-written `#[dsu::transfer]` (used instead of the generated one)".into(),
                    "none".into(),
                ));
            }
        }
    }
}
