//! Route handlers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{generate_token, generate_token_with, Principal, Role};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::AppState;
use crate::audit::{AuditEntry, AuditRecord};
use crate::store::audit::AuditOf;
use crate::store::tokens::TokenRow;

/// Answer of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `healthy` (the process answers).
    #[schema(value_type = String, example = "healthy")]
    status: &'static str,
    /// Software version.
    #[schema(value_type = String)]
    version: &'static str,
    /// This node's id.
    node_id: String,
    /// Now (RFC 3339).
    #[schema(format = DateTime)]
    timestamp: String,
}

/// `GET /health`: liveness, no authentication.
#[utoipa::path(
    get,
    path = "/health",
    tag = "node",
    operation_id = "health",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "The node is alive", body = Health))
)]
pub async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "healthy",
        version: env!("CARGO_PKG_VERSION"),
        node_id: s.node.cfg.node_id.clone(),
        timestamp: chrono::Utc::now().to_rfc3339(),
    })
}

/// `database` / `etcd` of `Ready`: `ok` or `unreachable`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Reachable.
    Ok,
    /// Not reachable.
    Unreachable,
}

impl Reachability {
    fn of(ok: bool) -> Self {
        if ok {
            Reachability::Ok
        } else {
            Reachability::Unreachable
        }
    }
}

/// Memory protection of the process, read from /proc (`memory` of `Ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryStatus {
    /// Locked memory (`VmLck`) in KiB.
    locked_kib: u64,
    /// Whether the process is dumpable (it should not be).
    dumpable: bool,
    /// Soft `RLIMIT_CORE` in bytes (0: no core dumps).
    core_limit: u64,
}

