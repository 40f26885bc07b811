//! Distributed locks on etcd's lock API, each holder with its own lease.

use std::time::Duration;

use etcd_client::LockOptions;
use tracing::{debug, info};

use super::config::ttl_secs;
use super::error::CoordError;
use super::lease::HeldLease;
use super::{key_str, keys, Coord, Fence};

impl Coord {
    /// Takes the cluster-wide lock `name`, waiting as long as it takes.
    ///
    /// The lock lives on a lease of `ttl` (rounded up to whole seconds, at least
    /// 2 s) that a background task keeps alive while the guard exists; if this
    /// process dies, the lease expires and the next waiter gets the lock.
    /// Waiters are served in arrival order. The guard's
    /// [`LockGuard::fencing_token`] is the revision at which its lock key was
    /// created, so successive holders get strictly increasing tokens.
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard, CoordError> {
        keys::validate_name("lock name", name)?;
        let lease = HeldLease::grant(self, ttl_secs(ttl), format!("lock {name}")).await?;
        let mut c = self.client();
        let resp = tokio::select! {
            r = c.lock(
                self.keys().lock(name),
                Some(LockOptions::new().with_lease(lease.id())),
            ) => r.map_err(|e| CoordError::etcd("lock", e))?,
            () = lease.lost() => return Err(lease.lost_error()),
        };
        let key = key_str(resp.key())?.to_owned();
        // The fencing token is our key's create revision.
        let got = self.rpc("read lock key", c.get(key.clone(), None)).await?;
        let Some(kv) = got.kvs().first().filter(|kv| kv.lease() == lease.id()) else {
            return Err(lease.lost_error());
        };
        let fence = Fence {
            key,
            token: kv.create_revision(),
        };
        info!(lock = name, token = fence.token, "lock acquired");
        Ok(LockGuard {
            name: name.to_owned(),
            fence,
            lease,
        })
    }

    /// Like [`Coord::lock`], but gives up after `timeout` with
    /// [`CoordError::LockTimeout`] (leaving no trace in the lock's queue).
    pub async fn try_lock(
        &self,
        name: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<LockGuard, CoordError> {
        match tokio::time::timeout(timeout, self.lock(name, ttl)).await {
            Ok(r) => r,
            Err(_) => {
                debug!(lock = name, ?timeout, "lock not acquired in time");
                Err(CoordError::LockTimeout {
                    name: name.to_owned(),
                    after: timeout,
                })
            }
        }
    }
}

/// A held lock; see [`Coord::lock`]. Dropping it releases the lock in the
/// background; [`LockGuard::release`] releases it and waits for etcd.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    name: String,
    fence: Fence,
    lease: HeldLease,
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token: the etcd revision at which this holder's lock key was
    /// created. Strictly increasing across successive holders.
    pub fn fencing_token(&self) -> i64 {
        self.fence.token
    }

    /// The fence to pass to [`Coord::put_fenced`].
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// False once the lock's lease is known to be lost (etcd unreachable for a
    /// TTL, or the lease revoked). A lost lock may already have a new holder;
    /// stop acting on it. Fenced writes are refused either way.
    pub fn is_held(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when the lock is known to be lost.
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// Releases the lock (revokes its lease, deleting the lock key).
    pub async fn release(self) -> Result<(), CoordError> {
        let name = self.name;
        self.lease.revoke().await?;
        debug!(lock = %name, "lock released");
        Ok(())
    }
}
