//! Cross-node audit checkpoints: the format, what is signed, and verification.
//! Pure (no I/O, no clock), so `signer audit verify-export` uses it offline.
//!
//! A checkpoint is proposed by one node and holds every answering node's audit
//! **head** (sequence number and hash of its last record), each signed by that node
//! alone with its Ed25519 vote key (a node signs only its own head). Every node with
//! a head in the set then **co-signs** the whole checkpoint (its digest covers the
//! header, every head and every head signature). A checkpoint counts once at least
//! `quorum` nodes co-signed it, `quorum` being at least the cluster threshold `t`;
//! it is then stored in every node's audit log as an `audit.checkpoint` record whose
//! details are the checkpoint itself (so the hash chain covers it).
//!
//! Signed bytes (integers big-endian, `str8` = u8 length then UTF-8 bytes):
//!
//! ```text
//! head:      "signer/audit-head/v1\0" ‖ id (16) ‖ created_at µs (i64) ‖ str8 proposer
//!            ‖ str8 node id ‖ seq (i64) ‖ hash (32)
//! digest:    SHA-256("signer/audit-checkpoint/v1\0" ‖ id ‖ created_at µs ‖ str8 proposer
//!            ‖ str8 reason ‖ quorum (u16) ‖ u16 count ‖ per head in node-id order:
//!            str8 node id ‖ seq ‖ hash ‖ head signature (64))
//! co-sign:   "signer/audit-checkpoint-sig/v1\0" ‖ digest
//! ```

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u8 = 1;
/// Audit action of a stored checkpoint (subject: the checkpoint id).
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";
/// Most nodes a checkpoint may name.
pub const MAX_CHECKPOINT_NODES: usize = 64;
/// Longest `reason`.
pub const MAX_REASON_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const HEAD_DOMAIN: &[u8] = b"signer/audit-head/v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"signer/audit-checkpoint/v1\0";
const COSIGN_DOMAIN: &[u8] = b"signer/audit-checkpoint-sig/v1\0";

/// Why a checkpoint was proposed.
pub mod reason {
    /// The periodic timer (`[audit] checkpoint_interval_secs`).
    pub const INTERVAL: &str = "interval";
    /// A transaction the proposer led was signed.
    pub const TRANSACTION_SIGNED: &str = "transaction_signed";
}

/// Vote keys by node id.
pub type VoteKeys = BTreeMap<String, [u8; 32]>;

/// One node's audit head, signed by that node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The node whose head this is (and who signed it).
    pub node_id: String,
    /// Sequence number of its last audit record (0: empty log).
    pub seq: i64,
    /// Hash of that record (all zero for an empty log).
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
    /// The node's Ed25519 signature over the head bytes.
    #[serde(with = "hex_array")]
    pub signature: [u8; SIGNATURE_LEN],
}

/// One node's signature over the whole checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoSignature {
    /// The co-signing node.
    pub node_id: String,
    /// Its Ed25519 signature over the co-sign bytes.
    #[serde(with = "hex_array")]
    pub signature: [u8; SIGNATURE_LEN],
}

/// A checkpoint (complete once it carries `quorum` valid co-signatures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version ([`CHECKPOINT_VERSION`]).
    pub version: u8,
    /// Checkpoint id.
    pub id: Uuid,
    /// When the proposer opened it (microsecond precision).
    pub created_at: DateTime<Utc>,
    /// The proposing node.
    pub proposer: String,
    /// Why ([`reason`]).
    pub reason: String,
    /// Co-signatures needed.
    pub quorum: u16,
    /// Heads, in node-id order, one per node.
    pub heads: Vec<SignedHead>,
    /// Co-signatures, in node-id order, one per node.
    #[serde(default)]
    pub signatures: Vec<CoSignature>,
}

