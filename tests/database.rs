//! Per-node PostgreSQL schema: migrations, state machine, vote uniqueness,
//! concurrency, audit append-only. Runs against a real 1-node dev cluster's database.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use cluster_tests::Cluster;
use signer::audit::AuditEntry;
use signer::store::audit::AuditOf;
use signer::store::transactions::{NewTransaction, SessionClaim, SigningEntry};
use signer::store::votes::NewVote;
use signer::store::{Store, StoreError};
use uuid::Uuid;

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start(1, 1))
}

async fn store() -> Store {
    Store::connect(&cluster().node(0).database_url, 20)
        .await
        .unwrap()
}

fn new_tx() -> NewTransaction {
    NewTransaction {
        id: Uuid::new_v4(),
        key_id: Some("k1".into()),
        recipient: Some("bcrt1qexample".into()),
        amount_sats: Some(10_000),
        fee_sats: Some(200),
        psbt: None,
        initiator: "test".into(),
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_create_every_table() {
    let s = store().await;
    // The node applied them at start; applying again is a no-op.
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    for t in [
        "transactions",
        "outflows",
        "signing_sessions",
        "voting_rounds",
        "votes",
        "audit_log",
        "dkg_ceremonies",
        "key_shares",
        "aux_info",
        "presignatures",
        "byzantine_violations",
        "node_health",
        "api_tokens",
    ] {
        assert!(names.contains(&t), "table {t} missing; have {names:?}");
    }
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(applied, signer::store::MIGRATOR.iter().count() as i64);
}

#[tokio::test]
async fn valid_transitions_pass_and_invalid_ones_are_rejected_by_the_database() {
    let s = store().await;
    let tx = new_tx();
    s.insert_transaction(&tx).await.unwrap();
    s.transition_transaction(tx.id, "voting", None)
        .await
        .unwrap();
    s.transition_transaction(tx.id, "approved", None)
        .await
        .unwrap();
    // approved -> pending is not allowed.
    let err = s
        .transition_transaction(tx.id, "pending", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidTransition(ref m) if m.contains("approved -> pending")),
        "{err}"
    );
    // Into `signed` only with the signed transaction (CHECK constraint, so the state
    // guard let the move itself pass): from approved (a node that did not sign
    // records the result, migration 0020) and from signing.
    for from in ["approved", "signing"] {
        if from == "signing" {
            s.transition_transaction(tx.id, "signing", None)
                .await
                .unwrap();
        }
        let err = s
            .transition_transaction(tx.id, "signed", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("transactions_signed_has_tx"),
            "from {from}: {err}"
        );
    }
    // A byzantine abort from signing is allowed and final.
    s.transition_transaction(tx.id, "aborted_byzantine", Some("bad partial signature"))
        .await
        .unwrap();
    let err = s
        .transition_transaction(tx.id, "signing", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTransition(_)), "{err}");
    let row = s.get_transaction(tx.id).await.unwrap();
    assert_eq!(row.state, "aborted_byzantine");
    assert_eq!(row.failure_reason.as_deref(), Some("bad partial signature"));
}

