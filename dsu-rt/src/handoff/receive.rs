//! The new process's side: the descriptors and the stream are taken at the runtime's start,
//! each streamed state is handed to the `register` (or global) that asks for it, and ready is
//! reported once everything was taken.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use std::sync::atomic::{AtomicBool, Ordering};

use super::precopy::Chunk;
use super::stream::{
    check_stream, decode, guarded, read_sized, read_stream, SavedState, Stream, CONTROL, FD_ENV,
    PRECOPY_ENV,
};
use crate::abi::lazy::mirror::{discard_mirrors, receiving};

use crate::abi::artifact::{COMPONENTS, GLOBALS, GLOBAL_TRANSFERS, TRANSFERS};
use crate::abi::desc::{GlobalDesc, StateLayout, TransferDesc};
use crate::call::thread::lock;
use crate::call::{component, incoming};
use crate::sockets::{self, SavedConnection};
use crate::update::convert::Pass;
use crate::update::fault;
use crate::update::record::UpdateRecord;

/// What a process started by a hand-off received, until its program has taken it.
struct Incoming {
    chan: Mutex<Option<UnixStream>>,
    /// Streamed component states not yet claimed, by (id, instance).
    components: Mutex<HashMap<(String, usize), SavedState>>,
    /// Instances registered so far, per component id.
    instances: Mutex<HashMap<String, usize>>,
    globals: Mutex<HashMap<String, SavedState>>,
    /// States whose lazy maps a transfer took over, and their `convert_some`: their background
    /// conversion starts once this process serves.
    passes: Mutex<Vec<(usize, ConvertSome)>>,
}

