//! Voting rounds and votes (at most one vote per node and round).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};

/// A voting round.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RoundRow {
    /// Round id.
    pub id: Uuid,
    /// Transaction voted on.
    pub transaction_id: Uuid,
    /// Round number (1 for the first round of a transaction).
    pub round_no: i32,
    /// Approvals needed.
    pub required_approvals: i32,
    /// Nodes that may vote.
    pub total_nodes: i32,
    /// open, approved, rejected or expired.
    pub state: String,
    /// Deadline.
    pub deadline: DateTime<Utc>,
}

/// A vote as received.
#[derive(Debug, Clone)]
pub struct NewVote {
    /// Round.
    pub round_id: Uuid,
    /// Voter.
    pub node_id: String,
    /// approve or reject.
    pub decision: String,
    /// Reasons (policy violation codes) as JSON.
    pub reasons: serde_json::Value,
    /// Policy hash the voter evaluated.
    pub policy_hash: Option<String>,
    /// Voter's signature over the vote.
    pub signature: Vec<u8>,
}

/// Tally of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Approvals.
    pub approve: i64,
    /// Rejections.
    pub reject: i64,
}

impl Store {
    /// Opens a round for a transaction.
    pub async fn create_round(
        &self,
        id: Uuid,
        transaction_id: Uuid,
        round_no: i32,
        required_approvals: i32,
        total_nodes: i32,
        deadline: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO voting_rounds (id, transaction_id, round_no, required_approvals, total_nodes, deadline) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(transaction_id)
        .bind(round_no)
        .bind(required_approvals)
        .bind(total_nodes)
        .bind(deadline)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "voting round"))?;
        Ok(())
    }

    /// One round.
    pub async fn get_round(&self, id: Uuid) -> Result<RoundRow, StoreError> {
        sqlx::query_as::<_, RoundRow>(
            "SELECT id, transaction_id, round_no, required_approvals, total_nodes, state, deadline \
             FROM voting_rounds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound {
            what: "voting round",
            id: id.to_string(),
        })
    }

    /// Records a vote; a second vote by the same node in the round is refused with
    /// [`StoreError::Duplicate`].
    pub async fn record_vote(&self, vote: &NewVote) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, signature) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(vote.round_id)
        .bind(&vote.node_id)
        .bind(&vote.decision)
        .bind(&vote.reasons)
        .bind(&vote.policy_hash)
        .bind(&vote.signature)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "vote"))?;
        Ok(())
    }

    /// Counts approvals and rejections of a round.
    pub async fn tally(&self, round_id: Uuid) -> Result<Tally, StoreError> {
        let (approve, reject): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE decision = 'approve'), \
                    count(*) FILTER (WHERE decision = 'reject') \
             FROM votes WHERE round_id = $1",
        )
        .bind(round_id)
        .fetch_one(self.pool())
        .await?;
        Ok(Tally { approve, reject })
    }

    /// Closes an open round with its outcome.
    pub async fn close_round(&self, round_id: Uuid, outcome: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE voting_rounds SET state = $2, closed_at = now() WHERE id = $1 AND state = 'open'",
        )
        .bind(round_id)
        .bind(outcome)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
