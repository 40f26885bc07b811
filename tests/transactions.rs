//! Transactions end to end on a real 3-node 2-of-3 cluster: funding UTXOs imported,
//! the recipient + amount form built by the node, every node validating and voting
//! with signed votes, two approving nodes signing (CGGMP24 for P2WPKH, FROST for
//! P2TR), and the final transaction verified here with Bitcoin Core's consensus code;
//! a policy rejection signs nothing; bad requests get 4xx codes and store nothing.
//! On the same cluster, in order: a policy needing a human approval holds every vote
//! until an approver (not the initiator) approves; PSBTs built by BDK are signed and
//! then finalized by BDK; double and forged votes are recorded as Byzantine and
//! ignored; nodes just restarted sign ECDSA before their precomputed tables are
//! built; the intake's turns; batches of proposals and votes; a rolling upgrade
//! across the batch wire level; a payment whose chosen outputs are taken before
//! its reservation selects again; a crash inside a batch's commit stores nothing of
//! it.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::{Address, Amount, Transaction};
use cluster_tests::wallet::{
    ended, ends_as, fund, pay, signed_everywhere, submit, verify_consensus,
};
use cluster_tests::{funding, other_address, Cluster};
use serde_json::json;

const N: usize = 3;

fn write_policy(c: &Cluster, keys: &[&str]) {
    c.write_policy(N, keys, 1_000_000);
}

async fn tx_count(c: &Cluster, i: usize) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM transactions")
        .fetch_one(&db)
        .await
        .unwrap();
    n
}

/// Pays `amount` sats from `key_id` through node 0 and checks the result on each of
/// `nodes` and with libbitcoinconsensus here; returns the transaction id and the
/// number of inputs spent.
async fn pay_and_verify_on(
    c: &Cluster,
    nodes: &[usize],
    key_id: &str,
    fund: &Transaction,
    amount: u64,
) -> (String, usize) {
    let body = pay(key_id, amount);
    let to = body["recipient"].as_str().unwrap().to_owned();
    let to = Address::from_str(&to).unwrap().assume_checked();
    let id = submit(c, 0, &body).await;
    let tx = signed_everywhere(c, nodes, &id, 240).await;
    // Recipient paid, change back to the wallet, every input verified by consensus.
    assert!(tx
        .output
        .iter()
        .any(|o| o.script_pubkey == to.script_pubkey() && o.value.to_sat() == amount));
    assert_eq!(tx.output.len(), 2, "recipient and change");
    verify_consensus(&tx, &[fund]);
    // Every node stored every node's signed vote for the round.
    for &i in nodes {
        let db = c.db(i).await;
        let (votes,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1::uuid AND v.signed_vote IS NOT NULL",
        )
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(votes >= 2, "node {i} holds {votes} votes");
    }
    (id, tx.input.len())
}

