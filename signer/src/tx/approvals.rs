//! Human approvals, for policies that require them (`[[scope.approvals]]`).
//!
//! Approvers are identities with their own Ed25519 keys ([`vote::Approver`]). One
//! is registered by a quorum of nodes: each node's own admin endorses the same
//! (name, role, key) with `POST /api/v1/approvers`; the node signs that endorsement
//! with its vote key and sends it to every peer ([`wire::ApproverEndorsement`]);
//! every node counts an approver as active once it holds valid endorsements from
//! `threshold` distinct nodes, each checked against that node's pinned vote key
//! (again at every use, so a row written into the database by hand counts for
//! nothing).
//!
//! An approval is the approver's signature over (transaction id, txid), sent to any
//! node with `POST /api/v1/transactions/{id}/approvals` by a token of role
//! `approver` (not admin). That node verifies it, records it and relays it
//! ([`wire::TX_APPROVAL`]); every receiver verifies the signature itself under its
//! own registry and records a relay it cannot verify as `forged_approval` against
//! the relaying node. Each node then re-evaluates its policy: a node whose policy
//! needed approvals has not voted yet, and votes once its policy decides
//! ([`super::voting::reconsider`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use uuid::Uuid;
use vote::Approver;

use super::blame;
use super::voting::{broadcast_detached, reconsider};
use super::wire::{self, ApprovalNotice, ApproverEndorsement, TX_APPROVAL};
use super::TxCtx;
use super::TxError;
use crate::audit::AuditEntry;
use crate::p2p::{Frame, MessageKind};
use crate::store::approvals::{ApprovalRow, Endorsement};
use crate::store::audit::AuditOf;

/// A relayed approval whose signature does not verify under the registry.
pub const VIOLATION_FORGED_APPROVAL: &str = "forged_approval";
/// An approver endorsement whose signature does not verify under the sender's key.
pub const VIOLATION_BAD_ENDORSEMENT: &str = "bad_endorsement";

/// An approver and the nodes whose valid endorsements this node holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RegisteredApprover {
    /// Name.
    pub approver: String,
    /// Role.
    pub role: String,
    /// Public key (hex).
    pub public_key: String,
    /// Nodes that endorsed it (valid signatures only).
    pub endorsed_by: Vec<String>,
    /// Whether at least `threshold` distinct nodes endorsed it.
    pub active: bool,
}

/// Every approver identity this node knows, with its valid endorsements.
pub async fn registry(node: &TxCtx) -> Result<Vec<RegisteredApprover>, TxError> {
    let keys: BTreeMap<String, [u8; 32]> = node.store.vote_keys().await?.into_iter().collect();
    let mut by: BTreeMap<Approver, BTreeSet<String>> = BTreeMap::new();
    for e in node.store.endorsements().await? {
        let Some(a) = Approver::new(&e.approver, &e.role, e.public_key) else {
            continue;
        };
        let valid = keys
            .get(&e.node_id)
            .is_some_and(|k| vote::verify_endorsement(&a, &e.node_id, k, &e.signature));
        if valid {
            by.entry(a).or_default().insert(e.node_id);
        } else {
            tracing::warn!(approver = %e.approver, node = %e.node_id, "stored endorsement does not verify; ignored");
        }
    }
    let t = usize::from(node.cfg.threshold);
    Ok(by
        .into_iter()
        .map(|(a, nodes)| RegisteredApprover {
            approver: a.name,
            role: a.role,
            public_key: hex::encode(a.public_key),
            active: nodes.len() >= t,
            endorsed_by: nodes.into_iter().collect(),
        })
        .collect())
}

/// The active registration of `name` in `registry` whose key signed `signature`
/// over (`id`, `txid`), if any: its role and key.
fn verified_approver(
    registry: &[RegisteredApprover],
    name: &str,
    id: Uuid,
    txid: bitcoin::Txid,
    signature: &[u8; 64],
) -> Option<(String, [u8; 32])> {
    registry
        .iter()
        .filter(|r| r.approver == name && r.active)
        .filter_map(|r| Some((r, decode_32(&r.public_key)?)))
        .find(|(_, pk)| vote::verify_approval(pk, id, txid, signature))
        .map(|(r, pk)| (r.role.clone(), pk))
}

fn decode_32(h: &str) -> Option<[u8; 32]> {
    hex::decode(h).ok()?.try_into().ok()
}

fn decode_64(h: &str) -> Option<[u8; 64]> {
    hex::decode(h).ok()?.try_into().ok()
}

