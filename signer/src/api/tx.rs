//! Transaction and UTXO endpoints; the logic lives in [`crate::tx`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::AppState;
use crate::store::approvals::ApprovalRow;
use crate::store::transactions::TransactionRow;
use crate::tx::approvals::RegisteredApprover;
use crate::tx::intake::Submission;
use crate::tx::TxError;

/// Largest accepted raw funding transaction (hex characters).
const MAX_RAW_TX_HEX: usize = 2 * 1024 * 1024;

impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Invalid { code, message } => ApiError::bad_request(code, message),
            TxError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            TxError::Forbidden { code, message } => {
                ApiError::new(StatusCode::FORBIDDEN, code, message)
            }
            e @ TxError::UnknownKey(_) => ApiError::bad_request("unknown_key", e.to_string()),
            e @ TxError::Sealed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "custody_sealed",
                e.to_string(),
            ),
            TxError::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

/// Body of `POST /api/v1/transactions`: a PSBT, or recipient + amount. Documented
/// as [`SubmitTxForms`] (the two accepted forms).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTx {
    #[serde(default)]
    psbt: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default, deserialize_with = "super::error::json_int::opt_i64")]
    amount_sats: Option<i64>,
    #[serde(default, deserialize_with = "super::error::json_int::opt_i64")]
    fee_rate_sat_vb: Option<i64>,
}

/// A payment given as a PSBT (BIP-174) that spends outputs of one of the keys.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation of SubmitTx
pub struct SubmitPsbt {
    /// The PSBT, base64.
    #[schema(min_length = 1)]
    psbt: String,
}

/// A payment of `amount_sats` to `recipient` from key `key_id` (the node selects the
/// UTXOs it knows).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation of SubmitTx
pub struct SubmitPayment {
    /// The key that pays.
    #[schema(max_length = 64)]
    key_id: String,
    /// Address on the node's network.
    #[schema(max_length = 128)]
    recipient: String,
    /// Amount, 1 to 21 million BTC in satoshis.
    #[serde(deserialize_with = "super::error::json_int::i64")]
    #[schema(minimum = 1, maximum = 2_100_000_000_000_000_i64)]
    amount_sats: i64,
    /// Fee rate (default 2).
    #[serde(default, deserialize_with = "super::error::json_int::opt_i64")]
    #[schema(minimum = 1)]
    fee_rate_sat_vb: Option<i64>,
}

/// Body of `POST /api/v1/transactions`: a PSBT, or key, recipient and amount.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = SubmitTx)]
#[allow(dead_code)] // documentation of SubmitTx
pub enum SubmitTxForms {
    /// A PSBT.
    Psbt(SubmitPsbt),
    /// Recipient and amount.
    Payment(SubmitPayment),
}

fn submission(b: SubmitTx) -> Result<Submission, ApiError> {
    match (b.psbt, b.key_id, b.recipient, b.amount_sats) {
        (Some(psbt), None, None, None) => Ok(Submission::Psbt(psbt.into_bytes())),
        (None, Some(key_id), Some(recipient), Some(amount)) => {
            let amount_sats = u64::try_from(amount)
                .ok()
                .filter(|a| *a > 0 && *a <= wallet::MAX_MONEY_SATS)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "amount_out_of_range",
                        format!(
                            "amount_sats must be between 1 and {}",
                            wallet::MAX_MONEY_SATS
                        ),
                    )
                })?;
            let fee_rate_sat_vb = match b.fee_rate_sat_vb {
                None => 2,
                Some(r) => u64::try_from(r).ok().filter(|r| *r >= 1).ok_or_else(|| {
                    ApiError::bad_request(
                        "fee_rate_out_of_range",
                        "fee_rate_sat_vb must be at least 1",
                    )
                })?,
            };
            if key_id.len() > 64 || recipient.len() > 128 {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "key_id or recipient too long",
                ));
            }
            Ok(Submission::Pay {
                key_id,
                recipient,
                amount_sats,
                fee_rate_sat_vb,
            })
        }
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "give either `psbt`, or `key_id`, `recipient` and `amount_sats`",
        )),
    }
}

