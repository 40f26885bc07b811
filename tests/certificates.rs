//! Certificates in a running cluster (issue 17): the cluster status shows each
//! node's certificate and the CA's with days to expiry; a node restarted with an
//! expired certificate is refused by its peers, and the refusal is visible in their
//! status (`p2p_error`), while the others keep working.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_peer_certificate_is_refused_and_the_refusal_shows_in_status() {
    let c = Cluster::start(3, 2);
    c.wait_ready(3).await;
    let s = c.get_json(0, "/api/v1/cluster/status").await;
    let certs = s["certificates"].as_array().unwrap();
    for name in ["node", "ca"] {
        let cert = certs.iter().find(|x| x["name"] == name).unwrap();
        assert_eq!(cert["state"], "ok", "{s}");
        assert!(cert["days_left"].as_i64().unwrap() > 30, "{s}");
    }

    // /ready and the metrics show them too.
    let r = c.get_json(0, "/ready").await;
    assert_eq!(r["certificates"].as_array().unwrap().len(), 2, "{r}");
    let m = c
        .client()
        .get(c.url(0, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("signer_certificate_days_left{certificate=\"node\"}"),
        "{m}"
    );
    // And the process's memory: resident set and the allocator's live heap.
    for gauge in ["process_resident_memory_bytes", "signer_heap_in_use_bytes"] {
        let v: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(gauge)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{gauge} missing: {m}"));
        assert!(v > 1 << 20, "{gauge} {v}");
    }

    // node-3 restarts with a certificate that expired yesterday (same CA, same key
    // path, same identity).
    c.kill_node(2);
    let now = time::OffsetDateTime::now_utc();
    signer::ca::issue_node_cert_with_validity(
        &c.dir.join("ca"),
        "node-3",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    c.restart_node(2);

    let s = c
        .eventually(
            "node-1 shows why node-3 is not connected",
            Duration::from_secs(60),
            || async {
                // A ping makes node-1 dial node-3 now.
                c.post_admin(0, "/api/v1/p2p/ping").await;
                let s = c.get_json(0, "/api/v1/cluster/status").await;
                let n3 = s["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["node_id"] == "node-3")?
                    .clone();
                (n3["p2p_connected"] == false && n3["p2p_error"].is_string()).then_some(n3)
            },
        )
        .await;
    let why = s["p2p_error"].as_str().unwrap().to_ascii_lowercase();
    assert!(why.contains("expired"), "{s}");
    // The two valid nodes still talk.
    let s2 = c.get_json(0, "/api/v1/cluster/status").await;
    let n2 = s2["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "node-2")
        .unwrap()
        .clone();
    assert_eq!(n2["p2p_connected"], true, "{s2}");
    // node-3 says so itself (its log; its API presents the expired certificate).
    let log = std::fs::read_to_string(&c.node(2).log).unwrap();
    assert!(
        log.contains("certificate EXPIRED"),
        "no expiry error in node-3's log"
    );
}