/// Why a checkpoint is not acceptable. Each names the node at fault where there is
/// one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Outside the format's bounds.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No vote key is known for a node it names.
    #[error("no vote key known for node {node}")]
    UnknownNode {
        /// The node.
        node: String,
    },
    /// A head signature does not verify under its node's key.
    #[error("head signature of {node} does not verify")]
    BadHeadSignature {
        /// The node.
        node: String,
    },
    /// A co-signature does not verify under its node's key.
    #[error("co-signature of {node} does not verify")]
    BadCoSignature {
        /// The node.
        node: String,
    },
    /// A node co-signed without a head in the checkpoint.
    #[error("{node} co-signed without a head in the checkpoint")]
    CoSignerWithoutHead {
        /// The node.
        node: String,
    },
    /// Fewer co-signatures than needed.
    #[error("{have} co-signatures, {need} needed")]
    TooFewSignatures {
        /// Valid co-signatures.
        have: usize,
        /// Needed.
        need: usize,
    },
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Every string signed here is checked to be at most 255 bytes (node ids: 32).
    let len = u8::try_from(s.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// The bytes node `node_id` signs for its head `(seq, hash)` in checkpoint `id`
/// created at `created_at` by `proposer`.
pub fn head_message(
    id: Uuid,
    created_at: DateTime<Utc>,
    proposer: &str,
    node_id: &str,
    seq: i64,
    hash: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_DOMAIN.len() + 16 + 8 + 66 + 8 + 32);
    m.extend_from_slice(HEAD_DOMAIN);
    m.extend_from_slice(id.as_bytes());
    m.extend_from_slice(&created_at.timestamp_micros().to_be_bytes());
    put_str8(&mut m, proposer);
    put_str8(&mut m, node_id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// Verifies an Ed25519 signature.
pub fn verify_ed25519(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(msg, sig)
        .is_ok()
}

/// Whether `s` is a valid reason text (`[a-z_]{1,32}`).
fn valid_reason(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REASON_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

impl Checkpoint {
    /// An open checkpoint (no heads yet); `created_at` is kept to the microsecond.
    pub fn open(
        id: Uuid,
        created_at: DateTime<Utc>,
        proposer: &str,
        reason: &str,
        quorum: u16,
    ) -> Self {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            id,
            created_at: created_at.trunc_subsecs(6),
            proposer: proposer.to_owned(),
            reason: reason.to_owned(),
            quorum,
            heads: Vec::new(),
            signatures: Vec::new(),
        }
    }

    /// The bytes `node_id` signs for its head in this checkpoint.
    pub fn head_message(&self, node_id: &str, seq: i64, hash: &[u8; 32]) -> Vec<u8> {
        head_message(self.id, self.created_at, &self.proposer, node_id, seq, hash)
    }

    /// Adds (or replaces) a head, keeping node-id order.
    pub fn put_head(&mut self, head: SignedHead) {
        self.heads.retain(|h| h.node_id != head.node_id);
        self.heads.push(head);
        self.heads.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    }

    /// Adds (or replaces) a co-signature, keeping node-id order.
    pub fn put_signature(&mut self, sig: CoSignature) {
        self.signatures.retain(|s| s.node_id != sig.node_id);
        self.signatures.push(sig);
        self.signatures.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    }

    /// The head of `node_id`, if it has one here.
    pub fn head_of(&self, node_id: &str) -> Option<&SignedHead> {
        self.heads.iter().find(|h| h.node_id == node_id)
    }

    /// Digest of the checkpoint without its co-signatures.
    pub fn digest(&self) -> [u8; 32] {
        let mut m = Vec::with_capacity(128 + self.heads.len() * 140);
        m.extend_from_slice(CHECKPOINT_DOMAIN);
        m.extend_from_slice(self.id.as_bytes());
        m.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        put_str8(&mut m, &self.proposer);
        put_str8(&mut m, &self.reason);
        m.extend_from_slice(&self.quorum.to_be_bytes());
        let mut heads: Vec<&SignedHead> = self.heads.iter().collect();
        heads.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let n = u16::try_from(heads.len()).unwrap_or(u16::MAX);
        m.extend_from_slice(&n.to_be_bytes());
        for h in heads {
            put_str8(&mut m, &h.node_id);
            m.extend_from_slice(&h.seq.to_be_bytes());
            m.extend_from_slice(&h.hash);
            m.extend_from_slice(&h.signature);
        }
        Sha256::digest(&m).into()
    }

    /// The bytes every co-signer signs.
    pub fn cosign_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(COSIGN_DOMAIN.len() + 32);
        m.extend_from_slice(COSIGN_DOMAIN);
        m.extend_from_slice(&self.digest());
        m
    }

    /// The format's bounds: version, sizes, valid and unique node ids in order,
    /// sequence numbers not negative.
    pub fn check_shape(&self) -> Result<(), CheckpointError> {
        let bad = |m: String| Err(CheckpointError::Malformed(m));
        if self.version != CHECKPOINT_VERSION {
            return bad(format!("unsupported version {}", self.version));
        }
        if !vote::valid_node_id(&self.proposer) {
            return bad("proposer is not a valid node id".to_owned());
        }
        if !valid_reason(&self.reason) {
            return bad("reason is not [a-z_]{1,32}".to_owned());
        }
        if self.quorum == 0 {
            return bad("quorum is 0".to_owned());
        }
        if self.heads.len() > MAX_CHECKPOINT_NODES || self.signatures.len() > MAX_CHECKPOINT_NODES {
            return bad(format!("more than {MAX_CHECKPOINT_NODES} nodes"));
        }
        for w in self.heads.windows(2) {
            if w[0].node_id >= w[1].node_id {
                return bad("heads are not one per node in node-id order".to_owned());
            }
        }
        for w in self.signatures.windows(2) {
            if w[0].node_id >= w[1].node_id {
                return bad("co-signatures are not one per node in node-id order".to_owned());
            }
        }
        for h in &self.heads {
            if !vote::valid_node_id(&h.node_id) {
                return bad("a head names an invalid node id".to_owned());
            }
            if h.seq < 0 {
                return bad(format!("head of {} has a negative sequence", h.node_id));
            }
        }
        for s in &self.signatures {
            if !vote::valid_node_id(&s.node_id) {
                return bad("a co-signature names an invalid node id".to_owned());
            }
        }
        Ok(())
    }

    /// Checks the shape and every head signature under `keys`.
    pub fn verify_heads(&self, keys: &VoteKeys) -> Result<(), CheckpointError> {
        self.check_shape()?;
        for h in &self.heads {
            let key = keys
                .get(&h.node_id)
                .ok_or_else(|| CheckpointError::UnknownNode {
                    node: h.node_id.clone(),
                })?;
            if !verify_ed25519(
                key,
                &self.head_message(&h.node_id, h.seq, &h.hash),
                &h.signature,
            ) {
                return Err(CheckpointError::BadHeadSignature {
                    node: h.node_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Full verification: shape, every head signature, every co-signature (each by
    /// a node with a head here), and at least `max(quorum, min_quorum)`
    /// co-signatures. Every signature present must verify.
    pub fn verify(&self, keys: &VoteKeys, min_quorum: u16) -> Result<(), CheckpointError> {
        self.verify_heads(keys)?;
        let msg = self.cosign_message();
        let heads: BTreeSet<&str> = self.heads.iter().map(|h| h.node_id.as_str()).collect();
        for s in &self.signatures {
            if !heads.contains(s.node_id.as_str()) {
                return Err(CheckpointError::CoSignerWithoutHead {
                    node: s.node_id.clone(),
                });
            }
            let key = keys
                .get(&s.node_id)
                .ok_or_else(|| CheckpointError::UnknownNode {
                    node: s.node_id.clone(),
                })?;
            if !verify_ed25519(key, &msg, &s.signature) {
                return Err(CheckpointError::BadCoSignature {
                    node: s.node_id.clone(),
                });
            }
        }
        let need = usize::from(self.quorum.max(min_quorum));
        if self.signatures.len() < need {
            return Err(CheckpointError::TooFewSignatures {
                have: self.signatures.len(),
                need,
            });
        }
        Ok(())
    }

    /// The co-signing nodes.
    pub fn signers(&self) -> Vec<&str> {
        self.signatures.iter().map(|s| s.node_id.as_str()).collect()
    }

    /// The checkpoint as audit record details.
    pub fn to_details(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The checkpoint held in an `audit.checkpoint` record's details.
    pub fn from_details(details: &serde_json::Value) -> Result<Self, CheckpointError> {
        Checkpoint::deserialize(details).map_err(|e| CheckpointError::Malformed(e.to_string()))
    }
}

/// Serde of fixed-size byte arrays as lower-case hex.
pub mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as hex.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Deserializes from hex of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.as_bytes(), &mut out)
            .map_err(|_| serde::de::Error::custom(format!("expected {} hex characters", N * 2)))?;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    /// Deterministic Ed25519 keys of test nodes.
    pub(crate) fn key(i: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[i; 32]).expect("seed")
    }

    pub(crate) fn pubkey(i: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(key(i).public_key().as_ref());
        k
    }

    pub(crate) fn sig64(pair: &Ed25519KeyPair, msg: &[u8]) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(pair.sign(msg).as_ref());
        s
    }

    /// A checkpoint over `heads` (node index, seq, hash), co-signed by `cosigners`.
    pub(crate) fn signed(
        heads: &[(u8, i64, [u8; 32])],
        cosigners: &[u8],
        quorum: u16,
    ) -> Checkpoint {
        let mut cp = Checkpoint::open(
            Uuid::new_v4(),
            Utc::now(),
            "node-1",
            reason::INTERVAL,
            quorum,
        );
        for (i, seq, hash) in heads {
            let node = format!("node-{i}");
            let signature = sig64(&key(*i), &cp.head_message(&node, *seq, hash));
            cp.put_head(SignedHead {
                node_id: node,
                seq: *seq,
                hash: *hash,
                signature,
            });
        }
        let msg = cp.cosign_message();
        for i in cosigners {
            cp.put_signature(CoSignature {
                node_id: format!("node-{i}"),
                signature: sig64(&key(*i), &msg),
            });
        }
        cp
    }

    pub(crate) fn keys(n: u8) -> VoteKeys {
        (1..=n).map(|i| (format!("node-{i}"), pubkey(i))).collect()
    }

    #[test]
    fn a_checkpoint_with_a_quorum_of_cosignatures_verifies_and_survives_json() {
        let cp = signed(
            &[(1, 4, [1; 32]), (2, 9, [2; 32]), (3, 1, [3; 32])],
            &[1, 3],
            2,
        );
        cp.verify(&keys(3), 2).expect("valid");
        let back = Checkpoint::from_details(&cp.to_details()).expect("decodes");
        assert_eq!(back, cp);
        back.verify(&keys(3), 2).expect("still valid");
    }

    #[test]
    fn too_few_cosignatures_are_refused_against_the_larger_quorum() {
        let cp = signed(&[(1, 4, [1; 32]), (2, 9, [2; 32])], &[1], 1);
        cp.verify(&keys(2), 1).expect("one of one");
        assert_eq!(
            cp.verify(&keys(2), 2),
            Err(CheckpointError::TooFewSignatures { have: 1, need: 2 })
        );
    }

    #[test]
    fn an_altered_head_or_signature_names_its_node() {
        let cp = signed(&[(1, 4, [1; 32]), (2, 9, [2; 32])], &[1, 2], 2);
        let mut moved = cp.clone();
        moved.heads[1].seq = 8;
        assert_eq!(
            moved.verify(&keys(2), 2),
            Err(CheckpointError::BadHeadSignature {
                node: "node-2".into()
            })
        );
        let mut forged = cp.clone();
        forged.signatures[0].signature[5] ^= 1;
        assert_eq!(
            forged.verify(&keys(2), 2),
            Err(CheckpointError::BadCoSignature {
                node: "node-1".into()
            })
        );
        // A head signed by another node's key (a peer signing for someone else).
        let mut impostor = cp.clone();
        impostor.heads[1].signature = sig64(&key(1), &cp.head_message("node-2", 9, &[2; 32]));
        assert!(matches!(
            impostor.verify(&keys(2), 1),
            Err(CheckpointError::BadHeadSignature { .. })
        ));
        let mut reason = cp;
        reason.reason = "transaction_signed".into();
        assert!(matches!(
            reason.verify(&keys(2), 2),
            Err(CheckpointError::BadCoSignature { .. })
        ));
    }

    #[test]
    fn shape_rules_are_enforced() {
        let cp = signed(&[(1, 4, [1; 32]), (2, 9, [2; 32])], &[1, 2], 2);
        let mut dup = cp.clone();
        dup.heads[1].node_id = "node-1".into();
        assert!(matches!(
            dup.check_shape(),
            Err(CheckpointError::Malformed(_))
        ));
        let mut unknown = cp.clone();
        unknown.signatures.push(CoSignature {
            node_id: "node-9".into(),
            signature: [0; 64],
        });
        assert_eq!(
            unknown.verify(&keys(2), 2),
            Err(CheckpointError::CoSignerWithoutHead {
                node: "node-9".into()
            })
        );
        let mut v2 = cp;
        v2.version = 2;
        assert!(v2.check_shape().is_err());
        let json = serde_json::json!({"version": 1, "extra": true});
        assert!(Checkpoint::from_details(&json).is_err());
    }
}
