//! Key-ceremony and key endpoints; the logic lives in [`crate::dkg`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::audit::AuditEntry;
use crate::dkg::{DkgError, DkgProtocol};

/// Body of `POST /api/v1/dkg/start`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartDkg {
    protocol: DkgProtocol,
    threshold: i64,
    #[serde(default)]
    participants: Option<Vec<String>>,
}

impl From<DkgError> for ApiError {
    fn from(e: DkgError) -> Self {
        match e {
            DkgError::InvalidThreshold(m) => ApiError::bad_request("invalid_threshold", m),
            DkgError::InvalidParticipants(m) => ApiError::bad_request("invalid_participants", m),
            e @ DkgError::ParticipantsUnavailable(_) => ApiError::new(
                StatusCode::CONFLICT,
                "participants_unavailable",
                e.to_string(),
            ),
            e @ DkgError::Sealed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "custody_sealed",
                e.to_string(),
            ),
            e @ (DkgError::EtcdUnavailable(_) | DkgError::Coord(_)) => {
                ApiError::unavailable(e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// `POST /api/v1/dkg/start` (operator): starts a key ceremony; 202 with its id.
pub async fn start(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<StartDkg>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    if body.protocol == DkgProtocol::AuxInfo {
        return Err(ApiError::bad_request(
            "invalid_protocol",
            "aux info has its own endpoint: POST /api/v1/aux-info/start",
        ));
    }
    let started =
        crate::dkg::start::start(&s.node, body.protocol, body.threshold, body.participants).await?;
    let spec = &started.spec;
    s.node
        .store
        .audit(
            &s.node.cfg.node_id,
            AuditEntry::new(&p.token_id, "dkg.start")
                .subject(spec.id.to_string())
                .details(json!({
                    "protocol": spec.protocol.as_str(),
                    "threshold": spec.threshold,
                    "participants": spec.participants,
                    "fencing_token": spec.fencing_token,
                })),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "ceremony_id": spec.id,
            "protocol": spec.protocol.as_str(),
            "threshold": spec.threshold,
            "participants": spec.participants,
            "coordinator": spec.coordinator,
            "announce_failed": started.announce_failed,
        })),
    )
        .into_response())
}

fn ceremony_json(c: &crate::store::dkg::CeremonyRow) -> serde_json::Value {
    json!({
        "id": c.id,
        "protocol": c.protocol,
        "t": c.threshold,
        "n": c.participants.len(),
        "participants": c.participants,
        "coordinator": c.coordinator,
        "fencing_token": c.fencing_token,
        "state": c.state,
        "public_key": c.public_key.as_ref().map(hex::encode),
        "error": c.error,
        "created_at": c.created_at,
        "completed_at": c.completed_at,
    })
}

/// `GET /api/v1/dkg/status`: every key ceremony this node took part in.
pub async fn status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let rows = s.node.store.list_ceremonies(1000).await?;
    let list: Vec<_> = rows.iter().map(ceremony_json).collect();
    Ok(Json(
        json!({ "node_id": s.node.cfg.node_id, "ceremonies": list }),
    ))
}

/// `GET /api/v1/dkg/ceremonies/{id}`.
pub async fn ceremony(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "ceremony id must be a uuid"))?;
    match s.node.store.ceremony(id).await? {
        Some(c) => Ok(Json(ceremony_json(&c))),
        None => Err(ApiError::not_found(format!("ceremony {id} not found"))),
    }
}

/// `GET /api/v1/keys`: completed keys with this node's usable share.
pub async fn keys(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let keys = crate::dkg::keys::list_keys(&s.node).await?;
    Ok(Json(json!({
        "node_id": s.node.cfg.node_id,
        "loaded_shares": s.node.dkg.loaded_count(),
        "keys": keys,
    })))
}

/// Body of `POST /api/v1/aux-info/start`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartAux {
    #[serde(default)]
    participants: Option<Vec<String>>,
    /// Run a new ceremony even if aux info for this node set exists.
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/aux-info/start` (operator): starts an aux-info ceremony that every
/// participant joins; 202 with its id, or 200 when existing aux info for the same node
/// set is reused.
pub async fn start_aux(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<StartAux>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    let out = crate::dkg::start::start_aux(&s.node, body.participants, body.force).await?;
    let (status, answer, details) = match out {
        crate::dkg::start::AuxStart::Reused {
            ceremony,
            participants,
        } => {
            let v =
                json!({ "ceremony_id": ceremony, "participants": participants, "reused": true });
            (StatusCode::OK, v.clone(), v)
        }
        crate::dkg::start::AuxStart::Started(started) => {
            let spec = &started.spec;
            let v = json!({
                "ceremony_id": spec.id,
                "participants": spec.participants,
                "coordinator": spec.coordinator,
                "reused": false,
                "announce_failed": started.announce_failed,
            });
            (StatusCode::ACCEPTED, v.clone(), v)
        }
    };
    s.node
        .store
        .audit(
            &s.node.cfg.node_id,
            AuditEntry::new(&p.token_id, "aux_info.start").details(details),
        )
        .await?;
    Ok((status, Json(answer)).into_response())
}

/// `GET /api/v1/aux-info/status`: aux-info ceremonies and this node's prime pool
/// (counts and live generation progress).
pub async fn aux_status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let rows = s.node.store.list_aux_ceremonies(1000).await?;
    let list: Vec<_> = rows.iter().map(ceremony_json).collect();
    let pool = s.node.dkg.primes.status(&s.node).await?;
    Ok(Json(json!({
        "node_id": s.node.cfg.node_id,
        "prime_pool": pool,
        "ceremonies": list,
    })))
}
