//! The Cargo.lock a generated crate is built with. A patch is loaded into the running
//! process, so it must use the dependency versions that process was built with: the lock
//! given (`--base-lock`, watch's), else OLD's own, else the one the update that brought the
//! process to OLD was built with (in a streak v1 -> v2 -> v3, v2 may never have been built on
//! its own), else OLD's dependencies resolved the way cargo resolves them, in a copy of OLD
//! under `target/dsu/lock/` (never in the user's tree). A hand-off is NEW's program: NEW's
//! own lock when it has one, else the same choice.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::crate_dir::{copy_tree, patch_manifest};
use super::plan::Crate;
use crate::cargo::cargo;
use crate::patch::build::{lock_work_dir, Artifact};

/// Where the Cargo.lock of a build comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOrigin {
    /// Given by the caller (`PatchOptions::base_lock`).
    Given,
    /// OLD's own Cargo.lock.
    Old,
    /// The lock of the update (patch or hand-off) that was built to bring a process to OLD.
    PreviousUpdate,
    /// Resolved from OLD's dependencies (OLD has no Cargo.lock and no update built it).
    Resolved,
    /// NEW's own Cargo.lock (a hand-off).
    New,
}

/// The Cargo.lock a build uses, and why.
#[derive(Clone, Debug)]
pub struct UsedLock {
    pub path: PathBuf,
    pub origin: LockOrigin,
}

impl UsedLock {
    /// For the status line: `PATH (OLD's own)`.
    pub fn describe(&self) -> String {
        let why = match self.origin {
            LockOrigin::Given => "as given",
            LockOrigin::Old => "the base's own",
            LockOrigin::PreviousUpdate => "the one the update to the base was built with",
            LockOrigin::Resolved => "resolved from the base's dependencies: it has no Cargo.lock",
            LockOrigin::New => "the new version's own, for a hand-off",
        };
        format!("{} ({why})", self.path.display())
    }
}

/// Chooses (and, if need be, resolves) the Cargo.lock to build with (see the module doc).
pub(in crate::patch) fn choose(
    given: Option<&Path>,
    old: &Crate,
    new: &Crate,
    target_dir: &Path,
    in_place: bool,
    waiting: &mut dyn FnMut(&Path),
) -> Result<UsedLock> {
    let found = |path: PathBuf, origin| path.is_file().then_some(UsedLock { path, origin });
    let new_lock = new.meta.workspace_root.as_std_path().join("Cargo.lock");
    if let Some(l) = found(new_lock, LockOrigin::New).filter(|_| !in_place) {
        return Ok(l);
    }
    if let Some(given) = given {
        return found(given.to_path_buf(), LockOrigin::Given)
            .with_context(|| format!("no Cargo.lock at {}", given.display()));
    }
    let own = old.meta.workspace_root.as_std_path().join("Cargo.lock");
    if let Some(l) = found(own, LockOrigin::Old) {
        return Ok(l);
    }
    if let Some(l) = previous_update(old, target_dir) {
        return Ok(l);
    }
    Ok(UsedLock {
        path: resolve(old, target_dir, waiting)?,
        origin: LockOrigin::Resolved,
    })
}

/// The Cargo.lock of the newest update built to OLD's version in `target_dir/dsu/`
/// (`NAME-FROM-to-OLD[-handoff]/Cargo.lock`).
fn previous_update(old: &Crate, target_dir: &Path) -> Option<UsedLock> {
    let prefix = format!("{}-", old.pkg.name);
    let to = format!("-to-{}", old.pkg.version);
    std::fs::read_dir(target_dir.join("dsu"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix("-handoff").unwrap_or(&name).to_string();
            name.starts_with(&prefix) && name.ends_with(&to)
        })
        .map(|e| e.path().join("Cargo.lock"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, path)| UsedLock {
            path,
            origin: LockOrigin::PreviousUpdate,
        })
}

/// Resolves OLD's dependencies as `cargo generate-lockfile` does, in a copy of OLD under
/// `target_dir/dsu/lock/` (its path dependencies made absolute); returns the lock.
fn resolve(old: &Crate, target_dir: &Path, waiting: &mut dyn FnMut(&Path)) -> Result<PathBuf> {
    let dir = target_dir
        .join("dsu")
        .join("lock")
        .join(format!("{}-{}", old.pkg.name, old.pkg.version));
    let _lock = lock_work_dir(&dir, waiting)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    copy_tree(&old.dir, &dir, target_dir)?;
    let root_rel = old.root.strip_prefix(&old.dir).unwrap_or(&old.root);
    std::fs::write(
        dir.join("Cargo.toml"),
        patch_manifest(old, old, root_rel, &Artifact::Patch)?,
    )?;
    let manifest = dir.join("Cargo.toml");
    let out = Command::new(cargo())
        .arg("generate-lockfile")
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .context("cannot run `cargo generate-lockfile`")?;
    if !out.status.success() {
        bail!(
            "cannot resolve the dependencies of the base (it has no Cargo.lock), with `cargo \
             generate-lockfile` in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dir.join("Cargo.lock"))
}
