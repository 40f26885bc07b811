//! Transactions end to end on a real 3-node 2-of-3 cluster: funding UTXOs imported,
//! the recipient + amount form built by the node, every node validating and voting
//! with signed votes, two approving nodes signing (CGGMP24 for P2WPKH, FROST for
//! P2TR), and the final transaction verified here with Bitcoin Core's consensus code;
//! a policy rejection signs nothing; bad requests get 4xx codes and store nothing.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::{Address, Transaction, TxOut};
use cluster_tests::{funding, other_address, Cluster};
use serde_json::{json, Value};

const N: usize = 3;

async fn ended(c: &Cluster, i: usize, path: &str, done: &[&str], within: u64) -> Value {
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

async fn tx_count(c: &Cluster, i: usize) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM transactions")
        .fetch_one(&db)
        .await
        .unwrap();
    n
}

/// Pays `amount` sats from `key_id` and checks the result on every node and with
/// libbitcoinconsensus here; returns the number of inputs spent.
async fn pay_and_verify(c: &Cluster, key_id: &str, fund: &Transaction, amount: u64) -> usize {
    let to = other_address();
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/transactions",
            &json!({ "key_id": key_id, "recipient": to.to_string(), "amount_sats": amount, "fee_rate_sat_vb": 2 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let mut final_hex = None;
    for i in 0..N {
        let v = ended(
            c,
            i,
            &format!("/api/v1/transactions/{id}"),
            &["signed", "failed", "rejected", "expired"],
            240,
        )
        .await;
        assert_eq!(v["state"], "signed", "node {i}: {v}");
        let hex = v["signed_tx"].as_str().unwrap().to_owned();
        assert_eq!(
            final_hex.get_or_insert(hex.clone()),
            &hex,
            "nodes agree on the transaction"
        );
    }
    let tx: Transaction = encode::deserialize_hex(&final_hex.unwrap()).unwrap();
    // Recipient paid, change back to the wallet, every input verified by consensus.
    assert!(tx
        .output
        .iter()
        .any(|o| o.script_pubkey == to.script_pubkey() && o.value.to_sat() == amount));
    assert_eq!(tx.output.len(), 2, "recipient and change");
    let fund_txid = fund.compute_txid();
    let spent: Vec<TxOut> = tx
        .input
        .iter()
        .map(|i| {
            assert_eq!(i.previous_output.txid, fund_txid);
            fund.output[i.previous_output.vout as usize].clone()
        })
        .collect();
    let bytes = encode::serialize(&tx);
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
    // Every node stored every node's signed vote for the round.
    for i in 0..N {
        let db = c.db(i).await;
        let (votes,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1::uuid AND v.signed_vote IS NOT NULL",
        )
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(votes >= 2, "node {i} holds {votes} votes");
    }
    tx.input.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_and_taproot_payments_are_voted_signed_and_pass_consensus() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let frost = c.dkg(N, "frost", 2).await;
    let ecdsa = c.dkg(N, "cggmp24", 2).await;
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &json!({})).await;
    assert_eq!(status, 202, "{v}");
    let aux = v["ceremony_id"].as_str().unwrap().to_owned();
    for i in 0..N {
        let v = ended(
            &c,
            i,
            &format!("/api/v1/dkg/ceremonies/{aux}"),
            &["completed", "failed"],
            300,
        )
        .await;
        assert_eq!(v["state"], "completed", "{v}");
    }
    c.write_policy(N, &[&frost, &ecdsa], 1_000_000);
    let keys = c.get_ok(0, "/api/v1/keys").await.unwrap();

    for key_id in [&frost, &ecdsa] {
        let entry = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .unwrap()
            .clone();
        let addr = Address::from_str(entry["first_address"].as_str().unwrap())
            .unwrap()
            .require_network(bitcoin::Network::Regtest)
            .unwrap();
        let fund = funding(&addr, &[20_000, 25_000, 2_000_000]);
        let (status, v) = c
            .post_json(
                0,
                "/api/v1/utxos",
                &json!({ "raw_tx": encode::serialize_hex(&fund) }),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["imported"].as_array().unwrap().len(), 3);

        // Over the policy's per-transaction limit: every node votes reject, the round
        // is rejected everywhere, nothing is signed and the UTXO is released.
        let (status, v) = c
            .post_json(
                0,
                "/api/v1/transactions",
                &json!({ "key_id": key_id, "recipient": other_address().to_string(), "amount_sats": 1_200_000 }),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        for i in 0..N {
            let v = ended(
                &c,
                i,
                &format!("/api/v1/transactions/{id}"),
                &["signed", "failed", "rejected", "expired"],
                120,
            )
            .await;
            assert_eq!(v["state"], "rejected", "node {i}: {v}");
            assert!(v["signed_tx"].is_null());
        }

        // Single input (the large UTXO), then two inputs (the two small ones).
        assert_eq!(pay_and_verify(&c, key_id, &fund, 30_000).await, 1);
        assert_eq!(pay_and_verify(&c, key_id, &fund, 40_000).await, 2);
    }

    // Bad requests: 4xx with a code, nothing stored, never a 5xx.
    let before = tx_count(&c, 0).await;
    let mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    for (body, code) in [
        (
            json!({ "key_id": ecdsa, "recipient": mainnet, "amount_sats": 1000 }),
            "address_wrong_network",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": 0 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": -5 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": 2_100_000_000_000_001_i64 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": "'; DROP TABLE transactions; --", "recipient": other_address().to_string(), "amount_sats": 1000 }),
            "unknown_key",
        ),
        (
            json!({ "psbt": "not a psbt'; DELETE FROM votes; --" }),
            "psbt_malformed",
        ),
        (json!({ "psbt": "cHNidP8BAA==" }), "psbt_malformed"),
        (json!({ "key_id": ecdsa }), "invalid_request"),
    ] {
        let (status, v) = c.post_json(0, "/api/v1/transactions", &body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        tx_count(&c, 0).await,
        before,
        "nothing stored for refused requests"
    );
}
