//! The line server (outside any component: not updatable in place, and not changed between
//! versions).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

pub struct Args {
    pub port: u16,
    pub socket: String,
}

impl Args {
    pub fn parse() -> Args {
        let mut port = 0;
        let mut socket = String::from("app.sock");
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--port" => port = it.next().and_then(|p| p.parse().ok()).expect("--port PORT"),
                "--socket" => socket = it.next().expect("--socket PATH"),
                other => panic!("unknown argument `{other}`"),
            }
        }
        Args { port, socket }
    }
}

/// Serves one thread per connection; prints `ready` and the port once listening.
pub fn serve(port: u16, handler: impl Fn(&str) -> String + Send + Sync + 'static) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the TCP port");
    println!(
        "ready {}",
        listener.local_addr().expect("local address").port()
    );
    let handler = Arc::new(handler);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handler = handler.clone();
        std::thread::spawn(move || {
            let mut out = conn.try_clone().expect("clone the connection");
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                let reply = handler(&line);
                if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
}