/// `POST /api/v1/transactions` (operator): validates, stores and proposes; 202 with
/// the transaction once this node voted.
#[utoipa::path(
    post,
    path = "/api/v1/transactions",
    tag = "transactions",
    operation_id = "submit_transaction",
    summary = "Submit a payment (PSBT, or recipient and amount)",
    description = "Validates it (policy, sighashes, input amounts), stores it and proposes it \
        to the other nodes; nothing is stored when refused. Audited.",
    request_body = SubmitTxForms,
    responses(
        (status = 202, description = "Stored and proposed", body = TransactionRow),
        (status = 400, description = "`invalid_request`, `amount_out_of_range`, \
            `fee_rate_out_of_range`, `unknown_key` and the wallet's codes (`psbt_malformed`, \
            `input_not_ours`, `address_wrong_network`, `insufficient_funds`, \
            `unproven_input_amount`, `input_amount_mismatch`, ...)", body = ErrorBody),
        (status = 409, description = "`txid_approved_with_other_data` and other conflicts",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator"])))
)]
pub async fn submit(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<SubmitTx>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    let sub = submission(body)?;
    // The validation, the proposal and the answer hold most of a submission's
    // memory: they run in turns (`[api] max_concurrent_submissions`).
    let _turn = s.node.submission_turn().await;
    let id = crate::tx::intake::submit(&s.node, sub, &p.token_id, &p.name).await?;
    let row = s.node.store.get_transaction(id).await?;
    Ok((StatusCode::ACCEPTED, Json(row)).into_response())
}

/// Answer of `GET /api/v1/transactions/{id}`: the row and what is known beyond it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionDetail {
    /// The stored transaction.
    #[serde(flatten)]
    row: TransactionRow,
    /// The final transaction (hex), once signed.
    signed_tx: Option<String>,
    /// The signed, unfinalized PSBT (base64), once signed.
    signed_psbt: Option<String>,
    /// Human approvals this node holds, oldest first.
    approvals: Vec<ApprovalRow>,
    /// The unsigned transaction's txid as this node validated it (what an approver
    /// signs), while the transaction is in progress on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    unsigned_txid: Option<String>,
}

/// `GET /api/v1/transactions/{id}`: state, and the final transaction once signed.
#[utoipa::path(
    get,
    path = "/api/v1/transactions/{id}",
    tag = "transactions",
    operation_id = "get_transaction",
    summary = "One transaction: state, approvals, signed forms",
    params(("id" = Uuid, Path, description = "Transaction id")),
    responses(
        (status = 200, description = "The transaction", body = TransactionDetail),
        (status = 400, description = "`invalid_id`: not a uuid", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TransactionDetail>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "transaction id must be a uuid"))?;
    let row = s.node.store.get_transaction(id).await?;
    let (signed, signed_psbt) = s.node.store.signed_forms(id).await?;
    let approvals = s.node.store.approvals(id).await?;
    Ok(Json(TransactionDetail {
        row,
        signed_tx: signed,
        signed_psbt,
        approvals,
        // What an approver signs, with the id: the unsigned transaction's txid as
        // this node validated it.
        unsigned_txid: s.node.tx.get(id).map(|p| p.validated.txid.to_string()),
    }))
}

/// Body of `POST /api/v1/transactions/{id}/approvals`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// The approver's registered name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    approver: String,
    /// Its Ed25519 signature over `vote::approval_message(id, txid)` (hex).
    #[schema(max_length = 256)]
    signature: String,
}

/// Answer of `POST /api/v1/transactions/{id}/approvals`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Approvals {
    /// The transaction.
    transaction_id: Uuid,
    /// Every approval this node holds for it.
    approvals: Vec<ApprovalRow>,
}

