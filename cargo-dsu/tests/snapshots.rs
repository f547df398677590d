//! Snapshots of the analysis (human and JSON reports) and of the generated transfer for every
//! version pair under tests/diff: one pair per kind of change.

use std::path::PathBuf;

use cargo_dsu::analysis::{analyze, load_version};
use cargo_dsu::patch::{generate, PatchOptions};
use cargo_dsu::report;

fn case(name: &str) -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/diff")
        .join(name);
    (root.join("v1"), root.join("v2"))
}

fn snapshot_case(name: &str, expect_refused: bool) {
    let (v1, v2) = case(name);
    let a = analyze(&load_version(&v1).unwrap(), &load_version(&v2).unwrap()).unwrap();
    assert_eq!(a.refused(), expect_refused, "{}", report::human(&a));
    insta::assert_snapshot!(format!("{name}__human"), report::human(&a));
    insta::assert_snapshot!(format!("{name}__json"), report::json(&a));
    if !expect_refused {
        let target = tempfile::tempdir().unwrap();
        let mut opts = PatchOptions::new(&v1, &v2);
        opts.target_dir = Some(target.path().to_path_buf());
        let g = generate(&opts).unwrap();
        insta::assert_snapshot!(format!("{name}__transfer"), g.transfer_src);
    }
}

macro_rules! cases {
    ($($name:ident: $refused:expr,)*) => {$(
        #[test]
        fn $name() {
            snapshot_case(stringify!($name), $refused);
        }
    )*};
}

cases! {
    body_only: false,
    field_added: false,
    field_removed: false,
    field_renamed: false,
    field_type_container: false,
    nested_state: false,
    new_method: false,
    signature_refused: true,
    main_refused: true,
    static_refused: true,
    dependency_bump: true,
    protocol_change: false,
    global_change: true,
    shared_state_type: false,
    field_untransferable: true,
}
