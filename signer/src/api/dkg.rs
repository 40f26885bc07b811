//! Key-ceremony and key endpoints; the logic lives in [`crate::dkg`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::AppState;
use crate::audit::AuditEntry;
use crate::dkg::keys::{
    AddressError, Chain, DeriveError, DerivedAddress, KeyInfo, MAX_ADDRESS_COUNT, MAX_CHILD_INDEX,
};
use crate::dkg::{DkgError, DkgProtocol};

/// The protocols `POST /api/v1/dkg/start` accepts (aux info has its own endpoint).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documentation of the accepted DkgProtocol values
pub enum KeyProtocol {
    /// CGGMP24 threshold ECDSA (P2WPKH keys).
    Cggmp24,
    /// FROST, Bitcoin ciphersuite (P2TR keys).
    Frost,
}

/// Body of `POST /api/v1/dkg/start`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDkg {
    /// `cggmp24` (ECDSA) or `frost` (Taproot).
    #[schema(value_type = KeyProtocol)]
    protocol: DkgProtocol,
    /// Signers needed, 2 to the number of participants.
    #[serde(deserialize_with = "super::error::json_int::i64")]
    #[schema(minimum = 2, maximum = 64)]
    threshold: i64,
    /// Node ids taking part (default: every node of the cluster); distinct, 2 to 64.
    #[serde(default)]
    #[schema(min_items = 2, max_items = 64)]
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
            DkgError::Store(e) => e.into(),
            e @ DkgError::UnknownKey(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", e.to_string())
            }
            e @ DkgError::NotApproved { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_approved", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// Answer of `POST /api/v1/dkg/start`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DkgStarted {
    /// The ceremony (and, once completed, key) id.
    ceremony_id: Uuid,
    /// `cggmp24` or `frost`.
    #[schema(value_type = String, example = "frost")]
    protocol: &'static str,
    /// Threshold.
    threshold: u16,
    /// Participants, sorted.
    participants: Vec<String>,
    /// This node: it announced the ceremony.
    coordinator: String,
    /// Participants the announcement did not reach (the ceremony then fails).
    announce_failed: Vec<String>,
}

/// `POST /api/v1/dkg/start` (operator): starts a key ceremony; 202 with its id.
#[utoipa::path(
    post,
    path = "/api/v1/dkg/start",
    tag = "keys",
    operation_id = "start_dkg",
    summary = "Start a key ceremony (DKG)",
    description = "Announces a CGGMP24 or FROST key generation to the participants and \
        answers at once; follow it with `GET /api/v1/dkg/ceremonies/{id}`. Audited \
        (`dkg.start`).",
    request_body = StartDkg,
    responses(
        (status = 202, description = "Announced", body = DkgStarted),
        (status = 400, description = "`invalid_protocol`, `invalid_threshold`, \
            `invalid_participants`", body = ErrorBody),
        (status = 409, description = "`participants_unavailable`: a participant is not live \
            or not connected", body = ErrorBody),
        (status = 503, description = "`etcd_unavailable` (no start lock without etcd)",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator"])))
)]
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
    let spec = started.spec;
    Ok((
        StatusCode::ACCEPTED,
        Json(DkgStarted {
            ceremony_id: spec.id,
            protocol: spec.protocol.as_str(),
            threshold: spec.threshold,
            participants: spec.participants,
            coordinator: spec.coordinator,
            announce_failed: started.announce_failed,
        }),
    )
        .into_response())
}

/// A key or aux-info ceremony as this node recorded it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ceremony {
    /// Ceremony id (the key id of a completed key ceremony).
    id: Uuid,
    /// `cggmp24`, `frost` or `aux_info`.
    #[schema(example = "cggmp24")]
    protocol: String,
    /// Threshold.
    t: i32,
    /// Number of participants.
    n: usize,
    /// Participant node ids in run-index order.
    participants: Vec<String>,
    /// Node that announced it.
    coordinator: String,
    /// etcd fencing token of the coordinator's start lock.
    fencing_token: i64,
    /// `pending`, `running`, `completed` or `failed`.
    #[schema(example = "completed")]
    state: String,
    /// Shared public key (hex), once completed.
    public_key: Option<String>,
    /// Why it failed.
    error: Option<String>,
    /// When this node recorded it.
    created_at: DateTime<Utc>,
    /// When it completed or failed.
    completed_at: Option<DateTime<Utc>>,
}

