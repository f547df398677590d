//! The process hand-off engine (DESIGN.md section 8): for updates that cannot be applied inside
//! the running process, the new executable is started, receives the listening sockets, the
//! open connections and the state, and replaces the old process once it reports ready.
//!
//! The old process (the manager, `Manager::handoff`) closes the sockets' gate (every
//! connection finishes the request it is serving), holds every component at its gate as an
//! in-place update does, serializes the state, starts the new executable with one end of a
//! Unix socket pair in `DSU_HANDOFF_FD`, and sends over it:
//!
//! ```text
//! descriptors  sockets::send_fds frames: "L name" listeners, "C name" connections,
//!              "K" the control socket
//! stream_len   u64 LE
//! stream       MessagePack `Stream`: format, program, version, history, every component
//!                        instance's and global's state (itself MessagePack, through the type's
//!                        serde traits), each connection's unconsumed bytes
//! ```
//!
//! The new process takes all of it in `RuntimeBuilder::start`. `register` replaces the value
//! `main` passes with the streamed state: read directly when the serialized form is the new
//! type's (same schema), or read as the old type and converted by the generated transfer the
//! hand-off build carries, the same code an in-place update runs. `Runtime::ready` then checks
//! that every streamed state, listener and connection was taken, writes `ready`, and waits for
//! `commit` (with the old process's record of the update); only then do its sockets open. The
//! old process exits after answering the initiator. If the new process reports a failure,
//! exits, or is not ready in time, the old one kills it, releases its components and sockets,
//! and serves on as if nothing happened.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::abi::artifact::{COMPONENTS, GLOBALS, GLOBAL_TRANSFERS, TRANSFERS};
use crate::abi::desc::{payload_message, GlobalDesc, StateLayout};
use crate::call::incoming;
use crate::call::thread::lock;
use crate::manager::UpdateRecord;
use crate::sockets::{self, SavedConnection};

/// The variable that tells a process it was started by a hand-off (the descriptor number of
/// its end of the channel).
pub const FD_ENV: &str = sockets::HANDOFF_FD_ENV;
/// Version of the stream format.
pub(crate) const FORMAT: u32 = 1;
/// How long a new process has to report ready when the package does not say.
pub(crate) const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptor name of the control socket.
const CONTROL: &str = "K";

/// Everything the old process passes besides descriptors.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stream {
    pub(crate) format: u32,
    pub(crate) program: String,
    pub(crate) version: String,
    pub(crate) pid: u32,
    pub(crate) components: Vec<SavedState>,
    pub(crate) globals: Vec<SavedState>,
    pub(crate) connections: Vec<SavedConnection>,
    pub(crate) history: Vec<UpdateRecord>,
    pub(crate) next_id: u64,
}

/// One component instance's or global's state.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct SavedState {
    /// The component's (or global's) id.
    pub(crate) id: String,
    /// Which instance of the component, in registration order.
    pub(crate) instance: usize,
    /// The state type's id and schema fingerprint in the old process.
    pub(crate) state: String,
    pub(crate) schema: u64,
    /// The serialized state; `None` for a `rebuild` state, which the new `main` builds.
    #[serde(with = "bytes_opt")]
    pub(crate) bytes: Option<Vec<u8>>,
}

/// Byte strings as MessagePack byte strings (not arrays of integers).
mod bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }

    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);
    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// Serializes the value behind `p` (a `*const T`) for a hand-off.
///
/// # Safety
/// `p` must point at a live `T`.
pub unsafe fn save_state<T: Serialize>(p: *const ()) -> Result<Vec<u8>, String> {
    // SAFETY: caller's contract.
    let v = unsafe { &*(p as *const T) };
    let mut out = Vec::new();
    encode(v, &mut out)?;
    Ok(out)
}

