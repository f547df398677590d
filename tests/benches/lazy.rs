//! Incremental type changes (issue 15, item 1): the pause of an update that changes the value
//! type of a `dsu::LazyMap`, the background pass that converts the entries after it, the
//! longest call while the pass runs, and the memory it takes, against the same conversion in
//! plain Rust (the floor) and today's eager transfer, all in one run.
//!
//! ```sh
//! cargo bench -p dsu-tests --bench lazy                                     # 10^3..10^7
//! cargo bench -p dsu-tests --bench lazy -- --sizes 1000,100000 --reps 1     # a quick check
//! ```
//!
//! Two shapes, both from tests/programs/lazy (release), v1 -> v2:
//! - **kv**: kvstore's v2 -> v3 shape, `LazyMap<Vec<u8>, Entry>` where `Entry { value: Vec<u8> }`
//!   gains `expires_at: Option<u64>`;
//! - **nested**: `LazyMap<String, Item>` where `Item { name: String, tags: Vec<String>, score }`
//!   gains `seen: u64`.
//!
//! Each point gets a fresh server, filled with N entries of one shape. A client reads random
//! keys in a loop, one call at a time, and times each call; the update is applied; the bench
//! polls the server's count of unconverted entries until it is 0 (the background pass's
//! time, from the update's commit). Memory: the server's peak resident size from just before
//! the update to the end of the pass (`VmHWM`, reset through `/proc/PID/clear_refs`) above
//! its size before the update, next to the state's own size (resident size after filling
//! minus before). The floor: the bench converts a `HashMap` of the same entries in plain Rust,
//! by moving each entry into a pre-sized new map and by cloning it (the faster counts). The
//! eager figure, for the nested shape: tests/programs/dir, the same program with a `HashMap`,
//! whose generated transfer converts every entry inside the pause (today's path).
//!
//! Medians go to a markdown table (stdout and `target/dsu-bench/lazy.md`), every run to
//! `target/dsu-bench/lazy.csv`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu::Outcome;
use dsu_tests::{
    build_base_with, cargo_dsu_diff, machine, median, proc_status_kib, repo_root, BuildProfile,
    Conn, Process,
};

