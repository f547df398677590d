//! The attribute grammar of dsu and the token fingerprints, shared by `dsu-macros` (which
//! expands the attributes) and `cargo-dsu` (which reads them to diff two versions). One parser,
//! two users: the diff reads every attribute exactly as the macros do.

#![forbid(unsafe_code)]

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Token};

/// Attribute keys, by macro.
pub mod keys {
    /// `#[dsu::component(id = "...")]`: an identity that survives moving the type.
    pub const COMPONENT_ID: &str = "id";
    pub const COMPONENT: &[&str] = &[COMPONENT_ID];

    /// `#[dsu::state(old)]`: set by cargo-dsu on the base's definitions a patch carries.
    pub const STATE_OLD: &str = "old";
    /// `#[dsu::state(rebuild)]`: not carried by a process hand-off; the new process's `main`
    /// builds it afresh (a file handle, a cache). No serde traits are derived.
    pub const STATE_REBUILD: &str = "rebuild";
    /// `#[dsu::state(own_serde)]`: the type implements serde's traits itself; `#[dsu::state]`
    /// does not derive them, and a hand-off streams it through them.
    pub const STATE_OWN_SERDE: &str = "own_serde";
    pub const STATE: &[&str] = &[STATE_OLD, STATE_REBUILD, STATE_OWN_SERDE];

    /// `#[dsu::protocol(begin = "name")]` / `#[dsu::protocol(end = "name")]`.
    pub const PROTOCOL_BEGIN: &str = "begin";
    pub const PROTOCOL_END: &str = "end";
    pub const PROTOCOL: &[&str] = &[PROTOCOL_BEGIN, PROTOCOL_END];

    /// `#[dsu::global(rebuild)]`: not carried by a hand-off (its type need not be serde).
    pub const GLOBAL: &[&str] = &[STATE_REBUILD];

    /// `#[dsu::transfer]` takes no arguments.
    pub const NONE: &[&str] = &[];
}

/// The name of the `prepare_to_die` hook method.
pub const PREPARE_TO_DIE: &str = "prepare_to_die";

/// The name of the data-migration hook: `fn migrate(&mut self) -> Result<(), String>`, run by
/// the update manager on the new version, before the update commits (category 5: data on disk).
pub const MIGRATE: &str = "migrate";
/// The health check a new version runs right after an update installs it, before the update
/// commits: `fn health_check(&self) -> Result<(), String>`; an `Err` (or a panic) rolls the
/// update back to the old code and the old state.
pub const HEALTH_CHECK: &str = "health_check";

/// One `key` or `key = "value"` argument.
pub struct Arg {
    pub key: Ident,
    pub value: Option<LitStr>,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Arg { key, value })
    }
}

/// Parsed arguments of a dsu attribute: known keys only, each at most once.
pub struct Args {
    pub args: Vec<Arg>,
}

impl Args {
    /// Parses `tokens` and checks every key against `allowed`. All problems are returned
    /// together (unknown keys, duplicates), each pointing at the offending key.
    pub fn parse(tokens: TokenStream, macro_name: &str, allowed: &[&str]) -> syn::Result<Args> {
        let parsed =
            syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, tokens)
                .map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        format!("cannot parse the arguments of `#[dsu::{macro_name}]`: {e}"),
                    )
                })?;
        let mut errors: Option<syn::Error> = None;
        let mut push = |e: syn::Error| match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        let mut seen: Vec<String> = Vec::new();
        let args: Vec<Arg> = parsed.into_iter().collect();
        for a in &args {
            let k = a.key.to_string();
            if !allowed.contains(&k.as_str()) {
                let expected = if allowed.is_empty() {
                    format!("`#[dsu::{macro_name}]` takes no arguments")
                } else if allowed.len() == 1 {
                    format!("expected `{}`", allowed[0])
                } else {
                    format!(
                        "expected one of {}",
                        allowed
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                push(syn::Error::new(
                    a.key.span(),
                    format!("unknown key `{k}` in `#[dsu::{macro_name}]`: {expected}"),
                ));
            } else if seen.contains(&k) {
                push(syn::Error::new(
                    a.key.span(),
                    format!("duplicate key `{k}` in `#[dsu::{macro_name}]`: give it once"),
                ));
            }
            seen.push(k);
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(Args { args }),
        }
    }

    /// The value of `key`, if given with a value.
    pub fn value(&self, key: &str) -> Option<&LitStr> {
        self.args
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
    }

    /// Whether `key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.args.iter().any(|a| a.key == key)
    }

    /// The first argument (for error spans).
    pub fn span_of(&self, key: &str) -> Span {
        self.args
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.key.span())
            .unwrap_or_else(Span::call_site)
    }
}

/// Whether `path` names the dsu attribute `name` (`dsu::name`, or `name` alone when imported).
pub fn is_dsu_attr(path: &syn::Path, name: &str) -> bool {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segs.as_slice() {
        [a, b] => a == "dsu" && b == name,
        _ => false,
    }
}

/// A canonical text of a token stream: tokens separated by single spaces, groups with their
/// delimiters. Independent of how the tokens were produced (proc_macro or parsed from a file),
/// so that the macros and cargo-dsu compute the same fingerprints.
pub fn canonical(tokens: &TokenStream) -> String {
    let mut out = String::new();
    write_canonical(tokens.clone(), &mut out);
    out
}

fn write_canonical(tokens: TokenStream, out: &mut String) {
    for tt in tokens {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_canonical(g.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(i) => out.push_str(&i.to_string()),
            TokenTree::Punct(p) => out.push(p.as_char()),
            TokenTree::Literal(l) => {
                // rustc hands doc comments to macros as raw strings (`r" doc"`), a parser as
                // plain ones (`" doc"`): compare string literals by value.
                let text = l.to_string();
                match syn::parse_str::<syn::LitStr>(&text) {
                    Ok(s) => out.push_str(&format!("{:?}", s.value())),
                    Err(_) => out.push_str(&text),
                }
            }
        }
    }
}

/// FNV-1a 64 of a token stream's canonical text (the same function as `dsu::fingerprint::str`).
pub fn token_hash(tokens: &TokenStream) -> u64 {
    fnv(canonical(tokens).as_bytes())
}

/// FNV-1a 64.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn canonical_ignores_spacing() {
        let a: TokenStream = "impl  Foo { fn a(&self)->u8{1} }".parse().unwrap();
        let b = quote!(impl Foo { fn a(&self) -> u8 { 1 } });
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn raw_and_plain_strings_hash_alike() {
        let a: TokenStream = "#[doc = r\" text\"] fn f() {}".parse().unwrap();
        let b: TokenStream = "/// text\nfn f() {}".parse().unwrap();
        assert_eq!(canonical(&a), canonical(&b));
    }

    #[test]
    fn unknown_and_duplicate_keys_are_reported_together() {
        let err = Args::parse(
            quote!(id = "a", id = "b", nope),
            "component",
            keys::COMPONENT,
        )
        .err()
        .unwrap();
        let msgs: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("duplicate key `id`"));
        assert!(msgs[1].contains("unknown key `nope`"));
    }
}
