//! Presignatures in transaction signing.
//!
//! Leader ([`sign_input`]): for an ECDSA input, tries the signer sets of approving,
//! connected nodes that include itself; for a set, it reserves the oldest available
//! presignature of `(key, set, input path)` in its own database (so concurrent inputs
//! and transactions get distinct ones), names its public id in the sign request and
//! combines the `t` partial signatures (each checked against the presignature's
//! commitments, the result verified with libsecp256k1). A set that refuses, fails or
//! does not answer within `[presign] partial_timeout_secs` is left (its silent or
//! refusing members are excluded) and the next set is tried; without a usable
//! presignature the input is signed with the full protocol.
//!
//! Signer ([`issue_partial`]): consumes the named presignature in one database
//! transaction (state → `consumed`, with transaction, input and session recorded, the
//! restore counter advanced) and commits before the secret is even opened; only then
//! it issues the partial signature, for the input path the presignature is bound to.

use std::sync::Arc;
use std::time::Duration;

use hsm::Aad;
use signer_protocol::ecdsa::{
    combine_partial_signatures, EcdsaPartialSignature, EcdsaPresignature, PresignaturePublic,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::TxCtx;
use crate::presign::pool::combinations;
use crate::presign::watermark;
use crate::store::presignatures::PresignatureUse;
use crate::tx::blame;
use crate::tx::wire::{Blame, SignRequest};
use crate::tx::{Pending, TxError};
use wallet::{InputSigning, KeyKind};

/// Most signer sets tried with a presignature for one input.
pub const MAX_SET_ATTEMPTS: usize = 4;

/// How long the leader waits for the votes of a signer set with presignatures in
/// stock that arrive after the round closed.
const LATE_VOTE_WAIT: Duration = Duration::from_secs(1);

enum Attempt {
    Signed(Vec<u8>),
    Empty,
    Failed { nodes: Vec<String>, reason: String },
}

/// The signer sets (in key order) holding presignatures for `inp`'s key and path.
async fn stocked_sets(
    node: &TxCtx,
    p: &Pending,
    inp: &InputSigning,
) -> Result<Vec<Vec<String>>, TxError> {
    Ok(node
        .store
        .presignature_sets_in_stock(&p.validated.key_id, &inp.path)
        .await?
        .into_iter()
        .map(|s| in_key_order(p, s))
        .collect())
}

/// Whether signer set `set` may still be tried: it includes this node (`me`), was
/// not tried yet and has no excluded node.
fn still_eligible(set: &[String], me: &String, tried: &[Vec<String>], excluded: &[String]) -> bool {
    set.contains(me) && !tried.iter().any(|t| t == set) && !set.iter().any(|n| excluded.contains(n))
}

fn in_key_order(p: &Pending, mut set: Vec<String>) -> Vec<String> {
    set.sort_by_key(|n| p.participants.iter().position(|x| x == n));
    set
}

/// Leader: signs one input; `approvers` are the approving, connected nodes in
/// preference order (this node first when it approved). After a failed attempt the
/// approvers are read again: votes that arrived after the round closed count too.
pub async fn sign_input(
    node: &Arc<TxCtx>,
    p: &Pending,
    tx: Uuid,
    inp: &InputSigning,
    approvers: &[String],
    timeout: Duration,
) -> Result<Vec<u8>, TxError> {
    let t = usize::from(p.threshold);
    let me = node.cfg.node_id.clone();
    let input = u32::try_from(inp.input).unwrap_or(u32::MAX);
    let mut approvers = approvers.to_vec();
    let mut excluded: Vec<String> = Vec::new();
    let mut tried: Vec<Vec<String>> = Vec::new();
    let mut refreshed = false;
    let mut stocked: Vec<Vec<String>> = Vec::new();
    let usable =
        inp.kind == KeyKind::Ecdsa && node.cfg.presign.enabled && node.presign.restore_checked();
    if usable {
        stocked = stocked_sets(node, p, inp).await?;
    }
    while usable && tried.len() < MAX_SET_ATTEMPTS {
        let mut candidates: Vec<Vec<String>> = combinations(&approvers, t)
            .into_iter()
            .map(|s| in_key_order(p, s))
            .filter(|s| still_eligible(s, &me, &tried, &excluded))
            .collect();
        // Sets known to hold presignatures first (stable: preference order otherwise).
        candidates.sort_by_key(|s| !stocked.contains(s));
        let next = candidates.into_iter().next();
        let Some(set) = next else {
            // Votes that arrive after the round closed widen the choice. When a set
            // with presignatures in stock waits only for such votes, wait for them a
            // little: a presignature signs in milliseconds, the full protocol in
            // seconds.
            if refreshed {
                break;
            }
            refreshed = true;
            stocked = stocked_sets(node, p, inp)
                .await?
                .into_iter()
                .filter(|s| s.len() == t && still_eligible(s, &me, &tried, &excluded))
                .collect();
            let until = tokio::time::Instant::now() + LATE_VOTE_WAIT;
            loop {
                if let Ok(a) = crate::tx::signing::choose_signers(node, p).await {
                    approvers = a;
                }
                let ready = stocked
                    .iter()
                    .any(|s| s.iter().all(|n| approvers.contains(n)));
                if ready || stocked.is_empty() || tokio::time::Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        tried.push(set.clone());
        match try_presignature(node, p, tx, inp, input, &set).await? {
            Attempt::Signed(sig) => return Ok(sig),
            Attempt::Empty => {}
            Attempt::Failed { nodes, reason } => {
                tracing::warn!(%tx, input, signers = ?set, %reason, ?nodes,
                    "signing with a presignature failed; trying another signer set");
                excluded.extend(nodes.into_iter().filter(|n| *n != me));
                if let Ok(a) = crate::tx::signing::choose_signers(node, p).await {
                    approvers = a;
                }
            }
        }
    }
    // Signers that misbehaved (an invalid partial, or named by a protocol run) are
    // never asked again for this input, nor are those that stalled a full-protocol
    // attempt (absent); members that only failed to answer with a presignature may
    // be.
    let mut culprits: Vec<String> = excluded_culprits(p);
    let mut absent: Vec<String> = Vec::new();
    let budget_end = tokio::time::Instant::now() + timeout;
    for attempt in 1..=MAX_FULL_ATTEMPTS {
        let mut signers: Vec<String> = approvers
            .iter()
            .filter(|n| !excluded.contains(n) && !culprits.contains(n) && !absent.contains(n))
            .cloned()
            .collect();
        // A member was excluded and too few others approved so far: votes may still
        // be arriving after the round closed; wait for them (bounded) before using
        // it anyway.
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(node.cfg.presign.partial_timeout_secs.max(1));
        while signers.len() < t
            && !(excluded.is_empty() && culprits.is_empty())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(a) = crate::tx::signing::choose_signers(node, p).await {
                signers = a
                    .iter()
                    .filter(|n| {
                        !excluded.contains(n) && !culprits.contains(n) && !absent.contains(n)
                    })
                    .cloned()
                    .collect();
                approvers = a;
            }
        }
        if signers.len() < t {
            signers = approvers
                .iter()
                .filter(|n| !culprits.contains(n) && !absent.contains(n))
                .cloned()
                .collect();
        }
        if signers.len() < t {
            return Err(TxError::Invalid {
                code: "not_enough_signers",
                message: format!(
                    "input {input}: {} approving signers left after excluding misbehaving {culprits:?} and absent {absent:?}, {t} needed; nothing was signed",
                    signers.len()
                ),
            });
        }
        let left = budget_end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(TxError::Absent {
                message: format!(
                    "input {input}: signing budget of {} s spent; absent: {absent:?}",
                    timeout.as_secs()
                ),
                absent,
            });
        }
        signers.truncate(t);
        let req = SignRequest {
            session: Uuid::new_v4(),
            tx,
            input,
            signers: in_key_order(p, signers),
            presignature: None,
            votes: Vec::new(),
        };
        let session = req.session;
        let set = req.signers.clone();
        match crate::tx::signing::sign_one_input(node, req, left).await {
            Err(TxError::Misbehaviour {
                culprits: c,
                message,
            }) if attempt < MAX_FULL_ATTEMPTS => {
                tracing::warn!(%tx, input, culprits = ?c, %message,
                    "signing failed through misbehaving signers; retrying without them");
                culprits.extend(c.into_iter().filter(|n| *n != me));
                if let Ok(a) = crate::tx::signing::choose_signers(node, p).await {
                    approvers = a;
                }
            }
            Err(TxError::Absent { absent: a, message }) => {
                record_absent(node, tx, input, session, &set, &a, &message).await;
                for n in a.into_iter().filter(|n| *n != me) {
                    if !absent.contains(&n) {
                        absent.push(n);
                    }
                }
                if attempt == MAX_FULL_ATTEMPTS {
                    return Err(TxError::Absent {
                        message: format!(
                            "input {input}: no signature after {attempt} attempts; absent: {absent:?} ({message})"
                        ),
                        absent,
                    });
                }
                if let Ok(a) = crate::tx::signing::choose_signers(node, p).await {
                    approvers = a;
                }
            }
            r => return r,
        }
    }
    Err(TxError::Internal(format!(
        "input {input}: no signature after {MAX_FULL_ATTEMPTS} attempts"
    )))
}

/// Full-protocol attempts per input at most (each without the culprits and the
/// absent signers of the previous ones).
const MAX_FULL_ATTEMPTS: usize = 3;

/// Logs and audits a full-protocol attempt that stalled and whom it waited for;
/// the next attempt goes without them (a crash is not misbehaviour: nobody is
/// blamed).
async fn record_absent(
    node: &Arc<TxCtx>,
    tx: Uuid,
    input: u32,
    session: Uuid,
    signers: &[String],
    absent: &[String],
    message: &str,
) {
    tracing::warn!(%tx, input, %session, ?signers, ?absent, %message,
        "signing attempt stalled; trying again without the absent signers");
    let me = node.cfg.node_id.clone();
    if let Err(e) = node
        .store
        .audit(
            &me,
            crate::audit::AuditEntry::new("node", "tx.signers_absent")
                .subject(tx.to_string())
                .details(serde_json::json!({
                    "input": input,
                    "session": session,
                    "signers": signers,
                    "absent": absent,
                    "reason": message,
                })),
        )
        .await
    {
        tracing::error!(%tx, error = %e, "cannot audit the absent signers");
    }
}

/// The culprits the leader already found in this transaction.
fn excluded_culprits(p: &Pending) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in p.blames() {
        if !out.contains(&b.culprit) {
            out.push(b.culprit);
        }
    }
    out
}

