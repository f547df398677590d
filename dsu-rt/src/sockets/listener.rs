//! Named listeners and the connections accepted through them: what a hand-off passes to the
//! new process, and how it finds them again there.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

use super::fd::{dup, is_listening_tcp, lock};
use super::gate::gate;
use super::inherit::{inherited, HANDOFF_FD_ENV};

/// The TCP listener named `name`: the one this process inherited under that name (from a
/// process hand-off or systemd socket activation), or else a fresh one from `bind`. An
/// inherited descriptor of that name that is not a listening TCP socket is an error, not
/// silently replaced.
///
/// Accept through [`Listener::accept`] and serve through [`Connection`]: that is what lets a
/// hand-off pass the listener and every open connection to the new process between two
/// requests.
pub fn listener(
    name: &str,
    bind: impl FnOnce() -> io::Result<TcpListener>,
) -> io::Result<Listener> {
    // The hand-off's descriptors arrive in the runtime's start: a listener taken before it
    // would bind a second socket (or fail: the address is in use) and strand the inherited one.
    if std::env::var_os(HANDOFF_FD_ENV).is_some() {
        return Err(io::Error::other(format!(
            "listener `{name}`: this process was started by a hand-off and its runtime has not \
             started yet; start the runtime (`dsu::Runtime::builder()...start()`) before taking \
             listeners"
        )));
    }
    let taken = {
        let mut all = lock(inherited());
        all.iter()
            .position(|f| f.name == name)
            .map(|i| all.remove(i))
    };
    let inner = match taken {
        None => bind()?,
        Some(named) => {
            if !is_listening_tcp(named.fd.as_raw_fd()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the inherited descriptor named `{name}` is not a listening TCP socket; \
                         check the socket unit's FileDescriptorName= and ListenStream= settings"
                    ),
                ));
            }
            TcpListener::from(named.fd)
        }
    };
    if name.contains('\n') || name.contains('#') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("listener name {name:?}: a name cannot contain a newline or `#`"),
        ));
    }
    // Several threads may accept: readiness is only a hint, so accept must not block.
    inner.set_nonblocking(true)?;
    lock(listeners()).push(ListenerEntry {
        name: name.to_string(),
        fd: inner.as_raw_fd(),
    });
    Ok(Listener {
        name: name.to_string(),
        inner,
    })
}

/// A named TCP listener whose descriptor a hand-off passes to the new process (see
/// [`listener`]).
#[derive(Debug)]
pub struct Listener {
    name: String,
    pub(super) inner: TcpListener,
}

impl Listener {
    /// The name the listener was asked for by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    /// The underlying listener (non-blocking). Connections accepted through it directly are
    /// unknown to the runtime: a hand-off would not pass them on.
    pub fn as_tcp(&self) -> &TcpListener {
        &self.inner
    }

