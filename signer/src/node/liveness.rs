//! etcd liveness: registration under a lease, the cluster view, and the
//! coordinator election. etcd only ever decides liveness here, never safety.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::AuditEntry;
use crate::coord::{Coord, CoordConfig, NodeRecord};
use crate::infra::{ClusterSnapshot, Infra, LiveNode};

/// Name of the election whose leader coordinates ceremonies.
pub const COORDINATOR_ELECTION: &str = "coordinator";

/// The coordination settings of a node config.
pub fn coord_config(node: &Infra) -> CoordConfig {
    // The members that answered the last probe, when there are any.
    let healthy = healthy_endpoints(&node.etcd_members());
    CoordConfig {
        endpoints: if healthy.is_empty() {
            node.cfg.etcd.endpoints.clone()
        } else {
            healthy
        },
        prefix: node.cfg.etcd.prefix.clone(),
        lease_ttl_secs: node.cfg.etcd.lease_ttl_secs,
        ..CoordConfig::default()
    }
}

/// Keeps the node registered, campaigning for coordinator, and the cluster view
/// fresh; reconnects to etcd when it is lost.
pub async fn maintain(
    node: Arc<Infra>,
    started_at: chrono::DateTime<chrono::Utc>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match Coord::connect(coord_config(&node), node.cfg.node_id.clone()).await {
            Ok(coord) => {
                backoff = Duration::from_millis(250);
                session(&node, coord, started_at, &shutdown).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd unreachable; retrying");
                mark_etcd_down(&node);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Probes every configured etcd member every second (each within 700 ms), for
/// `/ready` and the cluster status, and keeps the etcd client on the members that
/// answer; independent of the registration session, so members are reported also
/// while the cluster client has no quorum.
pub async fn watch_etcd_members(node: Arc<Infra>, shutdown: CancellationToken) {
    let mut probe = crate::coord::members::MemberProbe::default();
    loop {
        let members = probe
            .probe(&node.cfg.etcd.endpoints, Duration::from_millis(700))
            .await;
        for m in &members {
            if !m.ok {
                tracing::debug!(endpoint = %m.endpoint, error = ?m.error, "etcd member not answering");
            }
        }
        if let Some(coord) = node.coord() {
            coord.use_endpoints(&healthy_endpoints(&members)).await;
        }
        node.set_etcd_members(members);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Endpoints of the members that answered.
fn healthy_endpoints(members: &[crate::coord::members::MemberHealth]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.ok)
        .map(|m| m.endpoint.clone())
        .collect()
}

fn mark_etcd_down(node: &Infra) {
    node.set_coord(None);
    let mut snap = node.cluster_snapshot();
    snap.etcd_ok = false;
    snap.live.clear();
    snap.leader = None;
    snap.connected_peers = node.net.p2p.connected_peers();
    snap.peer_errors = node.net.p2p.peer_errors();
    snap.updated_at = Some(chrono::Utc::now());
    node.set_cluster_snapshot(snap);
}

async fn session(
    node: &Arc<Infra>,
    coord: Coord,
    started_at: chrono::DateTime<chrono::Utc>,
    shutdown: &CancellationToken,
) {
    let record = NodeRecord {
        node_id: node.cfg.node_id.clone(),
        api_url: format!("https://{}", node.cfg.api.listen),
        quic_addr: node.cfg.p2p.listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
    };
    let registration = match coord.register(record).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "registration in etcd failed");
            mark_etcd_down(node);
            return;
        }
    };
    tracing::info!(lease = registration.lease_id(), "registered in etcd");
    node.set_coord(Some(coord.clone()));
    // Campaign in the background: the call returns only once we lead.
    let campaign = {
        let coord = coord.clone();
        let id = node.cfg.node_id.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match coord.campaign(COORDINATOR_ELECTION, &id).await {
                Ok(leadership) => {
                    tracing::info!(token = leadership.fencing_token(), "elected coordinator");
                    tokio::select! {
                        _ = leadership.lost() => tracing::warn!("coordinator leadership lost"),
                        _ = shutdown.cancelled() => { let _ = leadership.resign().await; }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "coordinator campaign failed"),
            }
        })
    };
    let mut failures = 0u32;
    loop {
        match refresh(node, &coord).await {
            Ok(()) => {
                if failures >= 2 {
                    // Marked down by the failed reads, and etcd answers again within
                    // the same session (its lease survived, e.g. etcd restored from
                    // a snapshot that holds it): the client is usable again. Before,
                    // the status looked healthy while every etcd-backed request
                    // answered 503 "not connected" until the session ended.
                    tracing::info!(failures, "etcd answers again; the session continues");
                    node.set_coord(Some(coord.clone()));
                }
                failures = 0;
            }
            Err(e) => {
                // One failed read (e.g. a request that reached a member just before
                // it died and was taken out) does not end the view; two do.
                failures += 1;
                tracing::warn!(error = %e, failures, "etcd read failed");
                if failures >= 2 {
                    mark_etcd_down(node);
                }
                if failures >= 4 {
                    break;
                }
            }
        }
        if campaign.is_finished() && !shutdown.is_cancelled() {
            // Leadership lost or the campaign failed: start over with a new session.
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    node.set_coord(None);
    if shutdown.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(2), campaign).await;
    } else {
        campaign.abort();
    }
    if let Err(e) = registration.stop().await {
        tracing::debug!(error = %e, "revoking registration lease failed");
    }
}

async fn refresh(node: &Infra, coord: &Coord) -> Result<(), crate::coord::CoordError> {
    let nodes = coord.list_nodes().await?;
    let leader = coord.leader(COORDINATOR_ELECTION).await?;
    let snap = ClusterSnapshot {
        etcd_ok: true,
        live: nodes
            .into_iter()
            .map(|r| {
                (
                    r.node_id.clone(),
                    LiveNode {
                        api_url: r.api_url,
                        quic_addr: r.quic_addr,
                        version: r.version,
                        started_at: r.started_at.to_rfc3339(),
                    },
                )
            })
            .collect(),
        leader: leader.map(|(value, _)| value),
        connected_peers: node.net.p2p.connected_peers(),
        peer_errors: node.net.p2p.peer_errors(),
        updated_at: Some(chrono::Utc::now()),
    };
    let before = node.cluster_snapshot();
    record_health_changes(node, &before, &snap).await;
    node.set_cluster_snapshot(snap);
    Ok(())
}

/// Writes `node_health` and an audit entry when a node's liveness changes (not on
/// every refresh), so the trail shows when each peer went away and came back.
async fn record_health_changes(node: &Infra, before: &ClusterSnapshot, after: &ClusterSnapshot) {
    let first = before.updated_at.is_none() || !before.etcd_ok;
    let ids = node.node_ids();
    for id in ids.iter().map(String::as_str) {
        let was = before.live.contains_key(id);
        let is = after.live.contains_key(id);
        if !first && was == is {
            continue;
        }
        let status = if is { "healthy" } else { "down" };
        if let Err(e) = node.store.upsert_node_health(id, status).await {
            tracing::warn!(node = id, error = %e, "cannot record node health");
            continue;
        }
        if !first {
            tracing::info!(node = id, status, "node liveness changed");
            let entry =
                AuditEntry::new("node", if is { "peer.up" } else { "peer.down" }).subject(id);
            if let Err(e) = node.store.audit(&node.cfg.node_id, entry).await {
                tracing::warn!(error = %e, "cannot audit liveness change");
            }
        }
    }
}