/// The stream's format: MessagePack with struct fields by name. Self-describing, so a value
/// of another shape than the reader's type is an error ("missing field `x`"), not garbage; and
/// the fastest such format measured for kvstore's keyspace (against CBOR with ciborium: 2.3x
/// to read, 1.6x to write).
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    v.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(b).map_err(|e| match e {
        rmp_serde::decode::Error::Syntax(msg) => msg,
        e => e.to_string(),
    })
}

/// Deserializes a boxed `T` written by [`save_state`]; returns the box's pointer.
pub fn load_state<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<*mut (), String> {
    let v: T = decode(b)?;
    Ok(Box::into_raw(Box::new(v)) as *mut ())
}

/// Runs `f`, turning a panic into an error; both kinds of failure say `what` was being done.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(p) => Err(format!("{what} panicked: {}", payload_message(&*p))),
    }
}

// ---------------------------------------------------------------------------------------------
// The old process's side.

/// The new process, started and fed, before it is told to commit.
pub(crate) struct Successor {
    child: Child,
    chan: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Starts `exe` with this process's arguments and environment. It runs up to its runtime's
/// start, where it waits for [`Successor::feed`]: starting it before the service pauses keeps
/// the exec and the program's own early start-up out of the pause.
pub(crate) fn spawn_successor(exe: &Path) -> Result<Successor, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot create the hand-off channel: {e}"))?;
    // The child's end must survive exec: a fresh duplicate without close-on-exec, closed here
    // as soon as the child has it.
    // SAFETY: F_DUPFD duplicates an open descriptor; the result is owned below.
    let raw = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD, 3) };
    if raw < 0 {
        return Err(format!(
            "cannot pass the hand-off channel: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let inheritable = unsafe { OwnedFd::from_raw_fd(raw) };
    drop(theirs);
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(FD_ENV, raw.to_string())
        .spawn();
    drop(inheritable);
    let child =
        child.map_err(|e| format!("cannot start the new version {}: {e}", exe.display()))?;
    let reader = match ours.try_clone() {
        Ok(r) => BufReader::new(r),
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot use the hand-off channel: {e}"));
        }
    };
    Ok(Successor {
        child,
        reader,
        chan: ours,
    })
}

impl Successor {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Passes the sockets and the state, and waits until `ready_timeout` for the new process to
    /// report ready. On any failure the new process is killed and reaped, and the reason
    /// returned.
    pub(crate) fn feed(
        &mut self,
        stream: &[u8],
        snap: sockets::Snapshot,
        control: Option<RawFd>,
        ready_timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + ready_timeout;
        let r = self.feed_until(stream, snap, control, deadline, ready_timeout);
        if r.is_err() {
            self.kill();
        }
        r
    }

    fn feed_until(
        &mut self,
        stream: &[u8],
        snap: sockets::Snapshot,
        control: Option<RawFd>,
        deadline: Instant,
        ready_timeout: Duration,
    ) -> Result<(), String> {
        let control = control.map(|fd| {
            // SAFETY: the control listener stays open for the rest of this process.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        });
        let mut names: Vec<String> = Vec::new();
        let mut fds = Vec::new();
        for (name, fd) in &snap.listeners {
            names.push(format!("L {name}"));
            fds.push(fd.as_fd());
        }
        for (c, fd) in snap.connections.iter().zip(&snap.connection_fds) {
            names.push(format!("C {}", c.name));
            fds.push(fd.as_fd());
        }
        if let Some(fd) = control {
            names.push(CONTROL.to_string());
            fds.push(fd);
        }
        let pairs: Vec<(&str, std::os::fd::BorrowedFd<'_>)> =
            names.iter().map(String::as_str).zip(fds).collect();
        // A write to a child that died fails (EPIPE) instead of blocking forever; a child that
        // lives but does not read is bounded by the ready timeout.
        let _ = self.chan.set_write_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        if let Err(e) = sockets::send_fds(&self.chan, &pairs) {
            return Err(self.lost(&format!("passing the sockets failed: {e}")));
        }
        let mut w = &self.chan;
        if let Err(e) = w
            .write_all(&(stream.len() as u64).to_le_bytes())
            .and_then(|()| w.write_all(stream))
        {
            return Err(self.lost(&format!("streaming the state failed: {e}")));
        }
        let late = format!(
            "the new process (pid {}) did not report ready within {} ms; it was killed",
            self.child.id(),
            ready_timeout.as_millis()
        );
        // Kept across timeouts: a line that arrives in pieces is not lost between two reads.
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late);
            }
            let _ = self.reader.get_ref().set_read_timeout(Some(left));
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(self.lost("it closed the hand-off channel")),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(self.lost(&format!("reading its answer failed: {e}"))),
            }
            let line = line.trim_end();
            if line == "ready" {
                // The kernel rounds a receive timeout up to its clock tick (4-10 ms), so a read
                // may return a `ready` that came after the deadline: that is too late all the same.
                return if Instant::now() > deadline {
                    Err(late)
                } else {
                    Ok(())
                };
            }
            if let Some(reason) = line.strip_prefix("failed: ") {
                return Err(format!("the new process failed: {reason}"));
            }
            return Err(format!(
                "the new process said {line:?} instead of reporting ready"
            ));
        }
    }

    /// Why the channel broke: the child's exit status if it has exited.
    fn lost(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!(
                    "the new process (pid {}) exited ({status}) before it reported ready ({what})",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        format!(
            "the hand-off channel to the new process (pid {}) broke: {what}",
            self.child.id()
        )
    }

    /// Tells the new process to go on serving; `record` is the update's record, appended to
    /// its history. An error means it did not get the message: it must be killed.
    pub(crate) fn commit(&mut self, record: &UpdateRecord) -> Result<(), String> {
        let json = serde_json::to_string(record).map_err(|e| e.to_string())?;
        let mut w = &self.chan;
        w.write_all(format!("commit {json}\n").as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| format!("the new process did not take the commit: {e}"))?;
        // It acknowledges once its sockets are open, so that this process exits only then.
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.trim_end() == "serving" => Ok(()),
            _ => Err("the new process did not confirm the commit".to_string()),
        }
    }

    /// Kills and reaps the new process.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the process that replaced this one (0: not replaced).
static SUPERSEDED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Marks this process as replaced by a committed hand-off: it exits once the initiator has
/// its answer (`exit_if_superseded`), or after a short grace when the update was applied
/// in-process and nobody waits for an answer. Its sockets and components stay held until then,
/// and later updates are refused.
pub(crate) fn superseded(new_pid: u32) {
    SUPERSEDED.store(new_pid.max(1), std::sync::atomic::Ordering::SeqCst);
    let _ = std::thread::Builder::new()
        .name("dsu-superseded".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            std::process::exit(0);
        });
}

