//! The command line: `cargo dsu diff|check|apply|status|watch`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dsu::control::{request, Request};
use dsu::signing::SecretKey;
use dsu::{Engine, Outcome, Package};

use crate::analysis::{self, Analysis, Source};
use crate::exit;
use crate::patch::{self, PatchOptions};
use crate::report;
use crate::shell::{ColorChoice, Shell};

#[derive(Parser)]
#[command(name = "cargo", bin_name = "cargo", styles = clap::builder::Styles::plain())]
enum Cargo {
    /// Live updates for Rust programs built with dsu.
    Dsu(Dsu),
}

#[derive(Args)]
#[command(version, about = "Live updates for Rust programs built with dsu", long_about = None)]
struct Dsu {
    #[command(subcommand)]
    command: Command,
    /// Coloring: auto, always, never (default: CARGO_TERM_COLOR, else auto).
    // The global options come last in every command's help (display_order).
    #[arg(long, global = true, value_name = "WHEN", display_order = 500)]
    color: Option<ColorChoice>,
    /// No status messages on stderr.
    #[arg(short, long, global = true, display_order = 501)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// `--engine`: how the update is applied (DESIGN.md sections 5 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    /// Load new code into the running process (refused when a change is outside components).
    InPlace,
    /// Start the new executable, hand it the sockets and the state; the old process exits.
    Handoff,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::InPlace => Engine::InPlace,
            EngineArg::Handoff => Engine::Handoff,
        }
    }
}

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
struct DiffArgs {
    /// The running version: a package directory, its Cargo.toml, or `git:REV` (a revision
    /// of NEW's git repository).
    old: String,
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

#[derive(Subcommand)]
enum Command {
    /// Analyse two versions and build the live update package OLD -> NEW.
    ///
    /// The update is applied in place when every change is inside components; otherwise the
    /// package is a process hand-off (the new executable takes over from the running
    /// process), when a hand-off can apply every change. `--engine` forces one.
    ///
    /// Exit status: 0 package written; 2 the update cannot be applied by the chosen engine
    /// (the report says why); 1 an error.
    Diff(DiffArgs),
    /// Create an ed25519 key pair for signing packages.
    ///
    /// Writes the secret key to FILE (mode 0600) and the public key to FILE.pub. Give the
    /// public key to the processes that should trust the packages (`RuntimeBuilder::
    /// trusted_keys_file`, or the file named by DSU_TRUSTED_KEYS), keep the secret key with
    /// whoever builds updates, and sign with `cargo dsu diff --sign FILE`.
    Keygen {
        /// Where to write the secret key (the public key goes to FILE.pub).
        #[arg(short, long, value_name = "FILE", default_value = "dsu-signing.key")]
        output: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// The same analysis and engine choice as `diff`, without building.
    ///
    /// Exit status: 0 the update can be applied (in place or by hand-off: the report says
    /// which); 2 it cannot; 1 an error.
    Check {
        old: String,
        new: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// The engine to check for (default: chosen as `diff` chooses it).
        #[arg(long, value_enum, value_name = "ENGINE")]
        engine: Option<EngineArg>,
    },
    /// Apply a live update package to the running process behind SOCKET.
    ///
    /// Exit status: 0 the update committed; 2 it did not (refused, aborted at prepare-to-die,
    /// rolled back, given up: the reason is printed); 3 it was staged for an operator's
    /// commit; 1 an error (no such package or process).
    Apply {
        /// The package (`.dsu`) written by `cargo dsu diff`.
        package: PathBuf,
        /// The process's control socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Prepare-to-die timeout, overriding the package's.
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// The running version, components and update history of the process behind SOCKET.
    Status {
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Development hot-patching: on every save, rebuild the patch against the running build
    /// and apply it. Errors are shown; the process keeps running the last good version.
    Watch {
        /// The process's control socket (default: NAME.sock in the package directory).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The package being edited (default: the current directory).
        #[arg(long, value_name = "PATH")]
        manifest_path: Option<PathBuf>,
        /// Build directory (default: the package's target directory).
        #[arg(long, value_name = "DIR")]
        target_dir: Option<PathBuf>,
        /// Stop after this many applied updates (for scripts and tests).
        #[arg(long, value_name = "N", hide = true)]
        max_updates: Option<u32>,
    },
}

/// Runs `cargo dsu` with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    run(std::env::args_os().collect())
}

/// Runs `cargo dsu` with `args` (`args[0]` the program name). Invoked by cargo as
/// `cargo-dsu dsu ...`, directly as `cargo-dsu ...`: both work.
pub fn run(mut args: Vec<std::ffi::OsString>) -> i32 {
    if args.get(1).is_none_or(|a| a != "dsu") {
        args.insert(1.min(args.len()), "dsu".into());
    }
    let Cargo::Dsu(cli) = match Cargo::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::ERROR
            } else {
                exit::SUCCESS
            };
            let _ = e.print();
            return code;
        }
    };
    let shell = Shell::new(cli.color, cli.quiet);
    match execute(cli.command, &shell) {
        Ok(code) => code,
        Err(e) => {
            shell.error(format!("{e:#}"));
            exit::ERROR
        }
    }
}

