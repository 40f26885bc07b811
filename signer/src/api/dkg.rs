//! Key-ceremony and key endpoints; the logic lives in [`crate::dkg`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
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
use crate::dkg::keys::{AddressError, Chain, DeriveError, MAX_ADDRESS_COUNT, MAX_CHILD_INDEX};
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
            // Ceremonies need the start lock and fencing token: without an etcd
            // quorum they fail closed.
            e @ (DkgError::EtcdUnavailable(_) | DkgError::Coord(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "etcd_unavailable",
                e.to_string(),
            ),
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
    let started = crate::dkg::start::start(
        s.node.dkg_ctx(),
        &p.token_id,
        body.protocol,
        body.threshold,
        body.participants,
    )
    .await?;
    let spec = &started.spec;
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
    let out =
        crate::dkg::start::start_aux(s.node.dkg_ctx(), &p.token_id, body.participants, body.force)
            .await?;
    let (status, answer) = match out {
        crate::dkg::start::AuxStart::Reused {
            ceremony,
            participants,
        } => {
            let v =
                json!({ "ceremony_id": ceremony, "participants": participants, "reused": true });
            // No ceremony runs; the request is still on record.
            s.node
                .store
                .audit(
                    &s.node.cfg.node_id,
                    AuditEntry::new(&p.token_id, "aux_info.start").details(v.clone()),
                )
                .await?;
            (StatusCode::OK, v)
        }
        // Audited by the start itself, before the announcement.
        crate::dkg::start::AuxStart::Started(started) => {
            let spec = &started.spec;
            let v = json!({
                "ceremony_id": spec.id,
                "participants": spec.participants,
                "coordinator": spec.coordinator,
                "reused": false,
                "announce_failed": started.announce_failed,
            });
            (StatusCode::ACCEPTED, v)
        }
    };
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

/// Default number of addresses of `GET /api/v1/keys/{id}/addresses`.
const DEFAULT_ADDRESS_COUNT: u32 = 20;
/// Most query parameters accepted (there are three; repeats are refused).
const MAX_QUERY_PARAMS: usize = 8;

/// Validated query of `GET /api/v1/keys/{id}/addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddressQuery {
    chain: Chain,
    from: u32,
    count: u32,
}

/// Parses `chain=receive|change&from=N&count=N`; every refusal is a 400 with a
/// stable code naming the parameter.
fn parse_address_query(pairs: &[(String, String)]) -> Result<AddressQuery, ApiError> {
    unique_params(pairs)?;
    let mut q = AddressQuery {
        chain: Chain::Receive,
        from: 0,
        count: DEFAULT_ADDRESS_COUNT,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "chain" => {
                q.chain = Chain::parse(v).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_chain",
                        format!("chain must be receive or change, not {:?}", truncate(v)),
                    )
                })?;
            }
            "from" => {
                q.from = v
                    .parse::<u32>()
                    .ok()
                    .filter(|f| *f <= MAX_CHILD_INDEX)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_from",
                            format!(
                                "from must be an integer between 0 and {MAX_CHILD_INDEX}, not {:?}",
                                truncate(v)
                            ),
                        )
                    })?;
            }
            "count" => {
                q.count = v
                    .parse::<u32>()
                    .ok()
                    .filter(|c| (1..=MAX_ADDRESS_COUNT).contains(c))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_count",
                            format!("count must be an integer between 1 and {MAX_ADDRESS_COUNT}, not {:?}", truncate(v)),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter {:?}; use chain, from, count",
                        truncate(other)
                    ),
                ))
            }
        }
    }
    if q.count - 1 > MAX_CHILD_INDEX - q.from {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!(
                "from {} + count {} goes past the last non-hardened index {MAX_CHILD_INDEX}",
                q.from, q.count
            ),
        ));
    }
    Ok(q)
}

/// The name/value pairs of a query string (400 `invalid_query` if it does not
/// decode).
pub(super) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("malformed query string: {}", e.body_text()),
        )
    })?;
    Ok(pairs)
}

/// Refuses more than [`MAX_QUERY_PARAMS`] parameters or a parameter given twice
/// (400 `invalid_query`).
pub(super) fn unique_params(pairs: &[(String, String)]) -> Result<(), ApiError> {
    if pairs.len() > MAX_QUERY_PARAMS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("at most {MAX_QUERY_PARAMS} query parameters"),
        ));
    }
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {} given twice", truncate(k)),
            ));
        }
    }
    Ok(())
}

/// At most 64 characters of a client value, for error messages.
pub(super) fn truncate(v: &str) -> String {
    v.chars().take(64).collect()
}

impl From<AddressError> for ApiError {
    fn from(e: AddressError) -> Self {
        match e {
            e @ AddressError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", e.to_string())
            }
            e @ AddressError::NotLoaded(_) => {
                ApiError::new(StatusCode::CONFLICT, "key_not_loaded", e.to_string())
            }
            e @ AddressError::NoXpub(_) => {
                ApiError::new(StatusCode::CONFLICT, "key_not_hd", e.to_string())
            }
            AddressError::Derive(e @ (DeriveError::Range { .. } | DeriveError::Count(_))) => {
                ApiError::bad_request("invalid_range", e.to_string())
            }
            AddressError::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// `GET /api/v1/keys/{id}/addresses?chain=receive|change&from=0&count=20`:
/// addresses derived from the key's xpub (same roles as `GET /api/v1/keys`).
pub async fn addresses(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(key_id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let q = parse_address_query(&query_pairs(query)?)?;
    if key_id.len() > 128 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "key id longer than 128 characters",
        ));
    }
    let a = crate::dkg::keys::key_addresses(&s.node, &key_id, q.chain, q.from, q.count).await?;
    Ok(Json(json!({
        "node_id": s.node.cfg.node_id,
        "key_id": a.key_id,
        "key_type": a.key_type,
        "network": a.network,
        "chain": a.chain,
        "addresses": a.addresses,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<AddressQuery, &'static str> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_address_query(&v).map_err(|e| e.code)
    }

    #[test]
    fn address_query_defaults_to_twenty_receive_addresses_from_zero() {
        assert_eq!(
            q(&[]),
            Ok(AddressQuery {
                chain: Chain::Receive,
                from: 0,
                count: 20
            })
        );
        assert_eq!(
            q(&[("chain", "change"), ("from", "2147483647"), ("count", "1")]),
            Ok(AddressQuery {
                chain: Chain::Change,
                from: MAX_CHILD_INDEX,
                count: 1
            })
        );
    }

    #[test]
    fn address_query_refusals_have_stable_codes() {
        assert_eq!(q(&[("chain", "external")]), Err("invalid_chain"));
        assert_eq!(q(&[("from", "-1")]), Err("invalid_from"));
        assert_eq!(q(&[("from", "2147483648")]), Err("invalid_from"));
        assert_eq!(q(&[("from", "x")]), Err("invalid_from"));
        assert_eq!(q(&[("count", "0")]), Err("invalid_count"));
        assert_eq!(q(&[("count", "1001")]), Err("invalid_count"));
        assert_eq!(
            q(&[("from", "2147483647"), ("count", "2")]),
            Err("invalid_range")
        );
        assert_eq!(q(&[("index", "1")]), Err("invalid_query"));
        assert_eq!(q(&[("count", "1"), ("count", "2")]), Err("invalid_query"));
    }
}
