//! The control socket: a Unix domain socket (mode 0600) taking one JSON request per connection.
//!
//! ```text
//! -> {"op":"apply","package":"/abs/path/p.dsu","timeout_ms":5000}
//! <- {"ok":true,"report":{...UpdateRecord...}}
//! -> {"op":"status"}
//! <- {"ok":true,"status":{...}}
//! -> {"op":"commit","id":3}
//! ```
//! One line each way. Requests are bounded in size; a malformed request gets an error reply.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manager::manager;
use crate::package::policy::Policy;
use crate::package::Package;
use crate::update::record::{ApplyOptions, Status, UpdateRecord};

/// Version of the control protocol.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Apply the package at `package` (a path the process can read).
    Apply {
        package: PathBuf,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        policy: Option<Policy>,
    },
    /// Apply a staged update.
    Commit {
        id: u64,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The running version, components and update history.
    Status,
}

/// A reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<UpdateRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            report: None,
            status: None,
        }
    }
}

/// Who may use the control socket, besides the file mode: the peer's uid (from
/// `SO_PEERCRED`) must be the process's effective uid or one listed here.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    /// The process's effective uid.
    pub owner: u32,
    /// Other uids allowed to connect (`RuntimeBuilder::control_allow_uid`).
    pub allowed: Vec<u32>,
}

impl Access {
    pub(crate) fn new(allowed: Vec<u32>) -> Access {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = unsafe { libc::geteuid() };
        Access { owner, allowed }
    }

    /// `Ok` when `peer` may send requests; otherwise the refusal to send back.
    fn check(&self, peer: Option<u32>) -> Result<(), String> {
        match peer {
            Some(uid) if uid == self.owner || self.allowed.contains(&uid) => Ok(()),
            Some(uid) => Err(format!(
                "permission denied: uid {uid} may not control this process (it runs as uid {}); \
                 run the command as that user, or let the program allow the uid with \
                 `RuntimeBuilder::control_allow_uid`",
                self.owner
            )),
            None => Err("permission denied: the peer's credentials cannot be read".into()),
        }
    }
}

/// The uid of the process at the other end of `conn`.
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    crate::sockets::sockopt::<libc::ucred>(conn.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED)
        .map(|c| c.uid)
}

/// Creates the socket. Its directory must belong to this process's user and not be writable by
/// others (so nobody else can replace the socket). The socket is made mode 0600, or 0666 when
/// other uids are allowed (connecting needs write permission on the file; the peer check then
/// decides who is served).
pub(crate) fn bind(path: &Path, access: &Access) -> Result<UnixListener, crate::error::Error> {
    let socket_err = |source| crate::error::Error::Socket {
        path: path.to_path_buf(),
        source,
    };
    check_directory(path)?;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(crate::error::Error::SocketInUse(path.to_path_buf()));
        }
        // A stale socket from a process that is gone.
        std::fs::remove_file(path).map_err(socket_err)?;
    }
    let listener = UnixListener::bind(path).map_err(socket_err)?;
    let mode = if access.allowed.is_empty() {
        0o600
    } else {
        0o666
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(socket_err)?;
    Ok(listener)
}

