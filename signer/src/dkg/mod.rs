//! Key ceremonies (distributed key generation) across the nodes.
//!
//! Flow (see `docs` in each file):
//!
//! 1. [`start`]: an operator calls `POST /api/v1/dkg/start` on any node. That node
//!    validates the request, checks that every participant is live (etcd registration)
//!    and connected (QUIC), takes the etcd lock `dkg-start` (its fencing token is
//!    recorded with the ceremony), and announces the session to every participant in a
//!    [`wire::CEREMONY_ANNOUNCE`] frame over QUIC. The announcement is authenticated by
//!    the mTLS certificate of the connection (the receiver checks that the announced
//!    coordinator is the authenticated sender); etcd only serves liveness, the lock and
//!    the barrier, never as a source of truth for the ceremony parameters.
//! 2. [`session`]: every participant records the ceremony (`pending` → `running`),
//!    waits at the etcd barrier `dkg-<id>`, then runs the keygen off the async workers
//!    with protocol frames routed by [`Dkg`] (sender = index of its mTLS identity).
//! 3. Completion: each node seals its share in the HSM/TPM, stores it not usable, and
//!    sends the public key to every other participant in a [`wire::CEREMONY_CONFIRM`]
//!    frame over mTLS-authenticated QUIC (the sender's identity is the certificate, so
//!    no extra signature is needed). Only when every participant confirmed the same key
//!    does the node mark the ceremony `completed` and the share usable, in one database
//!    transaction.
//! 4. [`keys`]: at unseal, every usable share is opened and validated again (reload);
//!    the watch-only descriptors come from the loaded shares.

pub mod keys;
pub mod material;
pub mod primes;
pub mod reshare;
pub mod reshare_outcome;
pub mod session;
pub mod start;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::infra::Infra;
use crate::p2p::MessageKind;
use crate::router::ServiceRx;

/// Dropped frames of peers (logged throttled).
static DROPPED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Overall bound of one ceremony on a participant (barrier, keygen, confirmations).
pub const CEREMONY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the wait at the start barrier.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(15);

/// Which DKG a ceremony runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkgProtocol {
    /// CGGMP24 threshold ECDSA (P2WPKH keys).
    Cggmp24,
    /// FROST, Bitcoin ciphersuite (P2TR keys).
    Frost,
    /// CGGMP24 aux info (Paillier keys and proofs) for a node set; every ECDSA key of
    /// the same ordered node set uses it.
    #[serde(rename = "aux_info")]
    AuxInfo,
}

impl DkgProtocol {
    /// Name as stored in `dkg_ceremonies.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            DkgProtocol::Cggmp24 => "cggmp24",
            DkgProtocol::Frost => "frost",
            DkgProtocol::AuxInfo => "aux_info",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cggmp24" => Some(DkgProtocol::Cggmp24),
            "frost" => Some(DkgProtocol::Frost),
            "aux_info" => Some(DkgProtocol::AuxInfo),
            _ => None,
        }
    }

    /// Key type of the result: `ecdsa` or `taproot` (`aux` for aux info, not a key).
    pub fn key_type(self) -> &'static str {
        match self {
            DkgProtocol::Cggmp24 => "ecdsa",
            DkgProtocol::Frost => "taproot",
            DkgProtocol::AuxInfo => "aux",
        }
    }

    /// How the wallet spends a key of this protocol (`None` for aux info).
    pub fn key_kind(self) -> Option<wallet::KeyKind> {
        match self {
            DkgProtocol::Cggmp24 => Some(wallet::KeyKind::Ecdsa),
            DkgProtocol::Frost => Some(wallet::KeyKind::Taproot),
            DkgProtocol::AuxInfo => None,
        }
    }

    /// Frame kind of the protocol messages.
    pub fn message_kind(self) -> MessageKind {
        match self {
            DkgProtocol::Cggmp24 => MessageKind::KEYGEN,
            DkgProtocol::Frost => MessageKind::FROST_KEYGEN,
            DkgProtocol::AuxInfo => MessageKind::AUX_INFO,
        }
    }

    /// Protocol label for execution ids and errors.
    pub fn protocol_kind(self) -> signer_protocol::ProtocolKind {
        match self {
            DkgProtocol::Cggmp24 => signer_protocol::ProtocolKind::EcdsaKeygen,
            DkgProtocol::Frost => signer_protocol::ProtocolKind::FrostKeygen,
            DkgProtocol::AuxInfo => signer_protocol::ProtocolKind::EcdsaAuxInfo,
        }
    }

    /// Custody record kind of the share.
    pub fn record_kind(self) -> hsm::RecordKind {
        match self {
            DkgProtocol::Cggmp24 => hsm::RecordKind::KeyShare,
            DkgProtocol::Frost => hsm::RecordKind::FrostKeyShare,
            DkgProtocol::AuxInfo => hsm::RecordKind::AuxInfo,
        }
    }

    /// `(barrier timeout, overall timeout)` of one ceremony on a participant. Aux info
    /// takes tens of seconds of CPU per party and may wait for a prime set.
    pub fn timeouts(self, aux: &crate::config::AuxConfig) -> (Duration, Duration) {
        match self {
            DkgProtocol::Cggmp24 | DkgProtocol::Frost => (BARRIER_TIMEOUT, CEREMONY_TIMEOUT),
            DkgProtocol::AuxInfo => {
                let total = Duration::from_secs(aux.ceremony_timeout_secs.max(30));
                (total, total)
            }
        }
    }
}

