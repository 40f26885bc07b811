//! Node failure and restart on a real 5-node cluster (its own cluster, since it
//! kills nodes): degraded status within the lease, recovery with data intact,
//! coordinator failover.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::Value;

async fn status(c: &Cluster, i: usize) -> Option<Value> {
    let r = c
        .client()
        .get(c.url(i, "/api/v1/cluster/status"))
        .bearer_auth(c.admin())
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

#[tokio::test]
async fn killed_node_degrades_the_cluster_and_rejoins_with_its_data_after_restart() {
    let c = Cluster::start(5, 3);
    c.eventually("5/5", Duration::from_secs(20), || async {
        status(&c, 0).await.filter(|v| v["healthy_nodes"] == 5)
    })
    .await;
    // Give node-3 some data to find again.
    let db = c.db(2).await;
    let (audit_before,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_log")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(audit_before >= 1);
    db.close().await;

    c.kill_node(2);
    // Lease TTL is 3 s in tests; allow for heartbeat and refresh periods.
    let v = c
        .eventually("4/5 degraded", Duration::from_secs(15), || async {
            status(&c, 0).await.filter(|v| v["healthy_nodes"] == 4)
        })
        .await;
    assert_eq!(v["status"], "degraded");
    let down: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["healthy"] == false)
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(down, ["node-3"]);
    // Node-1 recorded the change in its own node_health table and audit trail.
    let db = c.db(0).await;
    let (health,): (String,) =
        sqlx::query_as("SELECT status FROM node_health WHERE node_id = 'node-3'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(health, "down");
    let (downs,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_log WHERE action = 'peer.down' AND subject = 'node-3'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(downs >= 1);
    db.close().await;

    c.restart_node(2);
    let v = c
        .eventually("5/5 again", Duration::from_secs(30), || async {
            status(&c, 0).await.filter(|v| v["healthy_nodes"] == 5)
        })
        .await;
    assert_eq!(v["status"], "healthy");
    // Its database survived: old audit rows are there, the chain still verifies,
    // and the restart itself was audited.
    let v = c.get_json(2, "/api/v1/audit/verify").await;
    assert_eq!(v["valid"], true, "{v}");
    assert!(
        v["verified_records"].as_i64().unwrap() > audit_before,
        "{v}"
    );

    // Two of five down leaves exactly t = 3 alive: still degraded. A third makes
    // signing impossible: unavailable.
    c.kill_node(3);
    c.kill_node(4);
    let v = c
        .eventually("3/5", Duration::from_secs(15), || async {
            status(&c, 0).await.filter(|v| v["healthy_nodes"] == 3)
        })
        .await;
    assert_eq!(v["status"], "degraded");
    c.kill_node(1);
    let v = c
        .eventually("2/5", Duration::from_secs(15), || async {
            status(&c, 0).await.filter(|v| v["healthy_nodes"] == 2)
        })
        .await;
    assert_eq!(v["status"], "unavailable");
}

#[tokio::test]
async fn coordinator_leadership_fails_over_when_the_leader_dies() {
    let c = Cluster::start(3, 2);
    let leader = c
        .eventually("a leader", Duration::from_secs(20), || async {
            status(&c, 0)
                .await
                .and_then(|v| v["leader"].as_str().map(str::to_owned))
        })
        .await;
    let idx: usize = leader
        .strip_prefix("node-")
        .unwrap()
        .parse::<usize>()
        .unwrap()
        - 1;
    c.kill_node(idx);
    let other = (idx + 1) % 3;
    let new_leader = c
        .eventually("a new leader", Duration::from_secs(20), || async {
            status(&c, other)
                .await
                .and_then(|v| v["leader"].as_str().map(str::to_owned))
                .filter(|l| *l != leader)
        })
        .await;
    assert_ne!(new_leader, leader);
}
