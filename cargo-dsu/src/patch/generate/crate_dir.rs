//! The generated crate on disk: NEW's package copied into the work directory, its edited
//! sources, its Cargo.toml, the Cargo.lock it is built with, and the toolchain pin of a
//! hand-off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::plan::Crate;
use super::splice::{resolve, splice, Edit};
use crate::cargo::{cargo_config, toolchain_pin};
use crate::patch::build::Artifact;
use crate::source::CrateSource;

pub(in crate::patch) fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || path == skip {
            continue;
        }
        let dest = to.join(&*name);
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &dest, skip)?;
        } else {
            std::fs::copy(&path, &dest)?;
        }
    }
    Ok(())
}

/// The generated crate's Cargo.toml: NEW's dependencies (paths made absolute); a patch gets
/// the base's profile and a cdylib target, a hand-off NEW's profile and NEW's binary.
pub(in crate::patch) fn patch_manifest(
    old: &Crate,
    new: &Crate,
    root_rel: &Path,
    artifact: &Artifact,
) -> Result<String> {
    use toml::{Table, Value};
    let mut doc = Table::new();
    let mut package = Table::new();
    // A patch is named after both versions: patches of one program built into one target
    // directory must not share a library file (cargo does not hash a cdylib's name), or one
    // build could read the library another build has just written. A hand-off is NEW's
    // program and keeps NEW's name: programs read it (`env!("CARGO_PKG_NAME")` is a common
    // program name, and the runtime refuses packages for another program); its intermediate
    // files are told apart from NEW's own build by their path, which cargo hashes.
    let id = format!(
        "{}-{}-to-{}",
        new.pkg.name, old.pkg.version, new.pkg.version
    )
    .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let name = match artifact {
        Artifact::Patch => format!("dsu-patch-{id}"),
        Artifact::Executable(_) => new.pkg.name.to_string(),
    };
    package.insert("name".into(), Value::String(name));
    package.insert("version".into(), Value::String(new.pkg.version.to_string()));
    package.insert("edition".into(), Value::String(new.pkg.edition.to_string()));
    package.insert("publish".into(), Value::Boolean(false));
    // The rest of NEW's metadata, which code reads through `env!("CARGO_PKG_...")`.
    let text = |v: &Option<String>| v.clone().map(Value::String);
    for (key, value) in [
        ("description", text(&new.pkg.description)),
        ("license", text(&new.pkg.license)),
        ("repository", text(&new.pkg.repository)),
        ("homepage", text(&new.pkg.homepage)),
        ("documentation", text(&new.pkg.documentation)),
        ("links", text(&new.pkg.links)),
        (
            "rust-version",
            new.pkg
                .rust_version
                .as_ref()
                .map(|v| Value::String(v.to_string())),
        ),
        (
            "authors",
            (!new.pkg.authors.is_empty()).then(|| {
                Value::Array(new.pkg.authors.iter().cloned().map(Value::String).collect())
            }),
        ),
    ] {
        if let Some(v) = value {
            package.insert(key.into(), v);
        }
    }
    // Only the one target: the program's other binaries, tests and examples are not part of
    // an update.
    for auto in ["autobins", "autoexamples", "autotests", "autobenches"] {
        package.insert(auto.into(), Value::Boolean(false));
    }
    doc.insert("package".into(), Value::Table(package));
    let path = Value::String(root_rel.to_string_lossy().into_owned());
    match artifact {
        Artifact::Patch => {
            let mut lib = Table::new();
            lib.insert("name".into(), Value::String(format!("dsu_patch_{id}")));
            lib.insert("path".into(), path);
            lib.insert(
                "crate-type".into(),
                Value::Array(vec![Value::String("cdylib".into())]),
            );
            doc.insert("lib".into(), Value::Table(lib));
        }
        Artifact::Executable(name) => {
            let mut bin = Table::new();
            bin.insert("name".into(), Value::String(name.clone()));
            bin.insert("path".into(), path);
            doc.insert("bin".into(), Value::Array(vec![Value::Table(bin)]));
        }
    }

    let mut deps = Table::new();
    let mut build_deps = Table::new();
    for d in &new.pkg.dependencies {
        let mut t = Table::new();
        if d.rename.is_some() {
            t.insert("package".into(), Value::String(d.name.clone()));
        }
        if let Some(p) = &d.path {
            t.insert("path".into(), Value::String(p.to_string()));
        } else if let Some(src) = &d.source {
            if !src.starts_with("registry+") && !src.starts_with("sparse+") {
                bail!("dependency `{}` comes from {src}; only registry and path dependencies are supported in patches", d.name);
            }
        }
        let req = d.req.to_string();
        if req != "*" {
            t.insert("version".into(), Value::String(req));
        }
        if !d.features.is_empty() {
            t.insert(
                "features".into(),
                Value::Array(d.features.iter().cloned().map(Value::String).collect()),
            );
        }
        if !d.uses_default_features {
            t.insert("default-features".into(), Value::Boolean(false));
        }
        if d.optional {
            t.insert("optional".into(), Value::Boolean(true));
        }
        let key = d.rename.clone().unwrap_or_else(|| d.name.clone());
        match d.kind {
            cargo_metadata::DependencyKind::Normal => {
                deps.insert(key, Value::Table(t));
            }
            cargo_metadata::DependencyKind::Build => {
                build_deps.insert(key, Value::Table(t));
            }
            _ => {}
        }
    }
    doc.insert("dependencies".into(), Value::Table(deps));
    if !build_deps.is_empty() {
        doc.insert("build-dependencies".into(), Value::Table(build_deps));
    }
    if !new.pkg.features.is_empty() {
        let f: Table = new
            .pkg
            .features
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::Array(v.iter().cloned().map(Value::String).collect()),
                )
            })
            .collect();
        doc.insert("features".into(), Value::Table(f));
    }
    // Profiles are read from the workspace root: for a patch the base's settings decide (it is
    // loaded into the base's process), for a hand-off NEW's (it is NEW's program).
    let profile_from = match artifact {
        Artifact::Patch => old,
        Artifact::Executable(_) => new,
    };
    let root_manifest = profile_from
        .meta
        .workspace_root
        .as_std_path()
        .join("Cargo.toml");
    let root_text = std::fs::read_to_string(&root_manifest)
        .with_context(|| format!("cannot read {}", root_manifest.display()))?;
    let root: Table = root_text
        .parse()
        .with_context(|| format!("cannot parse {}", root_manifest.display()))?;
    if let Some(p) = root.get("profile") {
        doc.insert("profile".into(), p.clone());
    }
    let mut lints = Table::new();
    let mut rust = Table::new();
    let mut uc = Table::new();
    uc.insert("level".into(), Value::String("warn".into()));
    uc.insert(
        "check-cfg".into(),
        Value::Array(vec![Value::String("cfg(dsu_patch)".into())]),
    );
    rust.insert("unexpected_cfgs".into(), Value::Table(uc));
    lints.insert("rust".into(), Value::Table(rust));
    doc.insert("lints".into(), Value::Table(lints));
    doc.insert("workspace".into(), Value::Table(Table::new()));
    Ok(format!(
        "# Generated by cargo dsu: the {} of `{}` {} -> {}. Do not edit.\n{}",
        match artifact {
            Artifact::Patch => "patch",
            Artifact::Executable(_) => "hand-off executable",
        },
        new.pkg.name,
        old.pkg.version,
        new.pkg.version,
        toml::to_string(&doc)?
    ))
}

