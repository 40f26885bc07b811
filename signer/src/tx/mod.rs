//! Transactions end to end: intake (PSBT or recipient + amount), proposal to every
//! share holder of the key, independent validation and policy vote on every node,
//! threshold signing by `t` approving nodes, and the verified, finalized transaction.
//!
//! * [`intake`]: the node that receives `POST /api/v1/transactions` (the *leader* of
//!   that transaction) validates the PSBT with [`wallet`], stores it and sends
//!   a [`wire::TX_PROPOSE`] frame to every participant of the key.
//! * [`voting`]: every participant (the leader too) validates the PSBT itself,
//!   recomputes every sighash, evaluates its own policy and broadcasts a vote signed
//!   with its vote key (the [`vote`] crate); every node stores every vote and closes the
//!   round on quorum approve, impossible quorum (rejected) or deadline (expired).
//! * [`signing`]: the leader picks `t` approving, connected nodes and asks them to
//!   sign each input ([`wire::TX_SIGN`]); each signer first builds a
//!   [`vote::SigningPermit`] from its own policy approval and a quorum
//!   certificate over exactly these sighashes, then runs CGGMP24 (ECDSA) or FROST
//!   (Taproot, BIP-86 tweak) over QUIC. The leader fills the PSBT (each signature is
//!   verified first), finalizes it, verifies every input with Bitcoin Core's
//!   consensus code and sends the result to every participant ([`wire::TX_DONE`]),
//!   which verify it again before recording `signed`.

pub mod approvals;
pub mod batch;
pub mod blame;
pub mod early;
pub mod intake;
pub mod presigned;
pub mod selection;
pub mod signing;
pub mod spent;
pub mod vote_intake;
#[cfg(test)]
mod vote_intake_pg;
pub mod voting;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use early::EarlyBuffer;
use uuid::Uuid;
use wallet::{IntakeLimits, ValidatedPsbt, WalletKey};

/// Dropped frames of peers (logged throttled).
pub(crate) static DROPPED: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Errors of the transaction pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// The request is not acceptable (4xx); `code` is the stable API code.
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The request conflicts with the transaction's state (409).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The caller may not do this (403).
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The key is unknown or its share is not loaded on this node.
    #[error("key {0} not found or not loaded on this node")]
    UnknownKey(String),
    /// Custody is sealed.
    #[error("custody is sealed: transactions are refused")]
    Sealed,
    /// Database failure.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Anything else that is this node's problem.
    #[error("{0}")]
    Internal(String),
    /// A signing attempt failed through the fault of these signers (node ids).
    #[error("{message}")]
    Misbehaviour {
        /// The culprits.
        culprits: Vec<String>,
        /// Explanation.
        message: String,
    },
    /// A signing attempt stalled or was declined: these signers (node ids) did not
    /// take part in time (crashed, frozen or cut off), or refused naming nobody (a
    /// node restarted since it voted, an approval that lapsed there). Not
    /// misbehaviour: nobody is blamed, the next attempt goes without them.
    #[error("{message}")]
    Absent {
        /// The signers that did not answer or declined.
        absent: Vec<String>,
        /// Explanation.
        message: String,
    },
}

impl From<wallet::WalletError> for TxError {
    fn from(e: wallet::WalletError) -> Self {
        if e.is_client_error() {
            TxError::Invalid {
                code: e.code(),
                message: e.to_string(),
            }
        } else {
            TxError::Internal(e.to_string())
        }
    }
}

impl From<crate::dkg::material::MaterialError> for TxError {
    fn from(e: crate::dkg::material::MaterialError) -> Self {
        use crate::dkg::material::MaterialError as M;
        match e {
            M::Sealed => TxError::Sealed,
            M::UnknownKey(k) => TxError::UnknownKey(k),
            e @ M::AuxInfoMissing(_) => TxError::Invalid {
                code: "aux_info_missing",
                message: e.to_string(),
            },
            M::Store(e) => TxError::Store(e),
            e => TxError::Internal(e.to_string()),
        }
    }
}

