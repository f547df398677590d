//! `cargo dsu` as a user runs it: a real base process, `diff`, `apply`, `status`, `watch`, and
//! the exit codes and errors for bad input.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn case(name: &str, v: &str) -> PathBuf {
    repo().join("tests/diff").join(name).join(v)
}

fn target() -> PathBuf {
    repo().join("target/dsu-programs")
}

/// `cargo dsu ARGS` (through the built binary, as cargo runs it), colours off.
fn cargo_dsu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-dsu"))
        .arg("dsu")
        .args(args)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TARGET_DIR", target())
        .output()
        .expect("run cargo-dsu")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds a package as a normal binary.
fn build(dir: &Path) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "building {} failed", dir.display());
    cargo_metadata::Message::parse_stream(&out.stdout[..])
        .filter_map(|m| match m {
            Ok(cargo_metadata::Message::CompilerArtifact(a)) => {
                a.executable.map(|e| e.into_std_path_buf())
            }
            _ => None,
        })
        .last()
        .expect("an executable")
}

/// A case program running in a directory of its own, driven over stdin/stdout.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The process's working directory (its socket lives there); removed when it is dropped.
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Running {
    fn start(exe: &Path, program: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(exe)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let socket = dir.path().join(format!("{program}.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{program} did not open its control socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Running {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            _dir: dir,
            socket,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `diff_and_apply` needs of a process: its control socket, and a place for the package.
struct Probe {
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Probe {
    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

impl Running {
    fn probe(socket: &Path) -> Probe {
        Probe {
            socket: socket.to_path_buf(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn as_probe(&self) -> Probe {
        Running::probe(&self.socket)
    }
}

/// `diff` then `apply`; returns the package path (inside the probe's directory).
fn diff_and_apply(name: &str, p: &Probe) -> PathBuf {
    let pkg = p.dir.path().join(format!("{name}.dsu"));
    let v1 = case(name, "v1");
    let v2 = case(name, "v2");
    let o = cargo_dsu(&[
        "diff",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "-o",
        pkg.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "diff failed:\n{out}\n{err}");
    assert!(
        err.contains("Analyzing") && err.contains("Packaging") && err.contains("Finished"),
        "{err}"
    );
    let o = cargo_dsu(&["apply", pkg.to_str().unwrap(), "--socket", p.socket()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "apply failed:\n{out}\n{err}");
    assert!(out.contains(": committed"), "{out}");
    pkg
}

#[test]
fn diff_apply_and_status_update_a_running_process() {
    let exe = build(&case("nested_state", "v1"));
    let mut p = Running::start(&exe, "case-nested-state");
    p.send("a = apple");
    p.send("b = banana");
    assert_eq!(p.ask("a"), "apple (read 1 times)");
    // A client keeps asking while the update is built and applied; every reply must be a
    // correct one, from either version.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let socket = p.socket.clone();
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 1;
            let mut new_seen = false;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let reply = p.ask("b");
                reads += 1;
                let old = reply.starts_with("banana (read ") && reply.ends_with(" times)");
                let new = reply.starts_with("banana (read ") && reply.ends_with(", created 0)");
                assert!(old || new, "bad reply during the update: {reply}");
                assert!(
                    !new_seen || new,
                    "the old version answered after the new one"
                );
                new_seen |= new;
            }
            assert!(reads > 1, "the client made no calls during the update");
            (p, new_seen)
        })
    };
    let probe = Running::probe(&socket);
    let pkg = diff_and_apply("nested_state", &probe);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut p, new_seen) = client.join().unwrap();
    assert!(new_seen, "the client never saw the new version");
    // Every entry went through the generated transfer: kept values, the new field at default.
    assert_eq!(p.ask("a"), "apple (read 2 times, created 0)");
    assert!(p.ask("b").ends_with(", created 0)"));
    let o = cargo_dsu(&["status", "--socket", p.socket()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(out.starts_with("case-nested-state 2.0.0"), "{out}");
    assert!(
        out.contains("Directory") && out.contains("version 2"),
        "{out}"
    );
    assert!(out.contains("update 1: 1.0.0 -> 2.0.0: committed"), "{out}");
    let o = cargo_dsu(&["status", "--socket", p.socket(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "dsu-status/1");
    assert_eq!(v["status"]["version"], "2.0.0");
    assert_eq!(v["status"]["history"][0]["outcome"], "committed");
    // Applying the same package again is refused: the process no longer runs its base.
    let o = cargo_dsu(&["apply", pkg.to_str().unwrap(), "--socket", p.socket()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Refused"), "{err}");
}

#[test]
fn generated_transfers_compile_and_carry_state_across_modules_renames_and_containers() {
    // A state type of another module held by two components.
    let exe = build(&case("shared_state_type", "v1"));
    let mut p = Running::start(&exe, "case-shared-state-type");
    let before = p.ask("ann@example.org");
    diff_and_apply("shared_state_type", &p.as_probe());
    let after = p.ask("bob@example.org");
    assert_ne!(before, after);
    assert!(
        after.ends_with("(log line 2)"),
        "the logger lost its lines: {after}"
    );
    drop(p);

    // A renamed field keeps its value.
    let exe = build(&case("field_renamed", "v1"));
    let mut p = Running::start(&exe, "case-field-renamed");
    assert_eq!(p.ask("5"), "5");
    diff_and_apply("field_renamed", &p.as_probe());
    assert_eq!(p.ask("3"), "8");
    drop(p);

    // Types changed inside containers are converted element by element.
    let exe = build(&case("field_type_container", "v1"));
    let mut p = Running::start(&exe, "case-field-type-container");
    p.ask("400");
    p.ask("2000");
    let before = p.ask("sum");
    diff_and_apply("field_type_container", &p.as_probe());
    assert_eq!(p.ask("sum"), before);
    // (The base's `main` still parses a reading as a `u32`: it is not part of the update.)
    assert_eq!(p.ask("7"), "3 readings");
}

#[test]
fn a_protocol_change_applies_to_both_parties() {
    let exe = build(&case("protocol_change", "v1"));
    let mut p = Running::start(&exe, "case-protocol-change");
    let v1 = p.ask("10 20");
    let probe = p.as_probe();
    let pkg = diff_and_apply("protocol_change", &probe);
    let v2 = p.ask("10 20");
    assert_ne!(v1, v2, "the new protocol is not running");
    let m = dsu::Package::read(&pkg).unwrap().manifest;
    assert_eq!(
        m.constraints.components,
        vec!["Checkout".to_string(), "Journal".to_string()]
    );
    assert_eq!(m.constraints.protocols_idle, vec!["session".to_string()]);
    assert!(m.changes.iter().any(|c| c.category == 2));
}

/// `diff` OLD NEW `-o` a fresh file, with more arguments; returns the output and the file.
fn diff_to_file(v1: &Path, v2: &Path, more: &[&str]) -> (Output, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("p.dsu");
    let mut args = vec![
        "diff",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "-o",
        pkg.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    (cargo_dsu(&args), dir, pkg)
}

/// `check OLD NEW --format json` with more arguments: the exit code and the document.
fn check_json(v1: &Path, v2: &Path, more: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec![
        "check",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(more);
    let o = cargo_dsu(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(v["format"], "dsu-diff/1");
    (o.status.code(), v)
}

#[test]
fn refused_updates_exit_2_and_write_nothing() {
    // Only a hand-off can apply these: refused in place, with the way out named.
    for name in [
        "main_refused",
        "signature_refused",
        "static_refused",
        "dependency_bump",
    ] {
        let (v1, v2) = (case(name, "v1"), case(name, "v2"));
        let (o, _dir, pkg) = diff_to_file(&v1, &v2, &["--engine", "in-place"]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {out}\n{err}");
        assert!(
            out.contains("REFUSED in place")
                && out.contains("to make it possible")
                && out.contains("run without `--engine in-place` (or with `--engine handoff`)"),
            "{name}: {out}"
        );
        assert!(
            err.contains("`--engine in-place` was given"),
            "{name}: {err}"
        );
        assert!(!pkg.exists(), "{name}: a package was written");
        let (code, v) = check_json(&v1, &v2, &["--engine", "in-place"]);
        assert_eq!(code, Some(2), "{name}: {v}");
        assert_eq!(v["applicable"], false);
        assert!(v["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["handoff_ok"] == true));
        // Left to choose, the analysis picks the hand-off.
        let (code, v) = check_json(&v1, &v2, &[]);
        assert_eq!(code, Some(0), "{name}: {v}");
        assert_eq!(
            (&v["applicable"], &v["engine"]),
            (&true.into(), &"handoff".into())
        );
    }
    // State that no engine can transfer: refused whatever the engine.
    for name in ["global_change", "field_untransferable"] {
        let (v1, v2) = (case(name, "v1"), case(name, "v2"));
        for engine in [&[][..], &["--engine", "handoff"]] {
            let (o, _dir, pkg) = diff_to_file(&v1, &v2, engine);
            let (out, err) = text(&o);
            assert_eq!(o.status.code(), Some(2), "{name} {engine:?}: {out}\n{err}");
            assert!(
                out.contains("REFUSED (") && out.contains("a hand-off cannot apply it either"),
                "{name}: {out}"
            );
            assert!(!pkg.exists(), "{name}: a package was written");
        }
    }
    let o = cargo_dsu(&[
        "check",
        case("body_only", "v1").to_str().unwrap(),
        case("body_only", "v2").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
}

/// A two-file binary crate `plain` at `dir`, version `version`, that does not use dsu.
fn plain_crate(dir: &Path, version: &str, answer: u32) -> PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"plain\"\nversion = \"{version}\"\nedition = \"2021\"\n\n[workspace]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        format!("fn answer() -> u32 {{\n    {answer}\n}}\n\nfn main() {{\n    println!(\"{{}}\", answer());\n}}\n"),
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn a_program_without_the_dsu_runtime_is_refused_and_a_same_version_pair_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = plain_crate(&tmp.path().join("v1"), "0.1.0", 1);
    let v2 = plain_crate(&tmp.path().join("v2"), "0.2.0", 2);
    let o = cargo_dsu(&["check", v1.to_str().unwrap(), v2.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        out.contains(
            "the program has no dsu runtime: OLD (plain 0.1.0) does not depend on `dsu-rt`"
        ) && out.contains("add `dsu-rt` to [dependencies]"),
        "{out}"
    );
    assert!(!out.contains("can be applied"), "{out}");
    for engine in [&[][..], &["--engine", "handoff"]] {
        let (code, v) = check_json(&v1, &v2, engine);
        assert_eq!(code, Some(2), "{v}");
        assert_eq!(v["applicable"], false);
        let runtime: Vec<_> = v["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["item"] == "dsu runtime")
            .collect();
        assert_eq!(runtime.len(), 2, "{v}");
        assert!(runtime.iter().all(|r| r["handoff_ok"] == false), "{v}");
        let (o, _dir, pkg) = diff_to_file(&v1, &v2, engine);
        assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
        assert!(!pkg.exists(), "a package was written");
    }
    // The same version on both sides is warned about (and still analysed).
    let (a, b) = (case("body_only", "v1"), case("body_only", "v1"));
    let o = cargo_dsu(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(
        err.contains("both versions of `") && err.contains("bump `version` in NEW's Cargo.toml"),
        "{out}\n{err}"
    );
    let o = cargo_dsu(&[
        "check",
        case("body_only", "v1").to_str().unwrap(),
        case("body_only", "v2").to_str().unwrap(),
    ]);
    assert!(!text(&o).1.contains("both versions of `"), "{:?}", text(&o));
}

fn kvstore(v: &str) -> PathBuf {
    repo().join("examples/kvstore").join(v)
}

/// Whether an engine reason names a change to `main` or to the code it runs outside
/// components (examples/kvstore/v2-main changes that code).
fn names_outside_code(reason: &str) -> bool {
    reason.contains("src/main.rs:")
        && (reason.contains("`main` changed")
            || reason.contains("is code outside components and changed"))
}

#[test]
fn the_engine_is_chosen_by_what_changed() {
    let (v1, v2, v2_main) = (kvstore("v1"), kvstore("v2"), kvstore("v2-main"));
    // v2-main changes what `main` runs: only a hand-off can apply it, and the reasons say so.
    let o = cargo_dsu(&["check", v1.to_str().unwrap(), v2_main.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("can be applied by process hand-off") && out.contains("\nengine: handoff"),
        "{out}"
    );
    let (_, v) = check_json(&v1, &v2_main, &[]);
    assert_eq!(v["engine"], "handoff");
    let reasons: Vec<&str> = v["engine_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| names_outside_code(r)),
        "{reasons:?}"
    );
    // Forced in place: refused, and the report says a hand-off would apply it.
    let (o, _dir, pkg) = diff_to_file(&v1, &v2_main, &["--engine", "in-place"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        out.contains("REFUSED in place")
            && out.lines().any(names_outside_code)
            && out.contains("a hand-off can apply it")
            && out.contains("(or with `--engine handoff`)"),
        "{out}"
    );
    assert!(!pkg.exists());
    // v1 -> v2 changes a component's code only: in place.
    let (code, v) = check_json(&v1, &v2, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["engine"], "in-place");
    assert_eq!(
        v["engine_reasons"][0],
        "every change is inside components: applied in place"
    );
}

#[test]
fn a_hand_off_package_carries_the_new_executable() {
    let (v1, v2, v2_main) = (kvstore("v1"), kvstore("v2"), kvstore("v2-main"));
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k");
    assert_eq!(
        cargo_dsu(&["keygen", "-o", key.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    // Chosen: v2-main changes what `main` runs; the hand-off crate is NEW's program as it is.
    let (o, _dir, pkg) = diff_to_file(&v1, &v2_main, &["--emit", "patch-src"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("// ===== src/main.rs =====") && !out.contains("patch_root"),
        "{out}"
    );
    assert!(
        err.contains("Compiling hand-off executable") && err.contains("hand-off)"),
        "{err}"
    );
    let p = dsu::Package::read(&pkg).unwrap();
    assert_eq!(p.manifest.engine, dsu::Engine::Handoff);
    assert!(
        p.manifest
            .engine_reasons
            .iter()
            .any(|r| names_outside_code(r)),
        "{:?}",
        p.manifest.engine_reasons
    );
    assert!(p.library.starts_with(b"\x7fELF"), "not an executable");

    // Forced where in place would do; signed; with a ready timeout.
    let (o, _dir, pkg) = diff_to_file(
        &v1,
        &v2,
        &[
            "--engine",
            "handoff",
            "--ready-timeout-ms",
            "7000",
            "--sign",
            key.to_str().unwrap(),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("\nengine: handoff"), "{out}");
    let p = dsu::Package::read(&pkg).unwrap();
    let m = &p.manifest;
    assert_eq!(m.engine, dsu::Engine::Handoff);
    assert_eq!(
        m.engine_reasons,
        vec!["forced with --engine handoff".to_string()]
    );
    assert_eq!(m.ready_timeout_ms, 7000);
    assert_eq!(
        (m.program.as_str(), m.from.as_str(), m.to.as_str()),
        ("kvstore", "1.0.0", "2.0.0")
    );
    // The runtime checks the base it runs against, as for a patch.
    assert!(!m.base.is_empty() && !m.dsu_rt.is_empty() && !m.rustc.is_empty());
    assert!(p.signer().is_some(), "the package is not signed");
    assert!(p.library.starts_with(b"\x7fELF"), "not an executable");

    // Without `-o`, the package goes beside the work directory and is named like it, so the
    // hand-off of a pair does not overwrite the patch of the same pair.
    let default_out = target()
        .join("dsu")
        .join("kvstore-1.0.0-to-2.0.0-handoff.dsu");
    let _ = std::fs::remove_file(&default_out);
    let o = cargo_dsu(&[
        "diff",
        "-q",
        "--engine",
        "handoff",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let p = dsu::Package::read(&default_out).unwrap();
    assert_eq!(p.manifest.engine, dsu::Engine::Handoff);
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = case("body_only", "v1");
    // Not a crate.
    let o = cargo_dsu(&["check", d.to_str().unwrap(), v1.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("is not a crate: there is no Cargo.toml"),
        "{err}"
    );
    // Two unrelated crates.
    let o = cargo_dsu(&[
        "check",
        v1.to_str().unwrap(),
        case("field_added", "v2").to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("are two different crates"), "{err}");
    // A truncated package, a file that is not a package, a socket that does not exist.
    let socket = d.join("none.sock");
    let truncated = d.join("t.dsu");
    std::fs::write(&truncated, b"DSUPKG\0\x01\x10\0").unwrap();
    let o = cargo_dsu(&[
        "apply",
        truncated.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("truncated"), "{err}");
    let not_pkg = d.join("n.dsu");
    std::fs::write(&not_pkg, b"hello, world").unwrap();
    let o = cargo_dsu(&[
        "apply",
        not_pkg.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("not a dsu package"), "{err}");
    let o = cargo_dsu(&["status", "--socket", socket.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("cannot connect to the control socket")
            && err.contains("is the process running"),
        "{err}"
    );
    // A git revision that does not exist.
    let o = cargo_dsu(&["check", "git:no-such-rev", v1.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("is not a revision"), "{err}");
}

#[test]
fn help_is_there_for_every_command() {
    for cmd in ["diff", "check", "apply", "status", "watch", "keygen"] {
        let o = cargo_dsu(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        insta::assert_snapshot!(format!("help_{cmd}"), String::from_utf8_lossy(&o.stdout));
    }
    // `cargo-dsu diff ...` (without the `dsu` cargo passes) works too.
    let o = Command::new(env!("CARGO_BIN_EXE_cargo-dsu"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
}

/// A copy of a case package in a scratch directory, with the runtime dependency made absolute.
fn scratch_copy(name: &str, v: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    cargo_dsu::baseline::snapshot(&case(name, v), &dir).unwrap();
    dir
}

#[test]
fn git_revisions_are_a_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = scratch_copy("body_only", "v1", tmp.path());
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .current_dir(&pkg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"]);
    git(&[
        "-c",
        "user.email=t@t",
        "-c",
        "user.name=t",
        "commit",
        "-qm",
        "v1",
    ]);
    std::fs::copy(
        case("body_only", "v2").join("src/main.rs"),
        pkg.join("src/main.rs"),
    )
    .unwrap();
    let o = cargo_dsu(&["check", "git:HEAD", pkg.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("Account::withdraw: body changed"), "{out}");
}

#[test]
fn watch_turns_a_save_into_a_live_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = scratch_copy("body_only", "v1", tmp.path());
    std::fs::copy(
        case("body_only", "v1").join("Cargo.lock"),
        pkg.join("Cargo.lock"),
    )
    .unwrap();
    let exe = build(&pkg);
    let mut p = Running::start(&exe, "case-body-only");
    assert_eq!(p.ask("deposit 5"), "5");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_cargo-dsu"))
        .args([
            "dsu",
            "watch",
            "--max-updates",
            "1",
            "--timings",
            "--socket",
            p.socket(),
            "--manifest-path",
        ])
        .arg(&pkg)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TARGET_DIR", target())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect watch's output on a thread, so the test can give up on it after a deadline.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let err = watch.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let wait_for = |needle: &str, log: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !log.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                }
                Err(_) => return false,
            }
        }
        true
    };
    let watching = wait_for("Watching", &mut log);
    if !watching {
        let _ = watch.kill();
        panic!("watch did not start:\n{log}");
    }
    // The bug fix, saved.
    std::fs::copy(
        case("body_only", "v2").join("src/main.rs"),
        pkg.join("src/main.rs"),
    )
    .unwrap();
    let live = wait_for("Timings", &mut log);
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        live && log.contains("Applied") && log.contains("Live"),
        "watch did not apply the change:\n{log}"
    );
    // `--timings`: where the update's time went, each part with its seconds. rustc links with
    // lld on this target, so the link is split out.
    let timings = log.lines().find(|l| l.contains("Timings")).unwrap();
    for part in [
        "quiet wait ",
        "analysis ",
        "generate ",
        "cargo+rustc ",
        "link ",
        "pack ",
        "load ",
        "apply ",
        "total ",
    ] {
        let at = timings
            .find(part)
            .unwrap_or_else(|| panic!("no `{part}` in {timings}"));
        let secs = timings[at + part.len()..].split('s').next().unwrap();
        assert!(secs.parse::<f64>().is_ok(), "`{part}{secs}` in {timings}");
    }
    // The fixed withdraw runs: no underflow.
    assert_eq!(p.ask("withdraw 10"), "0");
}

#[test]
fn emit_prints_the_generated_code() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("p.dsu");
    let (v1, v2) = (case("field_added", "v1"), case("field_added", "v2"));
    let (v1, v2, out) = (
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        pkg.to_str().unwrap(),
    );
    let o = cargo_dsu(&["diff", v1, v2, "-o", out, "--emit", "transfer"]);
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains("pub(crate) mod old {")
            && stdout.contains("fn __dsu_generated_transfer_Cache"),
        "{stdout}"
    );
    assert!(
        stdout.contains("let __dsu_f_hits: u64 = ::core::default::Default::default();"),
        "{stdout}"
    );
    let o = cargo_dsu(&["diff", v1, v2, "-o", out, "--emit", "patch-src"]);
    let (stdout, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout.contains("// ===== src/main.rs =====")
            && stdout.contains("::dsu::__private::patch_root! {}"),
        "{stdout}"
    );
    let m = dsu::Package::read(&pkg).unwrap().manifest;
    assert_eq!(m.program, "case-field-added");
    assert_eq!((m.from.as_str(), m.to.as_str()), ("1.0.0", "2.0.0"));
    assert_eq!(m.base.len(), 1);
    assert!(m
        .changes
        .iter()
        .any(|c| c.item == "field Cache.hits" && c.category == 1));
}

#[test]
fn colours_follow_cargo_term_color() {
    let run = |color: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_cargo-dsu"))
            .args(["dsu", "status", "--socket", "/nonexistent/dsu.sock"])
            .env("CARGO_TERM_COLOR", color)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run("always").contains("\x1b[1;31merror\x1b[0m:"));
    assert!(run("never").starts_with("error:"));
}

/// Every file under `dir` (but `target/`) with its contents.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                out.extend(tree(&p));
            }
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_base_without_a_cargo_lock_that_was_never_built_gets_one_resolved_outside_its_tree() {
    // The second update of a streak: its base (here v1 without its lock) was never built on
    // its own, and no update to it was built in this target directory.
    let tmp = tempfile::tempdir().unwrap();
    let old = scratch_copy("body_only", "v1", &tmp.path().join("old"));
    let _ = std::fs::remove_file(old.join("Cargo.lock"));
    let new = scratch_copy("body_only", "v2", &tmp.path().join("new"));
    let before = tree(&old);
    let target = tmp.path().join("target");
    let (o, _out, pkg) = diff_to_file(&old, &new, &["--target-dir", target.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(pkg.is_file());
    assert!(
        err.contains("Using Cargo.lock") && err.contains("resolved from the base's dependencies"),
        "{err}"
    );
    assert_eq!(tree(&old), before, "the base's tree is left as it was");
    assert!(!old.join("Cargo.lock").exists() && !old.join("target").exists());
}
