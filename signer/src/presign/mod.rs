//! The presignature pool (CGGMP24 ECDSA): generated ahead by every signer set, stored
//! sealed on every member, consumed exactly once. See `docs/PRESIGNATURES.md`.
//!
//! * [`pool`]: the background task of every node. For each usable ECDSA key, each
//!   signer set (t node ids in keygen order) whose lowest node id is this node, and
//!   each derivation path the pool serves, it keeps `[presign] target` presignatures,
//!   refilling below `low_watermark`, under a cluster-wide etcd lock slot.
//! * [`session`]: one generation session: announce over QUIC ([`wire::PRESIGN_ANNOUNCE`]),
//!   etcd barrier, `ecdsa::presign` per item over the session router, seal, confirm the
//!   public id with every member, store.
//! * use in signing (the transaction service's `tx::presigned`, above this one): the
//!   leader reserves one from its own pool and names it in the sign request; each
//!   signer consumes it in one database transaction before its partial signature
//!   leaves the node.
//! * [`watermark`]: restore detection (a counter mirrored outside the database).

pub mod anchor;
pub mod pool;
pub mod session;

pub mod watermark;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::p2p::{Inbound, MessageKind};
use crate::router::ServiceRx;

/// Dropped frames of peers (logged throttled).
static DROPPED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Errors of the presignature pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresignError {
    /// An announce or request that is not acceptable.
    #[error("invalid presign session: {0}")]
    Invalid(String),
    /// Custody is sealed.
    #[error("custody is sealed")]
    Sealed,
    /// etcd unavailable or coordination failed.
    #[error("coordination: {0}")]
    Coord(String),
    /// The protocol failed.
    #[error("presigning failed: {0}")]
    Protocol(String),
    /// Members confirmed different presignatures.
    #[error("confirmation mismatch or missing: {0}")]
    Confirm(String),
    /// Sealing or opening failed.
    #[error("custody: {0}")]
    Custody(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Loading the key material failed.
    #[error("key material: {0}")]
    Material(String),
}

/// Generate requests kept at most (the oldest is dropped).
pub const MAX_REQUESTS: usize = 64;

/// Pool identity: key and signer set.
pub type SetKey = (String, Vec<String>);

/// In-memory pool state of this node.
#[derive(Debug, Default)]
pub struct Presign {
    /// Wakes the pool task (generate requests, new UTXOs).
    pub wake: Notify,
    /// Wakes the restore watcher (a rollback was seen).
    restore_wake: Notify,
    restore_checked: AtomicBool,
    /// Rollbacks seen while running, and how many of them the restore check has
    /// handled (discarded the pool for); `seen > handled` keeps presignatures stopped.
    rollbacks_seen: AtomicU64,
    rollbacks_handled: AtomicU64,
    /// The last rollback seen (for the audit record of the discard).
    last_rollback: Mutex<Option<watermark::Rollback>>,
    inner: Mutex<Inner>,
    watermark: watermark::Watermark,
}

#[derive(Debug, Default)]
struct Inner {
    /// Presignatures being generated right now, per key and signer set.
    generating: HashMap<SetKey, usize>,
    /// Extra presignatures requested through the API, per key (`None`: every key)
    /// and signer set (`None`: every set this node leads).
    requested: Vec<Request>,
}

/// A `POST /api/v1/presignatures/generate` request still being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Key, or every ECDSA key.
    pub key_id: Option<String>,
    /// Signer set, or every set this node leads.
    pub signer_set: Option<Vec<String>>,
    /// Per (key, set) still to generate beyond the target.
    pub remaining: HashMap<SetKey, usize>,
    /// Count asked for per (key, set).
    pub count: usize,
}

impl Presign {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the restore check ran (no presignature is used before it did).
    pub fn restore_checked(&self) -> bool {
        self.restore_checked.load(Ordering::Acquire)
    }

    fn set_restore_checked(&self) {
        self.restore_checked.store(true, Ordering::Release);
    }

