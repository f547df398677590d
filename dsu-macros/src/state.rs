//! `#[dsu::state]`: layout fingerprint and transfer hooks of a state type.

use dsu_syntax::{is_dsu_attr, keys, token_hash, Args};
use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{Data, DeriveInput, Fields};

use crate::ctxt::{with_original, Ctxt};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand_inner(args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => with_original(e, &item),
    }
}

struct Field {
    name: String,
    /// `None` for enum fields (Rust does not expose their offsets).
    member: Option<TokenStream>,
    ty: syn::Type,
}

fn expand_inner(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = Args::parse(args, "state", keys::STATE)?;
    let mut input: DeriveInput = syn::parse2(item)
        .map_err(|e| syn::Error::new(e.span(), "`#[dsu::state]` goes on a struct or an enum"))?;
    let mut cx = Ctxt::default();
    take_field_attrs(&mut input, &mut cx);
    let rebuild = args.has(keys::STATE_REBUILD);
    let own_serde = args.has(keys::STATE_OWN_SERDE);
    if rebuild && own_serde {
        cx.error(
            &input.ident,
            "`rebuild` and `own_serde` contradict each other: a `rebuild` state is not carried by \
             a hand-off, so it needs no serde traits; keep one",
        );
    }
    let definition = token_hash(&input.to_token_stream());
    // A hand-off streams the state with serde (DESIGN.md section 8): derive the traits through
    // the runtime's re-export, so that a program needs no serde dependency of its own.
    if !rebuild && !own_serde {
        input.attrs.push(syn::parse_quote!(
            #[derive(::dsu::__private::serde::Serialize, ::dsu::__private::serde::Deserialize)]
        ));
        input
            .attrs
            .push(syn::parse_quote!(#[serde(crate = "::dsu::__private::serde")]));
    }
    let item = input.to_token_stream();
    if !input.generics.params.is_empty() {
        cx.error(
            &input.generics,
            "a state type must be concrete: its layout is fingerprinted and compared across \
             versions, so generic parameters are not supported; define a non-generic struct (a \
             type alias of an instantiation will not do either: wrap it in a struct)",
        );
    }
    let (kind, fields) = match &input.data {
        Data::Struct(s) => (quote!(Struct), struct_fields(&s.fields)),
        Data::Enum(e) => {
            let mut all = Vec::new();
            for v in &e.variants {
                for (i, f) in v.fields.iter().enumerate() {
                    let fname = f
                        .ident
                        .as_ref()
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| i.to_string());
                    all.push(Field {
                        name: format!("{}.{}", v.ident, fname),
                        member: None,
                        ty: f.ty.clone(),
                    });
                }
                if v.fields.is_empty() {
                    all.push(Field {
                        name: v.ident.to_string(),
                        member: None,
                        ty: syn::parse_quote!(()),
                    });
                }
            }
            (quote!(Enum), all)
        }
        Data::Union(u) => {
            cx.error(
                u.union_token,
                "`#[dsu::state]` cannot describe a union: the runtime cannot tell which field is \
                 live, so it can neither fingerprint nor transfer it; use an enum",
            );
            (quote!(Struct), Vec::new())
        }
    };
    cx.check()?;

    let ident = &input.ident;
    let name = ident.to_string();
    let is_old = args.has(keys::STATE_OLD);
    let (save, load) = if rebuild {
        (
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
        )
    } else {
        (
            quote!(::core::option::Option::Some(::dsu::__private::save_state::<#ident>)),
            quote!(::core::option::Option::Some(::dsu::__private::load_state::<#ident>)),
        )
    };
    let field_layouts = fields.iter().map(|f| {
        let fname = &f.name;
        let ty = &f.ty;
        // An old definition carried by a patch may name a changed type of another module with
        // `old` before its last segment (see cargo-dsu's patch generator): leave it out, so the
        // old copy fingerprints like the type it copies.
        let ty_tokens = if is_old {
            without_old_segments(ty.to_token_stream())
        } else {
            ty.to_token_stream()
        };
        let ty_hash = token_hash(&ty_tokens);
        let offset = match &f.member {
            Some(m) => quote!(::core::mem::offset_of!(#ident, #m)),
            None => quote!(usize::MAX),
        };
        quote! {
            ::dsu::__private::FieldLayout {
                name: #fname,
                offset: #offset,
                size: ::core::mem::size_of::<#ty>(),
                ty: #ty_hash,
            }
        }
    });
    Ok(quote! {
        #item

        // With `--cfg dsu_off` (see dsu-rt's `off.rs`) the type is all there is. The cfg sits
        // inside a `const` that allows `unexpected_cfgs`: it belongs to the runtime, so a
        // user's crate need not declare it.
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unexpected_cfgs)]
        const _: () = {
            #[cfg(not(dsu_off))]
            #[automatically_derived]
            unsafe impl ::dsu::__private::State for #ident {
                const LAYOUT: ::dsu::__private::StateLayout = ::dsu::__private::StateLayout {
                    name: #name,
                    module_path: ::core::module_path!(),
                    is_old: #is_old,
                    kind: ::dsu::__private::StateKind::#kind,
                    size: ::core::mem::size_of::<#ident>(),
                    align: ::core::mem::align_of::<#ident>(),
                    fields: &[#(#field_layouts),*],
                    definition: #definition,
                    save: #save,
                    load: #load,
                };
            }

            #[cfg(not(dsu_off))]
            #[::dsu::__private::linkme::distributed_slice(::dsu::__private::STATES)]
            #[linkme(crate = ::dsu::__private::linkme)]
            static __DSU_STATE: &'static ::dsu::__private::StateLayout =
                &<#ident as ::dsu::__private::State>::LAYOUT;
        };
    })
}

/// Strips the field attributes meant for `cargo dsu` (`#[dsu::renamed_from("old")]`), checking
/// them: they are read by the diff, not by the compiler.
fn take_field_attrs(input: &mut DeriveInput, cx: &mut Ctxt) {
    let fields: Vec<&mut syn::Field> = match &mut input.data {
        Data::Struct(s) => s.fields.iter_mut().collect(),
        Data::Enum(e) => e
            .variants
            .iter_mut()
            .flat_map(|v| v.fields.iter_mut())
            .collect(),
        Data::Union(_) => Vec::new(),
    };
    for f in fields {
        let mut renamed = 0;
        f.attrs.retain(|a| {
            let path = a.path();
            if is_dsu_attr(path, "renamed_from") {
                renamed += 1;
                if renamed > 1 {
                    cx.error(a, "a field is renamed from one old field: give `#[dsu::renamed_from]` once");
                } else if a.parse_args::<syn::LitStr>().is_err() {
                    cx.error(
                        a,
                        "write `#[dsu::renamed_from(\"old_name\")]` with the field's name in the old version",
                    );
                }
                return false;
            }
            if path.segments.len() == 2 && path.segments[0].ident == "dsu" {
                cx.error(
                    path,
                    format!(
                        "unknown field attribute `#[dsu::{}]`: a state field takes `#[dsu::renamed_from(\"old_name\")]`",
                        path.segments[1].ident
                    ),
                );
                return false;
            }
            true
        });
    }
}

/// Tokens without `old ::` pairs (at any depth).
fn without_old_segments(ts: TokenStream) -> TokenStream {
    use proc_macro2::TokenTree;
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_old_seg = matches!(&tokens[i], TokenTree::Ident(id) if id == "old")
            && matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':')
            && matches!(tokens.get(i + 2), Some(TokenTree::Punct(p)) if p.as_char() == ':');
        if is_old_seg {
            i += 3;
            continue;
        }
        match &tokens[i] {
            TokenTree::Group(g) => {
                let mut ng =
                    proc_macro2::Group::new(g.delimiter(), without_old_segments(g.stream()));
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
            }
            t => out.push(t.clone()),
        }
        i += 1;
    }
    out.into_iter().collect()
}

fn struct_fields(fields: &Fields) -> Vec<Field> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| match &f.ident {
            Some(id) => Field {
                name: id.to_string(),
                member: Some(id.to_token_stream()),
                ty: f.ty.clone(),
            },
            None => {
                let idx = syn::Index::from(i);
                Field {
                    name: i.to_string(),
                    member: Some(idx.to_token_stream()),
                    ty: f.ty.clone(),
                }
            }
        })
        .collect()
}
