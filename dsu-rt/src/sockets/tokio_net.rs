//! Tokio servers: a named listener and its connections as tokio sockets, so that a hand-off
//! passes a tokio server's listener and open connections to the new process, whose runtime
//! resumes them.
//!
//! A thread-per-connection server shows the runtime where a request ends by calling
//! [`Connection::wait_readable`]; a tokio server's connections are driven by a protocol
//! library (hyper), which alone knows where a request ends. So the hand-off asks: every
//! [`AsyncConnection`] carries a [`HandoffSignal`] that resolves when a hand-off wants the
//! connection. The server then brings it to a request boundary (hyper: a graceful shutdown
//! without closing the socket: a request in progress finishes first), and calls
//! [`AsyncConnection::park`] with the bytes it read and did not consume. Until then the
//! connection counts busy, and the hand-off waits for it, up to its timeout.
//!
//! [`Connection::wait_readable`]: super::Connection::wait_readable

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::gate::gate;
use super::listener::{take_handed, ConnShared, Listener};

impl Listener {
    /// This listener as a tokio one (call it inside a tokio runtime). Accept through
    /// [`AsyncListener::accept`], and serve the [`AsyncConnection`]s it returns (the
    /// `dsu-hyper` crate serves an axum or hyper service so).
    pub fn into_tokio(self) -> io::Result<AsyncListener> {
        // A second descriptor of the same socket: the runtime keeps passing this one's to a
        // hand-off, tokio accepts through the other.
        let std = self.inner.try_clone()?;
        std.set_nonblocking(true)?;
        Ok(AsyncListener {
            inner: tokio::net::TcpListener::from_std(std)?,
            listener: self,
        })
    }
}

/// A named listener that tokio accepts from (see [`Listener::into_tokio`]).
#[derive(Debug)]
pub struct AsyncListener {
    listener: Listener,
    inner: tokio::net::TcpListener,
}

impl AsyncListener {
    /// The name the listener was asked for by.
    pub fn name(&self) -> &str {
        self.listener.name()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits for the next connection. While a hand-off is under way it accepts nothing: new
    /// clients wait in the listen queue, which the new process inherits.
    pub async fn accept(&self) -> io::Result<(AsyncConnection, SocketAddr)> {
        let mut state = gate().subscribe();
        loop {
            // Wait for an open gate. `wait_for` fails only if the sender is dropped, and the
            // gate is a static.
            let _ = state.wait_for(|closed| !*closed).await;
            let accepted = {
                let mut closed = std::pin::pin!(state.wait_for(|closed| *closed));
                std::future::poll_fn(|cx| {
                    if closed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    self.inner.poll_accept(cx).map(Some)
                })
                .await
            };
            match accepted {
                None => continue,
                Some(Ok((stream, addr))) => {
                    let conn = AsyncConnection::new(stream, self.name(), None, Vec::new());
                    return Ok((conn, addr));
                }
                Some(Err(e)) if is_transient(&e) => continue,
                Some(Err(e)) => return Err(e),
            }
        }
    }

    /// The connections the previous process handed over with this listener, each resuming
    /// with the bytes that process had read and not consumed (returned first by its reads).
    /// Empty unless this process was started by a hand-off; a second call returns nothing.
    pub fn handed_over(&self) -> io::Result<Vec<AsyncConnection>> {
        take_handed(self.name())
            .into_iter()
            .map(|h| {
                let std = std::net::TcpStream::from(h.fd);
                std.set_nonblocking(true)?;
                Ok(AsyncConnection::new(
                    TcpStream::from_std(std)?,
                    self.name(),
                    Some(h.name),
                    h.unconsumed,
                ))
            })
            .collect()
    }
}

/// Errors after which accepting goes on (a client that reset before it was accepted).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A connection accepted through an [`AsyncListener`] (or handed over to it): a tokio
/// `TcpStream` the runtime knows, so that a hand-off can pass it to the new process at a
/// request boundary. Its reads first return what the previous process had read and not
/// consumed.
#[derive(Debug)]
pub struct AsyncConnection {
    stream: TcpStream,
    shared: Arc<ConnShared>,
    /// Counted busy in the sockets' gate: from accept until `park`, and again after it.
    busy: bool,
    /// Bytes to return before the stream's (handed over, or given back to `park`).
    prefix: Vec<u8>,
    at: usize,
}

impl AsyncConnection {
    fn new(
        stream: TcpStream,
        listener: &str,
        name: Option<String>,
        prefix: Vec<u8>,
    ) -> AsyncConnection {
        let shared = ConnShared::register(stream.as_raw_fd(), listener, name);
        // If a hand-off closed the gate meanwhile, the connection starts idle: its server sees
        // the hand-off signal at once and parks it.
        let busy = gate().try_enter_busy();
        AsyncConnection {
            stream,
            shared,
            busy,
            prefix,
            at: 0,
        }
    }

    /// The connection's name (`listener#n`), kept across hand-offs.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Resolves when a hand-off wants the connections (take it before handing the connection
    /// to the protocol library, which owns it while it serves).
    pub fn handoff_signal(&self) -> HandoffSignal {
        HandoffSignal {
            state: gate().subscribe(),
        }
    }

    /// Parks the connection at a request boundary: `unconsumed` is what was read from it and
    /// not consumed (hyper's `Parts::read_buf`). The hand-off passes the connection on with
    /// those bytes in front of any this connection had not returned yet. Returns when the
    /// gate opens again, that is when the hand-off failed and this process serves on: then
    /// the reads return the same bytes again. If the hand-off succeeds, this process exits
    /// while the connection is parked.
    pub async fn park(&mut self, unconsumed: &[u8]) {
        let mut rest = unconsumed.to_vec();
        rest.extend_from_slice(&self.prefix[self.at..]);
        self.shared.set_unconsumed(&rest);
        self.prefix = rest;
        self.at = 0;
        let mut state = gate().subscribe();
        loop {
            if self.busy {
                self.busy = false;
                gate().leave();
            }
            let _ = state.wait_for(|closed| !*closed).await;
            if gate().try_enter_busy() {
                self.busy = true;
                self.shared.set_unconsumed(&[]);
                return;
            }
        }
    }
}

impl Drop for AsyncConnection {
    fn drop(&mut self) {
        self.shared.unregister();
        if self.busy {
            gate().leave();
        }
    }
}

impl AsyncRead for AsyncConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AsyncConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Resolves when a hand-off wants the process's connections (see
/// [`AsyncConnection::handoff_signal`]).
#[derive(Debug)]
pub struct HandoffSignal {
    state: watch::Receiver<bool>,
}

impl HandoffSignal {
    /// Waits until a hand-off is under way (at once if one is).
    pub async fn requested(&mut self) {
        let _ = self.state.wait_for(|closed| *closed).await;
    }
}
