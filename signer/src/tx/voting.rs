//! Proposal handling and voting on every participant of a key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::wire::Proposal;
use super::TxCtx;
use super::{Deadline, Pending, TxError};
use crate::audit::AuditEntry;
use crate::p2p::{Frame, MessageKind};
use crate::store::audit::AuditOf;
use crate::store::transactions::{ApprovalClaim, NewTransaction, VoteRecord};
use crate::store::votes::NewRound;
use crate::store::StoreError;
use crate::tx::vote_intake::{vote_row, Prechecked, VoteIntake};
use vote::{
    evaluate_round, RoundOutcome, SignedVote, VoteBody, VoteDecision, VoteKeyBook, VoteMessage,
    VoteReject, VoteSubject,
};

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pinned vote keys of `participants` only (a quorum counts only share holders).
pub async fn key_book(node: &TxCtx, participants: &[String]) -> Result<VoteKeyBook, TxError> {
    let pins = node.store.vote_keys().await?;
    Ok(VoteKeyBook::from_pinned(
        pins.into_iter().filter(|(n, _)| participants.contains(n)),
    ))
}

/// This node's policy decision on a transaction.
#[derive(Debug)]
pub struct Verdict {
    /// The vote this node casts (when not awaiting approvals).
    pub body: VoteBody,
    /// The policy's approval proof, when it approves.
    pub approval: Option<policy::Approval>,
    /// Every rule passed but human approvals are missing: no vote is cast yet.
    pub awaiting_approval: bool,
}

impl Verdict {
    /// Turns this verdict into a final reject with `reason` added.
    fn reject(&mut self, reason: &str) {
        self.body.decision = VoteDecision::Reject;
        self.body.reasons.retain(|r| r != "needs_approval");
        if self.body.reasons.len() < vote::MAX_REASONS {
            self.body.reasons.push(reason.to_owned());
        }
        self.approval = None;
        self.awaiting_approval = false;
    }

    fn final_reject(body: VoteBody) -> Self {
        Verdict {
            body,
            approval: None,
            awaiting_approval: false,
        }
    }
}

/// This node's policy decision on `pending`, as a vote body and (when it approves)
/// the policy's approval proof. `counted_before` satoshis are added to every
/// velocity window: what this node approved earlier in the same batch, not
/// committed yet (0 outside a batch).
async fn decide(
    node: &TxCtx,
    loaded: &Result<Option<policy::Policy>, String>,
    id: Uuid,
    p: &Pending,
    deadline_unix: u64,
    at: Evaluation,
    counted_before: u64,
) -> Verdict {
    let v = &p.validated;
    let mut body = VoteBody {
        transaction_id: id,
        round_no: 1,
        txid: v.txid,
        sighashes: v.sighashes(),
        policy_hash: p.subject.policy_hash,
        decision: VoteDecision::Reject,
        reasons: Vec::new(),
        voter: node.cfg.node_id.clone(),
        deadline_unix,
    };
    let pol = match loaded {
        Ok(Some(pol)) => pol,
        Ok(None) => {
            body.reasons.push("no_policy_configured".to_owned());
            return Verdict::final_reject(body);
        }
        Err(e) => {
            tracing::error!(error = %e, "policy file does not load; voting reject");
            body.reasons.push("policy_unavailable".to_owned());
            return Verdict::final_reject(body);
        }
    };
    let ctx = match context(node, pol, id, p, at, counted_before).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the policy context; voting reject");
            body.reasons.push("policy_context_unavailable".to_owned());
            return Verdict::final_reject(body);
        }
    };
    let decision = pol.evaluate(&v.view, &ctx);
    body.reasons = decision
        .violations()
        .iter()
        .take(vote::MAX_REASONS)
        .map(|x| x.code().as_str().to_owned())
        .collect();
    let awaiting_approval = matches!(decision, policy::Decision::NeedsApproval { .. });
    if awaiting_approval {
        body.reasons.push("needs_approval".to_owned());
    }
    let approval = decision.into_approval();
    if approval.is_some() {
        body.decision = VoteDecision::Approve;
    }
    Verdict {
        body,
        approval,
        awaiting_approval,
    }
}

/// When a policy is evaluated: for this node's vote, or again for a signing
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evaluation {
    /// The vote: the velocity windows hold everything counted so far.
    Vote,
    /// A signing request: the windows hold what was counted before this
    /// transaction's own count (what its approval was checked against; see
    /// `Store::spent_in_window`).
    Signing,
}

/// Evaluates the policy again for a signing request (the approval proof is not kept
/// between the vote and the signing; it is recomputed from the same inputs).
pub async fn decide_again(node: &TxCtx, id: Uuid, p: &Pending) -> Option<policy::Approval> {
    let loaded = load_policy(node).await;
    decide(
        node,
        &loaded,
        id,
        p,
        now_unix() + 60,
        Evaluation::Signing,
        0,
    )
    .await
    .approval
}

/// The configured policy, if any (read at each evaluation).
pub async fn load_policy(node: &TxCtx) -> Result<Option<policy::Policy>, String> {
    match read_policy_file(node).await? {
        None => Ok(None),
        Some((path, text)) => parse_policy(&path, &text),
    }
}