type ConvertSome = unsafe fn(*mut (), usize) -> usize;

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
        passes: Mutex::new(Vec::new()),
    };
    let _ = incoming().set(inc);
    incoming::install(incoming::Incoming {
        component: take_component,
        global: take_global,
    });
    let got = (|| -> Result<_, String> {
        if std::env::var_os(PRECOPY_ENV).is_some() {
            std::env::remove_var(PRECOPY_ENV);
            take_batches(&chan)?;
        }
        let fds = sockets::recv_fds(&chan).map_err(|e| format!("receiving the sockets: {e}"))?;
        let stream = read_stream(&chan)?;
        let names: Vec<&str> = fds.iter().map(|f| f.name.as_str()).collect();
        check_stream(&stream, &names)?;
        Ok((fds, stream))
    })();
    let (fds, stream) = match got {
        Ok(g) => g,
        Err(e) => fail(&e),
    };
    // Checked above: each connection's descriptor has its description.
    let mut unconsumed: HashMap<String, SavedConnection> = stream
        .connections
        .iter()
        .map(|c| (c.name.clone(), c.clone()))
        .collect();
    let mut control = None;
    for f in fds {
        if let Some(name) = f.name.strip_prefix("L ") {
            sockets::inherit_named(name.to_string(), f.fd);
        } else if let Some(c) = f.name.strip_prefix("C ").and_then(|n| unconsumed.remove(n)) {
            lock(sockets::handed_connections()).push(sockets::HandedConnection {
                listener: c.listener,
                name: c.name,
                fd: f.fd,
                unconsumed: c.unconsumed,
            });
        } else if f.name == CONTROL {
            control = Some(f.fd);
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

/// The transfer this binary carries from a streamed form of schema `schema` to the state type
/// `new` describes, if any.
fn transfer_from(new: &StateLayout, schema: u64) -> Option<&'static TransferDesc> {
    TRANSFERS.iter().copied().find(|t| {
        t.new.fingerprint() == new.fingerprint() && t.old.schema() == schema && t.old.load.is_some()
    })
}

/// Whether pre-copied batches came: the pause's stream then names their maps.
static PRECOPIED: AtomicBool = AtomicBool::new(false);

/// Reads a frame's length and bytes (`handoff/precopy.rs`); `None` for the end frame.
fn read_frame(chan: impl Read) -> Result<Option<Vec<u8>>, String> {
    read_sized(chan, "a pre-copied batch")
}

/// Takes the pre-copied batches, each applied to the mirrors of its maps as it comes, until the
/// end frame.
pub(super) fn take_batches(mut chan: impl Read) -> Result<(), String> {
    while let Some(frame) = read_frame(&mut chan)? {
        let chunk: Chunk =
            decode(&frame).map_err(|e| format!("a pre-copied batch is unreadable: {e}"))?;
        apply_batch(&chunk)?;
        PRECOPIED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads one batch as `read_state` would read the state (as the old type when a transfer
/// converts it), so that its maps' slots reach their mirrors; the rest of what it read is
/// dropped (leaked when it is of the old type, which this binary has no drop for: the state's
/// fields other than its maps, once per batch).
fn apply_batch(c: &Chunk) -> Result<(), String> {
    let Some(desc) = COMPONENTS.iter().find(|d| d.id() == c.component) else {
        // A component this version does not have: its state is not taken.
        return Ok(());
    };
    let new = desc.state;
    let transfer = transfer_from(new, c.schema);
    let (load, drop_state) = match (transfer, new.load) {
        (Some(t), _) => (t.old.load.expect("checked"), None),
        (None, Some(load)) if new.schema() == c.schema => (load, Some(desc.drop_state)),
        // `read_state` refuses the state, saying why.
        _ => return Ok(()),
    };
    let what = format!(
        "reading a pre-copied batch of component `{}` (`{}`)",
        c.component, c.state
    );
    let p = guarded(&what, || receiving(false, || load(&c.bytes)))?;
    if let Some(drop_state) = drop_state {
        // SAFETY: `p` is a box of this version's state type, just read, owned here.
        unsafe { drop_state(p) };
    }
    Ok(())
}

/// Starts the background conversion of each state a transfer made with lazy maps, as an
/// in-place update does after its commit.
fn start_passes(passes: Vec<(usize, ConvertSome)>) {
    if passes.is_empty() {
        return;
    }
    for slot in component::all_live_slots() {
        // Relaxed: registered by this thread's program before `ready`.
        let state = slot.state.load(std::sync::atomic::Ordering::Relaxed) as usize;
        if let Some(&(_, step)) = passes.iter().find(|(p, _)| *p == state) {
            Pass::new(slot, state as *mut (), step).start();
        }
    }
}

/// Drops what the batches left (the mirrors no state took) and forgets they came.
pub(super) fn forget_batches() {
    discard_mirrors();
    PRECOPIED.store(false, Ordering::Relaxed);
}

/// Runs a read of the pause's stream, with the maps it names taken from their mirrors.
fn last<R>(f: impl FnOnce() -> R) -> R {
    if PRECOPIED.load(Ordering::Relaxed) {
        receiving(true, f)
    } else {
        f()
    }
}

/// Reads a streamed state of the type `new` describes: directly when the serialized form is
/// `new`'s own, or as the old type and through the transfer this binary carries (the one
/// `cargo dsu diff` generated, or a `#[dsu::transfer]`). A failure ends the hand-off.
fn read_state(what: &str, saved: &SavedState, new: &'static StateLayout) -> *mut () {
    try_read_state(what, saved, new).unwrap_or_else(|e| fail(&e))
}

/// [`read_state`], returning why it cannot.
pub(super) fn try_read_state(
    what: &str,
    saved: &SavedState,
    new: &'static StateLayout,
) -> Result<*mut (), String> {
    let Some(bytes) = saved.bytes.as_deref() else {
        return Err(format!("{what}: nothing was streamed"));
    };
    // A transfer from the streamed form comes first: `cargo dsu diff` generates one whenever
    // the type changed, also deep inside (a field's type's definition), which the schema
    // fingerprint of the outer type alone does not show.
    let transfer = transfer_from(new, saved.schema);
    if let Some(t) = transfer {
        let load = t.old.load.expect("checked");
        let old = guarded(&format!("reading the old state of {what}"), || {
            last(|| load(bytes))
        })?;
        // SAFETY: `old` is a box of the transfer's old type, just read.
        return match unsafe { (t.transfer)(old) } {
            Ok(new) => {
                // The lazy maps the transfer took over become the new state's (nothing is left
                // to roll back to here), before the old box lets go of them.
                if let Some(settle) = t.settle {
                    // SAFETY: `new` is the transfer's new state, not yet shared.
                    unsafe { settle(new) };
                }
                // SAFETY: the transfer succeeded; the old box is released exactly once.
                unsafe { (t.release_old)(old) };
                if let (Some(step), Some(inc)) = (t.convert_some, incoming().get()) {
                    lock(&inc.passes).push((new as usize, step));
                }
                Ok(new)
            }
            Err(f) => Err(format!("the state transfer of {what} {f}")),
        };
    }
    if new.schema() != saved.schema {
        return Err(format!(
            "{what}: the running process's state type `{}` is not this version's `{}` and this \
             executable carries no transfer from it; build the new version with `cargo dsu diff \
             --engine handoff OLD NEW`, which generates the transfer",
            saved.state,
            new.id()
        ));
    }
    let Some(load) = new.load else {
        return Err(format!(
            "{what}: the old process streamed its state, but this version's `{}` is \
             `#[dsu::state(rebuild)]`",
            new.id()
        ));
    };
    guarded(&format!("reading the state of {what}"), || {
        last(|| load(bytes))
    })
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
            last(|| load(bytes))
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
    Some(
        guarded(&format!("reading global `{id}`"), || last(|| load(bytes)))
            .unwrap_or_else(|e| fail(&e)),
    )
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
    let unclaimed = discard_mirrors();
    if unclaimed > 0 {
        log::info!(
            "dsu: {unclaimed} pre-copied map(s) were dropped by the old process before the pause"
        );
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
    if let Err(reason) = fault::hit(fault::passed_on(), fault::Point::Receive) {
        fail(&reason);
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
    start_passes(std::mem::take(&mut *lock(&inc.passes)));
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

pub(super) fn sd_notify(socket: &str, msg: &str) -> std::io::Result<()> {
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
