//! Presignature pool endpoints; the logic lives in [`crate::presign`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson, ErrorBody};
use super::AppState;
use crate::audit::AuditEntry;
use crate::p2p::Frame;
use crate::presign::wire::{self, GenerateRequest, MAX_GENERATE, PRESIGN_GENERATE};
use crate::tx::TxCtx;

/// Body of `POST /api/v1/presignatures/generate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    /// Only this ECDSA key (default: every key).
    #[serde(default)]
    key_id: Option<String>,
    /// Only this signer set: distinct node ids of the cluster (default: every set).
    #[serde(default)]
    #[schema(max_items = 64)]
    signer_set: Option<Vec<String>>,
    /// Presignatures to generate beyond the target, 1 to 1000.
    #[serde(deserialize_with = "super::error::json_int::i64")]
    #[schema(minimum = 1, maximum = 1000)]
    count: i64,
}

/// One pool line: counts of this node's database plus in-flight generation.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolStatus {
    /// The ECDSA key.
    key_id: String,
    /// The signer set (sorted node ids).
    signer_set: Vec<String>,
    /// Ready to use.
    available: i64,
    /// Reserved by a signing in progress.
    reserved: i64,
    /// Used (each at most once).
    consumed: i64,
    /// Thrown away (e.g. after a restore).
    discarded: i64,
    /// Being generated now.
    generating: usize,
    /// Stored in the last 10 minutes.
    generated_last_10min: i64,
    /// Stored per minute over the last 10 minutes.
    generation_rate_per_min: f64,
}

/// Pool lines of this node (also used by the metrics endpoint).
pub async fn pool_status(node: &TxCtx) -> Result<Vec<PoolStatus>, crate::store::StoreError> {
    let mut generating = node.presign.generating();
    let mut out: Vec<PoolStatus> = node
        .store
        .presignature_counts()
        .await?
        .into_iter()
        .map(|r| {
            let g = generating
                .remove(&(r.key_id.clone(), r.signer_set.clone()))
                .unwrap_or(0);
            PoolStatus {
                generation_rate_per_min: r.created_last_10min as f64 / 10.0,
                key_id: r.key_id,
                signer_set: r.signer_set,
                available: r.available,
                reserved: r.reserved,
                consumed: r.consumed,
                discarded: r.discarded,
                generating: g,
                generated_last_10min: r.created_last_10min,
            }
        })
        .collect();
    out.extend(
        generating
            .into_iter()
            .map(|((key_id, signer_set), g)| PoolStatus {
                key_id,
                signer_set,
                available: 0,
                reserved: 0,
                consumed: 0,
                discarded: 0,
                generating: g,
                generated_last_10min: 0,
                generation_rate_per_min: 0.0,
            }),
    );
    Ok(out)
}

/// Answer of `GET /api/v1/presignatures/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresignStatus {
    /// This node's id.
    node_id: String,
    /// `[presign] enabled`.
    enabled: bool,
    /// `[presign] target`: kept per key, signer set and path.
    target: usize,
    /// `[presign] low_watermark`: refill below this.
    low_watermark: usize,
    /// `[presign] max_concurrent`: generation sessions at once, cluster-wide.
    max_concurrent: usize,
    /// The restore watermark was checked since start.
    restore_checked: bool,
    /// Database rollbacks this node detected while running, since start (each one
    /// discards the presignatures from before the restore point; audited as
    /// `presign.discarded` and logged as an alert).
    rollbacks_detected: u64,
    /// Per key and signer set.
    pools: Vec<PoolStatus>,
}

/// `GET /api/v1/presignatures/status` (operator, auditor): this node's pools.
#[utoipa::path(
    get,
    path = "/api/v1/presignatures/status",
    tag = "presignatures",
    operation_id = "presignature_status",
    summary = "This node's presignature pools",
    responses((status = 200, description = "Pools", body = PresignStatus)),
    extensions(("x-roles" = json!(["admin", "operator", "auditor"])))
)]
pub async fn status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<PresignStatus>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let node = &s.node;
    let pools = pool_status(node).await?;
    let cfg = &node.cfg.presign;
    Ok(Json(PresignStatus {
        node_id: node.cfg.node_id.clone(),
        enabled: cfg.enabled,
        target: cfg.target,
        low_watermark: cfg.low_watermark,
        max_concurrent: cfg.max_concurrent,
        restore_checked: node.presign.restore_checked(),
        rollbacks_detected: node.presign.rollbacks_detected(),
        pools,
    }))
}

/// Answer of `POST /api/v1/presignatures/generate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateRequested {
    /// Presignatures asked for, per matching key and signer set.
    requested: usize,
    /// The key asked for, if one.
    key_id: Option<String>,
    /// Peers the request was relayed to.
    relayed_to: Vec<String>,
}

