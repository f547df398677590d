//! What the kvstore whole-process benchmarks (`devloop`, `restart`) share: their options, the
//! machine line, builds in a target directory of their own, a kvstore server process, and a
//! RESP client that reports failures instead of panicking (a restart refuses and resets
//! connections, and the benchmarks count those).
//!
//! The benchmarks build in `target/dsu-bench`, not in the harness's `target/dsu-programs`: every
//! kvstore version (and the devloop's scratch copy) is a package named `kvstore`, so they all
//! write the same `PROFILE/kvstore`. The devloop rebuilds that binary on every round, and must
//! not swap it under a test that is starting it; `restart` copies each version's binary to a
//! file of its own as soon as it is built.

// Each benchmark uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dsu::control::{request, Request};
pub use dsu_tests::machine;
use dsu_tests::repo_root;
pub use dsu_tests::resp::Reply;

/// The benchmarks' build and scratch directory.
pub fn bench_target() -> PathBuf {
    repo_root().join("target").join("dsu-bench")
}

/// `examples/kvstore/VERSION`.
pub fn kvstore(version: &str) -> PathBuf {
    repo_root().join("examples/kvstore").join(version)
}

/// Command-line options `--name value`, each with a default and a line of help.
pub struct Opts {
    values: BTreeMap<&'static str, String>,
}

