//! Routing of protocol sessions (key ceremonies, aux info, presigning, signing) over
//! the QUIC network: frames of a session go to the session's queues, with the sender's
//! run index taken from its mTLS identity; frames that arrive before the session is
//! registered locally are kept (bounded, expiring) and replayed; outgoing protocol
//! messages are sent p2p or to every other participant.
//!
//! Frame payloads of protocol messages: one flag byte (0 broadcast, 1 p2p) followed by
//! the encoded protocol message. [`CONFIRM`] frames carry a short confirmation value
//! (a public key or digest) at most [`MAX_CONFIRM_LEN`] bytes long. Key ceremonies
//! sign their broadcasts ([`equivocation`]): [`STATEMENT`] frames carry the sender's
//! signed statement of each broadcast, [`EVIDENCE`] frames the statements a node
//! holds, exchanged when a ceremony fails without a culprit.

pub mod equivocation;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use signer_protocol::{MsgType, RawIncoming, RawOutgoing};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::net::Net;
use crate::p2p::{Frame, Inbound, MessageKind};

/// Dropped frames of peers (logged throttled).
static DROPPED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Confirmation of a session's result by a participant.
pub const CONFIRM: MessageKind = MessageKind::SESSION_CONFIRM;
/// Longest confirmation value (a compressed public key).
pub const MAX_CONFIRM_LEN: usize = 33;
/// Frames kept for sessions not (yet) known locally, over all sessions.
pub const MAX_EARLY_FRAMES: usize = 1024;
/// Early frames kept from one peer: one flooding peer fills at most this share of
/// the buffer, so the others' early frames still fit.
pub const MAX_EARLY_FRAMES_PER_PEER: usize = 256;
/// How long an early frame is kept.
pub const EARLY_FRAME_TTL: Duration = Duration::from_secs(60);
/// Capacity of a session's inbound protocol queue.
const SESSION_QUEUE: usize = 1024;
/// Most frame digests a session keeps to drop repeated frames (far more than any
/// protocol run sends; past it, repeats are no longer recognised).
const MAX_DELIVERED_DIGESTS: usize = 4096;
/// A sender's signed statement of one broadcast ([`equivocation::Statement`]).
pub const STATEMENT: MessageKind = MessageKind::BROADCAST_STATEMENT;
/// The statements a participant holds, sent after a failure without a culprit.
pub const EVIDENCE: MessageKind = MessageKind::EQUIVOCATION_EVIDENCE;

/// The kinds this module routes: every protocol's messages and the confirmations.
pub const KINDS: &[MessageKind] = &[
    MessageKind::KEYGEN,
    MessageKind::AUX_INFO,
    MessageKind::PRESIGN,
    MessageKind::SIGN,
    MessageKind::FROST_KEYGEN,
    MessageKind::FROST_SIGN,
    MessageKind::RESHARE,
    CONFIRM,
    STATEMENT,
    EVIDENCE,
];

/// Delivers the router's protocol frames to the running sessions until it stops.
pub async fn serve(router: &Router, mut rx: crate::router::ServiceRx) {
    while let Some(inbound) = rx.recv().await {
        router.deliver(inbound);
    }
}

/// What is routed to a running session.
#[derive(Debug)]
struct SessionEntry {
    participants: Vec<String>,
    kind: MessageKind,
    protocol_tx: mpsc::Sender<RawIncoming>,
    confirm_tx: mpsc::Sender<(String, Vec<u8>)>,
    evidence_tx: mpsc::Sender<(String, Vec<equivocation::Statement>)>,
    /// Broadcast statements received from the senders themselves (unverified; at
    /// most [`equivocation::MAX_STATEMENTS_PER_SENDER`] per sender).
    statements: Vec<equivocation::Statement>,
    /// Protocol messages routed from each participant (by run index).
    received: Vec<u32>,
    /// Digests of the protocol frames routed, with their sender's run index: a frame
    /// that comes again (its sender retried a send whose acknowledgement it lost)
    /// is dropped, so the protocol never takes an honest retry for a duplicate
    /// message and blames its sender. At most [`MAX_DELIVERED_DIGESTS`].
    delivered: HashSet<(u16, [u8; 32])>,
    /// Participants whose result confirmation arrived (by run index).
    confirmed: Vec<bool>,
    /// When the session was registered or its last protocol message routed.
    progress: Instant,
}

