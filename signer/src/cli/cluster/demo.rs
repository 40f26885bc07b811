//! `signer cluster demo-sign`: on a running regtest dev cluster, signs one sample
//! payment with the newest key of each type (ECDSA/CGGMP24 and Taproot/FROST)
//! through the real pipeline (policy, votes, threshold signing) and checks the
//! result with Bitcoin Core's consensus code. Each run makes up a fresh funding
//! transaction (regtest only) paying the key's first address, which is all the node
//! needs to spend it; re-runnable on the same cluster any number of times.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash as _;
use bitcoin::{Address, Amount, Network, OutPoint, Transaction, TxIn, TxOut};
use serde::Deserialize;
use serde_json::json;

use crate::cli::client::ApiClient;

/// Sats in each sample funding output and paid by each sample payment.
const FUNDING_SATS: u64 = 100_000;
const PAYMENT_SATS: u64 = 25_000;
/// Longest wait for one payment to be signed (the first ECDSA signing after aux
/// info also waits for every node to open the key's signing material).
const SIGN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for aux info.
const AUX_TIMEOUT: Duration = Duration::from_secs(900);

/// `GET /api/v1/keys`, in the fields the demo needs. Deserialized strictly: a
/// renamed or missing field fails the demo (and its test) instead of mislabelling.
#[derive(Debug, Deserialize)]
struct KeysAnswer {
    keys: Vec<ApiKey>,
}

/// One key of [`KeysAnswer`].
#[derive(Debug, Clone, Deserialize)]
struct ApiKey {
    key_id: String,
    key_type: KeyType,
    network: String,
    share_loaded: bool,
    signing_ready: bool,
    participants: Vec<String>,
    first_address: Option<String>,
}

/// `key_type` of the keys API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KeyType {
    Ecdsa,
    Taproot,
}

impl KeyType {
    fn label(self) -> &'static str {
        match self {
            KeyType::Ecdsa => "ecdsa   (CGGMP24, P2WPKH)",
            KeyType::Taproot => "taproot (FROST, P2TR)",
        }
    }
}

/// One signed demo payment.
struct Paid {
    key: ApiKey,
    txid: bitcoin::Txid,
    inputs: usize,
    secs: f64,
}

