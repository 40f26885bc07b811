//! `signer-hwi`, the Bitcoin Core external signer, against a real 5-node 3-of-5
//! cluster (PostgreSQL, etcd, SoftHSM, node processes) with one ECDSA (CGGMP24,
//! P2WPKH) and one Taproot (FROST, P2TR) key. The binary is run exactly as
//! `bitcoind -signer=signer-hwi` runs it (src/external_signer.cpp): the same argument
//! shapes, `signtx PSBT` on standard input with `--stdin`, and the first line of
//! standard output read as JSON, an `error` string meaning failure. It authenticates
//! with an operator token read from a 0600 file named by its configuration file.
//!
//! Bitcoin Core itself is not run here (it is not packaged by the registries this
//! project installs from): BDK builds the PSBTs from the descriptors `getdescriptors`
//! returns, as Core's wallet would, funding comes through `POST /api/v1/utxos`, and
//! the signed PSBTs are finalized by BDK and checked with libbitcoinconsensus.
//!
//! Needs the `signer-hwi` binary: `cargo build -p signer --bins` (make build), or
//! `SIGNER_HWI_BIN`.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use base64::Engine as _;
use bdk_wallet::{SignOptions, Wallet};
use bitcoin::{Amount, Network, Psbt, Transaction};
use cluster_tests::wallet::{aux_info, import, verify_consensus};
use cluster_tests::{other_address, Cluster};
use miniscript::{Descriptor, DescriptorPublicKey};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

const N: usize = 5;
const T: u16 = 3;
/// The policy's per-transaction limit on every node.
const LIMIT_SATS: u64 = 1_000_000;

/// The `signer-hwi` binary (`cargo build -p signer --bins`), or `SIGNER_HWI_BIN`.
fn hwi_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGNER_HWI_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/signer-hwi
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("signer-hwi");
    assert!(
        bin.is_file(),
        "signer-hwi not found at {}; run `cargo build -p signer --bins` (make build) first",
        bin.display()
    );
    bin
}

/// `signer-hwi` configured for node 0 of the cluster with an operator token.
struct Hwi {
    dir: tempfile::TempDir,
    token: String,
}

/// One cluster key as the tests see it.
struct Key {
    id: String,
    key_type: &'static str,
    /// Master fingerprint, from the key's descriptor on the node.
    fingerprint: String,
}

impl Hwi {
    fn new(c: &Cluster, token: String) -> Hwi {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Relative paths are relative to the configuration file.
        std::fs::copy(&c.file.ca_cert, dir.path().join("ca.pem")).unwrap();
        std::fs::write(
            dir.path().join("hwi.toml"),
            format!(
                "api_url = \"{}\"\nca_cert = \"ca.pem\"\ntoken_file = \"token\"\ntimeout_secs = 240\n",
                c.node(0).api_url
            ),
        )
        .unwrap();
        Hwi { dir, token }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hwi.toml")
    }

    /// Runs `signer-hwi ARGS` as Core does (configuration through the environment,
    /// `stdin` written then closed) and returns the first line of its standard
    /// output as JSON. Core reads the answer only when the exit status is 0.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let mut child = tokio::process::Command::new(hwi_bin())
            .args(args)
            .env("SIGNER_HWI_CONFIG", self.config())
            .env_remove("SIGNER_HWI_API_URL")
            .env_remove("SIGNER_HWI_TOKEN_FILE")
            .env_remove("SIGNER_HWI_CA_CERT")
            .env_remove("SIGNER_HWI_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "signer-hwi {args:?} exited {}: {stdout} {stderr}",
            out.status
        );
        for text in [&stdout, &stderr] {
            assert!(!text.contains(&self.token), "the token is printed");
        }
        let first = stdout.lines().next().unwrap_or_default();
        serde_json::from_str(first)
            .unwrap_or_else(|e| panic!("signer-hwi {args:?}: not JSON ({e}): {stdout} {stderr}"))
    }

    /// `--fingerprint FP --chain regtest COMMAND...`, Core's form.
    async fn on(&self, fp: &str, command: &[&str]) -> Value {
        let mut args = vec!["--fingerprint", fp, "--chain", "regtest"];
        args.extend_from_slice(command);
        self.run(&args, None).await
    }
}

