//! The source model: module resolution and the dsu items found, as the diff will see them.

use std::collections::HashSet;
use std::path::Path;

use cargo_dsu::source::{load_crate, Model};
use cargo_dsu::transfer::{component_transfer, Changed};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn follows_every_kind_of_module_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "src/main.rs",
        "mod flat; mod nested; #[path = \"elsewhere/odd.rs\"] mod renamed; mod inline { mod deep; }\nfn main() {}",
    );
    write(root, "src/flat.rs", "#[dsu::state] pub struct A { x: u8 }");
    write(root, "src/nested/mod.rs", "mod child;");
    write(
        root,
        "src/nested/child.rs",
        "#[dsu::state] pub struct B { y: u8 }",
    );
    write(
        root,
        "src/elsewhere/odd.rs",
        "#[dsu::state] pub struct C { z: u8 }",
    );
    write(
        root,
        "src/inline/deep.rs",
        "#[dsu::state] pub struct D { w: u8 }",
    );
    let src = load_crate(root, &root.join("src/main.rs")).unwrap();
    let model = Model::of(&src);
    let mut keys: Vec<&String> = model.states.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "flat::A",
            "inline::deep::D",
            "nested::child::B",
            "renamed::C"
        ]
    );
}

#[test]
fn a_missing_module_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "src/main.rs", "mod gone;\nfn main() {}");
    let err = load_crate(dir.path(), &dir.path().join("src/main.rs"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("module `gone`"), "{err}");
}

#[test]
fn components_keep_their_explicit_id_and_code_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "src/main.rs",
        r#"
        #[dsu::state] pub struct S { n: u64 }
        /// Docs are part of the code fingerprint, as the macro sees them.
        #[dsu::component(id = "counter")]
        impl S { pub fn get(&self) -> u64 { self.n } }
        fn main() {}
        "#,
    );
    let src = load_crate(dir.path(), &dir.path().join("src/main.rs")).unwrap();
    let model = Model::of(&src);
    let c = &model.components["S"];
    assert_eq!(c.id("S"), "counter");
    assert!(model.component_code("S").is_some());
}

#[test]
fn the_generated_transfer_moves_kept_fields_defaults_new_ones_and_converts_changed_ones() {
    let old: syn::Item = syn::parse_quote! {
        #[dsu::state] pub struct Store { map: HashMap<String, Entry>, hits: u64, gone: String }
    };
    let new: syn::Item = syn::parse_quote! {
        #[dsu::state] pub struct Store { map: HashMap<String, Entry>, hits: u64, added: Vec<u8> }
    };
    let names: HashSet<String> = ["Store".to_string(), "Entry".to_string()].into();
    let (tokens, needs) = component_transfer(
        "Store",
        &old,
        &new,
        &Changed {
            names: &names,
            homes: None,
        },
    )
    .unwrap();
    let code = prettyplease::unparse(&syn::parse2(tokens).unwrap());
    // `hits` is unchanged: moved. `added` is new: default. `map` holds a changed type: converted.
    assert!(
        code.contains("let __dsu_f_hits = unsafe { ::dsu::__private::moved(&old.hits) };"),
        "{code}"
    );
    assert!(
        code.contains("let __dsu_f_added: Vec<u8> = ::core::default::Default::default();"),
        "{code}"
    );
    assert!(code.contains("__dsu_convert_Entry(__v)"), "{code}");
    assert_eq!(needs, vec!["Entry".to_string()]);
    // The removed field and the converted one are dropped with the old state; moved ones are not.
    assert!(code.contains("addr_of_mut!((* __old).gone)"), "{code}");
    assert!(code.contains("addr_of_mut!((* __old).map)"), "{code}");
    assert!(!code.contains("addr_of_mut!((* __old).hits)"), "{code}");
    assert!(
        code.contains("transfers the running `old::Store` to `Store`"),
        "{code}"
    );
    // Conversions come before moves, so a panicking conversion leaves the old state intact.
    assert!(code.find("__dsu_convert_Entry").unwrap() < code.find("moved(&old.hits)").unwrap());
}

#[test]
fn a_changed_toolchain_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (v, channel) in [("old", "1.95.0"), ("new", "1.96.0")] {
        let root = dir.path().join(v);
        write(
            &root,
            "Cargo.toml",
            "[package]\nname = \"t\"\nversion = \"1.0.0\"\nedition = \"2021\"\n[workspace]\n",
        );
        write(&root, "src/main.rs", "fn main() {}\n");
        write(
            &root,
            "rust-toolchain.toml",
            &format!("[toolchain]\nchannel = \"{channel}\"\n"),
        );
    }
    let old = cargo_dsu::analysis::load_version(&dir.path().join("old")).unwrap();
    let new = cargo_dsu::analysis::load_version(&dir.path().join("new")).unwrap();
    let a = cargo_dsu::analysis::analyze(&old, &new).unwrap();
    assert!(a.refused());
    assert!(
        a.refusals[0].reason.contains("toolchain pin"),
        "{}",
        a.refusals[0].reason
    );
    assert!(a.refusals[0].reason.contains("1.96.0"));
    // The same pin in both is no change.
    std::fs::copy(
        dir.path().join("old/rust-toolchain.toml"),
        dir.path().join("new/rust-toolchain.toml"),
    )
    .unwrap();
    let new = cargo_dsu::analysis::load_version(&dir.path().join("new")).unwrap();
    assert!(!cargo_dsu::analysis::analyze(&old, &new).unwrap().refused());
}

#[test]
fn a_handle_does_not_hold_the_state_it_points_to() {
    use cargo_dsu::transfer::holds_any;
    let names: HashSet<String> = ["Store".to_string()].into();
    let holds = |t: syn::Type| holds_any(&t, &names);
    assert!(!holds(syn::parse_quote!(dsu::Handle<Store>)));
    assert!(!holds(syn::parse_quote!(Vec<dsu::Handle<Store>>)));
    assert!(holds(syn::parse_quote!(Vec<Store>)));
    assert!(holds(
        syn::parse_quote!(HashMap<String, (u8, Box<crate::a::Store>)>)
    ));
    assert!(!holds(syn::parse_quote!(StoreKey)));
}