fn check_directory(path: &Path) -> Result<(), crate::error::Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let meta = std::fs::metadata(&dir).map_err(|source| crate::error::Error::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let problem = if meta.uid() != me {
        Some(format!(
            "it belongs to uid {}, not to this process's uid {me}",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(crate::error::Error::UnsafeSocketDir { dir, problem }),
    }
}

/// Runs the server until `stop` is set (checked between connections).
pub(crate) fn serve(listener: UnixListener, stop: Arc<AtomicBool>, access: Access) {
    let access = Arc::new(access);
    // Control connections open now.
    let open = Arc::new(AtomicUsize::new(0));
    use std::os::fd::AsRawFd;
    crate::handoff::set_control_socket(listener.as_raw_fd());
    loop {
        // Through the sockets' hand-off gate: during a hand-off nothing is accepted (the new
        // process may take the waiting clients), and a process started by a hand-off accepts
        // only once it is committed.
        if crate::sockets::gate().enter(listener.as_raw_fd()).is_err() {
            continue;
        }
        let conn = listener.accept();
        crate::sockets::gate().leave();
        // Relaxed: a shutdown flag; the runtime's drop connects once to wake this loop.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok((conn, _)) = conn else { continue };
        // Relaxed: a bound on threads, not a synchronisation.
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = (&conn).write_all(&encode_response(&Response::error(format!(
                "busy: {MAX_CONNECTIONS} control connections are open; try again"
            ))));
            continue;
        }
        let (access, open2) = (access.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("dsu-control".into())
            .spawn(move || {
                handle(conn, &access);
                open2.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Most control connections served at once (each has a thread); more are told to retry.
pub const MAX_CONNECTIONS: usize = 32;
/// Requests being executed (not those still being read): a shutdown waits for them so that
/// each gets its reply.
static EXECUTING: AtomicUsize = AtomicUsize::new(0);

struct Executing;

impl Executing {
    fn start() -> Executing {
        // SeqCst: either the shutdown sees this request, or the request sees the shutdown.
        EXECUTING.fetch_add(1, Ordering::SeqCst);
        Executing
    }
}

impl Drop for Executing {
    fn drop(&mut self) {
        // SeqCst: as in `start`.
        EXECUTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (at most `limit`) until no request is being executed; `false` if some still are.
pub(crate) fn wait_for_requests(limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    // SeqCst: as in `Executing::start`.
    while EXECUTING.load(Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one request line (at most [`MAX_REQUEST`] bytes) and decodes it. `Ok(None)`: the
/// client closed the connection without sending anything. `Err`: the reply to send.
pub fn read_request(conn: impl Read) -> Result<Option<Request>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(conn.take(MAX_REQUEST + 1));
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => Ok(None),
        Ok(_) if line.len() as u64 > MAX_REQUEST => {
            Err(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => decode_request(&line).map(Some),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
            "no complete request within {} s; send one JSON object on one line, ending in a \
             newline",
            READ_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("cannot read the request: {e}")),
    }
}

/// Decodes one request (a JSON object, optionally ending in a newline).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("malformed request: {e}"))?;
    serde_json::from_str::<Request>(text).map_err(|e| format!("malformed request: {e}"))
}

/// Encodes a reply as the line sent back.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"error\":\"cannot encode the reply: {e}\"}}").into_bytes()
    });
    out.push(b'\n');
    out
}

fn handle(conn: UnixStream, access: &Access) {
    let response = match access.check(peer_uid(&conn)) {
        Err(refusal) => {
            log::warn!("dsu: control connection refused: {refusal}");
            Response::error(refusal)
        }
        Ok(()) => {
            let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
            match read_request(&conn) {
                Ok(None) => return,
                Ok(Some(req)) => {
                    let _executing = Executing::start();
                    execute(req)
                }
                Err(e) => Response::error(e),
            }
        }
    };
    let _ = conn.set_write_timeout(Some(READ_TIMEOUT));
    let _ = (&conn).write_all(&encode_response(&response));
    // A committed hand-off: the initiator has its answer, the new process serves.
    crate::handoff::exit_if_superseded();
}

fn execute(req: Request) -> Response {
    let manager = manager();
    match req {
        Request::Status => Response {
            ok: true,
            error: None,
            report: None,
            status: Some(manager.status()),
        },
        Request::Apply {
            package,
            timeout_ms,
            policy,
        } => match Package::read(&package) {
            Err(e) => {
                // Refused before anything was opened; kept in the history like every refusal.
                let rec = manager.refuse_unreadable(&package, e.to_string());
                Response {
                    ok: true,
                    error: None,
                    report: Some(rec),
                    status: None,
                }
            }
            Ok(pkg) => {
                let report = manager.apply(pkg, &ApplyOptions { timeout_ms, policy });
                Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                }
            }
        },
        Request::Commit { id, timeout_ms } => {
            match manager.commit_staged(
                id,
                &ApplyOptions {
                    timeout_ms,
                    policy: None,
                },
            ) {
                Ok(report) => Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                },
                Err(e) => Response::error(e),
            }
        }
    }
}

/// Sends one request to the process behind `socket` and waits for its reply.
pub fn request(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let conn = UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the control socket {}: {e} (is the process running with \
                 this socket?)",
                socket.display()
            ),
        )
    })?;
    let mut body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    body.push(b'\n');
    (&conn).write_all(&body)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the process closed the control connection without replying",
        ));
    }
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed reply from the process: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
