//! Snapshots of the analysis (human and JSON reports, with the engine chosen) and of the
//! generated transfer for every version pair under tests/diff: one pair per kind of change.

use std::path::PathBuf;

use cargo_dsu::analysis::{analyze, load_version, Analysis};
use cargo_dsu::patch::{generate, PatchOptions};
use cargo_dsu::report;
use dsu::Engine;

fn case(name: &str) -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/diff")
        .join(name);
    (root.join("v1"), root.join("v2"))
}

fn analysis(name: &str) -> Analysis {
    let (v1, v2) = case(name);
    analyze(&load_version(&v1).unwrap(), &load_version(&v2).unwrap()).unwrap()
}

const IN_PLACE: Option<Engine> = Some(Engine::InPlace);
const HANDOFF: Option<Engine> = Some(Engine::Handoff);
const REFUSED: Option<Engine> = None;

fn snapshot_case(name: &str, expect: Option<Engine>) {
    let (v1, v2) = case(name);
    let a = analysis(name);
    assert_eq!(a.plan.engine, expect, "{}", report::human(&a));
    insta::assert_snapshot!(format!("{name}__human"), report::human(&a));
    insta::assert_snapshot!(format!("{name}__json"), report::json(&a));
    let Some(engine) = expect else {
        assert!(a.blocking().next().is_some(), "refused, yet nothing blocks");
        return;
    };
    let target = tempfile::tempdir().unwrap();
    let mut opts = PatchOptions::new(&v1, &v2);
    opts.target_dir = Some(target.path().to_path_buf());
    opts.engine = engine;
    let g = generate(&opts).unwrap();
    assert_eq!(g.manifest.engine, engine);
    let cargo_toml = std::fs::read_to_string(g.dir.join("Cargo.toml")).unwrap();
    let root = &g.files[0].1;
    match engine {
        Engine::InPlace => {
            insta::assert_snapshot!(format!("{name}__transfer"), g.transfer_src);
            assert!(root.contains("::dsu::__private::patch_root! {}"), "{root}");
            assert!(
                cargo_toml.contains("crate-type = [\"cdylib\"]"),
                "{cargo_toml}"
            );
        }
        Engine::Handoff => {
            // NEW's program as it is: no patch root, its own binary.
            assert!(!root.contains("patch_root"), "{root}");
            assert!(
                g.dir.to_string_lossy().ends_with("-to-2.0.0-handoff"),
                "{}",
                g.dir.display()
            );
            // The package keeps NEW's name (programs read it); the binary has a name of its
            // own, so that cargo does not put it where the base's executable is.
            let doc: toml::Table = cargo_toml.parse().unwrap();
            assert_eq!(doc["package"]["name"].as_str(), Some(a.new.name.as_str()));
            let bin = doc["bin"][0]["name"].as_str().unwrap();
            assert!(
                bin.starts_with(&format!("dsu-handoff-{}-", a.new.name)),
                "{bin}"
            );
            assert_eq!(doc["bin"][0]["path"].as_str(), Some("src/main.rs"));
            assert!(doc.get("lib").is_none(), "{cargo_toml}");
        }
    }
}

macro_rules! cases {
    ($($name:ident: $engine:expr,)*) => {$(
        #[test]
        fn $name() {
            snapshot_case(stringify!($name), $engine);
        }
    )*};
}

cases! {
    body_only: IN_PLACE,
    field_added: IN_PLACE,
    field_removed: IN_PLACE,
    field_renamed: IN_PLACE,
    field_type_container: IN_PLACE,
    nested_state: IN_PLACE,
    new_method: IN_PLACE,
    signature_refused: HANDOFF,
    main_refused: HANDOFF,
    static_refused: HANDOFF,
    dependency_bump: HANDOFF,
    protocol_change: IN_PLACE,
    global_change: REFUSED,
    shared_state_type: IN_PLACE,
    field_untransferable: REFUSED,
}

/// `--engine in-place` on a change only a hand-off can apply: refused, and the report says
/// that a hand-off would apply it.
#[test]
fn forced_in_place_says_a_hand_off_would_apply_it() {
    let mut a = analysis("main_refused");
    a.choose_engine(Some(Engine::InPlace));
    assert_eq!(a.plan.engine, None);
    insta::assert_snapshot!("main_refused__in_place_human", report::human(&a));
    let v: serde_json::Value = serde_json::from_str(&report::json(&a)).unwrap();
    assert_eq!(v["applicable"], false);
    assert_eq!(v["engine"], serde_json::Value::Null);
    assert_eq!(v["engine_requested"], "in-place");
    assert_eq!(v["refusals"][0]["handoff_ok"], true);
}

/// `--engine handoff` where in place would do: a hand-off, and the reasons say it was forced.
#[test]
fn forced_handoff_is_a_handoff() {
    let mut a = analysis("body_only");
    a.choose_engine(Some(Engine::Handoff));
    assert_eq!(a.plan.engine, HANDOFF);
    assert_eq!(
        a.plan.reasons,
        vec!["forced with --engine handoff".to_string()]
    );
    // Forcing cannot get past state that no engine can transfer.
    let mut a = analysis("field_untransferable");
    a.choose_engine(Some(Engine::Handoff));
    assert_eq!(a.plan.engine, None);
    assert!(
        a.plan
            .reasons
            .iter()
            .any(|r| r.contains("a hand-off cannot apply")),
        "{:?}",
        a.plan.reasons
    );
}
