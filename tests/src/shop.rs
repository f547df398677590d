//! Driving examples/shop through all its updates under wrk: what `shop-demo` runs and what its
//! end-to-end test checks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dsu::control::{request, Request};

use crate::{build_base_with, cargo_dsu, repo_root, BuildProfile};

/// The versions, in order; v5 -> v6 changes `main` (a hand-off).
pub const VERSIONS: [&str; 6] = ["v1", "v2", "v3", "v4", "v5", "v6"];

/// Where the shop and its patches are built: a directory of its own, because a path
/// dependency's dylib (dsu-shared) has one file name per target directory, and the test
/// programs' dsu-shared is another build (other tokio features).
pub fn shop_target() -> PathBuf {
    repo_root().join("target").join("dsu-shop")
}

/// `wrk`, or an error that says how to install it.
pub fn wrk() -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join("wrk"))
        .find(|p| p.is_file())
        .context("the shop is driven by wrk, which is not installed: `apt-get install wrk` (.ci/run installs it)")
}

/// A minimal HTTP/1.1 client on one keep-alive connection.
pub struct Http {
    stream: BufReader<TcpStream>,
}

impl Http {
    pub fn connect(port: u16) -> Result<Http> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            stream: BufReader::new(s),
        })
    }

    /// `(status, body)`.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes())?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {status_line:?}"))?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One applied update.
pub struct Step {
    pub record: dsu::UpdateRecord,
    pub category: u8,
    pub took: Duration,
    /// The background sweeper's run count and last report, once the new version's code ran it.
    pub sweeps: u64,
    pub report: String,
}

/// What a run found.
pub struct Run {
    pub steps: Vec<Step>,
    /// wrk's summary, as it printed it.
    pub wrk: String,
    pub requests: u64,
    pub socket_errors: u64,
    pub non_2xx_3xx: u64,
    pub items_checked: usize,
    pub version: String,
}

