//! The REST API (axum over rustls): health, readiness, cluster status, tokens and
//! audit. Every mutation is written to the audit log. The routes and their OpenAPI
//! 3.1 documentation are registered together in [`openapi::routes`]; the document
//! is served at `GET /api/v1/openapi.json`.

mod audit;
pub mod auth;
mod dkg;
pub mod error;
mod handlers;
pub mod openapi;
mod presign;
mod tx;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use self::auth::AuthState;
use self::auth::ClientAddr;
use self::error::ApiError;
use crate::tx::TxCtx;

/// Shared state of all handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The services' context (the transaction service's, which reaches every
    /// service below it and the infrastructure).
    pub node: Arc<TxCtx>,
    /// Tokens and rate limits.
    pub auth: Arc<AuthState>,
    /// The audit service (checkpoints, exports).
    pub audit: Arc<crate::compliance::AuditCtx>,
}

/// Builds the router: the routes of [`openapi::routes`] (each registered with its
/// documentation), then the fallbacks and the router-wide layers.
pub fn router(state: AppState) -> Router {
    let max_body = state.node.cfg.api.max_body_bytes;
    let (routes, _doc) = openapi::routes(Some(state.clone())).split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(max_body, refuse_oversized))
        .layer(middleware::from_fn(close_if_body_unread))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
            },
        ))
        .with_state(state)
}

/// Answers 413 `body_too_large` for a declared `Content-Length` over the limit
/// before any handler runs. A body up to twice the limit is read and discarded
/// first, so the client (still sending) gets the answer instead of a reset
/// connection; larger ones are refused at once. Bodies without a length are
/// bounded by `DefaultBodyLimit` in the extractors.
async fn refuse_oversized(
    axum::extract::State(max): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    match declared {
        Some(len) if len > limit => {
            if len <= limit.saturating_mul(2) {
                let _ = axum::body::to_bytes(req.into_body(), max.saturating_mul(2)).await;
            }
            let mut resp = axum::response::IntoResponse::into_response(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body of {len} bytes is larger than the {max} this node accepts"),
            ));
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            resp
        }
        _ => next.run(req).await,
    }
}

/// Answers `Connection: close` when the request had a body that was not read to its
/// end (refused before the handler read it: no or a wrong token, unknown route or
/// method, wrong content type, over the size limit). hyper cannot reuse such a
/// connection and closes it after the answer; without the header a client that
/// sends its next request on it at once finds it closed under that request (found
/// by schemathesis: `POST` without a token, then the next `POST` failed now and then
/// with "connection closed without response").
async fn close_if_body_unread(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::body::HttpBody as _;
    use futures::StreamExt as _;
    // HTTP/2 has no `Connection` header: an unread body ends its own stream only.
    if req.body().is_end_stream() || req.version() >= axum::http::Version::HTTP_2 {
        return next.run(req).await;
    }
    let read_to_end = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = read_to_end.clone();
    let req = req.map(move |body| {
        let end = futures::stream::poll_fn(move |_| {
            flag.store(true, std::sync::atomic::Ordering::Release);
            std::task::Poll::<Option<Result<axum::body::Bytes, axum::Error>>>::Ready(None)
        });
        axum::body::Body::from_stream(body.into_data_stream().chain(end))
    });
    let mut resp = next.run(req).await;
    if !read_to_end.load(std::sync::atomic::Ordering::Acquire) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Connections the API serves at once, in all.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one client address may hold at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections refused for the limits (logged throttled).
static REFUSED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Counts open API connections, in all and per client address.
#[derive(Debug)]
pub struct ConnLimits {
    total: usize,
    per_client: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// One admitted connection; its slot is given back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: std::net::IpAddr,
}

impl ConnLimits {
    /// At most `total` connections, `per_client` of them from one address.
    pub fn new(total: usize, per_client: usize) -> Self {
        ConnLimits {
            total,
            per_client,
            open: std::sync::Mutex::default(),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (usize, std::collections::HashMap<std::net::IpAddr, usize>)>
    {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ConnSlot> {
        let mut g = self.lock();
        let mine = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.total || mine >= self.per_client {
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, mine + 1);
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections: in all, and from `ip`.
    pub fn open(&self, ip: std::net::IpAddr) -> (usize, usize) {
        let g = self.lock();
        (g.0, g.1.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.limits.lock();
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Serves the API over TLS until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limits = Arc::new(ConnLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT));
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limits.admit(peer.ip()) else {
            // Closed at once: one client (or all together) cannot hold more.
            if let Some(dropped) = REFUSED.hit() {
                tracing::warn!(dropped, client = %peer, "api connection limit reached; connection closed");
            }
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(client = %peer, error = %e, "api tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %peer, "api tls handshake timed out");
                        return;
                    }
                };
            let svc = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that does not finish its request headers in time is cut off
            // (slowloris).
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(client = %peer, error = %e, "api connection ended with error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_per_client_and_in_all_and_given_back() {
        let limits = Arc::new(ConnLimits::new(3, 2));
        let a: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let b: std::net::IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = limits.admit(a).expect("first");
        let a2 = limits.admit(a).expect("second");
        assert!(limits.admit(a).is_none(), "third from one client");
        let b1 = limits.admit(b).expect("another client");
        assert!(limits.admit(b).is_none(), "total reached");
        assert_eq!(limits.open(a), (3, 2));
        drop(a1);
        assert_eq!(limits.open(a), (2, 1));
        let a3 = limits.admit(a).expect("slot given back");
        drop((a2, a3, b1));
        assert_eq!(limits.open(a), (0, 0));
    }
}
