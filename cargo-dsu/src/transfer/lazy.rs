//! Generated code for [`dsu::LazyMap`] fields: the transfer takes the old map over as it is
//! and hands the entries' conversion to the map (one [`LazyStep`] per changed value type); the
//! state's hooks settle the maps when the update commits and drive the background pass.

use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use syn::Type;

use std::collections::HashSet;

use super::types::{container, holds_any, plain_name, same};

/// A field converted lazily: `LazyMap<K, V[, S]>` -> `LazyMap<K, V[, S]>` where `K` (and `S`)
/// are the same and hold no changed type, and `V` is a changed state type (named alike on both
/// sides). Returns `V`'s name.
/// `changed`: the changed state types.
pub(super) fn lazy_map(old: &Type, new: &Type, changed: &HashSet<String>) -> Option<String> {
    let ((oc, oa), (nc, na)) = (container(old)?, container(new)?);
    if oc != "LazyMap" || nc != "LazyMap" || oa.len() != na.len() || !(2..=3).contains(&oa.len()) {
        return None;
    }
    let same_but_value = (0..oa.len())
        .filter(|&i| i != 1)
        .all(|i| same(&oa[i], &na[i]) && !holds_any(&oa[i], changed));
    let (o, n) = (plain_name(&oa[1])?, plain_name(&na[1])?);
    (same_but_value && o == n && changed.contains(&o)).then_some(o)
}

/// The conversion of a lazily converted field `from` (new type `nty`, `step` the path of its
/// value type's [`step`]): the old map taken over. Dropped before it is assembled (a later
/// conversion panics), the new map frees only what it made: the table is the old map's.
pub(super) fn adopt(from: &Ident, nty: &Type, step: &TokenStream) -> TokenStream {
    quote! {
        // SAFETY: the old map is released with `LazyMap::forget` if the update commits (the new
        // map then owns the table), and left as it is otherwise.
        unsafe { <#nty>::adopt(&old.#from, &#step) }
    }
}

/// What the old state's release does with a field whose map was taken over.
pub(super) fn forget_old(f: &Ident) -> TokenStream {
    quote! {
        // SAFETY: the new map took the table over and settled (the update committed).
        unsafe { ::dsu::LazyMap::forget(::core::ptr::read(::core::ptr::addr_of!((*__old).#f))) };
    }
}

/// The `LazyStep` of a changed value type `name`, made of its moving conversion and the two
/// functions that free what the old and the new value own alone.
pub(super) fn step(name: &str, mv: &Ident, release: &Ident, give_up: &Ident) -> TokenStream {
    let ty = format_ident!("{}", name);
    let st = format_ident!("__dsu_lazy_step_{}", name);
    quote! {
        /// How a `LazyMap` converts one entry of the old type to the new one.
        #[doc(hidden)]
        #[allow(dead_code, non_upper_case_globals)]
        pub(crate) static #st: ::dsu::__private::LazyStep = ::dsu::__private::LazyStep {
            peek: {
                unsafe fn peek(p: *const ()) -> *mut () {
                    // SAFETY: the map passes a box of the old type (`LazyStep::peek`).
                    unsafe { ::dsu::__private::lazy_peek::<old::#ty, #ty>(p, #mv) }
                }
                peek
            },
            release_old: {
                unsafe fn release(p: *mut ()) {
                    // SAFETY: a box of the old type whose unchanged fields were taken over.
                    unsafe { ::dsu::__private::lazy_free::<old::#ty>(p, #release) }
                }
                release
            },
            discard_new: {
                unsafe fn discard(p: *mut ()) {
                    // SAFETY: a box made by `peek`, given up.
                    unsafe { ::dsu::__private::lazy_free::<#ty>(p, #give_up) }
                }
                discard
            },
            drop_old: ::dsu::__private::lazy_drop::<old::#ty>,
        };
    }
}

/// Whether a field's type is a `LazyMap`.
pub(super) fn is_lazy_map(ty: &Type) -> bool {
    container(ty).is_some_and(|(c, _)| c == "LazyMap")
}

/// The state's `settle` and `convert_some` hooks (definitions, and the two `TransferDesc`
/// fields), over every `LazyMap` field of the new state (`maps`): one taken over from the old
/// state settles when the update commits, and any may still hold entries an earlier update
/// left.
pub(super) fn hooks(name: &str, maps: &[&Ident]) -> (TokenStream, TokenStream, TokenStream) {
    let none = quote!(::core::option::Option::None);
    if maps.is_empty() {
        return (TokenStream::new(), none.clone(), none);
    }
    let ty = format_ident!("{}", name);
    let settle = format_ident!("__dsu_settle_{}", name);
    let convert = format_ident!("__dsu_convert_some_{}", name);
    (
        quote! {
            #[doc(hidden)]
            unsafe fn #settle(p: *mut ()) {
                // SAFETY: the runtime passes the new state it installed, with its gate held.
                let __s = unsafe { &mut *(p as *mut #ty) };
                #( __s.#maps.settle(); )*
            }

            #[doc(hidden)]
            unsafe fn #convert(p: *mut (), budget: usize) -> usize {
                // SAFETY: as above.
                let __s = unsafe { &mut *(p as *mut #ty) };
                let mut __left = 0usize;
                #( __left += __s.#maps.convert_some(budget); )*
                __left
            }
        },
        quote!(::core::option::Option::Some(#settle)),
        quote!(::core::option::Option::Some(#convert)),
    )
}