/// The policy file's path and text (`None`: no policy file configured).
async fn read_policy_file(node: &TxCtx) -> Result<Option<(String, String)>, String> {
    let Some(path) = node.cfg.policy.file.clone() else {
        return Ok(None);
    };
    let len = tokio::fs::metadata(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > 1024 * 1024 {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((path.display().to_string(), text)))
}

fn parse_policy(path: &str, text: &str) -> Result<Option<policy::Policy>, String> {
    policy::Policy::from_toml_str(text, path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// [`load_policy`] for a vote: the file's version is in this node's audit log (a
/// `policy.version` record) before the policy decides, so the policy hash of every
/// vote has its text on record, however soon the file is replaced. A version that
/// cannot be recorded is an error: no vote is cast.
async fn load_policy_recorded(
    node: &TxCtx,
) -> Result<Result<Option<policy::Policy>, String>, StoreError> {
    let (path, text) = match read_policy_file(node).await {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    let sha = Sha256::digest(text.as_bytes()).to_vec();
    if !node.tx.policy_recorded(&sha) {
        let version = crate::audit::bundle::PolicyVersion::of_text(&text);
        if node
            .store
            .record_policy_version(&node.cfg.node_id, &path, &version)
            .await?
        {
            tracing::info!(policy = %path, "policy version recorded in the audit log before voting");
        }
        node.tx.note_policy_recorded(sha);
    }
    Ok(parse_policy(&path, &text))
}

/// Hash of a loaded policy (all zero without one).
fn policy_hash(loaded: &Result<Option<policy::Policy>, String>) -> [u8; 32] {
    match loaded {
        Ok(Some(p)) => *p.hash().as_bytes(),
        _ => [0; 32],
    }
}

async fn context(
    node: &TxCtx,
    pol: &policy::Policy,
    id: Uuid,
    p: &Pending,
    at: Evaluation,
    counted_before: u64,
) -> Result<policy::Context, StoreError> {
    let key_id = &p.validated.key_id;
    let mut window_spent = Vec::new();
    for w in pol.velocity_windows(key_id, p.validated.view.network) {
        let spent = node
            .store
            .spent_in_window(key_id, w, id, at == Evaluation::Signing)
            .await?;
        window_spent.push(policy::WindowSpent {
            window_seconds: w,
            spent_sats: spent.saturating_add(counted_before),
        });
    }
    // Looked up only where a tier of the policy asks for them (issue 21: one
    // statement per vote and per sign request otherwise).
    let approvals = if pol.asks_for_approvals(key_id, p.validated.view.network) {
        node.store.approvals(id).await?
    } else {
        Vec::new()
    };
    Ok(policy::Context {
        now_unix: now_unix(),
        window_spent,
        approvals: approvals
            .into_iter()
            .map(|a| policy::ApprovalRecord {
                approver: a.approver,
                role: a.role,
            })
            .collect(),
        initiator: p.initiator_identity.clone(),
    })
}

/// Vote reason: this node could not count its approval against the key's velocity
/// windows (its database refused), so it does not approve.
pub const REASON_OUTFLOW_NOT_COUNTED: &str = "outflow_not_counted";

/// Vote reason and API code: this node already approved the same unsigned
/// transaction (txid) under other data (amounts, scripts or sighashes).
pub const REASON_TXID_OTHER_DATA: &str = "txid_approved_with_other_data";

/// Handles a proposal (from its leader, or this node's own): validates the PSBT
/// independently, records the transaction and its round, votes and broadcasts the
/// vote. Returns once this node's vote is stored and sent.
///
/// When it fails after this node recorded a proposal of another leader (its
/// database failing mid-way), the transaction is not left open for ever: it
/// expires here at the round's deadline like any round that did not close (issue
/// 17, PostgreSQL killed during a burst).
///
/// `reserved_at_intake`: this node is the leader and its intake proved every input
/// and reserved them in the transaction's own insert (a payment request), so they
/// are not read, proven and reserved again here (issue 21: five statements and a
/// commit per payment). Peers' proposals and this node's PSBT submissions pass
/// `false`.
pub async fn on_proposal(
    node: &Arc<TxCtx>,
    from: &str,
    prop: Proposal,
    reserved_at_intake: bool,
) -> Result<(), TxError> {
    let id = prop.id;
    let deadline_unix = clamp_deadline(node, prop.deadline_unix);
    let mut recorded = false;
    let reserved_at_intake = reserved_at_intake && from == node.cfg.node_id;
    let r = on_proposal_inner(node, from, prop, reserved_at_intake, &mut recorded).await;
    if r.is_err() && recorded {
        node.tx.at_deadline(deadline_unix, id, Deadline::Abandoned);
    }
    r
}

/// Handles a batch of proposals of one key from one leader (issue 21,
/// docs/BATCHING.md): each proposal is validated, proven, recorded and decided on
/// its own exactly as by [`on_proposal`], and a refusal of one never stops the
/// others. The key's velocity lock is held once for the batch: each approval's
/// outflow counts against the windows of the proposals after it, and the votes are
/// stored in one database transaction before any leaves. Returns each proposal's
/// result, in order. `reserved_at_intake`: per proposal, as for [`on_proposal`]
/// (missing entries count as `false`).
///
/// The caller checks the batch's shape (one key, at most
/// [`super::wire::MAX_BATCH`] proposals, distinct ids).
pub async fn on_proposal_batch(
    node: &Arc<TxCtx>,
    from: &str,
    proposals: Vec<Proposal>,
    reserved_at_intake: &[bool],
) -> Vec<Result<(), TxError>> {
    let mut results: Vec<Result<(), TxError>> = Vec::with_capacity(proposals.len());
    // (clamped deadline, recorded here) of each proposal, in order.
    let mut recorded_at = Vec::new();
    let Some(key_id) = proposals.first().map(|p| p.key_id.clone()) else {
        return results;
    };
    let ids: Vec<Uuid> = proposals.iter().map(|p| p.id).collect();
    // One read of the policy file for the batch.
    let loaded = match load_policy_recorded(node).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            let e = TxError::from(e);
            return proposals
                .iter()
                .map(|_| {
                    Err(TxError::Internal(format!(
                        "policy version not recorded: {e}"
                    )))
                })
                .collect();
        }
    };
    let deadlines: Vec<u64> = proposals
        .iter()
        .map(|p| clamp_deadline(node, p.deadline_unix))
        .collect();
    let mut opened = Vec::new();
    let all = open_proposals(node, from, proposals, reserved_at_intake, &loaded).await;
    for (i, ((r, recorded), deadline_unix)) in all.into_iter().zip(deadlines).enumerate() {
        match r {
            Ok(o) => {
                opened.push((i, o));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
        recorded_at.push((deadline_unix, recorded));
    }
    if !opened.is_empty() {
        let budget = node.tx.velocity_lock(&key_id).await;
        let mut counted = 0u64;
        let mut to_cast = Vec::new();
        let mut awaiting = Vec::new();
        for (i, o) in &opened {
            let verdict = o.decide(node, counted).await;
            if verdict.awaiting_approval {
                awaiting.push((*i, o));
                continue;
            }
            if verdict.body.decision == VoteDecision::Approve {
                counted = counted
                    .saturating_add(o.pending.validated.view.outflow_sats().unwrap_or(u64::MAX));
            }
            to_cast.push((*i, (o.id, o.pending.clone(), verdict)));
        }
        let (order, votes): (Vec<_>, Vec<_>) = to_cast.into_iter().unzip();
        let cast = cast_votes(node, votes, budget).await;
        for (i, r) in order.into_iter().zip(cast) {
            if let Err(e) = r {
                results[i] = Err(e);
            }
        }
        for (i, o) in awaiting {
            if let Err(e) = o.await_approvals(node).await {
                results[i] = Err(e);
            }
        }
        for (i, o) in &opened {
            if results[*i].is_ok() {
                o.after_vote(node).await;
            }
        }
    }
    // A proposal recorded here that failed later is not left open for ever.
    for ((r, (deadline_unix, recorded)), id) in results.iter().zip(recorded_at).zip(ids) {
        if r.is_err() && recorded {
            node.tx.at_deadline(deadline_unix, id, Deadline::Abandoned);
        }
    }
    results
}

/// Runs the transactions' deadlines as they pass ([`super::Registry::at_deadline`]),
/// each in a task of its own. Runs forever.
pub async fn expire_at_deadlines(node: Arc<TxCtx>) {
    loop {
        tokio::time::sleep(DEADLINE_TICK).await;
        for (id, what) in node.tx.passed_deadlines(now_unix()) {
            let node = node.clone();
            tokio::spawn(async move { Box::pin(run_deadline(&node, id, what)).await });
        }
    }
}

/// How often [`expire_at_deadlines`] looks for passed deadlines.
const DEADLINE_TICK: Duration = Duration::from_millis(250);

async fn run_deadline(node: &Arc<TxCtx>, id: Uuid, what: Deadline) {
    match what {
        Deadline::Voting { signing_unix } => {
            expire_if_open(node, id).await;
            if let Some(at) = signing_unix {
                node.tx.at_deadline(at, id, Deadline::Signing);
            }
        }
        Deadline::Signing => expire_unsigned(node, id).await,
        Deadline::Abandoned => expire_abandoned(node, id).await,
    }
}

/// A proposal this node recorded but could not finish handling: at its deadline,
/// the round closes as expired if it is open (the in-memory round when it got that
/// far), else the transaction expires if it is still `pending` or `voting`, and its
/// reserved inputs are released.
async fn expire_abandoned(node: &Arc<TxCtx>, id: Uuid) {
    if node.tx.get(id).is_some() {
        expire_if_open(node, id).await;
        return;
    }
    let details = |from: &str| serde_json::json!({ "reason": "voting deadline passed", "from": from, "abandoned": true });
    let states = [("voting", true), ("pending", true)];
    if let Some(from) = expire_from(node, id, "expiry", &states, details).await {
        tracing::warn!(tx = %id, from, "proposal not fully handled here; expired at its deadline");
    }
}

async fn on_proposal_inner(
    node: &Arc<TxCtx>,
    from: &str,
    prop: Proposal,
    reserved_at_intake: bool,
    recorded: &mut bool,
) -> Result<(), TxError> {
    let opened = open_proposal(node, from, prop, reserved_at_intake, None, recorded).await?;
    let budget = node
        .tx
        .velocity_lock(&opened.pending.validated.key_id)
        .await;
    let verdict = opened.decide(node, 0).await;
    if verdict.awaiting_approval {
        drop(budget);
        opened.await_approvals(node).await?;
    } else {
        cast_vote(node, opened.id, &opened.pending, verdict, budget).await?;
    }
    opened.after_vote(node).await;
    Ok(())
}

/// A proposal recorded here (transaction row, round, reservation) and held in
/// memory, before this node decides: what [`on_proposal`] and
/// [`on_proposal_batch`] decide and vote on.
struct Opened {
    id: Uuid,
    leader: String,
    pending: Arc<Pending>,
    loaded: Arc<Result<Option<policy::Policy>, String>>,
    /// Why this node votes reject whatever its policy says (an input it cannot
    /// prove or that is spent or reserved here).
    input_reject: Option<&'static str>,
}

impl Opened {
    /// This node's decision. `counted_before`: the outflow this node approved
    /// earlier in the same batch, under the same hold of the key's velocity lock
    /// but not yet committed (counted in every window, as it will be).
    async fn decide(&self, node: &TxCtx, counted_before: u64) -> Verdict {
        let mut verdict = decide(
            node,
            &self.loaded,
            self.id,
            &self.pending,
            self.pending.deadline_unix,
            Evaluation::Vote,
            counted_before,
        )
        .await;
        if let Some(reason) = self.input_reject {
            verdict.reject(reason);
        }
        verdict
    }

    /// The policy needs human approvals: recorded; the vote waits for them.
    async fn await_approvals(&self, node: &TxCtx) -> Result<(), TxError> {
        node.store
            .audit(
                &node.cfg.node_id,
                AuditEntry::new("node", "tx.awaiting_approval")
                    .subject(self.id.to_string())
                    .details(serde_json::json!({
                        "txid": self.pending.validated.txid.to_string(),
                        "leader": self.leader,
                    })),
            )
            .await?;
        tracing::info!(tx = %self.id, "policy needs human approvals; vote held until they arrive");
        Ok(())
    }

    /// After this node's vote (or its wait for approvals): the votes and the result
    /// that arrived before the proposal, and the round's deadlines.
    async fn after_vote(&self, node: &Arc<TxCtx>) {
        let id = self.id;
        // Votes that arrived before the proposal.
        for (sender, vote) in node.tx.take_early_votes(id) {
            accept_vote(node, id, &sender, &vote).await;
        }
        // A result that overtook the proposal (the leader finished with the others).
        for (sender, done) in node.tx.take_early_results(id) {
            tokio::spawn(super::signing::on_done(node.clone(), sender, done));
        }
        // At the voting deadline the round expires if it is still open; a
        // follower's own signing deadline follows (an approved transaction that
        // has not been signed by then is not signed by this node any more).
        let signing_unix =
            (self.leader != node.cfg.node_id).then_some(self.pending.sign_deadline_unix);
        node.tx.at_deadline(
            self.pending.deadline_unix,
            id,
            Deadline::Voting { signing_unix },
        );
    }
}

/// Records a proposal (see [`Opened`]): validation, the input proofs, the
/// transaction row, its round and reservation. `loaded`: the policy a batch read
/// once for all its proposals (`None`: read here).
async fn open_proposal(
    node: &Arc<TxCtx>,
    from: &str,
    prop: Proposal,
    reserved_at_intake: bool,
    loaded: Option<Arc<Result<Option<policy::Policy>, String>>>,
    recorded: &mut bool,
) -> Result<Opened, TxError> {
    let keys = super::usable_keys(node).await?;
    let mut checked = Checked::new(node, from, prop, reserved_at_intake, &keys)?;
    if !checked.reserved_at_intake {
        let known = node.store.known_outputs(&checked.outpoints()).await?;
        checked.prove(&known);
    }
    checked.record(node, recorded).await?;
    let loaded = match loaded {
        Some(l) => l,
        None => Arc::new(load_policy_recorded(node).await?),
    };
    Ok(checked.open(node, loaded))
}

/// [`open_proposal`] for the proposals of one batch: validated one by one, their
/// inputs' proofs read in one statement, and recorded in one database transaction
/// (each on its own when that cannot be written whole: a replayed proposal, an
/// input spent or reserved here, so each fails or votes reject alone). Returns
/// each proposal's result and whether it was recorded here, in order.
async fn open_proposals(
    node: &Arc<TxCtx>,
    from: &str,
    proposals: Vec<Proposal>,
    reserved_at_intake: &[bool],
    loaded: &Arc<Result<Option<policy::Policy>, String>>,
) -> Vec<(Result<Opened, TxError>, bool)> {
    let me = &node.cfg.node_id;
    let keys = match super::usable_keys(node).await {
        Ok(k) => k,
        Err(e) => {
            let reason = e.to_string();
            return proposals
                .iter()
                .map(|_| (Err(TxError::Internal(reason.clone())), false))
                .collect();
        }
    };
    let mut checked: Vec<Result<Checked, TxError>> = proposals
        .into_iter()
        .enumerate()
        .map(|(i, prop)| {
            let reserved = reserved_at_intake.get(i).copied().unwrap_or(false) && from == me;
            Checked::new(node, from, prop, reserved, &keys)
        })
        .collect();
    let outpoints: Vec<bitcoin::OutPoint> = checked
        .iter()
        .flatten()
        .filter(|c| !c.reserved_at_intake)
        .flat_map(|c| c.outpoints())
        .collect();
    if !outpoints.is_empty() {
        match node.store.known_outputs(&outpoints).await {
            Ok(known) => {
                for c in checked.iter_mut().flatten() {
                    if !c.reserved_at_intake {
                        c.prove(&known);
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for c in checked.iter_mut() {
                    if c.as_ref().is_ok_and(|c| !c.reserved_at_intake) {
                        *c = Err(TxError::Internal(reason.clone()));
                    }
                }
            }
        }
    }
    // One database transaction for the batch; each on its own when it fails.
    let rows: Vec<_> = checked
        .iter()
        .flatten()
        .map(|c| (c.new.as_ref(), c.prop.id, &c.round, c.reserve.as_slice()))
        .collect();
    let together = rows.len() > 1
        && match node.store.open_votings(from, &rows).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, proposals = rows.len(), "batch of proposals not recorded together; recording each on its own");
                false
            }
        };
    drop(rows);
    let mut out = Vec::with_capacity(checked.len());
    for c in checked {
        let mut recorded = false;
        let r = match c {
            Ok(mut c) => {
                let r = if together {
                    recorded = c.new.is_some();
                    Ok(())
                } else {
                    c.record(node, &mut recorded).await
                };
                r.map(|()| c.open(node, loaded.clone()))
            }
            Err(e) => Err(e),
        };
        out.push((r, recorded));
    }
    out
}

/// A proposal validated by this node, before it is recorded.
struct Checked {
    prop: Proposal,
    leader: String,
    participants: Vec<String>,
    threshold: u16,
    validated: wallet::ValidatedPsbt,
    /// A peer's proposal: its transaction row (the leader's own exists since
    /// intake).
    new: Option<NewTransaction>,
    round: NewRound,
    deadline_unix: u64,
    /// This node is the leader and its intake proved and reserved every input.
    reserved_at_intake: bool,
    /// The proven inputs, reserved with the round.
    reserve: Vec<wallet::OwnedUtxo>,
    input_reject: Option<&'static str>,
}

impl Checked {
    /// The checks that need no database: deadline, key, participants, the PSBT.
    fn new(
        node: &TxCtx,
        from: &str,
        prop: Proposal,
        reserved_at_intake: bool,
        keys: &[super::UsableKey],
    ) -> Result<Checked, TxError> {
        // A proposal delivered after its voting deadline (a node that was down while
        // its leader kept re-sending) is over everywhere else: opening it here would
        // reserve its inputs and make this node reject the next payment that spends
        // them (the nodes_down fault test: nodes back from a SIGKILL voted reject,
        // "input already spent or reserved", on the payment after the expired one).
        if prop.deadline_unix < now_unix() {
            return Err(TxError::Invalid {
                code: "proposal_expired",
                message: format!(
                    "proposal {} arrived after its voting deadline ({})",
                    prop.id, prop.deadline_unix
                ),
            });
        }
        let me = &node.cfg.node_id;
        let key = keys
            .iter()
            .find(|k| k.wallet.key_id() == prop.key_id)
            .ok_or_else(|| TxError::UnknownKey(prop.key_id.clone()))?;
        if !key.participants.iter().any(|p| p == from) || !key.participants.contains(me) {
            return Err(TxError::Invalid {
                code: "not_a_participant",
                message: format!(
                    "{from} proposed a transaction for key {} it does not hold",
                    prop.key_id
                ),
            });
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(prop.psbt.as_bytes())
            .map_err(|e| TxError::Invalid {
                code: "psbt_malformed",
                message: format!("proposal psbt is not base64: {e}"),
            })?;
        let validated = wallet::intake_psbt(
            &raw,
            std::slice::from_ref(&key.wallet),
            &super::limits(node),
        )?;
        let new = (from != me).then(|| NewTransaction {
            id: prop.id,
            key_id: Some(prop.key_id.clone()),
            recipient: None,
            amount_sats: None,
            fee_sats: i64::try_from(validated.fee_sats).ok(),
            psbt: Some(raw),
            initiator: prop.initiator.clone(),
        });
        // The leader proposes the deadline; this node never lets its vote live
        // longer than its own maximum.
        let deadline_unix = clamp_deadline(node, prop.deadline_unix);
        let deadline =
            chrono::DateTime::from_timestamp(i64::try_from(deadline_unix).unwrap_or(0), 0)
                .unwrap_or_else(chrono::Utc::now);
        let round = NewRound {
            id: Uuid::new_v4(),
            round_no: 1,
            required_approvals: i32::from(key.threshold),
            total_nodes: i32::try_from(key.participants.len()).unwrap_or(i32::MAX),
            deadline,
        };
        Ok(Checked {
            prop,
            leader: from.to_owned(),
            participants: key.participants.clone(),
            threshold: key.threshold,
            validated,
            new,
            round,
            deadline_unix,
            reserved_at_intake: reserved_at_intake && from == me,
            reserve: Vec::new(),
            input_reject: None,
        })
    }

    fn outpoints(&self) -> Vec<bitcoin::OutPoint> {
        self.validated.inputs.iter().map(|i| i.outpoint).collect()
    }

    /// Every input's amount and script must be proven to this node itself (the
    /// full previous transaction, or an output it imported): the leader's word is
    /// not enough (BIP-143 fee attack). The leader's own payment was proven and
    /// reserved by its intake (the reservation stands: `open_voting` moves the
    /// transaction on from `pending`, which it cannot do once the transaction
    /// ended and released them), so this is not called for it.
    fn prove(&mut self, known: &wallet::KnownOutputs) {
        match self.validated.check_input_proofs(known) {
            Ok(()) => self.reserve = proven_inputs(&self.validated),
            Err(e) => {
                tracing::warn!(tx = %self.prop.id, error = %e, "input amounts not proven; voting reject");
                self.input_reject = Some(e.code());
            }
        }
    }

    /// A peer's proposal, its leader and deadline, state `voting`, the round and
    /// the reservation of its proven inputs: one database transaction.
    async fn record(&mut self, node: &TxCtx, recorded: &mut bool) -> Result<(), TxError> {
        let from = self.leader.as_str();
        match node
            .store
            .open_voting(
                self.new.as_ref(),
                self.prop.id,
                from,
                &self.round,
                &self.reserve,
            )
            .await
        {
            Ok(unavailable) => {
                *recorded = self.new.is_some();
                // An input this node knows as spent, or reserved by another
                // transaction (e.g. a concurrent proposal from another leader), is
                // never signed twice.
                if let Some(o) = unavailable {
                    tracing::warn!(tx = %self.prop.id, input = %o, "input already spent or reserved; voting reject");
                    self.input_reject = Some("input_unavailable");
                }
                Ok(())
            }
            Err(StoreError::Duplicate { .. }) if self.new.is_some() => {
                Err(replayed_proposal(node, from, &self.prop).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The recorded proposal in memory, ready for this node's decision.
    fn open(self, node: &TxCtx, loaded: Arc<Result<Option<policy::Policy>, String>>) -> Opened {
        let prop = self.prop;
        let subject = VoteSubject {
            transaction_id: prop.id,
            round_no: 1,
            txid: self.validated.txid,
            sighashes: self.validated.sighashes(),
            policy_hash: policy_hash(&loaded),
        };
        let deadline_unix = self.deadline_unix;
        let pending = Arc::new(Pending {
            validated: self.validated,
            participants: self.participants,
            threshold: self.threshold,
            leader: self.leader,
            round_id: self.round.id,
            subject,
            initiator: prop.initiator.clone(),
            initiator_identity: prop
                .initiator_name
                .clone()
                .filter(|n| !n.is_empty() && n.len() <= 128)
                .unwrap_or_else(|| prop.initiator.clone()),
            deadline_unix,
            sign_deadline_unix: deadline_unix
                .saturating_add(node.cfg.wallet.sign_timeout_secs.max(5)),
            voted: AtomicBool::new(false),
            approval_counted: AtomicBool::new(false),
            round_closed: AtomicBool::new(false),
            relayed_votes: std::sync::OnceLock::new(),
            blame: std::sync::Mutex::default(),
            stored_votes: std::sync::Mutex::default(),
            settling: tokio::sync::Mutex::default(),
        });
        node.tx.insert(prop.id, pending.clone());
        Opened {
            id: prop.id,
            leader: pending.leader.clone(),
            pending,
            loaded,
            input_reject: self.input_reject,
        }
    }
}

/// The deadline this node accepts for a proposal: the leader's, but never later
/// than `[wallet] max_vote_deadline_secs` from now.
pub fn clamp_deadline(node: &TxCtx, proposed_unix: u64) -> u64 {
    proposed_unix.min(now_unix().saturating_add(node.cfg.wallet.max_vote_deadline_secs))
}

/// The inputs of a validated PSBT as UTXO rows (amount and script as proven by
/// [`wallet::ValidatedPsbt::check_input_proofs`]).
fn proven_inputs(v: &wallet::ValidatedPsbt) -> Vec<wallet::OwnedUtxo> {
    v.inputs
        .iter()
        .zip(v.psbt.inputs.iter())
        .filter_map(|(i, p)| {
            let out = p.witness_utxo.as_ref()?;
            Some(wallet::OwnedUtxo {
                key_id: v.key_id.clone(),
                outpoint: i.outpoint,
                value_sats: out.value.to_sat(),
                script_pubkey: out.script_pubkey.clone(),
                chain: i.chain,
                index: i.index,
            })
        })
        .collect()
}

/// A proposal for a transaction id this node already has: nothing is changed (not
/// the stored leader, deadline or round); the sender is recorded as
/// `replayed_proposal`.
async fn replayed_proposal(node: &TxCtx, from: &str, prop: &Proposal) -> TxError {
    let stored_leader = node
        .store
        .get_transaction(prop.id)
        .await
        .ok()
        .and_then(|r| r.leader);
    tracing::warn!(tx = %prop.id, peer = %from, "replayed proposal for an existing transaction; ignored and recorded");
    let evidence = serde_json::json!({
        "transaction": prop.id,
        "key_id": prop.key_id,
        "proposed_deadline_unix": prop.deadline_unix,
        "stored_leader": stored_leader,
    });
    if let Err(e) = node
        .store
        .record_violation(
            from,
            VIOLATION_REPLAYED_PROPOSAL,
            Some(&prop.id.to_string()),
            &evidence,
            &node.cfg.node_id,
            &node.cfg.node_id,
        )
        .await
    {
        tracing::error!(tx = %prop.id, error = %e, "cannot record the replayed proposal");
    }
    TxError::Conflict {
        code: VIOLATION_REPLAYED_PROPOSAL,
        message: format!(
            "transaction {} already exists here; proposal ignored",
            prop.id
        ),
    }
}

/// Violation code of a proposal for a transaction id that already exists.
pub const VIOLATION_REPLAYED_PROPOSAL: &str = "replayed_proposal";

/// Signs, records and broadcasts this node's one vote on `id` (at most once: a
/// second call is a no-op, so this node never double-votes). An approval is counted
/// against the key's velocity windows before the vote leaves; `budget` (the key's
/// velocity lock, taken before the policy read the windows) is released then.
async fn cast_vote(
    node: &Arc<TxCtx>,
    id: Uuid,
    pending: &Arc<Pending>,
    verdict: Verdict,
    budget: tokio::sync::OwnedMutexGuard<()>,
) -> Result<(), TxError> {
    let Some(mut sealed) = SealedVote::seal(node, id, pending, verdict)? else {
        return Ok(());
    };
    sealed.store(node).await?;
    drop(budget);
    sealed.send(node).await;
    Ok(())
}

/// [`cast_vote`] for the votes of one batch, decided under one hold of the key's
/// velocity lock (`budget`): stored in one database transaction (one commit and one
/// hold of the audit lock for the batch; issue 21), then each sent. When that
/// transaction cannot be written whole (a txid approved here under other data, a
/// conflict), every vote is written again on its own, so one bad entry fails
/// alone. Returns each vote's result, in order.
async fn cast_votes(
    node: &Arc<TxCtx>,
    votes: Vec<(Uuid, Arc<Pending>, Verdict)>,
    budget: tokio::sync::OwnedMutexGuard<()>,
) -> Vec<Result<(), TxError>> {
    let mut results = Vec::with_capacity(votes.len());
    let mut sealed = Vec::with_capacity(votes.len());
    for (id, pending, verdict) in votes {
        match SealedVote::seal(node, id, &pending, verdict) {
            Ok(Some(v)) => {
                sealed.push((results.len(), v));
                results.push(Ok(()));
            }
            Ok(None) => results.push(Ok(())),
            Err(e) => results.push(Err(e)),
        }
    }
    let together = if sealed.len() > 1 {
        let rows: Vec<_> = sealed
            .iter()
            .map(|(_, v)| {
                (
                    v.id,
                    v.claim(),
                    vote_row(v.pending.round_id, &v.signed),
                    v.audit(node),
                )
            })
            .collect();
        match node.store.record_own_votes(&rows).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, votes = rows.len(), "batch of own votes not written together; writing each on its own");
                false
            }
        }
    } else {
        false
    };
    let mut stored = Vec::with_capacity(sealed.len());
    for (i, mut v) in sealed {
        if together {
            v.recorded();
        } else if let Err(e) = v.store(node).await {
            results[i] = Err(e);
            continue;
        }
        stored.push(v);
    }
    drop(budget);
    send_votes(node, stored).await;
    results
}

/// This node's vote on one transaction, signed, before it is stored and sent.
struct SealedVote {
    id: Uuid,
    pending: Arc<Pending>,
    verdict: Verdict,
    signed: SignedVote,
    unsealed: Arc<crate::infra::Unsealed>,
    txid: String,
    data_hash: [u8; 32],
}

impl SealedVote {
    /// Signs `verdict` (`None` when this node voted on `id` already: it votes once).
    fn seal(
        node: &TxCtx,
        id: Uuid,
        pending: &Arc<Pending>,
        verdict: Verdict,
    ) -> Result<Option<SealedVote>, TxError> {
        if pending.voted.swap(true, Ordering::SeqCst) {
            return Ok(None);
        }
        let mut verdict = verdict;
        let v = &pending.validated;
        if verdict.body.decision == VoteDecision::Approve && v.view.outflow_sats().is_none() {
            tracing::error!(tx = %id, "outflow overflows: cannot count the approval against the velocity limits; voting reject");
            verdict.reject(REASON_OUTFLOW_NOT_COUNTED);
        }
        let unsealed = node.unsealed().ok_or(TxError::Sealed)?;
        let signed = Self::sign(&verdict, &unsealed)?;
        Ok(Some(SealedVote {
            id,
            pending: pending.clone(),
            verdict,
            signed,
            unsealed,
            txid: v.txid.to_string(),
            data_hash: v.approval_data_hash(),
        }))
    }

    fn sign(verdict: &Verdict, unsealed: &crate::infra::Unsealed) -> Result<SignedVote, TxError> {
        SignedVote::sign(verdict.body.clone(), &unsealed.vote_key)
            .map_err(|e| TxError::Internal(format!("signing the vote: {e}")))
    }

    /// What an approval commits this node to: the txid approved under this data
    /// only, the outflow counted from now on, whatever the leader reports later.
    fn claim(&self) -> Option<ApprovalClaim<'_>> {
        let v = &self.pending.validated;
        (self.verdict.body.decision == VoteDecision::Approve).then(|| ApprovalClaim {
            txid: &self.txid,
            data_hash: &self.data_hash,
            key_id: &v.key_id,
            outflow_sats: v.view.outflow_sats().unwrap_or(0),
        })
    }

    /// The vote's audit record.
    fn audit(&self, node: &TxCtx) -> AuditOf {
        AuditOf::new(
            &node.cfg.node_id,
            AuditEntry::new("node", "tx.vote")
                .subject(self.id.to_string())
                .details(serde_json::json!({
                    "decision": self.verdict.body.decision.as_str(),
                    "reasons": self.verdict.body.reasons,
                    "txid": self.txid,
                    "policy_hash": hex::encode(self.pending.subject.policy_hash),
                    "leader": self.pending.leader,
                })),
        )
    }

    /// The claim, the outflow, the signed vote and its audit row, in one database
    /// transaction, before the vote leaves (issue 21: one commit instead of
    /// three). A txid approved here under other data turns the vote into a
    /// reject, signed again.
    async fn store(&mut self, node: &TxCtx) -> Result<(), TxError> {
        let row = vote_row(self.pending.round_id, &self.signed);
        match node
            .store
            .record_own_vote(self.id, self.claim(), &row, self.audit(node))
            .await?
        {
            VoteRecord::TxidApprovedWithOtherData(first) => {
                tracing::warn!(tx = %self.id, txid = %self.txid, first = %first, "txid already approved under other data; voting reject");
                self.verdict.reject(REASON_TXID_OTHER_DATA);
                self.signed = Self::sign(&self.verdict, &self.unsealed)?;
                let row = vote_row(self.pending.round_id, &self.signed);
                node.store
                    .record_own_vote(self.id, self.claim(), &row, self.audit(node))
                    .await?;
            }
            VoteRecord::Recorded => self.recorded(),
        }
        Ok(())
    }

    /// The vote is committed: an approval's outflow is counted.
    fn recorded(&self) {
        if self.claim().is_some() {
            self.pending.approval_counted.store(true, Ordering::Release);
        }
    }

    /// Counts the stored vote in the tally and sends it to every participant.
    async fn send(self, node: &Arc<TxCtx>) {
        let (id, pending, signed, bad) = self.note(node);
        check_round(node, id, &pending).await;
        let frames = std::iter::once(signed)
            .chain(bad)
            .map(|v| Frame::new(id, MessageKind::VOTE, VoteMessage::Vote(v).encode()))
            .collect();
        broadcast_detached(node, &pending.participants, frames);
    }

    /// Notes the stored vote in its round's tally (not settled yet: see
    /// [`check_round`]); returns the vote and the Byzantine votes fault injection
    /// sends after it (none in an operator's build).
    fn note(self, node: &TxCtx) -> (Uuid, Arc<Pending>, SignedVote, Vec<SignedVote>) {
        let me = &node.cfg.node_id;
        let SealedVote {
            id,
            pending,
            signed,
            unsealed,
            ..
        } = self;
        tracing::info!(voter = %me, tx = %id, decision = %signed.body().decision, "own vote recorded");
        // Stored: counted in the tally without being checked and stored again.
        pending.note_vote_stored(&signed);
        let bad = crate::fault::byzantine_votes(
            me,
            &pending.participants,
            &signed,
            Some(&unsealed.vote_key),
        );
        if !bad.is_empty() {
            tracing::error!(tx = %id, count = bad.len(), "FAULT INJECTION: sending Byzantine votes");
        }
        (id, pending, signed, bad)
    }
}

/// Room left in a vote batch frame beside its votes (the batch id, JSON).
const VOTE_BATCH_SLACK_BYTES: usize = 1024;

/// The stored votes of one batch: noted in their tallies, sent to the participants
/// in [`super::wire::TX_VOTE_BATCH`] frames (one per participant set, which is one
/// for a batch of one key, unless the votes are too long for one frame; issue 21),
/// then their rounds settled together (so the closes they bring share statements).
/// A lone vote goes in its own `VOTE` frame, as without batches.
async fn send_votes(node: &Arc<TxCtx>, stored: Vec<SealedVote>) {
    if stored.len() < 2 {
        for v in stored {
            v.send(node).await;
        }
        return;
    }
    let room = super::wire::MAX_TX_FRAME_BYTES.saturating_sub(VOTE_BATCH_SLACK_BYTES);
    // (participants, votes with their transaction and hex encoding, their bytes)
    type Group = (Vec<String>, Vec<(Uuid, SignedVote, String)>, usize);
    let mut groups: Vec<Group> = Vec::new();
    let mut settle = Vec::with_capacity(stored.len());
    for v in stored {
        let (id, pending, signed, bad) = v.note(node);
        // A Byzantine node's extra votes travel in its batch, after its vote.
        for v in std::iter::once(signed).chain(bad) {
            let hex = hex::encode(v.encode());
            let len = hex.len().saturating_add(3);
            match groups.iter_mut().find(|(p, votes, bytes)| {
                *p == pending.participants
                    && votes.len() < super::wire::MAX_BATCH
                    && bytes.saturating_add(len) <= room
            }) {
                Some((_, votes, bytes)) => {
                    votes.push((id, v, hex));
                    *bytes = bytes.saturating_add(len);
                }
                None => groups.push((pending.participants.clone(), vec![(id, v, hex)], len)),
            }
        }
        settle.push((id, pending));
    }
    for (participants, votes, _) in groups {
        // A participant of an older release (wire level 1) gets each vote in its own
        // `VOTE` frame; the others get the batch.
        let (batched, single): (Vec<String>, Vec<String>) = participants
            .into_iter()
            .partition(|p| super::batch::speaks_batches(node, p));
        if single.iter().any(|p| *p != node.cfg.node_id) {
            let frames = votes
                .iter()
                .map(|(id, v, _)| {
                    Frame::new(
                        *id,
                        MessageKind::VOTE,
                        VoteMessage::Vote(v.clone()).encode(),
                    )
                })
                .collect();
            broadcast_detached(node, &single, frames);
        }
        if !batched.iter().any(|p| *p != node.cfg.node_id) {
            continue;
        }
        let batch = super::wire::VoteBatch {
            batch: Uuid::new_v4(),
            votes: votes.into_iter().map(|(_, _, hex)| hex).collect(),
        };
        match super::wire::encode(&batch) {
            Ok(b) => {
                node.tx.batches.note_votes_sent();
                let frame = Frame::new(batch.batch, super::wire::TX_VOTE_BATCH, b);
                broadcast_detached(node, &batched, vec![frame]);
            }
            // Cannot happen (the votes fit the frame's bound by construction);
            // the peers would learn these votes from the signing leader's relay.
            Err(e) => {
                tracing::error!(batch = %batch.batch, error = %e, "cannot encode a vote batch")
            }
        }
    }
    futures::future::join_all(
        settle
            .iter()
            .map(|(id, pending)| check_round(node, *id, pending)),
    )
    .await;
}

/// Re-evaluates a transaction this node has not voted on yet because human approvals
/// were missing; votes once the policy decides.
pub async fn reconsider(node: &Arc<TxCtx>, id: Uuid) {
    let Some(p) = node.tx.get(id) else {
        return;
    };
    if p.voted.load(Ordering::SeqCst) {
        return;
    }
    let loaded = match load_policy_recorded(node).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot record the policy version; not voting");
            return;
        }
    };
    let budget = node.tx.velocity_lock(&p.validated.key_id).await;
    let verdict = decide(node, &loaded, id, &p, p.deadline_unix, Evaluation::Vote, 0).await;
    if verdict.awaiting_approval {
        tracing::info!(tx = %id, "approval recorded; more approvals still needed");
        return;
    }
    if let Err(e) = cast_vote(node, id, &p, verdict, budget).await {
        tracing::error!(tx = %id, error = %e, "cannot cast the vote after approvals");
    }
}

/// Sends `frame` to every other participant (failures are logged).
pub async fn broadcast(node: &Arc<TxCtx>, participants: &[String], frame: Frame) {
    let me = &node.cfg.node_id;
    let sends = futures::future::join_all(participants.iter().filter(|p| *p != me).map(|p| {
        let f = frame.clone();
        async move { (p.clone(), node.net.p2p.send(p, f).await) }
    }))
    .await;
    for (peer, r) in sends {
        if let Err(e) = r {
            tracing::warn!(%peer, error = %e, "sending to a participant failed");
        }
    }
}

/// Sends `frames` to every participant but this node, in order, from a task of its
/// own: the caller (an API request, a vote) never waits on peers. A frozen or slow
/// peer holds only this task, up to the send timeout per frame.
pub fn broadcast_detached(node: &Arc<TxCtx>, participants: &[String], frames: Vec<Frame>) {
    if frames.is_empty() {
        return;
    }
    let node = node.clone();
    let participants = participants.to_vec();
    tokio::spawn(async move {
        for f in frames {
            broadcast(&node, &participants, f).await;
        }
    });
}

/// Handles a vote frame payload from `from` (vote or key announcement).
pub async fn on_vote_frame(node: &Arc<TxCtx>, from: &str, payload: &[u8]) {
    let msg = match VoteMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            if let Some(dropped) = crate::tx::DROPPED.hit() {
                tracing::warn!(dropped, peer = %from, error = %e, "malformed vote message; dropped")
            };
            return;
        }
    };
    match msg {
        VoteMessage::KeyAnnouncement(a) => {
            let mut book = pinned_key_book(node).await;
            let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
            if let Err(e) = intake.accept_key_announcement(&mut book, &a, from).await {
                tracing::warn!(peer = %from, error = %e, "vote key announcement refused");
            }
        }
        VoteMessage::Vote(v) => on_vote(node, from, v).await,
    }
}

