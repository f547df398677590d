//! Update pause versus state size (issue 5, item 3).
//!
//! ```sh
//! cargo bench -p dsu-tests --bench pause                                  # the full figure
//! cargo bench -p dsu-tests --bench pause -- --sizes 1000,100000 --reps 1  # a quick check
//! ```
//!
//! The real service, examples/kvstore, built in release, is loaded with N keys and updated
//! live while clients keep sending GETs, for two kinds of update:
//!
//! - **code-only**: kvstore v2 -> a copy of v2 with a one-line change in a method of `Keyspace`,
//!   the component that holds every entry (`HashMap<Vec<u8>, Entry>`). Its state is kept in
//!   place; only its table is swapped.
//! - **type-change**: kvstore v2 -> v3, which adds `expires_at` to `Entry`, so the generated
//!   transfer converts every entry into a new map (v3 also changes `Engine`'s code, so both
//!   components are swapped).
//!
//! Every point (kind, size, repetition) gets a fresh server, loaded with pipelined MSETs. Each
//! run records the update's own timings (`dsu::UpdateRecord`: prepare, pause, transfer, total)
//! and, from the clients' side, the largest gap between two consecutive replies that overlaps
//! the apply request, next to the largest gap in a window as long, under the same load, shortly
//! after the update (what the machine does anyway). The state is checked after the update
//! (DBSIZE and a sample of values). Medians over the repetitions go to a markdown table (stdout
//! and `target/dsu-bench/pause.md`), every run to `target/dsu-bench/pause.csv`, and the curves
//! to an SVG plot (`--plot`, default `bench/pause.svg` in the repository).
//!
//! The base is built once and the patches once with `cargo dsu diff --release`, in
//! `target/dsu-bench/pause/build`, a target directory of its own so that concurrent test
//! builds cannot overwrite the binaries; the state size is a property of the run, not of the
//! build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu::control::{request, Request};
use dsu_tests::resp::{Client, Reply};
use dsu_tests::{build_base_with, cargo_dsu_diff, machine, median, repo_root, BuildProfile};

/// Keys per MSET while preloading.
const PRELOAD_BATCH: usize = 1000;
/// How long the clients run before the update, so connections and caches are warm.
const WARM_UP: Duration = Duration::from_millis(300);
/// Between the update's end and the window in which the clients' largest gap without an
/// update is measured.
const SETTLE: Duration = Duration::from_millis(100);

/// The two kinds of update measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A one-line change in a `Keyspace` method: its table is swapped, its state kept.
    CodeOnly,
    /// `Entry` gains a field: every entry goes through the generated transfer.
    TypeChange,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::CodeOnly => "code-only",
            Kind::TypeChange => "type-change",
        }
    }

    fn parse(s: &str) -> Result<Kind> {
        match s {
            "code-only" | "code" => Ok(Kind::CodeOnly),
            "type-change" | "type" => Ok(Kind::TypeChange),
            other => bail!("unknown kind `{other}`; use `code-only` or `type-change`"),
        }
    }
}

/// Command-line options (after `--` of `cargo bench`).
struct Options {
    sizes: Vec<usize>,
    reps: usize,
    clients: usize,
    kinds: Vec<Kind>,
    plot: PathBuf,
    out: PathBuf,
}

