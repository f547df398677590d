//! The crates publish (issue 16, item 5): `cargo package --workspace` packs them, and a program
//! outside the workspace that depends on `dsu-rt` by version alone builds and runs against the
//! packages, and `cargo-dsu` installs from its package.
//!
//! The packaged crates are resolved by `[patch.crates-io]` entries that point at the unpacked
//! `.crate` files (their `Cargo.toml` is the one a registry would serve: versions only, no
//! paths), while every other dependency comes from the registry as usual.

use std::path::{Path, PathBuf};
use std::process::Command;

const DSU_CRATES: [&str; 5] = [
    "dsu-syntax",
    "dsu-shared",
    "dsu-macros",
    "dsu-rt",
    "cargo-dsu",
];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `--config` arguments that resolve the dsu crates to the unpacked packages.
fn patch_config(unpacked: &Path) -> Vec<String> {
    DSU_CRATES
        .iter()
        .flat_map(|c| {
            [
                "--config".to_string(),
                format!(
                    "patch.crates-io.{c}.path=\"{}\"",
                    unpacked.join(format!("{c}-0.1.0")).display()
                ),
            ]
        })
        .collect()
}

#[test]
fn a_program_outside_the_workspace_builds_on_the_packaged_crates_and_cargo_dsu_installs() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("publish");
    let pack_dir = base.join("package-target");
    run(
        cargo()
            .current_dir(workspace)
            .args([
                "package",
                "--workspace",
                "--no-verify",
                "--allow-dirty",
                "--target-dir",
            ])
            .arg(&pack_dir),
        "cargo package --workspace",
    );
    // Outside the workspace's tree: under it, cargo would take the packages for members.
    let unpacked_dir = tempfile::tempdir().unwrap();
    let unpacked = unpacked_dir.path().to_path_buf();
    for c in DSU_CRATES {
        let file = pack_dir.join("package").join(format!("{c}-0.1.0.crate"));
        assert!(file.exists(), "{} was not packaged", file.display());
        run(
            Command::new("tar")
                .arg("xzf")
                .arg(&file)
                .arg("-C")
                .arg(&unpacked),
            "tar",
        );
        let manifest =
            std::fs::read_to_string(unpacked.join(format!("{c}-0.1.0/Cargo.toml"))).unwrap();
        assert!(
            !manifest.contains("path = \"../"),
            "{c}'s packaged manifest still points at a sibling by path:\n{manifest}"
        );
    }

    // A program of its own, outside the workspace, that names dsu-rt by version only.
    let app = tempfile::tempdir().unwrap();
    std::fs::create_dir(app.path().join("src")).unwrap();
    std::fs::write(
        app.path().join("Cargo.toml"),
        "[package]\nname = \"outside\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ndsu-rt = \"0.1.0\"\n\n\
         [lints.rust]\nunexpected_cfgs = { level = \"warn\", check-cfg = [\"cfg(dsu_patch)\"] }\n",
    )
    .unwrap();
    std::fs::write(
        app.path().join("src/main.rs"),
        r#"#[dsu::state]
#[derive(Default)]
pub struct Counter { n: u64 }

#[dsu::component]
impl Counter {
    pub fn add(&mut self, k: u64) -> u64 { self.n += k; self.n }
}

fn main() {
    let rt = dsu::Runtime::builder().version("1.0.0").start().unwrap();
    let c = rt.register(Counter::default());
    c.add(40);
    println!("counter {} via {}", c.add(2), rt.status().components[0].id);
}
"#,
    )
    .unwrap();
    let out = run(
        cargo()
            .current_dir(app.path())
            .arg("run")
            .arg("-q")
            .args(patch_config(&unpacked))
            .arg("--target-dir")
            .arg(base.join("outside-target")),
        "cargo run of the outside program",
    );
    assert_eq!(out.trim(), "counter 42 via Counter");
    let lock = std::fs::read_to_string(app.path().join("Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"dsu-rt\"\nversion = \"0.1.0\""),
        "dsu-rt 0.1.0 is in the outside program's lock:\n{lock}"
    );

    // cargo-dsu from its package.
    let root = base.join("install-root");
    let _ = std::fs::remove_dir_all(&root);
    run(
        cargo()
            .arg("install")
            .arg("--debug")
            .args(patch_config(&unpacked))
            .arg("--path")
            .arg(unpacked.join("cargo-dsu-0.1.0"))
            .arg("--root")
            .arg(&root)
            .arg("--target-dir")
            .arg(base.join("install-target")),
        "cargo install cargo-dsu from its package",
    );
    let help = run(
        Command::new(root.join("bin/cargo-dsu")).args(["dsu", "--help"]),
        "the installed cargo-dsu",
    );
    assert!(help.contains("diff"), "{help}");
}
