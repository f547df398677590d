//! Writes the hand-made seed inputs into `corpus/<target>/` (files named `seed-*`).
//!
//! ```sh
//! cd fuzz && cargo run --example write_seeds
//! ```
//!
//! The seeds give each fuzz target a start in every corner of its format: valid packages and
//! requests of each kind, and the ways they go wrong (truncation, bad magic, bad JSON, a line
//! over the size limit). Fuzzing then grows the corpus from them (see README.md).

use std::path::{Path, PathBuf};

#[path = "../fuzz_targets/handoff_state.rs"]
mod handoff_state;

use dsu::control::MAX_REQUEST;
use dsu::package::{BaseComponent, Change};
use dsu::{Constraints, Manifest, Package, Policy, TimeOfDay};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in [
        ("package_reader", package_seeds()),
        ("control_request", control_seeds()),
        ("handoff_stream", handoff_seeds()),
    ] {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            let path: PathBuf = dir.join(format!("seed-{name}"));
            std::fs::write(&path, bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

fn time(text: &str) -> TimeOfDay {
    TimeOfDay::try_from(text.to_string()).expect("a valid time of day")
}

/// The smallest package: default manifest, a few bytes of "library".
fn small_package() -> Package {
    Package::new(
        Manifest::for_this_toolchain("kvstore", "1.0.0", "2.0.0"),
        b"\x7fELF\x02\x01\x01\0".to_vec(),
    )
}

/// A package whose manifest uses every field, with the given policy.
fn full_package(policy: Policy) -> Package {
    let mut manifest = Manifest::for_this_toolchain("kvstore", "2.0.0", "3.0.0");
    manifest.base = vec![BaseComponent {
        id: "kvstore::keyspace::Keyspace".into(),
        code: 0x1234_5678_9abc_def0,
    }];
    manifest.changes = vec![Change {
        item: "field Entry.expires_at".into(),
        file: "src/keyspace.rs".into(),
        line: 42,
        category: 1,
        description: "new field with a generated transfer".into(),
    }];
    manifest.constraints = Constraints {
        components: vec!["kvstore::engine::Engine".into()],
        protocols_idle: vec!["kvstore::Store".into()],
        park_threads: true,
    };
    manifest.policy = policy;
    manifest.timeout_ms = 250;
    Package::new(manifest, vec![0x90; 64])
}

/// Replaces the manifest bytes of a serialised package, fixing up its length.
fn with_manifest_text(package: &Package, manifest: &str) -> Vec<u8> {
    let mut out = dsu::package::MAGIC.to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest.as_bytes());
    out.extend_from_slice(&(package.library.len() as u64).to_le_bytes());
    out.extend_from_slice(&package.library);
    out
}

fn package_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let small = small_package();
    let valid = small.to_bytes();
    let manifest_len = valid.len() - 8 - 4 - 8 - small.library.len();
    let manifest_end = 12 + manifest_len;
    let manifest_text = serde_json::to_string(&small.manifest).expect("a manifest serialises");

    let mut format_2 = small.manifest.clone();
    format_2.format = 2;
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b"not a signature");
    // Signature blocks made by hand (the seeds do not depend on the signing API): a valid
    // ed25519 public key (the curve's base point) with a signature that does not verify, a
    // key that is not a curve point, and a block cut short.
    let signature_block = |key: [u8; 32]| {
        let mut out = valid.clone();
        out.extend_from_slice(b"DSUSIG\0\x01");
        out.extend_from_slice(&key);
        out.extend_from_slice(&[0x5a; 64]);
        out
    };
    let mut base_point = [0x66; 32];
    base_point[0] = 0x58;
    let bad_signature = signature_block(base_point);
    let mut not_a_point = [0; 32];
    not_a_point[0] = 2;
    let bad_signer_key = signature_block(not_a_point);
    let cut_signature = bad_signature[..bad_signature.len() - 30].to_vec();
    let mut huge_manifest_len = valid.clone();
    huge_manifest_len[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut huge_library_len = valid.clone();
    huge_library_len[manifest_end..manifest_end + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut bad_magic = valid.clone();
    bad_magic[7] = 2;

    vec![
        ("valid-small", valid.clone()),
        (
            "valid-signed",
            small.to_signed_bytes(&dsu::signing::SecretKey::from_seed([7; 32])),
        ),
        (
            "valid-compact-manifest",
            with_manifest_text(&small, &manifest_text),
        ),
        (
            "valid-empty-library",
            Package::new(small.manifest.clone(), Vec::new()).to_bytes(),
        ),
        (
            "valid-full-asap",
            full_package(Policy::Asap {
                retries: 3,
                retry_delay_ms: 100,
            })
            .to_bytes(),
        ),
        (
            "valid-full-rate-below",
            full_package(Policy::RateBelow {
                calls_per_sec: 1234.5,
                sample_ms: 200,
                give_up_ms: 60_000,
                retries: 1,
            })
            .to_bytes(),
        ),
        (
            "valid-full-window",
            full_package(Policy::Window {
                start: time("23:30"),
                end: time("01:15"),
                give_up_ms: 3_600_000,
                retries: 0,
            })
            .to_bytes(),
        ),
        ("valid-full-staged", full_package(Policy::Staged).to_bytes()),
        ("truncated-in-magic", valid[..5].to_vec()),
        ("truncated-in-manifest-length", valid[..10].to_vec()),
        (
            "truncated-in-manifest",
            valid[..12 + manifest_len / 2].to_vec(),
        ),
        (
            "truncated-in-library-length",
            valid[..manifest_end + 3].to_vec(),
        ),
        ("truncated-in-library", valid[..valid.len() - 3].to_vec()),
        ("bad-magic-version", bad_magic),
        (
            "bad-magic-elf",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
        ),
        (
            "manifest-format-2",
            Package::new(format_2, small.library.clone()).to_bytes(),
        ),
        (
            "manifest-not-json",
            with_manifest_text(&small, "{\"format\":1,"),
        ),
        ("manifest-huge-length", huge_manifest_len),
        ("library-huge-length", huge_library_len),
        ("trailing-bytes", trailing),
        ("signature-does-not-verify", bad_signature),
        ("signature-key-not-a-point", bad_signer_key),
        ("signature-truncated", cut_signature),
    ]
}

fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let line = |text: &str| format!("{text}\n").into_bytes();
    // A status request padded with spaces to exactly the limit, and one byte over it.
    let padded = |total: usize| {
        let mut request = b"{\"op\":\"status\"}".to_vec();
        request.resize(total - 1, b' ');
        request.push(b'\n');
        request
    };
    let limit = MAX_REQUEST as usize;
    vec![
        ("status", line(r#"{"op":"status"}"#)),
        ("status-no-newline", br#"{"op":"status"}"#.to_vec()),
        ("apply", line(r#"{"op":"apply","package":"/srv/kv/p.dsu","timeout_ms":5000}"#)),
        ("apply-no-timeout", line(r#"{"op":"apply","package":"p.dsu"}"#)),
        (
            "apply-asap",
            line(r#"{"op":"apply","package":"/p.dsu","policy":{"when":"asap","retries":2,"retry_delay_ms":10}}"#),
        ),
        (
            "apply-rate-below",
            line(r#"{"op":"apply","package":"/p.dsu","timeout_ms":null,"policy":{"when":"rate_below","calls_per_sec":0.5,"sample_ms":100,"give_up_ms":1000,"retries":1}}"#),
        ),
        (
            "apply-window",
            line(r#"{"op":"apply","package":"/p.dsu","policy":{"when":"window","start":"23:00","end":"01:30"}}"#),
        ),
        ("apply-staged", line(r#"{"op":"apply","package":"/p.dsu","policy":{"when":"staged"}}"#)),
        ("commit", line(r#"{"op":"commit","id":3}"#)),
        ("commit-timeout", line(r#"{"op":"commit","id":18446744073709551615,"timeout_ms":0}"#)),
        ("two-lines", line("{\"op\":\"status\"}\n{\"op\":\"commit\",\"id\":1}")),
        ("escapes", line(r#"{"op":"apply","package":"/tmp/\u00e9\"\\\/\n\ud83d\ude00.dsu"}"#)),
        ("unknown-op", line(r#"{"op":"reboot"}"#)),
        ("missing-field", line(r#"{"op":"commit"}"#)),
        ("wrong-type", line(r#"{"op":"commit","id":"3"}"#)),
        ("bad-time", line(r#"{"op":"apply","package":"/p","policy":{"when":"window","start":"24:00","end":"1:5"}}"#)),
        ("unclosed", line(r#"{"op":"status""#)),
        ("not-json", line("apply /tmp/p.dsu")),
        ("not-utf8", b"{\"op\":\"apply\",\"package\":\"\xff\xfe\"}\n".to_vec()),
        ("empty-line", b"\n".to_vec()),
        ("reply-pieces", b"error \"quoted\" \\ \x01\x1f\xe2\x80\xa8\0\x01\0one\0two\0\xff\xff\xff\xff\xff\xff\xff\x7f\0".to_vec()),
        ("at-limit", padded(limit)),
        ("over-limit", padded(limit + 1)),
    ]
}

/// Hand-off channels as `handoff_stream` reads them: this process's components (the target's
/// types, registered here with some state) as a hand-off would stream them, with and without
/// pre-copied batches; with descriptor names; and cut or with a length no sender would write.
fn handoff_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use handoff_state::{Dir, Keys, Plain};
    let dir = dsu::register(Dir::default());
    let keys = dsu::register(Keys::default());
    let plain = dsu::register(Plain::default());
    for i in 0..40u32 {
        dir.put(format!("k{i}"), format!("name-{i}"), i % 7);
        keys.set(format!("key:{i}").into_bytes(), vec![i as u8; (i % 5) as usize]);
        plain.count(format!("c{}", i % 6));
    }
    let plain_seed = dsu::__fuzz::seed_channel(false).expect("a seed channel");
    let precopied = dsu::__fuzz::seed_channel(true).expect("a pre-copied seed channel");
    // Both read back whole, in the binary that wrote them: all three components' states.
    for seed in [&plain_seed, &precopied] {
        assert_eq!(dsu::__fuzz::read_channel(seed), Ok(3));
    }
    let with_names = |seed: &[u8], names: &[&str]| {
        let mut out = vec![seed[0], names.len() as u8];
        for n in names {
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        out.extend_from_slice(&seed[2..]);
        out
    };
    let mut huge = vec![0u8, 0];
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut huge_batch = vec![1u8, 0];
    huge_batch.extend_from_slice(&(1u64 << 40).to_le_bytes());
    vec![
        ("stream", plain_seed.clone()),
        ("precopy", precopied.clone()),
        ("names", with_names(&plain_seed, &["K", "L redis"])),
        ("unknown-name", with_names(&plain_seed, &["X"])),
        ("connection-without-description", with_names(&plain_seed, &["C 7"])),
        ("cut-stream", plain_seed[..plain_seed.len() / 2].to_vec()),
        ("cut-precopy", precopied[..precopied.len() / 3].to_vec()),
        ("huge-length", huge),
        ("huge-batch", huge_batch),
        ("empty", Vec::new()),
    ]
}
