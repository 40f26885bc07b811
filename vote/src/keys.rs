//! Vote-key trust: pinning each peer's Ed25519 vote key on first sight.
//!
//! A node announces its vote key over its mutually authenticated QUIC connection
//! with a proof of possession (a signature by the key over the node id and the
//! key). The receiver accepts the announcement only from the node it names, pins
//! the key the first time, and refuses (and records) any later different key. See
//! `docs/VOTING.md` for the trust model.
//!
//! Announcement encoding, version 1:
//!
//! ```text
//! u8     version (1)
//! u8     node id length, then the node id ([a-z0-9-]{1,32})
//! [32]   Ed25519 public key
//! [64]   proof: signature over KEY_ANNOUNCE_DOMAIN || u8 len || node id || key
//! ```

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::codec::{Reader, Writer};
use super::error::VoteCodecError;
use super::message::{verify_ed25519, VoteSigner, SIGNATURE_LEN};

/// Domain separator of the proof of possession in a key announcement.
pub const KEY_ANNOUNCE_DOMAIN: &[u8] = b"signer/vote-key/v1\0";
/// Version byte of the announcement encoding.
pub const KEY_ANNOUNCE_VERSION: u8 = 1;
/// Upper bound of an encoded announcement.
pub const MAX_KEY_ANNOUNCE_BYTES: usize = 1 + 1 + 32 + 32 + SIGNATURE_LEN;

/// Operator-visible fingerprint of a vote key: `SHA256:` and the first 16 bytes
/// of SHA-256(key) in hex, in groups of four characters.
pub fn vote_key_fingerprint(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    let hex = hex::encode(&digest[..16]);
    let groups: Vec<&str> = hex
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!("SHA256:{}", groups.join(":"))
}

/// A node's announcement of its own vote key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteKeyAnnouncement {
    node_id: String,
    public_key: [u8; 32],
    proof: [u8; SIGNATURE_LEN],
}

fn proof_message(node_id: &str, public_key: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(KEY_ANNOUNCE_DOMAIN.len() + 1 + node_id.len() + 32);
    w.raw(KEY_ANNOUNCE_DOMAIN);
    w.short_str(node_id);
    w.raw(public_key);
    w.finish()
}

impl VoteKeyAnnouncement {
    /// The announcement of `key` by `node_id` (which must be a valid node id).
    pub fn new(node_id: &str, key: &impl VoteSigner) -> Result<Self, VoteCodecError> {
        if !crate::valid_node_id(node_id) {
            return Err(VoteCodecError::BadText { field: "node id" });
        }
        let public_key = key.vote_public_key();
        let proof = key.sign_vote_message(&proof_message(node_id, &public_key));
        Ok(VoteKeyAnnouncement {
            node_id: node_id.to_owned(),
            public_key,
            proof,
        })
    }

    /// The announcing node.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The announced key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether the proof of possession verifies under the announced key.
    pub fn proof_is_valid(&self) -> bool {
        verify_ed25519(
            &self.public_key,
            &proof_message(&self.node_id, &self.public_key),
            &self.proof,
        )
        .is_ok()
    }

    /// Wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_KEY_ANNOUNCE_BYTES);
        w.u8(KEY_ANNOUNCE_VERSION);
        w.short_str(&self.node_id);
        w.raw(&self.public_key);
        w.raw(&self.proof);
        w.finish()
    }

    /// Decodes the wire form (at most [`MAX_KEY_ANNOUNCE_BYTES`]); does not check
    /// the proof.
    pub fn decode(b: &[u8]) -> Result<Self, VoteCodecError> {
        if b.len() > MAX_KEY_ANNOUNCE_BYTES {
            return Err(VoteCodecError::TooLarge {
                what: "vote key announcement",
                len: b.len(),
                max: MAX_KEY_ANNOUNCE_BYTES,
            });
        }
        let mut r = Reader::new(b);
        let version = r.u8("version")?;
        if version != KEY_ANNOUNCE_VERSION {
            return Err(VoteCodecError::UnsupportedVersion {
                what: "vote key announcement",
                version,
            });
        }
        let node_id = r.short_str("node id")?;
        if !crate::valid_node_id(node_id) {
            return Err(VoteCodecError::BadText { field: "node id" });
        }
        let node_id = node_id.to_owned();
        let public_key = r.array("public key")?;
        let proof = r.array("proof")?;
        r.end()?;
        Ok(VoteKeyAnnouncement {
            node_id,
            public_key,
            proof,
        })
    }
}

/// Result of showing a key to the [`VoteKeyBook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// First sight: the key is now pinned.
    NewlyPinned,
    /// The same key was already pinned.
    AlreadyPinned,
    /// A different key is pinned; it stays.
    Changed {
        /// The pinned key.
        pinned: [u8; 32],
    },
}

/// Pinned vote keys by node id. The persistent copy is the `peer_vote_keys` table
/// (pinned in the node's database); this is the in-memory view built
/// from it with [`VoteKeyBook::from_pinned`] and updated as pins happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoteKeyBook {
    keys: BTreeMap<String, [u8; 32]>,
}

impl VoteKeyBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// A book holding already pinned keys (e.g. as loaded from the node's database).
    /// A node listed twice keeps its first key.
    pub fn from_pinned(pins: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        let mut book = Self::new();
        for (node, key) in pins {
            book.keys.entry(node).or_insert(key);
        }
        book
    }

    /// The pinned key of `node_id`.
    pub fn get(&self, node_id: &str) -> Option<&[u8; 32]> {
        self.keys.get(node_id)
    }

    /// Number of pinned nodes.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is pinned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Pinned nodes and keys, ordered by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.keys.iter().map(|(n, k)| (n.as_str(), k))
    }

    /// Trust on first use: pins `key` for `node_id` unless a key is already
    /// pinned; never replaces a pinned key.
    pub fn observe(&mut self, node_id: &str, key: [u8; 32]) -> PinOutcome {
        match self.keys.get(node_id) {
            None => {
                self.keys.insert(node_id.to_owned(), key);
                PinOutcome::NewlyPinned
            }
            Some(k) if *k == key => PinOutcome::AlreadyPinned,
            Some(k) => PinOutcome::Changed { pinned: *k },
        }
    }

    /// Forgets the pin of `node_id` (after an operator removed it from the
    /// database, e.g. when a node was rebuilt with a new key).
    pub fn forget(&mut self, node_id: &str) -> Option<[u8; 32]> {
        self.keys.remove(node_id)
    }
}
