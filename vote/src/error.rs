//! Error types of the vote module.

/// Why bytes are not a valid vote message, or a vote cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VoteCodecError {
    /// The input is larger than the format allows.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which message.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended inside a field.
    #[error("truncated in field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{extra} trailing bytes after the last field")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Unknown format version.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which message.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// Unknown tag byte.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// The field.
        field: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A list has too many (or too few) entries.
    #[error("{field} has {count} entries, allowed {min}..={max}")]
    Count {
        /// The list.
        field: &'static str,
        /// Entries found.
        count: usize,
        /// Fewest allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// A text field is empty, too long, or has characters outside its alphabet.
    #[error("invalid {field}")]
    BadText {
        /// The field.
        field: &'static str,
    },
    /// The round number is outside 1..=2^31-1.
    #[error("round number {0} outside 1..=2147483647")]
    BadRound(u32),
}

/// A signature that does not verify under the key it was checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify under the voter's key")]
pub struct BadSignature;

/// Why a vote was not accepted into a round. Every variant names the voter (or the
/// sending node) it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoteReject {
    /// The vote says it is from `voter` but arrived over `sender`'s authenticated
    /// connection. Recorded as `vote_sender_mismatch`.
    #[error("vote from {voter} arrived over {sender}'s connection")]
    SenderMismatch {
        /// The authenticated sender.
        sender: String,
        /// The voter named in the vote.
        voter: String,
    },
    /// No vote key is pinned for the voter yet; nothing is recorded (the
    /// announcement may still be on its way).
    #[error("no vote key is pinned for {voter}")]
    UnknownVoter {
        /// The voter.
        voter: String,
    },
    /// The signature does not verify under the voter's pinned key. Recorded as
    /// `bad_vote_signature`.
    #[error("vote by {voter} has a bad signature")]
    BadSignature {
        /// The voter.
        voter: String,
    },
    /// The vote is for another transaction, round, txid, sighash list or policy.
    /// Recorded as `vote_subject_mismatch`.
    #[error("vote by {voter} is for another subject: {field} differs")]
    WrongSubject {
        /// The voter.
        voter: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// The voter already has a different vote in this round; the first one stays.
    /// Recorded as `double_vote`.
    #[error("{voter} voted twice in round {round_no} with different votes")]
    DoubleVote {
        /// The voter.
        voter: String,
        /// The round.
        round_no: u32,
    },
    /// The database failed.
    #[error("storing the vote failed: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl VoteReject {
    /// The `byzantine_violations.violation_type` recorded for this rejection, if
    /// any.
    pub fn violation_code(&self) -> Option<&'static str> {
        match self {
            VoteReject::SenderMismatch { .. } => Some(super::VIOLATION_SENDER_MISMATCH),
            VoteReject::BadSignature { .. } => Some(super::VIOLATION_BAD_SIGNATURE),
            VoteReject::WrongSubject { .. } => Some(super::VIOLATION_SUBJECT_MISMATCH),
            VoteReject::DoubleVote { .. } => Some(super::VIOLATION_DOUBLE_VOTE),
            VoteReject::UnknownVoter { .. } | VoteReject::Store(_) => None,
        }
    }
}

/// Why a vote-key announcement was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyAnnounceError {
    /// The announcement names another node than the authenticated sender.
    #[error("vote key announcement for {claimed} arrived over {sender}'s connection")]
    SenderMismatch {
        /// The authenticated sender.
        sender: String,
        /// The node named in the announcement.
        claimed: String,
    },
    /// The proof of possession does not verify under the announced key.
    #[error("vote key announcement by {node} has a bad proof of possession")]
    BadProof {
        /// The announcing node.
        node: String,
    },
    /// A different key is already pinned for the node. Recorded as
    /// `vote_key_changed`; the pinned key stays.
    #[error("{node} announced vote key {offered} but {pinned} is pinned")]
    KeyChanged {
        /// The node.
        node: String,
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint of the offered key.
        offered: String,
    },
    /// The database failed.
    #[error("pinning the vote key failed: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Why a set of votes is not a quorum certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QcError {
    /// `required` is zero.
    #[error("a quorum needs at least one approval")]
    ZeroRequired,
    /// A voter appears more than once.
    #[error("{voter} appears more than once")]
    DuplicateVoter {
        /// The voter.
        voter: String,
    },
    /// A voter has no pinned key.
    #[error("{voter} has no pinned vote key")]
    UnknownVoter {
        /// The voter.
        voter: String,
    },
    /// A vote's signature does not verify.
    #[error("vote by {voter} has a bad signature")]
    BadSignature {
        /// The voter.
        voter: String,
    },
    /// A vote is for another subject.
    #[error("vote by {voter} is for another subject: {field} differs")]
    WrongSubject {
        /// The voter.
        voter: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// Fewer valid approvals than required.
    #[error("{approvals} approvals, {required} required")]
    TooFewApprovals {
        /// Valid approvals found.
        approvals: usize,
        /// Approvals required.
        required: usize,
    },
}

/// Why a signing permit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermitError {
    /// The local approval and the quorum certificate name different transactions.
    #[error("local approval is for txid {approval} but the quorum approved {quorum}")]
    TxidMismatch {
        /// Txid of the local approval.
        approval: String,
        /// Txid of the quorum certificate.
        quorum: String,
    },
    /// The local approval and the quorum used different policies.
    #[error("local approval used policy {approval} but the quorum approved under {quorum}")]
    PolicyMismatch {
        /// Local policy hash (hex).
        approval: String,
        /// Quorum's policy hash (hex).
        quorum: String,
    },
    /// The sighashes to sign are not exactly the ones the quorum approved.
    #[error("the sighashes to sign differ from the ones the quorum approved")]
    SighashMismatch,
    /// The input is not in the permit or has another sighash.
    #[error("input {index} with this sighash is not covered by the permit")]
    InputNotPermitted {
        /// The input asked for.
        index: usize,
    },
    /// The earliest approval deadline has passed.
    #[error("quorum approval expired at {not_after_unix} (now {now_unix})")]
    Expired {
        /// Earliest deadline among the approving votes.
        not_after_unix: u64,
        /// The time checked.
        now_unix: u64,
    },
}

/// Why a round cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TallyError {
    /// `required` must be in `1..=total`.
    #[error("required approvals {required} outside 1..={total}")]
    BadThreshold {
        /// Approvals required.
        required: usize,
        /// Nodes that may vote.
        total: usize,
    },
}
