//! Outcome protocol of `uncertain` reshares (docs/RESHARING.md, "Outcome protocol").
//!
//! A reshare participant that stored its confirmation but did not receive every other
//! participant's confirmation within its bound cannot tell whether another node had
//! them all and switched: it marks the reshare `uncertain` and keeps its pending new
//! share next to the old one. This module resolves that state:
//!
//! - [`resolve`] (spawned when a reshare becomes `uncertain`, and at node start for
//!   every uncertain reshare) asks every other participant of the run with a
//!   [`MessageKind::RESHARE_OUTCOME_QUERY`] frame (session = reshare id, payload = a
//!   fresh 16-byte nonce) and collects the [`MessageKind::RESHARE_OUTCOME_ANSWER`]s.
//! - An answer is `committed` (switched; with its confirmation value), `confirmed`
//!   (stored its confirmation, this value, but did not switch), `failed` (marked
//!   failed) or `unknown`. It is signed with the answering node's vote key over the
//!   reshare id, the query's nonce, the answering and the asking node ids, the outcome
//!   and the value ([`answer_message`]); the asking node checks it with its pinned vote
//!   key of the mTLS-authenticated sender.
//! - A node asked about a reshare that is still `pending` **without** its stored
//!   confirmation marks it `failed` in the same database transaction that reads it
//!   (row lock shared with the confirmation store, so it can never confirm it later)
//!   and answers `failed`: from then on no node can hold all confirmations.
//! - [`decide`]: the uncertain node switches (one transaction, as the normal commit)
//!   when any participant answered `committed` with its own value, or every other
//!   participant answered `confirmed` with its own value; it drops its pending share
//!   only when one answered `failed` and none `committed`. Contradicting answers
//!   (`committed` and `failed`, or another value) are a conflict: audited, nothing
//!   changes. Otherwise it asks again with backoff ([`BACKOFF`]) until resolved.
//!
//! Everything is audited (`key.reshare.outcome_query` once per resolver,
//! `key.reshare.outcome_committed`, `key.reshare.outcome_failed`,
//! `key.reshare.outcome_conflict`, and on the answering side
//! `key.reshare.outcome_failed_by_query`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::DkgCtx;
use crate::audit::AuditEntry;
use crate::p2p::{Frame, Inbound, MessageKind};
use crate::store::reshare::LocalOutcome;

/// Query frame kind.
pub const QUERY: MessageKind = MessageKind::RESHARE_OUTCOME_QUERY;
/// Answer frame kind.
pub const ANSWER: MessageKind = MessageKind::RESHARE_OUTCOME_ANSWER;
/// Length of a query payload (the nonce).
pub const QUERY_LEN: usize = 16;
/// Length of an answer payload: nonce, outcome code, value, Ed25519 signature.
pub const ANSWER_LEN: usize = 16 + 1 + 32 + 64;
/// Domain of the signed answer statement (never a valid vote or reshare statement).
pub const ANSWER_DOMAIN: &[u8] = b"signer/reshare-outcome/v1\0";
/// How long one round waits for the answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Delays between rounds (the last one repeats).
pub const BACKOFF: &[Duration] = &[
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(30),
];

/// Throttle of the warnings about dropped outcome frames.
static DROPPED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not [`ANSWER_LEN`] bytes.
    #[error("answer of {0} bytes")]
    Length(usize),
    /// Unknown outcome code, or a value where none belongs.
    #[error("malformed outcome")]
    Malformed,
    /// Answers another query.
    #[error("nonce of another query")]
    Nonce,
    /// No pinned vote key of the sender.
    #[error("no pinned vote key of {0}")]
    UnknownSigner(String),
    /// The signature does not verify with the sender's pinned vote key.
    #[error("bad signature")]
    BadSignature,
}

