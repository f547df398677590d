//! An async service used by dsu's end-to-end tests: `async fn` components behind a line
//! protocol, on a tokio `current_thread` runtime (one thread runs every connection, so a gate
//! that parked the thread would stall the whole service and the update waiting for it).
//!
//! `tasks --port PORT --socket PATH` prints `ready PORT` once it accepts connections. Commands
//! (one per line, one reply line each): `add K`, `get`, `version`, `hold MS`, `ticks`,
//! `stall MS`.
//!
//! A background task (`purge`, registered with the runtime) loops: it awaits its update point,
//! calls `Purger::tick`, and sleeps 10 ms (or the `stall` it was given once). Its loop body is
//! a component call, so after an update its next iteration runs the new version's `tick`.
//! Another (`idler`) only ever waits, inside `idle`, where it counts as parked.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How long the background task's next sleep lasts (ms), set by `stall`; 0: 10 ms.
#[dsu::global]
static STALL_MS: AtomicU64 = AtomicU64::new(0);

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub async fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }

    pub async fn get(&self) -> u64 {
        self.n
    }

    pub async fn version(&self) -> String {
        "v2".to_string()
    }

    /// Keeps a `&self` call in flight for `ms` (the service's other calls go on meanwhile).
    pub async fn hold(&self, ms: u64) -> String {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        format!("held {}", self.n)
    }
}

/// What the background task does each iteration.
#[dsu::state]
#[derive(Default)]
pub struct Purger {
    ticks: u64,
}

#[dsu::component]
impl Purger {
    pub async fn tick(&mut self) -> u64 {
        self.ticks += 1000;
        self.ticks
    }

    pub async fn ticks(&self) -> u64 {
        self.ticks
    }
}

/// A second registered task that spends its life waiting for work that never comes, counted
/// as parked while it waits (`idle`): an update that needs every task parked does not wait
/// for it.
async fn idle_loop() {
    let task = dsu::register_task("idler");
    loop {
        task.idle(tokio::time::sleep(std::time::Duration::from_secs(3600)))
            .await;
    }
}

async fn purge_loop(purger: dsu::Handle<Purger>) {
    let task = dsu::register_task("purge");
    loop {
        task.update_point().await;
        purger.tick().await;
        let stall = STALL_MS.swap(0, Ordering::Relaxed);
        let ms = if stall == 0 { 10 } else { stall };
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn handle(counter: &dsu::Handle<Counter>, purger: &dsu::Handle<Purger>, line: &str) -> String {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let a = parts.next().unwrap_or("");
    match cmd {
        "add" => counter.add(a.parse().unwrap_or(1)).await.to_string(),
        "get" => counter.get().await.to_string(),
        "version" => counter.version().await,
        "hold" => counter.hold(a.parse().unwrap_or(0)).await,
        "ticks" => purger.ticks().await.to_string(),
        "stall" => {
            STALL_MS.store(a.parse().unwrap_or(0), Ordering::Relaxed);
            "ok".to_string()
        }
        _ => format!("error unknown command `{cmd}`"),
    }
}

fn main() {
    let mut port = 0u16;
    let mut socket = String::from("tasks.sock");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port PORT"),
            "--socket" => socket = args.next().expect("--socket PATH"),
            other => panic!("unknown argument `{other}`"),
        }
    }
    let rt = dsu::Runtime::builder()
        .program("tasks")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&socket)
        .start()
        .expect("start the dsu runtime");
    let counter = rt.register(Counter::default());
    let purger = rt.register(Purger::default());
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    tokio_rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the TCP port");
        tokio::spawn(purge_loop(purger.clone()));
        tokio::spawn(idle_loop());
        println!("ready {}", listener.local_addr().expect("local address").port());
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            let purger = purger.clone();
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = handle(&counter, &purger, &line).await;
                    if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}
