//! Node registry: each live node keeps `<prefix>/nodes/<id>` under a lease.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use etcd_client::{GetOptions, KeyValue, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::CoordError;
use super::lease::{self, heartbeat_period};
use super::watch::{RawEvent, RawWatch, WatchEventKind};
use super::{check_size, key_str, keys, Coord, MAX_LIST_ENTRIES};

/// What a live node announces about itself (stored as JSON).
///
/// Unknown fields are ignored when reading, so nodes of a newer version (with
/// more fields) stay visible to older ones during a rolling upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id (equal to the last segment of its registry key).
    pub node_id: String,
    /// Base URL of the node's REST API.
    pub api_url: String,
    /// The node's QUIC listen address (`host:port`).
    pub quic_addr: String,
    /// Software version.
    pub version: String,
    /// When this node process started.
    pub started_at: DateTime<Utc>,
}

/// A change in the set of live nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node registered (or updated its record).
    Up(NodeRecord),
    /// The node's record disappeared: it stopped, or its lease expired.
    Down {
        /// The node that went away.
        node_id: String,
    },
}

/// Decodes one registry entry, checking size, JSON and that the record's node id
/// matches its key.
fn decode_node(kv: &KeyValue, dir: &str) -> Result<NodeRecord, CoordError> {
    let key = key_str(kv.key())?;
    check_size(key, kv.value().len())?;
    let malformed = |reason: String| CoordError::Malformed {
        key: key.to_owned(),
        reason,
    };
    let id = key
        .strip_prefix(dir)
        .ok_or_else(|| malformed("outside the node registry".to_owned()))?;
    let record: NodeRecord =
        serde_json::from_slice(kv.value()).map_err(|e| malformed(e.to_string()))?;
    if record.node_id != id {
        return Err(malformed(format!("record names node {:?}", record.node_id)));
    }
    Ok(record)
}

impl Coord {
    /// Registers this node: puts `<prefix>/nodes/<id>` under a lease of
    /// `lease_ttl_secs` and keeps it alive in the background (every TTL/3). If the
    /// lease is lost (etcd unreachable for a TTL, or revoked), the task grants a
    /// new one and puts the record again. [`Registration::stop`] or dropping the
    /// handle revokes the lease, so the node disappears at once.
    pub async fn register(&self, info: NodeRecord) -> Result<Registration, CoordError> {
        if info.node_id != self.node_id() {
            return Err(CoordError::NodeIdMismatch {
                record: info.node_id,
                ours: self.node_id().to_owned(),
            });
        }
        let key = self.keys().node(self.node_id());
        let value = serde_json::to_vec(&info).map_err(|e| CoordError::InvalidArgument {
            reason: format!("node record does not serialize: {e}"),
        })?;
        check_size(&key, value.len())?;
        let ttl = self.config().lease_ttl_secs;
        let (id, granted) = grant_and_put(self, &key, &value, ttl, |_| {}).await?;
        info!(node_id = %self.node_id(), lease_id = id, "node registered in etcd");
        let (lease_tx, lease_rx) = watch::channel(id);
        let task = tokio::spawn(keep_registered(
            self.clone(),
            key.clone(),
            value,
            id,
            granted,
            lease_tx,
        ));
        Ok(Registration {
            coord: self.clone(),
            lease: lease_rx,
            task,
            stopped: false,
        })
    }

    /// The records of all live nodes (those whose lease is alive), sorted by id.
    /// Entries that are oversized or malformed are skipped with a warning, so
    /// one bad entry cannot hide the others.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, CoordError> {
        Ok(self.list_nodes_at().await?.0)
    }

    async fn list_nodes_at(&self) -> Result<(Vec<NodeRecord>, i64), CoordError> {
        let dir = self.keys().nodes_dir();
        let mut c = self.client();
        let limit = i64::try_from(MAX_LIST_ENTRIES + 1).unwrap_or(i64::MAX);
        let resp = self
            .rpc(
                "list nodes",
                c.get(
                    dir.clone(),
                    Some(GetOptions::new().with_prefix().with_limit(limit)),
                ),
            )
            .await?;
        if resp.kvs().len() > MAX_LIST_ENTRIES {
            return Err(CoordError::TooManyEntries {
                prefix: dir,
                limit: MAX_LIST_ENTRIES,
            });
        }
        let mut nodes = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            match decode_node(kv, &dir) {
                Ok(record) => nodes.push(record),
                Err(e) => warn!(error = %e, "ignoring bad node registry entry"),
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok((nodes, rev))
    }

    /// Watches the registry: first an [`NodeEvent::Up`] for every node live now,
    /// then every change in order.
    pub async fn watch_nodes(&self) -> Result<NodeWatch, CoordError> {
        let (nodes, rev) = self.list_nodes_at().await?;
        let dir = self.keys().nodes_dir();
        let raw = self.watch_raw(dir.clone(), rev + 1);
        Ok(NodeWatch {
            pending: nodes.into_iter().map(NodeEvent::Up).collect(),
            raw,
            dir,
        })
    }
}

