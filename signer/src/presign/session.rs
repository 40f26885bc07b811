//! One generation session on one member of the signer set: validate the announce,
//! barrier, then per item: presign, seal, confirm the public id with every other
//! member, store. A presignature is stored only once every member confirmed the same
//! public id; whatever fails, nothing half-done becomes available.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use hsm::Aad;
use signer_protocol::ecdsa::{self, EcdsaKeyShare};
use signer_protocol::{channel_party, DeliveryConfig, ExecutionId, ProtocolKind};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::wire::{PresignSpec, MAX_BATCH};
use super::PresignCtx;
use super::{PresignError, SetKey};
use crate::dkg::material::{self, Material};
use crate::p2p::{Frame, MessageKind};
use crate::session::{SessionQueues, CONFIRM};
use crate::store::presignatures::NewPresignature;

/// Bound of the wait at the barrier.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of one presigning run (protocol and confirmations).
pub const ITEM_TIMEOUT: Duration = Duration::from_secs(120);
/// Items of a session in flight at once on a member (two: one in the protocol,
/// one being sealed, confirmed and stored).
pub const PIPELINE_DEPTH: usize = 2;

/// The execution id of one item, derived the same way by every member.
pub fn execution_id(spec: &PresignSpec, item: &Uuid) -> ExecutionId {
    let mut ctx = spec.key_id.as_bytes().to_vec();
    for c in &spec.path {
        ctx.extend_from_slice(&c.to_be_bytes());
    }
    let t = u16::try_from(spec.signers.len()).unwrap_or(u16::MAX);
    ExecutionId::derive(
        item.as_bytes(),
        ProtocolKind::EcdsaPresign,
        t,
        &spec.signers,
        &ctx,
    )
}

/// Checks an announce against this node's view: the leader is the lowest id of the
/// set, this node is a member, the key is a usable ECDSA key whose participants
/// include the set, the set has t members in keygen order, the path is a wallet path,
/// the batch is bounded with distinct item ids. Returns the run indexes (keygen
/// indexes) of the set, this node's position and the ceremony of its share.
async fn validate(
    node: &PresignCtx,
    spec: &PresignSpec,
) -> Result<(Vec<u16>, u16, Uuid), PresignError> {
    let bad = |m: &str| PresignError::Invalid(m.to_owned());
    if spec.items.is_empty() || spec.items.len() > MAX_BATCH {
        return Err(bad("batch size out of range"));
    }
    let mut ids = spec.items.clone();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != spec.items.len() || spec.items.contains(&spec.id) {
        return Err(bad("item ids are not unique"));
    }
    if !super::valid_wallet_path(&spec.path) {
        return Err(bad("derivation path is not a wallet path [chain, index]"));
    }
    if spec.signers.iter().min() != Some(&spec.leader) {
        return Err(bad(
            "the leader is not the lowest node id of the signer set",
        ));
    }
    let me = &node.cfg.node_id;
    let position = spec
        .signers
        .iter()
        .position(|s| s == me)
        .ok_or_else(|| bad("this node is not in the signer set"))?;
    let share = node
        .store
        .usable_shares(me)
        .await?
        .into_iter()
        .find(|r| r.key_id == spec.key_id && r.protocol == "cggmp24")
        .ok_or_else(|| bad("unknown or non-ECDSA key"))?;
    if spec.signers.len() != usize::try_from(share.threshold).unwrap_or(0) {
        return Err(bad("signer set size differs from the threshold"));
    }
    let mut indices = Vec::with_capacity(spec.signers.len());
    for s in &spec.signers {
        let i = share
            .participants
            .iter()
            .position(|p| p == s)
            .and_then(|i| u16::try_from(i).ok())
            .ok_or_else(|| bad("signer holds no share of the key"))?;
        indices.push(i);
    }
    if indices.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("signer set is not in keygen order"));
    }
    Ok((
        indices,
        u16::try_from(position).unwrap_or(u16::MAX),
        share.ceremony_id,
    ))
}

