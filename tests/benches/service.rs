//! Whole-service overhead (issue 5, item 2): examples/kvstore built with dsu versus the same,
//! unmodified source built with the runtime compiled out (`--cfg dsu_off`), driven by
//! redis-benchmark; then what having been updated costs (after one update, and after the whole
//! streak v1 -> v6) in throughput and in memory.
//!
//! `cargo bench -p dsu-tests --bench service [-- OPTIONS]`; `-- --help` lists the options.
//! Needs redis-benchmark (`apt-get install redis-tools`).
//!
//! Method:
//! - every server is a release build; the dsu_off one is built in a target directory of its
//!   own (its RUSTFLAGS would otherwise rebuild everything), the packages with
//!   `cargo dsu diff --release`;
//! - each round starts fresh servers, one per side, loads the same keys into both (the keys
//!   redis-benchmark's `-r` draws from, so GET hits and SET overwrites), warms both up, then
//!   runs every cell (GET/SET, unpipelined/pipelined) on one side and then the other, the side
//!   that goes first alternating from round to round. Fresh servers make the rounds
//!   independent samples (no journal or allocator history carried from one to the next), and
//!   the warm-up keeps thread and page-fault start-up costs out of the figures;
//! - "what having been updated costs" compares a v1 server updated to vN with a vN server
//!   built directly with dsu, loaded with the same keys: same code, same runtime, the only
//!   difference is the update (patch code in a dylib, tables and state carried over). Against a
//!   dsu_off build it would mix that cost with dsu's baseline cost (measured above) and with
//!   the versions' own differences (v6 journals in another format);
//! - memory is VmRSS from /proc/PID/status: of the streak's server after loading, after each
//!   update (no traffic in between, so the change is the update's), and after the measured
//!   runs, beside a fresh v6 server with the same keys.
//!
//! Medians over the rounds; ratios of the medians, and the median of the per-round ratios.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu::control::{request, Request};
use dsu_tests::resp::{Client, Reply};
use dsu_tests::{cargo_dsu, machine, repo_root};

const USAGE: &str = "\
cargo bench -p dsu-tests --bench service [-- OPTIONS]

Options (defaults give the full figure in a few minutes on 2 cores):
  --runs N                 rounds per comparison, each a fresh pair of servers [5]
  --clients N              redis-benchmark connections [50]
  --keys N                 keys loaded into every server, and redis-benchmark's -r [10000]
  --requests N             requests per unpipelined run [100000]
  --pipelined-requests N   requests per pipelined run [300000]
  --pipeline N             requests per pipeline (-P) in the pipelined runs [16]
  --warmup N               unpipelined GET and SET requests per server before measuring [20000]
  --tests LIST             comma-separated: get,set [get,set]
  --no-updates             only dsu versus dsu_off
  --help                   this text";

/// What to run, from the command line.
struct Options {
    runs: usize,
    clients: u32,
    keys: usize,
    requests: u64,
    pipelined_requests: u64,
    pipeline: u32,
    warmup: u64,
    tests: Vec<String>,
    updates: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            runs: 5,
            clients: 50,
            keys: 10_000,
            requests: 100_000,
            pipelined_requests: 300_000,
            pipeline: 16,
            warmup: 20_000,
            tests: vec!["get".into(), "set".into()],
            updates: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| anyhow!("`{arg}` needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                // `cargo bench` passes it to every bench target.
                "--bench" => {}
                "--runs" => o.runs = value()?.parse().context("--runs")?,
                "--clients" => o.clients = value()?.parse().context("--clients")?,
                "--keys" => o.keys = value()?.parse().context("--keys")?,
                "--requests" => o.requests = value()?.parse().context("--requests")?,
                "--pipelined-requests" => {
                    o.pipelined_requests = value()?.parse().context("--pipelined-requests")?
                }
                "--pipeline" => o.pipeline = value()?.parse().context("--pipeline")?,
                "--warmup" => o.warmup = value()?.parse().context("--warmup")?,
                "--tests" => {
                    o.tests = value()?
                        .split(',')
                        .map(|t| t.trim().to_lowercase())
                        .collect()
                }
                "--no-updates" => o.updates = false,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        ensure!(o.runs >= 1, "--runs must be at least 1");
        ensure!(o.keys >= 1, "--keys must be at least 1");
        ensure!(o.pipeline >= 2, "--pipeline must be at least 2");
        for t in &o.tests {
            ensure!(
                t == "get" || t == "set",
                "--tests takes get and set, not `{t}`"
            );
        }
        Ok(o)
    }