const USAGE: &str = "usage: cargo bench -p dsu-tests --bench pause -- [--sizes 1000,10000,100000,1000000] \
[--reps 5] [--clients 1] [--kinds code-only,type-change] [--plot bench/pause.svg] [--out target/dsu-bench]
(relative paths are taken from the repository root)";

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let root = repo_root();
        let mut o = Options {
            sizes: vec![1_000, 10_000, 100_000, 1_000_000],
            reps: 5,
            clients: 1,
            kinds: vec![Kind::CodeOnly, Kind::TypeChange],
            plot: root.join("bench/pause.svg"),
            out: root.join("target/dsu-bench"),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| anyhow!("`{arg}` needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                "--sizes" => {
                    o.sizes = value()?
                        .split(',')
                        .map(|s| s.trim().replace('_', "").parse::<usize>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--sizes takes numbers\n{USAGE}"))?;
                }
                "--reps" => o.reps = value()?.parse().context("--reps takes a number")?,
                "--clients" => o.clients = value()?.parse().context("--clients takes a number")?,
                "--kinds" => {
                    o.kinds = value()?
                        .split(',')
                        .map(|s| Kind::parse(s.trim()))
                        .collect::<Result<_>>()?;
                }
                "--plot" => o.plot = root.join(value()?),
                "--out" => o.out = root.join(value()?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        ensure!(
            !o.sizes.is_empty() && o.sizes.iter().all(|&n| n > 0),
            "--sizes must list at least one size above 0"
        );
        ensure!(o.reps > 0, "--reps must be at least 1");
        ensure!(o.clients > 0, "--clients must be at least 1");
        ensure!(!o.kinds.is_empty(), "--kinds must name at least one kind");
        o.sizes.sort_unstable();
        o.sizes.dedup();
        o.kinds.sort();
        o.kinds.dedup();
        Ok(o)
    }
}

/// One measurement: one fresh server, one update.
struct Run {
    kind: Kind,
    entries: usize,
    rep: usize,
    /// `UpdateRecord::prepare_ms`.
    prepare_ms: f64,
    /// `UpdateRecord::pause_ms`.
    pause_ms: f64,
    /// `UpdateRecord::transfer_ms`.
    transfer_ms: f64,
    /// `UpdateRecord::total_ms`.
    total_ms: f64,
    /// The control request's round trip, as `cargo dsu apply` would see it.
    apply_ms: f64,
    /// The largest gap between two consecutive replies, over all clients, that overlaps the
    /// apply request.
    gap_ms: f64,
    /// The largest gap in a window as long as the apply request, `SETTLE` after it, with no
    /// update in progress: what the machine does anyway.
    baseline_gap_ms: f64,
    /// Replies received by all clients while the apply request ran.
    replies_during: usize,
    /// How long loading the keys took (not part of the figure; to size the runs).
    preload_s: f64,
    /// The components whose tables were swapped.
    components: Vec<String>,
}

fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    let machine = machine();
    eprintln!("pause versus state size: {machine}");
    // Builds and scratch sources stay in one place whatever `--out` says, so they are reused.
    let scratch = repo_root().join("target/dsu-bench/pause");
    let profile = BuildProfile::release_in(scratch.join("build"));
    let examples = repo_root().join("examples/kvstore");
    let base_dir = examples.join("v2");

    eprintln!("{:>12} kvstore v2 (release) and the patches", "Building");
    let exe = build_base_with(&base_dir, &profile)?;
    // Copied out of the target directory: a later build of another version there would
    // replace the binary under the same name.
    let bin_dir = scratch.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let base_exe = bin_dir.join("kvstore-v2");
    std::fs::copy(&exe, &base_exe)
        .with_context(|| format!("copy {} to {}", exe.display(), base_exe.display()))?;
    let mut packages = BTreeMap::new();
    for &kind in &opts.kinds {
        let new = match kind {
            Kind::CodeOnly => code_only_variant(&base_dir, &scratch.join("src"))?,
            Kind::TypeChange => examples.join("v3"),
        };
        let pkg = scratch.join(format!("{}.dsu", kind.name()));
        cargo_dsu_diff(&base_dir, &new, &pkg, &profile)
            .with_context(|| format!("build the {} patch", kind.name()))?;
        let manifest = dsu::Package::read(&pkg)?.manifest;
        eprintln!(
            "{:>12} {}: {} -> {}: {}",
            "Built",
            kind.name(),
            manifest.from,
            manifest.to,
            manifest
                .changes
                .iter()
                .map(|c| format!("{} (category {})", c.item, c.category))
                .collect::<Vec<_>>()
                .join(", ")
        );
        packages.insert(kind, pkg);
    }

    let mut runs = Vec::new();
    for rep in 1..=opts.reps {
        for &entries in &opts.sizes {
            for &kind in &opts.kinds {
                let run = measure(
                    &base_exe,
                    &packages[&kind],
                    kind,
                    entries,
                    rep,
                    opts.clients,
                )
                .with_context(|| format!("{} with {entries} entries, run {rep}", kind.name()))?;
                eprintln!(
                    "{:>12} {:<11} {:>8} entries, run {rep}: pause {:8.3} ms, transfer {:8.3} ms, \
                     client gap {:8.3} ms (without update {:.3} ms); preload {:.1} s",
                    "Measured",
                    kind.name(),
                    entries,
                    run.pause_ms,
                    run.transfer_ms,
                    run.gap_ms,
                    run.baseline_gap_ms,
                    run.preload_s
                );
                runs.push(run);
            }
        }
    }

    std::fs::create_dir_all(&opts.out)?;
    let csv = opts.out.join("pause.csv");
    std::fs::write(&csv, to_csv(&runs)).with_context(|| format!("write {}", csv.display()))?;
    let summary = summarize(&runs, &opts);
    let table = table(&summary, &machine, &opts);
    print!("{table}");
    let md = opts.out.join("pause.md");
    std::fs::write(&md, &table).with_context(|| format!("write {}", md.display()))?;
    if let Some(dir) = opts.plot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    plot(&summary, &machine, &opts.plot)?;
    eprintln!(
        "\nraw runs: {}\ntable: {}\nplot: {}",
        csv.display(),
        md.display(),
        opts.plot.display()
    );
    Ok(())
}

