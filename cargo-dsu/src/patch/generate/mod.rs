//! Generation: the patch crate (or the hand-off crate) for OLD -> NEW, a transformed copy of
//! NEW under `target/dsu/`. [`generate_reporting`] is the sequence: read both versions, plan
//! what the patch carries (`plan`), write the `old` modules and transfers (`old_module`) and
//! the crate-wide edits (`splice`) into NEW's text, and lay the crate out on disk
//! (`crate_dir`). Uses the build (for the work directory's lock and the toolchain) and the
//! packaging (for the manifest) beside it, `source` and `transfer` below.

mod crate_dir;
mod lock;
mod old_module;
mod plan;
mod splice;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dsu::package::Manifest;
use dsu::Engine;

use super::build::{lock_work_dir, rustc_version, Artifact};
use super::options::PatchOptions;
use super::package;
use crate::source;
pub use lock::{LockOrigin, UsedLock};

/// A generated (not yet built) patch or hand-off crate.
pub struct Generated {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub target_dir: PathBuf,
    pub release: bool,
    pub artifact: Artifact,
    /// Build with the rustup proxies in `dir`, which holds NEW's toolchain pin (a hand-off of
    /// a program that pins its toolchain is built by that toolchain).
    pub pinned: bool,
    /// The `old` modules and generated transfers, formatted (`--emit transfer`).
    pub transfer_src: String,
    /// Every transformed source file, relative to the patch crate (`--emit patch-src`).
    pub files: Vec<(PathBuf, String)>,
    /// Held until the artifact is read: the exclusive lock on `dir` (see `lock_work_dir`).
    pub(in crate::patch) lock: std::fs::File,
    /// The Cargo.lock it is built with, and why that one.
    pub cargo_lock: UsedLock,
}

/// Generates the patch crate (or, for `Engine::Handoff`, the hand-off crate) for OLD -> NEW.
pub fn generate(opts: &PatchOptions) -> Result<Generated> {
    generate_reporting(opts, &mut |_| {})
}

/// `generate`, calling `waiting` with the work directory when another `cargo dsu` is building
/// the same pair there and this one has to wait for it.
pub fn generate_reporting(
    opts: &PatchOptions,
    waiting: &mut dyn FnMut(&Path),
) -> Result<Generated> {
    let old = plan::load_crate(&opts.old)?;
    let new = plan::load_crate(&opts.new)?;
    let artifact = match (opts.engine, &new.bin) {
        (Engine::InPlace, _) => Artifact::Patch,
        // The binary is named after both versions, not like NEW's: cargo copies a binary to
        // `target/<profile>/<name>`, where it would replace the base's own executable (the one
        // the running process was started from). The package name, which the program sees as
        // `CARGO_PKG_NAME`, stays NEW's.
        (Engine::Handoff, Some(_)) => Artifact::Executable(
            format!(
                "dsu-handoff-{}-{}-to-{}",
                new.pkg.name, old.pkg.version, new.pkg.version
            )
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        ),
        (Engine::Handoff, None) => bail!(
            "a hand-off starts the new version's executable, but package `{}` has no binary \
             target; give it a `[[bin]]` (or src/main.rs)",
            new.pkg.name
        ),
    };
    let src_old = source::load_crate(&old.dir, &old.root)?;
    let src_new = source::load_crate(&new.dir, &new.root)?;
    let plan = plan::plan(&src_old, &src_new)?;
    let (mut edits, transfer_src) = old_module::old_modules(&plan, &old.pkg, &src_new)?;
    let in_place = artifact == Artifact::Patch;
    splice::whole_crate_edits(&src_new, &mut edits, in_place);

    // Write the crate.
    let target_dir = opts
        .target_dir
        .clone()
        .unwrap_or_else(|| old.meta.target_directory.as_std_path().to_path_buf());
    let dir = target_dir.join("dsu").join(format!(
        "{}-{}-to-{}{}",
        new.pkg.name,
        old.pkg.version,
        new.pkg.version,
        if in_place { "" } else { "-handoff" }
    ));
    let work_lock = lock_work_dir(&dir, waiting)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    let files = crate_dir::write_sources(&new, &src_new, edits, &dir, &target_dir)?;
    crate_dir::write_manifest(&old, &new, &dir, &artifact)?;
    let lock = lock::choose(
        opts.base_lock.as_deref(),
        &old,
        &new,
        &target_dir,
        in_place,
        waiting,
    )?;
    crate_dir::copy_lock(&lock.path, &dir)?;
    crate_dir::copy_cargo_config(if in_place { &old.dir } else { &new.dir }, &dir)?;
    let pinned = !in_place && crate_dir::copy_pin(&new, &dir)?;

    let (rustc, target) = rustc_version(pinned.then_some(dir.as_path()))?;
    let manifest = package::manifest(
        &new.pkg.name,
        &old.pkg.version.to_string(),
        &new.pkg.version.to_string(),
        (rustc, target),
        &dir.join("Cargo.lock"),
        opts,
        plan.base,
    )?;
    Ok(Generated {
        dir,
        manifest,
        target_dir,
        release: opts.release,
        artifact,
        pinned,
        transfer_src,
        files,
        lock: work_lock,
        cargo_lock: lock,
    })
}
