//! `cargo dsu diff`: analyse two versions, generate and build the live update package.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use dsu::signing::SecretKey;
use dsu::Engine;

use super::{analyse, print_report, EngineArg, Format};
use crate::exit;
use crate::patch::{self, package, PatchOptions};
use crate::report;
use crate::shell::Shell;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// The analysis (default).
    Report,
    /// The generated state transfer code.
    Transfer,
    /// The whole generated patch crate's source (the hand-off crate's, for a hand-off).
    PatchSrc,
}

#[derive(Args)]
pub(crate) struct DiffArgs {
    /// The running version: a package directory, its Cargo.toml, or `git:REV` (a revision
    /// of NEW's git repository).
    pub(crate) old: String,
    /// The new version: a package directory or its Cargo.toml.
    new: PathBuf,
    /// Where to write the package (default: target/dsu/NAME-OLD-to-NEW.dsu in OLD's
    /// target directory; NAME-OLD-to-NEW-handoff.dsu for a hand-off).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Build the patch with the release profile (the base must be a release build).
    #[arg(long)]
    release: bool,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = Emit::Report)]
    emit: Emit,
    /// The engine that applies the update (default: in place where possible, else a process
    /// hand-off where that can apply every change).
    #[arg(long, value_enum, value_name = "ENGINE")]
    engine: Option<EngineArg>,
    /// Prepare-to-die timeout written into the package.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Hand-off: how long the new process has to take over and report ready before it is
    /// killed and the old one resumes (default: the runtime's).
    #[arg(long, value_name = "MS")]
    ready_timeout_ms: Option<u64>,
    /// Build directory (default: OLD's target directory).
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Sign the package with this secret key (written by `cargo dsu keygen`). A process
    /// that trusts keys applies only packages signed by one of them.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
}

pub(crate) fn diff(shell: &Shell, args: DiffArgs) -> Result<i32> {
    let DiffArgs {
        old,
        new,
        output,
        release,
        format,
        emit,
        engine,
        timeout_ms,
        ready_timeout_ms,
        target_dir,
        sign,
    } = args;
    // Read the key first: a wrong path should not cost a build.
    let key = sign
        .map(|path| SecretKey::read(&path))
        .transpose()
        .context("cannot sign the package")?;
    let mut a = analyse(&old, &new, shell, target_dir.as_deref())?;
    a.choose_engine(engine.map(Engine::from));
    if emit == Emit::Report {
        print_report(shell, &a, format);
    }
    let Some(chosen) = a.plan.engine else {
        if emit != Emit::Report {
            shell.out(&report::human(&a));
        }
        let problems = if a.handoff_possible() {
            format!(
                "{} problem(s) in place, and `--engine in-place` was given: no package written",
                a.refusals.len()
            )
        } else {
            format!("{} problem(s): no package written", a.refusals.len().max(1))
        };
        shell.note("Refused", problems);
        return Ok(exit::REFUSED);
    };
    if ready_timeout_ms.is_some() && chosen == Engine::InPlace {
        shell
            .warn("--ready-timeout-ms is ignored: the update is applied in place, not by hand-off");
    }
    let mut opts = PatchOptions::new(&a.old.dir, &a.new.dir);
    opts.release = release;
    opts.target_dir = target_dir;
    opts.timeout_ms = timeout_ms.unwrap_or(a.constraints.timeout_ms);
    opts.engine = chosen;
    let g = patch::generate_reporting(&opts, &mut |dir| shell.waiting_for(dir))?;
    shell.status("Using", format!("Cargo.lock {}", g.cargo_lock.describe()));
    match emit {
        Emit::Transfer => shell.out(if g.transfer_src.is_empty() {
            "// no state type changed: nothing to transfer\n"
        } else {
            &g.transfer_src
        }),
        Emit::PatchSrc => {
            let mut all = String::new();
            for (path, text) in &g.files {
                all.push_str(&format!("// ===== {} =====\n{text}\n", path.display()));
            }
            shell.out(&all);
        }
        Emit::Report => {}
    }
    shell.status(
        "Compiling",
        format!(
            "{} {} ({})",
            match chosen {
                Engine::InPlace => "patch",
                Engine::Handoff => "hand-off executable",
            },
            g.dir.display(),
            if release { "release" } else { "dev" }
        ),
    );
    // Beside the work directory, named like it: a hand-off and a patch of the same pair do not
    // overwrite each other's package.
    let default_out = PathBuf::from(format!("{}.dsu", g.dir.display()));
    let started = std::time::Instant::now();
    let mut built = patch::build_generated(g, &mut |name| shell.status("Compiling", name))?;
    package::describe(&mut built.package.manifest, &a);
    if chosen == Engine::Handoff {
        built.package.manifest.ready_timeout_ms = ready_timeout_ms.unwrap_or(0);
    }
    let out = output.unwrap_or(default_out);
    package::write(&built.package, &out, key.as_ref())?;
    shell.status(
        "Packaging",
        format!(
            "{} ({} KiB, {}){}",
            out.display(),
            built.package.library.len() / 1024,
            match chosen {
                Engine::InPlace => "in place",
                Engine::Handoff => "hand-off",
            },
            match &key {
                Some(k) => format!(", signed by key {}", k.public().id()),
                None => String::new(),
            }
        ),
    );
    shell.status(
        "Finished",
        format!(
            "live update package in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(exit::SUCCESS)
}
