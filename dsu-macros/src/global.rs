//! `#[dsu::global]`: a static owned by the runtime.

use dsu_syntax::{keys, token_hash, Args};
use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ItemStatic;

use crate::ctxt::{with_original, Ctxt};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand_inner(args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => with_original(e, &item),
    }
}

fn expand_inner(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = Args::parse(args, "global", keys::GLOBAL)?;
    let rebuild = args.has(keys::STATE_REBUILD);
    let s: ItemStatic = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "`#[dsu::global]` goes on a `static` item: `#[dsu::global] static NAME: Type = init;`",
        )
    })?;
    let mut cx = Ctxt::default();
    if let syn::StaticMutability::Mut(m) = &s.mutability {
        cx.error(
            m,
            "a `#[dsu::global]` cannot be `static mut`: it is shared with every patch; give it \
             interior mutability (an atomic, a `Mutex`) instead",
        );
    }
    cx.check()?;
    let ItemStatic {
        attrs,
        vis,
        ident,
        ty,
        expr,
        ..
    } = &s;
    let name = ident.to_string();
    let ty_hash = token_hash(&ty.to_token_stream());
    let (save, load) = if rebuild {
        (
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
        )
    } else {
        (
            quote!(::core::option::Option::Some(::dsu::__private::save_state::<#ty>)),
            quote!(::core::option::Option::Some(::dsu::__private::load_state::<#ty>)),
        )
    };
    // Both expansions are emitted and `cfg(dsu_off)` (see dsu-rt's `off.rs`) picks one: with
    // it, a plain static, so `init` must then be a constant expression. The cfgs sit inside the
    // initialiser, where `unexpected_cfgs` is allowed: the cfg belongs to the runtime, so a
    // user's crate need not declare it.
    Ok(quote! {
        #(#attrs)*
        #[allow(unexpected_cfgs)]
        #vis static #ident: ::dsu::Global<#ty> = {
            #[cfg(dsu_off)]
            let __dsu_global = ::dsu::__private::Global::new(#expr);
            #[cfg(not(dsu_off))]
            let __dsu_global = {
                static __DSU_GLOBAL: ::dsu::__private::GlobalDesc = ::dsu::__private::GlobalDesc {
                    name: #name,
                    module_path: ::core::module_path!(),
                    fingerprint: ::dsu::__private::fingerprint::mix_all(#ty_hash, &[
                        ::core::mem::size_of::<#ty>() as u64,
                        ::core::mem::align_of::<#ty>() as u64,
                    ]),
                    schema: #ty_hash,
                    touch: __dsu_touch,
                    save: #save,
                    load: #load,
                };
                fn __dsu_touch() {
                    let _ = &*#ident;
                }
                #[::dsu::__private::linkme::distributed_slice(::dsu::__private::GLOBALS)]
                #[linkme(crate = ::dsu::__private::linkme)]
                static __DSU_GLOBAL_REG: &'static ::dsu::__private::GlobalDesc = &__DSU_GLOBAL;
                fn __dsu_init() -> #ty {
                    #expr
                }
                ::dsu::__private::Global::new(&__DSU_GLOBAL, __dsu_init)
            };
            __dsu_global
        };
    })
}
