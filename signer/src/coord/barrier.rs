//! Barriers: every participant announces its arrival, then all wait until all
//! have arrived.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::CoordError;
use super::lease::HeldLease;
use super::watch::WatchEventKind;
use super::{key_str, keys, Coord, MAX_LIST_ENTRIES};

impl Coord {
    /// Waits at barrier `name` until every node in `participants` (which must
    /// include this node) has arrived, or until `timeout`.
    ///
    /// Arrival is the key `<prefix>/barriers/<name>/<node-id>` under a lease kept
    /// alive while waiting, so a participant that dies stops counting as
    /// arrived. The wait replays every change since this node's own arrival
    /// (watch, no polling), so it cannot miss the moment when all were present,
    /// even if others have already left. On timeout it returns
    /// [`CoordError::BarrierTimeout`] naming who did not arrive. Use a fresh name
    /// per use (e.g. include the session id).
    pub async fn barrier(
        &self,
        name: &str,
        participants: &[String],
        timeout: Duration,
    ) -> Result<(), CoordError> {
        keys::validate_name("barrier name", name)?;
        if participants.len() > MAX_LIST_ENTRIES {
            return Err(CoordError::InvalidArgument {
                reason: format!("barrier {name} has more than {MAX_LIST_ENTRIES} participants"),
            });
        }
        let mut expected = BTreeSet::new();
        for p in participants {
            keys::validate_name("participant node id", p)?;
            expected.insert(p.clone());
        }
        if !expected.contains(self.node_id()) {
            return Err(CoordError::NotAParticipant {
                barrier: name.to_owned(),
                node_id: self.node_id().to_owned(),
            });
        }
        let deadline = Instant::now() + timeout;
        let dir = self.keys().barrier_dir(name);
        let lease = HeldLease::grant(
            self,
            self.config().lease_ttl_secs,
            format!("barrier {name}"),
        )
        .await?;
        let result = self
            .wait_at_barrier(name, &dir, &expected, &lease, deadline)
            .await;
        if let Err(e) = lease.revoke().await {
            warn!(barrier = name, error = %e, "leaving barrier failed; the arrival expires with its lease");
        }
        result
    }

    async fn wait_at_barrier(
        &self,
        name: &str,
        dir: &str,
        expected: &BTreeSet<String>,
        lease: &HeldLease,
        deadline: Instant,
    ) -> Result<(), CoordError> {
        let me = format!("{dir}{}", self.node_id());
        let put = self
            .rpc_idempotent("arrive at barrier", || {
                let (mut c, me) = (self.client(), me.clone());
                let opts = PutOptions::new().with_lease(lease.id());
                let id = self.node_id().to_owned();
                async move { c.put(me, id, Some(opts)).await }
            })
            .await?;
        let arrived_at = put.header().map_or(0, |h| h.revision());
        // Who was there at our arrival, then every change after it.
        let limit = i64::try_from(MAX_LIST_ENTRIES + 1).unwrap_or(i64::MAX);
        let snapshot = self
            .rpc_idempotent("read barrier", || {
                let (mut c, dir) = (self.client(), dir.to_owned());
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_revision(arrived_at)
                    .with_limit(limit);
                async move { c.get(dir, Some(opts)).await }
            })
            .await?;
        if snapshot.kvs().len() > MAX_LIST_ENTRIES {
            return Err(CoordError::TooManyEntries {
                prefix: dir.to_owned(),
                limit: MAX_LIST_ENTRIES,
            });
        }
        let mut present = BTreeSet::new();
        for kv in snapshot.kvs() {
            if let Some(id) = key_str(kv.key())?.strip_prefix(dir) {
                if expected.contains(id) {
                    present.insert(id.to_owned());
                }
            }
        }
        let mut watch = self.watch_raw(dir.to_owned(), arrived_at + 1);
        loop {
            if present.len() == expected.len() {
                info!(barrier = name, parties = expected.len(), "barrier released");
                return Ok(());
            }
            debug!(
                barrier = name,
                present = present.len(),
                expected = expected.len(),
                "waiting at barrier"
            );
            tokio::select! {
                ev = watch.recv() => {
                    let Some(ev) = ev else {
                        return Err(CoordError::WatchCancelled {
                            prefix: dir.to_owned(),
                            reason: "watch ended".to_owned(),
                        });
                    };
                    let ev = ev?;
                    let Some(id) = ev.key.strip_prefix(dir) else { continue };
                    if !expected.contains(id) {
                        continue;
                    }
                    match ev.kind {
                        WatchEventKind::Put => present.insert(id.to_owned()),
                        WatchEventKind::Delete => present.remove(id),
                    };
                }
                () = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<String> = expected.difference(&present).cloned().collect();
                    warn!(barrier = name, ?missing, "barrier timed out");
                    return Err(CoordError::BarrierTimeout { missing });
                }
                () = lease.lost() => return Err(lease.lost_error()),
            }
        }
    }
}