/// The process that replaced this one, if a hand-off committed.
pub(crate) fn superseded_by() -> Option<u32> {
    match SUPERSEDED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        pid => Some(pid),
    }
}

/// Exits if a hand-off has replaced this process (see [`superseded`]).
pub(crate) fn exit_if_superseded() {
    if superseded_by().is_some() {
        std::process::exit(0);
    }
}

/// The control listener's descriptor (-1 when none), passed on by a hand-off.
static CONTROL_SOCKET: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Called by the control server once it listens.
pub(crate) fn set_control_socket(fd: RawFd) {
    // Relaxed: set once, before any update can run.
    CONTROL_SOCKET.store(fd, std::sync::atomic::Ordering::Relaxed);
}

/// The control listener's descriptor, if the runtime has one.
pub(crate) fn control_socket() -> Option<RawFd> {
    // Relaxed: as above.
    let fd = CONTROL_SOCKET.load(std::sync::atomic::Ordering::Relaxed);
    (fd >= 0).then_some(fd)
}

// ---------------------------------------------------------------------------------------------
// The new process's side.

/// What a process started by a hand-off received, until its program has taken it.
struct Incoming {
    chan: Mutex<Option<UnixStream>>,
    /// Streamed component states not yet claimed, by (id, instance).
    components: Mutex<HashMap<(String, usize), SavedState>>,
    /// Instances registered so far, per component id.
    instances: Mutex<HashMap<String, usize>>,
    globals: Mutex<HashMap<String, SavedState>>,
}