async fn pay_and_verify(c: &Cluster, key_id: &str, fund: &Transaction, amount: u64) -> usize {
    pay_and_verify_on(c, &[0, 1, 2], key_id, fund, amount)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_and_taproot_payments_are_voted_signed_and_pass_consensus() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let frost = c.dkg(N, "frost", 2).await;
    let ecdsa = c.dkg(N, "cggmp24", 2).await;
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &json!({})).await;
    assert_eq!(status, 202, "{v}");
    let aux = v["ceremony_id"].as_str().unwrap().to_owned();
    for i in 0..N {
        let v = ended(
            &c,
            i,
            &format!("/api/v1/dkg/ceremonies/{aux}"),
            &["completed", "failed"],
            300,
        )
        .await;
        assert_eq!(v["state"], "completed", "{v}");
    }
    write_policy(&c, &[&frost, &ecdsa]);
    let keys = c.get_ok(0, "/api/v1/keys").await.unwrap();

    for key_id in [&frost, &ecdsa] {
        let entry = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .unwrap()
            .clone();
        let addr = Address::from_str(entry["first_address"].as_str().unwrap())
            .unwrap()
            .require_network(bitcoin::Network::Regtest)
            .unwrap();
        let fund = funding(&addr, &[20_000, 25_000, 2_000_000]);
        let (status, v) = c
            .post_json(
                0,
                "/api/v1/utxos",
                &json!({ "raw_tx": encode::serialize_hex(&fund) }),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["imported"].as_array().unwrap().len(), 3);

        // Over the policy's per-transaction limit: every node votes reject, the round
        // is rejected everywhere, nothing is signed and the UTXO is released.
        let (status, v) = c
            .post_json(
                0,
                "/api/v1/transactions",
                &json!({ "key_id": key_id, "recipient": other_address().to_string(), "amount_sats": 1_200_000 }),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        for i in 0..N {
            let v = ended(
                &c,
                i,
                &format!("/api/v1/transactions/{id}"),
                &["signed", "failed", "rejected", "expired"],
                120,
            )
            .await;
            assert_eq!(v["state"], "rejected", "node {i}: {v}");
            assert!(v["signed_tx"].is_null());
        }

        // Single input (the large UTXO), then two inputs (the two small ones).
        assert_eq!(pay_and_verify(&c, key_id, &fund, 30_000).await, 1);
        assert_eq!(pay_and_verify(&c, key_id, &fund, 40_000).await, 2);
    }

    // The honest path raises no alert: an error line on every payment (as the close
    // of a round logged one in session 18) teaches operators to ignore alerts.
    for i in 0..N {
        let errors = c.errors_logged(i);
        assert!(
            errors.is_empty(),
            "node {i} logged errors on the honest path: {errors:#?}"
        );
    }

    // Bad requests: 4xx with a code, nothing stored, never a 5xx.
    let before = tx_count(&c, 0).await;
    let mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    for (body, code) in [
        (
            json!({ "key_id": ecdsa, "recipient": mainnet, "amount_sats": 1000 }),
            "address_wrong_network",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": 0 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": -5 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": ecdsa, "recipient": other_address().to_string(), "amount_sats": 2_100_000_000_000_001_i64 }),
            "amount_out_of_range",
        ),
        (
            json!({ "key_id": "'; DROP TABLE transactions; --", "recipient": other_address().to_string(), "amount_sats": 1000 }),
            "unknown_key",
        ),
        (
            json!({ "psbt": "not a psbt'; DELETE FROM votes; --" }),
            "psbt_malformed",
        ),
        (json!({ "psbt": "cHNidP8BAA==" }), "psbt_malformed"),
        (json!({ "key_id": ecdsa }), "invalid_request"),
    ] {
        let (status, v) = c.post_json(0, "/api/v1/transactions", &body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        tx_count(&c, 0).await,
        before,
        "nothing stored for refused requests"
    );

    more_inputs_than_selection_reads_first(&c, &frost).await;
    human_approval_holds_every_vote_until_an_approver_approves(&c, &frost, &ecdsa).await;
    for key_id in [&frost, &ecdsa] {
        bdk_built_psbt_is_signed_and_finalized_by_bdk(&c, key_id, &[70_000], 30_000, 1).await;
        bdk_built_psbt_is_signed_and_finalized_by_bdk(&c, key_id, &[30_000, 25_000], 40_000, 2)
            .await;
    }
    double_and_forged_votes_are_recorded_and_ignored(&c, &frost).await;
    restarted_nodes_sign_ecdsa_before_their_tables_are_built(&c, &frost, &ecdsa).await;
    submissions_beyond_the_turns_wait_and_every_one_is_signed(&c, &frost).await;
    payments_proposed_in_batches_are_each_decided_and_a_refused_one_stops_no_other(&c, &frost)
        .await;
    a_rolling_upgrade_proposes_alone_until_every_node_speaks_batches(&c, &frost).await;
    a_payment_whose_chosen_outputs_are_taken_before_its_reservation_selects_again(&c, &frost).await;
    a_payment_whose_view_of_the_outputs_is_stale_selects_again_from_a_fresh_read(&c, &frost).await;
    a_crash_inside_a_batch_commit_stores_nothing_of_the_batch(&c, &frost).await;
}

/// `[wallet] proposal_batch_max` (issue 21): a burst of payments goes out from the
/// leader in batches, every node handles each payment of a batch on its own (its
/// own validation, policy decision and signed vote) and sends its votes on a batch
/// in one vote batch, and the one payment its policy refuses is rejected
/// everywhere while every other one is signed everywhere. Node 2 is Byzantine: its
/// vote batches also carry a second, opposite vote of its own and forged votes (in
/// another node's name, and in its own name under a stranger's key); the honest nodes
/// record each as its violation, store none of the forged votes and count no
/// second vote.
async fn payments_proposed_in_batches_are_each_decided_and_a_refused_one_stops_no_other(
    c: &Cluster,
    frost: &str,
) {
    c.write_policy(N, &[frost], 30_000);
    c.kill_node(0);
    c.restart_node_with_env(
        0,
        &[
            ("SIGNER__WALLET__PROPOSAL_BATCH_MAX", "8"),
            ("SIGNER__WALLET__PROPOSAL_BATCH_LINGER_MS", "200"),
        ],
    );
    let bad = c.node(2).id.clone();
    c.kill_node(2);
    c.restart_node_with_env(
        2,
        &[
            ("SIGNER_FAULT_DOUBLE_VOTE", "1"),
            ("SIGNER_FAULT_FORGE_VOTES", "1"),
        ],
    );
    c.wait_ready(N).await;
    fund(c, frost, &[100_000; 12]).await;
    // Eleven payments within the policy's 30,000 sats per transaction, one above.
    let amounts: Vec<u64> = (0..12)
        .map(|i| if i == 5 { 50_000 } else { 10_000 })
        .collect();
    let bodies: Vec<_> = amounts.iter().map(|&a| pay(frost, a)).collect();
    let answers = futures::future::join_all(
        bodies
            .iter()
            .map(|b| c.post_json(0, "/api/v1/transactions", b)),
    )
    .await;
    let mut ids = Vec::new();
    for ((status, v), amount) in answers.into_iter().zip(&amounts) {
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        if *amount > 30_000 {
            ends_as(c, &[0, 1, 2], &id, "rejected").await;
        } else {
            signed_everywhere(c, &[0, 1, 2], &id, 240).await;
        }
        ids.push(id);
    }
    let text = c.get(0, "/metrics", c.admin()).await.text().await.unwrap();
    let (sent, in_batches) = (
        metric(&text, "signer_tx_proposal_batches_sent_total"),
        metric(&text, "signer_tx_batched_proposals_sent_total"),
    );
    assert!(
        sent >= 1 && in_batches >= 2 * sent,
        "the leader proposed in batches: {sent} batches, {in_batches} payments"
    );
    for i in 1..N {
        let text = c.get(i, "/metrics", c.admin()).await.text().await.unwrap();
        assert_eq!(
            metric(&text, "signer_tx_proposal_batches_received_total"),
            sent,
            "node {i} handled every batch"
        );
    }
    for i in 0..N {
        let text = c.get(i, "/metrics", c.admin()).await.text().await.unwrap();
        let (out, got) = (
            metric(&text, "signer_tx_vote_batches_sent_total"),
            metric(&text, "signer_tx_vote_batches_received_total"),
        );
        assert!(out >= 1, "node {i} sent its votes in batches");
        assert!(got >= 1, "node {i} received vote batches");
    }
    // The honest nodes took node 2's extra votes out of its batches one by one.
    for i in [0, 1] {
        for kind in ["double_vote", "vote_sender_mismatch", "bad_vote_signature"] {
            c.eventually(
                &format!("node {i} records {kind} of {bad}"),
                Duration::from_secs(30),
                || async { (violations(c, i, &bad, kind).await >= 1).then_some(()) },
            )
            .await;
        }
        let db = c.db(i).await;
        for (id, amount) in ids.iter().zip(&amounts) {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT v.node_id, v.decision FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
                 WHERE r.transaction_id = $1::uuid",
            )
            .bind(id)
            .fetch_all(&db)
            .await
            .unwrap();
            let mut voters: Vec<&str> = rows.iter().map(|(v, _)| v.as_str()).collect();
            voters.sort_unstable();
            let before = voters.len();
            voters.dedup();
            assert_eq!(voters.len(), before, "node {i}: one vote per voter on {id}");
            // Every honest node votes as its policy says; the forged reject in
            // another node's name was not stored as its vote.
            let honest = if *amount > 30_000 {
                "reject"
            } else {
                "approve"
            };
            for (voter, decision) in &rows {
                if *voter != bad {
                    assert_eq!(decision, honest, "node {i} stored {voter}'s vote on {id}");
                }
            }
        }
    }
    write_policy(c, &[frost]);
    c.kill_node(0);
    c.restart_node(0);
    c.kill_node(2);
    c.restart_node(2);
    c.wait_ready(N).await;
}

