//! Packaging: the manifest of a live update package (what it updates, for which build, what
//! changed and under which constraints) and the `.dsu` file that carries it with the built
//! artifact. Uses the analysis (for what changed) and `cargo` (for the locked dsu-rt).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dsu::package::{BaseComponent, Manifest, Package};
use dsu::signing::SecretKey;

use super::options::PatchOptions;
use crate::analysis::Analysis;
use crate::cargo::locked_version;

/// A built package.
pub struct Built {
    pub package: Package,
    pub crate_dir: PathBuf,
    /// The built patch library or executable (the package's payload).
    pub artifact: PathBuf,
}

/// The manifest of a package of `program` `from` -> `to`, built by `rustc` (release, host
/// triple) with the Cargo.lock `lock`, for a base with the components `base`.
pub(in crate::patch) fn manifest(
    program: &str,
    from: &str,
    to: &str,
    (rustc, target): (String, String),
    lock: &Path,
    opts: &PatchOptions,
    base: Vec<BaseComponent>,
) -> Result<Manifest> {
    let mut manifest = Manifest::for_this_toolchain(program, from, to);
    manifest.rustc = rustc;
    manifest.target = target;
    manifest.dsu_rt = locked_version(lock, "dsu-rt")?;
    manifest.debug_assertions = !opts.release;
    manifest.base = base;
    manifest.timeout_ms = opts.timeout_ms;
    manifest.engine = opts.engine;
    Ok(manifest)
}

/// Writes what the analysis found into the manifest: the changes, the constraints and why the
/// engine was chosen.
pub fn describe(manifest: &mut Manifest, a: &Analysis) {
    manifest.changes = a.manifest_changes();
    manifest.constraints = dsu::Constraints {
        components: a.constraints.components.clone(),
        protocols_idle: a.constraints.protocols_idle.clone(),
        park_threads: a.constraints.park_threads,
    };
    manifest.engine_reasons = a.plan.reasons.clone();
}

/// Writes the package to `out` (creating its directory), signed with `key` if given.
pub fn write(package: &Package, out: &Path, key: Option<&SecretKey>) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match key {
        Some(key) => package.write_signed(out, key),
        None => package.write(out),
    }
    .with_context(|| format!("cannot write the package to {}", out.display()))
}
