//! A live update against a restart (issue 5, item 5), and a process hand-off (issue 7): the same
//! update of examples/kvstore (v1 -> `--to`, v2 by default) done (A) live with dsu, in place, and
//! (B) by restarting the server on its data directory (the journal replays); and (C) the update
//! v1 -> `--handoff-to` (v2-main by default: a change to `main`, which only a hand-off applies)
//! done by dsu's hand-off engine; all while clients keep sending.
//!
//! `cargo bench -p dsu-tests --bench restart [-- --keys 100000 --runs 5 --to v2]` (`-- --help`
//! lists the options)
//!
//! Each repetition starts v1 on a fresh data directory, writes `--keys` keys, and starts
//! `--clients` client threads, each on its own connection, alternating a SET of a new key and a
//! GET of its last acknowledged key (checked). After `--before-ms` the update is done:
//! - in place: the package built beforehand by `cargo dsu diff` is applied through the control
//!   socket;
//! - restart: v1 is killed and the v2 binary (built beforehand) started on the same port and
//!   data directory; clients whose connection breaks reconnect every `--retry-ms`;
//! - hand-off: `cargo dsu apply` of the hand-off package built beforehand; v1 starts the new
//!   executable, passes it its listening socket, the clients' connections and its state, and
//!   exits once the new process serves. A repetition fails unless the hand-off committed, the
//!   old process exited and the new one (the pid the update record names) answers the control
//!   socket; that process is killed when the repetition ends.
//!
//! The binaries and both packages are built before anything is measured, with `--profile`
//! (release by default, as a production update would be; `cargo dsu diff --release` for the
//! packages).
//!
//! Once every client has been served again, the load goes on for `--after-ms`, then stops, and
//! every write acknowledged during the repetition (the preloaded keys and every SET a client saw
//! `OK` for) is read back. Measured:
//! - downtime: the longest gap between two successful replies seen by any client;
//! - requests failed: sent and not answered (connection reset or closed), error replies, GETs
//!   answering a wrong value; and connection attempts refused;
//! - state lost: acknowledged writes missing or different afterwards; and whether the server's
//!   in-memory counters (INFO) survived;
//! - the pause the update's record reports (`pause_ms`, none for a restart): in place, how long
//!   calls into the updated components waited; hand-off, from closing the sockets' gate until
//!   the new process reported ready (the commit that follows, after which the new process opens
//!   its sockets, is not in it).
//!
//! Every repetition does the three ways (which goes first rotates); the table has the medians
//! over `--runs` repetitions.

mod kv;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kv::{median, ms, Client, Opts, Reply, Server};

const OPTIONS: &[kv::Spec] = &[
    ("keys", "100000", "keys written before the load starts"),
    ("runs", "5", "repetitions (each does every way)"),
    ("clients", "4", "client threads, one connection each"),
    ("before-ms", "1000", "load before the update"),
    (
        "after-ms",
        "1000",
        "load after every client is served again",
    ),
    (
        "retry-ms",
        "1",
        "a client's wait before reconnecting after a failure",
    ),
    (
        "to",
        "v2",
        "the version v1 is updated to in place and by a restart (an examples/kvstore directory)",
    ),
    (
        "handoff-to",
        "v2-main",
        "the version v1 is updated to by a process hand-off (an examples/kvstore directory)",
    ),
    (
        "profile",
        "release",
        "cargo profile of the binaries and the packages: release or dev",
    ),
];

/// How the update is done.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Live,
    Restart,
    Handoff,
}

impl Way {
    const ALL: [Way; 3] = [Way::Live, Way::Restart, Way::Handoff];

    fn name(self) -> &'static str {
        match self {
            Way::Live => "dsu in place",
            Way::Restart => "restart (journal replay)",
            Way::Handoff => "dsu hand-off",
        }
    }
}

/// The binaries and the packages, built before anything is measured.
struct Built {
    v1: PathBuf,
    /// `--to`, for the restart.
    new: PathBuf,
    /// v1 -> `--to`, applied in place.
    package: PathBuf,
    new_version: String,
    /// v1 -> `--handoff-to`, applied by hand-off.
    handoff: PathBuf,
    handoff_version: String,
}