/// The receiving ends of a registered session.
#[derive(Debug)]
pub struct SessionQueues {
    /// Protocol messages, sender = run index.
    pub protocol_rx: mpsc::Receiver<RawIncoming>,
    /// Public-key confirmations `(node id, public key)`.
    pub confirm_rx: mpsc::Receiver<(String, Vec<u8>)>,
    /// Equivocation evidence `(forwarded by, statements)` from other participants.
    pub evidence_rx: mpsc::Receiver<(String, Vec<equivocation::Statement>)>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<Uuid, SessionEntry>,
    early: VecDeque<(Instant, Inbound)>,
}

/// Routes frames to the sessions running on this node.
#[derive(Debug, Default)]
pub struct Router {
    inner: Mutex<Inner>,
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session and replays frames that arrived before it existed.
    /// A session id that is live is refused (`None`): a second run never takes over
    /// the queues of the first.
    pub fn register(
        &self,
        id: Uuid,
        participants: &[String],
        kind: MessageKind,
    ) -> Option<SessionQueues> {
        let (protocol_tx, protocol_rx) = mpsc::channel(SESSION_QUEUE);
        let (confirm_tx, confirm_rx) = mpsc::channel(participants.len().max(1) * 2);
        let (evidence_tx, evidence_rx) = mpsc::channel(participants.len().max(1) * 2);
        let entry = SessionEntry {
            participants: participants.to_vec(),
            kind,
            protocol_tx,
            confirm_tx,
            evidence_tx,
            statements: Vec::new(),
            received: vec![0; participants.len()],
            delivered: HashSet::new(),
            confirmed: vec![false; participants.len()],
            progress: Instant::now(),
        };
        let mut g = self.lock();
        if g.sessions.contains_key(&id) {
            tracing::warn!(session = %id, "session id already live; second registration refused");
            return None;
        }
        let early = std::mem::take(&mut g.early);
        let (mine, rest): (Vec<_>, Vec<_>) =
            early.into_iter().partition(|(_, f)| f.frame.session == id);
        g.early = rest.into_iter().collect();
        let mut entry = entry;
        for (_, inbound) in mine {
            route(&mut entry, id, inbound);
        }
        g.sessions.insert(id, entry);
        Some(SessionQueues {
            protocol_rx,
            confirm_rx,
            evidence_rx,
        })
    }

    /// The broadcast statements a live session received from their senders.
    pub fn statements(&self, id: Uuid) -> Vec<equivocation::Statement> {
        self.lock()
            .sessions
            .get(&id)
            .map(|e| e.statements.clone())
            .unwrap_or_default()
    }

    /// Forgets a session; later frames of it are dropped after expiry.
    pub fn unregister(&self, id: Uuid) {
        self.lock().sessions.remove(&id);
    }

    /// How long a live session has gone without a protocol message from any
    /// participant (since its registration if none came yet); `None` when the
    /// session is not live.
    pub fn idle_for(&self, id: Uuid) -> Option<Duration> {
        self.lock().sessions.get(&id).map(|e| e.progress.elapsed())
    }

    /// The participants of a live session (other than `me`) that are behind: fewer
    /// protocol messages arrived from them than from the furthest of the others. In
    /// the symmetric protocols routed here (every party sends every other the same
    /// messages per round) these are the absent or stalled parties a stuck run waits
    /// for; when every other participant is equally far, nobody is named (the run
    /// waits on something else), unless some other participant already confirmed the
    /// result: then the run waits for confirmations, and those that did not confirm
    /// are named (a party that stopped right after its last protocol message). A hint
    /// for operators and for the leader's choice of the next signer set, never
    /// evidence of misbehaviour: a party that crashed is not a culprit.
    pub fn laggards(&self, id: Uuid, me: &str) -> Vec<String> {
        let g = self.lock();
        let Some(entry) = g.sessions.get(&id) else {
            return Vec::new();
        };
        let behind = laggards_of(&entry.participants, &entry.received, me);
        if !behind.is_empty() {
            return behind;
        }
        unconfirmed_of(&entry.participants, &entry.confirmed, me)
    }

    /// The participants of a live session (other than `me`) a run whose parties do
    /// not all send the same messages waits for (a reshare: dealers send commitments
    /// and sub-shares, everyone an echo). `expected[r][p]` is how many protocol
    /// messages this node receives from participant `p` by the end of round `r`
    /// (cumulative, in run order). Named are the participants short of the first round
    /// not complete here; when every message arrived, those that did not confirm, as
    /// in [`Router::laggards`]. A hint, never blame.
    pub fn behind_schedule(&self, id: Uuid, me: &str, expected: &[Vec<u32>]) -> Vec<String> {
        let g = self.lock();
        let Some(entry) = g.sessions.get(&id) else {
            return Vec::new();
        };
        let behind = behind_schedule_of(&entry.participants, &entry.received, me, expected);
        if !behind.is_empty() {
            return behind;
        }
        unconfirmed_of(&entry.participants, &entry.confirmed, me)
    }