/// A counter from `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} is exported"))
        .trim()
        .parse()
        .unwrap()
}

async fn metric_of(c: &Cluster, i: usize, name: &str) -> u64 {
    metric(
        &c.get(i, "/metrics", c.admin()).await.text().await.unwrap(),
        name,
    )
}

/// The P2P wire level node `i`'s cluster status shows for node `of`.
async fn wire_level_seen(c: &Cluster, i: usize, of: &str) -> Option<u64> {
    let s = c.get_json(i, "/api/v1/cluster/status").await;
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == of)
        .and_then(|n| n["p2p_wire_level"].as_u64())
}

/// Pays `count` payments of 10,000 sats at once through node 0; each is signed on
/// every node; returns their ids.
async fn burst_signed_everywhere(c: &Cluster, frost: &str, count: usize) -> Vec<String> {
    fund(c, frost, &vec![40_000; count]).await;
    let body = pay(frost, 10_000);
    let answers = futures::future::join_all(
        (0..count).map(|_| c.post_json(0, "/api/v1/transactions", &body)),
    )
    .await;
    let mut ids = Vec::new();
    for (status, v) in answers {
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        signed_everywhere(c, &[0, 1, 2], &id, 240).await;
        ids.push(id);
    }
    ids
}

/// A rolling upgrade (issue 21): proposal batches are on by default, but while
/// node 2 still runs the release before batch frames (fault injection plays it: it
/// offers P2P wire level 1 and drops batch frames, as that release does), the
/// leader proposes each payment alone and nobody sends node 2 a vote batch, so node
/// 2 has and votes on every payment of a burst; the leader's cluster status shows node 2 at
/// level 1. Once node 2 runs the new release, the leader learns it from the next
/// connection and proposes the next burst in batches by itself.
async fn a_rolling_upgrade_proposes_alone_until_every_node_speaks_batches(
    c: &Cluster,
    frost: &str,
) {
    let _logs = c.keep_logs_on_failure("rolling-upgrade");
    let old = c.node(2).id.clone();
    let upgraded = c.node(1).id.clone();
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__WALLET__PROPOSAL_BATCH_LINGER_MS", "200")]);
    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_WIRE_LEVEL", "1")]);
    c.wait_ready(N).await;
    let ids = burst_signed_everywhere(c, frost, 6).await;
    assert_eq!(
        metric_of(c, 0, "signer_tx_proposal_batches_sent_total").await,
        0,
        "no batch proposed while a participant speaks only level 1"
    );
    for name in [
        "signer_tx_proposal_batches_received_total",
        "signer_tx_vote_batches_received_total",
    ] {
        assert_eq!(metric_of(c, 2, name).await, 0, "node 2 got no {name}");
    }
    let db = c.db(0).await;
    for id in &ids {
        // Its vote is here: it had the proposal. (It may reject an input as spent
        // when it handles the proposal after the other two already signed.)
        c.eventually(
            &format!("node 0 has node 2's vote on {id}"),
            Duration::from_secs(60),
            || async {
                let n: (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
                     WHERE r.transaction_id = $1::uuid AND v.node_id = $2",
                )
                .bind(id)
                .bind(&old)
                .fetch_one(&db)
                .await
                .unwrap();
                (n.0 == 1).then_some(())
            },
        )
        .await;
    }
    assert_eq!(wire_level_seen(c, 0, &old).await, Some(1));
    assert_eq!(wire_level_seen(c, 0, &upgraded).await, Some(2));
    assert_eq!(wire_level_seen(c, 2, &old).await, Some(1), "its own level");

    // Node 2 upgraded: the first payment's connections carry level 2.
    c.kill_node(2);
    c.restart_node(2);
    c.wait_ready(N).await;
    burst_signed_everywhere(c, frost, 1).await;
    c.eventually(
        "node 0 sees node 2 at wire level 2",
        Duration::from_secs(60),
        || async { (wire_level_seen(c, 0, &old).await == Some(2)).then_some(()) },
    )
    .await;
    burst_signed_everywhere(c, frost, 6).await;
    let sent = metric_of(c, 0, "signer_tx_proposal_batches_sent_total").await;
    assert!(sent >= 1, "the leader proposes in batches again");
    assert_eq!(
        metric_of(c, 2, "signer_tx_proposal_batches_received_total").await,
        sent,
        "node 2 handled every batch"
    );
    c.kill_node(0);
    c.restart_node(0);
    c.wait_ready(N).await;
}

/// The comma-separated list in field `field` of the first line of node `i`'s log,
/// after byte `from`, that contains `message` (a fault's report); empty until then.
fn logged_list(c: &Cluster, i: usize, from: usize, message: &str, field: &str) -> Vec<String> {
    let log = std::fs::read(&c.node(i).log).unwrap_or_default();
    let tail = String::from_utf8_lossy(log.get(from..).unwrap_or_default()).into_owned();
    let Some(line) = tail.lines().find(|l| l.contains(message)) else {
        return Vec::new();
    };
    let at = [format!("\"{field}\":\""), format!(" {field}=")]
        .iter()
        .find_map(|p| line.find(p.as_str()).map(|at| at + p.len()))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | ','))
        .collect::<String>()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The outputs node `i` logged, after byte `from` of its log, when its intake paused