/// Handles a batch of votes from `from` ([`super::wire::TX_VOTE_BATCH`]): each vote
/// exactly as if it had come in a `VOTE` frame of its own, all at once (so their
/// inserts and their rounds' closes share statements). A batch of the wrong shape,
/// or with a vote that does not decode, is dropped whole before any vote in it is
/// handled.
pub async fn on_vote_batch_frame(node: Arc<TxCtx>, from: String, payload: bytes::Bytes) {
    let batch = match super::wire::decode::<super::wire::VoteBatch>(&payload) {
        Ok(b) => b,
        Err(e) => {
            if let Some(dropped) = crate::tx::DROPPED.hit() {
                tracing::warn!(dropped, peer = %from, error = %e, "malformed vote batch; dropped")
            }
            return;
        }
    };
    let votes: Result<Vec<SignedVote>, String> = batch.check().and_then(|()| {
        batch
            .votes
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| SignedVote::decode(&b).ok())
                    .ok_or_else(|| "a vote of the batch does not decode".to_owned())
            })
            .collect()
    });
    let votes = match votes {
        Ok(v) => v,
        Err(e) => {
            if let Some(dropped) = crate::tx::DROPPED.hit() {
                tracing::warn!(dropped, peer = %from, batch = %batch.batch, error = %e, "vote batch refused; dropped");
            }
            return;
        }
    };
    node.tx.batches.note_votes_received();
    // Votes on different transactions are handled at once; those on one
    // transaction (a Byzantine sender's second vote) in the order they came.
    let mut by_tx: Vec<(Uuid, Vec<SignedVote>)> = Vec::new();
    for v in votes {
        let id = v.body().transaction_id;
        match by_tx.iter_mut().find(|(t, _)| *t == id) {
            Some((_, same)) => same.push(v),
            None => by_tx.push((id, vec![v])),
        }
    }
    futures::future::join_all(by_tx.into_iter().map(|(_, same)| {
        let (node, from) = (&node, &from);
        async move {
            for v in same {
                on_vote(node, from, v).await;
            }
        }
    }))
    .await;
}

