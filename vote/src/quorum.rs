//! Proof that a quorum approved, and the permit that signing code requires.

use std::collections::BTreeSet;

use bitcoin::Txid;
use uuid::Uuid;

use super::error::{PermitError, QcError};
use super::keys::VoteKeyBook;
use super::message::{SignedVote, VoteDecision};
use super::subject::VoteSubject;

/// At least `required` distinct, validly signed approvals of exactly one
/// (transaction id, round, txid, sighashes, policy hash), by voters with pinned
/// keys.
///
/// The only constructor is [`QuorumCertificate::verify`]; the fields are private,
/// so holding one means the check was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumCertificate {
    subject: VoteSubject,
    approvers: Vec<String>,
    approvals: Vec<SignedVote>,
    not_after_unix: u64,
}

impl QuorumCertificate {
    /// Verifies `votes` against `keys` and `expected`.
    ///
    /// Every vote given must be valid: a voter appearing twice, a voter without a
    /// pinned key, a bad signature or a vote for anything but `expected` fails the
    /// whole certificate. Reject votes are allowed and not counted. At least
    /// `required` approvals must remain.
    pub fn verify(
        votes: &[SignedVote],
        keys: &VoteKeyBook,
        required: usize,
        expected: &VoteSubject,
    ) -> Result<QuorumCertificate, QcError> {
        if required == 0 {
            return Err(QcError::ZeroRequired);
        }
        let mut seen = BTreeSet::new();
        let mut approvals = Vec::new();
        for v in votes {
            let voter = v.voter();
            if !seen.insert(voter) {
                return Err(QcError::DuplicateVoter {
                    voter: voter.to_owned(),
                });
            }
            let key = keys.get(voter).ok_or_else(|| QcError::UnknownVoter {
                voter: voter.to_owned(),
            })?;
            v.verify(key).map_err(|_| QcError::BadSignature {
                voter: voter.to_owned(),
            })?;
            if let Some(field) = expected.mismatch(v.body()) {
                return Err(QcError::WrongSubject {
                    voter: voter.to_owned(),
                    field,
                });
            }
            if v.body().decision == VoteDecision::Approve {
                approvals.push(v.clone());
            }
        }
        if approvals.len() < required {
            return Err(QcError::TooFewApprovals {
                approvals: approvals.len(),
                required,
            });
        }
        approvals.sort_by(|a, b| a.voter().cmp(b.voter()));
        let approvers = approvals.iter().map(|v| v.voter().to_owned()).collect();
        let not_after_unix = approvals
            .iter()
            .map(|v| v.body().deadline_unix)
            .min()
            .unwrap_or(0);
        Ok(QuorumCertificate {
            subject: expected.clone(),
            approvers,
            approvals,
            not_after_unix,
        })
    }

    /// The approving voters, sorted.
    pub fn approvers(&self) -> &[String] {
        &self.approvers
    }

    /// The approving signed votes (to store or show as evidence), sorted by voter.
    pub fn approvals(&self) -> &[SignedVote] {
        &self.approvals
    }

    /// What was approved.
    pub fn subject(&self) -> &VoteSubject {
        &self.subject
    }

    /// The transaction.
    pub fn transaction_id(&self) -> Uuid {
        self.subject.transaction_id
    }

    /// The approved txid.
    pub fn txid(&self) -> Txid {
        self.subject.txid
    }

    /// The approved sighashes, in input order.
    pub fn sighashes(&self) -> &[[u8; 32]] {
        &self.subject.sighashes
    }

    /// The policy hash every approver evaluated.
    pub fn policy_hash(&self) -> [u8; 32] {
        self.subject.policy_hash
    }

    /// The earliest deadline among the approvals (Unix seconds).
    pub fn not_after_unix(&self) -> u64 {
        self.not_after_unix
    }
}

/// Permission to produce signature shares for exactly one set of sighashes:
/// this node's own policy approval plus a quorum certificate that agree.
///
/// The only constructor is [`SigningPermit::new`]; it is neither `Clone` nor
/// constructible elsewhere:
///
/// ```compile_fail
/// fn copy(p: &vote::SigningPermit) -> vote::SigningPermit {
///     p.clone()
/// }
/// ```
#[derive(Debug)]
pub struct SigningPermit {
    approval: policy::Approval,
    qc: QuorumCertificate,
}

