//! Load: the patch library's build facts are read from its bytes and checked against this
//! process (format, dsu-rt, rustc, target, debug assertions, shared dependencies; `facts.rs`)
//! before any of its code runs; then it is opened from a path of its own, its root checked
//! again (and the dependency builds, which need it opened), its `adopt` called with the host's
//! context and its descriptors read. A library is
//! never unloaded (DESIGN.md says why).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use abi_stable::library::lib_header_from_path;

use crate::abi::alloc::{ForwardAlloc, HostAlloc, HOST_ALLOC};
use crate::abi::build;
use crate::abi::root::{PatchDescriptors, PatchRootRef, PATCH_FORMAT};
use crate::abi::shared;
use crate::abi::trace::{self, WithDispatch};
use crate::call::thread::{self, ThreadInfo};
use crate::package::{Manifest, Package};

/// What the host hands a patch at load: the process's shared registries (`abi/shared.rs`),
/// its thread-local call tracking, its allocator, its logger and its tracing dispatcher.
pub struct HostContext {
    shared: *const (),
    thread_current: fn() -> *const ThreadInfo,
    alloc: &'static HostAlloc,
    logger: &'static dyn log::Log,
    max_level: log::LevelFilter,
    with_dispatch: WithDispatch,
}

impl HostContext {
    fn of_this_process() -> HostContext {
        HostContext {
            shared: shared::host_table(),
            thread_current: thread::host_current,
            alloc: &HOST_ALLOC,
            logger: log::logger(),
            max_level: log::max_level(),
            with_dispatch: trace::host_with_dispatch,
        }
    }
}

/// Runs inside the patch (its copy of this crate): adopts the host's context.
///
/// # Safety
/// `host` must point to a live [`HostContext`] built by a copy of this crate of the same
/// version, by the same rustc for the same target (the loader checks before calling).
pub unsafe fn adopt(host: *const (), alloc: &ForwardAlloc) {
    // SAFETY: caller's contract.
    let host = unsafe { &*(host as *const HostContext) };
    alloc.adopt(host.alloc);
    thread::FORWARD.store(host.thread_current as *mut (), Ordering::Relaxed);
    // SAFETY: the table is the host's, of this crate's version (caller's contract), and nothing
    // of the patch has run yet, so none of its `Shared` statics is resolved.
    unsafe { shared::adopt(host.shared) };
    if !build::SHARED_DEPENDENCIES {
        // The patch's copies of `log` and tracing-core have their own (empty) logger and
        // dispatcher: point them at the host's. (With the shared library they are the host's.)
        let _ = log::set_logger(host.logger);
        log::set_max_level(host.max_level);
        trace::adopt(host.with_dispatch);
    }
}

/// A loaded, adopted patch.
pub(crate) struct Loaded {
    pub(crate) descriptors: &'static PatchDescriptors,
}

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a dsu patch, or built against an incompatible dsu-rt: {0}")]
    Root(String),
    #[error("the patch was built {what} `{patch}`, this process {what} `{host}`; rebuild the patch with the base's toolchain")]
    Mismatch {
        what: &'static str,
        patch: String,
        host: String,
    },
    #[error("the patch needs a symbol of `{krate}` that this process does not have: it was built against another build of `{krate}` (another version or feature set, or other rustflags), which this process shares with its patches; build the patch against the base's Cargo.lock, features and .cargo/config.toml, or update by hand-off ({error})")]
    MissingSymbol { krate: String, error: String },
    #[error("{}", shared_message(*patch))]
    Shared { patch: bool },
    #[error("the patch was built against another build of {0} than this process (another version or feature set): the two would read each other's values with different layouts; build the patch against the base's Cargo.lock and the same dependency features, or update by hand-off")]
    DependencyBuild(String),
}

fn shared_message(patch: bool) -> String {
    let (with, without) = if patch {
        ("the patch", "this process")
    } else {
        ("this process", "the patch")
    };
    format!(
        "{with} links tokio, tracing and log from the shared library (dsu's `shared` feature) and {without} has copies of its own: build both with the same `dsu` features"
    )
}

/// The crate of the first undefined Rust symbol a loader error names: a patch linked against
/// a shared library (dsu-shared) that this process has in another build needs symbols the
/// process's copy does not define (a symbol's name carries its crate's build). Legacy mangling
/// (`_ZN5tokio4sync…17h…E`) names the crate first; v0 (`_RNv…5tokio…`) is read the same way.
fn missing_crate(error: &str) -> Option<String> {
    let sym = error.split("undefined symbol: ").nth(1)?;
    let sym = sym.split(|c: char| c.is_whitespace() || c == ',').next()?;
    let rest = sym.strip_prefix("_ZN").or_else(|| {
        sym.strip_prefix("_R")
            .map(|r| r.trim_start_matches(|c: char| !c.is_ascii_digit()))
    })?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let len: usize = digits.parse().ok()?;
    let mut name = rest.get(digits.len()..digits.len() + len)?;
    // A trait impl's path begins `<Type as Trait>`: `_$LT$tokio..task..Task$u20$as$u20$...`,
    // with `$RF$` (`&`), `$BP$` (`*`) or `$u5b$` (`[`) before the type's own path.
    name = name.trim_start_matches('_');
    while let Some(r) = ["$LT$", "$RF$", "$BP$", "$u5b$"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
    {
        name = r;
    }
    let krate: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!krate.is_empty() && !krate.starts_with(|c: char| c.is_ascii_digit())).then_some(krate)
}