    /// The measured cells, in the order they run.
    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for (pipeline, requests) in [(1, self.requests), (self.pipeline, self.pipelined_requests)] {
            for t in &self.tests {
                cells.push(Cell {
                    test: t.clone(),
                    pipeline,
                    requests,
                });
            }
        }
        cells
    }
}

/// One redis-benchmark configuration.
struct Cell {
    test: String,
    pipeline: u32,
    requests: u64,
}

impl Cell {
    fn label(&self) -> String {
        format!("{} -P {}", self.test.to_uppercase(), self.pipeline)
    }
}

/// Where this benchmark builds (apart from the test builds in target/dsu-programs).
fn bench_dir() -> PathBuf {
    repo_root().join("target").join("bench-service")
}

fn kvstore(version: &str) -> PathBuf {
    repo_root().join("examples/kvstore").join(version)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds examples/kvstore/VERSION in release, with dsu or with `--cfg dsu_off`, and returns a
/// copy of the executable (every version's build writes the same `release/kvstore`).
fn build(version: &str, off: bool) -> Result<PathBuf> {
    let side = if off { "off" } else { "dsu" };
    eprintln!("{:>12} kvstore {version} ({side}, release)", "Building");
    let mut cmd = Command::new(cargo());
    cmd.args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(kvstore(version).join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", bench_dir().join(side))
    // It would take precedence over RUSTFLAGS.
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .stderr(Stdio::inherit());
    if off {
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        flags.push_str(" --cfg dsu_off");
        cmd.env("RUSTFLAGS", flags.trim());
    }
    let out = cmd.output().context("run cargo build")?;
    ensure!(
        out.status.success(),
        "building kvstore {version} ({side}) failed"
    );
    let exe = cargo_metadata::Message::parse_stream(&out.stdout[..])
        .filter_map(|m| match m {
            Ok(cargo_metadata::Message::CompilerArtifact(a)) => a.executable,
            _ => None,
        })
        .last()
        .ok_or_else(|| anyhow!("cargo built no executable for kvstore {version}"))?;
    let bin = bench_dir().join("bin");
    std::fs::create_dir_all(&bin)?;
    let copy = bin.join(format!("kvstore-{version}-{side}"));
    std::fs::copy(exe.as_std_path(), &copy)
        .with_context(|| format!("copy {exe} to {}", copy.display()))?;
    Ok(copy)
}

/// `cargo dsu diff --release FROM TO`, built against the release base in bench-service/dsu.
fn package(from: &str, to: &str) -> Result<PathBuf> {
    eprintln!("{:>12} cargo dsu diff --release {from} {to}", "Running");
    let dir = bench_dir().join("packages");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{from}-{to}.dsu"));
    let o = Command::new(cargo_dsu())
        .args(["dsu", "diff", "-q", "--release", "--target-dir"])
        .arg(bench_dir().join("dsu"))
        .arg(kvstore(from))
        .arg(kvstore(to))
        .arg("-o")
        .arg(&out)
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .context("run cargo dsu diff")?;
    ensure!(
        o.status.success(),
        "cargo dsu diff --release {from} {to} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out)
}

/// A running kvstore.
struct Server {
    child: Child,
    port: u16,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `exe` on a fresh data directory and waits for `ready`.
    fn start(exe: &Path) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let socket = dir.path().join("kv.sock");
        let mut child = Command::new(exe)
            .args(["--port", &port.to_string(), "--socket"])
            .arg(&socket)
            .arg("--data")
            .arg(dir.path().join("data"))
            // The runtime writes patch libraries under the temporary directory and leaves them
            // there (a process may still map them): keep them in ours, removed with it.
            .env("TMPDIR", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let server = Server {
            child,
            port,
            socket,
            _dir: dir,
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "{} did not start", exe.display());
        Ok(server)
    }

    /// Loads keys `0..n` as redis-benchmark's `-r n` names them, with its 3-byte values.
    fn load(&self, n: usize) -> Result<()> {
        let mut c = Client::connect(self.port);
        let keys: Vec<String> = (0..n).map(|i| format!("key:{i:012}")).collect();
        for chunk in keys.chunks(500) {
            let mut args = vec!["MSET"];
            for k in chunk {
                args.extend([k.as_str(), "xxx"]);
            }
            ensure!(c.cmd(&args) == Reply::Simple("OK".into()), "MSET failed");
        }
        ensure!(
            c.cmd(&["DBSIZE"]) == Reply::Int(n as i64),
            "DBSIZE after loading"
        );
        Ok(())
    }

    /// Applies a package through the control socket; it must commit.
    fn apply(&self, package: &Path) -> Result<()> {
        let resp = request(
            &self.socket,
            &Request::Apply {
                package: package.to_path_buf(),
                timeout_ms: None,
                policy: None,
                clear_poison: false,
            },
        )?;
        let rec = resp
            .report
            .ok_or_else(|| anyhow!("apply {}: {:?}", package.display(), resp.error))?;
        ensure!(
            rec.outcome == dsu::Outcome::Committed,
            "{} -> {} did not commit: {:?} {:?}",
            rec.from,
            rec.to,
            rec.outcome,
            rec.reason
        );
        Ok(())
    }

    /// VmRSS, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        dsu_tests::proc_status_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drives servers with redis-benchmark.
struct Driver {
    exe: PathBuf,
    clients: u32,
    keys: usize,
}

impl Driver {
    /// One run; returns requests per second.
    fn run(&self, port: u16, test: &str, pipeline: u32, requests: u64) -> Result<f64> {
        let stdout = self.output(port, test, pipeline, requests)?;
        // `"GET","51234.56",...` after the header line.
        let want = format!("\"{}\"", test.to_uppercase());
        stdout
            .lines()
            .find_map(|l| {
                let mut f = l.split(',');
                (f.next()? == want)
                    .then(|| f.next())
                    .flatten()
                    .and_then(|rps| rps.trim_matches('"').parse().ok())
            })
            .ok_or_else(|| anyhow!("no {want} result in redis-benchmark's output:\n{stdout}"))
    }

    /// Runs redis-benchmark (`test` is its `-t` list); returns its CSV output.
    fn output(&self, port: u16, test: &str, pipeline: u32, requests: u64) -> Result<String> {
        let out = Command::new(&self.exe)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", &self.clients.to_string()])
            .args(["-n", &requests.to_string()])
            .args(["-r", &self.keys.to_string()])
            .args(["-P", &pipeline.to_string()])
            .args(["-t", test, "--csv"])
            .output()
            .context("run redis-benchmark")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "redis-benchmark failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    fn warm_up(&self, server: &Server, requests: u64) -> Result<()> {
        if requests > 0 {
            self.output(server.port, "get,set", 1, requests)?;
        }
        Ok(())
    }
}

/// Per cell, per round: (A, B) requests per second.
type Samples = Vec<Vec<(f64, f64)>>;

/// Runs `rounds` rounds: `setup` starts a fresh (A, B) pair of loaded servers, both are warmed
/// up, every cell runs on both sides (who goes first alternates), then `finish` sees the pair
/// before it is stopped.
fn compare(
    name: &str,
    o: &Options,
    driver: &Driver,
    mut setup: impl FnMut() -> Result<(Server, Server)>,
    mut finish: impl FnMut(&Server, &Server) -> Result<()>,
) -> Result<Samples> {
    let cells = o.cells();
    let mut samples: Samples = vec![Vec::new(); cells.len()];
    for round in 0..o.runs {
        let (a, b) = setup()?;
        driver.warm_up(&a, o.warmup)?;
        driver.warm_up(&b, o.warmup)?;
        for (cell, s) in cells.iter().zip(&mut samples) {
            let run = |srv: &Server| driver.run(srv.port, &cell.test, cell.pipeline, cell.requests);
            let (ra, rb) = if round % 2 == 0 {
                let ra = run(&a)?;
                (ra, run(&b)?)
            } else {
                let rb = run(&b)?;
                (run(&a)?, rb)
            };
            eprintln!(
                "{:>12} {name} round {}/{} {:<10} A {:>10.0}/s  B {:>10.0}/s  B/A {:.3}",
                "Measured",
                round + 1,
                o.runs,
                cell.label(),
                ra,
                rb,
                rb / ra
            );
            s.push((ra, rb));
        }
        finish(&a, &b)?;
    }
    Ok(samples)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
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

/// `1234567.8` as `1,234,568`.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The throughput table of one comparison.
fn table(o: &Options, a: &str, b: &str, samples: &Samples) -> String {
    let mut t = format!(
        "| test | {a} (A), req/s | {b} (B), req/s | B/A | B/A per round: median (min–max) |\n\
         |---|---|---|---|---|\n"
    );
    for (cell, s) in o.cells().iter().zip(samples) {
        let ma = median(&s.iter().map(|x| x.0).collect::<Vec<_>>());
        let mb = median(&s.iter().map(|x| x.1).collect::<Vec<_>>());
        let ratios: Vec<f64> = s.iter().map(|(a, b)| b / a).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        t.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} ({:.3}–{:.3}) |\n",
            cell.label(),
            thousands(ma),
            thousands(mb),
            mb / ma,
            median(&ratios),
            lo,
            hi
        ));
    }
    t
}

/// RSS of one streak: after loading, after each update, after the measured runs; and the
/// fresh v6 server's after loading and after the runs. KiB.
#[derive(Default)]
struct Memory {
    streak: Vec<Vec<u64>>,
    fresh_loaded: Vec<u64>,
    updated_after_runs: Vec<u64>,
    fresh_after_runs: Vec<u64>,
}

fn mib(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

fn signed_mib(kib: f64) -> String {
    format!(
        "{}{:.2} MiB",
        if kib >= 0.0 { "+" } else { "−" },
        kib.abs() / 1024.0
    )
}

fn median_u(v: impl Iterator<Item = u64>) -> f64 {
    median(&v.map(|x| x as f64).collect::<Vec<_>>())
}

/// Median of per-round differences `f(round)`.
fn median_diff(rounds: usize, f: impl Fn(usize) -> f64) -> f64 {
    median(&(0..rounds).map(f).collect::<Vec<_>>())
}

fn memory_table(m: &Memory, steps: &[(&str, &str)], keys: usize) -> String {
    let rounds = m.streak.len();
    let mut t = String::from("| point | VmRSS | change |\n|---|---|---|\n");
    t.push_str(&format!(
        "| v1, {} keys loaded | {} | |\n",
        thousands(keys as f64),
        mib(median_u(m.streak.iter().map(|s| s[0])))
    ));
    for (i, (from, to)) in steps.iter().enumerate() {
        t.push_str(&format!(
            "| after update {} ({from} → {to}) | {} | {} |\n",
            i + 1,
            mib(median_u(m.streak.iter().map(|s| s[i + 1]))),
            signed_mib(median_diff(rounds, |r| {
                m.streak[r][i + 1] as f64 - m.streak[r][i] as f64
            }))
        ));
    }
    let n = steps.len();
    let total = median_diff(rounds, |r| m.streak[r][n] as f64 - m.streak[r][0] as f64);
    t.push_str(&format!(
        "| the streak, {n} updates | | {} in all, {} per update |\n",
        signed_mib(total),
        signed_mib(total / n as f64)
    ));
    t.push_str(&format!(
        "| fresh v6, same keys loaded | {} | updated − fresh: {} |\n",
        mib(median_u(m.fresh_loaded.iter().copied())),
        signed_mib(median_diff(rounds, |r| {
            m.streak[r][n] as f64 - m.fresh_loaded[r] as f64
        }))
    ));
    t.push_str(&format!(
        "| after the measured runs: updated / fresh v6 | {} / {} | updated − fresh: {} |\n",
        mib(median_u(m.updated_after_runs.iter().copied())),
        mib(median_u(m.fresh_after_runs.iter().copied())),
        signed_mib(median_diff(rounds, |r| {
            m.updated_after_runs[r] as f64 - m.fresh_after_runs[r] as f64
        }))
    ));
    t
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let o = Options::parse()?;
    let Some(redis_benchmark) = which("redis-benchmark") else {
        bail!(
            "this benchmark drives kvstore with redis-benchmark, which is not installed: \
             `apt-get install redis-tools`"
        );
    };
    let started = Instant::now();
    let load_before = load_average();
    let driver = Driver {
        exe: redis_benchmark,
        clients: o.clients,
        keys: o.keys,
    };
    let versions = ["v1", "v2", "v3", "v4", "v5", "v6"];
    let steps: Vec<(&str, &str)> = versions.windows(2).map(|w| (w[0], w[1])).collect();

    let v1 = build("v1", false)?;
    let v1_off = build("v1", true)?;
    let (mut v2, mut v6, mut packages) = (PathBuf::new(), PathBuf::new(), Vec::new());
    if o.updates {
        v2 = build("v2", false)?;
        v6 = build("v6", false)?;
        for (from, to) in &steps {
            packages.push(package(from, to)?);
        }
    }
    let built = started.elapsed();

    let start_loaded = |exe: &Path| -> Result<Server> {
        let s = Server::start(exe)?;
        s.load(o.keys)?;
        Ok(s)
    };

    let overhead = compare(
        "dsu/off",
        &o,
        &driver,
        || Ok((start_loaded(&v1)?, start_loaded(&v1_off)?)),
        |_, _| Ok(()),
    )?;

    let mut after_one = None;
    let mut after_streak = None;
    let mut memory = Memory::default();
    if o.updates {
        after_one = Some(compare(
            "1 update",
            &o,
            &driver,
            || {
                let updated = start_loaded(&v1)?;
                updated.apply(&packages[0])?;
                Ok((updated, start_loaded(&v2)?))
            },
            |_, _| Ok(()),
        )?);
        let mut streak_rss = Vec::new();
        let mut fresh_rss = Vec::new();
        let mut after_runs = Vec::new();
        after_streak = Some(compare(
            "streak",
            &o,
            &driver,
            || {
                let updated = start_loaded(&v1)?;
                let mut rss = vec![updated.rss_kib()?];
                for p in &packages {
                    updated.apply(p)?;
                    rss.push(updated.rss_kib()?);
                }
                streak_rss.push(rss);
                let fresh = start_loaded(&v6)?;
                fresh_rss.push(fresh.rss_kib()?);
                Ok((updated, fresh))
            },
            |updated, fresh| {
                after_runs.push((updated.rss_kib()?, fresh.rss_kib()?));
                Ok(())
            },
        )?);
        memory = Memory {
            streak: streak_rss,
            fresh_loaded: fresh_rss,
            updated_after_runs: after_runs.iter().map(|x| x.0).collect(),
            fresh_after_runs: after_runs.iter().map(|x| x.1).collect(),
        };
    }

    let measured = started.elapsed() - built;
    let cells: BTreeMap<u32, u64> = o.cells().iter().map(|c| (c.pipeline, c.requests)).collect();
    println!("## Whole-service overhead: kvstore with dsu, without it, and after updates\n");
    println!("- machine: {}", machine());
    let version = command_line(&driver.exe.to_string_lossy(), &["--version"]);
    println!(
        "- redis-benchmark {}, {} clients, `-r {}` over {} loaded keys (3-byte values); {}",
        version.trim_start_matches("redis-benchmark "),
        o.clients,
        o.keys,
        thousands(o.keys as f64),
        cells
            .iter()
            .map(|(p, n)| format!("{} requests per run at -P {p}", thousands(*n as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "- {} round{} per comparison, each on a fresh pair of servers warmed up with {} GET and \
         SET requests; medians over the rounds",
        o.runs,
        if o.runs == 1 { "" } else { "s" },
        thousands(o.warmup as f64)
    );
    println!(
        "- load average (1 min) {} at the start, {} at the end; {:.0} s measuring, {:.0} s \
         building",
        load_before,
        load_average(),
        measured.as_secs_f64(),
        built.as_secs_f64()
    );
    println!(
        "- B/A above 1: A serves fewer requests per second than B (the target for dsu versus \
         dsu_off is at most 1.01); a wide per-round range means a noisy machine"
    );
    println!("\n### dsu versus the macros compiled out (kvstore v1, release)\n");
    print!("{}", table(&o, "dsu", "dsu_off", &overhead));
    if let (Some(one), Some(streak)) = (&after_one, &after_streak) {
        println!("\n### After 1 update: v1 updated to v2, versus v2 built with dsu\n");
        print!("{}", table(&o, "updated", "fresh", one));
        println!(
            "\n### After the streak: v1 updated to v6 (5 updates), versus v6 built with dsu\n"
        );
        print!("{}", table(&o, "updated", "fresh", streak));
        println!("\n### Memory of the streak (VmRSS, medians)\n");
        print!("{}", memory_table(&memory, &steps, o.keys));
    }
    Ok(())
}
