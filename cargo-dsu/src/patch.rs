//! Source-to-source patch generation and build, for both engines.
//!
//! The generated crate is a transformed copy of NEW under `target/dsu/`: every module with
//! changed state types gets an `old` module with the base's definitions and the generated
//! transfers. Then, by engine:
//!
//! - in place: the crate root gets the patch root (`::dsu::__private::patch_root!{}`, which
//!   also declares the forwarding global allocator, so a user `#[global_allocator]` is demoted
//!   to a plain static). It is built as a cdylib with `--cfg dsu_patch`, the base's Cargo.lock
//!   and profile;
//! - hand-off: the crate is NEW's program as it is (its `main`, its allocator), built as NEW's
//!   binary with `--cfg dsu_patch` (so the transfers are compiled in), NEW's Cargo.lock and
//!   profile, and NEW's toolchain pin when it has one.
//!
//! Either is built into the base's target directory and packed with its manifest into one
//! `.dsu` file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use cargo_metadata::{Metadata, Package as CargoPackage};
use dsu::package::{BaseComponent, Manifest, Package};
use dsu::Engine;
use dsu_syntax::is_dsu_attr;
use quote::{format_ident, quote, ToTokens};
use syn::Item;

use crate::cargo::{cargo, locked_version, read_package, root_target, toolchain_pin};
use crate::source::{self, CrateSource, Model};
use crate::transfer::{self, Changed};

/// What to build.
#[derive(Clone, Debug)]
pub struct PatchOptions {
    /// The running version: a package directory or its `Cargo.toml`.
    pub old: PathBuf,
    /// The new version.
    pub new: PathBuf,
    /// Build with `--release` (must match how the base was built).
    pub release: bool,
    /// Where to build; default: the base's target directory.
    pub target_dir: Option<PathBuf>,
    /// Prepare-to-die timeout written into the manifest.
    pub timeout_ms: u64,
    /// The Cargo.lock of the running build; default: OLD's. In a chain of updates
    /// (v1 -> v2 -> v3) the process still runs v1's dependencies, so every patch is built
    /// against v1's lock. A hand-off uses NEW's own Cargo.lock when it has one (the new
    /// process may run other dependency versions), else this one.
    pub base_lock: Option<PathBuf>,
    /// What to build: a patch library (in place) or the new executable (hand-off).
    pub engine: Engine,
}

impl PatchOptions {
    pub fn new(old: impl Into<PathBuf>, new: impl Into<PathBuf>) -> Self {
        PatchOptions {
            old: old.into(),
            new: new.into(),
            release: false,
            target_dir: None,
            timeout_ms: 5_000,
            base_lock: None,
            engine: Engine::InPlace,
        }
    }
}

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

/// A generated (not yet built) patch or hand-off crate.
pub struct Generated {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub target_dir: PathBuf,
    pub release: bool,
    pub artifact: Artifact,
    /// Build with the rustup proxies in `dir`, which holds NEW's toolchain pin (a hand-off of
    /// a program that pins its toolchain is built by that toolchain).
    pub pinned: bool,
    /// The `old` modules and generated transfers, formatted (`--emit transfer`).
    pub transfer_src: String,
    /// Every transformed source file, relative to the patch crate (`--emit patch-src`).
    pub files: Vec<(PathBuf, String)>,
    /// Held until the artifact is read: the exclusive lock on `dir` (see `lock_work_dir`).
    lock: std::fs::File,
}

/// A built package.
pub struct Built {
    pub package: Package,
    pub crate_dir: PathBuf,
    /// The built patch library or executable (the package's payload).
    pub artifact: PathBuf,
}

struct Crate {
    meta: Metadata,
    pkg: CargoPackage,
    dir: PathBuf,
    root: PathBuf,
    /// The root target's name when it is a binary.
    bin: Option<String>,
}

