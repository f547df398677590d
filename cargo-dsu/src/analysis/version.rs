//! The two versions being compared: where each is (a path or a git revision) and what cargo
//! says about it (name, version, root file, Cargo.lock, dependency requirements).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::cargo::{read_package, root_target};

/// Where to find a version.
#[derive(Clone, Debug)]
pub enum Source {
    /// A package directory or its Cargo.toml.
    Path(PathBuf),
    /// A revision of the new version's git repository (`git:REV`).
    Git(String),
}

impl Source {
    /// Parses a command-line argument: `git:REV` or a path.
    pub fn parse(arg: &str) -> Source {
        match arg.strip_prefix("git:") {
            Some(rev) => Source::Git(rev.to_string()),
            None => Source::Path(PathBuf::from(arg)),
        }
    }
}

/// A version being compared.
#[derive(Clone, Debug, Serialize)]
pub struct Version {
    pub name: String,
    pub version: String,
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub root: PathBuf,
    /// The binary target a hand-off builds and starts (None: the package has no binary).
    #[serde(skip)]
    pub bin: Option<String>,
    #[serde(skip)]
    pub lock: Option<PathBuf>,
    #[serde(skip)]
    pub deps: BTreeMap<String, String>,
    #[serde(skip)]
    pub target_dir: PathBuf,
    /// The name the package uses the dsu runtime (package `dsu-rt`) under, when it depends on
    /// it: without it no process of the package can take an update.
    #[serde(skip)]
    pub runtime: Option<String>,
}

/// Reads a package's name, version, root file, Cargo.lock and dependency requirements.
pub fn load_version(path: &Path) -> Result<Version> {
    let (meta, pkg) = read_package(path)?;
    let pkg = &pkg;
    let target = root_target(pkg)?;
    let dir = pkg
        .manifest_path
        .parent()
        .expect("a manifest is in a directory")
        .as_std_path()
        .to_path_buf();
    let lock = meta.workspace_root.as_std_path().join("Cargo.lock");
    let deps = pkg
        .dependencies
        .iter()
        .filter(|d| d.kind == cargo_metadata::DependencyKind::Normal)
        .map(|d| {
            let name = d.rename.clone().unwrap_or_else(|| d.name.clone());
            let mut what = match &d.path {
                Some(_) => "path".to_string(),
                None => d.req.to_string(),
            };
            // Features too: another feature set is another build of the crate.
            let mut features = d.features.clone();
            features.sort();
            if !features.is_empty() {
                what.push_str(&format!(" features [{}]", features.join(", ")));
            }
            if !d.uses_default_features {
                what.push_str(" without default features");
            }
            (name, what)
        })
        .collect();
    let runtime = pkg
        .dependencies
        .iter()
        .find(|d| d.kind == cargo_metadata::DependencyKind::Normal && d.name == "dsu-rt")
        .map(|d| d.rename.clone().unwrap_or_else(|| d.name.clone()));
    Ok(Version {
        name: pkg.name.to_string(),
        version: pkg.version.to_string(),
        root: target.src_path.as_std_path().to_path_buf(),
        bin: target.is_bin().then(|| target.name.clone()),
        dir,
        lock: lock.is_file().then_some(lock),
        deps,
        target_dir: meta.target_directory.as_std_path().to_path_buf(),
        runtime,
    })
}
