//! What cargo knows about a package, read the way cargo reads it: `cargo metadata`, the
//! Cargo.lock and the toolchain pin. The lowest layer, used by the analysis and the patch
//! build alike; it uses nothing of this crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cargo_metadata::{Metadata, MetadataCommand, Package as CargoPackage, Target};

/// The cargo that runs `cargo dsu` (`$CARGO`), else the one on `PATH`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The package at `path` (a directory or its Cargo.toml), read with `cargo metadata`.
pub fn read_package(path: &Path) -> Result<(Metadata, CargoPackage)> {
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_path_buf()
    };
    if !manifest.is_file() {
        bail!(
            "{} is not a crate: there is no Cargo.toml; give a package directory or its Cargo.toml",
            path.display()
        );
    }
    let meta = MetadataCommand::new()
        .cargo_path(cargo())
        .manifest_path(&manifest)
        .no_deps()
        .exec()
        .with_context(|| format!("cannot read the package at {}", manifest.display()))?;
    let canon = manifest.canonicalize().unwrap_or(manifest.clone());
    let pkg = meta
        .packages
        .iter()
        .find(|p| p.manifest_path.as_std_path() == canon)
        .or_else(|| meta.packages.first())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{} defines no package (is it a virtual workspace?)",
                manifest.display()
            )
        })?;
    Ok((meta, pkg))
}

/// The target a patch is built from: the binary named after the package, else the only binary,
/// else the library.
pub fn root_target(pkg: &CargoPackage) -> Result<&Target> {
    let bins: Vec<&Target> = pkg.targets.iter().filter(|t| t.is_bin()).collect();
    if let Some(t) = bins.iter().find(|t| t.name == pkg.name.as_str()) {
        return Ok(t);
    }
    if bins.len() == 1 {
        return Ok(bins[0]);
    }
    pkg.targets
        .iter()
        .find(|t| t.is_lib())
        .ok_or_else(|| anyhow!("package `{}` has no binary or library target", pkg.name))
}

/// The `rust-toolchain.toml` (or `rust-toolchain`) that governs builds in `dir`, found the way
/// rustup finds it: in `dir` or the nearest ancestor.
pub fn toolchain_pin(dir: &Path) -> Option<(PathBuf, String)> {
    let mut d = Some(dir);
    while let Some(here) = d {
        for name in ["rust-toolchain.toml", "rust-toolchain"] {
            let p = here.join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                return Some((p, text.trim().to_string()));
            }
        }
        d = here.parent();
    }
    None
}

/// The cargo configuration file (`.cargo/config.toml`, or the older `.cargo/config`) that
/// governs builds in `dir`: the nearest one in `dir` or an ancestor, with its text. It can
/// set `rustflags` (a program that links `dsu-shared` sets `-C prefer-dynamic`), and a patch
/// must be built with the flags its base was built with.
pub fn cargo_config(dir: &Path) -> Option<(PathBuf, String)> {
    let mut d = Some(dir);
    while let Some(here) = d {
        for name in ["config.toml", "config"] {
            let p = here.join(".cargo").join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                return Some((p, text));
            }
        }
        d = here.parent();
    }
    None
}

/// Locked versions of every package in a Cargo.lock.
pub fn locked(lock: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let text = std::fs::read_to_string(lock)?;
    let doc: toml::Table = text.parse().context("cannot parse Cargo.lock")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in doc
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            p.get("name").and_then(|v| v.as_str()),
            p.get("version").and_then(|v| v.as_str()),
        ) {
            if p.get("source").is_some() {
                out.entry(n.to_string()).or_default().insert(v.to_string());
            }
        }
    }
    Ok(out)
}

/// The locked version of package `name` (the first one, if several).
pub fn locked_version(lock: &Path, name: &str) -> Result<String> {
    let text = std::fs::read_to_string(lock)?;
    let doc: toml::Table = text.parse().context("cannot parse Cargo.lock")?;
    doc.get("package")
        .and_then(|p| p.as_array())
        .and_then(|ps| {
            ps.iter().find_map(|p| {
                (p.get("name")?.as_str()? == name)
                    .then(|| p.get("version")?.as_str().map(str::to_string))?
            })
        })
        .ok_or_else(|| {
            anyhow!(
                "{} has no `{name}`: is the program a dsu program?",
                lock.display()
            )
        })
}