/// Runs a session and logs its outcome.
pub async fn participate_logged(node: Arc<PresignCtx>, spec: PresignSpec) {
    match participate(&node, &spec).await {
        Ok(n) => {
            tracing::info!(session = %spec.id, key = %spec.key_id, signers = ?spec.signers, stored = n, "presign session done")
        }
        Err(e) => {
            tracing::warn!(session = %spec.id, key = %spec.key_id, signers = ?spec.signers, error = %e, "presign session failed")
        }
    }
}

/// This node's side of a session; returns how many presignatures it stored.
pub async fn participate(
    node: &Arc<PresignCtx>,
    spec: &PresignSpec,
) -> Result<usize, PresignError> {
    if !node.cfg.presign.enabled {
        return Err(PresignError::Invalid(
            "presignatures are disabled on this node".into(),
        ));
    }
    let (indices, position, ceremony) = validate(node, spec).await?;
    // Not before this member's restore check ran (at start, or after a rollback seen
    // while running): presignatures it stored before its discard would be discarded
    // here only, and the other members would name them in vain.
    if !node.presign.wait_restore_checked(BARRIER_TIMEOUT / 2).await {
        return Err(PresignError::Invalid(
            "the presignature restore check has not run on this node".into(),
        ));
    }
    let share = match material::load(node, &spec.key_id)
        .await
        .map_err(|e| PresignError::Material(e.to_string()))?
    {
        Material::Ecdsa(s) => s,
        Material::Frost(_) => return Err(PresignError::Invalid("not an ECDSA key".into())),
    };
    // Register every item first: frames of later items that arrive early are kept.
    let mut queues: Vec<(Uuid, SessionQueues)> = Vec::with_capacity(spec.items.len());
    for id in &spec.items {
        match node
            .sessions
            .register(*id, &spec.signers, MessageKind::PRESIGN)
        {
            Some(q) => queues.push((*id, q)),
            None => {
                // Another run owns that id: undo only what this run registered.
                for (mine, _) in &queues {
                    node.sessions.unregister(*mine);
                }
                return Err(PresignError::Invalid(format!(
                    "session id {id} is already live on this node"
                )));
            }
        }
    }
    let set: SetKey = (spec.key_id.clone(), spec.signers.clone());
    let n = isize::try_from(queues.len()).unwrap_or(0);
    node.presign.add_generating(&set, n);
    let result = run_items(node, spec, &indices, position, (&share, ceremony), queues).await;
    for id in &spec.items {
        node.sessions.unregister(*id);
    }
    node.presign.add_generating(&set, -n);
    result
}

async fn run_items(
    node: &Arc<PresignCtx>,
    spec: &PresignSpec,
    indices: &[u16],
    position: u16,
    (share, ceremony): (&Arc<EcdsaKeyShare>, Uuid),
    queues: Vec<(Uuid, SessionQueues)>,
) -> Result<usize, PresignError> {
    let coord = node
        .coord()
        .ok_or_else(|| PresignError::Coord("etcd not connected".into()))?;
    coord
        .barrier(
            &format!("presign-{}", spec.id),
            &spec.signers,
            BARRIER_TIMEOUT,
        )
        .await
        .map_err(|e| PresignError::Coord(e.to_string()))?;
    let set: SetKey = (spec.key_id.clone(), spec.signers.clone());
    // Items are pipelined: the next item's protocol runs while the previous one is
    // sealed, confirmed and stored (every member runs the same items in the same
    // order, each on its own session id and queues).
    let runs = queues.into_iter().map(|(item, q)| async move {
        let run = run_item(node, spec, item, q, indices, position, (share, ceremony));
        match tokio::time::timeout(ITEM_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => {
                let me = &node.cfg.node_id;
                let absent = crate::session::absentees(
                    &node.sessions,
                    node.coord(),
                    item,
                    &spec.signers,
                    me,
                )
                .await;
                Err(PresignError::Protocol(crate::session::stalled_stage(
                    "presigning timed out",
                    &absent,
                )))
            }
        }
    });
    let mut results = futures::stream::iter(runs).buffered(PIPELINE_DEPTH);
    let mut stored = 0;
    while let Some(r) = results.next().await {
        r?;
        node.presign.generated(&set, 1);
        stored += 1;
    }
    Ok(stored)
}

