//! The command line: clap's parsing of `cargo dsu diff|check|apply|status|watch|keygen`, and
//! the dispatch to one module per command (`cmd`).

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::cmd::diff::DiffArgs;
use crate::cmd::{self, EngineArg, Format};
use crate::exit;
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
        /// Apply even if a component the update replaces is poisoned (a `&mut self` call
        /// panicked in it): the new version takes its state as the panic left it, and the
        /// poison ends when the update commits. Without it, such an update is refused.
        #[arg(long)]
        clear_poison: bool,
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
        /// After each update, print where its time went: the quiet wait after the save,
        /// analysis, generating the patch crate, cargo and rustc, the link, packing, loading
        /// and applying in the process.
        #[arg(long)]
        timings: bool,
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
        } => cmd::check::check(shell, &old, &new, format, engine),
        Command::Diff(args) => cmd::diff::diff(shell, args),
        Command::Keygen { output, force } => cmd::keygen::keygen(shell, &output, force),
        Command::Apply {
            package,
            socket,
            timeout_ms,
            clear_poison,
            format,
        } => cmd::apply::apply(shell, &package, &socket, timeout_ms, clear_poison, format),
        Command::Status { socket, format } => cmd::status::status(shell, &socket, format),
        Command::Watch {
            socket,
            manifest_path,
            target_dir,
            max_updates,
            timings,
        } => cmd::watch::watch(
            shell,
            socket,
            manifest_path,
            target_dir,
            max_updates,
            timings,
        ),
    }
}
