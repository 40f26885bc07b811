//! Starting a ceremony on the node that received the operator's request.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::session::{known_nodes, participate};
use super::wire::{self, CEREMONY_ANNOUNCE};
use super::DkgCtx;
use super::{validate_params, CeremonySpec, DkgError, DkgProtocol};
use crate::audit::AuditEntry;
use crate::p2p::Frame;

/// Name of the etcd lock serializing ceremony starts.
pub const START_LOCK: &str = "dkg-start";
/// Bound of the delivery of an announcement to one participant.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest accepted participant list.
pub const MAX_PARTICIPANTS: usize = 64;

/// A started ceremony.
#[derive(Debug, Clone)]
pub struct Started {
    /// The announced parameters.
    pub spec: CeremonySpec,
    /// Participants the announcement could not be delivered to (the ceremony then
    /// fails at the barrier on the others).
    pub announce_failed: Vec<String>,
}

/// Outcome of an aux-info start request.
#[derive(Debug, Clone)]
pub enum AuxStart {
    /// A new ceremony was announced.
    Started(Started),
    /// This node already holds completed aux info for exactly this node set; it is
    /// reused (aux info does not depend on the key, only on the ordered node set).
    Reused {
        /// Ceremony that produced it.
        ceremony: Uuid,
        /// The node set.
        participants: Vec<String>,
    },
}

/// Starts an aux-info ceremony for `participants` (default: every node), unless this
/// node already holds completed aux info for that node set and `force` is false.
pub async fn start_aux(
    node: &Arc<DkgCtx>,
    actor: &str,
    participants: Option<Vec<String>>,
    force: bool,
) -> Result<AuxStart, DkgError> {
    let mut set = participants.unwrap_or_else(|| known_nodes(node));
    set.sort();
    if !force && set.contains(&node.cfg.node_id) {
        if let Some((ceremony, _)) = node.store.latest_aux(&node.cfg.node_id, &set).await? {
            return Ok(AuxStart::Reused {
                ceremony,
                participants: set,
            });
        }
    }
    let n = i64::try_from(set.len()).unwrap_or(i64::MAX);
    start(node, actor, DkgProtocol::AuxInfo, n, Some(set))
        .await
        .map(AuxStart::Started)
}

/// Validates the request, checks that all participants are live and connected,
/// takes the start lock, audits the start (`dkg.start` / `aux_info.start`, actor
/// `actor`; nothing is announced when that audit write fails) and announces the
/// ceremony.
pub async fn start(
    node: &Arc<DkgCtx>,
    actor: &str,
    protocol: DkgProtocol,
    threshold: i64,
    participants: Option<Vec<String>>,
) -> Result<Started, DkgError> {
    let me = node.cfg.node_id.clone();
    let known = known_nodes(node);
    let mut participants = match participants {
        Some(p) if p.len() > MAX_PARTICIPANTS => {
            return Err(DkgError::InvalidParticipants(format!(
                "at most {MAX_PARTICIPANTS} participants"
            )))
        }
        Some(p) => p,
        None => known.clone(),
    };
    if participants.is_empty() {
        return Err(DkgError::InvalidParticipants(
            "participants must not be empty".to_owned(),
        ));
    }
    let t = u16::try_from(threshold).map_err(|_| {
        DkgError::InvalidThreshold(format!("threshold {threshold} is out of range"))
    })?;
    validate_params(t, &participants, &known)?;
    // Run indexes follow the sorted node ids, whatever order the operator used.
    participants.sort();

    if participants.contains(&me) && node.unsealed().is_none() {
        return Err(DkgError::Sealed);
    }
    let snap = node.cluster_snapshot();
    if !snap.etcd_ok {
        return Err(DkgError::EtcdUnavailable("no current etcd view".to_owned()));
    }
    let missing: Vec<String> = participants
        .iter()
        .filter(|p| {
            let live = snap.live.contains_key(*p);
            let connected = **p == me || node.net.p2p.connected_peers().contains(*p);
            !(live && connected)
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(DkgError::ParticipantsUnavailable(missing));
    }
    let coord = node
        .coord()
        .ok_or_else(|| DkgError::EtcdUnavailable("not connected".to_owned()))?;
    let guard = coord
        .try_lock(START_LOCK, Duration::from_secs(10), Duration::from_secs(5))
        .await?;
    let spec = CeremonySpec {
        id: Uuid::new_v4(),
        protocol,
        threshold: t,
        participants,
        coordinator: me.clone(),
        fencing_token: guard.fencing_token(),
    };
    let payload = wire::encode_announce(&spec).map_err(|e| DkgError::Announce {
        peer: me.clone(),
        reason: e.to_string(),
    })?;
    let action = if protocol == DkgProtocol::AuxInfo {
        "aux_info.start"
    } else {
        "dkg.start"
    };
    node.store
        .audit(
            &me,
            AuditEntry::new(actor, action)
                .subject(spec.id.to_string())
                .details(serde_json::json!({
                    "protocol": spec.protocol.as_str(),
                    "threshold": spec.threshold,
                    "participants": spec.participants,
                    "fencing_token": spec.fencing_token,
                })),
        )
        .await?;
    // A fenced record of the session in etcd, for operators; participants take the
    // parameters from the mTLS-authenticated announcement, not from etcd.
    coord
        .put_fenced(&format!("dkg/{}", spec.id), payload.clone(), guard.fence())
        .await?;
    tracing::info!(ceremony = %spec.id, protocol = protocol.as_str(), t, n = spec.participants.len(),
        token = spec.fencing_token, "announcing key ceremony");
    // Join right away: the announcements' acknowledgements are not needed to start.
    if spec.participants.contains(&me) {
        tokio::spawn(participate(node.clone(), spec.clone()));
    }
    let frame = Frame::new(spec.id, CEREMONY_ANNOUNCE, payload);
    let results =
        futures::future::join_all(spec.participants.iter().filter(|p| **p != me).map(|p| {
            let f = frame.clone();
            async move {
                let r = match tokio::time::timeout(ANNOUNCE_TIMEOUT, node.net.p2p.send(p, f)).await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no acknowledgement within {ANNOUNCE_TIMEOUT:?}")),
                };
                (p.clone(), r)
            }
        }))
        .await;
    let mut announce_failed = Vec::new();
    for (peer, r) in results {
        if let Err(e) = r {
            tracing::warn!(ceremony = %spec.id, %peer, error = %e, "announce failed");
            announce_failed.push(peer);
        }
    }
    if let Err(e) = guard.release().await {
        tracing::debug!(error = %e, "releasing the start lock failed; it expires with its lease");
    }
    Ok(Started {
        spec,
        announce_failed,
    })
}
