//! Spent outpoints converge across nodes (issue 17, partition finding): a node that
//! missed a transaction's proposal and result (partitioned, down, its database
//! unreachable) still learns that the UTXOs it spends are spent, so it no longer
//! builds payments on them that can never be signed.
//!
//! Every node sends each connected peer the signed transactions it recorded in the
//! last [`WINDOW`] ([`wire::TX_SPENT`], at most [`MAX_NOTICE_TXS`] per frame),
//! each once per peer: a send that fails or times out (a partitioned peer) is
//! retried every [`PERIOD`] until the peer acknowledges it, and the whole window is
//! sent again every [`RESEND_ALL`] (a peer may have acknowledged a notice it could
//! not act on, its database being away) and when this node restarts.
//!
//! A receiver believes only what it verifies itself: for each transaction that
//! spends an outpoint it still holds `available` or `reserved`, it takes the amount
//! and script of *every* input from its own `utxos` table (a transaction with an
//! input it does not know is ignored: it cannot be verified) and verifies every
//! input with Bitcoin Core's consensus code. Only then are those outpoints marked
//! `spent` (audited `utxo.spent`, with the reporting peer). A transaction that does
//! not verify is recorded against its sender ([`VIOLATION_FORGED_SPEND`]) and
//! changes nothing. The receiver does not record the transaction itself (it never
//! voted on it); the signing rules are unchanged, so this only ever takes coins out
//! of coin selection, never makes a spend possible.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bitcoin::consensus::encode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{blame, wire, TxCtx, DROPPED};
use crate::p2p::Frame;

/// How far back a node's signed transactions are sent to its peers.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How often a node sends what its peers have not acknowledged yet.
pub const PERIOD: Duration = Duration::from_secs(3);
/// How often a node forgets what its peers acknowledged and sends its window again.
pub const RESEND_ALL: Duration = Duration::from_secs(600);
/// Most transactions in one notice (more wait for the next period).
pub const MAX_NOTICE_TXS: usize = 64;
/// Largest transaction (bytes) sent or accepted in a notice.
pub const MAX_TX_BYTES: usize = 100_000;
/// A peer's notices are processed at most this often (extra ones are dropped; the
/// sender retries only what was not acknowledged, so nothing honest is lost for
/// long).
pub const MIN_NOTICE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a send may take before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Signed transactions read per period, at most.
const READ_LIMIT: i64 = 1024;

/// A notice whose transaction does not verify against the receiver's own UTXOs.
pub const VIOLATION_FORGED_SPEND: &str = "forged_spend";

/// [`wire::TX_SPENT`]: signed transactions of the sender's cluster keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpentNotice {
    /// Each a fully signed transaction (hex).
    pub txs: Vec<String>,
}

/// Why a reported transaction changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpendCheck {
    /// It spends nothing this node still holds available or reserved.
    #[error("spends nothing this node holds")]
    NothingToLearn,
    /// An input this node has no UTXO row for: it cannot verify the transaction.
    #[error("input {0} unknown here: cannot verify")]
    Unverifiable(bitcoin::OutPoint),
    /// It does not verify against this node's own record of the spent outputs.
    #[error("does not verify: {0}")]
    Invalid(String),
}

/// Checks `tx` against this node's own outputs `known` (amount and script of each
/// outpoint it has a row for): the spent outputs in input order when every input
/// is known and every input verifies with the consensus code.
pub fn verify_spend(
    tx: &bitcoin::Transaction,
    known: &wallet::KnownOutputs,
) -> Result<Vec<bitcoin::TxOut>, SpendCheck> {
    let mut spent = Vec::with_capacity(tx.input.len());
    for i in &tx.input {
        let o = known
            .get(&i.previous_output)
            .ok_or(SpendCheck::Unverifiable(i.previous_output))?;
        spent.push(o.clone());
    }
    wallet::verify_consensus(tx, &spent).map_err(|e| SpendCheck::Invalid(e.to_string()))?;
    Ok(spent)
}

