//! Threshold signing of an approved transaction: the leader drives, `t` approving
//! nodes sign each input after checking their own signing permit.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bitcoin::consensus::encode;
use signer_protocol::{channel_party, ecdsa, frost, DeliveryConfig, ExecutionId};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::blame;
use super::voting::{broadcast, key_book, now_unix};
use super::wire::Blame;
use super::wire::{self, Done, SignRequest, SignatureReply, TX_DONE, TX_SIGN, TX_SIGNATURE};
use super::TxCtx;
use super::{Pending, TxError};
use crate::audit::AuditEntry;
use crate::dkg::material::{self, Material};
use crate::p2p::{Frame, MessageKind};
use crate::store::audit::AuditOf;
use crate::store::transactions::{SessionClaim, SigningEntry};
use vote::{QuorumCertificate, SigningPermit, VoteDecision};
use wallet::KeyKind;

/// How often a signing run checks whether it stalled.
const STALL_CHECK: Duration = Duration::from_millis(500);

/// How long a signer waits for the quorum's votes to reach it after a sign request.
const QUORUM_WAIT: Duration = Duration::from_secs(10);

/// Leader: signs every input with `t` approving nodes, finalizes, verifies and
/// distributes the result. Every outcome is recorded.
pub async fn lead(node: Arc<TxCtx>, id: Uuid) {
    // A signed and verified transaction is recorded as such, however long the
    // database takes to come back: it is never reported as failed because the
    // record failed.
    let outcome = match lead_inner(&node, id).await {
        Ok((tx, signed_psbt)) => {
            record_signed(&node, id, &tx, Some(&signed_psbt))
                .await
                .map(|()| {
                    (
                        encode::serialize_hex(&tx),
                        base64::engine::general_purpose::STANDARD.encode(&signed_psbt),
                    )
                })
        }
        Err(e) => Err(e),
    };
    let done = match outcome {
        Ok((tx_hex, psbt)) => Done {
            id,
            tx_hex: Some(tx_hex),
            psbt: Some(psbt),
            error: None,
            votes: Vec::new(),
            blame: Vec::new(),
        },
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(tx = %id, error = %reason, "signing failed");
            if let Err(e) = super::until_recorded("signing failure", id, || {
                node.store
                    .transaction_failed(&node.cfg.node_id, id, &reason)
            })
            .await
            {
                tracing::error!(tx = %id, error = %e, "cannot record the failure");
            }
            Done::failure(id, reason)
        }
    };
    if let Some(p) = node.tx.get(id) {
        let done = Done {
            votes: super::voting::votes_to_relay(&p),
            blame: p.blames(),
            ..done
        };
        let done = if done.tx_hex.is_some() && crate::fault::lie_about_result(id) {
            Done {
                tx_hex: None,
                psbt: None,
                error: Some("signing failed".into()),
                ..done
            }
        } else {
            done
        };
        match wire::encode(&done) {
            Ok(b) => broadcast(&node, &p.participants, Frame::new(id, TX_DONE, b)).await,
            Err(e) => tracing::error!(tx = %id, error = %e, "cannot encode the result"),
        }
    }
    node.tx.remove(id);
}

/// The final, verified transaction and the signed, unfinalized PSBT (serialized),
/// not recorded yet.
async fn lead_inner(
    node: &Arc<TxCtx>,
    id: Uuid,
) -> Result<(bitcoin::Transaction, Vec<u8>), TxError> {
    let p = node
        .tx
        .get(id)
        .ok_or_else(|| TxError::Internal("transaction not pending on this node".into()))?;
    crate::fault::sign_delay().await;
    node.store
        .transition_transaction(id, "signing", None)
        .await?;
    let approvers = choose_signers(node, &p).await?;
    tracing::info!(tx = %id, ?approvers, inputs = p.validated.inputs.len(), "signing");
    let timeout = Duration::from_secs(node.cfg.wallet.sign_timeout_secs.max(5));
    // Per input: a presignature of a signer set among the approvers when the pool has
    // one, else the full protocol (see super::presigned).
    let runs = p
        .validated
        .inputs
        .iter()
        .map(|inp| super::presigned::sign_input(node, &p, id, inp, &approvers, timeout));
    let sigs = futures::future::join_all(runs).await;
    let mut psbt = p.validated.psbt.clone();
    for (inp, sig) in p.validated.inputs.iter().zip(sigs) {
        let sig = sig?;
        match inp.kind {
            KeyKind::Ecdsa => {
                let s = bitcoin::secp256k1::ecdsa::Signature::from_compact(&sig)
                    .map_err(|e| TxError::Internal(format!("input {}: {e}", inp.input)))?;
                wallet::fill_ecdsa_signature(&mut psbt, inp.input, inp.pubkey, s)?;
            }
            KeyKind::Taproot => {
                let s = bitcoin::secp256k1::schnorr::Signature::from_slice(&sig)
                    .map_err(|e| TxError::Internal(format!("input {}: {e}", inp.input)))?;
                wallet::fill_taproot_signature(&mut psbt, inp.input, s)?;
            }
        }
    }
    let signed_psbt = psbt.serialize();
    let tx = match wallet::finalize_and_verify(psbt) {
        Ok(tx) => tx,
        Err(e) => {
            freeze_key(node, &p.validated.key_id, id, &e.to_string()).await;
            return Err(TxError::Internal(format!("final verification failed: {e}")));
        }
    };
    Ok((tx, signed_psbt))
}