/// `POST /api/v1/transactions/{id}/approvals` (role `approver` only, not admin): a
/// human approval, signed with the approver's own key, for policies that require
/// them. The transaction's initiator cannot approve it.
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{id}/approvals",
    tag = "transactions",
    operation_id = "approve_transaction",
    summary = "A human approval of a transaction",
    description = "Signed with the approver's own Ed25519 key over (transaction id, unsigned \
        txid); verified, recorded and relayed to every node. Only tokens of role `approver` \
        (an admin is not an approver); the initiator cannot approve.",
    params(("id" = Uuid, Path, description = "Transaction id")),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "Recorded", body = Approvals),
        (status = 400, description = "`invalid_id`, `invalid_approval`, \
            `bad_approval_signature`", body = ErrorBody),
        (status = 403, description = "`approver_role_required`, `self_approval`, \
            `unknown_approver`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`already_approved`, `not_awaiting_approval`",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["approver"])))
)]
pub async fn approve(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<Approvals>, ApiError> {
    if p.role != Role::Approver {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "approver_role_required",
            "approvals are submitted with a token of role approver (an admin is not an approver)",
        ));
    }
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "transaction id must be a uuid"))?;
    if !vote::valid_approver_name(&body.approver) || body.signature.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_approval",
            "approver must be a registered approver name and signature 64 bytes of hex",
        ));
    }
    let approvals =
        crate::tx::approvals::approve(&s.node, id, &body.approver, &body.signature, &p.token_id)
            .await?;
    Ok(Json(Approvals {
        transaction_id: id,
        approvals,
    }))
}

/// Body of `POST /api/v1/approvers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndorseBody {
    /// Approver name (`[a-z0-9][a-z0-9._-]{0,63}`).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$", example = "alice")]
    name: String,
    /// Role it approves in (`[a-z0-9_-]{1,32}`).
    #[schema(pattern = "^[a-z0-9_-]{1,32}$", example = "treasury")]
    role: String,
    /// Its Ed25519 public key (hex, 32 bytes).
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    public_key: String,
}

/// Answer of `POST /api/v1/approvers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Endorsed {
    /// The approver as this node sees it now.
    approver: RegisteredApprover,
    /// Endorsements (distinct nodes) an approver needs to be active.
    threshold: u16,
}

/// `POST /api/v1/approvers` (admin): this node endorses an approver identity. It
/// becomes active once `threshold` distinct nodes endorsed the same name, role and
/// key (each node's own admin).
#[utoipa::path(
    post,
    path = "/api/v1/approvers",
    tag = "transactions",
    operation_id = "endorse_approver",
    summary = "This node endorses an approver identity",
    description = "Signed with this node's vote key and sent to every peer; the approver is \
        active once `threshold` nodes endorsed the same name, role and key. Audited \
        (`approver.endorse`).",
    request_body = EndorseBody,
    responses(
        (status = 201, description = "Endorsed", body = Endorsed),
        (status = 400, description = "`invalid_public_key`, `invalid_approver`", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin"])))
)]
pub async fn endorse_approver(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<EndorseBody>,
) -> Result<(StatusCode, Json<Endorsed>), ApiError> {
    p.require(&[])?;
    let pk: [u8; 32] = hex::decode(&body.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_public_key", "public_key must be 32 bytes of hex")
        })?;
    let a = vote::Approver::new(&body.name, &body.role, pk).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_approver",
            "name must match [a-z0-9][a-z0-9._-]{0,63} and role [a-z0-9_-]{1,32}",
        )
    })?;
    let r = crate::tx::approvals::endorse(&s.node, &a, &p.token_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(Endorsed {
            approver: r,
            threshold: s.node.cfg.threshold,
        }),
    ))
}

/// Answer of `GET /api/v1/approvers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApproverList {
    /// Every approver identity this node holds endorsements of.
    approvers: Vec<RegisteredApprover>,
    /// Endorsements (distinct nodes) an approver needs to be active.
    threshold: u16,
}

/// `GET /api/v1/approvers` (admin, auditor): every approver identity this node
/// knows, the nodes that endorsed it and whether it is active.
#[utoipa::path(
    get,
    path = "/api/v1/approvers",
    tag = "transactions",
    operation_id = "list_approvers",
    summary = "Approver identities and their endorsements",
    responses((status = 200, description = "Approvers", body = ApproverList)),
    extensions(("x-roles" = json!(["admin", "auditor"])))
)]
pub async fn list_approvers(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<ApproverList>, ApiError> {
    p.require(&[Role::Auditor])?;
    let list = crate::tx::approvals::registry(&s.node).await?;
    Ok(Json(ApproverList {
        approvers: list,
        threshold: s.node.cfg.threshold,
    }))
}

/// Default page size of `GET /api/v1/transactions`.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page size of `GET /api/v1/transactions`.
pub const MAX_PAGE: i64 = 500;
/// Longest cursor accepted (a cursor made here is 32 characters).
const MAX_CURSOR_LEN: usize = 64;

/// Position after the last row of a page: `(created_at, id)` of that row, the
/// order of the listing (newest first, then id descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last row, in microseconds since the epoch (PostgreSQL's
    /// precision, so the value round-trips exactly).
    pub created_micros: i64,
    /// Id of the last row.
    pub id: Uuid,
}

