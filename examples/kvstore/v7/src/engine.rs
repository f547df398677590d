//! Command handling: parses pipelined RESP requests and runs them against the keyspace.

use std::sync::atomic::Ordering;

use crate::journal::{Journal, Op};
use crate::keyspace::Keyspace;
use crate::resp;
use crate::STATS;

#[dsu::state]
pub struct Engine {
    keyspace: dsu::Handle<Keyspace>,
    journal: dsu::Handle<Journal>,
}

impl Engine {
    pub fn new(keyspace: dsu::Handle<Keyspace>, journal: dsu::Handle<Journal>) -> Engine {
        Engine { keyspace, journal }
    }
}

#[dsu::component]
impl Engine {
    /// Runs every complete request in `input`; returns the bytes consumed, the replies, and
    /// whether the client asked to close.
    pub fn process(&self, input: Vec<u8>) -> (usize, Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match resp::parse(&input[pos..]) {
                Ok(Some((args, used))) => {
                    pos += used;
                    if args.is_empty() {
                        continue;
                    }
                    STATS.commands.fetch_add(1, Ordering::Relaxed);
                    let before = out.len();
                    let close = run(self, &args, &mut out);
                    if out.get(before) == Some(&b'-') {
                        STATS.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if close {
                        return (pos, out, true);
                    }
                }
                Ok(None) => return (pos, out, false),
                Err(e) => {
                    resp::error(&mut out, &format!("ERR Protocol error: {e}"));
                    return (input.len(), out, true);
                }
            }
        }
    }

