//! Proposal handling and voting on every participant of a key.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use uuid::Uuid;

use super::wire::Proposal;
use super::{Pending, TxError};
use crate::audit::AuditEntry;
use crate::node::NodeCtx;
use crate::p2p::{Frame, MessageKind};
use crate::store::transactions::NewTransaction;
use crate::store::StoreError;
use crate::vote::{
    evaluate_round, RoundOutcome, SignedVote, VoteBody, VoteDecision, VoteIntake, VoteKeyBook,
    VoteMessage, VoteSubject,
};

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pinned vote keys of `participants` only (a quorum counts only share holders).
pub async fn key_book(node: &NodeCtx, participants: &[String]) -> Result<VoteKeyBook, TxError> {
    let pins = node.store.vote_keys().await?;
    Ok(VoteKeyBook::from_pinned(
        pins.into_iter().filter(|(n, _)| participants.contains(n)),
    ))
}

/// This node's policy decision on `pending`, as a vote body and (when it approves)
/// the policy's approval proof.
async fn decide(
    node: &NodeCtx,
    loaded: &Result<Option<policy::Policy>, String>,
    id: Uuid,
    p: &Pending,
    initiator: &str,
    deadline_unix: u64,
) -> (VoteBody, Option<policy::Approval>) {
    let v = &p.validated;
    let mut body = VoteBody {
        transaction_id: id,
        round_no: 1,
        txid: v.txid,
        sighashes: v.sighashes(),
        policy_hash: p.subject.policy_hash,
        decision: VoteDecision::Reject,
        reasons: Vec::new(),
        voter: node.cfg.node_id.clone(),
        deadline_unix,
    };
    let pol = match loaded {
        Ok(Some(pol)) => pol,
        Ok(None) => {
            body.reasons.push("no_policy_configured".to_owned());
            return (body, None);
        }
        Err(e) => {
            tracing::error!(error = %e, "policy file does not load; voting reject");
            body.reasons.push("policy_unavailable".to_owned());
            return (body, None);
        }
    };
    let ctx = match context(node, pol, &v.key_id, v.view.network, initiator).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the policy context; voting reject");
            body.reasons.push("policy_context_unavailable".to_owned());
            return (body, None);
        }
    };
    let decision = pol.evaluate(&v.view, &ctx);
    body.reasons = decision
        .violations()
        .iter()
        .take(crate::vote::MAX_REASONS)
        .map(|x| x.code().as_str().to_owned())
        .collect();
    if let policy::Decision::NeedsApproval { .. } = decision {
        body.reasons.push("needs_approval".to_owned());
    }
    let approval = decision.into_approval();
    if approval.is_some() {
        body.decision = VoteDecision::Approve;
    }
    (body, approval)
}

/// Evaluates the policy again for a signing request (the approval proof is not kept
/// between the vote and the signing; it is recomputed from the same inputs).
pub async fn decide_again(
    node: &NodeCtx,
    id: Uuid,
    p: &Pending,
    initiator: &str,
) -> (VoteBody, Option<policy::Approval>) {
    let loaded = load_policy(node).await;
    decide(node, &loaded, id, p, initiator, now_unix() + 60).await
}

