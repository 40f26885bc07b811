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
/// A node's recent signed transactions, to every peer ([`super::spent`]).
pub const TX_SPENT: MessageKind = MessageKind::TX_SPENT;
/// Several transactions of one key proposed together by their leader
/// ([`ProposalBatch`]).
pub const TX_PROPOSE_BATCH: MessageKind = MessageKind::TX_PROPOSE_BATCH;

/// One voter's signed votes on the transactions of a proposal batch
/// ([`VoteBatch`]).
pub const TX_VOTE_BATCH: MessageKind = MessageKind::TX_VOTE_BATCH;

/// Most proposals one [`ProposalBatch`] carries, and most votes one [`VoteBatch`]
/// carries.
pub const MAX_BATCH: usize = crate::config::MAX_PROPOSAL_BATCH;

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
    /// The name of the submitting token at the leader: the initiator's identity,
    /// which can never approve the transaction (approver names are compared with
    /// it on every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_name: Option<String>,
}

/// [`TX_PROPOSE_BATCH`]: proposals of one key from one leader, each handled by
/// every participant exactly as a [`Proposal`] of its own (validated, recorded,
/// decided and voted on one by one; a refused one never stops the others). The
/// frame's session id is the batch id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalBatch {
    /// Batch id (the frame's session id; for logs).
    pub batch: Uuid,
    /// The proposals, in the order the leader decided them.
    pub proposals: Vec<Proposal>,
}

impl ProposalBatch {
    /// The batch's shape, checked before any of it is handled: 1 to [`MAX_BATCH`]
    /// proposals, all of one key, no transaction id twice.
    pub fn check(&self) -> Result<(), String> {
        let n = self.proposals.len();
        if n == 0 || n > MAX_BATCH {
            return Err(format!(
                "a batch carries 1 to {MAX_BATCH} proposals, not {n}"
            ));
        }
        let key = &self.proposals[0].key_id;
        if self.proposals.iter().any(|p| &p.key_id != key) {
            return Err("a batch's proposals are for more than one key".into());
        }
        let mut ids: Vec<Uuid> = self.proposals.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n {
            return Err("a batch proposes one transaction twice".into());
        }
        Ok(())
    }
}

/// [`TX_VOTE_BATCH`]: signed votes of the sending node, each exactly the vote it
/// would send in a `VOTE` frame of its own (hex of its wire form, as votes are
/// relayed in [`SignRequest`] and [`Done`]) and handled by every receiver as if it
/// had come alone: checked under the voter's pinned key, against its own round,
/// and stored or refused one by one. The frame's session id is the batch id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBatch {
    /// Vote batch id, fresh for each batch (the frame's session id; for logs).
    pub batch: Uuid,
    /// The signed votes (hex).
    pub votes: Vec<String>,
}

impl VoteBatch {
    /// The batch's shape, checked before any vote in it is handled: 1 to
    /// [`MAX_BATCH`] votes, each at most one signed vote long.
    pub fn check(&self) -> Result<(), String> {
        let n = self.votes.len();
        if n == 0 || n > MAX_BATCH {
            return Err(format!(
                "a vote batch carries 1 to {MAX_BATCH} votes, not {n}"
            ));
        }
        if self
            .votes
            .iter()
            .any(|v| v.len() > 2 * vote::MAX_SIGNED_VOTE_BYTES)
        {
            return Err("a vote batch carries a vote longer than any signed vote".into());
        }
        Ok(())
    }
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
    /// Signers this signer's protocol run named as culprits (node ids), if the run
    /// failed through their fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blamed: Vec<String>,
    /// When this signer's protocol run stalled: the signers it was still waiting
    /// for (node ids; a hint, not blame). Absent from the encoding when empty, so
    /// replies of runs that did not stall are unchanged on the wire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
}