fn load_crate(path: &Path) -> Result<Crate> {
    let (meta, pkg) = read_package(path)?;
    let target = root_target(&pkg)?;
    let dir = pkg
        .manifest_path
        .parent()
        .map(|p| p.as_std_path().to_path_buf())
        .ok_or_else(|| anyhow!("bad manifest path"))?;
    let root = target.src_path.as_std_path().to_path_buf();
    let bin = target.is_bin().then(|| target.name.clone());
    Ok(Crate {
        meta,
        pkg,
        dir,
        root,
        bin,
    })
}

/// A `#[dsu::global]` whose type changed.
struct RetypedGlobal {
    module: Vec<String>,
    name: String,
    /// The new type's name (a changed state type of `module`).
    ty: String,
    old_hash: u64,
    new_hash: u64,
}

/// One changed state type.
struct ChangedState {
    module: Vec<String>,
    name: String,
    old: Item,
    new: Item,
}

/// Generates the patch crate (or, for `Engine::Handoff`, the hand-off crate) for OLD -> NEW.
pub fn generate(opts: &PatchOptions) -> Result<Generated> {
    generate_reporting(opts, &mut |_| {})
}

/// `generate`, calling `waiting` with the work directory when another `cargo dsu` is building
/// the same pair there and this one has to wait for it.
pub fn generate_reporting(
    opts: &PatchOptions,
    waiting: &mut dyn FnMut(&Path),
) -> Result<Generated> {
    let old = load_crate(&opts.old)?;
    let new = load_crate(&opts.new)?;
    let artifact = match (opts.engine, &new.bin) {
        (Engine::InPlace, _) => Artifact::Patch,
        // The binary is named after both versions, not like NEW's: cargo copies a binary to
        // `target/<profile>/<name>`, where it would replace the base's own executable (the one
        // the running process was started from). The package name, which the program sees as
        // `CARGO_PKG_NAME`, stays NEW's.
        (Engine::Handoff, Some(_)) => Artifact::Executable(
            format!(
                "dsu-handoff-{}-{}-to-{}",
                new.pkg.name, old.pkg.version, new.pkg.version
            )
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        ),
        (Engine::Handoff, None) => bail!(
            "a hand-off starts the new version's executable, but package `{}` has no binary \
             target; give it a `[[bin]]` (or src/main.rs)",
            new.pkg.name
        ),
    };
    let src_old = source::load_crate(&old.dir, &old.root)?;
    let src_new = source::load_crate(&new.dir, &new.root)?;

    // Analysis (owned results, so NEW's trees can be edited afterwards).
    let (changed, transfers_needed, base, old_uses, retyped_globals) = {
        let m_old = Model::of(&src_old);
        let m_new = Model::of(&src_new);
        let def_changed: HashSet<String> = m_new
            .states
            .iter()
            .filter(|(key, n)| {
                m_old.states.get(*key).is_some_and(|o| {
                    dsu_syntax::canonical(&o.item.to_token_stream())
                        != dsu_syntax::canonical(&n.item.to_token_stream())
                })
            })
            .map(|(_, n)| n.name.clone())
            .collect();
        let all: Vec<(String, Vec<syn::Type>)> = m_new
            .states
            .values()
            .map(|n| (n.name.clone(), transfer::field_types(n.item)))
            .collect();
        let to_transfer = transfer::changed_closure(def_changed, &all);
        let mut changed = Vec::new();
        for (key, n) in &m_new.states {
            if let Some(o) = m_old.states.get(key) {
                if to_transfer.contains(&n.name) {
                    changed.push(ChangedState {
                        module: n.module.clone(),
                        name: n.name.clone(),
                        old: o.item.clone(),
                        new: n.item.clone(),
                    });
                }
            }
        }
        changed.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
        let changed_keys: HashSet<String> = changed
            .iter()
            .map(|c| source::key(&c.module, &c.name))
            .collect();
        let transfers_needed: Vec<String> = m_new
            .components
            .keys()
            .filter(|k| changed_keys.contains(*k) && !m_new.transfers.contains_key(*k))
            .cloned()
            .collect();
        let mut base: Vec<BaseComponent> = m_old
            .components
            .iter()
            .map(|(key, c)| BaseComponent {
                id: c.id(key),
                code: m_old.component_code(key).expect("listed"),
            })
            .collect();
        base.sort_by(|a, b| a.id.cmp(&b.id));
        let old_uses: HashMap<Vec<String>, Vec<syn::ItemUse>> = m_old.uses.clone();
        // Globals whose type changed: the type must be a changed state type of the same module.
        let globals_of = |src: &CrateSource| -> HashMap<String, (Vec<String>, String, syn::Type)> {
            src.items()
                .into_iter()
                .filter_map(|(module, _, item)| match item {
                    Item::Static(st) if source::has_attr(&st.attrs, "global") => Some((
                        source::key(&module, &st.ident.to_string()),
                        (module, st.ident.to_string(), (*st.ty).clone()),
                    )),
                    _ => None,
                })
                .collect()
        };
        let (g_old, g_new) = (globals_of(&src_old), globals_of(&src_new));
        let mut retyped_globals = Vec::new();
        for (key, (module, name, nty)) in &g_new {
            let Some((_, _, oty)) = g_old.get(key) else {
                continue;
            };
            let names: HashSet<String> = changed.iter().map(|c| c.name.clone()).collect();
            let same_tokens = dsu_syntax::canonical(&oty.to_token_stream())
                == dsu_syntax::canonical(&nty.to_token_stream());
            if same_tokens && !transfer::holds_any(nty, &names) {
                continue;
            }
            let ty_name = match nty {
                syn::Type::Path(p) if p.path.segments.len() == 1 => p.path.segments[0].ident.to_string(),
                _ => bail!("global `{key}` changed type to `{}`; only a `#[dsu::state]` type named plainly can be transferred", nty.to_token_stream()),
            };
            if !changed
                .iter()
                .any(|c| c.name == ty_name && &c.module == module)
            {
                bail!("global `{key}` changed type, but `{ty_name}` is not a changed `#[dsu::state]` of the same module");
            }
            retyped_globals.push(RetypedGlobal {
                module: module.clone(),
                name: name.clone(),
                ty: ty_name,
                old_hash: dsu_syntax::token_hash(&oty.to_token_stream()),
                new_hash: dsu_syntax::token_hash(&nty.to_token_stream()),
            });
        }
        let mut transfers_needed = transfers_needed;
        for g in &retyped_globals {
            let key = source::key(&g.module, &g.ty);
            if !transfers_needed.contains(&key) {
                transfers_needed.push(key);
            }
        }
        (changed, transfers_needed, base, old_uses, retyped_globals)
    };

    // Per module: the `old` module and the generated transfers and converters. A nested
    // changed type's converter lives in the type's own module, beside its `old` definition.
    let names: HashSet<String> = changed.iter().map(|c| c.name.clone()).collect();
    let homes: HashMap<String, Vec<String>> = changed
        .iter()
        .map(|c| (c.name.clone(), c.module.clone()))
        .collect();
    let ch = Changed {
        names: &names,
        homes: Some(&homes),
    };
    let mut generated: BTreeMap<Vec<String>, Vec<proc_macro2::TokenStream>> = BTreeMap::new();
    let mut needs: Vec<String> = Vec::new();
    for c in &changed {
        let key = source::key(&c.module, &c.name);
        if transfers_needed.contains(&key) {
            let (tokens, n) = transfer::component_transfer(&c.name, &c.old, &c.new, &ch)
                .with_context(|| format!("state type `{key}`"))?;
            generated.entry(c.module.clone()).or_default().push(tokens);
            needs.extend(n);
        }
    }
    for g in &retyped_globals {
        let ty = format_ident!("{}", g.ty);
        let name = &g.name;
        let transfer = format_ident!("__dsu_transfer_{}", g.ty);
        let (oh, nh) = (g.old_hash, g.new_hash);
        generated.entry(g.module.clone()).or_default().push(quote! {
            const _: () = {
                static __DSU_GLOBAL_TRANSFER: ::dsu::__private::GlobalTransferDesc = ::dsu::__private::GlobalTransferDesc {
                    name: #name,
                    module_path: ::core::module_path!(),
                    old_fingerprint: ::dsu::__private::fingerprint::mix_all(#oh, &[
                        ::core::mem::size_of::<old::#ty>() as u64,
                        ::core::mem::align_of::<old::#ty>() as u64,
                    ]),
                    new_fingerprint: ::dsu::__private::fingerprint::mix_all(#nh, &[
                        ::core::mem::size_of::<#ty>() as u64,
                        ::core::mem::align_of::<#ty>() as u64,
                    ]),
                    transfer: #transfer,
                    drop_new: ::dsu::__private::drop_state::<#ty>,
                    old_schema: #oh,
                    load_old: <old::#ty as ::dsu::__private::State>::LAYOUT.load,
                };
                #[::dsu::__private::linkme::distributed_slice(::dsu::__private::GLOBAL_TRANSFERS)]
                #[linkme(crate = ::dsu::__private::linkme)]
                static __DSU_GLOBAL_TRANSFER_REG: &'static ::dsu::__private::GlobalTransferDesc = &__DSU_GLOBAL_TRANSFER;
            };
        });
    }
    let mut done = HashSet::new();
    while let Some(n) = needs.pop() {
        if !done.insert(n.clone()) {
            continue;
        }
        let c = changed.iter().find(|c| c.name == n).ok_or_else(|| {
            anyhow!(
                "nested state type `{n}` changed, but it is not a `#[dsu::state]` of both versions"
            )
        })?;
        let tokens = transfer::converter(&c.name, &c.old, &c.new, &ch, &mut needs)?;
        generated.entry(c.module.clone()).or_default().push(tokens);
    }
    let mut by_module: BTreeMap<Vec<String>, Vec<&ChangedState>> = BTreeMap::new();
    for c in &changed {
        by_module.entry(c.module.clone()).or_default().push(c);
    }
    let externs = extern_names(&old.pkg);
    let mut transfer_src = String::new();
    // The patch's sources are NEW's text with a few edits spliced in, never reprinted: the
    // component macros fingerprint the tokens of their impls, and those must be the tokens the
    // analysis saw (a formatter may, say, wrap a match arm in braces).
    let mut edits: HashMap<usize, Vec<Edit>> = HashMap::new();
    for (module, states) in &by_module {
        let old_mod = old_module(
            states,
            old_uses.get(module).map(Vec::as_slice).unwrap_or(&[]),
            &externs,
            &homes,
        );
        let old_item: Item = syn::parse2(old_mod).context("generated old module")?;
        let mut shown = vec![old_item];
        for g in generated.remove(module).unwrap_or_default() {
            let file: syn::File = syn::parse2(g).context("generated transfer")?;
            shown.extend(file.items);
        }
        let text = prettyplease::unparse(&syn::File {
            shebang: None,
            attrs: Vec::new(),
            items: shown,
        });
        let (file, at) = module_end(&src_new, module).ok_or_else(|| {
            anyhow!(
                "module `{}` not found in the new version",
                module.join("::")
            )
        })?;
        edits.entry(file).or_default().push(Edit {
            start: at,
            end: at,
            text: format!("\n{text}"),
        });
        let place = if module.is_empty() {
            "the crate root".to_string()
        } else {
            format!("module `{}`", module.join("::"))
        };
        transfer_src.push_str(&format!("// In {place}:\n{text}"));
    }

    // Crate-wide edits. A hand-off is a whole program: it keeps its own allocator.
    let in_place = artifact == Artifact::Patch;
    for (i, f) in src_new.files.iter().enumerate() {
        let e = edits.entry(i).or_default();
        crate_wide_edits(&f.ast.items, e, in_place);
    }
    let root_edits = edits.entry(0).or_default();
    root_edits.push(Edit {
        start: 0,
        end: 0,
        text: "#![allow(dead_code, unused_imports, unused_variables, unused_mut, unused_unsafe, clippy::all)]\n".into(),
    });
    if in_place {
        root_edits.push(Edit {
            start: usize::MAX,
            end: usize::MAX,
            text: "\n// Generated by cargo dsu: the patch's loader-facing root.\n::dsu::__private::patch_root! {}\n".into(),
        });
    }

    // Write the crate.
    let target_dir = opts
        .target_dir
        .clone()
        .unwrap_or_else(|| old.meta.target_directory.as_std_path().to_path_buf());
    let dir = target_dir.join("dsu").join(format!(
        "{}-{}-to-{}{}",
        new.pkg.name,
        old.pkg.version,
        new.pkg.version,
        if in_place { "" } else { "-handoff" }
    ));
    let work_lock = lock_work_dir(&dir, waiting)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    copy_tree(&new.dir, &dir, &target_dir)?;
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
    let root_rel = new
        .root
        .strip_prefix(&new.dir)
        .unwrap_or(&new.root)
        .to_path_buf();
    let cargo_toml = patch_manifest(&old, &new, &root_rel, &artifact)?;
    std::fs::write(dir.join("Cargo.toml"), cargo_toml)?;
    let base_lock = opts
        .base_lock
        .clone()
        .unwrap_or_else(|| old.meta.workspace_root.as_std_path().join("Cargo.lock"));
    let new_lock = new.meta.workspace_root.as_std_path().join("Cargo.lock");
    let lock = if !in_place && new_lock.is_file() {
        new_lock
    } else {
        base_lock
    };
    std::fs::copy(&lock, dir.join("Cargo.lock")).with_context(|| {
        if in_place {
            format!(
                "cannot copy the base's Cargo.lock from {}: build the base first, so the patch \
                 uses the same dependency versions",
                lock.display()
            )
        } else {
            format!(
                "cannot copy a Cargo.lock from {}: the new version has none either; run \
                 `cargo generate-lockfile` in it",
                lock.display()
            )
        }
    })?;
    // A hand-off is built by the toolchain NEW pins, if any (the pin travels with the crate).
    let pinned = !in_place
        && match toolchain_pin(&new.dir) {
            Some((pin, _)) => {
                let name = pin.file_name().expect("a pin is a file");
                std::fs::copy(&pin, dir.join(name))
                    .with_context(|| format!("cannot copy {}", pin.display()))?;
                true
            }
            None => false,
        };

    let (rustc, target) = rustc_version(pinned.then_some(dir.as_path()))?;
    let mut manifest = Manifest::for_this_toolchain(
        &new.pkg.name,
        &old.pkg.version.to_string(),
        &new.pkg.version.to_string(),
    );
    manifest.rustc = rustc;
    manifest.target = target;
    manifest.dsu_rt = locked_version(&dir.join("Cargo.lock"), "dsu-rt")?;
    manifest.debug_assertions = !opts.release;
    manifest.base = base;
    manifest.timeout_ms = opts.timeout_ms;
    manifest.engine = opts.engine;
    Ok(Generated {
        dir,
        manifest,
        target_dir,
        release: opts.release,
        artifact,
        pinned,
        transfer_src,
        files,
        lock: work_lock,
    })
}

