//! Transaction and UTXO endpoints; the logic lives in [`crate::tx`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiJson};
use super::AppState;
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

/// Body of `POST /api/v1/transactions`: a PSBT, or recipient + amount.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTx {
    #[serde(default)]
    psbt: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    amount_sats: Option<i64>,
    #[serde(default)]
    fee_rate_sat_vb: Option<i64>,
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
pub async fn submit(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<SubmitTx>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Operator])?;
    let sub = submission(body)?;
    let id = crate::tx::intake::submit(&s.node, sub, &p.token_id, &p.name).await?;
    let row = s.node.store.get_transaction(id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(row))).into_response())
}

/// `GET /api/v1/transactions/{id}`: state, and the final transaction once signed.
pub async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "transaction id must be a uuid"))?;
    let row = s.node.store.get_transaction(id).await?;
    let (signed, signed_psbt) = s.node.store.signed_forms(id).await?;
    let approvals = s.node.store.approvals(id).await?;
    let mut v = json!(row);
    v["signed_tx"] = json!(signed);
    v["signed_psbt"] = json!(signed_psbt);
    v["approvals"] = json!(approvals);
    // What an approver signs, with the id: the unsigned transaction's txid as this
    // node validated it.
    if let Some(p) = s.node.tx.get(id) {
        v["unsigned_txid"] = json!(p.validated.txid.to_string());
    }
    Ok(Json(v))
}

/// Body of `POST /api/v1/transactions/{id}/approvals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// The approver's registered name.
    approver: String,
    /// Its Ed25519 signature over `vote::approval_message(id, txid)` (hex).
    signature: String,
}

/// `POST /api/v1/transactions/{id}/approvals` (role `approver` only, not admin): a
/// human approval, signed with the approver's own key, for policies that require
/// them. The transaction's initiator cannot approve it.
pub async fn approve(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(
        json!({ "transaction_id": id, "approvals": approvals }),
    ))
}

/// Body of `POST /api/v1/approvers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndorseBody {
    /// Approver name (`[a-z0-9][a-z0-9._-]{0,63}`).
    name: String,
    /// Role it approves in (`[a-z0-9_-]{1,32}`).
    role: String,
    /// Its Ed25519 public key (hex, 32 bytes).
    public_key: String,
}

/// `POST /api/v1/approvers` (admin): this node endorses an approver identity. It
/// becomes active once `threshold` distinct nodes endorsed the same name, role and
/// key (each node's own admin).
pub async fn endorse_approver(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<EndorseBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
        Json(json!({ "approver": r, "threshold": s.node.cfg.threshold })),
    ))
}

/// `GET /api/v1/approvers` (admin, auditor): every approver identity this node
/// knows, the nodes that endorsed it and whether it is active.
pub async fn list_approvers(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Auditor])?;
    let list = crate::tx::approvals::registry(&s.node).await?;
    Ok(Json(
        json!({ "approvers": list, "threshold": s.node.cfg.threshold }),
    ))
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

    fn position(&self) -> Option<(chrono::DateTime<chrono::Utc>, Uuid)> {
        chrono::DateTime::from_timestamp_micros(self.created_micros).map(|t| (t, self.id))
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

/// `GET /api/v1/transactions?state=&limit=&cursor=`: newest first; `next_cursor`
/// continues the listing when more rows exist (null otherwise).
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(
        json!({ "transactions": rows, "next_cursor": next_cursor }),
    ))
}

/// Body of `POST /api/v1/utxos`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportUtxos {
    raw_tx: String,
}

/// `POST /api/v1/utxos` (operator): imports the outputs of a funding transaction that
/// pay this node's keys.
pub async fn import_utxos(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<ImportUtxos>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator])?;
    if body.raw_tx.len() > MAX_RAW_TX_HEX {
        return Err(ApiError::bad_request("tx_too_large", "raw_tx is too large"));
    }
    let found = crate::tx::intake::import_utxos(&s.node, body.raw_tx.as_bytes()).await?;
    Ok(Json(json!({ "imported": found })))
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
        assert_eq!(q(&[("page", "2")]), Err("invalid_query"));
        assert_eq!(q(&[("limit", "1"), ("limit", "2")]), Err("invalid_query"));
    }
}
