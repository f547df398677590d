//! Test harness: builds test programs and their patches, runs them as child processes, drives
//! them over their line protocol and their control socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dsu::control::{request, Request, Response};
use dsu::UpdateRecord;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Where test programs and their patches are built (shared, so dependencies build once):
/// `target/dsu-programs`, or the directory in `DSU_TESTS_TARGET`.
///
/// A test process serialises only its own builds: two test processes building the same patch
/// at once regenerate one patch crate under each other. Give a second process (a second
/// `cargo test` while one runs) a directory of its own with `DSU_TESTS_TARGET`.
pub fn programs_target() -> PathBuf {
    match std::env::var_os("DSU_TESTS_TARGET") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target").join("dsu-programs"),
    }
}

/// `tests/programs/NAME/VERSION`.
pub fn program(name: &str, version: &str) -> PathBuf {
    repo_root().join("tests/programs").join(name).join(version)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Serialises builds in this test binary (cargo would serialise them anyway, and two tests
/// must not regenerate the same patch crate at once).
fn build_lock() -> &'static Mutex<HashMap<String, PathBuf>> {
    static LOCK: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How [`build_base_with`] builds a program: the cargo profile and the target directory (a
/// benchmark builds in release, in a directory of its own, so that the tests' builds in
/// [`programs_target`] and its own never overwrite each other's binaries). A patch for such a
/// base is built with the same profile: `cargo dsu diff --release --target-dir DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildProfile {
    /// `cargo build --release`.
    pub release: bool,
    /// `CARGO_TARGET_DIR` of the build.
    pub target_dir: PathBuf,
}

impl BuildProfile {
    /// What the tests use: the dev profile, in [`programs_target`].
    pub fn dev() -> BuildProfile {
        BuildProfile {
            release: false,
            target_dir: programs_target(),
        }
    }

    /// Release builds in `target_dir`.
    pub fn release_in(target_dir: impl Into<PathBuf>) -> BuildProfile {
        BuildProfile {
            release: true,
            target_dir: target_dir.into(),
        }
    }

    fn key(&self) -> String {
        format!(
            "{}@{}",
            if self.release { "release" } else { "dev" },
            self.target_dir.display()
        )
    }
}

/// Builds a program version as a normal binary and returns its path.
pub fn build_base(dir: &Path) -> Result<PathBuf> {
    build_base_with(dir, &BuildProfile::dev())
}

/// Builds a program version as a normal binary with `profile` and returns its path.
pub fn build_base_with(dir: &Path, profile: &BuildProfile) -> Result<PathBuf> {
    let mut cache = build_lock().lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("base:{}:{}", profile.key(), dir.display());
    if let Some(p) = cache.get(&key) {
        return Ok(p.clone());
    }
    let mut cmd = Command::new(cargo());
    cmd.args([
        "build",
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(dir.join("Cargo.toml"));
    if profile.release {
        cmd.arg("--release");
    }
    // In the program's directory, as its author builds it: cargo reads its .cargo/config.toml.
    let out = cmd
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &profile.target_dir)
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build")?;
    if !out.status.success() {
        bail!("building {} failed", dir.display());
    }
    let mut exe = None;
    for msg in cargo_metadata::Message::parse_stream(&out.stdout[..]) {
        if let Ok(cargo_metadata::Message::CompilerArtifact(a)) = msg {
            if let Some(e) = a.executable {
                exe = Some(e.into_std_path_buf());
            }
        }
    }
    let exe = exe.ok_or_else(|| anyhow!("no executable built for {}", dir.display()))?;
    // Every version of a program builds to the same file (`debug/NAME`): give each a copy of
    // its own, so that building another version (here, in another test process, or a
    // hand-off build) cannot replace the binary a test is about to start.
    let own = profile
        .target_dir
        .join("bases")
        .join(dir.to_string_lossy().replace(['/', '\\', ':'], "_"));
    std::fs::create_dir_all(&own)?;
    let copy = own.join(exe.file_name().expect("an executable has a name"));
    let tmp = own.join(format!(".{}.tmp", std::process::id()));
    std::fs::copy(&exe, &tmp).with_context(|| format!("copy {}", exe.display()))?;
    std::fs::rename(&tmp, &copy)?;
    // A program that links dsu-shared finds it beside its executable (`-C rpath` records
    // `$ORIGIN`); the copy gets the build's own, which the next build may replace.
    let shared = exe.with_file_name("libdsu_shared.so");
    if shared.is_file() {
        let tmp = own.join(format!(".{}.so.tmp", std::process::id()));
        std::fs::copy(&shared, &tmp).with_context(|| format!("copy {}", shared.display()))?;
        std::fs::rename(&tmp, own.join("libdsu_shared.so"))?;
    }
    cache.insert(key, copy.clone());
    Ok(copy)
}

/// Builds the live update package OLD -> NEW and returns the package file.
pub fn build_patch(old: &Path, new: &Path) -> Result<PathBuf> {
    build_patch_on(old, new, None)
}

/// Builds OLD -> NEW against the Cargo.lock of the running build `base` (for a chain of
/// updates: the process still runs the first version's dependencies).
pub fn build_patch_on(old: &Path, new: &Path, base: Option<&Path>) -> Result<PathBuf> {
    build_base(base.unwrap_or(old))?;
    let mut cache = build_lock().lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("patch:{}:{}", old.display(), new.display());
    if let Some(p) = cache.get(&key) {
        return Ok(p.clone());
    }
    let mut opts = cargo_dsu::patch::PatchOptions::new(old, new);
    opts.target_dir = Some(programs_target());
    opts.base_lock = base.map(|b| b.join("Cargo.lock"));
    let built = cargo_dsu::patch::build(&opts)?;
    let dir = programs_target().join("packages");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!(
        "{}-{}-to-{}.dsu",
        built.package.manifest.program, built.package.manifest.from, built.package.manifest.to
    ));
    built.package.write(&file)?;
    cache.insert(key, file.clone());
    Ok(file)
}

/// A copy of the package at `path` with its manifest edited by `edit` (written beside it under
/// `name`).
pub fn with_manifest(
    path: &Path,
    name: &str,
    edit: impl FnOnce(&mut dsu::Manifest),
) -> Result<PathBuf> {
    let mut pkg = dsu::Package::read(path)?;
    edit(&mut pkg.manifest);
    let out = path.with_file_name(format!("{name}.dsu"));
    pkg.write(&out)?;
    Ok(out)
}

/// A running test program.
pub struct Process {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `exe --port 0 --socket DIR/ctl.sock` and waits for its `ready PORT` line.
    pub fn start(exe: &Path) -> Result<Process> {
        Process::start_with_env(exe, &[])
    }

    /// [`Process::start`] with extra environment variables (`DSU_TRUSTED_KEYS`, say).
    pub fn start_with_env(exe: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<Process> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("ctl.sock");
        let mut child = Command::new(exe)
            .args(["--port", "0", "--socket"])
            .arg(&socket)
            // `cargo test` points LD_LIBRARY_PATH at the workspace's own target directory,
            // which holds a libdsu_shared.so of the workspace's build; the dynamic loader
            // would take it before the program's own (RUNPATH comes after LD_LIBRARY_PATH).
            .env_remove("LD_LIBRARY_PATH")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                anyhow!(
                    "{} did not print `ready PORT` (got {line:?})",
                    exe.display()
                )
            })?;
        Ok(Process {
            child,
            port,
            socket,
            _dir: dir,
        })
    }

    /// The process id (for /proc/PID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Result<Conn> {
        Conn::open(self.port)
    }

    /// Applies a package through the control socket.
    pub fn apply(&self, package: &Path, timeout_ms: Option<u64>) -> Result<UpdateRecord> {
        self.apply_with(package, timeout_ms, None)
    }

    /// Applies a package with a policy overriding the package's.
    pub fn apply_with(
        &self,
        package: &Path,
        timeout_ms: Option<u64>,
        policy: Option<dsu::Policy>,
    ) -> Result<UpdateRecord> {
        self.apply_request(Request::Apply {
            package: package.to_path_buf(),
            timeout_ms,
            policy,
            clear_poison: false,
        })
    }

    /// Applies a package over poisoned components, clearing their poison if it commits.
    pub fn apply_clearing_poison(&self, package: &Path) -> Result<UpdateRecord> {
        self.apply_request(Request::Apply {
            package: package.to_path_buf(),
            timeout_ms: None,
            policy: None,
            clear_poison: true,
        })
    }

    fn apply_request(&self, req: Request) -> Result<UpdateRecord> {
        let resp = self.control(&req)?;
        resp.report
            .ok_or_else(|| anyhow!("apply failed: {:?}", resp.error))
    }

    pub fn status(&self) -> Result<dsu::Status> {
        status_at(&self.socket)
    }

    pub fn control(&self, req: &Request) -> Result<Response> {
        Ok(request(&self.socket, req)?)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of the process whose control socket is `socket`.
pub fn status_at(socket: &Path) -> Result<dsu::Status> {
    let resp = request(socket, &Request::Status)?;
    resp.status
        .ok_or_else(|| anyhow!("status failed: {:?}", resp.error))
}

/// Kills (SIGKILL) the process a hand-off started when dropped: [`Process`] only knows the
/// first one.
pub struct KillPid(pub u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process the test's hand-off started, with SIGKILL.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// A client connection speaking the test programs' line protocol.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one command and returns its reply line.
    pub fn cmd(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            bail!("connection closed while waiting for the reply to `{line}`");
        }
        Ok(reply.trim_end().to_string())
    }
}

