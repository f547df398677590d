//! Named descriptors that outlive a process: listeners handed to a program by systemd socket
//! activation (`LISTEN_FDS`), and the transport that passes descriptors, each with its name,
//! to another process over a Unix socket (`SCM_RIGHTS`), the base of the process hand-off
//! engine (DESIGN.md section 8).
//!
//! A program asks for its listeners by name, so that the same code binds a fresh socket when it
//! starts on its own and takes over the inherited one when it was started with one:
//!
//! ```no_run
//! let redis = dsu::listener("redis", || std::net::TcpListener::bind("127.0.0.1:6379"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The transport's wire format, repeated until a frame with no descriptor:
//!
//! ```text
//! count      u32 LE      descriptors in this frame (at most MAX_FDS_PER_FRAME), SCM_RIGHTS
//!                        attached to this frame's first byte
//! names_len  u32 LE
//! names      UTF-8       the descriptors' names, each followed by '\n'
//! ```

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

/// Most descriptors sent in one frame (the kernel accepts at most 253 per message).
pub const MAX_FDS_PER_FRAME: usize = 200;
/// Longest name list accepted in one frame.
const MAX_NAMES_LEN: usize = 1 << 20;
/// The variable a hand-off starts the new process with (see `handoff.rs`).
pub(crate) const HANDOFF_FD_ENV: &str = "DSU_HANDOFF_FD";
/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// A descriptor and the name that finds it.
#[derive(Debug)]
pub struct NamedFd {
    pub name: String,
    pub fd: OwnedFd,
}

/// Sends `fds`, with their names, over `sock`; the peer receives them with [`recv_fds`].
/// Names must not contain a newline.
pub fn send_fds(sock: &UnixStream, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<()> {
    if let Some((name, _)) = fds.iter().find(|(n, _)| n.contains('\n')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor name {name:?} contains a newline"),
        ));
    }
    for chunk in fds.chunks(MAX_FDS_PER_FRAME) {
        send_frame(sock, chunk)?;
    }
    send_frame(sock, &[])
}

/// Receives the descriptors [`send_fds`] sent, in order. The descriptors are close-on-exec.
pub fn recv_fds(sock: &UnixStream) -> io::Result<Vec<NamedFd>> {
    let mut out = Vec::new();
    loop {
        let (fds, names) = recv_frame(sock)?;
        if fds.is_empty() {
            return Ok(out);
        }
        out.extend(
            names
                .into_iter()
                .zip(fds)
                .map(|(name, fd)| NamedFd { name, fd }),
        );
    }
}

fn send_frame(sock: &UnixStream, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<()> {
    let mut names = String::new();
    for (name, _) in fds {
        names.push_str(name);
        names.push('\n');
    }
    let mut frame = Vec::with_capacity(8 + names.len());
    frame.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(names.len() as u32).to_le_bytes());
    frame.extend_from_slice(names.as_bytes());
    let raw: Vec<RawFd> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes, enough for one header and
        // `raw`, and is aligned for `cmsghdr`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    // The descriptors travel with the first byte; the rest of the frame may need more writes.
    let sent = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    io::Write::write_all(&mut &*sock, &frame[sent..])
}

fn recv_frame(sock: &UnixStream) -> io::Result<(Vec<OwnedFd>, Vec<String>)> {
    let mut header = [0u8; 8];
    let payload = (MAX_FDS_PER_FRAME * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr() as *mut libc::c_void,
        iov_len: header.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let got = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of whatever arrived first, so that an error below closes them.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros walk it within
    // `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the sending process closed the descriptor channel",
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(invalid("more descriptors arrived than a frame may carry"));
    }
    (&*sock).read_exact(&mut header[got..])?;
    let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let names_len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
    if count != fds.len() {
        return Err(invalid(&format!(
            "the frame announces {count} descriptors, {} arrived",
            fds.len()
        )));
    }
    if names_len > MAX_NAMES_LEN {
        return Err(invalid(&format!("a name list of {names_len} bytes")));
    }
    let mut names = vec![0u8; names_len];
    (&*sock).read_exact(&mut names)?;
    let names = String::from_utf8(names).map_err(|_| invalid("names that are not UTF-8"))?;
    let names: Vec<String> = names.split_terminator('\n').map(str::to_string).collect();
    if names.len() != count {
        return Err(invalid(&format!(
            "{} names for {count} descriptors",
            names.len()
        )));
    }
    Ok((fds, names))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed descriptor hand-off: {what}"),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Descriptors this process inherited and nobody has taken yet.
fn inherited() -> &'static Mutex<Vec<NamedFd>> {
    static INHERITED: OnceLock<Mutex<Vec<NamedFd>>> = OnceLock::new();
    INHERITED.get_or_init(|| Mutex::new(take_systemd_fds()))
}