/// What every node keeps in memory about a transaction it voted on.
#[derive(Debug)]
pub struct Pending {
    /// The PSBT as this node validated it.
    pub validated: ValidatedPsbt,
    /// Participants of the key (node ids, keygen order).
    pub participants: Vec<String>,
    /// Threshold of the key.
    pub threshold: u16,
    /// Node coordinating the signing.
    pub leader: String,
    /// Voting round id.
    pub round_id: Uuid,
    /// What the votes must be about.
    pub subject: vote::VoteSubject,
    /// Who submitted it (token id at the leader).
    pub initiator: String,
    /// The initiator's identity (its token's name at the leader; the token id when
    /// the leader did not send one): never counted as an approver.
    pub initiator_identity: String,
    /// End of the voting round (Unix seconds): the leader's proposal, clamped to
    /// this node's `[wallet] max_vote_deadline_secs`.
    pub deadline_unix: u64,
    /// After this (Unix seconds) this node serves no sign request for the
    /// transaction: its vote deadline plus its own `[wallet] sign_timeout_secs`.
    pub sign_deadline_unix: u64,
    /// Whether this node has cast its vote (it votes once; a policy needing human
    /// approvals holds the vote until they arrive).
    pub voted: std::sync::atomic::AtomicBool,
    /// Whether this node's own approval, with the outflow it counts against the
    /// key's velocity windows, is committed: the round's close then need not count
    /// the outflow again (issue 21: one statement less per transaction).
    pub approval_counted: std::sync::atomic::AtomicBool,
    /// Whether this node's round is known closed (recorded here, by this node or an
    /// expiry): later votes are stored and checked but the tally is not read again.
    pub round_closed: std::sync::atomic::AtomicBool,
    /// The round's signed votes (hex) as the leader read them when it chose the
    /// signers: relayed with every sign request and the result.
    pub relayed_votes: std::sync::OnceLock<Vec<String>>,
    /// Leader: signers found misbehaving while signing, relayed with the result.
    pub blame: Mutex<Vec<wire::Blame>>,
    /// The signed votes this node checked and stored (committed) for the round,
    /// see [`StoredVotes`].
    pub stored_votes: Mutex<StoredVotes>,
    /// Held while this node settles the round: votes arriving together close it
    /// once, not in one racing database transaction each (issue 21: the profile
    /// showed close attempts waiting on each other's row lock, then rolling back).
    pub settling: tokio::sync::Mutex<()>,
}

/// The votes of a round this node has checked and committed to its database, kept
/// in memory so that neither a relayed copy nor the tally reads the database again
/// (issue 21: the profile showed the round's votes re-read on every vote).
///
/// The round is opened (its row written) when its [`Pending`] is made, in this
/// process, and every vote stored for it afterwards goes through the checks of
/// [`vote_intake::VoteIntake`] and is noted here once committed; so this is
/// exactly the round's votes in the database. (A node that restarts expires the
/// transactions it had in flight; no round outlives its `Pending`.)
#[derive(Debug, Default)]
pub struct StoredVotes {
    /// The stored vote of each voter (the first: a second, different one is
    /// refused as a double vote and never stored). A relayed copy equal to it
    /// needs neither the checks nor a database write; a different vote of the
    /// same voter goes through every check (a double vote is still recorded).
    by_voter: std::collections::BTreeMap<String, vote::SignedVote>,
}

impl Pending {
    /// Whether this very vote (the same signed vote, byte for byte) was already
    /// checked and stored.
    pub fn vote_stored(&self, vote: &vote::SignedVote) -> bool {
        self.stored_votes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_voter
            .get(vote.voter())
            .is_some_and(|stored| stored == vote)
    }

    /// Notes that `vote` was checked and committed for the round.
    pub fn note_vote_stored(&self, vote: &vote::SignedVote) {
        let mut g = self
            .stored_votes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !g.by_voter.contains_key(vote.voter()) && g.by_voter.len() < self.participants.len() {
            g.by_voter.insert(vote.voter().to_owned(), vote.clone());
        }
    }

    /// The round's stored votes, one per voter, ordered by voter (what the
    /// database holds for the round: see [`StoredVotes`]).
    pub fn round_votes(&self) -> Vec<vote::SignedVote> {
        self.stored_votes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_voter
            .values()
            .cloned()
            .collect()
    }

    /// Leader: keeps `b` for the result (at most [`wire::MAX_BLAMES`]).
    pub fn add_blame(&self, b: wire::Blame) {
        let mut g = self.blame.lock().unwrap_or_else(PoisonError::into_inner);
        if g.len() < wire::MAX_BLAMES && !g.contains(&b) {
            g.push(b);
        }
    }