    /// Routes a protocol or confirmation frame to its session, or keeps it (bounded)
    /// until the session is registered.
    pub fn deliver(&self, inbound: Inbound) {
        let mut g = self.lock();
        let id = inbound.frame.session;
        if let Some(entry) = g.sessions.get_mut(&id) {
            route(entry, id, inbound);
            return;
        }
        let now = Instant::now();
        while g
            .early
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > EARLY_FRAME_TTL)
        {
            g.early.pop_front();
        }
        if g.early.len() >= MAX_EARLY_FRAMES {
            if let Some(dropped) = DROPPED.hit() {
                tracing::warn!(dropped, peer = %inbound.from, session = %id, "early ceremony frame buffer full; frame dropped")
            };
            return;
        }
        let from_peer = g
            .early
            .iter()
            .filter(|(_, f)| f.from == inbound.from)
            .count();
        if from_peer >= MAX_EARLY_FRAMES_PER_PEER {
            if let Some(dropped) = DROPPED.hit() {
                tracing::warn!(dropped, peer = %inbound.from, session = %id, "peer over its early frame quota; frame dropped")
            };
            return;
        }
        g.early.push_back((now, inbound));
    }
}

/// What a timed-out run was doing, with the participants it still waited for (see
/// [`Router::laggards`]): absence is named, never blamed.
pub fn stalled_stage(stage: &str, absent: &[String]) -> String {
    if absent.is_empty() {
        stage.to_owned()
    } else {
        format!("{stage}; waiting for {}", absent.join(", "))
    }
}

/// The participants a stalled run `id` waits for, as far as this node can tell:
/// those behind ([`Router::laggards`]); when nobody is behind (this node heard
/// equally from everyone, or the run waits for confirmations), those without a live
/// etcd registration (a crashed or frozen node's lease expires). A hint for
/// operators and for the choice of the next signer set, never blame. Call before
/// [`Router::unregister`].
pub async fn absentees(
    router: &Router,
    coord: Option<crate::coord::Coord>,
    id: Uuid,
    participants: &[String],
    me: &str,
) -> Vec<String> {
    let behind = router.laggards(id, me);
    if !behind.is_empty() {
        return behind;
    }
    not_live(coord, participants, me).await
}

/// [`absentees`] for a run with a message schedule ([`Router::behind_schedule`]):
/// those short of it, else those without a live etcd registration. Call before
/// [`Router::unregister`].
pub async fn absentees_by_schedule(
    router: &Router,
    coord: Option<crate::coord::Coord>,
    id: Uuid,
    participants: &[String],
    me: &str,
    expected: &[Vec<u32>],
) -> Vec<String> {
    let behind = router.behind_schedule(id, me, expected);
    if !behind.is_empty() {
        return behind;
    }
    not_live(coord, participants, me).await
}

