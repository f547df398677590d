//! kvstore: a key-value server speaking RESP (the Redis protocol), built to be updated live.
//!
//! `kvstore --port PORT --socket PATH --data DIR` prints `ready` once it accepts connections.
//!
//! Everything a request touches lives in components: `Engine` parses RESP and runs commands,
//! `Keyspace` holds the data, `Journal` appends writes to `DIR/kvstore.aof` and replays it at
//! start. `main` only accepts connections and moves bytes, so almost any change is updatable
//! in place. One thread per connection: dsu calls are synchronous, and 50-odd clients are 50-odd
//! threads, which the OS schedules well; an async runtime would add a second scheduler to
//! reason about without helping at this scale.

mod engine;
mod journal;
mod keyspace;
mod resp;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use engine::Engine;
use journal::Journal;
use keyspace::Keyspace;

/// Server-wide counters, shared by the components that serve requests (and only by them:
/// `main` never touches it, so its type can change in an update).
#[dsu::state]
pub struct Stats {
    pub connections: AtomicU64,
    pub commands: AtomicU64,
    pub aof_writes: AtomicU64,
    /// Error replies sent (new in v5: the global shared by `Engine` and `Journal` changes type).
    pub errors: AtomicU64,
}

#[dsu::global]
pub static STATS: Stats = Stats {
    connections: AtomicU64::new(0),
    commands: AtomicU64::new(0),
    aof_writes: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

struct Args {
    port: u16,
    socket: PathBuf,
    data: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        port: 6379,
        socket: "kvstore.sock".into(),
        data: ".".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => a.port = value().parse().expect("--port PORT"),
            "--socket" => a.socket = value().into(),
            "--data" => a.data = value().into(),
            other => panic!("unknown argument `{other}`; usage: kvstore --port PORT --socket PATH --data DIR"),
        }
    }
    a
}

fn main() {
    let args = args();
    std::fs::create_dir_all(&args.data).expect("create the data directory");
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .data_dir(&args.data)
        .start()
        .unwrap_or_else(|e| {
            eprintln!("kvstore: cannot start the dsu runtime: {e}");
            std::process::exit(2)
        });
    let keyspace = rt.register(Keyspace::default());
    let journal = rt.register(Journal::open(args.data.join("kvstore.aof")));
    let engine = rt.register(Engine::new(keyspace, journal.clone()));
    // A process started by a hand-off already has its predecessor's keys (the state came
    // with it); replaying the journal on top would apply every write twice.
    if !rt.handed_over() {
        let replayed = journal.replay();
        engine.load(replayed);
    }
    let listener = dsu::listener("redis", || TcpListener::bind(("127.0.0.1", args.port)))
        .expect("bind the port");
    // After a hand-off: the clients the previous process was serving.
    for conn in listener.handed_over() {
        serve(engine.clone(), conn);
    }
    rt.ready();
    // Not `println!`: after a hand-off, whoever read the first process's output may be gone,
    // and a closed pipe must not take the server down.
    let _ = writeln!(std::io::stdout(), "ready");
    loop {
        let Ok((conn, _)) = listener.accept() else { continue };
        engine.connected();
        serve(engine.clone(), conn);
    }
}

/// Serves one client on a thread of its own. Between two requests the connection waits in
/// `wait_readable`, where a hand-off can pass it, with any partial request, to a new process.
fn serve(engine: dsu::Handle<Engine>, mut conn: dsu::Connection) {
    std::thread::spawn(move || {
        let _ = conn.stream().set_nodelay(true);
        let mut pending: Vec<u8> = conn.take_unconsumed();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if conn.wait_readable(&pending).is_err() {
                return;
            }
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let (consumed, reply, close) = engine.process(pending.clone());
            pending.drain(..consumed);
            if !reply.is_empty() && conn.write_all(&reply).is_err() {
                return;
            }
            if close {
                return;
            }
        }
    });
}
