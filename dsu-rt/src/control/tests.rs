use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::protocol::*;
use super::socket::*;

/// Serves `access` on a fresh socket and sends one status request.
fn status_as(access: Access) -> Response {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = bind(&path, &access).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || serve(listener, stop, access));
    request(&path, &Request::Status).unwrap()
}

#[test]
fn only_the_owner_and_listed_uids_may_use_the_socket() {
    let me = Access::new(Vec::new()).owner;
    // The peer is this process: its uid is checked against the one the server runs as.
    let ok = status_as(Access {
        owner: me,
        allowed: Vec::new(),
    });
    assert!(ok.ok && ok.status.is_some(), "{ok:?}");
    let refused = status_as(Access {
        owner: me.wrapping_add(1),
        allowed: Vec::new(),
    });
    assert!(!refused.ok && refused.status.is_none());
    let e = refused.error.unwrap();
    assert!(
        e.contains(&format!("uid {me} may not control this process")),
        "{e}"
    );
    let listed = status_as(Access {
        owner: me.wrapping_add(1),
        allowed: vec![me],
    });
    assert!(listed.ok, "{listed:?}");
}

#[test]
fn stalled_clients_cannot_take_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let access = Access::new(Vec::new());
    let listener = bind(&path, &access).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || serve(listener, stop, access));
    let stalled: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // Wait until the server has accepted them all, then one more is turned away at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let busy = loop {
        let r = request(&path, &Request::Status).unwrap();
        if !r.ok || std::time::Instant::now() > deadline {
            break r;
        }
    };
    assert!(busy.error.unwrap_or_default().contains("busy"));
    // The stalled clients give up; the server serves again.
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !request(&path, &Request::Status).unwrap().ok {
        assert!(std::time::Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_socket_is_private_and_its_directory_must_be_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let private = Access::new(Vec::new());
    drop(bind(&path, &private).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Other uids allowed: they must be able to connect; the peer check decides the rest.
    let shared = dir.path().join("shared.sock");
    drop(bind(&shared, &Access::new(vec![12345])).unwrap());
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = bind(&open.join("c.sock"), &private)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("others may write to it (mode 777)") && e.contains("refusing"),
        "{e}"
    );
    assert!(!open.join("c.sock").exists());
}

#[test]
fn oversized_and_malformed_requests_get_an_error_not_a_crash() {
    let big = vec![b'x'; MAX_REQUEST as usize + 10];
    assert!(read_request(&big[..]).unwrap_err().contains("larger than"));
    assert!(read_request(&b"{\"op\":\"nope\"}\n"[..])
        .unwrap_err()
        .contains("malformed request"));
    assert!(read_request(&b"\xff\xfe\n"[..])
        .unwrap_err()
        .contains("malformed request"));
    assert!(read_request(&b""[..]).unwrap().is_none());
    assert!(matches!(
        read_request(&b"{\"op\":\"status\"}\n"[..]),
        Ok(Some(Request::Status))
    ));
}
