//! Nodes down (SIGKILL) on a real 5-node 3-of-5 cluster with a 3-member etcd
//! (issue 17), with both key types (CGGMP24 ECDSA and FROST Taproot): with two
//! nodes down payments still sign; with three down they are taken in at once,
//! expire at their voting deadline, no node runs a signing step for them and their
//! UTXOs are released; once the nodes are back the next payment signs on all five.
//! The API answers every submission promptly whatever the peers do.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cluster_tests::netfault::{
    assert_no_outpoint_signed_twice, assert_no_signing_step, utxo_state, wait_restarted,
};
use cluster_tests::wallet::{aux_info, ended_tx, fund, pay, signed_everywhere, verify_consensus};
use cluster_tests::Cluster;

const N: usize = 5;
const T: u16 = 3;
/// Voting deadline of the nodes (seconds), so the quorum-less payments expire soon.
const VOTE_ENV: (&str, &str) = ("SIGNER__WALLET__VOTE_TIMEOUT_SECS", "20");
/// Generous bound on the API's answer to a submission (a normal answer takes well
/// under a second; the issue saw 25-30 s waits on unreachable peers).
const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// Submits a payment on node 0, asserting it is taken in within [`ANSWER_BOUND`].
async fn submit_prompt(c: &Cluster, key: &str, what: &str) -> String {
    let t0 = Instant::now();
    let (status, v) = c
        .post_json(0, "/api/v1/transactions", &pay(key, 10_000))
        .await;
    let took = t0.elapsed();
    assert_eq!(status, 202, "{what}: {v}");
    assert!(
        took < ANSWER_BOUND,
        "{what}: the API took {took:?} to answer"
    );
    eprintln!("{what}: answered in {took:?}");
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: make test-faults"]
async fn two_down_still_sign_three_down_expire_without_signing_and_release_utxos() {
    let started = Instant::now();
    let c = Cluster::start_with(N as u16, T, &["--etcd-members", "3"]);
    c.wait_ready(N).await;
    for i in 0..N {
        c.kill_node(i);
        c.restart_node_with_env(i, &[VOTE_ENV]);
    }
    wait_restarted(&c, N).await;
    let ecdsa = c.dkg(N, "cggmp24", T).await;
    let frost = c.dkg(N, "frost", T).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&ecdsa, &frost], 1_000_000);
    let keys = [ecdsa.as_str(), frost.as_str()];
    eprintln!("setup done after {:?}", started.elapsed());

    // Two down: the three others sign both key types.
    c.kill_node(3);
    c.kill_node(4);
    for key in keys {
        let f = fund(&c, key, &[40_000]).await;
        let id = submit_prompt(&c, key, "two nodes down").await;
        let tx = signed_everywhere(&c, &[0, 1, 2], &id, 240).await;
        verify_consensus(&tx, &[&f]);
    }
    eprintln!("two down signed after {:?}", started.elapsed());

    // Three down: taken in at once, expired, never signed, UTXOs released.
    c.kill_node(2);
    let mut stuck = Vec::new();
    for key in keys {
        let f = fund(&c, key, &[40_000]).await;
        let id = submit_prompt(&c, key, "three nodes down").await;
        stuck.push((id, f));
    }
    for (id, f) in &stuck {
        for i in [0, 1] {
            let v = ended_tx(&c, i, id, 240).await;
            assert_eq!(v["state"], "expired", "node {i}: {v}");
            assert!(v["signed_tx"].is_null(), "{v}");
        }
        assert_no_signing_step(&c, &[0, 1], id).await;
        assert_eq!(
            utxo_state(&c, 0, f.compute_txid(), 0).await,
            "available",
            "the expired payment's UTXO is released"
        );
    }
    eprintln!("three down expired after {:?}", started.elapsed());

    // Back: the next payment of each type signs on all five (spending the UTXO the
    // expired payment released).
    for i in 2..N {
        c.restart_node_with_env(i, &[VOTE_ENV]);
    }
    wait_restarted(&c, N).await;
    for (key, (_, f)) in keys.iter().zip(&stuck) {
        let id = submit_prompt(&c, key, "all nodes back").await;
        let tx = signed_everywhere(&c, &[0, 1, 2, 3, 4], &id, 240).await;
        verify_consensus(&tx, &[f]);
    }
    assert_eq!(assert_no_outpoint_signed_twice(&c).await, 4);
    eprintln!("nodes_down test done after {:?}", started.elapsed());
}
