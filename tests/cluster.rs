//! A real 5-node, threshold-3 cluster: health, status, QUIC between every pair,
//! refusal of foreign peers. Node failures are in `failover.rs` (own cluster).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::Value;

#[tokio::test]
async fn five_nodes_are_healthy_and_status_reports_five_of_five_with_threshold_three() {
    let c = Cluster::shared();
    for i in 0..5 {
        let v: Value = c
            .client()
            .get(c.url(i, "/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "healthy");
        assert_eq!(v["node_id"], format!("node-{}", i + 1));
    }
    // Registrations arrive within a heartbeat.
    let status = c
        .eventually("5/5 healthy", Duration::from_secs(20), || async {
            let v = c.get_json(0, "/api/v1/cluster/status").await;
            (v["healthy_nodes"] == 5).then_some(v)
        })
        .await;
    assert_eq!(status["total_nodes"], 5);
    assert_eq!(status["threshold"], 3);
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["source"], "etcd");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 5);
    // Every node agrees.
    for i in 1..5 {
        let v = c
            .eventually("agreement", Duration::from_secs(20), || async {
                let v = c.get_json(i, "/api/v1/cluster/status").await;
                (v["healthy_nodes"] == 5).then_some(v)
            })
            .await;
        assert_eq!(v["status"], "healthy");
    }
}

#[tokio::test]
async fn every_node_pair_exchanges_a_quic_message() {
    let c = Cluster::shared();
    for i in 0..5 {
        let v = c
            .eventually(
                "all peers answer a ping",
                Duration::from_secs(30),
                || async {
                    let v = c.post_admin(i, "/api/v1/p2p/ping").await;
                    (v["all_ok"] == true).then_some(v)
                },
            )
            .await;
        let peers: Vec<&str> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer"].as_str().unwrap())
            .collect();
        assert_eq!(peers.len(), 4, "{v}");
        assert!(!peers.contains(&format!("node-{}", i + 1).as_str()));
    }
}

#[tokio::test]
async fn readiness_reports_database_etcd_and_peers() {
    let c = Cluster::shared();
    let v = c
        .eventually("ready", Duration::from_secs(20), || async {
            let r = c.client().get(c.url(2, "/ready")).send().await.unwrap();
            let ok = r.status().is_success();
            let v: Value = r.json().await.unwrap();
            (ok && v["peers_connected"].as_u64() == Some(4)).then_some(v)
        })
        .await;
    assert_eq!(v["database"], "ok");
    assert_eq!(v["etcd"], "ok");
}

#[tokio::test]
async fn signer_status_prints_a_table_of_the_cluster() {
    let c = Cluster::shared();
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(cluster_tests::signer_bin())
            .args(["status", "--cluster"])
            .arg(c.dir.join("cluster.json"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=5 {
        assert!(text.contains(&format!("node-{i}")), "{text}");
    }
    assert!(text.contains("threshold 3"), "{text}");
    // No key yet, nothing pending: said so, not left out.
    assert!(text.contains("(none: signer dkg start --wait)"), "{text}");
    assert!(text.contains("pending transactions: 0"), "{text}");
}

#[test]
fn cluster_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::shared();
    let mode = std::fs::metadata(c.dir.join("cluster.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A QUIC endpoint run by the test itself, posing as `identity` with a
/// certificate from `ca_dir`, that knows node-1 as its only peer.
async fn rogue_endpoint(
    c: &Cluster,
    ca_dir: &std::path::Path,
    identity: &str,
    max_frame_bytes: usize,
) -> signer::p2p::P2p {
    signer::tls::install_crypto_provider();
    let certs = ca_dir.join("nodes").join(identity);
    let mut cfg = signer::p2p::P2pConfig::new(
        identity,
        "127.0.0.1:0".parse().unwrap(),
        vec![signer::p2p::PeerConfig {
            id: "node-1".into(),
            addr: c.node(0).quic_addr.parse().unwrap(),
        }],
        ca_dir.join("ca.pem"),
        certs.join("cert.pem"),
        certs.join("key.pem"),
    );
    cfg.max_frame_bytes = max_frame_bytes;
    signer::p2p::P2p::start(cfg).await.unwrap().0
}

async fn node1_still_talks_to_every_peer(c: &Cluster) {
    let v = c.post_admin(0, "/api/v1/p2p/ping").await;
    assert_eq!(v["all_ok"], true, "{v}");
}

#[tokio::test]
async fn a_peer_with_a_foreign_ca_certificate_is_refused_by_a_running_node() {
    let c = Cluster::shared();
    let foreign = tempfile::tempdir().unwrap();
    signer::ca::init_ca(foreign.path()).unwrap();
    signer::ca::issue_node_cert(foreign.path(), "node-2", 30).unwrap();
    let rogue = rogue_endpoint(c, foreign.path(), "node-2", 4 << 20).await;
    let frame = signer::p2p::Frame::new(
        uuid::Uuid::new_v4(),
        signer::p2p::MessageKind::PING,
        Vec::new(),
    );
    let err = rogue.send("node-1", frame).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("node-1"), "{msg}");
    // The refusal is logged by the node, and it keeps working.
    c.eventually(
        "refusal in node-1's log",
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(&c.node(0).log).unwrap();
            log.lines()
                .any(|l| l.contains("WARN") && (l.contains("handshake") || l.contains("refus")))
                .then_some(())
        },
    )
    .await;
    node1_still_talks_to_every_peer(c).await;
    rogue.shutdown().await;
}

#[tokio::test]
async fn a_frame_over_the_size_limit_is_refused_and_the_node_keeps_running() {
    let c = Cluster::shared();
    // A valid cluster identity (the CA key is on disk in a dev cluster) with a
    // sender-side limit larger than the node's 4 MiB.
    let ca_dir = c.file.ca_cert.parent().unwrap().to_owned();
    let rogue = rogue_endpoint(c, &ca_dir, "node-5", 64 << 20).await;
    let big = signer::p2p::Frame::new(
        uuid::Uuid::new_v4(),
        signer::p2p::MessageKind::PING,
        vec![0u8; 5 << 20],
    );
    let err = rogue.send("node-1", big).await.unwrap_err();
    assert!(
        matches!(err, signer::p2p::P2pError::Rejected { .. }),
        "{err}"
    );
    // A normal frame on the same endpoint still goes through.
    let small = signer::p2p::Frame::new(
        uuid::Uuid::new_v4(),
        signer::p2p::MessageKind::PING,
        Vec::new(),
    );
    rogue.send("node-1", small).await.unwrap();
    let v: Value = c
        .client()
        .get(c.url(0, "/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "healthy");
    node1_still_talks_to_every_peer(c).await;
    rogue.shutdown().await;
}