    /// Counts an accepted connection.
    pub fn connected(&self) {
        STATS.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies replayed writes at start; returns how many.
    pub fn load(&self, ops: Vec<Op>) -> usize {
        let n = ops.len();
        for op in ops {
            match op {
                Op::Set(k, v) => self.keyspace.set(k, v, None),
                Op::Del(k) => {
                    self.keyspace.del(&k);
                }
                Op::Flush => self.keyspace.clear(),
            }
        }
        n
    }
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrong_args(out: &mut Vec<u8>, cmd: &str) {
    resp::error(out, &format!("ERR wrong number of arguments for '{}' command", cmd.to_lowercase()));
}

/// Runs one command; returns true when the connection should close.
fn run(e: &Engine, args: &[Vec<u8>], out: &mut Vec<u8>) -> bool {
    let cmd = upper(&args[0]);
    let a = &args[1..];
    match cmd.as_str() {
        "PING" => match a {
            [] => resp::simple(out, "PONG"),
            [msg] => resp::bulk(out, Some(msg)),
            _ => wrong_args(out, &cmd),
        },
        "ECHO" if a.len() == 1 => resp::bulk(out, Some(&a[0])),
        "GET" => match a {
            [k] => resp::bulk(out, e.keyspace.get(k).as_deref()),
            _ => wrong_args(out, &cmd),
        },
        "SET" => {
            let ttl = match a {
                [_, _] => Ok(None),
                [_, _, unit, n] => {
                    let n = std::str::from_utf8(n).ok().and_then(|s| s.parse::<u64>().ok());
                    match (upper(unit).as_str(), n) {
                        ("EX", Some(n)) => Ok(Some(n * 1000)),
                        ("PX", Some(n)) => Ok(Some(n)),
                        _ => Err("ERR syntax error"),
                    }
                }
                _ => Err("wrong args"),
            };
            match (a, ttl) {
                (_, Err("wrong args")) => wrong_args(out, &cmd),
                (_, Err(msg)) => resp::error(out, msg),
                ([k, v, ..], Ok(ttl)) => {
                    e.journal.record(Op::Set(k.clone(), v.clone()));
                    e.keyspace.set(k.clone(), v.clone(), ttl);
                    resp::simple(out, "OK");
                }
                _ => wrong_args(out, &cmd),
            }
        }
        "DEL" if !a.is_empty() => {
            let mut n = 0;
            for k in a {
                if e.keyspace.del(k) {
                    e.journal.record(Op::Del(k.clone()));
                    n += 1;
                }
            }
            resp::int(out, n);
        }
        // Counts every name that exists (v1 stopped at the first missing one).
        "EXISTS" if !a.is_empty() => {
            let n = a.iter().filter(|k| e.keyspace.exists(k)).count();
            resp::int(out, n as i64);
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let (key, by) = match (cmd.as_str(), a) {
                ("INCR", [k]) => (k, Some(1)),
                ("DECR", [k]) => (k, Some(-1)),
                ("INCRBY", [k, n]) => (k, std::str::from_utf8(n).ok().and_then(|s| s.parse().ok())),
                ("DECRBY", [k, n]) => (k, std::str::from_utf8(n).ok().and_then(|s: &str| s.parse::<i64>().ok()).map(|n| -n)),
                _ => {
                    wrong_args(out, &cmd);
                    return false;
                }
            };
            let Some(by) = by else {
                resp::error(out, "ERR value is not an integer or out of range");
                return false;
            };
            match e.keyspace.incr(key.clone(), by) {
                Ok(n) => {
                    e.journal.record(Op::Set(key.clone(), n.to_string().into_bytes()));
                    resp::int(out, n);
                }
                Err(msg) => resp::error(out, &msg),
            }
        }
        "MGET" if !a.is_empty() => {
            resp::array_len(out, a.len());
            for k in a {
                resp::bulk(out, e.keyspace.get(k).as_deref());
            }
        }
        "MSET" if !a.is_empty() && a.len() % 2 == 0 => {
            for kv in a.chunks(2) {
                e.journal.record(Op::Set(kv[0].clone(), kv[1].clone()));
                e.keyspace.set(kv[0].clone(), kv[1].clone(), None);
            }
            resp::simple(out, "OK");
        }
        "EXPIRE" | "PEXPIRE" => match a {
            [k, n] => match std::str::from_utf8(n).ok().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => {
                    let ms = if cmd == "EXPIRE" { n * 1000 } else { n };
                    resp::int(out, e.keyspace.expire(k, ms) as i64);
                }
                None => resp::error(out, "ERR value is not an integer or out of range"),
            },
            _ => wrong_args(out, &cmd),
        },
        "TTL" | "PTTL" => match a {
            [k] => {
                let ms = e.keyspace.ttl_ms(k);
                let v = if ms < 0 || cmd == "PTTL" { ms } else { (ms + 999) / 1000 };
                resp::int(out, v);
            }
            _ => wrong_args(out, &cmd),
        },
        "DBSIZE" => resp::int(out, e.keyspace.len() as i64),
        "FLUSHALL" | "FLUSHDB" => {
            e.journal.record(Op::Flush);
            e.keyspace.clear();
            resp::simple(out, "OK");
        }
        "INFO" => {
            let info = format!(
                "# Server\r\nredis_version:7.0.0\r\nkvstore_version:{}\r\n# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\naof_writes:{}\r\ntotal_error_replies:{}\r\n# Keyspace\r\ndb0:keys={}\r\n",
                "7",
                STATS.connections.load(Ordering::Relaxed),
                STATS.commands.load(Ordering::Relaxed),
                STATS.aof_writes.load(Ordering::Relaxed),
                STATS.errors.load(Ordering::Relaxed),
                e.keyspace.len()
            );
            resp::bulk(out, Some(info.as_bytes()));
        }
        // Clients ask for these at start; there is nothing to configure.
        "CONFIG" | "COMMAND" => resp::array_len(out, 0),
        "SELECT" => resp::simple(out, "OK"),
        "QUIT" => {
            resp::simple(out, "OK");
            return true;
        }
        _ => resp::error(out, &format!("ERR unknown command '{}'", String::from_utf8_lossy(&args[0]))),
    }
    false
}