    /// Leader: the blames kept so far.
    pub fn blames(&self) -> Vec<wire::Blame> {
        self.blame
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How long an outcome that is already decided (signed, failed, expired, a closed
/// round) keeps being retried while the database is unavailable.
pub const RECORD_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Runs the store operation `op` until it succeeds, fails for a reason other than
/// the database being unavailable, or [`RECORD_RETRY_FOR`] passed (retrying after
/// 0.5 s, doubling up to 5 s): an outcome that is decided must not be lost to a
/// database restart, or the transaction stays in `signing` (or `voting`) here while
/// the other nodes recorded its end (issue 17, PostgreSQL killed during a burst).
pub(crate) async fn until_recorded<T, F, Fut>(
    what: &str,
    id: Uuid,
    mut op: F,
) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(500);
    let mut warned = false;
    loop {
        match op().await {
            Err(e) if e.is_unavailable() && start.elapsed() < RECORD_RETRY_FOR => {
                if !warned {
                    tracing::warn!(tx = %id, error = %e, what, "database unavailable; retrying until it is back");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            r => {
                if warned && r.is_ok() {
                    tracing::info!(tx = %id, what, "recorded after the database came back");
                }
                return r;
            }
        }
    }
}

/// Votes kept for transactions whose proposal has not arrived yet, at most.
pub const MAX_EARLY_VOTES: usize = 4096;

/// Signing results kept for transactions whose proposal has not arrived yet, at most.
pub const MAX_EARLY_RESULTS: usize = 1024;

/// What became of a signature reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Handed to the session's leader task.
    Routed,
    /// No live session of this node has that id (late, or never asked).
    NoSession,
    /// The sender is not a signer of that session: recorded against it.
    NotASigner,
}

/// Ended rounds remembered for late votes, at most (oldest forgotten first).
pub const MAX_ENDED_ROUNDS: usize = 1024;

/// How long an ended round is remembered for late votes.
pub const ENDED_ROUND_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// What a late vote is checked against once this node has finished a transaction:
/// its round and subject.
#[derive(Debug, Clone)]
pub struct EndedRound {
    /// Voting round id.
    pub round_id: Uuid,
    /// What the votes had to be about.
    pub subject: vote::VoteSubject,
    /// Participants of the key.
    pub participants: Vec<String>,
}

/// In-memory registry of transactions being voted on or signed.
#[derive(Debug)]
pub struct Registry {
    pending: Mutex<HashMap<Uuid, Arc<Pending>>>,
    /// Rounds of transactions finished here, for votes that arrive after the end
    /// (stored for the record; a conflicting one is a double vote).
    ended: Mutex<std::collections::VecDeque<(std::time::Instant, Uuid, EndedRound)>>,
    early_votes: EarlyBuffer<vote::SignedVote>,
    early_results: EarlyBuffer<wire::Done>,
    /// Signing sessions this node leads: their signers and where replies go.
    #[allow(clippy::type_complexity)]
    replies: Mutex<
        HashMap<
            Uuid,
            (
                Vec<String>,
                tokio::sync::mpsc::Sender<(String, wire::SignatureReply)>,
            ),
        >,
    >,
    frozen: Mutex<std::collections::BTreeSet<String>>,
    /// Held while a recipient + amount request selects its UTXOs and claims them
    /// (only the selection: the checks and the durable reservation run outside).
    pub intake_lock: tokio::sync::Mutex<IntakeClaims>,
    /// Per key: held from reading a velocity window to counting this node's
    /// approval in it, so concurrent proposals cannot each see the same room.
    velocity_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wallet keys by key id, kept so their script lookup tables (thousands of
    /// derivations) are built once per key, not per request; with the xpub text
    /// each was parsed from (compared as text: re-encoding the xpub on every lookup
    /// costs a base58 encoding).
    wallet_keys: Mutex<HashMap<String, (String, WalletKey)>>,
    /// SHA-256 of the policy file text this process last saw recorded as a
    /// `policy.version` audit record (only this node writes its log).
    policy_recorded: Mutex<Option<Vec<u8>>>,
    /// The transactions' deadlines still to run, in time order: one small entry
    /// per deadline, not one sleeping task per transaction (a task is a few
    /// hundred bytes, and a follower keeps every transaction of its last few
    /// minutes until its signing deadline: issue 21's soak).
    deadlines: Mutex<std::collections::BTreeSet<(u64, Uuid, Deadline)>>,
    /// The leader's payments waiting for their proposal batch ([`batch`]).
    pub batches: batch::Batches,
    /// Reads of selectable outputs by this node's coin selection ([`selection`]).
    pub selection_reads: std::sync::atomic::AtomicU64,
}

/// What runs for a transaction once one of its deadlines has passed
/// ([`voting::expire_at_deadlines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    /// The voting deadline: the round expires if it is still open. On a follower,
    /// its signing deadline (`signing_unix`) is scheduled after that.
    Voting {
        /// A follower's signing deadline (Unix seconds).
        signing_unix: Option<u64>,
    },
    /// A follower's signing deadline: an approved transaction not signed by then
    /// is not signed by this node any more.
    Signing,
    /// The voting deadline of a proposal this node recorded but could not finish
    /// handling.
    Abandoned,
}

/// What recipient + amount requests between selection and their durable
/// reservation hold (issue 21: the intake lock covers the selection only, so the
/// checks and the commit of one request overlap with the next one's selection).
#[derive(Debug, Default)]
pub struct IntakeClaims {
    /// Outputs a request selected whose reservation is not known to be settled:
    /// no other request selects them. Removed under the intake lock, so a
    /// selection sees each output either claimed here or reserved in the database.
    pub outpoints: std::collections::HashSet<bitcoin::OutPoint>,
    /// Per key: the next change index to hand out (read from the database once).
    pub next_change: HashMap<String, u32>,
    /// Per key: the largest selectable outputs as last read (see
    /// [`selection`]).
    pub views: selection::Views,
}

impl IntakeClaims {
    /// Ends the claim on `outpoints`.
    pub fn release(&mut self, outpoints: &[bitcoin::OutPoint]) {
        for o in outpoints {
            self.outpoints.remove(o);
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            pending: Mutex::default(),
            ended: Mutex::default(),
            early_votes: EarlyBuffer::new(MAX_EARLY_VOTES),
            early_results: EarlyBuffer::new(MAX_EARLY_RESULTS),
            replies: Mutex::default(),
            frozen: Mutex::default(),
            intake_lock: tokio::sync::Mutex::default(),
            velocity_locks: Mutex::default(),
            wallet_keys: Mutex::default(),
            policy_recorded: Mutex::default(),
            deadlines: Mutex::default(),
            batches: batch::Batches::default(),
            selection_reads: Default::default(),
        }
    }
}

impl Registry {
    /// Whether the policy text of SHA-256 `sha` is known to be recorded.
    fn policy_recorded(&self, sha: &[u8]) -> bool {
        self.policy_recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            == Some(sha)
    }

    /// Notes that the policy text of SHA-256 `sha` is recorded.
    fn note_policy_recorded(&self, sha: Vec<u8>) {
        *self
            .policy_recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sha);
    }

    /// The wallet key of `key_id` (cached while its xpub, kind and network stay).
    fn wallet_key(
        &self,
        key_id: &str,
        kind: wallet::KeyKind,
        xpub: &str,
        network: bitcoin::Network,
    ) -> Result<WalletKey, TxError> {
        let mut cache = self
            .wallet_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((text, k)) = cache.get(key_id) {
            if k.kind() == kind && k.network() == network && text == xpub {
                return Ok(k.clone());
            }
        }
        let k = WalletKey::from_xpub_str(key_id.to_owned(), kind, xpub, network)
            .map_err(|e| TxError::Internal(e.to_string()))?;
        cache.insert(key_id.to_owned(), (xpub.to_owned(), k.clone()));
        Ok(k)
    }

    /// Waits for key `key_id`'s velocity lock: hold it from the policy decision
    /// (which reads the windows) until the approval is counted (or the vote is not
    /// an approval).
    pub async fn velocity_lock(&self, key_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .velocity_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key_id.to_owned())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Pending>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Freezes a key: no new transaction is accepted for it (restored at start from
    /// the audit log's `key.frozen` entries).
    pub fn freeze(&self, key_id: &str) {
        self.frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id.to_owned());
    }

    /// Whether `key_id` is frozen.
    pub fn is_frozen(&self, key_id: &str) -> bool {
        self.frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key_id)
    }

    /// Keeps a vote that arrived before its proposal (bounded, see [`EarlyBuffer`]).
    pub fn keep_early_vote(&self, id: Uuid, from: String, v: vote::SignedVote) {
        if self.early_votes.keep(id, from, v) {
            tracing::warn!(tx = %id, "early vote buffer full; its oldest vote dropped");
        }
    }

    /// Keeps a signing result that arrived before its proposal (a slow delivery of
    /// the proposal to this node; bounded, see [`EarlyBuffer`]).
    pub fn keep_early_result(&self, from: String, done: wire::Done) {
        let id = done.id;
        if self.early_results.keep(id, from, done) {
            tracing::warn!(tx = %id, "early result buffer full; its oldest result dropped");
        }
    }

    /// Takes the early results of `id`.
    pub fn take_early_results(&self, id: Uuid) -> Vec<(String, wire::Done)> {
        self.early_results.take(id)
    }

    /// Takes the early votes of `id`.
    pub fn take_early_votes(&self, id: Uuid) -> Vec<(String, vote::SignedVote)> {
        self.early_votes.take(id)
    }

    /// Routes signature replies of signing session `session` to `tx`.
    pub fn expect_replies(
        &self,
        session: Uuid,
        signers: Vec<String>,
        tx: tokio::sync::mpsc::Sender<(String, wire::SignatureReply)>,
    ) {
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session, (signers, tx));
    }

