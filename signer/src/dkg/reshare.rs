//! Key lifecycle: reshare a key to a new node set and threshold, or refresh it (same
//! set and threshold), keeping the public key, the chain code and every address.
//! The protocol is `signer_protocol::reshare` (docs/RESHARING.md); this module is the
//! node's part.
//!
//! 1. **Proposal and vote.** [`start`] (the node that received
//!    `POST /api/v1/keys/{id}/reshare`) opens its share of the key, picks the dealer set
//!    (exactly the old threshold t of live old holders; live nodes that leave deal
//!    first, so they take part and delete their share), and sends the proposal
//!    ([`ReshareSpec`], JSON) in a [`RESHARE_PROPOSE`] frame to every old and new holder.
//!    Each node checks it (its own share of the key must be the proposal's old sharing:
//!    same ceremony, threshold, participants and public key info) and its
//!    `[lifecycle] approve_reshare` setting, and answers with a signed vote
//!    ([`vote::SignedVote`], the same machinery as payments) in a [`RESHARE_VOTE`] frame.
//!    The vote's subject is the proposal: transaction id = session id, round 1, and the
//!    proposal digest in place of txid, sighash and policy hash (domain-separated, so a
//!    reshare vote can never approve a payment). Without at least t approving votes the
//!    reshare does not start (audited `key.reshare.rejected`, API 409 `not_approved`).
//! 2. **Announcement.** The coordinator sends the proposal and the approving votes
//!    ([`RESHARE_ANNOUNCE`]) to the run's participants. Each one verifies the quorum
//!    certificate with its own pinned vote keys, records the reshare and the votes
//!    (`key_reshares`, audited `key.reshare.approved` on every node) and joins.
//! 3. **Run.** After the etcd barrier, `reshare::run` over the session router
//!    ([`MessageKind::RESHARE`] frames, delivery bounded by `reshare::delivery_config`).
//! 4. **Pending share, confirmation, switch.** A receiver seals its new share in custody
//!    into a `key_shares` row with `usable = false` (pending), then every participant
//!    sends its confirmation value to all others; only when all of them confirmed the
//!    same value does each node switch in one database transaction
//!    ([`crate::store::Store::switch_reshare`]): new share usable, old share rows
//!    deleted (audited `key.share.deleted` with key id and session), presignatures of
//!    the key deleted, ceremony completed. A removed dealer deletes its share the same
//!    way. The pending share and the confirmation are stored in one transaction; a
//!    failure before it leaves nothing, a failure after it makes the reshare
//!    `uncertain` (pending share kept, old one active), resolved with the other
//!    participants by [`super::reshare_outcome`]; a node that restarts fails its
//!    pending reshares the same way and resumes the resolution.
//!    ECDSA: a refresh keeps the set's aux info; a new set needs aux info, which the
//!    coordinator starts after its switch (signing waits for it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hsm::Aad;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use signer_protocol::ecdsa::EcdsaIncompleteShare;
use signer_protocol::frost::FrostKeyShare;
use signer_protocol::reshare::{
    self, KeyKind, OldShare, Participant, PublicKeyInfo, ReshareMsg, ReshareParty, ReshareSetup,
};
use signer_protocol::{channel_party, RawOutgoing};
use tokio::sync::mpsc;
use uuid::Uuid;
use vote::{QuorumCertificate, SignedVote, VoteBody, VoteDecision, VoteKeyBook, VoteSubject};

use super::session::known_nodes;
use super::{DkgCtx, DkgError, DkgProtocol, LoadedKey};
use crate::audit::AuditEntry;
use crate::p2p::{Frame, Inbound, MessageKind};
use crate::session::SessionQueues;
use crate::store::dkg::{NewCeremony, ShareRow};
use crate::store::reshare::NewReshare;

/// Proposal frame.
pub const RESHARE_PROPOSE: MessageKind = MessageKind::RESHARE_PROPOSE;
/// Vote frame.
pub const RESHARE_VOTE: MessageKind = MessageKind::RESHARE_VOTE;
/// Announcement frame.
pub const RESHARE_ANNOUNCE: MessageKind = MessageKind::RESHARE_ANNOUNCE;
/// Largest accepted proposal or announcement.
pub const MAX_RESHARE_FRAME: usize = 256 * 1024;
/// How long the coordinator waits for votes.
pub const VOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an approval is valid (the run must start before).
pub const APPROVAL_VALIDITY: Duration = Duration::from_secs(120);
/// Overall bound of one reshare on a participant (barrier, run, confirmations).
pub const RESHARE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the wait at the start barrier.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a run, once the protocol ended, waits for its last outgoing messages.
const PUMP_DRAIN: Duration = Duration::from_secs(15);
/// Reason of the (never counted) vote of a new participant that holds no share yet.
pub const NEW_PARTICIPANT: &str = "new_participant_without_share";
/// Reason code of a vote refused by `[lifecycle] approve_reshare = false`.
pub const REFUSED_BY_POLICY: &str = "lifecycle_refused_by_policy";

/// A reshare/refresh proposal: what the nodes vote on and, once approved, run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshareSpec {
    /// Session id of this attempt (a retry uses a new one).
    pub id: Uuid,
    /// The key.
    pub key_id: String,
    /// Protocol of the key (`cggmp24` or `frost`).
    pub protocol: DkgProtocol,
    /// Ceremony of the shares being replaced.
    pub old_ceremony: Uuid,
    /// Old threshold.
    pub old_threshold: u16,
    /// Old holders in old-index order.
    pub old_participants: Vec<String>,
    /// The t old holders that deal.
    pub dealers: Vec<String>,
    /// New threshold.
    pub threshold: u16,
    /// New holders, sorted; position = new index.
    pub participants: Vec<String>,
    /// Public info of the old key (hex of `PublicKeyInfo::to_bytes`).
    pub old_key_info: String,
    /// Node that proposed it.
    pub coordinator: String,
    /// Approvals are valid until then (Unix seconds).
    pub deadline_unix: u64,
}

impl ReshareSpec {
    /// Whether this is a refresh (same set and threshold).
    pub fn is_refresh(&self) -> bool {
        self.threshold == self.old_threshold && self.participants == self.old_participants
    }

    /// Participants of the run in run-index order: the new holders, then the leaving
    /// dealers.
    pub fn run_participants(&self) -> Vec<String> {
        super::reshare_outcome::run_participants(
            &self.participants,
            &self.old_participants,
            &self.dealers,
        )
    }

