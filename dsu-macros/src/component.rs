//! `#[dsu::component]` (and `#[dsu::protocol]`, which only means something inside it).

use dsu_syntax::{is_dsu_attr, keys, token_hash, Args, HEALTH_CHECK, MIGRATE, PREPARE_TO_DIE};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Ident, ImplItem, ItemImpl, LitStr, ReturnType, Type, Visibility};

use crate::ctxt::{with_original, Ctxt};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand_inner(args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => with_original(e, &strip_protocol_attrs(item)),
    }
}

/// `#[dsu::protocol]` reached on its own: it was not inside a component impl.
pub fn protocol_outside_component(_args: TokenStream, item: TokenStream) -> TokenStream {
    let err = syn::Error::new(
        Span::call_site(),
        "`#[dsu::protocol]` marks a method of a `#[dsu::component]` impl block; put it on a \
         method inside one",
    );
    with_original(err, &item)
}

// ---------------------------------------------------------------------------------------------
// Parse

struct Component {
    item: ItemImpl,
    self_ty: Type,
    name: Ident,
    id: Option<LitStr>,
    methods: Vec<Method>,
}

struct Method {
    name: Ident,
    vis: Visibility,
    docs: Vec<syn::Attribute>,
    exclusive: bool,
    args: Vec<Type>,
    ret: Type,
    protocol: Option<(ProtocolKind, LitStr)>,
    /// An `async fn`: its entry returns the method's future, boxed.
    is_async: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum ProtocolKind {
    Begin,
    End,
}

fn expand_inner(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = Args::parse(args, "component", keys::COMPONENT)?;
    let mut item: ItemImpl = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "`#[dsu::component]` goes on an inherent `impl` block of a `#[dsu::state]` type",
        )
    })?;
    let code = token_hash(&item.to_token_stream());
    let component = parse(&mut item, &args)?;
    Ok(generate(&component, code))
}

fn parse(item: &mut ItemImpl, args: &Args) -> syn::Result<Component> {
    let mut cx = Ctxt::default();
    if let Some((_, path, _)) = &item.trait_ {
        cx.error(
            path,
            "`#[dsu::component]` goes on an inherent `impl` block, not a trait impl: the \
             component's messages are its own methods",
        );
    }
    if !item.generics.params.is_empty() {
        cx.error(
            &item.generics,
            "a component must be a concrete type: the runtime keeps one table per component \
             type, so generic parameters are not supported; instantiate the type first",
        );
    }
    if let Some(u) = &item.unsafety {
        cx.error(u, "a component impl cannot be `unsafe`");
    }
    let name = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
            let seg = &p.path.segments[0];
            if !seg.arguments.is_none() {
                cx.error(
                    &seg.arguments,
                    "a component type cannot take generic arguments (its state type is a \
                     `#[dsu::state]`, which is never generic); define a non-generic struct that \
                     holds the value and make that the component",
                );
            }
            Some(seg.ident.clone())
        }
        other => {
            cx.error(
                other,
                "`#[dsu::component]` needs the component type by its plain name (`impl Store`), \
                 defined in this module",
            );
            None
        }
    };
    let self_ty = (*item.self_ty).clone();
    let mut methods = Vec::new();
    for it in &mut item.items {
        if let ImplItem::Fn(f) = it {
            let protocol = take_protocol_attr(&mut f.attrs, &mut cx);
            reject_other_dsu_attrs(&f.attrs, &mut cx);
            if let Some(m) = parse_method(f, &self_ty, protocol, &mut cx) {
                methods.push(m);
            }
        }
    }
    cx.check()?;
    Ok(Component {
        item: item.clone(),
        self_ty,
        name: name.expect("checked above"),
        id: args.value(keys::COMPONENT_ID).cloned(),
        methods,
    })
}

