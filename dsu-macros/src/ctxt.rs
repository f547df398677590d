//! Error collection: every problem is reported, not just the first (serde's `Ctxt`).

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

#[derive(Default)]
pub struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub fn error(&mut self, tokens: impl ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    pub fn push(&mut self, e: syn::Error) {
        match &mut self.errors {
            Some(all) => all.combine(e),
            None => self.errors = Some(e),
        }
    }

    pub fn check(self) -> Result<(), syn::Error> {
        match self.errors {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The errors, followed by the original item, so the IDE and the rest of the crate keep working.
pub fn with_original(err: syn::Error, original: &TokenStream) -> TokenStream {
    let errors = err.to_compile_error();
    quote!(#errors #original)
}