/// Handles one signed vote from `from`.
async fn on_vote(node: &Arc<TxCtx>, from: &str, v: SignedVote) {
    let id = v.body().transaction_id;
    if node.tx.get(id).is_some() {
        accept_vote(node, id, from, &v).await;
        return;
    }
    if let Some(ended) = node.tx.ended_round(id) {
        accept_late_vote(node, id, from, &v, &ended).await;
        return;
    }
    // Not tracked here (yet, or for long): forgery is recorded now; a
    // genuine vote waits for its proposal.
    let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
    let book = pinned_key_book(node).await;
    match intake.precheck(&book, &v, from).await {
        Ok(Prechecked::Unseen) | Err(VoteReject::UnknownVoter { .. }) => {
            node.tx.keep_early_vote(id, from.to_owned(), v);
            // The proposal may have been taken in (and its early votes
            // drained) while this vote was being checked: drain again.
            if node.tx.get(id).is_some() {
                for (sender, vote) in node.tx.take_early_votes(id) {
                    accept_vote(node, id, &sender, &vote).await;
                }
            }
        }
        Ok(Prechecked::AlreadyStored) => {
            tracing::debug!(tx = %id, peer = %from, "vote already stored; re-delivery dropped")
        }
        Err(e) => {
            tracing::warn!(tx = %id, peer = %from, error = %e, "vote refused")
        }
    }
}