impl Cursor {
    /// The cursor after `row`.
    pub fn after(row: &crate::store::transactions::TransactionRow) -> Cursor {
        Cursor {
            created_micros: row.created_at.timestamp_micros(),
            id: row.id,
        }
    }

    /// Opaque text form: base64url (no padding) of 8 bytes of big-endian
    /// microseconds and the 16 bytes of the id.
    pub fn encode(&self) -> String {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.created_micros.to_be_bytes());
        b[8..].copy_from_slice(self.id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// Parses [`Self::encode`]'s form; `None` for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() > MAX_CURSOR_LEN {
            return None;
        }
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let b: [u8; 24] = b.try_into().ok()?;
        let (ts, id) = b.split_at(8);
        Some(Cursor {
            created_micros: i64::from_be_bytes(ts.try_into().ok()?),
            id: Uuid::from_slice(id).ok()?,
        })
    }

    /// The position, if it is a time PostgreSQL can compare with (a cursor made
    /// here always is; years 1 to 9999 are taken, anything else is refused before it
    /// reaches the database, which would fail on it).
    fn position(&self) -> Option<(chrono::DateTime<chrono::Utc>, Uuid)> {
        use chrono::Datelike as _;
        chrono::DateTime::from_timestamp_micros(self.created_micros)
            .filter(|t| (1..=9999).contains(&t.year()))
            .map(|t| (t, self.id))
    }
}

/// A parsed `GET /api/v1/transactions` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only transactions in this state.
    pub state: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
}

/// Parses the query of `GET /api/v1/transactions`: `state`, `limit`, `cursor`,
/// each at most once.
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
    use super::dkg::truncate;
    super::dkg::unique_params(pairs)?;
    let mut q = ListQuery {
        state: None,
        limit: DEFAULT_PAGE,
        cursor: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "state" => {
                if !crate::store::transactions::STATES.contains(&v.as_str()) {
                    return Err(ApiError::bad_request(
                        "invalid_state",
                        format!(
                            "unknown state {:?}; use one of {}",
                            truncate(v),
                            crate::store::transactions::STATES.join(", ")
                        ),
                    ));
                }
                q.state = Some(v.clone());
            }
            "limit" => {
                q.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!(
                                "limit must be an integer between 1 and {MAX_PAGE}, not {:?}",
                                truncate(v)
                            ),
                        )
                    })?;
            }
            "cursor" => {
                let c = Cursor::decode(v)
                    .filter(|c| c.position().is_some())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_cursor",
                            "cursor is not one this API returned as next_cursor",
                        )
                    })?;
                q.cursor = Some(c);
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter {:?}; use state, limit, cursor",
                        truncate(other)
                    ),
                ))
            }
        }
    }
    Ok(q)
}

/// Transaction states (the `state` filter of `GET /api/v1/transactions`).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // documentation of crate::store::transactions::STATES
pub enum TxState {
    /// Stored, not proposed yet.
    Pending,
    /// In its voting round.
    Voting,
    /// Approved by a quorum.
    Approved,
    /// Being signed.
    Signing,
    /// Signed.
    Signed,
    /// Broadcast.
    Broadcast,
    /// Confirmed on chain.
    Confirmed,
    /// Rejected by a quorum.
    Rejected,
    /// Failed.
    Failed,
    /// No decision in time.
    Expired,
    /// Aborted for Byzantine behaviour.
    AbortedByzantine,
}