async fn run_item(
    node: &Arc<PresignCtx>,
    spec: &PresignSpec,
    item: Uuid,
    queues: SessionQueues,
    indices: &[u16],
    position: u16,
    (share, ceremony): (&Arc<EcdsaKeyShare>, Uuid),
) -> Result<(), PresignError> {
    let me = node.cfg.node_id.clone();
    let unsealed = node.unsealed().ok_or(PresignError::Sealed)?;
    let t = u16::try_from(spec.signers.len()).unwrap_or(u16::MAX);
    let eid = execution_id(spec, &item);
    let (out_tx, out_rx) = mpsc::channel(1024);
    let pump = tokio::spawn(crate::session::pump_outgoing(
        node.net.clone(),
        item,
        spec.signers.clone(),
        MessageKind::PRESIGN,
        "ecdsa_presign",
        None,
        out_rx,
    ));
    let SessionQueues {
        protocol_rx,
        mut confirm_rx,
        ..
    } = queues;
    let (share, indices, path, eid2) = (share.clone(), indices.to_vec(), spec.path.clone(), eid);
    let produced = node
        .protocol_slots
        .run(ProtocolKind::EcdsaPresign, move || {
            let party = channel_party(DeliveryConfig::new(position, t), protocol_rx, out_tx);
            async move {
                let p =
                    ecdsa::presign(party, &eid2, position, &indices, &share, &path, None).await?;
                let public = p.public().to_bytes()?;
                Ok((p.public().id(), public, p.to_bytes()?))
            }
        })
        .await;
    let _ = pump.await;
    let (public_id, public_data, secret) =
        produced.map_err(|e| PresignError::Protocol(e.to_string()))?;

    // Seal, bound to this presignature's own id (a blob cannot move to another row).
    let aad = Aad::with_record_id(
        me.clone(),
        spec.key_id.clone(),
        hsm::RecordKind::Presignature,
        hex::encode(public_id),
    )
    .map_err(|e| PresignError::Custody(e.to_string()))?;
    let custody = unsealed.custody.clone();
    let envelope = tokio::task::spawn_blocking(move || custody.seal(&aad, &secret))
        .await
        .map_err(|e| PresignError::Custody(format!("seal task: {e}")))?
        .map_err(|e| PresignError::Custody(e.to_string()))?;

    // Every member must hold the same presignature before anyone stores it.
    let others: Vec<&String> = spec.signers.iter().filter(|s| **s != me).collect();
    let confirm = Frame::new(item, CONFIRM, public_id.to_vec());
    for peer in &others {
        if let Err(e) = node.net.p2p.send(peer, confirm.clone()).await {
            tracing::warn!(item = %item, %peer, error = %e, "presign confirmation not delivered");
        }
    }
    let mut confirmed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while confirmed.len() < others.len() {
        let (from, id) = confirm_rx
            .recv()
            .await
            .ok_or_else(|| PresignError::Confirm("confirmation channel closed".into()))?;
        if id != public_id {
            return Err(PresignError::Confirm(format!(
                "{from} holds another presignature"
            )));
        }
        confirmed.insert(from, id);
    }
    let stored = node
        .store
        .insert_presignature(&NewPresignature {
            id: Uuid::new_v4(),
            key_id: &spec.key_id,
            signer_set: &spec.signers,
            execution_id: eid.as_bytes(),
            envelope: &envelope,
            public_data: &public_data,
            public_id: &public_id,
            path: &spec.path,
            share_ceremony: ceremony,
            node_id: &me,
        })
        .await?;
    if !stored {
        tracing::warn!(item = %item, key = %spec.key_id,
            "presignature not stored: already known, or the key was reshared meanwhile");
    }
    Ok(())
}