    /// Waits for the next connection. While a hand-off is under way it accepts nothing (new
    /// clients wait in the listen queue, which the new process inherits); if the hand-off
    /// fails it goes on here, and if it succeeds this process exits while waiting.
    pub fn accept(&self) -> io::Result<(Connection, std::net::SocketAddr)> {
        loop {
            gate().enter(self.inner.as_raw_fd())?;
            let accepted = self.inner.accept();
            let out = match accepted {
                Ok((stream, addr)) => stream.set_nonblocking(false).map(|()| {
                    let c = Connection::register(stream, &self.name, None, Vec::new());
                    (c, addr)
                }),
                Err(e) => Err(e),
            };
            gate().leave();
            match out {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// The connections the previous process had accepted from this listener and handed over
    /// with it, each with the bytes it had read but not consumed
    /// ([`Connection::take_unconsumed`]). Empty unless this process was started by a hand-off;
    /// a second call returns nothing. Serve them as freshly accepted ones: a process started
    /// by a hand-off reports ready only once every handed-over connection was taken.
    pub fn handed_over(&self) -> Vec<Connection> {
        take_handed(&self.name)
            .into_iter()
            .map(|h| {
                Connection::register(
                    TcpStream::from(h.fd),
                    &self.name,
                    Some(h.name),
                    h.unconsumed,
                )
            })
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A descriptor number is unique while it is open: this listener's entry, and no other.
        let fd = self.inner.as_raw_fd();
        lock(listeners()).retain(|l| l.fd != fd);
    }
}

/// A client connection accepted through a [`Listener`]: a `TcpStream` the runtime knows, so
/// that a hand-off can pass it to the new process while it waits between two requests.
///
/// Serve it in a loop that calls [`wait_readable`](Self::wait_readable) before each read:
///
/// ```no_run
/// # fn serve(mut conn: dsu::sockets::Connection) -> std::io::Result<()> {
/// use std::io::{Read, Write};
/// let mut pending = conn.take_unconsumed();
/// let mut buf = [0u8; 4096];
/// loop {
///     conn.wait_readable(&pending)?; // a hand-off may take the connection here
///     let n = conn.read(&mut buf)?;
///     if n == 0 { return Ok(()) }
///     pending.extend_from_slice(&buf[..n]);
///     // ... consume whole requests from `pending`, write their replies ...
/// #   pending.clear();
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    shared: Arc<ConnShared>,
    /// Counted busy in the gate: between `wait_readable` returning and the next call.
    busy: bool,
    /// Whether `shared.unconsumed` may hold bytes (saves a lock when it cannot).
    noted: bool,
    inherited: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct ConnShared {
    id: u64,
    name: String,
    listener: String,
    fd: RawFd,
    unconsumed: Mutex<Vec<u8>>,
}

impl ConnShared {
    /// Registers the connection on descriptor `fd`, so that a hand-off passes it on; the
    /// caller keeps `fd` open until [`unregister`](Self::unregister).
    pub(super) fn register(fd: RawFd, listener: &str, name: Option<String>) -> Arc<ConnShared> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // Relaxed: a unique number, nothing published with it.
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = Arc::new(ConnShared {
            id,
            name: name.unwrap_or_else(|| format!("{listener}#{id}")),
            listener: listener.to_string(),
            fd,
            unconsumed: Mutex::new(Vec::new()),
        });
        lock(connections()).push(shared.clone());
        shared
    }

    /// Unregisters it (before its descriptor is closed): a hand-off collecting connections
    /// holds this lock, so it sees the connection with its descriptor open or not at all.
    pub(super) fn unregister(&self) {
        lock(connections()).retain(|c| c.id != self.id);
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Notes the bytes read from the connection and not consumed, which a hand-off passes on.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(super) fn set_unconsumed(&self, bytes: &[u8]) {
        let mut u = lock(&self.unconsumed);
        u.clear();
        u.extend_from_slice(bytes);
    }
}

impl Connection {
    fn register(
        stream: TcpStream,
        listener: &str,
        name: Option<String>,
        inherited: Vec<u8>,
    ) -> Connection {
        let shared = ConnShared::register(stream.as_raw_fd(), listener, name);
        Connection {
            stream,
            shared,
            busy: false,
            noted: false,
            inherited,
        }
    }

    /// The connection's name (`listener#n`), kept across hand-offs.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The stream, for reading and writing (`Read` and `Write` are also implemented on the
    /// connection itself).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The bytes the previous process had read from this connection but not consumed when it
    /// handed the connection over (empty for a connection this process accepted). Put them in
    /// front of what is read next.
    pub fn take_unconsumed(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inherited)
    }

    /// Waits until the client has sent something (or closed the connection). `unconsumed` is
    /// what this process has read and not yet processed (a partial request): if a hand-off
    /// takes the connection while it waits here, those bytes go to the new process with it.
    /// While a hand-off is under way it waits; if the hand-off succeeds this process exits
    /// while waiting, and the new process serves the client.
    pub fn wait_readable(&mut self, unconsumed: &[u8]) -> io::Result<()> {
        if self.noted || !unconsumed.is_empty() {
            let mut u = lock(&self.shared.unconsumed);
            u.clear();
            u.extend_from_slice(unconsumed);
            self.noted = !unconsumed.is_empty();
        }
        if self.busy {
            self.busy = false;
            gate().leave();
        }
        gate().enter(self.stream.as_raw_fd())?;
        self.busy = true;
        Ok(())
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }
}

impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&self.stream).flush()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.unregister();
        if self.busy {
            gate().leave();
        }
    }
}

struct ListenerEntry {
    name: String,
    fd: RawFd,
}

fn listeners() -> &'static Mutex<Vec<ListenerEntry>> {
    static L: OnceLock<Mutex<Vec<ListenerEntry>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(Vec::new()))
}

fn connections() -> &'static Mutex<Vec<Arc<ConnShared>>> {
    static C: OnceLock<Mutex<Vec<Arc<ConnShared>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Vec::new()))
}

/// A connection a hand-off brought, until its listener's `handed_over` takes it.
pub(crate) struct HandedConnection {
    pub(crate) listener: String,
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    pub(crate) unconsumed: Vec<u8>,
}

/// Takes the handed-over connections of listener `name`.
pub(super) fn take_handed(name: &str) -> Vec<HandedConnection> {
    let mut all = lock(handed_connections());
    let (mine, rest) = std::mem::take(&mut *all)
        .into_iter()
        .partition(|h| h.listener == name);
    *all = rest;
    mine
}

pub(crate) fn handed_connections() -> &'static Mutex<Vec<HandedConnection>> {
    static H: OnceLock<Mutex<Vec<HandedConnection>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(Vec::new()))
}

/// What a hand-off passes: duplicates of every live listener and connection descriptor (with
/// their names), and each connection's unconsumed bytes. Call with the gate closed and idle.
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) fn snapshot() -> io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for l in lock(listeners()).iter() {
        snap.listeners.push((l.name.clone(), dup(l.fd)?));
    }
    for c in lock(connections()).iter() {
        snap.connections.push(SavedConnection {
            listener: c.listener.clone(),
            name: c.name.clone(),
            unconsumed: lock(&c.unconsumed).clone(),
        });
        snap.connection_fds.push(dup(c.fd)?);
    }
    Ok(snap)
}

/// See [`snapshot`].
#[derive(Default)]
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) struct Snapshot {
    pub(crate) listeners: Vec<(String, OwnedFd)>,
    pub(crate) connections: Vec<SavedConnection>,
    pub(crate) connection_fds: Vec<OwnedFd>,
}

/// A connection as a hand-off streams it (its descriptor travels beside).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedConnection {
    pub(crate) listener: String,
    pub(crate) name: String,
    pub(crate) unconsumed: Vec<u8>,
}