/// A failed final verification means a signer or this node is faulty: the key is
/// frozen (no new transactions) and an alert is logged and audited.
async fn freeze_key(node: &Arc<TxCtx>, key_id: &str, tx: Uuid, reason: &str) {
    tracing::error!(key = %key_id, %tx, %reason, "ALERT: final consensus verification failed; key frozen");
    node.tx.freeze(key_id);
    // The audit row is what keeps the key frozen across restarts.
    if let Err(e) = node
        .store
        .audit(
            &node.cfg.node_id,
            AuditEntry::new("node", "key.frozen")
                .subject(key_id)
                .details(serde_json::json!({ "transaction": tx, "reason": reason })),
        )
        .await
    {
        tracing::error!(key = %key_id, error = %e, "ALERT: cannot audit the freeze; it lasts until this node restarts");
    }
}

async fn record_signed(
    node: &Arc<TxCtx>,
    id: Uuid,
    tx: &bitcoin::Transaction,
    signed_psbt: Option<&[u8]>,
) -> Result<(), TxError> {
    let raw = encode::serialize(tx);
    let txid = tx.compute_txid().to_string();
    super::until_recorded("signed transaction", id, || {
        node.store
            .transaction_signed(&node.cfg.node_id, id, &raw, &txid, signed_psbt)
    })
    .await?;
    tracing::info!(tx = %id, txid = %tx.compute_txid(), "transaction signed and verified");
    Ok(())
}

/// How long a leader under [`crate::fault::SIGN_WITH_ENV`] waits for the forced
/// node's vote (fault injection only).
const FORCED_SIGNER_VOTE_WAIT: Duration = Duration::from_secs(30);

/// The nodes that voted approve and are reachable, at least `t`, in preference order
/// (this node first if it approved, then the key's participant order). The votes
/// read are kept in [`Pending::relayed_votes`].
pub(crate) async fn choose_signers(node: &Arc<TxCtx>, p: &Pending) -> Result<Vec<String>, TxError> {
    let mut votes = p.round_votes();
    if let Some(forced) = crate::fault::forced_signer() {
        // Fault injection: the leader names this node whatever it voted, so its vote
        // (approve or reject) must be in the relayed set the followers check; a node
        // just restarted often votes after the quorum closed the round. Bounded.
        let until = tokio::time::Instant::now() + FORCED_SIGNER_VOTE_WAIT;
        while !votes.iter().any(|v| v.voter() == forced) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            votes = p.round_votes();
        }
    }
    // These votes settled the round: every sign request and the result relay them.
    let _ = p.relayed_votes.set(super::voting::relay_form(&votes));
    let me = &node.cfg.node_id;
    let connected = node.net.p2p.connected_peers();
    let mut approvers: Vec<String> = votes
        .iter()
        .filter(|v| v.body().decision == VoteDecision::Approve)
        .map(|v| v.voter().to_owned())
        .filter(|n| n == me || connected.contains(n))
        .collect();
    approvers.sort_by_key(|n| (n != me, p.participants.iter().position(|x| x == n)));
    let approvers = crate::fault::sign_with(approvers, me);
    let t = usize::from(p.threshold);
    if approvers.len() < t {
        return Err(TxError::Invalid {
            code: "not_enough_signers",
            message: format!(
                "{} approving signers reachable, {t} needed; nothing was signed",
                approvers.len()
            ),
        });
    }
    Ok(approvers)
}

