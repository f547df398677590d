//! Persistence: an append-only file of writes, replayed at start.
//!
//! Format (version 2): a header line `KVAOF 2`, then one write per line: `S <len>:<hex key>
//! <len>:<hex value>`, `D <len>:<hex key>`, or `F` for FLUSHALL. The lengths make a torn last
//! line detectable. Version 1 (no header, `S <hex key> <hex value>`) is migrated when this
//! version is loaded into a running process, and read at start as well.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Rebuilt by `main` after a hand-off (it holds an open file), not streamed.
#[dsu::state(rebuild)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

/// A write to replay.
pub enum Op {
    Set(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Flush,
}

impl Journal {
    pub fn open(path: PathBuf) -> Journal {
        Journal {
            path,
            file: None,
            written: 0,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const HEADER: &str = "KVAOF 2";

/// `<len>:<hex>`.
fn field(b: &[u8]) -> String {
    format!("{}:{}", b.len(), hex(b))
}

fn unfield(s: &str) -> Option<Vec<u8>> {
    let (len, h) = s.split_once(':')?;
    let v = unhex(h)?;
    (len.parse::<usize>().ok()? == v.len()).then_some(v)
}

fn line_of(op: &Op) -> String {
    match op {
        Op::Set(k, v) => format!("S {} {}\n", field(k), field(v)),
        Op::Del(k) => format!("D {}\n", field(k)),
        Op::Flush => "F\n".to_string(),
    }
}

/// Parses a file of either format.
fn parse(text: &str) -> Vec<Op> {
    let mut lines = text.lines().peekable();
    let v2 = lines.peek() == Some(&HEADER);
    if v2 {
        lines.next();
    }
    let decode = |s: &str| if v2 { unfield(s) } else { unhex(s) };
    lines
        .filter_map(|line| {
            let mut w = line.split(' ');
            match (w.next(), w.next(), w.next()) {
                (Some("S"), Some(k), Some(v)) => decode(k).zip(decode(v)).map(|(k, v)| Op::Set(k, v)),
                (Some("D"), Some(k), None) => decode(k).map(Op::Del),
                (Some("F"), None, None) => Some(Op::Flush),
                _ => None,
            }
        })
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[dsu::component]
impl Journal {
    /// Reads the file's writes (a missing file is an empty store).
    pub fn replay(&self) -> Vec<Op> {
        std::fs::read_to_string(&self.path)
            .map(|t| parse(&t))
            .unwrap_or_default()
    }

    /// Moves the file to format 2 (run by the update manager when this version is loaded into a
    /// running process). The new file is staged (`dsu::write_staged`): the runtime moves it
    /// over the old one when the update commits and deletes it when the update rolls back, so
    /// a failure here or in a health check after leaves the old file as the old version wrote it.
    pub fn migrate(&mut self) -> Result<(), String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        if text.starts_with(HEADER) {
            return Ok(());
        }
        let mut out = format!("{HEADER}\n");
        for op in parse(&text) {
            out.push_str(&line_of(&op));
        }
        dsu::write_staged(&self.path, out.as_bytes())
            .map_err(|e| format!("cannot write the new {}: {e}", self.path.display()))?;
        // Appends go to the new file from now on (in place once the update commits).
        self.file = None;
        Ok(())
    }

    /// The data directory still takes new files (appends after the update need it): creates
    /// and removes `NAME.health` beside the journal.
    pub fn health_check(&self) -> Result<(), String> {
        let probe = self.path.with_extension("aof.health");
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| format!("the data directory takes no new file ({}): {e}", probe.display()))
    }

    pub fn record(&mut self, op: Op) {
        let line = line_of(&op);
        if self.file.is_none() {
            let fresh = !self.path.exists();
            self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
            if let (true, Some(f)) = (fresh, &mut self.file) {
                let _ = f.write_all(format!("{HEADER}\n").as_bytes());
            }
        }
        if let Some(f) = &mut self.file {
            if f.write_all(line.as_bytes()).is_ok() {
                self.written += 1;
                crate::STATS
                    .aof_writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}
