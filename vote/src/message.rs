//! The vote: its body, canonical encoding, signature and wire form.
//!
//! Body encoding, version 1 (integers big-endian):
//!
//! ```text
//! u8        version (1)
//! [16]      transaction id (UUID bytes)
//! u32       round number (1..=2^31-1)
//! [32]      txid (internal byte order, as `Txid::to_byte_array`)
//! u16       number of sighashes n (1..=MAX_SIGHASHES), then n × [32]
//! [32]      policy hash
//! u8        decision (1 approve, 2 reject)
//! u8        number of reasons r (0..=MAX_REASONS), then r × (u8 len, ASCII)
//! u8        voter length, then the voter's node id ([a-z0-9-]{1,32})
//! u64       deadline (Unix seconds)
//! ```
//!
//! The signature is Ed25519 over `VOTE_DOMAIN || body`. The signed vote on the
//! wire is `u32 body length || body || [64] signature`.

use bitcoin::hashes::Hash;
use bitcoin::Txid;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use uuid::Uuid;

use super::codec::{Reader, Writer};
use super::error::{BadSignature, VoteCodecError};

/// Domain separator in front of every signed vote body.
pub const VOTE_DOMAIN: &[u8] = b"signer/vote/v1\0";
/// Version byte of the body encoding.
pub const VOTE_BODY_VERSION: u8 = 1;
/// Most sighashes one vote may carry (one per transaction input).
pub const MAX_SIGHASHES: usize = 4096;
/// Most reasons one vote may carry.
pub const MAX_REASONS: usize = 32;
/// Longest reason, in bytes.
pub const MAX_REASON_BYTES: usize = 128;
/// Longest voter node id, in bytes.
pub const MAX_VOTER_BYTES: usize = 32;
/// Upper bound of an encoded body.
pub const MAX_VOTE_BODY_BYTES: usize = 1
    + 16
    + 4
    + 32
    + 2
    + MAX_SIGHASHES * 32
    + 32
    + 1
    + 1
    + MAX_REASONS * (1 + MAX_REASON_BYTES)
    + 1
    + MAX_VOTER_BYTES
    + 8;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Upper bound of an encoded [`SignedVote`].
pub const MAX_SIGNED_VOTE_BYTES: usize = 4 + MAX_VOTE_BODY_BYTES + SIGNATURE_LEN;

/// A node's decision on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoteDecision {
    /// The node's policy approved the transaction.
    Approve,
    /// The node's policy rejected it (or human approvals are missing when the
    /// round closes).
    Reject,
}

