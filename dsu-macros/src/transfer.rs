//! `#[dsu::transfer]`: a hand-written state transfer, compiled only into patches.

use dsu_syntax::{keys, Args};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::ctxt::{with_original, Ctxt};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand_inner(args, item.clone()) {
        Ok(ts) => ts,
        // Keep the original out of normal builds too: it names `old::...`, which only exists in
        // a patch.
        Err(e) => with_original(e, &quote!(#[cfg(dsu_patch)] #item)),
    }
}

/// How a transfer is written, with the user's type where it is known.
fn shape(f: Option<&ItemFn>) -> String {
    let ty = f
        .and_then(|f| match &f.sig.output {
            ReturnType::Type(_, t) => {
                let t = result_ok_type(t).unwrap_or_else(|| (**t).clone());
                Some(quote!(#t).to_string().replace(' ', ""))
            }
            ReturnType::Default => None,
        })
        .unwrap_or_else(|| "Store".to_string());
    let name = f
        .map(|f| f.sig.ident.to_string())
        .unwrap_or_else(|| "upgrade".into());
    format!("write `fn {name}(old: &old::{ty}) -> {ty}` (or `-> Result<{ty}, E>`)")
}

fn expand_inner(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    Args::parse(args, "transfer", keys::NONE)?;
    let f: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`#[dsu::transfer]` goes on a function: {}", shape(None)),
        )
    })?;
    let shape = shape(Some(&f));
    let mut cx = Ctxt::default();
    if !f.sig.generics.params.is_empty() {
        cx.error(
            &f.sig.generics,
            "a transfer cannot be generic: it converts one old type to one new type",
        );
    }
    if f.sig.asyncness.is_some() || f.sig.unsafety.is_some() {
        cx.error(&f.sig, format!("a transfer is a plain function: {shape}"));
    }
    let old_ty = match (f.sig.inputs.len(), f.sig.inputs.first()) {
        (1, Some(FnArg::Typed(pt))) => match &*pt.ty {
            Type::Reference(r) if r.mutability.is_none() => Some((*r.elem).clone()),
            other => {
                cx.error(
                    other,
                    format!(
                        "a transfer borrows the old state, so that a failed update can restore \
                         it: {shape}"
                    ),
                );
                None
            }
        },
        _ => {
            cx.error(
                &f.sig.inputs,
                format!("a transfer takes exactly one argument, the old state: {shape}"),
            );
            None
        }
    };
    let (new_ty, fallible) = match &f.sig.output {
        ReturnType::Default => {
            cx.error(&f.sig, format!("a transfer returns the new state: {shape}"));
            (None, false)
        }
        ReturnType::Type(_, t) => match result_ok_type(t) {
            Some(ok) => (Some(ok), true),
            None => (Some((**t).clone()), false),
        },
    };
    cx.check()?;
    let (old_ty, new_ty) = (old_ty.expect("checked"), new_ty.expect("checked"));
    let name = &f.sig.ident;
    let call = if fallible {
        quote!(::dsu::__private::user_transfer_fallible::<#old_ty, #new_ty, _>(old, #name))
    } else {
        quote!(::dsu::__private::user_transfer::<#old_ty, #new_ty>(old, #name))
    };
    Ok(quote! {
        #[cfg(dsu_patch)]
        #f

        #[cfg(dsu_patch)]
        #[doc(hidden)]
        const _: () = {
            unsafe fn __dsu_transfer(old: *const ()) -> ::core::result::Result<*mut (), ::dsu::__private::TransferFailure> {
                // SAFETY: the runtime passes a state of the old type, checked by fingerprint.
                unsafe { #call }
            }
            static __DSU_TRANSFER: ::dsu::__private::TransferDesc = ::dsu::__private::TransferDesc {
                old: &<#old_ty as ::dsu::__private::State>::LAYOUT,
                new: &<#new_ty as ::dsu::__private::State>::LAYOUT,
                transfer: __dsu_transfer,
                release_old: ::dsu::__private::drop_state::<#old_ty>,
                drop_new: ::dsu::__private::drop_state::<#new_ty>,
                generated: false,
                settle: ::core::option::Option::None,
                convert_some: ::core::option::Option::None,
            };
            #[::dsu::__private::linkme::distributed_slice(::dsu::__private::TRANSFERS)]
            #[linkme(crate = ::dsu::__private::linkme)]
            static __DSU_TRANSFER_REG: &'static ::dsu::__private::TransferDesc = &__DSU_TRANSFER;
        };
    })
}

/// `T` of a `Result<T, E>` return type.
fn result_ok_type(t: &Type) -> Option<Type> {
    let Type::Path(p) = t else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &last.arguments else {
        return None;
    };
    match a.args.first()? {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}