/// Sends this node's recent signed transactions to every connected peer until
/// each acknowledged them (see the module documentation). Runs forever.
pub async fn run(node: Arc<TxCtx>) {
    // Per peer: the transactions it acknowledged (pruned to the window's rows).
    let mut delivered: HashMap<String, HashSet<Uuid>> = HashMap::new();
    let mut forgotten = Instant::now();
    loop {
        tokio::time::sleep(PERIOD).await;
        if forgotten.elapsed() >= RESEND_ALL {
            delivered.clear();
            forgotten = Instant::now();
        }
        let ids = match node
            .store
            .recent_signed_transactions(WINDOW, READ_LIMIT)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read signed transactions to share");
                continue;
            }
        };
        let peers = node.net.p2p.connected_peers();
        // Per peer, the first MAX_NOTICE_TXS ids it has not acknowledged; only
        // those transactions are read.
        let live: HashSet<Uuid> = ids.iter().copied().collect();
        let mut wanted: Vec<(String, Vec<Uuid>)> = Vec::new();
        for peer in peers {
            let done = delivered.entry(peer.clone()).or_default();
            done.retain(|id| live.contains(id));
            let todo: Vec<Uuid> = ids
                .iter()
                .filter(|id| !done.contains(id))
                .take(MAX_NOTICE_TXS)
                .copied()
                .collect();
            wanted.push((peer, todo));
        }
        let mut needed: Vec<Uuid> = wanted.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        needed.sort_unstable();
        needed.dedup();
        let mut hexes: HashMap<Uuid, String> = HashMap::new();
        if !needed.is_empty() {
            match node.store.signed_transactions(&needed).await {
                Ok(rows) => hexes.extend(
                    rows.into_iter()
                        .filter(|(_, raw)| raw.len() <= MAX_TX_BYTES)
                        .map(|(id, raw)| (id, hex::encode(raw))),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read signed transactions to share");
                    continue;
                }
            }
        }
        let forged = forged_spends(&node).await;
        let sends = wanted.into_iter().filter_map(|(peer, todo)| {
            let txs: Vec<String> = forged
                .iter()
                .cloned()
                .chain(todo.iter().filter_map(|id| hexes.get(id).cloned()))
                .take(MAX_NOTICE_TXS)
                .collect();
            if txs.is_empty() {
                return None;
            }
            let notice = SpentNotice { txs };
            let node = node.clone();
            Some(async move {
                let ok = match wire::encode(&notice) {
                    Ok(b) => {
                        let f = Frame::new(Uuid::new_v4(), wire::TX_SPENT, b);
                        match tokio::time::timeout(SEND_TIMEOUT, node.net.p2p.send(&peer, f)).await
                        {
                            Ok(Ok(())) => true,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "signed transactions not delivered");
                                false
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "signed transactions not acknowledged in time");
                                false
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode signed transactions");
                        false
                    }
                };
                // An id without a transaction to send (too large, gone) counts
                // as delivered too, or it would hold its slot for ever.
                (peer, ok.then_some(todo))
            })
        });
        for (peer, sent) in futures::future::join_all(sends).await {
            if let Some(todo) = sent {
                delivered.entry(peer).or_default().extend(todo);
            }
        }
    }
}

/// When each peer's last notice was processed.
static LAST_NOTICE: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// Whether a notice of `peer` may be processed now (at most one per
/// [`MIN_NOTICE_INTERVAL`] and peer).
fn admit(peer: &str) -> bool {
    let mut g = LAST_NOTICE.lock().unwrap_or_else(PoisonError::into_inner);
    let map = g.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get(peer) {
        Some(at) if now.duration_since(*at) < MIN_NOTICE_INTERVAL => false,
        _ => {
            map.insert(peer.to_owned(), now);
            true
        }
    }
}

