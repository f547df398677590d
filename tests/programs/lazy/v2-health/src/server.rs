//! The line server (outside any component: not updatable in place, and not changed between
//! versions). It takes its port through `dsu::listener`, and between two lines a connection
//! waits in `wait_readable`, so a hand-off passes both on to the new process.

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

/// Serves one thread per connection; calls `ready` once the listener and any handed-over
/// connections are taken, then prints `ready PORT`.
pub fn serve<H>(port: u16, ready: impl FnOnce(), handler: H)
where
    H: Fn(&str) -> String + Send + Sync + 'static,
{
    let listener = dsu::listener("lazy", || TcpListener::bind(("127.0.0.1", port)))
        .expect("bind the TCP port");
    let handler = Arc::new(handler);
    for conn in listener.handed_over() {
        spawn(handler.clone(), conn);
    }
    ready();
    let port = listener.local_addr().expect("local address").port();
    // Not `println!`: after a hand-off, whoever read the first process's output may be gone.
    let _ = writeln!(std::io::stdout(), "ready {port}");
    loop {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        spawn(handler.clone(), conn);
    }
}

fn spawn<H>(handler: Arc<H>, mut conn: dsu::Connection)
where
    H: Fn(&str) -> String + Send + Sync + 'static,
{
    std::thread::spawn(move || {
        let mut pending = conn.take_unconsumed();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[..nl]).trim_end().to_string();
                pending.drain(..=nl);
                let reply = handler(&line);
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
