//! The leader's proposal batches (issue 21, docs/BATCHING.md): payments of one key
//! validated and stored by the intake wait here until `[wallet]
//! proposal_batch_max` of them are queued or the first has waited `[wallet]
//! proposal_batch_linger_ms`, then go out in one [`wire::TX_PROPOSE_BATCH`] frame
//! and this node votes on them as one batch ([`super::voting::on_proposal_batch`]).
//! Each payment's submitter learns its own result.
//!
//! One batch of a key is handled at a time: payments that arrive meanwhile form
//! the next batch, so the batches grow with the load and a lone payment waits at
//! most the linger.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::wire::{self, Proposal, ProposalBatch};
use super::{TxCtx, TxError};
use crate::p2p::Frame;

/// Whether `peer` speaks the batch frames: the latest connection with it speaks
/// wire level 2 (a peer of an older release, or one this node has not been
/// connected with yet, does not; see [`crate::p2p::WIRE_LEVEL`]).
pub(super) fn speaks_batches(node: &TxCtx, peer: &str) -> bool {
    node.net
        .p2p
        .peer_wire_level(peer)
        .is_some_and(|level| level >= wire::TX_PROPOSE_BATCH.wire_level())
}

/// Whether every participant but this node speaks the batch frames: only then does
/// this node, as leader, propose in batches (a rolling upgrade turns batches on by
/// itself once the last node runs a release that knows them).
pub(super) fn participants_speak_batches(node: &TxCtx, participants: &[String]) -> bool {
    participants
        .iter()
        .filter(|p| **p != node.cfg.node_id)
        .all(|p| speaks_batches(node, p))
}

/// Room left in a batch frame beside the proposals' PSBTs (ids, names, JSON).
const FRAME_SLACK_BYTES: usize = 64 * 1024;

/// The queued payments of every key (in [`super::Registry`]).
#[derive(Debug, Default)]
pub struct Batches {
    keys: Mutex<HashMap<String, KeyQueue>>,
    /// Batches of two or more this node proposed, and the proposals in them.
    sent: AtomicU64,
    sent_proposals: AtomicU64,
    /// Batches this node received from leaders and handled.
    received: AtomicU64,
    /// Vote batches this node sent, and received from peers.
    votes_sent: AtomicU64,
    votes_received: AtomicU64,
    /// Fault injection (`SIGNER_FAULT_REPLAY_PROPOSAL`): the last proposal of the
    /// previous batch, sent again in the next one.
    replay: Mutex<Option<Proposal>>,
}

impl Batches {
    /// Batches of two or more proposed here, the proposals in them, and batches
    /// received from leaders (`/metrics`).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.sent_proposals.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// A batch from a leader passed its shape check.
    pub fn note_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Vote batches sent here and received from peers (`/metrics`).
    pub fn vote_counts(&self) -> (u64, u64) {
        (
            self.votes_sent.load(Ordering::Relaxed),
            self.votes_received.load(Ordering::Relaxed),
        )
    }

