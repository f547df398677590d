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
//!
//! `transport.rs` sends and receives named descriptors; `inherit.rs` keeps the ones this
//! process was started with; `listener.rs` is the program's side (listeners, connections, the
//! snapshot a hand-off passes); `gate.rs` holds every socket still while a hand-off runs;
//! `tokio_net.rs` (feature `tokio`) is the same for a tokio server.

mod fd;
mod gate;
mod inherit;
mod listener;
#[cfg(test)]
mod tests;
#[cfg(feature = "tokio")]
mod tokio_net;
mod transport;

// Used by the runtime's other layers, which `dsu_off` leaves out.
#[cfg_attr(dsu_off, allow(unused_imports))]
pub(crate) use fd::sockopt;
#[cfg_attr(dsu_off, allow(unused_imports))]
pub(crate) use gate::gate;
#[cfg_attr(dsu_off, allow(unused_imports))]
pub(crate) use inherit::{inherit_named, untaken_listeners, HANDOFF_FD_ENV};
#[cfg_attr(dsu_off, allow(unused_imports))]
pub(crate) use listener::{
    handed_connections, snapshot, HandedConnection, SavedConnection, Snapshot,
};
pub use listener::{listener, Connection, Listener};
#[cfg(feature = "tokio")]
pub use tokio_net::{AsyncConnection, AsyncListener, HandoffSignal};
pub use transport::{recv_fds, send_fds, NamedFd, MAX_FDS_PER_FRAME};