fn incoming() -> &'static OnceLock<Incoming> {
    static IN: OnceLock<Incoming> = OnceLock::new();
    &IN
}

/// Whether this process was started by a hand-off and has not yet been told to commit.
pub(crate) fn is_successor() -> bool {
    incoming().get().is_some()
}

/// Reports a failure to the old process (which kills this one and serves on) and exits.
pub(crate) fn fail(reason: &str) -> ! {
    log::error!("dsu: hand-off failed: {reason}");
    eprintln!("dsu: hand-off failed: {reason}");
    if let Some(inc) = incoming().get() {
        if let Some(chan) = lock(&inc.chan).as_mut() {
            let one_line = reason.replace('\n', " ");
            let _ = chan.write_all(format!("failed: {one_line}\n").as_bytes());
        }
    }
    std::process::exit(70)
}

/// Called by `RuntimeBuilder::start`: if this process was started by a hand-off, takes the
/// descriptors and the stream. Returns the control socket's descriptor (if one came) and the
/// stream's history to adopt. A malformed hand-off is reported to the old process, and this
/// process exits.
pub(crate) fn receive() -> Option<(Option<OwnedFd>, Stream)> {
    let raw = std::env::var(FD_ENV).ok()?;
    std::env::remove_var(FD_ENV);
    let fd: RawFd = match raw.parse() {
        Ok(fd) if fd >= 0 => fd,
        _ => {
            eprintln!("dsu: ignoring {FD_ENV}={raw:?}: not a descriptor number");
            return None;
        }
    };
    // Everything waits until the old process says commit.
    sockets::gate().close();
    // SAFETY: the old process passed this descriptor for this purpose; it is taken once.
    let chan = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: F_SETFD on the descriptor just taken: children must not inherit it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let inc = Incoming {
        chan: Mutex::new(chan.try_clone().ok()),
        components: Mutex::new(HashMap::new()),
        instances: Mutex::new(HashMap::new()),
        globals: Mutex::new(HashMap::new()),
    };
    let _ = incoming().set(inc);
    incoming::install(incoming::Incoming {
        component: take_component,
        global: take_global,
    });
    let got = (|| -> Result<_, String> {
        let fds = sockets::recv_fds(&chan).map_err(|e| format!("receiving the sockets: {e}"))?;
        let mut len = [0u8; 8];
        (&chan)
            .read_exact(&mut len)
            .map_err(|e| format!("receiving the state: {e}"))?;
        let len = u64::from_le_bytes(len) as usize;
        let mut bytes = vec![0u8; len];
        (&chan)
            .read_exact(&mut bytes)
            .map_err(|e| format!("receiving the state ({len} bytes): {e}"))?;
        let stream: Stream =
            decode(&bytes).map_err(|e| format!("the state stream is unreadable: {e}"))?;
        Ok((fds, stream))
    })();
    let (fds, stream) = match got {
        Ok(g) => g,
        Err(e) => fail(&e),
    };
    if stream.format != FORMAT {
        fail(&format!(
            "the old process streams format {}, this version reads format {FORMAT}",
            stream.format
        ));
    }
    let mut unconsumed: HashMap<String, SavedConnection> = stream
        .connections
        .iter()
        .map(|c| (c.name.clone(), c.clone()))
        .collect();
    let mut control = None;
    for f in fds {
        if let Some(name) = f.name.strip_prefix("L ") {
            sockets::inherit_named(name.to_string(), f.fd);
        } else if let Some(name) = f.name.strip_prefix("C ") {
            let Some(c) = unconsumed.remove(name) else {
                fail(&format!("connection `{name}` came without its description"));
            };
            lock(sockets::handed_connections()).push(sockets::HandedConnection {
                listener: c.listener,
                name: c.name,
                fd: f.fd,
                unconsumed: c.unconsumed,
            });
        } else if f.name == CONTROL {
            control = Some(f.fd);
        } else {
            fail(&format!("an unexpected descriptor named {:?}", f.name));
        }
    }
    let inc = incoming().get().expect("set above");
    *lock(&inc.components) = stream
        .components
        .iter()
        .filter(|s| s.bytes.is_some())
        .map(|s| ((s.id.clone(), s.instance), s.clone()))
        .collect();
    *lock(&inc.globals) = stream
        .globals
        .iter()
        .filter(|s| s.bytes.is_some())
        .map(|s| (s.id.clone(), s.clone()))
        .collect();
    Some((control, stream))
}