    /// This node sent a vote batch (to every participant).
    pub fn note_votes_sent(&self) {
        self.votes_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A vote batch from a peer passed its shape check.
    pub fn note_votes_received(&self) {
        self.votes_received.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct KeyQueue {
    queued: VecDeque<Queued>,
    /// A task is forming and handling this key's batches.
    flushing: bool,
}

#[derive(Debug)]
struct Queued {
    prop: Proposal,
    reserved_at_intake: bool,
    participants: Vec<String>,
    reply: oneshot::Sender<Result<(), TxError>>,
}

/// Queues `prop` (stored by the intake, not sent yet) for the next batch of its
/// key; returns once this node's vote on it is cast (or it failed here), like
/// [`super::voting::on_proposal`].
pub async fn propose(
    node: &Arc<TxCtx>,
    prop: Proposal,
    reserved_at_intake: bool,
    participants: Vec<String>,
) -> Result<(), TxError> {
    let key_id = prop.key_id.clone();
    let (reply, answer) = oneshot::channel();
    let start = {
        let mut keys = lock(&node.tx.batches);
        let q = keys.entry(key_id.clone()).or_default();
        q.queued.push_back(Queued {
            prop,
            reserved_at_intake,
            participants,
            reply,
        });
        !std::mem::replace(&mut q.flushing, true)
    };
    if start {
        let node = node.clone();
        tokio::spawn(async move { Box::pin(flush(node, key_id)).await });
    }
    answer.await.unwrap_or_else(|_| {
        Err(TxError::Internal(
            "the proposal batch ended without a result".into(),
        ))
    })
}

fn lock(b: &Batches) -> std::sync::MutexGuard<'_, HashMap<String, KeyQueue>> {
    b.keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears the key's `flushing` mark if the flushing task ends without finding its
/// queue empty (a panic), so the key is never left without one.
struct Flushing {
    node: Arc<TxCtx>,
    key_id: String,
    /// False once the task ended the normal way (nothing left to clear).
    armed: bool,
}

impl Drop for Flushing {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut keys = lock(&self.node.tx.batches);
        if let Some(q) = keys.get_mut(&self.key_id) {
            q.flushing = false;
            if q.queued.is_empty() {
                keys.remove(&self.key_id);
            }
        }
    }
}

async fn flush(node: Arc<TxCtx>, key_id: String) {
    let wallet = &node.cfg.wallet;
    let max = wallet.proposal_batch_max.clamp(1, wire::MAX_BATCH);
    let linger = Duration::from_millis(wallet.proposal_batch_linger_ms);
    let mut guard = Flushing {
        node: node.clone(),
        key_id: key_id.clone(),
        armed: true,
    };
    if !linger.is_zero() {
        tokio::time::sleep(linger).await;
    }
    loop {
        let batch = {
            let mut keys = lock(&node.tx.batches);
            let batch = keys
                .get_mut(&key_id)
                .map(|q| take_batch(&mut q.queued, max))
                .unwrap_or_default();
            if batch.is_empty() {
                // Ends under the same lock that found the queue empty: a payment
                // queued after this sees no flushing task and starts one (ending
                // after the lock was released stranded such a payment).
                keys.remove(&key_id);
                guard.armed = false;
                return;
            }
            batch
        };
        run(&node, batch).await;
    }
}

/// The next batch: up to `max` queued payments whose PSBTs fit one frame (at least
/// one).
fn take_batch(queued: &mut VecDeque<Queued>, max: usize) -> Vec<Queued> {
    let budget = wire::MAX_TX_FRAME_BYTES.saturating_sub(FRAME_SLACK_BYTES);
    let mut bytes = 0usize;
    let mut batch = Vec::new();
    while let Some(next) = queued.front() {
        let size = next.prop.psbt.len();
        if batch.len() >= max || (!batch.is_empty() && bytes.saturating_add(size) > budget) {
            break;
        }
        bytes = bytes.saturating_add(size);
        batch.extend(queued.pop_front());
    }
    batch
}

/// Sends one batch to the key's participants and votes on it here.
async fn run(node: &Arc<TxCtx>, batch: Vec<Queued>) {
    let me = node.cfg.node_id.clone();
    let Some(participants) = batch.first().map(|q| q.participants.clone()) else {
        return;
    };
    if batch.len() == 1 || !participants_speak_batches(node, &participants) {
        // A batch of one goes out as the single proposal it is; so does each of a
        // batch when a participant no longer speaks batches (it restarted with an
        // older release since the payments were queued).
        futures::future::join_all(batch.into_iter().map(|q| {
            let participants = &participants;
            async move {
                let r =
                    super::intake::propose_alone(node, q.prop, q.reserved_at_intake, participants)
                        .await;
                let _ = q.reply.send(r);
            }
        }))
        .await;
        return;
    }
    let reserved: Vec<bool> = batch.iter().map(|q| q.reserved_at_intake).collect();
    let frame = ProposalBatch {
        batch: Uuid::new_v4(),
        proposals: batch.iter().map(|q| q.prop.clone()).collect(),
    };
    let sent = replayed_in(node, &frame);
    match wire::encode(sent.as_ref().unwrap_or(&frame)) {
        Ok(payload) => {
            tracing::debug!(batch = %frame.batch, proposals = frame.proposals.len(), "proposing a batch");
            let b = &node.tx.batches;
            b.sent.fetch_add(1, Ordering::Relaxed);
            b.sent_proposals
                .fetch_add(frame.proposals.len() as u64, Ordering::Relaxed);
            let f = Frame::new(frame.batch, wire::TX_PROPOSE_BATCH, payload);
            super::voting::broadcast_detached(node, &participants, vec![f]);
        }
        Err(e) => {
            for q in batch {
                let _ = q.reply.send(Err(TxError::Internal(e.to_string())));
            }
            return;
        }
    }
    let results = super::voting::on_proposal_batch(node, &me, frame.proposals, &reserved).await;
    for (q, r) in batch.into_iter().zip(results) {
        let _ = q.reply.send(r);
    }
}

/// Fault injection (`SIGNER_FAULT_REPLAY_PROPOSAL`, a malicious leader): the batch
/// as sent, with the previous batch's last proposal again at its end (a later
/// deadline), so each follower meets a replayed proposal beside fresh ones. This
/// node votes on `frame` only. `None` when the fault is not armed.
fn replayed_in(node: &TxCtx, frame: &ProposalBatch) -> Option<ProposalBatch> {
    let last = frame.proposals.last()?;
    crate::fault::replayed_deadline(last.deadline_unix)?;
    let mut previous = node
        .tx
        .batches
        .replay
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let replayed = previous.replace(last.clone())?;
    let deadline_unix = crate::fault::replayed_deadline(replayed.deadline_unix)?;
    let mut sent = frame.clone();
    sent.proposals.push(Proposal {
        deadline_unix,
        ..replayed
    });
    (sent.check().is_ok()).then_some(sent)
}