/// The query of `GET /api/v1/transactions` as documented (parsed by
/// [`parse_list_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation of the query parsed by parse_list_query
pub struct TxListParams {
    /// Only transactions in this state.
    #[param(inline)]
    state: Option<TxState>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Continue after the page whose `next_cursor` this is (opaque).
    #[param(pattern = "^[A-Za-z0-9_-]{32}$")]
    cursor: Option<String>,
}

/// Answer of `GET /api/v1/transactions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionPage {
    /// Newest first.
    transactions: Vec<TransactionRow>,
    /// Cursor of the next page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/v1/transactions?state=&limit=&cursor=`: newest first; `next_cursor`
/// continues the listing when more rows exist (null otherwise).
#[utoipa::path(
    get,
    path = "/api/v1/transactions",
    tag = "transactions",
    operation_id = "list_transactions",
    summary = "A page of transactions, newest first",
    params(TxListParams),
    responses(
        (status = 200, description = "A page", body = TransactionPage),
        (status = 400, description = "`invalid_state`, `invalid_limit`, `invalid_cursor`",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator", "approver", "auditor"])))
)]
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TransactionPage>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let q = parse_list_query(&super::dkg::query_pairs(query)?)?;
    let mut rows = s
        .node
        .store
        .list_transactions(
            q.state.as_deref(),
            q.cursor.and_then(|c| c.position()),
            q.limit + 1,
        )
        .await?;
    let more = rows.len() > usize::try_from(q.limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(q.limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|r| Cursor::after(r).encode())
    } else {
        None
    };
    Ok(Json(TransactionPage {
        transactions: rows,
        next_cursor,
    }))
}

/// Body of `POST /api/v1/utxos`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportUtxos {
    /// The funding transaction, hex (surrounding white space allowed).
    #[schema(max_length = 2_097_152)]
    raw_tx: String,
}

/// One imported output (`wallet::OwnedUtxo` as JSON).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation of wallet::OwnedUtxo's JSON form
pub struct ImportedUtxo {
    /// Key that owns it.
    key_id: String,
    /// The output, `txid:vout`.
    #[schema(pattern = "^[0-9a-f]{64}:[0-9]+$")]
    outpoint: String,
    /// Value in satoshis.
    value_sats: u64,
    /// Its scriptPubKey (hex).
    script_pubkey: String,
    /// Chain below the key's xpub (0 receive, 1 change).
    chain: u32,
    /// Index within the chain.
    index: u32,
}

/// Answer of `POST /api/v1/utxos`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    /// The outputs of the transaction that pay this node's keys.
    #[schema(value_type = Vec<ImportedUtxo>)]
    imported: Vec<wallet::OwnedUtxo>,
}