    /// Stops routing replies of `session`.
    pub fn forget_replies(&self, session: Uuid) {
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session);
    }

    /// Delivers a signature reply to its waiting leader, if any.
    pub fn deliver_reply(&self, from: String, reply: wire::SignatureReply) -> Delivered {
        let g = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((signers, tx)) = g.get(&reply.session) else {
            return Delivered::NoSession;
        };
        if !signers.contains(&from) {
            return Delivered::NotASigner;
        }
        let _ = tx.try_send((from, reply));
        Delivered::Routed
    }

    /// Runs `what` for transaction `id` once `unix` (seconds) has passed.
    pub fn at_deadline(&self, unix: u64, id: Uuid, what: Deadline) {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((unix, id, what));
    }

    /// The deadlines that have passed at `now_unix` (earlier than it), in time
    /// order, each handed out once.
    pub fn passed_deadlines(&self, now_unix: u64) -> Vec<(Uuid, Deadline)> {
        let mut all = self
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let later = all.split_off(&(
            now_unix,
            Uuid::nil(),
            Deadline::Voting { signing_unix: None },
        ));
        std::mem::replace(&mut *all, later)
            .into_iter()
            .map(|(_, id, what)| (id, what))
            .collect()
    }

    /// Records a transaction this node validated.
    pub fn insert(&self, id: Uuid, p: Arc<Pending>) {
        self.lock().insert(id, p);
    }

    /// A transaction this node validated.
    pub fn get(&self, id: Uuid) -> Option<Arc<Pending>> {
        self.lock().get(&id).cloned()
    }

    /// Forgets a finished transaction; its round is remembered for late votes
    /// (bounded by [`MAX_ENDED_ROUNDS`] and [`ENDED_ROUND_MEMORY`]).
    pub fn remove(&self, id: Uuid) {
        let Some(p) = self.lock().remove(&id) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        while ended
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > ENDED_ROUND_MEMORY)
            || ended.len() >= MAX_ENDED_ROUNDS
        {
            ended.pop_front();
        }
        ended.push_back((
            now,
            id,
            EndedRound {
                round_id: p.round_id,
                subject: p.subject.clone(),
                participants: p.participants.clone(),
            },
        ));
    }

    /// The round of `id` if this node finished it recently.
    pub fn ended_round(&self, id: Uuid) -> Option<EndedRound> {
        let now = std::time::Instant::now();
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(at, tx, _)| *tx == id && now.duration_since(*at) <= ENDED_ROUND_MEMORY)
            .map(|(_, _, r)| r.clone())
    }
}