impl From<&crate::store::dkg::CeremonyRow> for Ceremony {
    fn from(c: &crate::store::dkg::CeremonyRow) -> Self {
        Ceremony {
            id: c.id,
            protocol: c.protocol.clone(),
            t: c.threshold,
            n: c.participants.len(),
            participants: c.participants.clone(),
            coordinator: c.coordinator.clone(),
            fencing_token: c.fencing_token,
            state: c.state.clone(),
            public_key: c.public_key.as_ref().map(hex::encode),
            error: c.error.clone(),
            created_at: c.created_at,
            completed_at: c.completed_at,
        }
    }
}

/// Answer of `GET /api/v1/dkg/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DkgStatus {
    /// This node's id.
    node_id: String,
    /// Key ceremonies, newest first (at most 1000).
    ceremonies: Vec<Ceremony>,
}

/// `GET /api/v1/dkg/status`: every key ceremony this node took part in.
#[utoipa::path(
    get,
    path = "/api/v1/dkg/status",
    tag = "keys",
    operation_id = "dkg_status",
    summary = "Key ceremonies this node took part in",
    responses((status = 200, description = "Ceremonies", body = DkgStatus)),
    extensions(("x-roles" = json!(["admin", "operator", "auditor"])))
)]
pub async fn status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<DkgStatus>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let rows = s.node.store.list_ceremonies(1000).await?;
    Ok(Json(DkgStatus {
        node_id: s.node.cfg.node_id.clone(),
        ceremonies: rows.iter().map(Ceremony::from).collect(),
    }))
}

/// `GET /api/v1/dkg/ceremonies/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/dkg/ceremonies/{id}",
    tag = "keys",
    operation_id = "get_ceremony",
    summary = "One key or aux-info ceremony",
    params(("id" = Uuid, Path, description = "Ceremony id")),
    responses(
        (status = 200, description = "The ceremony", body = Ceremony),
        (status = 400, description = "`invalid_id`: not a uuid", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator", "auditor"])))
)]
pub async fn ceremony(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Ceremony>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "ceremony id must be a uuid"))?;
    match s.node.store.ceremony(id).await? {
        Some(c) => Ok(Json(Ceremony::from(&c))),
        None => Err(ApiError::not_found(format!("ceremony {id} not found"))),
    }
}

/// Answer of `GET /api/v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// This node's id.
    node_id: String,
    /// Key shares unsealed and validated since start.
    loaded_shares: usize,
    /// Completed keys with this node's usable share.
    keys: Vec<KeyInfo>,
}

/// `GET /api/v1/keys`: completed keys with this node's usable share.
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    operation_id = "list_keys",
    summary = "Completed keys, descriptors and first addresses",
    responses((status = 200, description = "Keys", body = KeyList)),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn keys(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<KeyList>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let keys = crate::dkg::keys::list_keys(&s.node).await?;
    Ok(Json(KeyList {
        node_id: s.node.cfg.node_id.clone(),
        loaded_shares: s.node.dkg.loaded_count(),
        keys,
    }))
}

/// Body of `POST /api/v1/aux-info/start`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartAux {
    /// Node ids taking part (default: every node); distinct, 2 to 64.
    #[serde(default)]
    #[schema(min_items = 2, max_items = 64)]
    participants: Option<Vec<String>>,
    /// Run a new ceremony even if aux info for this node set exists.
    #[serde(default)]
    force: bool,
}

/// Answer of `POST /api/v1/aux-info/start` when existing aux info is reused (200).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuxReused {
    /// The ceremony that made the aux info in use.
    ceremony_id: Uuid,
    /// The node set, sorted.
    participants: Vec<String>,
    /// Always `true`.
    reused: bool,
}

/// Answer of `POST /api/v1/aux-info/start` when a ceremony was announced (202).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuxStarted {
    /// The new ceremony.
    ceremony_id: Uuid,
    /// The node set, sorted.
    participants: Vec<String>,
    /// This node: it announced the ceremony.
    coordinator: String,
    /// Always `false`.
    reused: bool,
    /// Participants the announcement did not reach (the ceremony then fails).
    announce_failed: Vec<String>,
}

