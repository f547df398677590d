//! The control socket's server: who may connect, binding it safely, and serving one request
//! per connection.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{encode_response, read_request, Response, READ_TIMEOUT};
use super::requests::execute;

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
