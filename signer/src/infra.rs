//! The shared infrastructure handle of a node ([`Infra`]) and the cluster and
//! custody state it tracks. Below every service: it knows no service.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::NodeConfig;
use crate::coord::Coord;
use crate::net::Net;
use crate::store::Store;

/// What this node currently knows about the cluster (refreshed in the background).
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// Whether the last etcd read succeeded.
    pub etcd_ok: bool,
    /// Nodes with a live registration in etcd, by id.
    pub live: BTreeMap<String, LiveNode>,
    /// Peers with an open QUIC connection.
    pub connected_peers: Vec<String>,
    /// Why the last QUIC connection with a peer failed, while it does (e.g. its
    /// certificate expired).
    pub peer_errors: BTreeMap<String, String>,
    /// Current coordinator (leader of the etcd election), if known.
    pub leader: Option<String>,
    /// When this snapshot was taken.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A registered node as seen in etcd.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveNode {
    /// API URL it announced.
    pub api_url: String,
    /// QUIC address it announced.
    pub quic_addr: String,
    /// Software version.
    pub version: String,
    /// When it started.
    pub started_at: String,
}

/// `GET /api/v1/cluster/status` body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// Nodes configured.
    pub total_nodes: usize,
    /// Nodes alive.
    pub healthy_nodes: usize,
    /// Signing threshold.
    pub threshold: u16,
    /// `healthy` (all up), `degraded` (at least t up) or `unavailable`.
    #[schema(value_type = String, example = "healthy")]
    pub status: &'static str,
    /// Where liveness came from: `etcd`, or `p2p` when etcd is unreachable.
    #[schema(value_type = String, example = "etcd")]
    pub source: &'static str,
    /// The node answering.
    pub reporting_node: String,
    /// Current coordinator (etcd election leader), if known.
    pub leader: Option<String>,
    /// Per node detail.
    pub nodes: Vec<NodeStatus>,
    /// Each configured etcd member as this node last probed it.
    pub etcd_members: Vec<crate::coord::members::MemberHealth>,
    /// The reporting node's certificate and the CA's, with days to expiry.
    pub certificates: Vec<CertificateStatus>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: String,
    /// Alive or not.
    pub healthy: bool,
    /// Connected to the reporting node over QUIC.
    pub p2p_connected: bool,
    /// Registration detail when alive.
    pub registration: Option<LiveNode>,
    /// Why the last QUIC connection with this node failed, while not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p_error: Option<String>,
    /// The P2P wire level of the latest connection with this node (this node's own
    /// level for itself; absent before a first connection): 2 speaks the batch
    /// frames, 1 is a release before them (a rolling upgrade in progress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p_wire_level: Option<u8>,
}

/// Days ahead of a certificate's expiry from which the node warns.
pub const CERT_WARN_DAYS: i64 = 30;

/// A certificate this node presents or trusts, as `/ready`, the cluster status and
/// the metrics report it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateStatus {
    /// `node` (this node's certificate) or `ca` (the cluster CA).
    pub name: &'static str,
    /// End of validity (RFC 3339); `None` if the file could not be read.
    pub not_after: Option<DateTime<Utc>>,
    /// Whole days left (negative once expired).
    pub days_left: Option<i64>,
    /// `ok`, `expiring` (fewer than [`CERT_WARN_DAYS`] days left), `expired` or
    /// `unreadable`.
    pub state: &'static str,
}

impl CertificateStatus {
    fn at(name: &'static str, not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let days_left = not_after.map(|t| (t - now).num_seconds().div_euclid(86_400));
        let state = match (not_after, days_left) {
            (Some(t), _) if t <= now => "expired",
            (Some(_), Some(d)) if d < CERT_WARN_DAYS => "expiring",
            (Some(_), _) => "ok",
            (None, _) => "unreadable",
        };
        CertificateStatus {
            name,
            not_after,
            days_left,
            state,
        }
    }
}