/// Receiver: learns the outpoints that `from`'s signed transactions spend, each
/// after verifying it itself.
pub async fn on_notice(node: &TxCtx, from: &str, notice: SpentNotice) {
    if notice.txs.len() > MAX_NOTICE_TXS || !admit(from) {
        if let Some(dropped) = DROPPED.hit() {
            tracing::warn!(dropped, peer = %from, txs = notice.txs.len(), "signed-transaction notice over its limits; dropped");
        }
        return;
    }
    let mut txs = Vec::with_capacity(notice.txs.len());
    for h in &notice.txs {
        if h.len() > 2 * MAX_TX_BYTES {
            continue;
        }
        match encode::deserialize_hex::<bitcoin::Transaction>(h) {
            Ok(tx) => txs.push(tx),
            Err(e) => {
                if let Some(dropped) = DROPPED.hit() {
                    tracing::warn!(dropped, peer = %from, error = %e, "undecodable transaction in a notice; dropped");
                }
            }
        }
    }
    // Which of the spent outpoints this node still holds, for the whole notice in
    // one statement (issue 21: usually none, every node recorded the spend itself).
    let outpoints: Vec<bitcoin::OutPoint> = txs
        .iter()
        .flat_map(|tx| tx.input.iter().map(|i| i.previous_output))
        .collect();
    let held = match node.store.unspent_among(&outpoints).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(peer = %from, error = %e, "cannot check reported spends");
            return;
        }
    };
    for tx in &txs {
        if !tx.input.iter().any(|i| held.contains(&i.previous_output)) {
            continue;
        }
        if learn(node, from, tx).await == Learned::Forged {
            // One violation per notice: a peer cannot fill the audit log.
            return;
        }
    }
}

/// What a reported transaction did here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learned {
    /// Nothing (nothing to learn, not verifiable, a database error).
    Nothing,
    /// Outpoints marked spent.
    Spent,
    /// It does not verify: recorded against the sender.
    Forged,
}

/// Marks the outpoints `tx` spends spent here if it verifies against this node's
/// own outputs (see the module documentation); called for a transaction that
/// spends at least one outpoint this node still holds.
async fn learn(node: &TxCtx, from: &str, tx: &bitcoin::Transaction) -> Learned {
    let txid = tx.compute_txid();
    let outpoints: Vec<bitcoin::OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    let known = match node.store.known_outputs(&outpoints).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(%txid, error = %e, "cannot check a reported spend");
            return Learned::Nothing;
        }
    };
    match verify_spend(tx, &known) {
        Ok(_) => {}
        Err(SpendCheck::Invalid(reason)) => {
            blame::record(
                node,
                from,
                VIOLATION_FORGED_SPEND,
                &txid.to_string(),
                serde_json::json!({ "txid": txid.to_string(), "reason": reason }),
                &node.cfg.node_id.clone(),
            )
            .await;
            return Learned::Forged;
        }
        Err(e) => {
            tracing::info!(%txid, peer = %from, reason = %e, "reported spend not taken");
            return Learned::Nothing;
        }
    }
    match node
        .store
        .mark_spent_elsewhere(&node.cfg.node_id, &txid.to_string(), &outpoints, from)
        .await
    {
        Ok(changed) if !changed.is_empty() => {
            tracing::info!(%txid, peer = %from, outpoints = ?changed, "outpoints spent by a verified signed transaction marked spent");
            Learned::Spent
        }
        Ok(_) => Learned::Nothing,
        Err(e) => {
            tracing::warn!(%txid, error = %e, "cannot record a verified spend");
            Learned::Nothing
        }
    }
}