/// Endorses approver `a` on behalf of this node (admin token `admin`): signs with
/// this node's vote key, records it and sends it to every peer. Returns the
/// approver's registration as this node sees it now.
pub async fn endorse(
    node: &Arc<TxCtx>,
    a: &Approver,
    admin: &str,
) -> Result<RegisteredApprover, TxError> {
    let unsealed = node.unsealed().ok_or(TxError::Sealed)?;
    let me = node.cfg.node_id.clone();
    let signature =
        vote::VoteSigner::sign_vote_message(&unsealed.vote_key, &vote::endorsement_message(a, &me));
    let e = Endorsement {
        approver: a.name.clone(),
        role: a.role.clone(),
        public_key: a.public_key,
        node_id: me.clone(),
        admin: admin.to_owned(),
        signature,
    };
    let audit = AuditOf::new(
        &me,
        AuditEntry::new(admin, "approver.endorse")
            .subject(&a.name)
            .details(serde_json::json!({
                "role": a.role,
                "public_key": hex::encode(a.public_key),
                "node": me,
            })),
    );
    node.store.insert_endorsement(&e, audit).await?;
    let notice = ApproverEndorsement {
        approver: a.name.clone(),
        role: a.role.clone(),
        public_key: hex::encode(a.public_key),
        admin: admin.to_owned(),
        signature: hex::encode(signature),
    };
    if let Ok(b) = wire::encode(&notice) {
        let peers = node.net.p2p.connected_peers();
        broadcast_detached(
            node,
            &peers,
            vec![Frame::new(Uuid::new_v4(), MessageKind::APPROVER_ENDORSE, b)],
        );
    }
    registry(node)
        .await?
        .into_iter()
        .find(|r| {
            r.approver == a.name && r.role == a.role && r.public_key == hex::encode(a.public_key)
        })
        .ok_or_else(|| TxError::Internal("endorsement not found after recording it".into()))
}

/// Handles an endorsement sent by node `from`: kept if it verifies under `from`'s
/// pinned vote key, else recorded against `from`.
pub async fn on_endorsement(node: &Arc<TxCtx>, from: &str, n: ApproverEndorsement) {
    let parsed = decode_32(&n.public_key)
        .and_then(|pk| Approver::new(&n.approver, &n.role, pk))
        .zip(decode_64(&n.signature))
        .filter(|_| !n.admin.is_empty() && n.admin.len() <= 128);
    let Some((a, signature)) = parsed else {
        tracing::warn!(peer = %from, "malformed approver endorsement; dropped");
        return;
    };
    let key = match node.store.vote_keys().await {
        Ok(k) => k.into_iter().find(|(id, _)| id == from).map(|(_, k)| k),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the vote keys");
            return;
        }
    };
    let Some(key) = key else {
        tracing::warn!(peer = %from, "endorsement from a node without a pinned vote key; dropped");
        return;
    };
    if !vote::verify_endorsement(&a, from, &key, &signature) {
        blame::record(
            node,
            from,
            VIOLATION_BAD_ENDORSEMENT,
            &a.name,
            serde_json::json!({ "approver": a.name, "role": a.role, "public_key": n.public_key }),
            &node.cfg.node_id.clone(),
        )
        .await;
        return;
    }
    let e = Endorsement {
        approver: a.name.clone(),
        role: a.role.clone(),
        public_key: a.public_key,
        node_id: from.to_owned(),
        admin: n.admin.clone(),
        signature,
    };
    let audit = AuditOf::new(
        &node.cfg.node_id,
        AuditEntry::new("node", "approver.endorsement_received")
            .subject(&a.name)
            .details(serde_json::json!({
                "role": a.role,
                "public_key": n.public_key,
                "node": from,
                "admin": n.admin,
            })),
    );
    match node.store.insert_endorsement(&e, audit).await {
        Ok(true | false) => {}
        Err(e) => tracing::error!(error = %e, "cannot record an approver endorsement"),
    }
}

/// Records the approval of `id` by approver `name` (its `signature`, hex),
/// submitted through token `submitter` at this node; relays it to the other
/// participants and lets this node vote if its policy is now satisfied. Returns
/// every approval this node has for the transaction.
pub async fn approve(
    node: &Arc<TxCtx>,
    id: Uuid,
    name: &str,
    signature: &str,
    submitter: &str,
) -> Result<Vec<ApprovalRow>, TxError> {
    let row = node.store.get_transaction(id).await?;
    if row.initiator == submitter {
        return Err(TxError::Forbidden {
            code: "self_approval",
            message: "the initiator of a transaction cannot approve it".into(),
        });
    }
    let sig = decode_64(signature).ok_or_else(|| TxError::Invalid {
        code: "bad_approval_signature",
        message: "signature must be 64 bytes of hex".into(),
    })?;
    if node
        .store
        .approvals(id)
        .await?
        .iter()
        .any(|a| a.approver == name)
    {
        return Err(already_approved(name, id));
    }
    let Some(p) = node.tx.get(id).filter(|_| row.state == "voting") else {
        return Err(TxError::Conflict {
            code: "not_awaiting_approval",
            message: format!(
                "transaction {id} is {} on this node, not in its voting round",
                row.state
            ),
        });
    };
    if p.initiator_identity == name {
        return Err(TxError::Forbidden {
            code: "self_approval",
            message: format!("{name} initiated transaction {id} and cannot approve it"),
        });
    }
    let known = registry(node).await?;
    if !known.iter().any(|r| r.approver == name && r.active) {
        return Err(TxError::Forbidden {
            code: "unknown_approver",
            message: format!("{name} is not an approver endorsed by a quorum of nodes"),
        });
    }
    let (role, pk) =
        verified_approver(&known, name, id, p.validated.txid, &sig).ok_or_else(|| {
            TxError::Invalid {
                code: "bad_approval_signature",
                message: format!(
                    "the signature is not {name}'s approval of transaction {id} (txid {})",
                    p.validated.txid
                ),
            }
        })?;
    let me = node.cfg.node_id.clone();
    let audit = AuditOf::new(
        &me,
        AuditEntry::new(submitter, "tx.approve")
            .subject(id.to_string())
            .details(serde_json::json!({ "approver": name, "role": role, "via_node": me })),
    );
    if !node
        .store
        .insert_approval(id, name, &role, &me, &pk, &sig, audit)
        .await?
    {
        return Err(already_approved(name, id));
    }
    tracing::info!(tx = %id, approver = %name, role, "human approval recorded");
    let notice = ApprovalNotice {
        id,
        approver: name.to_owned(),
        role,
        signature: Some(signature.to_owned()),
    };
    relay(node, &p.participants, &notice);
    reconsider(node, id).await;
    Ok(node.store.approvals(id).await?)
}

