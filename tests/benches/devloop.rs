//! The development loop (issue 5, item 4): from saving a one-line change in examples/kvstore to
//! the running process answering with it, under `cargo dsu watch` and by a plain
//! stop-rebuild-restart, in the same run.
//!
//! `cargo bench -p dsu-tests --bench devloop [-- --runs 10 --keys 10000]` (`-- --help` lists
//! the options)
//!
//! A copy of examples/kvstore/v1 in `target/dsu-bench/devloop/kvstore` is built and started
//! with a journal, and `--keys` keys are written to it. The edit is the line of `INFO`'s
//! `kvstore_version` in `Engine` (`"1",`), alternately `"1-edit-a",` and `"1-edit-b",`, so
//! every save changes what runs. A client polls `INFO` every `--poll-ms`; "save -> live" is from
//! just before the file is written to the first reply showing the edit.
//!
//! - watch: `cargo dsu watch` on the copy builds the patch (dev profile, as it always does) and
//!   applies it; the process keeps running.
//! - restart: `cargo build` of the copy (the same dev profile), then kill the server, start the
//!   new binary on the same port and data directory (the journal replays), and poll.
//!
//! Each path first does one unmeasured round (the first patch build compiles the patch crate
//! from nothing), then `--runs` measured rounds. Medians, and their ratio.

mod kv;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv::{median, ms, Client, Opts, Server};

const OPTIONS: &[kv::Spec] = &[
    (
        "runs",
        "10",
        "measured rounds per path (after one warm-up round each)",
    ),
    (
        "keys",
        "10000",
        "keys written to the server before the rounds",
    ),
    (
        "poll-ms",
        "5",
        "interval of the client polling INFO for the edit",
    ),
    ("settle-ms", "500", "quiet time between rounds"),
    ("timeout-s", "300", "give up on a round after this long"),
    (
        "cargo-dsu",
        "",
        "the cargo-dsu binary to run (default: this workspace's, built in the dev profile)",
    ),
];

/// The line of `INFO`'s version string in v1's engine.rs.
const VERSION_LINE: &str = "\"1\",";

/// What both paths measure in a round.
struct Round {
    /// From just before the save to the first reply showing the edit.
    live: Duration,
    /// DBSIZE before the save and after the edit is live.
    keys: (i64, i64),
    /// INFO's `total_commands_processed` before the save and after the edit is live.
    commands: (u64, u64),
}

impl Round {
    fn kept_keys(&self) -> bool {
        self.keys.1 == self.keys.0
    }

    fn kept_counters(&self) -> bool {
        self.commands.1 > self.commands.0
    }
}

/// A round of the patch path.
struct WatchRound {
    round: Round,
    /// Save -> watch's `Compiling patch` line: debounce, snapshot, analysis.
    detect: Duration,
    /// `Compiling patch` -> cargo's last compiled crate: patch generation and build.
    build: Duration,
    /// Cargo done -> `Applied`: packaging and the apply request (validate, load, swap).
    apply: Duration,
    /// The pause of the update's callers, as the process reported it.
    pause_ms: f64,
    /// Watch's own `Live in` figure (from the file event to the commit), in seconds.
    own_s: f64,
    /// Watch's `--timings` line: (part, seconds), in its order.
    parts: Vec<(String, f64)>,
}

/// A round of the restart path.
struct RestartRound {
    round: Round,
    /// The `cargo build`.
    build: Duration,
    /// Kill -> the first reply with the edit: the service is down.
    down: Duration,
    /// Spawn -> `ready` (the journal's replay is in it).
    startup: Duration,
}

