//! Generated state transfers (DESIGN.md section 7), as plain Rust the author can read.
//!
//! For a changed component state type, the generated transfer reads the old state by
//! reference. Fields with the same name and type are *moved* (a bitwise copy the new state
//! takes over; the old state is then released without dropping them); new fields get
//! `Default::default()`; removed fields are dropped with the old state; fields whose type
//! changed are converted recursively through `Option`, `Box`, `Vec`, `VecDeque`, `HashMap`,
//! `BTreeMap`, `HashSet`, `BTreeSet` and tuples, with nested changed state types converted by
//! their own generated function and anything else by `From`. Conversions run first and moves
//! last, so a panic in a conversion leaves the old state untouched.

use std::collections::HashSet;

use anyhow::{bail, Result};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, ToTokens};
use syn::{Fields, GenericArgument, PathArguments, Type};

/// Types whose definitions changed between the versions (by name, within one module).
pub struct Changed<'a> {
    pub names: &'a HashSet<String>,
}

impl Changed<'_> {
    fn mentions_changed(&self, ty: &Type) -> bool {
        ty.to_token_stream()
            .into_iter()
            .any(|t| self.token_mentions(&t))
    }

    fn token_mentions(&self, t: &proc_macro2::TokenTree) -> bool {
        match t {
            proc_macro2::TokenTree::Ident(i) => self.names.contains(&i.to_string()),
            proc_macro2::TokenTree::Group(g) => {
                g.stream().into_iter().any(|t| self.token_mentions(&t))
            }
            _ => false,
        }
    }
}

fn same(a: &Type, b: &Type) -> bool {
    dsu_syntax::canonical(&a.to_token_stream()) == dsu_syntax::canonical(&b.to_token_stream())
}