    /// A rollback of the database was seen while running: no presignature is used
    /// until the restore check ran again and discarded the pool (the restore watcher
    /// runs it at once).
    pub fn flag_rollback(&self, r: watermark::Rollback) {
        let mut last = self.rollback_lock();
        *last = Some(r);
        self.rollbacks_seen.fetch_add(1, Ordering::AcqRel);
        self.restore_checked.store(false, Ordering::Release);
        drop(last);
        self.restore_wake.notify_one();
        self.wake.notify_one();
    }

    fn rollback_lock(&self) -> MutexGuard<'_, Option<watermark::Rollback>> {
        self.last_rollback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `within` for the restore check; whether it ran.
    pub async fn wait_restore_checked(&self, within: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while !self.restore_checked() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        true
    }

    /// Rollbacks of the database seen while this process runs.
    pub fn rollbacks_detected(&self) -> u64 {
        self.rollbacks_seen.load(Ordering::Acquire)
    }

    /// The rollbacks seen so far (count) and the last one, when some are not yet
    /// handled by the restore check.
    fn pending_rollback(&self) -> (u64, Option<watermark::Rollback>) {
        let last = self.rollback_lock();
        let seen = self.rollbacks_seen.load(Ordering::Acquire);
        if seen <= self.rollbacks_handled.load(Ordering::Acquire) {
            return (seen, None);
        }
        (seen, *last)
    }

    /// The restore check handled the first `seen` rollbacks: presignatures may be
    /// used again, unless another rollback was seen meanwhile (then the watcher runs
    /// the check once more).
    fn restore_handled(&self, seen: u64) {
        let last = self.rollback_lock();
        self.rollbacks_handled.fetch_max(seen, Ordering::AcqRel);
        if self.rollbacks_seen.load(Ordering::Acquire) == seen {
            self.set_restore_checked();
        }
        drop(last);
        // The pool task skips refills until the check ran.
        self.wake.notify_one();
    }

    /// Presignatures being generated per key and signer set.
    pub fn generating(&self) -> HashMap<SetKey, usize> {
        self.lock().generating.clone()
    }

    fn add_generating(&self, k: &SetKey, delta: isize) {
        let mut g = self.lock();
        let e = g.generating.entry(k.clone()).or_default();
        *e = e.saturating_add_signed(delta);
        if *e == 0 {
            g.generating.remove(k);
        }
    }

    /// Records a generate request and wakes the pool task.
    pub fn request(&self, key_id: Option<String>, signer_set: Option<Vec<String>>, count: usize) {
        let mut g = self.lock();
        if g.requested.len() >= MAX_REQUESTS {
            g.requested.remove(0);
        }
        g.requested.push(Request {
            key_id,
            signer_set,
            remaining: HashMap::new(),
            count,
        });
        drop(g);
        self.wake.notify_one();
    }

    /// Extra presignatures wanted for `k` by pending requests (and registers `k`
    /// with each request that covers it).
    fn extra_for(&self, k: &SetKey) -> usize {
        let mut g = self.lock();
        let mut extra = 0;
        for r in &mut g.requested {
            let covers = r.key_id.as_ref().is_none_or(|x| *x == k.0)
                && r.signer_set.as_ref().is_none_or(|s| *s == k.1);
            if covers {
                extra += *r.remaining.entry(k.clone()).or_insert(r.count);
            }
        }
        extra
    }

    /// `n` presignatures of `k` were generated: counts them against requests.
    fn generated(&self, k: &SetKey, mut n: usize) {
        let mut g = self.lock();
        for r in &mut g.requested {
            if let Some(rem) = r.remaining.get_mut(k) {
                let used = n.min(*rem);
                *rem -= used;
                n -= used;
            }
        }
    }

    /// Drops requests fully served for every (key, set) they were registered with,
    /// after a pass of the pool task over every set.
    fn prune_requests(&self) {
        self.lock()
            .requested
            .retain(|r| r.remaining.is_empty() || r.remaining.values().any(|v| *v > 0));
    }
}

/// What the presignature service works with: the key-ceremony context below it and
/// the pool state.
#[derive(Debug)]
pub struct PresignCtx {
    lower: Arc<crate::dkg::DkgCtx>,
    /// Presignature pool state.
    pub presign: Presign,
}

