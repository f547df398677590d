//! Baselines that are not a directory on disk: `git:REV`, and watch's snapshots.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::shell::Shell;

/// Extracts revision `rev` of the repository holding `package_dir` and returns the package's
/// directory in the extracted tree. The whole repository is extracted, so relative path
/// dependencies resolve as they did at that revision.
pub fn checkout(package_dir: &Path, rev: &str, into: &Path, shell: &Shell) -> Result<PathBuf> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(package_dir)
            .args(args)
            .output()
            .context("cannot run git")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"]).with_context(|| {
        format!(
            "`git:{rev}` needs NEW ({}) to be inside a git repository",
            package_dir.display()
        )
    })?);
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .with_context(|| format!("`{rev}` is not a revision of {}", top.display()))?;
    let rel = package_dir
        .canonicalize()?
        .strip_prefix(top.canonicalize()?)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dest = into.join(&commit[..12.min(commit.len())]);
    if !dest.join(&rel).join("Cargo.toml").is_file() {
        shell.status(
            "Checking out",
            format!(
                "{rev} ({}) into {}",
                &commit[..12.min(commit.len())],
                dest.display()
            ),
        );
        std::fs::create_dir_all(&dest)?;
        let archive = Command::new("git")
            .arg("-C")
            .arg(&top)
            .args(["archive", "--format=tar", &commit])
            .output()
            .context("cannot run git archive")?;
        if !archive.status.success() {
            bail!(
                "git archive {commit}: {}",
                String::from_utf8_lossy(&archive.stderr).trim()
            );
        }
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&dest)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        std::io::Write::write_all(tar.stdin.as_mut().expect("piped"), &archive.stdout)?;
        drop(tar.stdin.take());
        if !tar.wait()?.success() {
            bail!("extracting revision {commit} failed");
        }
    }
    let pkg = dest.join(&rel);
    if !pkg.join("Cargo.toml").is_file() {
        bail!("at revision {rev}, {} has no Cargo.toml", rel.display());
    }
    Ok(pkg)
}

/// Copies a package (without `target/`) to `dest`, making relative path dependencies absolute,
/// so the copy reads as the same package did.
pub fn snapshot(package_dir: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    copy(package_dir, dest)?;
    let manifest = dest.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    let mut doc: toml::Table = text.parse().context("cannot parse Cargo.toml")?;
    for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
        if let Some(deps) = doc.get_mut(section).and_then(|d| d.as_table_mut()) {
            for (_, d) in deps.iter_mut() {
                if let Some(path) = d.get_mut("path") {
                    if let Some(p) = path.as_str() {
                        let abs = package_dir.join(p);
                        let abs = abs.canonicalize().unwrap_or(abs);
                        *path = toml::Value::String(abs.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    std::fs::write(&manifest, toml::to_string(&doc)?)?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy(&e.path(), &to.join(&name))?;
        } else {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}
