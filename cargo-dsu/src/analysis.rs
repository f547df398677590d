//! The analysis behind `cargo dsu diff` and `check`: what changed between two versions, the
//! category of each change in the update taxonomy (DESIGN.md section 2), the constraints the
//! running system must meet before the update, what cannot be applied in place, and which
//! engine applies the update (DESIGN.md section 8): in place where possible, else a process
//! hand-off where that can apply every refused change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dsu::Engine;
use dsu_syntax::{canonical, is_dsu_attr};
use proc_macro2::TokenStream;
use quote::ToTokens;
use serde::Serialize;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ImplItem, Item};

use crate::source::{self, CrateSource, Model};
use crate::transfer::{self, Changed};

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
}

/// What kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ComponentAdded,
    ComponentRemoved,
    MethodAdded,
    MethodRemoved,
    BodyChanged,
    SignatureChanged,
    ProtocolChanged,
    StateAdded,
    FieldAdded,
    FieldRemoved,
    FieldRenamed,
    FieldRetyped,
    StateChanged,
    GlobalAdded,
    GlobalRetyped,
    GlobalInitChanged,
    TransferAdded,
    OutsideChanged,
    StaticReachable,
    DependencyChanged,
    AllocatorChanged,
    DataMigration,
}

/// One change, classified.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub kind: Kind,
    /// The item, e.g. `Store::get`, `state Entry`, `field Entry.created`.
    pub item: String,
    pub file: String,
    pub line: u32,
    /// Category in the update taxonomy (1 one component ... 6 environment).
    pub category: u8,
    pub description: String,
    /// What it requires of the running system.
    pub constraint: String,
}

/// Why (part of) the update cannot be applied in place.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub item: String,
    pub file: String,
    pub line: u32,
    pub reason: String,
    /// What would make it possible.
    pub fix: String,
    /// Whether a process hand-off can apply it. A hand-off replaces the whole program (`main`
    /// and all other code, the dependencies, the toolchain, the allocator), so only what it
    /// still shares with the in-place engine stops it: the state must be transferred, and the
    /// new version must be a program it can start.
    pub handoff_ok: bool,
}

impl Refusal {
    /// `file:line` (or the file alone when the refusal has no line).
    pub fn at(&self) -> String {
        if self.line > 0 {
            format!("{}:{}", self.file, self.line)
        } else {
            self.file.clone()
        }
    }
}

/// The reason for the in-place engine when nothing stands in its way.
pub const IN_PLACE_REASON: &str = "every change is inside components: applied in place";

/// Which engine applies the update, and why (see [`Analysis::choose_engine`]).
#[derive(Clone, Debug, Serialize)]
pub struct EnginePlan {
    /// The engine asked for with `--engine` (None: chosen automatically).
    pub requested: Option<Engine>,
    /// The engine that applies the update; None when it cannot be applied.
    pub engine: Option<Engine>,
    /// One line each: why this engine (or why none).
    pub reasons: Vec<String>,
}

/// The constraints derived from the changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Constraints {
    pub components: Vec<String>,
    pub protocols_idle: Vec<String>,
    pub park_threads: bool,
    pub timeout_ms: u64,
}

/// The result of comparing two versions.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub old: Version,
    pub new: Version,
    pub changes: Vec<Change>,
    /// What the in-place engine cannot apply.
    pub refusals: Vec<Refusal>,
    pub constraints: Constraints,
    /// The engine (chosen automatically unless [`Analysis::choose_engine`] is told otherwise).
    pub plan: EnginePlan,
}

impl Analysis {
    /// Whether the update cannot be applied in place.
    pub fn refused(&self) -> bool {
        !self.refusals.is_empty()
    }

    /// Whether the planned engine can apply the update.
    pub fn applicable(&self) -> bool {
        self.plan.engine.is_some()
    }

    /// The refusals a hand-off cannot apply either.
    pub fn blocking(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter().filter(|r| !r.handoff_ok)
    }

    /// Whether a process hand-off can apply the update.
    pub fn handoff_possible(&self) -> bool {
        self.blocking().next().is_none() && self.new.bin.is_some()
    }

    /// Chooses the engine: `forced` (from `--engine`), else in place when nothing is refused,
    /// else a hand-off when it can apply every refused change. The choice and its reasons go
    /// into [`Analysis::plan`].
    pub fn choose_engine(&mut self, forced: Option<Engine>) {
        let handoff_lines: Vec<String> = self
            .refusals
            .iter()
            .map(|r| format!("{} ({}): {}", r.item, r.at(), r.reason))
            .collect();
        let blocking = self.blocking().count();
        // Why a hand-off cannot apply it (None: it can).
        let handoff_blocked = if blocking > 0 {
            Some(format!(
                "{blocking} problem(s) that a hand-off cannot apply either (the state must be \
                 transferred by both engines)"
            ))
        } else if self.new.bin.is_none() {
            Some(format!(
                "a hand-off starts the new version's executable, but package `{}` has no \
                 binary target",
                self.new.name
            ))
        } else {
            None
        };
        let (engine, reasons) = match (forced, self.refused(), handoff_blocked) {
            (Some(Engine::InPlace), false, _) => (
                Some(Engine::InPlace),
                vec![
                    "forced with --engine in-place".to_string(),
                    IN_PLACE_REASON.to_string(),
                ],
            ),
            (None, false, _) => (Some(Engine::InPlace), vec![IN_PLACE_REASON.to_string()]),
            (Some(Engine::InPlace), true, None) => (
                None,
                vec![
                    "forced with --engine in-place, which cannot apply the problem(s) above"
                        .to_string(),
                    "a hand-off can apply every one of them: run without `--engine in-place` \
                     (or with `--engine handoff`)"
                        .to_string(),
                ],
            ),
            (None, true, None) => (Some(Engine::Handoff), handoff_lines),
            (Some(Engine::Handoff), _, None) => {
                let mut reasons = vec!["forced with --engine handoff".to_string()];
                reasons.extend(handoff_lines);
                (Some(Engine::Handoff), reasons)
            }
            (forced, _, Some(why)) => {
                let mut reasons = Vec::new();
                if let Some(e) = forced {
                    reasons.push(format!("forced with --engine {}", e.as_str()));
                }
                if self.refused() && forced != Some(Engine::Handoff) {
                    reasons.push(format!(
                        "{} problem(s) that the in-place engine cannot apply",
                        self.refusals.len()
                    ));
                }
                reasons.push(why);
                (None, reasons)
            }
        };
        self.plan = EnginePlan {
            requested: forced,
            engine,
            reasons,
        };
    }

