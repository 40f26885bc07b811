//! `signer cluster demo-sign`: on a running regtest dev cluster, signs one sample
//! payment per completed key through the real pipeline (policy, votes, threshold
//! signing) and checks the result with Bitcoin Core's consensus code. The funding
//! transaction is made up (regtest only): its outputs pay the key's first address,
//! which is all the node needs to spend them.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bitcoin::consensus::encode;
use bitcoin::{Address, Amount, Network, OutPoint, Transaction, TxIn, TxOut};
use serde_json::{json, Value};

use crate::cli::client::ApiClient;

/// Sats in each sample funding output and paid by each sample payment.
const FUNDING_SATS: u64 = 100_000;
const PAYMENT_SATS: u64 = 25_000;

/// Runs the demo through `api` (a node of the cluster file) and prints one line per
/// key. Fails if any key's payment does not end signed and valid.
pub async fn demo_sign(api: &ApiClient) -> anyhow::Result<()> {
    let cluster = api
        .cluster
        .clone()
        .context("demo-sign needs the cluster file (--cluster)")?;
    let keys = api.get("/api/v1/keys").await?;
    let keys: Vec<Value> = keys["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k["first_address"].is_string())
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "no completed key: run `signer dkg start` first"
    );
    let key_ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k["key_id"].as_str().map(str::to_owned))
        .collect();
    if keys.iter().any(|k| k["protocol"] == "cggmp24") {
        ensure_aux_info(api).await?;
    }
    // Each node evaluates its own policy file: allow the demo keys on regtest.
    let mut policy = String::from(
        "# Written by `signer cluster demo-sign` (regtest demo).\nversion = 1\nname = \"demo\"\n",
    );
    for k in &key_ids {
        policy.push_str(&format!(
            "\n[[scope]]\nkey_id = \"{k}\"\nnetwork = \"regtest\"\n[scope.limits]\nmax_per_tx_sats = 1_000_000\n"
        ));
    }
    for n in &cluster.nodes {
        let path = n.dir.join("policy.toml");
        std::fs::write(&path, &policy).with_context(|| format!("writing {}", path.display()))?;
    }
    for k in &keys {
        let key_id = k["key_id"].as_str().unwrap_or_default();
        let kind = if k["protocol"] == "frost" {
            "taproot (FROST)"
        } else {
            "ecdsa (CGGMP24)"
        };
        let line = sign_one(api, key_id, k).await?;
        println!("{kind} key {key_id}: {line}");
    }
    Ok(())
}

/// Runs aux info (needed for ECDSA signing) unless it exists for the node set.
async fn ensure_aux_info(api: &ApiClient) -> anyhow::Result<()> {
    let v = api.post("/api/v1/aux-info/start", &json!({})).await?;
    let Some(id) = v["ceremony_id"].as_str().map(str::to_owned) else {
        return Ok(());
    };
    if v["state"] == "completed" || v["reused"] == true {
        return Ok(());
    }
    println!("running aux info {id} (needed once for ECDSA signing)...");
    let start = Instant::now();
    loop {
        let c = api.get(&format!("/api/v1/dkg/ceremonies/{id}")).await?;
        match c["state"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") => anyhow::bail!("aux info {id} failed: {c}"),
            _ => {}
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "aux info {id} did not complete within 15 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Funds, pays and verifies one key; returns the line to print.
async fn sign_one(api: &ApiClient, key_id: &str, key: &Value) -> anyhow::Result<String> {
    let addr = Address::from_str(key["first_address"].as_str().unwrap_or_default())?
        .require_network(Network::Regtest)
        .context("demo-sign runs on regtest clusters only")?;
    let fund = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::from_consensus(
            u32::try_from(chrono::Utc::now().timestamp() % 400_000_000).unwrap_or(0),
        ),
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_str(&"ab".repeat(32))?, 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(FUNDING_SATS),
            script_pubkey: addr.script_pubkey(),
        }],
    };
    api.post(
        "/api/v1/utxos",
        &json!({ "raw_tx": encode::serialize_hex(&fund) }),
    )
    .await?;
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let (_, pk) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
    let to = Address::p2wpkh(&bitcoin::CompressedPublicKey(pk), Network::Regtest);
    let v = api
        .post(
            "/api/v1/transactions",
            &json!({ "key_id": key_id, "recipient": to.to_string(),
                     "amount_sats": PAYMENT_SATS, "fee_rate_sat_vb": 2 }),
        )
        .await?;
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let start = Instant::now();
    let t = loop {
        let t = api.get(&format!("/api/v1/transactions/{id}")).await?;
        match t["state"].as_str() {
            Some("signed" | "broadcast" | "confirmed") => break t,
            Some(s @ ("failed" | "rejected" | "expired" | "aborted_byzantine")) => {
                anyhow::bail!("transaction {id} ended {s}: {}", t["failure_reason"])
            }
            _ => {}
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "transaction {id} not signed within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tx: Transaction = encode::deserialize_hex(t["signed_tx"].as_str().unwrap_or_default())
        .context("the node's signed transaction does not decode")?;
    let spent: Vec<TxOut> = tx
        .input
        .iter()
        .map(|i| {
            anyhow::ensure!(
                i.previous_output.txid == fund.compute_txid(),
                "input {} is not the demo funding",
                i.previous_output
            );
            fund.output
                .get(usize::try_from(i.previous_output.vout)?)
                .cloned()
                .context("input spends no funding output")
        })
        .collect::<anyhow::Result<_>>()?;
    crate::wallet::verify_consensus(&tx, &spent)
        .map_err(|e| anyhow::anyhow!("transaction {id} fails consensus verification: {e}"))?;
    Ok(format!(
        "paid {PAYMENT_SATS} sats in {:.1} s, txid {}; libbitcoinconsensus: all {} input(s) valid",
        start.elapsed().as_secs_f64(),
        tx.compute_txid(),
        tx.input.len()
    ))
}