fn main() -> Result<()> {
    let opts = Opts::parse(
        "devloop: save -> live for a one-line edit of examples/kvstore, under `cargo dsu watch` \
         and by stop-rebuild-restart",
        OPTIONS,
    )?;
    let runs: usize = opts.get("runs")?;
    let keys: usize = opts.get("keys")?;
    let poll = Duration::from_millis(opts.get("poll-ms")?);
    let settle = Duration::from_millis(opts.get("settle-ms")?);
    let timeout = Duration::from_secs(opts.get("timeout-s")?);
    let cargo_dsu: String = opts.get("cargo-dsu")?;
    ensure!(runs > 0, "`--runs` must be at least 1");

    println!("devloop: one-line edit of examples/kvstore (INFO's version string) -> live");
    println!("machine: {}", kv::machine());
    println!("parameters: {}", opts.line());
    println!(
        "profile: dev (examples/kvstore's [profile.dev], opt-level 1) for the patch and the \
         rebuild alike; `cargo dsu watch` always builds with it"
    );

    let cargo_dsu = if cargo_dsu.is_empty() {
        eprintln!("{:>12} cargo-dsu", "Building");
        dsu_tests::cargo_dsu().to_path_buf()
    } else {
        PathBuf::from(cargo_dsu)
    };
    let work = kv::bench_target().join("devloop");
    let pkg = work.join("kvstore");
    let data = work.join("data");
    for dir in [&pkg, &data] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    // A copy of v1 with its path dependency made absolute: the repository is never edited.
    cargo_dsu::baseline::snapshot(&kv::kvstore("v1"), &pkg)?;
    let mut editor = Editor::new(&pkg.join("src/engine.rs"))?;

    eprintln!(
        "{:>12} the copy of kvstore v1 in {} (first build: not measured)",
        "Building",
        pkg.display()
    );
    let exe = kv::cargo_build(&pkg, false)?;
    let port = kv::free_port()?;
    let socket = work.join("kvstore.sock");
    let mut server = Server::start(&exe, port, &socket, &data)?;
    let mut client = Client::connect_within(port, Duration::from_secs(10))?;
    kv::preload(&mut client, keys)?;
    ensure!(
        client.dbsize()? == keys as i64,
        "the preload did not write {keys} keys"
    );

    let mut watch_rounds = Vec::new();
    let mut restart_rounds = Vec::new();

    // The patch path.
    eprintln!("{:>12} cargo dsu watch on {}", "Starting", pkg.display());
    let mut watch = Watch::start(&cargo_dsu, &pkg, &socket)?;
    watch.wait_for_line("Watching", timeout)?;
    for round in 0..=runs {
        std::thread::sleep(settle);
        let marker = editor.next_marker();
        let keys_before = client.dbsize()?;
        let commands_before = commands(&mut client)?;
        let saved = Instant::now();
        editor.save(&marker)?;
        let live = poll_until(&mut client, &marker, poll, timeout, || watch.check())?;
        let live = live.duration_since(saved);
        let (compiling, _, _) = watch.wait_for_line("Compiling patch", timeout)?;
        let (applied_at, applied, between) = watch.wait_for_line("Applied", timeout)?;
        // Watch prints `Compiling CRATE` as cargo reports each crate compiled.
        let built_at = between
            .iter()
            .rev()
            .find(|(_, l)| l.trim_start().starts_with("Compiling"))
            .map_or(compiling, |(at, _)| *at);
        let (_, own, _) = watch.wait_for_line("Live in", timeout)?;
        let (_, timings, _) = watch.wait_for_line("Timings", timeout)?;
        let r = WatchRound {
            round: Round {
                live,
                keys: (keys_before, client.dbsize()?),
                commands: (commands_before, commands(&mut client)?),
            },
            detect: compiling.saturating_duration_since(saved),
            build: built_at.saturating_duration_since(compiling),
            apply: applied_at.saturating_duration_since(built_at),
            pause_ms: number_after(&applied, "(pause ").unwrap_or(f64::NAN),
            own_s: number_after(&own, "Live in ").unwrap_or(f64::NAN),
            parts: timing_parts(&timings),
        };
        report(
            "cargo dsu watch",
            round,
            &r.round,
            &format!(
                "detect {:.3} s, build {:.3} s, apply {:.3} s, pause {:.3} ms; watch says {:.2} s",
                r.detect.as_secs_f64(),
                r.build.as_secs_f64(),
                r.apply.as_secs_f64(),
                r.pause_ms,
                r.own_s
            ),
        );
        eprintln!("{:>12} {}", "", timings.trim());
        if round > 0 {
            watch_rounds.push(r);
        }
    }
    watch.stop();

    // The restart path: the same edits, rebuilt and restarted.
    let mut exe = exe;
    for round in 0..=runs {
        std::thread::sleep(settle);
        let marker = editor.next_marker();
        let keys_before = client.dbsize()?;
        let commands_before = commands(&mut client)?;
        let saved = Instant::now();
        editor.save(&marker)?;
        exe = kv::cargo_build(&pkg, false)?;
        let built = saved.elapsed();
        let killed = Instant::now();
        server.stop()?;
        server = Server::start(&exe, port, &socket, &data)?;
        client = Client::connect_within(port, timeout)?;
        let live = poll_until(&mut client, &marker, poll, timeout, || Ok(()))?;
        let r = RestartRound {
            round: Round {
                live: live.duration_since(saved),
                keys: (keys_before, client.dbsize()?),
                commands: (commands_before, commands(&mut client)?),
            },
            build: built,
            down: live.duration_since(killed),
            startup: server.started_in,
        };
        report(
            "stop-rebuild-restart",
            round,
            &r.round,
            &format!(
                "build {:.3} s, down {:.3} s, startup {:.1} ms",
                r.build.as_secs_f64(),
                r.down.as_secs_f64(),
                ms(r.startup)
            ),
        );
        if round > 0 {
            restart_rounds.push(r);
        }
    }

    // Every preloaded key, after both paths.
    let expected: Vec<(String, String)> = (0..keys)
        .map(|i| (kv::preload_key(i), kv::preload_value(i)))
        .collect();
    let lost = kv::check(&mut client, &expected)?;
    drop(client);
    server.stop()?;

    // What the restart path's startup costs: the journal's replay.
    let mut with_journal = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..runs {
        let s = Server::start(&exe, kv::free_port()?, &socket, &data)?;
        with_journal.push(ms(s.started_in));
        drop(s);
        let fresh = tempfile::tempdir()?;
        let s = Server::start(&exe, kv::free_port()?, &socket, fresh.path())?;
        empty.push(ms(s.started_in));
    }

    summary(
        &watch_rounds,
        &restart_rounds,
        keys,
        lost,
        median(&with_journal),
        median(&empty),
    );
    Ok(())
}