/// One repetition of one way.
struct Outcome {
    /// The longest gap between two successful replies seen by any client.
    downtime: Duration,
    /// The longest gap that overlaps the update (from its start to its end).
    across_update: Duration,
    /// The longest gap that ended before the update started: the load's own jitter.
    jitter: Duration,
    served: u64,
    broken: u64,
    refused: u64,
    error_replies: u64,
    wrong_values: u64,
    lost: kv::Lost,
    counters_kept: bool,
    /// Keys the server held when the update started: the preloaded ones and the new keys
    /// clients had been told were stored by then.
    keys_at_update: usize,
    /// The update record's times (none for a restart).
    record: Option<RecordTimes>,
    /// In place: the apply request, sent to answered; hand-off: `cargo dsu apply`, started to
    /// exited; restart: kill -> `ready` of the new process.
    update_took: Duration,
}

/// What an update's record says about its pause.
#[derive(Clone, Copy)]
struct RecordTimes {
    /// `pause_ms`.
    pause: Duration,
    /// `prepare_ms`: reaching the safe state (hand-off: every connection done with its request
    /// and every component held).
    prepare: Duration,
    /// `transfer_ms`: the state transfer (hand-off: serializing the state).
    transfer: Duration,
}

impl RecordTimes {
    fn of(rec: &dsu::UpdateRecord) -> RecordTimes {
        let d = |ms: f64| Duration::from_secs_f64(ms / 1000.0);
        RecordTimes {
            pause: d(rec.pause_ms),
            prepare: d(rec.prepare_ms),
            transfer: d(rec.transfer_ms),
        }
    }
}

impl Outcome {
    fn failed(&self) -> u64 {
        self.broken + self.error_replies + self.wrong_values
    }
}

struct Params {
    keys: usize,
    clients: usize,
    before: Duration,
    after: Duration,
    retry: Duration,
}

fn main() -> Result<()> {
    let opts = Opts::parse(
        "restart: the same kvstore update applied live with dsu and by a restart, under load",
        OPTIONS,
    )?;
    let runs: usize = opts.get("runs")?;
    let to: String = opts.get("to")?;
    let handoff_to: String = opts.get("handoff-to")?;
    let release = match opts.get::<String>("profile")?.as_str() {
        "release" => true,
        "dev" => false,
        other => bail!("`--profile {other}`: release or dev"),
    };
    let p = Params {
        keys: opts.get("keys")?,
        clients: opts.get("clients")?,
        before: Duration::from_millis(opts.get("before-ms")?),
        after: Duration::from_millis(opts.get("after-ms")?),
        retry: Duration::from_millis(opts.get("retry-ms")?),
    };
    ensure!(
        runs > 0 && p.clients > 0,
        "`--runs` and `--clients` must be at least 1"
    );

    adopt_orphans()?;

    println!(
        "restart: examples/kvstore v1 -> {to} live with dsu in place and by a restart, and v1 -> \
         {handoff_to} by a dsu hand-off, under load"
    );
    println!("machine: {}", kv::machine());
    println!("parameters: {}", opts.line());
    let built = build(&to, &handoff_to, release)?;

    let mut results: Vec<(Way, Outcome)> = Vec::new();
    for run in 0..runs {
        let mut order = Way::ALL;
        order.rotate_left(run % Way::ALL.len());
        for way in order {
            let o = repetition(way, &built, &p)
                .with_context(|| format!("repetition {} of {}", run + 1, way.name()))?;
            let pause = match o.record {
                Some(r) => format!(
                    "pause {:.3} ms (safe state {:.3} ms, transfer {:.3} ms)",
                    ms(r.pause),
                    ms(r.prepare),
                    ms(r.transfer)
                ),
                None => "no pause record".to_string(),
            };
            eprintln!(
                "{:>12} {} {:<24} downtime {:8.2} ms (across the update {:.2} ms, before it {:.2} ms); update {:.2} ms, {pause}; failed {} (reset {}, error replies {}, wrong {}), refused {}; lost {} of {}; counters {}; served {}; keys at the update {}",
                "Run",
                run + 1,
                way.name(),
                ms(o.downtime),
                ms(o.across_update),
                ms(o.jitter),
                ms(o.update_took),
                o.failed(),
                o.broken,
                o.error_replies,
                o.wrong_values,
                o.refused,
                o.lost.total(),
                o.lost.checked,
                if o.counters_kept { "kept" } else { "reset" },
                o.served,
                o.keys_at_update,
            );
            results.push((way, o));
        }
    }
    summary(&results, &p, &to, &handoff_to);
    Ok(())
}

