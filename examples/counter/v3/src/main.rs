//! counter: counts hits per key over a line protocol on TCP.
//!
//! `counter --port PORT --socket PATH` prints `ready PORT` once it accepts connections.
//! Commands: `hit KEY` (-> the key's count), `get KEY`, `top` (-> the most hit key), `version`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

#[dsu::state]
#[derive(Default)]
pub struct Hits {
    counts: HashMap<String, u64>,
    /// Hits since this version was loaded (a new field: starts at its default).
    since_update: u64,
}

#[dsu::component]
impl Hits {
    pub fn hit(&mut self, key: String) -> u64 {
        self.since_update += 1;
        let n = self.counts.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The most hit key.
    pub fn top(&self) -> String {
        self.counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, n)| format!("{k} {n}"))
            .unwrap_or_default()
    }

    pub fn version(&self) -> String {
        format!("v3 ({} hits since the update)", self.since_update)
    }
}

fn main() {
    let mut port = 0;
    let mut socket = String::from("counter.sock");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port PORT"),
            "--socket" => socket = args.next().expect("--socket PATH"),
            other => panic!("unknown argument `{other}`; usage: counter --port PORT --socket PATH"),
        }
    }
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&socket)
        .start()
        .expect("start the dsu runtime");
    let hits = rt.register(Hits::default());
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the TCP port");
    println!("ready {}", listener.local_addr().expect("local address").port());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let hits = hits.clone();
        std::thread::spawn(move || {
            let mut out = conn.try_clone().expect("clone the connection");
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
                let reply = match cmd {
                    "hit" => hits.hit(arg.to_string()).to_string(),
                    "get" => hits.get(arg).to_string(),
                    "top" => hits.top(),
                    "version" => hits.version(),
                    _ => format!("error unknown command `{cmd}`"),
                };
                if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
}
