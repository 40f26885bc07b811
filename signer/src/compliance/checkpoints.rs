//! Checkpoint rounds: proposing (heads, then co-signatures, then the complete
//! checkpoint to every node), answering a proposer, storing complete checkpoints;
//! the timer that proposes them and records policy versions.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::wire::{self, CheckpointNotice, CosignReply, CosignRequest, HeadReply, HeadRequest};
use super::{lock, AuditCtx, RoundReply, REFUSED};
use crate::audit::bundle::PolicyVersion;
use crate::audit::checkpoint::{
    reason, Checkpoint, CoSignature, SignedHead, VoteKeys, SIGNATURE_LEN,
};
use crate::audit::GENESIS_HASH;
use crate::p2p::MessageKind;

/// How long a proposer waits for heads, then for co-signatures.
pub const ROUND_STEP: Duration = Duration::from_secs(5);
/// A proposal whose `created_at` is further than this from the receiver's clock is
/// refused.
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Largest policy file read.
const MAX_POLICY_FILE: u64 = 1024 * 1024;

fn sig64(v: &[u8]) -> [u8; SIGNATURE_LEN] {
    let mut s = [0u8; SIGNATURE_LEN];
    if v.len() == SIGNATURE_LEN {
        s.copy_from_slice(v);
    }
    s
}

fn refused(peer: &str, what: &str, why: &str) {
    if let Some(n) = REFUSED.hit() {
        tracing::warn!(%peer, refused = n, %why, "audit {what} refused");
    }
}

/// This node's signed head for checkpoint `cp`.
async fn own_head(ctx: &AuditCtx, cp: &Checkpoint) -> Result<SignedHead, String> {
    let unsealed = ctx.unsealed().ok_or("custody is sealed")?;
    let (seq, hash) = ctx.store.audit_head().await.map_err(|e| e.to_string())?;
    let me = &ctx.cfg.node_id;
    let signature = sig64(&unsealed.vote_key.sign(&cp.head_message(me, seq, &hash)));
    Ok(SignedHead {
        node_id: me.clone(),
        seq,
        hash,
        signature,
    })
}

/// Whether this node's chain holds `head` (its own head in a checkpoint).
async fn holds(ctx: &AuditCtx, head: &SignedHead) -> Result<bool, String> {
    if head.seq == 0 {
        return Ok(head.hash == GENESIS_HASH);
    }
    let at = ctx
        .store
        .audit_hash_at(head.seq)
        .await
        .map_err(|e| e.to_string())?;
    Ok(at == Some(head.hash))
}

/// Proposes one checkpoint; `Ok(None)` when this node is already running a round.
pub async fn propose(ctx: &Arc<AuditCtx>, why: &str) -> Result<Option<Checkpoint>, String> {
    let Ok(_round) = ctx.proposing.try_lock() else {
        return Ok(None);
    };
    let me = ctx.cfg.node_id.clone();
    let quorum = ctx.cfg.checkpoint_quorum();
    let keys = ctx.vote_keys().await.map_err(|e| e.to_string())?;
    let mut cp = Checkpoint::open(Uuid::new_v4(), Utc::now(), &me, why, quorum);
    let (tx, mut rx) = mpsc::channel(256);
    lock(&ctx.rounds).insert(cp.id, tx);
    let result = run_round(ctx, &mut cp, &keys, &mut rx).await;
    lock(&ctx.rounds).remove(&cp.id);
    result?;
    cp.verify(&keys, quorum).map_err(|e| e.to_string())?;
    ctx.store
        .store_checkpoint(&me, &cp)
        .await
        .map_err(|e| e.to_string())?;
    ctx.note_checkpoint(Utc::now());
    let notice = wire::encode(&CheckpointNotice {
        checkpoint: cp.clone(),
    })
    .map_err(|e| e.to_string())?;
    let peers = ctx.net.p2p.connected_peers();
    futures::future::join_all(
        peers
            .iter()
            .map(|p| ctx.send(p, wire::AUDIT_CHECKPOINT, cp.id, notice.clone())),
    )
    .await;
    tracing::info!(checkpoint = %cp.id, reason = why, heads = cp.heads.len(), signers = ?cp.signers(), "audit checkpoint stored");
    Ok(Some(cp))
}