/// Makes this process the child subreaper of its descendants (prctl(2)). A hand-off's new
/// process is a child of the old one; when the old one exits, it is adopted by this process
/// instead of init, so that the benchmark can kill and reap it at the end of the repetition.
fn adopt_orphans() -> Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument and changes only which process
    // adopts this one's orphaned descendants.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    ensure!(
        r == 0,
        "cannot make the benchmark the subreaper of the processes hand-offs start: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Builds v1 and `to` (each copied to a file of its own), the package v1 -> `to` (in place)
/// and the package v1 -> `handoff_to` (hand-off), all with the release profile or all with the
/// dev one.
fn build(to: &str, handoff_to: &str, release: bool) -> Result<Built> {
    let bin = kv::bench_target().join("bin");
    std::fs::create_dir_all(&bin)?;
    let mut exes = Vec::new();
    for v in ["v1", to] {
        eprintln!("{:>12} kvstore {v}", "Building");
        let exe = kv::cargo_build(&kv::kvstore(v), release)?;
        // Every version builds the same `kvstore` binary: keep a copy of this one.
        let copy = bin.join(format!("kvstore-{v}-{}", profile_name(release)));
        std::fs::copy(&exe, &copy)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), copy.display()))?;
        exes.push(copy);
    }
    let (package, new_version) = diff(to, dsu::Engine::InPlace, release)?;
    let (handoff, handoff_version) = diff(handoff_to, dsu::Engine::Handoff, release)?;
    let [v1, new] = <[PathBuf; 2]>::try_from(exes).map_err(|_| anyhow!("two binaries"))?;
    Ok(Built {
        v1,
        new,
        package,
        new_version,
        handoff,
        handoff_version,
    })
}

/// `cargo dsu diff v1 to`: the package, which must be for `engine`, and the version it updates
/// to.
fn diff(to: &str, engine: dsu::Engine, release: bool) -> Result<(PathBuf, String)> {
    eprintln!("{:>12} cargo dsu diff v1 {to}", "Running");
    let package = kv::bench_target()
        .join("packages")
        .join(format!("kvstore-v1-{to}-{}.dsu", profile_name(release)));
    let mut cmd = Command::new(dsu_tests::cargo_dsu());
    cmd.args(["dsu", "diff", "-q"]);
    if release {
        cmd.arg("--release");
    }
    let o = cmd
        .arg(kv::kvstore("v1"))
        .arg(kv::kvstore(to))
        .arg("-o")
        .arg(&package)
        .env("CARGO_TARGET_DIR", kv::bench_target())
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .context("cannot run cargo dsu diff")?;
    ensure!(
        o.status.success(),
        "cargo dsu diff v1 {to} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let manifest = dsu::Package::read(&package)?.manifest;
    ensure!(
        manifest.engine == engine,
        "cargo dsu diff v1 {to} built a package for the {} engine, not the {} one ({}); pick \
         another version with `--to` or `--handoff-to`",
        manifest.engine.as_str(),
        engine.as_str(),
        manifest.engine_reasons.join("; ")
    );
    Ok((package, manifest.to))
}

/// `cargo dsu apply PACKAGE --socket SOCKET --format json` of a hand-off package: its record
/// and the process that now serves. An error, with everything `cargo dsu apply` printed, unless
/// the hand-off committed; a new process it names is killed then.
fn apply_handoff(package: &Path, socket: &Path) -> Result<(dsu::UpdateRecord, Successor)> {
    let o = Command::new(dsu_tests::cargo_dsu())
        .args(["dsu", "apply"])
        .arg(package)
        .arg("--socket")
        .arg(socket)
        .args(["--format", "json"])
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .context("cannot run cargo dsu apply")?;
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    let rec: dsu::UpdateRecord = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("report")?.clone()).ok())
        .ok_or_else(|| {
            anyhow!(
                "`cargo dsu apply` ({}) printed no update record:\n{out}{err}",
                o.status
            )
        })?;
    // Before anything else: a process it started is killed even if the checks below fail.
    let successor = rec.new_pid.map(Successor::new);
    ensure!(
        o.status.success()
            && rec.outcome == dsu::Outcome::Committed
            && rec.engine == dsu::Engine::Handoff,
        "the hand-off did not commit: `cargo dsu apply` {}, outcome {:?}, engine {}: {}\n{out}{err}",
        o.status,
        rec.outcome,
        rec.engine.as_str(),
        rec.reason.as_deref().unwrap_or("(no reason)")
    );
    let successor = successor
        .ok_or_else(|| anyhow!("the committed hand-off's record names no new process:\n{out}"))?;
    Ok((rec, successor))
}