/// Reads a streamed state of the type `new` describes: directly when the serialized form is
/// `new`'s own, or as the old type and through the transfer this binary carries (the one
/// `cargo dsu diff` generated, or a `#[dsu::transfer]`).
fn read_state(what: &str, saved: &SavedState, new: &'static StateLayout) -> *mut () {
    let bytes = saved
        .bytes
        .as_deref()
        .expect("only streamed states are kept");
    // A transfer from the streamed form comes first: `cargo dsu diff` generates one whenever
    // the type changed, also deep inside (a field's type's definition), which the schema
    // fingerprint of the outer type alone does not show.
    let transfer = TRANSFERS.iter().find(|t| {
        t.new.fingerprint() == new.fingerprint()
            && t.old.schema() == saved.schema
            && t.old.load.is_some()
    });
    if let Some(t) = transfer {
        let load = t.old.load.expect("checked");
        let old = guarded(&format!("reading the old state of {what}"), || load(bytes))
            .unwrap_or_else(|e| fail(&e));
        // SAFETY: `old` is a box of the transfer's old type, just read.
        return match unsafe { (t.transfer)(old) } {
            Ok(new) => {
                // SAFETY: the transfer succeeded; the old box is released exactly once.
                unsafe { (t.release_old)(old) };
                new
            }
            Err(f) => fail(&format!("the state transfer of {what} {f}")),
        };
    }
    if new.schema() != saved.schema {
        fail(&format!(
            "{what}: the running process's state type `{}` is not this version's `{}` and this \
             executable carries no transfer from it; build the new version with `cargo dsu diff \
             --engine handoff OLD NEW`, which generates the transfer",
            saved.state,
            new.id()
        ));
    }
    let Some(load) = new.load else {
        fail(&format!(
            "{what}: the old process streamed its state, but this version's `{}` is \
             `#[dsu::state(rebuild)]`",
            new.id()
        ));
    };
    guarded(&format!("reading the state of {what}"), || load(bytes)).unwrap_or_else(|e| fail(&e))
}

/// Called by `register`: the streamed state of the next instance of component `id`, whose
/// state type `layout` describes, as a box of that type; `None` when nothing was streamed for
/// it (not a hand-off, a `rebuild` state, or a new instance).
pub(crate) fn take_component(id: &str, layout: &'static StateLayout) -> Option<*mut ()> {
    let inc = incoming().get()?;
    let instance = {
        let mut n = lock(&inc.instances);
        let c = n.entry(id.to_string()).or_insert(0);
        *c += 1;
        *c - 1
    };
    let saved = lock(&inc.components).remove(&(id.to_string(), instance))?;
    Some(read_state(
        &format!("component `{id}` (instance {instance})"),
        &saved,
        layout,
    ))
}