fn take_protocol_attr(
    attrs: &mut Vec<syn::Attribute>,
    cx: &mut Ctxt,
) -> Option<(ProtocolKind, LitStr)> {
    let mut found = None;
    let mut keep = Vec::new();
    for a in attrs.drain(..) {
        if !is_dsu_attr(a.path(), "protocol") {
            keep.push(a);
            continue;
        }
        let tokens = match &a.meta {
            syn::Meta::List(l) => l.tokens.clone(),
            _ => TokenStream::new(),
        };
        match Args::parse(tokens, "protocol", keys::PROTOCOL) {
            Err(e) => cx.push(e),
            Ok(args) => {
                let begin = args.value(keys::PROTOCOL_BEGIN);
                let end = args.value(keys::PROTOCOL_END);
                match (begin, end) {
                    (Some(b), None) => found = Some((ProtocolKind::Begin, b.clone())),
                    (None, Some(e)) => found = Some((ProtocolKind::End, e.clone())),
                    (Some(_), Some(_)) => cx.push(syn::Error::new(
                        args.span_of(keys::PROTOCOL_END),
                        "a method either begins or ends a protocol: give `begin = \"name\"` or \
                         `end = \"name\"`, not both",
                    )),
                    (None, None) => cx.error(
                        &a,
                        "`#[dsu::protocol]` needs `begin = \"name\"` or `end = \"name\"`",
                    ),
                }
                if found.is_some() && found.as_ref().is_some_and(|(_, n)| n.value().is_empty()) {
                    cx.error(&a, "a protocol needs a non-empty name");
                }
            }
        }
    }
    *attrs = keep;
    found
}

fn reject_other_dsu_attrs(attrs: &[syn::Attribute], cx: &mut Ctxt) {
    for a in attrs {
        for name in ["component", "state", "global", "transfer"] {
            if is_dsu_attr(a.path(), name) {
                cx.error(
                    a,
                    format!("`#[dsu::{name}]` does not go on a method of a component"),
                );
            }
        }
    }
}