/// Runs the demo through `api` (a node of the cluster file): one line per key as
/// it is paid, then a summary of the signed transactions' txids and their
/// consensus verification. Fails if any payment does not end signed and valid.
pub async fn demo_sign(api: &ApiClient) -> anyhow::Result<()> {
    let cluster = api
        .cluster
        .clone()
        .context("demo-sign needs the cluster file (--cluster)")?;
    let answer = api.get("/api/v1/keys").await?;
    let answer: KeysAnswer = serde_json::from_value(answer).map_err(|e| {
        anyhow::anyhow!(
            "{} answered GET /api/v1/keys in a form this demo does not know: {e}",
            api.label()
        )
    })?;
    // The keys come newest first: the newest usable key of each type.
    let mut chosen: Vec<ApiKey> = Vec::new();
    for ty in [KeyType::Ecdsa, KeyType::Taproot] {
        if let Some(k) = answer
            .keys
            .iter()
            .find(|k| k.key_type == ty && k.share_loaded && k.first_address.is_some())
        {
            chosen.push(k.clone());
        }
    }
    anyhow::ensure!(
        !chosen.is_empty(),
        "no completed key on {}: run `signer dkg start --protocol ecdsa|taproot --threshold T --wait` first",
        api.label()
    );
    if let Some(k) = chosen.iter().find(|k| k.network != "regtest") {
        anyhow::bail!(
            "demo-sign runs on regtest clusters only; key {} is on {}",
            k.key_id,
            k.network
        );
    }
    if let Some(k) = chosen.iter().find(|k| k.key_type == KeyType::Ecdsa) {
        crate::cli::aux::start(api, None, false, Some(AUX_TIMEOUT), true).await?;
        signing_material_open(api, k).await?;
    }
    // Each node evaluates its own policy file: allow the demo keys on regtest.
    let mut policy = String::from(
        "# Written by `signer cluster demo-sign` (regtest demo).\nversion = 1\nname = \"demo\"\n",
    );
    for k in &chosen {
        policy.push_str(&format!(
            "\n[[scope]]\nkey_id = \"{}\"\nnetwork = \"regtest\"\n[scope.limits]\nmax_per_tx_sats = 1_000_000\n",
            k.key_id
        ));
    }
    for n in &cluster.nodes {
        let path = n.dir.join("policy.toml");
        std::fs::write(&path, &policy).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut paid = Vec::new();
    for k in chosen {
        let p = sign_one(api, k).await?;
        println!(
            "{} key {}: paid {PAYMENT_SATS} sats in {:.1} s",
            p.key.key_type.label(),
            p.key.key_id,
            p.secs
        );
        paid.push(p);
    }
    println!();
    println!("signed transactions (verified with libbitcoinconsensus):");
    for p in &paid {
        println!(
            "  {}  txid {}  all {} input(s) valid",
            p.key.key_type.label(),
            p.txid,
            p.inputs
        );
    }
    Ok(())
}

/// Waits until every participant of ECDSA key `key` reports its signing material
/// open (`signing_ready`: the share with its aux info, opened by each node's
/// warm-up within seconds of aux info; the library's precomputed tables follow in
/// the background and are not waited for).
async fn signing_material_open(api: &ApiClient, key: &ApiKey) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = false;
    for p in &key.participants {
        let Some(node) = api.for_node(p) else {
            continue;
        };
        loop {
            let answer: KeysAnswer = serde_json::from_value(node.get("/api/v1/keys").await?)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{} answered GET /api/v1/keys in a form this demo does not know: {e}",
                        node.label()
                    )
                })?;
            if answer
                .keys
                .iter()
                .any(|k| k.key_id == key.key_id && k.signing_ready)
            {
                break;
            }
            if !said {
                println!("waiting for every node to open the ECDSA key's signing material...");
                said = true;
            }
            anyhow::ensure!(
                start.elapsed() < AUX_TIMEOUT,
                "{} did not open the signing material of key {} within {} s",
                node.label(),
                key.key_id,
                AUX_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if said {
        println!(
            "signing material open on every node ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A funding transaction nobody made before: a random previous outpoint, one
/// output of [`FUNDING_SATS`] to `addr`.
fn fresh_funding(addr: &Address) -> Transaction {
    let mut prev = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut prev);
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array(prev), 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(FUNDING_SATS),
            script_pubkey: addr.script_pubkey(),
        }],
    }
}

/// Funds, pays and verifies one key.
async fn sign_one(api: &ApiClient, key: ApiKey) -> anyhow::Result<Paid> {
    let addr = Address::from_str(key.first_address.as_deref().unwrap_or_default())
        .with_context(|| format!("key {}: first address does not parse", key.key_id))?
        .require_network(Network::Regtest)
        .context("demo-sign runs on regtest clusters only")?;
    let fund = fresh_funding(&addr);
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
            &json!({ "key_id": key.key_id, "recipient": to.to_string(),
                     "amount_sats": PAYMENT_SATS, "fee_rate_sat_vb": 2 }),
        )
        .await?;
    let id = v["id"]
        .as_str()
        .with_context(|| format!("{} accepted the payment without an id: {v}", api.label()))?
        .to_owned();
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
            start.elapsed() < SIGN_TIMEOUT,
            "transaction {id} not signed within {} s",
            SIGN_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = start.elapsed().as_secs_f64();
    let tx: Transaction = encode::deserialize_hex(t["signed_tx"].as_str().unwrap_or_default())
        .context("the node's signed transaction does not decode")?;
    let spent = spent_outputs(&t, &tx, &fund)?;
    wallet::verify_consensus(&tx, &spent)
        .map_err(|e| anyhow::anyhow!("transaction {id} fails consensus verification: {e}"))?;
    Ok(Paid {
        key,
        txid: tx.compute_txid(),
        inputs: tx.input.len(),
        secs,
    })
}

