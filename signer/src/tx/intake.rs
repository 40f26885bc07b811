//! Intake on the node that receives the request (the transaction's leader).

use std::sync::Arc;

use base64::Engine as _;
use uuid::Uuid;

use super::voting::now_unix;
use super::wire::{self, Proposal, TX_PROPOSE};
use super::TxCtx;
use super::TxError;
use crate::audit::AuditEntry;
use crate::p2p::Frame;
use crate::store::audit::AuditOf;

use crate::store::transactions::NewTransaction;
use crate::store::StoreError;

/// What an operator submits.
#[derive(Debug, Clone)]
pub enum Submission {
    /// A BIP-174 PSBT (binary or base64).
    Psbt(Vec<u8>),
    /// Pay `amount_sats` to `recipient` from the UTXOs this node knows for `key_id`.
    Pay {
        /// Key that spends.
        key_id: String,
        /// Destination address.
        recipient: String,
        /// Amount in satoshis.
        amount_sats: u64,
        /// Fee rate in sat/vB.
        fee_rate_sat_vb: u64,
    },
}

/// How many times a recipient + amount request selects its inputs when the outputs
/// it chose were taken (reserved by another transaction, e.g. a proposal of another
/// leader) between its selection and its reservation.
const SELECTION_ATTEMPTS: usize = 3;

