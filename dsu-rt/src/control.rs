//! The control socket: a Unix domain socket (mode 0600) taking one JSON request per connection.
//!
//! ```text
//! -> {"op":"apply","package":"/abs/path/p.dsu","timeout_ms":5000}
//! <- {"ok":true,"report":{...UpdateRecord...}}
//! -> {"op":"status"}
//! <- {"ok":true,"status":{...}}
//! -> {"op":"commit","id":3}
//! ```
//! One line each way. Requests are bounded in size; a malformed request gets an error reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manager::{ApplyOptions, Status, UpdateRecord};
use crate::package::Package;
use crate::policy::Policy;

/// Version of the control protocol.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Apply the package at `package` (a path the process can read).
    Apply {
        package: PathBuf,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        policy: Option<Policy>,
    },
    /// Apply a staged update.
    Commit {
        id: u64,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The running version, components and update history.
    Status,
}

/// A reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<UpdateRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            report: None,
            status: None,
        }
    }
}

/// Runs the server until `stop` is set (checked between connections).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, crate::Error> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(crate::Error::SocketInUse(path.to_path_buf()));
        }
        // A stale socket from a process that is gone.
        std::fs::remove_file(path).map_err(|source| crate::Error::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| crate::Error::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        crate::Error::Socket {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

pub(crate) fn serve(listener: UnixListener, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        // Relaxed: a shutdown flag; the runtime's drop connects once to wake this loop.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let _ = std::thread::Builder::new()
            .name("dsu-control".into())
            .spawn(move || handle(conn));
    }
}

fn handle(conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST + 1));
    let response = match reader.read_line(&mut line) {
        Ok(_) if line.len() as u64 > MAX_REQUEST => {
            Response::error(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => execute(req),
            Err(e) => Response::error(format!("malformed request: {e}")),
        },
        Err(e) => Response::error(format!("cannot read the request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = (&conn).write_all(&out);
}

fn execute(req: Request) -> Response {
    let manager = &crate::context::ctx().manager;
    match req {
        Request::Status => Response {
            ok: true,
            error: None,
            report: None,
            status: Some(manager.status()),
        },
        Request::Apply {
            package,
            timeout_ms,
            policy,
        } => match Package::read(&package) {
            Err(e) => Response::error(e.to_string()),
            Ok(pkg) => {
                let report = manager.apply(pkg, &ApplyOptions { timeout_ms, policy });
                Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                }
            }
        },
        Request::Commit { id, timeout_ms } => {
            match manager.commit_staged(
                id,
                &ApplyOptions {
                    timeout_ms,
                    policy: None,
                },
            ) {
                Ok(report) => Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                },
                Err(e) => Response::error(e),
            }
        }
    }
}

/// Sends one request to the process behind `socket` and waits for its reply.
pub fn request(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let conn = UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the control socket {}: {e} (is the process running with \
                 this socket?)",
                socket.display()
            ),
        )
    })?;
    let mut body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    body.push(b'\n');
    (&conn).write_all(&body)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the process closed the control connection without replying",
        ));
    }
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed reply from the process: {e}"),
        )
    })
}