/// Misbehaviour of a signer in a signing session, as the leader relays it to every
/// participant with the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blame {
    /// The culprit (node id).
    pub culprit: String,
    /// Violation code: `invalid_partial` (verifiable from the evidence below) or
    /// `signing_misbehaviour` (named by `detected_by`'s protocol run).
    pub kind: String,
    /// Signing session.
    pub session: Uuid,
    /// Input index.
    pub input: u32,
    /// The node whose own check found it.
    pub detected_by: String,
    /// `invalid_partial`: the presignature's public data (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presignature_public: Option<String>,
    /// `invalid_partial`: every partial signature of the set (hex), culprit's
    /// included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partials: Vec<String>,
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
    /// Signers found misbehaving while this transaction was signed (at most
    /// [`MAX_BLAMES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blame: Vec<Blame>,
}

impl Done {
    /// The result of a transaction that was not signed, for `reason` (votes and
    /// blames added by the caller where it has them).
    pub fn failure(id: Uuid, reason: String) -> Done {
        Done {
            id,
            tx_hex: None,
            psbt: None,
            error: Some(reason),
            votes: Vec::new(),
            blame: Vec::new(),
        }
    }
}

/// Most blames a result carries (more are dropped by the leader and ignored by
/// the receiver).
pub const MAX_BLAMES: usize = 32;

/// [`TX_APPROVAL`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalNotice {
    /// Transaction id.
    pub id: Uuid,
    /// The approver's registered name.
    pub approver: String,
    /// The role the relaying node found it registered for (each receiver uses its
    /// own registry, not this).
    pub role: String,
    /// The approver's Ed25519 signature over `vote::approval_message` (hex); every
    /// receiver verifies it under the approver's key in its own registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// [`crate::p2p::MessageKind::APPROVER_ENDORSE`]: the sending node's endorsement of
