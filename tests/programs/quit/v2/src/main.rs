//! A service that shuts down on request, for dsu's test of an update that meets a shutdown.
//!
//! `quit --port PORT --socket PATH` prints `ready PORT`. Commands: `hold MS` (keeps the worker
//! busy), `version`, `quit` (drops the dsu runtime, replies `bye`, then exits).

mod server;

use std::sync::{Arc, Mutex};

#[dsu::state]
#[derive(Default)]
pub struct Worker {
    held: u64,
}

#[dsu::component]
impl Worker {
    pub fn hold(&self, ms: u64) -> String {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        "held".to_string()
    }

    pub fn version(&self) -> String {
        "v2".to_string()
    }
}

fn main() {
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program("quit")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let worker = rt.register(Worker::default());
    let runtime = Arc::new(Mutex::new(Some(rt)));
    let ready = {
        let runtime = runtime.clone();
        move || {
            if let Some(rt) = runtime.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                rt.ready();
            }
        }
    };
    server::serve(args.port, ready, move |line| {
        let mut parts = line.split_whitespace();
        match parts.next().unwrap_or("") {
            "hold" => worker.hold(parts.next().and_then(|a| a.parse().ok()).unwrap_or(0)),
            "version" => worker.version(),
            "quit" => {
                // The shutdown a program does on its way out: it waits for an update in
                // progress and refuses new ones.
                drop(runtime.lock().unwrap_or_else(|e| e.into_inner()).take());
                std::thread::spawn(|| {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    std::process::exit(0);
                });
                "bye".to_string()
            }
            other => format!("error unknown command `{other}`"),
        }
    });
}
