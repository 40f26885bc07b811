//! Wallet steps shared by cluster tests: key ceremonies, aux info, policy, funding,
//! payments and consensus verification with libbitcoinconsensus.
#![allow(clippy::unwrap_used)] // test harness: a failed step must fail the test loudly

use std::str::FromStr;
use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::{Address, Amount, OutPoint, Transaction, TxIn, TxOut};
use serde_json::{json, Value};

use crate::Cluster;

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

/// Runs a key ceremony of `protocol` with threshold `t` on `n` nodes; the key id.
pub async fn dkg(c: &Cluster, n: usize, protocol: &str, t: u16) -> String {
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({ "protocol": protocol, "threshold": t }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    ceremony_completed(c, n, &id, 120).await;
    id
}

/// Runs the aux-info ceremony of every node.
pub async fn aux_info(c: &Cluster, n: usize) {
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &json!({})).await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    ceremony_completed(c, n, &id, 300).await;
}

/// Writes a policy allowing up to 1 000 000 sats per transaction for `keys` on
/// node `i` (no scope at all with an empty list: that node rejects everything).
pub fn write_policy(c: &Cluster, i: usize, keys: &[&str]) {
    let mut text = String::from("version = 1\nname = \"tests\"\n");
    for k in keys {
        text.push_str(&format!(
            "\n[[scope]]\nkey_id = \"{k}\"\nnetwork = \"regtest\"\n[scope.limits]\nmax_per_tx_sats = 1_000_000\n"
        ));
    }
    if keys.is_empty() {
        text.push_str("\n[[scope]]\nkey_id = \"no-such-key\"\nnetwork = \"regtest\"\n");
    }
    std::fs::write(c.node(i).dir.join("policy.toml"), &text).unwrap();
}

/// The first receive address of `key_id` (from node 0).
pub async fn first_address(c: &Cluster, key_id: &str) -> Address {
    let entry = c.key_entry(0, key_id).await;
    Address::from_str(entry["first_address"].as_str().unwrap())
        .unwrap()
        .require_network(bitcoin::Network::Regtest)
        .unwrap()
}

/// A transaction paying `values` to `addr` (its input is made up: only the outputs
/// matter to the node, which signs spends of them); a distinct `salt` gives a
/// distinct txid.
pub fn funding(addr: &Address, values: &[u64], salt: u32) -> Transaction {
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(
                bitcoin::Txid::from_str(&"11".repeat(32)).unwrap(),
                salt,
            ),
            ..TxIn::default()
        }],
        output: values
            .iter()
            .map(|v| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: addr.script_pubkey(),
            })
            .collect(),
    }
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

/// A fresh regtest P2WPKH address nobody in the cluster owns.
pub fn other_address() -> Address {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let (_, pk) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
    Address::p2wpkh(&bitcoin::CompressedPublicKey(pk), bitcoin::Network::Regtest)
}

/// Submits a payment of `amount` sats from `key_id` on node 0; its id.
pub async fn submit_payment(c: &Cluster, key_id: &str, amount: u64, fee_rate: u64) -> String {
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/transactions",
            &json!({ "key_id": key_id, "recipient": other_address().to_string(), "amount_sats": amount, "fee_rate_sat_vb": fee_rate }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Waits until transaction `id` ended on each node of `nodes`, asserts `signed`
/// everywhere with the same transaction, and returns it.
pub async fn signed_everywhere(c: &Cluster, nodes: &[usize], id: &str, within: u64) -> Transaction {
    let mut final_hex: Option<String> = None;
    for &i in nodes {
        let v = ended(
            c,
            i,
            &format!("/api/v1/transactions/{id}"),
            &["signed", "failed", "rejected", "expired"],
            within,
        )
        .await;
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
