//! The process hand-off engine (DESIGN.md section 8): for updates that cannot be applied inside
//! the running process, the new executable is started, receives the listening sockets, the
//! open connections and the state, and replaces the old process once it reports ready.
//!
//! The old process (`engine.rs`) closes the sockets' gate (every
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
//!
//! The files follow the protocol: `engine.rs` is the old process's sequence (the stages of an
//! in-place update, with a stream in place of the swap), `successor.rs` starts and feeds the
//! new process, `stream.rs` is what passes between them, and `receive.rs` is the new process's
//! side.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicI32;

pub(crate) mod engine;
pub mod fuzzing;
mod precopy;
mod receive;
mod stream;
mod successor;
#[cfg(test)]
mod tests;

pub(crate) use receive::{is_successor, notify_systemd, receive, report_ready};
pub use stream::{load_state, save_state};
pub(crate) use successor::{exit_if_superseded, superseded, superseded_by};

/// The control listener's descriptor (-1 when none), passed on by a hand-off.
static CONTROL_SOCKET: AtomicI32 = AtomicI32::new(-1);

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