/// Clients calling a program in a loop while a test updates it.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<String>>>,
    ok: Arc<AtomicU64>,
}

/// What a load run saw.
pub struct LoadReport {
    pub ok: u64,
    pub failures: Vec<String>,
}

impl Load {
    /// `clients` threads, each on its own connection, each calling `step(conn, i)` with a
    /// growing `i` until stopped. `step` returns `Err` for a failed call.
    pub fn start<F>(port: u16, clients: usize, step: F) -> Result<Load>
    where
        F: Fn(&mut Conn, usize, u64) -> Result<()> + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let step = Arc::new(step);
        let mut threads = Vec::new();
        for c in 0..clients {
            let mut conn = Conn::open(port)?;
            let (stop, ok, step) = (stop.clone(), ok.clone(), step.clone());
            threads.push(std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match step(&mut conn, c, i) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failures.push(format!("client {c} call {i}: {e:#}"));
                            if failures.len() > 20 {
                                break;
                            }
                        }
                    }
                    i += 1;
                }
                failures
            }));
        }
        Ok(Load { stop, threads, ok })
    }

    /// Calls completed so far.
    pub fn completed(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more calls completed (the load is really running).
    pub fn wait_for_calls(&self, n: u64) {
        let start = self.completed();
        for _ in 0..6000 {
            if self.completed() >= start + n {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "the load made no progress: {} calls",
            self.completed() - start
        );
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.threads {
            match t.join() {
                Ok(f) => failures.extend(f),
                Err(_) => failures.push("a client thread panicked".to_string()),
            }
        }
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failures,
        }
    }
}