/// Routes the replies of `req` to `tx`, sends `req` to the other signers and serves
/// it locally when this node is a signer (the reply goes to `tx` as well).
pub(crate) async fn send_sign_request(
    node: &Arc<TxCtx>,
    req: &SignRequest,
    tx: mpsc::Sender<(String, SignatureReply)>,
) -> Result<(), TxError> {
    let me = node.cfg.node_id.clone();
    node.tx
        .expect_replies(req.session, req.signers.clone(), tx.clone());
    let mut req = req.clone();
    if req.votes.is_empty() {
        if let Some(p) = node.tx.get(req.tx) {
            req.votes = super::voting::votes_to_relay(&p);
        }
    }
    let req = &req;
    let payload = wire::encode(req).map_err(|e| TxError::Internal(e.to_string()))?;
    let frame = Frame::new(req.session, TX_SIGN, payload);
    for s in req.signers.iter().filter(|s| **s != me) {
        if let Err(e) = node.net.p2p.send(s, frame.clone()).await {
            tracing::warn!(signer = %s, error = %e, "sign request not delivered");
        }
    }

    if req.signers.contains(&me) {
        let n = node.clone();
        let r = req.clone();
        tokio::spawn(async move {
            let reply = reply_for(&n, &r, serve(&n, &n.cfg.node_id.clone(), &r).await);
            let _ = tx.send((n.cfg.node_id.clone(), reply)).await;
        });
    }
    Ok(())
}

/// Asks the signers of `req` to sign and returns the first verified signature bytes.
///
/// The attempt ends once every signer answered or was named absent by a signer
/// whose own run stalled (each signer ends a run that receives no protocol message
/// for `[wallet] sign_stall_timeout_secs`), or after `timeout`. Signers that did not
/// answer, and co-signers that refused naming nobody, are reported as
/// [`TxError::Absent`] (not blamed): the caller tries again without them.
pub(crate) async fn sign_one_input(
    node: &Arc<TxCtx>,
    req: SignRequest,
    timeout: Duration,
) -> Result<Vec<u8>, TxError> {
    let (tx, mut rx) = mpsc::channel(req.signers.len() + 1);
    send_sign_request(node, &req, tx).await?;
    let p = node.tx.get(req.tx);
    let me = node.cfg.node_id.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut errors = Vec::new();
    let mut answered: Vec<String> = Vec::new();
    let mut culprits: Vec<String> = Vec::new();
    // Signers that a stalled signer's run was still waiting for.
    let mut named_absent: Vec<String> = Vec::new();
    // Signers that answered with a refusal naming nobody (e.g. a node restarted
    // since it voted no longer holds the transaction, or its approval lapsed).
    let mut refused: Vec<String> = Vec::new();
    let mut timed_out = false;
    let mut signature = None;
    loop {
        let (from, reply) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        };
        // One answer per signer counts (replies come from the set's signers only).
        if answered.contains(&from) {
            continue;
        }
        answered.push(from.clone());
        if let Some(hex_sig) = reply.signature {
            match hex::decode(&hex_sig) {
                Ok(b) if b.len() == 64 => {
                    signature = Some(b);
                    break;
                }
                _ => errors.push(format!("{from}: malformed signature")),
            }
            continue;
        }
        errors.push(format!("{from}: {}", reply.error.unwrap_or_default()));
        if reply.absent.is_empty() && reply.blamed.is_empty() {
            refused.push(from.clone());
        }
        for a in reply.absent {
            if req.signers.contains(&a) && a != from && !named_absent.contains(&a) {
                named_absent.push(a);
            }
        }
        let blamed: Vec<String> = reply
            .blamed
            .into_iter()
            .filter(|c| req.signers.contains(c) && *c != from)
            .collect();
        for c in &blamed {
            if from != me {
                blame::record(
                    node,
                    c,
                    blame::VIOLATION_SIGNING_MISBEHAVIOUR,
                    &req.session.to_string(),
                    serde_json::json!({ "input": req.input, "reported_by": from }),
                    &from,
                )
                .await;
            }
            if let Some(p) = &p {
                p.add_blame(Blame {
                    culprit: c.clone(),
                    kind: blame::VIOLATION_SIGNING_MISBEHAVIOUR.into(),
                    session: req.session,
                    input: req.input,
                    detected_by: from.clone(),
                    presignature_public: None,
                    partials: Vec::new(),
                });
            }
            if !culprits.contains(c) {
                culprits.push(c.clone());
            }
        }
        // Every signer of the set is needed: a refusal ends the attempt (instead of
        // waiting for the timeout), unless it names culprits or absentees and other
        // signers may still answer.
        let waiting = req
            .signers
            .iter()
            .any(|s| !answered.contains(s) && !culprits.contains(s) && !named_absent.contains(s));
        if (blamed.is_empty() && named_absent.is_empty()) || !waiting {
            break;
        }
    }
    node.tx.forget_replies(req.session);
    if let Some(after) = crate::fault::replay_sign_request_after() {
        // Once the session is over here: the replays' answers reach no one.
        let (n, req) = (node.clone(), req.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::error!(session = %req.session, "FAULT INJECTION: replaying a sign request");
            if let Ok(payload) = wire::encode(&req) {
                let f = Frame::new(req.session, TX_SIGN, payload);
                for s in req.signers.iter().filter(|s| **s != n.cfg.node_id) {
                    let _ = n.net.p2p.send(s, f.clone()).await;
                }
            }
        });
    }
    if let Some(sig) = signature {
        return Ok(sig);
    }
    let silent: Vec<String> = req
        .signers
        .iter()
        .filter(|s| !answered.contains(s))
        .cloned()
        .collect();
    if !culprits.is_empty() {
        let message = format!("input {}: no signature ({})", req.input, errors.join("; "));
        return Err(TxError::Misbehaviour { culprits, message });
    }
    if timed_out || !named_absent.is_empty() {
        // The absent: named by a stalled signer and silent themselves; else the
        // silent; else (everyone answered that they stalled) the named.
        let mut absent: Vec<String> = named_absent
            .iter()
            .filter(|a| silent.contains(a))
            .cloned()
            .collect();
        if absent.is_empty() {
            absent = if silent.is_empty() {
                named_absent
            } else {
                silent
            };
        }
        // The leader cannot go without itself: a signer that stalled waiting for
        // the leader is the one the next attempt replaces.
        absent.retain(|a| *a != me);
        if absent.is_empty() {
            absent = req.signers.iter().filter(|s| **s != me).cloned().collect();
        }
        let how = if timed_out {
            format!("no answer within {} s", timeout.as_secs())
        } else {
            "the signing session stalled".to_owned()
        };
        let mut message = format!(
            "input {}: {how}; absent: {}",
            req.input,
            if absent.is_empty() {
                "unknown".to_owned()
            } else {
                absent.join(", ")
            }
        );
        if !errors.is_empty() {
            message.push_str(&format!(" ({})", errors.join("; ")));
        }
        return Err(TxError::Absent { absent, message });
    }
    // A co-signer's refusal is its own decision, not an attack on the payment: the
    // next attempt goes without it (each signer of that attempt checks its own
    // permit again). This node's own refusal ends the payment.
    if !refused.is_empty() && !refused.contains(&me) {
        let message = format!(
            "input {}: refused by {} ({})",
            req.input,
            refused.join(", "),
            errors.join("; ")
        );
        return Err(TxError::Absent {
            absent: refused,
            message,
        });
    }
    Err(TxError::Internal(format!(
        "input {}: no signature ({})",
        req.input,
        errors.join("; ")
    )))
}

