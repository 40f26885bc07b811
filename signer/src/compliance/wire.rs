//! Frames of the audit service (JSON, size-bounded both ways, unknown fields
//! refused). The frame's session id is the checkpoint id (checkpoint frames) or
//! the request id (export frames).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::bundle::KeyBinding;
use crate::audit::checkpoint::{hex_array, Checkpoint, CoSignature, SignedHead};
use crate::audit::AuditRecord;
use crate::p2p::json::{self, WireError};
use crate::p2p::MessageKind;

/// [`HeadRequest`].
pub const AUDIT_HEAD_REQUEST: MessageKind = MessageKind::AUDIT_HEAD_REQUEST;
/// [`HeadReply`].
pub const AUDIT_HEAD: MessageKind = MessageKind::AUDIT_HEAD;
/// [`CosignRequest`].
pub const AUDIT_COSIGN_REQUEST: MessageKind = MessageKind::AUDIT_COSIGN_REQUEST;
/// [`CosignReply`].
pub const AUDIT_COSIGNATURE: MessageKind = MessageKind::AUDIT_COSIGNATURE;
/// [`CheckpointNotice`].
pub const AUDIT_CHECKPOINT: MessageKind = MessageKind::AUDIT_CHECKPOINT;
/// [`ExportRequest`].
pub const AUDIT_EXPORT_REQUEST: MessageKind = MessageKind::AUDIT_EXPORT_REQUEST;
/// [`ExportReply`].
pub const AUDIT_EXPORT_REPLY: MessageKind = MessageKind::AUDIT_EXPORT_REPLY;

/// Largest checkpoint frame (64 heads and co-signatures fit many times over).
pub const MAX_CHECKPOINT_FRAME: usize = 64 * 1024;
/// Largest export request.
pub const MAX_EXPORT_REQUEST: usize = 4 * 1024;
/// Records of one export page, at most.
pub const MAX_PAGE_ROWS: i64 = 500;
/// JSON bytes of one export page, at most (a single larger record is sent alone).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Decodes a frame of at most `max` bytes.
pub fn decode<T: DeserializeOwned>(b: &[u8], max: usize) -> Result<T, WireError> {
    if b.len() > max {
        return Err(WireError::TooLarge(b.len()));
    }
    json::decode(b)
}

/// Encodes a frame.
pub fn encode<T: Serialize>(m: &T) -> Result<Vec<u8>, WireError> {
    json::encode(m)
}

/// The proposer asks for the receiver's signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadRequest {
    /// Checkpoint id.
    pub id: Uuid,
    /// When the proposer opened it.
    pub created_at: DateTime<Utc>,
    /// The proposer (must be the sender).
    pub proposer: String,
    /// Why.
    pub reason: String,
    /// Co-signatures it will need.
    pub quorum: u16,
}

/// A node's head, signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadReply {
    /// Checkpoint id.
    pub id: Uuid,
    /// The head (its node must be the sender).
    pub head: SignedHead,
}

/// The proposer asks every node with a head to co-sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignRequest {
    /// The checkpoint, without co-signatures.
    pub checkpoint: Checkpoint,
}

/// A node's co-signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignReply {
    /// Checkpoint id.
    pub id: Uuid,
    /// The co-signature (its node must be the sender).
    pub signature: CoSignature,
}

/// A complete checkpoint for every node to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointNotice {
    /// The checkpoint with its co-signatures.
    pub checkpoint: Checkpoint,
}

/// What an exporting node asks a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportRequest {
    /// The peer's keys, certificate, head and record bounds for a time range (the
    /// peer audits `audit.export_served`).
    Info {
        /// The bundle being written.
        bundle_id: Uuid,
        /// Range start.
        from: DateTime<Utc>,
        /// Range end.
        to: DateTime<Utc>,
    },
    /// Records `after_seq < seq <= to_seq`, one page.
    Rows {
        /// Exclusive start.
        after_seq: i64,
        /// Inclusive end.
        to_seq: i64,
    },
}

/// A peer's keys, certificate, head and bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// The peer.
    pub node_id: String,
    /// Its own vote key.
    #[serde(with = "hex_array")]
    pub vote_key: [u8; 32],
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its vote key signed with its TLS key.
    pub key_binding: Option<KeyBinding>,
    /// Its head.
    pub head_seq: i64,
    /// Its head's hash.
    #[serde(with = "hex_array")]
    pub head_hash: [u8; 32],
    /// First record at or after `from`.
    pub first_seq: Option<i64>,
    /// Last record at or before `to`.
    pub last_seq: Option<i64>,
    /// Its `policy.version` records in force during the range (fetched with
    /// [`ExportRequest::Rows`]), at most [`MAX_POLICY_REFS`].
    pub policy_seqs: Vec<i64>,
}

/// Policy versions listed per node and export, at most.
pub const MAX_POLICY_REFS: usize = 1000;

/// A peer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportReply {
    /// To [`ExportRequest::Info`].
    Info {
        /// The information.
        info: NodeInfo,
    },
    /// To [`ExportRequest::Rows`]: in order; fewer than asked means the end of
    /// the peer's log or of the page's byte budget.
    Rows {
        /// The records.
        rows: Vec<AuditRecord>,
    },
    /// The peer cannot answer.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = vec![b' '; MAX_CHECKPOINT_FRAME + 1];
        assert!(matches!(
            decode::<HeadRequest>(&big, MAX_CHECKPOINT_FRAME),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn export_requests_round_trip_and_refuse_unknown_fields() {
        let r = ExportRequest::Rows {
            after_seq: 4,
            to_seq: 9,
        };
        let b = encode(&r).expect("encodes");
        assert_eq!(
            decode::<ExportRequest>(&b, MAX_EXPORT_REQUEST).expect("decodes"),
            r
        );
        let extra = br#"{"op":"rows","after_seq":1,"to_seq":2,"x":1}"#;
        assert!(decode::<ExportRequest>(extra, MAX_EXPORT_REQUEST).is_err());
    }
}