fn relay(node: &Arc<TxCtx>, participants: &[String], notice: &ApprovalNotice) {
    let genuine = notice.signature.as_deref().unwrap_or_default();
    let mut frames = Vec::new();
    for forged in crate::fault::forged_approvals(&notice.approver, genuine) {
        tracing::error!(tx = %notice.id, "FAULT INJECTION: relaying a forged approval");
        let forged = ApprovalNotice {
            id: notice.id,
            approver: forged.0,
            role: notice.role.clone(),
            signature: Some(forged.1),
        };
        if let Ok(b) = wire::encode(&forged) {
            frames.push(Frame::new(notice.id, TX_APPROVAL, b));
        }
    }
    match wire::encode(notice) {
        Ok(b) => frames.push(Frame::new(notice.id, TX_APPROVAL, b)),
        Err(e) => tracing::error!(tx = %notice.id, error = %e, "cannot encode the approval"),
    }
    // In order (forgeries first), without holding the approver's request.
    broadcast_detached(node, participants, frames);
}

fn already_approved(approver: &str, id: Uuid) -> TxError {
    TxError::Conflict {
        code: "already_approved",
        message: format!("{approver} already approved transaction {id}"),
    }
}

/// Handles an approval relayed by participant `from`: recorded only if its
/// signature verifies under this node's own registry; otherwise recorded against
/// `from` as `forged_approval`.
pub async fn on_notice(node: &Arc<TxCtx>, from: &str, a: ApprovalNotice) {
    // A relay can arrive after this node finished the transaction: it is still
    // checked (and a forgery recorded) against the ended round's txid.
    let (participants, txid, live) = match node.tx.get(a.id) {
        Some(p) => (p.participants.clone(), p.validated.txid, true),
        None => match node.tx.ended_round(a.id) {
            Some(r) => (r.participants, r.subject.txid, false),
            None => {
                tracing::warn!(peer = %from, tx = %a.id, "approval for a transaction not known here; dropped");
                return;
            }
        },
    };
    if !participants.iter().any(|n| n == from) {
        tracing::warn!(peer = %from, tx = %a.id, "approval from a non-participant; dropped");
        return;
    }
    let sig = a.signature.as_deref().and_then(decode_64);
    let verified = match sig {
        Some(sig) if vote::valid_approver_name(&a.approver) => match registry(node).await {
            Ok(known) => verified_approver(&known, &a.approver, a.id, txid, &sig)
                .map(|(role, pk)| (role, pk, sig)),
            Err(e) => {
                tracing::error!(tx = %a.id, error = %e, "cannot read the approver registry");
                return;
            }
        },
        _ => None,
    };
    let Some((role, pk, sig)) = verified else {
        blame::record(
            node,
            from,
            VIOLATION_FORGED_APPROVAL,
            &a.id.to_string(),
            serde_json::json!({
                "transaction": a.id,
                "approver": a.approver.chars().take(64).collect::<String>(),
                "signature": a.signature.as_deref().map(|s| s.chars().take(128).collect::<String>()),
            }),
            &node.cfg.node_id.clone(),
        )
        .await;
        return;
    };
    let audit = AuditOf::new(
        &node.cfg.node_id,
        AuditEntry::new("node", "tx.approval_received")
            .subject(a.id.to_string())
            .details(serde_json::json!({
                "approver": a.approver,
                "role": role,
                "via_node": from,
            })),
    );
    match node
        .store
        .insert_approval(a.id, &a.approver, &role, from, &pk, &sig, audit)
        .await
    {
        Ok(true) => {
            if live {
                reconsider(node, a.id).await;
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!(tx = %a.id, error = %e, "cannot record a relayed approval"),
    }
}