/// Parameters of a ceremony, as announced by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonySpec {
    /// Session id (fresh per attempt).
    pub id: Uuid,
    /// Protocol.
    pub protocol: DkgProtocol,
    /// Threshold t.
    pub threshold: u16,
    /// Participants; position = run index.
    pub participants: Vec<String>,
    /// Node that announced it.
    pub coordinator: String,
    /// Fencing token of the coordinator's `dkg-start` lock.
    pub fencing_token: i64,
}

impl CeremonySpec {
    /// Key id of the resulting key (the ceremony id).
    pub fn key_id(&self) -> String {
        self.id.to_string()
    }

    /// Execution id every participant derives the same way.
    pub fn execution_id(&self) -> signer_protocol::ExecutionId {
        signer_protocol::ExecutionId::derive(
            self.id.as_bytes(),
            self.protocol.protocol_kind(),
            self.threshold,
            &self.participants,
            self.key_id().as_bytes(),
        )
    }

    /// Checks the parameters against the cluster's node ids: `2 <= t <= n`,
    /// participants known and unique.
    pub fn validate(&self, known: &[String]) -> Result<(), DkgError> {
        validate_params(self.threshold, &self.participants, known)
    }
}

/// Checks `2 <= t <= n` and that the participants are known and unique.
pub fn validate_params(t: u16, participants: &[String], known: &[String]) -> Result<(), DkgError> {
    let n = participants.len();
    if n < 2 {
        return Err(DkgError::InvalidParticipants(format!(
            "a threshold key needs at least 2 participants, got {n}"
        )));
    }
    for (i, p) in participants.iter().enumerate() {
        if !known.contains(p) {
            return Err(DkgError::InvalidParticipants(format!(
                "unknown node {:?}",
                p.chars().take(64).collect::<String>()
            )));
        }
        if participants[..i].contains(p) {
            return Err(DkgError::InvalidParticipants(format!(
                "node {p} is listed twice"
            )));
        }
    }
    if t < 2 || usize::from(t) > n {
        return Err(DkgError::InvalidThreshold(format!(
            "need 2 <= threshold <= {n} participants, got {t}"
        )));
    }
    Ok(())
}

