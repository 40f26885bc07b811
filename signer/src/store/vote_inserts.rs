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
use std::mem;
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::votes::{insert_vote_row, NewSignedVote};
use super::{Store, StoreError};

/// Most votes one insert stores.
const MAX_GROUP: usize = 256;

type Answer = oneshot::Sender<Result<bool, StoreError>>;

/// The votes waiting for an insert, and whether an inserting task is running.
#[derive(Debug, Default)]
pub struct VoteInserts {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(NewSignedVote, Answer)>,
    inserting: bool,
}

impl VoteInserts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next group: at most [`MAX_GROUP`] votes, one per (round, voter); the
    /// others stay queued. `None` (and nobody inserting) when the queue is empty.
    fn next_group(&self) -> Option<Vec<(NewSignedVote, Answer)>> {
        let mut q = self.lock();
        if q.waiting.is_empty() {
            q.inserting = false;
            return None;
        }
        let mut slots = HashSet::new();
        let mut group = Vec::new();
        let mut rest = Vec::new();
        for item in mem::take(&mut q.waiting) {
            if group.len() < MAX_GROUP && slots.insert((item.0.round_id, item.0.node_id.clone())) {
                group.push(item);
            } else {
                rest.push(item);
            }
        }
        q.waiting = rest;
        Some(group)
    }
}

/// Ends the inserting task's turn if it stops early (a panic, or the runtime
/// dropping it): the flag is cleared and the queued answers dropped, so their
/// callers insert their votes themselves and the next vote starts a new task.
struct InsertingTask<'a>(&'a VoteInserts);

impl Drop for InsertingTask<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.inserting = false;
        q.waiting.clear();
    }
}

impl Store {
    /// Inserts `vote` unless its voter has a vote in the round: `true` when it is
    /// stored now. Grouped with the votes other callers are storing (module doc):
    /// the first caller starts an inserting task that stores groups until the
    /// queue is empty.
    pub(crate) async fn insert_vote_grouped(
        &self,
        vote: &NewSignedVote,
    ) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut q = self.vote_inserts.lock();
            q.waiting.push((vote.clone(), answer));
            !mem::replace(&mut q.inserting, true)
        };
        if start {
            let store = self.clone();
            tokio::spawn(async move {
                let task = InsertingTask(&store.vote_inserts);
                while let Some(group) = store.vote_inserts.next_group() {
                    store.insert_group(group).await;
                }
                // `next_group` ended the task's turn (queue empty, flag cleared).
                mem::forget(task);
            });
        }
        match answered.await {
            Ok(stored) => stored,
            // The inserting task ended without answering (the runtime shutting
            // down): this caller inserts its vote itself.
            Err(_) => insert_vote_row(self.pool(), vote).await,
        }
    }

    async fn insert_group(&self, group: Vec<(NewSignedVote, Answer)>) {
        if group.len() == 1 {
            for (vote, answer) in group {
                let _ = answer.send(insert_vote_row(self.pool(), &vote).await);
            }
            return;
        }
        let mut round_id = Vec::with_capacity(group.len());
        let mut node_id = Vec::with_capacity(group.len());
        let mut decision = Vec::with_capacity(group.len());
        let mut reasons = Vec::with_capacity(group.len());
        let mut policy_hash = Vec::with_capacity(group.len());
        let mut signature = Vec::with_capacity(group.len());
        let mut signed_vote = Vec::with_capacity(group.len());
        for (v, _) in &group {
            round_id.push(v.round_id);
            node_id.push(v.node_id.clone());
            decision.push(v.decision.clone());
            reasons.push(v.reasons.clone());
            policy_hash.push(v.policy_hash.clone());
            signature.push(v.signature.clone());
            signed_vote.push(v.signed_vote.clone());
        }
        let stored: Result<Vec<(Uuid, String)>, sqlx::Error> = sqlx::query_as(
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
        .await;
        match stored {
            Ok(rows) => {
                let stored: HashSet<(Uuid, String)> = rows.into_iter().collect();
                for (v, answer) in group {
                    let _ = answer.send(Ok(stored.contains(&(v.round_id, v.node_id))));
                }
            }
            // One bad row (its round deleted) fails the whole statement: each vote
            // is then inserted on its own, so it fails alone. Concurrently, as
            // before grouping: with the database down, every caller gets its own
            // error after one wait, not one wait after another.
            Err(e) => {
                tracing::debug!(error = %e, votes = group.len(), "grouped vote insert failed; inserting one by one");
                futures::future::join_all(group.into_iter().map(|(v, answer)| async move {
                    let _ = answer.send(insert_vote_row(self.pool(), &v).await);
                }))
                .await;
            }
        }
    }
}