/// Process hardening achieved at start (`hardening` of `Ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct HardeningStatus {
    /// `hardened`, `overridden` (not hardened, unsealed anyway under
    /// `[hardening] allow_unhardened_memory`) or `refused` (custody stays sealed).
    #[schema(value_type = String, example = "hardened")]
    state: &'static str,
    /// `mlockall` succeeded.
    memory_locked: bool,
    /// `RLIMIT_CORE` is 0.
    core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` is 0.
    not_dumpable: bool,
}

/// Answer of `GET /ready` (200 when ready, 503 otherwise, same body).
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Database, etcd and custody are usable.
    ready: bool,
    /// This node's id.
    node_id: String,
    /// This node's PostgreSQL database.
    database: Reachability,
    /// etcd (any member).
    etcd: Reachability,
    /// Each configured etcd member as last probed.
    etcd_members: Vec<crate::coord::members::MemberHealth>,
    /// Peers with an open QUIC connection.
    peers_connected: usize,
    /// Peers configured.
    peers_total: usize,
    /// Custody (HSM/TPM) state.
    custody: crate::infra::CustodyState,
    /// Memory protection, when /proc could be read.
    memory: Option<MemoryStatus>,
    /// Process hardening.
    hardening: HardeningStatus,
    /// This node's certificate and the CA's, with days to expiry (an expired one
    /// makes the node not ready: its peers refuse it).
    certificates: Vec<crate::infra::CertificateStatus>,
}

/// `GET /ready`: 200 when the database, etcd and custody are usable and no
/// certificate of the node expired, 503 otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "node",
    operation_id = "ready",
    summary = "Readiness: database, etcd and custody usable",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready (same body, `ready: false`)", body = Ready),
    )
)]
pub async fn ready(State(s): State<AppState>) -> Response {
    let db_ok = s.node.store.ping().await.is_ok();
    let snap = s.node.cluster_snapshot();
    let custody = s.node.custody_state();
    let unsealed = matches!(custody, crate::infra::CustodyState::Unsealed { .. });
    let hardening = hsm::memory::process_hardening_status().ok();
    let certificates = s.node.certificates();
    let certs_ok = certificates.iter().all(|c| c.state != "expired");
    let ready = db_ok && snap.etcd_ok && unsealed && certs_ok;
    let body = Ready {
        ready,
        node_id: s.node.cfg.node_id.clone(),
        database: Reachability::of(db_ok),
        etcd: Reachability::of(snap.etcd_ok),
        etcd_members: s.node.etcd_members(),
        peers_connected: snap.connected_peers.len(),
        peers_total: s.node.peer_ids().len(),
        custody,
        memory: hardening.map(|h| MemoryStatus {
            locked_kib: h.locked_kib,
            dumpable: h.dumpable != 0,
            core_limit: h.core_limit,
        }),
        hardening: HardeningStatus {
            state: s.node.hardening_state(),
            memory_locked: s.node.hardening().mlock == hsm::memory::MlockStatus::Locked,
            core_dumps_disabled: s.node.hardening().core_dumps_disabled,
            not_dumpable: s.node.hardening().not_dumpable,
        },
        certificates,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus lines of this process's memory: resident set, and the C allocator's
/// live and free heap (with the process locked in memory, freed heap pages stay
/// resident; the two tell live data from what the allocator keeps).
fn memory_metrics() -> String {
    let mut out = String::new();
    if let Some(kib) = hsm::memory::resident_kib() {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {}\n",
            kib.saturating_mul(1024)
        ));
    }
    if let Some(h) = hsm::memory::heap_usage() {
        out.push_str(&format!(
            "# HELP signer_heap_in_use_bytes Heap bytes the node holds (C allocator).\n\
             # TYPE signer_heap_in_use_bytes gauge\n\
             signer_heap_in_use_bytes {}\n\
             # HELP signer_heap_free_bytes Free heap bytes the allocator keeps for reuse.\n\
             # TYPE signer_heap_free_bytes gauge\n\
             signer_heap_free_bytes {}\n",
            h.in_use_bytes, h.free_bytes
        ));
    }
    out
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format 0.0.4: cluster nodes, connected peers, \
        certificates, the process's resident memory and heap, presignature pools.",
    responses(
        (status = 200, description = "Metrics", body = String,
         content_type = "text/plain; version=0.0.4"),
    )
)]
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
    body.push_str(
        "# HELP signer_certificate_days_left Whole days until the certificate expires \
         (negative once expired).\n# TYPE signer_certificate_days_left gauge\n",
    );
    for c in s.node.certificates() {
        if let Some(d) = c.days_left {
            body.push_str(&format!(
                "signer_certificate_days_left{{certificate=\"{}\"}} {d}\n",
                c.name
            ));
        }
    }
    body.push_str(&format!(
        "# HELP signer_api_submissions_in_progress Payment submissions being validated \
         now (at most [api] max_concurrent_submissions; the others wait).\n\
         # TYPE signer_api_submissions_in_progress gauge\n\
         signer_api_submissions_in_progress {}\n",
        s.node.submissions_in_progress()
    ));
    let (sent, sent_proposals, received) = s.node.tx.batches.counts();
    body.push_str(&format!(
        "# HELP signer_tx_proposal_batches_sent_total Batches of two or more payments \
         this node proposed as their leader ([wallet] proposal_batch_max).\n\
         # TYPE signer_tx_proposal_batches_sent_total counter\n\
         signer_tx_proposal_batches_sent_total {sent}\n\
         # HELP signer_tx_batched_proposals_sent_total Payments proposed in those batches.\n\
         # TYPE signer_tx_batched_proposals_sent_total counter\n\
         signer_tx_batched_proposals_sent_total {sent_proposals}\n\
         # HELP signer_tx_proposal_batches_received_total Proposal batches from leaders \
         this node handled.\n\
         # TYPE signer_tx_proposal_batches_received_total counter\n\
         signer_tx_proposal_batches_received_total {received}\n"
    ));
    let (votes_sent, votes_received) = s.node.tx.batches.vote_counts();
    body.push_str(&format!(
        "# HELP signer_tx_vote_batches_sent_total Frames carrying this node's votes on \
         two or more payments of one proposal batch.\n\
         # TYPE signer_tx_vote_batches_sent_total counter\n\
         signer_tx_vote_batches_sent_total {votes_sent}\n\
         # HELP signer_tx_vote_batches_received_total Vote batches from peers this node \
         handled.\n\
         # TYPE signer_tx_vote_batches_received_total counter\n\
         signer_tx_vote_batches_received_total {votes_received}\n"
    ));
    body.push_str(&format!(
        "# HELP signer_tx_selection_reads_total Reads of a key's selectable outputs by \
         this node's coin selection (one serves the payments of [wallet] \
         selection_view_ttl_ms).\n\
         # TYPE signer_tx_selection_reads_total counter\n\
         signer_tx_selection_reads_total {}\n",
        s.node
            .tx
            .selection_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    ));
    body.push_str(&memory_metrics());
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
#[utoipa::path(
    get,
    path = "/api/v1/cluster/status",
    tag = "cluster",
    operation_id = "cluster_status",
    summary = "Cluster status as this node sees it",
    description = "Nodes configured and alive, threshold, `healthy`/`degraded`/`unavailable`, \
        the coordinator, each node and each etcd member.",
    responses((status = 200, description = "Cluster status", body = crate::infra::ClusterStatus)),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn cluster_status(
    State(s): State<AppState>,
    Extension(_p): Extension<Principal>,
) -> Json<crate::infra::ClusterStatus> {
    Json(s.node.cluster_status())
}

/// Answer of `GET /api/v1/whoami`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The caller's token id.
    token_id: String,
    /// The token's name.
    name: String,
    /// The token's role.
    role: Role,
}

/// `GET /api/v1/whoami`.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "cluster",
    operation_id = "whoami",
    summary = "The caller's token id, name and role",
    responses((status = 200, description = "The caller", body = WhoAmI)),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: p.token_id,
        name: p.name,
        role: p.role,
    })
}

/// Longest token name, in characters (after trimming).
pub const MAX_TOKEN_NAME: usize = 64;
/// Largest per-token rate limit.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 printable characters (surrounding white space is trimmed; not only
    /// white space, no control characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$",
        example = "ci-operator"
    )]
    name: String,
    /// Role of the new token.
    role: Role,
    /// Requests per minute (default: the node's `api.default_rate_limit_per_min`).
    #[serde(default, deserialize_with = "super::error::json_int::opt_u32")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    rate_limit_per_min: Option<u32>,
}

/// Answer of `POST /api/v1/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Public token id.
    id: String,
    /// Name (trimmed).
    name: String,
    /// Role.
    role: Role,
    /// Requests per minute.
    rate_limit_per_min: u32,
    /// The bearer token. Shown once; only its hash is stored.
    token: String,
}

