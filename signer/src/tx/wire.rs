//! Frames of the transaction pipeline (JSON, size-bounded, unknown fields refused).
//! The sender of every frame is the peer's mTLS identity; the frame's session id is
//! the transaction id ([`TX_PROPOSE`], [`TX_DONE`]) or the signing session id
//! ([`TX_SIGN`], [`TX_SIGNATURE`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::p2p::MessageKind;

/// A transaction proposed by its leader to every participant of the key.
pub const TX_PROPOSE: MessageKind = MessageKind::TX_PROPOSE;
/// The leader asks a signer to sign one input.
pub const TX_SIGN: MessageKind = MessageKind::TX_SIGN;
/// A signer returns the signature of one input to the leader.
pub const TX_SIGNATURE: MessageKind = MessageKind::TX_SIGNATURE;
/// The leader sends the finalized, verified transaction to every participant.
pub const TX_DONE: MessageKind = MessageKind::TX_DONE;
/// A node relays a human approval it authenticated to every participant of the key.
pub const TX_APPROVAL: MessageKind = MessageKind::TX_APPROVAL;

/// Largest accepted frame payload of this module (a PSBT of up to 1 MiB in base64).
pub use crate::p2p::json::MAX_JSON_PAYLOAD as MAX_TX_FRAME_BYTES;
pub use crate::p2p::json::{decode, encode, WireError};

/// [`TX_PROPOSE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// Transaction id.
    pub id: Uuid,
    /// Key that signs.
    pub key_id: String,
    /// The unsigned PSBT (base64).
    pub psbt: String,
    /// Who submitted it (token id at the leader).
    pub initiator: String,
    /// End of the voting round (Unix seconds).
    pub deadline_unix: u64,
}

/// [`TX_SIGN`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Signing session id (unique per input and attempt).
    pub session: Uuid,
    /// Transaction id.
    pub tx: Uuid,
    /// Input index.
    pub input: u32,
    /// The signer set, in run order.
    pub signers: Vec<String>,
    /// Public id (hex) of the presignature to use; the reply then carries this
    /// signer's 34-byte partial signature instead of a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presignature: Option<String>,
    /// The round's signed votes as the leader holds them (hex of each encoded
    /// vote), so a signer need not wait for them to arrive on their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<String>,
}

/// [`TX_SIGNATURE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureReply {
    /// Signing session id.
    pub session: Uuid,
    /// Signature: DER-free 64-byte compact ECDSA or BIP-340 Schnorr, or the 34-byte
    /// partial signature when the request named a presignature, hex; `None` when the
    /// signer refused or failed.
    pub signature: Option<String>,
    /// Why it refused or failed.
    pub error: Option<String>,
}

/// [`TX_DONE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// Transaction id.
    pub id: Uuid,
    /// Final signed transaction (hex), or `None` if signing failed.
    pub tx_hex: Option<String>,
    /// The PSBT with every signature, before finalization (base64).
    #[serde(default)]
    pub psbt: Option<String>,
    /// Failure reason.
    pub error: Option<String>,
    /// The round's signed votes as the leader holds them (hex), so every node can
    /// close its own tally with the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<String>,
}

/// [`TX_APPROVAL`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalNotice {
    /// Transaction id.
    pub id: Uuid,
    /// Authenticated identity of the approver at the relaying node.
    pub approver: String,
    /// Role of the approver's token.
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_fields_or_oversize_are_refused() {
        let r = SignRequest {
            session: Uuid::new_v4(),
            tx: Uuid::new_v4(),
            input: 3,
            signers: vec!["node-1".into(), "node-2".into()],
            presignature: None,
            votes: vec!["00".into()],
        };
        let b = encode(&r).expect("encodes");
        let back: SignRequest = decode(&b).expect("decodes");
        assert_eq!((back.session, back.input), (r.session, 3));
        let mut v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        v["extra"] = serde_json::json!(true);
        let bad = serde_json::to_vec(&v).expect("json");
        assert!(matches!(
            decode::<SignRequest>(&bad),
            Err(WireError::Malformed(_))
        ));
        let big = vec![b' '; MAX_TX_FRAME_BYTES + 1];
        assert!(matches!(decode::<Done>(&big), Err(WireError::TooLarge(_))));
    }
}