/// after coin selection (`SIGNER_FAULT_INTAKE_PAUSE_MS`); empty until then.
fn logged_selection(c: &Cluster, i: usize, from: usize) -> Vec<String> {
    logged_list(
        c,
        i,
        from,
        "pausing between coin selection and reservation",
        "selected",
    )
}

/// A payment whose chosen outputs are taken between its coin selection and its
/// reservation (issue 21's race: another leader's proposal reserves them on this
/// node meanwhile; played here by the test, which reserves them for an ended
/// transaction while node 0's intake pauses after selecting, fault
/// `SIGNER_FAULT_INTAKE_PAUSE_MS`) selects again from what is left: it is accepted
/// (not `utxo_unavailable`), signed everywhere, and spends none of the taken outputs.
async fn a_payment_whose_chosen_outputs_are_taken_before_its_reservation_selects_again(
    c: &Cluster,
    frost: &str,
) {
    let _logs = c.keep_logs_on_failure("selection-race");
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER_FAULT_INTAKE_PAUSE_MS", "2000")]);
    c.wait_ready(N).await;
    fund(c, frost, &[90_000, 90_000]).await;
    let from = std::fs::metadata(&c.node(0).log).map_or(0, |m| m.len() as usize);
    let db = c.db(0).await;
    let holder = an_ended_transaction(&db).await;
    let body = pay(frost, 10_000);
    let take = async {
        let selected = c
            .eventually(
                "node 0 selected inputs",
                Duration::from_secs(30),
                || async {
                    let s = logged_selection(c, 0, from);
                    (!s.is_empty()).then_some(s)
                },
            )
            .await;
        let taken = sqlx::query(
            "UPDATE utxos SET state = 'reserved', reserved_by = $2 \
             WHERE txid || ':' || vout = ANY($1::text[]) AND state = 'available'",
        )
        .bind(&selected)
        .bind(holder)
        .execute(&db)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(taken, selected.len() as u64, "{selected:?}");
        selected
    };
    let ((status, v), taken) = tokio::join!(c.post_json(0, "/api/v1/transactions", &body), take);
    assert_eq!(status, 202, "selected again instead of failing: {v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let tx = signed_everywhere(c, &[0, 1, 2], &id, 240).await;
    for input in &tx.input {
        assert!(
            !taken.contains(&input.previous_output.to_string()),
            "{id} spends {} taken before its reservation",
            input.previous_output
        );
    }
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log[from..].contains("selecting again"),
        "the retry is logged"
    );
    give_back(c, db, &taken, holder).await;
}

/// A transaction that ended on the node of `db`: holds outputs the tests take
/// from coin selection (as another transaction's reservation would).
async fn an_ended_transaction(db: &sqlx::PgPool) -> uuid::Uuid {
    sqlx::query_scalar(
        "SELECT id FROM transactions WHERE state IN ('signed', 'rejected', 'failed', 'expired') \
         LIMIT 1",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Makes the outputs `taken` for `holder` on node 0 (`db`) available again and
/// restarts node 0 with its plain environment.
async fn give_back(c: &Cluster, db: sqlx::PgPool, taken: &[String], holder: uuid::Uuid) {
    sqlx::query(
        "UPDATE utxos SET state = 'available', reserved_by = NULL \
         WHERE txid || ':' || vout = ANY($1::text[]) AND reserved_by = $2",
    )
    .bind(taken)
    .bind(holder)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    c.kill_node(0);
    c.restart_node(0);
    c.wait_ready(N).await;
}

/// The leader's in-memory view of a key's largest selectable outputs (issue 21,
/// `[wallet] selection_view_ttl_ms`): outputs of the view reserved by another
/// path after the read (another leader's proposal on this node; played here by
/// the test, as in the sub-case above) cost a payment one reselection from a
/// fresh read, never a refused payment or an output reserved twice. Without the
/// fresh read, the payment would try the view's next stale outputs and be refused
/// after its three attempts.
async fn a_payment_whose_view_of_the_outputs_is_stale_selects_again_from_a_fresh_read(
    c: &Cluster,
    frost: &str,
) {
    let _logs = c.keep_logs_on_failure("selection-view");
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__WALLET__SELECTION_VIEW_TTL_MS", "60000")]);
    c.wait_ready(N).await;
    let funded = fund(c, frost, &[80_000, 80_000, 80_000, 80_000, 23_456]).await;
    let kept = bitcoin::OutPoint::new(funded.compute_txid(), 4).to_string();
    // The first payment reads the view (and takes its largest output).
    let first = submit(c, 0, &pay(frost, 10_000)).await;
    let db = c.db(0).await;
    let holder = an_ended_transaction(&db).await;
    // Every other selectable output of the key is taken after the read.
    let taken: Vec<String> = sqlx::query_scalar(
        "UPDATE utxos SET state = 'reserved', reserved_by = $3 \
         WHERE key_id = $1 AND state = 'available' AND origin = 'import' \
           AND txid || ':' || vout <> $2 \
         RETURNING txid || ':' || vout",
    )
    .bind(frost)
    .bind(&kept)
    .bind(holder)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(taken.len() >= 3, "stale outputs in the view: {taken:?}");
    let from = std::fs::metadata(&c.node(0).log).map_or(0, |m| m.len() as usize);
    let before = metric_of(c, 0, "signer_tx_selection_reads_total").await;
    let (status, v) = c
        .post_json(0, "/api/v1/transactions", &pay(frost, 10_000))
        .await;
    assert_eq!(status, 202, "selected again from a fresh read: {v}");
    assert_eq!(
        metric_of(c, 0, "signer_tx_selection_reads_total").await,
        before + 1,
        "the first attempt chose from the view, the second read again"
    );
    let id = v["id"].as_str().unwrap().to_owned();
    let tx = signed_everywhere(c, &[0, 1, 2], &id, 240).await;
    let inputs: Vec<String> = tx
        .input
        .iter()
        .map(|i| i.previous_output.to_string())
        .collect();
    assert_eq!(inputs, [kept], "{id} spends the one output left");
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log[from..].contains("selecting again"),
        "the reselection is logged"
    );
    signed_everywhere(c, &[0, 1, 2], &first, 240).await;
    give_back(c, db, &taken, holder).await;
}

/// The ids node `i` logged, from byte `from` of its log, when it killed itself
/// before a batch commit (`SIGNER_FAULT_KILL_BEFORE_COMMIT`); empty until then.
fn logged_kill(c: &Cluster, i: usize, from: usize) -> Vec<String> {
    logged_list(c, i, from, "killing this node before a batch commit", "ids")
}

/// Waits until node `i` (process `pid`) killed itself before committing a batch
/// write at `point`, logged after byte `from`; the ids of that batch (two or more).
async fn killed_in(c: &Cluster, i: usize, pid: u32, from: usize, point: &str) -> Vec<String> {
    let killed = c
        .eventually(
            &format!("node {i} killed itself before committing its {point}"),
            Duration::from_secs(60),
            || async {
                let k = logged_kill(c, i, from);
                (!k.is_empty() && cluster_tests::proc_state(pid).is_none()).then_some(k)
            },
        )
        .await;
    assert!(killed.len() >= 2, "{point}: a batch: {killed:?}");
    killed
}

/// Rows of `table` on node `i`'s database whose uuid column `column` is one of `ids`.
async fn rows_about(c: &Cluster, i: usize, table: &str, column: &str, ids: &[String]) -> i64 {
    let db = c.db(i).await;
    // Table and column names are this file's constants.
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE {column}::text = ANY($1::text[])"
    )))
    .bind(ids)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    n
}

