//! Components and their methods: added, removed, a changed body, signature or protocol
//! marker, a new `migrate` hook (data on disk).

use super::super::taxonomy::{change, Kind, Refusal};
use super::{Findings, Pair};

/// Compares the components of both versions.
pub(in crate::analysis) fn components(p: &Pair, a: &mut Findings) {
    let (fo, fn_) = (p.old, p.new);
    let old_component_only = &p.old_component_only;
    for (key, n) in &fn_.components {
        let Some(o) = fo.components.get(key) else {
            a.changes.push(change(
                Kind::ComponentAdded,
                &format!("component {key}"),
                &n.file,
                n.line,
                1,
                "new component".into(),
                "none: it starts when the new code registers it".into(),
            ));
            continue;
        };
        for (m, nm) in &n.methods {
            let item = format!("{key}::{m}");
            let passive = format!("component `{}` passive", n.id);
            match o.methods.get(m) {
                None => {
                    a.changes.push(change(
                        Kind::MethodAdded,
                        &item,
                        &n.file,
                        nm.line,
                        1,
                        "method added".into(),
                        passive,
                    ));
                    a.affected.insert(n.id.clone());
                }
                Some(om) => {
                    if om.sig != nm.sig {
                        let outside_callers: Vec<&String> = fo
                            .outside
                            .iter()
                            .filter(|(ok, of)| {
                                of.calls.contains(m) && !old_component_only.contains(*ok)
                            })
                            .map(|(ok, _)| ok)
                            .collect();
                        let component_callers: Vec<String> = fn_
                            .components
                            .iter()
                            .filter(|(ck, c)| *ck != key && c.calls.contains(m))
                            .map(|(_, c)| c.id.clone())
                            .collect();
                        if !outside_callers.is_empty() {
                            a.refusals.push(Refusal {
                                item: item.clone(),
                                file: n.file.clone(),
                                line: nm.line,
                                reason: format!(
                                    "the signature of `{item}` changed, and code outside components ({}) calls it: that code is not replaced by the update and would call the new method with the old signature",
                                    outside_callers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                                ),
                                fix: format!("keep `{m}` with its old signature and add a new method beside it, or move the callers into a component"),
                                handoff_ok: true,
                            });
                        }
                        if component_callers.is_empty() {
                            a.changes.push(change(
                                Kind::SignatureChanged,
                                &item,
                                &n.file,
                                nm.line,
                                1,
                                format!("signature changed: `{}` -> `{}`", om.shown, nm.shown),
                                passive.clone(),
                            ));
                        } else {
                            let mut parties = component_callers.clone();
                            parties.push(n.id.clone());
                            parties.sort();
                            parties.dedup();
                            for p in &parties {
                                a.affected.insert(p.clone());
                            }
                            a.changes.push(change(
                                Kind::SignatureChanged,
                                &item,
                                &n.file,
                                nm.line,
                                2,
                                format!(
                                    "signature changed: `{}` -> `{}`; called by {}",
                                    om.shown,
                                    nm.shown,
                                    component_callers
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                                format!(
                                    "components {} passive and their protocols idle",
                                    parties
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                    } else if om.body != nm.body {
                        a.changes.push(change(
                            Kind::BodyChanged,
                            &item,
                            &n.file,
                            nm.line,
                            1,
                            "body changed".into(),
                            passive.clone(),
                        ));
                    }
                    if om.protocol != nm.protocol {
                        a.changes.push(change(
                            Kind::ProtocolChanged,
                            &item,
                            &n.file,
                            nm.line,
                            2,
                            format!(
                                "protocol marker changed: {} -> {}",
                                om.protocol.as_deref().unwrap_or("none"),
                                nm.protocol.as_deref().unwrap_or("none")
                            ),
                            "the protocol idle and its components passive".into(),
                        ));
                    }
                    if om.sig != nm.sig || om.body != nm.body || om.protocol != nm.protocol {
                        a.affected.insert(n.id.clone());
                    }
                }
            }
        }
        // Data on disk: a new or changed `migrate` hook runs inside the update.
        if let Some(nm) = n.methods.get(dsu_syntax::MIGRATE) {
            if o.methods
                .get(dsu_syntax::MIGRATE)
                .is_none_or(|om| om.body != nm.body)
            {
                a.changes.push(change(
                    Kind::DataMigration,
                    &format!("{key}::{}", dsu_syntax::MIGRATE),
                    &n.file,
                    nm.line,
                    5,
                    "data on disk: the component's `migrate` hook converts its data inside the update; a failure rolls the update back".into(),
                    format!("component `{}` passive while its data migrates", n.id),
                ));
                a.affected.insert(n.id.clone());
            }
        }
        for (m, om) in &o.methods {
            if !n.methods.contains_key(m) {
                let item = format!("{key}::{m}");
                let callers: Vec<&String> = fn_
                    .outside
                    .iter()
                    .filter(|(_, of)| of.calls.contains(m))
                    .map(|(k, _)| k)
                    .collect();
                if !callers.is_empty() {
                    a.refusals.push(Refusal {
                        item: item.clone(),
                        file: o.file.clone(),
                        line: om.line,
                        reason: format!(
                            "`{item}` was removed, and code outside components still calls it"
                        ),
                        fix: "keep the method until no code outside components calls it".into(),
                        handoff_ok: true,
                    });
                }
                a.changes.push(change(
                    Kind::MethodRemoved,
                    &item,
                    &n.file,
                    n.line,
                    1,
                    "method removed".into(),
                    format!("component `{}` passive", n.id),
                ));
                a.affected.insert(n.id.clone());
            }
        }
        // A changed impl whose methods all compare equal (attributes, order) still changes code.
        if !a.affected.contains(&n.id) && o.code != n.code {
            a.changes.push(change(
                Kind::BodyChanged,
                &format!("impl {key}"),
                &n.file,
                n.line,
                1,
                "component impl changed".into(),
                format!("component `{}` passive", n.id),
            ));
            a.affected.insert(n.id.clone());
        }
    }
    for (key, o) in &fo.components {
        if !fn_.components.contains_key(key) {
            a.refusals.push(Refusal {
                item: format!("component {key}"),
                file: o.file.clone(),
                line: o.line,
                reason: format!(
                    "component `{}` was removed, but the running process may hold instances of it",
                    o.id
                ),
                fix: "keep the component (it may stop being used) until a restart".into(),
                handoff_ok: true,
            });
        }
    }
}