/// Errors of a key ceremony.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkgError {
    /// Threshold out of range.
    #[error("invalid threshold: {0}")]
    InvalidThreshold(String),
    /// Participant list not acceptable.
    #[error("invalid participants: {0}")]
    InvalidParticipants(String),
    /// Participants not live or not connected.
    #[error("participants unavailable: {}", .0.join(", "))]
    ParticipantsUnavailable(Vec<String>),
    /// This node's custody is sealed.
    #[error("custody is sealed: key ceremonies are refused")]
    Sealed,
    /// etcd is not reachable from this node.
    #[error("etcd unavailable: {0}")]
    EtcdUnavailable(String),
    /// Coordination (lock, barrier) failed.
    #[error("coordination: {0}")]
    Coord(#[from] crate::coord::CoordError),
    /// Announcing to a participant failed.
    #[error("announcing to {peer} failed: {reason}")]
    Announce {
        /// The participant.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The protocol failed; `culprits` are node ids to blame.
    #[error("protocol failed: {reason}")]
    Protocol {
        /// Error text (secret-free).
        reason: String,
        /// Blamed nodes.
        culprits: Vec<String>,
    },
    /// Participants confirmed different public keys.
    #[error("public key mismatch: {node} confirmed {theirs}, this node has {ours}")]
    KeyMismatch {
        /// The node whose confirmation differs.
        node: String,
        /// Its key (hex).
        theirs: String,
        /// Ours (hex).
        ours: String,
    },
    /// The ceremony did not finish in time.
    #[error("timed out after {secs} s while {stage}")]
    Timeout {
        /// Seconds.
        secs: u64,
        /// What was awaited.
        stage: String,
    },
    /// Sealing or opening a share failed.
    #[error("custody: {0}")]
    Custody(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// This node holds no usable share of the key.
    #[error("key {0} not found on this node")]
    UnknownKey(String),
    /// A reshare/refresh proposal did not get a quorum of approving votes.
    #[error("not approved: {approvals} approvals, {required} required; rejections: {}", .rejections.join("; "))]
    NotApproved {
        /// Approving votes received.
        approvals: usize,
        /// Approvals required (the key's threshold).
        required: usize,
        /// `node: reasons` of every rejection.
        rejections: Vec<String>,
    },
    /// Internal channel closed (node shutting down).
    #[error("ceremony aborted: {0}")]
    Aborted(String),
}

/// A key loaded (unsealed and validated) on this node.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedKey {
    /// Master xpub (testnet/regtest version bytes), when the key is HD.
    pub xpub: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    loaded: HashMap<String, LoadedKey>,
}

/// The keys loaded in memory and the prime pool.
#[derive(Debug, Default)]
pub struct Dkg {
    inner: Mutex<Inner>,
    /// Pregenerated safe primes for aux info.
    pub primes: primes::PrimePool,
}

impl Dkg {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a loaded key.
    pub fn set_loaded(&self, key_id: &str, key: LoadedKey) {
        self.lock().loaded.insert(key_id.to_owned(), key);
    }

    /// A loaded key, if any.
    pub fn loaded(&self, key_id: &str) -> Option<LoadedKey> {
        self.lock().loaded.get(key_id).cloned()
    }

    /// Forgets a loaded key (this node no longer holds a share of it).
    pub fn unload(&self, key_id: &str) {
        self.lock().loaded.remove(key_id);
    }

    /// Number of loaded keys.
    pub fn loaded_count(&self) -> usize {
        self.lock().loaded.len()
    }
}

/// What the key-ceremony service works with: the shared infrastructure, the keys
/// loaded on this node and their opened signing material. Services above it get it
/// through their own context.
#[derive(Debug)]
pub struct DkgCtx {
    infra: Arc<Infra>,
    /// Keys loaded in memory and the prime pool.
    pub dkg: Dkg,
    /// Opened signing material (key shares with aux info).
    pub signing_material: material::MaterialCache,
    /// Votes awaited on reshare proposals this node coordinates.
    pub reshare_votes: reshare::Waiters,
    /// Outcome resolvers of this node's `uncertain` reshares.
    pub reshare_outcomes: reshare_outcome::Resolvers,
}

impl DkgCtx {
    /// The service's context over `infra`.
    pub fn new(infra: Arc<Infra>) -> Self {
        DkgCtx {
            infra,
            dkg: Dkg::default(),
            signing_material: material::MaterialCache::default(),
            reshare_votes: reshare::Waiters::default(),
            reshare_outcomes: reshare_outcome::Resolvers::default(),
        }
    }

    /// The shared infrastructure.
    pub fn infra(&self) -> &Arc<Infra> {
        &self.infra
    }
}

impl std::ops::Deref for DkgCtx {
    type Target = Infra;

    fn deref(&self) -> &Infra {
        &self.infra
    }
}

/// The kinds this service owns: ceremony announcements.
pub const KINDS: &[MessageKind] = &[
    MessageKind::CEREMONY_ANNOUNCE,
    MessageKind::RESHARE_PROPOSE,
    MessageKind::RESHARE_VOTE,
    MessageKind::RESHARE_ANNOUNCE,
    MessageKind::RESHARE_OUTCOME_QUERY,
    MessageKind::RESHARE_OUTCOME_ANSWER,
];

/// Handles ceremony announcements routed to this service until the router stops.
pub async fn serve(node: Arc<DkgCtx>, mut rx: ServiceRx) {
    while let Some(inbound) = rx.recv().await {
        if matches!(
            inbound.frame.kind,
            MessageKind::RESHARE_OUTCOME_QUERY | MessageKind::RESHARE_OUTCOME_ANSWER
        ) {
            reshare_outcome::handle(&node, inbound);
            continue;
        }
        if inbound.frame.kind != MessageKind::CEREMONY_ANNOUNCE {
            reshare::handle(&node, inbound);
            continue;
        }
        match wire::decode_announce(&inbound.frame.payload) {
            Ok(spec) if spec.coordinator == inbound.from => {
                tokio::spawn(session::participate(node.clone(), spec));
            }
            Ok(spec) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped,
                        peer = %inbound.from,
                        claimed = %spec.coordinator,
                        "ceremony announce whose coordinator is not its sender; dropped"
                    )
                }
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %inbound.from, error = %e, "malformed ceremony announce; dropped")
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn params_need_two_to_n_and_known_unique_nodes() {
        let known = ids(&["node-1", "node-2", "node-3"]);
        assert!(validate_params(2, &known, &known).is_ok());
        assert!(matches!(
            validate_params(1, &known, &known),
            Err(DkgError::InvalidThreshold(_))
        ));
        assert!(matches!(
            validate_params(4, &known, &known),
            Err(DkgError::InvalidThreshold(_))
        ));
        assert!(matches!(
            validate_params(2, &ids(&["node-1", "node-1"]), &known),
            Err(DkgError::InvalidParticipants(_))
        ));
        assert!(matches!(
            validate_params(2, &ids(&["node-1", "node-9"]), &known),
            Err(DkgError::InvalidParticipants(_))
        ));
    }
}