/// Stores a vote that arrived after this node finished its transaction, checked
/// against the ended round like any other (the record stays complete; a second,
/// different vote of the same voter is its double vote). It counts for nothing:
/// the round is closed.
async fn accept_late_vote(
    node: &Arc<TxCtx>,
    id: Uuid,
    from: &str,
    vote: &SignedVote,
    ended: &super::EndedRound,
) {
    let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
    let book = match key_book(node, &ended.participants).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot read the vote keys");
            return;
        }
    };
    match intake
        .accept(&book, ended.round_id, vote, from, &ended.subject)
        .await
    {
        Ok(_) => tracing::debug!(tx = %id, peer = %from, "late vote stored for the ended round"),
        Err(e) => tracing::warn!(tx = %id, peer = %from, error = %e, "late vote refused"),
    }
}

/// Every vote key this node has pinned (empty if they cannot be read: votes are
/// then refused as of unknown voters, without blame).
async fn pinned_key_book(node: &TxCtx) -> VoteKeyBook {
    VoteKeyBook::from_pinned(node.store.vote_keys().await.unwrap_or_default())
}

/// Stores a vote (checked against the round) and closes the round if settled.
async fn accept_vote(node: &Arc<TxCtx>, id: Uuid, from: &str, vote: &SignedVote) {
    let Some(p) = node.tx.get(id) else {
        return;
    };
    let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
    // A vote can overtake its voter's key announcement (a node that just started):
    // it is checked again once the key is pinned, until the round's deadline.
    let give_up = tokio::time::Instant::now() + UNPINNED_VOTE_WAIT;
    loop {
        let book = match key_book(node, &p.participants).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(tx = %id, error = %e, "cannot read the vote keys");
                return;
            }
        };
        match intake
            .accept(&book, p.round_id, vote, from, &p.subject)
            .await
        {
            Ok(_) => {
                p.note_vote_stored(vote);
                break;
            }
            Err(VoteReject::UnknownVoter { voter })
                if tokio::time::Instant::now() < give_up && now_unix() <= p.deadline_unix =>
            {
                tracing::debug!(tx = %id, %voter, "vote waits for its voter's key announcement");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::warn!(tx = %id, peer = %from, error = %e, "vote refused");
                return;
            }
        }
    }
    check_round(node, id, &p).await;
}