/// `POST /api/v1/tokens` (admin).
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "create_token",
    summary = "Create an API token",
    description = "The token itself is in this answer only; the node stores a keyed hash. \
        Audited (`token.create`).",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "`invalid_name`, `invalid_rate_limit`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn create_token(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    p.require(&[])?;
    let name = body.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_TOKEN_NAME
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name must be 1 to 64 printable characters",
        ));
    }
    let rate = body
        .rate_limit_per_min
        .unwrap_or(s.node.cfg.api.default_rate_limit_per_min);
    if rate == 0 || rate > MAX_RATE_LIMIT {
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

/// Answer of `GET /api/v1/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Every token, revoked ones included (never their secrets).
    tokens: Vec<TokenRow>,
}

/// `GET /api/v1/tokens` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    summary = "List API tokens",
    responses((status = 200, description = "Tokens", body = TokenList)),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn list_tokens(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<TokenList>, ApiError> {
    p.require(&[])?;
    let tokens = s.node.store.list_tokens().await?;
    Ok(Json(TokenList { tokens }))
}

/// Answer of `DELETE /api/v1/tokens/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// Id of the revoked token.
    revoked: String,
}

/// `DELETE /api/v1/tokens/{id}` (admin).
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    operation_id = "revoke_token",
    summary = "Revoke an API token",
    description = "Refused at once by this node (and by the others at their next \
        verification). Audited (`token.revoke`).",
    params(("id" = String, Path, description = "Token id (1 to 32 ASCII letters and digits)",
            pattern = "^[A-Za-z0-9]{1,32}$")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such token, or already revoked",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn revoke_token(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Revoked>, ApiError> {
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
    Ok(Json(Revoked { revoked: id }))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this sequence number (default 0: from the first).
    #[serde(default)]
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Answer of `GET /api/v1/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Records by ascending sequence number.
    records: Vec<AuditRecord>,
}

/// `GET /api/v1/audit` (auditor).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    operation_id = "list_audit_records",
    summary = "A page of this node's audit log",
    params(AuditQuery),
    responses(
        (status = 200, description = "Records", body = AuditList),
        (status = 400, description = "`invalid_limit`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "auditor"])))
)]
pub async fn audit_list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    p.require(&[Role::Auditor])?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let rows = s.node.store.audit_rows(q.after.unwrap_or(0), limit).await?;
    Ok(Json(AuditList { records: rows }))
}

/// Answer of `GET /api/v1/audit/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// The whole chain verifies.
    valid: bool,
    /// Records verified before the first error (all of them when valid).
    verified_records: i64,
    /// Hash of the last verified record (hex).
    head: String,
    /// The first error, when not valid.
    error: Option<String>,
}

