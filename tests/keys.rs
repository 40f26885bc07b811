//! Watch-only descriptors and addresses of DKG keys on a real 3-node, 2-of-3 cluster
//! (PostgreSQL, etcd, SoftHSM, node processes over QUIC), checked against the
//! `miniscript` crate; `GET /api/v1/keys/{id}/addresses` refusals; and the `signer
//! dkg` / `signer keys` commands against the same cluster.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use bitcoin::Network;
use cluster_tests::{signer_bin, Cluster};
use miniscript::{Descriptor, DescriptorPublicKey};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

const NODES: usize = 3;

/// One 2-of-3 cluster for every test of this binary.
fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start(3, 2))
}

/// The two keys made once on the shared cluster.
#[derive(Debug)]
struct Keys {
    ecdsa: String,
    taproot: String,
}

fn signer(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(signer_bin())
        .args(args)
        .arg("--cluster")
        .arg(c.dir.join("cluster.json"))
        .env_remove("SIGNER_API_URL")
        .env_remove("SIGNER_API_TOKEN")
        .env_remove("SIGNER_API_TOKEN_FILE")
        .env_remove("SIGNER_CA_CERT")
        .output()
        .unwrap()
}

/// Waits until ceremony `id` is completed on every node.
async fn completed_everywhere(c: &Cluster, id: &str) {
    for i in 0..NODES {
        let v = c
            .eventually(
                &format!("ceremony {id} to end on node {i}"),
                Duration::from_secs(45),
                || async {
                    c.get_ok(i, &format!("/api/v1/dkg/ceremonies/{id}"))
                        .await
                        .filter(|v| v["state"] == "completed" || v["state"] == "failed")
                },
            )
            .await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
    }
}