    /// Every node that holds the key or will: the voters.
    pub fn involved(&self) -> Vec<String> {
        let mut v = self.old_participants.clone();
        for p in &self.participants {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
        v
    }

    /// SHA-256 of the proposal (domain-separated).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"signer/reshare-proposal/v1\0");
        h.update(serde_json::to_vec(self).unwrap_or_default());
        h.finalize().into()
    }

    /// The vote subject every node computes for this proposal.
    pub fn subject(&self) -> VoteSubject {
        let d = self.digest();
        let txid = {
            use bitcoin::hashes::Hash as _;
            let mut h = Sha256::new();
            h.update(b"signer/reshare-vote-txid/v1\0");
            h.update(d);
            bitcoin::Txid::from_byte_array(h.finalize().into())
        };
        VoteSubject {
            transaction_id: self.id,
            round_no: 1,
            txid,
            sighashes: vec![d],
            policy_hash: d,
        }
    }

    /// Structural checks against the cluster's node ids.
    pub fn validate(&self, known: &[String]) -> Result<(), DkgError> {
        if self.protocol == DkgProtocol::AuxInfo {
            return Err(DkgError::InvalidParticipants(
                "aux info is not a key".to_owned(),
            ));
        }
        super::validate_params(self.threshold, &self.participants, known)?;
        let mut sorted = self.participants.clone();
        sorted.sort();
        if sorted != self.participants {
            return Err(DkgError::InvalidParticipants(
                "participants must be sorted".to_owned(),
            ));
        }
        if usize::from(self.old_threshold) != self.dealers.len()
            || self
                .dealers
                .iter()
                .any(|d| !self.old_participants.contains(d))
        {
            return Err(DkgError::InvalidParticipants(
                "the dealers must be exactly t old holders".to_owned(),
            ));
        }
        Ok(())
    }

    fn kind(&self) -> KeyKind {
        match self.protocol {
            DkgProtocol::Cggmp24 => KeyKind::Ecdsa,
            _ => KeyKind::Frost,
        }
    }
}

/// Frame of an approved reshare.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Announce {
    spec: ReshareSpec,
    /// Approving votes, hex of `SignedVote::encode`.
    votes: Vec<String>,
}

/// Vote waiters of proposals this node coordinates.
#[derive(Debug, Default)]
pub struct Waiters(Mutex<HashMap<Uuid, VoteTx>>);

/// Where the votes `(sender, encoded vote)` of one proposal go.
type VoteTx = mpsc::Sender<(String, Vec<u8>)>;

impl Waiters {
    fn insert(&self, id: Uuid) -> mpsc::Receiver<(String, Vec<u8>)> {
        let (tx, rx) = mpsc::channel(64);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        rx
    }

    fn remove(&self, id: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn deliver(&self, id: Uuid, from: String, vote: Vec<u8>) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send((from, vote));
        }
    }
}

/// A started (approved and announced) reshare.
#[derive(Debug, Clone)]
pub struct Started {
    /// The proposal.
    pub spec: ReshareSpec,
    /// Approving voters.
    pub approvers: Vec<String>,
    /// Participants the announcement did not reach.
    pub announce_failed: Vec<String>,
}

/// A share of this node, opened.
enum Opened {
    Ecdsa(EcdsaIncompleteShare),
    Frost(FrostKeyShare),
}

impl Opened {
    fn key_info(&self) -> Result<PublicKeyInfo, DkgError> {
        match self {
            Opened::Ecdsa(s) => PublicKeyInfo::from_ecdsa_incomplete(s),
            Opened::Frost(s) => PublicKeyInfo::from_frost(s),
        }
        .map_err(|e| DkgError::Custody(e.to_string()))
    }

    fn old_share(&self) -> OldShare<'_> {
        match self {
            Opened::Ecdsa(s) => OldShare::EcdsaIncomplete(s),
            Opened::Frost(s) => OldShare::Frost(s),
        }
    }
}

async fn own_share(node: &DkgCtx, key_id: &str) -> Result<Option<ShareRow>, DkgError> {
    Ok(node
        .store
        .usable_shares(&node.cfg.node_id)
        .await?
        .into_iter()
        .find(|r| r.key_id == key_id))
}

async fn open(node: &DkgCtx, row: &ShareRow) -> Result<Opened, DkgError> {
    let unsealed = node.unsealed().ok_or(DkgError::Sealed)?;
    let protocol = DkgProtocol::parse(&row.protocol)
        .filter(|p| *p != DkgProtocol::AuxInfo)
        .ok_or_else(|| DkgError::Custody(format!("unknown protocol {}", row.protocol)))?;
    let aad = Aad::new(
        node.cfg.node_id.clone(),
        row.key_id.clone(),
        protocol.record_kind(),
    )
    .map_err(|e| DkgError::Custody(e.to_string()))?;
    let envelope = row.envelope.clone();
    let custody = unsealed.custody.clone();
    tokio::task::spawn_blocking(move || -> Result<Opened, DkgError> {
        let secret = custody
            .open_record(&aad, &envelope)
            .map_err(|e| DkgError::Custody(e.to_string()))?;
        match protocol {
            DkgProtocol::Cggmp24 => EcdsaIncompleteShare::from_bytes(secret.expose_secret())
                .map(Opened::Ecdsa)
                .map_err(|e| DkgError::Custody(e.to_string())),
            _ => FrostKeyShare::from_bytes(secret.expose_secret())
                .map(Opened::Frost)
                .map_err(|e| DkgError::Custody(e.to_string())),
        }
    })
    .await
    .map_err(|e| DkgError::Custody(format!("open task: {e}")))?
}

/// Checks the proposal against this node's own share of the key, if it holds one.
/// `Ok(None)`: it holds no share of the key.
async fn check_own_share(node: &DkgCtx, spec: &ReshareSpec) -> Result<Option<Opened>, String> {
    let row = own_share(node, &spec.key_id)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.ceremony_id != spec.old_ceremony
        || row.participants != spec.old_participants
        || i32::from(spec.old_threshold) != row.threshold
        || DkgProtocol::parse(&row.protocol) != Some(spec.protocol)
    {
        return Err("old_sharing_mismatch".to_owned());
    }
    let opened = open(node, &row).await.map_err(|e| e.to_string())?;
    let info = opened
        .key_info()
        .and_then(|i| i.to_bytes().map_err(|e| DkgError::Custody(e.to_string())))
        .map_err(|e| e.to_string())?;
    if hex::encode(info) != spec.old_key_info {
        return Err("old_key_info_mismatch".to_owned());
    }
    Ok(Some(opened))
}