/// Validates, stores and proposes a transaction; returns its id once this node's own
/// vote is cast. Nothing is stored when validation fails.
///
/// A recipient + amount request whose chosen outputs were taken before its
/// reservation committed (nothing of it is stored then) selects again from what is
/// still available, up to [`SELECTION_ATTEMPTS`] times: the submitter gets
/// `utxo_unavailable` only when that keeps happening, and `insufficient_funds` when
/// what is left does not cover the payment. A PSBT names its inputs, so it is not
/// retried.
pub async fn submit(
    node: &Arc<TxCtx>,
    sub: Submission,
    initiator: &str,
    initiator_name: &str,
) -> Result<Uuid, TxError> {
    if matches!(sub, Submission::Psbt(_)) {
        return submit_once(node, sub, initiator, initiator_name).await;
    }
    let mut attempt = 1;
    loop {
        let r = submit_once(node, sub.clone(), initiator, initiator_name).await;
        match r {
            Err(TxError::Invalid {
                code: "utxo_unavailable",
                ref message,
            }) if attempt < SELECTION_ATTEMPTS => {
                if let Submission::Pay { key_id, .. } = &sub {
                    super::selection::forget(node, Some(key_id)).await;
                }
                tracing::info!(
                    attempt,
                    reason = %message,
                    "an output the payment selected was taken before its reservation; selecting again"
                );
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn submit_once(
    node: &Arc<TxCtx>,
    sub: Submission,
    initiator: &str,
    initiator_name: &str,
) -> Result<Uuid, TxError> {
    if node.unsealed().is_none() {
        return Err(TxError::Sealed);
    }
    let keys = super::usable_keys(node).await?;
    let limits = super::limits(node);
    let id = Uuid::new_v4();
    let mut claim = None;
    let (mut validated, recipient, amount) = match sub {
        Submission::Psbt(raw) => {
            let wallet_keys: Vec<_> = keys.iter().map(|k| k.wallet.clone()).collect();
            (
                wallet::intake_psbt(&raw, &wallet_keys, &limits)?,
                None,
                None,
            )
        }
        Submission::Pay {
            key_id,
            recipient,
            amount_sats,
            fee_rate_sat_vb,
        } => {
            let key = keys
                .iter()
                .find(|k| k.wallet.key_id() == key_id)
                .ok_or_else(|| TxError::UnknownKey(key_id.clone()))?;
            // Selection runs under one lock and claims what it chose, so
            // concurrent requests never select the same UTXOs; the checks and the
            // durable reservation (below) run outside it, while the claim holds.
            let mut claims = node.tx.intake_lock.lock().await;
            let change = match claims.next_change.get(&key_id) {
                Some(next) => *next,
                None => node.store.next_change_index(&key_id).await?,
            };
            let payment = super::selection::Payment {
                key: &key.wallet,
                recipient: &recipient,
                amount_sats,
                fee_rate_sat_vb,
                change_index: change,
            };
            let v = super::selection::select(node, &mut claims, &payment, &limits).await?;
            claims
                .next_change
                .insert(key_id.clone(), change.saturating_add(1));
            let outpoints: Vec<_> = v.inputs.iter().map(|i| i.outpoint).collect();
            claims.outpoints.extend(outpoints.iter().copied());
            claim = Some(Claim {
                node: node.clone(),
                outpoints,
            });
            drop(claims);
            if let Some(c) = &claim {
                crate::fault::intake_pause(&c.outpoints).await;
            }
            (v, Some(recipient), Some(amount_sats))
        }
    };
    if node.tx.is_frozen(&validated.key_id) {
        return Err(TxError::Invalid {
            code: "key_frozen",
            message: format!(
                "key {} is frozen after a failed verification",
                validated.key_id
            ),
        });
    }
    let key = keys
        .iter()
        .find(|k| k.wallet.key_id() == validated.key_id)
        .ok_or_else(|| TxError::UnknownKey(validated.key_id.clone()))?;
    prove_inputs(node, &mut validated, &limits).await?;
    let psbt_bytes = validated.psbt.serialize();
    let new = NewTransaction {
        id,
        key_id: Some(validated.key_id.clone()),
        recipient,
        amount_sats: amount.and_then(|a| i64::try_from(a).ok()),
        fee_sats: i64::try_from(validated.fee_sats).ok(),
        psbt: Some(psbt_bytes.clone()),
        initiator: initiator.to_owned(),
    };
    // Recipient + amount requests reserve the UTXOs their coin selection chose; a
    // PSBT's inputs are reserved with the proposal (below).
    let reserve: Vec<_> = if amount.is_some() {
        validated.inputs.iter().map(|i| i.outpoint).collect()
    } else {
        Vec::new()
    };
    let audit = AuditOf::new(
        &node.cfg.node_id,
        AuditEntry::new(initiator, "tx.submit")
            .subject(id.to_string())
            .details(serde_json::json!({
                "key_id": validated.key_id,
                "txid": validated.txid.to_string(),
                "inputs": validated.inputs.len(),
                "fee_sats": validated.fee_sats,
                // What the policy's limits count, and the request's recipient and
                // amount (null for a PSBT): read by `signer audit report`.
                "outflow_sats": validated.view.outflow_sats(),
                "recipient": new.recipient,
                "amount_sats": amount,
            })),
    );
    match node
        .store
        .insert_submitted_transaction(&new, &reserve, audit)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Duplicate {
            what: "utxo reservation",
            detail,
        }) => {
            return Err(TxError::Invalid {
                code: "utxo_unavailable",
                message: detail,
            })
        }
        Err(e) => return Err(e.into()),
    }
    // Reserved in the database (or failed): the claim is no longer needed.
    drop(claim);
    let prop = Proposal {
        id,
        key_id: validated.key_id.clone(),
        psbt: base64::engine::general_purpose::STANDARD.encode(&psbt_bytes),
        initiator: initiator.to_owned(),
        deadline_unix: crate::fault::proposal_deadline(
            now_unix() + node.cfg.wallet.vote_timeout_secs.max(5),
        ),
        initiator_name: Some(initiator_name.to_owned()),
    };
    let own = if node.cfg.wallet.proposal_batch_max > 1
        && super::batch::participants_speak_batches(node, &key.participants)
    {
        super::batch::propose(node, prop, !reserve.is_empty(), key.participants.clone()).await
    } else {
        propose_alone(node, prop, !reserve.is_empty(), &key.participants).await
    };
    if let Err(e) = own {
        // The proposal is out: the others learn the failure from this node (else
        // they would vote and expire it while this node records it failed), and the
        // failure is recorded here however long the database takes to come back.
        let reason = e.to_string();
        node.tx.remove(id);
        let now = node
            .store
            .transaction_failed(&node.cfg.node_id, id, &reason)
            .await;
        let node = node.clone();
        let participants = key.participants.clone();
        tokio::spawn(async move {
            let recorded = match now {
                Err(e) if e.is_unavailable() => {
                    super::until_recorded("proposal failure", id, || {
                        node.store
                            .transaction_failed(&node.cfg.node_id, id, &reason)
                    })
                    .await
                }
                r => r,
            };
            if let Err(e) = recorded {
                tracing::error!(tx = %id, error = %e, "cannot record the failure");
            }
            let done = wire::Done::failure(id, reason);
            match wire::encode(&done) {
                Ok(b) => {
                    super::voting::broadcast(&node, &participants, Frame::new(id, wire::TX_DONE, b))
                        .await
                }
                Err(e) => tracing::error!(tx = %id, error = %e, "cannot encode the result"),
            }
        });
        return Err(e);
    }
    Ok(id)
}

/// Sends `prop` to the key's participants on its own and votes on it here.
pub(super) async fn propose_alone(
    node: &Arc<TxCtx>,
    prop: Proposal,
    reserved_at_intake: bool,
    participants: &[String],
) -> Result<(), TxError> {
    let id = prop.id;
    let payload = wire::encode(&prop).map_err(|e| TxError::Internal(e.to_string()))?;
    // The proposal goes out from a task of its own: neither this node's vote nor the
    // API answer waits on the peers' delivery acknowledgements (a frozen peer would
    // hold the request for the send timeout).
    let me = node.cfg.node_id.clone();
    let mut frames = vec![Frame::new(id, TX_PROPOSE, payload)];
    if let Some(deadline_unix) = crate::fault::replayed_deadline(prop.deadline_unix) {
        let again = Proposal {
            deadline_unix,
            ..prop.clone()
        };
        if let Ok(payload) = wire::encode(&again) {
            frames.push(Frame::new(id, TX_PROPOSE, payload));
        }
    }
    super::voting::broadcast_detached(node, participants, frames);
    super::voting::on_proposal(node, &me, prop, reserved_at_intake).await
}

/// Outputs a recipient + amount request selected, claimed until the request's
/// reservation is settled (stored or failed; also when the request is dropped
/// half-way): released under the intake lock.
struct Claim {
    node: Arc<TxCtx>,
    outpoints: Vec<bitcoin::OutPoint>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let outpoints = std::mem::take(&mut self.outpoints);
        if let Ok(mut claims) = self.node.tx.intake_lock.try_lock() {
            claims.release(&outpoints);
            return;
        }
        let node = self.node.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { node.tx.intake_lock.lock().await.release(&outpoints) });
            }
            // Only outside a runtime (never in the node): the outputs stay
            // unselectable here until the process restarts, which is safe.
            Err(_) => tracing::warn!(count = outpoints.len(), "intake claims not released"),
        }
    }
}

