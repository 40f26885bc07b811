//! A node that equivocates in round 1 of a DKG (issue 17) on a real 5-node 3-of-5
//! cluster: node 2 (`node-3`, `SIGNER_FAULT_EQUIVOCATE=cggmp24`) sends its round-1
//! broadcast in two versions, the genuine one to two peers and a changed one to the
//! other two, each copy with its signed broadcast statement
//! (signer/src/session/equivocation.rs). Every honest node detects it (CGGMP24's
//! echo-broadcast check: "round1 wasn't reliable"); the participants then exchange
//! the statements they hold, and the two validly signed versions prove who
//! equivocated: every honest node records `node-3` (`dkg_equivocation`, both
//! statements as evidence) and nobody else, and its failure reason names it. A
//! retry without it completes while it is still armed, and a retry with it, once
//! it behaves, completes on all five.
//!
//! The second test adds a participant (`node-2`) that forges evidence against an
//! innocent one (`node-4`): statements in node-4's name that do not verify under its
//! vote key. Nobody innocent is blamed; the forgery is logged with its forwarder.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::json;

const N: usize = 5;
const T: u16 = 3;
const BAD: usize = 2;
const HONEST: [usize; 4] = [0, 1, 3, 4];

/// Node `i`'s violations against `culprit`: (type, session, detected_by).
async fn violations(c: &Cluster, i: usize, culprit: &str) -> Vec<(String, Option<String>, String)> {
    let db = c.db(i).await;
    let rows = sqlx::query_as(
        "SELECT violation_type, session_id, detected_by FROM byzantine_violations \
         WHERE node_id = $1 ORDER BY id",
    )
    .bind(culprit)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows
}

/// Starts a CGGMP24 ceremony on node 0 among `participants` (all with `None`).
async fn start(c: &Cluster, participants: Option<Vec<String>>) -> String {
    let mut body = json!({ "protocol": "cggmp24", "threshold": T });
    if let Some(p) = participants {
        body["participants"] = json!(p);
    }
    let (status, v) = c.post_json(0, "/api/v1/dkg/start", &body).await;
    assert_eq!(status, 202, "{v}");
    v["ceremony_id"].as_str().unwrap().to_owned()
}

/// Waits for ceremony `id` to end on node `i`; its answer.
async fn ended(c: &Cluster, i: usize, id: &str) -> serde_json::Value {
    let path = format!("/api/v1/dkg/ceremonies/{id}");
    c.eventually(
        &format!("ceremony {id} to end on node {i}"),
        Duration::from_secs(120),
        || async {
            c.get_ok(i, &path)
                .await
                .filter(|v| v["state"] == "completed" || v["state"] == "failed")
        },
    )
    .await
}

/// Restarts node `i` with `env` and waits until every node's connections are back.
async fn restart_with(c: &Cluster, i: usize, env: &[(&str, &str)]) {
    c.kill_node(i);
    c.restart_node_with_env(i, env);
    c.wait_ready(N).await;
    // Let the others replace the killed process's connections.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.wait_ready(N).await;
}

