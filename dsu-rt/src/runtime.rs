//! The runtime handle a program starts: control socket, registration, in-process updates.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::component::{register, Component, Handle};
use crate::context::ctx;
use crate::manager::{ApplyOptions, Status, UpdateRecord};
use crate::package::Package;
use crate::thread::ThreadRegistration;

/// Configures and starts the runtime.
#[derive(Default)]
pub struct RuntimeBuilder {
    socket: Option<PathBuf>,
    program: Option<String>,
    version: Option<String>,
    patch_dir: Option<PathBuf>,
}

impl RuntimeBuilder {
    /// Where to listen for `cargo dsu apply/status` (a Unix socket, created with mode 0600).
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
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

    /// Starts the runtime (and the control socket, if one was configured).
    pub fn start(self) -> Result<Runtime, crate::Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        // Relaxed: a once-flag with no data attached.
        if STARTED.swap(true, Ordering::Relaxed) {
            return Err(crate::Error::AlreadyStarted);
        }
        ctx()
            .manager
            .configure(self.program, self.version, self.patch_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let socket = match self.socket {
            None => None,
            Some(path) => {
                let listener = match crate::control::bind(&path) {
                    Ok(l) => l,
                    Err(e) => {
                        STARTED.store(false, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                let stop2 = stop.clone();
                std::thread::Builder::new()
                    .name("dsu-control-listener".into())
                    .spawn(move || crate::control::serve(listener, stop2))?;
                Some(path)
            }
        };
        Ok(Runtime { socket, stop })
    }
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

    /// Registers the current thread: updates that require parked threads wait for it to reach
    /// `dsu::update_point!()`.
    pub fn register_thread(&self) -> ThreadRegistration {
        crate::thread::register_thread()
    }

    /// Applies a package in-process (what the control socket's `apply` does).
    pub fn apply(&self, package: Package, opts: &ApplyOptions) -> UpdateRecord {
        ctx().manager.apply(package, opts)
    }

    /// Applies a package file in-process.
    pub fn apply_file(&self, path: &Path, opts: &ApplyOptions) -> Result<UpdateRecord, String> {
        let pkg = Package::read(path).map_err(|e| e.to_string())?;
        Ok(self.apply(pkg, opts))
    }

    /// Applies a staged update.
    pub fn commit_staged(&self, id: u64, opts: &ApplyOptions) -> Result<UpdateRecord, String> {
        ctx().manager.commit_staged(id, opts)
    }

    /// Versions, components and update history.
    pub fn status(&self) -> Status {
        ctx().manager.status()
    }

    /// The update history.
    pub fn history(&self) -> Vec<UpdateRecord> {
        ctx().manager.history()
    }

    /// The control socket's path, if any.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(path) = &self.socket {
            // Relaxed: see `control::serve`.
            self.stop.store(true, Ordering::Relaxed);
            // Wake the accept loop so it sees the flag.
            let _ = UnixStream::connect(path);
            let _ = std::fs::remove_file(path);
        }
    }
}