/// Fills the work directory `dir` with NEW's package (without `target_dir`) and its sources
/// with `edits` spliced in; returns every source file written, relative to `dir`.
pub(in crate::patch) fn write_sources(
    new: &Crate,
    src_new: &CrateSource,
    mut edits: HashMap<usize, Vec<Edit>>,
    dir: &Path,
    target_dir: &Path,
) -> Result<Vec<(PathBuf, String)>> {
    copy_tree(&new.dir, dir, target_dir)?;
    let mut files = Vec::new();
    for (i, f) in src_new.files.iter().enumerate() {
        let original = std::fs::read_to_string(new.dir.join(&f.rel))
            .with_context(|| format!("cannot read {}", f.rel.display()))?;
        let mut file_edits = edits.remove(&i).unwrap_or_default();
        resolve(&original, &mut file_edits);
        let text = splice(&original, file_edits);
        let out = dir.join(&f.rel);
        std::fs::create_dir_all(out.parent().expect("file in a dir"))?;
        std::fs::write(&out, &text).with_context(|| format!("cannot write {}", out.display()))?;
        files.push((f.rel.clone(), text));
    }
    Ok(files)
}

/// Writes the generated crate's Cargo.toml (see `patch_manifest`).
pub(in crate::patch) fn write_manifest(
    old: &Crate,
    new: &Crate,
    dir: &Path,
    artifact: &Artifact,
) -> Result<()> {
    let root_rel = new
        .root
        .strip_prefix(&new.dir)
        .unwrap_or(&new.root)
        .to_path_buf();
    let cargo_toml = patch_manifest(old, new, &root_rel, artifact)?;
    std::fs::write(dir.join("Cargo.toml"), cargo_toml)?;
    Ok(())
}

/// Copies the Cargo.lock the crate is built with (see `lock`) into `dir`.
pub(in crate::patch) fn copy_lock(lock: &Path, dir: &Path) -> Result<()> {
    std::fs::copy(lock, dir.join("Cargo.lock"))
        .with_context(|| format!("cannot copy the Cargo.lock from {}", lock.display()))?;
    Ok(())
}

/// A hand-off is built by the toolchain NEW pins, if any: the pin travels with the crate into
/// `dir`. Returns whether there was one.
pub(in crate::patch) fn copy_pin(new: &Crate, dir: &Path) -> Result<bool> {
    Ok(match toolchain_pin(&new.dir) {
        Some((pin, _)) => {
            let name = pin.file_name().expect("a pin is a file");
            std::fs::copy(&pin, dir.join(name))
                .with_context(|| format!("cannot copy {}", pin.display()))?;
            true
        }
        None => false,
    })
}

/// The generated crate is built with the cargo configuration of the version whose build it
/// must match (the base's for a patch, NEW's for a hand-off): it is copied into `dir`, and
/// cargo runs there. A configuration in an ancestor of `from` is found too; the copy is of
/// the nearest one only.
pub(in crate::patch) fn copy_cargo_config(from: &Path, dir: &Path) -> Result<()> {
    if let Some((path, text)) = cargo_config(from) {
        let to = dir.join(".cargo");
        std::fs::create_dir_all(&to)?;
        let name = path.file_name().expect("a config is a file");
        std::fs::write(to.join(name), text)
            .with_context(|| format!("cannot copy {}", path.display()))?;
    }
    Ok(())
}
