//! Code outside components (free functions, `main`, other impls, traits, constants), and the
//! non-dsu statics changed code can reach.

use std::collections::HashSet;

use super::super::facts::{last, OutsideFacts};
use super::super::taxonomy::{change, Kind, Refusal, NOT_IN_PLACE, WHOLE_PROGRAM};
use super::{Findings, Pair};

/// Compares the code outside components: a helper only components call goes into the patch
/// with them; any other change needs a hand-off.
pub(in crate::analysis) fn outside(p: &Pair, a: &mut Findings) {
    let (fo, fn_) = (p.old, p.new);
    let changed_outside: Vec<(&String, &OutsideFacts)> = fn_
        .outside
        .iter()
        .filter(|(k, n)| fo.outside.get(*k).is_none_or(|o| o.code != n.code))
        .collect();
    let component_only = &p.new_component_only;
    for (key, n) in &changed_outside {
        // The components that reach this helper, directly or through other helpers.
        let mut reaching: HashSet<String> = HashSet::from([last(key).to_string()]);
        loop {
            let more: Vec<String> = fn_
                .outside
                .iter()
                .filter(|(k, o)| {
                    component_only.contains(*k)
                        && !reaching.contains(last(k))
                        && o.paths.iter().any(|i| reaching.contains(i))
                })
                .map(|(k, _)| last(k).to_string())
                .collect();
            if more.is_empty() {
                break;
            }
            reaching.extend(more);
        }
        let callers_components: Vec<String> = fn_
            .components
            .values()
            .filter(|c| c.paths.iter().any(|i| reaching.contains(i)))
            .map(|c| c.id.clone())
            .collect();
        let is_new = !fo.outside.contains_key(*key);
        let only_components = component_only.contains(*key);
        if only_components {
            // A helper only components call: it goes into the patch with them.
            for c in &callers_components {
                a.affected.insert(c.clone());
            }
            a.changes.push(change(
                Kind::OutsideChanged,
                key,
                &n.file,
                n.line,
                1,
                format!(
                    "{} called only by components ({})",
                    if is_new {
                        "helper added,"
                    } else {
                        "helper changed,"
                    },
                    callers_components
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "its calling components passive".into(),
            ));
            continue;
        }
        a.changes.push(change(
            Kind::OutsideChanged,
            key,
            &n.file,
            n.line,
            WHOLE_PROGRAM,
            "code outside components changed".into(),
            NOT_IN_PLACE.into(),
        ));
        a.refusals.push(Refusal {
            item: key.to_string(),
            file: n.file.clone(),
            line: n.line,
            reason: if last(key) == "main" {
                "`main` changed: the running process keeps executing the old `main`, which no in-place update can replace".into()
            } else {
                format!("`{key}` is code outside components and changed; the in-place engine only replaces components (and helpers only they call)")
            },
            fix: "move the changed logic into a component method, or restart the process on the new version".into(),
            handoff_ok: true,
        });
    }
    for (key, o) in &fo.outside {
        if !fn_.outside.contains_key(key) && last(key) == "main" {
            a.refusals.push(Refusal {
                item: key.clone(),
                file: o.file.clone(),
                line: o.line,
                reason: "`main` was removed".into(),
                fix: "keep `main` (a hand-off starts the new executable, which needs it too)"
                    .into(),
                handoff_ok: false,
            });
        }
    }
}

/// Non-dsu statics reachable from the changed components, directly or through helpers.
pub(in crate::analysis) fn statics(p: &Pair, a: &mut Findings) {
    let fn_ = p.new;
    let mut reach: HashSet<String> = HashSet::new();
    for c in fn_
        .components
        .values()
        .filter(|c| a.affected.contains(&c.id))
    {
        reach.extend(c.idents.iter().cloned());
    }
    // Through helper functions, transitively.
    let mut frontier: Vec<String> = reach.iter().cloned().collect();
    let mut seen_fns: HashSet<String> = HashSet::new();
    while let Some(i) = frontier.pop() {
        for (k, o) in &fn_.outside {
            if o.is_fn && last(k) == i && seen_fns.insert(k.clone()) {
                for id in &o.idents {
                    if reach.insert(id.clone()) {
                        frontier.push(id.clone());
                    }
                }
            }
        }
    }
    for (name, s) in &fn_.statics {
        if reach.contains(name) {
            a.changes.push(change(
                Kind::StaticReachable,
                name,
                &s.file,
                s.line,
                3,
                format!("{} `{name}` is used by updated code", s.kind),
                NOT_IN_PLACE.into(),
            ));
            a.refusals.push(Refusal {
                item: name.clone(),
                file: s.file.clone(),
                line: s.line,
                reason: format!("{} `{name}` is reachable from changed code, but is not `#[dsu::global]`: the new code would get a fresh copy of it (a patch has its own statics, and so has the new process of a hand-off), and the running value would be lost", s.kind),
                fix: format!("make it `#[dsu::global] static {name}: ...` (the runtime then owns the one instance), or keep the value in a component's state"),
                handoff_ok: true,
            });
        }
    }
}