fn parse_method(
    f: &syn::ImplItemFn,
    self_ty: &Type,
    protocol: Option<(ProtocolKind, LitStr)>,
    cx: &mut Ctxt,
) -> Option<Method> {
    let sig = &f.sig;
    let receiver = match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => r,
        // An associated function (a constructor, say) is not a message: it stays as it is.
        _ if sig.ident == PREPARE_TO_DIE => {
            cx.error(
                &sig.ident,
                "the `prepare_to_die` hook is called on the component: give it `&mut self` \
                 (or `&self`), or it would never run",
            );
            return None;
        }
        _ => {
            if let Some((_, name)) = &protocol {
                cx.error(
                    name,
                    "only a method taking `&self` or `&mut self` can be part of a protocol",
                );
            }
            return None;
        }
    };
    let mut ok = true;
    if receiver.reference.is_none() || receiver.colon_token.is_some() {
        cx.error(
            receiver,
            format!(
                "component method `{}` must take `&self` or `&mut self`: a method taking `self` \
                 by value would consume the component's state, which the runtime owns",
                sig.ident
            ),
        );
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        cx.error(
            &sig.generics,
            format!(
                "component method `{}` cannot be generic: a table holds one function per \
                 method; make it non-generic, or keep the generic code in a helper the method \
                 calls",
                sig.ident
            ),
        );
        ok = false;
    }
    if let Some(a) = &sig.asyncness {
        let hook = [PREPARE_TO_DIE, MIGRATE, HEALTH_CHECK]
            .iter()
            .any(|h| sig.ident == h);
        if hook {
            cx.error(
                a,
                format!(
                    "the `{}` hook cannot be `async`: the update manager runs it on its own \
                     thread, outside any async runtime, while the component is held; make it a \
                     plain `fn`",
                    sig.ident
                ),
            );
            ok = false;
        }
        if let Some((_, name)) = &protocol {
            cx.error(
                name,
                "an `async fn` cannot begin or end a protocol yet: a protocol's begin waits for \
                 a pending update by blocking the thread; make the method a plain `fn`",
            );
            ok = false;
        }
    }
    if let Some(u) = &sig.unsafety {
        cx.error(
            u,
            "component methods cannot be `unsafe fn`; keep the unsafe code inside a safe method",
        );
        ok = false;
    }
    if let Some(v) = &sig.variadic {
        cx.error(v, "component methods cannot be variadic");
        ok = false;
    }
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(1) {
        if let FnArg::Typed(pt) = input {
            if has_impl_trait(&pt.ty) {
                cx.error(
                    &pt.ty,
                    "`impl Trait` cannot cross a component's table; take a concrete type or a \
                     `Box<dyn Trait>`",
                );
                ok = false;
            }
            if sig.asyncness.is_some() && borrows(&pt.ty) {
                cx.error(
                    &pt.ty,
                    format!(
                        "an argument of `async fn {}` cannot be a borrow: the call's future \
                         outlives the caller's stack frame in the table's type; take an owned \
                         value (`String`, `Vec<u8>`, an `Arc`)",
                        sig.ident
                    ),
                );
                ok = false;
            }
            let mut ty = (*pt.ty).clone();
            ReplaceSelf(self_ty).visit_type_mut(&mut ty);
            args.push(ty);
        }
    }
    let ret = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => {
            if has_impl_trait(t) {
                cx.error(
                    t,
                    "`impl Trait` cannot cross a component's table; return a concrete type",
                );
                ok = false;
            }
            if borrows(t) {
                cx.error(
                    t,
                    format!(
                        "component method `{}` cannot return a borrow: the component's state \
                         may be replaced by an update as soon as the call returns; return an \
                         owned value (clone it)",
                        sig.ident
                    ),
                );
                ok = false;
            }
            let mut ty = (**t).clone();
            ReplaceSelf(self_ty).visit_type_mut(&mut ty);
            ty
        }
    };
    if sig.ident == MIGRATE {
        const HOOK: &str = "the `migrate` hook moves the component's data on disk to this version's \
                            format during the update: write `fn migrate(&mut self) -> Result<(), String>`";
        let ret_ok = matches!(&sig.output, ReturnType::Type(_, t)
            if dsu_syntax::canonical(&t.to_token_stream()) == "Result < () , String >");
        if receiver.mutability.is_none() || !args.is_empty() || !ret_ok {
            cx.error(sig, HOOK);
            ok = false;
        }
    }
    if sig.ident == HEALTH_CHECK {
        const HOOK: &str = "the `health_check` hook tells whether a new version works right after \
                            an update installs it (an `Err` rolls the update back): write \
                            `fn health_check(&self) -> Result<(), String>`";
        let ret_ok = matches!(&sig.output, ReturnType::Type(_, t)
            if dsu_syntax::canonical(&t.to_token_stream()) == "Result < () , String >");
        if receiver.mutability.is_some() || !args.is_empty() || !ret_ok {
            cx.error(sig, HOOK);
            ok = false;
        }
    }
    if sig.ident == PREPARE_TO_DIE {
        const HOOK: &str = "the `prepare_to_die` hook takes no arguments and returns nothing: \
                            write `fn prepare_to_die(&mut self)` (or `&self`)";
        for extra in sig.inputs.iter().skip(1) {
            cx.error(extra, HOOK);
            ok = false;
        }
        if let ReturnType::Type(_, t) = &sig.output {
            cx.error(t, HOOK);
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Method {
        name: sig.ident.clone(),
        vis: f.vis.clone(),
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
        exclusive: receiver.mutability.is_some(),
        args,
        ret,
        protocol,
        is_async: sig.asyncness.is_some(),
    })
}

fn has_impl_trait(t: &Type) -> bool {
    struct V(bool);
    impl<'a> Visit<'a> for V {
        fn visit_type_impl_trait(&mut self, _: &'a syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut v = V(false);
    v.visit_type(t);
    v.0
}

fn borrows(t: &Type) -> bool {
    struct V(bool);
    impl<'a> Visit<'a> for V {
        fn visit_type_reference(&mut self, _: &'a syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, l: &'a syn::Lifetime) {
            if l.ident != "static" {
                self.0 = true;
            }
        }
    }
    let mut v = V(false);
    v.visit_type(t);
    v.0
}

struct ReplaceSelf<'a>(&'a Type);

impl VisitMut for ReplaceSelf<'_> {
    fn visit_type_mut(&mut self, t: &mut Type) {
        if let Type::Path(p) = t {
            if p.qself.is_none() && p.path.is_ident("Self") {
                *t = self.0.clone();
                return;
            }
        }
        syn::visit_mut::visit_type_mut(self, t);
    }
}