const USAGE: &str = "usage: cargo bench -p dsu-tests --bench lazy -- \
[--sizes 1000,10000,100000,1000000,10000000] [--reps 3] [--shapes kv,nested] [--no-eager] \
[--out target/dsu-bench]";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Kv,
    Nested,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Kv => "kv",
            Shape::Nested => "nested",
        }
    }

    fn fill(self, n: usize) -> String {
        match self {
            Shape::Kv => format!("kfill {n}"),
            Shape::Nested => format!("fill {n}"),
        }
    }

    fn read(self, i: usize) -> String {
        match self {
            Shape::Kv => format!("kget key:{i}"),
            Shape::Nested => format!("show k{i}"),
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    reps: usize,
    shapes: Vec<Shape>,
    eager: bool,
    out: PathBuf,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let root = repo_root();
        let mut o = Options {
            sizes: vec![1_000, 10_000, 100_000, 1_000_000, 10_000_000],
            reps: 3,
            shapes: vec![Shape::Kv, Shape::Nested],
            eager: true,
            out: root.join("target/dsu-bench"),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| anyhow!("`{arg}` needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--sizes" => {
                    o.sizes = value()?
                        .split(',')
                        .map(|s| s.trim().replace('_', "").parse::<usize>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--sizes takes numbers\n{USAGE}"))?;
                }
                "--reps" => o.reps = value()?.parse().context("--reps takes a number")?,
                "--shapes" => {
                    o.shapes = value()?
                        .split(',')
                        .map(|s| match s.trim() {
                            "kv" => Ok(Shape::Kv),
                            "nested" => Ok(Shape::Nested),
                            other => bail!("unknown shape `{other}`; use `kv` or `nested`"),
                        })
                        .collect::<Result<_>>()?;
                }
                "--no-eager" => o.eager = false,
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
        ensure!(
            !o.shapes.is_empty(),
            "--shapes must name at least one shape"
        );
        Ok(o)
    }
}

/// One measured point.
struct Run {
    shape: Shape,
    entries: usize,
    /// `lazy` (LazyMap) or `eager` (HashMap, tests/programs/dir).
    path: &'static str,
    pause_ms: f64,
    /// From the update's reply to no entry left unconverted (lazy only).
    background_ms: f64,
    /// The longest call of the reading client while the update was applied, while the pass
    /// ran after it, and in a window as long as both before the update.
    update_call_ms: f64,
    max_call_ms: f64,
    baseline_max_call_ms: f64,
    /// The longest batch the server's pass held the component for (its status).
    longest_batch_ms: f64,
    /// Peak resident memory above the size just before the update, and the state's own size.
    peak_extra_mib: f64,
    state_mib: f64,
    /// The plain-Rust conversion of the same entries, measured beside this run.
    floor_ms: f64,
}

fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    let machine = machine();
    eprintln!("incremental type changes: {machine}");
    let scratch = repo_root().join("target/dsu-bench/lazy");
    let profile = BuildProfile::release_in(scratch.join("build"));
    let programs = repo_root().join("tests/programs");
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin)?;

    let mut builds = vec![("lazy", programs.join("lazy/v1"), programs.join("lazy/v2"))];
    if opts.eager && opts.shapes.contains(&Shape::Nested) {
        builds.push(("dir", programs.join("dir/v1"), programs.join("dir/v2")));
    }
    let mut exes = HashMap::new();
    for (name, old, new) in &builds {
        eprintln!(
            "{:>12} {name} v1 (release) and its v1 -> v2 patch",
            "Building"
        );
        let exe = build_base_with(old, &profile)?;
        let copy = bin.join(name);
        std::fs::copy(&exe, &copy).with_context(|| format!("copy {}", exe.display()))?;
        let pkg = scratch.join(format!("{name}.dsu"));
        cargo_dsu_diff(old, new, &pkg, &profile)?;
        exes.insert(*name, (copy, pkg));
    }

    let mut runs = Vec::new();
    for rep in 1..=opts.reps {
        for &n in &opts.sizes {
            for &shape in &opts.shapes {
                let floor_ms = floor(shape, n);
                let (exe, pkg) = &exes["lazy"];
                let mut run = measure(exe, pkg, shape, n, "lazy")
                    .with_context(|| format!("{} at {n}, run {rep}", shape.name()))?;
                run.floor_ms = floor_ms;
                report(&run, rep);
                runs.push(run);
                if let (Shape::Nested, Some((exe, pkg))) = (shape, exes.get("dir")) {
                    let mut run = measure(exe, pkg, shape, n, "eager")
                        .with_context(|| format!("eager {} at {n}, run {rep}", shape.name()))?;
                    run.floor_ms = floor_ms;
                    report(&run, rep);
                    runs.push(run);
                }
            }
        }
    }

    std::fs::create_dir_all(&opts.out)?;
    let csv = opts.out.join("lazy.csv");
    std::fs::write(&csv, to_csv(&runs))?;
    let table = table(&runs, &opts, &machine);
    print!("{table}");
    let md = opts.out.join("lazy.md");
    std::fs::write(&md, &table)?;
    eprintln!("\nraw runs: {}\ntable: {}", csv.display(), md.display());
    Ok(())
}

fn report(r: &Run, rep: usize) {
    eprintln!(
        "{:>12} {:<6} {:<5} {:>9} entries, run {rep}: pause {:8.3} ms, background {:9.1} ms \
         (floor {:8.1} ms), longest batch {:5.3} ms, longest call: update {:6.2} ms, pass {:6.2} ms, before {:6.2} ms, peak extra {:7.1} MiB \
         (state {:7.1} MiB)",
        "Measured",
        r.shape.name(),
        r.path,
        r.entries,
        r.pause_ms,
        r.background_ms,
        r.floor_ms,
        r.longest_batch_ms,
        r.update_call_ms,
        r.max_call_ms,
        r.baseline_max_call_ms,
        r.peak_extra_mib,
        r.state_mib
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A client reading random keys of `shape`, one call at a time, timing each.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<(Duration, Duration)>>>,
}

impl Reader {
    fn start(port: u16, shape: Shape, n: usize, epoch: Instant) -> Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = Conn::open(port)?;
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Start and length of every call, from `epoch`.
            let mut calls = Vec::new();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !flag.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = epoch.elapsed();
                let t = Instant::now();
                let r = c.cmd(&shape.read((x % n as u64) as usize))?;
                calls.push((at, t.elapsed()));
                ensure!(
                    r != "(nil)" && !r.starts_with("error"),
                    "a read answered {r:?}"
                );
            }
            Ok(calls)
        });
        Ok(Reader { stop, thread })
    }

    fn stop(self) -> Result<Vec<(Duration, Duration)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the reading client panicked"))?
    }
}