/// The two counts `sql` (of the ids bound as `$1`) gives on node `i`'s database.
async fn two_counts(c: &Cluster, i: usize, sql: &'static str, ids: &[String]) -> (i64, i64) {
    let db = c.db(i).await;
    let counts = sqlx::query_as(sql).bind(ids).fetch_one(&db).await.unwrap();
    db.close().await;
    counts
}

/// Votes by `voter` on the transactions `ids` stored on node `i`.
async fn votes_of_on(c: &Cluster, i: usize, voter: &str, ids: &[String]) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
         WHERE r.transaction_id::text = ANY($1::text[]) AND v.node_id = $2",
    )
    .bind(ids)
    .bind(voter)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    n
}

/// A crash in the middle of a batch commit (issue 21, docs/BATCHING.md; the kill
/// matrix's batch case): node 2 SIGKILLs itself after every statement of a batch
/// write ran and before its commit (`SIGNER_FAULT_KILL_BEFORE_COMMIT`), first while
/// recording a proposal batch, then while writing its own votes on one. Nothing of
/// that write is stored on node 2: for a proposal batch no row, round or
/// reservation of any of its payments; for its votes no vote, approval claim,
/// own-approval outflow or vote audit record. None of its votes on them reached the others (a
/// vote is durable before it leaves), the two others sign every payment, and
/// after its restart node 2's audit chain verifies and none of the batch is left in
/// flight or holding an input. Then the leader is killed the same way before it
/// commits a group of submissions: no submitter of that group was answered 202, and
/// no node stores anything of it.
async fn a_crash_inside_a_batch_commit_stores_nothing_of_the_batch(c: &Cluster, frost: &str) {
    let _logs = c.keep_logs_on_failure("batch-commit-crash");
    let victim = c.node(2).id.clone();
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__WALLET__PROPOSAL_BATCH_LINGER_MS", "200")]);
    for point in ["proposal_batch", "own_votes"] {
        c.kill_node(2);
        c.restart_node_with_env(2, &[("SIGNER_FAULT_KILL_BEFORE_COMMIT", point)]);
        c.wait_ready(N).await;
        let pid = c.node_pid(2).unwrap();
        let from = std::fs::metadata(&c.node(2).log).map_or(0, |m| m.len() as usize);
        fund(c, frost, &[40_000; 6]).await;
        let body = pay(frost, 10_000);
        let answers = futures::future::join_all(
            (0..6).map(|_| c.post_json(0, "/api/v1/transactions", &body)),
        )
        .await;
        let mut ids = Vec::new();
        for (status, v) in answers {
            assert_eq!(status, 202, "{v}");
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        let killed = killed_in(c, 2, pid, from, point).await;
        assert!(
            killed.iter().all(|k| ids.contains(k)),
            "{killed:?} of {ids:?}"
        );
        for id in &ids {
            signed_everywhere(c, &[0, 1], id, 240).await;
        }
        if point == "proposal_batch" {
            for (table, column) in [
                ("transactions", "id"),
                ("voting_rounds", "transaction_id"),
                ("utxos", "reserved_by"),
                ("audit_log", "subject"),
            ] {
                assert_eq!(
                    rows_about(c, 2, table, column, &killed).await,
                    0,
                    "{point}: node 2 stored {table} rows of the killed batch"
                );
            }
        } else {
            // The batch's record committed before; its votes' write did not.
            assert_eq!(
                rows_about(c, 2, "transactions", "id", &killed).await,
                i64::try_from(killed.len()).unwrap()
            );
            assert_eq!(
                rows_about(c, 2, "approved_txids", "transaction_id", &killed).await,
                0,
                "{point}: node 2 stored approval claims of the killed batch"
            );
            // An outflow counted because node 2 saw the others' quorum before it
            // died is not part of its votes' write; its own approvals' are.
            let (own, audited) = two_counts(
                c,
                2,
                "SELECT (SELECT count(*) FROM outflows WHERE transaction_id::text = ANY($1::text[]) \
                         AND counted_for = 'own_approve'), \
                        (SELECT count(*) FROM audit_log WHERE subject = ANY($1::text[]) \
                         AND action = 'tx.vote')",
                &killed,
            )
            .await;
            assert_eq!(
                (own, audited),
                (0, 0),
                "{point}: own-approval outflows and vote audit records of the killed batch"
            );
        }
        for i in [0, 1, 2] {
            assert_eq!(
                votes_of_on(c, i, &victim, &killed).await,
                0,
                "{point}: node {i} holds a vote of node 2 on the killed batch"
            );
        }
        c.restart_node(2);
        c.wait_ready(N).await;
        let v = c.get_json(2, "/api/v1/audit/verify").await;
        assert_eq!(v["valid"], true, "{point}: node 2's audit chain: {v}");
        let (open, holding) = two_counts(
            c,
            2,
            "SELECT (SELECT count(*) FROM transactions WHERE id::text = ANY($1::text[]) \
                     AND state IN ('pending', 'voting', 'approved', 'signing')), \
                    (SELECT count(*) FROM utxos WHERE reserved_by::text = ANY($1::text[]) \
                     AND state = 'reserved')",
            &killed,
        )
        .await;
        assert_eq!((open, holding), (0, 0), "{point}: after node 2's restart");
    }

    // The leader killed before it commits a group of submissions: none of the
    // group was answered 202, and nothing of it is stored anywhere.
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER_FAULT_KILL_BEFORE_COMMIT", "intake_group")]);
    c.wait_ready(N).await;
    let pid = c.node_pid(0).unwrap();
    let from = std::fs::metadata(&c.node(0).log).map_or(0, |m| m.len() as usize);
    fund(c, frost, &[40_000; 8]).await;
    let body = pay(frost, 10_000);
    // The submissions cut off by the kill get no answer at all.
    let answers = futures::future::join_all((0..8).map(|_| async {
        match c
            .client()
            .post(c.url(0, "/api/v1/transactions"))
            .bearer_auth(c.admin())
            .json(&body)
            .send()
            .await
        {
            Ok(r) => (
                r.status().as_u16(),
                r.json().await.unwrap_or(serde_json::Value::Null),
            ),
            Err(_) => (0, serde_json::Value::Null),
        }
    }))
    .await;
    let killed = killed_in(c, 0, pid, from, "intake_group").await;
    for (status, v) in &answers {
        if *status == 202 {
            let id = v["id"].as_str().unwrap().to_owned();
            assert!(!killed.contains(&id), "{id} answered 202 but not committed");
        }
    }
    for i in [0, 1, 2] {
        for (table, column) in [
            ("transactions", "id"),
            ("utxos", "reserved_by"),
            ("audit_log", "subject"),
        ] {
            assert_eq!(
                rows_about(c, i, table, column, &killed).await,
                0,
                "intake group: node {i} stored {table} rows of the killed group"
            );
        }
    }
    c.restart_node(0);
    c.wait_ready(N).await;
    let v = c.get_json(0, "/api/v1/audit/verify").await;
    assert_eq!(v["valid"], true, "node 0's audit chain: {v}");
}

/// `[api] max_concurrent_submissions`: a burst of payments beyond the intake's
/// turns waits for them (nothing refused), never more than the turns are validated
/// at once (`/metrics` sampled through the burst), and every one is signed.
async fn submissions_beyond_the_turns_wait_and_every_one_is_signed(c: &Cluster, frost: &str) {
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__API__MAX_CONCURRENT_SUBMISSIONS", "1")]);
    c.wait_ready(N).await;
    fund(c, frost, &[40_000; 6]).await;
    let body = pay(frost, 10_000);
    let burst =
        futures::future::join_all((0..6).map(|_| c.post_json(0, "/api/v1/transactions", &body)));
    let sampling = async {
        let mut seen = Vec::new();
        for _ in 0..400 {
            let text = c.get(0, "/metrics", c.admin()).await.text().await.unwrap();
            let n: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("signer_api_submissions_in_progress "))
                .expect("the gauge is exported")
                .trim()
                .parse()
                .unwrap();
            seen.push(n);
            if seen.iter().filter(|&&n| n == 0).count() > 20 && seen.contains(&1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    };
    let (answers, seen) = tokio::join!(burst, sampling);
    assert!(
        seen.iter().all(|&n| n <= 1),
        "more than one turn used: {seen:?}"
    );
    assert!(
        seen.contains(&1),
        "no submission seen in its turn: {seen:?}"
    );
    for (status, v) in answers {
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap();
        let v = ended(
            c,
            0,
            &format!("/api/v1/transactions/{id}"),
            &["signed", "failed", "rejected", "expired"],
            120,
        )
        .await;
        assert_eq!(v["state"], "signed", "{v}");
    }
}

/// Nodes just restarted sign an ECDSA payment with their plain shares while their
/// warm-up has not built the library's precomputed tables (held back here by fault
/// injection, as a loaded host takes a minute): a node never makes its co-signers
/// wait for its tables (before, a restarted signer joined a minute late and the
/// others' runs stalled).
async fn restarted_nodes_sign_ecdsa_before_their_tables_are_built(
    c: &Cluster,
    frost: &str,
    ecdsa: &str,
) {
    write_policy(c, &[frost, ecdsa]);
    for i in [1, 2] {
        c.kill_node(i);
        c.restart_node_with_env(i, &[("SIGNER_FAULT_PRECOMPUTE_DELAY_SECS", "3600")]);
    }
    // The leader without its presignature pool: every input runs the full protocol,
    // which is what needs the shares.
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__PRESIGN__ENABLED", "false")]);
    c.wait_ready(N).await;
    let f = fund(c, ecdsa, &[60_000]).await;
    let (id, _) = pay_and_verify_on(c, &[0, 1, 2], ecdsa, &f, 20_000).await;
    let mut signed_by_restarted = 0;
    for i in [1, 2] {
        let k = c.key_entry(i, ecdsa).await;
        assert_eq!(k["signing_ready"], true, "node {i}: {k}");
        assert_eq!(k["precomputed_tables"], false, "node {i}: {k}");
        signed_by_restarted += c.audit_count(i, "tx.sign_input", &id).await;
    }
    assert!(
        signed_by_restarted >= 1,
        "a restarted node took part in signing"
    );
    // Without the fault, the warm-up builds the tables and swaps them in.
    c.eventually(
        "node 0 builds its precomputed tables",
        Duration::from_secs(180),
        || async { (c.key_entry(0, ecdsa).await["precomputed_tables"] == true).then_some(()) },
    )
    .await;
    assert_eq!(
        c.key_entry(0, frost).await["precomputed_tables"],
        serde_json::Value::Null,
        "Taproot keys have no such tables"
    );
}

/// Coin selection reads a key's 32 largest outputs first and all selectable ones
/// (up to `max_inputs`) only when those do not cover the payment: a payment that
/// needs more than 32 of 40 small outputs is built from the second read and signed; one that
/// all 40 cannot cover is refused with all 40 counted.
async fn more_inputs_than_selection_reads_first(c: &Cluster, frost: &str) {
    let values: Vec<u64> = (0..40).map(|i| 1_000 + i).collect();
    let funds = fund(c, frost, &values).await;
    let (status, v) = c
        .post_json(0, "/api/v1/transactions", &pay(frost, 60_000))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("insufficient_funds")),
        "{v}"
    );
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("40 usable outputs"), "{v}");
    let (_, inputs) = pay_and_verify_on(c, &[0, 1, 2], frost, &funds, 31_000).await;
    assert!(inputs > 32, "{inputs} inputs");
}