fn code(o: &LocalOutcome) -> (u8, [u8; 32]) {
    match o {
        LocalOutcome::Committed(v) => (1, *v),
        LocalOutcome::Confirmed(v) => (2, *v),
        LocalOutcome::Failed => (3, [0; 32]),
        LocalOutcome::Unknown => (4, [0; 32]),
    }
}

fn from_code(c: u8, v: [u8; 32]) -> Option<LocalOutcome> {
    match c {
        1 => Some(LocalOutcome::Committed(v)),
        2 => Some(LocalOutcome::Confirmed(v)),
        3 if v == [0; 32] => Some(LocalOutcome::Failed),
        4 if v == [0; 32] => Some(LocalOutcome::Unknown),
        _ => None,
    }
}

fn push_id(m: &mut Vec<u8>, id: &str) {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&id.as_bytes()[..usize::from(len)]);
}

/// The exact bytes an answer's signature covers.
pub fn answer_message(
    reshare: Uuid,
    nonce: &[u8; 16],
    responder: &str,
    querier: &str,
    outcome: &LocalOutcome,
) -> Vec<u8> {
    let (c, v) = code(outcome);
    let mut m = Vec::with_capacity(ANSWER_DOMAIN.len() + 16 + 16 + 4 + 64 + 33);
    m.extend_from_slice(ANSWER_DOMAIN);
    m.extend_from_slice(reshare.as_bytes());
    m.extend_from_slice(nonce);
    push_id(&mut m, responder);
    push_id(&mut m, querier);
    m.push(c);
    m.extend_from_slice(&v);
    m
}

/// Encodes and signs an answer.
pub fn encode_answer(
    reshare: Uuid,
    nonce: &[u8; 16],
    responder: &str,
    querier: &str,
    outcome: &LocalOutcome,
    key: &impl vote::VoteSigner,
) -> Vec<u8> {
    let sig = key.sign_vote_message(&answer_message(reshare, nonce, responder, querier, outcome));
    let (c, v) = code(outcome);
    let mut b = Vec::with_capacity(ANSWER_LEN);
    b.extend_from_slice(nonce);
    b.push(c);
    b.extend_from_slice(&v);
    b.extend_from_slice(&sig);
    b
}

/// Decodes and authenticates an answer of `responder` (the mTLS identity of the
/// sender) to this node's (`querier`) query `nonce` about `reshare`.
pub fn verify_answer(
    payload: &[u8],
    reshare: Uuid,
    nonce: &[u8; 16],
    responder: &str,
    querier: &str,
    book: &vote::VoteKeyBook,
) -> Result<LocalOutcome, AnswerError> {
    if payload.len() != ANSWER_LEN {
        return Err(AnswerError::Length(payload.len()));
    }
    if payload[..16] != nonce[..] {
        return Err(AnswerError::Nonce);
    }
    let mut v = [0u8; 32];
    v.copy_from_slice(&payload[17..49]);
    let outcome = from_code(payload[16], v).ok_or(AnswerError::Malformed)?;
    let key = book
        .get(responder)
        .ok_or_else(|| AnswerError::UnknownSigner(responder.chars().take(64).collect()))?;
    let msg = answer_message(reshare, nonce, responder, querier, &outcome);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&msg, &payload[49..])
        .map_err(|_| AnswerError::BadSignature)?;
    Ok(outcome)
}

/// What an uncertain node does with the answers of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Switch to the new generation (the rule that applied).
    Commit(&'static str),
    /// Drop the pending share: the participants named answered `failed`.
    Drop(Vec<String>),
    /// Contradicting answers: nothing changes (audited once, asked again).
    Conflict(String),
    /// Not enough answers yet: ask again later.
    Wait,
}

