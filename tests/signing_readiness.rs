//! ECDSA signers whose signing material is still opening (share, aux info and the
//! library's precomputed tables: seconds to minutes of CPU per node right after aux
//! info on a loaded host), on a real 5-node 3-of-5 cluster with interactive ECDSA
//! (no presignatures). `SIGNER_FAULT_MATERIAL_GATE` holds a node's opening until
//! the test creates a file.
//!
//! A signer that is not ready answers so at once, before it uses a signing session;
//! the leader abandons the attempt (the other signers end their runs) and goes
//! without it, or, when no signer set without such a node exists, asks again
//! shortly. Before, the ready signers' runs waited for the opening node until they
//! stalled, the attempt was recorded as `tx.signers_absent`, and a payment right
//! after aux info could spend its whole signing budget (issue 21's CI failures of
//! the demo).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::wallet::{aux_info, fund, signed_everywhere, submit_payment, verify_consensus};
use cluster_tests::Cluster;

const N: usize = 5;
const T: u16 = 3;
const GATE: &str = "SIGNER_FAULT_MATERIAL_GATE";

/// Node `i`'s `signing_ready` for `key`.
async fn signing_ready(c: &Cluster, i: usize, key: &str) -> bool {
    c.key_entry(i, key).await["signing_ready"] == true
}

async fn ready_on(c: &Cluster, nodes: &[usize], key: &str) {
    for &i in nodes {
        c.eventually(
            &format!("node {i} opened the signing material"),
            Duration::from_secs(600),
            || async { signing_ready(c, i, key).await.then_some(()) },
        )
        .await;
    }
}

/// Node `i`'s audit records of `action` about transaction `tx`.
async fn audited(c: &Cluster, i: usize, action: &str, tx: &str) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit_log WHERE action = $1 AND subject = $2")
            .bind(action)
            .bind(tx)
            .fetch_one(&db)
            .await
            .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signers_still_opening_their_material_are_skipped_or_waited_for_never_stalled() {
    std::env::set_var("SIGNER__PRESIGN__ENABLED", "false");
    let c = Cluster::start(N as u16, T);
    let _logs = c.keep_logs_on_failure("signing_readiness");
    c.wait_ready(N).await;
    let key = c.dkg(N, "cggmp24", T).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&key], 1_000_000);

    let gate =
        |i: usize| std::env::temp_dir().join(format!("material-gate-{}-{i}", std::process::id()));
    let restart_gated = |i: usize| {
        let _ = std::fs::remove_file(gate(i));
        c.kill_node(i);
        c.restart_node_with_env(i, &[(GATE, gate(i).to_str().unwrap())]);
    };

    // 1. node-2 (the leader's preferred second signer) does not finish opening.
    //    The leader asks it, hears "not ready", and signs with the next set: no
    //    attempt stalls, and node-2 never enters a signing session.
    restart_gated(1);
    c.wait_ready(N).await;
    ready_on(&c, &[0, 2, 3, 4], &key).await;
    assert!(!signing_ready(&c, 1, &key).await, "node 1 is still opening");
    let funding = fund(&c, &key, &[60_000, 60_000]).await;
    let id = submit_payment(&c, &key, 10_000, 2).await;
    let tx = signed_everywhere(&c, &[0, 1, 2, 3, 4], &id, 300).await;
    verify_consensus(&tx, &[&funding]);
    assert_eq!(audited(&c, 1, "tx.sign_input", &id).await, 0);
    assert_eq!(audited(&c, 0, "tx.signers_absent", &id).await, 0);
    assert!(audited(&c, 0, "tx.sign_input", &id).await >= 1);

    // 2. Three nodes are opening: no set of three ready signers exists. The leader
    //    asks again (it entered a second session) until one of them is ready, and
    //    signs; no attempt stalls.
    restart_gated(2);
    restart_gated(3);
    c.wait_ready(N).await;
    for i in 1..=3 {
        assert!(
            !signing_ready(&c, i, &key).await,
            "node {i} is still opening"
        );
    }
    let id = submit_payment(&c, &key, 10_000, 2).await;
    c.eventually(
        "the leader asks a second signer set",
        Duration::from_secs(60),
        || async { (audited(&c, 0, "tx.sign_input", &id).await >= 2).then_some(()) },
    )
    .await;
    std::fs::write(gate(1), b"").unwrap();
    let second = signed_everywhere(&c, &[0, 1, 2, 3, 4], &id, 300).await;
    verify_consensus(&second, &[&funding, &tx]);
    assert_eq!(audited(&c, 0, "tx.signers_absent", &id).await, 0);
    assert!(
        audited(&c, 1, "tx.sign_input", &id).await >= 1,
        "node 1 signed once ready"
    );
    for i in 2..=3 {
        std::fs::write(gate(i), b"").unwrap();
    }
    ready_on(&c, &[1, 2, 3], &key).await;
    for i in 1..=3 {
        let _ = std::fs::remove_file(gate(i));
    }
}
