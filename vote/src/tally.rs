//! Counting a round's votes.

use std::collections::BTreeMap;

use super::error::TallyError;
use super::message::{SignedVote, VoteDecision};

/// State of a voting round given the votes so far. Expiry is the caller's
/// business: an `Open` round past its deadline is `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Neither outcome is settled yet.
    Open,
    /// At least `required` nodes approved.
    Approved,
    /// So many nodes rejected that `required` approvals can no longer be reached.
    Rejected,
}

impl RoundOutcome {
    /// `open`, `approved` or `rejected` (the values of `voting_rounds.state`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoundOutcome::Open => "open",
            RoundOutcome::Approved => "approved",
            RoundOutcome::Rejected => "rejected",
        }
    }
}

/// Approvals and rejections by distinct voters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct voters that approved.
    pub approvals: usize,
    /// Distinct voters that rejected.
    pub rejections: usize,
}

impl Tally {
    /// Counts `(voter, decision)` pairs; a voter counts once, with its first
    /// decision (the intake keeps only the first vote of a node anyway).
    pub fn count<'a>(votes: impl IntoIterator<Item = (&'a str, VoteDecision)>) -> Tally {
        let mut first: BTreeMap<&'a str, VoteDecision> = BTreeMap::new();
        for (voter, d) in votes {
            first.entry(voter).or_insert(d);
        }
        let approvals = first
            .values()
            .filter(|d| **d == VoteDecision::Approve)
            .count();
        Tally {
            approvals,
            rejections: first.len() - approvals,
        }
    }

    /// The outcome for a round needing `required` of `total` nodes.
    pub fn outcome(&self, required: usize, total: usize) -> Result<RoundOutcome, TallyError> {
        if required == 0 || required > total {
            return Err(TallyError::BadThreshold { required, total });
        }
        if self.approvals >= required {
            return Ok(RoundOutcome::Approved);
        }
        let not_yet_voted = total.saturating_sub(self.approvals + self.rejections);
        if self.approvals + not_yet_voted < required {
            Ok(RoundOutcome::Rejected)
        } else {
            Ok(RoundOutcome::Open)
        }
    }
}

/// The outcome of a round needing `required` approvals out of `total` voters,
/// given the (already accepted) votes. Votes are counted once per voter.
pub fn evaluate_round<'a>(
    required: usize,
    total: usize,
    votes: impl IntoIterator<Item = &'a SignedVote>,
) -> Result<RoundOutcome, TallyError> {
    Tally::count(votes.into_iter().map(|v| (v.voter(), v.body().decision))).outcome(required, total)
}
