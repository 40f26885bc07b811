//! Byzantine participants on a real cluster: a node armed (feature
//! `fault-injection`, see signer/src/fault.rs) to corrupt its protocol messages makes
//! the ceremony fail on the honest nodes, which record it as the culprit in
//! `byzantine_violations` and in their audit logs; once it behaves, a retry with a
//! new execution id succeeds.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::{json, Value};

async fn ended(c: &Cluster, i: usize, id: &str) -> Value {
    c.eventually(
        &format!("ceremony {id} to end on node {i}"),
        Duration::from_secs(60),
        || async {
            c.get_ok(i, &format!("/api/v1/dkg/ceremonies/{id}"))
                .await
                .filter(|v| v["state"] == "completed" || v["state"] == "failed")
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_dkg_messages_are_blamed_on_their_sender_and_a_retry_succeeds() {
    let c = Cluster::start(3, 2);
    c.wait_ready(3).await;
    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_CORRUPT_OUTGOING", "frost")]);
    c.wait_ready(3).await;

    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({ "protocol": "frost", "threshold": 2 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let v = ended(&c, i, &id).await;
        assert_eq!(v["state"], "failed", "node {i}: {v}");
        let db = c.db(i).await;
        let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT node_id, violation_type, session_id, detected_by FROM byzantine_violations",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(
            rows.iter()
                .any(|(culprit, kind, session, by)| culprit == "node-3"
                    && kind == "dkg_protocol"
                    && session.as_deref() == Some(id.as_str())
                    && *by == c.node(i).id),
            "node {i} did not blame node-3: {rows:?}"
        );
        assert!(
            rows.iter().all(|(culprit, ..)| culprit == "node-3"),
            "node {i} blamed an honest node: {rows:?}"
        );
        let (audited,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM audit_log WHERE action = 'violation.recorded' \
             AND subject = 'node-3' AND details->>'type' = 'dkg_protocol' \
             AND details->>'session' = $1",
        )
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(audited, 1, "node {i} audit log");
        let (shares,): (i64,) = sqlx::query_as("SELECT count(*) FROM key_shares WHERE usable")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(
            shares, 0,
            "node {i}: no usable share from a failed ceremony"
        );
    }

    // The node behaves again: a new ceremony (new execution id) completes everywhere.
    c.kill_node(2);
    c.restart_node(2);
    c.wait_ready(3).await;
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({ "protocol": "frost", "threshold": 2 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let retry = v["ceremony_id"].as_str().unwrap().to_owned();
    assert_ne!(retry, id);
    let mut key = None;
    for i in 0..3 {
        let v = ended(&c, i, &retry).await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
        let pk = v["public_key"].as_str().unwrap().to_owned();
        assert_eq!(key.get_or_insert(pk.clone()), &pk);
    }
}
