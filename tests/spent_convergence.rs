//! Spent outpoints converge (issue 17, `signer::tx::spent`), and only through
//! transactions a node verified itself. On a 3-node 2-of-3 FROST cluster:
//!
//! * node-3 is down while node-1 and node-2 sign a payment spending an outpoint
//!   that all three imported; restarted, node-3 missed the proposal and the result,
//!   yet within [`CONVERGE_SECS`] shows the outpoint `spent` (learned from its
//!   peers' signed transaction after verifying it against its own UTXO record,
//!   audited `utxo.spent`), so it cannot lead a payment that could never sign;
//! * node-3, restarted with `SIGNER_FAULT_FORGE_SPENT`, shares "signed" transactions
//!   spending its other available outpoints with forged witnesses: node-1 and node-2
//!   record `forged_spend` against node-3 and keep those outpoints `available`; a
//!   payment spending them still signs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::netfault::{import_on, utxo_state, wait_restarted};
use cluster_tests::wallet::{first_address, pay, signed_everywhere, submit, verify_consensus};
use cluster_tests::{funding, Cluster};

/// A restarted node shows its peers' spends within this many seconds.
const CONVERGE_SECS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn a_node_down_during_a_payment_learns_the_spend_and_forged_spends_are_refused() {
    let started = std::time::Instant::now();
    let c = Cluster::start(3, 2);
    c.wait_ready(3).await;
    let key = c.dkg(3, "frost", 2).await;
    c.write_policy(3, &[&key], 1_000_000);
    let addr = first_address(&c, &key).await;
    // `spent_f`: spent while node-3 is down; `kept`: node-3 will forge spends of it.
    let spent_f = funding(&addr, &[40_000]);
    let kept = funding(&addr, &[30_000]);
    for i in 0..3 {
        import_on(&c, i, &spent_f).await;
        import_on(&c, i, &kept).await;
    }

    c.kill_node(2);
    // 40 000 sats: coin selection takes the largest output, `spent_f`'s.
    let id = submit(&c, 0, &pay(&key, 20_000)).await;
    let tx = signed_everywhere(&c, &[0, 1], &id, 240).await;
    verify_consensus(&tx, &[&spent_f]);
    let spent = spent_f.compute_txid();
    assert_eq!(tx.input[0].previous_output.txid, spent);
    assert_eq!(
        utxo_state(&c, 2, spent, 0).await,
        "available",
        "node-3 was down"
    );
    eprintln!("signed without node-3 after {:?}", started.elapsed());
    // node-1's sends of the proposal and of the result to node-3 must have given up
    // (each is retried for a while: a node back in time still gets them the normal
    // way, which is not what this test is about).
    c.eventually(
        "node-1 gave up sending the proposal and the result to node-3",
        Duration::from_secs(90),
        || async {
            let log = std::fs::read_to_string(&c.node(0).log).unwrap_or_default();
            let failed = log
                .lines()
                .filter(|l| l.contains("sending to a participant failed") && l.contains("node-3"))
                .count();
            (failed >= 2).then_some(())
        },
    )
    .await;

    c.restart_node_with_env(2, &[("SIGNER_FAULT_FORGE_SPENT", "1")]);
    wait_restarted(&c, 3).await;
    let back = std::time::Instant::now();
    c.eventually(
        "node-3 shows the outpoint its peers spent as spent",
        Duration::from_secs(CONVERGE_SECS),
        || async { (utxo_state(&c, 2, spent, 0).await == "spent").then_some(()) },
    )
    .await;
    eprintln!("node-3 converged {:?} after its restart", back.elapsed());
    let entries: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT node_id, subject, details FROM audit_log WHERE action = 'utxo.spent' ORDER BY seq",
    )
    .fetch_all(&c.db(2).await)
    .await
    .unwrap();
    let txid = tx.compute_txid().to_string();
    let from_peers = entries
        .iter()
        .filter(|(_, subject, d)| {
            *subject == txid
                && ["node-1", "node-2"].contains(&d["reported_by"].as_str().unwrap_or(""))
        })
        .count();
    if from_peers != 1 {
        let log = std::fs::read_to_string(&c.node(2).log).unwrap_or_default();
        for l in log.lines().filter(|l| {
            l.contains(&txid) || l.contains("spent") || l.contains("WARN") || l.contains("ERROR")
        }) {
            eprintln!("node-3: {l}");
        }
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, state FROM transactions")
            .fetch_all(&c.db(2).await)
            .await
            .unwrap();
        eprintln!("node-3 transactions: {rows:?}");
    }
    assert_eq!(from_peers, 1, "one utxo.spent entry on node-3: {entries:?}");

    // node-3's forged spends are refused and recorded by both honest nodes.
    for i in 0..2 {
        let db = c.db(i).await;
        c.eventually(
            &format!("node-{} records node-3's forged spend", i + 1),
            Duration::from_secs(CONVERGE_SECS),
            || async {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM byzantine_violations \
                     WHERE node_id = 'node-3' AND violation_type = 'forged_spend' AND detected_by = $1",
                )
                .bind(format!("node-{}", i + 1))
                .fetch_one(&db)
                .await
                .unwrap();
                (n > 0).then_some(())
            },
        )
        .await;
        assert_eq!(
            utxo_state(&c, i, kept.compute_txid(), 0).await,
            "available",
            "node-{} believed a forged spend",
            i + 1
        );
    }
    // The outpoint node-3 claimed spent still pays.
    let id = submit(&c, 0, &pay(&key, 10_000)).await;
    let tx = signed_everywhere(&c, &[0, 1, 2], &id, 240).await;
    verify_consensus(&tx, &[&kept]);
    eprintln!("test done after {:?}", started.elapsed());
}