/// A copy of `base` (kvstore v2) with a one-line, behaviour-preserving change in a method of
/// `Keyspace` and its own version number, under `scratch`.
fn code_only_variant(base: &Path, scratch: &Path) -> Result<PathBuf> {
    let dir = scratch.join("kvstore-v2-code-only");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clean {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("src"))?;
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(base.join(f), dir.join(f))?;
    }
    for e in std::fs::read_dir(base.join("src"))? {
        let e = e?;
        std::fs::copy(e.path(), dir.join("src").join(e.file_name()))?;
    }
    let dsu_rt = repo_root().join("dsu-rt");
    edit(&dir.join("Cargo.toml"), |s| {
        s.replacen("version = \"2.0.0\"", "version = \"2.0.1\"", 1)
            .replacen(
                "path = \"../../../dsu-rt\"",
                &format!("path = {:?}", dsu_rt.display().to_string()),
                1,
            )
    })?;
    // The one-line change: same behaviour, other code.
    edit(&dir.join("src/keyspace.rs"), |s| {
        s.replacen(
            "self.map.contains_key(key)",
            "self.map.get(key).is_some()",
            1,
        )
    })?;
    Ok(dir)
}

/// Rewrites a file with `f`, which must change it (a pattern that no longer matches is a
/// benchmark that silently measures something else).
fn edit(path: &Path, f: impl FnOnce(&str) -> String) -> Result<()> {
    let old = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let new = f(&old);
    ensure!(
        new != old,
        "{}: the text the benchmark edits is not there any more; update tests/benches/pause.rs",
        path.display()
    );
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}

/// A kvstore server in a temporary directory, killed on drop.
struct Server {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(exe: &Path) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("kv.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut child = Command::new(exe)
            .args(["--port", &port.to_string(), "--socket"])
            .arg(&socket)
            .arg("--data")
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("kvstore's stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let server = Server {
            child,
            port,
            socket,
            dir,
        };
        ensure!(
            line.trim() == "ready",
            "kvstore did not start (printed {line:?}){}",
            server.log_tail()
        );
        Ok(server)
    }

