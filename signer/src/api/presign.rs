//! Presignature pool endpoints; the logic lives in [`crate::presign`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::audit::AuditEntry;
use crate::p2p::Frame;
use crate::presign::wire::{self, GenerateRequest, MAX_GENERATE, PRESIGN_GENERATE};
use crate::tx::TxCtx;

/// Body of `POST /api/v1/presignatures/generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    signer_set: Option<Vec<String>>,
    count: i64,
}

/// One pool line: counts of this node's database plus in-flight generation.
#[derive(Debug, serde::Serialize)]
pub struct PoolStatus {
    key_id: String,
    signer_set: Vec<String>,
    available: i64,
    reserved: i64,
    consumed: i64,
    discarded: i64,
    generating: usize,
    generated_last_10min: i64,
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

/// `GET /api/v1/presignatures/status` (operator, auditor): this node's pools.
pub async fn status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let node = &s.node;
    let pools = pool_status(node).await?;
    let cfg = &node.cfg.presign;
    Ok(Json(json!({
        "node_id": node.cfg.node_id,
        "enabled": cfg.enabled,
        "target": cfg.target,
        "low_watermark": cfg.low_watermark,
        "max_concurrent": cfg.max_concurrent,
        "restore_checked": node.presign.restore_checked(),
        "pools": pools,
    })))
}

/// `POST /api/v1/presignatures/generate` (admin): asks every node to generate `count`
/// presignatures beyond the target for each matching (key, signer set) it leads; 202.
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
        Json(json!({ "requested": count, "key_id": body.key_id, "relayed_to": relayed })),
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
