//! The one router of inbound peer frames.
//!
//! Every service declares the message kinds it owns and gets its own bounded inbound
//! queue ([`ServiceRx`]); the node builds the table once at start
//! ([`RouterBuilder::build`]) and then routes each frame by kind alone. No service
//! sees, forwards or decides about another's frames. Building refuses a kind claimed
//! by two services and a kind of [`MessageKind::ALL`] that nobody owns, so a new
//! message kind cannot be silently dropped.
//!
//! Each queue has a per-peer quota: at most `per_peer` frames of one peer wait in a
//! service's queue at any time; beyond that the peer's frames for that service are
//! dropped (and logged), so one flooding peer cannot fill a queue the others need.
//! A frame counts against the quota until the service takes it off the queue.
//!
//! A service that hands frames to tasks of their own (which then wait for a turn,
//! a lock or the database) keeps a [`PeerBudget`]: the bytes of one peer's frames
//! its tasks hold at once are bounded, so taking frames off the queue at once
//! does not turn the queue's bound into an unbounded number of waiting tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::p2p::{Inbound, MessageKind};

/// Why the routing table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Two services claim the same kind.
    #[error("message kind {kind} is claimed by both {first} and {second}")]
    DuplicateOwner {
        /// The kind.
        kind: MessageKind,
        /// The service that claimed it first.
        first: &'static str,
        /// The service that claimed it again.
        second: &'static str,
    },
    /// Kinds this version speaks that no service owns.
    #[error("message kinds without an owning service: {}", fmt_kinds(.0))]
    Unowned(Vec<MessageKind>),
    /// A service claims a kind this version does not define.
    #[error("service {service} claims message kind {kind}, which is not a known kind")]
    UnknownKind {
        /// The service.
        service: &'static str,
        /// The kind.
        kind: MessageKind,
    },
    /// A service registered with no kinds, a zero capacity or a zero quota.
    #[error("service {0} has no kinds, no queue capacity or no per-peer quota")]
    EmptyService(&'static str),
}

fn fmt_kinds(kinds: &[MessageKind]) -> String {
    kinds
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Frames per peer currently waiting in one service's queue.
#[derive(Debug, Default)]
struct PeerQuota {
    waiting: Mutex<HashMap<String, usize>>,
}

impl PeerQuota {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more frame of `peer` unless it already has `limit` waiting.
    fn try_take(&self, peer: &str, limit: usize) -> bool {
        let mut g = self.lock();
        let n = g.entry(peer.to_owned()).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, peer: &str) {
        let mut g = self.lock();
        if let Some(n) = g.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(peer);
            }
        }
    }
}

/// Bytes of peers' frames that one service's tasks hold (waiting for their turn or
/// being handled), per peer, at most `limit` per peer: a frame beyond is refused,
/// and the service drops it. A peer's bytes are freed as its tasks end.
#[derive(Debug)]
pub struct PeerBudget {
    held: Mutex<HashMap<String, usize>>,
    limit: usize,
}

impl PeerBudget {
    /// A budget of `limit` bytes per peer.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PeerBudget {
            held: Mutex::new(HashMap::new()),
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `bytes` more for `peer` until the returned [`Held`] is dropped;
    /// `None` when that would take the peer over its limit.
    pub fn try_hold(self: &Arc<Self>, peer: &str, bytes: usize) -> Option<Held> {
        let mut g = self.lock();
        let n = g.entry(peer.to_owned()).or_insert(0);
        match n.checked_add(bytes) {
            Some(total) if total <= self.limit => *n = total,
            _ => {
                if *n == 0 {
                    g.remove(peer);
                }
                return None;
            }
        }
        Some(Held {
            budget: self.clone(),
            peer: peer.to_owned(),
            bytes,
        })
    }

    /// Bytes `peer` holds now.
    pub fn held_by(&self, peer: &str) -> usize {
        self.lock().get(peer).copied().unwrap_or(0)
    }
}

