//! Culprits at signing (issue 15, finding 7) on a real 5-node 3-of-5 cluster with a
//! CGGMP24 and a FROST key. Node 2 (`node-3`) is a malicious signer
//! (`SIGNER_FAULT_BAD_PARTIAL`): a wrong partial signature on the presignature path,
//! garbage messages in interactive ECDSA and FROST signing. The leader (node 0)
//! prefers signer sets that contain it, so every first attempt includes it.
//!
//! For each of the three paths: the transaction is still signed (by a retry without
//! the culprit) and passes consensus, and the culprit is in `byzantine_violations`
//! on every honest node: the leader and the set's honest signers detected it
//! themselves; the others checked the leader's evidence of the invalid partial
//! themselves (`detected_by` = their own id) or record the detector's report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::wallet::{aux_info, fund, signed_everywhere, submit_payment, verify_consensus};
use cluster_tests::Cluster;
use serde_json::json;

const N: usize = 5;
const T: u16 = 3;
const BAD: usize = 2;
const HONEST: [usize; 4] = [0, 1, 3, 4];

/// (violation type, detected_by) rows of node `i` against `culprit`.
async fn violations(c: &Cluster, i: usize, culprit: &str) -> Vec<(String, String)> {
    let db = c.db(i).await;
    sqlx::query_as(
        "SELECT violation_type, detected_by FROM byzantine_violations WHERE node_id = $1 ORDER BY id",
    )
    .bind(culprit)
    .fetch_all(&db)
    .await
    .unwrap()
}

async fn available_presignatures(c: &Cluster, i: usize, key: &str, set: &[String]) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM presignatures WHERE key_id = $1 AND signer_set = $2 AND state = 'available'",
    )
    .bind(key)
    .bind(set)
    .fetch_one(&db)
    .await
    .unwrap();
    n
}

/// Waits until every honest node holds a violation of `kind` against `culprit`
/// (and returns each node's rows of that kind).
async fn recorded_everywhere(c: &Cluster, culprit: &str, kind: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in HONEST {
        let rows = c
            .eventually(
                &format!("node {i} records {kind} of {culprit}"),
                Duration::from_secs(60),
                || async {
                    let r: Vec<String> = violations(c, i, culprit)
                        .await
                        .into_iter()
                        .filter(|(k, _)| k == kind)
                        .map(|(_, d)| d)
                        .collect();
                    (!r.is_empty()).then_some(r)
                },
            )
            .await;
        out.push(rows);
    }
    out
}

/// Pays from `key` on the leader and waits until it is signed on every honest node;
/// the transaction passes consensus.
async fn pay_despite_the_culprit(c: &Cluster, key: &str, amount: u64) {
    let funding = fund(c, key, &[60_000]).await;
    let id = submit_payment(c, key, amount, 2).await;
    let tx = signed_everywhere(c, &HONEST, &id, 300).await;
    verify_consensus(&tx, &[&funding]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_signer_is_recorded_everywhere_and_honest_signers_sign_without_it() {
    // Presignatures only on request (the pool's target is 0).
    for (k, v) in [
        ("SIGNER__PRESIGN__ENABLED", "true"),
        ("SIGNER__PRESIGN__TARGET", "0"),
        ("SIGNER__PRESIGN__LOW_WATERMARK", "0"),
        ("SIGNER__PRESIGN__MAX_PATHS", "1"),
        ("SIGNER__PRESIGN__PARTIAL_TIMEOUT_SECS", "20"),
        ("SIGNER__PRESIGN__CHECK_INTERVAL_SECS", "1"),
    ] {
        std::env::set_var(k, v);
    }
    let c = Cluster::start(N as u16, T);
    c.wait_ready(N).await;
    let ecdsa = c.dkg(N, "cggmp24", T).await;
    let frost = c.dkg(N, "frost", T).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&ecdsa, &frost], 1_000_000);
    let bad = c.node(BAD).id.clone();
    c.kill_node(BAD);
    c.restart_node_with_env(BAD, &[("SIGNER_FAULT_BAD_PARTIAL", "1")]);
    c.wait_ready(N).await;

    // 1. Presignature path: one presignature for the leader's preferred set, which
    //    holds the culprit. Its partial does not verify; the leader blames it with
    //    the evidence, signs without it, and every other node checks the evidence.
    let set: Vec<String> = [0, 1, 2].iter().map(|&i| c.node(i).id.clone()).collect();
    let funding = fund(&c, &ecdsa, &[60_000]).await;
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/presignatures/generate",
            &json!({ "key_id": ecdsa, "signer_set": set, "count": 1 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    for i in 0..3 {
        c.eventually(
            &format!("node {i} holds the presignature"),
            Duration::from_secs(300),
            || async { (available_presignatures(&c, i, &ecdsa, &set).await >= 1).then_some(()) },
        )
        .await;
    }
    let id = submit_payment(&c, &ecdsa, 10_000, 2).await;
    let tx = signed_everywhere(&c, &HONEST, &id, 300).await;
    verify_consensus(&tx, &[&funding]);
    let rows = recorded_everywhere(&c, &bad, "invalid_partial").await;
    for (i, detectors) in HONEST.iter().zip(&rows) {
        assert!(
            detectors.contains(&c.node(*i).id),
            "node {i} checked the evidence itself: {detectors:?}"
        );
    }

    // 2. Interactive ECDSA (no presignature left) and 3. FROST: the culprit's
    //    garbage is named by the honest signers of the run; the retry without it
    //    signs; every honest node records it.
    pay_despite_the_culprit(&c, &ecdsa, 11_000).await;
    pay_despite_the_culprit(&c, &frost, 12_000).await;
    let rows = recorded_everywhere(&c, &bad, "signing_misbehaviour").await;
    for (i, detectors) in HONEST.iter().zip(&rows) {
        assert!(
            detectors.iter().all(|d| *d != bad),
            "node {i}: the culprit is never its own detector: {detectors:?}"
        );
    }
    // Nobody honest was blamed.
    for i in HONEST {
        for j in HONEST {
            let against = violations(&c, i, &c.node(j).id).await;
            assert!(
                against.is_empty(),
                "node {i} blames honest node {j}: {against:?}"
            );
        }
    }
}