/// This node's decision on a proposal, with reasons.
async fn evaluate(node: &DkgCtx, spec: &ReshareSpec) -> (VoteDecision, Vec<String>) {
    let mut reasons = Vec::new();
    if spec.validate(&known_nodes(node)).is_err() {
        reasons.push("invalid_proposal".to_owned());
    }
    match check_own_share(node, spec).await {
        Ok(Some(_)) => {}
        // A node joining the key (e.g. added with `cluster add-node`) only receives;
        // its vote never counts (approvals are counted from old holders only).
        Ok(None)
            if spec.participants.contains(&node.cfg.node_id)
                && !spec.old_participants.contains(&node.cfg.node_id) =>
        {
            reasons.push(NEW_PARTICIPANT.to_owned())
        }
        Ok(None) => reasons.push("key_not_held".to_owned()),
        Err(r) => reasons.push(r.chars().take(64).collect()),
    }
    if unix_now() > spec.deadline_unix {
        reasons.push("proposal_expired".to_owned());
    }
    if !node.cfg.lifecycle.approve_reshare {
        reasons.push(REFUSED_BY_POLICY.to_owned());
    }
    let decision = if reasons.is_empty() {
        VoteDecision::Approve
    } else {
        VoteDecision::Reject
    };
    (decision, reasons)
}

fn sign_vote(
    node: &DkgCtx,
    spec: &ReshareSpec,
    decision: VoteDecision,
    reasons: Vec<String>,
) -> Result<SignedVote, DkgError> {
    let unsealed = node.unsealed().ok_or(DkgError::Sealed)?;
    let s = spec.subject();
    let body = VoteBody {
        transaction_id: s.transaction_id,
        round_no: s.round_no,
        txid: s.txid,
        sighashes: s.sighashes,
        policy_hash: s.policy_hash,
        decision,
        reasons,
        voter: node.cfg.node_id.clone(),
        deadline_unix: spec.deadline_unix,
    };
    SignedVote::sign(body, &unsealed.vote_key).map_err(|e| DkgError::Custody(e.to_string()))
}

/// The pinned vote keys (this node's own from its unsealed key).
pub(crate) async fn pinned_vote_book(node: &DkgCtx) -> Result<VoteKeyBook, DkgError> {
    vote_book(node).await
}

async fn vote_book(node: &DkgCtx) -> Result<VoteKeyBook, DkgError> {
    use vote::VoteSigner as _;
    let mut pins = node.store.vote_keys().await?;
    if let Some(u) = node.unsealed() {
        pins.retain(|(n, _)| *n != node.cfg.node_id);
        pins.push((node.cfg.node_id.clone(), u.vote_key.vote_public_key()));
    }
    Ok(VoteKeyBook::from_pinned(pins))
}

