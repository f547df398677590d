//! examples/kvstore updated live through its versions with `cargo dsu diff` and `cargo dsu
//! apply`, while redis-benchmark (a client nobody here wrote) drives it with 50 pipelined
//! clients. Needs redis-tools (`apt-get install redis-tools`; .ci/run installs it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dsu_tests::repo_root;
use dsu_tests::resp::{Client, Reply};

fn version(v: &str) -> PathBuf {
    repo_root().join("examples/kvstore").join(v)
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: this test drives kvstore with the real Redis clients; install them with `apt-get install redis-tools` (.ci/run does)")
    })
}

fn run_dsu(args: &[&str]) -> Output {
    dsu_tests::run_cargo_dsu(args).unwrap()
}

struct Server {
    child: Child,
    port: u16,
    socket: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(exe: &Path) -> Server {
    start_on(exe, None)
}

/// Starts kvstore, on a copy of `data` if given.
fn start_on(exe: &Path, data: Option<&Path>) -> Server {
    start_with(exe, data, &[])
}

/// Starts kvstore, on a copy of `data` if given, with `env` added to its environment.
fn start_with(exe: &Path, data: Option<&Path>, env: &[(&str, &Path)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    if let Some(from) = data {
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("data").join(e.file_name())).unwrap();
        }
    }
    let port = free_port();
    let socket = dir.path().join("kv.sock");
    let mut child = Command::new(exe)
        .args([
            "--port",
            &port.to_string(),
            "--socket",
            socket.to_str().unwrap(),
            "--data",
        ])
        .arg(dir.path().join("data"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let data = dir.path().join("data");
    Server {
        child,
        port,
        socket,
        data,
        _dir: dir,
    }
}

/// `cargo dsu apply PKG`, which must end rolled back (exit 2) with `why` in its report.
fn apply_rolled_back(server: &Server, pkg: &Path, why: &str) {
    let o = run_dsu(&[
        "apply",
        pkg.to_str().unwrap(),
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(out.contains("rolledback") && out.contains(why), "{out}");
}

fn apply(server: &Server, pkg: &Path) {
    let o = run_dsu(&[
        "apply",
        pkg.to_str().unwrap(),
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "apply {}:\n{}\n{}",
        pkg.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn diff(from: &str, to: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{from}-{to}.dsu"));
    let o = run_dsu(&[
        "diff",
        version(from).to_str().unwrap(),
        version(to).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "diff {from} {to}:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

const KEYS: usize = 10_000;

fn value_of(i: usize) -> String {
    format!("value-{i}-{}", "x".repeat(i % 17))
}

/// Loads `KEYS` keys, in pipelined batches of MSET.
fn preload(c: &mut Client) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut args: Vec<String> = vec!["MSET".into()];
        for i in chunk {
            args.push(format!("key-{i}"));
            args.push(value_of(*i));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(c.cmd(&a), Reply::Simple("OK".into()));
    }
}

/// Checks that every key `preload` loaded reads back with its value.
fn assert_preloaded_keys(c: &mut Client) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut args: Vec<String> = vec!["MGET".into()];
        args.extend(chunk.iter().map(|i| format!("key-{i}")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let Reply::Array(values) = c.cmd(&a) else {
            panic!("MGET")
        };
        for (i, v) in chunk.iter().zip(values) {
            assert_eq!(v, Reply::Bulk(Some(value_of(*i).into_bytes())), "key-{i}");
        }
    }
}

/// Waits for redis-benchmark to end, which it must do successfully (it stops at the first
/// error reply or dropped connection); returns what it printed (stdout, stderr).
fn finish_benchmark(bench: Child) -> (String, String) {
    let out = bench.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "redis-benchmark failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// Starts redis-benchmark (50 clients, pipelines of 16, `requests` in all) and waits until it
/// is really running. It exits at once, non-zero, on any error reply or dropped connection.
fn start_benchmark(benchmark: &Path, server: &Server, c: &mut Client, requests: u32) -> Child {
    let bench = Command::new(benchmark)
        .args([
            "-p",
            &server.port.to_string(),
            "-c",
            "50",
            "-P",
            "16",
            "-n",
            &requests.to_string(),
            "-t",
            "set,get,incr",
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start_cmds = info_field(c, "total_commands_processed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while info_field(c, "total_commands_processed") < start_cmds + 50_000 {
        assert!(
            Instant::now() < deadline,
            "redis-benchmark did not get going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bench
}

#[test]
fn kvstore_is_updated_live_under_redis_benchmark() {
    let benchmark = tool("redis-benchmark");
    tool("redis-cli");
    let exe = dsu_tests::build_base(&version("v1")).unwrap();
    // Build the packages first: building is not part of what a client sees.
    let work = tempfile::tempdir().unwrap();
    let steps = [
        ("v1", "v2"),
        ("v2", "v3"),
        ("v3", "v4"),
        ("v4", "v5"),
        ("v5", "v6"),
    ];
    let packages: Vec<PathBuf> = steps.iter().map(|(a, b)| diff(a, b, work.path())).collect();

    let server = start(&exe);
    let mut c = Client::connect(server.port);
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
    // 10,000 keys, loaded in pipelined batches of MSET.
    preload(&mut c);
    assert_eq!(c.cmd(&["DBSIZE"]), Reply::Int(KEYS as i64));
    let connections_before = info_field(&mut c, "total_connections_received");

    let bench = start_benchmark(&benchmark, &server, &mut c, 400_000);

    // v1 -> v2: a bug fix in one component. EXISTS counts every name that exists.
    assert_eq!(c.cmd(&["EXISTS", "key-1", "nope", "key-2"]), Reply::Int(1));
    apply(&server, &packages[0]);
    assert_eq!(c.cmd(&["EXISTS", "key-1", "nope", "key-2"]), Reply::Int(2));
    // v2 -> v3: entries gain an expiry (generated transfer); EXPIRE and TTL.
    assert!(matches!(c.cmd(&["TTL", "key-3"]), Reply::Error(_)));
    apply(&server, &packages[1]);
    assert_eq!(c.cmd(&["TTL", "key-3"]), Reply::Int(-1));
    assert_eq!(c.cmd(&["EXPIRE", "key-3", "100"]), Reply::Int(1));
    assert!(matches!(c.cmd(&["TTL", "key-3"]), Reply::Int(t) if (99..=100).contains(&t)));
    // v3 -> v4: the protocol between Engine and Keyspace changes; SET takes EX/PX.
    apply(&server, &packages[2]);
    assert_eq!(
        c.cmd(&["SET", "session", "abc", "EX", "50"]),
        Reply::Simple("OK".into())
    );
    assert!(matches!(c.cmd(&["TTL", "session"]), Reply::Int(t) if (49..=50).contains(&t)));
    // v4 -> v5: the global shared by Engine and Journal changes type (it counts error replies);
    // its counters carry over.
    let commands_before = info_field(&mut c, "total_commands_processed");
    apply(&server, &packages[3]);
    assert!(info_field(&mut c, "total_commands_processed") > commands_before);
    assert_eq!(info_field(&mut c, "total_error_replies"), 0);
    assert!(matches!(c.cmd(&["NOSUCHCOMMAND"]), Reply::Error(_)));
    assert_eq!(info_field(&mut c, "total_error_replies"), 1);
    // v5 -> v6: the persistence file format changes; the update migrates the file.
    let aof = server.data.join("kvstore.aof");
    assert!(!std::fs::read_to_string(&aof)
        .unwrap()
        .starts_with("KVAOF 2"));
    // First a health check that fails after the migration ran (a directory is where its probe
    // file goes): the update rolls back, and the file is as v5 wrote it, because the migrated
    // one was only staged (`dsu::write_staged`) and is deleted, never moved into place.
    let probe = server.data.join("kvstore.aof.health");
    std::fs::create_dir(&probe).unwrap();
    apply_rolled_back(
        &server,
        &packages[4],
        "health check (`health_check`) of component `journal::Journal` failed",
    );
    assert_eq!(info_field(&mut c, "kvstore_version"), 5);
    let text = std::fs::read_to_string(&aof).unwrap();
    assert!(
        !text.contains("KVAOF"),
        "the file was migrated: {}",
        &text[..80.min(text.len())]
    );
    for leftover in ["kvstore.aof.dsu-staged", "kvstore.aof.dsu-backup"] {
        assert!(
            !server.data.join(leftover).exists(),
            "{leftover} was left behind"
        );
    }
    assert_eq!(
        c.cmd(&["SET", "after-rollback", "v5"]),
        Reply::Simple("OK".into())
    );
    std::fs::remove_dir(&probe).unwrap();
    // Then the migration cannot write its new file (a directory is in the way).
    // The update rolls back; v5 keeps serving with its file and state as they were.
    let blocker = server.data.join("kvstore.aof.dsu-staged");
    std::fs::create_dir(&blocker).unwrap();
    apply_rolled_back(
        &server,
        &packages[4],
        "data migration (`migrate`) of component `journal::Journal` failed",
    );
    assert_eq!(info_field(&mut c, "kvstore_version"), 5);
    assert!(!std::fs::read_to_string(&aof)
        .unwrap()
        .starts_with("KVAOF 2"));
    assert_eq!(
        c.cmd(&["GET", "key-5"]),
        Reply::Bulk(Some(value_of(5).into_bytes()))
    );
    std::fs::remove_dir(&blocker).unwrap();
    apply(&server, &packages[4]);
    assert!(std::fs::read_to_string(&aof)
        .unwrap()
        .starts_with("KVAOF 2\n"));
    assert_eq!(
        c.cmd(&["SET", "after-migration", "yes"]),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        c.cmd(&["GET", "after-rollback"]),
        Reply::Bulk(Some(b"v5".to_vec()))
    );

    let (stdout, stderr) = finish_benchmark(bench);
    for t in ["SET:", "GET:", "INCR:"] {
        assert!(
            stdout.contains(t) && stdout.contains("requests per second"),
            "no {t} result:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("ERR") && !stderr.contains("Error"),
        "{stdout}\n{stderr}"
    );
    // Every connection it opened (50 per test, 3 tests) was accepted and served.
    let connections_after = info_field(&mut c, "total_connections_received");
    assert!(
        connections_after >= connections_before + 150,
        "{connections_before} -> {connections_after}"
    );

    // Every key loaded at the start reads back with its value.
    assert_preloaded_keys(&mut c);
    let st = run_dsu(&[
        "status",
        "--socket",
        server.socket.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["status"]["version"], "6.0.0");
    let mut history = v["status"]["history"].as_array().unwrap().clone();
    // Two rolled back (the failed health check, then the blocked migration), four committed.
    assert_eq!(history.len(), 7);
    for failed in [history.remove(4), history.remove(4)] {
        assert_eq!(failed["outcome"], "rolled_back");
    }
    assert!(history.iter().all(|r| r["outcome"] == "committed"));
    let categories: Vec<u64> = history
        .iter()
        .map(|r| {
            r["changes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["category"].as_u64())
                .max()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        categories,
        vec![1, 1, 2, 3, 5],
        "the category of each update"
    );

    // The migrated file is one v6 reads: a fresh v6 process on a copy of it has every key.
    let v6 = dsu_tests::build_base(&version("v6")).unwrap();
    let keys = c.cmd(&["DBSIZE"]);
    assert!(matches!(keys, Reply::Int(n) if n > KEYS as i64));
    let fresh = start_on(&v6, Some(&server.data));
    let mut f = Client::connect(fresh.port);
    assert_eq!(f.cmd(&["DBSIZE"]), keys);
    assert_eq!(
        f.cmd(&["GET", "key-77"]),
        Reply::Bulk(Some(value_of(77).into_bytes()))
    );
    assert_eq!(
        f.cmd(&["GET", "after-migration"]),
        Reply::Bulk(Some(b"yes".to_vec()))
    );
}

#[test]
fn a_change_to_main_needs_the_handoff_engine() {
    let args = |engine: &str| {
        run_dsu(&[
            "check",
            version("v1").to_str().unwrap(),
            version("v2-main").to_str().unwrap(),
            "--engine",
            engine,
        ])
    };
    let o = args("in-place");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("code outside components changed"), "{out}");
    let o = args("handoff");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("engine: handoff"), "{out}");
}

fn info_field(c: &mut Client, field: &str) -> u64 {
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO"]) else {
        panic!("INFO")
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
}

/// `cargo dsu apply --format json`: (exit status, the update's record).
fn apply_json(server: &Server, pkg: &Path) -> (Option<i32>, serde_json::Value, String) {
    let o = run_dsu(&[
        "apply",
        pkg.to_str().unwrap(),
        "--socket",
        server.socket.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "apply printed no JSON ({e}):\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v["report"].clone(), out)
}

fn status_json(server: &Server) -> serde_json::Value {
    let o = run_dsu(&[
        "status",
        "--socket",
        server.socket.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"].clone()
}

fn alive(pid: u32) -> bool {
    // Not a zombie: a process that exited but was not reaped yet is gone for this purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Kills the process a hand-off started (the test's `Server` only knows the first one).
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test started (indirectly) and SIGKILL.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Writes a copy of `pkg` with its manifest edited and its payload replaced (when given).
fn edited(pkg: &Path, to: &Path, edit: impl FnOnce(&mut dsu::Manifest), payload: Option<Vec<u8>>) {
    let p = dsu::Package::read(pkg).unwrap();
    let mut m = p.manifest.clone();
    edit(&mut m);
    dsu::Package::new(m, payload.unwrap_or(p.library))
        .write(to)
        .unwrap();
}

#[test]
fn a_change_to_main_is_applied_by_handoff_under_redis_benchmark() {
    let benchmark = tool("redis-benchmark");
    tool("redis-cli");
    let work = tempfile::tempdir().unwrap();
    // A new version whose state cannot be read without a transfer (v5's global `STATS` has a
    // counter more), built plainly: no generated transfer inside.
    let v5_plain = {
        let exe = dsu_tests::build_base(&version("v5")).unwrap();
        let copy = work.path().join("kvstore-v5-plain");
        std::fs::copy(&exe, &copy).unwrap();
        copy
    };
    let exe = dsu_tests::build_base(&version("v1")).unwrap();
    // `cargo dsu diff` picks the hand-off engine for a change to `main`, and says why.
    let pkg = work.path().join("v1-v2-main.dsu");
    let o = run_dsu(&[
        "diff",
        version("v1").to_str().unwrap(),
        version("v2-main").to_str().unwrap(),
        "-o",
        pkg.to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let manifest = dsu::Package::read(&pkg).unwrap().manifest;
    assert_eq!(manifest.engine, dsu::Engine::Handoff, "{report}");
    assert!(
        manifest.engine_reasons.iter().any(|r| r.contains("main")),
        "{:?}",
        manifest.engine_reasons
    );
    // Three hand-offs that must fail, leaving v1 serving: the new process is not ready in
    // time; it exits at once; it cannot read the state.
    let too_slow = work.path().join("too-slow.dsu");
    edited(&pkg, &too_slow, |m| m.ready_timeout_ms = 1, None);
    let exits = work.path().join("exits.dsu");
    edited(
        &pkg,
        &exits,
        |_| {},
        Some(std::fs::read("/bin/false").unwrap()),
    );
    // And a second hand-off after it, whose state does need the generated transfer: v3's
    // entries gain an expiry (`cargo dsu diff` picks the hand-off: v3's `main` lacks v2-main's
    // read timeout).
    let to_v3 = diff("v2-main", "v3", work.path());
    assert_eq!(
        dsu::Package::read(&to_v3).unwrap().manifest.engine,
        dsu::Engine::Handoff
    );
    let unreadable = work.path().join("unreadable.dsu");
    edited(
        &pkg,
        &unreadable,
        |_| {},
        Some(std::fs::read(&v5_plain).unwrap()),
    );

    let server = start(&exe);
    let mut c = Client::connect(server.port);
    preload(&mut c);
    assert_eq!(c.cmd(&["INCRBY", "counter", "41"]), Reply::Int(41));
    // A client in the middle of a request when the hand-off comes: half of it is sent now,
    // the rest after; the new process must see the whole request.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut half, b"*3\r\n$3\r\nSET\r\n$4\r\nhalf").unwrap();

    let bench = start_benchmark(&benchmark, &server, &mut c, 1_000_000);
    let old_pid = server.child.id();

    for (bad, why) in [
        (&too_slow, "did not report ready within 1 ms"),
        (&exits, "exited (exit status: 1) before it reported ready"),
        (
            &unreadable,
            "reading global `STATS`: missing field `errors`",
        ),
    ] {
        let (code, rec, out) = apply_json(&server, bad);
        assert_eq!(code, Some(2), "{out}");
        assert_eq!(rec["outcome"], "rolled_back", "{out}");
        assert_eq!(rec["engine"], "handoff", "{out}");
        let reason = rec["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(why) && reason.contains("keeps serving"),
            "{reason}"
        );
        let st = status_json(&server);
        assert_eq!(st["pid"], old_pid, "{st}");
        assert_eq!(st["version"], "1.0.0");
        assert_eq!(
            c.cmd(&["GET", "key-7"]),
            Reply::Bulk(Some(value_of(7).into_bytes()))
        );
    }

    // The real one.
    let (code, rec, out) = apply_json(&server, &pkg);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rec["outcome"], "committed", "{out}");
    assert_eq!(rec["engine"], "handoff", "{out}");
    let new_pid = rec["new_pid"].as_u64().expect("the new pid") as u32;
    let _successor = Successor(new_pid);
    assert_ne!(new_pid, old_pid);
    let pause_ms = rec["pause_ms"].as_f64().unwrap();

    // The half-sent request completes against the new process.
    std::io::Write::write_all(&mut half, b"\r\n$5\r\nvalue\r\n").unwrap();
    let mut reply = [0u8; 5];
    std::io::Read::read_exact(&mut half, &mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n");

    // The second hand-off, still under load: the new process reads v2-main's entries as the
    // old type and converts them with the generated transfer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(old_pid) {
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, rec, out) = apply_json(&server, &to_v3);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rec["outcome"], "committed", "{out}");
    let v3_pid = rec["new_pid"].as_u64().expect("the new pid") as u32;
    let _successor3 = Successor(v3_pid);
    let pause3_ms = rec["pause_ms"].as_f64().unwrap();

    let (bout, berr) = finish_benchmark(bench);
    for bad in ["Error", "error", "reset", "Connection"] {
        assert!(!bout.contains(bad) && !berr.contains(bad), "{bout}\n{berr}");
    }
    // The old processes are gone, the newest serves everything, with every key.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the second process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(alive(v3_pid));
    let st = status_json(&server);
    assert_eq!(st["pid"], v3_pid);
    assert_eq!(st["version"], "3.0.0");
    let history = st["history"].as_array().unwrap();
    assert_eq!(history.len(), 5, "{st}");
    assert_eq!(history[3]["outcome"], "committed");
    assert_eq!(history[3]["new_pid"], new_pid);
    assert_eq!(history[4]["new_pid"], v3_pid);
    let mut c = Client::connect(server.port);
    for i in 0..KEYS {
        assert_eq!(
            c.cmd(&["GET", &format!("key-{i}")]),
            Reply::Bulk(Some(value_of(i).into_bytes())),
            "key-{i}"
        );
    }
    assert_eq!(
        c.cmd(&["GET", "half"]),
        Reply::Bulk(Some(b"value".to_vec()))
    );
    assert_eq!(c.cmd(&["INCR", "counter"]), Reply::Int(42));
    // v3's commands, on entries that came through the transfer (no expiry yet).
    assert_eq!(c.cmd(&["TTL", "key-3"]), Reply::Int(-1));
    assert_eq!(c.cmd(&["EXPIRE", "key-3", "100"]), Reply::Int(1));
    eprintln!(
        "hand-off pauses under redis-benchmark: {pause_ms:.3} ms (v1 -> v2-main), \
         {pause3_ms:.3} ms (v2-main -> v3, with the transfer)"
    );
}

#[test]
fn a_global_that_changes_type_is_transferred_by_a_forced_handoff() {
    tool("redis-cli");
    let work = tempfile::tempdir().unwrap();
    // v4 -> v5: the global `STATS` gains a counter. In place this is a category-3 update; here
    // the hand-off is forced, and the new process converts the streamed old value with the
    // generated global transfer.
    let pkg = work.path().join("v4-v5-handoff.dsu");
    let o = run_dsu(&[
        "diff",
        version("v4").to_str().unwrap(),
        version("v5").to_str().unwrap(),
        "--engine",
        "handoff",
        "-o",
        pkg.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let exe = dsu_tests::build_base(&version("v4")).unwrap();
    let server = start(&exe);
    let mut c = Client::connect(server.port);
    for i in 0..500 {
        assert_eq!(
            c.cmd(&["SET", &format!("key-{i}"), &value_of(i), "EX", "1000"]),
            Reply::Simple("OK".into())
        );
    }
    let commands = info_field(&mut c, "total_commands_processed");
    let (code, rec, out) = apply_json(&server, &pkg);
    assert_eq!(code, Some(0), "{out}");
    let new_pid = rec["new_pid"].as_u64().expect("the new pid") as u32;
    let _successor = Successor(new_pid);
    // The same connection goes on, served by the new process.
    assert!(info_field(&mut c, "total_commands_processed") > commands);
    assert_eq!(info_field(&mut c, "total_error_replies"), 0);
    assert!(matches!(c.cmd(&["NOSUCHCOMMAND"]), Reply::Error(_)));
    assert_eq!(info_field(&mut c, "total_error_replies"), 1);
    for i in 0..500 {
        assert_eq!(
            c.cmd(&["GET", &format!("key-{i}")]),
            Reply::Bulk(Some(value_of(i).into_bytes()))
        );
    }
    assert!(matches!(c.cmd(&["TTL", "key-9"]), Reply::Int(t) if (990..=1000).contains(&t)));
    assert_eq!(status_json(&server)["pid"], new_pid);
}

/// How many updates the soak applies (issue 17 item 1 asks at least 100 of the long soak, in
/// the demo; this is the short one that runs in `cargo test`).
const SOAK_UPDATES: usize = 20;

/// The short soak: `SOAK_UPDATES` in-place updates of kvstore under redis-benchmark (50 clients,
/// pipelined), alternating v1 -> v2 and v2 -> v1, every other one meeting a fault injected
/// through `DSU_FAULT_FILE` (prepare-to-die timing out, a transfer failing, a check failing
/// after `migrate`), in turn. Every faulted update ends aborted or rolled back with the old
/// code running; every other one commits; redis-benchmark sees no error reply or dropped
/// connection; no key is lost; the history holds every update. Prints the requests served and
/// the resident memory at the start and the end.
#[test]
fn a_soak_of_updates_and_injected_faults_under_redis_benchmark_loses_nothing() {
    let benchmark = tool("redis-benchmark");
    let exe = dsu_tests::build_base(&version("v1")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let up = diff("v1", "v2", work.path());
    let down = diff("v2", "v1", work.path());
    let faults = work.path().join("fault");
    let server = start_with(&exe, None, &[("DSU_FAULT_FILE", &faults)]);
    let pid = server.child.id();
    let mut c = Client::connect(server.port);
    preload(&mut c);
    let rss_start = dsu_tests::proc_status_kib(pid, "VmRSS:").unwrap();
    let commands_start = info_field(&mut c, "total_commands_processed");
    let mut bench = start_benchmark(&benchmark, &server, &mut c, 3_000_000);

    // v1's EXISTS counts one name however many exist; v2's counts each (the bug fix).
    let exists = |c: &mut Client| c.cmd(&["EXISTS", "key-1", "nope", "key-2"]);
    let kinds = ["prepare", "transfer", "check"];
    let mut on_v2 = false;
    let mut outcomes = Vec::new();
    let mut under_load = 0;
    for i in 0..SOAK_UPDATES {
        let fault = (i % 2 == 1).then(|| kinds[(i / 2) % kinds.len()]);
        if let Some(point) = fault {
            std::fs::write(&faults, format!("{point} fail\n")).unwrap();
        }
        let pkg = if on_v2 { &down } else { &up };
        let (code, rec, out) = apply_json(&server, pkg);
        let outcome = rec["outcome"].as_str().unwrap_or_default().to_string();
        match fault {
            None => {
                assert_eq!((code, outcome.as_str()), (Some(0), "committed"), "{out}");
                on_v2 = !on_v2;
            }
            Some(point) => {
                let want = if point == "prepare" {
                    "aborted"
                } else {
                    "rolled_back"
                };
                assert_eq!((code, outcome.as_str()), (Some(2), want), "{out}");
                let reason = rec["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains(&format!("injected fault at {point}")),
                    "{out}"
                );
                assert_eq!(std::fs::read(&faults).unwrap(), b"", "the fault was taken");
            }
        }
        outcomes.push(outcome);
        assert_eq!(
            exists(&mut c),
            Reply::Int(if on_v2 { 2 } else { 1 }),
            "after update {i}"
        );
        if bench.try_wait().unwrap().is_none() {
            under_load += 1;
        }
    }
    let (bout, berr) = finish_benchmark(bench);
    assert!(
        !bout.contains("ERR") && !berr.contains("Error"),
        "{bout}\n{berr}"
    );
    assert!(
        under_load == SOAK_UPDATES,
        "only {under_load} of {SOAK_UPDATES} updates ran while redis-benchmark did"
    );
    assert_preloaded_keys(&mut c);
    let history = status_json(&server)["history"].as_array().unwrap().clone();
    let recorded: Vec<String> = history
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(recorded, outcomes);
    let rss_end = dsu_tests::proc_status_kib(pid, "VmRSS:").unwrap();
    let commands = info_field(&mut c, "total_commands_processed") - commands_start;
    eprintln!(
        "soak: {SOAK_UPDATES} updates ({} committed, {} faulted) under redis-benchmark, \
         {commands} commands, 0 error replies, 0 of {KEYS} keys lost; VmRSS {} KiB at the start, \
         {} KiB at the end",
        outcomes.iter().filter(|o| *o == "committed").count(),
        outcomes.iter().filter(|o| *o != "committed").count(),
        rss_start,
        rss_end
    );
}