/// Records each signer whose partial does not verify and keeps the evidence (the
/// presignature's public data and every partial) for the result, so each
/// participant can check it itself.
async fn blame_invalid_partials(
    node: &Arc<TxCtx>,
    p: &Pending,
    session: &Uuid,
    input: u32,
    public_data: &[u8],
    partials: &[EcdsaPartialSignature],
    culprits: &[String],
) {
    let me = node.cfg.node_id.clone();
    let public = hex::encode(public_data);
    let partials: Vec<String> = partials
        .iter()
        .map(|ps| hex::encode(ps.to_bytes()))
        .collect();
    for c in culprits.iter().filter(|c| **c != me) {
        let b = Blame {
            culprit: c.clone(),
            kind: blame::VIOLATION_INVALID_PARTIAL.into(),
            session: *session,
            input,
            detected_by: me.clone(),
            presignature_public: Some(public.clone()),
            partials: partials.clone(),
        };
        blame::record(
            node,
            c,
            blame::VIOLATION_INVALID_PARTIAL,
            &session.to_string(),
            serde_json::json!({ "input": input, "presignature_public": public, "partials": partials }),
            &me,
        )
        .await;
        p.add_blame(b);
    }
}

async fn try_presignature(
    node: &Arc<TxCtx>,
    p: &Pending,
    tx: Uuid,
    inp: &InputSigning,
    input: u32,
    set: &[String],
) -> Result<Attempt, TxError> {
    let Some(msg) = inp.ecdsa_message() else {
        return Ok(Attempt::Empty);
    };
    let session = Uuid::new_v4();
    let usage = PresignatureUse { tx, input, session };
    let hook = watermark::hook(node);
    let Some(reserved) = node
        .store
        .reserve_presignature(&p.validated.key_id, set, &inp.path, usage, &hook)
        .await?
    else {
        return Ok(Attempt::Empty);
    };
    let public = PresignaturePublic::from_bytes(&reserved.public_data)
        .map_err(|e| TxError::Internal(format!("stored presignature public data: {e}")))?;
    if public.derivation_path() != inp.path.as_slice() || public.public_key() != inp.pubkey {
        return Err(TxError::Internal(
            "reserved presignature is bound to another path or key".into(),
        ));
    }
    let req = SignRequest {
        session,
        tx,
        input,
        signers: set.to_vec(),
        presignature: Some(hex::encode(&reserved.public_id)),
        votes: Vec::new(),
    };
    tracing::debug!(%tx, input, signers = ?set, presignature = %hex::encode(&reserved.public_id), "signing with a presignature");
    let (reply_tx, mut rx) = mpsc::channel(set.len() + 1);
    crate::tx::signing::send_sign_request(node, &req, reply_tx).await?;
    let wait = Duration::from_secs(node.cfg.presign.partial_timeout_secs.max(1));
    let mut partials: Vec<(String, EcdsaPartialSignature)> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while partials.len() + failed.len() < set.len() {
            let Some((from, reply)) = rx.recv().await else {
                break;
            };
            let parsed = match (reply.signature, reply.error) {
                (Some(h), _) => hex::decode(&h)
                    .ok()
                    .and_then(|b| EcdsaPartialSignature::from_bytes(&b).ok())
                    .filter(|ps| set.get(usize::from(ps.signer)) == Some(&from))
                    .ok_or_else(|| "malformed partial signature".to_owned()),
                (None, e) => Err(e.unwrap_or_default()),
            };
            // One answer per signer counts.
            if partials.iter().any(|(f, _)| *f == from) || failed.iter().any(|(f, _)| *f == from) {
                continue;
            }
            match parsed {
                Ok(ps) => partials.push((from, ps)),
                Err(e) => failed.push((from, e)),
            }
        }
    })
    .await;
    node.tx.forget_replies(session);
    if partials.len() == set.len() {
        let ps: Vec<EcdsaPartialSignature> = partials.iter().map(|(_, ps)| *ps).collect();
        return match combine_partial_signatures(&public, &ps, &msg) {
            Ok(sig) => Ok(Attempt::Signed(sig.serialize_compact().to_vec())),
            Err(e) => {
                let nodes: Vec<String> = e
                    .culprits()
                    .into_iter()
                    .filter_map(|c| set.get(usize::from(c)).cloned())
                    .collect();
                blame_invalid_partials(
                    node,
                    p,
                    &session,
                    input,
                    &reserved.public_data,
                    &ps,
                    &nodes,
                )
                .await;
                Ok(Attempt::Failed {
                    nodes,
                    reason: format!("combining partial signatures: {e}"),
                })
            }
        };
    }
    // Refusing or failing members, and members that did not answer at all.
    let nodes: Vec<String> = set
        .iter()
        .filter(|s| !partials.iter().any(|(f, _)| f == *s))
        .cloned()
        .collect();
    let reason = if failed.is_empty() {
        format!("no partial signature within {} s", wait.as_secs())
    } else {
        failed
            .iter()
            .map(|(n, e)| format!("{n}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok(Attempt::Failed { nodes, reason })
}

/// Signer: consumes the presignature named in `req` and issues this node's partial
/// signature (34 bytes) for `input`. Nothing leaves the node unless the consumption
/// committed.
pub async fn issue_partial(
    node: &Arc<TxCtx>,
    req: &SignRequest,
    p: &Pending,
    indices: &[u16],
    position: usize,
    input: &InputSigning,
    permit: &vote::SigningPermit,
) -> Result<Vec<u8>, TxError> {
    // Checked before the presignature is consumed.
    let ok = super::signing::authorize_input(permit, input)?;
    let unavailable = |m: String| TxError::Invalid {
        code: "presignature_unavailable",
        message: m,
    };
    if !node.cfg.presign.enabled || !node.presign.restore_checked() {
        return Err(unavailable(
            "presignatures are not in use on this node".into(),
        ));
    }
    let msg = input
        .ecdsa_message()
        .ok_or_else(|| unavailable("presignatures serve ECDSA inputs only".into()))?;
    let id_hex = req.presignature.as_deref().unwrap_or_default();
    let id: [u8; 32] = hex::decode(id_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TxError::Invalid {
            code: "bad_presignature_id",
            message: "presignature id must be 32 bytes of hex".into(),
        })?;
    let unsealed = node.unsealed().ok_or(TxError::Sealed)?;
    let usage = PresignatureUse {
        tx: req.tx,
        input: req.input,
        session: req.session,
    };
    let hook = watermark::hook(node);
    let row = node
        .store
        .consume_presignature(
            &id,
            &p.validated.key_id,
            &req.signers,
            &input.path,
            usage,
            &hook,
        )
        .await?
        .ok_or_else(|| {
            unavailable(format!(
                "presignature {id_hex} is not available on this node for this key, signer set and path"
            ))
        })?;
    tracing::info!(tx = %req.tx, input = req.input, presignature = %id_hex, "presignature consumed");
    crate::fault::exit_after_presig_consume(&node.cfg.node_id);
    let me = node.cfg.node_id.clone();
    let key_id = p.validated.key_id.clone();
    let path = input.path.clone();
    let indices = indices.to_vec();
    let custody = unsealed.custody.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<u8>, TxError> {
        let aad = Aad::with_record_id(me, key_id, hsm::RecordKind::Presignature, hex::encode(id))
            .map_err(|e| TxError::Internal(e.to_string()))?;
        let secret = custody
            .open_record(&aad, &row.envelope)
            .map_err(|e| TxError::Internal(format!("opening the presignature: {e}")))?;
        let presig = EcdsaPresignature::from_bytes(secret.expose_secret())
            .map_err(|e| TxError::Internal(e.to_string()))?;
        if presig.public().id() != id
            || presig.public().signers() != indices.as_slice()
            || usize::from(presig.position()) != position
        {
            return Err(TxError::Internal(
                "stored presignature does not match its row".into(),
            ));
        }
        let (partial, _) = presig
            .issue_partial_signature(&msg, &path, &ok)
            .map_err(|e| TxError::Internal(e.to_string()))?;
        Ok(crate::fault::tamper_partial(partial.to_bytes().to_vec()))
    })
    .await
    .map_err(|e| TxError::Internal(format!("partial signature task: {e}")))?
}
