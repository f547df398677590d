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
    // `hits` is unchanged: moved. `added` is new: default. `map` holds a changed type: its
    // entries are moved, each value converted with its unchanged fields taken over.
    assert!(
        code.contains("let __dsu_f_hits = unsafe { ::dsu::__private::moved(&old.hits) };"),
        "{code}"
    );
    assert!(
        code.contains("let __dsu_f_added: Vec<u8> = ::core::default::Default::default();"),
        "{code}"
    );
    assert!(code.contains("__dsu_move_convert_Entry(__v)"), "{code}");
    assert_eq!(needs, vec!["Entry".to_string()]);
    // The removed field is dropped with the old state, the map freed without what it moved,
    // moved fields not at all.
    assert!(code.contains("addr_of_mut!((* __old).gone)"), "{code}");
    assert!(code.contains("free_moved_entries"), "{code}");
    assert!(code.contains("addr_of!((* __old).map)"), "{code}");
    assert!(!code.contains("addr_of_mut!((* __old).hits)"), "{code}");
    assert!(
        code.contains("transfers the running `old::Store` to `Store`"),
        "{code}"
    );
    // Conversions come before moves, so a panicking conversion leaves the old state intact.
    assert!(
        code.find("__dsu_move_convert_Entry").unwrap() < code.find("moved(&old.hits)").unwrap()
    );
}

