//! Peers' votes stored in groups (issue 21): votes that arrive while an insert is
//! running are stored together by the next one, in one multi-row statement (one
//! round trip and one commit for the group). A lone vote is inserted at once, as
//! before: nothing waits for a group to fill.
//!
//! Each caller still gets its own answer (stored now, or the slot was taken) only
//! once its row is committed, so what the callers do next (tally, relay) is
//! unchanged. Two votes of the same voter in the same round never share a group:
//! the second goes to the next insert and finds the slot taken, so a double vote
//! is still caught by comparing it with the stored one.

use std::collections::HashSet;

use uuid::Uuid;

use super::groups::{write_together_or_alone, Groups, Waiting};
use super::votes::{insert_vote_row, NewSignedVote};
use super::{Store, StoreError};

/// Most votes one insert stores.
const MAX_GROUP: usize = 256;

/// The votes waiting for an insert (see [`Groups`]).
pub(crate) type VoteInserts = Groups<NewSignedVote, Result<bool, StoreError>>;

/// A fresh queue.
pub(crate) fn vote_inserts() -> VoteInserts {
    Groups::new(MAX_GROUP)
}

impl Store {
    /// Inserts `vote` unless its voter has a vote in the round: `true` when it is
    /// stored now. Grouped with the votes other callers are storing (module doc);
    /// two votes of one voter in one round never share a group.
    pub(crate) async fn insert_vote_grouped(
        &self,
        vote: &NewSignedVote,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        Groups::submit_or_alone(
            &self.vote_inserts,
            vote.clone(),
            |v: &NewSignedVote| (v.round_id, v.node_id.clone()),
            move |group| {
                let store = store.clone();
                async move { store.insert_group(group).await }
            },
            |vote| async move { insert_vote_row(self.pool(), &vote).await },
        )
        .await
    }

    async fn insert_group(&self, group: Vec<Waiting<NewSignedVote, Result<bool, StoreError>>>) {
        // One bad row (its round deleted) fails the whole statement: each vote is
        // then inserted on its own, so it fails alone.
        write_together_or_alone(
            group,
            |votes| self.insert_votes_together(votes),
            |v| async move { insert_vote_row(self.pool(), &v).await },
        )
        .await;
    }

    /// Several votes in one multi-row statement: for each, whether it was stored
    /// now (`false`: its voter's slot in the round was taken).
    async fn insert_votes_together(
        &self,
        votes: Vec<NewSignedVote>,
    ) -> Result<Option<Vec<Result<bool, StoreError>>>, StoreError> {
        let mut round_id = Vec::with_capacity(votes.len());
        let mut node_id = Vec::with_capacity(votes.len());
        let mut decision = Vec::with_capacity(votes.len());
        let mut reasons = Vec::with_capacity(votes.len());
        let mut policy_hash = Vec::with_capacity(votes.len());
        let mut signature = Vec::with_capacity(votes.len());
        let mut signed_vote = Vec::with_capacity(votes.len());
        for v in &votes {
            round_id.push(v.round_id);
            node_id.push(v.node_id.clone());
            decision.push(v.decision.clone());
            reasons.push(v.reasons.clone());
            policy_hash.push(v.policy_hash.clone());
            signature.push(v.signature.clone());
            signed_vote.push(v.signed_vote.clone());
        }
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, signature, signed_vote) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], \
                                  $6::bytea[], $7::bytea[]) \
             ON CONFLICT ON CONSTRAINT votes_one_per_node DO NOTHING RETURNING round_id, node_id",
        )
        .bind(&round_id)
        .bind(&node_id)
        .bind(&decision)
        .bind(&reasons)
        .bind(&policy_hash)
        .bind(&signature)
        .bind(&signed_vote)
        .fetch_all(self.pool())
        .await?;
        let stored: HashSet<(Uuid, String)> = rows.into_iter().collect();
        Ok(Some(
            votes
                .into_iter()
                .map(|v| Ok(stored.contains(&(v.round_id, v.node_id))))
                .collect(),
        ))
    }
}
