//! One peer floods the others with every message kind (fault injection
//! `SIGNER_FAULT_FLOOD_PEERS`: early protocol frames of unknown sessions, junk
//! ceremony and presignature announcements, presignature generate requests, sign
//! requests, proposals and votes, in bursts above a peer's queue quota) while the
//! honest nodes sign payments: on a 3-node 2-of-3 cluster with a FROST key, node 2
//! floods, nodes 0 and 1 still vote, sign and verify two payments, their router
//! drops the flooder's excess (logged, throttled), and their memory stays bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bitcoin::consensus::encode;
use cluster_tests::wallet::{
    first_address, fund, pay, signed_everywhere, submit, verify_consensus,
};
use cluster_tests::{funding, Cluster};
use serde_json::json;

const N: usize = 3;
/// How much a flooded node's resident memory may grow (KiB) over the test.
const RSS_GROWTH_BOUND_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_does_not_stop_the_others_from_signing_and_memory_stays_bounded() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let frost = c.dkg(N, "frost", 2).await;
    c.write_policy(N, &[&frost], 1_000_000);
    let fund1 = fund(&c, &frost, &[60_000]).await;
    // The second payment is led by node 1: its funding is imported there (only).
    let fund2 = funding(&first_address(&c, &frost).await, &[70_000]);
    let (status, v) = c
        .post_json(
            1,
            "/api/v1/utxos",
            &json!({ "raw_tx": encode::serialize_hex(&fund2) }),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_FLOOD_PEERS", "1")]);
    c.wait_ready(N).await;
    // Let the flood run before the payments.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_before: Vec<u64> = (0..2).map(|i| c.node_rss_kib(i)).collect();

    // One payment led by each honest node.
    for (leader, amount) in [(0usize, 20_000u64), (1, 30_000)] {
        let id = submit(&c, leader, &pay(&frost, amount)).await;
        let tx = signed_everywhere(&c, &[0, 1], &id, 240).await;
        verify_consensus(&tx, &[&fund1, &fund2]);
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    let flooder_log = std::fs::read_to_string(&c.node(2).log).unwrap();
    assert!(
        flooder_log.contains("FAULT INJECTION: flooding every peer"),
        "node 2 did not flood"
    );
    for (i, before) in rss_before.iter().enumerate() {
        let after = c.node_rss_kib(i);
        assert!(
            after < before + RSS_GROWTH_BOUND_KIB,
            "node {i} grew from {before} KiB to {after} KiB under the flood"
        );
        let log = std::fs::read_to_string(&c.node(i).log).unwrap();
        assert!(
            log.contains("peer over its queue quota") || log.contains("early frame quota"),
            "node {i} never held the flooding peer to a quota; its log ends:\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        assert!(
            log.lines().count() < 200_000,
            "node {i}'s log grew without bound under the flood"
        );
    }
}