/// ecdsa through the API, taproot through `signer dkg start --wait` (both 2-of-3).
async fn keys() -> &'static Keys {
    static K: OnceCell<Keys> = OnceCell::const_new();
    K.get_or_init(|| async {
        let c = cluster();
        c.wait_ready(NODES).await;
        let r = c
            .client()
            .post(c.url(1, "/api/v1/dkg/start"))
            .bearer_auth(c.admin())
            .json(&json!({"protocol": "cggmp24", "threshold": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let v: Value = r.json().await.unwrap();
        let ecdsa = v["ceremony_id"].as_str().unwrap().to_owned();
        completed_everywhere(c, &ecdsa).await;

        let out = signer(
            c,
            &[
                "dkg",
                "start",
                "--protocol",
                "taproot",
                "--threshold",
                "2",
                "--wait",
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"], "completed", "{v}");
        assert_eq!(v["protocol"], "frost", "{v}");
        let taproot = v["id"].as_str().unwrap().to_owned();
        completed_everywhere(c, &taproot).await;
        Keys { ecdsa, taproot }
    })
    .await
}

fn parse(desc: &str) -> Descriptor<DescriptorPublicKey> {
    let d = Descriptor::<DescriptorPublicKey>::from_str(desc)
        .unwrap_or_else(|e| panic!("{desc} does not parse: {e}"));
    // miniscript prints descriptors with their checksum: same text back means the
    // node's checksum is the one miniscript computes.
    assert_eq!(d.to_string(), desc);
    d
}

/// A descriptor with one checksum character changed must be refused, so the parse
/// above really checked the checksum.
fn assert_corrupted_checksum_is_refused(desc: &str) {
    let (body, sum) = desc.split_once('#').unwrap();
    let mut sum: Vec<char> = sum.chars().collect();
    sum[0] = if sum[0] == 'q' { 'p' } else { 'q' };
    let bad = format!("{body}#{}", sum.iter().collect::<String>());
    assert!(
        Descriptor::<DescriptorPublicKey>::from_str(&bad).is_err(),
        "{bad} accepted with a wrong checksum"
    );
}

/// Addresses miniscript derives from `d` (single path) at `indexes`.
fn derive(d: &Descriptor<DescriptorPublicKey>, indexes: &[u32]) -> Vec<String> {
    indexes
        .iter()
        .map(|i| {
            d.at_derivation_index(*i)
                .unwrap()
                .address(Network::Regtest)
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn addresses(c: &Cluster, i: usize, key_id: &str, query: &str) -> (StatusCode, Value) {
    let r = c
        .client()
        .get(c.url(i, &format!("/api/v1/keys/{key_id}/addresses?{query}")))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

fn addrs_of(v: &Value) -> Vec<String> {
    cluster_tests::strings_of(v, "addresses", "address")
}

#[tokio::test]
async fn descriptors_parse_with_valid_checksums_and_node_addresses_equal_miniscript_derivation() {
    let c = cluster();
    let k = keys().await;
    for (key_id, key_type, wrapper) in
        [(&k.ecdsa, "ecdsa", "wpkh("), (&k.taproot, "taproot", "tr(")]
    {
        let e = c.key_entry(0, key_id).await;
        assert_eq!(e["key_type"], key_type, "{e}");
        assert_eq!(e["network"], "regtest", "{e}");
        let multi = e["descriptor"].as_str().unwrap();
        let receive = e["receive_descriptor"].as_str().unwrap();
        let change = e["change_descriptor"].as_str().unwrap();
        assert!(multi.starts_with(wrapper), "{multi}");
        assert!(multi.contains("/<0;1>/*)#"), "{multi}");
        assert!(receive.contains("/0/*)#"), "{receive}");
        assert!(change.contains("/1/*)#"), "{change}");
        // key origin: [fingerprint of the xpub]xpub
        let d_multi = parse(multi);
        let d_receive = parse(receive);
        let d_change = parse(change);
        for d in [multi, receive, change] {
            assert_corrupted_checksum_is_refused(d);
        }
        assert!(d_multi.is_multipath());
        let singles = d_multi.clone().into_single_descriptors().unwrap();
        assert_eq!(singles.len(), 2);
        assert_eq!(singles[0].to_string(), d_receive.to_string());
        assert_eq!(singles[1].to_string(), d_change.to_string());

        // The node's addresses at several indexes equal miniscript's.
        let (status, v) = addresses(c, 0, key_id, "chain=receive&from=0&count=5").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["key_id"], key_id.as_str());
        assert_eq!(v["key_type"], key_type);
        assert_eq!(v["chain"], "receive");
        assert_eq!(addrs_of(&v), derive(&d_receive, &[0, 1, 2, 3, 4]));
        assert_eq!(v["addresses"][3]["path"], "m/0/3");
        assert_eq!(v["addresses"][3]["index"], 3);
        assert_eq!(e["first_address"], v["addresses"][0]["address"]);
        // the public key of each entry is the one miniscript derives
        let pk0 = d_receive
            .at_derivation_index(0)
            .unwrap()
            .derived_descriptor(&bitcoin::secp256k1::Secp256k1::verification_only())
            .unwrap();
        let pk_hex = v["addresses"][0]["public_key"].as_str().unwrap();
        let pk_text = pk0.to_string();
        assert!(
            pk_text.contains(if key_type == "ecdsa" {
                pk_hex
            } else {
                &pk_hex[2..]
            }),
            "{pk_text} does not contain {pk_hex}"
        );

        let (status, v) = addresses(c, 0, key_id, "chain=change&from=1000&count=3").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["chain"], "change");
        assert_eq!(addrs_of(&v), derive(&d_change, &[1000, 1001, 1002]));
        assert_eq!(v["addresses"][2]["path"], "m/1/1002");
        assert_ne!(
            derive(&d_change, &[1000]),
            derive(&d_receive, &[1000]),
            "chains must differ"
        );

        // The last non-hardened index works.
        let (status, v) = addresses(c, 0, key_id, "chain=receive&from=2147483647&count=1").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(addrs_of(&v), derive(&d_receive, &[2_147_483_647]));

        // Defaults: receive, from 0, 20 addresses.
        let (status, v) = addresses(c, 0, key_id, "").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(addrs_of(&v).len(), 20);
        assert_eq!(addrs_of(&v)[19], derive(&d_receive, &[19])[0]);

        // Every node returns the same descriptors and addresses.
        for i in 1..NODES {
            let other = c.key_entry(i, key_id).await;
            for f in [
                "descriptor",
                "receive_descriptor",
                "change_descriptor",
                "first_address",
            ] {
                assert_eq!(other[f], e[f], "node {i} {f}");
            }
            let (status, v) = addresses(c, i, key_id, "chain=change&from=7&count=2").await;
            assert_eq!(status, StatusCode::OK, "{v}");
            assert_eq!(addrs_of(&v), derive(&d_change, &[7, 8]), "node {i}");
        }
    }
}

#[tokio::test]
async fn bad_address_queries_are_refused_with_stable_codes_and_unknown_keys_are_404() {
    let c = cluster();
    let k = keys().await;
    for (query, code) in [
        ("chain=external", "invalid_chain"),
        ("from=-1", "invalid_from"),
        ("from=2147483648", "invalid_from"),
        ("from=abc", "invalid_from"),
        ("count=0", "invalid_count"),
        ("count=1001", "invalid_count"),
        ("count=", "invalid_count"),
        ("from=2147483647&count=2", "invalid_range"),
        ("index=3", "invalid_query"),
        ("count=1&count=2", "invalid_query"),
    ] {
        let (status, v) = addresses(c, 0, &k.ecdsa, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["code"], code, "{query}: {v}");
    }
    for key in ["00000000-0000-0000-0000-000000000000", "not-a-key"] {
        let (status, v) = addresses(c, 0, key, "count=1").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{key}: {v}");
        assert_eq!(v["code"], "key_not_found", "{key}: {v}");
    }

    // Same roles as GET /api/v1/keys: an auditor may read, no token may not.
    let auditor = c.create_token(0, "keys-auditor", "auditor").await;
    let path = format!("/api/v1/keys/{}/addresses?count=2", k.taproot);
    let r = c.get(0, &path, &auditor).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.client().get(c.url(0, &path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cli_lists_keys_and_ceremonies_and_fails_precisely_on_bad_arguments() {
    let c = cluster();
    let k = keys().await;

    let out = signer(c, &["keys", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&k.ecdsa.as_str()) && ids.contains(&k.taproot.as_str()),
        "{v}"
    );

    let out = signer(c, &["keys", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let entry = c.key_entry(0, &k.taproot).await;
    assert!(
        text.contains(entry["descriptor"].as_str().unwrap()),
        "{text}"
    );
    assert!(
        text.contains(entry["first_address"].as_str().unwrap()),
        "{text}"
    );

    let out = signer(
        c,
        &[
            "keys",
            "addresses",
            &k.ecdsa,
            "--chain",
            "change",
            "--from",
            "4",
            "--count",
            "2",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, api) = addresses(c, 0, &k.ecdsa, "chain=change&from=4&count=2").await;
    assert_eq!(v["addresses"], api["addresses"]);

    let out = signer(c, &["dkg", "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&k.ecdsa) && text.contains(&k.taproot),
        "{text}"
    );
    let out = signer(c, &["dkg", "status", &k.ecdsa, "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["protocol"], "cggmp24");

    // Refusals: the node's code and message, exit status 1.
    for (args, expect) in [
        (
            vec!["keys", "addresses", k.ecdsa.as_str(), "--count", "5000"],
            "400 invalid_count",
        ),
        (
            vec!["keys", "addresses", "00000000-0000-0000-0000-000000000000"],
            "404 key_not_found",
        ),
        (
            vec!["dkg", "start", "--protocol", "frost", "--threshold", "9"],
            "400 invalid_threshold",
        ),
        (
            vec!["dkg", "status", "nope"],
            "ceremony id \"nope\" is not a uuid",
        ),
    ] {
        let out = signer(c, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // Argument errors are caught before any request (clap's usage error, status 2).
    let out = signer(
        c,
        &["dkg", "start", "--protocol", "rsa", "--threshold", "2"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'rsa' for '--protocol"), "{err}");
    let out = signer(c, &["keys", "addresses", &k.ecdsa, "--chain", "internal"]);
    assert_eq!(out.status.code(), Some(2));
    // No cluster file and no --api-url: says what is missing.
    let out = Command::new(signer_bin())
        .args(["keys", "list", "--cluster", "/nonexistent/cluster.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/cluster.json") && err.contains("--api-url"),
        "{err}"
    );
}

fn tx_list_ids(v: &Value) -> Vec<String> {
    cluster_tests::strings_of(v, "transactions", "id")
}

/// `signer utxos import`, `signer tx submit|status|approve` and the paged
/// `GET /api/v1/transactions` on the same cluster, with the taproot key.
#[tokio::test]
async fn tx_cli_pays_and_lists_pages_and_transaction_listing_refuses_bad_queries() {
    let c = cluster();
    let k = keys().await;
    c.write_policy(NODES, &[&k.taproot], 120_000);
    let entry = c.key_entry(0, &k.taproot).await;
    let addr = bitcoin::Address::from_str(entry["first_address"].as_str().unwrap())
        .unwrap()
        .require_network(Network::Regtest)
        .unwrap();
    let fund = cluster_tests::funding(&addr, &[300_000, 300_000, 300_000]);
    let dir = tempfile::tempdir().unwrap();
    let fund_file = dir.path().join("fund.hex");
    std::fs::write(
        &fund_file,
        format!("{}\n", bitcoin::consensus::encode::serialize_hex(&fund)),
    )
    .unwrap();

    // Import on every node (each keeps its own UTXO table): by file, then by hex.
    for i in 0..NODES {
        let node = c.node(i).id.clone();
        let out = signer(
            c,
            &[
                "utxos",
                "import",
                "--file",
                fund_file.to_str().unwrap(),
                "--node",
                &node,
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["imported"].as_array().unwrap().len(), 3, "{v}");
    }
    let hex = bitcoin::consensus::encode::serialize_hex(&fund);
    let out = signer(
        c,
        &["utxos", "import", "--tx-hex", &hex, "--node", &c.node(0).id],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 output(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let node0 = c.node(0).id.clone();

    // A payment within the policy: signed, the final transaction shown.
    let to = cluster_tests::other_address().to_string();
    let out = signer(
        c,
        &[
            "tx",
            "submit",
            "--key",
            &k.taproot,
            "--to",
            &to,
            "--amount",
            "50000",
            "--fee-rate",
            "2",
            "--wait",
            "--json",
            "--node",
            &node0,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(signed["state"], "signed", "{signed}");
    assert_eq!(signed["recipient"], to.as_str());
    let tx: bitcoin::Transaction =
        bitcoin::consensus::encode::deserialize_hex(signed["signed_tx"].as_str().unwrap()).unwrap();
    assert_eq!(
        tx.compute_txid().to_string(),
        signed["txid"].as_str().unwrap()
    );
    let signed_id = signed["id"].as_str().unwrap().to_owned();

    // Over the policy limit: rejected, exit status 3 with the state and reason.
    let out = signer(
        c,
        &[
            "tx", "submit", "--key", &k.taproot, "--to", &to, "--amount", "150000", "--wait",
            "--node", &node0,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended rejected"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state        rejected"), "{text}");

    // Refusals of the node: code and message, exit status 1, nothing stored.
    let before = c.get_ok(0, "/api/v1/transactions?limit=500").await.unwrap();
    for (args, expect) in [
        (
            vec!["--to", to.as_str(), "--amount", "0"],
            "400 amount_out_of_range",
        ),
        (
            vec![
                "--to",
                "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
                "--amount",
                "1000",
            ],
            "400 address_wrong_network",
        ),
    ] {
        let mut full = vec![
            "tx",
            "submit",
            "--key",
            k.taproot.as_str(),
            "--node",
            &node0,
        ];
        full.extend(args);
        let out = signer(c, &full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{full:?}: {err}");
    }
    // A PSBT whose inputs carry no key origin of the key is refused before sending.
    let psbt = bitcoin::psbt::Psbt::from_unsigned_tx(bitcoin::Transaction {
        input: vec![bitcoin::TxIn::default()],
        output: vec![],
        ..fund.clone()
    })
    .unwrap();
    let psbt_file = dir.path().join("foreign.psbt");
    std::fs::write(&psbt_file, psbt.serialize()).unwrap();
    let out = signer(
        c,
        &[
            "tx",
            "submit",
            "--key",
            &k.taproot,
            "--psbt",
            psbt_file.to_str().unwrap(),
            "--node",
            &node0,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not carry the key origin") && err.contains("nothing was submitted"),
        "{err}"
    );
    let after = c.get_ok(0, "/api/v1/transactions?limit=500").await.unwrap();
    assert_eq!(tx_list_ids(&after), tx_list_ids(&before), "nothing stored");

    // Paging: pages of one, followed by cursor, give the full list in order.
    let all = tx_list_ids(&after);
    assert!(all.len() >= 2, "{after}");
    assert!(after["next_cursor"].is_null(), "{after}");
    let times: Vec<&str> = after["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["created_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let mut paged = Vec::new();
    let mut path = "/api/v1/transactions?limit=1".to_owned();
    loop {
        let v = c.get_ok(0, &path).await.unwrap();
        let ids = tx_list_ids(&v);
        assert!(ids.len() <= 1, "{v}");
        paged.extend(ids);
        match v["next_cursor"].as_str() {
            Some(cur) => path = format!("/api/v1/transactions?limit=1&cursor={cur}"),
            None => break,
        }
        assert!(paged.len() <= all.len(), "paging does not end: {paged:?}");
    }
    assert_eq!(paged, all);
    let v = c
        .get_ok(0, "/api/v1/transactions?state=signed")
        .await
        .unwrap();
    let signed_ids = tx_list_ids(&v);
    assert!(signed_ids.contains(&signed_id), "{v}");
    assert!(v["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "signed"));
    for (query, code) in [
        ("state=done", "invalid_state"),
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("limit=x", "invalid_limit"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("cursor=AAAA", "invalid_cursor"),
        ("page=2", "invalid_query"),
        ("limit=1&limit=2", "invalid_query"),
    ] {
        let r = c
            .get(0, &format!("/api/v1/transactions?{query}"), c.admin())
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], code, "{query}: {v}");
    }

    // The CLI pages the same way.
    let out = signer(
        c,
        &["tx", "status", "--limit", "1", "--json", "--node", &node0],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p1: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tx_list_ids(&p1), all[..1].to_vec());
    let cur = p1["next_cursor"].as_str().unwrap().to_owned();
    let out = signer(
        c,
        &[
            "tx", "status", "--limit", "1", "--cursor", &cur, "--json", "--node", &node0,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tx_list_ids(&p2), all[1..2].to_vec());
    let out = signer(c, &["tx", "status", "--limit", "1", "--node", &node0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&all[0]) && text.contains(&format!("--cursor {cur}")),
        "{text}"
    );
    let out = signer(c, &["tx", "status", &signed_id, "--node", &node0]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state        signed") && text.contains(signed["txid"].as_str().unwrap()),
        "{text}"
    );
    let out = signer(c, &["tx", "status", "--state", "bogus", "--node", &node0]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("400 invalid_state"));
    let out = signer(
        c,
        &[
            "tx",
            "status",
            "00000000-0000-0000-0000-000000000000",
            "--node",
            &node0,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // An approval submitted with the admin token (the CLI's) is refused by the node
    // (4xx, printed with the node's code): an admin is not an approver.
    let key_file = c.dir.join("cli-approver.key");
    let out = Command::new(signer_bin())
        .args(["tx", "approver-keygen", "--out", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().len(),
        64,
        "public key hex"
    );
    let txid = "00".repeat(32);
    let out = signer(
        c,
        &[
            "tx",
            "approve",
            &signed_id,
            "--approver",
            "alice",
            "--key-file",
            key_file.to_str().unwrap(),
            "--txid",
            &txid,
            "--node",
            &node0,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{node0} answered 4")), "{err}");
}