/// One option: name (without `--`), default value, help.
pub type Spec = (&'static str, &'static str, &'static str);

impl Opts {
    /// Parses the process's arguments against `specs`. `--bench`, which `cargo bench` passes to
    /// every benchmark binary, is ignored; `--help` prints `about` and the options, and exits.
    pub fn parse(about: &str, specs: &[Spec]) -> Result<Opts> {
        let usage = || {
            let mut s = format!("{about}\n\noptions:\n");
            for (name, default, help) in specs {
                let default = if default.is_empty() {
                    String::new()
                } else {
                    format!(" (default: {default})")
                };
                s.push_str(&format!("  --{name:<12} {help}{default}\n"));
            }
            s
        };
        let mut values: BTreeMap<&'static str, String> = specs
            .iter()
            .map(|(name, default, _)| (*name, default.to_string()))
            .collect();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                print!("{}", usage());
                std::process::exit(0);
            }
            let Some((name, _, _)) = arg
                .strip_prefix("--")
                .and_then(|n| specs.iter().find(|(name, _, _)| *name == n))
            else {
                bail!("unknown argument `{arg}`\n\n{}", usage());
            };
            let value = args
                .next()
                .ok_or_else(|| anyhow!("`--{name}` needs a value"))?;
            values.insert(name, value);
        }
        Ok(Opts { values })
    }

    /// The value of `--name`, parsed.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self
            .values
            .get(name)
            .ok_or_else(|| anyhow!("no option `--{name}`"))?;
        raw.parse().map_err(|e| anyhow!("`--{name} {raw}`: {e}"))
    }

    /// `--a 1 --b 2 ...`, for the output: the exact parameters of the run.
    pub fn line(&self) -> String {
        self.values
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("--{k} {v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `cargo build` of the package in `dir`, into the benchmarks' target directory, with the dev
/// profile (the one `cargo dsu watch` builds patches with) or `--release`. Returns the
/// executable. Cargo's output is shown only when the build fails.
pub fn cargo_build(dir: &Path, release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--message-format=json-render-diagnostics"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", bench_target())
        .output()
        .context("cannot run cargo build")?;
    ensure!(
        out.status.success(),
        "building {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    cargo_metadata::Message::parse_stream(&out.stdout[..])
        .filter_map(|m| match m {
            Ok(cargo_metadata::Message::CompilerArtifact(a)) => {
                a.executable.map(|e| e.into_std_path_buf())
            }
            _ => None,
        })
        .last()
        .ok_or_else(|| anyhow!("cargo built no executable for {}", dir.display()))
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running kvstore.
pub struct Server {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    /// From spawning the process to its `ready` line (includes the journal's replay).
    pub started_in: Duration,
}

impl Server {
    /// Starts `exe --port PORT --socket SOCKET --data DATA` and waits for `ready`.
    pub fn start(exe: &Path, port: u16, socket: &Path, data: &Path) -> Result<Server> {
        let begun = Instant::now();
        let mut child = Command::new(exe)
            .args(["--port", &port.to_string(), "--socket"])
            .arg(socket)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().context("kvstore's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the first line, then drains the pipe until the process exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let mut server = Server {
            child,
            port,
            socket: socket.to_path_buf(),
            started_in: Duration::ZERO,
        };
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(Some(Ok(line))) if line.trim() == "ready" => {}
            Ok(other) => bail!("{} did not print `ready` (got {other:?})", exe.display()),
            Err(_) => bail!("{} did not start within 300 s", exe.display()),
        }
        server.started_in = begun.elapsed();
        Ok(server)
    }

    /// Kills the process (SIGKILL: kvstore has no shutdown path, and every write it
    /// acknowledged is already in its journal) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        self.child.kill().context("cannot kill kvstore")?;
        self.child.wait().context("cannot wait for kvstore")?;
        Ok(())
    }

    /// The id of the process this started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `within` for the process to exit by itself, as the old process does once a
    /// hand-off has committed; an error if it is still running then.
    pub fn exited_within(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for kvstore")? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "kvstore (pid {}) was still running {} ms later",
                self.child.id(),
                within.as_millis()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The running version, from the control socket.
    pub fn version(&self) -> Result<String> {
        Ok(self.status()?.version)
    }

    /// The status the control socket reports (after a hand-off, the new process's).
    pub fn status(&self) -> Result<dsu::Status> {
        let resp = request(&self.socket, &Request::Status)?;
        resp.status
            .ok_or_else(|| anyhow!("status failed: {:?}", resp.error))
    }

    /// Applies the live update package `package` (an absolute path) through the control socket.
    pub fn apply(&self, package: &Path) -> Result<dsu::UpdateRecord> {
        let resp = request(
            &self.socket,
            &Request::Apply {
                package: package.to_path_buf(),
                timeout_ms: None,
                policy: None,
                clear_poison: false,
            },
        )?;
        resp.report
            .ok_or_else(|| anyhow!("apply failed: {:?}", resp.error))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP client whose every step returns an error instead of panicking.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    /// Connects to 127.0.0.1:`port`; replies must arrive within `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<Client> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Connects, retrying every few milliseconds for up to `within`.
    pub fn connect_within(port: u16, within: Duration) -> Result<Client> {
        let deadline = Instant::now() + within;
        loop {
            match Client::connect(port, Duration::from_secs(30)) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("cannot connect to port {port}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Sends one command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&b)?;
        self.read()
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Err(bad("empty reply line".into()));
        }
        let (kind, rest) = line.split_at(1);
        let number = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| bad(format!("bad number in {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(number(rest)?),
            "$" => {
                let n = number(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut v = vec![0; n as usize + 2];
                self.r.read_exact(&mut v)?;
                v.truncate(n as usize);
                Reply::Bulk(Some(v))
            }
            "*" => {
                let n = number(rest)?;
                let mut items = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad(format!("bad reply {line:?}"))),
        })
    }

    /// A field of `INFO`.
    pub fn info(&mut self, field: &str) -> Result<String> {
        let Reply::Bulk(Some(text)) = self.cmd(&["INFO"])? else {
            bail!("INFO did not return a bulk string");
        };
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("INFO has no `{field}`"))
    }

    /// `DBSIZE`.
    pub fn dbsize(&mut self) -> Result<i64> {
        match self.cmd(&["DBSIZE"])? {
            Reply::Int(n) => Ok(n),
            other => bail!("DBSIZE returned {other:?}"),
        }
    }
}

/// The key of preloaded entry `i`.
pub fn preload_key(i: usize) -> String {
    format!("key:{i:08}")
}

/// The value of preloaded entry `i` (16 to 48 bytes).
pub fn preload_value(i: usize) -> String {
    format!("value-{i:08}-{}", "x".repeat(i % 33))
}

/// Loads entries `0..n`, 1000 keys per MSET.
pub fn preload(c: &mut Client, n: usize) -> Result<()> {
    for start in (0..n).step_by(1000) {
        let mut args = vec!["MSET".to_string()];
        for i in start..(start + 1000).min(n) {
            args.push(preload_key(i));
            args.push(preload_value(i));
        }
        let reply = c.cmd(&args)?;
        ensure!(
            reply == Reply::Simple("OK".into()),
            "MSET returned {reply:?}"
        );
    }
    Ok(())
}

/// Writes that did not survive.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lost {
    pub checked: usize,
    pub missing: usize,
    pub different: usize,
}

impl Lost {
    pub fn total(&self) -> usize {
        self.missing + self.different
    }
}

/// Reads every key of `expected` back (MGET, 1000 at a time) and counts the missing and the
/// different ones.
pub fn check(c: &mut Client, expected: &[(String, String)]) -> Result<Lost> {
    let mut lost = Lost::default();
    for batch in expected.chunks(1000) {
        let mut args = vec!["MGET"];
        args.extend(batch.iter().map(|(k, _)| k.as_str()));
        let Reply::Array(values) = c.cmd(&args)? else {
            bail!("MGET did not return an array");
        };
        ensure!(
            values.len() == batch.len(),
            "MGET returned {} values",
            values.len()
        );
        for ((_, want), got) in batch.iter().zip(values) {
            lost.checked += 1;
            match got {
                Reply::Bulk(Some(v)) if v == want.as_bytes() => {}
                Reply::Bulk(None) => lost.missing += 1,
                _ => lost.different += 1,
            }
        }
    }
    Ok(lost)
}

/// The median (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Milliseconds, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
