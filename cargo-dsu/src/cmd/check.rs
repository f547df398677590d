//! `cargo dsu check`: the analysis and engine choice of `diff`, without building.

use std::path::Path;

use anyhow::Result;
use dsu::Engine;

use super::{analyse, print_report, EngineArg, Format};
use crate::exit;
use crate::shell::Shell;

/// Analyses OLD -> NEW and reports whether (and by which engine) the update can be applied.
pub(crate) fn check(
    shell: &Shell,
    old: &str,
    new: &Path,
    format: Format,
    engine: Option<EngineArg>,
) -> Result<i32> {
    let mut a = analyse(old, new, shell, None)?;
    a.choose_engine(engine.map(Engine::from));
    print_report(shell, &a, format);
    Ok(if a.applicable() {
        exit::SUCCESS
    } else {
        exit::REFUSED
    })
}