/// `POST /api/v1/utxos` (operator): imports the outputs of a funding transaction that
/// pay this node's keys.
#[utoipa::path(
    post,
    path = "/api/v1/utxos",
    tag = "transactions",
    operation_id = "import_utxos",
    summary = "Import the outputs of a funding transaction",
    description = "Keeps the outputs that pay this node's keys (within each key's lookahead) \
        and the whole transaction, so this node can prove input amounts.",
    request_body = ImportUtxos,
    responses(
        (status = 200, description = "Imported outputs (possibly none)", body = Imported),
        (status = 400, description = "`tx_too_large` and the wallet's codes for a transaction \
            that does not decode", body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "operator"])))
)]
pub async fn import_utxos(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<ImportUtxos>,
) -> Result<Json<Imported>, ApiError> {
    p.require(&[Role::Operator])?;
    if body.raw_tx.len() > MAX_RAW_TX_HEX {
        return Err(ApiError::bad_request("tx_too_large", "raw_tx is too large"));
    }
    let found = crate::tx::intake::import_utxos(&s.node, body.raw_tx.as_bytes()).await?;
    Ok(Json(Imported { imported: found }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, &'static str> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_list_query(&v).map_err(|e| e.code)
    }

    #[test]
    fn imported_utxos_are_written_as_their_documented_schema_says() {
        let u = wallet::OwnedUtxo {
            key_id: "k".into(),
            outpoint: bitcoin::OutPoint {
                txid: "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
                    .parse()
                    .expect("txid"),
                vout: 7,
            },
            value_sats: 5,
            script_pubkey: bitcoin::ScriptBuf::from_hex("0014aa").expect("script"),
            chain: 1,
            index: 2,
        };
        let v = serde_json::to_value(Imported { imported: vec![u] }).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"imported": [{
                "key_id": "k",
                "outpoint": "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b:7",
                "value_sats": 5,
                "script_pubkey": "0014aa",
                "chain": 1,
                "index": 2,
            }]})
        );
    }

    #[test]
    fn both_documented_forms_of_a_submission_are_accepted_and_nothing_else() {
        let psbt = serde_json::json!({"psbt": "cHNidP8="});
        let pay = serde_json::json!({"key_id": "k", "recipient": "r", "amount_sats": 5.0});
        for body in [&psbt, &pay] {
            assert!(serde_json::from_value::<SubmitTxForms>(body.clone()).is_ok());
            let b: SubmitTx = serde_json::from_value(body.clone()).expect("accepted");
            assert!(submission(b).is_ok(), "{body}");
        }
        let both =
            serde_json::json!({"psbt": "x", "key_id": "k", "recipient": "r", "amount_sats": 5});
        assert!(serde_json::from_value::<SubmitTxForms>(both.clone()).is_err());
        let b: SubmitTx = serde_json::from_value(both).expect("parses");
        assert!(submission(b).is_err());
    }

    #[test]
    fn cursor_round_trips_and_rejects_anything_else() {
        let c = Cursor {
            created_micros: 1_700_000_000_123_456,
            id: Uuid::new_v4(),
        };
        let text = c.encode();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Cursor::decode(&text), Some(c));
        assert_eq!(Cursor::decode(&text[..31]), None);
        assert_eq!(Cursor::decode(&format!("{text}AAAA")), None);
        assert_eq!(Cursor::decode("not base64!"), None);
        assert_eq!(Cursor::decode(&"A".repeat(10_000)), None);
    }

    #[test]
    fn list_query_defaults_and_limits() {
        let d = q(&[]).expect("defaults");
        assert_eq!((d.state, d.limit, d.cursor), (None, DEFAULT_PAGE, None));
        let c = Cursor {
            created_micros: 5,
            id: Uuid::nil(),
        };
        let v = q(&[
            ("state", "signed"),
            ("limit", "500"),
            ("cursor", &c.encode()),
        ])
        .expect("valid");
        assert_eq!(v.state.as_deref(), Some("signed"));
        assert_eq!(v.limit, MAX_PAGE);
        assert_eq!(v.cursor, Some(c));
    }

    #[test]
    fn list_query_refusals_have_stable_codes() {
        assert_eq!(q(&[("state", "done")]), Err("invalid_state"));
        assert_eq!(q(&[("state", "signed' OR 1=1 --")]), Err("invalid_state"));
        assert_eq!(q(&[("limit", "0")]), Err("invalid_limit"));
        assert_eq!(q(&[("limit", "501")]), Err("invalid_limit"));
        assert_eq!(q(&[("limit", "-1")]), Err("invalid_limit"));
        assert_eq!(q(&[("limit", "ten")]), Err("invalid_limit"));
        assert_eq!(q(&[("cursor", "abc")]), Err("invalid_cursor"));
        assert_eq!(q(&[("cursor", "")]), Err("invalid_cursor"));
        let out_of_range = Cursor {
            created_micros: i64::MAX,
            id: Uuid::nil(),
        };
        assert_eq!(
            q(&[("cursor", &out_of_range.encode())]),
            Err("invalid_cursor")
        );
        // Valid for chrono, out of PostgreSQL's range (was a 500 from the database).
        let zeros = "0".repeat(32);
        assert!(Cursor::decode(&zeros).is_some());
        assert_eq!(q(&[("cursor", &zeros)]), Err("invalid_cursor"));
        let year_10000 = Cursor {
            created_micros: 253_402_300_800_000_000,
            id: Uuid::nil(),
        };
        assert_eq!(
            q(&[("cursor", &year_10000.encode())]),
            Err("invalid_cursor")
        );
        assert_eq!(q(&[("page", "2")]), Err("invalid_query"));
        assert_eq!(q(&[("limit", "1"), ("limit", "2")]), Err("invalid_query"));
    }
}