/// The votes cast by old holders of the key (the only ones a quorum counts).
fn old_holder_votes(
    spec: &ReshareSpec,
    votes: impl IntoIterator<Item = SignedVote>,
) -> Vec<SignedVote> {
    votes
        .into_iter()
        .filter(|v| spec.old_participants.iter().any(|p| p == v.voter()))
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Proposes a reshare (or, with `participants` and `threshold` omitted or equal to
/// the key's, a refresh) of `key_id`, collects the votes and, with a quorum of
/// approvals, announces and joins it.
pub async fn start(
    node: &Arc<DkgCtx>,
    actor: &str,
    key_id: &str,
    participants: Option<Vec<String>>,
    threshold: Option<i64>,
) -> Result<Started, DkgError> {
    let me = node.cfg.node_id.clone();
    if node.unsealed().is_none() {
        return Err(DkgError::Sealed);
    }
    let row = own_share(node, key_id)
        .await?
        .ok_or_else(|| DkgError::UnknownKey(key_id.chars().take(64).collect()))?;
    let protocol = DkgProtocol::parse(&row.protocol)
        .filter(|p| *p != DkgProtocol::AuxInfo)
        .ok_or_else(|| DkgError::UnknownKey(key_id.to_owned()))?;
    let old_t = u16::try_from(row.threshold)
        .map_err(|_| DkgError::Custody("stored threshold out of range".to_owned()))?;
    let mut new_set = match participants {
        Some(p) if p.len() > super::start::MAX_PARTICIPANTS => {
            return Err(DkgError::InvalidParticipants(format!(
                "at most {} participants",
                super::start::MAX_PARTICIPANTS
            )))
        }
        Some(p) => p,
        None => row.participants.clone(),
    };
    new_set.sort();
    let t = match threshold {
        None => old_t,
        Some(t) => u16::try_from(t)
            .map_err(|_| DkgError::InvalidThreshold(format!("threshold {t} is out of range")))?,
    };
    super::validate_params(t, &new_set, &known_nodes(node))?;

    let snap = node.cluster_snapshot();
    if !snap.etcd_ok {
        return Err(DkgError::EtcdUnavailable("no current etcd view".to_owned()));
    }
    let connected = node.net.p2p.connected_peers();
    let up = |p: &String| *p == me || (snap.live.contains_key(p) && connected.contains(p));
    let missing: Vec<String> = new_set.iter().filter(|p| !up(p)).cloned().collect();
    if !missing.is_empty() {
        return Err(DkgError::ParticipantsUnavailable(missing));
    }
    // Dealers: live leaving holders first (so they delete their share), then staying.
    let mut dealers: Vec<String> = row
        .participants
        .iter()
        .filter(|p| !new_set.contains(p) && up(p))
        .cloned()
        .collect();
    if dealers.len() > usize::from(old_t) {
        return Err(DkgError::InvalidParticipants(format!(
            "{} live nodes leave; one reshare removes at most the old threshold {old_t} of live nodes",
            dealers.len()
        )));
    }
    for p in row
        .participants
        .iter()
        .filter(|p| new_set.contains(p) && up(p))
    {
        if dealers.len() < usize::from(old_t) {
            dealers.push(p.clone());
        }
    }
    if dealers.len() < usize::from(old_t) {
        return Err(DkgError::ParticipantsUnavailable(
            row.participants
                .iter()
                .filter(|p| !up(p))
                .cloned()
                .collect(),
        ));
    }
    dealers.sort_by_key(|d| row.participants.iter().position(|p| p == d));
    let opened = open(node, &row).await?;
    let info = opened
        .key_info()?
        .to_bytes()
        .map_err(|e| DkgError::Custody(e.to_string()))?;
    drop(opened);
    let spec = ReshareSpec {
        id: Uuid::new_v4(),
        key_id: key_id.to_owned(),
        protocol,
        old_ceremony: row.ceremony_id,
        old_threshold: old_t,
        old_participants: row.participants.clone(),
        dealers,
        threshold: t,
        participants: new_set,
        old_key_info: hex::encode(info),
        coordinator: me.clone(),
        deadline_unix: unix_now() + APPROVAL_VALIDITY.as_secs(),
    };
    spec.validate(&known_nodes(node))?;
    let action = if spec.is_refresh() {
        "key.refresh.propose"
    } else {
        "key.reshare.propose"
    };
    node.store
        .audit(
            &me,
            AuditEntry::new(actor, action)
                .subject(key_id.to_owned())
                .details(serde_json::json!({
                    "session": spec.id.to_string(),
                    "threshold": spec.threshold,
                    "participants": spec.participants,
                    "old_threshold": spec.old_threshold,
                    "old_participants": spec.old_participants,
                    "dealers": spec.dealers,
                })),
        )
        .await?;

    // Vote.
    let payload = serde_json::to_vec(&spec).map_err(|e| DkgError::Aborted(e.to_string()))?;
    let mut rx = node.reshare_votes.insert(spec.id);
    let voters = spec.involved();
    let frame = Frame::new(spec.id, RESHARE_PROPOSE, payload);
    for p in voters.iter().filter(|p| **p != me) {
        let f = frame.clone();
        let node = node.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(super::start::ANNOUNCE_TIMEOUT, node.net.p2p.send(&p, f))
                .await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::warn!(peer = %p, "reshare proposal not delivered");
            }
        });
    }
    let (d, reasons) = evaluate(node, &spec).await;
    let mut votes: BTreeMap<String, SignedVote> = BTreeMap::new();
    votes.insert(me.clone(), sign_vote(node, &spec, d, reasons)?);
    let book = vote_book(node).await?;
    let subject = spec.subject();
    let required = usize::from(spec.old_threshold);
    let deadline = tokio::time::Instant::now() + VOTE_TIMEOUT;
    loop {
        let approvals = votes
            .values()
            .filter(|v| v.body().decision == VoteDecision::Approve)
            .count();
        if approvals >= required || votes.len() >= voters.len() {
            break;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((from, bytes))) => {
                let Ok(v) = SignedVote::decode(&bytes) else {
                    tracing::warn!(peer = %from, "malformed reshare vote; ignored");
                    continue;
                };
                match vote::check_vote(&v, &from, &subject, &book) {
                    Ok(()) => {
                        votes.entry(from).or_insert(v);
                    }
                    Err(e) => tracing::warn!(peer = %from, error = %e, "reshare vote refused"),
                }
            }
            _ => break,
        }
    }
    node.reshare_votes.remove(spec.id);
    // Only the old holders' approvals count: a node that holds no share (a newly
    // added one) cannot help approve giving itself one.
    let all = old_holder_votes(&spec, votes.values().cloned());
    let qc = match QuorumCertificate::verify(&all, &book, required, &subject) {
        Ok(qc) => qc,
        Err(e) => {
            let rejections: BTreeMap<String, Vec<String>> = votes
                .iter()
                .filter(|(_, v)| v.body().decision == VoteDecision::Reject)
                .map(|(n, v)| (n.clone(), v.body().reasons.clone()))
                .collect();
            let approvals = votes.len() - rejections.len();
            node.store
                .audit(
                    &me,
                    AuditEntry::new(actor, "key.reshare.rejected")
                        .subject(key_id.to_owned())
                        .details(serde_json::json!({
                            "session": spec.id.to_string(),
                            "approvals": approvals,
                            "required": required,
                            "rejections": rejections,
                            "error": e.to_string(),
                        })),
                )
                .await?;
            return Err(DkgError::NotApproved {
                approvals,
                required,
                rejections: rejections
                    .into_iter()
                    .map(|(n, r)| format!("{n}: {}", r.join(",")))
                    .collect(),
            });
        }
    };
    let announce = Announce {
        spec: spec.clone(),
        votes: qc
            .approvals()
            .iter()
            .map(|v| hex::encode(v.encode()))
            .collect(),
    };
    let payload = serde_json::to_vec(&announce).map_err(|e| DkgError::Aborted(e.to_string()))?;
    let run = spec.run_participants();
    if run.contains(&me) {
        let node = node.clone();
        let a = announce.clone();
        tokio::spawn(async move { participate(node, a).await });
    }
    let frame = Frame::new(spec.id, RESHARE_ANNOUNCE, payload);
    let results = futures::future::join_all(run.iter().filter(|p| **p != me).map(|p| {
        let f = frame.clone();
        async move {
            let r =
                tokio::time::timeout(super::start::ANNOUNCE_TIMEOUT, node.net.p2p.send(p, f)).await;
            (p.clone(), matches!(r, Ok(Ok(()))))
        }
    }))
    .await;
    Ok(Started {
        spec,
        approvers: qc.approvers().to_vec(),
        announce_failed: results
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p)
            .collect(),
    })
}