/// What one client of a [`counter_load`] has seen so far (tests with their own load steps use
/// it for their invariants too).
#[derive(Default, Clone, Debug)]
pub struct Seen {
    /// The result of this client's last `add 1`.
    pub last_add: u64,
    /// How many `add 1` calls of this client completed: every one must be in the counter.
    pub adds: u64,
    /// Whether a version newer than the first answered this client.
    pub saw_new: bool,
    /// Index, in the load's list of versions, of the newest version that answered.
    pub newest: usize,
}

/// One [`Seen`] per client.
pub fn per_client(n: usize) -> Arc<Vec<Mutex<Seen>>> {
    Arc::new((0..n).map(|_| Mutex::new(Seen::default())).collect())
}

/// Waits until the new version has answered every client (a client that saw it never sees the
/// old one again: its load step fails on that).
pub fn wait_until_all_saw_new(seen: &[Mutex<Seen>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().all(|c| c.lock().unwrap().saw_new) {
        assert!(
            std::time::Instant::now() < deadline,
            "a client was never answered by the new version"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `add 1` calls all clients completed.
pub fn total_adds(seen: &[Mutex<Seen>]) -> u64 {
    seen.iter()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).adds)
        .sum()
}

/// Clients of `tests/programs/app` alternating `add 1` (each result must be larger than the
/// client's previous one) and `version`, which must answer `v1` until it answers a version
/// starting with `new_prefix`, and never `v1` again after that.
pub fn counter_load(
    p: &Process,
    clients: usize,
    new_prefix: &'static str,
) -> Result<(Load, Arc<Vec<Mutex<Seen>>>)> {
    counter_load_through(p, clients, &["v1", new_prefix])
}

/// As [`counter_load`], for a process that may go through several versions: `versions` lists
/// the prefixes of the `version` replies in the order the updates install them (a reply
/// belongs to the longest prefix it starts with). A client fails on a reply that matches none,
/// and on a reply of a version older than one it has already seen.
pub fn counter_load_through(
    p: &Process,
    clients: usize,
    versions: &[&'static str],
) -> Result<(Load, Arc<Vec<Mutex<Seen>>>)> {
    let versions: Arc<Vec<&'static str>> = Arc::new(versions.to_vec());
    let seen = per_client(clients);
    let s = seen.clone();
    let load = Load::start(p.port, clients, move |conn, c, i| {
        let mut st = s[c].lock().unwrap_or_else(|e| e.into_inner());
        if i % 2 == 0 {
            let n: u64 = conn.cmd("add 1")?.parse()?;
            if n <= st.last_add {
                bail!("add went backwards: {n} after {}", st.last_add);
            }
            st.last_add = n;
            st.adds += 1;
        } else {
            let v = conn.cmd("version")?;
            let index = versions
                .iter()
                .enumerate()
                .filter(|(_, prefix)| v.starts_with(**prefix))
                .max_by_key(|(_, prefix)| prefix.len())
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    anyhow!("unexpected version reply {v:?}, expected one of {versions:?}")
                })?;
            if index < st.newest {
                bail!(
                    "version {v:?} answered after {:?} had: an older version came back",
                    versions[st.newest]
                );
            }
            st.newest = index;
            st.saw_new = index > 0;
        }
        Ok(())
    })?;
    Ok((load, seen))
}

/// Asserts that no call of a load run failed, and that it made calls at all.
pub fn assert_no_failures(r: &LoadReport) {
    assert!(
        r.failures.is_empty(),
        "{} calls failed: {:#?}",
        r.failures.len(),
        r.failures
    );
    assert!(r.ok > 0, "the load made no calls");
}

/// Asserts that an update ended with `outcome`, that its reason (for anything but a commit) is
/// one line containing every piece of `reason`, and that the process's history holds the same
/// record under its id. Returns the reason.
pub fn assert_recorded(
    p: &Process,
    rec: &UpdateRecord,
    outcome: dsu::Outcome,
    reason: &[&str],
) -> String {
    assert_eq!(rec.outcome, outcome, "unexpected outcome: {rec:#?}");
    let text = rec.reason.clone().unwrap_or_default();
    if outcome == dsu::Outcome::Committed {
        assert!(rec.reason.is_none(), "a commit with a reason: {rec:#?}");
    } else {
        assert!(!text.is_empty(), "no reason given: {rec:#?}");
        assert!(!text.contains('\n'), "the reason is not one line: {text:?}");
    }
    for piece in reason {
        assert!(
            text.contains(piece),
            "the reason does not say {piece:?}: {text:?}"
        );
    }
    let status = p.status().expect("status after an update");
    let entry = status.history.iter().find(|h| h.id == rec.id);
    assert_eq!(
        entry,
        Some(rec),
        "the history does not hold update {} as reported: {:#?}",
        rec.id,
        status.history
    );
    text
}

/// A minimal RESP (Redis protocol) client, for driving examples/kvstore.
pub mod shop;

pub mod resp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A minimal RESP client.
    pub struct Client {
        r: BufReader<TcpStream>,
        w: TcpStream,
    }

    #[derive(Debug, PartialEq)]
    pub enum Reply {
        Simple(String),
        Error(String),
        Int(i64),
        Bulk(Option<Vec<u8>>),
        Array(Vec<Reply>),
    }

    impl Client {
        pub fn connect(port: u16) -> Client {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            Client {
                r: BufReader::new(s.try_clone().unwrap()),
                w: s,
            }
        }

        pub fn send(&mut self, args: &[&[u8]]) {
            let mut b = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                b.extend_from_slice(a);
                b.extend_from_slice(b"\r\n");
            }
            self.w.write_all(&b).unwrap();
        }

        pub fn read(&mut self) -> Reply {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            let (kind, rest) = line.trim_end().split_at(1);
            match kind {
                "+" => Reply::Simple(rest.into()),
                "-" => Reply::Error(rest.into()),
                ":" => Reply::Int(rest.parse().unwrap()),
                "$" => {
                    let n: i64 = rest.parse().unwrap();
                    if n < 0 {
                        return Reply::Bulk(None);
                    }
                    let mut v = vec![0; n as usize + 2];
                    self.r.read_exact(&mut v).unwrap();
                    v.truncate(n as usize);
                    Reply::Bulk(Some(v))
                }
                "*" => {
                    let n: usize = rest.parse().unwrap();
                    Reply::Array((0..n).map(|_| self.read()).collect())
                }
                other => panic!("bad reply type {other:?} in {line:?}"),
            }
        }

        pub fn cmd(&mut self, args: &[&str]) -> Reply {
            let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
            self.send(&a);
            self.read()
        }
    }
}