impl SigningPermit {
    /// Checks that the local approval and the quorum certificate are for the same
    /// txid and policy, that `sighashes` (recomputed by the caller from the PSBT
    /// it is about to sign) are exactly the approved ones, and that `now_unix` is
    /// not past the earliest approval deadline.
    pub fn new(
        approval: policy::Approval,
        qc: QuorumCertificate,
        sighashes: &[[u8; 32]],
        now_unix: u64,
    ) -> Result<SigningPermit, PermitError> {
        if approval.txid() != qc.txid() {
            return Err(PermitError::TxidMismatch {
                approval: approval.txid().to_string(),
                quorum: qc.txid().to_string(),
            });
        }
        if *approval.policy_hash().as_bytes() != qc.policy_hash() {
            return Err(PermitError::PolicyMismatch {
                approval: approval.policy_hash().to_hex(),
                quorum: hex::encode(qc.policy_hash()),
            });
        }
        if sighashes != qc.sighashes() {
            return Err(PermitError::SighashMismatch);
        }
        if now_unix > qc.not_after_unix() {
            return Err(PermitError::Expired {
                not_after_unix: qc.not_after_unix(),
                now_unix,
            });
        }
        Ok(SigningPermit { approval, qc })
    }

    /// This node's policy approval.
    pub fn approval(&self) -> &policy::Approval {
        &self.approval
    }

    /// The quorum certificate.
    pub fn quorum(&self) -> &QuorumCertificate {
        &self.qc
    }

    /// The transaction.
    pub fn transaction_id(&self) -> Uuid {
        self.qc.transaction_id()
    }

    /// The txid.
    pub fn txid(&self) -> Txid {
        self.qc.txid()
    }

    /// The sighashes that may be signed, in input order.
    pub fn sighashes(&self) -> &[[u8; 32]] {
        self.qc.sighashes()
    }

    /// Whether input `index` has sighash `sighash` under this permit; signing
    /// code checks this for every input right before it signs.
    pub fn allows(&self, index: usize, sighash: &[u8; 32]) -> bool {
        self.qc.sighashes().get(index) == Some(sighash)
    }

    /// Leave to sign input `index` whose sighash is `sighash`, if this permit covers
    /// exactly that: what the signing entry points of the protocol layer require.
    pub fn authorize(&self, index: usize, sighash: &[u8; 32]) -> Result<InputPermit, PermitError> {
        if !self.allows(index, sighash) {
            return Err(PermitError::InputNotPermitted { index });
        }
        Ok(InputPermit {
            index,
            sighash: *sighash,
        })
    }
}

/// Leave to produce a signature share over one input's sighash, issued by a
/// [`SigningPermit`] ([`SigningPermit::authorize`]): the protocol layer's signing
/// entry points (interactive ECDSA and FROST signing, a presignature's partial
/// signature) take one and refuse any other message. No other constructor exists
/// outside the `test-permits` feature (tests of the protocol layer only):
///
/// ```compile_fail
/// let _p = vote::InputPermit { index: 0, sighash: [0; 32] };
/// ```
#[derive(Debug)]
pub struct InputPermit {
    index: usize,
    sighash: [u8; 32],
}

impl InputPermit {
    /// The input index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The sighash that may be signed.
    pub fn sighash(&self) -> &[u8; 32] {
        &self.sighash
    }

    /// Whether `sighash` is the one this permit allows.
    pub fn permits(&self, sighash: &[u8; 32]) -> bool {
        &self.sighash == sighash
    }
}

#[cfg(feature = "test-permits")]
impl InputPermit {
    /// A permit without any policy approval or quorum: for tests of the protocol
    /// layer only (feature `test-permits`, never enabled by the node).
    pub fn for_tests_only(index: usize, sighash: [u8; 32]) -> Self {
        InputPermit { index, sighash }
    }
}
