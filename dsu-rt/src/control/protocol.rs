//! The control protocol: requests, replies, their encoding, and the client's side.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::package::policy::Policy;
use crate::update::record::{Status, UpdateRecord};

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
        /// Apply even over poisoned instances, taking their states as they are, and clear
        /// their poison on a commit (otherwise such an update is refused).
        #[serde(default)]
        clear_poison: bool,
    },
    /// Apply a staged update.
    Commit {
        id: u64,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        clear_poison: bool,
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
    pub(crate) fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            report: None,
            status: None,
        }
    }
}

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one request line (at most [`MAX_REQUEST`] bytes) and decodes it. `Ok(None)`: the
/// client closed the connection without sending anything. `Err`: the reply to send.
pub fn read_request(conn: impl Read) -> Result<Option<Request>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(conn.take(MAX_REQUEST + 1));
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => Ok(None),
        Ok(_) if line.len() as u64 > MAX_REQUEST => {
            Err(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => decode_request(&line).map(Some),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
            "no complete request within {} s; send one JSON object on one line, ending in a \
             newline",
            READ_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("cannot read the request: {e}")),
    }
}

/// Decodes one request (a JSON object, optionally ending in a newline).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("malformed request: {e}"))?;
    serde_json::from_str::<Request>(text).map_err(|e| format!("malformed request: {e}"))
}

/// Encodes a reply as the line sent back.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"error\":\"cannot encode the reply: {e}\"}}").into_bytes()
    });
    out.push(b'\n');
    out
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
