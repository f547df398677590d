//! Only trusted updates get in: signed packages (`cargo dsu keygen`, `diff --sign`, a process
//! that trusts keys), checked under client load.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use dsu::{Outcome, Package};
use dsu_tests::*;

fn app(v: &str) -> std::path::PathBuf {
    program("app", v)
}

/// Runs `cargo dsu ARGS`; returns the exit code, stdout and stderr.
fn dsu_cli(args: &[&std::ffi::OsStr]) -> Result<(i32, String, String)> {
    let out = Command::new(cargo_dsu()).arg("dsu").args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn keygen(path: &Path) -> Result<String> {
    let (code, stdout, stderr) = dsu_cli(&["keygen".as_ref(), "-o".as_ref(), path.as_os_str()])?;
    assert_eq!(code, 0, "keygen failed: {stderr}");
    Ok(stdout.trim().to_string())
}

#[test]
fn a_process_that_trusts_a_key_applies_only_packages_signed_by_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = build_base(&app("v1"))?;
    let unsigned = build_patch(&app("v1"), &app("v2-code"))?;
    let dir = tempfile::tempdir()?;

    // Two key pairs; the process trusts only the first.
    let ops_key = dir.path().join("ops.key");
    let ops_pub = keygen(&ops_key)?;
    assert!(ops_pub.starts_with("dsu-ed25519-public-key "), "{ops_pub}");
    let mode = std::fs::metadata(&ops_key)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key must be private");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ops.key.pub"))?.trim(),
        ops_pub
    );
    let (code, _, stderr) = dsu_cli(&["keygen".as_ref(), "-o".as_ref(), ops_key.as_os_str()])?;
    assert_eq!(code, 1);
    assert!(stderr.contains("refusing to overwrite a key"), "{stderr}");
    let other_key = dir.path().join("other.key");
    keygen(&other_key)?;

    // `cargo dsu diff --sign` signs the whole package.
    let signed = dir.path().join("signed.dsu");
    let (code, _, stderr) = dsu_cli(&[
        "diff".as_ref(),
        app("v1").as_os_str(),
        app("v2-code").as_os_str(),
        "-o".as_ref(),
        signed.as_os_str(),
        "--target-dir".as_ref(),
        programs_target().as_os_str(),
        "--sign".as_ref(),
        ops_key.as_os_str(),
    ])?;
    assert_eq!(code, 0, "diff --sign failed: {stderr}");
    assert!(stderr.contains("signed by key"), "{stderr}");
    let pkg = Package::read(&signed)?;
    assert_eq!(pkg.signer().map(|k| k.to_string()), Some(ops_pub.clone()));
    // A wrong key path is an error before anything is built.
    let (code, _, stderr) = dsu_cli(&[
        "diff".as_ref(),
        app("v1").as_os_str(),
        app("v2-code").as_os_str(),
        "--sign".as_ref(),
        dir.path().join("missing.key").as_os_str(),
    ])?;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read the key file"), "{stderr}");

    // The same package signed by the untrusted key, and the signed one changed after signing
    // (one byte of the library).
    let by_other = dir.path().join("by-other.dsu");
    std::fs::write(
        &by_other,
        Package::read(&unsigned)?.to_signed_bytes(&dsu::signing::SecretKey::read(&other_key)?),
    )?;
    let tampered = dir.path().join("tampered.dsu");
    let mut bytes = std::fs::read(&signed)?;
    let at = bytes.len() - dsu::package::SIGNATURE_LEN - 100;
    bytes[at] ^= 1;
    std::fs::write(&tampered, bytes)?;

    let trusted = dir.path().join("trusted-keys");
    std::fs::write(&trusted, format!("# who may update app\n{ops_pub}\n"))?;
    let p = Process::start_with_env(&exe, &[("DSU_TRUSTED_KEYS", trusted.as_os_str())])?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 7")?, "7");
    let (load, seen) = counter_load(&p, 4, "v2")?;
    load.wait_for_calls(100);

    let refused = |pkg: &Path, expect: &str| -> Result<()> {
        let rec = p.apply(pkg, None)?;
        assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
        let reason = rec.reason.unwrap_or_default();
        assert!(reason.contains(expect), "{reason}");
        Ok(())
    };
    refused(&unsigned, "the package is not signed")?;
    refused(&by_other, "which this process does not trust")?;
    refused(&tampered, "does not match its contents")?;
    // What the operator sees: a one-line reason and exit status 2.
    let (code, _, stderr) = dsu_cli(&[
        "apply".as_ref(),
        unsigned.as_os_str(),
        "--socket".as_ref(),
        p.socket.as_os_str(),
    ])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("Refused: the package is not signed"),
        "{stderr}"
    );
    // A package that cannot be read is refused by the process too, and recorded.
    let (code, _, stderr) = dsu_cli(&[
        "apply".as_ref(),
        tampered.as_os_str(),
        "--socket".as_ref(),
        p.socket.as_os_str(),
    ])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not match its contents"), "{stderr}");
    load.wait_for_calls(100);
    assert_eq!(c.cmd("version")?, "v1");

    // The package signed by the trusted key applies.
    let rec = p.apply(&signed, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    load.wait_for_calls(100);
    assert_no_failures(&load.stop());
    let n: u64 = c.cmd("get")?.parse()?;
    assert_eq!(n, 7 + total_adds(&seen));
    assert_eq!(c.cmd("version")?, format!("v2 total={n}"));

    let history: Vec<_> = p.status()?.history.iter().map(|r| r.outcome).collect();
    assert_eq!(
        history,
        [
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Committed
        ]
    );
    Ok(())
}

