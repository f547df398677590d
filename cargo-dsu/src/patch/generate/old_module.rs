//! The `old` modules: per module with changed state types, the base's definitions of those
//! types and the generated transfers and converters, as edits of NEW's text (and as the
//! readable source `--emit transfer` prints).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, Context, Result};
use cargo_metadata::Package as CargoPackage;
use dsu_syntax::is_dsu_attr;
use quote::{format_ident, quote};
use syn::Item;

use super::plan::{ChangedState, Plan};
use super::splice::{module_end, Edit};
use crate::source::{self, CrateSource};
use crate::transfer::{self, Changed};

/// The `old` module (and transfers) of every module with changed state types: the edits of
/// NEW's files (by file index) that insert them, and their text for `--emit transfer`.
pub(in crate::patch) fn old_modules(
    plan: &Plan,
    old_pkg: &CargoPackage,
    src_new: &CrateSource,
) -> Result<(HashMap<usize, Vec<Edit>>, String)> {
    let Plan {
        changed,
        transfers_needed,
        old_uses,
        retyped_globals,
        ..
    } = plan;
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
    for c in changed {
        let key = source::key(&c.module, &c.name);
        if transfers_needed.contains(&key) {
            let (tokens, n) = transfer::component_transfer(&c.name, &c.old, &c.new, &ch)
                .with_context(|| format!("state type `{key}`"))?;
            generated.entry(c.module.clone()).or_default().push(tokens);
            needs.extend(n);
        }
    }
    for g in retyped_globals {
        let ty = format_ident!("{}", g.ty);
        let name = &g.name;
        let transfer = format_ident!("__dsu_transfer_{}", g.ty);
        let discard = format_ident!("__dsu_discard_new_{}", g.ty);
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
                    drop_new: #discard,
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
    for c in changed {
        by_module.entry(c.module.clone()).or_default().push(c);
    }
    let externs = extern_names(old_pkg);
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
        let (file, at) = module_end(src_new, module).ok_or_else(|| {
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
    Ok((edits, transfer_src))
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
