//! `cargo dsu apply`: send a package to the running process and report the outcome.

use std::path::Path;

use anyhow::{bail, Context, Result};
use dsu::control::{request, Request};
use dsu::{Engine, Outcome, Package};

use super::{describe_record, new_process, Format};
use crate::exit;
use crate::shell::Shell;

pub(crate) fn apply(
    shell: &Shell,
    package: &Path,
    socket: &Path,
    timeout_ms: Option<u64>,
    clear_poison: bool,
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
            clear_poison,
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
