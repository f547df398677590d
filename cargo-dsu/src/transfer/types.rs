//! The type questions of the transfer generator that need nothing of it: which fields a
//! definition has, whether a type holds one of some named types, and which primitive
//! conversions are lossless.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{GenericArgument, PathArguments, Type};

/// Fields of a struct or enum, for [`changed_closure`].
pub fn field_types(item: &syn::Item) -> Vec<Type> {
    match item {
        syn::Item::Struct(s) => s.fields.iter().map(|f| f.ty.clone()).collect(),
        syn::Item::Enum(e) => e
            .variants
            .iter()
            .flat_map(|v| v.fields.iter().map(|f| f.ty.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a value of type `ty` contains a value of one of the named types: through any
/// container, but not through a `dsu::Handle<T>`, which points at a component the runtime
/// updates on its own and stays valid across its update.
pub fn holds_any(ty: &Type, names: &HashSet<String>) -> bool {
    struct Holds<'a> {
        names: &'a HashSet<String>,
        found: bool,
    }
    impl<'v> syn::visit::Visit<'v> for Holds<'_> {
        fn visit_path_segment(&mut self, seg: &'v syn::PathSegment) {
            if seg.ident == "Handle" {
                return;
            }
            if self.names.contains(&seg.ident.to_string()) {
                self.found = true;
            }
            syn::visit::visit_path_segment(self, seg);
        }
        fn visit_macro(&mut self, m: &'v syn::Macro) {
            // A type macro: its tokens are all there is to go by.
            let mut ids = std::collections::HashSet::new();
            fn walk(ts: TokenStream, ids: &mut std::collections::HashSet<String>) {
                for t in ts {
                    match t {
                        proc_macro2::TokenTree::Ident(i) => {
                            ids.insert(i.to_string());
                        }
                        proc_macro2::TokenTree::Group(g) => walk(g.stream(), ids),
                        _ => {}
                    }
                }
            }
            walk(m.tokens.clone(), &mut ids);
            self.found |= ids.iter().any(|i| self.names.contains(i));
        }
    }
    let mut v = Holds {
        names,
        found: false,
    };
    syn::visit::Visit::visit_type(&mut v, ty);
    v.found
}

/// Whether std converts primitive `from` to `to` without loss (`From`); `None` when either is
/// not a primitive (then `From` is the user's to provide).
pub(super) fn lossless(from: &str, to: &str) -> Option<bool> {
    const PRIMS: &[&str] = &[
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64", "bool", "char", "String",
    ];
    if !PRIMS.contains(&from) || !PRIMS.contains(&to) {
        return None;
    }
    let widen: &[(&str, &[&str])] = &[
        (
            "u8",
            &[
                "u16", "u32", "u64", "u128", "usize", "i16", "i32", "i64", "i128", "isize", "f32",
                "f64", "char",
            ],
        ),
        (
            "u16",
            &[
                "u32", "u64", "u128", "usize", "i32", "i64", "i128", "f32", "f64",
            ],
        ),
        ("u32", &["u64", "u128", "i64", "i128", "f64"]),
        ("u64", &["u128", "i128"]),
        ("i8", &["i16", "i32", "i64", "i128", "isize", "f32", "f64"]),
        ("i16", &["i32", "i64", "i128", "isize", "f32", "f64"]),
        ("i32", &["i64", "i128", "f64"]),
        ("i64", &["i128"]),
        ("f32", &["f64"]),
        (
            "bool",
            &[
                "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
                "isize",
            ],
        ),
        ("char", &["u32", "u64", "u128", "String"]),
    ];
    Some(widen.iter().any(|(f, tos)| *f == from && tos.contains(&to)))
}

/// A generic type's last segment and its type arguments (`HashMap<K, V>`: `HashMap`, [K, V]).
pub(super) fn container(ty: &Type) -> Option<(String, Vec<Type>)> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let name = last.ident.to_string();
    let PathArguments::AngleBracketed(a) = &last.arguments else {
        return None;
    };
    let args: Vec<Type> = a
        .args
        .iter()
        .filter_map(|g| match g {
            GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    Some((name, args))
}

/// The name of a type that is one plain identifier.
pub(super) fn plain_name(ty: &Type) -> Option<String> {
    let Type::Path(p) = ty else { return None };
    if p.path.segments.len() == 1 && p.path.segments[0].arguments.is_none() {
        Some(p.path.segments[0].ident.to_string())
    } else {
        None
    }
}

/// Whether two types are written alike (canonical tokens).
pub(super) fn same(a: &Type, b: &Type) -> bool {
    dsu_syntax::canonical(&a.to_token_stream()) == dsu_syntax::canonical(&b.to_token_stream())
}
