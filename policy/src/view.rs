//! The normalized transaction view and the evaluation context the caller supplies.
//!
//! The signer crate builds a [`TxView`] from a PSBT and a [`Context`] from its own
//! database and clock, then calls [`crate::Policy::evaluate`]. Both are plain data; both
//! decode from JSON with a size bound and reject unknown fields.

use bitcoin::{OutPoint, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

use crate::canon::Canon;
use crate::descriptor::normalize_loose;
use crate::error::DecodeError;
use crate::types::{Network, ScriptType, ViewDigest};

/// Largest JSON document [`TxView::from_json_slice`] and
/// [`EvalRequest::from_json_slice`] accept (1 MiB).
pub const MAX_VIEW_JSON_BYTES: usize = 1024 * 1024;

/// A transaction, normalized for policy evaluation.
///
/// Amounts are `u64` satoshis. The fee rate is the exact rational
/// `fee_sats / vsize_vb`; no floating point is involved anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxView {
    /// Id of the threshold key that would sign.
    pub key_id: String,
    /// Network the transaction is for.
    pub network: Network,
    /// Id of the unsigned transaction.
    pub txid: Txid,
    /// Inputs, in transaction order.
    pub inputs: Vec<TxInput>,
    /// Outputs, in transaction order.
    pub outputs: Vec<TxOutput>,
    /// Fee in satoshis; must equal the input total minus the output total.
    pub fee_sats: u64,
    /// Virtual size in vbytes (weight / 4, rounded up).
    pub vsize_vb: u64,
}

/// One input of a [`TxView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxInput {
    /// The output being spent (`txid:vout` in JSON).
    pub outpoint: OutPoint,
    /// Value of the spent output in satoshis.
    pub amount_sats: u64,
    /// Id of the key that owns (and would sign) the spent output.
    pub key_id: String,
}

/// One output of a [`TxView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxOutput {
    /// The destination address as the requester gave it, if the script has one. When
    /// present it must parse, be valid for the view's network and encode
    /// `script_pubkey`.
    #[serde(default)]
    pub address: Option<String>,
    /// The scriptPubKey (hex in JSON).
    pub script_pubkey: ScriptBuf,
    /// Kind of `script_pubkey`; must agree with the script itself.
    pub script_type: ScriptType,
    /// Value in satoshis.
    pub amount_sats: u64,
    /// The transaction's builder marked this output as change.
    pub is_change: bool,
    /// The caller verified that `script_pubkey` derives from the wallet's own
    /// descriptor (the descriptor of `key_id`).
    pub belongs_to_wallet: bool,
    /// Descriptors (as written in the policy, checksum optional) from which the caller
    /// verified `script_pubkey` derives. Used by `allow_descriptors` and
    /// `deny_descriptors`; see [`crate::Policy::descriptors`].
    #[serde(default)]
    pub descriptors: Vec<String>,
}

impl TxOutput {
    /// True if the output stays in the wallet: marked change and verified to belong to
    /// the wallet's descriptor. Every other output counts as value sent.
    pub fn is_kept(&self) -> bool {
        self.is_change && self.belongs_to_wallet
    }
}

/// Facts about the world that the caller supplies, so evaluation needs no clock and
/// no database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Current time, Unix seconds (UTC).
    pub now_unix: u64,
    /// Amount this key already sent within each velocity window the policy defines
    /// (see [`crate::Policy::velocity_windows`]). A window the policy needs but that is
    /// missing here makes the transaction fail (`velocity_history_missing`).
    #[serde(default)]
    pub window_spent: Vec<WindowSpent>,
    /// Human approvals received so far.
    #[serde(default)]
    pub approvals: Vec<ApprovalRecord>,
    /// Id of the person or service that initiated the transaction. Their own approvals
    /// never count.
    pub initiator: String,
}

/// Amount already spent in one rolling window ending now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpent {
    /// Window length in seconds, as written in the policy.
    pub window_seconds: u64,
    /// Satoshis sent (outputs not kept, plus fees) by transactions signed for this key
    /// within the last `window_seconds`, excluding the one being evaluated.
    pub spent_sats: u64,
}

/// One human approval.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    /// Authenticated id of the approver.
    pub approver: String,
    /// Role the approver acted in (from their authenticated token).
    pub role: String,
}

/// A view and its context, as read by `signer policy eval FILE REQUEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    /// The transaction.
    pub view: TxView,
    /// The context.
    pub context: Context,
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_VIEW_JSON_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_VIEW_JSON_BYTES,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Json {
        line: e.line(),
        column: e.column(),
        reason: strip_json_location(&e.to_string()),
    })
}

/// serde_json appends " at line L column C" to its messages; the location is kept in
/// separate fields.
fn strip_json_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl TxView {
    /// Decodes a view from JSON, refusing more than [`MAX_VIEW_JSON_BYTES`] and
    /// unknown fields.
    pub fn from_json_slice(bytes: &[u8]) -> Result<TxView, DecodeError> {
        decode_json(bytes)
    }

    /// SHA-256 over the canonical encoding of this view (see `docs/POLICY.md`).
    /// An [`crate::Approval`] carries the digest of the view it approved.
    pub fn digest(&self) -> ViewDigest {
        let mut c = Canon::new("custody-policy/tx-view/v1");
        c.str(&self.key_id);
        c.tag(self.network.canon_tag());
        c.bytes(self.txid.as_ref());
        c.u64(self.inputs.len() as u64);
        for i in &self.inputs {
            c.bytes(i.outpoint.txid.as_ref());
            c.u64(u64::from(i.outpoint.vout));
            c.u64(i.amount_sats);
            c.str(&i.key_id);
        }
        c.u64(self.outputs.len() as u64);
        for o in &self.outputs {
            c.opt_str(o.address.as_deref());
            c.bytes(o.script_pubkey.as_bytes());
            c.tag(o.script_type.canon_tag());
            c.u64(o.amount_sats);
            c.bool(o.is_change);
            c.bool(o.belongs_to_wallet);
            let mut descs: Vec<&str> = o.descriptors.iter().map(|d| normalize_loose(d)).collect();
            descs.sort_unstable();
            descs.dedup();
            c.u64(descs.len() as u64);
            for d in descs {
                c.str(d);
            }
        }
        c.u64(self.fee_sats);
        c.u64(self.vsize_vb);
        ViewDigest::from_bytes(c.finish())
    }
}

impl Context {
    /// Decodes a context from JSON, refusing more than [`MAX_VIEW_JSON_BYTES`] and
    /// unknown fields.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Context, DecodeError> {
        decode_json(bytes)
    }
}

impl EvalRequest {
    /// Decodes `{"view": ..., "context": ...}` from JSON, refusing more than
    /// [`MAX_VIEW_JSON_BYTES`] and unknown fields.
    pub fn from_json_slice(bytes: &[u8]) -> Result<EvalRequest, DecodeError> {
        decode_json(bytes)
    }
}