#[test]
fn a_changed_toolchain_pin_is_refused_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for (v, channel) in [("old", "1.95.0"), ("new", "1.96.0")] {
        let root = dir.path().join(v);
        write(
            &root,
            "Cargo.toml",
            &format!(
                "[package]\nname = \"t\"\nversion = \"1.0.0\"\nedition = \"2021\"\n[workspace]\n{}",
                runtime_stub(dir.path())
            ),
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
    // The new process of a hand-off is built by the new toolchain.
    assert!(a.refusals[0].handoff_ok);
    assert_eq!(a.plan.engine, Some(dsu::Engine::Handoff));
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

/// A stand-in package named `dsu-rt` (no code) under `dir`, and the `[dependencies]` section
/// that makes a program beside it depend on it: the analysis refuses a program without the dsu
/// runtime, and these tests are about something else.
fn runtime_stub(dir: &Path) -> String {
    let stub = dir.join("dsu-rt-stub");
    write(
        &stub,
        "Cargo.toml",
        "[package]\nname = \"dsu-rt\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    );
    write(&stub, "src/lib.rs", "");
    format!(
        "\n[dependencies]\ndsu-rt = {{ path = \"{}\" }}\n",
        stub.display()
    )
}

/// A one-file program `t` at `root` with `main` as its source, depending on [`runtime_stub`].
fn program_with_runtime(root: &Path, version: &str, main: &str) {
    write(
        root,
        "Cargo.toml",
        &format!(
            "[package]\nname = \"t\"\nversion = \"{version}\"\nedition = \"2021\"\n[workspace]\n{}",
            runtime_stub(root.parent().unwrap())
        ),
    );
    write(root, "src/main.rs", main);
}

/// A one-file program `t` at `root` with `main` as its source.
fn program(root: &Path, version: &str, main: &str) {
    write(
        root,
        "Cargo.toml",
        &format!(
            "[package]\nname = \"t\"\nversion = \"{version}\"\nedition = \"2021\"\n[workspace]\n"
        ),
    );
    write(root, "src/main.rs", main);
}

#[test]
fn a_changed_global_allocator_is_applied_by_hand_off() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    program_with_runtime(&old, "1.0.0", "fn main() {}\n");
    program_with_runtime(
        &new,
        "2.0.0",
        "#[global_allocator]\nstatic ALLOC: std::alloc::System = std::alloc::System;\nfn main() {}\n",
    );
    let load = cargo_dsu::analysis::load_version;
    let a = cargo_dsu::analysis::analyze(&load(&old).unwrap(), &load(&new).unwrap()).unwrap();
    assert_eq!(a.refusals.len(), 1, "{}", cargo_dsu::report::human(&a));
    let r = &a.refusals[0];
    assert_eq!(
        (r.item.as_str(), r.file.as_str(), r.line),
        ("#[global_allocator]", "src/main.rs", 2)
    );
    assert!(
        r.reason
            .contains("the system allocator -> `ALLOC: std::alloc::System`"),
        "{}",
        r.reason
    );
    assert!(r.handoff_ok);
    assert_eq!(a.plan.engine, Some(dsu::Engine::Handoff));
    // The same allocator in both is no change.
    let a = cargo_dsu::analysis::analyze(&load(&new).unwrap(), &load(&new).unwrap()).unwrap();
    assert!(a.changes.is_empty() && a.refusals.is_empty());
}

#[test]
fn a_hand_off_is_built_by_the_toolchain_the_new_version_pins() {
    // Needs a second toolchain to tell them apart: nightly, where rustup has it.
    let nightly = std::process::Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no nightly toolchain installed with rustup");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    program(&old, "1.0.0", "fn main() {}\n");
    program(&new, "2.0.0", "fn main() { println!(\"2\"); }\n");
    write(
        &new,
        "rust-toolchain.toml",
        "[toolchain]\nchannel = \"nightly\"\n",
    );
    // generate reads the runtime's version from the lock it builds with (NEW's, for a hand-off).
    let lock = "version = 3\n[[package]]\nname = \"dsu-rt\"\nversion = \"0.1.0\"\n";
    write(&old, "Cargo.lock", lock);
    write(&new, "Cargo.lock", lock);
    let mut opts = cargo_dsu::patch::PatchOptions::new(&old, &new);
    opts.target_dir = Some(dir.path().join("target"));
    opts.engine = dsu::Engine::Handoff;
    let g = cargo_dsu::patch::generate(&opts).unwrap();
    assert!(g.pinned && g.dir.join("rust-toolchain.toml").is_file());
    assert!(g.manifest.rustc.contains("nightly"), "{}", g.manifest.rustc);
    // A patch is built by the running process's toolchain, pin or not.
    opts.engine = dsu::Engine::InPlace;
    let g = cargo_dsu::patch::generate(&opts).unwrap();
    assert!(!g.pinned);
    assert!(
        !g.manifest.rustc.contains("nightly"),
        "{}",
        g.manifest.rustc
    );
}

#[test]
fn two_runs_of_the_same_pair_take_turns_in_its_work_directory() {
    // The second run must not clean and rewrite the crate the first is building.
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    program(&old, "1.0.0", "fn main() {}\n");
    program(&new, "2.0.0", "fn main() { println!(\"2\"); }\n");
    let lock = "version = 3\n[[package]]\nname = \"dsu-rt\"\nversion = \"0.1.0\"\n";
    write(&old, "Cargo.lock", lock);
    let mut opts = cargo_dsu::patch::PatchOptions::new(&old, &new);
    opts.target_dir = Some(dir.path().join("target"));
    let first = cargo_dsu::patch::generate(&opts).unwrap();
    let marker = first.dir.join("being-built");
    write(&first.dir, "being-built", "");

    let (tx, rx) = std::sync::mpsc::channel();
    let second = std::thread::spawn(move || {
        let waited = std::cell::Cell::new(None);
        let g = cargo_dsu::patch::generate_reporting(&opts, &mut |d| {
            waited.set(Some(d.to_path_buf()));
            tx.send(()).unwrap();
        })
        .unwrap();
        (g.dir.clone(), waited.take())
    });
    // The second run reports that it waits, and leaves the first one's crate alone meanwhile.
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the second run waits for the first");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!second.is_finished());
    assert!(marker.is_file(), "the first run's crate was touched");
    let first_dir = first.dir.clone();
    drop(first);
    let (second_dir, waited) = second.join().unwrap();
    assert_eq!(second_dir, first_dir);
    assert_eq!(waited.as_deref(), Some(first_dir.as_path()));
    // Its turn came: it cleaned the directory and wrote its own crate.
    assert!(!marker.exists());
    assert!(second_dir.join("Cargo.toml").is_file());
}
