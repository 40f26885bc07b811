//! Leases kept alive by a background task.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use super::error::CoordError;
use super::Coord;

/// Heartbeat period for a lease of `ttl_secs`: a third of the TTL, at least 200 ms.
pub(crate) fn heartbeat_period(ttl_secs: i64) -> Duration {
    let ttl_ms = u64::try_from(ttl_secs.max(1)).unwrap_or(1) * 1000;
    Duration::from_millis((ttl_ms / 3).max(200))
}

/// Keeps lease `id` alive until etcd says it is gone, or until no refresh has
/// succeeded for a whole TTL (then the server has expired it or soon will).
/// Returns when the lease is lost; never returns while the lease is alive.
pub(crate) async fn keep_alive_until_lost(coord: &Coord, id: i64, ttl_secs: i64, what: &str) {
    let ttl = Duration::from_secs(u64::try_from(ttl_secs.max(1)).unwrap_or(1));
    let mut ticker = tokio::time::interval(heartbeat_period(ttl_secs));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the lease was just granted
    let mut last_ok = Instant::now();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        ticker.tick().await;
        match refresh(coord, id, &mut stream).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                warn!(lease_id = id, what, "etcd lease expired or was revoked");
                return;
            }
            Err(e) => {
                stream = None;
                if last_ok.elapsed() >= ttl {
                    warn!(lease_id = id, what, error = %e, "no lease refresh for a whole ttl; lease presumed lost");
                    return;
                }
                warn!(lease_id = id, what, error = %e, "lease keep-alive failed; retrying");
            }
        }
    }
}

/// One keep-alive round trip. `Ok(false)` means etcd no longer knows the lease.
async fn refresh(
    coord: &Coord,
    id: i64,
    slot: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<bool, CoordError> {
    let Some((keeper, stream)) = slot.as_mut() else {
        // Opening the stream sends one keep-alive and checks its answer.
        let mut c = coord.client();
        return match coord.rpc("lease keep-alive", c.lease_keep_alive(id)).await {
            Ok(pair) => {
                *slot = Some(pair);
                Ok(true)
            }
            Err(e) if e.is_lease_not_found() => Ok(false),
            Err(e) => Err(e),
        };
    };
    coord.rpc("lease keep-alive", keeper.keep_alive()).await?;
    match coord.rpc("lease keep-alive", stream.message()).await? {
        Some(resp) => Ok(resp.ttl() > 0),
        None => Err(CoordError::etcd(
            "lease keep-alive",
            etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".to_owned()),
        )),
    }
}

/// Grants a lease, returning its id and the TTL etcd granted.
pub(crate) async fn grant(coord: &Coord, ttl_secs: i64) -> Result<(i64, i64), CoordError> {
    let resp = coord
        .rpc_idempotent("lease grant", || {
            let mut c = coord.client();
            async move { c.lease_grant(ttl_secs, None).await }
        })
        .await?;
    Ok((resp.id(), resp.ttl()))
}

/// Revokes a lease; a lease that is already gone counts as revoked.
pub(crate) async fn revoke(coord: &Coord, id: i64, what: &str) -> Result<(), CoordError> {
    let revoked = coord
        .rpc_idempotent("lease revoke", || {
            let mut c = coord.client();
            async move { c.lease_revoke(id).await }
        })
        .await;
    match revoked {
        Ok(_) => Ok(()),
        Err(e) if e.is_lease_not_found() => {
            debug!(lease_id = id, what, "lease already gone at revoke");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A lease held for a lock, a leadership or a barrier arrival. A background task
/// refreshes it every TTL/3; if it is lost, [`HeldLease::is_alive`] turns false.
/// Dropping it revokes the lease (best effort, in the background).
#[derive(Debug)]
pub(crate) struct HeldLease {
    coord: Coord,
    id: i64,
    what: String,
    keeper: JoinHandle<()>,
    alive: watch::Receiver<bool>,
    finished: bool,
}

impl HeldLease {
    /// Grants a lease of `ttl_secs` and starts keeping it alive.
    pub(crate) async fn grant(
        coord: &Coord,
        ttl_secs: i64,
        what: String,
    ) -> Result<Self, CoordError> {
        let (id, granted) = grant(coord, ttl_secs).await?;
        let (tx, alive) = watch::channel(true);
        let task_coord = coord.clone();
        let task_what = what.clone();
        let keeper = tokio::spawn(async move {
            keep_alive_until_lost(&task_coord, id, granted, &task_what).await;
            tx.send_replace(false);
        });
        debug!(lease_id = id, ttl = granted, what = %what, "lease granted");
        Ok(HeldLease {
            coord: coord.clone(),
            id,
            what,
            keeper,
            alive,
            finished: false,
        })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves once the lease is known to be lost.
    pub(crate) async fn lost(&self) {
        let mut rx = self.alive.clone();
        // An error means the keeper is gone, which only happens once it is lost.
        let _ = rx.wait_for(|alive| !*alive).await;
    }

    pub(crate) fn lost_error(&self) -> CoordError {
        CoordError::LeaseLost {
            what: self.what.clone(),
            lease_id: self.id,
        }
    }

    /// Stops the keep-alive and revokes the lease, deleting every key attached.
    pub(crate) async fn revoke(mut self) -> Result<(), CoordError> {
        self.finished = true;
        self.keeper.abort();
        revoke(&self.coord, self.id, &self.what).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.keeper.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let coord = self.coord.clone();
            let id = self.id;
            let what = std::mem::take(&mut self.what);
            rt.spawn(async move {
                if let Err(e) = revoke(&coord, id, &what).await {
                    warn!(lease_id = id, what = %what, error = %e, "revoking dropped lease failed; it expires by itself");
                }
            });
        }
    }
}
