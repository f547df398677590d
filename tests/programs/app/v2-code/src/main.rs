//! A small service used by dsu's end-to-end tests: components behind a line protocol on TCP.
//!
//! `app --port PORT --socket PATH` prints `ready` once it accepts connections. Commands (one
//! per line, one reply line each): `add K`, `get`, `version`, `ops`, `set K V`, `lookup K`,
//! `put K V`, `total`, `hold MS`, `len`, `fresh K`.

mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A static initialiser (as the `ctor` crate makes): it runs when the patch library is opened,
/// and writes the pid to `$APP_INIT_MARKER` if set, for the test that a refused patch runs no
/// code.
#[used]
#[link_section = ".init_array"]
static INIT_MARKER: extern "C" fn() = {
    extern "C" fn mark() {
        if let Some(path) = std::env::var_os("APP_INIT_MARKER") {
            let _ = std::fs::write(path, std::process::id().to_string());
        }
    }
    mark
};

/// Incremented by every `add`: a global that must survive updates.
#[dsu::global]
static TOTAL: AtomicU64 = AtomicU64::new(0);

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        TOTAL.fetch_add(k, Ordering::Relaxed);
        self.n
    }

    pub fn get(&self) -> u64 {
        self.n
    }

    pub fn version(&self) -> String {
        format!("v2 total={}", TOTAL.load(Ordering::Relaxed))
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Store {
    map: HashMap<String, String>,
}

#[dsu::component]
impl Store {
    pub fn set(&mut self, k: String, v: String) {
        self.map.insert(k, v);
    }

    pub fn lookup(&self, k: &str) -> Option<String> {
        self.map.get(k).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Stores through `Store` and counts through `Counter`: a call chain through two components.
#[dsu::state]
pub struct Front {
    store: dsu::Handle<Store>,
    counter: dsu::Handle<Counter>,
}

#[dsu::component]
impl Front {
    pub fn put(&self, k: String, v: String) -> String {
        self.store.set(k.clone(), v);
        let n = self.counter.add(1);
        format!("stored {k} #{n}")
    }
}

/// A component that can be kept busy on purpose.
#[dsu::state]
#[derive(Default)]
pub struct Slow {
    holds: u64,
}

#[dsu::component]
impl Slow {
    pub fn hold(&self, ms: u64) -> String {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        "held".to_string()
    }
}

pub struct App {
    pub counter: dsu::Handle<Counter>,
    pub store: dsu::Handle<Store>,
    pub front: dsu::Handle<Front>,
    pub slow: dsu::Handle<Slow>,
}

impl App {
    fn handle(&self, line: &str) -> String {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let a = parts.next().unwrap_or("");
        let b = parts.next().unwrap_or("");
        match cmd {
            "add" => self.counter.add(a.parse().unwrap_or(1)).to_string(),
            "get" => self.counter.get().to_string(),
            "version" => self.counter.version(),
            "set" => {
                self.store.set(a.to_string(), b.to_string());
                "ok".to_string()
            }
            "lookup" => self.store.lookup(a).unwrap_or_else(|| "(nil)".to_string()),
            "len" => self.store.len().to_string(),
            "put" => self.front.put(a.to_string(), b.to_string()),
            "total" => TOTAL.load(Ordering::Relaxed).to_string(),
            "hold" => self.slow.hold(a.parse().unwrap_or(0)),
            // Registers a new counter from the base's code (also after an update).
            "fresh" => {
                let c = dsu::register(Counter::default());
                c.add(a.parse().unwrap_or(0));
                format!("{} {}", c.add(1), c.version())
            }
            _ => format!("error unknown command `{cmd}`"),
        }
    }
}

fn main() {
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program("app")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let counter = rt.register(Counter::default());
    let store = rt.register(Store::default());
    let front = rt.register(Front {
        store: store.clone(),
        counter: counter.clone(),
    });
    let slow = rt.register(Slow::default());
    let app = App {
        counter,
        store,
        front,
        slow,
    };
    server::serve(args.port, move |line| app.handle(line));
}
