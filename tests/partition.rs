//! Network faults between the nodes of a real 5-node 3-of-5 cluster with a 3-member
//! etcd (issue 17), through the UDP relays of `cluster_tests::netfault`:
//!
//! * partition {node-1, node-2} | {node-3, node-4, node-5}: the majority signs
//!   payments of both key types; the minority's payments (spending the very same
//!   UTXOs, imported on both sides) expire; after healing every node reports a
//!   healthy cluster; within [`CONVERGE_SECS`] every minority node shows the
//!   outpoints the majority spent as `spent` (it learned them from the majority's
//!   signed transactions, each verified against its own UTXOs: `utxo.spent`
//!   audited, `tx::spent`), a payment signs on all five, a payment the former
//!   minority leader is asked for finds no spendable outpoint (400
//!   `insufficient_funds`, no stale payment that could never sign), and no outpoint
//!   is signed in two different transactions in any node's database;
//! * 100 ms ± 50 ms latency with 5 % loss on every link: DKG (both key types), aux
//!   info and signing complete.
//!
//! The relays only carry the nodes' QUIC traffic: PostgreSQL and etcd stay reachable
//! from both sides (etcd is not partitioned).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cluster_tests::netfault::{
    assert_no_outpoint_signed_twice, assert_no_signing_step, import_on, utxo_state, wait_restarted,
    LinkFault, NetFaults,
};
use cluster_tests::wallet::{
    aux_info, ended_tx, first_address, pay, signed_everywhere, submit, verify_consensus,
};
use cluster_tests::{funding, Cluster};

const N: usize = 5;
const T: u16 = 3;
/// Voting deadline of the nodes (seconds): the minority's payments expire after it.
const VOTE_SECS: &str = "20";
/// After healing, every node shows the majority's spends within this many seconds.
const CONVERGE_SECS: u64 = 60;

