//! Aux info (CGGMP24 Paillier keys and proofs) on a real 3-node cluster: every node
//! joins the ceremony, the result is confirmed by all and stored sealed, primes come
//! from each node's pool (here: the published TEST-ONLY fixture sets the harness
//! imports) without generating new ones, and existing aux info is reused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::{json, Value};

const N: usize = 3;

/// Number of fixture prime sets the harness gives node `i` (`primes-<j>.json` with
/// `j % N == i`): the import is complete when the pool holds all of them.
fn fixtures_of(i: usize) -> i64 {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/fixtures/test-primes");
    let n = (i..64)
        .step_by(N)
        .filter(|j| dir.join(format!("primes-{j}.json")).is_file())
        .count();
    i64::try_from(n).unwrap()
}

async fn pool(c: &Cluster, i: usize) -> Value {
    c.get_ok(i, "/api/v1/aux-info/status").await.unwrap()["prime_pool"].clone()
}

async fn wait_aux_ended(c: &Cluster, i: usize, id: &str) -> Value {
    c.eventually(
        &format!("aux-info ceremony {id} to end on node {i}"),
        Duration::from_secs(300),
        || async {
            c.get_ok(i, &format!("/api/v1/dkg/ceremonies/{id}"))
                .await
                .filter(|v| v["state"] == "completed" || v["state"] == "failed")
        },
    )
    .await
}

/// Runs one aux-info ceremony from node 0 and checks that it completed on every node
/// with the same public digest; returns the ceremony id.
async fn aux_completes_everywhere(c: &Cluster, body: Value) -> String {
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["reused"], false);
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    let mut digest = None;
    for i in 0..N {
        let v = wait_aux_ended(c, i, &id).await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
        assert_eq!(v["protocol"], "aux_info");
        let d = v["public_key"].as_str().unwrap().to_owned();
        assert_eq!(d.len(), 64, "a 32-byte public digest");
        assert_eq!(
            digest.get_or_insert(d.clone()),
            &d,
            "node {i} confirmed another digest"
        );
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aux_info_runs_on_every_node_from_pooled_primes_and_is_reused() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;

    // The pools hold the fixture sets (node k: primes-<j> with j % 3 == k), and
    // nothing was generated.
    let mut before = Vec::new();
    for i in 0..N {
        let p = c
            .eventually(
                &format!("node {i} pool imported"),
                Duration::from_secs(30),
                || async {
                    let p = pool(&c, i).await;
                    (p["available"].as_i64() == Some(fixtures_of(i))).then_some(p)
                },
            )
            .await;
        assert_eq!(p["test_fixtures_available"], p["available"]);
        assert_eq!(p["generated_total"], 0);
        assert_eq!(p["target"], 0);
        before.push(p["available"].as_i64().unwrap());
    }

    let first = aux_completes_everywhere(&c, json!({})).await;
    for (i, avail) in before.iter().enumerate() {
        let p = pool(&c, i).await;
        assert_eq!(p["available"].as_i64().unwrap(), avail - 1, "node {i}: {p}");
        assert_eq!(p["taken"], 1);
        assert_eq!(
            p["generated_total"], 0,
            "no prime set generated while the pool had one"
        );
        assert_eq!(p["generating"], false);
    }

    // Each node stores only its sealed aux info, bound to the node set.
    for i in 0..N {
        let db = c.db(i).await;
        let (participants, env): (Vec<String>, Vec<u8>) = sqlx::query_as(
            "SELECT participants, envelope FROM aux_info WHERE ceremony_id = $1::uuid",
        )
        .bind(&first)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(participants, ["node-1", "node-2", "node-3"]);
        assert_eq!(&env[..4], b"CENV", "aux info is stored as an envelope");
        let (taken,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM prime_pool WHERE state = 'taken' AND taken_by = $1::uuid",
        )
        .bind(&first)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(taken, 1, "node {i} took exactly one prime set");
    }

    // Asking again for the same node set reuses it, on any node.
    let (status, v) = c.post_json(1, "/api/v1/aux-info/start", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reused"], true);
    assert_eq!(v["ceremony_id"], first.as_str());

    // A forced second ceremony takes the next pooled set: still nothing generated.
    let second = aux_completes_everywhere(&c, json!({ "force": true })).await;
    assert_ne!(second, first);
    for (i, avail) in before.iter().enumerate() {
        let p = pool(&c, i).await;
        assert_eq!(p["available"].as_i64().unwrap(), avail - 2, "node {i}: {p}");
        assert_eq!(p["generated_total"], 0);
    }
    let status = c.get_ok(2, "/api/v1/aux-info/status").await.unwrap();
    assert_eq!(status["ceremonies"].as_array().unwrap().len(), 2);
    // Aux ceremonies are not keys.
    let keys = c.get_ok(2, "/api/v1/keys").await.unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 0);
    let dkg = c.get_ok(2, "/api/v1/dkg/status").await.unwrap();
    assert_eq!(dkg["ceremonies"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aux_info_start_refuses_bad_requests() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    for (body, status_code, code) in [
        (
            json!({ "participants": ["node-1", "node-9"] }),
            400,
            "invalid_participants",
        ),
        (
            json!({ "participants": ["node-1"] }),
            400,
            "invalid_participants",
        ),
        (
            json!({ "participants": ["node-1", "node-1"] }),
            400,
            "invalid_participants",
        ),
        (json!({ "force": "yes" }), 422, "invalid_request"),
        (json!({ "threshold": 2 }), 422, "invalid_request"),
    ] {
        let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (status_code, Some(code)),
            "{body}: {v}"
        );
    }
    // The DKG endpoint does not run aux info.
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({ "protocol": "aux_info", "threshold": 3 }),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_protocol"))
    );
    // Nothing was recorded.
    let s = c.get_ok(0, "/api/v1/aux-info/status").await.unwrap();
    assert_eq!(s["ceremonies"].as_array().unwrap().len(), 0);
}
