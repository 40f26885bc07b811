//! Frozen peers (SIGSTOP) on a real 5-node 3-of-5 cluster (issue 17): the API answers
//! a payment at its normal speed whatever the peers do, because nothing in the
//! request path waits on a peer's delivery acknowledgement (a frozen peer would hold
//! a send for the 20 s send timeout). With two peers frozen a payment still signs;
//! with three frozen it is taken in at once and cannot sign until they come back.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cluster_tests::wallet::{ended_tx, fund, pay};
use cluster_tests::Cluster;

/// Far below the peers' send timeout (20 s), far above a normal answer (< 1 s):
/// an answer this slow waited on a frozen peer.
const ANSWER_BOUND: Duration = Duration::from_secs(8);

fn signal(c: &Cluster, i: usize, sig: nix::sys::signal::Signal) {
    let pid = c.node_pid(i).expect("node pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// Submits a payment on node 0; its id and how long the API took to answer.
async fn submit_timed(c: &Cluster, key: &str) -> (String, Duration) {
    let started = Instant::now();
    let (status, v) = c
        .post_json(0, "/api/v1/transactions", &pay(key, 10_000))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 202, "payment taken in: {v}");
    (v["id"].as_str().unwrap().to_owned(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite, run by `make test-faults` (kept out of `make test` for its time budget)"]
async fn frozen_peers_never_slow_the_api_and_two_of_five_frozen_still_sign() {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    let c = Cluster::start(5, 3);
    c.wait_ready(5).await;
    let key = c.dkg(5, "frost", 3).await;
    c.write_policy(5, &[&key], 1_000_000);
    fund(&c, &key, &[30_000; 4]).await;

    // Two of five frozen: answered at once, signed by the three others.
    signal(&c, 3, SIGSTOP);
    signal(&c, 4, SIGSTOP);
    let (id, took) = submit_timed(&c, &key).await;
    assert!(
        took < ANSWER_BOUND,
        "with two peers frozen the API took {took:?} to answer"
    );
    let v = ended_tx(&c, 0, &id, 180).await;
    assert_eq!(v["state"], "signed", "{v}");

    // Three of five frozen: still answered at once; nothing can sign meanwhile.
    signal(&c, 2, SIGSTOP);
    let (stuck, took) = submit_timed(&c, &key).await;
    assert!(
        took < ANSWER_BOUND,
        "with three peers frozen the API took {took:?} to answer"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = c
        .get_ok(0, &format!("/api/v1/transactions/{stuck}"))
        .await
        .unwrap();
    assert_ne!(v["state"], "signed", "signed without a quorum: {v}");

    // Thawed, the cluster finishes what it can and signs again.
    for i in 2..5 {
        signal(&c, i, SIGCONT);
    }
    let v = ended_tx(&c, 0, &stuck, 240).await;
    assert!(
        ["signed", "expired", "failed"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    let (id, _) = submit_timed(&c, &key).await;
    let v = ended_tx(&c, 0, &id, 180).await;
    assert_eq!(v["state"], "signed", "after the thaw: {v}");
}
