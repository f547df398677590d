//! Pre-copy hand-off (issue 15, item 2): the pause of a hand-off whose state is in
//! `dsu::LazyMap`s, with the pre-copy (the maps stream to the new process while the old one
//! serves; the pause sends only what was written since) and without it (`DSU_PRECOPY=0`: the
//! whole state is serialized and read inside the pause, as every hand-off did before), under
//! clients that write all the while, in one run.
//!
//! ```sh
//! cargo bench -p dsu-tests --bench precopy                                   # 10^4..10^6
//! cargo bench -p dsu-tests --bench precopy -- --sizes 10000 --reps 1         # a quick check
//! ```
//!
//! The program is tests/programs/lazy (release), handed off v1 -> v2 (`cargo dsu diff --engine
//! handoff --release`), whose maps both change type: the new process reads the old type and the
//! generated transfer takes the maps over. Shapes: **kv**, kvstore's (`LazyMap<Vec<u8>, Entry>`),
//! and **nested** (`LazyMap<String, Item>`, a struct with a `String` and a `Vec<String>`).
//!
//! Each point gets a fresh server filled with N entries, then `--writers` clients, each on its
//! own connection, write in a loop (half overwrite a random filled key, half add a new one),
//! one request at a time, and time each reply. After `--before-ms` the hand-off is applied
//! through the control socket; the writers go on (on the same connections, served by the new
//! process) for `--after-ms`. Measured: the pause the update record reports (from closing the
//! sockets' gate until the new process is ready), the pre-copy's time, batches and the entries
//! it left for the pause, the longest a batch held a component, the longest reply a writer
//! waited for around the hand-off, the writes per second before it, and the old process's peak
//! resident memory above its size just before the hand-off (sampled every 2 ms until it
//! exits), next to the state's own size. A point fails unless the hand-off committed and a
//! sample of filled entries reads back, converted, from the new process.
//!
//! Medians go to a markdown table (stdout and `target/dsu-bench/precopy.md`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu::Outcome;
use dsu_tests::{
    build_base_with, cargo_dsu, machine, median, proc_status_kib, repo_root, BuildProfile, Conn,
    KillPid, Process,
};

