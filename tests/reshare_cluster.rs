//! Key lifecycle on a real cluster (5 nodes, t = 3): refresh and reshare of FROST
//! (Taproot) and CGGMP24 (ECDSA) keys through `POST /api/v1/keys/{id}/reshare`,
//! approved by a quorum of signed node votes; the descriptors and addresses stay, a
//! payment signs afterwards and passes libbitcoinconsensus; removed nodes delete their
//! share; without a quorum nothing starts; a node killed midway leaves the key on its
//! old shares and a retry completes.
#![allow(clippy::unwrap_used)] // test: a failed step must fail loudly

use std::time::Duration;

use cluster_tests::wallet::{
    aux_info, ceremony_completed, ended, ended_tx, fund, signed_everywhere, submit_payment,
    verify_consensus,
};
use cluster_tests::Cluster;
use serde_json::{json, Value};

const N: usize = 5;
const T: u16 = 3;

fn node_id(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// Descriptors and first address of `key_id` as node `i` reports them.
async fn key_view(c: &Cluster, i: usize, key_id: &str) -> (Value, Value, Value) {
    let e = c.key_entry(i, key_id).await;
    (
        e["descriptor"].clone(),
        e["first_address"].clone(),
        e["public_key"].clone(),
    )
}

/// Proposes a reshare on node `leader`; returns (status, answer).
async fn propose(c: &Cluster, leader: usize, key_id: &str, body: &Value) -> (u16, Value) {
    let (status, v) = c
        .post_json(leader, &format!("/api/v1/keys/{key_id}/reshare"), body)
        .await;
    (status, v)
}

/// Proposes on node 0, expects 202, waits until the session completed on `nodes`.
async fn reshare_ok(c: &Cluster, key_id: &str, body: &Value, nodes: &[usize]) -> String {
    let (status, v) = propose(c, 0, key_id, body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    for &i in nodes {
        let s = ended(
            c,
            i,
            &format!("/api/v1/dkg/ceremonies/{id}"),
            &["completed", "failed"],
            180,
        )
        .await;
        assert_eq!(s["state"], "completed", "node {i}: {s}");
    }
    id
}

/// `(usable share rows, all share rows)` of `key_id` on node `i`.
async fn share_rows(c: &Cluster, i: usize, key_id: &str) -> (i64, i64) {
    let db = c.db(i).await;
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE usable), count(*) FROM key_shares WHERE key_id = $1",
    )
    .bind(key_id)
    .fetch_one(&db)
    .await
    .unwrap()
}

async fn audit_count(c: &Cluster, i: usize, action: &str, key_id: &str) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit_log WHERE action = $1 AND subject = $2")
            .bind(action)
            .bind(key_id)
            .fetch_one(&db)
            .await
            .unwrap();
    n
}

/// Pays from `key_id` (funded fresh), checks every node in `nodes` signed the same
/// transaction and libbitcoinconsensus accepts it; returns the signer sets used.
async fn pay_and_verify(c: &Cluster, key_id: &str, nodes: &[usize]) -> Vec<Vec<String>> {
    let funding = fund(c, key_id, &[70_000]).await;
    let id = submit_payment(c, key_id, 20_000, 2).await;
    let v = ended_tx(c, nodes[0], &id, 300).await;
    if v["state"] != "signed" {
        dump_warnings(c);
        panic!("payment {id} after the reshare did not sign: {v}");
    }
    let tx = signed_everywhere(c, nodes, &id, 240).await;
    verify_consensus(&tx, &[&funding]);
    let db = c.db(0).await;
    let sets: Vec<(Vec<String>,)> =
        sqlx::query_as("SELECT signers FROM signing_sessions WHERE transaction_id = $1::uuid")
            .bind(&id)
            .fetch_all(&db)
            .await
            .unwrap();
    sets.into_iter().map(|s| s.0).collect()
}

/// Prints every node's warnings and errors (on failure).
fn dump_warnings(c: &Cluster) {
    for i in 0..N {
        let log = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        {
            eprintln!("node {i}: {}", &line[..line.len().min(600)]);
        }
    }
}