/// `[[scope.approvals]]` with approver identities: an approver (name, role, Ed25519
/// key) is active only once the admins of `t` nodes endorsed it; no node votes until
/// it approves; an approval is its signature over (transaction id, txid), verified
/// by every node; an admin is not an approver, an operator cannot approve, a
/// signature over another transaction is refused; a node relaying forged approvals
/// (`SIGNER_FAULT_FORGE_APPROVAL`) is recorded by every other node and the forgeries
/// count for nothing.
async fn human_approval_holds_every_vote_until_an_approver_approves(
    c: &Cluster,
    frost: &str,
    ecdsa: &str,
) {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let relay = c.node(2).id.clone();
    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_FORGE_APPROVAL", "1")]);
    c.wait_ready(N).await;
    let alice = Ed25519KeyPair::from_seed_unchecked(&[42; 32]).unwrap();
    let register = json!({
        "name": "alice",
        "role": "approver",
        "public_key": hex::encode(alice.public_key().as_ref()),
    });
    let (status, v) = c.post_json(0, "/api/v1/approvers", &register).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["approver"]["active"], false,
        "one node's admin is not a quorum: {v}"
    );

    c.write_policy_with(
        N,
        &[frost, ecdsa],
        1_000_000,
        "[[scope.approvals]]\nrequired = 1\nroles = [\"approver\"]\n",
    );
    let fund = fund(c, frost, &[50_000]).await;
    let body = pay(frost, 10_000);
    let id = submit(c, 0, &body).await;
    for i in 0..N {
        let db = c.db(i).await;
        c.eventually(
            &format!("node {i} holds its vote for approvals"),
            Duration::from_secs(60),
            || {
                let db = db.clone();
                let id = id.clone();
                async move {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM audit_log \
                         WHERE action = 'tx.awaiting_approval' AND subject = $1",
                    )
                    .bind(&id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                    (n == 1).then_some(())
                }
            },
        )
        .await;
        let (votes,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(votes, 0, "node {i} voted before the approval");
    }
    let tx_path = format!("/api/v1/transactions/{id}");
    let txid: bitcoin::Txid = c.get_ok(0, &tx_path).await.unwrap()["unsigned_txid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let sign = |tx: uuid::Uuid| hex::encode(alice.sign(&vote::approval_message(tx, txid)).as_ref());
    let approval = json!({ "approver": "alice", "signature": sign(uuid) });
    let path = format!("{tx_path}/approvals");

    // Not yet endorsed by a quorum of nodes: refused.
    let approver1 = c.create_token(1, "tx-approver", "approver").await;
    let (status, v) = c.post_json_as(1, &path, &approval, &approver1).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("unknown_approver")),
        "{v}"
    );
    // The second node's admin endorses the same identity: active on every node.
    let (status, v) = c.post_json(1, "/api/v1/approvers", &register).await;
    assert_eq!(
        (status, &v["approver"]["active"]),
        (201, &json!(true)),
        "{v}"
    );
    for i in 0..N {
        c.eventually(
            &format!("node {i} knows alice as active"),
            Duration::from_secs(30),
            || async {
                let v = c.get_ok(i, "/api/v1/approvers").await?;
                v["approvers"]
                    .as_array()?
                    .iter()
                    .any(|a| a["approver"] == "alice" && a["active"] == true)
                    .then_some(())
            },
        )
        .await;
    }
    // An admin is not an approver; an operator may not approve at all.
    let (status, v) = c.post_json(0, &path, &approval).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("approver_role_required")),
        "{v}"
    );
    let operator = c.create_token(1, "tx-operator", "operator").await;
    let (status, v) = c.post_json_as(1, &path, &approval, &operator).await;
    assert_eq!(status, 403, "{v}");
    // A signature over another transaction is not an approval of this one.
    let other = json!({ "approver": "alice", "signature": sign(uuid::Uuid::new_v4()) });
    let (status, v) = c.post_json_as(1, &path, &other, &approver1).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("bad_approval_signature")),
        "{v}"
    );

    // Alice approves through node 2, which also relays two forgeries.
    let approver2 = c.create_token(2, "tx-approver", "approver").await;
    let (status, v) = c.post_json_as(2, &path, &approval, &approver2).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approvals"].as_array().unwrap().len(), 1, "{v}");
    let (status, v) = c.post_json_as(2, &path, &approval, &approver2).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_approved")),
        "{v}"
    );
    let v = ends_as(c, &[0, 1, 2], &id, "signed").await;
    let tx: Transaction = encode::deserialize_hex(v["signed_tx"].as_str().unwrap()).unwrap();
    verify_consensus(&tx, &[&fund]);
    // Every node holds alice's approval, with the signature it verified, and nothing
    // else; the others recorded node 2's forgeries.
    for i in 0..N {
        let v = c.get_ok(i, &tx_path).await.unwrap();
        let a = v["approvals"].as_array().unwrap();
        assert_eq!(a.len(), 1, "node {i}: {v}");
        assert_eq!(
            (&a[0]["approver"], &a[0]["role"], &a[0]["via_node"]),
            (&json!("alice"), &json!("approver"), &json!(relay)),
            "node {i}: {v}"
        );
    }
    // One person with two credentials: an operator token named alice submits; the
    // approver alice cannot approve that payment (the initiator's identity travels
    // with the proposal, so every node's policy would ignore it too).
    let alice_operator = c.create_token(0, "alice", "operator").await;
    let _fund2 = cluster_tests::wallet::fund(c, frost, &[50_000]).await;
    let (status, v) = c
        .post_json_as(
            0,
            "/api/v1/transactions",
            &pay(frost, 10_000),
            &alice_operator,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id2 = v["id"].as_str().unwrap().to_owned();
    let tx2_path = format!("/api/v1/transactions/{id2}");
    let txid2: bitcoin::Txid = c
        .eventually(
            "node 1 votes on the second payment",
            Duration::from_secs(60),
            || async {
                c.get_ok(1, &tx2_path).await?["unsigned_txid"]
                    .as_str()?
                    .parse()
                    .ok()
            },
        )
        .await;
    let uuid2 = uuid::Uuid::parse_str(&id2).unwrap();
    let own = json!({
        "approver": "alice",
        "signature": hex::encode(alice.sign(&vote::approval_message(uuid2, txid2)).as_ref()),
    });
    let (status, v) = c
        .post_json_as(1, &format!("{tx2_path}/approvals"), &own, &approver1)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("self_approval")),
        "{v}"
    );

    for i in 0..2 {
        c.eventually(
            &format!("node {i} records the forged approvals"),
            Duration::from_secs(30),
            || async { (violations(c, i, &relay, "forged_approval").await >= 2).then_some(()) },
        )
        .await;
    }
    write_policy(c, &[frost, ecdsa]);
}

