//! Frames of the presignature pool (JSON, size-bounded with the transaction frames'
//! codec, unknown fields refused). The
//! sender of every frame is the peer's mTLS identity. Protocol messages of a
//! presigning run use [`crate::p2p::MessageKind::PRESIGN`] frames of the item's
//! session id; the public-id confirmation uses [`crate::session::CONFIRM`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::p2p::MessageKind;

/// The leader of a signer set announces a generation session to the set's members.
pub const PRESIGN_ANNOUNCE: MessageKind = MessageKind::PRESIGN_ANNOUNCE;
/// A node relays an operator's generate request to its peers.
pub const PRESIGN_GENERATE: MessageKind = MessageKind::PRESIGN_GENERATE;

pub use crate::p2p::json::{decode, encode, WireError, MAX_JSON_PAYLOAD as MAX_TX_FRAME_BYTES};
/// Most presignatures in one session.
pub const MAX_BATCH: usize = 32;
/// Most presignatures one generate request may ask for per key and signer set.
pub const MAX_GENERATE: usize = 1000;

/// [`PRESIGN_ANNOUNCE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignSpec {
    /// Session id (etcd barrier name).
    pub id: Uuid,
    /// ECDSA key.
    pub key_id: String,
    /// Signer set: t node ids in keygen order (position = run index).
    pub signers: Vec<String>,
    /// Derivation path every presignature of the session is bound to.
    pub path: Vec<u32>,
    /// One protocol run per item (its session id), at most [`MAX_BATCH`].
    pub items: Vec<Uuid>,
    /// Announcing node: the lowest node id of the set.
    pub leader: String,
}

/// [`PRESIGN_GENERATE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Key, or every ECDSA key.
    pub key_id: Option<String>,
    /// Signer set, or every set.
    pub signer_set: Option<Vec<String>>,
    /// Presignatures to add beyond the target, per key and signer set.
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_bad_frames_are_refused() {
        let s = PresignSpec {
            id: Uuid::new_v4(),
            key_id: "k".into(),
            signers: vec!["node-1".into(), "node-2".into()],
            path: vec![0, 3],
            items: vec![Uuid::new_v4()],
            leader: "node-1".into(),
        };
        let b = encode(&s).expect("encodes");
        assert_eq!(decode::<PresignSpec>(&b).expect("decodes"), s);
        let mut v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        v["extra"] = serde_json::json!(1);
        assert!(matches!(
            decode::<PresignSpec>(&serde_json::to_vec(&v).expect("json")),
            Err(WireError::Malformed(_))
        ));
        let big = vec![b' '; MAX_TX_FRAME_BYTES + 1];
        assert!(matches!(
            decode::<GenerateRequest>(&big),
            Err(WireError::TooLarge(_))
        ));
    }
}