fn reply_for(node: &TxCtx, req: &SignRequest, r: Result<Vec<u8>, TxError>) -> SignatureReply {
    match r {
        Ok(sig) => SignatureReply {
            session: req.session,
            signature: Some(hex::encode(sig)),
            error: None,
            blamed: Vec::new(),
            absent: Vec::new(),
        },
        Err(e) => {
            tracing::warn!(node = %node.cfg.node_id, tx = %req.tx, input = req.input, error = %e, "not signing");
            let (blamed, absent) = match &e {
                TxError::Misbehaviour { culprits, .. } => (culprits.clone(), Vec::new()),
                TxError::Absent { absent, .. } => (Vec::new(), absent.clone()),
                _ => (Vec::new(), Vec::new()),
            };
            SignatureReply {
                session: req.session,
                signature: None,
                error: Some(e.to_string()),
                blamed,
                absent,
            }
        }
    }
}

/// Signer: handles a sign request from the transaction's leader.
pub async fn on_sign_request(node: Arc<TxCtx>, from: String, req: SignRequest) {
    let r = serve(&node, &from, &req).await;
    let reply = reply_for(&node, &req, r);
    match wire::encode(&reply) {
        Ok(b) => {
            if let Err(e) = node
                .net
                .p2p
                .send(&from, Frame::new(req.session, TX_SIGNATURE, b))
                .await
            {
                tracing::warn!(leader = %from, error = %e, "signature reply not delivered");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode the signature reply"),
    }
}

/// Checks the permit for the requested input and runs the signing protocol.
async fn serve(node: &Arc<TxCtx>, from: &str, req: &SignRequest) -> Result<Vec<u8>, TxError> {
    let me = node.cfg.node_id.clone();
    // A used session id is refused before anything else, also once the
    // transaction is over here (a replay of an old request).
    if node.store.signing_session_used(req.session).await? {
        return Err(session_reused(node, from, req).await);
    }
    let p = node.tx.get(req.tx).ok_or_else(|| TxError::Invalid {
        code: "unknown_transaction",
        message: format!("transaction {} is not awaiting signatures here", req.tx),
    })?;
    if p.leader != from {
        return Err(TxError::Invalid {
            code: "not_the_leader",
            message: format!("{from} is not the leader of transaction {}", req.tx),
        });
    }
    if from != me {
        super::voting::accept_relayed_votes(node, req.tx, &p, from, &req.votes).await;
    }
    if let Err(refusal) = own_approval_stands(node, req, &p).await {
        record_refusal(node, from, req, &p, &refusal).await;
        return Err(refusal.into_error());
    }
    let position = req
        .signers
        .iter()
        .position(|s| *s == me)
        .ok_or_else(|| TxError::Invalid {
            code: "not_a_signer",
            message: "this node is not in the signer set".into(),
        })?;
    if req.signers.len() != usize::from(p.threshold) {
        return Err(TxError::Invalid {
            code: "bad_signer_set",
            message: format!(
                "signer set of {} for threshold {}",
                req.signers.len(),
                p.threshold
            ),
        });
    }
    let indices: Vec<u16> = req
        .signers
        .iter()
        .map(|s| {
            p.participants
                .iter()
                .position(|x| x == s)
                .and_then(|i| u16::try_from(i).ok())
                .ok_or_else(|| TxError::Invalid {
                    code: "bad_signer_set",
                    message: format!("{s} holds no share of this key"),
                })
        })
        .collect::<Result<_, _>>()?;
    let input = p
        .validated
        .inputs
        .get(usize::try_from(req.input).unwrap_or(usize::MAX))
        .ok_or_else(|| TxError::Invalid {
            code: "bad_input",
            message: format!("no input {}", req.input),
        })?
        .clone();
    // The permit: this node's own policy approval plus a quorum of signed approvals
    // over exactly the sighashes this node computed itself.
    let approval = super::voting::decide_again(node, req.tx, &p)
        .await
        .ok_or_else(|| TxError::Invalid {
            code: "policy_rejects",
            message: "this node's policy does not approve the transaction".into(),
        })?;
    // The leader saw the quorum first: the votes it counted may still be on their
    // way here, so wait a little for them before refusing.
    let quorum_wait = tokio::time::Instant::now() + QUORUM_WAIT;
    let qc = loop {
        // The votes this node checked and committed for the round (see
        // `StoredVotes`), checked again as a certificate here.
        let votes = p.round_votes();
        let book = key_book(node, &p.participants).await?;
        match QuorumCertificate::verify(&votes, &book, usize::from(p.threshold), &p.subject) {
            Ok(qc) => break qc,
            Err(e) if tokio::time::Instant::now() >= quorum_wait => {
                return Err(TxError::Invalid {
                    code: "no_quorum",
                    message: e.to_string(),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let permit =
        SigningPermit::new(approval, qc, &p.subject.sighashes, now_unix()).map_err(|e| {
            TxError::Invalid {
                code: "no_permit",
                message: e.to_string(),
            }
        })?;
    let digest = input.sighash.digest();
    if !permit.allows(input.input, &digest) {
        return Err(TxError::Invalid {
            code: "no_permit",
            message: "the permit does not cover this input's sighash".into(),
        });
    }
    // One commit: the session id is used once, bound to this transaction, input
    // and signer set; the transaction enters `signing`, the step no release of the
    // velocity count can follow (refused once it ended here, e.g. at its signing
    // deadline); and the step is audited before any share of a signature leaves.
    let claim = SessionClaim {
        session: req.session,
        tx: req.tx,
        input: req.input,
        signers: &req.signers,
        leader: from,
    };
    let audit = AuditOf::new(
        &me,
        AuditEntry::new("node", "tx.sign_input")
            .subject(req.tx.to_string())
            .details(serde_json::json!({
                "input": req.input,
                "session": req.session,
                "signers": req.signers,
                "leader": from,
            })),
    );
    match node.store.enter_signing_session(&claim, audit).await? {
        SigningEntry::Entered => {}
        SigningEntry::SessionUsed => return Err(session_reused(node, from, req).await),
        SigningEntry::Closed => {
            return Err(TxError::Invalid {
                code: "signing_closed",
                message: format!("transaction {} is no longer signable here", req.tx),
            })
        }
    }
    if req.presignature.is_some() {
        return super::presigned::issue_partial(node, req, &p, &indices, position, &input, &permit)
            .await;
    }
    run_protocol(node, req, &p, position, &indices, &input, &permit).await
}

/// Records a reused signing session id against `from` (whoever sends it) and
/// returns the refusal.
async fn session_reused(node: &Arc<TxCtx>, from: &str, req: &SignRequest) -> TxError {
    blame::record(
        node,
        from,
        blame::VIOLATION_SESSION_REUSE,
        &req.session.to_string(),
        serde_json::json!({ "transaction": req.tx, "input": req.input, "signers": req.signers }),
        &node.cfg.node_id.clone(),
    )
    .await;
    TxError::Invalid {
        code: "session_reused",
        message: format!("signing session id {} was used before", req.session),
    }
}

/// The permit's leave to sign `input` (its index and the sighash this node computed):
/// what the protocol entry points require.
pub(crate) fn authorize_input(
    permit: &SigningPermit,
    input: &wallet::InputSigning,
) -> Result<vote::InputPermit, TxError> {
    permit
        .authorize(input.input, &input.digest())
        .map_err(|e| TxError::Invalid {
            code: "no_permit",
            message: e.to_string(),
        })
}

/// Why this node refuses a sign request before any protocol step.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    /// The leader asked although this node never approved: recorded against it.
    leader_at_fault: bool,
}

impl Refusal {
    fn into_error(self) -> TxError {
        TxError::Invalid {
            code: self.code,
            message: self.message,
        }
    }
}

/// A partial signature leaves this node only if its own durable vote (in its own
/// database) on exactly this subject — transaction, round, txid, sighashes, policy
/// — is approve, every input is reserved by this transaction in its own database,
/// and its own signing deadline has not passed.
async fn own_approval_stands(
    node: &Arc<TxCtx>,
    req: &SignRequest,
    p: &Pending,
) -> Result<(), Refusal> {
    let me = node.cfg.node_id.as_str();
    let internal = |e: crate::store::StoreError| Refusal {
        code: "store_unavailable",
        message: format!("cannot read this node's own vote or reservations: {e}"),
        leader_at_fault: false,
    };
    // Both reads at once (one round trip of latency before the protocol starts).
    let outpoints: Vec<_> = p.validated.inputs.iter().map(|i| i.outpoint).collect();
    let (stored, reserved) = tokio::join!(
        node.store.stored_vote_of(req.tx, p.subject.round_no, me),
        node.store.inputs_reserved_by(req.tx, &outpoints)
    );
    let stored = stored.map_err(internal)?;
    let own = stored
        .flatten()
        .and_then(|b| vote::SignedVote::decode(&b).ok());
    let approved = own.as_ref().is_some_and(|v| {
        v.voter() == me
            && v.body().decision == VoteDecision::Approve
            && p.subject.mismatch(v.body()).is_none()
    });
    if !approved {
        let what = match &own {
            None => "has no vote of its own",
            Some(v) if v.body().decision == VoteDecision::Reject => "voted reject",
            Some(_) => "voted on another subject",
        };
        return Err(Refusal {
            code: "own_vote_not_approve",
            message: format!(
                "this node {what} on transaction {} round {}; it signs only what it approved",
                req.tx, p.subject.round_no
            ),
            leader_at_fault: true,
        });
    }
    if !reserved.map_err(internal)? {
        return Err(Refusal {
            code: "inputs_not_reserved",
            message: format!(
                "the inputs of transaction {} are not all reserved for it on this node",
                req.tx
            ),
            leader_at_fault: false,
        });
    }
    if now_unix() > p.sign_deadline_unix {
        return Err(Refusal {
            code: "signing_deadline_passed",
            message: format!(
                "this node's signing deadline for transaction {} has passed",
                req.tx
            ),
            leader_at_fault: false,
        });
    }
    Ok(())
}

/// Audits a refused sign request (`tx.sign_refused`) and, when the leader asked a
/// node that did not approve, records it as `sign_request_without_approval`.
async fn record_refusal(
    node: &Arc<TxCtx>,
    leader: &str,
    req: &SignRequest,
    p: &Pending,
    refusal: &Refusal,
) {
    let me = node.cfg.node_id.clone();
    tracing::warn!(tx = %req.tx, input = req.input, %leader, code = refusal.code, "sign request refused");
    let details = serde_json::json!({
        "input": req.input,
        "session": req.session,
        "signers": req.signers,
        "leader": leader,
        "code": refusal.code,
    });
    if let Err(e) = node
        .store
        .audit(
            &me,
            AuditEntry::new("node", "tx.sign_refused")
                .subject(req.tx.to_string())
                .details(details.clone()),
        )
        .await
    {
        tracing::error!(tx = %req.tx, error = %e, "cannot audit the refusal");
    }
    if refusal.leader_at_fault && leader != me {
        let session = format!("{}/{}", req.tx, p.subject.round_no);
        if let Err(e) = node
            .store
            .record_violation(
                leader,
                VIOLATION_SIGN_WITHOUT_APPROVAL,
                Some(&session),
                &details,
                &me,
                &me,
            )
            .await
        {
            tracing::error!(tx = %req.tx, error = %e, "cannot record the violation");
        }
    }
}

/// Violation code: a leader asked this node to sign a transaction it did not
/// approve.
pub const VIOLATION_SIGN_WITHOUT_APPROVAL: &str = "sign_request_without_approval";

async fn run_protocol(
    node: &Arc<TxCtx>,
    req: &SignRequest,
    p: &Pending,
    position: usize,
    indices: &[u16],
    input: &wallet::InputSigning,
    permit: &SigningPermit,
) -> Result<Vec<u8>, TxError> {
    let ok = authorize_input(permit, input)?;
    let material = material::load(node, &p.validated.key_id).await?;
    let t = u16::try_from(req.signers.len()).unwrap_or(u16::MAX);
    let pos = u16::try_from(position).unwrap_or(u16::MAX);
    let (kind, label, protocol) = match material {
        Material::Ecdsa(_) => (
            MessageKind::SIGN,
            "ecdsa_sign",
            signer_protocol::ProtocolKind::EcdsaSign,
        ),
        Material::Frost(_) => (
            MessageKind::FROST_SIGN,
            "frost_sign",
            signer_protocol::ProtocolKind::FrostSign,
        ),
    };
    let msg = match &material {
        Material::Ecdsa(_) => Some(
            input
                .ecdsa_message()
                .ok_or_else(|| TxError::Internal("not an ecdsa input".into()))?,
        ),
        Material::Frost(_) => None,
    };
    let mut extra = req.tx.as_bytes().to_vec();
    extra.extend_from_slice(&req.input.to_be_bytes());
    let eid = ExecutionId::derive(req.session.as_bytes(), protocol, t, &req.signers, &extra);
    let queues = node
        .sessions
        .register(req.session, &req.signers, kind)
        .ok_or_else(|| TxError::Invalid {
            code: "session_live",
            message: format!("signing session {} is already running here", req.session),
        })?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    let pump = tokio::spawn(crate::session::pump_outgoing(
        node.net.clone(),
        req.session,
        req.signers.clone(),
        kind,
        label,
        None,
        out_rx,
    ));
    let path = input.path.clone();
    let indices = indices.to_vec();
    let rx = queues.protocol_rx;
    let stall = node.cfg.wallet.sign_stall_timeout();
    let run = async move {
        match (material, msg) {
            (Material::Ecdsa(_), None) => Err(signer_protocol::ProtocolError::InvalidArgument(
                "not an ecdsa input".into(),
            )),
            (Material::Ecdsa(share), Some(msg)) => {
                node.protocol_slots
                    .run(protocol, move || {
                        let party = channel_party(DeliveryConfig::new(pos, t), rx, out_tx);
                        async move {
                            ecdsa::sign(party, &eid, pos, &indices, &share, &path, &msg, &ok, None)
                                .await
                                .map(|s| s.serialize_compact().to_vec())
                        }
                    })
                    .await
            }
            (Material::Frost(share), _) => {
                let digest = input.sighash.digest();
                node.protocol_slots
                    .run(protocol, move || {
                        let party = channel_party(DeliveryConfig::new(pos, t), rx, out_tx);
                        async move {
                            frost::sign(party, pos, &indices, &share, &path, &digest, &ok)
                                .await
                                .map(|s| s.serialize().to_vec())
                        }
                    })
                    .await
            }
        }
    };
    // A run that stalls (no protocol message from any participant for the stall
    // bound: a signer crashed, froze or is cut off) ends here, naming whom it waited
    // for; so does one that outlives the whole signing budget. The protocol thread
    // is cancelled with the future and its slot freed.
    let budget =
        tokio::time::Instant::now() + Duration::from_secs(node.cfg.wallet.sign_timeout_secs.max(5));
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            r = &mut run => break Some(r),
            () = tokio::time::sleep(STALL_CHECK) => {
                let idle = node.sessions.idle_for(req.session).unwrap_or(stall);
                if idle >= stall || tokio::time::Instant::now() >= budget {
                    break None;
                }
            }
        }
    };
    let me = node.cfg.node_id.clone();
    let absent = if result.is_none() {
        let named =
            crate::session::absentees(&node.sessions, node.coord(), req.session, &req.signers, &me)
                .await;
        if named.is_empty() {
            // Nobody can be told apart (e.g. every frame of one signer was dropped
            // at a quota): the run waited for any of the others. A hint, not blame:
            // the leader's next attempt goes without them where it can.
            req.signers.iter().filter(|s| **s != me).cloned().collect()
        } else {
            named
        }
    } else {
        Vec::new()
    };
    node.sessions.unregister(req.session);
    let _ = pump.await;
    let e = match result {
        Some(Ok(sig)) => return Ok(sig),
        Some(Err(e)) => e,
        None => {
            let message = format!(
                "input {}: signing session stalled (no protocol message for {} s), waiting for {}",
                req.input,
                stall.as_secs(),
                if absent.is_empty() {
                    "a participant".to_owned()
                } else {
                    absent.join(", ")
                }
            );
            return Err(TxError::Absent { absent, message });
        }
    };
    let culprits: Vec<String> = e
        .culprits()
        .into_iter()
        .filter_map(|c| req.signers.get(usize::from(c)).cloned())
        .filter(|c| *c != me)
        .collect();
    let message = format!("signing protocol failed: {e} (blamed: {culprits:?})");
    if culprits.is_empty() {
        return Err(TxError::Internal(message));
    }
    for c in &culprits {
        blame::record(
            node,
            c,
            blame::VIOLATION_SIGNING_MISBEHAVIOUR,
            &req.session.to_string(),
            serde_json::json!({ "input": req.input, "error": e.to_string(), "signers": req.signers }),
            &me,
        )
        .await;
    }
    Err(TxError::Misbehaviour { culprits, message })
}

/// Participant: records the leader's result after verifying it itself.
pub async fn on_done(node: Arc<TxCtx>, from: String, done: Done) {
    let Some(p) = node.tx.get(done.id) else {
        // The proposal may still be on its way here: keep the result for it.
        if from != node.cfg.node_id {
            node.tx.keep_early_result(from, done);
        }
        return;
    };
    if from == node.cfg.node_id {
        return;
    }
    let id = done.id;
    if p.leader != from {
        blame::record(
            &node,
            &from,
            blame::VIOLATION_BAD_RESULT,
            &id.to_string(),
            serde_json::json!({ "reason": "result from a node that does not lead this transaction", "leader": p.leader }),
            &node.cfg.node_id.clone(),
        )
        .await;
        return;
    }
    super::voting::accept_relayed_votes(&node, id, &p, &from, &done.votes).await;
    blame::take_reported(&node, &from, id, &p, &done.blame).await;
    let psbt = done.psbt.as_deref().and_then(|b| signed_psbt_of(&p, b));
    let claims_signed = done.tx_hex.is_some();
    let outcome = match done.tx_hex {
        Some(h) => verify_result(&p, &h).inspect_err(|e| {
            tracing::warn!(tx = %id, leader = %from, error = %e, "the leader's result does not verify");
        }),
        None => Err(done
            .error
            .unwrap_or_else(|| "leader reported a failure".into())),
    };
    if claims_signed {
        if let Err(reason) = &outcome {
            blame::record(
                &node,
                &from,
                blame::VIOLATION_BAD_RESULT,
                &id.to_string(),
                serde_json::json!({ "reason": reason }),
                &node.cfg.node_id.clone(),
            )
            .await;
        }
    }
    // The votes that closed the round at the leader may still be on their way here:
    // wait a little for this node's own tally to leave `voting` (nothing to wait
    // for, and nothing to read, when this node recorded its round's close).
    let wait_until = tokio::time::Instant::now() + QUORUM_WAIT;
    while !p.round_closed.load(std::sync::atomic::Ordering::Acquire)
        && tokio::time::Instant::now() < wait_until
    {
        match node.store.get_transaction(id).await {
            Ok(row) if row.state == "voting" => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
    let r = match outcome {
        // From `signing` when this node signed, from `approved` when it did not
        // (migration 0020: a node that never signed has no partial out, so it
        // needs no `signing` state of its own first).
        Ok(tx) => record_signed(&node, id, &tx, psbt.as_deref())
            .await
            .map_err(|e| e.to_string()),
        Err(reason) => super::until_recorded("signing failure", id, || {
            node.store
                .transaction_failed(&node.cfg.node_id, id, &reason)
        })
        .await
        .map_err(|e| e.to_string()),
    };
    if let Err(e) = r {
        tracing::error!(tx = %id, error = %e, "cannot record the transaction result");
    }
    node.tx.remove(id);
}

/// The leader's signed PSBT, kept only if it is a PSBT of the approved transaction.
fn signed_psbt_of(p: &Pending, b64: &str) -> Option<Vec<u8>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    let psbt = bitcoin::Psbt::deserialize(&raw).ok()?;
    (psbt.unsigned_tx.compute_txid() == p.validated.txid).then_some(raw)
}

fn verify_result(p: &Pending, tx_hex: &str) -> Result<bitcoin::Transaction, String> {
    if tx_hex.len() > 2 * 1024 * 1024 {
        return Err("signed transaction too large".into());
    }
    let tx: bitcoin::Transaction =
        encode::deserialize_hex(tx_hex).map_err(|e| format!("signed transaction: {e}"))?;
    if tx.compute_txid() != p.validated.txid {
        return Err("signed transaction is not the approved one".into());
    }
    wallet::verify_consensus(&tx, &p.validated.spent_outputs())
        .map_err(|e| format!("signed transaction fails verification: {e}"))?;
    Ok(tx)
}