    /// The end of the server's stderr, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if tail.is_empty() {
            String::new()
        } else {
            format!(
                "\nkvstore's stderr:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(i: usize) -> String {
    format!("key:{i}")
}

/// 16 bytes, different for every key.
fn value(i: usize) -> String {
    format!("value:{i:010}")
}

/// Loads `entries` keys with pipelined MSETs.
fn preload(port: u16, entries: usize) -> Result<()> {
    let mut c = Client::connect(port);
    let mut i = 0;
    while i < entries {
        let end = (i + PRELOAD_BATCH).min(entries);
        let mut args: Vec<String> = Vec::with_capacity(1 + 2 * (end - i));
        args.push("MSET".into());
        for k in i..end {
            args.push(key(k));
            args.push(value(k));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = c.cmd(&a);
        ensure!(
            reply == Reply::Simple("OK".into()),
            "MSET replied {reply:?}"
        );
        i = end;
    }
    let size = c.cmd(&["DBSIZE"]);
    ensure!(
        size == Reply::Int(entries as i64),
        "DBSIZE after loading {entries} keys: {size:?}"
    );
    Ok(())
}

/// Clients sending GETs in a loop, each recording when every reply arrived.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Vec<Duration>>>>,
}

impl Clients {
    /// `n` clients on connections of their own; reply times are measured from `epoch`.
    fn start(port: u16, n: usize, entries: usize, epoch: Instant) -> Result<Clients> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for c in 0..n {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut client = Client::connect(port);
                let mut stamps = Vec::with_capacity(1 << 16);
                // A stride through the keys, different per client.
                let mut i = c * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let k = i % entries;
                    let reply = client.cmd(&["GET", &key(k)]);
                    stamps.push(epoch.elapsed());
                    ensure!(
                        reply == Reply::Bulk(Some(value(k).into_bytes())),
                        "client {c}: GET {} replied {reply:?}",
                        key(k)
                    );
                    i = i.wrapping_add(104_729);
                }
                Ok(stamps)
            }));
        }
        Ok(Clients { stop, threads })
    }

    fn stop(self) -> Result<Vec<Vec<Duration>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("a client thread panicked"))?)
            .collect()
    }
}

