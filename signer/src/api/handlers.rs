//! Route handlers.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{generate_token, generate_token_with, Principal, Role};
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::audit::AuditEntry;
use crate::store::audit::AuditOf;

/// `GET /health`: liveness, no authentication.
pub async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": s.node.cfg.node_id,
        "timestamp": chrono::Utc::now().to_rfc3339(),
    }))
}

/// `GET /ready`: 200 when the database, etcd and custody are usable, 503 otherwise.
pub async fn ready(State(s): State<AppState>) -> Response {
    let db_ok = s.node.store.ping().await.is_ok();
    let snap = s.node.cluster_snapshot();
    let custody = s.node.custody_state();
    let unsealed = matches!(custody, crate::infra::CustodyState::Unsealed { .. });
    let hardening = hsm::memory::process_hardening_status().ok();
    let ready = db_ok && snap.etcd_ok && unsealed;
    let body = json!({
        "ready": ready,
        "node_id": s.node.cfg.node_id,
        "database": if db_ok { "ok" } else { "unreachable" },
        "etcd": if snap.etcd_ok { "ok" } else { "unreachable" },
        "etcd_members": s.node.etcd_members(),
        "peers_connected": snap.connected_peers.len(),
        "peers_total": s.node.cfg.p2p.peers.len(),
        "custody": custody,
        "memory": hardening.map(|h| json!({
            "locked_kib": h.locked_kib,
            "dumpable": h.dumpable != 0,
            "core_limit": h.core_limit,
        })),
        "hardening": {
            "state": s.node.hardening_state(),
            "memory_locked": s.node.hardening().mlock == hsm::memory::MlockStatus::Locked,
            "core_dumps_disabled": s.node.hardening().core_dumps_disabled,
            "not_dumpable": s.node.hardening().not_dumpable,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> Response {
    let status = s.node.cluster_status();
    let mut body = format!(
        "# HELP signer_cluster_nodes_total Nodes configured in the cluster.\n\
         # TYPE signer_cluster_nodes_total gauge\n\
         signer_cluster_nodes_total {}\n\
         # HELP signer_cluster_healthy_nodes Nodes with a live registration.\n\
         # TYPE signer_cluster_healthy_nodes gauge\n\
         signer_cluster_healthy_nodes {}\n\
         # HELP signer_p2p_connected_peers Peers with an open QUIC connection.\n\
         # TYPE signer_p2p_connected_peers gauge\n\
         signer_p2p_connected_peers {}\n",
        status.total_nodes,
        status.healthy_nodes,
        s.node.cluster_snapshot().connected_peers.len(),
    );
    body.push_str(&super::presign::metrics_text(&s.node).await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// `GET /api/v1/cluster/status`.
pub async fn cluster_status(
    State(s): State<AppState>,
    Extension(_p): Extension<Principal>,
) -> Json<crate::infra::ClusterStatus> {
    Json(s.node.cluster_status())
}

/// `GET /api/v1/whoami`.
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<serde_json::Value> {
    Json(json!({"token_id": p.token_id, "name": p.name, "role": p.role}))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
    #[serde(default)]
    rate_limit_per_min: Option<u32>,
}

#[derive(Debug, Serialize)]
struct CreatedToken {
    id: String,
    name: String,
    role: Role,
    rate_limit_per_min: u32,
    /// Shown once; only its hash is stored.
    token: String,
}

/// `POST /api/v1/tokens` (admin).
pub async fn create_token(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    p.require(&[])?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name must be 1 to 64 printable characters",
        ));
    }
    let rate = body
        .rate_limit_per_min
        .unwrap_or(s.node.cfg.api.default_rate_limit_per_min);
    if rate == 0 || rate > 1_000_000 {
        return Err(ApiError::bad_request(
            "invalid_rate_limit",
            "rate_limit_per_min must be between 1 and 1000000",
        ));
    }
    let rate_i32 = i32::try_from(rate).map_err(ApiError::internal)?;
    // Keyed once unsealed; before that the enrolment form (rewritten at first use).
    let t = match s.auth.token_key() {
        Some(key) => generate_token_with(&key),
        None => generate_token()?,
    };
    let mut tx = s
        .node
        .store
        .pool()
        .begin()
        .await
        .map_err(crate::store::StoreError::from)?;
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, secret_hash, rate_limit_per_min, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.id)
    .bind(name)
    .bind(body.role.as_str())
    .bind(&t.secret_hash)
    .bind(rate_i32)
    .bind(&p.token_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| crate::store::StoreError::classify(e, "token"))?;
    crate::store::audit::append_audit(
        &mut tx,
        &s.node.cfg.node_id,
        AuditEntry::new(&p.token_id, "token.create")
            .subject(&t.id)
            .details(json!({"name": name, "role": body.role.as_str(), "rate_limit_per_min": rate})),
    )
    .await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    let out = CreatedToken {
        id: t.id.clone(),
        name: name.to_owned(),
        role: body.role,
        rate_limit_per_min: rate,
        token: t.token.expose_secret().to_owned(),
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET /api/v1/tokens` (admin).
pub async fn list_tokens(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[])?;
    let tokens = s.node.store.list_tokens().await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{id}` (admin).
pub async fn revoke_token(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[])?;
    if id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request("invalid_id", "malformed token id"));
    }
    let audit = AuditOf::new(
        &s.node.cfg.node_id,
        AuditEntry::new(&p.token_id, "token.revoke").subject(&id),
    );
    if !s.node.store.revoke_token(&id, audit).await? {
        return Err(ApiError::not_found(format!(
            "token {id} not found or already revoked"
        )));
    }
    s.auth.forget(&id);
    Ok(Json(json!({"revoked": id})))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/v1/audit` (auditor).
pub async fn audit_list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Auditor])?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let rows = s.node.store.audit_rows(q.after.unwrap_or(0), limit).await?;
    Ok(Json(json!({ "records": rows })))
}

/// `GET /api/v1/audit/verify` (auditor): verifies the whole chain.
pub async fn audit_verify(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Auditor])?;
    let (verified, head, error) = s.node.store.verify_audit_chain().await?;
    Ok(Json(json!({
        "valid": error.is_none(),
        "verified_records": verified,
        "head": hex::encode(head),
        "error": error.map(|e| e.to_string()),
    })))
}

/// `POST /api/v1/p2p/ping` (admin): sends a QUIC ping to every peer and reports
/// which answered.
pub async fn p2p_ping(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[])?;
    let results = s.node.net.ping_all(std::time::Duration::from_secs(5)).await;
    let all_ok = results.iter().all(|r| r.ok);
    Ok(Json(
        json!({"node_id": s.node.cfg.node_id, "all_ok": all_ok, "peers": results}),
    ))
}
