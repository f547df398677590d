//! The source model: what the diff needs to know about one version, read from its syn trees
//! (components and their methods, state types and their fields, globals, other statics,
//! code outside components, the allocator) with the identifiers each item mentions.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use dsu_syntax::{canonical, is_dsu_attr};
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ImplItem, Item};

use crate::source::{self, CrateSource, Model};
use crate::transfer;

pub(super) struct MethodFacts {
    pub(super) sig: String,
    /// `fn name(&self, k: &str) -> String`, for reports.
    pub(super) shown: String,
    pub(super) body: String,
    pub(super) line: u32,
    pub(super) protocol: Option<String>,
}

pub(super) struct ComponentFacts {
    pub(super) id: String,
    pub(super) file: String,
    pub(super) line: u32,
    pub(super) methods: BTreeMap<String, MethodFacts>,
    /// Identifiers the impl mentions (paths, method calls, macro tokens).
    pub(super) idents: HashSet<String>,
    /// Methods it calls (`.name(`).
    pub(super) calls: HashSet<String>,
    /// Names it references as paths.
    pub(super) paths: HashSet<String>,
    /// The code fingerprint the component macro computes.
    pub(super) code: Option<u64>,
}

pub(super) struct FieldFacts {
    pub(super) name: String,
    pub(super) ty: syn::Type,
    pub(super) renamed_from: Option<String>,
    pub(super) line: u32,
}

pub(super) struct StateFacts {
    pub(super) name: String,
    pub(super) module: Vec<String>,
    pub(super) file: String,
    pub(super) line: u32,
    pub(super) def: String,
    pub(super) fields: Vec<FieldFacts>,
    pub(super) item: Item,
}

pub(super) struct GlobalFacts {
    pub(super) ty: String,
    pub(super) ty_ast: syn::Type,
    pub(super) init: String,
    pub(super) file: String,
    pub(super) line: u32,
}

/// A non-dsu static the patch would see a fresh copy of.
pub(super) struct StaticFacts {
    pub(super) kind: &'static str,
    pub(super) file: String,
    pub(super) line: u32,
}

/// Code outside components: free functions, `main`, other impls, traits, constants.
pub(super) struct OutsideFacts {
    pub(super) code: String,
    pub(super) file: String,
    pub(super) line: u32,
    pub(super) idents: HashSet<String>,
    pub(super) calls: HashSet<String>,
    pub(super) paths: HashSet<String>,
    /// A function or constant: carried by the patch when only components reach it.
    pub(super) is_fn: bool,
}

pub(super) struct Facts {
    pub(super) components: BTreeMap<String, ComponentFacts>,
    pub(super) states: BTreeMap<String, StateFacts>,
    pub(super) globals: BTreeMap<String, GlobalFacts>,
    pub(super) statics: BTreeMap<String, StaticFacts>,
    pub(super) outside: BTreeMap<String, OutsideFacts>,
    pub(super) transfers: BTreeSet<String>,
    /// The `#[global_allocator]` static, if any.
    pub(super) allocator: Option<AllocatorFacts>,
}

impl Facts {
    /// The id of the component at `key` (the key itself when there is none).
    pub(super) fn component_id(&self, key: &str) -> String {
        self.components
            .get(key)
            .map(|c| c.id.clone())
            .unwrap_or_else(|| key.to_string())
    }
}

/// The program's `#[global_allocator]`: a patch allocates with the running process's.
pub(super) struct AllocatorFacts {
    pub(super) name: String,
    pub(super) ty: String,
    pub(super) code: String,
    pub(super) file: String,
    pub(super) line: u32,
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

/// The facts of one version.
pub(super) fn facts(src: &CrateSource) -> Facts {
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
                        // `async` is part of the signature: the table entry's type differs.
                        let asyncness = &m.sig.asyncness;
                        let shown_async = if asyncness.is_some() { "async " } else { "" };
                        methods.insert(
                            m.sig.ident.to_string(),
                            MethodFacts {
                                sig: canonical(&quote::quote!(#asyncness (#inputs) #output)),
                                shown: format!(
                                    "{shown_async}fn {name}({}){}",
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

/// The last segment of a key (`Store` of `kv::Store`).
pub(super) fn last(key: &str) -> &str {
    key.rsplit("::").next().unwrap_or(key)
}

/// Helpers the patch can carry: functions (not `main`) whose every caller is a component or
/// another such helper, transitively. Code outside components never calls them.
pub(super) fn component_only(f: &Facts) -> HashSet<String> {
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

/// Whether `ty` names one of `names` (directly or nested).
pub(super) fn mentions(ty: &syn::Type, names: &HashSet<String>) -> bool {
    transfer::holds_any(ty, names)
}