/// Locks the work directory of one OLD -> NEW pair exclusively, through `DIR.lock` beside it.
/// Two `cargo dsu` runs of the same pair (two terminals, `watch` and `diff`, tests in parallel)
/// share that directory: without the lock the second deletes and rewrites the sources while the
/// first is building them. The second now waits until the first has read its artifact.
fn lock_work_dir(dir: &Path, waiting: &mut dyn FnMut(&Path)) -> Result<std::fs::File> {
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

/// Generates, builds and packs the patch.
pub fn build(opts: &PatchOptions) -> Result<Built> {
    let g = generate(opts)?;
    build_generated(g, &mut |_| {})
}

/// Builds and packs a generated crate; `progress` sees the name of every crate cargo compiles.
pub fn build_generated(g: Generated, progress: &mut dyn FnMut(&str)) -> Result<Built> {
    let artifact = compile(&g, progress)?;
    let bytes =
        std::fs::read(&artifact).with_context(|| format!("cannot read {}", artifact.display()))?;
    // The artifact is read: another run of the same pair may now rewrite the work directory.
    drop(g.lock);
    Ok(Built {
        package: Package::new(g.manifest, bytes),
        crate_dir: g.dir,
        artifact,
    })
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

fn compile(g: &Generated, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let mut cmd = tool("cargo", g.pinned.then_some(g.dir.as_path()));
    cmd.arg("rustc");
    match &g.artifact {
        Artifact::Patch => cmd.arg("--lib"),
        Artifact::Executable(bin) => cmd.args(["--bin", bin]),
    };
    cmd.arg("--manifest-path")
        .arg(g.dir.join("Cargo.toml"))
        .arg("--message-format=json-render-diagnostics");
    if g.release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--cfg", "dsu_patch"])
        .env("CARGO_TARGET_DIR", &g.target_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run cargo to build {}", g.artifact.noun()))?;
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
            match &g.artifact {
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
            g.artifact.noun(),
            g.dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    built.ok_or_else(|| {
        anyhow!(
            "cargo built no {} in {}",
            match &g.artifact {
                Artifact::Patch => "cdylib for the patch".to_string(),
                Artifact::Executable(bin) => format!("executable `{bin}`"),
            },
            g.dir.display()
        )
    })
}

fn extern_names(pkg: &CargoPackage) -> HashSet<String> {
    let mut s: HashSet<String> = ["std", "core", "alloc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for d in &pkg.dependencies {
        let name = d.rename.clone().unwrap_or_else(|| d.name.clone());
        s.insert(name.replace('-', "_"));
    }
    // The runtime's library is named `dsu` whatever the dependency is called.
    s.insert("dsu".to_string());
    s
}

/// `mod old { ... }`: the base's definitions of the changed state types of one module.
///
/// The definitions keep their tokens (the layout fingerprint compares them with the running
/// types'): a changed type of another module named plainly is imported from that module's
/// `old`; one named by a path gets `old` before its last segment, which `#[dsu::state(old)]`
/// leaves out of the fingerprint.
fn old_module(
    states: &[&ChangedState],
    uses: &[syn::ItemUse],
    externs: &HashSet<String>,
    homes: &HashMap<String, Vec<String>>,
) -> proc_macro2::TokenStream {
    let local: HashSet<String> = states.iter().map(|c| c.name.clone()).collect();
    let mut plain_foreign: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let defs: Vec<Item> = states
        .iter()
        .map(|c| {
            let mut item = c.old.clone();
            mark_old(&mut item);
            let mut v = OldPaths {
                homes,
                local: &local,
                plain_foreign: &mut plain_foreign,
            };
            syn::visit_mut::VisitMut::visit_item_mut(&mut v, &mut item);
            item
        })
        .collect();
    let imported: HashSet<String> = plain_foreign.keys().cloned().collect();
    let uses = uses.iter().filter_map(|u| {
        let mut u = u.clone();
        u.vis = syn::Visibility::Inherited;
        rebase_use(&mut u.tree, externs);
        u.tree = prune_use(u.tree, &imported)?;
        Some(u)
    });
    let foreign = plain_foreign.iter().map(|(name, home)| {
        let segs = home.iter().map(|m| format_ident!("{}", m));
        let name = format_ident!("{}", name);
        quote!(use crate #(:: #segs)* ::old:: #name;)
    });
    quote! {
        /// The base's definitions of this module's changed state types (generated by `cargo dsu`).
        #[doc(hidden)]
        #[allow(dead_code, unused_imports, non_camel_case_types, clippy::all)]
        pub(crate) mod old {
            use super::*;
            #(#uses)*
            #(#foreign)*
            #(#defs)*
        }
    }
}

/// Points changed types named in old definitions at their old versions (see `old_module`).
struct OldPaths<'a> {
    homes: &'a HashMap<String, Vec<String>>,
    /// Changed types defined in this `old` module itself.
    local: &'a HashSet<String>,
    /// Changed types of other modules named plainly: to import.
    plain_foreign: &'a mut BTreeMap<String, Vec<String>>,
}

impl syn::visit_mut::VisitMut for OldPaths<'_> {
    fn visit_type_path_mut(&mut self, t: &mut syn::TypePath) {
        syn::visit_mut::visit_type_path_mut(self, t);
        if t.qself.is_some() {
            return;
        }
        let n = t.path.segments.len();
        let Some(last) = t.path.segments.last() else {
            return;
        };
        let name = last.ident.to_string();
        let Some(home) = self.homes.get(&name) else {
            return;
        };
        if n == 1 {
            if !self.local.contains(&name) {
                self.plain_foreign.insert(name, home.clone());
            }
            return;
        }
        let old_seg: syn::PathSegment = syn::parse_quote!(old);
        t.path.segments.insert(n - 1, old_seg);
    }
}

/// A use tree without the names in `drop` (None when nothing is left).
fn prune_use(tree: syn::UseTree, drop: &HashSet<String>) -> Option<syn::UseTree> {
    match tree {
        syn::UseTree::Name(n) if drop.contains(&n.ident.to_string()) => None,
        syn::UseTree::Rename(r) if drop.contains(&r.rename.to_string()) => None,
        syn::UseTree::Path(mut p) => {
            let inner = prune_use(*p.tree, drop)?;
            p.tree = Box::new(inner);
            Some(syn::UseTree::Path(p))
        }
        syn::UseTree::Group(mut g) => {
            let items: Vec<syn::UseTree> = std::mem::take(&mut g.items)
                .into_iter()
                .filter_map(|t| prune_use(t, drop))
                .collect();
            if items.is_empty() {
                return None;
            }
            g.items = items.into_iter().collect();
            Some(syn::UseTree::Group(g))
        }
        other => Some(other),
    }
}

/// A `use` copied one module deeper: relative paths gain a `super::`.
fn rebase_use(tree: &mut syn::UseTree, externs: &HashSet<String>) {
    let first = match tree {
        syn::UseTree::Path(p) => p.ident.to_string(),
        syn::UseTree::Name(n) => n.ident.to_string(),
        syn::UseTree::Rename(r) => r.ident.to_string(),
        _ => return,
    };
    if first == "crate" || externs.contains(&first) {
        return;
    }
    if first == "self" {
        if let syn::UseTree::Path(p) = tree {
            p.ident = syn::Ident::new("super", p.ident.span());
        }
        return;
    }
    let inner = std::mem::replace(
        tree,
        syn::UseTree::Glob(syn::UseGlob {
            star_token: Default::default(),
        }),
    );
    *tree = syn::UseTree::Path(syn::UsePath {
        ident: syn::Ident::new("super", proc_macro2::Span::call_site()),
        colon2_token: Default::default(),
        tree: Box::new(inner),
    });
}

/// `#[dsu::state]` -> `#[dsu::state(old)]`, and everything public so the transfer can read it.
fn mark_old(item: &mut Item) {
    let (attrs, vis) = match item {
        Item::Struct(s) => {
            for f in s.fields.iter_mut() {
                f.vis = syn::parse_quote!(pub);
            }
            (&mut s.attrs, &mut s.vis)
        }
        Item::Enum(e) => (&mut e.attrs, &mut e.vis),
        _ => return,
    };
    *vis = syn::parse_quote!(pub);
    for a in attrs.iter_mut() {
        if is_dsu_attr(a.path(), "state") {
            *a = syn::parse_quote!(#[dsu::state(old)]);
        }
    }
}

/// A text edit: replace `start..end` (byte offsets; `usize::MAX` is the end of the file).
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

/// Applies edits to a file's text.
fn splice(original: &str, mut edits: Vec<Edit>) -> String {
    let len = original.len();
    for e in &mut edits {
        e.start = e.start.min(len);
        e.end = e.end.min(len);
    }
    // From the end, so earlier offsets stay valid; insertions at one point keep their order.
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = original.to_string();
    let mut i = 0;
    while i < edits.len() {
        let mut j = i;
        while j + 1 < edits.len()
            && edits[j + 1].start == edits[i].start
            && edits[j + 1].end == edits[i].end
            && edits[i].start == edits[i].end
        {
            j += 1;
        }
        // Insertions at the same point, in the order they were made.
        let text: String = edits[i..=j].iter().map(|e| e.text.as_str()).collect();
        out.replace_range(edits[i].start..edits[i].end, &text);
        i = j + 1;
    }
    out
}

/// A span's position as a byte offset into the text it was parsed from.
fn offset(text: &str, at: proc_macro2::LineColumn) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(at.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line = &text[line_start..];
    line_start
        + line
            .char_indices()
            .nth(at.column)
            .map(|(i, _)| i)
            .unwrap_or(line.len())
}

/// Edits that apply everywhere: with `demote_allocator` (a patch), a user `#[global_allocator]`
/// is left out (the patch root declares the forwarding allocator; the static stays, unused),
/// and every module becomes `pub(crate)` so generated code can name items anywhere.
fn crate_wide_edits(items: &[Item], edits: &mut Vec<Edit>, demote_allocator: bool) {
    use syn::spanned::Spanned;
    for item in items {
        match item {
            Item::Static(s) if demote_allocator => {
                for a in s
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("global_allocator"))
                {
                    edits.push(Edit::span(
                        a.span(),
                        "/* #[global_allocator]: the host's */",
                    ));
                }
            }
            Item::Mod(m) => {
                if matches!(m.vis, syn::Visibility::Inherited) {
                    let at = m.mod_token.span;
                    edits.push(Edit::at(at.start(), "pub(crate) "));
                }
                if let Some((_, inner)) = &m.content {
                    crate_wide_edits(inner, edits, demote_allocator);
                }
            }
            _ => {}
        }
    }
}

impl Edit {
    /// Replace a span's text (resolved to offsets in `resolve`).
    fn span(span: proc_macro2::Span, text: &str) -> Edit {
        Edit {
            start: pack(span.start()),
            end: pack(span.end()),
            text: text.to_string(),
        }
    }

    fn at(at: proc_macro2::LineColumn, text: &str) -> Edit {
        Edit {
            start: pack(at),
            end: pack(at),
            text: text.to_string(),
        }
    }
}

/// Positions are recorded as line/column (packed) and turned into byte offsets per file.
fn pack(lc: proc_macro2::LineColumn) -> usize {
    PACKED | (lc.line << 24) | lc.column
}

const PACKED: usize = 1 << 62;

/// Turns packed line/column positions into byte offsets of `text`.
fn resolve(text: &str, edits: &mut [Edit]) {
    for e in edits {
        for p in [&mut e.start, &mut e.end] {
            if *p != usize::MAX && *p & PACKED != 0 {
                let v = *p & !PACKED;
                *p = offset(
                    text,
                    proc_macro2::LineColumn {
                        line: v >> 24,
                        column: v & 0xff_ffff,
                    },
                );
            }
        }
    }
}

/// The file and the position (packed) where items are appended to `module`: the end of the
/// file for a file's own module, before the closing brace for an inline module.
fn module_end(src: &CrateSource, module: &[String]) -> Option<(usize, usize)> {
    let (i, file) = src
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| module.starts_with(&f.module))
        .max_by_key(|(_, f)| f.module.len())?;
    let depth = file.module.len();
    if depth == module.len() {
        return Some((i, usize::MAX));
    }
    let mut items = &file.ast.items;
    let mut close = None;
    for seg in &module[depth..] {
        let m = items.iter().find_map(|it| match it {
            Item::Mod(m) if m.ident == seg.as_str() && m.content.is_some() => Some(m),
            _ => None,
        })?;
        let (brace, inner) = m.content.as_ref().expect("inline");
        close = Some(brace.span.close().start());
        items = inner;
    }
    close.map(|c| (i, pack(c)))
}

fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<()> {
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
fn patch_manifest(
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

/// `(release (commit), host triple)` of the rustc cargo will use (in `pinned_dir`, see
/// `tool`), in dsu-rt's format.
fn rustc_version(pinned_dir: Option<&Path>) -> Result<(String, String)> {
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