/// The crates whose build differs between two `dependency_builds` strings.
fn differing_builds(patch: &str, host: &str) -> Vec<String> {
    let of = |s: &str| -> Vec<(String, String)> {
        s.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let host = of(host);
    of(patch)
        .into_iter()
        .filter(|(k, v)| host.iter().find(|(hk, _)| hk == k).map(|(_, hv)| hv) != Some(v))
        .map(|(k, _)| format!("`{k}`"))
        .collect()
}

/// abi_stable's errors span several indented lines; a refusal reason is one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens the library at `path` (a path no other library was loaded from), checks its root and
/// adopts the host's context. The library is never unloaded.
fn load(path: &Path) -> Result<Loaded, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| {
        let e = one_line(&e);
        match missing_crate(&e) {
            Some(krate) => LoadError::MissingSymbol { krate, error: e },
            None => LoadError::Root(e),
        }
    })?;
    let root = header
        .init_root_module::<PatchRootRef>()
        .map_err(|e| LoadError::Root(one_line(&e)))?;
    let checks: [(&'static str, String, String); 5] = [
        (
            "with patch format",
            root.format().to_string(),
            PATCH_FORMAT.to_string(),
        ),
        (
            "against dsu-rt",
            root.dsu_rt().to_string(),
            build::DSU_RT.to_string(),
        ),
        (
            "with rustc",
            root.rustc().to_string(),
            build::RUSTC.to_string(),
        ),
        (
            "for target",
            root.target().to_string(),
            build::TARGET.to_string(),
        ),
        (
            "with debug assertions",
            root.debug_assertions().to_string(),
            build::DEBUG_ASSERTIONS.to_string(),
        ),
    ];
    for (what, patch, host) in checks {
        if patch != host {
            return Err(LoadError::Mismatch { what, patch, host });
        }
    }
    if root.shared_dependencies() != build::SHARED_DEPENDENCIES {
        return Err(LoadError::Shared {
            patch: root.shared_dependencies(),
        });
    }
    let host_builds = build::dependency_builds();
    let differ = differing_builds(root.dependency_builds().as_str(), &host_builds);
    if !differ.is_empty() {
        return Err(LoadError::DependencyBuild(differ.join(", ")));
    }
    let host = Box::leak(Box::new(HostContext::of_this_process()));
    // SAFETY: the toolchain and runtime version match (checked above), so the patch's copy of
    // `HostContext` has this layout; the context lives for the rest of the process.
    unsafe { (root.adopt())(host as *const HostContext as *const ()) };
    let d = (root.descriptors())() as *const PatchDescriptors;
    // SAFETY: `descriptors` returns a leaked `PatchDescriptors` built by the same compiler and
    // runtime version (checked above).
    let descriptors = unsafe { &*d };
    Ok(Loaded { descriptors })
}

/// A validated, loaded package.
pub(crate) struct LoadedPatch {
    pub(crate) manifest: Manifest,
    pub(crate) descriptors: &'static PatchDescriptors,
}

/// Writes the package's library to a path of its own in `dir`, loads it, checks its root and
/// adopts the host's context (the manifest was validated before).
pub(crate) fn load_patch(pkg: Package, id: u64, dir: &Path) -> Result<LoadedPatch, String> {
    // dlopen hands back the library it already has for a path it has seen, so every patch
    // gets a path of its own.
    // Checks before code: the library's build facts, from its bytes, before it is opened.
    match super::facts::check(&pkg.library) {
        Ok(()) => {}
        Err(super::facts::FactsError::Missing(why)) => {
            return Err(LoadError::Root(format!(
                "its library carries no dsu facts: {why}; it was not built by cargo-dsu for \
                 this dsu-rt, or was altered. Rebuild it with `cargo dsu diff`"
            ))
            .to_string())
        }
        Err(super::facts::FactsError::Mismatch("with shared dependencies", patch, _)) => {
            return Err(LoadError::Shared {
                patch: patch == "true",
            }
            .to_string())
        }
        Err(super::facts::FactsError::Mismatch(what, patch, host)) => {
            return Err(LoadError::Mismatch { what, patch, host }.to_string())
        }
    }
    let path = dir.join(format!("patch-{id}-{}.so", sanitize(&pkg.manifest.to)));
    std::fs::write(&path, &pkg.library)
        .map_err(|e| format!("cannot write the patch library to {}: {e}", path.display()))?;
    let loaded = load(&path).map_err(|e| {
        // Nothing will ever run from this file; a library that did get mapped stays mapped.
        let _ = std::fs::remove_file(&path);
        e.to_string()
    })?;
    Ok(LoadedPatch {
        manifest: pkg.manifest,
        descriptors: loaded.descriptors,
    })
}