fn execute(cmd: Command, shell: &Shell) -> Result<i32> {
    match cmd {
        Command::Check {
            old,
            new,
            format,
            engine,
        } => {
            let mut a = analyse(&old, &new, shell, None)?;
            a.choose_engine(engine.map(Engine::from));
            print_report(shell, &a, format);
            Ok(if a.applicable() {
                exit::SUCCESS
            } else {
                exit::REFUSED
            })
        }
        Command::Diff(args) => diff(shell, args),
        Command::Keygen { output, force } => keygen(shell, &output, force),
        Command::Apply {
            package,
            socket,
            timeout_ms,
            format,
        } => apply(shell, &package, &socket, timeout_ms, format),
        Command::Status { socket, format } => status(shell, &socket, format),
        Command::Watch {
            socket,
            manifest_path,
            target_dir,
            max_updates,
        } => crate::watch::watch(shell, socket, manifest_path, target_dir, max_updates),
    }
}

/// Resolves OLD (a path or `git:REV`), loads both versions and analyses them.
fn analyse(old: &str, new: &Path, shell: &Shell, target_dir: Option<&Path>) -> Result<Analysis> {
    let new_v = analysis::load_version(new)?;
    let old_path = match Source::parse(old) {
        Source::Path(p) => p,
        Source::Git(rev) => {
            let base = target_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| new_v.dir.join("target"));
            crate::baseline::checkout(&new_v.dir, &rev, &base.join("dsu").join("git"), shell)?
        }
    };
    let old_v = analysis::load_version(&old_path)?;
    shell.status(
        "Analyzing",
        format!("{} {} -> {}", new_v.name, old_v.version, new_v.version),
    );
    analysis::analyze(&old_v, &new_v)
}

fn print_report(shell: &Shell, a: &Analysis, format: Format) {
    match format {
        Format::Human => shell.out(&report::human(a)),
        Format::Json => shell.out(&report::json(a)),
    }
}