/// Why [`Infra::add_peer`] refused a peer.
#[derive(Debug, thiserror::Error)]
pub enum AddPeerError {
    /// Bad id (or this node's), or an address already used by another peer.
    #[error("invalid peer: {0}")]
    InvalidPeer(String),
    /// The certificate is not the cluster CA's for this identity, or not valid now.
    #[error("peer certificate refused: {0}")]
    CertificateRefused(String),
    /// The audit record could not be written (the peer was added).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Custody (HSM/TPM) state as reported by `/ready`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum CustodyState {
    /// No backend configured: key operations are refused.
    Unconfigured,
    /// Backend configured but not usable (yet): key operations are refused.
    Sealed {
        /// Stable reason code (e.g. `wrong_pin`, `module_not_found`).
        code: String,
        /// Human-readable reason (never contains the PIN). Logged, and not shown by
        /// the unauthenticated `/ready` (it can name paths and modules).
        #[serde(skip)]
        reason: String,
    },
    /// Backend reachable and authenticated, node keys loaded.
    Unsealed {
        /// Identifier of the key-encryption key in use.
        kek_id: String,
    },
}

/// What exists only once custody is unsealed.
#[derive(Debug)]
pub struct Unsealed {
    /// The HSM/TPM handle.
    pub custody: hsm::Custody,
    /// The vote-signing key.
    pub vote_key: crate::custody::VoteKey,
}

impl crate::session::StatementSigner for Unsealed {
    fn vote_key(&self) -> &crate::custody::VoteKey {
        &self.vote_key
    }
}