/// Builds v1 and the five packages, starts v1, creates `items` items, starts wrk (64
/// connections, GETs of those items) and applies every update `window` apart while it runs;
/// then reads every item back.
pub fn run(items: usize, window: Duration, log: &mut dyn FnMut(String)) -> Result<Run> {
    let wrk = wrk()?;
    let example = repo_root().join("examples/shop");
    let target = shop_target();
    let profile = BuildProfile {
        release: false,
        target_dir: target.clone(),
    };
    log(format!("{:>12} shop v1 (the base)", "Building"));
    let exe = build_base_with(&example.join("v1"), &profile)?;
    let work = target.join("packages");
    std::fs::create_dir_all(&work)?;
    let mut packages = Vec::new();
    for w in VERSIONS.windows(2) {
        log(format!(
            "{:>12} cargo dsu diff {} {}",
            "Running", w[0], w[1]
        ));
        let out = work.join(format!("{}-{}.dsu", w[0], w[1]));
        let o = Command::new(cargo_dsu())
            .args(["dsu", "diff", "-q"])
            .arg(example.join(w[0]))
            .arg(example.join(w[1]))
            .arg("-o")
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            .env("CARGO_TERM_COLOR", "never")
            .output()?;
        ensure!(
            o.status.success(),
            "cargo dsu diff {} {} failed:\n{}{}",
            w[0],
            w[1],
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        packages.push(out);
    }

    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("shop.sock");
    let mut server = Server::start(&exe, &socket)?;
    let port = server.port;
    let mut c = Http::connect(port)?;
    let mut created = Vec::new();
    for i in 0..items {
        let name = format!("item-{i}");
        let (status, body) = c.call(
            "POST",
            "/items",
            &format!("{{\"name\":\"{name}\",\"price_cents\":{}}}", 100 + i),
        )?;
        ensure!(status == 201, "POST /items: {status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        created.push((v["id"].as_u64().context("an id")?, name));
    }
    log(format!(
        "{:>12} shop v1 on 127.0.0.1:{port} with {items} items; wrk running (64 connections)",
        "Started"
    ));

    // wrk runs for the whole sequence: before, each update, after.
    let duration = window * (2 * packages.len() as u32 + 3);
    let script = dir.path().join("get.lua");
    std::fs::write(
        &script,
        format!(
            "request = function() return wrk.format(\"GET\", \"/items/\" .. math.random(1, {items})) end\n"
        ),
    )?;
    let bench = Command::new(&wrk)
        .args(["-t", "2", "-c", "64", "--latency", "-s"])
        .arg(&script)
        .arg("-d")
        .arg(format!("{}s", duration.as_secs().max(1)))
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    std::thread::sleep(window);
    let mut steps = Vec::new();
    let mut last_sweeps = sweeper_after(&mut c, "1.0.0", 0)?.0;
    for pkg in &packages {
        std::thread::sleep(window);
        let m = dsu::Package::read(pkg)?.manifest;
        let t = Instant::now();
        let resp = request(
            &socket,
            &Request::Apply {
                package: pkg.clone(),
                timeout_ms: None,
                policy: None,
                clear_poison: false,
            },
        )?;
        let took = t.elapsed();
        let record = resp.report.context("no report")?;
        ensure!(
            record.outcome == dsu::Outcome::Committed,
            "update {} -> {} not committed: {:?}",
            record.from,
            record.to,
            record.reason
        );
        if let Some(pid) = record.new_pid {
            server.successor = Some(pid);
        }
        let category = m.changes.iter().map(|c| c.category).max().unwrap_or(0);
        log(format!(
            "{:>12} {} -> {} (category {category}{}) in {:.0} ms, pause {:.3} ms",
            "Applied",
            record.from,
            record.to,
            if record.new_pid.is_some() {
                ", hand-off"
            } else {
                ", in place"
            },
            took.as_secs_f64() * 1000.0,
            record.pause_ms
        ));
        // The background task keeps running through the update (its count goes on from where
        // it was, across the hand-off too) and its next runs are the new version's: from v4 the
        // sweep also counts the open carts.
        let (sweeps, report) = sweeper_after(&mut c, &record.to, last_sweeps)?;
        last_sweeps = sweeps;
        log(format!(
            "{:>12} the sweeper task: run {sweeps}, reporting {report:?}",
            "Checked"
        ));
        steps.push(Step {
            record,
            category,
            took,
            sweeps,
            report,
        });
    }
    ensure!(
        started.elapsed() + window / 2 < duration,
        "wrk's run ended before the last update: give the updates a shorter window"
    );
    let out = bench.wait_with_output()?;
    let wrk_out = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed: {wrk_out}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = wrk_out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{wrk_out}"))?;
    // wrk prints these lines only when there is something to count.
    let socket_errors = wrk_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx_3xx = wrk_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);

    // Every item created before the first update reads back after the last, from the new
    // process, on a connection it was handed.
    for (id, name) in &created {
        let (status, body) = c.call("GET", &format!("/items/{id}"), "")?;
        ensure!(
            status == 200,
            "GET /items/{id} after the updates: {status} {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(
            v["name"] == name.as_str(),
            "item {id} is {body}, not {name}"
        );
    }
    let (_, body) = c.call("GET", "/version", "")?;
    let version: serde_json::Value = serde_json::from_str(&body)?;
    let (status, health) = Http::connect(port)?.call("GET", "/healthz", "")?;
    ensure!(
        status == 200 && health == "ok",
        "GET /healthz: {status} {health}"
    );
    Ok(Run {
        steps,
        wrk: wrk_out,
        requests,
        socket_errors,
        non_2xx_3xx,
        items_checked: created.len(),
        version: version["version"].as_str().unwrap_or("?").to_string(),
    })
}

/// Waits (up to 5 s) for the background sweeper to report as version `to` does (`4.0.0` and
/// later count open carts) with a run count above `after`: `(runs, report)`.
fn sweeper_after(c: &mut Http, to: &str, after: u64) -> Result<(u64, String)> {
    let major: u64 = to
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("a version `{to}`"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = c.call("GET", "/stats", "")?;
        ensure!(status == 200, "GET /stats: {status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let sweeps = v["sweeps"].as_u64().context("stats name the sweeps")?;
        let report = v["report"].as_str().unwrap_or_default().to_string();
        ensure!(
            sweeps >= after,
            "the sweeper's count went back from {after} to {sweeps}: its state was lost"
        );
        if sweeps > after && report.contains("open carts") == (major >= 4) {
            return Ok((sweeps, report));
        }
        ensure!(
            Instant::now() < deadline,
            "the sweeper did not run {to}'s code within 5 s: run {sweeps}, report {report:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shop's process, and the one a hand-off started: both stopped on drop.
struct Server {
    child: Child,
    /// Kept open: a process whose stdout is a closed pipe dies at its next `println!` (the
    /// process a hand-off starts inherits it).
    _stdout: BufReader<std::process::ChildStdout>,
    port: u16,
    successor: Option<u32>,
}

impl Server {
    fn start(exe: &Path, socket: &Path) -> Result<Server> {
        let mut child = Command::new(exe)
            .args(["--port", "0", "--socket"])
            .arg(socket)
            // Not the libdsu_shared.so of the workspace's build that `cargo run`/`cargo test`
            // put on LD_LIBRARY_PATH: the shop's own, beside it (its RUNPATH).
            .env_remove("LD_LIBRARY_PATH")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        stdout.read_line(&mut line)?;
        let Some(port) = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
        else {
            bail!("the shop did not print `ready PORT` (got {line:?})");
        };
        Ok(Server {
            child,
            _stdout: stdout,
            port,
            successor: None,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.successor {
            // SAFETY: kill(2) of the process this run's hand-off started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}