/// Handles reshare frames of the dkg service.
pub fn handle(node: &Arc<DkgCtx>, inbound: Inbound) {
    let kind = inbound.frame.kind;
    if inbound.frame.payload.len() > MAX_RESHARE_FRAME {
        tracing::warn!(peer = %inbound.from, "oversized reshare frame; dropped");
        return;
    }
    if kind == RESHARE_VOTE {
        node.reshare_votes.deliver(
            inbound.frame.session,
            inbound.from,
            inbound.frame.payload.to_vec(),
        );
    } else if kind == RESHARE_PROPOSE {
        let Ok(spec) = serde_json::from_slice::<ReshareSpec>(&inbound.frame.payload) else {
            tracing::warn!(peer = %inbound.from, "malformed reshare proposal; dropped");
            return;
        };
        if spec.coordinator != inbound.from || spec.id != inbound.frame.session {
            tracing::warn!(peer = %inbound.from, "reshare proposal not from its coordinator; dropped");
            return;
        }
        let node = node.clone();
        tokio::spawn(async move {
            let (d, reasons) = evaluate(&node, &spec).await;
            tracing::info!(session = %spec.id, key = %spec.key_id, decision = %d, ?reasons, "voting on reshare proposal");
            match sign_vote(&node, &spec, d, reasons) {
                Ok(v) => {
                    let f = Frame::new(spec.id, RESHARE_VOTE, v.encode());
                    if let Err(e) = node.net.p2p.send(&spec.coordinator, f).await {
                        tracing::warn!(session = %spec.id, error = %e, "sending the reshare vote failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %spec.id, error = %e, "cannot sign the reshare vote")
                }
            }
        });
    } else if kind == RESHARE_ANNOUNCE {
        let Ok(a) = serde_json::from_slice::<Announce>(&inbound.frame.payload) else {
            tracing::warn!(peer = %inbound.from, "malformed reshare announcement; dropped");
            return;
        };
        if a.spec.coordinator != inbound.from || a.spec.id != inbound.frame.session {
            tracing::warn!(peer = %inbound.from, "reshare announcement not from its coordinator; dropped");
            return;
        }
        tokio::spawn(participate(node.clone(), a));
    }
}

/// Joins an approved reshare and runs it to the switch or to a failure.
async fn participate(node: Arc<DkgCtx>, a: Announce) {
    let spec = a.spec;
    let me = node.cfg.node_id.clone();
    if let Err(e) = spec.validate(&known_nodes(&node)) {
        tracing::warn!(session = %spec.id, error = %e, "invalid reshare announcement; ignored");
        return;
    }
    let run_set = spec.run_participants();
    let Some(index) = run_set.iter().position(|p| *p == me) else {
        tracing::warn!(session = %spec.id, "reshare announcement does not include this node; ignored");
        return;
    };
    // The quorum of approving votes, verified with this node's own pinned keys.
    let votes: Result<Vec<SignedVote>, String> = a
        .votes
        .iter()
        .map(|h| {
            hex::decode(h)
                .map_err(|e| e.to_string())
                .and_then(|b| SignedVote::decode(&b).map_err(|e| e.to_string()))
        })
        .collect();
    let book = match vote_book(&node).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(session = %spec.id, error = %e, "cannot read the vote keys");
            return;
        }
    };
    let qc = votes.and_then(|v| {
        let v = old_holder_votes(&spec, v);
        QuorumCertificate::verify(&v, &book, usize::from(spec.old_threshold), &spec.subject())
            .map_err(|e| e.to_string())
    });
    let qc = match qc {
        Ok(qc) if unix_now() <= spec.deadline_unix => qc,
        Ok(_) => {
            tracing::warn!(session = %spec.id, "reshare approval expired; not joining");
            return;
        }
        Err(e) => {
            tracing::warn!(session = %spec.id, error = %e, "reshare announced without a valid quorum of approvals; not joining");
            return;
        }
    };
    let eid_placeholder = {
        let mut h = Sha256::new();
        h.update(b"signer/reshare-ceremony/v1\0");
        h.update(spec.id.as_bytes());
        h.finalize().to_vec()
    };
    let new = NewCeremony {
        id: spec.id,
        protocol: spec.protocol.as_str(),
        threshold: spec.threshold,
        participants: &spec.participants,
        execution_id: &eid_placeholder,
        coordinator: &spec.coordinator,
        fencing_token: 0,
    };
    if let Err(e) = node.store.insert_ceremony(&new).await {
        tracing::warn!(session = %spec.id, error = %e, "cannot record the reshare (duplicate announce?)");
        return;
    }
    let votes_json: serde_json::Map<String, serde_json::Value> = qc
        .approvals()
        .iter()
        .map(|v| (v.voter().to_owned(), hex::encode(v.encode()).into()))
        .collect();
    let digest = spec.digest();
    let rec = NewReshare {
        id: spec.id,
        key_id: &spec.key_id,
        node_id: &me,
        old_ceremony_id: spec.old_ceremony,
        old_threshold: spec.old_threshold,
        old_participants: &spec.old_participants,
        new_threshold: spec.threshold,
        new_participants: &spec.participants,
        dealers: &spec.dealers,
        coordinator: &spec.coordinator,
        proposal_digest: &digest,
        votes: serde_json::Value::Object(votes_json),
    };
    if let Err(e) = node.store.insert_reshare(&rec).await {
        tracing::error!(session = %spec.id, error = %e, "cannot record the reshare");
        return;
    }
    if let Err(e) = node
        .store
        .audit(
            &me,
            AuditEntry::new(spec.coordinator.clone(), "key.reshare.approved")
                .subject(spec.key_id.clone())
                .details(serde_json::json!({
                    "session": spec.id.to_string(),
                    "refresh": spec.is_refresh(),
                    "approvers": qc.approvers(),
                    "threshold": spec.threshold,
                    "participants": spec.participants,
                    "dealers": spec.dealers,
                })),
        )
        .await
    {
        tracing::error!(session = %spec.id, error = %e, "cannot audit the reshare");
        let _ = node
            .store
            .reshare_failed(&me, spec.id, "audit failed")
            .await;
        return;
    }
    tracing::info!(session = %spec.id, key = %spec.key_id, index, n = run_set.len(), "joining reshare");
    let Some(queues) = node
        .sessions
        .register(spec.id, &run_set, MessageKind::RESHARE)
    else {
        let _ = node
            .store
            .reshare_failed(&me, spec.id, "session id already live")
            .await;
        return;
    };
    let bound = RESHARE_TIMEOUT + crate::fault::reshare_stall_before_confirm();
    let outcome =
        match tokio::time::timeout(bound, run(&node, &spec, &run_set, index, queues)).await {
            Ok(r) => r,
            Err(_) => {
                // Named, never blamed: who had not sent its messages of the first
                // round still open here, or had not confirmed.
                let absent = crate::session::absentees_by_schedule(
                    &node.sessions,
                    node.coord(),
                    spec.id,
                    &run_set,
                    &me,
                    &message_schedule(&spec, &run_set, &me),
                )
                .await;
                Err(DkgError::Timeout {
                    secs: RESHARE_TIMEOUT.as_secs(),
                    stage: crate::session::stalled_stage("running the reshare", &absent),
                })
            }
        };
    node.sessions.unregister(spec.id);
    match outcome {
        Ok(()) => {
            tracing::info!(session = %spec.id, key = %spec.key_id, "reshare committed");
            if spec.coordinator == me
                && spec.protocol == DkgProtocol::Cggmp24
                && spec.participants != spec.old_participants
            {
                tokio::spawn(aux_info_for_new_set(
                    node.clone(),
                    spec.id,
                    spec.participants.clone(),
                ));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(session = %spec.id, error = %reason, "reshare failed; the old share stays");
            match node.store.reshare_failed(&me, spec.id, &reason).await {
                Ok(true) => {
                    tracing::warn!(session = %spec.id, key = %spec.key_id,
                        "reshare uncertain (this node confirmed; another may have switched): asking the participants for the outcome");
                    tokio::spawn(super::reshare_outcome::resolve(node.clone(), spec.id));
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(session = %spec.id, error = %err, "cannot record the reshare failure");
                }
            }
            if let DkgError::Protocol { culprits, .. } = &e {
                for c in culprits {
                    let evidence = serde_json::json!({ "protocol": "reshare", "error": reason });
                    let session = spec.id.to_string();
                    if let Err(err) = node
                        .store
                        .record_violation(
                            c,
                            "reshare_protocol",
                            Some(&session),
                            &evidence,
                            &me,
                            &me,
                        )
                        .await
                    {
                        tracing::error!(session = %spec.id, culprit = %c, error = %err, "cannot record the violation");
                    }
                }
            }
        }
    }
}

/// Aux-info ceremonies the coordinator of a reshare onto a new ECDSA node set
/// starts at most before it leaves it to an operator.
const AUX_INFO_ATTEMPTS: u32 = 3;
/// Pause between two of them.
const AUX_INFO_RETRY_PAUSE: Duration = Duration::from_secs(15);

/// Coordinator, after switching an ECDSA key to a new node set: aux info for that set
/// (started, or reused when this node already holds it), started again when a
/// ceremony fails (a participant whose prime pool was empty may outlast the ceremony
/// bound generating its set; the set then waits in its pool for the next attempt),
/// at most [`AUX_INFO_ATTEMPTS`] times. Signing with the new shares answers
/// `AuxInfoMissing` until it completes.
async fn aux_info_for_new_set(node: Arc<DkgCtx>, session: Uuid, set: Vec<String>) {
    let me = node.cfg.node_id.clone();
    // A ceremony ends (completed or failed) within its bound plus the barrier.
    let ends_within = Duration::from_secs(node.cfg.aux.ceremony_timeout_secs)
        + BARRIER_TIMEOUT
        + Duration::from_secs(60);
    for attempt in 1..=AUX_INFO_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(AUX_INFO_RETRY_PAUSE).await;
        }
        let ceremony = match super::start::start_aux(&node, &me, Some(set.clone()), false).await {
            Ok(super::start::AuxStart::Reused { ceremony, .. }) => {
                tracing::info!(%session, %ceremony, "aux info for the new node set reused");
                return;
            }
            Ok(super::start::AuxStart::Started(s)) => s.spec.id,
            Err(e) => {
                tracing::warn!(%session, attempt, error = %e, "starting aux info for the new node set failed");
                continue;
            }
        };
        tracing::info!(%session, %ceremony, attempt, "aux info for the new node set started");
        let give_up = tokio::time::Instant::now() + ends_within;
        let state = loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match node.store.ceremony(ceremony).await {
                Ok(Some(row)) if row.state == "completed" || row.state == "failed" => {
                    break row.state
                }
                Ok(_) | Err(_) if tokio::time::Instant::now() < give_up => {}
                Ok(_) | Err(_) => break "unknown".to_owned(),
            }
        };
        if state == "completed" {
            tracing::info!(%session, %ceremony, "aux info for the new node set completed");
            return;
        }
        tracing::warn!(%session, %ceremony, attempt, state = %state, "aux info for the new node set did not complete");
    }
    tracing::error!(%session, attempts = AUX_INFO_ATTEMPTS,
        "no aux info for the new node set: start it with POST /api/v1/aux-info/start (signing with the new shares waits for it)");
}