/// Most votes a relayed list may carry (far above any cluster size; each is also
/// checked against the round's participants).
const MAX_RELAYED_VOTES: usize = 64;

/// The round's stored signed votes, hex-encoded, for relaying with a sign request
/// or the result.
pub fn votes_to_relay(p: &Pending) -> Vec<String> {
    if let Some(votes) = p.relayed_votes.get() {
        return votes.clone();
    }
    relay_form(&p.round_votes())
}

/// Signed votes in the form they are relayed in (hex of the wire form).
pub fn relay_form(votes: &[SignedVote]) -> Vec<String> {
    votes.iter().map(|v| hex::encode(v.encode())).collect()
}

/// Takes in the signed votes `relayer` forwarded for transaction `id` (each is
/// checked under its own voter's pinned key and stored like a direct vote), then
/// closes this node's tally if they settle it. (Boxed: closing the tally can start
/// the signing that relays votes, a cycle of async calls.)
pub fn accept_relayed_votes<'a>(
    node: &'a Arc<TxCtx>,
    id: Uuid,
    p: &'a Arc<Pending>,
    relayer: &'a str,
    votes: &'a [String],
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(accept_relayed_votes_inner(node, id, p, relayer, votes))
}

async fn accept_relayed_votes_inner(
    node: &Arc<TxCtx>,
    id: Uuid,
    p: &Arc<Pending>,
    relayer: &str,
    votes: &[String],
) {
    if votes.is_empty() {
        return;
    }
    if votes.len() > MAX_RELAYED_VOTES.min(p.participants.len()) {
        tracing::warn!(tx = %id, peer = %relayer, count = votes.len(), "too many relayed votes; ignored");
        return;
    }
    let mut fresh = Vec::new();
    for v in votes {
        let vote = match hex::decode(v)
            .ok()
            .and_then(|b| SignedVote::decode(&b).ok())
        {
            Some(v) => v,
            None => {
                tracing::warn!(tx = %id, peer = %relayer, "malformed relayed vote; ignored");
                continue;
            }
        };
        // A copy of a vote this node already checked and stored (usually all of
        // them: the votes reached it directly) changes nothing.
        if !p.vote_stored(&vote) {
            fresh.push(vote);
        }
    }
    if !fresh.is_empty() {
        let book = match key_book(node, &p.participants).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(tx = %id, error = %e, "cannot read the vote keys");
                return;
            }
        };
        let intake = VoteIntake::new(node.store.clone(), node.cfg.node_id.clone());
        for vote in fresh {
            match intake
                .accept_relayed(&book, p.round_id, &vote, relayer, &p.subject)
                .await
            {
                Ok(_) => p.note_vote_stored(&vote),
                Err(e) => {
                    tracing::info!(tx = %id, peer = %relayer, error = %e, "relayed vote not accepted")
                }
            }
        }
    }
    // Settles the round also when every vote was known: a signer serving a sign
    // request relies on it (its round may be closing on another task right now; the
    // tally returns at once when this node knows the round closed).
    check_round(node, id, p).await;
}

