//! What to build: the options of a patch or hand-off build.

use std::path::PathBuf;

use dsu::Engine;

/// What to build.
#[derive(Clone, Debug)]
pub struct PatchOptions {
    /// The running version: a package directory or its `Cargo.toml`.
    pub old: PathBuf,
    /// The new version.
    pub new: PathBuf,
    /// Build with `--release` (must match how the base was built).
    pub release: bool,
    /// Where to build; default: the base's target directory.
    pub target_dir: Option<PathBuf>,
    /// Prepare-to-die timeout written into the manifest.
    pub timeout_ms: u64,
    /// The Cargo.lock of the running build; default: OLD's, else the one the update to OLD
    /// was built with, else OLD's dependencies resolved (see `UsedLock`). In a chain of
    /// updates (v1 -> v2 -> v3) the process still runs v1's dependencies, so every patch is
    /// built against v1's lock. A hand-off uses NEW's own Cargo.lock when it has one (the new
    /// process may run other dependency versions), else this one.
    pub base_lock: Option<PathBuf>,
    /// What to build: a patch library (in place) or the new executable (hand-off).
    pub engine: Engine,
}

impl PatchOptions {
    pub fn new(old: impl Into<PathBuf>, new: impl Into<PathBuf>) -> Self {
        PatchOptions {
            old: old.into(),
            new: new.into(),
            release: false,
            target_dir: None,
            timeout_ms: 5_000,
            base_lock: None,
            engine: Engine::InPlace,
        }
    }
}
