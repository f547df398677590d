//! Source-to-source patch generation and build, for both engines.
//!
//! The generated crate is a transformed copy of NEW under `target/dsu/`: every module with
//! changed state types gets an `old` module with the base's definitions and the generated
//! transfers. Then, by engine:
//!
//! - in place: the crate root gets the patch root (`::dsu::__private::patch_root!{}`, which
//!   also declares the forwarding global allocator, so a user `#[global_allocator]` is demoted
//!   to a plain static). It is built as a cdylib with `--cfg dsu_patch`, the base's Cargo.lock
//!   and profile;
//! - hand-off: the crate is NEW's program as it is (its `main`, its allocator), built as NEW's
//!   binary with `--cfg dsu_patch` (so the transfers are compiled in), NEW's Cargo.lock and
//!   profile, and NEW's toolchain pin when it has one.
//!
//! Either is built into the base's target directory and packed with its manifest into one
//! `.dsu` file.
//!
//! The layer, by stage: `generate` (the crate), `build` (cargo, the work directory's lock,
//! the toolchain), `package` (the manifest and the `.dsu` file); `options` says what to
//! build. It may use the analysis, `source`, `transfer` and `cargo` below it, never the
//! commands above it.

mod build;
mod generate;
mod options;
pub mod package;

use anyhow::{Context, Result};
use dsu::package::Package;

pub use build::Artifact;
pub use generate::{generate, generate_reporting, Generated, LockOrigin, UsedLock};
pub use options::PatchOptions;
pub use package::Built;

/// Generates, builds and packs the patch.
pub fn build(opts: &PatchOptions) -> Result<Built> {
    let g = generate(opts)?;
    build_generated(g, &mut |_| {})
}

/// Builds and packs a generated crate; `progress` sees the name of every crate cargo compiles.
pub fn build_generated(g: Generated, progress: &mut dyn FnMut(&str)) -> Result<Built> {
    let artifact = build::compile(
        &g.dir,
        &g.target_dir,
        g.release,
        &g.artifact,
        g.pinned,
        progress,
    )?;
    let bytes =
        std::fs::read(&artifact).with_context(|| format!("cannot read {}", artifact.display()))?;
    // The artifact is read: another run of the same pair may now rewrite the work directory.
    drop(g.lock);
    Ok(Built {
        package: Package::new(g.manifest, bytes),
        crate_dir: g.dir,
        artifact,
    })
}