impl VoteDecision {
    /// `approve` or `reject` (the values of `votes.decision`).
    pub fn as_str(self) -> &'static str {
        match self {
            VoteDecision::Approve => "approve",
            VoteDecision::Reject => "reject",
        }
    }

    fn tag(self) -> u8 {
        match self {
            VoteDecision::Approve => 1,
            VoteDecision::Reject => 2,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, VoteCodecError> {
        match tag {
            1 => Ok(VoteDecision::Approve),
            2 => Ok(VoteDecision::Reject),
            tag => Err(VoteCodecError::UnknownTag {
                field: "decision",
                tag,
            }),
        }
    }
}

impl std::fmt::Display for VoteDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node votes on and how it decided. See the module docs for the encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteBody {
    /// The transaction (our id, not the txid).
    pub transaction_id: Uuid,
    /// Voting round of the transaction, from 1.
    pub round_no: u32,
    /// Id of the unsigned transaction.
    pub txid: Txid,
    /// Every input's sighash, in input order, as the voter computed them.
    pub sighashes: Vec<[u8; 32]>,
    /// Hash of the policy the voter evaluated.
    pub policy_hash: [u8; 32],
    /// The decision.
    pub decision: VoteDecision,
    /// Policy violation codes (for a rejection); printable ASCII, at most
    /// [`MAX_REASONS`] of at most [`MAX_REASON_BYTES`] bytes.
    pub reasons: Vec<String>,
    /// The voter's node id.
    pub voter: String,
    /// Until when (Unix seconds) the voter's approval may be used.
    pub deadline_unix: u64,
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl VoteBody {
    /// Checks every bound of the encoding.
    pub fn validate(&self) -> Result<(), VoteCodecError> {
        if self.round_no == 0 || i32::try_from(self.round_no).is_err() {
            return Err(VoteCodecError::BadRound(self.round_no));
        }
        if self.sighashes.is_empty() || self.sighashes.len() > MAX_SIGHASHES {
            return Err(VoteCodecError::Count {
                field: "sighashes",
                count: self.sighashes.len(),
                min: 1,
                max: MAX_SIGHASHES,
            });
        }
        if self.reasons.len() > MAX_REASONS {
            return Err(VoteCodecError::Count {
                field: "reasons",
                count: self.reasons.len(),
                min: 0,
                max: MAX_REASONS,
            });
        }
        for r in &self.reasons {
            if r.is_empty() || r.len() > MAX_REASON_BYTES || !printable_ascii(r) {
                return Err(VoteCodecError::BadText { field: "reason" });
            }
        }
        if !crate::valid_node_id(&self.voter) {
            return Err(VoteCodecError::BadText { field: "voter" });
        }
        Ok(())
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Result<Vec<u8>, VoteCodecError> {
        self.validate()?;
        let mut w = Writer::with_capacity(128 + self.sighashes.len() * 32);
        w.u8(VOTE_BODY_VERSION);
        w.raw(self.transaction_id.as_bytes());
        w.u32(self.round_no);
        w.raw(&self.txid.to_byte_array());
        // Both counts were bounded by `validate`.
        w.u16(u16::try_from(self.sighashes.len()).unwrap_or(u16::MAX));
        for s in &self.sighashes {
            w.raw(s);
        }
        w.raw(&self.policy_hash);
        w.u8(self.decision.tag());
        w.u8(u8::try_from(self.reasons.len()).unwrap_or(u8::MAX));
        for r in &self.reasons {
            w.short_str(r);
        }
        w.short_str(&self.voter);
        w.u64(self.deadline_unix);
        Ok(w.finish())
    }

    /// Decodes and validates a body; refuses anything but the canonical encoding.
    pub fn decode(b: &[u8]) -> Result<Self, VoteCodecError> {
        if b.len() > MAX_VOTE_BODY_BYTES {
            return Err(VoteCodecError::TooLarge {
                what: "vote body",
                len: b.len(),
                max: MAX_VOTE_BODY_BYTES,
            });
        }
        let mut r = Reader::new(b);
        let version = r.u8("version")?;
        if version != VOTE_BODY_VERSION {
            return Err(VoteCodecError::UnsupportedVersion {
                what: "vote body",
                version,
            });
        }
        let transaction_id = Uuid::from_bytes(r.array("transaction_id")?);
        let round_no = r.u32("round_no")?;
        let txid = Txid::from_byte_array(r.array("txid")?);
        let n = usize::from(r.u16("sighash count")?);
        if n == 0 || n > MAX_SIGHASHES {
            return Err(VoteCodecError::Count {
                field: "sighashes",
                count: n,
                min: 1,
                max: MAX_SIGHASHES,
            });
        }
        // The count is bounded and each entry is read from the input, so a forged
        // count cannot make this allocate more than the input holds.
        let mut sighashes = Vec::with_capacity(n.min(b.len() / 32));
        for _ in 0..n {
            sighashes.push(r.array("sighash")?);
        }
        let policy_hash = r.array("policy_hash")?;
        let decision = VoteDecision::from_tag(r.u8("decision")?)?;
        let nr = usize::from(r.u8("reason count")?);
        if nr > MAX_REASONS {
            return Err(VoteCodecError::Count {
                field: "reasons",
                count: nr,
                min: 0,
                max: MAX_REASONS,
            });
        }
        let mut reasons = Vec::with_capacity(nr);
        for _ in 0..nr {
            reasons.push(r.short_str("reason")?.to_owned());
        }
        let voter = r.short_str("voter")?.to_owned();
        let deadline_unix = r.u64("deadline")?;
        r.end()?;
        let body = VoteBody {
            transaction_id,
            round_no,
            txid,
            sighashes,
            policy_hash,
            decision,
            reasons,
            voter,
            deadline_unix,
        };
        body.validate()?;
        Ok(body)
    }

    /// The exact bytes the voter signs: [`VOTE_DOMAIN`] followed by the encoding.
    pub fn signing_message(&self) -> Result<Vec<u8>, VoteCodecError> {
        Ok(domain_message(&self.encode()?))
    }
}

fn domain_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(VOTE_DOMAIN.len() + body.len());
    m.extend_from_slice(VOTE_DOMAIN);
    m.extend_from_slice(body);
    m
}

/// Something that can sign votes with an Ed25519 key: ring's key pair, or the
/// node's unsealed vote key (implemented where that key lives).
pub trait VoteSigner {
    /// The 32-byte Ed25519 public key.
    fn vote_public_key(&self) -> [u8; 32];
    /// An Ed25519 signature over `msg`.
    fn sign_vote_message(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN];
}

impl VoteSigner for Ed25519KeyPair {
    fn vote_public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.public_key().as_ref());
        k
    }

    fn sign_vote_message(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut s = [0u8; SIGNATURE_LEN];
        s.copy_from_slice(self.sign(msg).as_ref());
        s
    }
}