/// Grants a lease, reports its id through `on_grant` (before the record can be
/// seen with it), then puts the record under it.
async fn grant_and_put(
    coord: &Coord,
    key: &str,
    value: &[u8],
    ttl: i64,
    on_grant: impl FnOnce(i64),
) -> Result<(i64, i64), CoordError> {
    let (id, granted) = lease::grant(coord, ttl).await?;
    on_grant(id);
    let mut c = coord.client();
    let put = coord
        .rpc(
            "register node",
            c.put(key, value, Some(PutOptions::new().with_lease(id))),
        )
        .await;
    if let Err(e) = put {
        let _ = lease::revoke(coord, id, "node registration").await;
        return Err(e);
    }
    Ok((id, granted))
}

async fn keep_registered(
    coord: Coord,
    key: String,
    value: Vec<u8>,
    mut id: i64,
    mut granted: i64,
    lease_tx: watch::Sender<i64>,
) {
    let ttl = coord.config().lease_ttl_secs;
    loop {
        lease::keep_alive_until_lost(&coord, id, granted, "node registration").await;
        warn!(node_id = %coord.node_id(), lease_id = id, "registration lease lost; registering again");
        loop {
            let report = |new_id| {
                lease_tx.send_replace(new_id);
            };
            match grant_and_put(&coord, &key, &value, ttl, report).await {
                Ok((new_id, new_ttl)) => {
                    id = new_id;
                    granted = new_ttl;
                    info!(node_id = %coord.node_id(), lease_id = id, "node registered again");
                    break;
                }
                Err(e) => {
                    warn!(node_id = %coord.node_id(), error = %e, "re-registration failed; retrying");
                    tokio::time::sleep(heartbeat_period(ttl)).await;
                }
            }
        }
    }
}

/// A live registration; see [`Coord::register`].
#[derive(Debug)]
#[must_use = "the node leaves the registry when this is dropped"]
pub struct Registration {
    coord: Coord,
    lease: watch::Receiver<i64>,
    task: JoinHandle<()>,
    stopped: bool,
}

impl Registration {
    /// The etcd lease currently carrying the record (changes after a re-grant).
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Stops heartbeats and revokes the lease: the node leaves the registry now.
    pub async fn stop(mut self) -> Result<(), CoordError> {
        self.stopped = true;
        self.task.abort();
        let id = self.lease_id();
        lease::revoke(&self.coord, id, "node registration").await?;
        info!(node_id = %self.coord.node_id(), "node deregistered from etcd");
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.task.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let coord = self.coord.clone();
            let id = self.lease_id();
            rt.spawn(async move {
                if let Err(e) = lease::revoke(&coord, id, "node registration").await {
                    warn!(error = %e, "revoking registration lease failed; it expires by itself");
                }
            });
        }
    }
}

/// Changes in the node registry; see [`Coord::watch_nodes`]. Reconnects by
/// itself. A malformed or oversized record yields an `Err` item and the watch
/// goes on; a cancelled watch (compacted history) is the last item.
#[derive(Debug)]
pub struct NodeWatch {
    pending: VecDeque<NodeEvent>,
    raw: RawWatch,
    dir: String,
}

impl NodeWatch {
    /// The next registry change, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<NodeEvent, CoordError>> {
        if let Some(ev) = self.pending.pop_front() {
            return Some(Ok(ev));
        }
        let item = self.raw.recv().await?;
        Some(self.convert(item))
    }

    fn convert(&self, item: Result<RawEvent, CoordError>) -> Result<NodeEvent, CoordError> {
        let raw = item?;
        let id = raw
            .key
            .strip_prefix(&self.dir)
            .ok_or_else(|| CoordError::Malformed {
                key: raw.key.clone(),
                reason: "outside the node registry".to_owned(),
            })?;
        match raw.kind {
            WatchEventKind::Delete => {
                keys::validate_name("node id", id)?;
                Ok(NodeEvent::Down {
                    node_id: id.to_owned(),
                })
            }
            WatchEventKind::Put => {
                let record: NodeRecord =
                    serde_json::from_slice(&raw.value).map_err(|e| CoordError::Malformed {
                        key: raw.key.clone(),
                        reason: e.to_string(),
                    })?;
                if record.node_id != id {
                    return Err(CoordError::Malformed {
                        key: raw.key.clone(),
                        reason: format!("record names node {:?}", record.node_id),
                    });
                }
                Ok(NodeEvent::Up(record))
            }
        }
    }
}

impl futures::Stream for NodeWatch {
    type Item = Result<NodeEvent, CoordError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(ev) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(ev)));
        }
        match this.raw.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(this.convert(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_record_from_a_newer_version_still_decodes() {
        let json = r#"{"node_id":"node-1","api_url":"https://n1:8443","quic_addr":"10.0.0.1:9443",
            "version":"9.9.9","started_at":"2025-01-01T00:00:00Z","future_field":[1,2]}"#;
        let r: NodeRecord = serde_json::from_str(json).expect("extra fields are ignored");
        assert_eq!(r.node_id, "node-1");
        assert!(serde_json::from_str::<NodeRecord>(r#"{"node_id":"x"}"#).is_err());
    }
}
