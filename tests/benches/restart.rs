//! A live update against a restart (issue 5, item 5): the same update of examples/kvstore
//! (v1 -> `--to`, v2 by default) done (A) live with dsu and (B) by restarting the server on its
//! data directory (the journal replays), while clients keep sending.
//!
//! `cargo bench -p dsu-tests --bench restart [-- --keys 100000 --runs 5 --to v2]` (`-- --help`
//! lists the options)
//!
//! Each repetition starts v1 on a fresh data directory, writes `--keys` keys, and starts
//! `--clients` client threads, each on its own connection, alternating a SET of a new key and a
//! GET of its last acknowledged key (checked). After `--before-ms` the update is done:
//! - dsu: the package built beforehand by `cargo dsu diff` is applied through the control
//!   socket;
//! - restart: v1 is killed and the v2 binary (built beforehand) started on the same port and
//!   data directory; clients whose connection breaks reconnect every `--retry-ms`.
//!
//! Both binaries and the package are built before anything is measured, with `--profile`
//! (release by default, as a production update would be; `cargo dsu diff --release` for the
//! package).
//!
//! Once every client has been served again, the load goes on for `--after-ms`, then stops, and
//! every write acknowledged during the repetition (the preloaded keys and every SET a client saw
//! `OK` for) is read back. Measured:
//! - downtime: the longest gap between two successful replies seen by any client;
//! - requests failed: sent and not answered (connection reset or closed), error replies, GETs
//!   answering a wrong value; and connection attempts refused;
//! - state lost: acknowledged writes missing or different afterwards; and whether the server's
//!   in-memory counters (INFO) survived.
//!
//! The two ways alternate in every repetition (which goes first alternates too); the table has
//! the medians over `--runs` repetitions.

mod kv;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kv::{median, ms, Client, Opts, Reply, Server};

const OPTIONS: &[kv::Spec] = &[
    ("keys", "100000", "keys written before the load starts"),
    ("runs", "5", "repetitions (each does both ways)"),
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
        "the version v1 is updated to (an examples/kvstore directory)",
    ),
    (
        "profile",
        "release",
        "cargo profile of both binaries and the patch: release or dev",
    ),
];

/// How the update is done.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Live,
    Restart,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Live => "dsu (live update)",
            Way::Restart => "restart (journal replay)",
        }
    }
}

/// The binaries and the package, built before anything is measured.
struct Built {
    v1: PathBuf,
    new: PathBuf,
    package: PathBuf,
    new_version: String,
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
    /// dsu: the pause the process reports; restart: kill -> `ready` of the new process.
    in_process: Duration,
    /// dsu: the apply request, sent to answered; restart: kill -> `ready`.
    update_took: Duration,
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

    println!("restart: examples/kvstore v1 -> {to}, live with dsu and by a restart, under load");
    println!("machine: {}", kv::machine());
    println!("parameters: {}", opts.line());
    let built = build(&to, release)?;

    let mut results: Vec<(Way, Outcome)> = Vec::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Way::Live, Way::Restart]
        } else {
            [Way::Restart, Way::Live]
        };
        for way in order {
            let o = repetition(way, &built, &p)
                .with_context(|| format!("repetition {} of {}", run + 1, way.name()))?;
            eprintln!(
                "{:>12} {} {:<24} downtime {:8.2} ms (across the update {:.2} ms, before it {:.2} ms); update {:.2} ms (in the process {:.2} ms); failed {} (reset {}, error replies {}, wrong {}), refused {}; lost {} of {}; counters {}; served {}",
                "Run",
                run + 1,
                way.name(),
                ms(o.downtime),
                ms(o.across_update),
                ms(o.jitter),
                ms(o.update_took),
                ms(o.in_process),
                o.failed(),
                o.broken,
                o.error_replies,
                o.wrong_values,
                o.refused,
                o.lost.total(),
                o.lost.checked,
                if o.counters_kept { "kept" } else { "reset" },
                o.served,
            );
            results.push((way, o));
        }
    }
    summary(&results, &p, &to);
    Ok(())
}

