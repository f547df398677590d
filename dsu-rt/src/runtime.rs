//! The runtime handle a program starts: control socket, registration, in-process updates.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::call::component::{register, Component, Handle};
use crate::call::thread::{self, ThreadRegistration};
use crate::error::Error;
use crate::manager::manager;
use crate::package::signing::PublicKey;
use crate::package::Package;
use crate::update::record::{ApplyOptions, Status, UpdateRecord};

/// Configures and starts the runtime.
#[derive(Default)]
pub struct RuntimeBuilder {
    socket: Option<PathBuf>,
    program: Option<String>,
    version: Option<String>,
    patch_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    allowed_uids: Vec<u32>,
    trusted: Vec<PublicKey>,
    trusted_files: Vec<PathBuf>,
}

/// The environment variable naming a file of trusted public keys (one per line), read by
/// [`RuntimeBuilder::start`] in addition to the keys the program sets.
pub const TRUSTED_KEYS_ENV: &str = "DSU_TRUSTED_KEYS";

impl RuntimeBuilder {
    /// Where to listen for `cargo dsu apply/status` (a Unix socket, created with mode 0600).
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Lets processes running as `uid` use the control socket too. By default only this
    /// process's own (effective) uid may: every connection's peer uid is checked
    /// (`SO_PEERCRED`), and the socket is mode 0600. With uids listed, the socket is made mode
    /// 0666 so that their processes can connect, and the peer check alone decides who is
    /// served (its directory must still be searchable by them).
    pub fn control_allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.push(uid);
        self
    }

    /// Applies only packages signed by `key` (or another trusted key): once any key is
    /// trusted, an unsigned package, or one signed by another key, is refused before its
    /// library is opened.
    pub fn trust_key(mut self, key: PublicKey) -> Self {
        self.trusted.push(key);
        self
    }

    /// Trusts every public key listed in `path` (one per line, as `cargo dsu keygen` writes
    /// them; `#` starts a comment). The file is read by [`start`](Self::start), which fails if
    /// it cannot be read or holds no key. The variable `DSU_TRUSTED_KEYS` names such a file
    /// too.
    pub fn trusted_keys_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trusted_files.push(path.into());
        self
    }

    /// The program's name; a package for another program is refused.
    pub fn program(mut self, name: impl Into<String>) -> Self {
        self.program = Some(name.into());
        self
    }

    /// The running version's label (shown by `status`, recorded in the history).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    /// Where patch libraries are written before they are loaded (default: a per-process
    /// directory under the system's temporary directory).
    pub fn patch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.patch_dir = Some(dir.into());
        self
    }

    /// The directory of the program's files that updates change (what `migrate` hooks write
    /// with `dsu::write_staged`). An update's commit keeps its record there, and
    /// [`start`](Self::start) finishes what a crash left: it puts back the old files of an
    /// update whose commit was interrupted, deletes staged files an update left behind, and
    /// refuses to start a version older than the one whose `migrate` last moved the files to
    /// its format (DESIGN.md §5, "Crash safety"). It prints a line to stderr for each file it
    /// changed.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Starts the runtime (and the control socket, if one was configured).
    pub fn start(self) -> Result<Runtime, Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        // Relaxed: a once-flag with no data attached.
        if STARTED.swap(true, Ordering::Relaxed) {
            return Err(Error::AlreadyStarted);
        }
        let mut trusted = self.trusted;
        let mut files = self.trusted_files;
        if let Some(p) = std::env::var_os(TRUSTED_KEYS_ENV).filter(|p| !p.is_empty()) {
            files.push(p.into());
        }
        for f in &files {
            let keys = match PublicKey::read_list(f) {
                Ok(k) if k.is_empty() => Err(Error::TrustedKeys(format!(
                    "the trusted keys file {} lists no key; an empty list would trust nothing \
                     and is most likely a mistake",
                    f.display()
                ))),
                Ok(k) => Ok(k),
                Err(e) => Err(Error::TrustedKeys(e.to_string())),
            };
            match keys {
                Ok(k) => trusted.extend(k),
                Err(e) => {
                    STARTED.store(false, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if let Some(dir) = &self.data_dir {
            if let Err(e) = recover_data_dir(dir, self.program.as_deref(), self.version.as_deref())
            {
                STARTED.store(false, Ordering::Relaxed);
                return Err(e);
            }
        }
        manager().configure(self.program, self.version, self.patch_dir);
        manager().trust(trusted);
        // A process started by a hand-off takes its predecessor's sockets, state and history.
        let mut inherited_control = None;
        if let Some((control, stream)) = crate::handoff::receive() {
            manager().adopt_history(stream.history, stream.next_id);
            inherited_control = control;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let socket = match self.socket {
            None => None,
            Some(path) => {
                let access = crate::control::Access::new(self.allowed_uids);
                let bound = match inherited_control {
                    // The predecessor's socket, at the same path: initiators never see it go.
                    Some(fd) => Ok(std::os::unix::net::UnixListener::from(fd)),
                    None => crate::control::bind(&path, &access),
                };
                let listener = match bound {
                    Ok(l) => l,
                    Err(e) => {
                        STARTED.store(false, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                let stop2 = stop.clone();
                std::thread::Builder::new()
                    .name("dsu-control-listener".into())
                    .spawn(move || crate::control::serve(listener, stop2, access))?;
                Some(path)
            }
        };
        Ok(Runtime { socket, stop })
    }
}

/// What a start does in the data directory (see [`RuntimeBuilder::data_dir`]).
fn recover_data_dir(dir: &Path, program: Option<&str>, version: Option<&str>) -> Result<(), Error> {
    use crate::update::staging;
    staging::set_data_dir(dir);
    for line in staging::recover(dir).map_err(Error::DataDir)? {
        eprintln!("dsu: {line}");
    }
    if let (Some(p), Some(v)) = (program, version) {
        staging::check_format(dir, p, v).map_err(Error::DataDir)?;
    }
    Ok(())
}

/// The started runtime. Dropping it closes the control socket; handles keep working.
pub struct Runtime {
    socket: Option<PathBuf>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Registers a component instance and returns its handle (same as [`crate::register`]).
    pub fn register<T: Component>(&self, state: T) -> Handle<T> {
        register(state)
    }

    /// Tells the runtime that the program is set up and serving. In a process started by a
    /// hand-off this is the moment the update commits: the runtime checks that every streamed
    /// state, listener and handed-over connection was taken, reports ready to the old process
    /// and waits for its go-ahead; only then are the sockets served (until then
    /// [`crate::sockets::Listener::accept`] and [`crate::sockets::Connection::wait_readable`]
    /// wait). If something was not taken, or the old process does not commit, this process
    /// exits and the old one serves on. In any other process it returns at once.
    ///
    /// Call it once `main` has registered its components, taken its listeners and started
    /// serving the handed-over connections.
    ///
    /// Under systemd (`Type=notify`) it also sends `READY=1`, and after a hand-off the new
    /// main pid (`MAINPID`, which needs `NotifyAccess=all` in the unit).
    pub fn ready(&self) {
        match crate::handoff::report_ready() {
            Some(rec) => manager().record_handoff(rec),
            None if !crate::handoff::is_successor() => crate::handoff::notify_systemd(false),
            None => {}
        }
    }

    /// Whether this process was started by a hand-off (its state came from the process it
    /// replaces): `main` skips what only a fresh start does, such as replaying a journal.
    pub fn handed_over(&self) -> bool {
        crate::handoff::is_successor()
    }

    /// Registers the current thread: updates that require parked threads wait for it to reach
    /// `dsu::update_point!()`.
    pub fn register_thread(&self) -> ThreadRegistration {
        thread::register_thread()
    }

    /// Applies a package in-process (what the control socket's `apply` does).
    pub fn apply(&self, package: Package, opts: &ApplyOptions) -> UpdateRecord {
        manager().apply(package, opts)
    }

    /// Applies a package file in-process.
    pub fn apply_file(&self, path: &Path, opts: &ApplyOptions) -> Result<UpdateRecord, String> {
        let pkg = Package::read(path).map_err(|e| e.to_string())?;
        Ok(self.apply(pkg, opts))
    }

    /// Applies a staged update.
    pub fn commit_staged(&self, id: u64, opts: &ApplyOptions) -> Result<UpdateRecord, String> {
        manager().commit_staged(id, opts)
    }

    /// Versions, components and update history.
    pub fn status(&self) -> Status {
        manager().status()
    }

    /// The update history.
    pub fn history(&self) -> Vec<UpdateRecord> {
        manager().history()
    }

    /// The control socket's path, if any.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }
}

impl Drop for Runtime {
    /// Shuts the runtime down: later updates are refused, the control socket is closed, an
    /// update in progress ends first (committed, or aborted within its own timeout) and every
    /// control request being executed gets its reply. Handles keep working.
    fn drop(&mut self) {
        manager().begin_shutdown();
        if let Some(path) = &self.socket {
            // Relaxed: see `control::serve`.
            self.stop.store(true, Ordering::Relaxed);
            // Wake the accept loop so it sees the flag.
            let _ = UnixStream::connect(path);
            let _ = std::fs::remove_file(path);
        }
        manager().wait_for_update();
        if !crate::control::wait_for_requests(SHUTDOWN_REPLY_WAIT) {
            log::warn!("dsu: shutting down with control requests still running");
        }
    }
}

/// How long a shutdown waits, after the last update ended, for other control requests
/// (status, refusals) to be answered.
const SHUTDOWN_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
