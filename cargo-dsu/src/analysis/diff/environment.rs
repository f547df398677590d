//! The build environment: dependency requirements and locked versions, the global
//! allocator, the toolchain pin. A patch must be built like the running process, so any of
//! these changing is refused in place.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;

use super::super::facts::AllocatorFacts;
use super::super::taxonomy::{
    change, Kind, Refusal, ENVIRONMENT, NOT_IN_PLACE, RUNTIME_ITEM, SAME_DEPENDENCIES,
};
use super::super::version::Version;
use super::{Findings, Pair};
use crate::cargo::{cargo_config, locked, toolchain_pin};

/// Crates that hold process-wide state, and what: a patch runs with the running build of
/// each (shared through `dsu-shared`, or forwarded), so another version or feature set of one
/// cannot be applied in place.
const PROCESS_STATE: [(&str, &str); 6] = [
    ("tokio", "its runtime context and timers"),
    ("tracing", "its callsites and the current span"),
    ("tracing-core", "the dispatcher"),
    ("log", "the logger"),
    ("dsu-shared", "the shared copies of tokio, tracing and log"),
    ("dsu-rt", "the update manager and every component's table"),
];

/// Why a change of dependency `name` is refused in place.
fn why_same(name: &str) -> String {
    match PROCESS_STATE.iter().find(|(n, _)| *n == name) {
        Some((_, what)) => format!(
            "`{name}` holds process-wide state ({what}), and a patch's code runs against the running process's build of it; another version or feature set is another build"
        ),
        None => SAME_DEPENDENCIES.to_string(),
    }
}

/// Compares the dependency requirements (Cargo.toml) and, when both have one, the locked
/// versions (Cargo.lock).
pub(in crate::analysis) fn dependencies(
    old: &Version,
    new: &Version,
    a: &mut Findings,
) -> Result<()> {
    let mut deps: BTreeSet<&String> = old.deps.keys().collect();
    deps.extend(new.deps.keys());
    for d in deps {
        let (o, n) = (old.deps.get(d), new.deps.get(d));
        if o != n {
            let desc = format!(
                "dependency `{d}`: {} -> {}",
                o.map(String::as_str).unwrap_or("(none)"),
                n.map(String::as_str).unwrap_or("(none)")
            );
            refuse_environment(
                a,
                d,
                format!("dependency {d}"),
                "Cargo.toml",
                desc,
                &why_same(d),
                "keep the base's dependency versions and features for this update, or apply it by hand-off (`--engine handoff`)",
            );
        }
    }
    if let (Some(ol), Some(nl)) = (&old.lock, &new.lock) {
        if ol != nl {
            let (lo, ln) = (locked(ol)?, locked(nl)?);
            for (name, ov) in &lo {
                if let Some(nv) = ln.get(name) {
                    if ov != nv
                        && !a
                            .refusals
                            .iter()
                            .any(|r| r.item == format!("dependency {name}"))
                    {
                        let desc = format!(
                            "locked `{name}`: {} -> {}",
                            ov.iter().cloned().collect::<Vec<_>>().join(", "),
                            nv.iter().cloned().collect::<Vec<_>>().join(", ")
                        );
                        refuse_environment(
                            a,
                            name,
                            format!("dependency {name}"),
                            "Cargo.lock",
                            desc,
                            &why_same(name),
                            "build the patch against the base's Cargo.lock (cargo dsu uses OLD's), or restart the process",
                        );
                    }
                }
            }
        }
    }

    Ok(())
}

/// Compares the `#[global_allocator]`s.
pub(in crate::analysis) fn allocator(p: &Pair, a: &mut Findings) {
    let (fo, fn_) = (p.old, p.new);
    // The global allocator: a patch's allocations go to the running process's allocator (the
    // patch root declares a forwarding one), so a new one would never be used in place.
    let shown = |al: &Option<AllocatorFacts>| match al {
        Some(al) => format!("`{}: {}`", al.name, al.ty),
        None => "the system allocator".to_string(),
    };
    if fo.allocator.as_ref().map(|al| &al.code) != fn_.allocator.as_ref().map(|al| &al.code) {
        let (file, line) = fn_
            .allocator
            .as_ref()
            .or(fo.allocator.as_ref())
            .map(|al| (al.file.clone(), al.line))
            .unwrap_or_default();
        let desc = format!(
            "`#[global_allocator]` changed: {} -> {}",
            shown(&fo.allocator),
            shown(&fn_.allocator)
        );
        a.changes.push(change(
            Kind::AllocatorChanged,
            "#[global_allocator]",
            &file,
            line,
            ENVIRONMENT,
            desc.clone(),
            NOT_IN_PLACE.into(),
        ));
        a.refusals.push(Refusal {
            item: "#[global_allocator]".into(),
            file,
            line,
            reason: format!(
                "{desc}: a patch allocates with the running process's allocator, so the new one would never be used in place"
            ),
            fix: "keep the base's allocator for this update".into(),
            handoff_ok: true,
        });
    }
}

