//! Transaction and UTXO endpoints; the logic lives in [`crate::tx`].

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
                .filter(|a| *a > 0 && *a <= crate::wallet::MAX_MONEY_SATS)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "amount_out_of_range",
                        format!(
                            "amount_sats must be between 1 and {}",
                            crate::wallet::MAX_MONEY_SATS
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
    let id = crate::tx::intake::submit(&s.node, sub, &p.token_id).await?;
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
    Ok(Json(v))
}

/// `POST /api/v1/transactions/{id}/approvals` (approver): a human approval, for
/// policies that require them. The transaction's initiator cannot approve it.
pub async fn approve(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Approver])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "transaction id must be a uuid"))?;
    let approvals =
        crate::tx::approvals::approve(&s.node, id, &p.token_id, p.role.as_str()).await?;
    Ok(Json(
        json!({ "transaction_id": id, "approvals": approvals }),
    ))
}

/// Query of `GET /api/v1/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/v1/transactions?state=&limit=`: newest first.
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(&[Role::Operator, Role::Auditor, Role::Approver])?;
    if let Some(st) = &q.state {
        if !crate::store::transactions::STATES.contains(&st.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_state",
                format!("unknown state {st:?}"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1..=1000",
        ));
    }
    let rows = s
        .node
        .store
        .list_transactions(q.state.as_deref(), None, limit)
        .await?;
    Ok(Json(json!({ "transactions": rows })))
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