/// The wallet network of this cluster.
pub fn network(node: &TxCtx) -> bitcoin::Network {
    node.cfg.wallet.network
}

/// Intake limits from the configuration.
pub fn limits(node: &TxCtx) -> IntakeLimits {
    IntakeLimits {
        require_non_witness_utxo: node.cfg.wallet.require_non_witness_utxo,
        max_fee_rate_sat_vb: node.cfg.wallet.max_fee_rate_sat_vb,
        max_fee_sats: node.cfg.wallet.max_fee_sats,
        ..IntakeLimits::default()
    }
}

/// A key this node can use in the wallet: completed, share loaded.
#[derive(Debug, Clone)]
pub struct UsableKey {
    /// Wallet view of the key.
    pub wallet: WalletKey,
    /// Participants (keygen order).
    pub participants: Vec<String>,
    /// Threshold.
    pub threshold: u16,
}

/// The keys of this node that have a loaded share, as wallet keys.
pub async fn usable_keys(node: &TxCtx) -> Result<Vec<UsableKey>, TxError> {
    let rows = node.store.usable_share_keys(&node.cfg.node_id).await?;
    let mut out = Vec::new();
    for r in rows {
        let Some(protocol) = crate::dkg::DkgProtocol::parse(&r.protocol) else {
            continue;
        };
        let Some(kind) = protocol.key_kind() else {
            continue;
        };
        let Some(xpub) = node.dkg.loaded(&r.key_id).and_then(|l| l.xpub) else {
            continue;
        };
        let wallet = node.tx.wallet_key(&r.key_id, kind, &xpub, network(node))?;
        out.push(UsableKey {
            wallet,
            participants: r.participants,
            threshold: u16::try_from(r.threshold).unwrap_or(u16::MAX),
        });
    }
    Ok(out)
}

/// What the transaction service works with: the presignature context below it (and
/// through it the key-ceremony context and the infrastructure) and the transactions
/// in flight.
#[derive(Debug)]
pub struct TxCtx {
    lower: Arc<crate::presign::PresignCtx>,
    /// Transactions being voted on or signed.
    pub tx: Registry,
    /// Turns of the payment intake (`[api] max_concurrent_submissions`).
    submissions: tokio::sync::Semaphore,
    /// How many turns there are.
    submission_turns: usize,
}

impl TxCtx {
    /// The service's context over the presignature service.
    pub fn new(lower: Arc<crate::presign::PresignCtx>) -> Self {
        let turns = lower.cfg.api.max_concurrent_submissions.max(1);
        TxCtx {
            lower,
            tx: Registry::default(),
            submissions: tokio::sync::Semaphore::new(turns),
            submission_turns: turns,
        }
    }

    /// Waits for a turn of the payment intake: at most `[api]
    /// max_concurrent_submissions` submissions are validated and answered at once,
    /// the others wait in arrival order (tokio's semaphore is fair).
    pub async fn submission_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.submissions
            .acquire()
            .await
            .expect("the intake semaphore is never closed")
    }

    /// Submissions in progress now (for tests and metrics).
    pub fn submissions_in_progress(&self) -> usize {
        self.submission_turns
            .saturating_sub(self.submissions.available_permits())
    }

    /// The presignature context below.
    pub fn presign_ctx(&self) -> &Arc<crate::presign::PresignCtx> {
        &self.lower
    }
}

impl std::ops::Deref for TxCtx {
    type Target = crate::presign::PresignCtx;

    fn deref(&self) -> &crate::presign::PresignCtx {
        &self.lower
    }
}

/// The kinds this service owns: votes and the transaction pipeline's frames.
pub const KINDS: &[crate::p2p::MessageKind] = &[
    crate::p2p::MessageKind::VOTE,
    wire::TX_PROPOSE,
    wire::TX_SIGN,
    wire::TX_SIGNATURE,
    wire::TX_DONE,
    wire::TX_APPROVAL,
    crate::p2p::MessageKind::APPROVER_ENDORSE,
    wire::TX_SPENT,
    wire::TX_PROPOSE_BATCH,
    wire::TX_VOTE_BATCH,
];