impl PresignCtx {
    /// The service's context over the key-ceremony service.
    pub fn new(lower: Arc<crate::dkg::DkgCtx>) -> Self {
        PresignCtx {
            lower,
            presign: Presign::default(),
        }
    }

    /// The key-ceremony context below.
    pub fn dkg_ctx(&self) -> &Arc<crate::dkg::DkgCtx> {
        &self.lower
    }
}

impl std::ops::Deref for PresignCtx {
    type Target = crate::dkg::DkgCtx;

    fn deref(&self) -> &crate::dkg::DkgCtx {
        &self.lower
    }
}

/// The kinds this service owns.
pub const KINDS: &[MessageKind] = &[wire::PRESIGN_ANNOUNCE, wire::PRESIGN_GENERATE];

/// Handles the pool's frames routed to this service until the router stops.
pub async fn serve(node: Arc<PresignCtx>, mut rx: ServiceRx) {
    while let Some(inbound) = rx.recv().await {
        handle(&node, &inbound);
    }
}

fn handle(node: &Arc<PresignCtx>, inbound: &Inbound) {
    match inbound.frame.kind {
        wire::PRESIGN_ANNOUNCE => match wire::decode::<wire::PresignSpec>(&inbound.frame.payload) {
            Ok(spec) if spec.leader == inbound.from => {
                tokio::spawn(session::participate_logged(node.clone(), spec));
            }
            Ok(_) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %inbound.from, "presign announce whose leader is not its sender; dropped")
                }
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %inbound.from, error = %e, "malformed presign announce; dropped")
                }
            }
        },
        wire::PRESIGN_GENERATE => {
            match wire::decode::<wire::GenerateRequest>(&inbound.frame.payload) {
                Ok(r) if r.count <= wire::MAX_GENERATE => {
                    if let Some(dropped) = DROPPED.hit() {
                        tracing::info!(dropped, peer = %inbound.from, count = r.count, "presignature generation requested by a peer")
                    };
                    node.presign.request(r.key_id, r.signer_set, r.count);
                }
                Ok(_) => {
                    if let Some(dropped) = DROPPED.hit() {
                        tracing::warn!(dropped, peer = %inbound.from, "presign generate count out of range; dropped")
                    }
                }
                Err(e) => {
                    if let Some(dropped) = DROPPED.hit() {
                        tracing::warn!(dropped, peer = %inbound.from, error = %e, "malformed presign generate request; dropped")
                    }
                }
            }
        }
        other => {
            tracing::error!(peer = %inbound.from, kind = %other, "router delivered a kind this service does not own");
        }
    }
}

/// Whether `path` is a wallet path the pool may presign for: `[chain, index]` with
/// chain 0 (receive) or 1 (change) and a non-hardened index.
pub fn valid_wallet_path(path: &[u32]) -> bool {
    matches!(path, [c, i] if *c <= 1 && *i < (1 << 31))
}

#[cfg(test)]
mod tests {
    use super::watermark::Rollback;
    use super::*;

    #[test]
    fn a_rollback_stops_presignatures_until_the_check_handled_every_one_seen() {
        let p = Presign::default();
        p.set_restore_checked();
        let first = Rollback {
            database: 3,
            file: 5,
        };
        p.flag_rollback(first);
        assert!(!p.restore_checked(), "stopped at once");
        let (seen, last) = p.pending_rollback();
        assert_eq!((seen, last), (1, Some(first)));
        // Another rollback is seen while the check runs: still stopped after it.
        p.flag_rollback(Rollback {
            database: 4,
            file: 5,
        });
        p.restore_handled(seen);
        assert!(!p.restore_checked(), "the second one is not handled yet");
        let (seen, last) = p.pending_rollback();
        assert_eq!(seen, 2);
        assert!(last.is_some());
        p.restore_handled(seen);
        assert!(p.restore_checked());
        assert_eq!(p.pending_rollback(), (2, None));
        assert_eq!(p.rollbacks_detected(), 2);
    }
}