/// A PSBT built by BDK for the exported descriptors is voted on and signed by the
/// cluster; BDK finalizes the cluster's signed PSBT, and consensus accepts it.
async fn bdk_built_psbt_is_signed_and_finalized_by_bdk(
    c: &Cluster,
    key_id: &str,
    values: &[u64],
    amount: u64,
    inputs: usize,
) {
    use bdk_wallet::SignOptions;

    let e = c.key_entry(0, key_id).await;
    let (mut w, funds) = cluster_tests::wallet::bdk_wallet_funded(
        e["receive_descriptor"].as_str().unwrap(),
        e["change_descriptor"].as_str().unwrap(),
        values,
    );
    // The node proves every input's amount from an output it imported (BDK gives
    // the full previous transaction of P2WPKH inputs only; SECURITY.md, "Input
    // amounts").
    for tx in &funds {
        cluster_tests::wallet::import(c, tx).await;
    }
    let mut b = w.build_tx();
    b.add_recipient(other_address().script_pubkey(), Amount::from_sat(amount))
        .fee_rate(bitcoin::FeeRate::from_sat_per_vb_u32(2));
    let psbt = b.finish().unwrap();
    assert_eq!(psbt.inputs.len(), inputs);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let id = submit(c, 0, &json!({ "psbt": b64 })).await;
    let v = ends_as(c, &[0, 1, 2], &id, "signed").await;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["signed_psbt"].as_str().unwrap())
        .unwrap();
    let mut signed = bitcoin::Psbt::deserialize(&raw).unwrap();
    assert!(
        w.finalize_psbt(&mut signed, SignOptions::default())
            .unwrap(),
        "BDK finalizes the cluster's signatures"
    );
    let tx = signed.extract_tx().unwrap();
    let node_tx: Transaction = encode::deserialize_hex(v["signed_tx"].as_str().unwrap()).unwrap();
    assert_eq!(
        tx.compute_wtxid(),
        node_tx.compute_wtxid(),
        "same final transaction"
    );
    let fund_refs: Vec<&Transaction> = funds.iter().collect();
    verify_consensus(&tx, &fund_refs);
}