/// an approver identity, signed with its vote key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverEndorsement {
    /// Approver name.
    pub approver: String,
    /// Approver role.
    pub role: String,
    /// Approver public key (hex, 32 bytes).
    pub public_key: String,
    /// Token id of the admin who endorsed at the sending node.
    pub admin: String,
    /// The sending node's vote-key signature over `vote::endorsement_message` (hex).
    pub signature: String,
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

    /// The JSON of every transaction frame, pinned: a change here breaks peers of
    /// the previous release during a rolling upgrade. Optional fields added later
    /// are left out when empty, so old frames keep their exact form.
    #[test]
    fn wire_format_of_transaction_frames_is_pinned() {
        let id = Uuid::from_u128(1);
        let session = Uuid::from_u128(2);
        let json = |v: &dyn erased::Encode| String::from_utf8(v.bytes()).expect("utf8");
        assert_eq!(
            json(&Proposal {
                id,
                key_id: "k".into(),
                psbt: "cHNidP8=".into(),
                initiator: "tok".into(),
                deadline_unix: 7,
                initiator_name: None,
            }),
            r#"{"id":"00000000-0000-0000-0000-000000000001","key_id":"k","psbt":"cHNidP8=","initiator":"tok","deadline_unix":7}"#
        );
        assert_eq!(
            json(&ProposalBatch {
                batch: session,
                proposals: vec![Proposal {
                    id,
                    key_id: "k".into(),
                    psbt: "cHNidP8=".into(),
                    initiator: "tok".into(),
                    deadline_unix: 7,
                    initiator_name: Some("ops".into()),
                }],
            }),
            r#"{"batch":"00000000-0000-0000-0000-000000000002","proposals":[{"id":"00000000-0000-0000-0000-000000000001","key_id":"k","psbt":"cHNidP8=","initiator":"tok","deadline_unix":7,"initiator_name":"ops"}]}"#
        );
        assert_eq!(
            json(&VoteBatch {
                batch: session,
                votes: vec!["0a0b".into()],
            }),
            r#"{"batch":"00000000-0000-0000-0000-000000000002","votes":["0a0b"]}"#
        );
        assert_eq!(
            json(&SignRequest {
                session,
                tx: id,
                input: 0,
                signers: vec!["node-1".into(), "node-2".into()],
                presignature: None,
                votes: Vec::new(),
            }),
            r#"{"session":"00000000-0000-0000-0000-000000000002","tx":"00000000-0000-0000-0000-000000000001","input":0,"signers":["node-1","node-2"]}"#
        );
        assert_eq!(
            json(&SignatureReply {
                session,
                signature: Some("ab".into()),
                error: None,
                blamed: Vec::new(),
                absent: Vec::new(),
            }),
            r#"{"session":"00000000-0000-0000-0000-000000000002","signature":"ab","error":null}"#
        );
        assert_eq!(
            json(&SignatureReply {
                session,
                signature: None,
                error: Some("e".into()),
                blamed: vec!["node-3".into()],
                absent: Vec::new(),
            }),
            r#"{"session":"00000000-0000-0000-0000-000000000002","signature":null,"error":"e","blamed":["node-3"]}"#
        );
        // A stalled run names whom it waited for; replies without it stay as before.
        assert_eq!(
            json(&SignatureReply {
                session,
                signature: None,
                error: Some("e".into()),
                blamed: Vec::new(),
                absent: vec!["node-4".into()],
            }),
            r#"{"session":"00000000-0000-0000-0000-000000000002","signature":null,"error":"e","absent":["node-4"]}"#
        );
        assert_eq!(
            json(&Done {
                id,
                tx_hex: None,
                psbt: None,
                error: Some("e".into()),
                votes: Vec::new(),
                blame: Vec::new(),
            }),
            r#"{"id":"00000000-0000-0000-0000-000000000001","tx_hex":null,"psbt":null,"error":"e"}"#
        );
        assert_eq!(
            json(&Blame {
                culprit: "node-3".into(),
                kind: "invalid_partial".into(),
                session,
                input: 1,
                detected_by: "node-1".into(),
                presignature_public: Some("00".into()),
                partials: vec!["01".into()],
            }),
            r#"{"culprit":"node-3","kind":"invalid_partial","session":"00000000-0000-0000-0000-000000000002","input":1,"detected_by":"node-1","presignature_public":"00","partials":["01"]}"#
        );
    }

    #[test]
    fn a_batch_of_no_proposal_too_many_two_keys_or_one_transaction_twice_is_refused() {
        let prop = |n: u128, key: &str| Proposal {
            id: Uuid::from_u128(n),
            key_id: key.into(),
            psbt: String::new(),
            initiator: "t".into(),
            deadline_unix: 1,
            initiator_name: None,
        };
        let batch = |proposals| ProposalBatch {
            batch: Uuid::from_u128(99),
            proposals,
        };
        assert!(batch(vec![prop(1, "k"), prop(2, "k")]).check().is_ok());
        assert!(batch(Vec::new()).check().is_err());
        let full: Vec<_> = (0..=MAX_BATCH as u128).map(|n| prop(n, "k")).collect();
        assert!(batch(full).check().is_err());
        assert!(batch(vec![prop(1, "k"), prop(2, "other")]).check().is_err());
        assert!(batch(vec![prop(1, "k"), prop(1, "k")]).check().is_err());
    }

    #[test]
    fn a_vote_batch_of_no_vote_too_many_or_an_oversized_one_is_refused() {
        let batch = |votes: Vec<String>| VoteBatch {
            batch: Uuid::from_u128(99),
            votes,
        };
        assert!(batch(vec!["00".into(); 2]).check().is_ok());
        assert!(batch(Vec::new()).check().is_err());
        assert!(batch(vec!["00".into(); MAX_BATCH + 1]).check().is_err());
        let long = "0".repeat(2 * vote::MAX_SIGNED_VOTE_BYTES + 1);
        assert!(batch(vec!["00".into(), long]).check().is_err());
    }

    mod erased {
        pub trait Encode {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Encode for T {
            fn bytes(&self) -> Vec<u8> {
                serde_json::to_vec(self).expect("encodes")
            }
        }
    }
}
