//! What a round votes on, and the checks every received vote must pass.

use bitcoin::Txid;
use uuid::Uuid;

use super::error::VoteReject;
use super::keys::VoteKeyBook;
use super::message::{SignedVote, VoteBody};

/// The exact subject of a voting round, as this node computed it: a vote counts
/// only if it names all of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteSubject {
    /// The transaction.
    pub transaction_id: Uuid,
    /// The round.
    pub round_no: u32,
    /// Id of the unsigned transaction.
    pub txid: Txid,
    /// Every input's sighash, in input order, recomputed by this node.
    pub sighashes: Vec<[u8; 32]>,
    /// Hash of this node's policy.
    pub policy_hash: [u8; 32],
}

impl VoteSubject {
    /// The first field in which `body` differs from this subject, if any.
    pub fn mismatch(&self, body: &VoteBody) -> Option<&'static str> {
        if body.transaction_id != self.transaction_id {
            Some("transaction_id")
        } else if body.round_no != self.round_no {
            Some("round_no")
        } else if body.txid != self.txid {
            Some("txid")
        } else if body.sighashes != self.sighashes {
            Some("sighashes")
        } else if body.policy_hash != self.policy_hash {
            Some("policy_hash")
        } else {
            None
        }
    }
}

/// The stateless checks of a received vote, in this order: the voter is the
/// authenticated sender, the voter has a pinned key, the signature verifies under
/// it, and the vote is for `expected`.
pub fn check_vote(
    signed: &SignedVote,
    sender: &str,
    expected: &VoteSubject,
    keys: &VoteKeyBook,
) -> Result<(), VoteReject> {
    let voter = signed.voter();
    if voter != sender {
        return Err(VoteReject::SenderMismatch {
            sender: sender.to_owned(),
            voter: voter.to_owned(),
        });
    }
    let key = keys.get(voter).ok_or_else(|| VoteReject::UnknownVoter {
        voter: voter.to_owned(),
    })?;
    if signed.verify(key).is_err() {
        return Err(VoteReject::BadSignature {
            voter: voter.to_owned(),
        });
    }
    if let Some(field) = expected.mismatch(signed.body()) {
        return Err(VoteReject::WrongSubject {
            voter: voter.to_owned(),
            field,
        });
    }
    Ok(())
}

/// How a new, valid vote relates to the vote already stored for its voter and
/// round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// The same vote again: harmless.
    Duplicate,
    /// A different vote: equivocation.
    Conflict,
}

/// Compares a new vote with the stored one of the same voter and round. Votes
/// are the same when their bodies are (Ed25519 signing is deterministic, and ring
/// refuses non-canonical signatures, so equal bodies mean equal signatures for an
/// honest signer).
pub fn compare_redelivery(stored: &SignedVote, new: &SignedVote) -> Redelivery {
    if stored.body() == new.body() {
        Redelivery::Duplicate
    } else {
        Redelivery::Conflict
    }
}
