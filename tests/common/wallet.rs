//! Wallet steps shared by cluster tests: key ceremonies, aux info, policy, funding,
//! payments and consensus verification with libbitcoinconsensus.
#![allow(clippy::unwrap_used)] // test harness: a failed step must fail the test loudly

use std::str::FromStr;
use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::{Address, Transaction, TxOut};
use serde_json::{json, Value};

use crate::{funding, other_address, Cluster};

/// Polls `path` on node `i` until its `state` is one of `done`.
pub async fn ended(c: &Cluster, i: usize, path: &str, done: &[&str], within: u64) -> Value {
    c.eventually(
        &format!("{path} on node {i}"),
        Duration::from_secs(within),
        || async {
            c.get_ok(i, path)
                .await
                .filter(|v| done.iter().any(|d| v["state"] == *d))
        },
    )
    .await
}

/// Waits until ceremony `id` completed on the first `n` nodes.
pub async fn ceremony_completed(c: &Cluster, n: usize, id: &str, within: u64) {
    for i in 0..n {
        let v = ended(
            c,
            i,
            &format!("/api/v1/dkg/ceremonies/{id}"),
            &["completed", "failed"],
            within,
        )
        .await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
    }
}

/// Runs the aux-info ceremony of every node.
pub async fn aux_info(c: &Cluster, n: usize) {
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &json!({})).await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    ceremony_completed(c, n, &id, 300).await;
}

/// The first receive address of `key_id` (from node 0).
pub async fn first_address(c: &Cluster, key_id: &str) -> Address {
    let entry = c.key_entry(0, key_id).await;
    Address::from_str(entry["first_address"].as_str().unwrap())
        .unwrap()
        .require_network(bitcoin::Network::Regtest)
        .unwrap()
}

/// Imports the outputs of `fund` on node 0.
pub async fn import(c: &Cluster, fund: &Transaction) {
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/utxos",
            &json!({ "raw_tx": encode::serialize_hex(fund) }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["imported"].as_array().unwrap().len(), fund.output.len());
}

/// Funds the first address of `key_id` with one output per value and imports the
/// funding transaction on node 0.
pub async fn fund(c: &Cluster, key_id: &str, values: &[u64]) -> Transaction {
    let fund = funding(&first_address(c, key_id).await, values);
    import(c, &fund).await;
    fund
}