/// How long a vote whose voter has no pinned key yet waits for the announcement
/// (announcements are repeated every few seconds).
const UNPINNED_VOTE_WAIT: Duration = Duration::from_secs(15);

async fn check_round(node: &Arc<TxCtx>, id: Uuid, p: &Arc<Pending>) {
    // A closed round stays closed (the close is recorded once, `WHERE state =
    // 'open'`): votes after the quorum need no tally (issue 21: the profile showed
    // the tally re-read and a rolled-back close attempt for each of them).
    if p.round_closed.load(Ordering::Acquire) {
        return;
    }
    let _settling = p.settling.lock().await;
    if p.round_closed.load(Ordering::Acquire) {
        return;
    }
    // The round's committed votes as this node noted them (the database's record
    // of the round, without reading it again on every vote).
    let votes = p.round_votes();
    let outcome = match evaluate_round(usize::from(p.threshold), p.participants.len(), &votes) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(tx = %id, error = %e, "cannot tally");
            return;
        }
    };
    let to = match outcome {
        RoundOutcome::Open => return,
        RoundOutcome::Approved => "approved",
        RoundOutcome::Rejected => "rejected",
    };
    // A quorum of approvals counts against the key's velocity windows here
    // whatever this node voted (others may sign it), in the closing transaction,
    // unless this node's own committed approval counted it already.
    let counted = p.approval_counted.load(Ordering::Acquire);
    let outflow = if counted {
        None
    } else {
        p.validated.view.outflow_sats()
    };
    let key_id = p.validated.key_id.as_str();
    let closed = super::until_recorded("vote outcome", id, || async {
        if to == "approved" {
            node.store
                .close_round_approved(
                    &node.cfg.node_id,
                    p.round_id,
                    id,
                    votes.len(),
                    outflow.map(|sats| (key_id, sats)),
                )
                .await
        } else {
            node.store
                .close_round_and_transaction(
                    &node.cfg.node_id,
                    p.round_id,
                    id,
                    to,
                    None,
                    votes.len(),
                )
                .await
        }
    })
    .await;
    match closed {
        Ok(true) => p.round_closed.store(true, Ordering::Release),
        Ok(false) => {
            // already closed
            p.round_closed.store(true, Ordering::Release);
            return;
        }
        Err(e) => {
            tracing::error!(tx = %id, error = %e, to, "cannot record the vote outcome");
            return;
        }
    }
    tracing::info!(tx = %id, outcome = to, votes = votes.len(), "voting round closed");
    if to == "approved" && !counted && outflow.is_none() {
        tracing::error!(tx = %id, "outflow overflows: the approved transaction is not counted against the velocity limits");
    }
    if to == "rejected" {
        node.tx.remove(id);
    } else if p.leader == node.cfg.node_id {
        tokio::spawn(super::signing::lead(node.clone(), id));
    }
}