/// Edits engine.rs's version line, alternating between two edits.
struct Editor {
    file: PathBuf,
    original: String,
    line: usize,
    edits: usize,
}

impl Editor {
    fn new(file: &Path) -> Result<Editor> {
        let original = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let lines: Vec<usize> = original
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == VERSION_LINE)
            .map(|(i, _)| i)
            .collect();
        let [line] = lines[..] else {
            bail!(
                "{} should have one line `{VERSION_LINE}` (INFO's version), found {}",
                file.display(),
                lines.len()
            );
        };
        Ok(Editor {
            file: file.to_path_buf(),
            original,
            line,
            edits: 0,
        })
    }

    /// The next edit's version string; consecutive edits differ.
    fn next_marker(&mut self) -> String {
        self.edits += 1;
        format!("1-edit-{}", if self.edits % 2 == 1 { 'a' } else { 'b' })
    }

    /// Writes the file with the version line set to `marker`, as an editor saves it.
    fn save(&self, marker: &str) -> Result<()> {
        let text: Vec<String> = self
            .original
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == self.line {
                    l.replace(VERSION_LINE, &format!("\"{marker}\","))
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.file, text.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", self.file.display()))
    }
}

/// A line of watch's output and when it arrived.
type Line = (Instant, String);

/// `cargo dsu watch`, its stderr read line by line with each line's arrival time.
struct Watch {
    child: Child,
    lines: Receiver<Line>,
    /// Lines received and not yet consumed by `wait_for_line`.
    pending: VecDeque<Line>,
    log: String,
}

impl Watch {
    fn start(cargo_dsu: &Path, pkg: &Path, socket: &Path) -> Result<Watch> {
        let mut child = Command::new(cargo_dsu)
            .args(["dsu", "watch", "--timings", "--socket"])
            .arg(socket)
            .arg("--manifest-path")
            .arg(pkg)
            .env("CARGO_TERM_COLOR", "never")
            .env("CARGO_TARGET_DIR", kv::bench_target())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", cargo_dsu.display()))?;
        let err = child.stderr.take().context("watch's stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Watch {
            child,
            lines,
            pending: VecDeque::new(),
            log: String::new(),
        })
    }

    fn record(&mut self, at: Instant, line: String) -> Result<()> {
        self.log.push_str(&line);
        self.log.push('\n');
        ensure!(
            !line.starts_with("error:"),
            "cargo dsu watch failed:\n{}",
            self.log
        );
        self.pending.push_back((at, line));
        Ok(())
    }

    /// Takes the lines printed so far (kept for `wait_for_line`); fails on an error line.
    fn check(&mut self) -> Result<()> {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.record(at, line)?;
        }
        Ok(())
    }

    /// Waits for a line containing `needle`; returns its arrival time and text, and the lines
    /// before it.
    fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(Instant, String, Vec<Line>)> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            while let Some((at, line)) = self.pending.pop_front() {
                if line.contains(needle) {
                    return Ok((at, line, before));
                }
                before.push((at, line));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => self.record(at, line)?,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("cargo dsu watch printed no `{needle}`:\n{}", self.log)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("cargo dsu watch exited:\n{}", self.log)
                }
            }
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls INFO until its version is `marker`; returns when the reply arrived. `also` runs
/// between polls and may fail the wait.
fn poll_until(
    c: &mut Client,
    marker: &str,
    every: Duration,
    timeout: Duration,
    mut also: impl FnMut() -> Result<()>,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let version = c.info("kvstore_version")?;
        let at = Instant::now();
        if version == marker {
            return Ok(at);
        }
        also()?;
        if at >= deadline {
            bail!("the server still answers version {version:?}, not {marker:?}");
        }
        std::thread::sleep(every);
    }
}