    /// The highest category among the changes.
    pub fn category(&self) -> u8 {
        self.changes.iter().map(|c| c.category).max().unwrap_or(0)
    }

    /// The manifest's view of the changes.
    pub fn manifest_changes(&self) -> Vec<dsu::package::Change> {
        self.changes
            .iter()
            .map(|c| dsu::package::Change {
                item: c.item.clone(),
                file: c.file.clone(),
                line: c.line,
                category: c.category,
                description: c.description.clone(),
            })
            .collect()
    }
}

pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

// ---------------------------------------------------------------------------------------------
// Facts about one version

struct MethodFacts {
    sig: String,
    /// `fn name(&self, k: &str) -> String`, for reports.
    shown: String,
    body: String,
    line: u32,
    protocol: Option<String>,
}

struct ComponentFacts {
    id: String,
    file: String,
    line: u32,
    methods: BTreeMap<String, MethodFacts>,
    /// Identifiers the impl mentions (paths, method calls, macro tokens).
    idents: HashSet<String>,
    /// Methods it calls (`.name(`).
    calls: HashSet<String>,
    /// Names it references as paths.
    paths: HashSet<String>,
    /// The code fingerprint the component macro computes.
    code: Option<u64>,
}

struct FieldFacts {
    name: String,
    ty: syn::Type,
    renamed_from: Option<String>,
    line: u32,
}

struct StateFacts {
    name: String,
    module: Vec<String>,
    file: String,
    line: u32,
    def: String,
    fields: Vec<FieldFacts>,
    item: Item,
}

struct GlobalFacts {
    ty: String,
    ty_ast: syn::Type,
    init: String,
    file: String,
    line: u32,
}

/// A non-dsu static the patch would see a fresh copy of.
struct StaticFacts {
    kind: &'static str,
    file: String,
    line: u32,
}

/// Code outside components: free functions, `main`, other impls, traits, constants.
struct OutsideFacts {
    code: String,
    file: String,
    line: u32,
    idents: HashSet<String>,
    calls: HashSet<String>,
    paths: HashSet<String>,
    /// A function or constant: carried by the patch when only components reach it.
    is_fn: bool,
}

struct Facts {
    components: BTreeMap<String, ComponentFacts>,
    states: BTreeMap<String, StateFacts>,
    globals: BTreeMap<String, GlobalFacts>,
    statics: BTreeMap<String, StaticFacts>,
    outside: BTreeMap<String, OutsideFacts>,
    transfers: BTreeSet<String>,
    /// The `#[global_allocator]` static, if any.
    allocator: Option<AllocatorFacts>,
}

/// The program's `#[global_allocator]`: a patch allocates with the running process's.
struct AllocatorFacts {
    name: String,
    ty: String,
    code: String,
    file: String,
    line: u32,
}

fn line_of(t: &impl Spanned) -> u32 {
    t.span().start().line as u32
}

fn rel(file: &source::SourceFile) -> String {
    file.rel.to_string_lossy().replace('\\', "/")
}

#[derive(Default)]
struct Idents {
    idents: HashSet<String>,
    calls: HashSet<String>,
    /// Names referenced as paths (`helper(x)`, `CONST`): what can reach a free item.
    paths: HashSet<String>,
}