/// Both versions must run the dsu runtime: a process without it has no update manager to
/// take a patch or hand its state off, and a new version without it could take no update after
/// this one (nor, by hand-off, receive the state). Neither engine applies such an update.
pub(in crate::analysis) fn runtime(old: &Version, new: &Version, a: &mut Findings) {
    for (v, side, consequence) in [
        (
            old,
            "OLD",
            "no process of it has an update manager, so nothing could take this update, in place \
             or by hand-off",
        ),
        (
            new,
            "NEW",
            "its process could not receive the state by hand-off, nor take any update after this one",
        ),
    ] {
        if v.runtime.is_some() {
            continue;
        }
        a.refusals.push(Refusal {
            item: RUNTIME_ITEM.into(),
            file: v.dir.join("Cargo.toml").display().to_string(),
            line: 0,
            reason: format!(
                "the program has no dsu runtime: {side} ({} {}) does not depend on `dsu-rt`; \
                 {consequence}",
                v.name, v.version
            ),
            fix: "add `dsu-rt` to [dependencies] of both versions (see examples/counter), mark \
                  the program's components with `#[dsu::component]`, start it under \
                  `dsu::Runtime`, and deploy that version before updating it"
                .into(),
            handoff_ok: false,
        });
    }
}

/// Compares the toolchain pins.
pub(in crate::analysis) fn toolchain(old: &Version, new: &Version, a: &mut Findings) {
    // Toolchain: a pin that changed means the patch would be built by another rustc.
    let (ot, nt) = (toolchain_pin(&old.dir), toolchain_pin(&new.dir));
    if ot.as_ref().map(|(_, t)| t) != nt.as_ref().map(|(_, t)| t) {
        let show = |t: &Option<(PathBuf, String)>| match t {
            Some((_, text)) => format!(
                "`{}`",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            None => "no pin".to_string(),
        };
        let desc = format!("toolchain pin: {} -> {}", show(&ot), show(&nt));
        refuse_environment(
            a,
            "rust-toolchain",
            "toolchain".into(),
            "rust-toolchain.toml",
            desc,
            "a patch must be built by the rustc that built the running process",
            "keep the base's toolchain for this update, or restart the process on the new version",
        );
    }
}

/// Compares the cargo configurations (`.cargo/config.toml`): the patch is built with the
/// base's, so another one (its `rustflags`, say) would not be the one NEW asked for.
pub(in crate::analysis) fn cargo_configuration(old: &Version, new: &Version, a: &mut Findings) {
    let (oc, nc) = (cargo_config(&old.dir), cargo_config(&new.dir));
    if oc.as_ref().map(|(_, t)| t.trim()) != nc.as_ref().map(|(_, t)| t.trim()) {
        let show = |c: &Option<(PathBuf, String)>| match c {
            Some((p, _)) => p.display().to_string(),
            None => "none".to_string(),
        };
        let desc = format!(
            "cargo configuration changed: {} -> {}",
            show(&oc),
            show(&nc)
        );
        refuse_environment(
            a,
            ".cargo/config.toml",
            "cargo configuration".into(),
            ".cargo/config.toml",
            desc,
            "a patch is built with the running build's configuration (its rustflags decide how the patch links)",
            "keep the base's .cargo/config.toml for this update, or apply it by hand-off (`--engine handoff`)",
        );
    }
}

/// A difference in the build environment (category 6, `ENVIRONMENT`): recorded as a change, and refused.
fn refuse_environment(
    a: &mut Findings,
    item: &str,
    refusal_item: String,
    file: &str,
    desc: String,
    why: &str,
    fix: &str,
) {
    a.changes.push(change(
        Kind::DependencyChanged,
        item,
        file,
        0,
        ENVIRONMENT,
        desc.clone(),
        NOT_IN_PLACE.into(),
    ));
    a.refusals.push(Refusal {
        item: refusal_item,
        file: file.into(),
        line: 0,
        reason: format!("{desc}: {why}"),
        fix: fix.into(),
        handoff_ok: true,
    });
}
