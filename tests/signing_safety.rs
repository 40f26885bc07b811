//! Signing safety under attack (issue 15) on a real 3-node 2-of-3 cluster with a
//! FROST and a CGGMP24 key. In order:
//!
//! 1. Proven input amounts, honest leader: a PSBT whose `witness_utxo` differs from
//!    the output the node imported is refused (`400 input_amount_mismatch`), one
//!    whose amount nothing proves is refused (`400 unproven_input_amount`), and
//!    nothing is stored on any node; a Taproot PSBT is signed, and the same
//!    unsigned transaction under other data (an explicit SIGHASH_ALL) is refused
//!    (`409 txid_approved_with_other_data`), nothing stored.
//! 2. Node 0 becomes a malicious leader (fault injection): it skips its intake
//!    checks, proposes voting deadlines a year ahead, replays every proposal and
//!    names node 2 as a signer whatever node 2 voted.
//!    * The BIP-143 fee attack: two PSBTs of one unsigned P2WPKH transaction, each
//!      understating a different input, are rejected by the followers' own proof
//!      check; the honest PSBT of the same transaction is signed; that txid is
//!      signed once.
//!    * Every follower's vote and round expire at its own maximum (300 s), not the
//!      leader's year; replayed proposals change nothing and are recorded.
//!    * Node 2 votes reject (it knows the input as spent); the leader names it as a
//!      signer anyway: node 2 refuses, audits the refusal and records the leader;
//!      its refusal only makes the leader try again without it, and the two
//!      approving nodes sign (no partial signature ever leaves node 2).
//!    * Every sign request is replayed with its session id
//!      (`SIGNER_FAULT_REPLAY_SIGN_REQUEST`): no node serves a session twice, and
//!      the replays are recorded as `session_reuse`.
//! 3. A node restarted while a transaction is voting expires it at start.
//! 4. A proposal that arrives after its voting deadline (a node back from a crash
//!    while its leader re-sends, or a leader holding proposals back) opens nothing:
//!    node 0 proposes deadlines already past (`SIGNER_FAULT_PROPOSAL_DEADLINE_SECS`
//!    negative). Each follower refuses it (`proposal_expired`) and records and
//!    reserves nothing, so a payment node 1 leads then spends the same coin with
//!    every node's approval.
//! 5. A malicious leader proposing in batches (`[wallet] proposal_batch_max`) sends
//!    the previous batch's last proposal again inside the next batch: every
//!    follower records the replay against it and opens no second round, and the
//!    batch's fresh payments are all signed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use bitcoin::consensus::encode;
use bitcoin::{Amount, Psbt, Transaction};
use cluster_tests::wallet::{aux_info, ends_as, fund, pay, submit};
use cluster_tests::{other_address, Cluster};
use serde_json::{json, Value};

const N: usize = 3;
/// `[wallet] max_vote_deadline_secs` default.
const MAX_VOTE_DEADLINE_SECS: i64 = 300;

async fn tx_counts(c: &Cluster) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..N {
        let db = c.db(i).await;
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM transactions")
            .fetch_one(&db)
            .await
            .unwrap();
        out.push(n);
    }
    out
}