/// Imports the outputs of a funding transaction that pay this node's keys.
pub async fn import_utxos(
    node: &Arc<TxCtx>,
    raw: &[u8],
) -> Result<Vec<wallet::OwnedUtxo>, TxError> {
    let keys: Vec<_> = super::usable_keys(node)
        .await?
        .into_iter()
        .map(|k| k.wallet)
        .collect();
    let found = wallet::scan_funding_tx(raw, &keys, &super::limits(node))?;
    if let Some(u) = found.first() {
        // Kept whole so this node's proposals can prove the amounts to the others.
        let tx = wallet::decode_funding_tx(raw, &super::limits(node))?;
        if tx.compute_txid() == u.outpoint.txid {
            node.store.add_funding_transaction(&tx).await?;
        }
    }
    node.store.add_utxos(&found).await?;
    super::selection::forget(node, None).await;
    Ok(found)
}

/// The leader's checks before anything is stored: every input's amount and script
/// is proven (the PSBT's full previous transaction, or an output this node
/// imported; `400 unproven_input_amount` / `input_amount_mismatch`), and the
/// unsigned transaction was not approved here under other data (`409
/// txid_approved_with_other_data`). Then the full previous transactions this node
/// holds are put on the inputs that lack them, so every other node can prove the
/// amounts itself.
async fn prove_inputs(
    node: &Arc<TxCtx>,
    validated: &mut wallet::ValidatedPsbt,
    limits: &wallet::IntakeLimits,
) -> Result<(), TxError> {
    let outpoints: Vec<_> = validated.inputs.iter().map(|i| i.outpoint).collect();
    if !crate::fault::skip_intake_checks() {
        let known = node.store.known_outputs(&outpoints).await?;
        validated.check_input_proofs(&known)?;
        if let Some(first) = node
            .store
            .txid_approved_with_other_data(
                &validated.txid.to_string(),
                &validated.approval_data_hash(),
            )
            .await?
        {
            return Err(TxError::Conflict {
                code: super::voting::REASON_TXID_OTHER_DATA,
                message: format!(
                    "unsigned transaction {} was approved on this node under other data \
                     (transaction {first}); it is not approved again",
                    validated.txid
                ),
            });
        }
    }
    let mut txids: Vec<_> = outpoints.iter().map(|o| o.txid).collect();
    txids.sort();
    txids.dedup();
    let funding = node.store.funding_transactions(&txids).await?;
    if validated.attach_previous_transactions(&funding) > 0 {
        let size = validated.psbt.serialize().len();
        if size > limits.max_psbt_bytes {
            return Err(TxError::Invalid {
                code: "psbt_too_large",
                message: format!(
                    "with the previous transactions that prove its amounts the psbt is \
                     {size} bytes, more than the limit of {}",
                    limits.max_psbt_bytes
                ),
            });
        }
    }
    Ok(())
}

