//! The runtime's error type.

use std::path::PathBuf;

/// What can go wrong outside an update (updates report through [`crate::UpdateReport`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the control socket at {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another process is already listening on the control socket {0}; stop it or choose \
         another path"
    )]
    SocketInUse(PathBuf),
    #[error("a dsu runtime is already running in this process")]
    AlreadyStarted,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