/// The configured policy, if any (read at each evaluation).
pub async fn load_policy(node: &NodeCtx) -> Result<Option<policy::Policy>, String> {
    let Some(path) = node.cfg.policy.file.clone() else {
        return Ok(None);
    };
    let len = tokio::fs::metadata(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > 1024 * 1024 {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    policy::Policy::from_toml_str(&text, &path.display().to_string())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Hash of a loaded policy (all zero without one).
fn policy_hash(loaded: &Result<Option<policy::Policy>, String>) -> [u8; 32] {
    match loaded {
        Ok(Some(p)) => *p.hash().as_bytes(),
        _ => [0; 32],
    }
}

async fn context(
    node: &NodeCtx,
    pol: &policy::Policy,
    key_id: &str,
    net: policy::Network,
    initiator: &str,
) -> Result<policy::Context, StoreError> {
    let mut window_spent = Vec::new();
    for w in pol.velocity_windows(key_id, net) {
        let spent = node.store.spent_in_window(key_id, w).await?;
        window_spent.push(policy::WindowSpent {
            window_seconds: w,
            spent_sats: spent,
        });
    }
    Ok(policy::Context {
        now_unix: now_unix(),
        window_spent,
        approvals: Vec::new(),
        initiator: initiator.to_owned(),
    })
}

/// Handles a proposal (from its leader, or this node's own): validates the PSBT
/// independently, records the transaction and its round, votes and broadcasts the
/// vote. Returns once this node's vote is stored and sent.
pub async fn on_proposal(node: &Arc<NodeCtx>, from: &str, prop: Proposal) -> Result<(), TxError> {
    let me = node.cfg.node_id.clone();
    let keys = super::usable_keys(node).await?;
    let key = keys
        .into_iter()
        .find(|k| k.wallet.key_id() == prop.key_id)
        .ok_or_else(|| TxError::UnknownKey(prop.key_id.clone()))?;
    if !key.participants.iter().any(|p| p == from) || !key.participants.contains(&me) {
        return Err(TxError::Invalid {
            code: "not_a_participant",
            message: format!(
                "{from} proposed a transaction for key {} it does not hold",
                prop.key_id
            ),
        });
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(prop.psbt.as_bytes())
        .map_err(|e| TxError::Invalid {
            code: "psbt_malformed",
            message: format!("proposal psbt is not base64: {e}"),
        })?;
    let validated = crate::wallet::intake_psbt(
        &raw,
        std::slice::from_ref(&key.wallet),
        &super::limits(node),
    )?;
    if from != me {
        let new = NewTransaction {
            id: prop.id,
            key_id: Some(prop.key_id.clone()),
            recipient: None,
            amount_sats: None,
            fee_sats: i64::try_from(validated.fee_sats).ok(),
            psbt: Some(raw.clone()),
            initiator: prop.initiator.clone(),
        };
        match node.store.insert_transaction(&new).await {
            Ok(()) | Err(StoreError::Duplicate { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline =
        chrono::DateTime::from_timestamp(i64::try_from(prop.deadline_unix).unwrap_or(0), 0)
            .unwrap_or_else(chrono::Utc::now);
    node.store
        .set_transaction_leader(prop.id, from, deadline)
        .await?;
    node.store
        .transition_transaction(prop.id, "voting", None)
        .await?;
    let round_id = Uuid::new_v4();
    let n = key.participants.len();
    node.store
        .create_round(
            round_id,
            prop.id,
            1,
            i32::from(key.threshold),
            i32::try_from(n).unwrap_or(i32::MAX),
            deadline,
        )
        .await?;
    // One read of the policy file serves the vote subject and the decision.
    let loaded = load_policy(node).await;
    let subject = VoteSubject {
        transaction_id: prop.id,
        round_no: 1,
        txid: validated.txid,
        sighashes: validated.sighashes(),
        policy_hash: policy_hash(&loaded),
    };
    let pending = Arc::new(Pending {
        validated,
        participants: key.participants.clone(),
        threshold: key.threshold,
        leader: from.to_owned(),
        round_id,
        subject,
    });
    node.tx.insert(prop.id, pending.clone());
    let (body, approval) = decide(
        node,
        &loaded,
        prop.id,
        &pending,
        &prop.initiator,
        prop.deadline_unix,
    )
    .await;
    let decision = body.decision;
    let reasons = body.reasons.clone();
    let unsealed = node.unsealed().ok_or(TxError::Sealed)?;
    let signed = SignedVote::sign(body, &unsealed.vote_key)
        .map_err(|e| TxError::Internal(format!("signing the vote: {e}")))?;
    node.store
        .audit(
            &me,
            AuditEntry::new("node", "tx.vote")
                .subject(prop.id.to_string())
                .details(serde_json::json!({
                    "decision": decision.as_str(),
                    "reasons": reasons,
                    "txid": pending.validated.txid.to_string(),
                    "policy_hash": hex::encode(pending.subject.policy_hash),
                    "leader": from,
                })),
        )
        .await?;
    drop(approval);
    accept_vote(node, prop.id, &me, &signed).await;
    let frame = Frame::new(
        prop.id,
        MessageKind::VOTE,
        VoteMessage::Vote(signed).encode(),
    );
    broadcast(node, &pending.participants, frame).await;
    // Votes that arrived before the proposal.
    for (sender, vote) in node.tx.take_early_votes(prop.id) {
        accept_vote(node, prop.id, &sender, &vote).await;
    }
    let expire_node = node.clone();
    let wait = prop.deadline_unix.saturating_sub(now_unix()) + 1;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        expire_if_open(&expire_node, prop.id).await;
    });
    Ok(())
}

/// Sends `frame` to every other participant (failures are logged).
pub async fn broadcast(node: &Arc<NodeCtx>, participants: &[String], frame: Frame) {
    let me = &node.cfg.node_id;
    let sends = futures::future::join_all(participants.iter().filter(|p| *p != me).map(|p| {
        let f = frame.clone();
        async move { (p.clone(), node.net.p2p.send(p, f).await) }
    }))
    .await;
    for (peer, r) in sends {
        if let Err(e) = r {
            tracing::warn!(%peer, error = %e, "sending to a participant failed");
        }
    }
}

/// Handles a vote frame payload from `from` (vote or key announcement).
pub async fn on_vote_frame(node: &Arc<NodeCtx>, from: &str, payload: &[u8]) {
    let msg = match VoteMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(peer = %from, error = %e, "malformed vote message; dropped");
            return;
        }
    };
    match msg {
        VoteMessage::KeyAnnouncement(a) => {
            let mut book =
                VoteKeyBook::from_pinned(node.store.vote_keys().await.unwrap_or_default());
            let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
            if let Err(e) = intake.accept_key_announcement(&mut book, &a, from).await {
                tracing::warn!(peer = %from, error = %e, "vote key announcement refused");
            }
        }
        VoteMessage::Vote(v) => {
            let id = v.body().transaction_id;
            if node.tx.get(id).is_none() {
                node.tx.keep_early_vote(id, from.to_owned(), v);
                return;
            }
            accept_vote(node, id, from, &v).await;
        }
    }
}

/// Stores a vote (checked against the round) and closes the round if settled.
async fn accept_vote(node: &Arc<NodeCtx>, id: Uuid, from: &str, vote: &SignedVote) {
    let Some(p) = node.tx.get(id) else {
        return;
    };
    let book = match key_book(node, &p.participants).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot read the vote keys");
            return;
        }
    };
    let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
    if let Err(e) = intake
        .accept(&book, p.round_id, vote, from, &p.subject)
        .await
    {
        tracing::warn!(tx = %id, peer = %from, error = %e, "vote refused");
        return;
    }
    check_round(node, id, &p).await;
}

async fn check_round(node: &Arc<NodeCtx>, id: Uuid, p: &Arc<Pending>) {
    let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
    let votes = match intake.round_votes(p.round_id).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot read the round's votes");
            return;
        }
    };
    let outcome = match evaluate_round(usize::from(p.threshold), p.participants.len(), &votes) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot tally");
            return;
        }
    };
    let to = match outcome {
        RoundOutcome::Open => return,
        RoundOutcome::Approved => "approved",
        RoundOutcome::Rejected => "rejected",
    };
    match node.store.close_round(p.round_id, to).await {
        Ok(true) => {}
        Ok(false) => return, // already closed
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot close the round");
            return;
        }
    }
    if let Err(e) = node.store.transition_transaction(id, to, None).await {
        tracing::error!(tx = %id, error = %e, to, "cannot record the vote outcome");
        return;
    }
    let _ = node
        .store
        .audit(
            &node.cfg.node_id,
            AuditEntry::new("node", format!("tx.{to}"))
                .subject(id.to_string())
                .details(serde_json::json!({ "votes": votes.len() })),
        )
        .await;
    tracing::info!(tx = %id, outcome = to, votes = votes.len(), "voting round closed");
    if to == "rejected" {
        if let Err(e) = node.store.release_utxos(id).await {
            tracing::error!(tx = %id, error = %e, "cannot release the reserved utxos");
        }
        node.tx.remove(id);
    } else if p.leader == node.cfg.node_id {
        tokio::spawn(super::signing::lead(node.clone(), id));
    }
}

async fn expire_if_open(node: &Arc<NodeCtx>, id: Uuid) {
    let Some(p) = node.tx.get(id) else {
        return;
    };
    if let Ok(true) = node.store.close_round(p.round_id, "expired").await {
        if node
            .store
            .transition_transaction(id, "expired", Some("voting deadline passed"))
            .await
            .is_ok()
        {
            tracing::info!(tx = %id, "voting round expired");
            if let Err(e) = node.store.release_utxos(id).await {
                tracing::error!(tx = %id, error = %e, "cannot release the reserved utxos");
            }
            node.tx.remove(id);
        }
    }
}
