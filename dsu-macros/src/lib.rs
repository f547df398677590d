//! dsu's attribute macros. Use them through the runtime crate (`#[dsu::component]`, ...);
//! generated code reaches the runtime only through `::dsu::__private`.
//!
//! Each macro is parse -> validate -> expand. Every problem found is reported at once, pointing
//! at the user's tokens, and the original item is still emitted next to the errors so the rest
//! of the crate keeps compiling.
//!
//! Every expansion comes in two alternatives, and `cfg(dsu_off)` picks one: with dsu, and with
//! the runtime compiled out (`RUSTFLAGS="--cfg dsu_off"`, see dsu-rt's `off.rs`). A macro cannot
//! see the cfg of the crate it expands in, so it emits both and the compiler keeps one.

#![forbid(unsafe_code)]

mod component;
mod ctxt;
mod global;
mod state;
mod transfer;

use proc_macro::TokenStream;

/// Makes an inherent `impl` block a component: generates its indirection table, the handle API
/// (`handle.method(args)` calls through the table), and the descriptors the loader reads.
///
/// `#[dsu::component(id = "name")]` gives an identity that survives moving the type.
#[proc_macro_attribute]
pub fn component(args: TokenStream, item: TokenStream) -> TokenStream {
    component::expand(args.into(), item.into()).into()
}

/// Marks a struct or enum as component state: generates its layout fingerprint and the hooks
/// state transfer needs.
#[proc_macro_attribute]
pub fn state(args: TokenStream, item: TokenStream) -> TokenStream {
    state::expand(args.into(), item.into()).into()
}

/// Marks a method of a `#[dsu::component]` impl as the beginning (`begin = "name"`) or end
/// (`end = "name"`) of a multi-call protocol that an update must not split.
#[proc_macro_attribute]
pub fn protocol(args: TokenStream, item: TokenStream) -> TokenStream {
    component::protocol_outside_component(args.into(), item.into()).into()
}

/// Makes a `static` owned by the runtime, so a patch sees the host's instance.
#[proc_macro_attribute]
pub fn global(args: TokenStream, item: TokenStream) -> TokenStream {
    global::expand(args.into(), item.into()).into()
}

/// A hand-written state transfer: `fn(old: &old::T) -> T` (or `-> Result<T, E>`), used by a
/// patch instead of the generated one. Compiled only into patches (`cfg(dsu_patch)`).
#[proc_macro_attribute]
pub fn transfer(args: TokenStream, item: TokenStream) -> TokenStream {
    transfer::expand(args.into(), item.into()).into()
}