/// `POST /api/v1/aux-info/start` (operator): starts an aux-info ceremony that every
/// participant joins; 202 with its id, or 200 when existing aux info for the same node
/// set is reused.
#[utoipa::path(
    post,
    path = "/api/v1/aux-info/start",
    tag = "keys",
    operation_id = "start_aux_info",
    summary = "Start an aux-info ceremony (CGGMP24 Paillier keys)",
    description = "Every participant joins; ECDSA signing needs it once per node set. Audited \
        (`aux_info.start`).",
    request_body = StartAux,
    responses(
        (status = 200, description = "Aux info for this node set exists and is reused",
         body = AuxReused),
        (status = 202, description = "Announced", body = AuxStarted),
        (status = 400, description = "`invalid_participants`, `invalid_threshold`",
         body = ErrorBody),
        (status = 409, description = "`participants_unavailable`", body = ErrorBody),
        (status = 503, description = "`etcd_unavailable`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator"])))
)]
pub async fn start_aux(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<StartAux>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    let out =
        crate::dkg::start::start_aux(s.node.dkg_ctx(), &p.token_id, body.participants, body.force)
            .await?;
    Ok(match out {
        crate::dkg::start::AuxStart::Reused {
            ceremony,
            participants,
        } => {
            let answer = AuxReused {
                ceremony_id: ceremony,
                participants,
                reused: true,
            };
            let details = serde_json::to_value(&answer).map_err(ApiError::internal)?;
            // No ceremony runs; the request is still on record.
            s.node
                .store
                .audit(
                    &s.node.cfg.node_id,
                    AuditEntry::new(&p.token_id, "aux_info.start").details(details),
                )
                .await?;
            (StatusCode::OK, Json(answer)).into_response()
        }
        // Audited by the start itself, before the announcement.
        crate::dkg::start::AuxStart::Started(started) => {
            let spec = started.spec;
            let answer = AuxStarted {
                ceremony_id: spec.id,
                participants: spec.participants,
                coordinator: spec.coordinator,
                reused: false,
                announce_failed: started.announce_failed,
            };
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
    })
}

/// Answer of `GET /api/v1/aux-info/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuxStatus {
    /// This node's id.
    node_id: String,
    /// This node's pool of pregenerated safe primes.
    prime_pool: crate::dkg::primes::PoolStatus,
    /// Aux-info ceremonies, newest first (at most 1000).
    ceremonies: Vec<Ceremony>,
}

/// `GET /api/v1/aux-info/status`: aux-info ceremonies and this node's prime pool
/// (counts and live generation progress).
#[utoipa::path(
    get,
    path = "/api/v1/aux-info/status",
    tag = "keys",
    operation_id = "aux_info_status",
    summary = "Aux-info ceremonies and the prime pool",
    responses((status = 200, description = "Status", body = AuxStatus)),
    extensions(("x-roles" = json!(["admin", "operator", "auditor"])))
)]
pub async fn aux_status(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<AuxStatus>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor])?;
    let rows = s.node.store.list_aux_ceremonies(1000).await?;
    let pool = s.node.dkg.primes.status(&s.node).await?;
    Ok(Json(AuxStatus {
        node_id: s.node.cfg.node_id.clone(),
        prime_pool: pool,
        ceremonies: rows.iter().map(Ceremony::from).collect(),
    }))
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

/// The query of `GET /api/v1/keys/{id}/addresses` as documented (parsed by
/// [`parse_address_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation of the query parsed by parse_address_query
pub struct AddressParams {
    /// `receive` (default) or `change`.
    #[param(inline)]
    chain: Option<Chain>,
    /// First child index (default 0); `from + count - 1` must not pass 2^31 - 1.
    #[param(minimum = 0, maximum = 2_147_483_647)]
    from: Option<u32>,
    /// Number of addresses, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    count: Option<u32>,
}

/// Answer of `GET /api/v1/keys/{id}/addresses`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyAddressList {
    /// This node's id.
    node_id: String,
    /// The key.
    key_id: String,
    /// `ecdsa` or `taproot`.
    #[schema(value_type = String, example = "taproot")]
    key_type: &'static str,
    /// Network of the addresses.
    network: String,
    /// The chain.
    chain: Chain,
    /// By ascending index.
    addresses: Vec<DerivedAddress>,
}