async fn run_round(
    ctx: &Arc<AuditCtx>,
    cp: &mut Checkpoint,
    keys: &VoteKeys,
    rx: &mut mpsc::Receiver<(String, RoundReply)>,
) -> Result<(), String> {
    let quorum = usize::from(cp.quorum);
    cp.put_head(own_head(ctx, cp).await?);
    // 1. Every connected peer's signed head.
    let peers = ctx.net.p2p.connected_peers();
    let req = wire::encode(&HeadRequest {
        id: cp.id,
        created_at: cp.created_at,
        proposer: cp.proposer.clone(),
        reason: cp.reason.clone(),
        quorum: cp.quorum,
    })
    .map_err(|e| e.to_string())?;
    futures::future::join_all(
        peers
            .iter()
            .map(|p| ctx.send(p, wire::AUDIT_HEAD_REQUEST, cp.id, req.clone())),
    )
    .await;
    let deadline = tokio::time::Instant::now() + ROUND_STEP;
    let mut waiting: std::collections::BTreeSet<String> = peers.iter().cloned().collect();
    while !waiting.is_empty() {
        let Ok(Some((from, reply))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let RoundReply::Head(h) = reply else { continue };
        if !waiting.contains(&from) {
            continue;
        }
        // A node signs only its own head, under its pinned key.
        if h.head.node_id != from {
            refused(&from, "head", "a head of another node");
            continue;
        }
        let Some(key) = keys.get(&from) else {
            refused(&from, "head", "no pinned vote key");
            continue;
        };
        let msg = cp.head_message(&from, h.head.seq, &h.head.hash);
        if h.head.seq < 0 || !crate::audit::checkpoint::verify_ed25519(key, &msg, &h.head.signature)
        {
            refused(&from, "head", "bad head signature");
            continue;
        }
        waiting.remove(&from);
        cp.put_head(h.head);
    }
    if cp.heads.len() < quorum {
        return Err(format!(
            "{} of {quorum} heads (no answer from {})",
            cp.heads.len(),
            waiting.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    // 2. Every node with a head co-signs the set.
    let unsealed = ctx.unsealed().ok_or("custody is sealed")?;
    let msg = cp.cosign_message();
    cp.put_signature(CoSignature {
        node_id: ctx.cfg.node_id.clone(),
        signature: sig64(&unsealed.vote_key.sign(&msg)),
    });
    let req = wire::encode(&CosignRequest {
        checkpoint: cp.clone(),
    })
    .map_err(|e| e.to_string())?;
    let mut waiting: std::collections::BTreeSet<String> = cp
        .heads
        .iter()
        .map(|h| h.node_id.clone())
        .filter(|n| *n != ctx.cfg.node_id)
        .collect();
    futures::future::join_all(
        waiting
            .iter()
            .map(|p| ctx.send(p, wire::AUDIT_COSIGN_REQUEST, cp.id, req.clone())),
    )
    .await;
    let deadline = tokio::time::Instant::now() + ROUND_STEP;
    while !waiting.is_empty() {
        let Ok(Some((from, reply))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let RoundReply::Cosign(c) = reply else {
            continue;
        };
        if !waiting.contains(&from) || c.signature.node_id != from {
            refused(&from, "co-signature", "not asked, or for another node");
            continue;
        }
        let Some(key) = keys.get(&from) else { continue };
        if !crate::audit::checkpoint::verify_ed25519(key, &msg, &c.signature.signature) {
            refused(&from, "co-signature", "bad co-signature");
            continue;
        }
        waiting.remove(&from);
        cp.put_signature(c.signature);
    }
    if cp.signatures.len() < quorum {
        return Err(format!(
            "{} of {quorum} co-signatures (none from {})",
            cp.signatures.len(),
            waiting.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// A reply to a round this node proposes: handed to the round, if it still runs.
pub(crate) fn on_round_reply(ctx: &AuditCtx, from: &str, kind: MessageKind, payload: &[u8]) {
    let reply = if kind == wire::AUDIT_HEAD {
        wire::decode::<HeadReply>(payload, wire::MAX_CHECKPOINT_FRAME)
            .map(|h| (h.id, RoundReply::Head(h)))
    } else {
        wire::decode::<CosignReply>(payload, wire::MAX_CHECKPOINT_FRAME)
            .map(|c| (c.id, RoundReply::Cosign(c)))
    };
    let (id, reply) = match reply {
        Ok(r) => r,
        Err(e) => return refused(from, "reply", &e.to_string()),
    };
    let tx = lock(&ctx.rounds).get(&id).cloned();
    if let Some(tx) = tx {
        let _ = tx.try_send((from.to_owned(), reply));
    }
}

/// Whether a proposal's header is acceptable from `from`.
fn check_proposal(
    ctx: &AuditCtx,
    from: &str,
    proposer: &str,
    created_at: chrono::DateTime<Utc>,
    quorum: u16,
) -> Result<(), String> {
    if proposer != from {
        return Err(format!("proposer {proposer} is not the sender"));
    }
    if (Utc::now() - created_at).abs() > MAX_CLOCK_SKEW {
        return Err("created_at too far from this node's clock".to_owned());
    }
    if quorum < ctx.cfg.checkpoint_quorum() {
        return Err(format!(
            "quorum {quorum} below this node's {}",
            ctx.cfg.checkpoint_quorum()
        ));
    }
    Ok(())
}

/// A proposer asks for this node's signed head.
pub(crate) async fn on_head_request(ctx: &AuditCtx, from: &str, session: Uuid, payload: &[u8]) {
    let req = match wire::decode::<HeadRequest>(payload, wire::MAX_CHECKPOINT_FRAME) {
        Ok(r) => r,
        Err(e) => return refused(from, "head request", &e.to_string()),
    };
    if req.id != session {
        return refused(from, "head request", "id differs from the frame's session");
    }
    if let Err(why) = check_proposal(ctx, from, &req.proposer, req.created_at, req.quorum) {
        return refused(from, "head request", &why);
    }
    let cp = Checkpoint::open(
        req.id,
        req.created_at,
        &req.proposer,
        &req.reason,
        req.quorum,
    );
    if cp.created_at != req.created_at {
        return refused(
            from,
            "head request",
            "created_at is finer than a microsecond",
        );
    }
    let head = match own_head(ctx, &cp).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(proposer = %from, error = %e, "cannot sign this node's audit head");
            return;
        }
    };
    match wire::encode(&HeadReply { id: req.id, head }) {
        Ok(b) => ctx.send(from, wire::AUDIT_HEAD, req.id, b).await,
        Err(e) => tracing::error!(error = %e, "cannot encode the audit head"),
    }
}

/// A proposer asks this node to co-sign a checkpoint: every head must verify under
/// its node's pinned key, and this node's own head must be in its chain.
pub(crate) async fn on_cosign_request(ctx: &AuditCtx, from: &str, session: Uuid, payload: &[u8]) {
    let req = match wire::decode::<CosignRequest>(payload, wire::MAX_CHECKPOINT_FRAME) {
        Ok(r) => r,
        Err(e) => return refused(from, "co-sign request", &e.to_string()),
    };
    let cp = req.checkpoint;
    if cp.id != session {
        return refused(
            from,
            "co-sign request",
            "id differs from the frame's session",
        );
    }
    if let Err(why) = check_proposal(ctx, from, &cp.proposer, cp.created_at, cp.quorum) {
        return refused(from, "co-sign request", &why);
    }
    let keys = match ctx.vote_keys().await {
        Ok(k) => k,
        Err(e) => return tracing::warn!(error = %e, "cannot read the pinned vote keys"),
    };
    if let Err(e) = cp.verify_heads(&keys) {
        return refused(from, "co-sign request", &e.to_string());
    }
    let Some(mine) = cp.head_of(&ctx.cfg.node_id) else {
        return refused(from, "co-sign request", "this node has no head in it");
    };
    match holds(ctx, mine).await {
        Ok(true) => {}
        Ok(false) => {
            return refused(
                from,
                "co-sign request",
                "this node's head in it is not in its chain",
            )
        }
        Err(e) => return tracing::warn!(error = %e, "cannot read the audit chain"),
    }
    let Some(unsealed) = ctx.unsealed() else {
        return;
    };
    let signature = CoSignature {
        node_id: ctx.cfg.node_id.clone(),
        signature: sig64(&unsealed.vote_key.sign(&cp.cosign_message())),
    };
    match wire::encode(&CosignReply {
        id: cp.id,
        signature,
    }) {
        Ok(b) => ctx.send(from, wire::AUDIT_COSIGNATURE, cp.id, b).await,
        Err(e) => tracing::error!(error = %e, "cannot encode the co-signature"),
    }
}

/// A complete checkpoint: verified under the pinned keys (at least this node's
/// quorum of co-signatures) and stored once in this node's audit log.
pub(crate) async fn on_checkpoint(ctx: &AuditCtx, from: &str, payload: &[u8]) {
    let notice = match wire::decode::<CheckpointNotice>(payload, wire::MAX_CHECKPOINT_FRAME) {
        Ok(n) => n,
        Err(e) => return refused(from, "checkpoint", &e.to_string()),
    };
    let cp = notice.checkpoint;
    let keys = match ctx.vote_keys().await {
        Ok(k) => k,
        Err(e) => return tracing::warn!(error = %e, "cannot read the pinned vote keys"),
    };
    if let Err(e) = cp.verify(&keys, ctx.cfg.checkpoint_quorum()) {
        return refused(from, "checkpoint", &e.to_string());
    }
    match ctx.store.store_checkpoint(&ctx.cfg.node_id, &cp).await {
        Ok(true) => {
            ctx.note_checkpoint(Utc::now());
            tracing::debug!(checkpoint = %cp.id, proposer = %cp.proposer, "audit checkpoint stored");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(checkpoint = %cp.id, error = %e, "cannot store the audit checkpoint")
        }
    }
}

/// Records the node's policy file as a `policy.version` audit record when it
/// differs from the last one recorded.
pub async fn record_policy_version(ctx: &AuditCtx) -> Result<bool, String> {
    let Some(path) = ctx.cfg.policy.file.clone() else {
        return Ok(false);
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if meta.len() > MAX_POLICY_FILE {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let version = PolicyVersion::of_text(&text);
    ctx.store
        .record_policy_version(&ctx.cfg.node_id, &path.display().to_string(), &version)
        .await
        .map_err(|e| e.to_string())
}

/// Whether this node should propose the periodic checkpoint now: the etcd leader
/// does (or, without a known connected leader, the lowest connected node id); once
/// a checkpoint is overdue by another interval, any node does, staggered by its
/// place in the cluster so they do not all start at once.
fn designated(ctx: &AuditCtx, overdue: Duration, interval: Duration) -> bool {
    let me = &ctx.cfg.node_id;
    let connected = ctx.net.p2p.connected_peers();
    let snap = ctx.cluster_snapshot();
    let leader = snap
        .leader
        .filter(|l| l == me || connected.contains(l))
        .or_else(|| connected.iter().chain([me]).min().cloned());
    if leader.as_ref() == Some(me) {
        return true;
    }
    let ids = ctx.node_ids();
    let place = ids.iter().position(|i| i == me).unwrap_or(0);
    let stagger = Duration::from_secs(2 * u64::try_from(place).unwrap_or(0));
    overdue >= interval + stagger
}

/// Proposes checkpoints (periodically and after signed transactions) and records
/// policy versions, until `shutdown`.
pub async fn run(ctx: Arc<AuditCtx>, shutdown: CancellationToken) {
    let interval = Duration::from_secs(ctx.cfg.audit.checkpoint_interval_secs.max(1));
    let poll = interval.min(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    match ctx.store.last_checkpoint_at().await {
        Ok(Some(at)) => ctx.note_checkpoint(at),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the last audit checkpoint"),
    }
    // `tx.signed` records already in the log do not trigger a checkpoint.
    let mut signed_seen = ctx.store.audit_head().await.map(|(s, _)| s).unwrap_or(0);
    let mut policy_checked: Option<tokio::time::Instant> = None;
    let mut after_signing: Option<tokio::time::Instant> = None;
    let mut retry_at = started;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let now = tokio::time::Instant::now();
        if policy_checked.is_none_or(|t| now.duration_since(t) >= interval) {
            policy_checked = Some(now);
            match record_policy_version(&ctx).await {
                Ok(true) => tracing::info!("policy version recorded in the audit log"),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "policy version not recorded"),
            }
        }
        if ctx.unsealed().is_none() {
            continue;
        }
        if ctx.cfg.audit.checkpoint_after_signing {
            match ctx
                .store
                .signed_transactions_since(signed_seen, &ctx.cfg.node_id)
                .await
            {
                Ok(rows) => {
                    if let Some((last, _)) = rows.last() {
                        signed_seen = *last;
                    }
                    // The other signers record the result a moment later.
                    if rows.iter().any(|(_, led)| *led) && after_signing.is_none() {
                        after_signing = Some(now + Duration::from_secs(1));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read signed transactions"),
            }
        }
        let why = if after_signing.is_some_and(|t| now >= t) {
            after_signing = None;
            Some(reason::TRANSACTION_SIGNED)
        } else if now >= retry_at {
            let overdue = ctx.last_checkpoint().map_or(
                // Never checkpointed here: as if the last one was at start.
                now.duration_since(started),
                |at| (Utc::now() - at).to_std().unwrap_or_default(),
            );
            (overdue >= interval && designated(&ctx, overdue, interval)).then_some(reason::INTERVAL)
        } else {
            None
        };
        let Some(why) = why else { continue };
        match propose(&ctx, why).await {
            Ok(_) => retry_at = now,
            Err(e) => {
                // Peers down or sealed: try again later, not at every poll.
                retry_at = now + interval.min(Duration::from_secs(30));
                tracing::warn!(reason = why, error = %e, "audit checkpoint not completed");
            }
        }
    }
}