async fn setup(protocols: &[&str]) -> (Cluster, Vec<String>) {
    let c = Cluster::start(N as u16, T);
    c.wait_ready(N).await;
    let mut keys = Vec::new();
    for p in protocols {
        keys.push(c.dkg(N, p, T).await);
    }
    if protocols.contains(&"cggmp24") {
        aux_info(&c, N).await;
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    c.write_policy(N, &refs, 1_000_000);
    (c, keys)
}

/// Refresh of `key`: same descriptors/addresses/xpub, a fresh share row on every node
/// (the old one deleted and audited), and a payment signs afterwards.
async fn refresh_keeps_addresses_and_signs(c: &Cluster, key: &str) {
    let before: Vec<_> = futures::future::join_all((0..N).map(|i| key_view(c, i, key))).await;
    let id = reshare_ok(c, key, &json!({}), &(0..N).collect::<Vec<_>>()).await;
    for (i, before) in before.iter().enumerate() {
        assert_eq!(
            &key_view(c, i, key).await,
            before,
            "node {i}: key view changed"
        );
        assert_eq!(
            share_rows(c, i, key).await,
            (1, 1),
            "node {i}: one usable share"
        );
        let db = c.db(i).await;
        let (ceremony,): (uuid::Uuid,) =
            sqlx::query_as("SELECT ceremony_id FROM key_shares WHERE key_id = $1")
                .bind(key)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(
            ceremony.to_string(),
            id,
            "node {i}: the share is the refreshed one"
        );
        assert!(
            audit_count(c, i, "key.share.deleted", key).await >= 1,
            "node {i}"
        );
        assert!(
            audit_count(c, i, "key.reshare.approved", key).await >= 1,
            "node {i}"
        );
        assert!(
            audit_count(c, i, "key.reshare.committed", key).await >= 1,
            "node {i}"
        );
    }
    let sets = pay_and_verify(c, key, &[0, 1, 2]).await;
    assert!(!sets.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taproot_key_lifecycle_refresh_quorum_remove_threshold_and_kill() {
    let (c, keys) = setup(&["frost"]).await;
    let key = keys[0].clone();
    let all: Vec<usize> = (0..N).collect();

    // (a) refresh: same addresses, new shares, a payment signs and passes consensus.
    let t0 = std::time::Instant::now();
    refresh_keeps_addresses_and_signs(&c, &key).await;
    eprintln!("step a (taproot refresh + payment): {:?}", t0.elapsed());

    // The same through the CLI: `signer keys refresh KEY_ID --wait`.
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(cluster_tests::signer_bin())
        .args(["keys", "refresh", &key, "--wait", "--cluster"])
        .arg(c.dir.join("cluster.json"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the new shares are active"), "{text}");
    for i in 0..N {
        c.eventually(
            &format!("one usable share on node {i}"),
            Duration::from_secs(30),
            || async { (share_rows(&c, i, &key).await == (1, 1)).then_some(()) },
        )
        .await;
    }
    eprintln!("step a' (cli refresh --wait): {:?}", t0.elapsed());

    // (e) no quorum: three nodes refuse lifecycle operations by configuration; the
    // proposal gets 2 approvals of the 3 needed and nothing starts.
    let t0 = std::time::Instant::now();
    for i in 2..N {
        c.kill_node(i);
        c.restart_node_with_env(i, &[("SIGNER__LIFECYCLE__APPROVE_RESHARE", "false")]);
    }
    c.wait_ready(N).await;
    let rows_before: Vec<_> =
        futures::future::join_all((0..N).map(|i| share_rows(&c, i, &key))).await;
    let (status, v) = propose(&c, 0, &key, &json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "not_approved", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("lifecycle_refused_by_policy"),
        "{v}"
    );
    assert!(audit_count(&c, 0, "key.reshare.rejected", &key).await >= 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, rows) in rows_before.iter().enumerate() {
        assert_eq!(&share_rows(&c, i, &key).await, rows, "node {i}");
        let db = c.db(i).await;
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM key_reshares WHERE key_id = $1 AND state <> 'committed'",
        )
        .bind(&key)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(pending, 0, "node {i}: nothing was started");
    }
    for i in 2..N {
        c.kill_node(i);
        c.restart_node(i);
    }
    c.wait_ready(N).await;
    eprintln!("step e (no quorum): {:?}", t0.elapsed());

    // (c) remove node-2: reshare to 4 nodes t = 3; node-2 deals and deletes its share.
    let t0 = std::time::Instant::now();
    let before = key_view(&c, 0, &key).await;
    let four: Vec<String> = [0, 2, 3, 4].iter().map(|&i| node_id(i)).collect();
    let id = reshare_ok(
        &c,
        &key,
        &json!({ "participants": four, "threshold": 3 }),
        &all,
    )
    .await;
    assert_eq!(
        share_rows(&c, 1, &key).await,
        (0, 0),
        "node-2's share is gone"
    );
    assert!(audit_count(&c, 1, "key.share.deleted", &key).await >= 2);
    for i in [0, 2, 3, 4] {
        assert_eq!(key_view(&c, i, &key).await, before, "node {i}");
        assert_eq!(share_rows(&c, i, &key).await, (1, 1), "node {i}");
    }
    let keys_on_2 = c.get_ok(1, "/api/v1/keys").await.unwrap();
    assert!(
        !keys_on_2.to_string().contains(&key),
        "node-2 no longer lists the key: {keys_on_2}"
    );
    let sets = pay_and_verify(&c, &key, &[0, 2, 3]).await;
    for s in &sets {
        assert!(!s.contains(&node_id(1)), "signers from the new set: {s:?}");
        assert_eq!(s.len(), 3);
    }
    eprintln!("step c (remove node-2, session {id}): {:?}", t0.elapsed());

    // (d) threshold change: back to the 5 nodes? node-2 holds nothing (adding a node
    // without the key is `cluster add-node` work); change t on the 4: 4 nodes t = 4.
    let t0 = std::time::Instant::now();
    let _ = reshare_ok(
        &c,
        &key,
        &json!({ "participants": four, "threshold": 4 }),
        &[0, 2, 3, 4],
    )
    .await;
    let entry = c.key_entry(0, &key).await;
    assert_eq!(entry["t"], 4, "{entry}");
    assert_eq!(key_view(&c, 0, &key).await, before);
    let sets = pay_and_verify(&c, &key, &[0, 2, 3, 4]).await;
    for s in &sets {
        assert_eq!(s.len(), 4, "four signers now: {s:?}");
    }
    eprintln!("step d (threshold 3 -> 4): {:?}", t0.elapsed());

    // (f) a node SIGKILLed midway (after its pending share and its confirmation are
    // stored, before it sends the confirmation): nobody switches, every node keeps
    // its old share usable. Every node stored its confirmation, so none can tell
    // whether another switched: the reshare is `uncertain` everywhere and the
    // pending shares are kept (never deleted on a node's own decision). A retry
    // completes, deletes them and marks the uncertain reshare failed.
    let t0 = std::time::Instant::now();
    let old_ceremony = |i: usize| {
        let c = &c;
        let key = key.clone();
        async move {
            let db = c.db(i).await;
            let rows: Vec<(uuid::Uuid, bool)> = sqlx::query_as(
                "SELECT ceremony_id, usable FROM key_shares WHERE key_id = $1 ORDER BY id",
            )
            .bind(&key)
            .fetch_all(&db)
            .await
            .unwrap();
            rows
        }
    };
    let before_rows: Vec<_> = futures::future::join_all([0, 2, 3, 4].map(&old_ceremony)).await;
    c.kill_node(4);
    c.restart_node_with_env(4, &[("SIGNER_FAULT_RESHARE_PAUSE_SECS", "600")]);
    c.wait_ready(N).await;
    let (status, v) = propose(&c, 0, &key, &json!({})).await;
    assert_eq!(status, 202, "{v}");
    let sid = v["session_id"].as_str().unwrap().to_owned();
    // Wait until node-5 stored its pending share, then kill it.
    c.eventually("node-5 pending share", Duration::from_secs(120), || async {
        let db = c.db(4).await;
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM key_shares WHERE ceremony_id = $1::uuid AND NOT usable",
        )
        .bind(&sid)
        .fetch_one(&db)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    c.kill_node(4);
    for i in [0, 2, 3] {
        let s = ended(
            &c,
            i,
            &format!("/api/v1/dkg/ceremonies/{sid}"),
            &["completed", "failed"],
            180,
        )
        .await;
        assert_eq!(
            s["state"], "failed",
            "node {i} must not switch without node-5: {s}"
        );
    }
    c.restart_node(4);
    c.wait_ready(N).await;
    let after_rows: Vec<_> = futures::future::join_all([0, 2, 3, 4].map(&old_ceremony)).await;
    let usable = |rows: &Vec<Vec<(uuid::Uuid, bool)>>| -> Vec<Vec<(uuid::Uuid, bool)>> {
        rows.iter()
            .map(|r| r.iter().copied().filter(|(_, u)| *u).collect())
            .collect()
    };
    assert_eq!(
        usable(&after_rows),
        usable(&before_rows),
        "every node kept exactly its old share usable"
    );
    let sid_uuid = uuid::Uuid::parse_str(&sid).unwrap();
    let reshare_state = |i: usize| {
        let c = &c;
        async move {
            let db = c.db(i).await;
            let (state,): (String,) =
                sqlx::query_as("SELECT state FROM key_reshares WHERE id = $1")
                    .bind(sid_uuid)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            state
        }
    };
    for (k, i) in [0, 2, 3, 4].into_iter().enumerate() {
        assert!(
            after_rows[k].contains(&(sid_uuid, false)),
            "node {i} keeps its pending share of the uncertain reshare: {:?}",
            after_rows[k]
        );
        assert_eq!(reshare_state(i).await, "uncertain", "node {i}");
    }
    let _ = reshare_ok(&c, &key, &json!({}), &[0, 2, 3, 4]).await;
    for i in [0, 2, 3, 4] {
        assert_eq!(share_rows(&c, i, &key).await, (1, 1), "node {i}");
        assert_eq!(reshare_state(i).await, "failed", "node {i}: superseded");
    }
    let sets = pay_and_verify(&c, &key, &[0, 2, 3, 4]).await;
    assert!(!sets.is_empty());
    eprintln!("step f (kill midway, retry): {:?}", t0.elapsed());
    let _ = ceremony_completed;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long suite (make test-long): two aux-info ceremonies, several minutes on 2 cores"]
async fn ecdsa_key_refresh_and_removal_keep_addresses_and_sign() {
    let (c, keys) = setup(&["cggmp24"]).await;
    let t0 = std::time::Instant::now();
    refresh_keeps_addresses_and_signs(&c, &keys[0]).await;
    eprintln!("step b (ecdsa refresh + payment): {:?}", t0.elapsed());

    // Remove node-2 from the ECDSA key: the coordinator then runs aux info for the new
    // node set; a payment signs with signers of the new set once it is there.
    let t0 = std::time::Instant::now();
    let key = &keys[0];
    let before = key_view(&c, 0, key).await;
    let four: Vec<String> = [0, 2, 3, 4].iter().map(|&i| node_id(i)).collect();
    let _ = reshare_ok(
        &c,
        key,
        &json!({ "participants": four, "threshold": 3 }),
        &(0..N).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        share_rows(&c, 1, key).await,
        (0, 0),
        "node-2's share is gone"
    );
    for i in [0, 2, 3, 4] {
        assert_eq!(key_view(&c, i, key).await, before, "node {i}");
        // Aux info for the new node set completes on every new holder.
        c.eventually(
            &format!("aux info for the new set on node {i}"),
            Duration::from_secs(600),
            || async {
                let v = c.get_ok(i, "/api/v1/aux-info/status").await?;
                v["ceremonies"]
                    .as_array()?
                    .iter()
                    .any(|x| x["state"] == "completed" && x["participants"] == json!(four))
                    .then_some(())
            },
        )
        .await;
    }
    let sets = pay_and_verify(&c, key, &[0, 2, 3]).await;
    for s in &sets {
        assert!(!s.contains(&node_id(1)), "signers from the new set: {s:?}");
    }
    eprintln!(
        "step c (ecdsa remove node-2 + aux info + payment): {:?}",
        t0.elapsed()
    );
}