/// Verifies an Ed25519 signature over `domain || payload`.
///
/// A node checks the same vote more than once: when it arrives, again in the
/// quorum certificate of a signing request, and on a re-delivery. A triple that
/// verified is remembered by the SHA-256 of the key, the message and the
/// signature together ([`verified`]), so checking it again is a hash and a
/// lookup. Only successes are remembered, and the hash covers every input of the
/// verification, so the answer is the one verifying again would give.
pub(crate) fn verify_ed25519(
    public_key: &[u8; 32],
    msg: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), BadSignature> {
    let id = verified::id(public_key, msg, signature);
    if verified::contains(&id) {
        return Ok(());
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, signature)
        .map_err(|_| BadSignature)?;
    verified::insert(id);
    Ok(())
}

/// The process-wide memory of Ed25519 triples that verified (at most
/// [`verified::CAPACITY`] entries of 32 bytes; when full it is emptied and
/// refilled by use).
pub(crate) mod verified {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};

    use sha2::{Digest, Sha256};

    use super::SIGNATURE_LEN;

    /// Most triples remembered: a few seconds of votes under load.
    pub(crate) const CAPACITY: usize = 8192;

    fn set() -> &'static Mutex<HashSet<[u8; 32]>> {
        static SET: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
        SET.get_or_init(Mutex::default)
    }

    /// SHA-256 over the key, the message's length, the message and the signature.
    pub(crate) fn id(
        public_key: &[u8; 32],
        msg: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"vote/ed25519-verified/v1");
        h.update(public_key);
        h.update((msg.len() as u64).to_be_bytes());
        h.update(msg);
        h.update(signature);
        h.finalize().into()
    }

    pub(crate) fn contains(id: &[u8; 32]) -> bool {
        set()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    pub(crate) fn insert(id: [u8; 32]) {
        let mut s = set().lock().unwrap_or_else(PoisonError::into_inner);
        if s.len() >= CAPACITY {
            s.clear();
        }
        s.insert(id);
    }
}

/// A vote body with the voter's signature. Only [`SignedVote::sign`] and
/// [`SignedVote::decode`] create one, so its body always satisfies the format's
/// bounds; the signature is checked by [`SignedVote::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVote {
    body: VoteBody,
    body_bytes: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl SignedVote {
    /// Signs `body` with the voter's key.
    pub fn sign(body: VoteBody, key: &impl VoteSigner) -> Result<SignedVote, VoteCodecError> {
        let body_bytes = body.encode()?;
        let signature = key.sign_vote_message(&domain_message(&body_bytes));
        Ok(SignedVote {
            body,
            body_bytes,
            signature,
        })
    }

    /// The vote's body.
    pub fn body(&self) -> &VoteBody {
        &self.body
    }

    /// The voter's node id.
    pub fn voter(&self) -> &str {
        &self.body.voter
    }

    /// The signature.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// Checks the signature against the voter's public key.
    pub fn verify(&self, voter_public_key: &[u8; 32]) -> Result<(), BadSignature> {
        verify_ed25519(
            voter_public_key,
            &domain_message(&self.body_bytes),
            &self.signature,
        )
    }

    /// Wire form: `u32 body length || body || signature`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(4 + self.body_bytes.len() + SIGNATURE_LEN);
        // The body is at most MAX_VOTE_BODY_BYTES long.
        w.u32(u32::try_from(self.body_bytes.len()).unwrap_or(u32::MAX));
        w.raw(&self.body_bytes);
        w.raw(&self.signature);
        w.finish()
    }

    /// Decodes the wire form (at most [`MAX_SIGNED_VOTE_BYTES`]); does not check
    /// the signature.
    pub fn decode(b: &[u8]) -> Result<SignedVote, VoteCodecError> {
        if b.len() > MAX_SIGNED_VOTE_BYTES {
            return Err(VoteCodecError::TooLarge {
                what: "signed vote",
                len: b.len(),
                max: MAX_SIGNED_VOTE_BYTES,
            });
        }
        let mut r = Reader::new(b);
        let len = r.u32("body length")?;
        let len = usize::try_from(len).map_err(|_| VoteCodecError::Truncated { field: "body" })?;
        if len > MAX_VOTE_BODY_BYTES {
            return Err(VoteCodecError::TooLarge {
                what: "vote body",
                len,
                max: MAX_VOTE_BODY_BYTES,
            });
        }
        let body_bytes = r.take(len, "body")?;
        let signature = r.array("signature")?;
        r.end()?;
        let body = VoteBody::decode(body_bytes)?;
        Ok(SignedVote {
            body,
            body_bytes: body_bytes.to_vec(),
            signature,
        })
    }
}