async fn expire_if_open(node: &Arc<TxCtx>, id: Uuid) {
    let Some(p) = node.tx.get(id) else {
        return;
    };
    let closed = super::until_recorded("expiry", id, || {
        node.store.close_round_and_transaction(
            &node.cfg.node_id,
            p.round_id,
            id,
            "expired",
            Some("voting deadline passed"),
            0,
        )
    })
    .await;
    match closed {
        Ok(true) => {
            tracing::info!(tx = %id, "voting round expired");
            node.tx.remove(id);
        }
        Ok(false) => {}
        Err(e) => tracing::error!(tx = %id, error = %e, "cannot record the expiry"),
    }
}

/// A follower's signing deadline passed: if the transaction is still `approved`
/// here (this node never served a sign request for it), it expires and its inputs
/// are released; if it is `signing` (a partial may have left), it expires with its
/// inputs kept reserved. Either way this node signs nothing more for it.
async fn expire_unsigned(node: &Arc<TxCtx>, id: Uuid) {
    if node.tx.get(id).is_none() {
        return;
    }
    let details = |from: &str| serde_json::json!({ "reason": "signing_deadline", "from": from });
    let states = [("approved", true), ("signing", false)];
    if let Some(from) = expire_from(node, id, "signing expiry", &states, details).await {
        tracing::warn!(tx = %id, from, "signing deadline passed; this node signs nothing more for it");
    }
    node.tx.remove(id);
}

/// Expires transaction `id` from the first of `states` it is in (audited
/// `tx.expired` with `details(from)`; retried while the database is unavailable)
/// and releases its inputs when that state's flag says so. Returns the state it
/// left, `None` when it was in none of them (or the expiry could not be recorded:
/// logged as `what`).
async fn expire_from(
    node: &TxCtx,
    id: Uuid,
    what: &str,
    states: &[(&'static str, bool)],
    details: impl Fn(&str) -> serde_json::Value,
) -> Option<&'static str> {
    for &(from, release) in states {
        let advanced = super::until_recorded(what, id, || {
            node.store.advance_transaction(
                &node.cfg.node_id,
                id,
                from,
                "expired",
                "tx.expired",
                details(from),
            )
        })
        .await;
        match advanced {
            Ok(true) => {
                if release {
                    release_inputs(node, id).await;
                }
                return Some(from);
            }
            Ok(false) => {}
            Err(e) => tracing::error!(tx = %id, error = %e, "cannot record the {what}"),
        }
    }
    None
}

/// Releases the inputs of transaction `id` (an outcome already decided: retried
/// while the database is unavailable).
async fn release_inputs(node: &TxCtx, id: Uuid) {
    if let Err(e) =
        super::until_recorded("input release", id, || node.store.release_utxos(id)).await
    {
        tracing::error!(tx = %id, error = %e, "cannot release the inputs");
    }
}