/// The decision on `answers` (authenticated, by participant) of the `others` of the
/// run, for a node whose own confirmation value is `own`.
pub fn decide(
    own: &[u8; 32],
    others: &[String],
    answers: &BTreeMap<String, LocalOutcome>,
) -> Decision {
    let mut committed = Vec::new();
    let mut committed_other = Vec::new();
    let mut confirmed_other = Vec::new();
    let mut failed = Vec::new();
    for (n, a) in answers.iter().filter(|(n, _)| others.contains(n)) {
        match a {
            LocalOutcome::Committed(v) if v == own => committed.push(n.clone()),
            LocalOutcome::Committed(_) => committed_other.push(n.clone()),
            LocalOutcome::Confirmed(v) if v != own => confirmed_other.push(n.clone()),
            LocalOutcome::Failed => failed.push(n.clone()),
            LocalOutcome::Confirmed(_) | LocalOutcome::Unknown => {}
        }
    }
    if !committed_other.is_empty() {
        return Decision::Conflict(format!(
            "committed with another confirmation value: {committed_other:?}"
        ));
    }
    if !committed.is_empty() && !failed.is_empty() {
        return Decision::Conflict(format!(
            "committed by {committed:?} but failed on {failed:?}"
        ));
    }
    if !committed.is_empty() {
        return Decision::Commit("a participant committed");
    }
    if !failed.is_empty() {
        return Decision::Drop(failed);
    }
    if !confirmed_other.is_empty() {
        return Decision::Conflict(format!("confirmed another value: {confirmed_other:?}"));
    }
    if others
        .iter()
        .all(|o| matches!(answers.get(o), Some(LocalOutcome::Confirmed(v)) if v == own))
    {
        return Decision::Commit("every participant confirmed the same value");
    }
    Decision::Wait
}

/// Participants of a reshare run (run-index order): the new holders, then the
/// dealers that leave.
pub fn run_participants(new: &[String], old: &[String], dealers: &[String]) -> Vec<String> {
    let mut v = new.to_vec();
    for d in old {
        if dealers.contains(d) && !v.contains(d) {
            v.push(d.clone());
        }
    }
    v
}

/// Answer channels of the reshares this node is resolving (one resolver each).
#[derive(Debug, Default)]
pub struct Resolvers(Mutex<HashMap<Uuid, AnswerTx>>);

/// Where the answers `(sender, payload)` of one reshare's queries go.
type AnswerTx = mpsc::Sender<(String, Vec<u8>)>;