/// Proposals of one peer handled at once (see [`Turns`]).
pub const PROPOSAL_TURNS: usize = 32;
/// Votes of one peer handled at once (see [`Turns`]).
pub const VOTE_TURNS: usize = 16;
/// Results of one peer handled at once (see [`Turns`]).
pub const RESULT_TURNS: usize = 32;
/// Bytes of one peer's frames this service's tasks hold at once (waiting for a
/// turn or being handled; see [`Turns`]). An honest leader's burst of 1,000
/// single-input payments puts a few kilobytes per payment in a follower's hands
/// (its proposal, vote, sign request and result, each with [`FRAME_TASK_BYTES`]),
/// well under this.
pub const PEER_FRAME_BUDGET: usize = 16 << 20;
/// What a frame's task costs beside the frame's payload (the task, the frame's
/// header, the handler's captured state), counted against [`PEER_FRAME_BUDGET`] so
/// that a flood of tiny frames is bounded too.
const FRAME_TASK_BYTES: usize = 512;

/// How many handlers of peers' proposals, votes and results run at once, per peer
/// and kind. A frame beyond them waits for its turn as a small task that holds only
/// the frame, not its handler's state: a handler's future is several kilobytes
/// (the decoded proposal, the validated PSBT, the database work in flight), and
/// every node is locked in memory (`mlockall`), so whatever a burst of frames
/// allocates at once (1,000 payments submitted together, a node catching up after
/// a restart) stays resident after it (issue 21's soak: the idle heap's free part
/// grew with the largest burst seen). No handler waits for another handler of its
/// kind to finish (they wait for locks held by running handlers, the database, or
/// frames delivered without a turn), so a full set of turns always drains.
///
/// Turns are per peer, so a peer that floods one kind waits behind its own frames
/// only, never ahead of another peer's; and every frame of the tx service, with or
/// without a turn, holds its bytes against the peer's [`PEER_FRAME_BUDGET`] until
/// its handler ends, so what a peer can make this node hold is bounded however
/// fast it sends (the router's quota bounds only the frames not yet taken off the
/// queue).
#[derive(Debug)]
struct Turns {
    proposals: PeerTurns,
    votes: PeerTurns,
    results: PeerTurns,
    budget: Arc<crate::router::PeerBudget>,
}

impl Turns {
    fn new() -> Self {
        Turns {
            proposals: PeerTurns::new(PROPOSAL_TURNS),
            votes: PeerTurns::new(VOTE_TURNS),
            results: PeerTurns::new(RESULT_TURNS),
            budget: crate::router::PeerBudget::new(PEER_FRAME_BUDGET),
        }
    }
}

/// The turns of one message kind, a set of `per_peer` for each peer (peers are the
/// cluster's authenticated nodes, so the map stays as small as the cluster).
#[derive(Debug)]
struct PeerTurns {
    per_peer: usize,
    by_peer: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl PeerTurns {
    fn new(per_peer: usize) -> Self {
        PeerTurns {
            per_peer,
            by_peer: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `peer`'s turns of this kind.
    fn of(&self, peer: &str) -> Arc<tokio::sync::Semaphore> {
        let mut g = self
            .by_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.entry(peer.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_peer)))
            .clone()
    }
}

/// Runs `handler` in a task of its own once one of `turns` is free; until then the
/// task holds only what `handler` captured. The handler's future is made, and
/// allocated, only when its turn comes. `held` is released when the handler ends.
fn spawn_in_turn<F, Fut>(turns: Arc<tokio::sync::Semaphore>, held: crate::router::Held, handler: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        // The semaphore is never closed.
        let Ok(_turn) = turns.acquire_owned().await else {
            return;
        };
        Box::pin(handler()).await;
        drop(held);
    });
}

/// Runs `handler` in a task of its own at once; `held` is released when it ends.
fn spawn_held<Fut>(held: crate::router::Held, handler: Fut)
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        handler.await;
        drop(held);
    });
}

/// Frames dropped because their peer held its whole [`PEER_FRAME_BUDGET`].
static OVER_BUDGET: crate::router::LogThrottle = crate::router::LogThrottle::new();

/// Handles the frames routed to this service until the router stops.
pub async fn serve(node: Arc<TxCtx>, mut rx: crate::router::ServiceRx) {
    let turns = Turns::new();
    while let Some(inbound) = rx.recv().await {
        dispatch(&node, &turns, &inbound);
    }
}