/// A ceremony of all five with the equivocator: fails on every honest node, whose
/// reason names it; every honest node records it (with two signed statements of one
/// broadcast as evidence) and nobody else. `honest` are the nodes checked.
async fn equivocation_is_blamed_on_the_equivocator(c: &Cluster, honest: &[usize]) {
    let bad = c.node(BAD).id.clone();
    let id = start(c, None).await;
    for &i in honest {
        let v = ended(c, i, &id).await;
        assert_eq!(v["state"], "failed", "node {i}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("wasn't reliable"),
            "node {i} detects the equivocation: {v}"
        );
        assert!(
            error.contains(&format!("equivocation by {bad} proven")),
            "node {i}'s failure names the equivocator: {v}"
        );
        eprintln!("node {i}: {error}");
    }
    let log = std::fs::read_to_string(&c.node(BAD).log).unwrap();
    assert!(
        log.contains("equivocating in round 1"),
        "the equivocation fault never fired"
    );
    for &i in honest {
        // The equivocator, once, with two validly signed versions of one broadcast.
        let against = violations(c, i, &bad).await;
        let this: Vec<_> = against
            .iter()
            .filter(|(_, s, _)| s.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(
            this.len(),
            1,
            "node {i}'s records against {bad}: {against:?}"
        );
        assert_eq!(this[0].0, "dkg_equivocation");
        assert_eq!(this[0].2, c.node(i).id);
        let evidence = evidence(c, i, &bad, &id).await;
        let st = evidence["statements"].as_array().unwrap();
        assert_eq!(st.len(), 2, "{evidence}");
        assert_eq!(st[0]["sender"], bad.as_str());
        assert_eq!(st[1]["sender"], bad.as_str());
        assert_eq!(st[0]["seq"], st[1]["seq"]);
        assert_ne!(st[0]["digest"], st[1]["digest"]);
        // Nobody else: honest peers that merely saw another version are not blamed.
        for j in 0..N {
            if j == BAD {
                continue;
            }
            let against = violations(c, i, &c.node(j).id).await;
            assert!(against.is_empty(), "node {i} blames node {j}: {against:?}");
        }
    }
}

/// The evidence of node `i`'s record against `culprit` in ceremony `id`.
async fn evidence(c: &Cluster, i: usize, culprit: &str, id: &str) -> serde_json::Value {
    let db = c.db(i).await;
    let (v,): (serde_json::Value,) = sqlx::query_as(
        "SELECT evidence FROM byzantine_violations WHERE node_id = $1 AND session_id = $2",
    )
    .bind(culprit)
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkg_equivocator_is_blamed_by_every_honest_node_and_retries_complete() {
    let c = Cluster::start(N as u16, T);
    c.wait_ready(N).await;
    restart_with(&c, BAD, &[("SIGNER_FAULT_EQUIVOCATE", "cggmp24")]).await;
    equivocation_is_blamed_on_the_equivocator(&c, &HONEST).await;

    // Retry without it (still armed, not a participant): completes.
    let four: Vec<String> = HONEST.iter().map(|&i| c.node(i).id.clone()).collect();
    let id = start(&c, Some(four)).await;
    for i in HONEST {
        let v = ended(&c, i, &id).await;
        assert_eq!(v["state"], "completed", "without it, node {i}: {v}");
    }
    // Retry with it, once it behaves: completes on all five.
    restart_with(&c, BAD, &[]).await;
    c.dkg(N, "cggmp24", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_equivocation_evidence_blames_nobody_innocent() {
    const FORGER: usize = 1;
    const FRAMED: usize = 3;
    let c = Cluster::start(N as u16, T);
    c.wait_ready(N).await;
    let framed = c.node(FRAMED).id.clone();
    restart_with(&c, BAD, &[("SIGNER_FAULT_EQUIVOCATE", "cggmp24")]).await;
    restart_with(&c, FORGER, &[("SIGNER_FAULT_FORGE_EVIDENCE", &framed)]).await;
    // The forger runs the honest protocol otherwise: it is checked like the others
    // (it blames the equivocator and nobody else; nobody blames it).
    equivocation_is_blamed_on_the_equivocator(&c, &HONEST).await;
    let log = std::fs::read_to_string(&c.node(FORGER).log).unwrap();
    assert!(
        log.contains("forging equivocation evidence"),
        "the forgery fault never fired"
    );
    // Every other node saw the forged statements in the framed node's name and
    // logged them with their forwarder.
    for i in [0, 2, 3, 4] {
        c.eventually(
            &format!("node {i} logs the forged statements"),
            Duration::from_secs(30),
            || async {
                let log = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
                log.lines()
                    .any(|l| {
                        l.contains("does not verify under the sender's vote key")
                            && l.contains(&c.node(FORGER).id)
                            && l.contains(&framed)
                    })
                    .then_some(())
            },
        )
        .await;
    }
}