fn strip_protocol_attrs(item: TokenStream) -> TokenStream {
    match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(mut i) => {
            for it in &mut i.items {
                if let ImplItem::Fn(f) = it {
                    f.attrs.retain(|a| !is_dsu_attr(a.path(), "protocol"));
                }
            }
            i.into_token_stream()
        }
        Err(_) => item,
    }
}

// ---------------------------------------------------------------------------------------------
// Expand

fn generate(c: &Component, code: u64) -> TokenStream {
    let item = &c.item;
    let self_ty = &c.self_ty;
    let name_str = c.name.to_string();
    let proxy = format_ident!("__DsuProxy_{}", c.name);
    let n = c.methods.len();
    let id = match &c.id {
        Some(l) => quote!(::core::option::Option::Some(#l)),
        None => quote!(::core::option::Option::None),
    };
    let prepare = match c.methods.iter().position(|m| m.name == PREPARE_TO_DIE) {
        Some(i) => quote!(::core::option::Option::Some(#i)),
        None => quote!(::core::option::Option::None),
    };
    let migrate = match c.methods.iter().position(|m| m.name == MIGRATE) {
        Some(i) => quote!(::core::option::Option::Some(#i)),
        None => quote!(::core::option::Option::None),
    };
    let health_check = match c.methods.iter().position(|m| m.name == HEALTH_CHECK) {
        Some(i) => quote!(::core::option::Option::Some(#i)),
        None => quote!(::core::option::Option::None),
    };

    let mut entries = Vec::new();
    let mut descs = Vec::new();
    let mut proxies = Vec::new();
    for (i, m) in c.methods.iter().enumerate() {
        let mname = &m.name;
        let mname_str = mname.to_string();
        let entry = format_ident!("__dsu_entry_{}", mname);
        let trap = format_ident!("__dsu_trap_{}", mname);
        let arg_names: Vec<Ident> = (0..m.args.len())
            .map(|j| format_ident!("__dsu_a{}", j))
            .collect();
        let arg_tys = &m.args;
        let ret = &m.ret;
        let fn_ty = if m.is_async {
            quote!(unsafe fn(*mut () #(, #arg_tys)*) -> ::dsu::__private::CallFuture<#ret>)
        } else {
            quote!(unsafe fn(*mut () #(, #arg_tys)*) -> ::dsu::__private::CallResult<#ret>)
        };
        let this = match (m.exclusive, m.is_async) {
            (true, false) => quote! {
                // SAFETY: the runtime calls an entry only with a state of this version's type,
                // holding the gate exclusively for a `&mut self` method.
                let __dsu_this = unsafe { &mut *(__dsu_state as *mut #self_ty) };
            },
            (false, false) => quote! {
                // SAFETY: the runtime calls an entry only with a state of this version's type,
                // holding the gate (shared) for a `&self` method.
                let __dsu_this = unsafe { &*(__dsu_state as *const #self_ty) };
            },
            (true, true) => quote! {
                // SAFETY: as for a sync `&mut self` entry; the runtime holds the gate until the
                // returned future completes or is dropped, so the borrow lives as long as it.
                let __dsu_this: &'static mut #self_ty = unsafe { &mut *(__dsu_state as *mut #self_ty) };
            },
            (false, true) => quote! {
                // SAFETY: as for a sync `&self` entry; the runtime holds the gate until the
                // returned future completes or is dropped, so the borrow lives as long as it.
                let __dsu_this: &'static #self_ty = unsafe { &*(__dsu_state as *const #self_ty) };
            },
        };
        let span = mname.span();
        if m.is_async {
            entries.push(quote_spanned! {span=>
                #[allow(non_snake_case, clippy::too_many_arguments)]
                unsafe fn #entry(__dsu_state: *mut () #(, #arg_names: #arg_tys)*) -> ::dsu::__private::CallFuture<#ret> {
                    #this
                    // The method's future must be `Send`: a table entry's future may be polled
                    // on any thread of the runtime.
                    ::dsu::__private::call_future(<#self_ty>::#mname(__dsu_this #(, #arg_names)*))
                }
                #[allow(non_snake_case, clippy::too_many_arguments)]
                unsafe fn #trap(_: *mut () #(, _: #arg_tys)*) -> ::dsu::__private::CallFuture<#ret> {
                    ::dsu::__private::stale_call_future(#name_str, #mname_str)
                }
            });
        } else {
            entries.push(quote! {
                #[allow(non_snake_case, clippy::too_many_arguments)]
                unsafe fn #entry(__dsu_state: *mut () #(, #arg_names: #arg_tys)*) -> ::dsu::__private::CallResult<#ret> {
                    ::dsu::__private::catch(move || {
                        #this
                        <#self_ty>::#mname(__dsu_this #(, #arg_names)*)
                    })
                }
                #[allow(non_snake_case, clippy::too_many_arguments)]
                unsafe fn #trap(_: *mut () #(, _: #arg_tys)*) -> ::dsu::__private::CallResult<#ret> {
                    ::dsu::__private::stale_call(#name_str, #mname_str)
                }
            });
        }
        let receiver = if m.exclusive {
            quote!(::dsu::__private::Receiver::Exclusive)
        } else {
            quote!(::dsu::__private::Receiver::Shared)
        };
        let asyncness = if m.is_async { quote!(async) } else { quote!() };
        let sig_tokens = quote!(#asyncness #receiver ; #(#arg_tys ;)* -> #ret);
        let sig_hash = token_hash(&sig_tokens);
        let (role, proto_ref, proto_static) = match &m.protocol {
            None => (
                quote!(::dsu::__private::ProtocolRole::None),
                quote!(::core::option::Option::None),
                quote!(),
            ),
            Some((kind, pname)) => {
                let st = format_ident!("__DSU_PROTOCOL_{}", mname);
                let role = match kind {
                    ProtocolKind::Begin => quote!(::dsu::__private::ProtocolRole::Begin(#pname)),
                    ProtocolKind::End => quote!(::dsu::__private::ProtocolRole::End(#pname)),
                };
                (
                    role,
                    quote!(::core::option::Option::Some(&#st)),
                    quote!(static #st: ::dsu::__private::ProtocolRef = ::dsu::__private::ProtocolRef::new(#pname);),
                )
            }
        };
        descs.push(quote! {
            ::dsu::__private::MethodDesc {
                name: #mname_str,
                signature: ::dsu::__private::fingerprint::mix_all(#sig_hash, &[
                    #(::core::mem::size_of::<#arg_tys>() as u64, ::core::mem::align_of::<#arg_tys>() as u64,)*
                    ::core::mem::size_of::<#ret>() as u64, ::core::mem::align_of::<#ret>() as u64,
                ]),
                receiver: #receiver,
                // SAFETY: erased here, transmuted back to exactly this type by the proxy.
                entry: unsafe { ::dsu::__private::ErasedFn::new(::core::mem::transmute::<#fn_ty, unsafe fn()>(#entry as #fn_ty)) },
                // SAFETY: as above.
                trap: unsafe { ::dsu::__private::ErasedFn::new(::core::mem::transmute::<#fn_ty, unsafe fn()>(#trap as #fn_ty)) },
                cell: &__DSU_CELLS[#i],
                protocol: #role,
                protocol_state: #proto_ref,
            }
        });
        let vis = &m.vis;
        let docs = &m.docs;
        let (before, after) = match &m.protocol {
            None => (quote!(), quote!()),
            Some((kind, _)) => {
                let st = format_ident!("__DSU_PROTOCOL_{}", mname);
                match kind {
                    ProtocolKind::Begin => (quote!(#st.before_begin();), quote!(#st.begun();)),
                    ProtocolKind::End => (quote!(), quote!(#st.ended();)),
                }
            }
        };
        let call_ty = quote_spanned!(span=> #fn_ty);
        if m.is_async {
            proxies.push(quote! {
                impl #proxy {
                    #(#docs)*
                    #[allow(clippy::too_many_arguments)]
                    #vis async fn #mname(&self #(, #arg_names: #arg_tys)*) -> #ret {
                        let __dsu_method: &'static ::dsu::__private::MethodDesc = &__DSU_METHODS[#i];
                        let __dsu_call = ::dsu::__private::AsyncCall::enter(&self.__dsu_raw, __dsu_method).await;
                        // SAFETY: index cells resolve by name and signature fingerprint, so the
                        // running table's entry for this method has exactly this type.
                        let __dsu_f: #call_ty = unsafe { ::core::mem::transmute::<unsafe fn(), #fn_ty>(__dsu_call.entry(__dsu_method)) };
                        // SAFETY: the state belongs to the running table's version; the gate is
                        // held as the receiver requires until the future is driven to its end
                        // or dropped.
                        let __dsu_fut = unsafe { __dsu_f(__dsu_call.state() #(, #arg_names)*) };
                        let __dsu_r = __dsu_call.drive(__dsu_fut).await;
                        ::dsu::__private::finish(__dsu_r)
                    }
                }
            });
            continue;
        }
        proxies.push(quote! {
            #proto_static
            impl #proxy {
                #(#docs)*
                #[allow(clippy::too_many_arguments)]
                #vis fn #mname(&self #(, #arg_names: #arg_tys)*) -> #ret {
                    let __dsu_method: &'static ::dsu::__private::MethodDesc = &__DSU_METHODS[#i];
                    #before
                    let __dsu_call = ::dsu::__private::Call::enter(&self.__dsu_raw, __dsu_method);
                    // SAFETY: index cells resolve by name and signature fingerprint, so the
                    // running table's entry for this method has exactly this type.
                    let __dsu_f: #call_ty = unsafe { ::core::mem::transmute::<unsafe fn(), #fn_ty>(__dsu_call.entry(__dsu_method)) };
                    // SAFETY: the state belongs to the running table's version, and the gate is
                    // held as the method's receiver requires.
                    let __dsu_r = unsafe { __dsu_f(__dsu_call.state() #(, #arg_names)*) };
                    if let ::core::result::Result::Err(__dsu_p) = &__dsu_r {
                        __dsu_call.panicked(__dsu_method, &**__dsu_p);
                    }
                    ::core::mem::drop(__dsu_call);
                    let __dsu_v = ::dsu::__private::finish(__dsu_r);
                    #after
                    __dsu_v
                }
            }
        });
    }

    // The expansion with dsu: entries, descriptors, and proxy methods through the table.
    let on = quote! {
        #[allow(non_upper_case_globals, non_snake_case, private_interfaces, private_bounds)]
        const _: () = {
            #(#entries)*

            static __DSU_CELLS: [::dsu::__private::IndexCell; #n] = [const { ::dsu::__private::IndexCell::new() }; #n];
            static __DSU_METHODS: [::dsu::__private::MethodDesc; #n] = [#(#descs),*];
            static __DSU_DESC: ::dsu::__private::ComponentDesc = ::dsu::__private::ComponentDesc {
                name: #name_str,
                explicit_id: #id,
                module_path: ::core::module_path!(),
                state: &<#self_ty as ::dsu::__private::State>::LAYOUT,
                methods: &__DSU_METHODS,
                code: #code,
                drop_state: ::dsu::__private::drop_state::<#self_ty>,
                prepare_to_die: #prepare,
                migrate: #migrate,
                health_check: #health_check,
            };

            #[::dsu::__private::linkme::distributed_slice(::dsu::__private::COMPONENTS)]
            #[linkme(crate = ::dsu::__private::linkme)]
            static __DSU_COMPONENT: &'static ::dsu::__private::ComponentDesc = &__DSU_DESC;

            #[automatically_derived]
            unsafe impl ::dsu::__private::Component for #self_ty {
                type Proxy = #proxy;
                const DESC: &'static ::dsu::__private::ComponentDesc = &__DSU_DESC;
            }

            #[automatically_derived]
            impl ::dsu::__private::Proxy for #proxy {
                fn from_raw(raw: ::dsu::__private::RawHandle) -> Self {
                    #proxy { __dsu_raw: raw }
                }
                fn raw(&self) -> &::dsu::__private::RawHandle {
                    &self.__dsu_raw
                }
            }

            #(#proxies)*
        };
    };
    let off = generate_off(c, &proxy, &id);
    // Both expansions are emitted and `cfg(dsu_off)` picks one (see dsu-rt's `off.rs`). The
    // cfgs sit inside a `const` that allows `unexpected_cfgs`: the cfg belongs to the runtime,
    // so a user's crate need not declare it.
    quote! {
        #item

        #[doc(hidden)]
        #[allow(unexpected_cfgs)]
        const _: () = {
            #[cfg(not(dsu_off))]
            #[allow(non_camel_case_types)]
            pub struct #proxy {
                __dsu_raw: ::dsu::__private::RawHandle,
            }

            #[cfg(not(dsu_off))]
            #on

            #[cfg(dsu_off)]
            #off
        };
    }
}

/// The expansion under `--cfg dsu_off` (see dsu-rt's `off.rs`): the proxy holds an
/// `Arc<RwLock<T>>` and each method takes the lock its receiver needs and calls the method
/// directly. `#[inline]`, as the lock and the call would be if written at the call site.
fn generate_off(c: &Component, proxy: &Ident, id: &TokenStream) -> TokenStream {
    let self_ty = &c.self_ty;
    let name_str = c.name.to_string();
    let names = c.methods.iter().map(|m| &m.name);
    // A component with an `async fn` method keeps its state behind tokio's lock (a std guard
    // cannot be held across an `.await` by a `Send` future); its sync methods take that lock
    // without blocking the runtime (see dsu-rt's `off.rs`).
    let any_async = c.methods.iter().any(|m| m.is_async);
    let lock = if any_async {
        quote!(::dsu::__private::AsyncLock<#self_ty>)
    } else {
        quote!(::std::sync::RwLock<#self_ty>)
    };
    let methods = c.methods.iter().map(|m| {
        let mname = &m.name;
        let arg_names: Vec<Ident> = (0..m.args.len())
            .map(|j| format_ident!("__dsu_a{}", j))
            .collect();
        let arg_tys = &m.args;
        let ret = &m.ret;
        let vis = &m.vis;
        let docs = &m.docs;
        if m.is_async {
            let guard = if m.exclusive {
                quote!(let mut __dsu_g = ::dsu::__private::write_async(&self.__dsu_state).await;)
            } else {
                quote!(let __dsu_g = ::dsu::__private::read_async(&self.__dsu_state).await;)
            };
            let this = if m.exclusive {
                quote!(&mut *__dsu_g)
            } else {
                quote!(&*__dsu_g)
            };
            return quote! {
                #(#docs)*
                #[inline]
                #[allow(clippy::too_many_arguments)]
                #vis async fn #mname(&self #(, #arg_names: #arg_tys)*) -> #ret {
                    #guard
                    <#self_ty>::#mname(#this #(, #arg_names)*).await
                }
            };
        }
        let this = match (m.exclusive, any_async) {
            (true, false) => quote!(&mut *::dsu::__private::write(&self.__dsu_state)),
            (false, false) => quote!(&*::dsu::__private::read(&self.__dsu_state)),
            (true, true) => quote!(&mut *::dsu::__private::write_sync(&self.__dsu_state)),
            (false, true) => quote!(&*::dsu::__private::read_sync(&self.__dsu_state)),
        };
        quote! {
            #(#docs)*
            #[inline]
            #[allow(clippy::too_many_arguments)]
            #vis fn #mname(&self #(, #arg_names: #arg_tys)*) -> #ret {
                <#self_ty>::#mname(#this #(, #arg_names)*)
            }
        }
    });
    quote! {
        #[allow(non_upper_case_globals, non_snake_case, private_interfaces, private_bounds)]
        const _: () = {
            #[allow(non_camel_case_types)]
            pub struct #proxy {
                __dsu_state: ::dsu::__private::Shared<#lock>,
            }

            #[automatically_derived]
            impl ::dsu::__private::Component for #self_ty {
                type Proxy = #proxy;
                const EXPLICIT_ID: ::core::option::Option<&'static str> = #id;
                const PATH: &'static str = ::core::concat!(::core::module_path!(), "::", #name_str);
            }

            #[automatically_derived]
            impl ::dsu::__private::Proxy<#self_ty> for #proxy {
                type Lock = #lock;
                fn from_shared(state: ::dsu::__private::Shared<#lock>) -> Self {
                    #proxy { __dsu_state: state }
                }
                fn shared(&self) -> &::dsu::__private::Shared<#lock> {
                    &self.__dsu_state
                }
            }

            impl #proxy {
                #(#methods)*
            }

            // With dsu every method is referenced by its table; so here, lest an uncalled one
            // (a hook, say) warn as dead code in this build only.
            #(let _ = #proxy::#names;)*
        };
    }
}