/// Forged "signed" transactions spending this node's available UTXOs (at most 4
/// per key), when `SIGNER_FAULT_FORGE_SPENT` is armed (feature `fault-injection`
/// only: [`crate::fault::forge_spent`]).
async fn forged_spends(node: &TxCtx) -> Vec<String> {
    if crate::fault::forge_spent() {
        let mut out = Vec::new();
        for k in super::usable_keys(node).await.unwrap_or_default() {
            let utxos = node
                .store
                .available_utxos(k.wallet.key_id())
                .await
                .unwrap_or_default();
            let Some(first) = utxos.first() else {
                continue;
            };
            let input: Vec<bitcoin::TxIn> = utxos
                .iter()
                .take(4)
                .map(|u| bitcoin::TxIn {
                    previous_output: u.outpoint,
                    witness: bitcoin::Witness::from_slice(&[[0x5a_u8; 64]]),
                    ..bitcoin::TxIn::default()
                })
                .collect();
            let tx = bitcoin::Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: bitcoin::absolute::LockTime::ZERO,
                input,
                output: vec![bitcoin::TxOut {
                    value: bitcoin::Amount::from_sat(1_000),
                    script_pubkey: first.script_pubkey.clone(),
                }],
            };
            tracing::error!(txid = %tx.compute_txid(), "FAULT INJECTION: sharing a forged signed transaction");
            out.push(bitcoin::consensus::encode::serialize_hex(&tx));
        }
        return out;
    }
    Vec::new()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step must fail the test loudly
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Witness};

    /// A P2WPKH output of a fresh key, and a transaction spending it signed with
    /// that key (valid under the consensus rules).
    fn signed_spend() -> (OutPoint, TxOut, Transaction) {
        let secp = Secp256k1::new();
        let sk = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pk = bitcoin::CompressedPublicKey(sk.public_key(&secp));
        let prev = TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()),
        };
        let outpoint = OutPoint::new(bitcoin::Txid::from_byte_array([3u8; 32]), 1);
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                ..TxIn::default()
            }],
            output: vec![TxOut {
                value: Amount::from_sat(40_000),
                script_pubkey: prev.script_pubkey.clone(),
            }],
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &prev.script_pubkey, prev.value, EcdsaSighashType::All)
            .unwrap();
        let sig = secp.sign_ecdsa(&Message::from(sighash), &sk);
        let sig = bitcoin::ecdsa::Signature {
            signature: sig,
            sighash_type: EcdsaSighashType::All,
        };
        tx.input[0].witness = Witness::p2wpkh(&sig, &pk.0);
        (outpoint, prev, tx)
    }

    #[test]
    fn a_signed_spend_of_a_known_output_verifies() {
        let (o, prev, tx) = signed_spend();
        let known = wallet::KnownOutputs::from([(o, prev.clone())]);
        assert_eq!(verify_spend(&tx, &known), Ok(vec![prev]));
    }

    #[test]
    fn a_forged_witness_is_invalid() {
        let (o, prev, mut tx) = signed_spend();
        let mut w: Vec<Vec<u8>> = tx.input[0].witness.to_vec();
        let last = w[0].len() - 2;
        w[0][last] ^= 1;
        tx.input[0].witness = Witness::from_slice(&w);
        let known = wallet::KnownOutputs::from([(o, prev)]);
        assert!(matches!(
            verify_spend(&tx, &known),
            Err(SpendCheck::Invalid(_))
        ));
    }

    #[test]
    fn a_spend_checked_against_another_amount_or_script_is_invalid() {
        // The node's own record decides: a peer cannot make a spend verify by
        // choosing the amount (BIP-143 commits to it) or the script.
        let (o, prev, tx) = signed_spend();
        let cheaper = TxOut {
            value: Amount::from_sat(49_999),
            ..prev.clone()
        };
        let known = wallet::KnownOutputs::from([(o, cheaper)]);
        assert!(matches!(
            verify_spend(&tx, &known),
            Err(SpendCheck::Invalid(_))
        ));
        let other_script = TxOut {
            script_pubkey: ScriptBuf::new_op_return([1u8; 4]),
            ..prev
        };
        let known = wallet::KnownOutputs::from([(o, other_script)]);
        assert!(matches!(
            verify_spend(&tx, &known),
            Err(SpendCheck::Invalid(_))
        ));
    }

    #[test]
    fn an_input_this_node_does_not_know_makes_it_unverifiable() {
        let (o, prev, mut tx) = signed_spend();
        let other = OutPoint::new(bitcoin::Txid::from_byte_array([9u8; 32]), 0);
        tx.input.push(TxIn {
            previous_output: other,
            ..TxIn::default()
        });
        let known = wallet::KnownOutputs::from([(o, prev)]);
        assert_eq!(
            verify_spend(&tx, &known),
            Err(SpendCheck::Unverifiable(other))
        );
    }

    #[test]
    fn notices_refuse_unknown_fields() {
        assert!(wire::decode::<SpentNotice>(br#"{"txs":[],"extra":1}"#).is_err());
        let n: SpentNotice = wire::decode(br#"{"txs":["00"]}"#).unwrap();
        assert_eq!(n.txs, vec!["00".to_owned()]);
    }

    #[test]
    fn a_peer_is_admitted_at_most_once_per_interval() {
        let peer = format!("peer-{}", Uuid::new_v4());
        assert!(admit(&peer));
        assert!(!admit(&peer), "a second notice right away is dropped");
        assert!(
            admit(&format!("{peer}-other")),
            "other peers are independent"
        );
    }
}
