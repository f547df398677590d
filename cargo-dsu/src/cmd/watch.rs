//! `cargo dsu watch`: every save becomes a live patch of the running process.
//!
//! At start, the package's source is taken as what the process runs (snapshot `base`). On
//! every change, the source is snapshotted again (`candidate`), analysed against `base`, built
//! against the running build's Cargo.lock, and applied. When the process commits the update,
//! `candidate` becomes `base`; otherwise the error is shown and the process keeps running the
//! last good version.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dsu::control::{request, Request};
use dsu::Outcome;
use notify::{RecursiveMode, Watcher};

use crate::analysis;
use crate::baseline::snapshot;
use crate::exit;
use crate::patch::{self, package, PatchOptions};
use crate::report;
use crate::shell::Shell;

pub(crate) fn watch(
    shell: &Shell,
    socket: Option<PathBuf>,
    manifest_path: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    max_updates: Option<u32>,
    timings: bool,
) -> Result<i32> {
    let pkg = manifest_path.unwrap_or(std::env::current_dir()?);
    let current = analysis::load_version(&pkg)?;
    let socket = socket.unwrap_or_else(|| current.dir.join(format!("{}.sock", current.name)));
    let target = target_dir.unwrap_or_else(|| current.target_dir.clone());
    let lock = current.lock.clone().ok_or_else(|| {
        anyhow!(
            "{} has no Cargo.lock: build and start the program first",
            current.dir.display()
        )
    })?;
    let status = request(&socket, &Request::Status)
        .with_context(|| format!("`cargo dsu watch` updates a running process: start it with its control socket at {}", socket.display()))?
        .status
        .ok_or_else(|| anyhow!("the process did not report its status"))?;
    let work = target.join("dsu").join("watch").join(&current.name);
    let base = work.join("base");
    let candidate = work.join("candidate");
    snapshot(&current.dir, &base)?;

    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(ev);
            }
        }
    })
    .context("cannot watch the file system")?;
    watcher.watch(&current.dir.join("src"), RecursiveMode::Recursive)?;
    watcher.watch(&current.dir.join("Cargo.toml"), RecursiveMode::NonRecursive)?;
    // Only now: a save from here on is seen.
    shell.status(
        "Watching",
        format!(
            "{} for changes; process {} {} (pid {}) at {}",
            current.dir.display(),
            status.program,
            status.version,
            status.pid,
            socket.display()
        ),
    );

    let mut applied = 0u32;
    let mut attempt = 0u32;
    loop {
        // A change, then quiet for a moment (editors write files in several steps).
        if rx.recv().is_err() {
            return Ok(exit::SUCCESS);
        }
        let saved_at = Instant::now();
        while rx.recv_timeout(DEBOUNCE).is_ok() {}
        let quiet = saved_at.elapsed();
        attempt += 1;
        let mut t = Timings::default();
        match one_update(
            shell,
            &current.dir,
            &base,
            &candidate,
            &lock,
            &target,
            &socket,
            attempt,
            &mut t,
        ) {
            Ok(true) => {
                snapshot(&candidate, &base)?;
                applied += 1;
                shell.status(
                    "Live",
                    format!("in {:.2}s from the save", saved_at.elapsed().as_secs_f64()),
                );
                if timings {
                    shell.status("Timings", t.line(quiet, saved_at.elapsed()));
                }
                if max_updates.is_some_and(|m| applied >= m) {
                    return Ok(exit::SUCCESS);
                }
            }
            Ok(false) => shell.note(
                "Waiting",
                "for the next change; the process runs the last good version",
            ),
            Err(e) => {
                shell.error(format!("{e:#}"));
                shell.note(
                    "Waiting",
                    "for the next change; the process runs the last good version",
                );
            }
        }
    }
}

/// How long the sources must stay quiet after a change before the build starts: an editor
/// writes a file in several steps (a temporary file, a rename, a chmod), within a few
/// milliseconds of each other.
const DEBOUNCE: Duration = Duration::from_millis(40);

/// Where one update's time went, from the first file event on (`--timings`).
#[derive(Default)]
struct Timings {
    /// Snapshot of the sources and the analysis against the running version.
    analysis: Duration,
    /// Writing the patch crate (the `old` modules, the transfers).
    generate: Duration,
    build: Option<patch::BuildTimings>,
    /// Writing the `.dsu` file.
    write: Duration,
    /// The apply request, from sending it to the reply.
    request: Duration,
    /// The process's own record: checking and loading the library, then the update.
    load_ms: f64,
    apply_ms: f64,
    pause_ms: f64,
}