#[tokio::test]
async fn a_transaction_cannot_be_inserted_in_a_later_state_nor_with_a_bad_state() {
    let s = store().await;
    let err =
        sqlx::query("INSERT INTO transactions (id, state, initiator) VALUES ($1, 'signed', 'x')")
            .bind(Uuid::new_v4())
            .execute(s.pool())
            .await
            .unwrap_err();
    assert!(err.to_string().contains("start as pending"), "{err}");
    let tx = new_tx();
    s.insert_transaction(&tx).await.unwrap();
    let err = s
        .transition_transaction(tx.id, "teleported", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("transactions_state_valid")
            || err.to_string().contains("transition"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_vote_by_the_same_node_in_a_round_is_rejected() {
    let s = store().await;
    let tx = new_tx();
    s.insert_transaction(&tx).await.unwrap();
    let round = Uuid::new_v4();
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(60);
    s.create_round(round, tx.id, 1, 3, 5, deadline)
        .await
        .unwrap();
    let vote = |node: &str, decision: &str| NewVote {
        round_id: round,
        node_id: node.into(),
        decision: decision.into(),
        reasons: serde_json::json!([]),
        policy_hash: Some("ab".into()),
        signature: vec![1, 2, 3],
    };
    s.record_vote(&vote("node-1", "approve")).await.unwrap();
    s.record_vote(&vote("node-2", "approve")).await.unwrap();
    let err = s.record_vote(&vote("node-1", "reject")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate { what: "vote", .. }),
        "{err}"
    );
    let t = s.tally(round).await.unwrap();
    assert_eq!((t.approve, t.reject), (2, 0));
    // Deleting the transaction cascades to its rounds and votes.
    sqlx::query("DELETE FROM transactions WHERE id = $1")
        .bind(tx.id)
        .execute(s.pool())
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM votes WHERE round_id = $1")
        .bind(round)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn one_hundred_concurrent_inserts_all_land() {
    let s = store().await;
    let txs: Vec<NewTransaction> = (0..100).map(|_| new_tx()).collect();
    let results = futures::future::join_all(txs.iter().map(|t| {
        let s = s.clone();
        async move { s.insert_transaction(t).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let ids: Vec<Uuid> = txs.iter().map(|t| t.id).collect();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM transactions WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(n, 100);
}

#[tokio::test]
async fn rolled_back_transaction_leaves_nothing_and_committed_one_persists() {
    let s = store().await;
    let id = Uuid::new_v4();
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO transactions (id, initiator) VALUES ($1, 'x')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(matches!(
        s.get_transaction(id).await,
        Err(StoreError::NotFound { .. })
    ));
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO transactions (id, initiator) VALUES ($1, 'x')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_transaction(id).await.unwrap().state, "pending");
}

#[tokio::test]
async fn state_queries_use_the_state_index() {
    let s = store().await;
    let mut conn = s.pool().acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<(String,)> =
        sqlx::query_as("EXPLAIN SELECT id FROM transactions WHERE state = 'pending'")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let plan: String = plan.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n");
    assert!(plan.contains("idx_transactions_state"), "{plan}");
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    let s = store().await;
    s.audit(
        "node-1",
        signer::audit::AuditEntry::new("test", "test.append"),
    )
    .await
    .unwrap();
    let err = sqlx::query("UPDATE audit_log SET action = 'x'")
        .execute(s.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(s.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn concurrent_audit_appends_form_one_unbroken_chain() {
    let s = store().await;
    let results = futures::future::join_all((0..50).map(|i| {
        let s = s.clone();
        async move {
            s.audit(
                "node-1",
                signer::audit::AuditEntry::new("test", "test.concurrent").subject(i.to_string()),
            )
            .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    let (verified, _, err) = s.verify_audit_chain().await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert!(verified >= 50);
}

/// An append chains onto the real head whatever this process last appended: after
/// an append whose transaction rolled back, and after other writers (another node
/// id in this process, and the running node itself) moved the head; the whole
/// chain verifies.
#[tokio::test]
async fn audit_appends_chain_onto_the_real_head_after_a_rollback_and_other_writers() {
    use signer::audit::AuditEntry;
    let s = store().await;
    let me = "node-hint";
    let first = s
        .audit(me, AuditEntry::new("test", "test.hint"))
        .await
        .unwrap();
    let mut tx = s.pool().begin().await.unwrap();
    let gone = signer::store::audit::append_audit(
        &mut tx,
        me,
        AuditEntry::new("test", "test.rolled_back"),
    )
    .await
    .unwrap();
    assert!(gone.seq > first.seq);
    tx.rollback().await.unwrap();
    let after_rollback = s
        .audit(me, AuditEntry::new("test", "test.hint"))
        .await
        .unwrap();
    assert_ne!(
        after_rollback.prev_hash, gone.hash,
        "a rolled-back record is never a link"
    );
    s.audit("node-other", AuditEntry::new("test", "test.hint"))
        .await
        .unwrap();
    let last = s
        .audit(me, AuditEntry::new("test", "test.hint"))
        .await
        .unwrap();
    // What each append returned is what is stored (the running node and other
    // tests append concurrently: the records need not be adjacent).
    for r in [&first, &after_rollback, &last] {
        let (hash, prev): (Vec<u8>, Vec<u8>) =
            sqlx::query_as("SELECT hash, prev_hash FROM audit_log WHERE seq = $1")
                .bind(r.seq)
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert_eq!(
            (hash.as_slice(), prev.as_slice()),
            (&r.hash[..], &r.prev_hash[..])
        );
    }
    let (_, _, err) = s.verify_audit_chain().await.unwrap();
    assert!(err.is_none(), "{err:?}");
}

/// A database administrator who replaces the append function (here: a hash that
/// does not cover the link to the previous record) cannot make the node store a
/// record it did not hash itself: the append fails, and so does the change it
/// records. (Inside one database transaction that is rolled back, so the running
/// node never sees the replaced function.)
#[tokio::test]
async fn an_audit_append_refuses_a_hash_the_node_did_not_compute() {
    use signer::audit::AuditEntry;
    let s = store().await;
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query(
        "CREATE OR REPLACE FUNCTION audit_append(lock_key bigint, domain bytea, genesis bytea, \
         p_ts timestamptz, p_node_id text, p_actor text, p_action text, p_subject text, \
         p_details jsonb, tail bytea, change_rows bigint, OUT new_seq bigint, OUT new_prev bytea, OUT new_hash bytea) \
         LANGUAGE plpgsql VOLATILE AS $$ BEGIN \
           PERFORM pg_advisory_xact_lock(lock_key); \
           SELECT l.seq + 1, l.hash INTO new_seq, new_prev FROM audit_log l ORDER BY l.seq DESC LIMIT 1; \
           new_hash := sha256(domain || tail); \
           INSERT INTO audit_log (seq, ts, node_id, actor, action, subject, details, prev_hash, hash) \
             VALUES (new_seq, p_ts, p_node_id, p_actor, p_action, p_subject, p_details, new_prev, new_hash); \
         END $$",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let err = signer::store::audit::append_audit(
        &mut tx,
        "node-dba",
        AuditEntry::new("test", "test.replaced_function"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, signer::store::StoreError::Corrupt(ref m) if m.contains("hash")),
        "{err}"
    );
    tx.rollback().await.unwrap();
    let (_, _, broken) = s.verify_audit_chain().await.unwrap();
    assert!(broken.is_none(), "{broken:?}");
}

#[tokio::test]
async fn no_other_role_can_connect_to_a_node_database() {
    // Each node has its own role; PUBLIC has no CONNECT on the database.
    let s = store().await;
    let (public_connect,): (bool,) =
        sqlx::query_as("SELECT has_database_privilege('public', current_database(), 'CONNECT')")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(!public_connect);
}

/// Velocity counting (issue 15, finding 1): an approval counts at once and keeps
/// counting once the transaction was `approved` here; it is released only when the
/// transaction ends straight from `voting` (no partial can exist); a release is
/// final, amounts are never rewritten, and no partial may start after the end.
#[tokio::test]
async fn outflows_count_from_the_approval_and_are_released_only_before_approved() {
    use signer::store::transactions::OutflowReason;
    let s = store().await;
    let key = format!("velocity-{}", Uuid::new_v4());
    let ids = voting_txs(&s, &key, 3).await;
    let (expired_voting, approved_then_expired, signing) = (ids[0], ids[1], ids[2]);
    for (id, sats) in [(expired_voting, 1_000), (approved_then_expired, 20_000)] {
        s.count_outflow(id, &key, sats, OutflowReason::OwnApprove)
            .await
            .unwrap();
    }
    s.count_outflow(signing, &key, 300_000, OutflowReason::QuorumApproved)
        .await
        .unwrap();
    // Counted once: a second count (another reason, another amount) changes nothing.
    s.count_outflow(signing, &key, 5, OutflowReason::OwnApprove)
        .await
        .unwrap();
    let other = Uuid::new_v4();
    assert_eq!(
        s.spent_in_window(&key, 3600, other, false).await.unwrap(),
        321_000
    );
    assert_eq!(
        s.spent_in_window(&key, 3600, signing, false).await.unwrap(),
        21_000,
        "the transaction under evaluation is left out"
    );

    s.transition_transaction(expired_voting, "expired", None)
        .await
        .unwrap();
    for id in [approved_then_expired, signing] {
        s.transition_transaction(id, "approved", None)
            .await
            .unwrap();
    }
    assert_eq!(
        enter(&s, Uuid::new_v4(), signing, 0).await,
        SigningEntry::Entered
    );
    assert_eq!(
        enter(&s, Uuid::new_v4(), signing, 1).await,
        SigningEntry::Entered,
        "already signing: a later input"
    );
    s.transition_transaction(approved_then_expired, "expired", None)
        .await
        .unwrap();
    assert_eq!(
        enter(&s, Uuid::new_v4(), approved_then_expired, 0).await,
        SigningEntry::Closed,
        "no partial after the end"
    );
    s.transition_transaction(signing, "failed", None)
        .await
        .unwrap();
    assert_eq!(
        s.spent_in_window(&key, 3600, other, false).await.unwrap(),
        320_000,
        "only the transaction that never left voting is released"
    );

    // A database administrator cannot quietly shrink or un-release a count.
    for sql in [
        "UPDATE outflows SET outflow_sats = 0 WHERE transaction_id = $1",
        "UPDATE outflows SET counted_at = now() - interval '2 days' WHERE transaction_id = $1",
        "DELETE FROM outflows WHERE transaction_id = $1",
    ] {
        let err = sqlx::query(sql)
            .bind(signing)
            .execute(s.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("outflows"), "{sql}: {err}");
    }
    let err = sqlx::query(
        "UPDATE outflows SET released_at = NULL, released_why = NULL WHERE transaction_id = $1",
    )
    .bind(expired_voting)
    .execute(s.pool())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("outflows"), "{err}");
    assert_eq!(
        s.spent_in_window(&key, 3600, other, false).await.unwrap(),
        320_000
    );
}

/// A signer re-checks its policy against the velocity windows as its approval saw
/// them: what was counted before the transaction's own count. Payments approved
/// while it waited to be signed (each checked against its count) do not make the
/// signer refuse it (velocity test, "0 signed" under load); a vote still sees
/// everything counted so far.
#[tokio::test]
async fn a_signing_recheck_counts_only_what_came_before_its_own_approval() {
    use signer::store::transactions::OutflowReason;
    let s = store().await;
    let key = format!("velocity-{}", Uuid::new_v4());
    let ids = voting_txs(&s, &key, 4).await;
    let (before, own, after, uncounted) = (ids[0], ids[1], ids[2], ids[3]);
    for (id, sats) in [(before, 1_000), (own, 20_000), (after, 300_000)] {
        s.count_outflow(id, &key, sats, OutflowReason::OwnApprove)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        s.spent_in_window(&key, 3600, own, true).await.unwrap(),
        1_000
    );
    assert_eq!(
        s.spent_in_window(&key, 3600, own, false).await.unwrap(),
        301_000
    );
    // Without a count of its own, everything counted is in the window.
    assert_eq!(
        s.spent_in_window(&key, 3600, uncounted, true)
            .await
            .unwrap(),
        321_000
    );
}

/// Enters signing session `session` for input `input` of `tx` with the 2-signer set
/// the session tests use.
async fn enter(s: &Store, session: Uuid, tx: Uuid, input: u32) -> SigningEntry {
    let set = ["node-1".to_owned(), "node-2".to_owned()];
    enter_with(s, session, tx, input, &set).await
}

async fn enter_with(
    s: &Store,
    session: Uuid,
    tx: Uuid,
    input: u32,
    set: &[String],
) -> SigningEntry {
    let claim = SessionClaim {
        session,
        tx,
        input,
        signers: set,
        leader: "node-1",
    };
    let audit = AuditOf::new(
        "node-1",
        AuditEntry::new("node", "tx.sign_input").subject(tx.to_string()),
    );
    s.enter_signing_session(&claim, audit).await.unwrap()
}

/// An approved transaction in this database.
async fn approved_tx(s: &Store) -> Uuid {
    let t = new_tx();
    s.insert_transaction(&t).await.unwrap();
    for to in ["voting", "approved"] {
        s.transition_transaction(t.id, to, None).await.unwrap();
    }
    t.id
}

async fn sign_input_audits(s: &Store, tx: Uuid) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_log WHERE action = 'tx.sign_input' AND subject = $1",
    )
    .bind(tx.to_string())
    .fetch_one(s.pool())
    .await
    .unwrap();
    n
}

/// A signing entry that PostgreSQL picks as a deadlock's victim is run again (found
/// by the 10,000-payment soak: one payment failed with "deadlock detected" on a
/// signer). The other side here holds the audit append lock and then wants the
/// entry's transaction row, the reverse of the entry's order; the entry waits
/// longest, so PostgreSQL's check rolls it back. Run again, it enters the session
/// once: one session row, one audit record.
#[tokio::test]
async fn a_signing_entry_rolled_back_by_a_deadlock_is_run_again_and_enters_once() {
    let s = store().await;
    let tx = approved_tx(&s).await;
    let mut other = s.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(signer::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let session = Uuid::new_v4();
    let entering = {
        let s = s.clone();
        tokio::spawn(async move { enter(&s, session, tx, 0).await })
    };
    // The entry holds the transaction's row and waits for the append lock.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let blocked = sqlx::query("UPDATE transactions SET updated_at = updated_at WHERE id = $1")
        .bind(tx)
        .execute(&mut *other)
        .await;
    // Whichever side PostgreSQL rolled back, the other goes on: this side ends
    // (commit or rollback) and releases the append lock.
    match blocked {
        Ok(_) => other.commit().await.unwrap(),
        Err(e) => {
            assert!(e.to_string().contains("deadlock"), "{e}");
            other.rollback().await.unwrap();
        }
    }
    assert_eq!(entering.await.unwrap(), SigningEntry::Entered);
    let (sessions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM signing_sessions WHERE transaction_id = $1")
            .bind(tx)
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(sessions, 1);
    assert_eq!(sign_input_audits(&s, tx).await, 1);
}

/// Records `tx` signed on a task of its own (the lock-order tests hold a lock it
/// needs while it runs).
fn signed_in_background(
    s: &Store,
    tx: Uuid,
) -> tokio::task::JoinHandle<Result<(), signer::store::StoreError>> {
    let s = s.clone();
    tokio::spawn(async move {
        s.transaction_signed("node-1", tx, b"raw", "txid", None)
            .await
    })
}

/// The move to `signed` marks the transaction's inputs spent in the same statement;
/// it must lock those UTXO rows before the audit append lock too (rows first,
/// audit record last), or a writer that holds a UTXO and waits for the append lock
/// deadlocks with it. Here another connection holds the reserved UTXO's row: while
/// the statement waits for that row, the append lock must still be free.
#[tokio::test]
async fn marking_the_inputs_spent_locks_them_before_the_append_lock() {
    let s = store().await;
    let tx = approved_tx(&s).await;
    assert_eq!(
        enter(&s, Uuid::new_v4(), tx, 0).await,
        SigningEntry::Entered
    );
    let txid = "ab".repeat(32);
    sqlx::query(
        "INSERT INTO utxos (txid, vout, key_id, value_sats, script_pubkey, chain, idx, state, reserved_by) \
         VALUES ($1, 0, 'k1', 50000, '\\x0014'::bytea, 0, 0, 'reserved', $2)",
    )
    .bind(&txid)
    .bind(tx)
    .execute(s.pool())
    .await
    .unwrap();
    let mut holder = s.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM utxos WHERE txid = $1 FOR UPDATE")
        .bind(&txid)
        .execute(&mut *holder)
        .await
        .unwrap();
    let signing = signed_in_background(&s, tx);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // The node under test shares this database and appends its own audit records,
    // holding the append lock for a moment at a time: one failed try means nothing.
    // A statement that took the lock before it waited holds it until it ends, so
    // every try over two seconds fails only then.
    let mut free = false;
    for _ in 0..40 {
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(signer::store::audit::AUDIT_LOCK_KEY)
            .fetch_one(&mut *holder)
            .await
            .unwrap();
        if got {
            free = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if free {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(signer::store::audit::AUDIT_LOCK_KEY)
            .execute(&mut *holder)
            .await
            .unwrap();
    }
    holder.rollback().await.unwrap();
    signing.await.unwrap().unwrap();
    assert!(
        free,
        "the statement took the append lock while it waited for an input's row"
    );
    let (state,): (String,) = sqlx::query_as("SELECT state FROM utxos WHERE txid = $1")
        .bind(&txid)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(state, "spent");
}

/// An audited change made in one statement (here the move to `signed` with its
/// inputs and audit record) takes its row locks before the audit append lock, the
/// order of every other audited change (data first, audit record last): two
/// changes of the same rows cannot deadlock on the order of those locks.
#[tokio::test]
async fn an_audited_statement_locks_its_rows_before_the_append_lock() {
    let s = store().await;
    let tx = approved_tx(&s).await;
    assert_eq!(
        enter(&s, Uuid::new_v4(), tx, 0).await,
        SigningEntry::Entered
    );
    let mut holder = s.pool().acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(signer::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let signing = signed_in_background(&s, tx);
    // The statement cannot get past the append lock held here, so if its row is
    // ever locked meanwhile, it was locked first. Look for up to ten seconds (a
    // slow host may start the statement late).
    let mut row_free = Ok(Default::default());
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        row_free = sqlx::query("SELECT 1 FROM transactions WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(tx)
            .execute(s.pool())
            .await;
        if row_free.is_err() {
            break;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(signer::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    signing.await.unwrap().unwrap();
    let err = row_free.expect_err("the row was not locked while the append lock was awaited");
    assert!(
        matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03")),
        "{err}"
    );
    let state = s.get_transaction(tx).await.unwrap().state;
    assert_eq!(state, "signed");
}

/// `n` transactions of key `key` in state `voting`.
async fn voting_txs(s: &Store, key: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let t = NewTransaction {
            key_id: Some(key.to_owned()),
            ..new_tx()
        };
        s.insert_transaction(&t).await.unwrap();
        s.transition_transaction(t.id, "voting", None)
            .await
            .unwrap();
        ids.push(t.id);
    }
    ids
}

/// A signing session id is claimed once, whatever the second claim carries; the
/// claim, the move to `signing` and its audit row commit together or not at all;
/// and the claims cannot be rewritten or removed.
#[tokio::test]
async fn a_signing_session_id_is_claimed_once() {
    let s = store().await;
    let (session, tx) = (Uuid::new_v4(), approved_tx(&s).await);
    let set = ["node-1".to_owned(), "node-2".to_owned()];
    assert_eq!(enter(&s, session, tx, 0).await, SigningEntry::Entered);
    assert!(s.signing_session_used(session).await.unwrap());
    assert_eq!(sign_input_audits(&s, tx).await, 1);
    assert_eq!(enter(&s, session, tx, 0).await, SigningEntry::SessionUsed);
    let other = approved_tx(&s).await;
    assert_eq!(
        enter_with(&s, session, other, 1, &set[..1]).await,
        SigningEntry::SessionUsed,
        "another transaction, input or set under a used id is refused too"
    );
    assert_eq!(
        (
            sign_input_audits(&s, tx).await,
            sign_input_audits(&s, other).await
        ),
        (1, 0),
        "a refused claim audits nothing"
    );
    let state = s.get_transaction(other).await.unwrap().state;
    assert_eq!(state, "approved", "a refused claim moves nothing");

    // A transaction that ended here: nothing written, the session id stays free.
    let (fresh, ended) = (Uuid::new_v4(), approved_tx(&s).await);
    s.transition_transaction(ended, "expired", None)
        .await
        .unwrap();
    assert_eq!(enter(&s, fresh, ended, 0).await, SigningEntry::Closed);
    assert!(!s.signing_session_used(fresh).await.unwrap());
    assert_eq!(sign_input_audits(&s, ended).await, 0);
    assert_eq!(enter(&s, fresh, other, 0).await, SigningEntry::Entered);

    for sql in [
        "UPDATE signing_sessions SET input_index = 5 WHERE session_id = $1",
        "DELETE FROM signing_sessions WHERE session_id = $1",
    ] {
        let err = sqlx::query(sql)
            .bind(session)
            .execute(s.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
}

/// The `tx.signed` audit records of `ids`: (transaction, seq, ts in microseconds).
async fn signed_records(s: &Store, ids: &[Uuid]) -> Vec<(String, i64, i64)> {
    audit_records(s, "tx.signed", ids).await
}

/// The `action` audit records of `ids`: (transaction, seq, ts in microseconds).
async fn audit_records(s: &Store, action: &str, ids: &[Uuid]) -> Vec<(String, i64, i64)> {
    let subjects: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    sqlx::query_as(
        "SELECT subject, seq, (extract(epoch FROM ts) * 1000000)::bigint FROM audit_log \
         WHERE action = $2 AND subject = ANY($1) ORDER BY seq",
    )
    .bind(&subjects)
    .bind(action)
    .fetch_all(s.pool())
    .await
    .unwrap()
}

/// Runs `write` for each of `ids` at once while another session holds the audit
/// append lock, so the writes queue behind the first one and are made as groups.
async fn behind_the_audit_lock<R, F, Fut>(s: &Store, ids: &[Uuid], write: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(Store, Uuid) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let mut holder = s.pool().acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(signer::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let writes: Vec<_> = ids
        .iter()
        .map(|&id| tokio::spawn(write(s.clone(), id)))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(signer::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut out = Vec::new();
    for w in writes {
        out.push(w.await.unwrap());
    }
    out
}

/// Marks `ids` signed at once behind the audit lock (see [`behind_the_audit_lock`]).
async fn sign_all_behind_the_audit_lock(s: &Store, ids: &[Uuid]) -> Vec<Result<(), String>> {
    behind_the_audit_lock(s, ids, |s, id| async move {
        s.transaction_signed("node-1", id, b"raw", &format!("txid-{id}"), None)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// `signed` records that arrive while one is being written share the next
/// statement (issue 21): their audit records are consecutive and carry one
/// timestamp, each transaction is signed and audited once, and the chain
/// verifies. A group with a transaction that cannot move to `signed` (still
/// `pending` here) is written again one record at a time: that one fails alone,
/// unchanged and unaudited, and the others are signed.
#[tokio::test]
async fn signed_records_written_together_are_each_audited_once_and_a_bad_one_fails_alone() {
    let s = store().await;
    let mut good = Vec::new();
    for _ in 0..6 {
        let tx = approved_tx(&s).await;
        assert_eq!(
            enter(&s, Uuid::new_v4(), tx, 0).await,
            SigningEntry::Entered
        );
        good.push(tx);
    }
    let results = sign_all_behind_the_audit_lock(&s, &good).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let recs = signed_records(&s, &good).await;
    assert_eq!(
        recs.len(),
        good.len(),
        "one record per transaction: {recs:?}"
    );
    // The records queued behind the first write were appended together:
    // consecutive sequence numbers, one timestamp.
    assert!(
        appended_as_one_group(&recs),
        "the queued records were not appended as one group: {recs:?}"
    );
    for id in &good {
        let t = s.get_transaction(*id).await.unwrap();
        assert_eq!(t.state, "signed");
        assert_eq!(t.txid.as_deref(), Some(format!("txid-{id}").as_str()));
    }

    let mut mixed = Vec::new();
    for _ in 0..4 {
        let tx = approved_tx(&s).await;
        enter(&s, Uuid::new_v4(), tx, 0).await;
        mixed.push(tx);
    }
    let pending = new_tx();
    s.insert_transaction(&pending).await.unwrap();
    mixed.insert(2, pending.id);
    let results = sign_all_behind_the_audit_lock(&s, &mixed).await;
    for (id, r) in mixed.iter().zip(&results) {
        let t = s.get_transaction(*id).await.unwrap();
        if *id == pending.id {
            assert!(r.is_err(), "a pending transaction was signed");
            assert_eq!(t.state, "pending");
        } else {
            assert!(r.is_ok(), "{id}: {r:?}");
            assert_eq!(t.state, "signed");
        }
    }
    let recs = signed_records(&s, &mixed).await;
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert!(recs.iter().all(|r| r.0 != pending.id.to_string()));
    let (_, _, err) = s.verify_audit_chain().await.unwrap();
    assert!(err.is_none(), "{err:?}");
}

/// Whether the records (in sequence order) were appended by at most two
/// statements: at most two runs of consecutive records sharing one timestamp
/// (the write under way when the lock was released, and the group queued behind
/// it). Records appended one by one each have their own timestamp.
fn appended_as_one_group(recs: &[(String, i64, i64)]) -> bool {
    let runs = 1 + recs
        .windows(2)
        .filter(|w| !(w[1].1 == w[0].1 + 1 && w[1].2 == w[0].2))
        .count();
    runs <= 2
}

/// Rounds closed while another close is being written share the next statement
/// (issue 21): each transaction moves to its round's outcome with one audit record,
/// an approval's outflow is counted once, a reject's reserved inputs are released,
/// and the chain verifies. In a group where one round was closed before, nothing
/// of the group is written by the group: each close is made again on its own, so
/// that round answers "not open" and changes nothing, and the others close.
#[tokio::test]
async fn rounds_closed_together_each_move_their_transaction_once_and_a_closed_one_changes_nothing()
{
    let s = store().await;
    let key = format!("k-close-{}", Uuid::new_v4());
    let txs = voting_txs(&s, &key, 6).await;
    let rounds = open_rounds(&s, &txs).await;
    let rejected = txs[3];
    let rounds_for = rounds.clone();
    let key_for = key.clone();
    let results = behind_the_audit_lock(&s, &txs, move |s, id| {
        let round = rounds_for[&id];
        let key = key_for.clone();
        async move {
            if id == rejected {
                s.close_round_and_transaction("node-1", round, id, "rejected", None, 3)
                    .await
            } else {
                s.close_round_approved("node-1", round, id, 3, Some((&key, 1_000)))
                    .await
            }
        }
    })
    .await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
    for id in &txs {
        let want = if *id == rejected {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(s.get_transaction(*id).await.unwrap().state, want);
        assert_eq!(s.get_round(rounds[id]).await.unwrap().state, want);
    }
    let mut recs = audit_records(&s, "tx.approved", &txs).await;
    recs.extend(audit_records(&s, "tx.rejected", &txs).await);
    recs.sort_by_key(|r| r.1);
    assert_eq!(recs.len(), txs.len(), "one record per close: {recs:?}");
    assert!(
        appended_as_one_group(&recs),
        "not appended as one group: {recs:?}"
    );
    let counted: Vec<(Uuid,)> =
        sqlx::query_as("SELECT transaction_id FROM outflows WHERE transaction_id = ANY($1)")
            .bind(&txs)
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert_eq!(counted.len(), 5, "each approval's outflow counted once");
    assert!(!counted.contains(&(rejected,)));

    // A group with a round closed before: it answers false, the others close.
    let more = voting_txs(&s, &key, 4).await;
    let more_rounds = open_rounds(&s, &more).await;
    let early = more[2];
    assert!(s
        .close_round_and_transaction("node-1", more_rounds[&early], early, "expired", None, 0)
        .await
        .unwrap());
    let rounds_for = more_rounds.clone();
    let results = behind_the_audit_lock(&s, &more, move |s, id| {
        let round = rounds_for[&id];
        async move {
            s.close_round_and_transaction("node-1", round, id, "rejected", None, 3)
                .await
        }
    })
    .await;
    for (id, r) in more.iter().zip(&results) {
        let want = if *id == early { "expired" } else { "rejected" };
        assert_eq!(matches!(r, Ok(true)), *id != early, "{id}: {r:?}");
        assert_eq!(s.get_transaction(*id).await.unwrap().state, want);
    }
    assert_eq!(audit_records(&s, "tx.rejected", &more).await.len(), 3);
    assert_eq!(audit_records(&s, "tx.expired", &more).await.len(), 1);
    let (_, _, err) = s.verify_audit_chain().await.unwrap();
    assert!(err.is_none(), "{err:?}");
}

/// An open round for each of `txs`, by transaction.
async fn open_rounds(s: &Store, txs: &[Uuid]) -> std::collections::HashMap<Uuid, Uuid> {
    let mut rounds = std::collections::HashMap::new();
    for id in txs {
        let round = Uuid::new_v4();
        let deadline = chrono::Utc::now() + chrono::Duration::seconds(60);
        s.create_round(round, *id, 1, 3, 5, deadline).await.unwrap();
        rounds.insert(*id, round);
    }
    rounds
}

/// Several records appended in one call link one after the other and verify; a
/// database administrator who replaces the group append function cannot make the
/// node store records it did not hash itself: a hash that does not cover the link,
/// or a link that skips the record before, fails the group (and so its change).
/// (Inside database transactions that are rolled back, so the running node never
/// sees the replaced function.)
#[tokio::test]
async fn a_group_audit_append_links_its_records_and_refuses_a_link_or_hash_the_node_did_not_compute(
) {
    use signer::store::audit::append_audit_many;
    let s = store().await;
    let entries = || {
        (0..3)
            .map(|i| AuditEntry::new("test", "test.group").subject(i.to_string()))
            .collect::<Vec<_>>()
    };
    let mut tx = s.pool().begin().await.unwrap();
    let recs = append_audit_many(&mut tx, "node-group", entries())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recs.len(), 3);
    for w in recs.windows(2) {
        assert_eq!((w[1].seq, w[1].prev_hash), (w[0].seq + 1, w[0].hash));
    }
    for r in &recs {
        let (hash,): (Vec<u8>,) = sqlx::query_as("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(r.seq)
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(
            hash.as_slice(),
            &r.hash[..],
            "what the append returned is stored"
        );
    }

    // (how the replaced function computes the hash, how it advances the link)
    for (hash, next_prev) in [
        ("sha256(domain || tails[i])", "new_hash"),
        (
            "sha256(domain || new_prev || int8send(new_seq) || tails[i])",
            "sha256(new_hash)",
        ),
    ] {
        let mut tx = s.pool().begin().await.unwrap();
        // Two fixed variants written in this test, no outside input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE OR REPLACE FUNCTION audit_append_many(lock_key bigint, domain bytea, \
             genesis bytea, p_ts timestamptz[], p_node_id text, p_actor text[], p_action text[], \
             p_subject text[], p_details jsonb[], tails bytea[], change_rows bigint) \
             RETURNS TABLE (ord integer, new_seq bigint, new_prev bytea, new_hash bytea) \
             LANGUAGE plpgsql VOLATILE AS $$ DECLARE head_seq bigint; head_hash bytea; BEGIN \
               PERFORM pg_advisory_xact_lock(lock_key); \
               SELECT l.seq, l.hash INTO head_seq, head_hash FROM audit_log l ORDER BY l.seq DESC LIMIT 1; \
               FOR i IN 1 .. array_length(tails, 1) LOOP \
                 ord := i; new_seq := head_seq + 1; new_prev := head_hash; \
                 new_hash := {hash}; \
                 INSERT INTO audit_log (seq, ts, node_id, actor, action, subject, details, prev_hash, hash) \
                   VALUES (new_seq, p_ts[i], p_node_id, p_actor[i], p_action[i], p_subject[i], p_details[i], new_prev, new_hash); \
                 head_seq := new_seq; head_hash := {next_prev}; RETURN NEXT; \
               END LOOP; END $$"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let err = append_audit_many(&mut tx, "node-dba", entries())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains("link or hash")),
            "{hash} / {next_prev}: {err}"
        );
        tx.rollback().await.unwrap();
    }
    let (_, _, broken) = s.verify_audit_chain().await.unwrap();
    assert!(broken.is_none(), "{broken:?}");
}
