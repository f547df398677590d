//! Persistence: an append-only file of writes, replayed at start.
//!
//! Format (version 1): one write per line, `S <hex key> <hex value>` or `D <hex key>`, and
//! `F` for FLUSHALL.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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
        let Ok(f) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut ops = Vec::new();
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            let mut w = line.split(' ');
            let op = match (w.next(), w.next(), w.next()) {
                (Some("S"), Some(k), Some(v)) => unhex(k).zip(unhex(v)).map(|(k, v)| Op::Set(k, v)),
                (Some("D"), Some(k), None) => unhex(k).map(Op::Del),
                (Some("F"), None, None) => Some(Op::Flush),
                _ => None,
            };
            ops.extend(op);
        }
        ops
    }

    pub fn record(&mut self, op: Op) {
        let line = match &op {
            Op::Set(k, v) => format!("S {} {}\n", hex(k), hex(v)),
            Op::Del(k) => format!("D {}\n", hex(k)),
            Op::Flush => "F\n".to_string(),
        };
        if self.file.is_none() {
            self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
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