/// `GET /api/v1/keys/{id}/addresses?chain=receive|change&from=0&count=20`:
/// addresses derived from the key's xpub (same roles as `GET /api/v1/keys`).
#[utoipa::path(
    get,
    path = "/api/v1/keys/{id}/addresses",
    tag = "keys",
    operation_id = "key_addresses",
    summary = "Addresses of a key",
    description = "Derived from the key's xpub: P2WPKH for ecdsa keys, P2TR (BIP-86) for \
        taproot keys, on the node's network.",
    params(
        ("id" = String, Path, description = "Key id", max_length = 128),
        AddressParams,
    ),
    responses(
        (status = 200, description = "Addresses", body = KeyAddressList),
        (status = 400, description = "`invalid_chain`, `invalid_from`, `invalid_count`, \
            `invalid_range`", body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
        (status = 409, description = "`key_not_loaded`, `key_not_hd`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn addresses(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(key_id): ApiPath<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<KeyAddressList>, ApiError> {
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
    Ok(Json(KeyAddressList {
        node_id: s.node.cfg.node_id.clone(),
        key_id: a.key_id,
        key_type: a.key_type,
        network: a.network,
        chain: a.chain,
        addresses: a.addresses,
    }))
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

/// Body of `POST /api/v1/keys/{id}/reshare`; both fields omitted: a refresh.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartReshare {
    /// New holders (node ids, distinct, 2 to 64; default: the key's current holders).
    #[serde(default)]
    #[schema(min_items = 2, max_items = 64)]
    participants: Option<Vec<String>>,
    /// New threshold, 2 to the number of new holders (default: the key's threshold).
    #[serde(default, deserialize_with = "super::error::json_int::opt_i64")]
    #[schema(minimum = 2, maximum = 64)]
    threshold: Option<i64>,
}

/// Answer of `POST /api/v1/keys/{id}/reshare`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReshareStarted {
    /// Session id; follow it with `GET /api/v1/dkg/ceremonies/{id}`.
    session_id: Uuid,
    /// The key.
    key_id: String,
    /// Whether it is a refresh (same holders and threshold).
    refresh: bool,
    /// New threshold.
    threshold: u16,
    /// New holders, sorted.
    participants: Vec<String>,
    /// Old holders that deal.
    dealers: Vec<String>,
    /// Nodes whose signed votes approved it.
    approvers: Vec<String>,
    /// Participants the announcement did not reach (the run then fails).
    announce_failed: Vec<String>,
}

/// `POST /api/v1/keys/{id}/reshare` (operator): proposes a reshare (new holders and/or
/// threshold) or a refresh (same) of a key; it runs only after a quorum of node votes.
#[utoipa::path(
    post,
    path = "/api/v1/keys/{id}/reshare",
    tag = "keys",
    operation_id = "reshare_key",
    summary = "Reshare or refresh a key (same public key and addresses)",
    description = "The holders vote on the proposal like on a payment; with at least the \
        key's threshold of approvals the new sharing is generated, confirmed by every \
        participant and switched to on each node at once. Audited (`key.reshare.*`, \
        `key.share.deleted`). Follow it with `GET /api/v1/dkg/ceremonies/{session_id}`.",
    params(("id" = String, Path, description = "Key id", max_length = 128)),
    request_body = StartReshare,
    responses(
        (status = 202, description = "Approved and announced", body = ReshareStarted),
        (status = 400, description = "`invalid_threshold`, `invalid_participants`",
         body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
        (status = 409, description = "`not_approved` (no quorum of approving votes), \
            `participants_unavailable`", body = ErrorBody),
        (status = 503, description = "`etcd_unavailable`, `custody_sealed`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator"])))
)]
pub async fn reshare(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(body): ApiJson<StartReshare>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    if key_id.len() > 128 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "key ids are at most 128 bytes",
        ));
    }
    let started = crate::dkg::reshare::start(
        s.node.dkg_ctx(),
        &p.token_id,
        &key_id,
        body.participants,
        body.threshold,
    )
    .await?;
    let spec = started.spec;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReshareStarted {
            session_id: spec.id,
            refresh: spec.is_refresh(),
            key_id: spec.key_id,
            threshold: spec.threshold,
            participants: spec.participants,
            dealers: spec.dealers,
            approvers: started.approvers,
            announce_failed: started.announce_failed,
        }),
    )
        .into_response())
}