/// The participants other than `me` without a live etcd registration (nobody when
/// etcd does not answer within [`ABSENTEE_LOOKUP`]).
async fn not_live(
    coord: Option<crate::coord::Coord>,
    participants: &[String],
    me: &str,
) -> Vec<String> {
    let Some(coord) = coord else {
        return Vec::new();
    };
    match tokio::time::timeout(ABSENTEE_LOOKUP, coord.list_nodes()).await {
        Ok(Ok(live)) => participants
            .iter()
            .filter(|p| p.as_str() != me && !live.iter().any(|n| n.node_id == **p))
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// Bound of the etcd lookup in [`absentees`].
const ABSENTEE_LOOKUP: Duration = Duration::from_secs(2);

/// The participants other than `me` without a confirmation, when at least one
/// other participant confirmed (see [`Router::laggards`]).
fn unconfirmed_of(participants: &[String], confirmed: &[bool], me: &str) -> Vec<String> {
    let others: Vec<(&String, bool)> = participants
        .iter()
        .zip(confirmed.iter().copied())
        .filter(|(p, _)| p.as_str() != me)
        .collect();
    if !others.iter().any(|(_, c)| *c) {
        return Vec::new();
    }
    others
        .into_iter()
        .filter(|(_, c)| !*c)
        .map(|(p, _)| p.clone())
        .collect()
}

/// See [`Router::behind_schedule`]: the participants other than `me` with fewer
/// messages than `expected` for the first round someone has not completed; nobody
/// when every round is complete (or the schedule does not fit the participants).
fn behind_schedule_of(
    participants: &[String],
    received: &[u32],
    me: &str,
    expected: &[Vec<u32>],
) -> Vec<String> {
    for round in expected {
        if round.len() != participants.len() {
            return Vec::new();
        }
        let short: Vec<String> = participants
            .iter()
            .zip(received)
            .zip(round)
            .filter(|((p, n), want)| p.as_str() != me && **n < **want)
            .map(|((p, _), _)| p.clone())
            .collect();
        if !short.is_empty() {
            return short;
        }
    }
    Vec::new()
}

/// See [`Router::laggards`].
fn laggards_of(participants: &[String], received: &[u32], me: &str) -> Vec<String> {
    let others = || {
        participants
            .iter()
            .zip(received)
            .filter(|(p, _)| p.as_str() != me)
    };
    let Some(furthest) = others().map(|(_, n)| *n).max() else {
        return Vec::new();
    };
    others()
        .filter(|(_, n)| **n < furthest)
        .map(|(p, _)| p.clone())
        .collect()
}

fn route(entry: &mut SessionEntry, id: Uuid, inbound: Inbound) {
    let Some(idx) = entry.participants.iter().position(|p| *p == inbound.from) else {
        tracing::warn!(peer = %inbound.from, session = %id, "ceremony frame from a non-participant; dropped");
        return;
    };
    let kind = inbound.frame.kind;
    if kind == STATEMENT {
        let Some(st) =
            equivocation::Statement::from_frame_payload(&inbound.from, &inbound.frame.payload)
        else {
            tracing::warn!(peer = %inbound.from, session = %id, "malformed broadcast statement; dropped");
            return;
        };
        let mine = entry
            .statements
            .iter()
            .filter(|s| s.sender == inbound.from)
            .count();
        if mine >= equivocation::MAX_STATEMENTS_PER_SENDER {
            tracing::warn!(peer = %inbound.from, session = %id, "too many broadcast statements; dropped");
            return;
        }
        entry.statements.push(st);
        return;
    }
    if kind == EVIDENCE {
        let payload = &inbound.frame.payload;
        let parsed = (payload.len() <= equivocation::MAX_EVIDENCE_BYTES)
            .then(|| serde_json::from_slice::<Vec<equivocation::Statement>>(payload).ok())
            .flatten()
            .filter(|v| v.len() <= equivocation::MAX_EVIDENCE_STATEMENTS);
        let Some(statements) = parsed else {
            tracing::warn!(peer = %inbound.from, session = %id, "malformed or oversized equivocation evidence; dropped");
            return;
        };
        if entry
            .evidence_tx
            .try_send((inbound.from.clone(), statements))
            .is_err()
        {
            tracing::warn!(peer = %inbound.from, session = %id, "evidence queue full or closed; dropped");
        }
        return;
    }
    if kind == CONFIRM {
        if entry.kind == MessageKind::RESHARE && crate::fault::drop_reshare_confirm() {
            tracing::error!(peer = %inbound.from, session = %id, "FAULT INJECTION: reshare confirmation dropped");
            return;
        }
        if inbound.frame.payload.len() > MAX_CONFIRM_LEN {
            tracing::warn!(peer = %inbound.from, session = %id, "oversized confirmation; dropped");
            return;
        }
        if entry
            .confirm_tx
            .try_send((inbound.from.clone(), inbound.frame.payload.to_vec()))
            .is_err()
        {
            tracing::warn!(peer = %inbound.from, session = %id, "confirmation queue full or closed; dropped");
            return;
        }
        if let Some(c) = entry.confirmed.get_mut(idx) {
            *c = true;
        }
        return;
    }
    if kind != entry.kind {
        tracing::warn!(peer = %inbound.from, session = %id, %kind, "frame kind does not match the ceremony protocol; dropped");
        return;
    }
    let Some((msg_type, payload)) = decode_protocol(&inbound.frame.payload) else {
        tracing::warn!(peer = %inbound.from, session = %id, "protocol frame without a valid type flag; dropped");
        return;
    };
    let Ok(sender) = u16::try_from(idx) else {
        return;
    };
    let digest: [u8; 32] = Sha256::digest(&inbound.frame.payload).into();
    if entry.delivered.contains(&(sender, digest)) {
        tracing::debug!(peer = %inbound.from, session = %id, "protocol frame delivered before (a retried send); dropped");
        return;
    }
    let msg = RawIncoming {
        sender,
        msg_type,
        payload,
    };
    if entry.protocol_tx.try_send(msg).is_err() {
        tracing::warn!(peer = %inbound.from, session = %id, "session queue full or closed; frame dropped");
        return;
    }
    if entry.delivered.len() < MAX_DELIVERED_DIGESTS {
        entry.delivered.insert((sender, digest));
    }
    if let Some(n) = entry.received.get_mut(idx) {
        *n = n.saturating_add(1);
    }
    entry.progress = Instant::now();
}

/// Encodes a protocol message with its type flag.
pub fn encode_protocol(msg_type: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(match msg_type {
        MsgType::Broadcast => 0,
        MsgType::P2p => 1,
    });
    v.extend_from_slice(payload);
    v
}

/// Splits a protocol frame payload into its type and message; `None` without a
/// valid flag.
pub fn decode_protocol(b: &Bytes) -> Option<(MsgType, Bytes)> {
    let t = match b.first()? {
        0 => MsgType::Broadcast,
        1 => MsgType::P2p,
        _ => return None,
    };
    Some((t, b.slice(1..)))
}

/// What signs this node's broadcast statements (its vote key), without the
/// session layer depending on the node's infrastructure.
pub trait StatementSigner: Send + Sync {
    /// The vote-signing key.
    fn vote_key(&self) -> &crate::custody::VoteKey;
}

/// Sends a session's outgoing protocol messages until the protocol drops its sender:
/// p2p to one participant, broadcast to every other participant, each in a frame of
/// session `id` and kind `kind`. `label` names the protocol for fault injection.
/// With `statement_key` (key ceremonies), each broadcast copy is preceded by this
/// node's signed [`equivocation::Statement`] of it, numbered per run.
///
/// Sends run concurrently: the pump does not wait for one message's acknowledgement
/// before handing the next to QUIC (each wait costs up to the peer's delayed-ACK time,
/// ~25 ms); the protocols do not depend on the arrival order across rounds. The pump
/// returns once every send finished.
pub async fn pump_outgoing(
    net: Arc<Net>,
    id: Uuid,
    participants: Vec<String>,
    kind: MessageKind,
    label: &'static str,
    statement_key: Option<Arc<dyn StatementSigner>>,
    mut out_rx: mpsc::Receiver<RawOutgoing>,
) {
    let me = net.node_id().to_owned();
    let mut sends = tokio::task::JoinSet::new();
    let mut seq: u32 = 0;
    while let Some(out) = out_rx.recv().await {
        let broadcast = out.recipient.is_none();
        let (targets, msg_type): (Vec<String>, _) = match out.recipient {
            Some(j) => match participants.get(usize::from(j)) {
                Some(p) => (vec![p.clone()], MsgType::P2p),
                None => {
                    tracing::error!(session = %id, recipient = j, "protocol addressed a party outside the run");
                    continue;
                }
            },
            None => (
                participants.iter().filter(|p| **p != me).cloned().collect(),
                MsgType::Broadcast,
            ),
        };
        let payload = crate::fault::corrupt_outgoing(label, out.payload);
        let frame = Frame::new(id, kind, encode_protocol(msg_type, &payload));
        let signer = statement_key.as_ref().filter(|_| broadcast);
        if signer.is_some() {
            seq = seq.saturating_add(1);
        }
        // One signature per distinct version sent (an honest sender has one).
        let mut signed: Vec<(Bytes, Bytes)> = Vec::new();
        for peer in targets {
            let f = crate::fault::equivocate(label, frame.clone());
            let statement = signer.map(|u| {
                if let Some((_, st)) = signed.iter().find(|(p, _)| *p == f.payload) {
                    return st.clone();
                }
                let st: Bytes =
                    equivocation::Statement::sign(id, &me, seq, &f.payload, u.vote_key())
                        .to_frame_payload()
                        .into();
                signed.push((f.payload.clone(), st.clone()));
                st
            });
            let net = net.clone();
            sends.spawn(async move {
                if let Some(st) = statement {
                    if let Err(e) = net.p2p.send(&peer, Frame::new(id, STATEMENT, st)).await {
                        tracing::warn!(session = %id, %peer, error = %e, "sending a broadcast statement failed");
                    }
                }
                if let Err(e) = net.p2p.send(&peer, f).await {
                    tracing::warn!(session = %id, %peer, error = %e, "sending a protocol message failed");
                }
            });
        }
        crate::fault::after_outgoing(label, id, &mut sends).await;
        // Reap finished sends so the set stays small.
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn frame(session: Uuid, from: &str, kind: MessageKind, payload: Vec<u8>) -> Inbound {
        Inbound {
            from: from.to_owned(),
            frame: Frame::new(session, kind, payload),
        }
    }

    #[test]
    fn the_participants_a_stuck_run_waits_for_are_named() {
        let router = Router::default();
        let id = Uuid::new_v4();
        let participants = ids(&["node-1", "node-2", "node-3", "node-4"]);
        // node-3's first message arrives early (replayed, counted too).
        router.deliver(frame(id, "node-3", MessageKind::SIGN, vec![0, 1]));
        let _q = router
            .register(id, &participants, MessageKind::SIGN)
            .expect("a new session id");
        router.deliver(frame(id, "node-2", MessageKind::SIGN, vec![0, 1]));
        router.deliver(frame(id, "node-2", MessageKind::SIGN, vec![0, 2]));
        router.deliver(frame(id, "node-3", MessageKind::SIGN, vec![0, 2]));
        // node-4 sent nothing; this node (node-1) is never named.
        assert_eq!(router.laggards(id, "node-1"), ids(&["node-4"]));
        router.deliver(frame(id, "node-4", MessageKind::SIGN, vec![0, 1]));
        assert_eq!(router.laggards(id, "node-1"), ids(&["node-4"]));
        router.deliver(frame(id, "node-4", MessageKind::SIGN, vec![0, 2]));
        // Everyone equally far: nobody is named. Frames that are dropped (wrong
        // kind, malformed) do not count as progress.
        assert!(router.laggards(id, "node-1").is_empty());
        router.deliver(frame(id, "node-2", MessageKind::KEYGEN, vec![0, 3]));
        router.deliver(frame(id, "node-2", MessageKind::SIGN, vec![7]));
        assert!(router.laggards(id, "node-1").is_empty());
        // Once one of them confirmed the result, the run waits for the others'
        // confirmations: those are named (node-3 and node-4 stopped after their
        // last message); an oversized confirmation does not count.
        router.deliver(frame(id, "node-2", CONFIRM, vec![2; 33]));
        router.deliver(frame(id, "node-4", CONFIRM, vec![2; MAX_CONFIRM_LEN + 1]));
        assert_eq!(router.laggards(id, "node-1"), ids(&["node-3", "node-4"]));
        router.deliver(frame(id, "node-4", CONFIRM, vec![2; 33]));
        assert_eq!(router.laggards(id, "node-1"), ids(&["node-3"]));
        router.unregister(id);
        assert!(router.laggards(id, "node-1").is_empty());
    }

    #[test]
    fn a_run_with_a_schedule_names_who_is_short_of_the_first_open_round() {
        let router = Router::default();
        let id = Uuid::new_v4();
        // A reshare seen by node-1 (a receiver): node-2 and node-3 deal (commitments
        // and a sub-share each in round 1), node-4 only receives; everyone echoes.
        let participants = ids(&["node-1", "node-2", "node-3", "node-4"]);
        let expected = vec![vec![0, 2, 2, 0], vec![0, 3, 3, 1]];
        let _q = router
            .register(id, &participants, MessageKind::RESHARE)
            .expect("a new session id");
        // Nothing arrived: the dealers are named, not node-4 (nothing due from it yet).
        assert_eq!(
            router.behind_schedule(id, "node-1", &expected),
            ids(&["node-2", "node-3"])
        );
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![0, 1]));
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![1, 2]));
        router.deliver(frame(id, "node-3", MessageKind::RESHARE, vec![0, 1]));
        // node-3's sub-share is missing; the symmetric rule would name nobody here
        // (node-4 is behind node-2 only because it deals nothing).
        assert_eq!(
            router.behind_schedule(id, "node-1", &expected),
            ids(&["node-3"])
        );
        assert_eq!(router.laggards(id, "node-1"), ids(&["node-3", "node-4"]));
        router.deliver(frame(id, "node-3", MessageKind::RESHARE, vec![1, 2]));
        // Round 1 complete; round 2: node-2 and node-4 echoed, node-3 did not.
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![0, 3]));
        router.deliver(frame(id, "node-4", MessageKind::RESHARE, vec![0, 3]));
        assert_eq!(
            router.behind_schedule(id, "node-1", &expected),
            ids(&["node-3"])
        );
        router.deliver(frame(id, "node-3", MessageKind::RESHARE, vec![0, 3]));
        // Every message arrived and nobody confirmed yet: nobody named (the caller
        // asks etcd); once one confirmed, those that did not are named.
        assert!(router.behind_schedule(id, "node-1", &expected).is_empty());
        router.deliver(frame(id, "node-2", CONFIRM, vec![2; 33]));
        assert_eq!(
            router.behind_schedule(id, "node-1", &expected),
            ids(&["node-3", "node-4"])
        );
        // A schedule of another shape names nobody.
        assert!(behind_schedule_of(&participants, &[0; 4], "node-1", &[vec![1; 3]]).is_empty());
        router.unregister(id);
        assert!(router.behind_schedule(id, "node-1", &expected).is_empty());
    }

    #[test]
    fn frames_route_by_mtls_identity_and_early_frames_are_replayed() {
        let router = Router::default();
        let id = Uuid::new_v4();
        let participants = ids(&["node-1", "node-2", "node-3"]);
        // Arrives before the session exists: kept, then replayed with index 2.
        router.deliver(frame(id, "node-3", MessageKind::KEYGEN, vec![0, 9, 9]));
        let mut q = router
            .register(id, &participants, MessageKind::KEYGEN)
            .expect("a new session id");
        let m = q.protocol_rx.try_recv().expect("replayed");
        assert_eq!(
            (m.sender, m.msg_type, &m.payload[..]),
            (2, MsgType::Broadcast, &[9u8, 9][..])
        );
        // Live frames: sender index from the identity, p2p flag kept.
        router.deliver(frame(id, "node-2", MessageKind::KEYGEN, vec![1, 5]));
        let m = q.protocol_rx.try_recv().expect("routed");
        assert_eq!((m.sender, m.msg_type), (1, MsgType::P2p));
        // Non-participant, wrong protocol kind and bad flag are dropped.
        router.deliver(frame(id, "node-9", MessageKind::KEYGEN, vec![0, 1]));
        router.deliver(frame(id, "node-2", MessageKind::FROST_KEYGEN, vec![0, 1]));
        router.deliver(frame(id, "node-2", MessageKind::KEYGEN, vec![7, 1]));
        assert!(q.protocol_rx.try_recv().is_err());
        // Confirmations go to their own queue; oversized ones are dropped.
        router.deliver(frame(id, "node-3", CONFIRM, vec![2; 33]));
        router.deliver(frame(id, "node-2", CONFIRM, vec![2; MAX_CONFIRM_LEN + 1]));
        let (from, pk) = q.confirm_rx.try_recv().expect("confirmation");
        assert_eq!((from.as_str(), pk.len()), ("node-3", 33));
        assert!(q.confirm_rx.try_recv().is_err());
    }

    #[test]
    fn a_protocol_frame_that_comes_again_is_delivered_once() {
        let router = Router::default();
        let id = Uuid::new_v4();
        let participants = ids(&["node-1", "node-2", "node-3"]);
        let mut q = router
            .register(id, &participants, MessageKind::RESHARE)
            .expect("a new session id");
        // node-2 retried a send whose acknowledgement it lost: the same frame twice.
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![0, 4, 2]));
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![0, 4, 2]));
        let m = q.protocol_rx.try_recv().expect("routed once");
        assert_eq!((m.sender, &m.payload[..]), (1, &[4u8, 2][..]));
        assert!(q.protocol_rx.try_recv().is_err(), "the repeat is dropped");
        // The same bytes from another sender, and another message from node-2, pass.
        router.deliver(frame(id, "node-3", MessageKind::RESHARE, vec![0, 4, 2]));
        router.deliver(frame(id, "node-2", MessageKind::RESHARE, vec![0, 4, 3]));
        let senders: Vec<u16> = std::iter::from_fn(|| q.protocol_rx.try_recv().ok())
            .map(|m| m.sender)
            .collect();
        assert_eq!(senders, vec![2, 1]);
    }

    #[test]
    fn a_live_session_id_cannot_be_registered_again() {
        let router = Router::default();
        let id = Uuid::new_v4();
        let participants = ids(&["node-1", "node-2", "node-3"]);
        let mut first = router
            .register(id, &participants, MessageKind::SIGN)
            .expect("a new session id");
        assert!(
            router
                .register(id, &ids(&["node-1", "node-9"]), MessageKind::SIGN)
                .is_none(),
            "a second registration would take over the first run's queues"
        );
        router.deliver(frame(id, "node-2", MessageKind::SIGN, vec![0, 1]));
        assert!(
            first.protocol_rx.try_recv().is_ok(),
            "frames still reach the first run"
        );
        router.unregister(id);
        assert!(router
            .register(id, &participants, MessageKind::SIGN)
            .is_some());
    }

    #[test]
    fn statements_and_evidence_reach_their_session_bounded() {
        let router = Router::default();
        let id = Uuid::new_v4();
        let participants = ids(&["node-1", "node-2", "node-3"]);
        let mut q = router
            .register(id, &participants, MessageKind::KEYGEN)
            .expect("a new session id");
        let key = crate::custody::VoteKey::from_seed_for_tests(&[3; 32]);
        let st = equivocation::Statement::sign(id, "node-2", 1, b"\x00round one", &key);
        // Kept with the sender taken from the connection, at most the quota each.
        for _ in 0..equivocation::MAX_STATEMENTS_PER_SENDER + 5 {
            router.deliver(frame(id, "node-2", STATEMENT, st.to_frame_payload()));
        }
        router.deliver(frame(id, "node-3", STATEMENT, vec![0; 7]));
        router.deliver(frame(id, "node-9", STATEMENT, st.to_frame_payload()));
        let held = router.statements(id);
        assert_eq!(held.len(), equivocation::MAX_STATEMENTS_PER_SENDER);
        assert!(held.iter().all(|s| *s == st));
        // Evidence: parsed and queued; malformed, oversized or too long dropped.
        let json = serde_json::to_vec(&vec![st.clone()]).expect("json");
        router.deliver(frame(id, "node-3", EVIDENCE, json));
        router.deliver(frame(id, "node-3", EVIDENCE, b"not json".to_vec()));
        let many = vec![st.clone(); equivocation::MAX_EVIDENCE_STATEMENTS + 1];
        router.deliver(frame(
            id,
            "node-3",
            EVIDENCE,
            serde_json::to_vec(&many).expect("json"),
        ));
        let (from, got) = q.evidence_rx.try_recv().expect("evidence");
        assert_eq!((from.as_str(), got), ("node-3", vec![st]));
        assert!(q.evidence_rx.try_recv().is_err());
        // Neither reaches the protocol queue.
        assert!(q.protocol_rx.try_recv().is_err());
    }

    #[test]
    fn early_frame_buffer_is_bounded() {
        let router = Router::default();
        // Many peers together (one alone stops at its own quota, see below).
        for i in 0..MAX_EARLY_FRAMES + 10 {
            router.deliver(frame(
                Uuid::new_v4(),
                &format!("node-{}", i % 8),
                MessageKind::KEYGEN,
                vec![0],
            ));
        }
        assert_eq!(router.lock().early.len(), MAX_EARLY_FRAMES);
    }

    #[test]
    fn protocol_payload_flag_round_trips_and_bad_flags_are_refused() {
        let b = Bytes::from(encode_protocol(MsgType::P2p, b"abc"));
        let (t, m) = decode_protocol(&b).expect("valid");
        assert_eq!(t, MsgType::P2p);
        assert_eq!(&m[..], b"abc");
        assert!(decode_protocol(&Bytes::from_static(&[7, 1])).is_none());
        assert!(decode_protocol(&Bytes::new()).is_none());
    }

    #[test]
    fn one_peer_fills_at_most_its_quota_of_the_early_buffer() {
        let router = Router::default();
        for _ in 0..MAX_EARLY_FRAMES_PER_PEER + 50 {
            router.deliver(frame(
                Uuid::new_v4(),
                "node-9",
                MessageKind::KEYGEN,
                vec![0, 1],
            ));
        }
        assert_eq!(router.lock().early.len(), MAX_EARLY_FRAMES_PER_PEER);
        let id = Uuid::new_v4();
        router.deliver(frame(id, "node-2", MessageKind::KEYGEN, vec![0, 7]));
        let participants = ids(&["node-1", "node-2", "node-3"]);
        let mut q = router
            .register(id, &participants, MessageKind::KEYGEN)
            .expect("a new session id");
        let m = q
            .protocol_rx
            .try_recv()
            .expect("the other peer's early frame kept");
        assert_eq!(m.sender, 1);
    }
}