impl Resolvers {
    /// A new resolver's answer queue; `None` when `id` already has one.
    fn try_insert(&self, id: Uuid) -> Option<mpsc::Receiver<(String, Vec<u8>)>> {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if g.contains_key(&id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(64);
        g.insert(id, tx);
        Some(rx)
    }

    fn remove(&self, id: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn deliver(&self, id: Uuid, from: String, payload: Vec<u8>) -> bool {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        tx.is_some_and(|tx| tx.try_send((from, payload)).is_ok())
    }

    /// Whether `id` is being resolved.
    pub fn is_resolving(&self, id: Uuid) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }
}

/// Removes a resolver's entry when it ends, however it ends.
struct Registered<'a>(&'a Resolvers, Uuid);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// Starts resolving every `uncertain` reshare of this node (at node start).
pub async fn resume(node: Arc<DkgCtx>) {
    let me = node.cfg.node_id.clone();
    match node.store.uncertain_reshares(&me).await {
        Ok(ids) => {
            if !ids.is_empty() {
                tracing::warn!(
                    count = ids.len(),
                    "uncertain reshares found at start; resolving them with the other participants"
                );
            }
            for id in ids {
                tokio::spawn(resolve(node.clone(), id));
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list uncertain reshares"),
    }
}

/// Handles an outcome query or answer frame (dkg service).
pub fn handle(node: &Arc<DkgCtx>, inbound: Inbound) {
    let id = inbound.frame.session;
    if inbound.frame.kind == ANSWER {
        if inbound.frame.payload.len() != ANSWER_LEN
            || !node.reshare_outcomes.deliver(
                id,
                inbound.from.clone(),
                inbound.frame.payload.to_vec(),
            )
        {
            if let Some(dropped) = DROPPED.hit() {
                tracing::warn!(dropped, peer = %inbound.from, session = %id,
                    len = inbound.frame.payload.len(), "unexpected or malformed reshare outcome answer; dropped");
            }
        }
        return;
    }
    let Ok(nonce) = <[u8; QUERY_LEN]>::try_from(&inbound.frame.payload[..]) else {
        if let Some(dropped) = DROPPED.hit() {
            tracing::warn!(dropped, peer = %inbound.from, session = %id,
                len = inbound.frame.payload.len(), "malformed reshare outcome query; dropped");
        }
        return;
    };
    let node = node.clone();
    tokio::spawn(async move { answer(&node, id, inbound.from, nonce).await });
}

async fn answer(node: &Arc<DkgCtx>, id: Uuid, from: String, nonce: [u8; 16]) {
    let me = node.cfg.node_id.clone();
    let Some(unsealed) = node.unsealed() else {
        tracing::warn!(session = %id, peer = %from, "reshare outcome query while sealed; not answered");
        return;
    };
    // Only a participant of the run may ask: a query can fail a pending reshare.
    let outcome = match node.store.reshare_run_sets(&me, id).await {
        Ok(None) => LocalOutcome::Unknown,
        Ok(Some((new, old, dealers))) => {
            if !run_participants(&new, &old, &dealers).contains(&from) {
                tracing::warn!(session = %id, peer = %from, "reshare outcome query from a non-participant; dropped");
                return;
            }
            match node.store.reshare_outcome_for_query(&me, id, &from).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(session = %id, peer = %from, error = %e, "cannot read the reshare outcome; not answered");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::error!(session = %id, error = %e, "cannot read the reshare; not answered");
            return;
        }
    };
    let outcome = crate::fault::reshare_outcome_answer(outcome);
    tracing::info!(session = %id, peer = %from, outcome = outcome_name(&outcome), "answering a reshare outcome query");
    let payload = if crate::fault::reshare_outcome_forge() {
        forged_answer(id, &nonce, &me, &from, &outcome)
    } else {
        encode_answer(id, &nonce, &me, &from, &outcome, &unsealed.vote_key)
    };
    if let Err(e) = node
        .net
        .p2p
        .send(&from, Frame::new(id, ANSWER, payload))
        .await
    {
        tracing::warn!(session = %id, peer = %from, error = %e, "sending the reshare outcome answer failed");
    }
}

/// An answer signed with a fresh key instead of the vote key (fault injection).
fn forged_answer(
    id: Uuid,
    nonce: &[u8; 16],
    me: &str,
    to: &str,
    outcome: &LocalOutcome,
) -> Vec<u8> {
    tracing::error!(session = %id, "FAULT INJECTION: outcome answer signed with a key that is not the vote key");
    let rng = ring::rand::SystemRandom::new();
    match ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .ok()
        .and_then(|d| ring::signature::Ed25519KeyPair::from_pkcs8(d.as_ref()).ok())
    {
        Some(k) => encode_answer(id, nonce, me, to, outcome, &k),
        None => Vec::new(),
    }
}

fn outcome_name(o: &LocalOutcome) -> &'static str {
    match o {
        LocalOutcome::Committed(_) => "committed",
        LocalOutcome::Confirmed(_) => "confirmed",
        LocalOutcome::Failed => "failed",
        LocalOutcome::Unknown => "unknown",
    }
}

/// Resolves `uncertain` reshare `id` of this node: asks the other participants
/// until [`decide`] commits or drops (or the reshare is no longer uncertain, e.g.
/// superseded by a later reshare). One resolver per reshare.
pub async fn resolve(node: Arc<DkgCtx>, id: Uuid) {
    let Some(mut rx) = node.reshare_outcomes.try_insert(id) else {
        return;
    };
    let _registered = Registered(&node.reshare_outcomes, id);
    let me = node.cfg.node_id.clone();
    let mut conflict_audited = false;
    let mut started_audited = false;
    for attempt in 1u32.. {
        let delay = BACKOFF
            .get(usize::try_from(attempt - 1).unwrap_or(usize::MAX))
            .or(BACKOFF.last())
            .copied()
            .unwrap_or(Duration::from_secs(30));
        tokio::time::sleep(delay).await;
        let r = match node.store.uncertain_reshare(&me, id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::info!(session = %id, "reshare no longer uncertain; outcome resolver ends");
                return;
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot read the uncertain reshare");
                continue;
            }
        };
        if !started_audited {
            started_audited = audit(
                &node,
                &r.key_id,
                "key.reshare.outcome_query",
                serde_json::json!({ "session": id.to_string() }),
            )
            .await;
        }
        let Some(unsealed) = node.unsealed() else {
            continue;
        };
        let book = match super::reshare::pinned_vote_book(&node).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot read the vote keys");
                continue;
            }
        };
        drop(unsealed);
        let others: Vec<String> =
            run_participants(&r.new_participants, &r.old_participants, &r.dealers)
                .into_iter()
                .filter(|p| *p != me)
                .collect();
        let nonce: [u8; 16] = rand::random();
        while rx.try_recv().is_ok() {}
        let frame = Frame::new(id, QUERY, nonce.to_vec());
        futures::future::join_all(others.iter().map(|p| {
            let f = frame.clone();
            let node = &node;
            async move {
                match tokio::time::timeout(ANSWER_TIMEOUT, node.net.p2p.send(p, f)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(session = %id, peer = %p, error = %e, "outcome query not sent")
                    }
                    Err(_) => tracing::debug!(session = %id, peer = %p, "outcome query send timed out"),
                }
            }
        }))
        .await;
        let mut answers: BTreeMap<String, LocalOutcome> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        while answers.len() < others.len() {
            let Ok(Some((from, payload))) = tokio::time::timeout_at(deadline, rx.recv()).await
            else {
                break;
            };
            if !others.contains(&from) {
                tracing::warn!(session = %id, peer = %from, "outcome answer from a non-participant; ignored");
                continue;
            }
            match verify_answer(&payload, id, &nonce, &from, &me, &book) {
                Ok(o) => {
                    answers.insert(from, o);
                }
                Err(e) => {
                    tracing::warn!(session = %id, peer = %from, error = %e, "outcome answer refused")
                }
            }
        }
        let summary: BTreeMap<&str, &str> = answers
            .iter()
            .map(|(n, o)| (n.as_str(), outcome_name(o)))
            .collect();
        let decision = decide(&r.confirmation, &others, &answers);
        tracing::info!(session = %id, key = %r.key_id, attempt, answers = ?summary, ?decision, "reshare outcome round");
        let details = serde_json::json!({
            "attempt": attempt,
            "answers": summary,
        });
        match decision {
            Decision::Commit(rule) => {
                let mut d = details;
                d["rule"] = rule.into();
                match node
                    .store
                    .switch_reshare(&me, id, &r.key_id, &r.public_key, Some(&d))
                    .await
                {
                    Ok(s) => {
                        node.signing_material.invalidate(&r.key_id);
                        if !r.new_participants.contains(&me) {
                            node.dkg.unload(&r.key_id);
                        }
                        tracing::info!(session = %id, key = %r.key_id, rule, old_shares_deleted = s.shares_deleted,
                            presignatures_deleted = s.presignatures_deleted, "uncertain reshare resolved: switched to the new sharing");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(session = %id, error = %e, "switching the uncertain reshare failed")
                    }
                }
            }
            Decision::Drop(failed) => {
                let mut d = details;
                d["failed_on"] = failed.clone().into();
                match node.store.resolve_reshare_failed(&me, id, &d).await {
                    Ok(n) => {
                        tracing::warn!(session = %id, key = %r.key_id, ?failed, pending_shares_deleted = n,
                            "uncertain reshare resolved: failed; the pending share is dropped, the old share stays");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(session = %id, error = %e, "dropping the pending share failed")
                    }
                }
            }
            Decision::Conflict(reason) => {
                tracing::error!(session = %id, key = %r.key_id, %reason, "contradicting reshare outcome answers; the reshare stays uncertain");
                if !conflict_audited {
                    let mut d = details;
                    d["session"] = id.to_string().into();
                    d["conflict"] = reason.into();
                    conflict_audited =
                        audit(&node, &r.key_id, "key.reshare.outcome_conflict", d).await;
                }
            }
            Decision::Wait => {}
        }
    }
}