fn dispatch(node: &Arc<TxCtx>, turns: &Turns, inbound: &crate::p2p::Inbound) {
    let from = inbound.from.clone();
    let payload = inbound.frame.payload.clone();
    let bytes = payload.len().saturating_add(FRAME_TASK_BYTES);
    let Some(held) = turns.budget.try_hold(&from, bytes) else {
        if let Some(dropped) = OVER_BUDGET.hit() {
            tracing::warn!(
                dropped,
                peer = %from,
                kind = %inbound.frame.kind,
                held = turns.budget.held_by(&from),
                "peer holds its whole budget of frames in hand; frame dropped"
            );
        }
        return;
    };
    let node = node.clone();
    match inbound.frame.kind {
        wire::TX_PROPOSE => {
            spawn_in_turn(turns.proposals.of(&from), held, move || {
                intake::on_propose_frame(node, from, payload)
            });
        }
        wire::TX_PROPOSE_BATCH => {
            spawn_in_turn(turns.proposals.of(&from), held, move || {
                intake::on_propose_batch_frame(node, from, payload)
            });
        }
        crate::p2p::MessageKind::VOTE => {
            spawn_in_turn(turns.votes.of(&from), held, move || async move {
                voting::on_vote_frame(&node, &from, &payload).await
            });
        }
        wire::TX_VOTE_BATCH => {
            spawn_in_turn(turns.votes.of(&from), held, move || {
                voting::on_vote_batch_frame(node, from, payload)
            });
        }
        wire::TX_SIGN => match wire::decode::<wire::SignRequest>(&payload) {
            Ok(r) => {
                spawn_held(held, signing::on_sign_request(node, from, r));
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "malformed sign request; dropped")
                }
            }
        },
        wire::TX_SIGNATURE => match wire::decode::<wire::SignatureReply>(&payload) {
            Ok(r) => {
                let session = r.session;
                if node.tx.deliver_reply(from.clone(), r) == Delivered::NotASigner {
                    spawn_held(held, async move {
                        blame::record(
                            &node,
                            &from,
                            blame::VIOLATION_REPLY_FROM_NON_SIGNER,
                            &session.to_string(),
                            serde_json::json!({ "session": session }),
                            &node.cfg.node_id.clone(),
                        )
                        .await;
                    });
                }
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "malformed signature reply; dropped")
                }
            }
        },
        wire::TX_APPROVAL => match wire::decode::<wire::ApprovalNotice>(&payload) {
            Ok(a) => {
                spawn_held(
                    held,
                    async move { approvals::on_notice(&node, &from, a).await },
                );
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "malformed approval; dropped")
                }
            }
        },
        crate::p2p::MessageKind::APPROVER_ENDORSE => {
            match wire::decode::<wire::ApproverEndorsement>(&payload) {
                Ok(e) => {
                    spawn_held(held, async move {
                        approvals::on_endorsement(&node, &from, e).await
                    });
                }
                Err(e) => {
                    if let Some(dropped) = DROPPED.hit() {
                        tracing::warn!(dropped, peer = %from, error = %e, "malformed approver endorsement; dropped")
                    }
                }
            }
        }
        wire::TX_SPENT => match wire::decode::<spent::SpentNotice>(&payload) {
            Ok(n) => {
                spawn_held(held, async move { spent::on_notice(&node, &from, n).await });
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "malformed signed-transaction notice; dropped")
                }
            }
        },
        wire::TX_DONE => match wire::decode::<wire::Done>(&payload) {
            Ok(d) => {
                let turn = turns.results.of(&from);
                spawn_in_turn(turn, held, move || signing::on_done(node, from, d));
            }
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "malformed result; dropped")
                }
            }
        },
        other => {
            tracing::error!(peer = %from, kind = %other, "router delivered a kind this service does not own");
        }
    }
}