fn commands(c: &mut Client) -> Result<u64> {
    Ok(c.info("total_commands_processed")?.parse()?)
}

/// The number right after `prefix` in `line` (`... (pause 0.123 ms)` -> 0.123).
fn number_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn report(path: &str, round: usize, r: &Round, parts: &str) {
    let which = if round == 0 {
        "Warm-up".to_string()
    } else {
        format!("Round {round}")
    };
    eprintln!(
        "{which:>12} {path:<20} save->live {:.3} s ({parts}); keys {} -> {}; commands {} -> {}",
        r.live.as_secs_f64(),
        r.keys.0,
        r.keys.1,
        r.commands.0,
        r.commands.1,
    );
}

/// The parts of watch's `Timings` line (`quiet wait 0.040s, analysis 0.012s, ...; total
/// 0.480s`): each part's name and seconds.
fn timing_parts(line: &str) -> Vec<(String, f64)> {
    let rest = line.split_once("Timings").map_or(line, |(_, r)| r);
    rest.split([',', ';'])
        .filter_map(|seg| {
            let words: Vec<&str> = seg.split_whitespace().collect();
            let at = words.iter().position(|w| {
                w.strip_suffix('s')
                    .is_some_and(|n| n.parse::<f64>().is_ok())
            })?;
            let secs = words[at].trim_end_matches('s').parse().ok()?;
            Some((words[..at].join(" "), secs))
        })
        .collect()
}

/// The median of `f` over `rounds`.
fn med<T>(rounds: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&rounds.iter().map(f).collect::<Vec<_>>())
}

fn summary(
    watch: &[WatchRound],
    restart: &[RestartRound],
    keys: usize,
    lost: kv::Lost,
    with_journal: f64,
    empty: f64,
) {
    let secs = |d: Duration| d.as_secs_f64();
    let watch_live = med(watch, |r| secs(r.round.live));
    let restart_live = med(restart, |r| secs(r.round.live));
    let yes_no = |all: bool, yes: &'static str, no: &'static str| if all { yes } else { no };
    println!();
    println!(
        "medians of {} rounds per path (after one warm-up round each):",
        watch.len()
    );
    println!();
    println!("| path | save -> live | parts | service down | keys kept | counters (INFO) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `cargo dsu watch` | {watch_live:.2} s | detect {:.2} s, build {:.2} s, apply {:.3} s (watch's own figure {:.2} s) | no: calls paused {:.3} ms | {} | {} |",
        med(watch, |r| secs(r.detect)),
        med(watch, |r| secs(r.build)),
        med(watch, |r| secs(r.apply)),
        med(watch, |r| r.own_s),
        med(watch, |r| r.pause_ms),
        yes_no(watch.iter().all(|r| r.round.kept_keys()), "all", "**no**"),
        yes_no(watch.iter().all(|r| r.round.kept_counters()), "kept", "**reset**"),
    );
    println!(
        "| stop-rebuild-restart | {restart_live:.2} s | `cargo build` {:.2} s, kill -> live {:.3} s (spawn -> `ready` {:.1} ms) | {:.3} s | {} | {} |",
        med(restart, |r| secs(r.build)),
        med(restart, |r| secs(r.down)),
        med(restart, |r| ms(r.startup)),
        med(restart, |r| secs(r.down)),
        yes_no(
            restart.iter().all(|r| r.round.kept_keys()),
            "all (the journal replays)",
            "**no**"
        ),
        yes_no(
            restart.iter().all(|r| r.round.kept_counters()),
            "kept",
            "reset to 0"
        ),
    );
    println!();
    println!(
        "restart / watch (save -> live): {:.2}x",
        restart_live / watch_live
    );
    println!(
        "startup: {with_journal:.1} ms with the journal of {keys} keys, {empty:.1} ms with an empty data directory: the replay costs about {:.1} ms",
        with_journal - empty
    );
    println!(
        "preloaded keys read back at the end: {} checked, {} missing, {} different",
        lost.checked, lost.missing, lost.different
    );
    // Watch's own account, part by part (the first round's names; every round has the same).
    if let Some(first) = watch.first() {
        let parts: Vec<String> = first
            .parts
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let m = med(watch, |r| r.parts.get(i).map_or(f64::NAN, |p| p.1));
                format!("{name} {m:.3} s")
            })
            .collect();
        println!("`cargo dsu watch --timings`, medians: {}", parts.join(", "));
    }
    println!(
        "target: save -> live at most 0.5 s and faster than stop-rebuild-restart: {}",
        if watch_live <= 0.5 && watch_live < restart_live {
            "met".to_string()
        } else {
            format!("**missed** ({watch_live:.2} s against {restart_live:.2} s for the restart)")
        }
    );
}