const USAGE: &str = "usage: cargo bench -p dsu-tests --bench precopy -- \
[--sizes 10000,100000,1000000] [--reps 3] [--shapes kv,nested] [--writers 4] \
[--before-ms 1000] [--after-ms 500]";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
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

    fn write(self, k: &str, i: usize) -> String {
        match self {
            Shape::Kv => format!("kset {k} w{i}"),
            Shape::Nested => format!("put {k} w{i} {}", i % 1000),
        }
    }

    /// A filled key, and what v2 answers for it (unless a writer overwrote it).
    fn filled(self, i: usize) -> (String, String) {
        match self {
            Shape::Kv => (format!("kget key:{i}"), format!("value-{i} None")),
            Shape::Nested => (
                format!("show k{i}"),
                format!("name-of-{i} tag-k{i},second {} seen=0", i % 100),
            ),
        }
    }

    fn key(self, i: usize) -> String {
        match self {
            Shape::Kv => format!("key:{i}"),
            Shape::Nested => format!("k{i}"),
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    reps: usize,
    shapes: Vec<Shape>,
    writers: usize,
    before: Duration,
    after: Duration,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let mut o = Options {
            sizes: vec![10_000, 100_000, 1_000_000],
            reps: 3,
            shapes: vec![Shape::Kv, Shape::Nested],
            writers: 4,
            before: Duration::from_millis(1000),
            after: Duration::from_millis(500),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| anyhow!("`{arg}` needs a value\n{USAGE}"))
            };
            let number = |v: String, what: &str| -> Result<u64> {
                v.replace('_', "")
                    .parse()
                    .with_context(|| format!("{what} takes a number\n{USAGE}"))
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
                "--reps" => o.reps = number(value()?, "--reps")? as usize,
                "--writers" => o.writers = number(value()?, "--writers")? as usize,
                "--before-ms" => o.before = Duration::from_millis(number(value()?, "--before-ms")?),
                "--after-ms" => o.after = Duration::from_millis(number(value()?, "--after-ms")?),
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
        ensure!(o.writers > 0, "--writers must be at least 1");
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
    precopy: bool,
    pause_ms: f64,
    precopy_ms: f64,
    batches: u64,
    left_at_pause: u64,
    longest_hold_ms: f64,
    /// The longest reply a writer waited for, from the apply to the end.
    max_reply_ms: f64,
    /// The same before the apply, over as long a window.
    baseline_reply_ms: f64,
    writes_per_s: f64,
    peak_extra_mib: f64,
    state_mib: f64,
}

fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    let machine = machine();
    eprintln!("pre-copy hand-off: {machine}");
    let scratch = repo_root().join("target/dsu-bench/precopy");
    let profile = BuildProfile::release_in(scratch.join("build"));
    let programs = repo_root().join("tests/programs/lazy");
    std::fs::create_dir_all(&scratch)?;
    eprintln!(
        "{:>12} lazy v1 (release) and its v1 -> v2 hand-off",
        "Building"
    );
    let exe = scratch.join("lazy-v1");
    std::fs::copy(build_base_with(&programs.join("v1"), &profile)?, &exe)?;
    let pkg = scratch.join("lazy-v1-v2-handoff.dsu");
    let out = Command::new(cargo_dsu())
        .args(["dsu", "diff", "-q", "--release", "--engine", "handoff"])
        .arg(programs.join("v1"))
        .arg(programs.join("v2"))
        .arg("-o")
        .arg(&pkg)
        .arg("--target-dir")
        .arg(&profile.target_dir)
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .context("run cargo dsu diff")?;
    ensure!(
        out.status.success(),
        "cargo dsu diff --engine handoff failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut runs = Vec::new();
    for rep in 1..=opts.reps {
        for &n in &opts.sizes {
            for &shape in &opts.shapes {
                // Which way goes first alternates.
                let order = if rep % 2 == 1 {
                    [true, false]
                } else {
                    [false, true]
                };
                for precopy in order {
                    let r = point(&exe, &pkg, shape, n, precopy, &opts)
                        .with_context(|| format!("{} {n} precopy={precopy}", shape.name()))?;
                    eprintln!(
                        "rep {rep} {:>6} {n:>8} {:>3}: pause {:8.2} ms, pre-copy {:7.1} ms \
                         ({} batches, {} left), hold {:.2} ms, reply max {:.2} ms (before \
                         {:.2}), {:.0} writes/s, peak +{:.1} MiB (state {:.1})",
                        shape.name(),
                        if precopy { "on" } else { "off" },
                        r.pause_ms,
                        r.precopy_ms,
                        r.batches,
                        r.left_at_pause,
                        r.longest_hold_ms,
                        r.max_reply_ms,
                        r.baseline_reply_ms,
                        r.writes_per_s,
                        r.peak_extra_mib,
                        r.state_mib
                    );
                    runs.push(r);
                }
            }
        }
    }
    let table = report(&runs, &opts, &machine);
    println!("{table}");
    let out = repo_root().join("target/dsu-bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("precopy.md"), &table)?;
    Ok(())
}

fn point(
    exe: &std::path::Path,
    pkg: &std::path::Path,
    shape: Shape,
    n: usize,
    precopy: bool,
    opts: &Options,
) -> Result<Run> {
    let env = [(
        "DSU_PRECOPY",
        std::ffi::OsStr::new(if precopy { "1" } else { "0" }),
    )];
    let p = Process::start_with_env(exe, &env)?;
    let pid = p.pid();
    let mut c = p.connect()?;
    let before_fill = proc_status_kib(pid, "VmRSS:")?;
    c.cmd(&shape.fill(n))?;
    let filled = proc_status_kib(pid, "VmRSS:")?;

    let stop = Arc::new(AtomicBool::new(false));
    let applied_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let writers: Vec<_> = (0..opts.writers)
        .map(|w| {
            let (stop, applied_at, port) = (stop.clone(), applied_at.clone(), p.port);
            std::thread::spawn(move || -> Result<(f64, f64, usize, f64)> {
                let mut c = Conn::open(port)?;
                let started = Instant::now();
                let (mut before, mut after, mut writes_before) = (0f64, 0f64, 0usize);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = if i.is_multiple_of(2) {
                        shape.key((x % n as u64) as usize)
                    } else {
                        format!("new-{w}-{i}")
                    };
                    let t = Instant::now();
                    let r = c.cmd(&shape.write(&k, i))?;
                    ensure!(r == "ok", "write {k}: {r}");
                    let took = t.elapsed().as_secs_f64() * 1e3;
                    match *applied_at.lock().unwrap_or_else(|e| e.into_inner()) {
                        None => {
                            before = before.max(took);
                            writes_before += 1;
                        }
                        Some(_) => after = after.max(took),
                    }
                    i += 1;
                }
                let secs = started.elapsed().as_secs_f64();
                Ok((before, after, writes_before, secs))
            })
        })
        .collect();
    std::thread::sleep(opts.before);
    // The old process's resident size, until it exits.
    let base_rss = proc_status_kib(pid, "VmRSS:")?;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = base_rss;
            while sampling.load(Ordering::Relaxed) {
                match proc_status_kib(pid, "VmRSS:") {
                    Ok(kib) => peak = peak.max(kib),
                    Err(_) => break,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    *applied_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let rec = p.apply(pkg, None)?;
    ensure!(rec.outcome == Outcome::Committed, "the hand-off: {rec:#?}");
    let new_pid = rec.new_pid.context("the record names the new process")?;
    let _new = KillPid(new_pid);
    std::thread::sleep(opts.after);
    stop.store(true, Ordering::Relaxed);
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler
        .join()
        .map_err(|_| anyhow!("the sampler panicked"))?;
    let (mut before, mut after, mut writes, mut secs) = (0f64, 0f64, 0usize, 0f64);
    for h in writers {
        let (b, a, wb, s) = h.join().map_err(|_| anyhow!("a writer panicked"))??;
        before = before.max(b);
        after = after.max(a);
        writes += wb;
        secs = secs.max(s);
    }
    let mut c = p.connect()?;
    for i in (0..n).step_by((n / 50).max(1)) {
        let (cmd, want) = shape.filled(i);
        let got = c.cmd(&cmd)?;
        // A writer may have overwritten it; then it names the writer's value.
        ensure!(
            got == want || got.contains(" w") || got.starts_with('w'),
            "{cmd}: {got}"
        );
    }
    let pre = rec.precopy.clone().unwrap_or_default();
    ensure!(
        precopy == rec.precopy.is_some(),
        "DSU_PRECOPY={} but the record's pre-copy is {:?}",
        precopy as u8,
        rec.precopy
    );
    Ok(Run {
        shape,
        entries: n,
        precopy,
        pause_ms: rec.pause_ms,
        precopy_ms: pre.ms,
        batches: pre.batches,
        left_at_pause: pre.left_at_pause,
        longest_hold_ms: pre.longest_hold_ms,
        max_reply_ms: after,
        baseline_reply_ms: before,
        writes_per_s: writes as f64 / opts.before.as_secs_f64().min(secs).max(1e-3),
        peak_extra_mib: peak.saturating_sub(base_rss) as f64 / 1024.0,
        state_mib: filled.saturating_sub(before_fill) as f64 / 1024.0,
    })
}

fn report(runs: &[Run], opts: &Options, machine: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Pre-copy hand-off, tests/programs/lazy v1 -> v2 (release), {} writers, medians of {} \
         ({machine})\n",
        opts.writers, opts.reps
    );
    let _ = writeln!(
        t,
        "| shape | entries | pre-copy | pause ms | pre-copy ms | left for the pause | longest \
         hold ms | batches | longest reply ms (before) | writes/s | old process peak +MiB          (state MiB) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut groups: HashMap<(Shape, usize, bool), Vec<&Run>> = HashMap::new();
    for r in runs {
        groups
            .entry((r.shape, r.entries, r.precopy))
            .or_default()
            .push(r);
    }
    for &shape in &opts.shapes {
        for &n in &opts.sizes {
            for precopy in [false, true] {
                let Some(g) = groups.get(&(shape, n, precopy)) else {
                    continue;
                };
                let m = |f: fn(&Run) -> f64| median(g.iter().map(|r| f(r)).collect());
                let _ = writeln!(
                    t,
                    "| {} | {n} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} ({:.2}) | \
                     {:.0} | {:.1} ({:.1}) |",
                    shape.name(),
                    if precopy { "on" } else { "off" },
                    m(|r| r.pause_ms),
                    m(|r| r.precopy_ms),
                    m(|r| r.left_at_pause as f64),
                    m(|r| r.longest_hold_ms),
                    m(|r| r.batches as f64),
                    m(|r| r.max_reply_ms),
                    m(|r| r.baseline_reply_ms),
                    m(|r| r.writes_per_s),
                    m(|r| r.peak_extra_mib),
                    m(|r| r.state_mib),
                );
            }
        }
    }
    t
}