/// Handles a proposal frame from a peer.
pub async fn on_propose_frame(node: Arc<TxCtx>, from: String, payload: bytes::Bytes) {
    match wire::decode::<Proposal>(&payload) {
        Ok(p) => {
            let id = p.id;
            if let Err(e) = super::voting::on_proposal(&node, &from, p, false).await {
                tracing::warn!(tx = %id, leader = %from, error = %e, "proposal refused");
            }
        }
        Err(e) => {
            if let Some(dropped) = crate::tx::DROPPED.hit() {
                tracing::warn!(dropped, peer = %from, error = %e, "malformed proposal; dropped")
            }
        }
    }
}

/// Handles a batch of proposals from a peer ([`wire::TX_PROPOSE_BATCH`]); a batch of
/// the wrong shape is dropped whole, before any of it is handled.
pub async fn on_propose_batch_frame(node: Arc<TxCtx>, from: String, payload: bytes::Bytes) {
    let batch = match wire::decode::<wire::ProposalBatch>(&payload) {
        Ok(b) => b,
        Err(e) => {
            if let Some(dropped) = crate::tx::DROPPED.hit() {
                tracing::warn!(dropped, peer = %from, error = %e, "malformed proposal batch; dropped")
            }
            return;
        }
    };
    if let Err(e) = batch.check() {
        if let Some(dropped) = crate::tx::DROPPED.hit() {
            tracing::warn!(dropped, peer = %from, batch = %batch.batch, error = %e, "proposal batch refused; dropped");
        }
        return;
    }
    node.tx.batches.note_received();
    let ids: Vec<Uuid> = batch.proposals.iter().map(|p| p.id).collect();
    let results = super::voting::on_proposal_batch(&node, &from, batch.proposals, &[]).await;
    for (id, r) in ids.into_iter().zip(results) {
        if let Err(e) = r {
            tracing::warn!(tx = %id, leader = %from, batch = %batch.batch, error = %e, "proposal refused");
        }
    }
}