/// The protocol messages `me` receives from each participant of `run_set` (run
/// order) by the end of round 1 and of round 2 of a reshare, cumulative: a dealer's
/// commitments (broadcast to every other participant) and, when `me` receives a new
/// share, its sub-share; then everyone's echo (broadcast). Nothing from `me` itself.
/// For naming who a stalled run waits for ([`crate::session::Router::behind_schedule`]).
fn message_schedule(spec: &ReshareSpec, run_set: &[String], me: &str) -> Vec<Vec<u32>> {
    let receiver = spec.participants.iter().any(|p| p == me);
    let round1: Vec<u32> = run_set
        .iter()
        .map(|p| {
            if p == me || !spec.dealers.contains(p) {
                0
            } else {
                1 + u32::from(receiver)
            }
        })
        .collect();
    let round2 = run_set
        .iter()
        .zip(&round1)
        .map(|(p, n)| if p == me { 0 } else { n + 1 })
        .collect();
    vec![round1, round2]
}

async fn run(
    node: &Arc<DkgCtx>,
    spec: &ReshareSpec,
    run_set: &[String],
    index: usize,
    queues: SessionQueues,
) -> Result<(), DkgError> {
    let me = node.cfg.node_id.clone();
    let unsealed = node.unsealed().ok_or(DkgError::Sealed)?;
    let coord = node
        .coord()
        .ok_or_else(|| DkgError::EtcdUnavailable("not connected".to_owned()))?;
    node.store.ceremony_running(spec.id).await?;
    // Old share: dealers deal from it; every holder checks the announced key info.
    let opened = match check_own_share(node, spec).await {
        Ok(o) => o,
        Err(r) => return Err(DkgError::Aborted(format!("own share: {r}"))),
    };
    let is_dealer = spec.dealers.contains(&me);
    if is_dealer && opened.is_none() {
        return Err(DkgError::Aborted(
            "dealer without a share of the key".to_owned(),
        ));
    }
    let info_bytes = hex::decode(&spec.old_key_info)
        .map_err(|_| DkgError::Aborted("old key info is not hex".to_owned()))?;
    let old_info = PublicKeyInfo::from_bytes(&info_bytes)
        .map_err(|e| DkgError::Aborted(format!("old key info: {e}")))?;
    let book = vote_book(node).await?;
    let mut parts = Vec::with_capacity(run_set.len());
    for p in run_set {
        let identity_key = *book
            .get(p)
            .ok_or_else(|| DkgError::Aborted(format!("no pinned vote key of {p}")))?;
        let dealer_index = if spec.dealers.contains(p) {
            spec.old_participants
                .iter()
                .position(|o| o == p)
                .and_then(|i| u16::try_from(i).ok())
        } else {
            None
        };
        let receiver_index = spec
            .participants
            .iter()
            .position(|o| o == p)
            .and_then(|i| u16::try_from(i).ok());
        parts.push(Participant {
            identity_key,
            dealer_index,
            receiver_index,
        });
    }
    let n_new = u16::try_from(spec.participants.len())
        .map_err(|_| DkgError::InvalidParticipants("too many participants".to_owned()))?;
    let setup = ReshareSetup::new(spec.kind(), old_info.clone(), spec.threshold, n_new, parts)
        .map_err(|e| DkgError::Aborted(format!("setup: {e}")))?;
    let eid = setup.execution_id(spec.id.as_bytes());
    let me_run = u16::try_from(index)
        .map_err(|_| DkgError::InvalidParticipants("index out of range".to_owned()))?;
    let state = ReshareParty::new(
        &eid,
        setup.clone(),
        me_run,
        if is_dealer {
            opened.as_ref().map(Opened::old_share)
        } else {
            None
        },
    )
    .map_err(|e| DkgError::Aborted(format!("reshare party: {e}")))?;
    let state = crate::fault::reshare_dealer(state, is_dealer, run_set);
    drop(opened);

    coord
        .barrier(&format!("reshare-{}", spec.id), run_set, BARRIER_TIMEOUT)
        .await?;
    let (out_tx, out_rx) = mpsc::channel::<RawOutgoing>(1024);
    let mut pump = tokio::spawn(crate::session::pump_outgoing(
        node.net.clone(),
        spec.id,
        run_set.to_vec(),
        MessageKind::RESHARE,
        "reshare",
        None,
        out_rx,
    ));
    let SessionQueues {
        protocol_rx,
        mut confirm_rx,
        ..
    } = queues;
    let cfg = reshare::delivery_config(me_run, setup.run_parties());
    let signer = unsealed.clone();
    let res = node
        .protocol_slots
        .run(signer_protocol::ProtocolKind::Reshare, move || {
            let party = channel_party::<ReshareMsg>(cfg, protocol_rx, out_tx);
            async move { Ok(reshare::run(party, state, &signer.vote_key).await) }
        })
        .await;
    // The last messages (this node's echo) may still be on their way to a peer
    // whose connection is being replaced: wait a while, not past the run's bound,
    // so the verdict (the culprits of a failed run) is never lost to a slow send.
    // The pump goes on delivering after that.
    match tokio::time::timeout(PUMP_DRAIN, &mut pump).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(session = %spec.id, error = %e, "outgoing pump failed"),
        Err(_) => {
            tracing::warn!(session = %spec.id, "outgoing reshare messages still being delivered; going on with the run's result")
        }
    }
    let output = match res {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(DkgError::Protocol {
                reason: e.to_string(),
                culprits: e
                    .culprits()
                    .into_iter()
                    .filter_map(|c| run_set.get(usize::from(c)).cloned())
                    .collect(),
            })
        }
        Err(e) => {
            return Err(DkgError::Protocol {
                reason: e.to_string(),
                culprits: Vec::new(),
            })
        }
    };
    let public_key = old_info.public_key().serialize().to_vec();
    if output.key_info().public_key() != old_info.public_key()
        || output.key_info().chain_code() != old_info.chain_code()
    {
        return Err(DkgError::Aborted(
            "the new sharing has another key".to_owned(),
        ));
    }
    let confirmation = output.confirmation();
    // Seal the new share (validated by the library in the protocol) as pending.
    let mut envelope = None;
    if let Some(share) = output.into_share() {
        let secret = match share {
            reshare::NewShare::Ecdsa(s) => s.to_bytes(),
            reshare::NewShare::Frost(s) => s.to_bytes(),
        }
        .map_err(|e| DkgError::Custody(e.to_string()))?;
        let aad = Aad::new(me.clone(), spec.key_id.clone(), spec.protocol.record_kind())
            .map_err(|e| DkgError::Custody(e.to_string()))?;
        let custody = unsealed.custody.clone();
        envelope = Some(
            tokio::task::spawn_blocking(move || custody.seal(&aad, &secret))
                .await
                .map_err(|e| DkgError::Custody(format!("seal task: {e}")))?
                .map_err(|e| DkgError::Custody(e.to_string()))?,
        );
    }
    crate::fault::reshare_stall().await;
    // Pending share and confirmation in one transaction, refused if an outcome query
    // already failed the reshare here (then this node never confirms it).
    node.store
        .reshare_store_confirmation(
            &me,
            spec.id,
            &spec.key_id,
            &public_key,
            envelope.as_deref(),
            &confirmation,
        )
        .await?;
    crate::fault::reshare_pause_before_confirm().await;

    // Confirmation: every other participant must report the same value.
    let frame = Frame::new(spec.id, crate::session::CONFIRM, confirmation.to_vec());
    let others: Vec<&String> = run_set.iter().filter(|p| **p != me).collect();
    futures::future::join_all(others.iter().map(|p| {
        let f = frame.clone();
        async move {
            if let Err(e) = node.net.p2p.send(p, f).await {
                tracing::warn!(session = %spec.id, peer = %p, error = %e, "sending the reshare confirmation failed");
            }
        }
    }))
    .await;
    let mut confirmed: BTreeMap<String, ()> = BTreeMap::new();
    while confirmed.len() < others.len() {
        let Some((from, value)) = confirm_rx.recv().await else {
            return Err(DkgError::Aborted("confirmation channel closed".to_owned()));
        };
        if value != confirmation {
            return Err(DkgError::KeyMismatch {
                node: from,
                theirs: hex::encode(&value[..value.len().min(32)]),
                ours: hex::encode(confirmation),
            });
        }
        confirmed.insert(from, ());
    }
    let switched = node
        .store
        .switch_reshare(&me, spec.id, &spec.key_id, &public_key, None)
        .await?;
    node.signing_material.invalidate(&spec.key_id);
    if spec.participants.contains(&me) {
        let xpub = old_info
            .xpub(bitcoin::NetworkKind::Test)
            .map(|x| x.to_string());
        node.dkg.set_loaded(&spec.key_id, LoadedKey { xpub });
    } else {
        node.dkg.unload(&spec.key_id);
    }
    tracing::info!(session = %spec.id, key = %spec.key_id, old_shares_deleted = switched.shares_deleted,
        presignatures_deleted = switched.presignatures_deleted, "switched to the new sharing");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash as _;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn spec() -> ReshareSpec {
        ReshareSpec {
            id: Uuid::from_u128(7),
            key_id: "k".to_owned(),
            protocol: DkgProtocol::Frost,
            old_ceremony: Uuid::from_u128(1),
            old_threshold: 2,
            old_participants: ids(&["node-1", "node-2", "node-3"]),
            dealers: ids(&["node-2", "node-3"]),
            threshold: 2,
            participants: ids(&["node-1", "node-3"]),
            old_key_info: "00".to_owned(),
            coordinator: "node-1".to_owned(),
            deadline_unix: 1,
        }
    }

    #[test]
    fn run_order_is_new_holders_then_leaving_dealers() {
        let s = spec();
        assert_eq!(s.run_participants(), ids(&["node-1", "node-3", "node-2"]));
        assert_eq!(s.involved(), ids(&["node-1", "node-2", "node-3"]));
        assert!(!s.is_refresh());
    }

    #[test]
    fn a_stalled_reshare_names_the_participants_whose_messages_are_missing() {
        // Run order node-1, node-3 (new holders), node-2 (leaving dealer); node-3 and
        // node-2 deal.
        let s = spec();
        let run_set = s.run_participants();
        // node-1 receives: commitments and a sub-share from each dealer, then echoes.
        let mine = message_schedule(&s, &run_set, "node-1");
        assert_eq!(mine, vec![vec![0, 2, 2], vec![0, 3, 3]]);
        // node-2 (leaving, receives no share): node-3's commitments, then echoes.
        assert_eq!(
            message_schedule(&s, &run_set, "node-2"),
            vec![vec![0, 1, 0], vec![1, 2, 0]]
        );
        // node-3 (deals and receives): node-2's commitments and sub-share.
        assert_eq!(
            message_schedule(&s, &run_set, "node-3"),
            vec![vec![0, 0, 2], vec![1, 0, 3]]
        );
        // On node-1's router: node-2 (the leaving dealer) died after its commitments;
        // node-3 sent everything of round 1. node-2 is named, nobody else.
        let router = crate::session::Router::default();
        let _q = router
            .register(s.id, &run_set, MessageKind::RESHARE)
            .expect("a new session id");
        // Each message distinct (the router delivers a repeated frame once).
        let msg = |from: &str, flag: u8, body: u8| Inbound {
            from: from.to_owned(),
            frame: Frame::new(s.id, MessageKind::RESHARE, vec![flag, body]),
        };
        router.deliver(msg("node-3", 0, 1));
        router.deliver(msg("node-3", 1, 2));
        router.deliver(msg("node-2", 0, 1));
        assert_eq!(
            router.behind_schedule(s.id, "node-1", &mine),
            ids(&["node-2"])
        );
        router.deliver(msg("node-2", 1, 2));
        // Round 1 complete here; node-3 echoed, node-2 did not.
        router.deliver(msg("node-3", 0, 3));
        assert_eq!(
            router.behind_schedule(s.id, "node-1", &mine),
            ids(&["node-2"])
        );
        router.deliver(msg("node-2", 0, 3));
        assert!(router.behind_schedule(s.id, "node-1", &mine).is_empty());
        assert_eq!(
            crate::session::stalled_stage("running the reshare", &ids(&["node-2"])),
            "running the reshare; waiting for node-2"
        );
    }

    #[test]
    fn the_vote_subject_binds_every_field_of_the_proposal() {
        let s = spec();
        let mut other = s.clone();
        other.threshold = 3;
        assert_ne!(s.digest(), other.digest());
        assert_ne!(s.subject(), other.subject());
        let mut other = s.clone();
        other.dealers = ids(&["node-1", "node-3"]);
        assert_ne!(s.subject(), other.subject());
        // The pseudo txid is not the digest itself (domain-separated).
        let subj = s.subject();
        assert_eq!(subj.sighashes, vec![s.digest()]);
        assert_ne!(subj.txid.to_byte_array(), s.digest());
        assert_eq!(subj.transaction_id, s.id);
    }

    #[test]
    fn validate_refuses_bad_dealers_unsorted_sets_and_aux_info() {
        let known = ids(&["node-1", "node-2", "node-3"]);
        assert!(spec().validate(&known).is_ok());
        let mut s = spec();
        s.dealers = ids(&["node-2"]);
        assert!(s.validate(&known).is_err(), "t dealers needed");
        let mut s = spec();
        s.dealers = ids(&["node-2", "node-9"]);
        assert!(s.validate(&known).is_err(), "dealers are old holders");
        let mut s = spec();
        s.participants = ids(&["node-3", "node-1"]);
        assert!(s.validate(&known).is_err(), "sorted");
        let mut s = spec();
        s.protocol = DkgProtocol::AuxInfo;
        assert!(s.validate(&known).is_err());
        let mut s = spec();
        s.threshold = 3;
        assert!(s.validate(&known).is_err(), "t' <= n'");
    }

    /// A node that holds no share of the key (e.g. one just added with
    /// `cluster add-node`) cannot help approve the reshare that would give it one:
    /// with t = 2, one old holder's approval plus the newcomer's is no quorum.
    #[test]
    fn only_old_holders_votes_count_towards_the_quorum() {
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let key =
            |seed: u8| Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("any 32-byte seed");
        let mut s = spec();
        s.participants = ids(&["node-1", "node-3", "node-9"]);
        let names = ["node-1", "node-2", "node-3", "node-9"];
        let book = VoteKeyBook::from_pinned(names.iter().zip(1u8..).map(|(n, seed)| {
            let mut pk = [0u8; 32];
            pk.copy_from_slice(key(seed).public_key().as_ref());
            ((*n).to_owned(), pk)
        }));
        let vote = |name: &str, seed: u8| {
            let subj = s.subject();
            SignedVote::sign(
                VoteBody {
                    transaction_id: subj.transaction_id,
                    round_no: subj.round_no,
                    txid: subj.txid,
                    sighashes: subj.sighashes,
                    policy_hash: subj.policy_hash,
                    decision: VoteDecision::Approve,
                    reasons: Vec::new(),
                    voter: name.to_owned(),
                    deadline_unix: s.deadline_unix,
                },
                &key(seed),
            )
            .expect("vote signs")
        };
        let with_newcomer = vec![vote("node-1", 1), vote("node-9", 4)];
        assert!(
            QuorumCertificate::verify(&with_newcomer, &book, 2, &s.subject()).is_ok(),
            "the vote machinery alone would count the newcomer"
        );
        let counted = old_holder_votes(&s, with_newcomer);
        assert_eq!(counted.len(), 1);
        assert!(QuorumCertificate::verify(&counted, &book, 2, &s.subject()).is_err());
        let holders = old_holder_votes(&s, vec![vote("node-1", 1), vote("node-3", 3)]);
        assert!(QuorumCertificate::verify(&holders, &book, 2, &s.subject()).is_ok());
    }
}