/// The `cargo-dsu` binary of this workspace.
pub fn cargo_dsu() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "-q",
                "-p",
                "cargo-dsu",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(repo_root())
            .stderr(Stdio::inherit())
            .output()
            .expect("build cargo-dsu");
        assert!(out.status.success(), "building cargo-dsu failed");
        cargo_metadata::Message::parse_stream(&out.stdout[..])
            .filter_map(|m| match m {
                Ok(cargo_metadata::Message::CompilerArtifact(a)) => {
                    a.executable.map(|e| e.into_std_path_buf())
                }
                _ => None,
            })
            .last()
            .expect("the cargo-dsu executable")
    })
}

/// `cargo dsu ARGS`, building into the test programs' shared target directory, colours off,
/// output captured.
pub fn run_cargo_dsu<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::io::Result<std::process::Output> {
    Command::new(cargo_dsu())
        .arg("dsu")
        .args(args)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TARGET_DIR", programs_target())
        .output()
}

/// The machine, for a benchmark's output: cores, CPU model and the rustc that builds.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc: unknown".into());
    format!("{cores} cores ({model}), {rustc}")
}

/// A field of `/proc/PID/status` in KiB (`"VmRSS:"`, `"VmHWM:"`), for the benchmarks' memory
/// figures.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in {path}"))
}

/// `cargo dsu diff OLD NEW -o PACKAGE --target-dir DIR [--release]`, as a user builds a patch
/// (the benchmarks' release builds).
pub fn cargo_dsu_diff(
    old: &Path,
    new: &Path,
    package: &Path,
    profile: &BuildProfile,
) -> Result<()> {
    let mut cmd = Command::new(cargo_dsu());
    cmd.args(["dsu", "diff", "-q"])
        .arg(old)
        .arg(new)
        .arg("-o")
        .arg(package)
        .arg("--target-dir")
        .arg(&profile.target_dir)
        .env("CARGO_TERM_COLOR", "never");
    if profile.release {
        cmd.arg("--release");
    }
    let out = cmd.output().context("run cargo dsu diff")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo dsu diff {} {} failed:\n{}{}",
        old.display(),
        new.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
