//! The REST API (axum over rustls): health, readiness, cluster status, tokens and
//! audit. Every mutation is written to the audit log.

pub mod auth;
mod dkg;
pub mod error;
mod handlers;
mod presign;
mod tx;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get};
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
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let max_body = state.node.cfg.api.max_body_bytes;
    let protected = Router::new()
        .route("/api/v1/cluster/status", get(handlers::cluster_status))
        .route(
            "/api/v1/tokens",
            get(handlers::list_tokens).post(handlers::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(handlers::revoke_token))
        .route("/api/v1/audit", get(handlers::audit_list))
        .route("/api/v1/audit/verify", get(handlers::audit_verify))
        .route("/api/v1/whoami", get(handlers::whoami))
        .route("/api/v1/p2p/ping", axum::routing::post(handlers::p2p_ping))
        .route("/api/v1/dkg/start", axum::routing::post(dkg::start))
        .route("/api/v1/dkg/status", get(dkg::status))
        .route("/api/v1/dkg/ceremonies/{id}", get(dkg::ceremony))
        .route("/api/v1/keys", get(dkg::keys))
        .route(
            "/api/v1/aux-info/start",
            axum::routing::post(dkg::start_aux),
        )
        .route("/api/v1/aux-info/status", get(dkg::aux_status))
        .route(
            "/api/v1/transactions",
            axum::routing::post(tx::submit).get(tx::list),
        )
        .route("/api/v1/transactions/{id}", get(tx::get_one))
        .route(
            "/api/v1/transactions/{id}/approvals",
            axum::routing::post(tx::approve),
        )
        .route(
            "/api/v1/approvers",
            axum::routing::post(tx::endorse_approver).get(tx::list_approvers),
        )
        .route("/api/v1/utxos", axum::routing::post(tx::import_utxos))
        .route("/api/v1/keys/{id}/addresses", get(dkg::addresses))
        .route("/api/v1/presignatures/status", get(presign::status))
        .route(
            "/api/v1/presignatures/generate",
            axum::routing::post(presign::generate),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .merge(protected)
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

/// Serves the API over TLS until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
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
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
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
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