/// Bytes held against a peer's [`PeerBudget`]; freed on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<PeerBudget>,
    peer: String,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut g = self.budget.lock();
        if let Some(n) = g.get_mut(&self.peer) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                g.remove(&self.peer);
            }
        }
    }
}

/// The receiving end of one service's queue.
#[derive(Debug)]
pub struct ServiceRx {
    name: &'static str,
    rx: mpsc::Receiver<Inbound>,
    quota: Arc<PeerQuota>,
}

impl ServiceRx {
    /// The next frame for this service; `None` once the router stopped.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let m = self.rx.recv().await?;
        self.quota.release(&m.from);
        Some(m)
    }

    /// The service's name, as given to [`RouterBuilder::service`].
    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[derive(Debug)]
struct Slot {
    name: &'static str,
    tx: mpsc::Sender<Inbound>,
    quota: Arc<PeerQuota>,
    per_peer: usize,
    dropped: LogThrottle,
}

/// Counts repeated events (dropped or malformed frames) and says which to log: the
/// 1st, 2nd, 4th, 8th, ... and then every 1024th, so a flooding peer cannot flood
/// the log as well.
#[derive(Debug, Default)]
pub struct LogThrottle(std::sync::atomic::AtomicU64);

impl LogThrottle {
    /// A counter at zero.
    pub const fn new() -> Self {
        LogThrottle(std::sync::atomic::AtomicU64::new(0))
    }

    /// Counts one event; `Some(total)` when this one should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1);
        (n.is_power_of_two() || n.is_multiple_of(1024)).then_some(n)
    }
}

/// Collects the services and the kinds they own.
#[derive(Debug, Default)]
pub struct RouterBuilder {
    owners: BTreeMap<MessageKind, usize>,
    slots: Vec<Slot>,
    error: Option<RouterError>,
}

impl RouterBuilder {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers service `name` as the owner of `kinds`, with a queue of `capacity`
    /// frames of which at most `per_peer` may come from one peer. The first error
    /// is kept and returned by [`RouterBuilder::build`].
    pub fn service(
        &mut self,
        name: &'static str,
        kinds: &[MessageKind],
        capacity: usize,
        per_peer: usize,
    ) -> ServiceRx {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let quota = Arc::new(PeerQuota::default());
        if kinds.is_empty() || capacity == 0 || per_peer == 0 {
            self.error.get_or_insert(RouterError::EmptyService(name));
        }
        let idx = self.slots.len();
        for &kind in kinds {
            if let Some(&first) = self.owners.get(&kind) {
                self.error.get_or_insert(RouterError::DuplicateOwner {
                    kind,
                    first: self.slots[first].name,
                    second: name,
                });
                continue;
            }
            self.owners.insert(kind, idx);
        }
        self.slots.push(Slot {
            name,
            tx,
            quota: quota.clone(),
            per_peer,
            dropped: LogThrottle::new(),
        });
        ServiceRx { name, rx, quota }
    }

    /// The routing table, if every kind of `known` has exactly one owner and no
    /// service claims a kind outside `known`.
    pub fn build(mut self, known: &[MessageKind]) -> Result<Router, RouterError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (kind, &idx) in &self.owners {
            if !known.contains(kind) {
                return Err(RouterError::UnknownKind {
                    service: self.slots[idx].name,
                    kind: *kind,
                });
            }
        }
        let unowned: Vec<MessageKind> = known
            .iter()
            .filter(|k| !self.owners.contains_key(k))
            .copied()
            .collect();
        if !unowned.is_empty() {
            return Err(RouterError::Unowned(unowned));
        }
        let slots: Vec<Arc<Slot>> = self.slots.into_iter().map(Arc::new).collect();
        let table = self
            .owners
            .into_iter()
            .map(|(k, idx)| (k, slots[idx].clone()))
            .collect();
        Ok(Router { table })
    }
}