/// Called when a global is first resolved: its streamed value, as a box of its type.
pub(crate) fn take_global(desc: &'static GlobalDesc) -> Option<*mut ()> {
    let inc = incoming().get()?;
    let id = desc.id();
    let saved = lock(&inc.globals).remove(&id)?;
    let bytes = saved
        .bytes
        .as_deref()
        .expect("only streamed values are kept");
    // A transfer first: the schema is the type's tokens (`Stats`), which stay the same when
    // the type's definition changes; `cargo dsu diff` generates the transfer when it does.
    let t = GLOBAL_TRANSFERS.iter().find(|t| {
        t.id() == id
            && t.new_fingerprint == desc.fingerprint
            && t.old_schema == saved.schema
            && t.load_old.is_some()
    });
    if let Some(t) = t {
        let load = t.load_old.expect("checked");
        let old = guarded(&format!("reading the old value of global `{id}`"), || {
            load(bytes)
        })
        .unwrap_or_else(|e| fail(&e));
        // SAFETY: `old` is a box of the transfer's old type, just read. It is left allocated
        // afterwards (the transfer may have moved parts of it), as an in-place update does.
        return Some(match unsafe { (t.transfer)(old) } {
            Ok(new) => new,
            Err(f) => fail(&format!("the transfer of global `{id}` {f}")),
        });
    }
    if desc.schema != saved.schema {
        fail(&format!(
            "global `{id}` has another type in this version and this executable carries no \
             transfer from the running type; build it with `cargo dsu diff --engine handoff \
             OLD NEW`"
        ));
    }
    let Some(load) = desc.load else {
        fail(&format!(
            "global `{id}`: the old process streamed its value, but it is \
             `#[dsu::global(rebuild)]` in this version"
        ));
    };
    Some(guarded(&format!("reading global `{id}`"), || load(bytes)).unwrap_or_else(|e| fail(&e)))
}

/// `Runtime::ready` in a process started by a hand-off: checks that everything streamed was
/// taken, reports ready, and waits for the old process's commit. Returns the commit's record.
pub(crate) fn report_ready() -> Option<UpdateRecord> {
    let inc = incoming().get()?;
    // A second call, after the commit, has nothing to do.
    lock(&inc.chan).as_ref()?;
    // Globals nobody has touched yet take their streamed values now.
    let pending: Vec<String> = lock(&inc.globals).keys().cloned().collect();
    for g in GLOBALS.iter() {
        if pending.contains(&g.id()) {
            (g.touch)();
        }
    }
    // State of a component or global this version no longer has is dropped (the diff showed
    // the removal); state of one it has but did not register is a mistake, not a removal.
    let mut missing = Vec::new();
    for (id, instance) in lock(&inc.components).keys() {
        if COMPONENTS.iter().any(|c| c.id() == *id) {
            missing.push(format!(
                "the state of component `{id}` (instance {instance}) was not taken: this \
                 version registers fewer instances of it, or registers them after `ready`"
            ));
        } else {
            log::info!("dsu: component `{id}` is not in this version; its state is dropped");
        }
    }
    for g in lock(&inc.globals).keys() {
        log::info!("dsu: global `{g}` is not in this version; its value is dropped");
    }
    for l in sockets::untaken_listeners() {
        missing.push(format!(
            "listener `{l}` was handed over but not taken (`dsu::listener(\"{l}\", ...)`)"
        ));
    }
    let conns = lock(sockets::handed_connections()).len();
    if conns > 0 {
        missing.push(format!(
            "{conns} handed-over connection(s) were not taken (`Listener::handed_over`)"
        ));
    }
    if !missing.is_empty() {
        missing.sort();
        fail(&missing.join("; "));
    }
    let mut chan = lock(&inc.chan).take()?;
    if chan.write_all(b"ready\n").is_err() {
        eprintln!("dsu: the old process is gone before the commit; exiting");
        std::process::exit(70);
    }
    let mut reader = BufReader::new(&chan);
    let mut line = String::new();
    let record = match reader.read_line(&mut line) {
        Ok(n) if n > 0 => line
            .trim_end()
            .strip_prefix("commit ")
            .and_then(|j| serde_json::from_str::<UpdateRecord>(j).ok()),
        _ => None,
    };
    let Some(record) = record else {
        // The old process timed out and killed us, or died: it serves (or nobody does), and
        // this process must not.
        eprintln!("dsu: the old process did not commit the hand-off; exiting");
        std::process::exit(70);
    };
    sockets::gate().open();
    let _ = chan.write_all(b"serving\n");
    notify_systemd(true);
    adopt_executable();
    Some(record)
}

