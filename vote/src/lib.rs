//! Transaction votes: signed decisions of each node's policy, pinned vote keys,
//! round tallies and the quorum certificate that signing requires.
//!
//! Pure: no I/O, no database, no clock (the node's vote intake, which stores votes,
//! lives in the signer's transaction service). The message formats, what is
//! signed, the trust model and the violation codes are documented in
//! `docs/VOTING.md`.
//!
//! Flow on a node:
//! 1. At start, load the pinned keys from the node's database into a
//!    [`VoteKeyBook`], pin the node's own key, and send a [`VoteKeyAnnouncement`]
//!    to every peer after each (re)connection.
//! 2. Per round: evaluate the policy, [`SignedVote::sign`] a [`VoteBody`], store
//!    it through the node's vote intake (as its own sender) and broadcast it as a
//!    [`VoteMessage::Vote`].
//! 3. On every received vote: the intake checks and stores it, then
//!    [`evaluate_round`] over the round's stored votes.
//! 4. Before signing: [`QuorumCertificate::verify`] over the stored votes, then
//!    [`SigningPermit::new`] with the node's own `policy::Approval`.

mod approver;
mod codec;
mod error;
mod keys;
mod message;
mod quorum;
mod subject;
mod tally;

#[cfg(test)]
mod tests;

pub use approver::{
    approval_message, endorsement_message, valid_approver_name, valid_approver_role,
    verify_approval, verify_endorsement, Approver, APPROVAL_DOMAIN, ENDORSEMENT_DOMAIN,
    MAX_APPROVER_ROLE_LEN,
};
pub use error::{
    BadSignature, KeyAnnounceError, PermitError, QcError, TallyError, VoteCodecError, VoteReject,
};
pub use keys::{
    vote_key_fingerprint, PinOutcome, VoteKeyAnnouncement, VoteKeyBook, KEY_ANNOUNCE_DOMAIN,
    KEY_ANNOUNCE_VERSION, MAX_KEY_ANNOUNCE_BYTES,
};
pub use message::{
    SignedVote, VoteBody, VoteDecision, VoteSigner, MAX_REASONS, MAX_REASON_BYTES, MAX_SIGHASHES,
    MAX_SIGNED_VOTE_BYTES, MAX_VOTER_BYTES, MAX_VOTE_BODY_BYTES, SIGNATURE_LEN, VOTE_BODY_VERSION,
    VOTE_DOMAIN,
};
pub use quorum::{InputPermit, QuorumCertificate, SigningPermit};
pub use subject::{check_vote, compare_redelivery, Redelivery, VoteSubject};
pub use tally::{evaluate_round, RoundOutcome, Tally};

/// Whether `id` is a valid node id (`[a-z0-9-]{1,32}`): the names votes and vote
/// keys carry, and the node ids of the cluster's configuration.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Violation recorded when a node's vote has a bad signature.
pub const VIOLATION_BAD_SIGNATURE: &str = "bad_vote_signature";
/// Violation recorded when a node sends a second, different vote in a round.
pub const VIOLATION_DOUBLE_VOTE: &str = "double_vote";
/// Violation recorded when a node sends a vote naming another voter.
pub const VIOLATION_SENDER_MISMATCH: &str = "vote_sender_mismatch";
/// Violation recorded when a node votes on another transaction, round, txid,
/// sighash list or policy than the round's.
pub const VIOLATION_SUBJECT_MISMATCH: &str = "vote_subject_mismatch";
/// Violation recorded when a node announces a vote key other than its pinned one.
pub const VIOLATION_KEY_CHANGED: &str = "vote_key_changed";
/// Violation recorded when a vote-key announcement names another node or has a
/// bad proof of possession.
pub const VIOLATION_BAD_KEY_ANNOUNCEMENT: &str = "bad_vote_key_announcement";

/// Upper bound of an encoded [`VoteMessage`].
pub const MAX_VOTE_MESSAGE_BYTES: usize = 1 + MAX_SIGNED_VOTE_BYTES;

const TAG_VOTE: u8 = 1;
const TAG_KEY_ANNOUNCEMENT: u8 = 2;

/// Payload of a `VOTE` frame: one tag byte (1 vote,
/// 2 key announcement) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteMessage {
    /// A signed vote.
    Vote(SignedVote),
    /// The sender's vote key.
    KeyAnnouncement(VoteKeyAnnouncement),
}

impl VoteMessage {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            VoteMessage::Vote(v) => (TAG_VOTE, v.encode()),
            VoteMessage::KeyAnnouncement(a) => (TAG_KEY_ANNOUNCEMENT, a.encode()),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a payload of at most [`MAX_VOTE_MESSAGE_BYTES`].
    pub fn decode(b: &[u8]) -> Result<VoteMessage, VoteCodecError> {
        if b.len() > MAX_VOTE_MESSAGE_BYTES {
            return Err(VoteCodecError::TooLarge {
                what: "vote message",
                len: b.len(),
                max: MAX_VOTE_MESSAGE_BYTES,
            });
        }
        let Some((&tag, rest)) = b.split_first() else {
            return Err(VoteCodecError::Truncated {
                field: "message tag",
            });
        };
        match tag {
            TAG_VOTE => Ok(VoteMessage::Vote(SignedVote::decode(rest)?)),
            TAG_KEY_ANNOUNCEMENT => Ok(VoteMessage::KeyAnnouncement(VoteKeyAnnouncement::decode(
                rest,
            )?)),
            tag => Err(VoteCodecError::UnknownTag {
                field: "vote message",
                tag,
            }),
        }
    }
}
