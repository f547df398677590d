//! Building a generated crate with cargo: the work directory's lock, the toolchain (a pin
//! travels with a hand-off), `cargo rustc` and the artifact it reports. Uses only `cargo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::cargo::cargo;

/// What cargo builds from a generated crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// The patch cdylib (the in-place engine).
    Patch,
    /// The new version's executable (a hand-off), under a name of its own.
    Executable(String),
}

impl Artifact {
    /// What it is, for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Artifact::Patch => "the patch",
            Artifact::Executable(_) => "the hand-off executable",
        }
    }
}

/// Locks the work directory of one OLD -> NEW pair exclusively, through `DIR.lock` beside it.
/// Two `cargo dsu` runs of the same pair (two terminals, `watch` and `diff`, tests in parallel)
/// share that directory: without the lock the second deletes and rewrites the sources while the
/// first is building them. The second now waits until the first has read its artifact.
pub(in crate::patch) fn lock_work_dir(
    dir: &Path,
    waiting: &mut dyn FnMut(&Path),
) -> Result<std::fs::File> {
    let parent = dir
        .parent()
        .expect("the work directory is inside the target directory");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let path = PathBuf::from(format!("{}.lock", dir.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            waiting(dir);
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(file)
}

/// A rustup-managed tool (`cargo`, `rustc`) as a build of `pinned_dir` runs it: there, and
/// with the outer toolchain choice removed, so the toolchain pin in that directory decides.
/// Without a pin: `$CARGO` / `$RUSTC`, the toolchain `cargo dsu` itself runs under.
fn tool(name: &str, pinned_dir: Option<&Path>) -> Command {
    match pinned_dir {
        Some(dir) => {
            let mut cmd = Command::new(name);
            cmd.current_dir(dir)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO")
                .env_remove("RUSTC");
            cmd
        }
        None if name == "cargo" => Command::new(cargo()),
        None => Command::new(std::env::var("RUSTC").unwrap_or_else(|_| name.to_string())),
    }
}

/// Builds `artifact` from the crate in `dir` into `target_dir`; `pinned`: with the toolchain
/// pinned in `dir`. `progress` sees the name of every crate cargo compiles. `link_trace`: have
/// the linker (lld, rustc's default on x86_64 Linux) write a time trace of the final link
/// there; only the crate itself gets the flag (`cargo rustc`), so no dependency is rebuilt.
pub(in crate::patch) fn compile(
    dir: &Path,
    target_dir: &Path,
    release: bool,
    artifact: &Artifact,
    pinned: bool,
    progress: &mut dyn FnMut(&str),
    link_trace: Option<&Path>,
) -> Result<PathBuf> {
    let mut cmd = tool("cargo", pinned.then_some(dir));
    // In `dir`, so that cargo reads the configuration copied there (its `rustflags`).
    cmd.arg("rustc").current_dir(dir);
    match artifact {
        Artifact::Patch => cmd.arg("--lib"),
        Artifact::Executable(bin) => cmd.args(["--bin", bin]),
    };
    cmd.arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--cfg", "dsu_patch"]);
    if let Some(trace) = link_trace {
        cmd.arg("-C")
            .arg(format!("link-arg=-Wl,--time-trace={}", trace.display()));
    }
    cmd.env("CARGO_TARGET_DIR", target_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run cargo to build {}", artifact.noun()))?;
    // Drain stderr on its own thread so neither pipe can fill up and stall cargo.
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut built = None;
    for msg in cargo_metadata::Message::parse_stream(stdout) {
        if let Ok(cargo_metadata::Message::CompilerArtifact(a)) = msg {
            if !a.fresh {
                progress(&a.target.name);
            }
            match artifact {
                Artifact::Patch if a.target.kind.iter().any(|k| k.to_string() == "cdylib") => {
                    built = a
                        .filenames
                        .iter()
                        .find(|f| f.extension() == Some(std::env::consts::DLL_EXTENSION))
                        .map(|f| f.as_std_path().to_path_buf());
                }
                Artifact::Executable(bin) if a.target.is_bin() && &a.target.name == bin => {
                    built = a.executable.map(|e| e.into_std_path_buf());
                }
                _ => {}
            }
        }
    }
    let status = child.wait().context("wait for cargo")?;
    let stderr = errs.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        bail!(
            "building {} in {} failed:\n{}",
            artifact.noun(),
            dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    built.ok_or_else(|| {
        anyhow!(
            "cargo built no {} in {}",
            match artifact {
                Artifact::Patch => "cdylib for the patch".to_string(),
                Artifact::Executable(bin) => format!("executable `{bin}`"),
            },
            dir.display()
        )
    })
}

/// `(release (commit), host triple)` of the rustc cargo will use (in `pinned_dir`, see
/// `tool`), in dsu-rt's format.
pub(in crate::patch) fn rustc_version(pinned_dir: Option<&Path>) -> Result<(String, String)> {
    let mut cmd = tool("rustc", pinned_dir);
    let out = cmd
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot run `{} -vV`", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`rustc -vV`{} failed: {}",
            match pinned_dir {
                Some(d) => format!(" (with the toolchain pinned in {})", d.display()),
                None => String::new(),
            },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("unknown")
            .to_string()
    };
    Ok((
        format!("{} ({})", field("release: "), field("commit-hash: ")),
        field("host: "),
    ))
}