/// `GET /api/v1/audit/verify` (auditor): verifies the whole chain.
#[utoipa::path(
    get,
    path = "/api/v1/audit/verify",
    tag = "audit",
    operation_id = "verify_audit_chain",
    summary = "Recompute this node's audit hash chain",
    responses((status = 200, description = "Result of the verification", body = AuditVerification)),
    extensions(("x-roles" = json!(["admin", "auditor"])))
)]
pub async fn audit_verify(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<AuditVerification>, ApiError> {
    p.require(&[Role::Auditor])?;
    let (verified, head, error) = s.node.store.verify_audit_chain().await?;
    Ok(Json(AuditVerification {
        valid: error.is_none(),
        verified_records: verified,
        head: hex::encode(head),
        error: error.map(|e| e.to_string()),
    }))
}

/// Answer of `POST /api/v1/p2p/ping`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PingAnswer {
    /// This node's id.
    node_id: String,
    /// Every peer answered.
    all_ok: bool,
    /// Per peer.
    peers: Vec<crate::net::PingResult>,
}

/// `POST /api/v1/p2p/ping` (admin): sends a QUIC ping to every peer and reports
/// which answered.
#[utoipa::path(
    post,
    path = "/api/v1/p2p/ping",
    tag = "cluster",
    operation_id = "p2p_ping",
    summary = "QUIC ping to every peer",
    description = "Waits up to 5 s per peer.",
    responses((status = 200, description = "Which peers answered", body = PingAnswer)),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn p2p_ping(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<PingAnswer>, ApiError> {
    p.require(&[])?;
    let results = s.node.net.ping_all(std::time::Duration::from_secs(5)).await;
    let all_ok = results.iter().all(|r| r.ok);
    Ok(Json(PingAnswer {
        node_id: s.node.cfg.node_id.clone(),
        all_ok,
        peers: results,
    }))
}

/// Body of `POST /api/v1/cluster/peers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPeer {
    /// Node id of the new peer (its certificate's identity): lower-case letters,
    /// digits and `-`.
    #[schema(pattern = r"^[a-z0-9-]{1,32}$", example = "node-6")]
    id: String,
    /// Its QUIC address (`ip:port`; an IPv6 address in brackets).
    #[schema(min_length = 3, max_length = 64, example = "10.0.0.6:7000")]
    addr: String,
    /// Its certificate (PEM), issued by the cluster CA for `id`.
    #[schema(min_length = 1, max_length = 16384)]
    certificate_pem: String,
}

/// Answer of `POST /api/v1/cluster/peers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerAdded {
    /// This node.
    node_id: String,
    /// The peer.
    peer: String,
    /// `added`, `address_changed` or `unchanged`.
    change: &'static str,
    /// The live peer set afterwards, sorted.
    peers: Vec<String>,
}

/// `POST /api/v1/cluster/peers` (admin): adds a node to this node's live peer set
/// without a restart.
#[utoipa::path(
    post,
    path = "/api/v1/cluster/peers",
    tag = "cluster",
    operation_id = "add_peer",
    summary = "Add a peer node without a restart",
    description = "The certificate must chain to the cluster CA, be valid now and carry the \
        identity `id`. From then on the peer may connect and be sent to, and it appears in \
        the cluster status; it gets no key material (a share only comes through a reshare \
        approved by a quorum of node votes). Audited (`cluster.peer_added`). Not persisted: \
        add the peer to `[[p2p.peers]]` in the config file too. Peers are not removed.",
    request_body = AddPeer,
    responses(
        (status = 200, description = "Added, address changed, or already present", body = PeerAdded),
        (status = 400, description = "`invalid_peer`, `peer_certificate_refused`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn add_peer(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<AddPeer>,
) -> Result<Json<PeerAdded>, ApiError> {
    p.require(&[])?;
    let addr: std::net::SocketAddr = body.addr.parse().map_err(|_| {
        ApiError::bad_request("invalid_peer", "addr must be an IP address and port")
    })?;
    use crate::infra::AddPeerError;
    use crate::p2p::PeerChange;
    let change = s
        .node
        .add_peer(&p.token_id, &body.id, addr, &body.certificate_pem)
        .await
        .map_err(|e| match e {
            AddPeerError::InvalidPeer(m) => ApiError::bad_request("invalid_peer", m),
            AddPeerError::CertificateRefused(m) => {
                ApiError::bad_request("peer_certificate_refused", m)
            }
            AddPeerError::Store(e) => e.into(),
        })?;
    Ok(Json(PeerAdded {
        node_id: s.node.cfg.node_id.clone(),
        peer: body.id,
        change: match change {
            PeerChange::Added => "added",
            PeerChange::AddressChanged => "address_changed",
            PeerChange::Unchanged => "unchanged",
        },
        peers: s.node.peer_ids(),
    }))
}