/// `POST /api/v1/presignatures/generate` (admin): asks every node to generate `count`
/// presignatures beyond the target for each matching (key, signer set) it leads; 202.
#[utoipa::path(
    post,
    path = "/api/v1/presignatures/generate",
    tag = "presignatures",
    operation_id = "generate_presignatures",
    summary = "Generate presignatures beyond the target",
    description = "Relayed to every connected peer; each node generates for the sets it \
        leads. Audited (`presign.generate`).",
    request_body = Generate,
    responses(
        (status = 202, description = "Requested", body = GenerateRequested),
        (status = 400, description = "`count_out_of_range`, `unknown_key`, \
            `invalid_signer_set`", body = ErrorBody),
        (status = 409, description = "`presign_disabled`: the pool is disabled on this node",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn generate(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<Generate>,
) -> Result<Response, ApiError> {
    p.require(&[])?;
    let node = &s.node;
    if !node.cfg.presign.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "presign_disabled",
            "the presignature pool is disabled on this node ([presign] enabled = false)",
        ));
    }
    let count = usize::try_from(body.count)
        .ok()
        .filter(|c| (1..=MAX_GENERATE).contains(c))
        .ok_or_else(|| {
            ApiError::bad_request(
                "count_out_of_range",
                format!("count must be between 1 and {MAX_GENERATE}"),
            )
        })?;
    if let Some(k) = &body.key_id {
        let known = node
            .store
            .usable_shares(&node.cfg.node_id)
            .await?
            .into_iter()
            .any(|r| r.key_id == *k && r.protocol == "cggmp24");
        if !known {
            return Err(ApiError::bad_request(
                "unknown_key",
                "no usable ECDSA key with this id on this node",
            ));
        }
    }
    if let Some(set) = &body.signer_set {
        let mut sorted = set.clone();
        sorted.sort();
        sorted.dedup();
        let known = crate::dkg::session::known_nodes(node);
        if sorted.len() != set.len() || set.len() > 64 || !set.iter().all(|n| known.contains(n)) {
            return Err(ApiError::bad_request(
                "invalid_signer_set",
                "signer_set must list distinct node ids of this cluster",
            ));
        }
    }
    let mut set = body.signer_set.clone();
    if let Some(s) = &mut set {
        s.sort();
    }
    let req = GenerateRequest {
        key_id: body.key_id.clone(),
        signer_set: set.clone(),
        count,
    };
    // On record before anything is asked of this node or its peers.
    node.store
        .audit(
            &node.cfg.node_id,
            AuditEntry::new(&p.token_id, "presign.generate").details(
                json!({ "key_id": body.key_id, "signer_set": body.signer_set, "count": count }),
            ),
        )
        .await?;
    let payload = wire::encode(&req).map_err(ApiError::internal)?;
    let mut relayed = Vec::new();
    for peer in node.net.p2p.connected_peers() {
        let f = Frame::new(uuid::Uuid::new_v4(), PRESIGN_GENERATE, payload.clone());
        if node.net.p2p.send(&peer, f).await.is_ok() {
            relayed.push(peer);
        }
    }
    node.presign.request(body.key_id.clone(), set, count);
    Ok((
        StatusCode::ACCEPTED,
        Json(GenerateRequested {
            requested: count,
            key_id: body.key_id,
            relayed_to: relayed,
        }),
    )
        .into_response())
}

/// Prometheus lines of the pools (appended to `GET /metrics`).
pub async fn metrics_text(node: &TxCtx) -> String {
    let Ok(pools) = pool_status(node).await else {
        return String::new();
    };
    let mut out = String::from(
        "# HELP signer_presignatures Presignatures of this node by key, signer set and state.\n\
         # TYPE signer_presignatures gauge\n",
    );
    let mut rate = String::from(
        "# HELP signer_presignatures_generation_rate_per_min Presignatures stored per minute (last 10 min).\n\
         # TYPE signer_presignatures_generation_rate_per_min gauge\n",
    );
    for p in pools {
        let labels = format!(
            "key_id=\"{}\",signer_set=\"{}\"",
            p.key_id.escape_default(),
            p.signer_set.join(",").escape_default()
        );
        for (state, v) in [
            ("available", p.available),
            ("reserved", p.reserved),
            ("consumed", p.consumed),
            ("discarded", p.discarded),
            (
                "generating",
                i64::try_from(p.generating).unwrap_or(i64::MAX),
            ),
        ] {
            out.push_str(&format!(
                "signer_presignatures{{{labels},state=\"{state}\"}} {v}\n"
            ));
        }
        rate.push_str(&format!(
            "signer_presignatures_generation_rate_per_min{{{labels}}} {}\n",
            p.generation_rate_per_min
        ));
    }
    out.push_str(&rate);
    out
}