/// The largest gap between consecutive replies of any client that overlaps `[from, to]`.
fn largest_gap(stamps: &[Vec<Duration>], from: Duration, to: Duration) -> Duration {
    stamps
        .iter()
        .flat_map(|s| s.windows(2))
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// The largest gap between consecutive replies of any client, both inside `[from, to]`.
fn largest_gap_within(stamps: &[Vec<Duration>], from: Duration, to: Duration) -> Duration {
    stamps
        .iter()
        .flat_map(|s| s.windows(2))
        .filter(|w| w[0] >= from && w[1] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One run: a fresh server with `entries` keys, clients sending GETs, the update applied.
fn measure(
    exe: &Path,
    package: &Path,
    kind: Kind,
    entries: usize,
    rep: usize,
    clients: usize,
) -> Result<Run> {
    let server = Server::start(exe)?;
    let t = Instant::now();
    preload(server.port, entries).with_context(|| format!("load {entries} keys"))?;
    let preload_s = t.elapsed().as_secs_f64();

    let epoch = Instant::now();
    let load = Clients::start(server.port, clients, entries, epoch)?;
    std::thread::sleep(WARM_UP);
    let t0 = epoch.elapsed();
    let resp = request(
        &server.socket,
        &Request::Apply {
            package: package.to_path_buf(),
            timeout_ms: None,
            policy: None,
            clear_poison: false,
        },
    );
    let t1 = epoch.elapsed();
    let quiet = t1 + SETTLE;
    std::thread::sleep(SETTLE + (t1 - t0) + SETTLE);
    let stamps = load.stop();
    let resp =
        resp.with_context(|| format!("apply over the control socket{}", server.log_tail()))?;
    let stamps = stamps?;
    let rec = resp
        .report
        .ok_or_else(|| anyhow!("apply failed: {:?}{}", resp.error, server.log_tail()))?;
    ensure!(
        rec.outcome == dsu::Outcome::Committed,
        "the update was not committed: {:?}: {}",
        rec.outcome,
        rec.reason.as_deref().unwrap_or("")
    );
    ensure!(
        stamps.iter().all(|s| s.first().is_some_and(|&f| f < t0)),
        "a client got no reply before the measured window: the server or the machine is too slow \
         for the {} ms warm-up",
        WARM_UP.as_millis()
    );
    // The state survived the update.
    let mut c = Client::connect(server.port);
    let size = c.cmd(&["DBSIZE"]);
    ensure!(
        size == Reply::Int(entries as i64),
        "DBSIZE after the update: {size:?}, expected {entries}"
    );
    for k in (0..entries).step_by((entries / 100).max(1)) {
        let v = c.cmd(&["GET", &key(k)]);
        ensure!(
            v == Reply::Bulk(Some(value(k).into_bytes())),
            "{} after the update: {v:?}",
            key(k)
        );
    }
    let replies_during = stamps
        .iter()
        .map(|s| s.iter().filter(|&&t| t >= t0 && t <= t1).count())
        .sum();
    Ok(Run {
        kind,
        entries,
        rep,
        prepare_ms: rec.prepare_ms,
        pause_ms: rec.pause_ms,
        transfer_ms: rec.transfer_ms,
        total_ms: rec.total_ms,
        apply_ms: ms(t1 - t0),
        gap_ms: ms(largest_gap(&stamps, t0, t1)),
        baseline_gap_ms: ms(largest_gap_within(&stamps, quiet, quiet + (t1 - t0))),
        replies_during,
        preload_s,
        components: rec.components,
    })
}

fn to_csv(runs: &[Run]) -> String {
    let mut s = String::from(
        "kind,entries,rep,prepare_ms,pause_ms,transfer_ms,total_ms,apply_ms,client_gap_ms,\
         client_gap_no_update_ms,replies_during_apply,preload_s,components\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{:.3},{}",
            r.kind.name(),
            r.entries,
            r.rep,
            r.prepare_ms,
            r.pause_ms,
            r.transfer_ms,
            r.total_ms,
            r.apply_ms,
            r.gap_ms,
            r.baseline_gap_ms,
            r.replies_during,
            r.preload_s,
            r.components.join(" ")
        );
    }
    s
}

/// Medians of one (kind, size) point.
struct Point {
    kind: Kind,
    entries: usize,
    prepare_ms: f64,
    pause_ms: f64,
    transfer_ms: f64,
    total_ms: f64,
    apply_ms: f64,
    gap_ms: f64,
    baseline_gap_ms: f64,
    /// Largest in-process pause over the repetitions.
    max_pause_ms: f64,
}

fn summarize(runs: &[Run], opts: &Options) -> Vec<Point> {
    let mut points = Vec::new();
    for &kind in &opts.kinds {
        for &entries in &opts.sizes {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.kind == kind && r.entries == entries)
                .collect();
            let m = |f: fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
            points.push(Point {
                kind,
                entries,
                prepare_ms: m(|r| r.prepare_ms),
                pause_ms: m(|r| r.pause_ms),
                transfer_ms: m(|r| r.transfer_ms),
                total_ms: m(|r| r.total_ms),
                apply_ms: m(|r| r.apply_ms),
                gap_ms: m(|r| r.gap_ms),
                baseline_gap_ms: m(|r| r.baseline_gap_ms),
                max_pause_ms: rs.iter().map(|r| r.pause_ms).fold(0.0, f64::max),
            });
        }
    }
    points
}

/// The issue's target for a point, and whether the median in-process pause meets it.
fn target(p: &Point) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    match p.kind {
        Kind::CodeOnly => format!("≤ 1 ms: {}", verdict(p.pause_ms <= 1.0)),
        Kind::TypeChange if p.entries == 1_000_000 => {
            format!("≤ 150 ms: {}", verdict(p.pause_ms <= 150.0))
        }
        Kind::TypeChange => String::new(),
    }
}

fn table(points: &[Point], machine: &str, opts: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nUpdate pause versus state size: examples/kvstore in release, {} GET client(s), \
         medians of {} run(s); {machine}\n",
        opts.clients, opts.reps
    );
    let _ = writeln!(
        s,
        "| update | entries | prepare | pause | transfer | total | apply (client) | largest gap, update | largest gap, no update | target (pause) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in points {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {} |",
            p.kind.name(),
            p.entries,
            p.prepare_ms,
            p.pause_ms,
            p.transfer_ms,
            p.total_ms,
            p.apply_ms,
            p.gap_ms,
            p.baseline_gap_ms,
            target(p)
        );
    }
    let worst: Vec<String> = points
        .iter()
        .map(|p| format!("{} {}: {:.3} ms", p.kind.name(), p.entries, p.max_pause_ms))
        .collect();
    let _ = writeln!(
        s,
        "\nLargest in-process pause over the runs: {}.",
        worst.join("; ")
    );
    s
}

