//! Transactions under load and with nodes missing, on a real 3-node 2-of-3 cluster
//! (FROST key): 100 payments submitted at once are all accepted, each spends its own
//! UTXO, and every one is signed on every node and passes consensus; then with one
//! node down the remaining t = 2 nodes sign, and with a single node left a payment
//! expires at its voting deadline, its UTXO is released and no node ran a signing
//! step for it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::Transaction;
use cluster_tests::wallet::{
    dump_history, ends_as, fund, pay, signed_everywhere, submit, verify_consensus,
};
use cluster_tests::Cluster;
use serde_json::Value;

const N: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payments_and_missing_signers() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let frost = c.dkg(N, "frost", 2).await;
    c.write_policy(N, &[&frost], 1_000_000);
    hundred_concurrent_submissions_are_accepted_and_signed(&c, &frost).await;
    t_nodes_sign_and_t_minus_one_expire_with_no_signature_share(&c, &frost).await;
}

/// 100 payments submitted at once are all accepted, each gets its own UTXO, and all
/// are signed on every node.
async fn hundred_concurrent_submissions_are_accepted_and_signed(c: &Cluster, frost: &str) {
    const COUNT: usize = 100;
    let fund = fund(c, frost, &[10_000; COUNT]).await;
    let ids: Vec<String> = futures::future::join_all(
        (0..COUNT).map(|_| async { submit(c, 0, &pay(frost, 1_000)).await }),
    )
    .await;
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    assert_eq!(
        uuids.iter().collect::<BTreeSet<_>>().len(),
        COUNT,
        "distinct ids"
    );
    for i in 0..N {
        let db = c.db(i).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        let states = loop {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, count(*) FROM transactions WHERE id = ANY($1) \
                 GROUP BY state ORDER BY state",
            )
            .bind(&uuids)
            .fetch_all(&db)
            .await
            .unwrap();
            let ended: i64 = rows
                .iter()
                .filter(|(s, _)| ["signed", "failed", "rejected", "expired"].contains(&s.as_str()))
                .map(|(_, n)| n)
                .sum();
            if ended == COUNT as i64 || std::time::Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if states != vec![("signed".to_owned(), COUNT as i64)] {
            let bad: Option<(uuid::Uuid,)> = sqlx::query_as(
                "SELECT id FROM transactions WHERE id = ANY($1) AND state <> 'signed' LIMIT 1",
            )
            .bind(&uuids)
            .fetch_optional(&db)
            .await
            .unwrap();
            match bad {
                Some((bad,)) => dump_history(c, &bad.to_string()).await,
                None => eprintln!("node {i} is missing some of the transactions"),
            }
            panic!("node {i}: {states:?}");
        }
    }
    // Every node holds the same signed transactions; no funding output is spent
    // twice; each one passes consensus.
    let mut first: Option<Vec<(uuid::Uuid, Vec<u8>)>> = None;
    for i in 0..N {
        let db = c.db(i).await;
        let rows: Vec<(uuid::Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT id, signed_tx FROM transactions WHERE id = ANY($1) ORDER BY id")
                .bind(&uuids)
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(
            first.get_or_insert(rows.clone()),
            &rows,
            "node {i} agrees with node 0"
        );
    }
    let mut spent = BTreeSet::new();
    // Requests select concurrently (the intake lock covers the selection only):
    // each change output still gets its own change index, so no two payments
    // share a change address.
    let mut change_scripts = BTreeSet::new();
    for (_, raw) in first.unwrap() {
        let tx: Transaction = encode::deserialize(&raw).unwrap();
        for inp in &tx.input {
            assert!(
                spent.insert(inp.previous_output),
                "{} spent twice",
                inp.previous_output
            );
        }
        // The payment is the 1 000 sat output; the rest of the 10 000 is change.
        for out in tx.output.iter().filter(|o| o.value.to_sat() != 1_000) {
            assert!(
                change_scripts.insert(out.script_pubkey.clone()),
                "two payments share the change address {:?}",
                out.script_pubkey
            );
        }
        verify_consensus(&tx, &[&fund]);
    }
    assert_eq!(spent.len(), COUNT, "one funding output per payment");
    assert_eq!(change_scripts.len(), COUNT, "one change output per payment");
    // Load on the honest path raises no alert on any node.
    for i in 0..N {
        let errors = c.errors_logged(i);
        assert!(
            errors.is_empty(),
            "node {i} logged errors under load: {errors:#?}"
        );
    }
}

/// With node 2 down the remaining t = 2 nodes sign; with node 1 down too, a payment
/// expires at the voting deadline, its UTXO is released, and no node audited a
/// signing step for it.
async fn t_nodes_sign_and_t_minus_one_expire_with_no_signature_share(c: &Cluster, frost: &str) {
    c.kill_node(2);
    let fund1 = fund(c, frost, &[40_000]).await;
    let id = submit(c, 0, &pay(frost, 10_000)).await;
    let tx = signed_everywhere(c, &[0, 1], &id, 240).await;
    verify_consensus(&tx, &[&fund1]);

    c.kill_node(1);
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__WALLET__VOTE_TIMEOUT_SECS", "10")]);
    c.eventually("node 0 ready alone", Duration::from_secs(60), || async {
        let r = c.client().get(c.url(0, "/ready")).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        (v["custody"]["state"] == "unsealed").then_some(())
    })
    .await;
    let fund2 = fund(c, frost, &[40_000]).await;
    let id = submit(c, 0, &pay(frost, 10_000)).await;
    let v = ends_as(c, &[0], &id, "expired").await;
    assert!(v["signed_tx"].is_null(), "{v}");
    for i in 0..N {
        let (shares,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM audit_log WHERE action = 'tx.sign_input' AND subject = $1",
        )
        .bind(&id)
        .fetch_one(&c.db(i).await)
        .await
        .unwrap();
        assert_eq!(
            shares, 0,
            "node {i}: no signing step for an expired transaction"
        );
    }
    let db = c.db(0).await;
    let (state,): (String,) =
        sqlx::query_as("SELECT state FROM utxos WHERE txid = $1 AND vout = 0")
            .bind(fund2.compute_txid().to_string())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(state, "available", "the expired payment's UTXO is released");
}
