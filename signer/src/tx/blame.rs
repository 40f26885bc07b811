//! Culprits of signing: who is recorded in `byzantine_violations` when a signing
//! attempt fails through a signer's or the leader's fault, and how the leader's
//! report of them is checked by every other participant.
//!
//! * An invalid partial signature (presignature path) is found by the leader when
//!   it combines; the leader relays the presignature's public data and every
//!   partial with the result, and each participant runs the same check itself
//!   before it records the culprit. A report the evidence does not support is
//!   recorded against the leader.
//! * A protocol run of the full signing protocol (ECDSA or FROST) that fails
//!   through a signer's fault names it on every honest signer of that run; each
//!   records it, says so in its reply, and the leader relays it. Participants that
//!   were not in the run record it as reported by the signer that detected it.
//! * A reply from a node that is not a signer of the session, and a result for a
//!   transaction that is not the one this node validated, are recorded against
//!   their sender.

use std::sync::Arc;

use signer_protocol::ecdsa::{
    combine_partial_signatures, EcdsaPartialSignature, PresignaturePublic,
};
use uuid::Uuid;

use super::wire::Blame;
use super::{Pending, TxCtx};

/// A partial signature that does not verify against its presignature.
pub const VIOLATION_INVALID_PARTIAL: &str = "invalid_partial";
/// A full signing run failed through this signer's fault.
pub const VIOLATION_SIGNING_MISBEHAVIOUR: &str = "signing_misbehaviour";
/// A signature reply from a node that is not a signer of the session.
pub const VIOLATION_REPLY_FROM_NON_SIGNER: &str = "reply_from_non_signer";
/// A leader's result that is not a valid signing of the transaction this node
/// validated.
pub const VIOLATION_BAD_RESULT: &str = "bad_result";
/// A sign request reusing a signing session id.
pub const VIOLATION_SESSION_REUSE: &str = "session_reuse";
/// A leader's blame that its own evidence does not support.
pub const VIOLATION_UNFOUNDED_BLAME: &str = "unfounded_blame";

/// Records `kind` against `culprit` on this node (`detected_by`: this node when it
/// checked it itself, else the node whose check found it), audited.
pub async fn record(
    node: &TxCtx,
    culprit: &str,
    kind: &str,
    session: &str,
    evidence: serde_json::Value,
    detected_by: &str,
) {
    tracing::warn!(%culprit, violation = kind, %session, %detected_by, "signing violation");
    if let Err(e) = node
        .store
        .record_violation(
            culprit,
            kind,
            Some(session),
            &evidence,
            detected_by,
            &node.cfg.node_id,
        )
        .await
    {
        tracing::error!(%culprit, violation = kind, error = %e, "cannot record the violation");
    }
}

/// The signers whose partials do not verify: presignature public data `public`
/// (hex) and the set's partials (hex) for input `input` of `p`, checked against
/// the sighash this node computed itself. `Err` when the evidence is not
/// well-formed or not about this input.
pub fn invalid_partial_culprits(
    p: &Pending,
    input: u32,
    public: &str,
    partials: &[String],
) -> Result<Vec<String>, String> {
    let inp = p
        .validated
        .inputs
        .get(usize::try_from(input).unwrap_or(usize::MAX))
        .ok_or_else(|| format!("no input {input}"))?;
    let msg = inp
        .ecdsa_message()
        .ok_or_else(|| "not an ecdsa input".to_owned())?;
    let public = hex::decode(public)
        .ok()
        .and_then(|b| PresignaturePublic::from_bytes(&b).ok())
        .ok_or_else(|| "malformed presignature public data".to_owned())?;
    if public.public_key() != inp.pubkey || public.derivation_path() != inp.path.as_slice() {
        return Err("presignature is for another key or path".into());
    }
    if partials.len() != public.signers().len() {
        return Err("not one partial per signer".into());
    }
    let parsed: Vec<EcdsaPartialSignature> = partials
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| EcdsaPartialSignature::from_bytes(&b).ok())
                .ok_or_else(|| "malformed partial signature".to_owned())
        })
        .collect::<Result<_, _>>()?;
    let culprits = match combine_partial_signatures(&public, &parsed, &msg) {
        Ok(_) => Vec::new(),
        Err(e) => e.culprits(),
    };
    Ok(culprits
        .into_iter()
        .filter_map(|pos| public.signers().get(usize::from(pos)))
        .filter_map(|&i| p.participants.get(usize::from(i)).cloned())
        .collect())
}

/// Evidence of a blame, for the violation row.
fn evidence(b: &Blame, reported_by: &str) -> serde_json::Value {
    serde_json::json!({
        "input": b.input,
        "reported_by": reported_by,
        "detected_by": b.detected_by,
        "presignature_public": b.presignature_public,
        "partials": b.partials,
    })
}

/// Participant: records the blames `leader` relayed with its result for
/// transaction `id` (checked as described in the module documentation).
pub async fn take_reported(
    node: &Arc<TxCtx>,
    leader: &str,
    id: Uuid,
    p: &Pending,
    blames: &[Blame],
) {
    let me = node.cfg.node_id.as_str();
    for b in blames.iter().take(super::wire::MAX_BLAMES) {
        let known = |n: &str| p.participants.iter().any(|x| x == n);
        if !known(&b.culprit) || !known(&b.detected_by) || b.detected_by == me {
            continue;
        }
        let session = b.session.to_string();
        match b.kind.as_str() {
            VIOLATION_INVALID_PARTIAL => {
                let checked = b
                    .presignature_public
                    .as_deref()
                    .ok_or_else(|| "no presignature public data".to_owned())
                    .and_then(|public| invalid_partial_culprits(p, b.input, public, &b.partials));
                match checked {
                    Ok(c) if c.contains(&b.culprit) => {
                        record(node, &b.culprit, &b.kind, &session, evidence(b, leader), me).await;
                    }
                    Ok(_) | Err(_) => {
                        let mut ev = evidence(b, leader);
                        ev["claimed_culprit"] = serde_json::json!(b.culprit);
                        ev["transaction"] = serde_json::json!(id);
                        record(node, leader, VIOLATION_UNFOUNDED_BLAME, &session, ev, me).await;
                    }
                }
            }
            VIOLATION_SIGNING_MISBEHAVIOUR => {
                record(
                    node,
                    &b.culprit,
                    &b.kind,
                    &session,
                    evidence(b, leader),
                    &b.detected_by,
                )
                .await;
            }
            _ => {}
        }
    }
}