/// Background task: builds the wallet keys' script lookup tables (thousands of
/// derivations) ahead of the first payment, and again for keys that appear later.
pub async fn warm_wallets(node: Arc<TxCtx>) {
    loop {
        if node.unsealed().is_some() {
            if let Ok(keys) = usable_keys(&node).await {
                let _ = tokio::task::spawn_blocking(move || {
                    for k in keys {
                        k.wallet.warm_lookup();
                    }
                })
                .await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// Restores frozen keys, pins this node's own vote key once custody is unsealed, then
/// announces it to every
/// connected peer every few seconds (peers pin it on first sight; repeats are no-ops).
pub async fn announce_vote_key(node: Arc<TxCtx>) {
    let unsealed = loop {
        if let Some(u) = node.unsealed() {
            break u;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    match node.store.frozen_keys().await {
        Ok(keys) => {
            for k in keys {
                tracing::warn!(key = %k, "key stays frozen (failed final verification recorded in the audit log)");
                node.tx.freeze(&k);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read frozen keys"),
    }
    let me = node.cfg.node_id.clone();
    use vote::VoteSigner as _;
    if let Err(e) = node
        .store
        .pin_vote_key(&me, &me, &unsealed.vote_key.vote_public_key())
        .await
    {
        tracing::error!(error = %e, "cannot pin this node's own vote key");
    }
    let announcement = match vote::VoteKeyAnnouncement::new(&me, &unsealed.vote_key) {
        Ok(a) => vote::VoteMessage::KeyAnnouncement(a).encode(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the vote key announcement");
            return;
        }
    };
    // Every second at first (peers connect one by one after a start), then every 3 s.
    for round in 0u32.. {
        for peer in node.net.p2p.connected_peers() {
            let f = crate::p2p::Frame::new(
                Uuid::nil(),
                crate::p2p::MessageKind::VOTE,
                announcement.clone(),
            );
            if let Err(e) = node.net.p2p.send(&peer, f).await {
                tracing::debug!(%peer, error = %e, "vote key announcement not delivered");
            }
        }
        let pause = if round < 20 { 1 } else { 3 };
        tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(session: Uuid) -> wire::SignatureReply {
        wire::SignatureReply {
            session,
            signature: None,
            error: Some("x".into()),
            blamed: Vec::new(),
            absent: Vec::new(),
        }
    }

    #[test]
    fn signature_replies_are_routed_only_from_the_sessions_signers() {
        let r = Registry::default();
        let session = Uuid::new_v4();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        r.expect_replies(session, vec!["node-1".into(), "node-2".into()], tx);
        assert_eq!(
            r.deliver_reply("node-3".into(), reply(session)),
            Delivered::NotASigner
        );
        assert_eq!(
            r.deliver_reply("node-2".into(), reply(session)),
            Delivered::Routed
        );
        assert_eq!(
            r.deliver_reply("node-2".into(), reply(Uuid::new_v4())),
            Delivered::NoSession
        );
        assert_eq!(
            rx.try_recv().map(|(from, _)| from).ok(),
            Some("node-2".to_owned())
        );
        assert!(rx.try_recv().is_err(), "only the signer's reply was routed");
        r.forget_replies(session);
        assert_eq!(
            r.deliver_reply("node-2".into(), reply(session)),
            Delivered::NoSession
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod turn_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Waits until `done` holds, for at most 2 s (the caller asserts afterwards).
    async fn within_2s(done: impl Fn() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A burst of frames runs at most the turns' number of handlers at once; the
    /// others wait for a turn without their handler's future, and all of them run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_runs_at_most_its_turns_at_once_and_every_handler_runs() {
        let turns = Arc::new(tokio::sync::Semaphore::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let made = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let budget = crate::router::PeerBudget::new(usize::MAX);
        for _ in 0..20 {
            let (running, most, made, done) =
                (running.clone(), most.clone(), made.clone(), done.clone());
            let mut gate = gate.clone();
            let held = budget.try_hold("node-2", 1).unwrap();
            spawn_in_turn(turns.clone(), held, move || {
                made.fetch_add(1, Ordering::SeqCst);
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            made.load(Ordering::SeqCst),
            3,
            "futures made before their turn"
        );
        assert_eq!(running.load(Ordering::SeqCst), 3);
        release.send(true).unwrap();
        within_2s(|| done.load(Ordering::SeqCst) == 20).await;
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(
            budget.held_by("node-2"),
            0,
            "every handler released its bytes"
        );
    }

    /// A peer that floods a kind is held to its byte budget (the excess is refused
    /// before any task exists) and waits behind its own frames only: another peer's
    /// frame of the same kind runs while all the flooder's turns are taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooding_peer_waits_behind_its_own_frames_within_its_budget() {
        let turns = PeerTurns::new(2);
        let budget = crate::router::PeerBudget::new(10 * FRAME_TASK_BYTES);
        let (release, gate) = tokio::sync::watch::channel(false);
        let flooded = Arc::new(AtomicUsize::new(0));
        let mut accepted = 0;
        for _ in 0..100 {
            let Some(held) = budget.try_hold("mallory", FRAME_TASK_BYTES) else {
                continue;
            };
            accepted += 1;
            let (flooded, mut gate) = (flooded.clone(), gate.clone());
            spawn_in_turn(turns.of("mallory"), held, move || async move {
                let _ = gate.wait_for(|open| *open).await;
                flooded.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(accepted, 10, "the flood is cut at the peer's budget");
        let (honest_tx, honest_rx) = tokio::sync::oneshot::channel();
        let held = budget.try_hold("node-2", FRAME_TASK_BYTES).unwrap();
        spawn_in_turn(turns.of("node-2"), held, move || async move {
            let _ = honest_tx.send(());
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), honest_rx)
            .await
            .expect("the honest peer's frame ran while the flooder's waited")
            .unwrap();
        assert_eq!(flooded.load(Ordering::SeqCst), 0);
        release.send(true).unwrap();
        within_2s(|| flooded.load(Ordering::SeqCst) == 10).await;
        assert_eq!(flooded.load(Ordering::SeqCst), 10);
        within_2s(|| budget.held_by("mallory") == 0).await;
        assert_eq!(
            budget.held_by("mallory"),
            0,
            "the flooder's bytes are free again"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod deadline_tests {
    use super::*;

    /// A deadline runs once it has passed (not at its own second), in time order,
    /// and only once; later ones wait.
    #[test]
    fn deadlines_pass_in_time_order_and_are_handed_out_once() {
        let r = Registry::default();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        r.at_deadline(110, c, Deadline::Signing);
        r.at_deadline(
            100,
            a,
            Deadline::Voting {
                signing_unix: Some(110),
            },
        );
        r.at_deadline(105, b, Deadline::Abandoned);
        assert!(
            r.passed_deadlines(100).is_empty(),
            "not passed at its own second"
        );
        assert_eq!(
            r.passed_deadlines(106),
            vec![
                (
                    a,
                    Deadline::Voting {
                        signing_unix: Some(110)
                    }
                ),
                (b, Deadline::Abandoned)
            ]
        );
        assert!(r.passed_deadlines(106).is_empty(), "handed out once");
        assert_eq!(r.passed_deadlines(200), vec![(c, Deadline::Signing)]);
    }
}