/// The process a hand-off started. The harness's `Server` knows only the process it spawned;
/// this kills the one that replaced it when the repetition ends (`end`), or when it fails
/// (drop).
struct Successor {
    pid: libc::pid_t,
    ended: bool,
}

impl Successor {
    fn new(pid: u32) -> Successor {
        Successor {
            pid: pid as libc::pid_t,
            ended: false,
        }
    }

    /// Kills the process and waits until it is gone.
    fn end(mut self) -> Result<()> {
        self.ended = true;
        kill_and_reap(self.pid)
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = kill_and_reap(self.pid) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// SIGKILLs `pid` and waits (up to 10 s) until it is gone: reaped by this process once the old
/// process has exited (see `adopt_orphans`), or, while it is still the old process's child, a
/// zombie or no longer there.
fn kill_and_reap(pid: libc::pid_t) -> Result<()> {
    // SAFETY: kill(2) with SIGKILL on the pid a hand-off reported. Nobody reaps that process
    // but its parent (the old kvstore, which never waits for it once it committed) or this
    // process, so the pid is not reused before this call.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        ensure!(
            e.raw_os_error() == Some(libc::ESRCH),
            "cannot kill the process the hand-off started (pid {pid}): {e}"
        );
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on one pid without blocking; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid || (r < 0 && !alive(pid)) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the process the hand-off started (pid {pid}) was still running 10 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn profile_name(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "dev"
    }
}

/// One client's view of a repetition.
#[derive(Default)]
struct ClientLog {
    /// When each successful reply arrived.
    served: Vec<Instant>,
    /// The `i` of every SET acknowledged with `OK`.
    acked: Vec<u64>,
    /// When each of them was acknowledged.
    acked_at: Vec<Instant>,
    broken: u64,
    refused: u64,
    error_replies: u64,
    wrong_values: u64,
}

fn client_key(client: usize, i: u64) -> String {
    format!("client:{client}:{i:09}")
}

fn client_value(client: usize, i: u64) -> String {
    format!("v{i}-c{client}")
}

/// A client thread: SET a new key, GET its last acknowledged key, and again, until `stop`.
/// `last_ok` holds the time of its latest success (nanoseconds since `epoch`).
fn client(
    port: u16,
    c: usize,
    retry: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    last_ok: Arc<AtomicU64>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut conn: Option<Client> = None;
    let mut i = 0u64;
    // Alternates: SET a new key, then GET the last acknowledged one.
    let mut write = true;
    while !stop.load(Ordering::Relaxed) {
        let Some(cl) = conn.as_mut() else {
            match Client::connect(port, Duration::from_secs(30)) {
                Ok(cl) => conn = Some(cl),
                Err(_) => {
                    log.refused += 1;
                    std::thread::sleep(retry);
                }
            }
            continue;
        };
        let set = write || log.acked.is_empty();
        write = !write;
        let (key, value, j) = if set {
            (client_key(c, i), client_value(c, i), i)
        } else {
            let j = *log.acked.last().expect("checked non-empty");
            (client_key(c, j), client_value(c, j), j)
        };
        let reply = if set {
            cl.cmd(&["SET", &key, &value])
        } else {
            cl.cmd(&["GET", &key])
        };
        i += 1;
        match reply {
            Ok(Reply::Error(_)) => log.error_replies += 1,
            Ok(r) => {
                let good = if set {
                    r == Reply::Simple("OK".into())
                } else {
                    r == Reply::Bulk(Some(value.into_bytes()))
                };
                if !good {
                    log.wrong_values += 1;
                    continue;
                }
                let now = Instant::now();
                log.served.push(now);
                last_ok.store(
                    now.duration_since(epoch).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                if set {
                    log.acked.push(j);
                    log.acked_at.push(now);
                }
            }
            Err(_) => {
                log.broken += 1;
                conn = None;
                std::thread::sleep(retry);
            }
        }
    }
    log
}

/// The longest gap between consecutive instants in `times` among those `keep` accepts (given
/// the gap's start and end).
fn longest_gap(times: &[Instant], keep: impl Fn(Instant, Instant) -> bool) -> Duration {
    times
        .windows(2)
        .filter(|w| keep(w[0], w[1]))
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

fn repetition(way: Way, built: &Built, p: &Params) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let socket = dir.path().join("kv.sock");
    let port = kv::free_port()?;
    let mut server = Server::start(&built.v1, port, &socket, &data)?;
    let mut admin = Client::connect_within(port, Duration::from_secs(10))?;
    kv::preload(&mut admin, p.keys)?;
    drop(admin);

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut last_ok = Vec::new();
    let mut threads: Vec<JoinHandle<ClientLog>> = Vec::new();
    for c in 0..p.clients {
        let (stop, last) = (stop.clone(), Arc::new(AtomicU64::new(0)));
        last_ok.push(last.clone());
        let retry = p.retry;
        threads.push(std::thread::spawn(move || {
            client(port, c, retry, epoch, stop, last)
        }));
    }
    std::thread::sleep(p.before);
    let old_pid = server.pid();
    let update_started = Instant::now();
    let mut successor = None;
    let record = match way {
        Way::Live => {
            let rec = server.apply(&built.package)?;
            ensure!(
                rec.outcome == dsu::Outcome::Committed,
                "the update did not commit: {:?}: {}",
                rec.outcome,
                rec.reason.unwrap_or_default()
            );
            Some(RecordTimes::of(&rec))
        }
        Way::Restart => {
            server.stop()?;
            server = Server::start(&built.new, port, &socket, &data)?;
            None
        }
        Way::Handoff => {
            let (rec, s) = apply_handoff(&built.handoff, &socket)?;
            ensure!(
                s.pid as u32 != old_pid,
                "the hand-off names the old process ({old_pid}) as the new one"
            );
            successor = Some(s);
            Some(RecordTimes::of(&rec))
        }
    };
    let update_done = Instant::now();

    // Every client served again, then the load goes on for a while.
    let done_ns = update_done.duration_since(epoch).as_nanos() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_ok.iter().any(|l| l.load(Ordering::Relaxed) < done_ns) {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("a client was not served again within 120 s of the update");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(p.after);
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in threads {
        logs.push(t.join().map_err(|_| anyhow!("a client thread panicked"))?);
    }

    if let Some(s) = &successor {
        // The old process exits once the new one serves; the control socket is the new one's.
        server
            .exited_within(Duration::from_secs(10))
            .context("the old process did not exit after the hand-off")?;
        let pid = server.status()?.pid;
        ensure!(
            pid as libc::pid_t == s.pid,
            "after the hand-off, pid {pid} answers the control socket, not the new process ({})",
            s.pid
        );
    }
    let want = match way {
        Way::Handoff => &built.handoff_version,
        Way::Live | Way::Restart => &built.new_version,
    };
    let version = server.version()?;
    ensure!(version == *want, "the server runs {version}, not {want}");
    let mut admin = Client::connect_within(port, Duration::from_secs(10))?;
    let commands_after: u64 = admin.info("total_commands_processed")?.parse()?;
    let mut expected: Vec<(String, String)> = (0..p.keys)
        .map(|i| (kv::preload_key(i), kv::preload_value(i)))
        .collect();
    for (c, log) in logs.iter().enumerate() {
        expected.extend(
            log.acked
                .iter()
                .map(|&i| (client_key(c, i), client_value(c, i))),
        );
    }
    let lost = kv::check(&mut admin, &expected)?;

    let sum = |f: fn(&ClientLog) -> u64| logs.iter().map(f).sum::<u64>();
    let gap = |keep: &dyn Fn(Instant, Instant) -> bool| {
        logs.iter()
            .map(|l| longest_gap(&l.served, keep))
            .max()
            .unwrap_or_default()
    };
    let served = sum(|l| l.served.len() as u64);
    drop(admin);
    if let Some(s) = successor {
        s.end()?;
    }
    Ok(Outcome {
        downtime: gap(&|_, _| true),
        across_update: gap(&|from, to| from <= update_done && to >= update_started),
        jitter: gap(&|_, to| to <= update_started),
        served,
        broken: sum(|l| l.broken),
        refused: sum(|l| l.refused),
        error_replies: sum(|l| l.error_replies),
        wrong_values: sum(|l| l.wrong_values),
        lost,
        // Kept, the server has counted every command a client saw answered; restarted, only
        // those since the restart.
        counters_kept: commands_after >= served,
        keys_at_update: p.keys
            + logs
                .iter()
                .map(|l| l.acked_at.iter().filter(|&&t| t < update_started).count())
                .sum::<usize>(),
        record,
        update_took: update_done.duration_since(update_started),
    })
}

fn summary(results: &[(Way, Outcome)], p: &Params, to: &str, handoff_to: &str) {
    let of = |way: Way, f: &dyn Fn(&Outcome) -> Option<f64>| {
        median(
            &results
                .iter()
                .filter(|(w, _)| *w == way)
                .filter_map(|(_, o)| f(o))
                .collect::<Vec<_>>(),
        )
    };
    let n = results.iter().filter(|(w, _)| *w == Way::Live).count();
    println!();
    println!(
        "medians of {n} repetitions (losses: summed); {} preloaded keys, {} clients, reconnect every {} ms:",
        p.keys,
        p.clients,
        ms(p.retry)
    );
    println!();
    println!("| way (update) | keys held at the update | downtime: longest gap across the update | longest gap in the run | longest gap before the update | pause the update record reports | of it: safe state reached / state transfer | update took | requests failed | connections refused | acknowledged writes lost (all runs) | INFO counters |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for way in Way::ALL {
        let all = |f: &dyn Fn(&Outcome) -> bool| {
            results.iter().filter(|(w, _)| *w == way).all(|(_, o)| f(o))
        };
        let total = |f: &dyn Fn(&Outcome) -> usize| {
            results
                .iter()
                .filter(|(w, _)| *w == way)
                .map(|(_, o)| f(o))
                .sum::<usize>()
        };
        let (update, took) = match way {
            Way::Live => (format!("v1 -> {to}"), "apply request"),
            Way::Restart => (format!("v1 -> {to}"), "kill -> `ready`"),
            Way::Handoff => (format!("v1 -> {handoff_to}"), "`cargo dsu apply`"),
        };
        let (pause, parts) = match way {
            Way::Restart => ("none".to_string(), "none".to_string()),
            Way::Live | Way::Handoff => {
                let rec = |f: fn(&RecordTimes) -> Duration| {
                    of(way, &|o| o.record.as_ref().map(|r| ms(f(r))))
                };
                (
                    format!("{:.3} ms", rec(|r| r.pause)),
                    format!("{:.3} / {:.3} ms", rec(|r| r.prepare), rec(|r| r.transfer)),
                )
            }
        };
        println!(
            "| {} ({update}) | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {pause} | {parts} | {took} {:.1} ms | {} | {} | {} of {} | {} |",
            way.name(),
            of(way, &|o| Some(o.keys_at_update as f64)),
            of(way, &|o| Some(ms(o.across_update))),
            of(way, &|o| Some(ms(o.downtime))),
            of(way, &|o| Some(ms(o.jitter))),
            of(way, &|o| Some(ms(o.update_took))),
            of(way, &|o| Some(o.failed() as f64)),
            of(way, &|o| Some(o.refused as f64)),
            total(&|o| o.lost.total()),
            total(&|o| o.lost.checked),
            if all(&|o| o.counters_kept) {
                "kept"
            } else {
                "reset"
            },
        );
    }
    println!();
    // The hand-off's pause, part by part (medians of each repetition's parts).
    let part = |f: &dyn Fn(&RecordTimes) -> f64| of(Way::Handoff, &|o| o.record.as_ref().map(f));
    println!(
        "hand-off pause: {:.2} ms = connections done and components held {:.2} ms + serializing \
         the state {:.2} ms + the new process reading it, to `ready` {:.2} ms; the clients' gap \
         across it {:.2} ms",
        part(&|r| ms(r.pause)),
        part(&|r| ms(r.prepare)),
        part(&|r| ms(r.transfer)),
        part(&|r| ms(r.pause) - ms(r.prepare) - ms(r.transfer)),
        of(Way::Handoff, &|o| Some(ms(o.across_update))),
    );
    let across = |way| of(way, &|o| Some(ms(o.across_update)));
    let whole = |way| of(way, &|o| Some(ms(o.downtime)));
    println!(
        "downtime across the update: restart / in place {:.1}x, hand-off / in place {:.1}x, \
         hand-off / restart {:.1}x; longest gap in the run: restart / in place {:.1}x, \
         hand-off / in place {:.1}x, hand-off / restart {:.1}x",
        across(Way::Restart) / across(Way::Live),
        across(Way::Handoff) / across(Way::Live),
        across(Way::Handoff) / across(Way::Restart),
        whole(Way::Restart) / whole(Way::Live),
        whole(Way::Handoff) / whole(Way::Live),
        whole(Way::Handoff) / whole(Way::Restart),
    );
}