impl<'a> Visit<'a> for Idents {
    fn visit_ident(&mut self, i: &'a proc_macro2::Ident) {
        self.idents.insert(i.to_string());
    }
    fn visit_expr_path(&mut self, p: &'a syn::ExprPath) {
        if let Some(seg) = p.path.segments.last() {
            self.paths.insert(seg.ident.to_string());
        }
        syn::visit::visit_expr_path(self, p);
    }
    fn visit_expr_method_call(&mut self, m: &'a syn::ExprMethodCall) {
        self.calls.insert(m.method.to_string());
        syn::visit::visit_expr_method_call(self, m);
    }
    fn visit_macro(&mut self, m: &'a syn::Macro) {
        // Macro bodies are opaque to syn: take their identifiers as tokens, and read them as
        // expressions where they are (`println!("{}", x.get(k))`), to see the calls inside.
        collect_token_idents(m.tokens.clone(), &mut self.idents);
        let exprs = m.parse_body_with(
            syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        );
        if let Ok(exprs) = exprs {
            for e in &exprs {
                self.visit_expr(e);
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

fn collect_token_idents(ts: TokenStream, out: &mut HashSet<String>) {
    for t in ts {
        match t {
            proc_macro2::TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            proc_macro2::TokenTree::Group(g) => collect_token_idents(g.stream(), out),
            _ => {}
        }
    }
}

fn idents_of(node: impl FnOnce(&mut Idents)) -> Idents {
    let mut v = Idents::default();
    node(&mut v);
    v
}

fn renamed_from(attrs: &[syn::Attribute]) -> Option<String> {
    attrs
        .iter()
        .find(|a| is_dsu_attr(a.path(), "renamed_from"))
        .and_then(|a| a.parse_args::<syn::LitStr>().ok().map(|l| l.value()))
}

fn state_fields(item: &Item) -> Vec<FieldFacts> {
    let fields = match item {
        Item::Struct(s) => s.fields.iter().collect::<Vec<_>>(),
        Item::Enum(e) => e.variants.iter().flat_map(|v| v.fields.iter()).collect(),
        _ => Vec::new(),
    };
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| FieldFacts {
            name: f
                .ident
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| i.to_string()),
            ty: f.ty.clone(),
            renamed_from: renamed_from(&f.attrs),
            line: line_of(f),
        })
        .collect()
}

fn facts(src: &CrateSource) -> Facts {
    let model = Model::of(src);
    let mut f = Facts {
        components: BTreeMap::new(),
        states: BTreeMap::new(),
        globals: BTreeMap::new(),
        statics: BTreeMap::new(),
        outside: BTreeMap::new(),
        transfers: model.transfers.keys().cloned().collect(),
        allocator: None,
    };
    for (key, s) in &model.states {
        f.states.insert(
            key.clone(),
            StateFacts {
                name: s.name.clone(),
                module: s.module.clone(),
                file: rel(s.file),
                line: line_of(s.item),
                def: canonical(&strip_field_attrs(s.item).to_token_stream()),
                fields: state_fields(s.item),
                item: s.item.clone(),
            },
        );
    }
    for (module, file, item) in src.items() {
        let file_rel = rel(file);
        match item {
            Item::Impl(i) if source::has_attr(&i.attrs, "component") => {
                let Some(name) = self_name(&i.self_ty) else {
                    continue;
                };
                let key = source::key(&module, &name);
                let c = &model.components[&key];
                let mut methods = BTreeMap::new();
                for it in &i.items {
                    if let ImplItem::Fn(m) = it {
                        let protocol = m
                            .attrs
                            .iter()
                            .find(|a| is_dsu_attr(a.path(), "protocol"))
                            .map(|a| canonical(&a.meta.to_token_stream()));
                        let inputs = &m.sig.inputs;
                        let output = &m.sig.output;
                        let name = &m.sig.ident;
                        methods.insert(
                            m.sig.ident.to_string(),
                            MethodFacts {
                                sig: canonical(&quote::quote!((#inputs) #output)),
                                shown: format!(
                                    "fn {name}({}){}",
                                    pretty(&inputs.to_token_stream()),
                                    match output {
                                        syn::ReturnType::Default => String::new(),
                                        syn::ReturnType::Type(_, t) =>
                                            format!(" -> {}", pretty(&t.to_token_stream())),
                                    }
                                ),
                                body: canonical(&m.block.to_token_stream()),
                                line: line_of(&m.sig.ident),
                                protocol,
                            },
                        );
                    }
                }
                let v = idents_of(|v| v.visit_item_impl(i));
                f.components.insert(
                    key.clone(),
                    ComponentFacts {
                        id: c.id(&key),
                        file: file_rel,
                        line: line_of(&i.self_ty),
                        methods,
                        idents: v.idents,
                        calls: v.calls,
                        paths: v.paths,
                        code: model.component_code(&key),
                    },
                );
            }
            Item::Static(s) if source::has_attr(&s.attrs, "global") => {
                f.globals.insert(
                    source::key(&module, &s.ident.to_string()),
                    GlobalFacts {
                        ty: pretty(&s.ty.to_token_stream()),
                        ty_ast: (*s.ty).clone(),
                        init: canonical(&s.expr.to_token_stream()),
                        file: file_rel,
                        line: line_of(&s.ident),
                    },
                );
            }
            Item::Static(s) => {
                let kind = match (&s.mutability, canonical(&s.ty.to_token_stream())) {
                    (syn::StaticMutability::Mut(_), _) => "static mut",
                    (_, t) if t.contains("OnceLock") => "OnceLock static",
                    (_, t) if t.contains("LazyLock") => "LazyLock static",
                    _ => "static",
                };
                if s.attrs
                    .iter()
                    .any(|a| a.path().is_ident("global_allocator"))
                {
                    f.allocator = Some(AllocatorFacts {
                        name: s.ident.to_string(),
                        ty: pretty(&s.ty.to_token_stream()),
                        code: canonical(&item.to_token_stream()),
                        file: file_rel.clone(),
                        line: line_of(&s.ident),
                    });
                }
                // Checked as statics (reachable from changed code?), not as code.
                f.statics.insert(
                    s.ident.to_string(),
                    StaticFacts {
                        kind,
                        file: file_rel.clone(),
                        line: line_of(&s.ident),
                    },
                );
            }
            Item::Macro(m) => {
                let name = m
                    .mac
                    .path
                    .segments
                    .last()
                    .map(|s| s.ident.to_string())
                    .unwrap_or_default();
                if name == "thread_local" || name == "lazy_static" {
                    // `static NAME: T = ...;` inside: every ident following `static`.
                    let toks: Vec<proc_macro2::TokenTree> =
                        m.mac.tokens.clone().into_iter().collect();
                    for w in toks.windows(2) {
                        if let (
                            proc_macro2::TokenTree::Ident(a),
                            proc_macro2::TokenTree::Ident(b),
                        ) = (&w[0], &w[1])
                        {
                            if a == "static" && b != "ref" && b != "mut" {
                                f.statics.insert(
                                    b.to_string(),
                                    StaticFacts {
                                        kind: if name == "thread_local" {
                                            "thread_local!"
                                        } else {
                                            "lazy_static!"
                                        },
                                        file: file_rel.clone(),
                                        line: line_of(b),
                                    },
                                );
                            }
                        }
                    }
                }
                if name != "thread_local" && name != "lazy_static" {
                    record_outside(&mut f, &module, &format!("{name}!"), item, &file_rel, false);
                }
            }
            Item::Struct(s) if !source::has_attr(&s.attrs, "state") => record_outside(
                &mut f,
                &module,
                &s.ident.to_string(),
                item,
                &file_rel,
                false,
            ),
            Item::Enum(e) if !source::has_attr(&e.attrs, "state") => record_outside(
                &mut f,
                &module,
                &e.ident.to_string(),
                item,
                &file_rel,
                false,
            ),
            Item::Fn(func) if !source::has_attr(&func.attrs, "transfer") => record_outside(
                &mut f,
                &module,
                &func.sig.ident.to_string(),
                item,
                &file_rel,
                true,
            ),
            Item::Impl(i) => {
                let name = format!("impl {}", canonical(&i.self_ty.to_token_stream()));
                let name = match &i.trait_ {
                    Some((_, p, _)) => format!(
                        "impl {} for {}",
                        canonical(&p.to_token_stream()),
                        &name[5..]
                    ),
                    None => name,
                };
                record_outside(&mut f, &module, &name, item, &file_rel, false);
            }
            Item::Const(c) => {
                record_outside(&mut f, &module, &c.ident.to_string(), item, &file_rel, true)
            }
            Item::Trait(t) => record_outside(
                &mut f,
                &module,
                &t.ident.to_string(),
                item,
                &file_rel,
                false,
            ),
            Item::Type(t) => record_outside(
                &mut f,
                &module,
                &t.ident.to_string(),
                item,
                &file_rel,
                false,
            ),
            _ => {}
        }
    }
    f
}

fn record_outside(
    f: &mut Facts,
    module: &[String],
    name: &str,
    item: &Item,
    file: &str,
    is_fn: bool,
) {
    let v = idents_of(|v| v.visit_item(item));
    f.outside.insert(
        source::key(module, name),
        OutsideFacts {
            code: canonical(&item.to_token_stream()),
            file: file.to_string(),
            line: line_of(item),
            idents: v.idents,
            calls: v.calls,
            paths: v.paths,
            is_fn,
        },
    );
}

fn self_name(t: &syn::Type) -> Option<String> {
    match t {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The definition without `#[dsu::renamed_from]` (an annotation for the diff, not a change).
fn strip_field_attrs(item: &Item) -> Item {
    let mut item = item.clone();
    if let Item::Struct(s) = &mut item {
        for f in s.fields.iter_mut() {
            f.attrs.retain(|a| !is_dsu_attr(a.path(), "renamed_from"));
        }
    }
    item
}

/// Tokens as a person writes them (`Vec<u32>`, `&mut self`), for reports.
pub fn pretty(tokens: &TokenStream) -> String {
    let mut s = canonical(tokens);
    for (from, to) in [
        // `canonical` writes every punctuation mark alone: `std : : mem`.
        (": :", "::"),
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" ,", ","),
        (" :: ", "::"),
        (":: ", "::"),
        (" ::", "::"),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
        ("- >", "->"),
        ("' ", "'"),
        (" : ", ": "),
    ] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s
}

fn last(key: &str) -> &str {
    key.rsplit("::").next().unwrap_or(key)
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Reads a package's name, version, root file, Cargo.lock and dependency requirements.
pub fn load_version(path: &Path) -> Result<Version> {
    let (meta, pkg) = crate::patch::read_package(path)?;
    let pkg = &pkg;
    let target = crate::patch::root_target(pkg)?;
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
            let what = match &d.path {
                Some(_) => "path".to_string(),
                None => d.req.to_string(),
            };
            (name, what)
        })
        .collect();
    Ok(Version {
        name: pkg.name.to_string(),
        version: pkg.version.to_string(),
        root: target.src_path.as_std_path().to_path_buf(),
        bin: target.is_bin().then(|| target.name.clone()),
        dir,
        lock: lock.is_file().then_some(lock),
        deps,
        target_dir: meta.target_directory.as_std_path().to_path_buf(),
    })
}

/// The `rust-toolchain.toml` (or `rust-toolchain`) that governs builds in `dir`, found the way
/// rustup finds it: in `dir` or the nearest ancestor.
pub(crate) fn toolchain_pin(dir: &Path) -> Option<(PathBuf, String)> {
    let mut d = Some(dir);
    while let Some(here) = d {
        for name in ["rust-toolchain.toml", "rust-toolchain"] {
            let p = here.join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                return Some((p, text.trim().to_string()));
            }
        }
        d = here.parent();
    }
    None
}

/// Locked versions of every package in a Cargo.lock.
fn locked(lock: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let text = std::fs::read_to_string(lock)?;
    let doc: toml::Table = text.parse().context("cannot parse Cargo.lock")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in doc
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            p.get("name").and_then(|v| v.as_str()),
            p.get("version").and_then(|v| v.as_str()),
        ) {
            if p.get("source").is_some() {
                out.entry(n.to_string()).or_default().insert(v.to_string());
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The diff

/// Compares two versions.
pub fn analyze(old: &Version, new: &Version) -> Result<Analysis> {
    if old.name != new.name {
        bail!(
            "`{}` and `{}` are two different crates; give two versions of the same package",
            old.name,
            new.name
        );
    }
    let src_old = source::load_crate(&old.dir, &old.root)?;
    let src_new = source::load_crate(&new.dir, &new.root)?;
    let fo = facts(&src_old);
    let fn_ = facts(&src_new);
    let old_component_only = component_only(&fo);
    let new_component_only = component_only(&fn_);
    let mut a = Analysis {
        old: old.clone(),
        new: new.clone(),
        changes: Vec::new(),
        refusals: Vec::new(),
        constraints: Constraints {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ..Default::default()
        },
        plan: EnginePlan {
            requested: None,
            engine: None,
            reasons: Vec::new(),
        },
    };
    let mut affected: BTreeSet<String> = BTreeSet::new();
    let mut protocols: BTreeSet<String> = BTreeSet::new();
    let id_of = |key: &str| {
        fn_.components
            .get(key)
            .map(|c| c.id.clone())
            .unwrap_or_else(|| key.to_string())
    };

    // Components and their methods.
    for (key, n) in &fn_.components {
        let Some(o) = fo.components.get(key) else {
            a.changes.push(change(
                Kind::ComponentAdded,
                &format!("component {key}"),
                &n.file,
                n.line,
                1,
                "new component".into(),
                "none: it starts when the new code registers it".into(),
            ));
            continue;
        };
        for (m, nm) in &n.methods {
            let item = format!("{key}::{m}");
            let passive = format!("component `{}` passive", n.id);
            match o.methods.get(m) {
                None => {
                    a.changes.push(change(
                        Kind::MethodAdded,
                        &item,
                        &n.file,
                        nm.line,
                        1,
                        "method added".into(),
                        passive,
                    ));
                    affected.insert(n.id.clone());
                }
                Some(om) => {
                    if om.sig != nm.sig {
                        let outside_callers: Vec<&String> = fo
                            .outside
                            .iter()
                            .filter(|(ok, of)| {
                                of.calls.contains(m) && !old_component_only.contains(*ok)
                            })
                            .map(|(ok, _)| ok)
                            .collect();
                        let component_callers: Vec<String> = fn_
                            .components
                            .iter()
                            .filter(|(ck, c)| *ck != key && c.calls.contains(m))
                            .map(|(_, c)| c.id.clone())
                            .collect();
                        if !outside_callers.is_empty() {
                            a.refusals.push(Refusal {
                                item: item.clone(),
                                file: n.file.clone(),
                                line: nm.line,
                                reason: format!(
                                    "the signature of `{item}` changed, and code outside components ({}) calls it: that code is not replaced by the update and would call the new method with the old signature",
                                    outside_callers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                                ),
                                fix: format!("keep `{m}` with its old signature and add a new method beside it, or move the callers into a component"),
                                handoff_ok: true,
                            });
                        }
                        if component_callers.is_empty() {
                            a.changes.push(change(
                                Kind::SignatureChanged,
                                &item,
                                &n.file,
                                nm.line,
                                1,
                                format!("signature changed: `{}` -> `{}`", om.shown, nm.shown),
                                passive.clone(),
                            ));
                        } else {
                            let mut parties = component_callers.clone();
                            parties.push(n.id.clone());
                            parties.sort();
                            parties.dedup();
                            for p in &parties {
                                affected.insert(p.clone());
                            }
                            a.changes.push(change(
                                Kind::SignatureChanged,
                                &item,
                                &n.file,
                                nm.line,
                                2,
                                format!(
                                    "signature changed: `{}` -> `{}`; called by {}",
                                    om.shown,
                                    nm.shown,
                                    component_callers
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                                format!(
                                    "components {} passive and their protocols idle",
                                    parties
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                    } else if om.body != nm.body {
                        a.changes.push(change(
                            Kind::BodyChanged,
                            &item,
                            &n.file,
                            nm.line,
                            1,
                            "body changed".into(),
                            passive.clone(),
                        ));
                    }
                    if om.protocol != nm.protocol {
                        a.changes.push(change(
                            Kind::ProtocolChanged,
                            &item,
                            &n.file,
                            nm.line,
                            2,
                            format!(
                                "protocol marker changed: {} -> {}",
                                om.protocol.as_deref().unwrap_or("none"),
                                nm.protocol.as_deref().unwrap_or("none")
                            ),
                            "the protocol idle and its components passive".into(),
                        ));
                    }
                    if om.sig != nm.sig || om.body != nm.body || om.protocol != nm.protocol {
                        affected.insert(n.id.clone());
                    }
                }
            }
        }
        // Data on disk: a new or changed `migrate` hook runs inside the update.
        if let Some(nm) = n.methods.get(dsu_syntax::MIGRATE) {
            if o.methods
                .get(dsu_syntax::MIGRATE)
                .is_none_or(|om| om.body != nm.body)
            {
                a.changes.push(change(
                    Kind::DataMigration,
                    &format!("{key}::{}", dsu_syntax::MIGRATE),
                    &n.file,
                    nm.line,
                    5,
                    "data on disk: the component's `migrate` hook converts its data inside the update; a failure rolls the update back".into(),
                    format!("component `{}` passive while its data migrates", n.id),
                ));
                affected.insert(n.id.clone());
            }
        }
        for (m, om) in &o.methods {
            if !n.methods.contains_key(m) {
                let item = format!("{key}::{m}");
                let callers: Vec<&String> = fn_
                    .outside
                    .iter()
                    .filter(|(_, of)| of.calls.contains(m))
                    .map(|(k, _)| k)
                    .collect();
                if !callers.is_empty() {
                    a.refusals.push(Refusal {
                        item: item.clone(),
                        file: o.file.clone(),
                        line: om.line,
                        reason: format!(
                            "`{item}` was removed, and code outside components still calls it"
                        ),
                        fix: "keep the method until no code outside components calls it".into(),
                        handoff_ok: true,
                    });
                }
                a.changes.push(change(
                    Kind::MethodRemoved,
                    &item,
                    &n.file,
                    n.line,
                    1,
                    "method removed".into(),
                    format!("component `{}` passive", n.id),
                ));
                affected.insert(n.id.clone());
            }
        }
        // A changed impl whose methods all compare equal (attributes, order) still changes code.
        if !affected.contains(&n.id) && o.code != n.code {
            a.changes.push(change(
                Kind::BodyChanged,
                &format!("impl {key}"),
                &n.file,
                n.line,
                1,
                "component impl changed".into(),
                format!("component `{}` passive", n.id),
            ));
            affected.insert(n.id.clone());
        }
    }
    for (key, o) in &fo.components {
        if !fn_.components.contains_key(key) {
            a.refusals.push(Refusal {
                item: format!("component {key}"),
                file: o.file.clone(),
                line: o.line,
                reason: format!(
                    "component `{}` was removed, but the running process may hold instances of it",
                    o.id
                ),
                fix: "keep the component (it may stop being used) until a restart".into(),
                handoff_ok: true,
            });
        }
    }

    // State types.
    let def_changed: HashSet<String> = fn_
        .states
        .iter()
        .filter(|(k, s)| fo.states.get(*k).is_some_and(|o| o.def != s.def))
        .map(|(_, s)| s.name.clone())
        .collect();
    let all: Vec<(String, Vec<syn::Type>)> = fn_
        .states
        .values()
        .map(|s| {
            (
                s.name.clone(),
                s.fields.iter().map(|f| f.ty.clone()).collect(),
            )
        })
        .collect();
    let changed_names = transfer::changed_closure(def_changed, &all);
    for (key, n) in &fn_.states {
        let Some(o) = fo.states.get(key) else {
            a.changes.push(change(
                Kind::StateAdded,
                &format!("state {key}"),
                &n.file,
                n.line,
                1,
                "new state type".into(),
                "none".into(),
            ));
            continue;
        };
        if !changed_names.contains(&n.name) {
            continue;
        }
        // Which components hold it (directly, or inside another state type).
        let holders = holders_of(&n.name, &fn_);
        let is_component = fn_.components.contains_key(key);
        let category = if holders.len() > 1 { 3 } else { 1 };
        let constraint = if holders.is_empty() {
            "none: no component holds it".to_string()
        } else {
            format!(
                "{} passive",
                holders
                    .iter()
                    .map(|h| format!("component `{}`", id_of(h)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for h in &holders {
            affected.insert(id_of(h));
        }
        let mut described = false;
        let old_names: HashSet<&str> = o.fields.iter().map(|f| f.name.as_str()).collect();
        let renamed_sources: HashSet<String> = n
            .fields
            .iter()
            .filter_map(|f| f.renamed_from.clone())
            .collect();
        for f in &n.fields {
            let item = format!("field {}.{}", n.name, f.name);
            match (o.fields.iter().find(|x| x.name == f.name), &f.renamed_from) {
                (None, Some(from)) if old_names.contains(from.as_str()) => {
                    a.changes.push(change(
                        Kind::FieldRenamed,
                        &item,
                        &n.file,
                        f.line,
                        category,
                        format!("renamed from `{from}`"),
                        constraint.clone(),
                    ));
                    described = true;
                }
                (None, Some(from)) => a.refusals.push(Refusal {
                    item: item.clone(),
                    file: n.file.clone(),
                    line: f.line,
                    reason: format!(
                        "`#[dsu::renamed_from(\"{from}\")]`: the old `{}` has no field `{from}`",
                        n.name
                    ),
                    fix: format!("name a field of the old `{}`", n.name),
                    handoff_ok: false,
                }),
                (None, None) => {
                    a.changes.push(change(
                        Kind::FieldAdded,
                        &item,
                        &n.file,
                        f.line,
                        category,
                        format!(
                            "field added: `{}` (starts at `Default::default()`)",
                            pretty(&f.ty.to_token_stream())
                        ),
                        constraint.clone(),
                    ));
                    described = true;
                }
                (Some(of), _) => {
                    let (ot, nt) = (
                        pretty(&of.ty.to_token_stream()),
                        pretty(&f.ty.to_token_stream()),
                    );
                    if ot != nt {
                        a.changes.push(change(
                            Kind::FieldRetyped,
                            &item,
                            &n.file,
                            f.line,
                            category,
                            format!("type changed: `{ot}` -> `{nt}`"),
                            constraint.clone(),
                        ));
                        described = true;
                    } else if mentions(&f.ty, &changed_names) {
                        a.changes.push(change(
                            Kind::FieldRetyped,
                            &item,
                            &n.file,
                            f.line,
                            category,
                            format!("`{nt}` holds a changed state type"),
                            constraint.clone(),
                        ));
                        described = true;
                    }
                }
            }
        }
        for of in &o.fields {
            if !n.fields.iter().any(|f| f.name == of.name) && !renamed_sources.contains(&of.name) {
                a.changes.push(change(
                    Kind::FieldRemoved,
                    &format!("field {}.{}", n.name, of.name),
                    &n.file,
                    n.line,
                    category,
                    format!(
                        "field removed: `{}` (dropped with the old state)",
                        pretty(&of.ty.to_token_stream())
                    ),
                    constraint.clone(),
                ));
                described = true;
            }
        }
        if !described {
            a.changes.push(change(
                Kind::StateChanged,
                &format!("state {key}"),
                &n.file,
                n.line,
                category,
                "definition changed".into(),
                constraint.clone(),
            ));
        }
        // Can the transfer be generated?
        if is_component && !fn_.transfers.contains(key) {
            let homes = homes_of(&fn_, &changed_names);
            let ch = Changed {
                names: &changed_names,
                homes: Some(&homes),
            };
            if let Err(e) = transfer::component_transfer(&n.name, &o.item, &n.item, &ch)
                .and_then(|(_, needs)| check_nested(&needs, &fn_, &fo, &changed_names))
            {
                a.refusals.push(Refusal {
                    item: format!("state {key}"),
                    file: n.file.clone(),
                    line: n.line,
                    reason: format!("the state transfer cannot be generated: {e:#}"),
                    fix: format!("write `#[dsu::transfer] fn upgrade(old: &old::{0}) -> {0}` in the module of `{0}`", n.name),
                    handoff_ok: false,
                });
            }
        }
    }

    // Globals.
    for (key, n) in &fn_.globals {
        let users: Vec<String> = fn_
            .components
            .values()
            .filter(|c| c.idents.contains(last(key)))
            .map(|c| c.id.clone())
            .collect();
        match fo.globals.get(key) {
            None => a.changes.push(change(
                Kind::GlobalAdded,
                &format!("global {key}"),
                &n.file,
                n.line,
                1,
                "new global".into(),
                "none".into(),
            )),
            Some(o) if o.ty != n.ty || mentions(&n.ty_ast, &changed_names) => {
                a.changes.push(change(
                    Kind::GlobalRetyped,
                    &format!("global {key}"),
                    &n.file,
                    n.line,
                    3,
                    format!(
                        "{}; used by {}",
                        if o.ty == n.ty {
                            format!("its type `{}` changed", n.ty)
                        } else {
                            format!("type changed: `{}` -> `{}`", o.ty, n.ty)
                        },
                        if users.is_empty() {
                            "no component".into()
                        } else {
                            users
                                .iter()
                                .map(|u| format!("`{u}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                    "every user passive, registered threads parked".into(),
                ));
                let outside_users: Vec<&String> = fn_
                    .outside
                    .iter()
                    .filter(|(k, o)| {
                        o.idents.contains(last(key)) && !new_component_only.contains(*k)
                    })
                    .map(|(k, _)| k)
                    .collect();
                let plain_state = fn_
                    .states
                    .values()
                    .any(|s| s.name == n.ty && changed_names.contains(&s.name));
                if !outside_users.is_empty() {
                    a.refusals.push(Refusal {
                        item: format!("global {key}"),
                        file: n.file.clone(),
                        line: n.line,
                        reason: format!(
                            "global `{key}` changes type, and code outside components ({}) uses it: that code keeps the old value",
                            outside_users.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
                        ),
                        fix: "reach the global only from components (call a component method from that code), or keep its type".into(),
                        handoff_ok: true,
                    });
                }
                // Independent of the above: a hand-off must transfer the value too.
                if !plain_state {
                    a.refusals.push(Refusal {
                        item: format!("global {key}"),
                        file: n.file.clone(),
                        line: n.line,
                        reason: format!("global `{key}` changes type to `{}`, which is not a changed `#[dsu::state]` type: no transfer can be generated", n.ty),
                        fix: "make the global's type a `#[dsu::state]` struct (the transfer is then generated field by field), or keep its type".into(),
                        handoff_ok: false,
                    });
                }
                for u in users {
                    affected.insert(u);
                }
            }
            Some(o) if o.init != n.init => a.changes.push(change(
                Kind::GlobalInitChanged,
                &format!("global {key}"),
                &n.file,
                n.line,
                1,
                "initializer changed: no effect on the running process, which keeps its instance"
                    .into(),
                "none".into(),
            )),
            _ => {}
        }
    }

    // Transfers.
    for t in &fn_.transfers {
        if !fo.transfers.contains(t) {
            if let Some(s) = fn_.states.get(t) {
                a.changes.push(change(
                    Kind::TransferAdded,
                    &format!("transfer to {t}"),
                    &s.file,
                    s.line,
                    1,
                    "hand-written `#[dsu::transfer]` (used instead of the generated one)".into(),
                    "none".into(),
                ));
            }
        }
    }

    // Code outside components.
    let changed_outside: Vec<(&String, &OutsideFacts)> = fn_
        .outside
        .iter()
        .filter(|(k, n)| fo.outside.get(*k).is_none_or(|o| o.code != n.code))
        .collect();
    let component_only = &new_component_only;
    for (key, n) in &changed_outside {
        // The components that reach this helper, directly or through other helpers.
        let mut reaching: HashSet<String> = HashSet::from([last(key).to_string()]);
        loop {
            let more: Vec<String> = fn_
                .outside
                .iter()
                .filter(|(k, o)| {
                    component_only.contains(*k)
                        && !reaching.contains(last(k))
                        && o.paths.iter().any(|i| reaching.contains(i))
                })
                .map(|(k, _)| last(k).to_string())
                .collect();
            if more.is_empty() {
                break;
            }
            reaching.extend(more);
        }
        let callers_components: Vec<String> = fn_
            .components
            .values()
            .filter(|c| c.paths.iter().any(|i| reaching.contains(i)))
            .map(|c| c.id.clone())
            .collect();
        let is_new = !fo.outside.contains_key(*key);
        let only_components = component_only.contains(*key);
        if only_components {
            // A helper only components call: it goes into the patch with them.
            for c in &callers_components {
                affected.insert(c.clone());
            }
            a.changes.push(change(
                Kind::OutsideChanged,
                key,
                &n.file,
                n.line,
                1,
                format!(
                    "{} called only by components ({})",
                    if is_new {
                        "helper added,"
                    } else {
                        "helper changed,"
                    },
                    callers_components
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "its calling components passive".into(),
            ));
            continue;
        }
        a.changes.push(change(
            Kind::OutsideChanged,
            key,
            &n.file,
            n.line,
            6,
            "code outside components changed".into(),
            NOT_IN_PLACE.into(),
        ));
        a.refusals.push(Refusal {
            item: key.to_string(),
            file: n.file.clone(),
            line: n.line,
            reason: if last(key) == "main" {
                "`main` changed: the running process keeps executing the old `main`, which no in-place update can replace".into()
            } else {
                format!("`{key}` is code outside components and changed; the in-place engine only replaces components (and helpers only they call)")
            },
            fix: "move the changed logic into a component method, or restart the process on the new version".into(),
            handoff_ok: true,
        });
    }
    for (key, o) in &fo.outside {
        if !fn_.outside.contains_key(key) && last(key) == "main" {
            a.refusals.push(Refusal {
                item: key.clone(),
                file: o.file.clone(),
                line: o.line,
                reason: "`main` was removed".into(),
                fix: "keep `main` (a hand-off starts the new executable, which needs it too)"
                    .into(),
                handoff_ok: false,
            });
        }
    }

    // Non-dsu statics reachable from changed code.
    let mut reach: HashSet<String> = HashSet::new();
    for c in fn_.components.values().filter(|c| affected.contains(&c.id)) {
        reach.extend(c.idents.iter().cloned());
    }
    // Through helper functions, transitively.
    let mut frontier: Vec<String> = reach.iter().cloned().collect();
    let mut seen_fns: HashSet<String> = HashSet::new();
    while let Some(i) = frontier.pop() {
        for (k, o) in &fn_.outside {
            if o.is_fn && last(k) == i && seen_fns.insert(k.clone()) {
                for id in &o.idents {
                    if reach.insert(id.clone()) {
                        frontier.push(id.clone());
                    }
                }
            }
        }
    }
    for (name, s) in &fn_.statics {
        if reach.contains(name) {
            a.changes.push(change(
                Kind::StaticReachable,
                name,
                &s.file,
                s.line,
                3,
                format!("{} `{name}` is used by updated code", s.kind),
                NOT_IN_PLACE.into(),
            ));
            a.refusals.push(Refusal {
                item: name.clone(),
                file: s.file.clone(),
                line: s.line,
                reason: format!("{} `{name}` is reachable from changed code, but is not `#[dsu::global]`: the new code would get a fresh copy of it (a patch has its own statics, and so has the new process of a hand-off), and the running value would be lost", s.kind),
                fix: format!("make it `#[dsu::global] static {name}: ...` (the runtime then owns the one instance), or keep the value in a component's state"),
                handoff_ok: true,
            });
        }
    }

    // Dependencies.
    let mut deps: BTreeSet<&String> = old.deps.keys().collect();
    deps.extend(new.deps.keys());
    for d in deps {
        let (o, n) = (old.deps.get(d), new.deps.get(d));
        if o != n {
            let desc = format!(
                "dependency `{d}`: {} -> {}",
                o.map(String::as_str).unwrap_or("(none)"),
                n.map(String::as_str).unwrap_or("(none)")
            );
            refuse_environment(
                &mut a,
                d,
                format!("dependency {d}"),
                "Cargo.toml",
                desc,
                SAME_DEPENDENCIES,
                "keep the base's dependency versions for this update, or restart the process on the new version",
            );
        }
    }
    if let (Some(ol), Some(nl)) = (&old.lock, &new.lock) {
        if ol != nl {
            let (lo, ln) = (locked(ol)?, locked(nl)?);
            for (name, ov) in &lo {
                if let Some(nv) = ln.get(name) {
                    if ov != nv
                        && !a
                            .refusals
                            .iter()
                            .any(|r| r.item == format!("dependency {name}"))
                    {
                        let desc = format!(
                            "locked `{name}`: {} -> {}",
                            ov.iter().cloned().collect::<Vec<_>>().join(", "),
                            nv.iter().cloned().collect::<Vec<_>>().join(", ")
                        );
                        refuse_environment(
                            &mut a,
                            name,
                            format!("dependency {name}"),
                            "Cargo.lock",
                            desc,
                            SAME_DEPENDENCIES,
                            "build the patch against the base's Cargo.lock (cargo dsu uses OLD's), or restart the process",
                        );
                    }
                }
            }
        }
    }

    // The global allocator: a patch's allocations go to the running process's allocator (the
    // patch root declares a forwarding one), so a new one would never be used in place.
    let shown = |al: &Option<AllocatorFacts>| match al {
        Some(al) => format!("`{}: {}`", al.name, al.ty),
        None => "the system allocator".to_string(),
    };
    if fo.allocator.as_ref().map(|al| &al.code) != fn_.allocator.as_ref().map(|al| &al.code) {
        let (file, line) = fn_
            .allocator
            .as_ref()
            .or(fo.allocator.as_ref())
            .map(|al| (al.file.clone(), al.line))
            .unwrap_or_default();
        let desc = format!(
            "`#[global_allocator]` changed: {} -> {}",
            shown(&fo.allocator),
            shown(&fn_.allocator)
        );
        a.changes.push(change(
            Kind::AllocatorChanged,
            "#[global_allocator]",
            &file,
            line,
            6,
            desc.clone(),
            NOT_IN_PLACE.into(),
        ));
        a.refusals.push(Refusal {
            item: "#[global_allocator]".into(),
            file,
            line,
            reason: format!(
                "{desc}: a patch allocates with the running process's allocator, so the new one would never be used in place"
            ),
            fix: "keep the base's allocator for this update".into(),
            handoff_ok: true,
        });
    }

    // Toolchain: a pin that changed means the patch would be built by another rustc.
    let (ot, nt) = (toolchain_pin(&old.dir), toolchain_pin(&new.dir));
    if ot.as_ref().map(|(_, t)| t) != nt.as_ref().map(|(_, t)| t) {
        let show = |t: &Option<(PathBuf, String)>| match t {
            Some((_, text)) => format!(
                "`{}`",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            None => "no pin".to_string(),
        };
        let desc = format!("toolchain pin: {} -> {}", show(&ot), show(&nt));
        refuse_environment(
            &mut a,
            "rust-toolchain",
            "toolchain".into(),
            "rust-toolchain.toml",
            desc,
            "a patch must be built by the rustc that built the running process",
            "keep the base's toolchain for this update, or restart the process on the new version",
        );
    }

    // Constraints.
    for c in fn_.components.values().filter(|c| affected.contains(&c.id)) {
        for m in c.methods.values() {
            if let Some(p) = &m.protocol {
                if let Some(name) = p.split('"').nth(1) {
                    protocols.insert(name.to_string());
                }
            }
        }
    }
    a.constraints.components = affected.into_iter().collect();
    a.constraints.protocols_idle = protocols.into_iter().collect();
    a.constraints.park_threads = a.changes.iter().any(|c| c.category >= 3);
    a.changes.sort_by(|x, y| {
        (x.file.as_str(), x.line, &x.item).cmp(&(y.file.as_str(), y.line, &y.item))
    });
    a.choose_engine(None);
    Ok(a)
}

/// The constraint of a change only a process hand-off can apply.
const NOT_IN_PLACE: &str = "a process hand-off (cannot be applied in place)";

const SAME_DEPENDENCIES: &str =
    "a patch must be built with exactly the dependency versions of the running build";

/// A difference in the build environment (category 6): recorded as a change, and refused.
fn refuse_environment(
    a: &mut Analysis,
    item: &str,
    refusal_item: String,
    file: &str,
    desc: String,
    why: &str,
    fix: &str,
) {
    a.changes.push(change(
        Kind::DependencyChanged,
        item,
        file,
        0,
        6,
        desc.clone(),
        NOT_IN_PLACE.into(),
    ));
    a.refusals.push(Refusal {
        item: refusal_item,
        file: file.into(),
        line: 0,
        reason: format!("{desc}: {why}"),
        fix: fix.into(),
        handoff_ok: true,
    });
}

fn change(
    kind: Kind,
    item: &str,
    file: &str,
    line: u32,
    category: u8,
    description: String,
    constraint: String,
) -> Change {
    Change {
        kind,
        item: item.to_string(),
        file: file.to_string(),
        line,
        category,
        description,
        constraint,
    }
}

/// Helpers the patch can carry: functions (not `main`) whose every caller is a component or
/// another such helper, transitively. Code outside components never calls them.
fn component_only(f: &Facts) -> HashSet<String> {
    let mut set: HashSet<String> = f
        .outside
        .iter()
        .filter(|(k, o)| o.is_fn && last(k) != "main")
        .map(|(k, _)| k.clone())
        .collect();
    loop {
        let out: Vec<String> = set
            .iter()
            .filter(|k| {
                f.outside
                    .iter()
                    .any(|(ck, co)| ck != *k && co.paths.contains(last(k)) && !set.contains(ck))
            })
            .cloned()
            .collect();
        if out.is_empty() {
            return set;
        }
        for k in out {
            set.remove(&k);
        }
    }
}

fn mentions(ty: &syn::Type, names: &HashSet<String>) -> bool {
    transfer::holds_any(ty, names)
}

/// Components whose state holds the state type `name` (directly or nested).
fn holders_of(name: &str, f: &Facts) -> Vec<String> {
    let mut holding: HashSet<String> = HashSet::from([name.to_string()]);
    loop {
        let before = holding.len();
        for s in f.states.values() {
            if s.fields.iter().any(|fl| mentions(&fl.ty, &holding)) {
                holding.insert(s.name.clone());
            }
        }
        if holding.len() == before {
            break;
        }
    }
    f.components
        .keys()
        .filter(|k| holding.contains(last(k)))
        .cloned()
        .collect()
}

/// Where each changed state type is defined.
fn homes_of(
    f: &Facts,
    changed: &HashSet<String>,
) -> std::collections::HashMap<String, Vec<String>> {
    f.states
        .values()
        .filter(|s| changed.contains(&s.name))
        .map(|s| (s.name.clone(), s.module.clone()))
        .collect()
}

/// Nested changed types must be convertible themselves.
fn check_nested(
    needs: &[String],
    new: &Facts,
    old: &Facts,
    changed: &HashSet<String>,
) -> Result<()> {
    let mut todo: Vec<String> = needs.to_vec();
    let mut done = HashSet::new();
    while let Some(n) = todo.pop() {
        if !done.insert(n.clone()) {
            continue;
        }
        let Some((key, ns)) = new.states.iter().find(|(_, s)| s.name == n) else {
            bail!("nested state type `{n}` is not a `#[dsu::state]` of the new version");
        };
        let Some(os) = old.states.get(key) else {
            bail!("nested state type `{n}` has no old definition at `{key}`");
        };
        let homes = homes_of(new, changed);
        let ch = Changed {
            names: changed,
            homes: Some(&homes),
        };
        let mut more = Vec::new();
        transfer::converter(&n, &os.item, &ns.item, &ch, &mut more)?;
        todo.extend(more);
    }
    Ok(())
}