/// What became of one routed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routed {
    /// Queued for its service.
    Queued(&'static str),
    /// No service owns the kind (a newer peer's kind, or garbage): dropped.
    UnknownKind,
    /// The peer already has its quota of frames waiting for that service: dropped.
    OverQuota(&'static str),
    /// The service's queue is full: dropped.
    QueueFull(&'static str),
    /// The service stopped: dropped.
    Closed(&'static str),
}

/// Routes inbound frames to their owning service's queue.
#[derive(Debug)]
pub struct Router {
    table: HashMap<MessageKind, Arc<Slot>>,
}

impl Router {
    /// Routes one frame (never blocks).
    pub fn route(&self, inbound: Inbound) -> Routed {
        let Some(slot) = self.table.get(&inbound.frame.kind) else {
            return Routed::UnknownKind;
        };
        if !slot.quota.try_take(&inbound.from, slot.per_peer) {
            return Routed::OverQuota(slot.name);
        }
        let from = inbound.from.clone();
        match slot.tx.try_send(inbound) {
            Ok(()) => Routed::Queued(slot.name),
            Err(e) => {
                slot.quota.release(&from);
                match e {
                    mpsc::error::TrySendError::Full(_) => Routed::QueueFull(slot.name),
                    mpsc::error::TrySendError::Closed(_) => Routed::Closed(slot.name),
                }
            }
        }
    }

    /// Routes the endpoint's inbound frames until shutdown or the endpoint stops.
    pub async fn run(self, mut rx: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        loop {
            let inbound = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let peer = inbound.from.clone();
            let kind = inbound.frame.kind;
            let routed = self.route(inbound);
            let (service, why) = match routed {
                Routed::Queued(_) => continue,
                Routed::UnknownKind => {
                    tracing::debug!(%peer, %kind, "no service owns this message kind; dropped");
                    continue;
                }
                Routed::OverQuota(service) => (service, "peer over its queue quota"),
                Routed::QueueFull(service) => (service, "service queue full"),
                Routed::Closed(service) => (service, "service stopped"),
            };
            if let Some(dropped) = self.table.get(&kind).and_then(|s| s.dropped.hit()) {
                tracing::warn!(%peer, %kind, service, dropped, "{why}; frame dropped");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::p2p::Frame;

    /// A peer holds at most its budget's bytes at once, others are not affected,
    /// and what a task held is free again when it ends.
    #[test]
    fn a_peer_budget_bounds_one_peers_bytes_and_frees_them_when_done() {
        let budget = PeerBudget::new(1_000);
        let first = budget.try_hold("node-2", 600).unwrap();
        assert!(budget.try_hold("node-2", 500).is_none(), "over the limit");
        let other = budget.try_hold("node-3", 900).unwrap();
        let second = budget.try_hold("node-2", 400).unwrap();
        assert_eq!(budget.held_by("node-2"), 1_000);
        assert!(budget.try_hold("node-2", 1).is_none());
        assert!(
            budget.try_hold("node-4", usize::MAX).is_none(),
            "no overflow"
        );
        drop(first);
        assert_eq!(budget.held_by("node-2"), 400);
        let third = budget.try_hold("node-2", 600).unwrap();
        drop((second, third, other));
        assert!(budget.lock().is_empty(), "nothing left behind");
    }

    fn frame(from: &str, kind: MessageKind) -> Inbound {
        Inbound {
            from: from.to_owned(),
            frame: Frame::new(Uuid::new_v4(), kind, Vec::new()),
        }
    }

    const A: MessageKind = MessageKind::PING;
    const B: MessageKind = MessageKind::PONG;

    #[test]
    fn the_log_throttle_logs_the_first_powers_of_two_then_every_1024th() {
        let t = LogThrottle::new();
        let logged: Vec<u64> = (0..3000).filter_map(|_| t.hit()).collect();
        assert_eq!(
            logged,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        );
    }

    #[test]
    fn a_kind_claimed_by_two_services_is_refused_at_start() {
        let mut b = RouterBuilder::new();
        let _x = b.service("net", &[A, B], 8, 4);
        let _y = b.service("other", &[B], 8, 4);
        assert_eq!(
            b.build(&[A, B]).expect_err("the table must be refused"),
            RouterError::DuplicateOwner {
                kind: B,
                first: "net",
                second: "other"
            }
        );
    }

    #[test]
    fn a_known_kind_without_owner_is_refused_at_start() {
        let mut b = RouterBuilder::new();
        let _x = b.service("net", &[A], 8, 4);
        let err = b
            .build(&[A, B, MessageKind::VOTE])
            .expect_err("the table must be refused");
        assert_eq!(err, RouterError::Unowned(vec![B, MessageKind::VOTE]));
        assert!(err.to_string().contains("0x0002"), "{err}");
    }

    #[test]
    fn a_service_claiming_an_undefined_kind_is_refused_at_start() {
        let mut b = RouterBuilder::new();
        let _x = b.service("net", &[A, MessageKind(0x7777)], 8, 4);
        assert_eq!(
            b.build(&[A]).expect_err("the table must be refused"),
            RouterError::UnknownKind {
                service: "net",
                kind: MessageKind(0x7777)
            }
        );
    }

    #[test]
    fn a_service_without_kinds_or_queue_is_refused_at_start() {
        let mut b = RouterBuilder::new();
        let _x = b.service("net", &[A, B], 8, 4);
        let _y = b.service("idle", &[], 8, 4);
        assert_eq!(
            b.build(&[A, B]).expect_err("the table must be refused"),
            RouterError::EmptyService("idle")
        );
    }

    #[tokio::test]
    async fn frames_reach_only_the_service_owning_their_kind() {
        let mut b = RouterBuilder::new();
        let mut net = b.service("net", &[A], 8, 4);
        let mut votes = b.service("votes", &[B], 8, 4);
        let r = b.build(&[A, B]).expect("complete table");
        assert_eq!(r.route(frame("node-2", B)), Routed::Queued("votes"));
        assert_eq!(r.route(frame("node-2", A)), Routed::Queued("net"));
        assert_eq!(
            r.route(frame("node-2", MessageKind(0x7777))),
            Routed::UnknownKind
        );
        assert_eq!(net.recv().await.expect("queued").frame.kind, A);
        assert_eq!(votes.recv().await.expect("queued").frame.kind, B);
        assert!(net.rx.try_recv().is_err() && votes.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_flooding_peer_is_held_to_its_quota_and_others_still_get_through() {
        let mut b = RouterBuilder::new();
        let mut svc = b.service("tx", &[A], 16, 3);
        let r = b.build(&[A]).expect("complete table");
        for _ in 0..3 {
            assert_eq!(r.route(frame("node-9", A)), Routed::Queued("tx"));
        }
        assert_eq!(r.route(frame("node-9", A)), Routed::OverQuota("tx"));
        assert_eq!(r.route(frame("node-2", A)), Routed::Queued("tx"));
        // Taking a frame off the queue gives the peer its slot back.
        assert_eq!(svc.recv().await.expect("queued").from, "node-9");
        assert_eq!(r.route(frame("node-9", A)), Routed::Queued("tx"));
        assert_eq!(r.route(frame("node-9", A)), Routed::OverQuota("tx"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_does_not_charge_the_peer() {
        let mut b = RouterBuilder::new();
        let mut svc = b.service("tx", &[A], 2, 8);
        let r = b.build(&[A]).expect("complete table");
        assert_eq!(r.route(frame("node-2", A)), Routed::Queued("tx"));
        assert_eq!(r.route(frame("node-3", A)), Routed::Queued("tx"));
        assert_eq!(r.route(frame("node-2", A)), Routed::QueueFull("tx"));
        assert_eq!(svc.quota.lock().get("node-2"), Some(&1));
        let _ = svc.recv().await;
        let _ = svc.recv().await;
        assert!(svc.quota.lock().is_empty());
        drop(svc);
        assert_eq!(r.route(frame("node-2", A)), Routed::Closed("tx"));
    }
}
