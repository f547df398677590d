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
//!
//! `protocol.rs` is what passes on the socket (and the client, `cargo dsu`'s side);
//! `socket.rs` serves it (access, binding, one thread per connection); `requests.rs` is what
//! each request does.

mod protocol;
mod requests;
mod socket;
#[cfg(test)]
mod tests;

pub use protocol::{
    decode_request, encode_response, read_request, request, Request, Response, MAX_REQUEST,
    PROTOCOL_VERSION, READ_TIMEOUT,
};
pub use socket::MAX_CONNECTIONS;
pub(crate) use socket::{bind, serve, wait_for_requests, Access};
