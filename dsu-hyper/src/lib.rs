//! Serving a hyper service (an axum `Router` is one) from a dsu listener, so that a process
//! hand-off passes the server's HTTP/1.1 keep-alive connections to the new process at a
//! request boundary.
//!
//! `axum::serve` owns every connection's HTTP state, so nothing outside it can tell where a
//! request ends: a hand-off could only close its connections, and a client that sent a request
//! on one just then would see it reset. [`serve`] drives each connection itself. When a
//! hand-off begins it shuts the connection's HTTP state down gracefully *without* closing the
//! socket (a request in progress finishes first, and its response goes out), takes back the
//! socket and the bytes read but not parsed, and parks them: the hand-off passes both on, and
//! the new process's [`serve`] resumes the connection where this one stopped.
//!
//! ```no_run
//! # async fn run(router: impl tower_service::Service<hyper::Request<hyper::body::Incoming>,
//! #     Response = hyper::Response<String>, Error = std::convert::Infallible,
//! #     Future: Send> + Clone + Send + Sync + 'static) -> std::io::Result<()> {
//! # let rt: dsu::Runtime = todo!();
//! let listener = dsu::listener("http", || std::net::TcpListener::bind("127.0.0.1:8080"))?;
//! let listener = listener.into_tokio()?;
//! // After a hand-off: the connections the old process passed on. Take them, then report
//! // ready (which, after a hand-off, is when the update commits).
//! let handed = listener.handed_over()?;
//! rt.ready();
//! dsu_hyper::serve(listener, handed, router).await
//! # }
//! ```

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

use dsu::{AsyncConnection, AsyncListener};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves `service` on every connection of `listener`: first `handed`, the connections a
/// hand-off brought ([`AsyncListener::handed_over`], taken before `Runtime::ready`), then each
/// one it accepts. Returns only on an error accepting.
pub async fn serve<S, B>(
    listener: AsyncListener,
    handed: Vec<AsyncConnection>,
    service: S,
) -> std::io::Result<()>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    for conn in handed {
        tokio::spawn(serve_connection(conn, service.clone()));
    }
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(serve_connection(conn, service.clone()));
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it, or a hand-off takes it.
pub async fn serve_connection<S, B>(mut conn: AsyncConnection, service: S)
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let mut signal = conn.handoff_signal();
        let mut http = hyper::server::conn::http1::Builder::new().serve_connection(
            TokioIo::new(conn),
            Adapter(std::sync::Arc::new(service.clone())),
        );
        let mut shutting_down = false;
        let done = {
            let mut requested = std::pin::pin!(signal.requested());
            std::future::poll_fn(|cx| {
                if !shutting_down && requested.as_mut().poll(cx).is_ready() {
                    shutting_down = true;
                    // Idle: stops at once. A request in progress: finishes, then stops.
                    Pin::new(&mut http).graceful_shutdown();
                }
                http.poll_without_shutdown(cx)
            })
            .await
        };
        // An error (the client reset, a malformed request) or the client closing ends the
        // connection as hyper would.
        if done.is_err() || !shutting_down {
            return;
        }
        let read_buf = {
            let parts = http.into_parts();
            conn = parts.io.into_inner();
            parts.read_buf
        };
        // The hand-off takes the connection here; if it fails, this process serves on.
        conn.park(&read_buf).await;
    }
}

/// A tower service as a hyper one, `Unpin` with a boxed future, which `poll_without_shutdown`
/// needs.
struct Adapter<S>(std::sync::Arc<S>);

impl<S, B> hyper::service::Service<Request<Incoming>> for Adapter<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut service = S::clone(&self.0);
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(req).await
        })
    }
}