async fn violations(c: &Cluster, i: usize, node: &str, kind: &str) -> i64 {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM byzantine_violations WHERE node_id = $1 AND violation_type = $2",
    )
    .bind(node)
    .bind(kind)
    .fetch_one(&db)
    .await
    .unwrap();
    n
}

/// Node 2 double-votes, then forges votes: honest nodes record each violation, do not
/// count the forged votes, and still sign with the honest quorum.
async fn double_and_forged_votes_are_recorded_and_ignored(c: &Cluster, frost: &str) {
    let bad = c.node(2).id.clone();
    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_DOUBLE_VOTE", "1")]);
    c.wait_ready(N).await;
    let fund1 = fund(c, frost, &[60_000]).await;
    pay_and_verify_on(c, &[0, 1, 2], frost, &fund1, 10_000).await;
    for i in 0..2 {
        c.eventually(
            &format!("node {i} records the double vote"),
            Duration::from_secs(30),
            || async { (violations(c, i, &bad, "double_vote").await >= 1).then_some(()) },
        )
        .await;
    }

    c.kill_node(2);
    c.restart_node_with_env(2, &[("SIGNER_FAULT_FORGE_VOTES", "1")]);
    c.wait_ready(N).await;
    let fund2 = fund(c, frost, &[60_000]).await;
    let (id, _) = pay_and_verify_on(c, &[0, 1, 2], frost, &fund2, 10_000).await;
    for i in 0..2 {
        for kind in ["vote_sender_mismatch", "bad_vote_signature"] {
            c.eventually(
                &format!("node {i} records {kind}"),
                Duration::from_secs(30),
                || async { (violations(c, i, &bad, kind).await >= 1).then_some(()) },
            )
            .await;
        }
        // The rejection forged in another node's name was not stored as its vote.
        let db = c.db(i).await;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT v.node_id, v.decision FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1::uuid",
        )
        .bind(&id)
        .fetch_all(&db)
        .await
        .unwrap();
        for (voter, decision) in &rows {
            assert_eq!(
                decision, "approve",
                "node {i} stored {voter}'s vote as {decision}"
            );
        }
    }
    c.kill_node(2);
    c.restart_node(2);
    c.wait_ready(N).await;
}
