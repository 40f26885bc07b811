//! Optional Bitcoin Core backend (`[chain]`, off unless `bitcoind_rpc_url` is set).
//!
//! Every `poll_secs`, on a node whose custody is unsealed:
//! * **scan** (`scan = true`): `scantxoutset` over the receive and change
//!   descriptors of every loaded key (indexes `0..DEFAULT_GAP`), and the outputs
//!   found are added to the `utxos` table (known ones are kept as they are, so a
//!   spent or reserved UTXO is never made available again). Immature coinbase
//!   outputs wait until they can be spent.
//! * **broadcast** (`broadcast = true`): every transaction in `signed` is sent with
//!   `sendrawtransaction` and moved to `broadcast`; "already in the mempool / in
//!   the chain" counts as sent, so every node of the cluster can do this for its
//!   own record of the transaction, idempotently.
//! * **confirm** (`broadcast = true`): every transaction in `broadcast` is looked up
//!   with `getrawtransaction` (needs `-txindex` once it is out of the mempool;
//!   without it, `gettxout` on its outputs), and moved to `confirmed` with one
//!   confirmation or more.
//!
//! Each transition is one database transaction with its audit entry
//! (`tx.broadcast`, `tx.confirmed`).

pub mod rpc;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::tx::TxCtx;
pub use rpc::{RpcAuth, RpcClient, RpcError};
use wallet::{OwnedUtxo, WalletKey, DEFAULT_GAP};

/// Transactions handled per state and round.
const BATCH: i64 = 100;
/// Confirmations a coinbase output needs before it can be spent.
const COINBASE_MATURITY: u64 = 100;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An RPC call failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// bitcoind serves another network than the wallet's.
    #[error("bitcoind serves chain {chain:?}, the wallet is on {wallet}")]
    WrongNetwork {
        /// bitcoind's `chain`.
        chain: String,
        /// The configured network.
        wallet: bitcoin::Network,
    },
    /// Database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The keys could not be listed.
    #[error("keys: {0}")]
    Keys(String),
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// UTXOs new to the `utxos` table.
    pub imported: u64,
    /// Transactions moved to `broadcast`.
    pub broadcast: usize,
    /// Transactions moved to `confirmed`.
    pub confirmed: usize,
}