/// Draws the medians on log-log axes: in-process pause and client-observed gap, per kind.
fn plot(points: &[Point], machine: &str, path: &Path) -> Result<()> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;

    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    // Log axes need positive values: a median of 0 (below the timer's resolution) is drawn at
    // the floor.
    let floor = 1e-3;
    let series = |kind: Kind, f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| (p.entries as f64, f(p).max(floor)))
            .collect()
    };
    let ys: Vec<f64> = points
        .iter()
        .flat_map(|p| [p.pause_ms, p.gap_ms, p.baseline_gap_ms])
        .chain([1.0, 150.0])
        .map(|y| y.max(floor))
        .collect();
    let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let y_hi = ys.iter().copied().fold(0.0, f64::max) * 2.0;
    let x_lo = points.iter().map(|p| p.entries).min().unwrap_or(1000) as f64 / 2.0;
    let x_hi = points.iter().map(|p| p.entries).max().unwrap_or(1000) as f64 * 2.0;

    let root = SVGBackend::new(path, (960, 660)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (area, footer) = root.split_vertically(630);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "dsu: update pause versus state size (examples/kvstore, release)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("entries in the keyspace")
        .y_desc("pause or gap (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;

    // A legend sample for a dashed line.
    let dashes = |x: i32, y: i32, style: ShapeStyle| {
        DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style)
    };
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    let green = RGBColor(44, 160, 44);
    for (kind, color) in [(Kind::CodeOnly, blue), (Kind::TypeChange, red)] {
        if !points.iter().any(|p| p.kind == kind) {
            continue;
        }
        let pause = series(kind, |p| p.pause_ms);
        chart
            .draw_series(LineSeries::new(pause.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{}: pause inside the process", kind.name()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 19, y)], color.stroke_width(2))
            });
        chart
            .draw_series(PointSeries::of_element(
                pause,
                4,
                color.filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))
            .map_err(err)?;
        let gap = series(kind, |p| p.gap_ms);
        chart
            .draw_series(DashedLineSeries::new(
                gap.clone(),
                7,
                5,
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!(
                "{}: largest gap between replies (client)",
                kind.name()
            ))
            .legend(move |(x, y)| dashes(x, y, color.stroke_width(2)));
        chart
            .draw_series(PointSeries::of_element(
                gap,
                5,
                color.stroke_width(2),
                &|c, s, st| Cross::new(c, s, st),
            ))
            .map_err(err)?;
    }
    // What a client sees anyway, in a window as long as each kind's apply, for scale.
    for (kind, color) in [(Kind::CodeOnly, blue), (Kind::TypeChange, red)] {
        if !points.iter().any(|p| p.kind == kind) {
            continue;
        }
        let color = color.mix(0.8);
        chart
            .draw_series(DashedLineSeries::new(
                series(kind, |p| p.baseline_gap_ms),
                2,
                4,
                color.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!(
                "{}: largest gap between replies, no update (client)",
                kind.name()
            ))
            .legend(move |(x, y)| dashes(x, y, color.stroke_width(1)));
    }
    // The issue's targets.
    chart
        .draw_series(DashedLineSeries::new(
            [(x_lo, 1.0), (x_hi, 1.0)],
            10,
            6,
            green.stroke_width(1),
        ))
        .map_err(err)?
        .label("target: code-only pause at most 1 ms")
        .legend(move |(x, y)| dashes(x, y, green.stroke_width(1)));
    if (x_lo..=x_hi).contains(&1e6) {
        chart
            .draw_series(PointSeries::of_element(
                [(1e6, 150.0)],
                8,
                green.stroke_width(2),
                &|c, s, st| TriangleMarker::new(c, s, st),
            ))
            .map_err(err)?
            .label("target: 10^6 entries transferred in at most 150 ms")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, green.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    footer
        .draw(&Text::new(
            format!("medians; {machine}"),
            (16, 6),
            ("sans-serif", 13)
                .into_font()
                .color(&RGBColor(120, 120, 120)),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