/// The outputs `tx` spends. Coin selection may take an older demo UTXO of the key
/// (an earlier run's funding or change) beside this run's: the amounts come from
/// the signed PSBT's `witness_utxo`, and every output of this run's funding must
/// match it exactly.
fn spent_outputs(
    t: &serde_json::Value,
    tx: &Transaction,
    fund: &Transaction,
) -> anyhow::Result<Vec<TxOut>> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(t["signed_psbt"].as_str().unwrap_or_default())
        .context("the node's signed PSBT is not base64")?;
    let psbt =
        bitcoin::Psbt::deserialize(&raw).context("the node's signed PSBT does not decode")?;
    anyhow::ensure!(
        psbt.unsigned_tx.compute_txid() == tx.compute_txid(),
        "the signed PSBT is not the signed transaction"
    );
    let fund_txid = fund.compute_txid();
    tx.input
        .iter()
        .zip(&psbt.inputs)
        .map(|(i, p)| {
            let utxo = p
                .witness_utxo
                .clone()
                .with_context(|| format!("input {} has no witness_utxo", i.previous_output))?;
            if i.previous_output.txid == fund_txid {
                let ours = usize::try_from(i.previous_output.vout)
                    .ok()
                    .and_then(|v| fund.output.get(v));
                anyhow::ensure!(
                    ours == Some(&utxo),
                    "input {} does not match the demo funding",
                    i.previous_output
                );
            }
            Ok(utxo)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dkg::keys::KeyInfo;
    use crate::dkg::DkgProtocol;

    fn key_info(protocol: DkgProtocol) -> KeyInfo {
        KeyInfo {
            key_id: format!("{}-key", protocol.as_str()),
            key_type: protocol.key_type(),
            t: 3,
            n: 5,
            participants: vec!["node-1".into()],
            public_key: "02ab".into(),
            share_loaded: true,
            signing_ready: true,
            precomputed_tables: None,
            network: "regtest".into(),
            descriptor: None,
            receive_descriptor: None,
            change_descriptor: None,
            first_address: Some("bcrt1qexample".into()),
        }
    }

    #[test]
    fn the_demo_reads_the_keys_api_answer_as_the_node_writes_it() {
        // The same shape as `GET /api/v1/keys` (api::dkg::keys).
        let answer = json!({
            "node_id": "node-1",
            "loaded_shares": 2,
            "keys": [key_info(DkgProtocol::Frost), key_info(DkgProtocol::Cggmp24)],
        });
        let a: KeysAnswer = serde_json::from_value(answer).unwrap();
        assert_eq!(a.keys[0].key_type, KeyType::Taproot);
        assert_eq!(a.keys[1].key_type, KeyType::Ecdsa);
        assert_eq!(a.keys[1].key_id, "cggmp24-key");
        assert!(a.keys[1].share_loaded);
        assert!(a.keys[1].signing_ready);
    }

    #[test]
    fn a_keys_answer_without_key_type_is_refused_not_mislabelled() {
        let mut k = serde_json::to_value(key_info(DkgProtocol::Frost)).unwrap();
        let ty = k.as_object_mut().unwrap().remove("key_type").unwrap();
        k["protocol"] = ty;
        assert!(serde_json::from_value::<KeysAnswer>(json!({ "keys": [k] })).is_err());
        let mut k = serde_json::to_value(key_info(DkgProtocol::Frost)).unwrap();
        k["key_type"] = json!("frost");
        assert!(serde_json::from_value::<KeysAnswer>(json!({ "keys": [k] })).is_err());
    }

    #[test]
    fn every_run_funds_from_a_new_outpoint() {
        let addr = Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
            .unwrap()
            .assume_checked();
        let a = fresh_funding(&addr);
        let b = fresh_funding(&addr);
        assert_ne!(a.compute_txid(), b.compute_txid());
        assert_eq!(a.output[0].script_pubkey, addr.script_pubkey());
    }
}