/// Moves this process's executable, which the old process wrote into its own patch directory
/// (`$TMPDIR/dsu-OLDPID`), into this process's (`$TMPDIR/dsu-PID`): the old directory can then
/// be swept, and the file stays on disk while this process runs (backtraces read it) and is
/// swept after it ends, like a patch library.
fn adopt_executable() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let Some(old_dir) = exe.parent() else { return };
    let tmp = std::env::temp_dir();
    let is_default_dir = old_dir.parent() == Some(tmp.as_path())
        && old_dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("dsu-"));
    if !is_default_dir {
        return;
    }
    let mine = tmp.join(format!("dsu-{}", std::process::id()));
    if std::fs::create_dir_all(&mine).is_err() {
        return;
    }
    if let Some(name) = exe.file_name() {
        if std::fs::rename(&exe, mine.join(name)).is_ok() {
            // Fails, and leaves it, if anything else is in it.
            let _ = std::fs::remove_dir(old_dir);
        }
    }
}

/// Tells systemd (when it supervises this process with `Type=notify`: `NOTIFY_SOCKET` is set)
/// that the service is ready, and after a hand-off that this process is now its main process
/// (`MAINPID`; the unit needs `NotifyAccess=all`, since the message comes from a process
/// systemd did not start itself).
pub(crate) fn notify_systemd(handed_over: bool) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = if handed_over {
        format!("MAINPID={}\nREADY=1\n", std::process::id())
    } else {
        "READY=1\n".to_string()
    };
    if let Err(e) = sd_notify(&socket.to_string_lossy(), &msg) {
        log::warn!("dsu: cannot notify systemd through {socket:?}: {e}");
    }
}