impl Timings {
    fn line(&self, quiet: Duration, total: Duration) -> String {
        let s = |d: Duration| format!("{:.3}s", d.as_secs_f64());
        let mut parts = vec![
            format!("quiet wait {}", s(quiet)),
            format!("analysis {}", s(self.analysis)),
            format!("generate {}", s(self.generate)),
        ];
        if let Some(b) = &self.build {
            match b.link {
                Some(link) => {
                    parts.push(format!("cargo+rustc {}", s(b.cargo.saturating_sub(link))));
                    parts.push(format!("link {}", s(link)));
                }
                None => parts.push(format!(
                    "cargo+rustc+link {} (the linker is not lld: no split)",
                    s(b.cargo)
                )),
            }
            parts.push(format!("pack {}", s(b.pack + self.write)));
        }
        let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
        let elsewhere = self
            .request
            .saturating_sub(ms(self.load_ms) + ms(self.apply_ms));
        parts.push(format!("load {}", s(ms(self.load_ms))));
        parts.push(format!(
            "apply {} (pause {:.3} ms)",
            s(ms(self.apply_ms)),
            self.pause_ms
        ));
        parts.push(format!("request {}", s(elsewhere)));
        format!("{}; total {}", parts.join(", "), s(total))
    }
}

/// Builds and applies one update; `Ok(true)` when the process committed it.
#[allow(clippy::too_many_arguments)]
fn one_update(
    shell: &Shell,
    dir: &Path,
    base: &Path,
    candidate: &Path,
    lock: &Path,
    target: &Path,
    socket: &Path,
    attempt: u32,
    t: &mut Timings,
) -> Result<bool> {
    let t0 = Instant::now();
    snapshot(dir, candidate)?;
    let old = analysis::load_version(base)?;
    let new = analysis::load_version(candidate)?;
    let mut a = analysis::analyze(&old, &new)?;
    if a.changes.is_empty() {
        return Ok(false);
    }
    // Development patches are applied in place: a hand-off would restart the program.
    a.choose_engine(Some(dsu::Engine::InPlace));
    if a.refused() {
        shell.out(&report::human(&a));
        shell.error(if a.handoff_possible() {
            "this change cannot be applied in place, and watch applies only in place: restart \
             the program, or build a hand-off with `cargo dsu diff`"
        } else {
            "this change cannot be applied to the running process"
        });
        return Ok(false);
    }
    t.analysis = t0.elapsed();
    shell.status("Compiling", format!("patch #{attempt}"));
    let mut opts = PatchOptions::new(base, candidate);
    opts.target_dir = Some(target.to_path_buf());
    opts.base_lock = Some(lock.to_path_buf());
    opts.timeout_ms = a.constraints.timeout_ms;
    let t1 = Instant::now();
    let g = patch::generate_reporting(&opts, &mut |dir| shell.waiting_for(dir))?;
    t.generate = t1.elapsed();
    let (mut built, bt) =
        patch::build_generated_timed(g, &mut |name| shell.status("Compiling", name))?;
    t.build = Some(bt);
    let t2 = Instant::now();
    package::describe(&mut built.package.manifest, &a);
    let file = target
        .join("dsu")
        .join("watch")
        .join(format!("update-{attempt}.dsu"));
    built.package.write(&file)?;
    t.write = t2.elapsed();
    let t3 = Instant::now();
    let resp = request(
        socket,
        &Request::Apply {
            package: file,
            timeout_ms: None,
            policy: None,
            clear_poison: false,
        },
    )?;
    let rec = resp
        .report
        .ok_or_else(|| anyhow!("apply failed: {}", resp.error.unwrap_or_default()))?;
    t.request = t3.elapsed();
    t.load_ms = rec.load_ms;
    t.apply_ms = (rec.total_ms - rec.load_ms).max(0.0);
    t.pause_ms = rec.pause_ms;
    if rec.outcome == Outcome::Committed {
        shell.status(
            "Applied",
            format!(
                "{} change(s) to {} (pause {:.3} ms)",
                a.changes.len(),
                rec.components.join(", "),
                rec.pause_ms
            ),
        );
        Ok(true)
    } else {
        shell.error(format!(
            "the process did not apply the update ({:?}): {}",
            rec.outcome,
            rec.reason.unwrap_or_default()
        ));
        Ok(false)
    }
}