async fn import_on(c: &Cluster, i: usize, tx: &Transaction) {
    let (status, v) = c
        .post_json(
            i,
            "/api/v1/utxos",
            &json!({ "raw_tx": encode::serialize_hex(tx) }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

fn b64(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

/// A PSBT built by BDK for `key_id`'s descriptors spending one funding transaction
/// per value (returned too), paying `amount` with an absolute fee of `fee` sats.
async fn bdk_psbt(
    c: &Cluster,
    key_id: &str,
    values: &[u64],
    amount: u64,
    fee: u64,
) -> (Psbt, Vec<Transaction>) {
    let e = c.key_entry(0, key_id).await;
    let (mut w, funds) = cluster_tests::wallet::bdk_wallet_funded(
        e["receive_descriptor"].as_str().unwrap(),
        e["change_descriptor"].as_str().unwrap(),
        values,
    );
    let mut b = w.build_tx();
    b.add_recipient(other_address().script_pubkey(), Amount::from_sat(amount))
        .fee_absolute(Amount::from_sat(fee));
    let psbt = b.finish().unwrap();
    assert_eq!(psbt.inputs.len(), values.len());
    (psbt, funds)
}

/// `psbt` with input `i` claiming `less` sats fewer than it spends, without the
/// full previous transaction that would contradict it.
fn understated(psbt: &Psbt, i: usize, less: u64) -> Psbt {
    let mut p = psbt.clone();
    p.inputs[i].non_witness_utxo = None;
    let u = p.inputs[i].witness_utxo.as_mut().unwrap();
    u.value = Amount::from_sat(u.value.to_sat() - less);
    p
}

async fn refused(c: &Cluster, psbt: &Psbt, status: u16, code: &str) {
    let (s, v) = c
        .post_json(0, "/api/v1/transactions", &json!({ "psbt": b64(psbt) }))
        .await;
    assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
}

async fn count(c: &Cluster, i: usize, sql: &'static str, bind: &str) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(bind.to_owned())
        .fetch_one(&db)
        .await
        .unwrap();
    n
}

async fn violations(c: &Cluster, i: usize, culprit: &str, kind: &str) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM byzantine_violations WHERE node_id = $1 AND violation_type = $2",
    )
    .bind(culprit)
    .bind(kind)
    .fetch_one(&db)
    .await
    .unwrap();
    n
}

/// The reasons of `voter`'s vote on transaction `id`, as stored on node `i`.
async fn vote_reasons(c: &Cluster, i: usize, id: &str, voter: &str) -> Vec<String> {
    let db = c.db(i).await;
    let (reasons,): (Value,) = sqlx::query_as(
        "SELECT v.reasons FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
         WHERE r.transaction_id = $1::uuid AND v.node_id = $2",
    )
    .bind(id)
    .bind(voter)
    .fetch_one(&db)
    .await
    .unwrap();
    serde_json::from_value(reasons).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_safety_under_a_malicious_submitter_and_leader() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let frost = c.dkg(N, "frost", 2).await;
    let ecdsa = c.dkg(N, "cggmp24", 2).await;
    aux_info(&c, N).await;
    c.write_policy(N, &[&frost, &ecdsa], 1_000_000);

    // 1. Honest leader: unproven or contradicted amounts are refused at intake.
    let before = tx_counts(&c).await;
    let (honest, funds) = bdk_psbt(&c, &ecdsa, &[30_000, 25_000], 40_000, 12_000).await;
    for f in &funds {
        import_on(&c, 0, f).await;
    }
    refused(
        &c,
        &understated(&honest, 0, 10_000),
        400,
        "input_amount_mismatch",
    )
    .await;
    let (not_imported, _) = bdk_psbt(&c, &ecdsa, &[50_000], 20_000, 500).await;
    let mut unproven = not_imported.clone();
    unproven.inputs[0].non_witness_utxo = None;
    refused(&c, &unproven, 400, "unproven_input_amount").await;
    // Taproot inputs too: BDK gives no previous transaction for them.
    let (tr, tr_funds) = bdk_psbt(&c, &frost, &[40_000], 20_000, 500).await;
    let mut tr_unproven = tr.clone();
    tr_unproven.inputs[0].non_witness_utxo = None;
    refused(&c, &tr_unproven, 400, "unproven_input_amount").await;
    assert_eq!(tx_counts(&c).await, before, "nothing stored for refusals");

    // One unsigned transaction, approved under one set of data only.
    import_on(&c, 0, &tr_funds[0]).await;
    let id = submit(&c, 0, &json!({ "psbt": b64(&tr) })).await;
    ends_as(&c, &[0, 1, 2], &id, "signed").await;
    let mut other_data = tr.clone();
    other_data.inputs[0].sighash_type = Some(bitcoin::TapSighashType::All.into());
    let before = tx_counts(&c).await;
    refused(&c, &other_data, 409, "txid_approved_with_other_data").await;
    assert_eq!(tx_counts(&c).await, before, "nothing stored for refusals");

    // 2. Node 0 turns into a malicious leader.
    let bad = c.node(0).id.clone();
    let target = c.node(2).id.clone();
    c.kill_node(0);
    c.restart_node_with_env(
        0,
        &[
            ("SIGNER_FAULT_SKIP_INTAKE_CHECKS", "1"),
            ("SIGNER_FAULT_PROPOSAL_DEADLINE_SECS", "31536000"),
            ("SIGNER_FAULT_REPLAY_PROPOSAL", "1"),
            ("SIGNER_FAULT_SIGN_WITH", &target),
            ("SIGNER_FAULT_REPLAY_SIGN_REQUEST", "1"),
        ],
    );
    c.wait_ready(N).await;

    // The fee attack: each PSBT understates a different input of the same unsigned
    // transaction. The leader lets them through; every follower refuses to approve.
    let txid = honest.unsigned_tx.compute_txid().to_string();
    let mut attack_ids = Vec::new();
    for input in [0, 1] {
        let id = submit(
            &c,
            0,
            &json!({ "psbt": b64(&understated(&honest, input, 10_000)) }),
        )
        .await;
        ends_as(&c, &[0, 1, 2], &id, "rejected").await;
        for (i, voter) in [(1, c.node(1).id.clone()), (2, c.node(2).id.clone())] {
            let reasons = vote_reasons(&c, i, &id, &voter).await;
            assert!(
                reasons.iter().any(|r| r == "unproven_input_amount"),
                "{voter} voted with reasons {reasons:?}"
            );
        }
        attack_ids.push(id);
    }
    // The honest PSBT of that transaction is signed, and that txid only once.
    let id = submit(&c, 0, &json!({ "psbt": b64(&honest) })).await;
    ends_as(&c, &[0, 1, 2], &id, "signed").await;
    for i in 0..N {
        let n = count(
            &c,
            i,
            "SELECT count(*) FROM transactions WHERE txid = $1 AND signed_tx IS NOT NULL",
            &txid,
        )
        .await;
        assert_eq!(
            n, 1,
            "node {i} holds {n} signed transactions with txid {txid}"
        );
    }

    // Deadlines: the leader asked for a year; every follower's round, stored
    // deadline and signed vote end within its own maximum.
    for i in 1..N {
        let db = c.db(i).await;
        for id in attack_ids.iter().chain([&id]) {
            let (round_secs, tx_secs): (i64, i64) = sqlx::query_as(
                "SELECT extract(epoch FROM r.deadline - r.created_at)::bigint, \
                        extract(epoch FROM t.vote_deadline - t.created_at)::bigint \
                 FROM voting_rounds r JOIN transactions t ON t.id = r.transaction_id \
                 WHERE t.id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
            assert!(
                round_secs <= MAX_VOTE_DEADLINE_SECS + 2 && tx_secs <= MAX_VOTE_DEADLINE_SECS + 2,
                "node {i}: round deadline {round_secs} s, stored {tx_secs} s ahead"
            );
            let me = c.node(i).id.clone();
            let (raw, created): (Vec<u8>, i64) = sqlx::query_as(
                "SELECT v.signed_vote, extract(epoch FROM r.created_at)::bigint \
                 FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
                 WHERE r.transaction_id = $1::uuid AND v.node_id = $2",
            )
            .bind(id)
            .bind(&me)
            .fetch_one(&db)
            .await
            .unwrap();
            let vote = vote::SignedVote::decode(&raw).unwrap();
            let ahead = i64::try_from(vote.body().deadline_unix).unwrap() - created;
            assert!(
                ahead <= MAX_VOTE_DEADLINE_SECS + 2,
                "node {i}'s vote expires {ahead} s after its round opened"
            );
        }
        // Replayed sign requests: a session id is served once; the replay is
        // refused and recorded against the leader.
        let (served, sessions): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT details->>'session') FROM audit_log \
             WHERE action = 'tx.sign_input'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(served, sessions, "node {i} served a session id twice");
        // Replayed proposals: recorded against the leader; the stored leader stays.
        c.eventually(
            &format!("node {i} records the replayed proposals"),
            Duration::from_secs(30),
            || async { (violations(&c, i, &bad, "replayed_proposal").await >= 3).then_some(()) },
        )
        .await;
        for id in attack_ids.iter().chain([&id]) {
            let (leader,): (String,) =
                sqlx::query_as("SELECT leader FROM transactions WHERE id = $1::uuid")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert_eq!(leader, bad, "node {i} kept the leader of {id}");
        }
    }

    // Node 2 knows the input as spent: it votes reject. The leader names it as a
    // signer anyway; no partial signature leaves node 2, and its refusal only makes
    // the leader try again without it: the two approving nodes sign.
    let fund2 = fund(&c, &frost, &[60_000]).await;
    import_on(&c, 2, &fund2).await;
    sqlx::query("UPDATE utxos SET state = 'spent' WHERE txid = $1")
        .bind(fund2.compute_txid().to_string())
        .execute(&c.db(2).await)
        .await
        .unwrap();
    let id = submit(&c, 0, &pay(&frost, 10_000)).await;
    let v = ends_as(&c, &[0, 1], &id, "signed").await;
    assert!(v["signed_tx"].is_string(), "{v}");
    let reasons = vote_reasons(&c, 2, &id, &target).await;
    assert!(
        reasons.iter().any(|r| r == "input_unavailable"),
        "{reasons:?}"
    );
    assert!(
        c.audit_count(2, "tx.sign_refused", &id).await >= 1,
        "node 2 audits its refusal"
    );
    assert_eq!(
        c.audit_count(2, "tx.sign_input", &id).await,
        0,
        "node 2 signed nothing"
    );
    assert!(
        violations(&c, 2, &bad, "sign_request_without_approval").await >= 1,
        "node 2 records the leader"
    );
    assert!(
        c.audit_count(0, "tx.signers_absent", &id).await >= 1,
        "the leader records that node 2 declined"
    );
    assert!(
        c.audit_count(1, "tx.sign_input", &id).await >= 1,
        "node 1 signed in node 2's place"
    );

    // Every sign request was replayed with its session id: the signer it reached
    // refused the replay and recorded the leader.
    c.eventually(
        "node 2 records the reused session ids",
        Duration::from_secs(30),
        || async { (violations(&c, 2, &bad, "session_reuse").await >= 1).then_some(()) },
    )
    .await;

    // 3. A transaction in flight when its node restarts is expired there at start.
    c.write_policy_with(
        N,
        &[&frost, &ecdsa],
        1_000_000,
        "[[scope.approvals]]\nrequired = 1\nroles = [\"approver\"]\n",
    );
    fund(&c, &frost, &[70_000]).await;
    let id = submit(&c, 0, &pay(&frost, 10_000)).await;
    c.eventually(
        "node 1 holds the transaction",
        Duration::from_secs(60),
        || async {
            c.get_ok(1, &format!("/api/v1/transactions/{id}"))
                .await
                .filter(|v| v["state"] == "voting")
        },
    )
    .await;
    c.kill_node(1);
    c.restart_node(1);
    c.wait_ready(N).await;
    let v = c
        .get_ok(1, &format!("/api/v1/transactions/{id}"))
        .await
        .unwrap();
    assert_eq!(v["state"], "expired", "{v}");
    let n = count(
        &c,
        1,
        "SELECT count(*) FROM audit_log WHERE action = 'tx.expired' AND subject = $1 \
         AND details->>'reason' = 'node_restart'",
        &id,
    )
    .await;
    assert_eq!(n, 1);
    assert_eq!(
        c.get_ok(2, &format!("/api/v1/transactions/{id}"))
            .await
            .unwrap()["state"],
        "voting",
        "the other nodes are not affected"
    );

    // 4. Late proposals open nothing on a follower.
    c.write_policy(N, &[&frost, &ecdsa], 1_000_000);
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER_FAULT_PROPOSAL_DEADLINE_SECS", "-120")]);
    c.wait_ready(N).await;
    let late = fund(&c, &frost, &[80_000]).await;
    let before = tx_counts(&c).await;
    let (s, v) = c
        .post_json(0, "/api/v1/transactions", &pay(&frost, 75_000))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("proposal_expired")),
        "{v}"
    );
    let (late_id,): (String,) = sqlx::query_as(
        "SELECT id::text FROM transactions WHERE state = 'failed' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&c.db(0).await)
    .await
    .unwrap();
    for i in 1..N {
        c.eventually(
            &format!("node {i} refuses the late proposal"),
            Duration::from_secs(30),
            || async {
                let log = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
                log.lines()
                    .any(|l| {
                        l.contains("proposal refused")
                            && l.contains(&late_id)
                            && l.contains("after its voting deadline")
                    })
                    .then_some(())
            },
        )
        .await;
        let status = c
            .get(i, &format!("/api/v1/transactions/{late_id}"), c.admin())
            .await
            .status();
        assert_eq!(status.as_u16(), 404, "node {i} holds the late proposal");
    }
    let after = tx_counts(&c).await;
    assert_eq!(after[1..], before[1..], "the followers stored nothing");
    assert_eq!(after[0], before[0] + 1, "the leader recorded its failure");
    // Nothing is reserved: node 1 leads a payment of the same coin and every node,
    // node 0 included (it released its own reservation), approves it.
    import_on(&c, 1, &late).await;
    let id = submit(&c, 1, &pay(&frost, 75_000)).await;
    ends_as(&c, &[0, 1, 2], &id, "signed").await;
    for i in 0..N {
        let me = c.node(i).id.clone();
        let (decision,): (String,) = sqlx::query_as(
            "SELECT v.decision FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1::uuid AND v.node_id = $2",
        )
        .bind(&id)
        .bind(&me)
        .fetch_one(&c.db(i).await)
        .await
        .unwrap();
        assert_eq!(
            decision,
            "approve",
            "node {i}: {:?}",
            vote_reasons(&c, i, &id, &me).await
        );
    }

    // 5. A malicious leader proposing in batches (issue 21) puts the previous
    //    batch's last proposal again into the next batch: each follower records
    //    the replay against it and changes nothing of that transaction, and every
    //    fresh proposal of the same batch is voted and signed.
    c.kill_node(0);
    c.restart_node_with_env(
        0,
        &[
            ("SIGNER_FAULT_REPLAY_PROPOSAL", "1"),
            ("SIGNER__WALLET__PROPOSAL_BATCH_MAX", "8"),
            ("SIGNER__WALLET__PROPOSAL_BATCH_LINGER_MS", "500"),
        ],
    );
    c.wait_ready(N).await;
    fund(&c, &frost, &[40_000; 12]).await;
    let mut replays_before = Vec::new();
    for i in 1..N {
        replays_before.push(violations(&c, i, &bad, "replayed_proposal").await);
    }
    let body = pay(&frost, 10_000);
    let mut ids = Vec::new();
    for _wave in 0..3 {
        let answers = futures::future::join_all(
            (0..4).map(|_| c.post_json(0, "/api/v1/transactions", &body)),
        )
        .await;
        for (status, v) in answers {
            assert_eq!(status, 202, "{v}");
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    for id in &ids {
        ends_as(&c, &[0, 1, 2], id, "signed").await;
    }
    for i in 1..N {
        c.eventually(
            &format!("node {i} records the replay inside a batch"),
            Duration::from_secs(30),
            || async {
                (violations(&c, i, &bad, "replayed_proposal").await > replays_before[i - 1])
                    .then_some(())
            },
        )
        .await;
        for id in &ids {
            let rounds = count(
                &c,
                i,
                "SELECT count(*) FROM voting_rounds WHERE transaction_id = $1::uuid",
                id,
            )
            .await;
            assert_eq!(rounds, 1, "node {i} opened {rounds} rounds for {id}");
        }
    }
}