#[test]
fn a_process_that_trusts_no_key_takes_signed_and_unsigned_packages() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let unsigned = build_patch(&app("v1"), &app("v2-code"))?;
    let dir = tempfile::tempdir()?;
    let signed = dir.path().join("signed.dsu");
    std::fs::write(
        &signed,
        Package::read(&unsigned)?.to_signed_bytes(&dsu::signing::SecretKey::from_seed([5; 32])),
    )?;
    let p = Process::start(&exe)?;
    assert_eq!(p.apply(&signed, None)?.outcome, Outcome::Committed);
    // A trusted keys file that lists nothing is a configuration mistake: the runtime does
    // not start (the program reports it), instead of trusting nothing or everything.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody\n")?;
    let out = Command::new(&exe)
        .args(["--port", "0", "--socket"])
        .arg(dir.path().join("s.sock"))
        .env("DSU_TRUSTED_KEYS", &empty)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lists no key"), "{stderr}");
    Ok(())
}

/// Checks before code: a patch library whose build facts (read from the file) do not match
/// the process is refused before it is opened, so its static initialiser never runs. The same
/// library untouched is opened, and its initialiser does run: the marker shows it would have.
#[test]
fn a_refused_patch_runs_none_of_its_code() -> Result<()> {
    let exe = build_base(&app("v1"))?;
    let good = build_patch(&app("v1"), &app("v2-code"))?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("initialised");
    let p = Process::start_with_env(&exe, &[("APP_INIT_MARKER", marker.as_os_str())])?;
    let mut c = p.connect()?;
    assert_eq!(c.cmd("add 2")?, "2");

    let pkg = Package::read(&good)?;
    let facts = |lib: &[u8]| {
        lib.windows(10)
            .position(|w| w == b"DSUFACTS1\n")
            .expect("the library carries its facts")
    };
    let altered = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| -> Result<std::path::PathBuf> {
        let mut lib = pkg.library.clone();
        edit(&mut lib);
        let path = dir.path().join(name);
        Package::new(pkg.manifest.clone(), lib).write(&path)?;
        Ok(path)
    };
    // The manifest is the good one; only the library's facts say another runtime.
    let other_rt = altered("other-rt.dsu", &|lib| {
        let at = facts(lib);
        let key = b"\ndsu_rt=";
        let v = at + lib[at..].windows(key.len()).position(|w| w == key).unwrap() + key.len();
        lib[v] = b'9';
    })?;
    let rec = p.apply(&other_rt, None)?;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(reason.contains("built against dsu-rt `9"), "{reason}");
    assert!(!marker.exists(), "the refused library's initialiser ran");
    // The facts section renamed: no facts, refused the same way.
    let no_facts = altered("no-facts.dsu", &|lib| {
        let name = b".dsu_facts\0";
        let at = lib.windows(name.len()).rposition(|w| w == name).unwrap();
        lib[at + name.len() - 2] = b'z';
    })?;
    let rec = p.apply(&no_facts, None)?;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("carries no dsu facts") && reason.contains("no `.dsu_facts` section"),
        "{reason}"
    );
    assert!(!marker.exists(), "the refused library's initialiser ran");
    assert_eq!(c.cmd("add 1")?, "3");
    assert_eq!(c.cmd("version")?, "v1");

    let rec = p.apply(&good, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(std::fs::read_to_string(&marker)?, p.pid().to_string());
    assert!(c.cmd("version")?.starts_with("v2 total="));
    Ok(())
}