fn container(ty: &Type) -> Option<(String, Vec<Type>)> {
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

fn plain_name(ty: &Type) -> Option<String> {
    let Type::Path(p) = ty else { return None };
    if p.path.segments.len() == 1 && p.path.segments[0].arguments.is_none() {
        Some(p.path.segments[0].ident.to_string())
    } else {
        None
    }
}

/// An expression converting `src` (a reference to a value of `old`) to an owned `new`.
fn convert(
    old: &Type,
    new: &Type,
    src: TokenStream,
    ch: &Changed,
    needs: &mut Vec<String>,
    field: &str,
) -> Result<TokenStream> {
    if same(old, new) && !ch.mentions_changed(old) {
        return Ok(quote!(::core::clone::Clone::clone(#src)));
    }
    if let (Some(o), Some(n)) = (plain_name(old), plain_name(new)) {
        if o == n && ch.names.contains(&o) {
            if !needs.contains(&o) {
                needs.push(o.clone());
            }
            let f = format_ident!("__dsu_convert_{}", o);
            return Ok(quote!(#f(#src)));
        }
    }
    if let (Some((oc, oa)), Some((nc, na))) = (container(old), container(new)) {
        if oc == nc && oa.len() == na.len() {
            match (oc.as_str(), oa.len()) {
                ("Option", 1) => {
                    let inner = convert(&oa[0], &na[0], quote!(__v), ch, needs, field)?;
                    return Ok(quote!((#src).as_ref().map(|__v| #inner)));
                }
                ("Box", 1) => {
                    let inner = convert(&oa[0], &na[0], quote!(&**(#src)), ch, needs, field)?;
                    return Ok(quote!(::std::boxed::Box::new(#inner)));
                }
                ("Vec" | "VecDeque" | "HashSet" | "BTreeSet", 1) => {
                    let inner = convert(&oa[0], &na[0], quote!(__v), ch, needs, field)?;
                    return Ok(quote!((#src).iter().map(|__v| #inner).collect()));
                }
                ("HashMap" | "BTreeMap", 2) => {
                    let k = convert(&oa[0], &na[0], quote!(__k), ch, needs, field)?;
                    let v = convert(&oa[1], &na[1], quote!(__v), ch, needs, field)?;
                    return Ok(quote!((#src).iter().map(|(__k, __v)| (#k, #v)).collect()));
                }
                _ => {}
            }
        }
    }
    if let (Type::Tuple(o), Type::Tuple(n)) = (old, new) {
        if o.elems.len() == n.elems.len() {
            let parts = o
                .elems
                .iter()
                .zip(&n.elems)
                .enumerate()
                .map(|(i, (a, b))| {
                    let idx = syn::Index::from(i);
                    convert(a, b, quote!(&__t.#idx), ch, needs, field)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(quote!({ let __t = #src; (#(#parts,)*) }));
        }
    }
    if ch.mentions_changed(old) || ch.mentions_changed(new) {
        bail!(
            "field `{field}`: cannot generate a transfer from `{}` to `{}`; write a `#[dsu::transfer]`",
            old.to_token_stream(),
            new.to_token_stream()
        );
    }
    Ok(quote!(::core::convert::From::from(::core::clone::Clone::clone(#src))))
}

fn named_fields(item: &syn::Item) -> Option<Vec<(Ident, Type)>> {
    let syn::Item::Struct(s) = item else {
        return None;
    };
    match &s.fields {
        Fields::Named(n) => Some(
            n.named
                .iter()
                .map(|f| (f.ident.clone().expect("named"), f.ty.clone()))
                .collect(),
        ),
        Fields::Unit => Some(Vec::new()),
        Fields::Unnamed(_) => None,
    }
}

/// The generated transfer of a component state type `name` (old: `old::Name`), registered
/// with the runtime, and the nested changed types it needs a converter for.
pub fn component_transfer(
    name: &str,
    old_item: &syn::Item,
    new_item: &syn::Item,
    changed: &Changed,
) -> Result<(TokenStream, Vec<String>)> {
    let ty = format_ident!("{}", name);
    let (Some(old_fields), Some(new_fields)) = (named_fields(old_item), named_fields(new_item))
    else {
        bail!("state type `{name}` is not a struct with named fields; write a `#[dsu::transfer]` for it");
    };
    let mut needs = Vec::new();
    let mut conversions = Vec::new();
    let mut moves = Vec::new();
    let mut assemble = Vec::new();
    let mut moved_names = HashSet::new();
    for (f, nty) in &new_fields {
        let local = format_ident!("__dsu_f_{}", f);
        match old_fields.iter().find(|(o, _)| o == f) {
            Some((_, oty)) if same(oty, nty) && !changed.mentions_changed(oty) => {
                moves.push(quote! {
                    // SAFETY: moved into the new state; `release_old` leaves it undropped.
                    let #local = unsafe { ::dsu::__private::moved(&old.#f) };
                });
                assemble.push(quote!(#f: #local.into_inner()));
                moved_names.insert(f.to_string());
            }
            Some((_, oty)) => {
                let e = convert(
                    oty,
                    nty,
                    quote!(&old.#f),
                    changed,
                    &mut needs,
                    &f.to_string(),
                )?;
                conversions.push(quote!(let #local: #nty = #e;));
                assemble.push(quote!(#f: #local));
            }
            None => {
                conversions.push(quote!(let #local: #nty = ::core::default::Default::default();));
                assemble.push(quote!(#f: #local));
            }
        }
    }
    let drops = old_fields
        .iter()
        .filter(|(f, _)| !moved_names.contains(&f.to_string()))
        .map(|(f, _)| {
            quote! {
                // SAFETY: not moved into the new state, so the old state still owns it.
                unsafe { ::core::ptr::drop_in_place(::core::ptr::addr_of_mut!((*__old).#f)) };
            }
        });
    let gen_fn = format_ident!("__dsu_generated_transfer_{}", name);
    let transfer_fn = format_ident!("__dsu_transfer_{}", name);
    let release_fn = format_ident!("__dsu_release_old_{}", name);
    let doc =
        format!(" Generated by `cargo dsu`: transfers the running `old::{name}` to `{name}`.");
    Ok((
        quote! {
            #[doc = #doc]
            #[doc(hidden)]
            unsafe fn #gen_fn(old: &old::#ty) -> #ty {
                // Conversions first: they may panic, and the old state must then be intact.
                #(#conversions)*
                #(#moves)*
                #ty { #(#assemble),* }
            }

            #[doc(hidden)]
            unsafe fn #release_fn(p: *mut ()) {
                let __old = p as *mut old::#ty;
                #(#drops)*
                if ::core::mem::size_of::<old::#ty>() != 0 {
                    // SAFETY: `p` is the old state's box, allocated with this layout.
                    unsafe { ::std::alloc::dealloc(__old as *mut u8, ::std::alloc::Layout::new::<old::#ty>()) };
                }
            }

            #[doc(hidden)]
            unsafe fn #transfer_fn(old: *const ()) -> ::core::result::Result<*mut (), ::dsu::__private::TransferFailure> {
                // SAFETY: the runtime passes the running state, whose layout is the old type's.
                unsafe { ::dsu::__private::generated_transfer::<old::#ty, #ty>(old, #gen_fn) }
            }

            const _: () = {
                static __DSU_TRANSFER: ::dsu::__private::TransferDesc = ::dsu::__private::TransferDesc {
                    old: &<old::#ty as ::dsu::__private::State>::LAYOUT,
                    new: &<#ty as ::dsu::__private::State>::LAYOUT,
                    transfer: #transfer_fn,
                    release_old: #release_fn,
                    drop_new: ::dsu::__private::drop_state::<#ty>,
                    generated: true,
                };
                #[::dsu::__private::linkme::distributed_slice(::dsu::__private::TRANSFERS)]
                #[linkme(crate = ::dsu::__private::linkme)]
                static __DSU_TRANSFER_REG: &'static ::dsu::__private::TransferDesc = &__DSU_TRANSFER;
            };
        },
        needs,
    ))
}

/// A by-reference converter `fn __dsu_convert_Name(old: &old::Name) -> Name`.
pub fn converter(
    name: &str,
    old_item: &syn::Item,
    new_item: &syn::Item,
    changed: &Changed,
    needs: &mut Vec<String>,
) -> Result<TokenStream> {
    let ty = format_ident!("{}", name);
    let f = format_ident!("__dsu_convert_{}", name);
    let (Some(old_fields), Some(new_fields)) = (named_fields(old_item), named_fields(new_item))
    else {
        bail!("nested state type `{name}` is not a struct with named fields; write a `#[dsu::transfer]` for the component that holds it");
    };
    let mut parts = Vec::new();
    for (fname, nty) in &new_fields {
        let e = match old_fields.iter().find(|(o, _)| o == fname) {
            Some((_, oty)) => convert(
                oty,
                nty,
                quote!(&old.#fname),
                changed,
                needs,
                &fname.to_string(),
            )?,
            None => quote!(::core::default::Default::default()),
        };
        parts.push(quote!(#fname: #e));
    }
    let doc =
        format!(" Generated by `cargo dsu`: converts an `old::{name}` (by reference) to `{name}`.");
    Ok(quote! {
        #[doc = #doc]
        #[doc(hidden)]
        fn #f(old: &old::#ty) -> #ty {
            #ty { #(#parts),* }
        }
    })
}
