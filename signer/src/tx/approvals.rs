//! Human approvals, for policies that require them (`[[scope.approvals]]`).
//!
//! An approver calls `POST /api/v1/transactions/{id}/approvals` on any node that
//! holds a share of the key; that node authenticates the approver's token, refuses
//! the transaction's initiator, records the approval and relays it to every other
//! participant over mTLS ([`super::wire::TX_APPROVAL`]). Each node records what it
//! receives and re-evaluates its policy: a node whose policy needed approvals has not
//! voted yet, and votes once its policy decides ([`super::voting::reconsider`]).

use std::sync::Arc;

use uuid::Uuid;

use super::voting::{broadcast, reconsider};
use super::wire::{self, ApprovalNotice, TX_APPROVAL};
use super::TxCtx;
use super::TxError;
use crate::audit::AuditEntry;
use crate::p2p::Frame;
use crate::store::approvals::ApprovalRow;

/// Longest approver identity accepted (from a peer or a token).
pub const MAX_APPROVER_LEN: usize = 128;
/// Longest role name accepted.
pub const MAX_ROLE_LEN: usize = 32;

/// Records the approval of `id` by `approver` (authenticated at this node), relays it
/// to the other participants and lets this node vote if its policy is now satisfied.
/// Returns every approval this node has for the transaction.
pub async fn approve(
    node: &Arc<TxCtx>,
    id: Uuid,
    approver: &str,
    role: &str,
) -> Result<Vec<ApprovalRow>, TxError> {
    let row = node.store.get_transaction(id).await?;
    if row.initiator == approver {
        return Err(TxError::Forbidden {
            code: "self_approval",
            message: "the initiator of a transaction cannot approve it".into(),
        });
    }
    if node
        .store
        .approvals(id)
        .await?
        .iter()
        .any(|a| a.approver == approver)
    {
        return Err(already_approved(approver, id));
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
    let me = node.cfg.node_id.clone();
    if !node.store.insert_approval(id, approver, role, &me).await? {
        return Err(already_approved(approver, id));
    }
    node.store
        .audit(
            approver,
            AuditEntry::new("user", "tx.approve")
                .subject(id.to_string())
                .details(serde_json::json!({ "role": role, "via_node": me })),
        )
        .await?;
    tracing::info!(tx = %id, %approver, role, "human approval recorded");
    let notice = ApprovalNotice {
        id,
        approver: approver.to_owned(),
        role: role.to_owned(),
    };
    match wire::encode(&notice) {
        Ok(b) => broadcast(node, &p.participants, Frame::new(id, TX_APPROVAL, b)).await,
        Err(e) => tracing::error!(tx = %id, error = %e, "cannot encode the approval"),
    }
    reconsider(node, id).await;
    Ok(node.store.approvals(id).await?)
}

fn already_approved(approver: &str, id: Uuid) -> TxError {
    TxError::Conflict {
        code: "already_approved",
        message: format!("{approver} already approved transaction {id}"),
    }
}

/// Handles an approval relayed by participant `from`.
pub async fn on_notice(node: &Arc<TxCtx>, from: &str, a: ApprovalNotice) {
    if a.approver.is_empty()
        || a.approver.len() > MAX_APPROVER_LEN
        || a.role.is_empty()
        || a.role.len() > MAX_ROLE_LEN
    {
        tracing::warn!(peer = %from, "approval with an invalid approver or role; dropped");
        return;
    }
    let Some(p) = node.tx.get(a.id) else {
        tracing::warn!(peer = %from, tx = %a.id, "approval for a transaction not in voting here; dropped");
        return;
    };
    if !p.participants.iter().any(|n| n == from) {
        tracing::warn!(peer = %from, tx = %a.id, "approval from a non-participant; dropped");
        return;
    }
    match node
        .store
        .insert_approval(a.id, &a.approver, &a.role, from)
        .await
    {
        Ok(true) => {
            let _ = node
                .store
                .audit(
                    &node.cfg.node_id,
                    AuditEntry::new("node", "tx.approval_received")
                        .subject(a.id.to_string())
                        .details(serde_json::json!({
                            "approver": a.approver,
                            "role": a.role,
                            "via_node": from,
                        })),
                )
                .await;
            reconsider(node, a.id).await;
        }
        Ok(false) => {}
        Err(e) => tracing::error!(tx = %a.id, error = %e, "cannot record a relayed approval"),
    }
}