/// The descriptors systemd socket activation described in the environment, made
/// close-on-exec; the variables are removed so that children do not see them.
fn take_systemd_fds() -> Vec<NamedFd> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = systemd_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    let fds = match parsed {
        Ok(fds) => fds,
        Err(e) => {
            log::warn!("dsu: ignoring systemd's socket activation variables: {e}");
            return Vec::new();
        }
    };
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    fds.into_iter()
        .map(|(name, fd)| {
            // SAFETY: systemd passed `fd` to this process, and it is taken only here, once.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            NamedFd {
                name,
                // SAFETY: as above: the descriptor is open and owned by nobody else.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            }
        })
        .collect()
}

/// Reads systemd's variables: `LISTEN_PID` must be this process, `LISTEN_FDS` descriptors
/// start at 3, and `LISTEN_FDNAMES` names them (`unknown` when absent, as systemd says).
fn systemd_fds(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Vec<(String, RawFd)>, String> {
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != me {
        // Meant for another process (a parent that did not clear them).
        return Ok(Vec::new());
    }
    let count: usize = count
        .parse()
        .ok()
        .filter(|n| *n <= 4096)
        .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a descriptor count"))?;
    let names: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} descriptors, LISTEN_FDS says {count}",
            names.len()
        ));
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, SD_LISTEN_FDS_START + i as RawFd))
        .collect())
}

/// Puts `fd` among the inherited descriptors under `name`, as systemd's would be.
#[cfg(test)]
fn inherit(name: &str, fd: OwnedFd) {
    lock(inherited()).push(NamedFd {
        name: name.to_string(),
        fd,
    });
}

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
    inner: TcpListener,
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
        let mut all = lock(handed_connections());
        let mut out = Vec::new();
        let mut i = 0;
        while i < all.len() {
            if all[i].listener == self.name {
                let h = all.remove(i);
                out.push(Connection::register(
                    TcpStream::from(h.fd),
                    &self.name,
                    Some(h.name),
                    h.unconsumed,
                ));
            } else {
                i += 1;
            }
        }
        out
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
struct ConnShared {
    id: u64,
    name: String,
    listener: String,
    fd: RawFd,
    unconsumed: Mutex<Vec<u8>>,
}

impl Connection {
    fn register(
        stream: TcpStream,
        listener: &str,
        name: Option<String>,
        inherited: Vec<u8>,
    ) -> Connection {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // Relaxed: a unique number, nothing published with it.
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = Arc::new(ConnShared {
            id,
            name: name.unwrap_or_else(|| format!("{listener}#{id}")),
            listener: listener.to_string(),
            fd: stream.as_raw_fd(),
            unconsumed: Mutex::new(Vec::new()),
        });
        lock(connections()).push(shared.clone());
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
        // Unregister first: a hand-off collecting connections holds this lock, so it either
        // sees this connection with its descriptor still open or not at all.
        lock(connections()).retain(|c| c.id != self.shared.id);
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

pub(crate) fn handed_connections() -> &'static Mutex<Vec<HandedConnection>> {
    static H: OnceLock<Mutex<Vec<HandedConnection>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(Vec::new()))
}