/// Asserts Core's failure shape: an `error` string (shown to the user) and an HWI
/// `code`; returns the message.
fn core_error(v: &Value, code: i64) -> String {
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {v}"))
        .to_owned();
    assert!(!msg.is_empty(), "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v.get("psbt").is_none() && v.get("address").is_none(), "{v}");
    msg
}

fn descriptor(text: &str) -> Descriptor<DescriptorPublicKey> {
    Descriptor::<DescriptorPublicKey>::from_str(text)
        .unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
}

/// The master fingerprint of `key_id`: the xpub of its descriptor is the master
/// key (depth 0), and the descriptor's key origin names it.
async fn key(c: &Cluster, id: &str, key_type: &'static str) -> Key {
    let e = c.key_entry(0, id).await;
    assert_eq!(e["key_type"], key_type);
    let d = descriptor(e["receive_descriptor"].as_str().unwrap());
    let mut fps = Vec::new();
    miniscript::ForEachKey::for_each_key(&d, |k| {
        if let DescriptorPublicKey::XPub(x) = k {
            assert_eq!(x.xkey.depth, 0, "the descriptor's xpub is the master key");
            assert_eq!(x.origin.as_ref().map(|o| o.0), Some(x.xkey.fingerprint()));
            fps.push(x.xkey.fingerprint().to_string());
        }
        true
    });
    assert_eq!(fps.len(), 1, "{d}");
    Key {
        id: id.to_owned(),
        key_type,
        fingerprint: fps.remove(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitcoin_core_external_signer_protocol_against_a_real_cluster() {
    let c = Cluster::start(N as u16, T);
    c.wait_ready(N).await;
    let ecdsa = c.dkg(N, "cggmp24", T).await;
    let taproot = c.dkg(N, "frost", T).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&ecdsa, &taproot], LIMIT_SATS);
    let keys = [
        key(&c, &ecdsa, "ecdsa").await,
        key(&c, &taproot, "taproot").await,
    ];
    let hwi = Hwi::new(&c, c.create_token(0, "bitcoin-core", "operator").await);

    enumerate_lists_each_key_as_a_device_with_its_master_fingerprint(&hwi, &keys).await;
    for k in &keys {
        getdescriptors_parse_and_derive_the_clusters_addresses(&c, &hwi, k).await;
        displayaddress_confirms_the_clusters_address_and_refuses_other_keys(&c, &hwi, k, &keys)
            .await;
    }
    wrong_chain_and_unknown_fingerprint_are_refused(&hwi, &keys[0]).await;
    for (k, quoted) in [(&keys[0], true), (&keys[1], false)] {
        signtx_returns_a_psbt_that_finalizes_and_passes_consensus(&c, &hwi, k, quoted).await;
    }
    a_payment_the_policy_refuses_reaches_core_as_an_error(&c, &hwi, &keys[1]).await;
}

/// `enumerate`: one device per key, fingerprint = the key's master fingerprint,
/// model naming the key type; `--key` narrows the list to the one device Core
/// accepts per wallet.
async fn enumerate_lists_each_key_as_a_device_with_its_master_fingerprint(hwi: &Hwi, keys: &[Key]) {
    let v = hwi.run(&["enumerate"], None).await;
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(list.len(), keys.len(), "{v}");
    for k in keys {
        let d = list
            .iter()
            .find(|d| d["fingerprint"] == k.fingerprint.as_str())
            .unwrap_or_else(|| panic!("{} missing: {v}", k.fingerprint));
        assert!(d.get("error").is_none(), "{d}");
        assert_eq!(d["label"], k.id.as_str());
        assert_eq!(d["model"], format!("signer-cluster-{}", k.key_type));
        assert_eq!(d["type"], "signer-cluster");
        let fp = d["fingerprint"].as_str().unwrap();
        assert!(
            fp.len() == 8
                && fp
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "Core compares %08x: {fp}"
        );
    }
    for k in keys {
        for selector in [k.key_type, k.id.as_str(), k.fingerprint.as_str()] {
            let v = hwi.run(&["--key", selector, "enumerate"], None).await;
            assert_eq!(v.as_array().map(Vec::len), Some(1), "--key {selector}: {v}");
            assert_eq!(v[0]["fingerprint"], k.fingerprint.as_str());
        }
    }
    let v = hwi.run(&["--key", "no-such-key", "enumerate"], None).await;
    core_error(&v[0], -3);
}

/// `getdescriptors --account 0`: receive and change descriptors with checksums
/// and the key origin, parsed by rust-miniscript, whose addresses are the
/// cluster's own.
async fn getdescriptors_parse_and_derive_the_clusters_addresses(c: &Cluster, hwi: &Hwi, k: &Key) {
    let v = hwi
        .on(&k.fingerprint, &["getdescriptors", "--account", "0"])
        .await;
    let (receive, internal) = (&v["receive"], &v["internal"]);
    assert_eq!(receive.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(internal.as_array().map(Vec::len), Some(1), "{v}");
    let prefix = match k.key_type {
        "ecdsa" => "wpkh(",
        _ => "tr(",
    };
    for (list, chain) in [(receive, "receive"), (internal, "change")] {
        let text = list[0].as_str().unwrap();
        assert!(text.starts_with(prefix), "{text}");
        assert!(
            text.contains(&format!("[{}]", k.fingerprint)),
            "key origin: {text}"
        );
        let d = descriptor(text);
        // miniscript prints the descriptor with the checksum it computes: the
        // same text back means the checksum is valid.
        assert_eq!(d.to_string(), text);
        assert!(!d.is_multipath() && d.has_wildcard(), "{text}");
        let cluster = c
            .get_json(
                0,
                &format!("/api/v1/keys/{}/addresses?chain={chain}&count=3", k.id),
            )
            .await;
        for (i, a) in cluster["addresses"].as_array().unwrap().iter().enumerate() {
            let ours = d
                .at_derivation_index(i as u32)
                .unwrap()
                .address(Network::Regtest)
                .unwrap();
            assert_eq!(a["address"], ours.to_string(), "{chain} {i}");
        }
    }
    let v = hwi
        .on(&k.fingerprint, &["getdescriptors", "--account", "1"])
        .await;
    core_error(&v, -7);
}

/// The descriptor Core's `walletdisplayaddress` passes: InferDescriptor of one
/// address, `wpkh([fp/chain/index]pubkey)` or `tr([fp/chain/index]xonly)`, with
/// its checksum.
fn inferred_descriptor(key_type: &str, fp: &str, chain: u32, index: u32, pubkey: &str) -> String {
    let body = match key_type {
        "ecdsa" => format!("wpkh([{fp}/{chain}/{index}]{pubkey})"),
        _ => format!("tr([{fp}/{chain}/{index}]{})", &pubkey[2..]),
    };
    descriptor(&body).to_string()
}

/// `displayaddress --desc DESC`: the cluster's address at the descriptor's path is
/// echoed; another key's descriptor, this key's origin on another key's public key,
/// and a range are refused.
async fn displayaddress_confirms_the_clusters_address_and_refuses_other_keys(
    c: &Cluster,
    hwi: &Hwi,
    k: &Key,
    keys: &[Key],
) {
    let other = keys.iter().find(|o| o.id != k.id).unwrap();
    for (chain, name, index) in [(0u32, "receive", 1u32), (1, "change", 0)] {
        let path = format!("/api/v1/keys/{{}}/addresses?chain={name}&from={index}&count=1");
        let ours = c.get_json(0, &path.replace("{}", &k.id)).await["addresses"][0].clone();
        let theirs = c.get_json(0, &path.replace("{}", &other.id)).await["addresses"][0].clone();
        let pk = ours["public_key"].as_str().unwrap();
        let desc = inferred_descriptor(k.key_type, &k.fingerprint, chain, index, pk);
        let v = hwi
            .on(&k.fingerprint, &["displayaddress", "--desc", &desc])
            .await;
        assert!(v.get("error").is_none(), "{desc}: {v}");
        assert_eq!(v["address"], ours["address"], "{desc}");

        // The other key's own address, asked of this key's device.
        let their_desc = inferred_descriptor(
            other.key_type,
            &other.fingerprint,
            chain,
            index,
            theirs["public_key"].as_str().unwrap(),
        );
        let v = hwi
            .on(&k.fingerprint, &["displayaddress", "--desc", &their_desc])
            .await;
        let msg = core_error(&v, -7);
        assert!(msg.contains("not an address type"), "{msg}");

        // The other key's origin in this key's script type.
        let foreign = inferred_descriptor(
            k.key_type,
            &other.fingerprint,
            chain,
            index,
            theirs["public_key"].as_str().unwrap(),
        );
        let v = hwi
            .on(&k.fingerprint, &["displayaddress", "--desc", &foreign])
            .await;
        let msg = core_error(&v, -7);
        assert!(
            msg.contains(&format!("[{}]", other.fingerprint)) && msg.contains(&k.fingerprint),
            "{msg}"
        );

        // This key's origin on the other key's public key (same script type).
        let forged = inferred_descriptor(
            k.key_type,
            &k.fingerprint,
            chain,
            index,
            theirs["public_key"].as_str().unwrap(),
        );
        let v = hwi
            .on(&k.fingerprint, &["displayaddress", "--desc", &forged])
            .await;
        let msg = core_error(&v, -7);
        assert!(
            msg.contains(ours["address"].as_str().unwrap()),
            "names the cluster's address: {msg}"
        );
    }
    let entry = c.key_entry(0, &k.id).await;
    let ranged = entry["receive_descriptor"].as_str().unwrap();
    let v = hwi
        .on(&k.fingerprint, &["displayaddress", "--desc", ranged])
        .await;
    core_error(&v, -7);
}

/// `--chain` other than the cluster's network, and a fingerprint no key has, are
/// refused for every command.
async fn wrong_chain_and_unknown_fingerprint_are_refused(hwi: &Hwi, k: &Key) {
    for chain in ["main", "test", "signet", "testnet4"] {
        let v = hwi
            .run(
                &[
                    "--fingerprint",
                    &k.fingerprint,
                    "--chain",
                    chain,
                    "getdescriptors",
                    "--account",
                    "0",
                ],
                None,
            )
            .await;
        let msg = core_error(&v, -7);
        assert!(msg.contains("regtest"), "{msg}");
    }
    // No --chain: HWI's default, main.
    let v = hwi
        .run(&["--fingerprint", &k.fingerprint, "getdescriptors"], None)
        .await;
    core_error(&v, -7);
    let v = hwi
        .run(
            &[
                "--stdin",
                "--fingerprint",
                &k.fingerprint,
                "--chain",
                "main",
            ],
            Some("signtx cHNidP8BAA=="),
        )
        .await;
    core_error(&v, -7);

    let unknown = if k.fingerprint == "deadbeef" {
        "feedface"
    } else {
        "deadbeef"
    };
    for command in [
        &["getdescriptors", "--account", "0"][..],
        &["displayaddress", "--desc", "wpkh(02aa)"],
    ] {
        let v = hwi.on(unknown, command).await;
        let msg = core_error(&v, -3);
        assert!(msg.contains(unknown), "{msg}");
    }
    let v = hwi
        .run(
            &["--stdin", "--fingerprint", unknown, "--chain", "regtest"],
            Some("signtx cHNidP8BAA=="),
        )
        .await;
    core_error(&v, -3);
}

/// A BDK wallet made of the descriptors `getdescriptors` returns (what Core's
/// `createwallet ... external_signer=true` imports), funded with one confirmed
/// output per value; the funding transactions are imported on the cluster through
/// `POST /api/v1/utxos`.
async fn funded_wallet(
    c: &Cluster,
    hwi: &Hwi,
    k: &Key,
    values: &[u64],
) -> (Wallet, Vec<Transaction>) {
    let v = hwi
        .on(&k.fingerprint, &["getdescriptors", "--account", "0"])
        .await;
    let (w, funds) = cluster_tests::wallet::bdk_wallet_funded(
        v["receive"][0].as_str().unwrap(),
        v["internal"][0].as_str().unwrap(),
        values,
    );
    for tx in &funds {
        import(c, tx).await;
    }
    (w, funds)
}

/// What Core checks before it runs the signer: some input carries the signer's
/// fingerprint in its BIP-32 or Taproot key origins.
fn core_fingerprint_check(psbt: &Psbt, fp: &str) {
    let carries = psbt.inputs.iter().any(|i| {
        i.bip32_derivation
            .values()
            .any(|(f, _)| f.to_string() == fp)
            || i.tap_key_origins
                .values()
                .any(|(_, (f, _))| f.to_string() == fp)
    });
    assert!(carries, "Core would refuse to call the signer: {psbt:?}");
}

/// Core's `signtx`: `--stdin --fingerprint FP --chain CHAIN`, standard input
/// `signtx PSBT` (older Core: `signtx "PSBT"` and a newline).
async fn signtx(hwi: &Hwi, k: &Key, psbt: &Psbt, quoted: bool) -> Value {
    core_fingerprint_check(psbt, &k.fingerprint);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let stdin = if quoted {
        format!("signtx \"{b64}\"\n")
    } else {
        format!("signtx {b64}")
    };
    hwi.run(
        &[
            "--stdin",
            "--fingerprint",
            &k.fingerprint,
            "--chain",
            "regtest",
        ],
        Some(&stdin),
    )
    .await
}

/// `signtx` of a BDK-built PSBT: the cluster votes and signs, the answer is the
/// same transaction with the signatures, BDK finalizes it and every input passes
/// libbitcoinconsensus.
async fn signtx_returns_a_psbt_that_finalizes_and_passes_consensus(
    c: &Cluster,
    hwi: &Hwi,
    k: &Key,
    quoted: bool,
) {
    let (mut w, funds) = funded_wallet(c, hwi, k, &[40_000, 35_000]).await;
    let mut b = w.build_tx();
    b.add_recipient(other_address().script_pubkey(), Amount::from_sat(60_000))
        .fee_rate(bitcoin::FeeRate::from_sat_per_vb_u32(2));
    let psbt = b.finish().unwrap();
    assert_eq!(psbt.inputs.len(), 2);
    let v = signtx(hwi, k, &psbt, quoted).await;
    assert!(v.get("error").is_none(), "{} signtx: {v}", k.key_type);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["psbt"].as_str().unwrap())
        .unwrap();
    let mut signed = Psbt::deserialize(&raw).unwrap();
    assert_eq!(
        signed.unsigned_tx, psbt.unsigned_tx,
        "Core refuses a modified transaction"
    );
    // Core's own fields come back (it replaces its PSBT with the answer).
    for (a, b) in signed.inputs.iter().zip(&psbt.inputs) {
        assert_eq!(a.bip32_derivation, b.bip32_derivation);
        assert_eq!(a.tap_key_origins, b.tap_key_origins);
    }
    assert!(
        w.finalize_psbt(&mut signed, SignOptions::default())
            .unwrap(),
        "the cluster's signatures finalize the PSBT"
    );
    let tx = signed.extract_tx().unwrap();
    let refs: Vec<&Transaction> = funds.iter().collect();
    verify_consensus(&tx, &refs);
}

/// A payment over the policy's per-transaction limit: every node votes reject and
/// Core gets `{"error": ..., "code": -14}` (ACTION_CANCELED), naming the cluster
/// transaction, and no PSBT.
async fn a_payment_the_policy_refuses_reaches_core_as_an_error(c: &Cluster, hwi: &Hwi, k: &Key) {
    let (mut w, _) = funded_wallet(c, hwi, k, &[2_000_000]).await;
    let mut b = w.build_tx();
    b.add_recipient(
        other_address().script_pubkey(),
        Amount::from_sat(LIMIT_SATS + 200_000),
    )
    .fee_rate(bitcoin::FeeRate::from_sat_per_vb_u32(2));
    let psbt = b.finish().unwrap();
    let v = signtx(hwi, k, &psbt, false).await;
    let msg = core_error(&v, -14);
    assert!(msg.contains("rejected"), "{msg}");
    let id = msg
        .split_whitespace()
        .find(|w| uuid::Uuid::parse_str(w.trim_end_matches(':')).is_ok())
        .map(|w| w.trim_end_matches(':').to_owned())
        .unwrap_or_else(|| panic!("the message names the transaction: {msg}"));
    let t = c.get_json(0, &format!("/api/v1/transactions/{id}")).await;
    assert_eq!(t["state"], "rejected", "{t}");
    assert!(t["signed_psbt"].is_null(), "{t}");
}
