//! State types: which changed (directly, or by holding a changed one), field by field, who
//! holds them, and whether their transfer can be generated.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use quote::ToTokens;

use super::super::facts::{last, mentions, pretty, Facts};
use super::super::taxonomy::{change, Kind, Refusal};
use super::{Findings, Pair};
use crate::transfer::{self, Changed};

/// Compares the state types of both versions; returns the names of the changed ones (their
/// definition changed, or they hold a changed one).
pub(in crate::analysis) fn states(p: &Pair, a: &mut Findings) -> HashSet<String> {
    let (fo, fn_) = (p.old, p.new);
    let def_changed: HashSet<String> = fn_
        .states
        .iter()
        .filter(|(k, s)| fo.states.get(*k).is_some_and(|o| o.def != s.def))
        .map(|(_, s)| s.name.clone())
        .collect();
    let all: Vec<(String, Vec<syn::Type>)> = fn_
        .states
        .values()
        .map(|s| {
            (
                s.name.clone(),
                s.fields.iter().map(|f| f.ty.clone()).collect(),
            )
        })
        .collect();
    let changed_names = transfer::changed_closure(def_changed, &all);
    for (key, n) in &fn_.states {
        let Some(o) = fo.states.get(key) else {
            a.changes.push(change(
                Kind::StateAdded,
                &format!("state {key}"),
                &n.file,
                n.line,
                1,
                "new state type".into(),
                "none".into(),
            ));
            continue;
        };
        if !changed_names.contains(&n.name) {
            continue;
        }
        // Which components hold it (directly, or inside another state type).
        let holders = holders_of(&n.name, fn_);
        let is_component = fn_.components.contains_key(key);
        let category = if holders.len() > 1 { 3 } else { 1 };
        let constraint = if holders.is_empty() {
            "none: no component holds it".to_string()
        } else {
            format!(
                "{} passive",
                holders
                    .iter()
                    .map(|h| format!("component `{}`", fn_.component_id(h)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for h in &holders {
            a.affected.insert(fn_.component_id(h));
        }
        let mut described = false;
        let old_names: HashSet<&str> = o.fields.iter().map(|f| f.name.as_str()).collect();
        let renamed_sources: HashSet<String> = n
            .fields
            .iter()
            .filter_map(|f| f.renamed_from.clone())
            .collect();
        for f in &n.fields {
            let item = format!("field {}.{}", n.name, f.name);
            match (o.fields.iter().find(|x| x.name == f.name), &f.renamed_from) {
                (None, Some(from)) if old_names.contains(from.as_str()) => {
                    a.changes.push(change(
                        Kind::FieldRenamed,
                        &item,
                        &n.file,
                        f.line,
                        category,
                        format!("renamed from `{from}`"),
                        constraint.clone(),
                    ));
                    described = true;
                }
                (None, Some(from)) => a.refusals.push(Refusal {
                    item: item.clone(),
                    file: n.file.clone(),
                    line: f.line,
                    reason: format!(
                        "`#[dsu::renamed_from(\"{from}\")]`: the old `{}` has no field `{from}`",
                        n.name
                    ),
                    fix: format!("name a field of the old `{}`", n.name),
                    handoff_ok: false,
                }),
                (None, None) => {
                    a.changes.push(change(
                        Kind::FieldAdded,
                        &item,
                        &n.file,
                        f.line,
                        category,
                        format!(
                            "field added: `{}` (starts at `Default::default()`)",
                            pretty(&f.ty.to_token_stream())
                        ),
                        constraint.clone(),
                    ));
                    described = true;
                }
                (Some(of), _) => {
                    let (ot, nt) = (
                        pretty(&of.ty.to_token_stream()),
                        pretty(&f.ty.to_token_stream()),
                    );
                    if ot != nt {
                        a.changes.push(change(
                            Kind::FieldRetyped,
                            &item,
                            &n.file,
                            f.line,
                            category,
                            format!("type changed: `{ot}` -> `{nt}`"),
                            constraint.clone(),
                        ));
                        described = true;
                    } else if mentions(&f.ty, &changed_names) {
                        a.changes.push(change(
                            Kind::FieldRetyped,
                            &item,
                            &n.file,
                            f.line,
                            category,
                            format!("`{nt}` holds a changed state type"),
                            constraint.clone(),
                        ));
                        described = true;
                    }
                }
            }
        }
        for of in &o.fields {
            if !n.fields.iter().any(|f| f.name == of.name) && !renamed_sources.contains(&of.name) {
                a.changes.push(change(
                    Kind::FieldRemoved,
                    &format!("field {}.{}", n.name, of.name),
                    &n.file,
                    n.line,
                    category,
                    format!(
                        "field removed: `{}` (dropped with the old state)",
                        pretty(&of.ty.to_token_stream())
                    ),
                    constraint.clone(),
                ));
                described = true;
            }
        }
        if !described {
            a.changes.push(change(
                Kind::StateChanged,
                &format!("state {key}"),
                &n.file,
                n.line,
                category,
                "definition changed".into(),
                constraint.clone(),
            ));
        }
        // Can the transfer be generated?
        if is_component && !fn_.transfers.contains(key) {
            let homes = homes_of(fn_, &changed_names);
            let ch = Changed {
                names: &changed_names,
                homes: Some(&homes),
            };
            if let Err(e) = transfer::component_transfer(&n.name, &o.item, &n.item, &ch)
                .and_then(|(_, needs)| check_nested(&needs, fn_, fo, &changed_names))
            {
                a.refusals.push(Refusal {
                    item: format!("state {key}"),
                    file: n.file.clone(),
                    line: n.line,
                    reason: format!("the state transfer cannot be generated: {e:#}"),
                    fix: format!("write `#[dsu::transfer] fn upgrade(old: &old::{0}) -> {0}` in the module of `{0}`", n.name),
                    handoff_ok: false,
                });
            }
        }
    }

    changed_names
}

/// Components whose state holds the state type `name` (directly or nested).
pub(super) fn holders_of(name: &str, f: &Facts) -> Vec<String> {
    let mut holding: HashSet<String> = HashSet::from([name.to_string()]);
    loop {
        let before = holding.len();
        for s in f.states.values() {
            if s.fields.iter().any(|fl| mentions(&fl.ty, &holding)) {
                holding.insert(s.name.clone());
            }
        }
        if holding.len() == before {
            break;
        }
    }
    f.components
        .keys()
        .filter(|k| holding.contains(last(k)))
        .cloned()
        .collect()
}

/// Where each changed state type is defined.
pub(super) fn homes_of(f: &Facts, changed: &HashSet<String>) -> HashMap<String, Vec<String>> {
    f.states
        .values()
        .filter(|s| changed.contains(&s.name))
        .map(|s| (s.name.clone(), s.module.clone()))
        .collect()
}

/// Nested changed types must be convertible themselves.
pub(super) fn check_nested(
    needs: &[String],
    new: &Facts,
    old: &Facts,
    changed: &HashSet<String>,
) -> Result<()> {
    let mut todo: Vec<String> = needs.to_vec();
    let mut done = HashSet::new();
    while let Some(n) = todo.pop() {
        if !done.insert(n.clone()) {
            continue;
        }
        let Some((key, ns)) = new.states.iter().find(|(_, s)| s.name == n) else {
            bail!("nested state type `{n}` is not a `#[dsu::state]` of the new version");
        };
        let Some(os) = old.states.get(key) else {
            bail!("nested state type `{n}` has no old definition at `{key}`");
        };
        let homes = homes_of(new, changed);
        let ch = Changed {
            names: changed,
            homes: Some(&homes),
        };
        let mut more = Vec::new();
        transfer::converter(&n, &os.item, &ns.item, &ch, &mut more)?;
        todo.extend(more);
    }
    Ok(())
}
