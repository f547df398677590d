//! The line server (outside any component: not updatable in place, and not changed between
//! versions).

use std::io::{Read, Write};
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

/// Serves one thread per connection; prints `ready` and the port once listening. `ready` is
/// called once the listener and any handed-over connections are taken (the runtime's
/// `ready`, which commits a hand-off).
pub fn serve(
    port: u16,
    ready: impl FnOnce(),
    handler: impl Fn(&str) -> String + Send + Sync + 'static,
) {
    // Under systemd socket activation the listener named `app` is inherited, not bound; after
    // a hand-off it is the previous process's.
    let listener =
        dsu::listener("app", || TcpListener::bind(("127.0.0.1", port))).expect("the TCP listener");
    let handler = Arc::new(handler);
    for conn in listener.handed_over() {
        lines(conn, handler.clone());
    }
    ready();
    let _ = writeln!(
        std::io::stdout(),
        "ready {}",
        listener.local_addr().expect("local address").port()
    );
    loop {
        let Ok((conn, _)) = listener.accept() else { continue };
        lines(conn, handler.clone());
    }
}

/// Answers each line of `conn` on a thread of its own; between lines the connection waits
/// where a hand-off can pass it on.
fn lines(mut conn: dsu::Connection, handler: Arc<impl Fn(&str) -> String + Send + Sync + 'static>) {
    std::thread::spawn(move || {
        let mut pending = conn.take_unconsumed();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                let reply = handler(line.trim_end_matches('\r'));
                if conn.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    return;
                }
            }
            if conn.wait_readable(&pending).is_err() {
                return;
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    });
}