/// Puts a descriptor a hand-off brought among the inherited ones (a listener, found by name).
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) fn inherit_named(name: String, fd: OwnedFd) {
    lock(inherited()).push(NamedFd { name, fd });
}

/// Names of inherited listeners nobody has taken.
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) fn untaken_listeners() -> Vec<String> {
    lock(inherited()).iter().map(|f| f.name.clone()).collect()
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

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; the result is owned here.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The hand-off gate of the process's sockets. While it is closed, nothing is accepted or read:
/// listeners and connections wait in [`Gate::enter`]. Closing it waits for every connection to
/// finish the request it is serving (to become idle), so that the hand-off can pass them all
/// between two requests.
pub(crate) struct Gate {
    closed: std::sync::atomic::AtomicBool,
    /// Threads past `enter` (serving a request, or accepting).
    busy: std::sync::atomic::AtomicUsize,
    m: Mutex<()>,
    cv: std::sync::Condvar,
    /// An eventfd, readable while the gate is closed: wakes the threads polling their sockets.
    wake: OwnedFd,
}

pub(crate) fn gate() -> &'static Gate {
    static G: OnceLock<Gate> = OnceLock::new();
    G.get_or_init(|| {
        // SAFETY: eventfd creates a descriptor, owned here.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(
            fd >= 0,
            "dsu: cannot create an eventfd: {}",
            io::Error::last_os_error()
        );
        Gate {
            closed: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::atomic::AtomicUsize::new(0),
            m: Mutex::new(()),
            cv: std::sync::Condvar::new(),
            // SAFETY: as above.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    })
}

impl Gate {
    /// Waits until `fd` is readable (or hung up) with the gate open, and counts the caller
    /// busy; [`leave`](Self::leave) ends that.
    pub(crate) fn enter(&self, fd: RawFd) -> io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            if self.closed.load(SeqCst) {
                self.wait_open();
                continue;
            }
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            if fds[0].revents == 0 {
                continue;
            }
            // SeqCst on both sides: either the closer sees this thread busy, or this thread
            // sees the gate closed.
            self.busy.fetch_add(1, SeqCst);
            if self.closed.load(SeqCst) {
                self.leave();
                continue;
            }
            return Ok(());
        }
    }

    /// Ends what [`enter`](Self::enter) began.
    pub(crate) fn leave(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.busy.fetch_sub(1, SeqCst);
        if self.closed.load(SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }

    fn wait_open(&self) {
        let mut g = lock(&self.m);
        while self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            g = self
                .cv
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Closes the gate: nothing more is accepted or read until [`open`](Self::open).
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes to the eventfd. (It cannot overflow: it is read back to 0 on
        // every open.)
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Waits until no thread is busy (every connection between two requests), until
    /// `deadline`; `Err(busy)` on timeout.
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn wait_idle(&self, deadline: std::time::Instant) -> Result<(), usize> {
        let mut g = lock(&self.m);
        loop {
            let busy = self.busy.load(std::sync::atomic::Ordering::SeqCst);
            if busy == 0 {
                return Ok(());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(busy);
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Opens the gate again: the waiting threads go on.
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn open(&self) {
        {
            let _g = lock(&self.m);
            let mut buf = [0u8; 8];
            // SAFETY: reads the eventfd's counter back to 0 (non-blocking).
            unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            self.closed
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        self.cv.notify_all();
    }
}

fn is_listening_tcp(fd: RawFd) -> bool {
    let opt = |name| sockopt::<libc::c_int>(fd, libc::SOL_SOCKET, name);
    opt(libc::SO_ACCEPTCONN) == Some(1)
        && opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && matches!(opt(libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
}

/// A socket option of type `T` (an integer, or a plain C struct such as `ucred`), or `None` if
/// it cannot be read or is not of that size.
pub(crate) fn sockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<T> {
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of `size_of::<T>()` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) };
    // SAFETY: the kernel wrote the whole value (its length is checked); the callers' `T`s are
    // integers and C structs, valid for any bytes.
    (rc == 0 && len as usize == std::mem::size_of::<T>()).then(|| unsafe { v.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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
}
