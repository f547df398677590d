//! A ledger with multi-call transactions (a protocol), a registered worker thread that must not
//! be split by an update, a `prepare_to_die` hook, and a logger.
//!
//! Commands: `begin`, `write X`, `commit`, `prepared`, `splits`, `iters`, `log`, `logs`,
//! `trace`, `traces`.

mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[dsu::state]
#[derive(Default)]
pub struct Ledger {
    open: u64,
    pending: u64,
    committed: u64,
    prepared: u64,
    ticks: u64,
}

#[dsu::component]
impl Ledger {
    #[dsu::protocol(begin = "txn")]
    pub fn begin(&mut self) -> String {
        self.open += 1;
        "v1".to_string()
    }

    pub fn write(&mut self, x: u64) -> String {
        self.pending += x;
        "v1".to_string()
    }

    #[dsu::protocol(end = "txn")]
    pub fn commit(&mut self) -> String {
        self.open -= 1;
        self.committed += std::mem::take(&mut self.pending);
        "v1".to_string()
    }

    pub fn tick(&mut self) -> String {
        self.ticks += 1;
        "v1".to_string()
    }

    pub fn prepared(&self) -> u64 {
        self.prepared
    }

    pub fn note(&self) -> String {
        log::info!("note from v1");
        "v1".to_string()
    }

    pub fn trace(&self) -> String {
        tracing::info!(answer = 1, "traced from v1");
        "v1".to_string()
    }

    /// Called by the update manager before the component is updated.
    pub fn prepare_to_die(&mut self) {
        self.prepared += 1;
    }
}

/// Iterations of the worker whose two calls were answered by different versions.
static SPLITS: AtomicU64 = AtomicU64::new(0);
static ITERS: AtomicU64 = AtomicU64::new(0);

/// Keeps every log record, so tests can see records emitted by patched code.
struct Memory(Mutex<Vec<String>>);

impl log::Log for Memory {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0.lock().unwrap().push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

static LOGGER: Memory = Memory(Mutex::new(Vec::new()));

/// Keeps every line the tracing subscriber writes, for the same reason.
static TRACES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct TraceLines;

impl std::io::Write for TraceLines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        TRACES.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    log::set_logger(&LOGGER).expect("set the logger");
    log::set_max_level(log::LevelFilter::Info);
    tracing_subscriber::fmt()
        .with_writer(|| TraceLines)
        .with_ansi(false)
        .without_time()
        .init();
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let ledger = rt.register(Ledger::default());
    let worker = ledger.clone();
    std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            let _registered = dsu::register_thread();
            loop {
                // Two calls that must be answered by one version: an update that requires
                // parked threads waits for the update point below.
                let a = worker.tick();
                std::thread::sleep(std::time::Duration::from_millis(1));
                let b = worker.tick();
                if a != b {
                    SPLITS.fetch_add(1, Ordering::Relaxed);
                }
                ITERS.fetch_add(1, Ordering::Relaxed);
                dsu::update_point!();
            }
        })
        .expect("spawn the worker");
    server::serve(args.port, move |line| {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "begin" => ledger.begin(),
            "write" => ledger.write(arg.parse().unwrap_or(0)),
            "commit" => ledger.commit(),
            "prepared" => ledger.prepared().to_string(),
            "splits" => SPLITS.load(Ordering::Relaxed).to_string(),
            "iters" => ITERS.load(Ordering::Relaxed).to_string(),
            "log" => ledger.note(),
            "logs" => LOGGER.0.lock().unwrap().join("|"),
            "trace" => {
                let _request = tracing::info_span!("request", cmd = "trace").entered();
                ledger.trace()
            }
            "traces" => String::from_utf8_lossy(&TRACES.lock().unwrap()).replace('\n', "|"),
            _ => format!("error unknown command `{cmd}`"),
        }
    });
}