/// Builds v1 and `to` (each copied to a file of its own) and the package v1 -> `to`, all with
/// the release profile or all with the dev one.
fn build(to: &str, release: bool) -> Result<Built> {
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
    eprintln!("{:>12} cargo dsu diff v1 {to}", "Running");
    let package = kv::bench_target()
        .join("packages")
        .join(format!("kvstore-v1-{to}-{}.dsu", profile_name(release)));
    let mut diff = Command::new(dsu_tests::cargo_dsu());
    diff.args(["dsu", "diff", "-q"]);
    if release {
        diff.arg("--release");
    }
    let o = diff
        .arg(kv::kvstore("v1"))
        .arg(kv::kvstore(to))
        .arg("-o")
        .arg(&package)
        .env("CARGO_TARGET_DIR", kv::bench_target())
        .output()
        .context("cannot run cargo dsu diff")?;
    ensure!(
        o.status.success(),
        "cargo dsu diff v1 {to} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let new_version = dsu::Package::read(&package)?.manifest.to;
    let [v1, new] = <[PathBuf; 2]>::try_from(exes).map_err(|_| anyhow!("two binaries"))?;
    Ok(Built {
        v1,
        new,
        package,
        new_version,
    })
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
    let update_started = Instant::now();
    let in_process = match way {
        Way::Live => {
            let rec = server.apply(&built.package)?;
            ensure!(
                rec.outcome == dsu::Outcome::Committed,
                "the update did not commit: {:?}: {}",
                rec.outcome,
                rec.reason.unwrap_or_default()
            );
            Duration::from_secs_f64(rec.pause_ms / 1000.0)
        }
        Way::Restart => {
            server.stop()?;
            server = Server::start(&built.new, port, &socket, &data)?;
            update_started.elapsed()
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

    let version = server.version()?;
    ensure!(
        version == built.new_version,
        "the server runs {version}, not {}",
        built.new_version
    );
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
        in_process,
        update_took: update_done.duration_since(update_started),
    })
}

fn summary(results: &[(Way, Outcome)], p: &Params, to: &str) {
    let of = |way: Way, f: &dyn Fn(&Outcome) -> f64| {
        median(
            &results
                .iter()
                .filter(|(w, _)| *w == way)
                .map(|(_, o)| f(o))
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
    println!("| v1 -> {to} | downtime: longest gap across the update | longest gap in the run | longest gap before the update | requests failed | connections refused | acknowledged writes lost (all runs) | INFO counters | in the process |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for way in [Way::Live, Way::Restart] {
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
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {} of {} | {} | {} |",
            way.name(),
            of(way, &|o| ms(o.across_update)),
            of(way, &|o| ms(o.downtime)),
            of(way, &|o| ms(o.jitter)),
            of(way, &|o| o.failed() as f64),
            of(way, &|o| o.refused as f64),
            total(&|o| o.lost.total()),
            total(&|o| o.lost.checked),
            if all(&|o| o.counters_kept) {
                "kept"
            } else {
                "reset"
            },
            match way {
                Way::Live => format!(
                    "pause {:.2} ms (apply request {:.1} ms)",
                    of(way, &|o| ms(o.in_process)),
                    of(way, &|o| ms(o.update_took))
                ),
                Way::Restart => format!("kill -> `ready` {:.1} ms", of(way, &|o| ms(o.in_process))),
            },
        );
    }
    println!();
    let ratio = |f: &dyn Fn(&Outcome) -> f64| of(Way::Restart, f) / of(Way::Live, f);
    println!(
        "restart / dsu: downtime across the update {:.1}x; longest gap in the run {:.1}x",
        ratio(&|o| ms(o.across_update)),
        ratio(&|o| ms(o.downtime))
    );
}
