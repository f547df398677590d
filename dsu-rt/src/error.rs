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
    #[error(
        "refusing to create the control socket in {dir}: {problem}; put the socket in a \
         directory only this user can write to (for example $XDG_RUNTIME_DIR or a 0700 \
         directory of the service's own)"
    )]
    UnsafeSocketDir { dir: PathBuf, problem: String },
    #[error("cannot read the trusted keys: {0}")]
    TrustedKeys(String),
    #[error("the data directory cannot be used: {0}")]
    DataDir(String),
    #[error("a dsu runtime is already running in this process")]
    AlreadyStarted,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