fn sd_notify(socket: &str, msg: &str) -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successor whose process is `sleep` and whose channel's other end is returned: the test
    /// plays the new process on it.
    fn fake_successor() -> (Successor, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let reader = BufReader::new(ours.try_clone().unwrap());
        let s = Successor {
            child,
            chan: ours,
            reader,
        };
        (s, theirs)
    }

    fn record() -> UpdateRecord {
        UpdateRecord {
            id: 7,
            from: "1.0.0".into(),
            to: "2.0.0".into(),
            started_unix_ms: 0,
            outcome: crate::Outcome::Committed,
            reason: None,
            components: Vec::new(),
            changes: Vec::new(),
            attempts: 1,
            policy_wait_ms: 0.0,
            prepare_ms: 0.0,
            pause_ms: 0.0,
            transfer_ms: 0.0,
            total_ms: 0.0,
            busy: Vec::new(),
            engine: crate::package::Engine::Handoff,
            new_pid: Some(42),
        }
    }

    /// Plays a new process that takes the sockets and the stream, then answers `answer` after
    /// `delay`.
    fn new_process(
        peer: UnixStream,
        delay: Duration,
        answer: &'static str,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            sockets::recv_fds(&peer).unwrap();
            let mut len = [0u8; 8];
            (&peer).read_exact(&mut len).unwrap();
            let mut stream = vec![0u8; u64::from_le_bytes(len) as usize];
            (&peer).read_exact(&mut stream).unwrap();
            std::thread::sleep(delay);
            let _ = (&peer).write_all(answer.as_bytes());
            stream
        })
    }

    #[test]
    fn ready_counts_only_within_the_ready_timeout() {
        let feed = |delay, answer, timeout| {
            let (mut s, peer) = fake_successor();
            let new_side = new_process(peer, delay, answer);
            let r = s.feed(b"state", sockets::Snapshot::default(), None, timeout);
            assert_eq!(new_side.join().unwrap(), b"state");
            s.kill();
            r
        };
        assert_eq!(
            feed(Duration::ZERO, "ready\n", Duration::from_secs(10)),
            Ok(())
        );
        // Late by a few milliseconds: the kernel's receive timeout is rounded up to its clock
        // tick and would hand over this `ready`, but it came after the deadline.
        let late = feed(
            Duration::from_millis(3),
            "ready\n",
            Duration::from_millis(1),
        )
        .unwrap_err();
        assert!(
            late.contains("did not report ready within 1 ms; it was killed"),
            "{late}"
        );
        let failed = feed(Duration::ZERO, "failed: no room\n", Duration::from_secs(10));
        assert_eq!(failed, Err("the new process failed: no room".to_string()));
    }

    #[test]
    fn a_commit_counts_only_once_the_new_process_confirms_it() {
        // Confirmed: the new process got the record and says it serves.
        let (mut s, peer) = fake_successor();
        let new_side = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&peer).read_line(&mut line).unwrap();
            (&peer).write_all(b"serving\n").unwrap();
            line
        });
        assert_eq!(s.commit(&record()), Ok(()));
        let line = new_side.join().unwrap();
        let json = line.strip_prefix("commit ").expect("a commit line");
        let got: UpdateRecord = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(got, record());
        s.kill();

        // The new process died after `ready`, before the commit: the commit fails, and the
        // manager kills the process and rolls back.
        let (mut s, peer) = fake_successor();
        drop(peer);
        assert!(s.commit(&record()).is_err());
        s.kill();
        assert!(s.child.try_wait().unwrap().is_some(), "killed and reaped");

        // It died after reading the commit, before opening its sockets: not confirmed either.
        let (mut s, peer) = fake_successor();
        let new_side = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&peer).read_line(&mut line).unwrap();
        });
        assert_eq!(
            s.commit(&record()),
            Err("the new process did not confirm the commit".to_string())
        );
        new_side.join().unwrap();
        s.kill();

        // A wrong answer is no confirmation.
        let (mut s, peer) = fake_successor();
        let new_side = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&peer).read_line(&mut line).unwrap();
            (&peer).write_all(b"failed: no\n").unwrap();
        });
        assert!(s.commit(&record()).is_err());
        new_side.join().unwrap();
        s.kill();
    }

    #[test]
    fn systemd_hears_ready_and_the_new_main_pid_on_a_path_or_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sd_notify(path.to_str().unwrap(), "MAINPID=42\nREADY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("dsu-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify(&format!("@{name}"), "READY=1\n").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn states_round_trip_and_decoding_errors_read_well() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Old {
            map: HashMap<Vec<u8>, u64>,
        }
        #[derive(Deserialize, Debug)]
        struct New {
            #[allow(dead_code)]
            map: HashMap<Vec<u8>, u64>,
            #[allow(dead_code)]
            extra: u64,
        }
        let old = Old {
            map: [(b"k".to_vec(), 7)].into_iter().collect(),
        };
        // SAFETY: `old` is a live `Old`.
        let bytes = unsafe { save_state::<Old>(&old as *const Old as *const ()) }.unwrap();
        let back = load_state::<Old>(&bytes).unwrap();
        // SAFETY: `load_state::<Old>` returns a box of `Old`.
        let back = unsafe { Box::from_raw(back as *mut Old) };
        assert_eq!(*back, old);
        let e = load_state::<New>(&bytes).unwrap_err();
        assert_eq!(e, "missing field `extra`");
        let e = load_state::<Old>(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(!e.is_empty() && !e.contains("Semantic("), "{e}");
    }

    #[test]
    fn the_stream_keeps_byte_strings_compact() {
        let s = SavedState {
            id: "c".into(),
            instance: 0,
            state: "c".into(),
            schema: 1,
            bytes: Some(vec![200u8; 1000]),
        };
        let mut out = Vec::new();
        encode(&s, &mut out).unwrap();
        assert!(out.len() < 1100, "{} bytes", out.len());
        let back: SavedState = decode(&out).unwrap();
        assert_eq!(back.bytes, s.bytes);
    }
}