fn diff(shell: &Shell, args: DiffArgs) -> Result<i32> {
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
    opts.base_lock = a.old.lock.clone();
    opts.engine = chosen;
    let g = patch::generate_reporting(&opts, &mut |dir| shell.waiting_for(dir))?;
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
    let m = &mut built.package.manifest;
    m.changes = a.manifest_changes();
    m.constraints = dsu::Constraints {
        components: a.constraints.components.clone(),
        protocols_idle: a.constraints.protocols_idle.clone(),
        park_threads: a.constraints.park_threads,
    };
    m.engine_reasons = a.plan.reasons.clone();
    if chosen == Engine::Handoff {
        m.ready_timeout_ms = ready_timeout_ms.unwrap_or(0);
    }
    let out = output.unwrap_or(default_out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match &key {
        Some(key) => built.package.write_signed(&out, key),
        None => built.package.write(&out),
    }
    .with_context(|| format!("cannot write the package to {}", out.display()))?;
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

fn keygen(shell: &Shell, output: &Path, force: bool) -> Result<i32> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let public_path = PathBuf::from(format!("{}.pub", output.display()));
    if !force {
        for p in [output, public_path.as_path()] {
            if p.exists() {
                bail!(
                    "{} exists; refusing to overwrite a key (pass --force to replace it, or \
                     choose another path with -o)",
                    p.display()
                );
            }
        }
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read random bytes from /dev/urandom")?;
    let key = SecretKey::from_seed(seed);
    let write = |path: &Path, mode: u32, text: String| -> Result<()> {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(output, 0o600, key.to_file_line())?;
    write(&public_path, 0o644, key.public().to_string())?;
    shell.status(
        "Created",
        format!(
            "key {}: secret {} (keep it private), public {}",
            key.public().id(),
            output.display(),
            public_path.display()
        ),
    );
    shell.out(&format!("{}\n", key.public()));
    Ok(exit::SUCCESS)
}

fn apply(
    shell: &Shell,
    package: &Path,
    socket: &Path,
    timeout_ms: Option<u64>,
    format: Format,
) -> Result<i32> {
    if !package.is_file() {
        bail!(
            "no package at {}; build one with `cargo dsu diff OLD NEW -o FILE`",
            package.display()
        );
    }
    let abs = std::path::absolute(package)
        .with_context(|| format!("cannot resolve {}", package.display()))?;
    // Read it here too, to say what is being applied. A package that cannot be read is still
    // sent: the process refuses it and records the refusal in its history.
    match Package::read(package) {
        Ok(pkg) => shell.status(
            "Applying",
            format!(
                "{} {} -> {} to {} ({}; {})",
                pkg.manifest.program,
                pkg.manifest.from,
                pkg.manifest.to,
                socket.display(),
                match pkg.signer() {
                    Some(k) => format!("signed by key {}", k.id()),
                    None => "unsigned".to_string(),
                },
                match pkg.manifest.engine {
                    Engine::InPlace => "in place",
                    Engine::Handoff => "by hand-off",
                }
            ),
        ),
        Err(e) => shell.note(
            "Applying",
            format!("{} to {}: {e}", abs.display(), socket.display()),
        ),
    }
    let resp = request(
        socket,
        &Request::Apply {
            package: abs,
            timeout_ms,
            policy: None,
        },
    )?;
    let rec = match (resp.ok, resp.report) {
        (true, Some(r)) => r,
        _ => bail!(
            "the process could not apply the package: {}",
            resp.error.unwrap_or_else(|| "no reason given".into())
        ),
    };
    match format {
        Format::Json => shell.out(&serde_json::to_string_pretty(&serde_json::json!({
            "format": "dsu-apply/1",
            "report": rec,
        }))?),
        Format::Human => shell.out(&describe_record(&rec)),
    }
    Ok(match rec.outcome {
        Outcome::Committed if rec.engine == Engine::Handoff => {
            shell.status(
                "Committed",
                format!(
                    "{} -> {} by hand-off: {} (the old one has exited)",
                    rec.from,
                    rec.to,
                    new_process(&rec)
                ),
            );
            exit::SUCCESS
        }
        Outcome::Committed => {
            shell.status(
                "Committed",
                format!("{} -> {} (pause {:.3} ms)", rec.from, rec.to, rec.pause_ms),
            );
            exit::SUCCESS
        }
        Outcome::Staged => {
            shell.note(
                "Staged",
                format!("update {} waits for an operator's commit", rec.id),
            );
            exit::STAGED
        }
        other => {
            shell.error(format!(
                "update {:?}: {}",
                other,
                rec.reason.as_deref().unwrap_or("no reason given")
            ));
            exit::REFUSED
        }
    })
}

/// "the new process is pid N", for a committed hand-off.
fn new_process(r: &dsu::UpdateRecord) -> String {
    match r.new_pid {
        Some(pid) => format!("the new process is pid {pid}"),
        None => "the process did not report the new pid".to_string(),
    }
}

/// One update, as a line or a few.
fn describe_record(r: &dsu::UpdateRecord) -> String {
    let mut s = format!("update {}: {} -> {}: {:?}", r.id, r.from, r.to, r.outcome).to_lowercase();
    if r.engine == Engine::Handoff {
        if r.outcome == Outcome::Committed {
            s.push_str(&format!(
                " by hand-off ({}; pause {:.3} ms, transfer {:.3} ms)",
                new_process(r),
                r.pause_ms,
                r.transfer_ms
            ));
        } else {
            s.push_str(" (hand-off)");
        }
    } else if r.outcome == Outcome::Committed {
        s.push_str(&format!(
            " (components: {}; prepare {:.3} ms, pause {:.3} ms, transfer {:.3} ms)",
            if r.components.is_empty() {
                "none".into()
            } else {
                r.components.join(", ")
            },
            r.prepare_ms,
            r.pause_ms,
            r.transfer_ms
        ));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!("\n  reason: {reason}"));
    }
    for b in &r.busy {
        s.push_str(&format!(
            "\n  busy: {}{} on thread `{}` (tid {}) for {:.0} ms",
            b.component,
            b.method
                .as_deref()
                .map(|m| format!("::{m}"))
                .unwrap_or_default(),
            b.thread,
            b.tid,
            b.busy_ms
        ));
    }
    s
}

fn status(shell: &Shell, socket: &Path, format: Format) -> Result<i32> {
    let resp = request(socket, &Request::Status)?;
    let st = resp.status.ok_or_else(|| {
        anyhow!(
            "the process did not report its status: {}",
            resp.error.unwrap_or_default()
        )
    })?;
    match format {
        Format::Json => shell.out(&serde_json::to_string_pretty(&serde_json::json!({
            "format": "dsu-status/1",
            "status": st,
        }))?),
        Format::Human => {
            let mut s = format!(
                "{} {} (pid {}, rustc {}, dsu-rt {})\n",
                st.program, st.version, st.pid, st.rustc, st.dsu_rt
            );
            s.push_str("\ncomponents:\n");
            for c in &st.components {
                s.push_str(&format!(
                    "  {:<24} version {:<3} instances {:<4} in flight {}",
                    c.id, c.version, c.instances, c.in_flight
                ));
                if !c.poisoned.is_empty() {
                    s.push_str(&format!(
                        "  POISONED ({} instance(s); a `{}` call panicked)",
                        c.poisoned.len(),
                        c.poisoned[0]
                    ));
                }
                s.push('\n');
            }
            if !st.staged.is_empty() {
                s.push_str(&format!("\nstaged updates: {:?}\n", st.staged));
            }
            s.push_str("\nhistory:\n");
            if st.history.is_empty() {
                s.push_str("  (no updates)\n");
            }
            for r in &st.history {
                for (i, line) in describe_record(r).lines().enumerate() {
                    s.push_str(if i == 0 { "  " } else { "    " });
                    s.push_str(line);
                    s.push('\n');
                }
            }
            shell.out(&s);
        }
    }
    Ok(exit::SUCCESS)
}

/// Waits between polls of the file watcher.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: &str, engine: &str, new_pid: Option<u32>) -> dsu::UpdateRecord {
        serde_json::from_value(serde_json::json!({
            "id": 3, "from": "1.0.0", "to": "2.0.0", "started_unix_ms": 0,
            "outcome": outcome, "reason": null, "components": ["Engine"], "changes": [],
            "attempts": 1, "policy_wait_ms": 0.0, "prepare_ms": 1.0, "pause_ms": 2.0,
            "transfer_ms": 3.0, "total_ms": 6.0, "busy": [],
            "engine": engine, "new_pid": new_pid,
        }))
        .expect("an update record")
    }

    #[test]
    fn a_hand_off_is_named_in_the_history_with_the_new_pid() {
        assert_eq!(
            describe_record(&record("committed", "handoff", Some(1234))),
            "update 3: 1.0.0 -> 2.0.0: committed by hand-off (the new process is pid 1234; \
             pause 2.000 ms, transfer 3.000 ms)"
        );
        assert_eq!(
            describe_record(&record("refused", "handoff", None)),
            "update 3: 1.0.0 -> 2.0.0: refused (hand-off)"
        );
        // In place, as before: no engine named.
        assert_eq!(
            describe_record(&record("committed", "in-place", None)),
            "update 3: 1.0.0 -> 2.0.0: committed (components: Engine; prepare 1.000 ms, \
             pause 2.000 ms, transfer 3.000 ms)"
        );
    }
}
