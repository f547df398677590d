use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::gate::*;
use super::inherit::*;
use super::listener::*;
use super::transport::*;
use std::io::Write;
use std::os::fd::AsFd;

#[test]
fn a_closed_gate_waits_for_the_request_in_progress_and_holds_the_next() {
    use std::time::{Duration, Instant};
    let l = listener("sockets-test-gate", || TcpListener::bind("127.0.0.1:0")).unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut conn, _) = l.accept().unwrap();
    assert!(conn.name().starts_with("sockets-test-gate#"));
    client.write_all(b"a").unwrap();
    conn.wait_readable(&[]).unwrap(); // serving a request now
    let g = gate();
    g.close();
    assert_eq!(
        g.wait_idle(Instant::now() + Duration::from_millis(50)),
        Err(1)
    );
    // The request ends; the connection waits for the next one with half of it read.
    let server = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).unwrap();
        conn.wait_readable(b"partial").unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).unwrap();
        b[0]
    });
    assert_eq!(
        g.wait_idle(Instant::now() + Duration::from_secs(10)),
        Ok(())
    );
    let snap = snapshot().unwrap();
    let mine: Vec<_> = snap
        .connections
        .iter()
        .filter(|c| c.listener == "sockets-test-gate")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].unconsumed, b"partial");
    assert!(snap.listeners.iter().any(|(n, _)| n == "sockets-test-gate"));
    // Readable, but the gate is closed: the connection must not be read.
    client.write_all(b"b").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!server.is_finished());
    g.open();
    assert_eq!(server.join().unwrap(), b'b');
    // Dropped connections and listeners leave the registry.
    assert!(snapshot()
        .unwrap()
        .connections
        .iter()
        .all(|c| c.listener != "sockets-test-gate"));
    drop(l);
    assert!(snapshot()
        .unwrap()
        .listeners
        .iter()
        .all(|(n, _)| n != "sockets-test-gate"));
}

#[test]
fn descriptors_arrive_with_their_names_and_still_work() {
    let (a, b) = UnixStream::pair().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
    send_fds(&a, &[("web", listener.as_fd()), ("log", pipe_w.as_fd())]).unwrap();
    drop((listener, pipe_w));
    let got = recv_fds(&b).unwrap();
    let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["web", "log"]);
    let mut got = got.into_iter();
    let web = TcpListener::from(got.next().unwrap().fd);
    assert_eq!(web.local_addr().unwrap(), addr);
    let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
    let (mut conn, _) = web.accept().unwrap();
    let mut c = client.join().unwrap();
    c.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    let mut log = std::fs::File::from(got.next().unwrap().fd);
    log.write_all(b"ok").unwrap();
    drop(log);
    let mut s = String::new();
    pipe_r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ok");
}

#[test]
fn more_descriptors_than_one_frame_holds_arrive_in_order() {
    let (a, b) = UnixStream::pair().unwrap();
    let files: Vec<std::fs::File> = (0..450)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let names: Vec<String> = (0..450).map(|i| format!("conn-{i}")).collect();
    let fds: Vec<(&str, BorrowedFd<'_>)> = names
        .iter()
        .zip(&files)
        .map(|(n, f)| (n.as_str(), f.as_fd()))
        .collect();
    let sender = std::thread::scope(|s| {
        let h = s.spawn(|| send_fds(&a, &fds));
        let got = recv_fds(&b).unwrap();
        h.join().unwrap().unwrap();
        got
    });
    assert_eq!(sender.len(), 450);
    assert!(sender.iter().zip(&names).all(|(f, n)| &f.name == n));
    // Close-on-exec, as received.
    // SAFETY: F_GETFD on an open descriptor reads its flags.
    let flags = unsafe { libc::fcntl(sender[0].fd.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
}

#[test]
fn a_closed_channel_or_a_lying_frame_is_an_error() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    assert_eq!(
        recv_fds(&b).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    // A frame that announces a descriptor it does not carry.
    let (a, b) = UnixStream::pair().unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.extend_from_slice(&2u32.to_le_bytes());
    frame.extend_from_slice(b"x\n");
    (&a).write_all(&frame).unwrap();
    let e = recv_fds(&b).unwrap_err().to_string();
    assert!(e.contains("announces 1 descriptors, 0 arrived"), "{e}");
    let (a, _b) = UnixStream::pair().unwrap();
    let f = std::fs::File::open("/dev/null").unwrap();
    assert!(send_fds(&a, &[("two\nlines", f.as_fd())]).is_err());
}

#[test]
fn systemds_variables_are_read_as_systemd_documents_them() {
    assert_eq!(systemd_fds(None, None, None, 7), Ok(Vec::new()));
    assert_eq!(
        systemd_fds(Some("8"), Some("2"), None, 7),
        Ok(Vec::new()),
        "meant for another process"
    );
    assert_eq!(
        systemd_fds(Some("7"), Some("2"), Some("redis:admin"), 7),
        Ok(vec![("redis".to_string(), 3), ("admin".to_string(), 4)])
    );
    assert_eq!(
        systemd_fds(Some("7"), Some("1"), None, 7),
        Ok(vec![("unknown".to_string(), 3)])
    );
    assert!(systemd_fds(Some("7"), Some("2"), Some("one"), 7)
        .unwrap_err()
        .contains("names 1 descriptors"));
    assert!(systemd_fds(Some("x"), Some("1"), None, 7).is_err());
    assert!(systemd_fds(Some("7"), Some("-1"), None, 7).is_err());
}

#[test]
fn a_named_listener_is_taken_over_once_and_checked() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    inherit("sockets-test-web", OwnedFd::from(l));
    let mut fresh = false;
    let got = listener("sockets-test-web", || {
        fresh = true;
        TcpListener::bind("127.0.0.1:0")
    })
    .unwrap();
    assert!(!fresh);
    assert_eq!(got.local_addr().unwrap(), addr);
    // Taken: the next request for that name binds.
    let again = listener("sockets-test-web", || TcpListener::bind("127.0.0.1:0")).unwrap();
    assert_ne!(again.local_addr().unwrap(), addr);
    // An inherited descriptor that is no listener is refused, not replaced.
    inherit(
        "sockets-test-file",
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
    );
    let e = listener("sockets-test-file", || TcpListener::bind("127.0.0.1:0")).unwrap_err();
    assert!(e.to_string().contains("not a listening TCP socket"), "{e}");
}