/// The longest call that started in `[from, to)`.
fn longest(calls: &[(Duration, Duration)], from: Duration, to: Duration) -> f64 {
    calls
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max)
}

fn measure(exe: &Path, pkg: &Path, shape: Shape, n: usize, path: &'static str) -> Result<Run> {
    let p = Process::start(exe)?;
    let pid = p.pid();
    let mut c = p.connect()?;
    let empty = proc_status_kib(pid, "VmRSS:")?;
    c.cmd(&shape.fill(n))?;
    let full = proc_status_kib(pid, "VmRSS:")?;
    // Resets the peak resident size to the current one.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("reset VmHWM")?;

    let epoch = Instant::now();
    let reader = Reader::start(p.port, shape, n, epoch)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = epoch.elapsed();
    let rec = p.apply(pkg, None)?;
    ensure!(
        rec.outcome == Outcome::Committed,
        "the update did not commit: {rec:#?}"
    );
    let committed = Instant::now();
    let applied = epoch.elapsed();
    let mut background_ms = 0.0;
    if path == "lazy" {
        let deadline = committed + Duration::from_secs(600);
        loop {
            let left = c.cmd("pending")?;
            if left == "0 0" {
                background_ms = committed.elapsed().as_secs_f64() * 1000.0;
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "entries left after 600 s: {left}"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let after = epoch.elapsed();
    let peak = proc_status_kib(pid, "VmHWM:")?;
    let longest_batch_ms = p
        .status()?
        .components
        .iter()
        .filter_map(|c| c.conversion.as_ref())
        .map(|c| c.longest_batch_ms)
        .fold(0.0, f64::max);
    std::thread::sleep(Duration::from_millis(50));
    let calls = reader.stop()?;
    // The window before the update, as long as the update and the pass (at most the 300 ms
    // the client ran before it).
    let span = (after - before).min(before);
    let baseline = longest(&calls, before - span, before);
    let update_call_ms = longest(&calls, before, applied);
    let during = longest(&calls, applied, after + Duration::from_millis(1));
    let probe = c.cmd(&shape.read(n / 2))?;
    ensure!(
        match shape {
            Shape::Kv => probe.ends_with(" None"),
            Shape::Nested => probe.ends_with(" seen=0"),
        },
        "after the update, the entry reads {probe:?}"
    );
    Ok(Run {
        shape,
        entries: n,
        path,
        pause_ms: rec.pause_ms,
        background_ms,
        update_call_ms,
        longest_batch_ms,
        max_call_ms: during,
        baseline_max_call_ms: baseline,
        peak_extra_mib: mib(peak.saturating_sub(full)),
        state_mib: mib(full.saturating_sub(empty)),
        floor_ms: 0.0,
    })
}

// The floor: the same entries in plain Rust.

struct EntryV1 {
    value: Vec<u8>,
}
#[allow(dead_code)]
struct EntryV2 {
    value: Vec<u8>,
    expires_at: Option<u64>,
}
#[derive(Clone)]
struct ItemV1 {
    name: String,
    tags: Vec<String>,
    score: u32,
}
#[allow(dead_code)]
struct ItemV2 {
    name: String,
    tags: Vec<String>,
    score: u32,
    seen: u64,
}

/// The faster of moving and cloning `n` entries of `shape` into a pre-sized map of the new type,
/// in ms.
fn floor(shape: Shape, n: usize) -> f64 {
    fn time<T>(f: impl FnOnce() -> T) -> f64 {
        let t = Instant::now();
        let out = std::hint::black_box(f());
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        drop(out);
        ms
    }
    match shape {
        Shape::Kv => {
            let make = || -> HashMap<Vec<u8>, EntryV1> {
                (0..n)
                    .map(|i| {
                        let value = format!("value-{i}").into_bytes();
                        (format!("key:{i}").into_bytes(), EntryV1 { value })
                    })
                    .collect()
            };
            let m = make();
            let moved = time(|| {
                let mut new = HashMap::with_capacity(m.len());
                for (k, e) in m {
                    new.insert(
                        k,
                        EntryV2 {
                            value: e.value,
                            expires_at: None,
                        },
                    );
                }
                new
            });
            let m = make();
            let cloned = time(|| {
                let mut new = HashMap::with_capacity(m.len());
                for (k, e) in &m {
                    new.insert(
                        k.clone(),
                        EntryV2 {
                            value: e.value.clone(),
                            expires_at: None,
                        },
                    );
                }
                new
            });
            moved.min(cloned)
        }
        Shape::Nested => {
            let make = || -> HashMap<String, ItemV1> {
                (0..n)
                    .map(|i| {
                        let k = format!("k{i}");
                        let tags = vec![format!("tag-{k}"), "second".to_string()];
                        let item = ItemV1 {
                            name: format!("name-of-{i}"),
                            tags,
                            score: (i % 100) as u32,
                        };
                        (k, item)
                    })
                    .collect()
            };
            let m = make();
            let moved = time(|| {
                let mut new = HashMap::with_capacity(m.len());
                for (k, i) in m {
                    new.insert(
                        k,
                        ItemV2 {
                            name: i.name,
                            tags: i.tags,
                            score: i.score,
                            seen: 0,
                        },
                    );
                }
                new
            });
            let m = make();
            let cloned = time(|| {
                let mut new = HashMap::with_capacity(m.len());
                for (k, i) in &m {
                    let i = i.clone();
                    new.insert(
                        k.clone(),
                        ItemV2 {
                            name: i.name,
                            tags: i.tags,
                            score: i.score,
                            seen: 0,
                        },
                    );
                }
                new
            });
            moved.min(cloned)
        }
    }
}

fn to_csv(runs: &[Run]) -> String {
    let mut s = String::from(
        "shape,path,entries,pause_ms,background_ms,floor_ms,longest_batch_ms,update_call_ms,pass_call_ms,baseline_max_call_ms,peak_extra_mib,state_mib\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{:.4},{:.2},{:.2},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1}",
            r.shape.name(),
            r.path,
            r.entries,
            r.pause_ms,
            r.background_ms,
            r.floor_ms,
            r.longest_batch_ms,
            r.update_call_ms,
            r.max_call_ms,
            r.baseline_max_call_ms,
            r.peak_extra_mib,
            r.state_mib
        );
    }
    s
}

fn table(runs: &[Run], opts: &Options, machine: &str) -> String {
    let mut s = format!(
        "Incremental type changes, {machine}; medians of {} runs (`cargo bench -p dsu-tests --bench lazy`)\n\n\
         | shape | entries | path | pause (ms) | background pass (ms) | floor (ms) | pass / floor | longest batch (ms) | longest call: update (ms) | pass (ms) | before (ms) | peak extra (MiB) | state (MiB) |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        opts.reps
    );
    for &shape in &opts.shapes {
        for &n in &opts.sizes {
            for path in ["lazy", "eager"] {
                let pick: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.shape == shape && r.entries == n && r.path == path)
                    .collect();
                if pick.is_empty() {
                    continue;
                }
                let m = |f: fn(&Run) -> f64| median(pick.iter().map(|r| f(r)).collect());
                let (bg, fl) = (m(|r| r.background_ms), m(|r| r.floor_ms));
                let ratio = if path == "lazy" {
                    format!("{:.2}", bg / fl)
                } else {
                    "–".into()
                };
                let bg = if path == "lazy" {
                    format!("{bg:.1}")
                } else {
                    "–".into()
                };
                let batch = if path == "lazy" {
                    format!("{:.3}", m(|r| r.longest_batch_ms))
                } else {
                    "–".into()
                };
                let pass_call = if path == "lazy" {
                    format!("{:.2}", m(|r| r.max_call_ms))
                } else {
                    "–".into()
                };
                let _ = writeln!(
                    s,
                    "| {} | {n} | {path} | {:.3} | {bg} | {fl:.1} | {ratio} | {batch} | {:.2} | {} | {:.2} | {:.1} | {:.1} |",
                    shape.name(),
                    m(|r| r.pause_ms),
                    m(|r| r.update_call_ms),
                    pass_call,
                    m(|r| r.baseline_max_call_ms),
                    m(|r| r.peak_extra_mib),
                    m(|r| r.state_mib),
                );
            }
        }
    }
    s
}
