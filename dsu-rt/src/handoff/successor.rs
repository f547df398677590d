//! The old process's side of the channel: the new process is started, fed the sockets and the
//! stream, told to commit, or killed.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::stream::{write_sized, CONTROL, FD_ENV, PRECOPY_ENV};
use crate::sockets;
use crate::update::record::UpdateRecord;

/// How long a new process has to report ready when the package does not say.
pub(crate) const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The new process, started and fed, before it is told to commit.
pub(crate) struct Successor {
    pub(super) child: Child,
    pub(super) chan: UnixStream,
    pub(super) reader: BufReader<UnixStream>,
}

/// Starts `exe` with this process's arguments and environment. It runs up to its runtime's
/// start, where it waits for [`Successor::feed`]: starting it before the service pauses keeps
/// the exec and the program's own early start-up out of the pause.
pub(crate) fn spawn_successor(exe: &Path, fault: Option<&str>) -> Result<Successor, String> {
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
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(FD_ENV, raw.to_string())
        .env(PRECOPY_ENV, "1");
    if let Some(path) = shared_library_path() {
        cmd.env("LD_LIBRARY_PATH", path);
    }
    if let Some(action) = fault {
        cmd.env(crate::update::fault::RECEIVE_ENV, action);
    }
    let child = cmd.spawn();
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

/// For a program that links dsu-shared: `LD_LIBRARY_PATH` with the directories this process
/// loaded `libdsu_shared.so` and the toolchain's `libstd-*.so` from, in front. The package
/// carries the new executable only, written to the patch directory, where its `$ORIGIN`
/// run path finds neither; the new version must link the same builds of them (the same tokio
/// features and toolchain), or it cannot start and the hand-off fails with this process
/// serving on.
fn shared_library_path() -> Option<std::ffi::OsString> {
    if !crate::abi::build::SHARED_DEPENDENCIES {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5).map(Path::new) else {
            continue;
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours =
            name == "libdsu_shared.so" || (name.starts_with("libstd-") && name.ends_with(".so"));
        if let (true, Some(dir)) = (ours, path.parent()) {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(dirs).ok()
}

impl Successor {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Passes the sockets and the state, and waits until `ready_timeout` for the new process to
    /// report ready. On any failure the new process is killed and reaped, and the reason
    /// returned.
    /// Sends one pre-copy frame (`precopy.rs`); an empty one ends them.
    pub(crate) fn send_frame(&mut self, frame: &[u8]) -> Result<(), String> {
        let _ = self.chan.set_write_timeout(Some(DEFAULT_READY_TIMEOUT));
        match write_sized(&self.chan, frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                // It may have said why it stopped reading.
                let _ = self
                    .reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(200)));
                let mut line = String::new();
                if self.reader.read_line(&mut line).is_ok() {
                    if let Some(reason) = line.trim_end().strip_prefix("failed: ") {
                        return Err(format!("the new process failed: {reason}"));
                    }
                }
                Err(self.lost(&format!("pre-copying the state failed: {e}")))
            }
        }
    }

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
        if let Err(e) = write_sized(&self.chan, stream) {
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
/// and later updates are refused; its components are dropped just before it exits.
pub(crate) fn superseded(new_pid: u32) {
    SUPERSEDED.store(new_pid.max(1), std::sync::atomic::Ordering::SeqCst);
    let _ = std::thread::Builder::new()
        .name("dsu-superseded".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            exit_superseded();
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
        exit_superseded();
    }
}

/// The instances the committed hand-off holds at their gates (it never releases them).
static HELD: std::sync::Mutex<Vec<std::sync::Arc<crate::call::component::Slot>>> =
    std::sync::Mutex::new(Vec::new());

/// Records the instances a committed hand-off holds, for [`exit_superseded`] to drop.
pub(crate) fn hold_until_exit(slots: Vec<std::sync::Arc<crate::call::component::Slot>>) {
    crate::call::thread::lock(&HELD).extend(slots);
}

/// How long a replaced process waits for its components' calls to drain before it drops them.
const DRAIN_BEFORE_EXIT: Duration = Duration::from_secs(3);
/// How long the drops themselves may take, after that, before the process exits regardless.
const DROPS_AT_MOST: Duration = Duration::from_secs(10);

/// Ends a process a committed hand-off replaced: its components are dropped (their `Drop`
/// runs: journals flush, files close), then it exits with status 0 (std flushes stdout). The
/// new process serves already; the sockets' gate keeps this one from serving meanwhile. A
/// second caller waits for the first to end the process.
fn exit_superseded() -> ! {
    static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if EXITING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    let held = std::mem::take(&mut *crate::call::thread::lock(&HELD));
    // On a thread of its own, bounded: a `Drop` that calls another component would wait for a
    // gate the hand-off holds for good, and the process must end anyway.
    let (tx, rx) = std::sync::mpsc::channel();
    let dropping = std::thread::Builder::new()
        .name("dsu-drop-components".into())
        .spawn(move || {
            let _ = tx.send(crate::call::component::drop_all_states(
                &held,
                DRAIN_BEFORE_EXIT,
            ));
        });
    let limit = DRAIN_BEFORE_EXIT + DROPS_AT_MOST;
    match dropping.map(|_| rx.recv_timeout(limit)) {
        Ok(Ok((_, 0))) => {}
        Ok(Ok((_, left))) => eprintln!(
            "dsu: replaced by a hand-off: {left} component instance(s) still had calls in flight \
             after {} s and were not dropped",
            DRAIN_BEFORE_EXIT.as_secs()
        ),
        Ok(Err(_)) => eprintln!(
            "dsu: replaced by a hand-off: dropping the components took more than {} s (a `Drop` \
             that calls another component waits for ever); exiting without the rest",
            limit.as_secs()
        ),
        Err(e) => eprintln!(
            "dsu: replaced by a hand-off: cannot start a thread to drop the components ({e}); \
             exiting without dropping them"
        ),
    }
    std::process::exit(0)
}