/// Writes a package's payload to a file of its own in `dir` (a hand-off's executable).
pub(crate) fn write_payload(
    dir: &Path,
    pkg: &Package,
    id: u64,
    kind: &str,
    mode: u32,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{kind}-{id}-{}", sanitize(&pkg.manifest.to)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, &pkg.library)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The directory patches (and hand-off executables) are written to, created if needed: the
/// configured one, or `$TMPDIR/dsu-PID`.
pub(crate) fn patch_dir(configured: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = configured.unwrap_or_else(|| {
        let tmp = std::env::temp_dir();
        sweep_stale_patch_dirs(&tmp);
        tmp.join(format!("dsu-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the patch directory {}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// Removes the default patch directories (`$TMPDIR/dsu-PID`) of processes that have ended.
///
/// A process keeps its patch libraries on disk while it runs (a backtrace through patched
/// code reads them), and never knows when it is killed; so each process that loads a patch
/// sweeps the directories its dead predecessors left. Only directories named `dsu-PID` whose
/// process is gone are touched, only `patch-*.so` files are removed from them, and a directory
/// with anything else in it is left alone.
pub(crate) fn sweep_stale_patch_dirs(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dsu-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let n = f.file_name();
            let n = n.to_string_lossy();
            // Patch libraries, and the executables of hand-offs (a process started by one moves
            // its executable into its own directory, so these are only failed ones').
            if (n.starts_with("patch-") && n.ends_with(".so")) || n.starts_with("handoff-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        // Fails, and leaves the directory, if anything else is in it.
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_undefined_symbol_names_its_crate() {
        let e = "/tmp/dsu-1/patch-1-2.0.0.so: undefined symbol: _ZN5tokio4sync9semaphore9Semaphore3new17h0123456789abcdefE";
        assert_eq!(super::missing_crate(e).as_deref(), Some("tokio"));
        let e = "x.so: undefined symbol: _ZN12tracing_core10dispatcher11get_default17habcE";
        assert_eq!(super::missing_crate(e).as_deref(), Some("tracing_core"));
        // A trait impl: `<tokio::runtime::task::Task<S> as core::ops::drop::Drop>::drop`.
        let e = "x.so: undefined symbol: _ZN77_$LT$tokio..runtime..task..Task$LT$S$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17ha3b21071dd4ac48fE";
        assert_eq!(super::missing_crate(e).as_deref(), Some("tokio"));
        // `<&tracing::Span as core::fmt::Debug>::fmt`
        let e = "x.so: undefined symbol: _ZN53_$LT$$RF$tracing..span..Span$u20$as$u20$core..fmt..Debug$GT$3fmt17h0123456789abcdefE";
        assert_eq!(super::missing_crate(e).as_deref(), Some("tracing"));
        assert_eq!(
            super::missing_crate("x.so: cannot open shared object file"),
            None
        );
    }

    #[test]
    fn builds_that_differ_are_named() {
        let host = "tokio=01 tracing-core=02 log=03";
        assert!(super::differing_builds(host, host).is_empty());
        assert_eq!(
            super::differing_builds("tokio=09 tracing-core=02 log=03", host),
            ["`tokio`"]
        );
    }

    use super::*;

    #[test]
    fn patch_files_get_paths_of_their_own() {
        assert_eq!(sanitize("2.0.0-rc/1 x"), "2.0.0-rc_1_x");
    }

    #[test]
    fn patch_dirs_of_ended_processes_are_swept_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let mk = |name: &str, files: &[&str]| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            for f in files {
                std::fs::write(d.join(f), b"x").unwrap();
            }
            d
        };
        let stale = mk(&format!("dsu-{dead}"), &["patch-1-v2.so", "patch-2-v3.so"]);
        let mine = mk(&format!("dsu-{}", std::process::id()), &["patch-1-v2.so"]);
        let foreign = mk("dsu-notapid", &["patch-1-v2.so"]);
        let kept = mk(
            &format!("dsu-{}", dead + 1_000_000),
            &["patch-1-v2.so", "notes.txt"],
        );
        sweep_stale_patch_dirs(tmp.path());
        assert!(!stale.exists(), "a dead process's patches are removed");
        assert!(
            mine.join("patch-1-v2.so").exists(),
            "this process's are kept"
        );
        assert!(
            foreign.join("patch-1-v2.so").exists(),
            "not a dsu-PID directory"
        );
        assert!(
            kept.join("notes.txt").exists(),
            "only patch libraries are removed"
        );
        assert!(!kept.join("patch-1-v2.so").exists());
    }
}
