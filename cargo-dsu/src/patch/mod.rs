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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let artifact = compile(&g, progress, None)?;
    pack(g, artifact)
}

/// Where a build's time went (`cargo dsu watch --timings`).
#[derive(Clone, Copy, Debug)]
pub struct BuildTimings {
    /// cargo's run, start to end: its check of the dependencies, rustc, and the link.
    pub cargo: Duration,
    /// Of it, the linker's own time, from lld's time trace; `None` when the linker is not lld
    /// (it refused the flag, and the build ran again without it).
    pub link: Option<Duration>,
    /// Reading the library and packing it with its manifest.
    pub pack: Duration,
}

/// [`build_generated`], measuring where the time goes.
pub fn build_generated_timed(
    g: Generated,
    progress: &mut dyn FnMut(&str),
) -> Result<(Built, BuildTimings)> {
    let trace = g.dir.join("link-time-trace.json");
    let _ = std::fs::remove_file(&trace);
    let t0 = Instant::now();
    let compiled = compile(&g, progress, Some(&trace));
    let (artifact, link) = match compiled {
        Ok(a) => {
            let link = link_time(&trace);
            (a, link)
        }
        // Another linker: measure without the link's share.
        Err(e) if format!("{e:#}").contains("time-trace") => {
            let a = compile(&g, progress, None)?;
            (a, None)
        }
        Err(e) => return Err(e),
    };
    let cargo = t0.elapsed();
    let t1 = Instant::now();
    let built = pack(g, artifact)?;
    Ok((
        built,
        BuildTimings {
            cargo,
            link,
            pack: t1.elapsed(),
        },
    ))
}

/// The link's duration in an lld time trace (Chrome's trace format, microseconds).
fn link_time(trace: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(trace).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let events = v.get("traceEvents")?.as_array()?;
    ["Total ExecuteLinker", "Total Link"]
        .iter()
        .find_map(|name| {
            events
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name))
                .and_then(|e| e.get("dur")?.as_f64())
                .map(|us| Duration::from_secs_f64(us / 1e6))
        })
}

/// Builds the generated crate (see [`build::compile`]).
fn compile(
    g: &Generated,
    progress: &mut dyn FnMut(&str),
    link_trace: Option<&Path>,
) -> Result<PathBuf> {
    build::compile(
        &g.dir,
        &g.target_dir,
        g.release,
        &g.artifact,
        g.pinned,
        progress,
        link_trace,
    )
}

/// Reads the built artifact and packs it with the manifest.
fn pack(g: Generated, artifact: PathBuf) -> Result<Built> {
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