/// Runs the backend until the process ends (returns at once when it is off).
pub async fn run(node: Arc<TxCtx>) {
    let cfg = node.cfg.chain.clone();
    let rpc = match RpcClient::from_config(&cfg) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "bitcoin core backend disabled");
            return;
        }
    };
    let mut checked = false;
    loop {
        if node.unsealed().is_some() {
            if !checked {
                match check_network(&rpc, node.cfg.wallet.network).await {
                    Ok(()) => checked = true,
                    Err(e @ ChainError::WrongNetwork { .. }) => {
                        tracing::error!(error = %e, "bitcoin core backend disabled");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "bitcoind not reachable yet"),
                }
            }
            if checked {
                match round(&node, &rpc).await {
                    Ok(r) if r != Round::default() => tracing::info!(
                        imported = r.imported,
                        broadcast = r.broadcast,
                        confirmed = r.confirmed,
                        "bitcoin core round"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "bitcoin core round failed"),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(cfg.poll_secs.max(1))).await;
    }
}

/// Refuses a bitcoind of another network than the wallet's.
pub async fn check_network(rpc: &RpcClient, wallet: bitcoin::Network) -> Result<(), ChainError> {
    let info: Value = rpc.call("getblockchaininfo", json!([])).await?;
    let chain = info["chain"].as_str().unwrap_or("").to_owned();
    match bitcoin::Network::from_core_arg(&chain) {
        Ok(n) if n == wallet => Ok(()),
        _ => Err(ChainError::WrongNetwork { chain, wallet }),
    }
}

/// One round: scan, broadcast, confirm, as configured.
pub async fn round(node: &Arc<TxCtx>, rpc: &RpcClient) -> Result<Round, ChainError> {
    let mut r = Round::default();
    if node.cfg.chain.scan {
        r.imported = scan(node, rpc).await?;
    }
    if node.cfg.chain.broadcast {
        r.broadcast = broadcast_signed(node, rpc).await?;
        r.confirmed = confirm_broadcast(node, rpc).await?;
    }
    Ok(r)
}

/// One entry of `scantxoutset`'s `unspents`.
#[derive(Debug, Clone, Deserialize)]
pub struct ScanUnspent {
    /// Transaction id.
    pub txid: bitcoin::Txid,
    /// Output index.
    pub vout: u32,
    /// scriptPubKey, hex.
    #[serde(rename = "scriptPubKey")]
    pub script_pubkey: String,
    /// Value in BTC (Bitcoin Core's JSON number).
    pub amount: f64,
    /// Whether the output is a coinbase output (Bitcoin Core 25 and later).
    #[serde(default)]
    pub coinbase: bool,
    /// Height of the block holding it.
    #[serde(default)]
    pub height: u64,
}

/// The answer of `scantxoutset start`.
#[derive(Debug, Clone, Deserialize)]
pub struct ScanResult {
    /// Whether the scan completed.
    pub success: bool,
    /// Height of the chain tip the scan saw.
    #[serde(default)]
    pub height: u64,
    /// Unspent outputs matching the descriptors.
    #[serde(default)]
    pub unspents: Vec<ScanUnspent>,
}

/// Satoshis of a Bitcoin Core BTC amount (printed with 8 decimals, so rounding
/// is exact); `None` if not positive or above the supply.
pub fn btc_to_sats(btc: f64) -> Option<u64> {
    let sats = (btc * 100_000_000.0).round();
    if !sats.is_finite() || sats < 1.0 || sats > wallet::MAX_MONEY_SATS as f64 {
        return None;
    }
    // in range and whole: the conversion is exact
    Some(sats as u64)
}

/// The `scantxoutset` scan objects of `keys`: both single-chain descriptors of
/// each key over indexes `0..DEFAULT_GAP` (the range `find_path` looks at).
pub fn scan_objects(keys: &[WalletKey]) -> Value {
    let range = DEFAULT_GAP.saturating_sub(1);
    let objects: Vec<Value> = keys
        .iter()
        .flat_map(|k| {
            let (receive, change) = k.single_path_descriptors();
            [receive, change]
        })
        .map(|d| json!({ "desc": d, "range": [0, range] }))
        .collect();
    Value::Array(objects)
}

/// The outputs of a scan that pay `keys` and can be spent now.
pub fn owned_unspents(scan: &ScanResult, keys: &[WalletKey]) -> Vec<OwnedUtxo> {
    let mut out = Vec::new();
    for u in &scan.unspents {
        if u.coinbase && scan.height.saturating_sub(u.height) + 1 < COINBASE_MATURITY {
            continue;
        }
        let (Ok(script), Some(value_sats)) = (hex::decode(&u.script_pubkey), btc_to_sats(u.amount))
        else {
            tracing::warn!(txid = %u.txid, vout = u.vout, "scan entry with a bad script or amount skipped");
            continue;
        };
        let script = bitcoin::ScriptBuf::from_bytes(script);
        let Some((key, path)) = keys
            .iter()
            .find_map(|k| k.find_path(&script).map(|p| (k, p)))
        else {
            continue;
        };
        out.push(OwnedUtxo {
            key_id: key.key_id().to_owned(),
            outpoint: bitcoin::OutPoint {
                txid: u.txid,
                vout: u.vout,
            },
            value_sats,
            script_pubkey: script,
            chain: path.chain,
            index: path.index,
        });
    }
    out
}

/// Imports the spendable outputs paying the loaded keys; returns how many were new.
pub async fn scan(node: &Arc<TxCtx>, rpc: &RpcClient) -> Result<u64, ChainError> {
    let keys: Vec<WalletKey> = crate::tx::usable_keys(node)
        .await
        .map_err(|e| ChainError::Keys(e.to_string()))?
        .into_iter()
        .map(|k| k.wallet)
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    let result: ScanResult = rpc
        .call("scantxoutset", json!(["start", scan_objects(&keys)]))
        .await?;
    if !result.success {
        return Ok(0);
    }
    let found = owned_unspents(&result, &keys);
    let added = node.store.add_utxos(&found).await?;
    crate::tx::selection::forget(node, None).await;
    Ok(added)
}

/// Whether a `sendrawtransaction` refusal means the transaction is already known
/// (in the mempool or in the chain).
pub fn already_known(e: &RpcError) -> bool {
    match e {
        RpcError::Rpc { code, message, .. } => {
            *code == rpc::codes::VERIFY_ALREADY_IN_CHAIN
                || message.contains("txn-already-in-mempool")
                || message.contains("txn-already-known")
                || message.contains("already in block chain")
        }
        _ => false,
    }
}

/// Sends every `signed` transaction and moves it to `broadcast`.
pub async fn broadcast_signed(node: &Arc<TxCtx>, rpc: &RpcClient) -> Result<usize, ChainError> {
    let mut moved = 0;
    for (id, txid, raw) in node.store.signed_in_state("signed", BATCH).await? {
        let sent: Result<String, RpcError> = rpc
            .call("sendrawtransaction", json!([hex::encode(&raw)]))
            .await;
        let how = match sent {
            Ok(t) if t == txid => "sent",
            Ok(t) => {
                tracing::error!(tx = %id, %txid, answered = %t, "bitcoind answered another txid; not recorded");
                continue;
            }
            Err(e) if already_known(&e) => "already_known",
            Err(e @ RpcError::Rpc { .. }) => {
                tracing::warn!(tx = %id, %txid, error = %e, "bitcoind refused the transaction; retrying next round");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if node
            .store
            .advance_transaction(
                &node.cfg.node_id,
                id,
                "signed",
                "broadcast",
                "tx.broadcast",
                json!({ "txid": txid, "result": how }),
            )
            .await?
        {
            tracing::info!(tx = %id, %txid, result = how, "transaction broadcast");
            moved += 1;
        }
    }
    Ok(moved)
}

/// Confirmations of `txid` (0 while unconfirmed), from `getrawtransaction`, or
/// from `gettxout` on its outputs when bitcoind has no transaction index.
async fn confirmations(rpc: &RpcClient, txid: &str, raw: &[u8]) -> Result<u64, ChainError> {
    let verbose: Result<Value, RpcError> = rpc.call("getrawtransaction", json!([txid, true])).await;
    match verbose {
        Ok(v) => Ok(v["confirmations"].as_u64().unwrap_or(0)),
        Err(e) if e.rpc_code() == Some(rpc::codes::INVALID_ADDRESS_OR_KEY) => {
            let outputs = encode::deserialize::<bitcoin::Transaction>(raw)
                .map(|t| t.output.len())
                .unwrap_or(0);
            for vout in 0..outputs {
                let o: Value = rpc.call("gettxout", json!([txid, vout, false])).await?;
                if let Some(c) = o["confirmations"].as_u64() {
                    return Ok(c);
                }
            }
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves every `broadcast` transaction with one confirmation or more to `confirmed`.
pub async fn confirm_broadcast(node: &Arc<TxCtx>, rpc: &RpcClient) -> Result<usize, ChainError> {
    let mut moved = 0;
    for (id, txid, raw) in node.store.signed_in_state("broadcast", BATCH).await? {
        let n = confirmations(rpc, &txid, &raw).await?;
        if n == 0 {
            continue;
        }
        if node
            .store
            .advance_transaction(
                &node.cfg.node_id,
                id,
                "broadcast",
                "confirmed",
                "tx.confirmed",
                json!({ "txid": txid, "confirmations": n }),
            )
            .await?
        {
            tracing::info!(tx = %id, %txid, confirmations = n, "transaction confirmed");
            moved += 1;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests;