async fn audit(node: &DkgCtx, key_id: &str, action: &str, details: serde_json::Value) -> bool {
    let me = &node.cfg.node_id;
    match node
        .store
        .audit(
            me,
            AuditEntry::new(me.clone(), action)
                .subject(key_id.to_owned())
                .details(details),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(action, error = %e, "cannot audit");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key generation");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key decoding")
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn book(pins: &[(&str, &Ed25519KeyPair)]) -> vote::VoteKeyBook {
        vote::VoteKeyBook::from_pinned(pins.iter().map(|(n, k)| {
            let mut p = [0u8; 32];
            p.copy_from_slice(k.public_key().as_ref());
            ((*n).to_owned(), p)
        }))
    }

    #[test]
    fn answers_round_trip_and_are_bound_to_signer_query_asker_and_outcome() {
        let k2 = key();
        let k3 = key();
        let b = book(&[("node-2", &k2), ("node-3", &k3)]);
        let id = Uuid::from_u128(5);
        let nonce = [7u8; 16];
        for o in [
            LocalOutcome::Committed([1; 32]),
            LocalOutcome::Confirmed([2; 32]),
            LocalOutcome::Failed,
            LocalOutcome::Unknown,
        ] {
            let a = encode_answer(id, &nonce, "node-2", "node-1", &o, &k2);
            assert_eq!(a.len(), ANSWER_LEN);
            assert_eq!(verify_answer(&a, id, &nonce, "node-2", "node-1", &b), Ok(o));
            // Another sender (mTLS identity) than the signer: refused.
            assert_eq!(
                verify_answer(&a, id, &nonce, "node-3", "node-1", &b),
                Err(AnswerError::BadSignature)
            );
            // Another query, another reshare, another asker: refused.
            assert_eq!(
                verify_answer(&a, id, &[8; 16], "node-2", "node-1", &b),
                Err(AnswerError::Nonce)
            );
            assert_eq!(
                verify_answer(&a, Uuid::from_u128(6), &nonce, "node-2", "node-1", &b),
                Err(AnswerError::BadSignature)
            );
            assert_eq!(
                verify_answer(&a, id, &nonce, "node-2", "node-4", &b),
                Err(AnswerError::BadSignature)
            );
            // Unpinned signer.
            assert!(matches!(
                verify_answer(&a, id, &nonce, "node-9", "node-1", &b),
                Err(AnswerError::UnknownSigner(_))
            ));
        }
        // An answer signed by node-3's key but sent by node-2 (forgery in another
        // name) is refused.
        let forged = encode_answer(id, &nonce, "node-2", "node-1", &LocalOutcome::Failed, &k3);
        assert_eq!(
            verify_answer(&forged, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::BadSignature)
        );
        // The outcome byte or value changed after signing: refused.
        let mut a = encode_answer(
            id,
            &nonce,
            "node-2",
            "node-1",
            &LocalOutcome::Confirmed([2; 32]),
            &k2,
        );
        a[16] = 1;
        assert_eq!(
            verify_answer(&a, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::BadSignature)
        );
        a[16] = 2;
        a[20] ^= 1;
        assert_eq!(
            verify_answer(&a, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::BadSignature)
        );
        // Bounded, canonical decoding.
        assert_eq!(
            verify_answer(&a[..ANSWER_LEN - 1], id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::Length(ANSWER_LEN - 1))
        );
        let mut long = a.clone();
        long.push(0);
        assert_eq!(
            verify_answer(&long, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::Length(ANSWER_LEN + 1))
        );
        let mut bad = a.clone();
        bad[16] = 9;
        assert_eq!(
            verify_answer(&bad, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::Malformed)
        );
        let mut bad = encode_answer(id, &nonce, "node-2", "node-1", &LocalOutcome::Failed, &k2);
        bad[30] = 1;
        assert_eq!(
            verify_answer(&bad, id, &nonce, "node-2", "node-1", &b),
            Err(AnswerError::Malformed)
        );
    }

    #[test]
    fn the_answer_statement_is_not_a_vote_or_reshare_statement() {
        let m = answer_message(Uuid::nil(), &[0; 16], "a", "b", &LocalOutcome::Failed);
        assert!(m.starts_with(ANSWER_DOMAIN));
        assert!(!m.starts_with(vote::VOTE_DOMAIN));
        assert!(!m.starts_with(b"signer-protocol/reshare/v1\0"));
    }

    #[test]
    fn decide_follows_the_outcome_rules() {
        use LocalOutcome::*;
        let own = [1u8; 32];
        let other = [2u8; 32];
        let others = ids(&["node-2", "node-3", "node-4"]);
        let ans = |v: &[(&str, LocalOutcome)]| -> BTreeMap<String, LocalOutcome> {
            v.iter().map(|(n, o)| ((*n).to_owned(), *o)).collect()
        };
        // Any committed with the own value: switch.
        assert_eq!(
            decide(&own, &others, &ans(&[("node-3", Committed(own))])),
            Decision::Commit("a participant committed")
        );
        // All confirmed with the own value: switch; one missing or unknown: wait.
        let all = ans(&[
            ("node-2", Confirmed(own)),
            ("node-3", Confirmed(own)),
            ("node-4", Confirmed(own)),
        ]);
        assert_eq!(
            decide(&own, &others, &all),
            Decision::Commit("every participant confirmed the same value")
        );
        let mut some = all.clone();
        some.remove("node-4");
        assert_eq!(decide(&own, &others, &some), Decision::Wait);
        some.insert("node-4".to_owned(), Unknown);
        assert_eq!(decide(&own, &others, &some), Decision::Wait);
        // Answers of non-participants do not count.
        let mut outsider = some.clone();
        outsider.insert("node-4".to_owned(), Unknown);
        outsider.insert("node-9".to_owned(), Committed(own));
        assert_eq!(decide(&own, &others, &outsider), Decision::Wait);
        // A failed answer (and no committed): drop.
        assert_eq!(
            decide(
                &own,
                &others,
                &ans(&[("node-2", Confirmed(own)), ("node-4", Failed)])
            ),
            Decision::Drop(ids(&["node-4"]))
        );
        // Contradictions change nothing.
        assert!(matches!(
            decide(
                &own,
                &others,
                &ans(&[("node-2", Committed(own)), ("node-4", Failed)])
            ),
            Decision::Conflict(_)
        ));
        assert!(matches!(
            decide(&own, &others, &ans(&[("node-2", Committed(other))])),
            Decision::Conflict(_)
        ));
        assert!(matches!(
            decide(
                &own,
                &others,
                &ans(&[
                    ("node-2", Confirmed(own)),
                    ("node-3", Confirmed(other)),
                    ("node-4", Confirmed(own))
                ])
            ),
            Decision::Conflict(_)
        ));
        // No answer at all: wait.
        assert_eq!(decide(&own, &others, &BTreeMap::new()), Decision::Wait);
    }

    #[test]
    fn run_participants_are_new_holders_then_leaving_dealers() {
        assert_eq!(
            run_participants(
                &ids(&["node-1", "node-3"]),
                &ids(&["node-1", "node-2", "node-3"]),
                &ids(&["node-2", "node-3"])
            ),
            ids(&["node-1", "node-3", "node-2"])
        );
    }
}
