//! An async service whose patches use tokio and tracing themselves, used by dsu's end-to-end
//! tests. It depends on `dsu` with the `shared` feature, so tokio, tracing and log are one
//! dynamic library that the process and its patches share: patched code that spawns a task,
//! sleeps or logs runs on this process's runtime and reaches its subscriber.
//!
//! `spawn --port PORT --socket PATH` prints `ready PORT` once it accepts connections, and
//! writes every tracing event to the file `$SPAWN_TRACE` (one line each, with its spans).
//! Commands (one per line, one reply line each): `version`, `work MS`, `send V`, `take`.
//! Every request runs inside a `request{cmd=…}` span.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::Instrument;

#[dsu::state]
#[derive(Default)]
pub struct Jobs {
    /// The receiving end of a channel the host created (`send V` writes to it). A channel
    /// does not cross a hand-off (another process has another runtime).
    #[serde(skip)]
    inbox: Option<mpsc::Receiver<u64>>,
    done: u64,
}

#[dsu::component]
impl Jobs {
    pub async fn version(&self) -> String {
        "v1".to_string()
    }

    pub async fn work(&mut self, ms: u64) -> String {
        tracing::info!(ms, "work v1");
        self.done += 1;
        format!("v1 done {}", self.done)
    }

    pub async fn take(&mut self) -> String {
        match self.inbox.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(v) => format!("v1 took {v}"),
                None => "closed".to_string(),
            },
            None => "no inbox".to_string(),
        }
    }
}

async fn handle(jobs: &dsu::Handle<Jobs>, tx: &mpsc::Sender<u64>, line: &str) -> String {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let a = parts.next().unwrap_or("");
    match cmd {
        "version" => jobs.version().await,
        "work" => jobs.work(a.parse().unwrap_or(1)).await,
        "take" => jobs.take().await,
        "send" => match tx.send(a.parse().unwrap_or(0)).await {
            Ok(()) => "sent".to_string(),
            Err(_) => "closed".to_string(),
        },
        _ => format!("error unknown command `{cmd}`"),
    }
}

fn main() {
    let mut port = 0u16;
    let mut socket = String::from("spawn.sock");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port PORT"),
            "--socket" => socket = args.next().expect("--socket PATH"),
            other => panic!("unknown argument `{other}`"),
        }
    }
    let trace = std::env::var("SPAWN_TRACE").unwrap_or_else(|_| "spawn.trace".to_string());
    let file = std::fs::File::create(&trace).expect("create the trace file");
    tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .init();
    let rt = dsu::Runtime::builder()
        .program("spawn")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&socket)
        .start()
        .expect("start the dsu runtime");
    let (tx, rx) = mpsc::channel(16);
    let jobs = rt.register(Jobs {
        inbox: Some(rx),
        done: 0,
    });
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    tokio_rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the TCP port");
        println!("ready {}", listener.local_addr().expect("local address").port());
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (jobs, tx) = (jobs.clone(), tx.clone());
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let cmd = line.split_whitespace().next().unwrap_or("").to_string();
                    let reply = handle(&jobs, &tx, &line)
                        .instrument(tracing::info_span!("request", cmd = %cmd))
                        .await;
                    if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}