/// The infrastructure every service shares: configuration, database, network,
/// protocol-session routing, etcd handle, cluster view and custody. Services get
/// this (and the services below them), never the node's wiring.
#[derive(Debug)]
pub struct Infra {
    /// Configuration.
    pub cfg: NodeConfig,
    /// This node's database.
    pub store: Store,
    /// QUIC peer-to-peer network.
    pub net: Arc<Net>,
    /// Protocol sessions running on this node (frame routing).
    pub sessions: crate::session::Router,
    coord: RwLock<Option<Coord>>,
    cluster: RwLock<ClusterSnapshot>,
    etcd_members: RwLock<Vec<crate::coord::members::MemberHealth>>,
    custody: RwLock<CustodyState>,
    unsealed: RwLock<Option<Arc<Unsealed>>>,
    hardening: hsm::memory::HardeningReport,
    /// End of validity of this node's certificate and of the CA, read at start (the
    /// certificates the node presents and trusts until it restarts).
    cert_not_after: [(&'static str, Option<DateTime<Utc>>); 2],
    /// Protocol runs hold one of [`MAX_PROTOCOL_THREADS`] slots while on their thread.
    pub protocol_slots: ProtocolSlots,
}

/// Protocol runs (key ceremonies, presigning, signing) that may hold an OS thread at
/// once on this node; more wait for a slot, so no peer can make the node spawn
/// threads without bound.
pub const MAX_PROTOCOL_THREADS: usize = 32;

/// A bounded number of protocol threads: a run waits for a free slot.
#[derive(Debug)]
pub struct ProtocolSlots(tokio::sync::Semaphore);

impl ProtocolSlots {
    /// `n` slots.
    pub fn new(n: usize) -> Self {
        ProtocolSlots(tokio::sync::Semaphore::new(n))
    }

    /// Runs one protocol execution on its own thread once a slot is free (see
    /// [`signer_protocol::run_on_thread`]); the slot is held until it ends.
    pub async fn run<T, F, Fut>(
        &self,
        protocol: signer_protocol::ProtocolKind,
        make: F,
    ) -> Result<T, signer_protocol::ProtocolError>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, signer_protocol::ProtocolError>> + 'static,
    {
        let _slot =
            self.0
                .acquire()
                .await
                .map_err(|_| signer_protocol::ProtocolError::ThreadFailed {
                    protocol,
                    reason: "node shutting down".to_owned(),
                })?;
        signer_protocol::run_on_thread(protocol, make).await
    }
}

impl Infra {
    /// New handle; custody starts sealed (or unconfigured). `hardening` is what
    /// [`hsm::memory::harden_process`] achieved.
    pub fn new(
        cfg: NodeConfig,
        store: Store,
        net: Arc<Net>,
        hardening: hsm::memory::HardeningReport,
    ) -> Self {
        let custody = if cfg.custody.is_some() {
            CustodyState::Sealed {
                code: "opening".to_owned(),
                reason: "custody backend not opened yet".to_owned(),
            }
        } else {
            CustodyState::Unconfigured
        };
        let cert_not_after = [
            ("node", read_not_after(&cfg.tls.cert)),
            ("ca", read_not_after(&cfg.tls.ca_cert)),
        ];
        Infra {
            cfg,
            store,
            net,
            sessions: crate::session::Router::default(),
            coord: RwLock::new(None),
            cluster: RwLock::new(ClusterSnapshot::default()),
            etcd_members: RwLock::new(Vec::new()),
            custody: RwLock::new(custody),
            unsealed: RwLock::new(None),
            cert_not_after,
            hardening,
            protocol_slots: ProtocolSlots::new(MAX_PROTOCOL_THREADS),
        }
    }

    /// This node's certificate and the CA's: days to expiry, state.
    pub fn certificates(&self) -> Vec<CertificateStatus> {
        let now = Utc::now();
        self.cert_not_after
            .iter()
            .map(|(name, t)| CertificateStatus::at(name, *t, now))
            .collect()
    }

    /// Logs a warning per certificate that expires within [`CERT_WARN_DAYS`] days
    /// (an error once expired); the node calls it at start and daily.
    pub fn warn_expiring_certificates(&self) {
        for c in self.certificates() {
            match c.state {
                "expired" => {
                    tracing::error!(certificate = c.name, not_after = ?c.not_after, "certificate EXPIRED: peers refuse this node (renew it: docs/OPERATIONS.md)")
                }
                "expiring" => {
                    tracing::warn!(certificate = c.name, days_left = ?c.days_left, not_after = ?c.not_after, "certificate expires soon (renew it: docs/OPERATIONS.md)")
                }
                "unreadable" => tracing::warn!(
                    certificate = c.name,
                    "certificate validity could not be read"
                ),
                _ => {}
            }
        }
    }

    /// Current cluster snapshot.
    pub fn cluster_snapshot(&self) -> ClusterSnapshot {
        read_cloned(&self.cluster)
    }

    /// Replaces the cluster snapshot.
    pub fn set_cluster_snapshot(&self, snap: ClusterSnapshot) {
        replace(&self.cluster, snap);
    }

    /// The current etcd handle, while connected.
    pub fn coord(&self) -> Option<Coord> {
        read_cloned(&self.coord)
    }

    /// Each etcd member's health as last probed.
    pub fn etcd_members(&self) -> Vec<crate::coord::members::MemberHealth> {
        read_cloned(&self.etcd_members)
    }

    /// Records the last probe of the etcd members.
    pub fn set_etcd_members(&self, members: Vec<crate::coord::members::MemberHealth>) {
        replace(&self.etcd_members, members);
    }

    /// Sets (or clears) the shared etcd handle.
    pub fn set_coord(&self, coord: Option<Coord>) {
        replace(&self.coord, coord);
    }

    /// Current custody state.
    pub fn custody_state(&self) -> CustodyState {
        read_cloned(&self.custody)
    }

    /// Sets the custody state.
    pub fn set_custody_state(&self, state: CustodyState) {
        replace(&self.custody, state);
    }

    /// Records a successful unseal.
    /// The custody handle is usable from now on (key shares can be opened), but the
    /// node reports itself unsealed (and `/ready`) only after [`Infra::finish_unseal`],
    /// once its key shares are loaded: a node that says it is ready votes on every
    /// proposal for its keys.
    pub fn set_unsealed(&self, custody: hsm::Custody, vote_key: crate::custody::VoteKey) {
        replace(
            &self.unsealed,
            Some(Arc::new(Unsealed { custody, vote_key })),
        );
        self.set_custody_state(CustodyState::Sealed {
            code: "loading_keys".to_owned(),
            reason: "custody opened; loading the key shares".to_owned(),
        });
    }

    /// Reports custody unsealed (after the key shares were loaded).
    pub fn finish_unseal(&self) {
        if let Some(u) = self.unsealed() {
            self.set_custody_state(CustodyState::Unsealed {
                kek_id: u.custody.kek_id().to_owned(),
            });
        }
    }

    /// The unsealed custody, or `None` while sealed.
    pub fn unsealed(&self) -> Option<Arc<Unsealed>> {
        read_cloned(&self.unsealed)
    }

    /// What process hardening achieved at start.
    pub fn hardening(&self) -> &hsm::memory::HardeningReport {
        &self.hardening
    }

    /// `/ready`'s view of process hardening: `hardened`; `overridden` (not
    /// hardened, unsealed anyway under `[hardening] allow_unhardened_memory`); or
    /// `refused` (not hardened, custody stays sealed).
    pub fn hardening_state(&self) -> &'static str {
        if self.hardening.is_fully_hardened() {
            "hardened"
        } else if self.cfg.hardening.allow_unhardened_memory {
            "overridden"
        } else {
            "refused"
        }
    }

    /// Ids of the live peer set: the configured peers and those added since the
    /// start ([`Infra::add_peer`]), sorted.
    pub fn peer_ids(&self) -> Vec<String> {
        self.net.p2p.peer_ids()
    }

    /// This node and its live peers, sorted.
    pub fn node_ids(&self) -> Vec<String> {
        let mut ids = self.peer_ids();
        ids.push(self.cfg.node_id.clone());
        ids.sort();
        ids
    }

    /// Adds a node to the live peer set without a restart (operator action): its
    /// certificate (PEM) must chain to the cluster CA, be valid now and carry the
    /// identity `id`; then it may connect and be sent to, and every service that
    /// lists the cluster's nodes sees it. Audited `cluster.peer_added` (not when
    /// nothing changed). It gives the peer no key material: a share only comes
    /// through a reshare approved by a quorum of node votes.
    pub async fn add_peer(
        &self,
        actor: &str,
        id: &str,
        addr: std::net::SocketAddr,
        cert_pem: &str,
    ) -> Result<crate::p2p::PeerChange, AddPeerError> {
        if crate::ca::validate_node_id(id).is_err() || id == self.cfg.node_id {
            return Err(AddPeerError::InvalidPeer(format!(
                "{:?} is not a valid id for a new peer",
                id.chars().take(64).collect::<String>()
            )));
        }
        crate::p2p::verify_peer_certificate(&self.cfg.tls.ca_cert, cert_pem.as_bytes(), id)
            .map_err(AddPeerError::CertificateRefused)?;
        let change = self
            .net
            .p2p
            .add_peer(id, addr)
            .map_err(|e| AddPeerError::InvalidPeer(e.to_string()))?;
        if change != crate::p2p::PeerChange::Unchanged {
            use sha2::Digest as _;
            let fingerprint = hex::encode(sha2::Sha256::digest(cert_pem.as_bytes()));
            self.store
                .audit(
                    &self.cfg.node_id,
                    crate::audit::AuditEntry::new(actor, "cluster.peer_added")
                        .subject(id.to_owned())
                        .details(serde_json::json!({
                            "addr": addr.to_string(),
                            "change": format!("{change:?}"),
                            "certificate_pem_sha256": fingerprint,
                            "peers": self.peer_ids(),
                        })),
                )
                .await?;
        }
        Ok(change)
    }

    /// Cluster status computed from the snapshot.
    pub fn cluster_status(&self) -> ClusterStatus {
        let mut status = compute_status(&self.cfg, &self.peer_ids(), &self.cluster_snapshot());
        for n in &mut status.nodes {
            n.p2p_wire_level = if n.node_id == self.cfg.node_id {
                Some(self.net.p2p.wire_level())
            } else {
                self.net.p2p.peer_wire_level(&n.node_id)
            };
        }
        status.etcd_members = self.etcd_members();
        status.certificates = self.certificates();
        status
    }
}

fn read_not_after(path: &std::path::Path) -> Option<DateTime<Utc>> {
    crate::ca::certificate_not_after(path)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot read certificate validity"))
        .ok()
}

/// A copy of the value behind `lock`; a poisoned lock still holds the last value
/// written (every write replaces it whole), so it is read anyway.
fn read_cloned<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Replaces the value behind `lock` (poisoned or not, see [`read_cloned`]).
fn replace<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

/// Computes the status table; pure, so it is tested without I/O.
pub fn compute_status(cfg: &NodeConfig, peers: &[String], snap: &ClusterSnapshot) -> ClusterStatus {
    let mut ids: Vec<&str> = vec![cfg.node_id.as_str()];
    ids.extend(peers.iter().map(String::as_str));
    ids.sort_unstable();
    let nodes: Vec<NodeStatus> = ids
        .iter()
        .map(|id| {
            let p2p_connected = *id == cfg.node_id || snap.connected_peers.iter().any(|c| c == id);
            let registration = snap.live.get(*id).cloned();
            let healthy = if snap.etcd_ok {
                registration.is_some()
            } else {
                p2p_connected
            };
            NodeStatus {
                node_id: (*id).to_owned(),
                healthy,
                p2p_connected,
                registration,
                p2p_error: (!p2p_connected)
                    .then(|| snap.peer_errors.get(*id).cloned())
                    .flatten(),
                p2p_wire_level: None,
            }
        })
        .collect();
    let total = nodes.len();
    let healthy = nodes.iter().filter(|n| n.healthy).count();
    let status = if healthy == total {
        "healthy"
    } else if healthy >= usize::from(cfg.threshold) {
        "degraded"
    } else {
        "unavailable"
    };
    ClusterStatus {
        total_nodes: total,
        healthy_nodes: healthy,
        threshold: cfg.threshold,
        status,
        source: if snap.etcd_ok { "etcd" } else { "p2p" },
        reporting_node: cfg.node_id.clone(),
        leader: snap.leader.clone(),
        nodes,
        etcd_members: Vec::new(),
        certificates: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use signer_protocol::ProtocolKind;

    use super::ProtocolSlots;

    #[tokio::test]
    async fn a_protocol_run_waits_for_a_free_slot() {
        let slots = Arc::new(ProtocolSlots::new(2));
        let mut release = Vec::new();
        let mut running = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            release.push(tx);
            let slots = slots.clone();
            running.push(tokio::spawn(async move {
                slots
                    .run(ProtocolKind::FrostSign, move || async move {
                        let _ = rx.await;
                        Ok(())
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(slots.0.available_permits(), 0);
        // The third run has no slot: releasing it first does not let it finish.
        let third = release.pop().expect("three runs");
        let _ = third.send(());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !running[2].is_finished(),
            "a third run got a thread with two slots"
        );
        let first = release.remove(0);
        let _ = first.send(());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !running[2].is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the third run takes the freed slot");
        for tx in release {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod certificate_tests {
    use super::*;

    #[test]
    fn certificate_state_warns_thirty_days_ahead_and_says_expired_after() {
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let at = |d: i64| CertificateStatus::at("node", Some(now + day * d32(d)), now);
        fn d32(d: i64) -> i32 {
            i32::try_from(d).expect("small")
        }
        assert_eq!(at(400).state, "ok");
        assert_eq!(at(400).days_left, Some(400));
        assert_eq!(at(-1).days_left, Some(-1));
        assert_eq!(at(31).state, "ok");
        assert_eq!(at(29).state, "expiring");
        assert_eq!(at(-1).state, "expired");
        assert!(at(-1).days_left.expect("days") < 0);
        assert_eq!(CertificateStatus::at("ca", None, now).state, "unreadable");
    }
}