/// Submits a transaction on node `leader`; returns its id.
pub async fn submit(c: &Cluster, leader: usize, body: &Value) -> String {
    let (status, v) = c.post_json(leader, "/api/v1/transactions", body).await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// A recipient + amount request paying `amount` sats from `key_id` to a fresh
/// address, at `fee_rate` sat/vB.
pub fn pay_at(key_id: &str, amount: u64, fee_rate: u64) -> Value {
    json!({ "key_id": key_id, "recipient": other_address().to_string(), "amount_sats": amount, "fee_rate_sat_vb": fee_rate })
}

/// [`pay_at`] at 2 sat/vB.
pub fn pay(key_id: &str, amount: u64) -> Value {
    pay_at(key_id, amount, 2)
}

/// Submits a payment of `amount` sats from `key_id` on node 0; its id.
pub async fn submit_payment(c: &Cluster, key_id: &str, amount: u64, fee_rate: u64) -> String {
    submit(c, 0, &pay_at(key_id, amount, fee_rate)).await
}

/// Waits up to `within` seconds for transaction `id` to end on node `i` and returns
/// its answer; on timeout prints every node's history of it and panics.
pub async fn ended_tx(c: &Cluster, i: usize, id: &str, within: u64) -> Value {
    let path = format!("/api/v1/transactions/{id}");
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = c.get_ok(i, &path).await.filter(|v| {
            ["signed", "failed", "rejected", "expired"]
                .iter()
                .any(|d| v["state"] == *d)
        }) {
            return v;
        }
        if start.elapsed() > Duration::from_secs(within) {
            let state = c.get_ok(i, &path).await.unwrap_or_default();
            dump_history(c, id).await;
            panic!("transaction {id} did not end on node {i} within {within} s: {state}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for transaction `id` to end on each of `nodes`; asserts it ended as `state`
/// everywhere and returns node `nodes[0]`'s answer. On failure, prints every node's
/// history of the transaction.
pub async fn ends_as(c: &Cluster, nodes: &[usize], id: &str, state: &str) -> Value {
    let mut first = None;
    for &i in nodes {
        let v = ended_tx(c, i, id, 240).await;
        if v["state"] != state {
            dump_history(c, id).await;
        }
        assert_eq!(v["state"], state, "node {i}: {v}");
        first.get_or_insert(v);
    }
    first.unwrap()
}

/// Prints every node's audit trail and log lines for transaction `id` (on failure).
pub async fn dump_history(c: &Cluster, id: &str) {
    for i in 0..c.file.nodes.len() {
        if let Ok(db) = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&c.node(i).database_url)
            .await
        {
            let rows: Vec<(String, String, Value)> = sqlx::query_as(
                "SELECT node_id, action, details FROM audit_log WHERE subject = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&db)
            .await
            .unwrap_or_default();
            for r in rows {
                eprintln!("audit node {i}: {r:?}");
            }
        }
        let log = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains(id)) {
            eprintln!("log node {i}: {line}");
        }
    }
}

/// Waits until transaction `id` ended on each node of `nodes`, asserts `signed`
/// everywhere with the same transaction, and returns it.
pub async fn signed_everywhere(c: &Cluster, nodes: &[usize], id: &str, within: u64) -> Transaction {
    let mut final_hex: Option<String> = None;
    for &i in nodes {
        let v = ended_tx(c, i, id, within).await;
        if v["state"] != "signed" {
            dump_history(c, id).await;
        }
        assert_eq!(v["state"], "signed", "node {i}: {v}");
        let hex = v["signed_tx"].as_str().unwrap().to_owned();
        assert_eq!(final_hex.get_or_insert(hex.clone()), &hex, "nodes agree");
    }
    encode::deserialize_hex(&final_hex.unwrap()).unwrap()
}

/// Verifies every input of `tx` with libbitcoinconsensus; `funds` hold the spent
/// outputs.
pub fn verify_consensus(tx: &Transaction, funds: &[&Transaction]) {
    let spent: Vec<TxOut> = tx
        .input
        .iter()
        .map(|i| {
            let f = funds
                .iter()
                .find(|f| f.compute_txid() == i.previous_output.txid)
                .expect("input spends a known funding output");
            f.output[i.previous_output.vout as usize].clone()
        })
        .collect();
    let bytes = encode::serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = spent
        .iter()
        .map(|o| bitcoinconsensus::Utxo {
            script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: o.script_pubkey.len() as u32,
            value: o.value.to_sat() as i64,
        })
        .collect();
    for (i, o) in spent.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            o.script_pubkey.as_bytes(),
            o.value.to_sat(),
            &bytes,
            Some(&utxos),
            i,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        )
        .unwrap_or_else(|e| panic!("input {i} fails consensus: {e:?}"));
    }
}

/// A BDK wallet of the descriptors `receive` and `change` (regtest), funded with
/// one confirmed made-up output per value (at heights 100, 101, ...); the funding
/// transactions, not yet imported on the cluster.
pub fn bdk_wallet_funded(
    receive: &str,
    change: &str,
    values: &[u64],
) -> (bdk_wallet::Wallet, Vec<Transaction>) {
    use bdk_wallet::chain::{BlockId, ConfirmationBlockTime};
    use bdk_wallet::test_utils::{insert_anchor, insert_checkpoint, insert_tx};
    use bdk_wallet::{KeychainKind, Wallet};
    use bitcoin::hashes::Hash;

    let mut w = Wallet::create(receive.to_owned(), change.to_owned())
        .network(bitcoin::Network::Regtest)
        .create_wallet_no_persist()
        .unwrap();
    let mut funds = Vec::new();
    for (n, v) in values.iter().enumerate() {
        let addr = w.reveal_next_address(KeychainKind::External).address;
        let tx = funding(&addr, &[*v]);
        let height = 100 + n as u32;
        let block = BlockId {
            height,
            hash: bitcoin::BlockHash::from_byte_array([height as u8; 32]),
        };
        insert_checkpoint(&mut w, block);
        insert_tx(&mut w, tx.clone());
        insert_anchor(
            &mut w,
            tx.compute_txid(),
            ConfirmationBlockTime {
                block_id: block,
                confirmation_time: u64::from(height),
            },
        );
        funds.push(tx);
    }
    (w, funds)
}