async fn cluster_with_relays() -> (Cluster, NetFaults) {
    let c = Cluster::start_with(N as u16, T, &["--etcd-members", "3"]);
    c.wait_ready(N).await;
    let net = NetFaults::install_with_env(&c, &[("SIGNER__WALLET__VOTE_TIMEOUT_SECS", VOTE_SECS)]);
    wait_restarted(&c, N).await;
    (c, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn partition_two_three_majority_signs_minority_expires_and_heals() {
    let started = Instant::now();
    let (c, net) = cluster_with_relays().await;
    // Every peer link really goes through the relays.
    for j in 1..N {
        assert!(
            net.stats(0, j).forwarded > 0,
            "no traffic node-1 <-> node-{}",
            j + 1
        );
    }
    let ecdsa = c.dkg(N, "cggmp24", T).await;
    let frost = c.dkg(N, "frost", T).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&ecdsa, &frost], 1_000_000);
    eprintln!("setup done after {:?}", started.elapsed());

    // One UTXO per key, known to both sides: each side's payment must spend it.
    let mut funds = Vec::new();
    for key in [&ecdsa, &frost] {
        let f = funding(&first_address(&c, key).await, &[40_000]);
        import_on(&c, 0, &f).await;
        import_on(&c, 2, &f).await;
        funds.push(f);
    }

    let (minority, majority) = ([0, 1], [2, 3, 4]);
    net.partition(&minority, &majority);
    let mut signed = Vec::new();
    let mut expired = Vec::new();
    for key in [&ecdsa, &frost] {
        signed.push(submit(&c, 2, &pay(key, 10_000)).await);
        expired.push(submit(&c, 0, &pay(key, 10_000)).await);
    }
    for id in &signed {
        let tx = signed_everywhere(&c, &majority, id, 240).await;
        verify_consensus(&tx, &funds.iter().collect::<Vec<_>>());
    }
    for id in &expired {
        for i in minority {
            let v = ended_tx(&c, i, id, 240).await;
            assert_eq!(v["state"], "expired", "node {i}: {v}");
            assert!(v["signed_tx"].is_null(), "{v}");
        }
        assert_no_signing_step(&c, &minority, id).await;
    }
    for f in &funds {
        let txid = f.compute_txid();
        assert_eq!(
            utxo_state(&c, 0, txid, 0).await,
            "available",
            "released on node-1"
        );
        assert_eq!(utxo_state(&c, 2, txid, 0).await, "spent", "spent on node-3");
    }
    let cut = net.stats(0, 2);
    assert!(cut.dropped > 0, "the partition dropped nothing: {cut:?}");
    eprintln!("partition checks done after {:?}", started.elapsed());

    // Healed: every node sees a healthy cluster again and all five sign.
    net.heal();
    let healed = Instant::now();
    // The minority learns the majority's spends (verified by itself) and converges.
    for f in &funds {
        let txid = f.compute_txid();
        for i in 0..N {
            c.eventually(
                &format!("outpoint {txid}:0 spent on node-{}", i + 1),
                Duration::from_secs(CONVERGE_SECS),
                || {
                    let c = &c;
                    async move { (utxo_state(c, i, txid, 0).await == "spent").then_some(()) }
                },
            )
            .await;
        }
    }
    eprintln!("minority converged {:?} after healing", healed.elapsed());
    for i in minority {
        let (audited,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM audit_log WHERE action = 'utxo.spent' \
             AND details->>'reported_by' IN ('node-3', 'node-4', 'node-5')",
        )
        .fetch_one(&c.db(i).await)
        .await
        .unwrap();
        assert!(audited >= 2, "node-{}: {audited} utxo.spent entries", i + 1);
    }
    c.wait_ready(N).await;
    for key in [&ecdsa, &frost] {
        let f = funding(&first_address(&c, key).await, &[40_000]);
        import_on(&c, 2, &f).await;
        let id = submit(&c, 2, &pay(key, 10_000)).await;
        let tx = signed_everywhere(&c, &[0, 1, 2, 3, 4], &id, 240).await;
        verify_consensus(&tx, &[&f]);
    }
    // node-1 missed the majority's proposals but learned the spends: a payment it
    // is asked to lead finds nothing to spend (400 `insufficient_funds`) (before, it picked a spent UTXO and
    // built a payment that could never sign).
    let (status, v) = c
        .post_json(0, "/api/v1/transactions", &pay(&ecdsa, 10_000))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("insufficient_funds")),
        "{v}"
    );
    let distinct = assert_no_outpoint_signed_twice(&c).await;
    assert_eq!(distinct, 4, "two payments during the partition, two after");
    eprintln!("partition test done after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn latency_and_loss_on_every_link_dkg_aux_info_and_signing_complete() {
    let started = Instant::now();
    let (c, net) = cluster_with_relays().await;
    net.set_all(LinkFault {
        blocked: false,
        drop: 0.05,
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(50),
    });
    let ecdsa = c.dkg(N, "cggmp24", T).await;
    eprintln!("ECDSA DKG done after {:?}", started.elapsed());
    let frost = c.dkg(N, "frost", T).await;
    eprintln!("FROST DKG done after {:?}", started.elapsed());
    aux_info(&c, N).await;
    eprintln!("aux info done after {:?}", started.elapsed());
    c.write_policy(N, &[&ecdsa, &frost], 1_000_000);
    for key in [&ecdsa, &frost] {
        let f = funding(&first_address(&c, key).await, &[40_000]);
        import_on(&c, 0, &f).await;
        let id = submit(&c, 0, &pay(key, 10_000)).await;
        let tx = signed_everywhere(&c, &[0, 1, 2, 3, 4], &id, 300).await;
        verify_consensus(&tx, &[&f]);
        eprintln!("{key} signed after {:?}", started.elapsed());
    }
    let s = net.stats(0, 1);
    assert!(
        s.dropped > 0 && s.forwarded > 0,
        "the lossy link dropped nothing: {s:?}"
    );
    eprintln!("latency test done after {:?}", started.elapsed());
}
