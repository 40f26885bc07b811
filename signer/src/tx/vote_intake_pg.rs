//! [`VoteIntake`] and the vote store functions against a real, throwaway
//! PostgreSQL (the Debian server binaries; initdb in a temporary directory).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::Txid;
use ring::signature::Ed25519KeyPair;
use uuid::Uuid;

use super::vote_intake::*;
use crate::store::transactions::NewTransaction;
use crate::store::utxos::InputReservation;
use crate::store::Store;
use vote::*;

/// A PostgreSQL server in a temporary directory, stopped on drop.
struct TempPg {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn pg_bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries are installed (Debian postgresql-15)")
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version directory").1
}

/// PostgreSQL refuses to run as root: switch to the `postgres` user then.
fn as_pg_user(cmd: &mut Command, dir: &Path) {
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .expect("user lookup")
            .expect("a postgres user exists where PostgreSQL is installed");
        nix::unistd::chown(dir, Some(pg.uid), Some(pg.gid)).expect("chown the data directory");
        cmd.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
    }
}

impl TempPg {
    async fn start() -> TempPg {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let bin = pg_bindir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_pg_user(&mut initdb, dir.path());
        as_pg_user(&mut initdb, &data);
        assert!(
            initdb.status().expect("run initdb").success(),
            "initdb failed"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_pg_user(&mut server, &data);
        let child = server.spawn().expect("start postgres");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let pg = TempPg {
            child,
            url,
            _dir: dir,
        };
        for _ in 0..300 {
            if sqlx::PgPool::connect(&pg.url).await.is_ok() {
                return pg;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("postgres did not accept connections within 30 s");
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SIGINT: fast shutdown (disconnects clients, stops the server).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = self.child.wait();
    }
}

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("any 32-byte seed is a valid key")
}

fn subject(tx: Uuid) -> VoteSubject {
    VoteSubject {
        transaction_id: tx,
        round_no: 1,
        txid: Txid::from_byte_array([1; 32]),
        sighashes: vec![[0x11; 32], [0x22; 32]],
        policy_hash: [0xab; 32],
    }
}

fn signed(tx: Uuid, voter: u8, signer: u8, decision: VoteDecision) -> SignedVote {
    let s = subject(tx);
    let body = VoteBody {
        transaction_id: s.transaction_id,
        round_no: s.round_no,
        txid: s.txid,
        sighashes: s.sighashes,
        policy_hash: s.policy_hash,
        decision,
        reasons: Vec::new(),
        voter: format!("node-{voter}"),
        deadline_unix: 1_700_000_600,
    };
    SignedVote::sign(body, &key(signer)).expect("valid body")
}

/// A transaction row of key `hot` with nothing else known.
fn hot_tx(id: Uuid, initiator: &str) -> NewTransaction {
    NewTransaction {
        id,
        key_id: Some("hot".into()),
        recipient: None,
        amount_sats: None,
        fee_sats: None,
        psbt: None,
        initiator: initiator.into(),
    }
}

/// A fresh database with one transaction and its open 2-of-3 voting round.
async fn store_with_round() -> (TempPg, Store, Uuid, Uuid) {
    let pg = TempPg::start().await;
    let store = Store::connect(&pg.url, 4)
        .await
        .expect("connect and migrate");
    let (tx, round) = open_round(&store).await;
    (pg, store, tx, round)
}

/// A new transaction of key `hot` and its open 2-of-3 voting round.
async fn open_round(store: &Store) -> (Uuid, Uuid) {
    let tx = Uuid::new_v4();
    store
        .insert_transaction(&hot_tx(tx, "test"))
        .await
        .expect("transaction");
    let round = Uuid::new_v4();
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(60);
    store
        .create_round(round, tx, 1, 2, 3, deadline)
        .await
        .expect("round");
    (tx, round)
}

async fn violations(store: &Store, culprit: &str, code: &str) -> Vec<serde_json::Value> {
    store
        .list_violations(1000)
        .await
        .expect("list violations")
        .into_iter()
        .filter(|v| v.node_id == culprit && v.violation_type == code)
        .map(|v| v.evidence)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_intake_stores_once_records_violations_and_pins_keys_in_postgres() {
    let (pg, store, tx, round) = store_with_round().await;
    let intake = VoteIntake::new(store.clone(), "node-1");
    let mut keys = VoteKeyBook::from_pinned(store.vote_keys().await.expect("keys"));
    assert!(keys.is_empty());

    // --- key pinning ---
    let own = key(1).vote_public_key();
    assert_eq!(
        store
            .pin_vote_key("node-1", "node-1", &own)
            .await
            .expect("pin own"),
        PinOutcome::NewlyPinned
    );
    keys.observe("node-1", own);
    for peer in [2u8, 3] {
        let a = VoteKeyAnnouncement::new(&format!("node-{peer}"), &key(peer)).expect("valid");
        let sender = format!("node-{peer}");
        assert_eq!(
            intake
                .accept_key_announcement(&mut keys, &a, &sender)
                .await
                .expect("pins"),
            PinOutcome::NewlyPinned
        );
        assert_eq!(
            intake
                .accept_key_announcement(&mut keys, &a, &sender)
                .await
                .expect("same key"),
            PinOutcome::AlreadyPinned
        );
    }
    // An announcement for node-3 over node-2's connection.
    let a3 = VoteKeyAnnouncement::new("node-3", &key(3)).expect("valid");
    assert!(matches!(
        intake
            .accept_key_announcement(&mut keys, &a3, "node-2")
            .await,
        Err(KeyAnnounceError::SenderMismatch { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_BAD_KEY_ANNOUNCEMENT)
            .await
            .len(),
        1
    );
    // node-3 tries to change its key: refused, recorded, pin unchanged.
    let changed = VoteKeyAnnouncement::new("node-3", &key(4)).expect("valid");
    assert!(matches!(
        intake
            .accept_key_announcement(&mut keys, &changed, "node-3")
            .await,
        Err(KeyAnnounceError::KeyChanged { .. })
    ));
    let ev = violations(&store, "node-3", VIOLATION_KEY_CHANGED).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["offered"], hex::encode(key(4).vote_public_key()));
    assert_eq!(keys.get("node-3"), Some(&key(3).vote_public_key()));
    let stored_keys = store.vote_keys().await.expect("keys");
    assert_eq!(stored_keys.len(), 3);
    assert!(stored_keys.contains(&("node-3".to_owned(), key(3).vote_public_key())));
    assert_eq!(VoteKeyBook::from_pinned(stored_keys), keys);

    // --- votes ---
    let s = subject(tx);
    let v1 = signed(tx, 1, 1, VoteDecision::Approve);
    assert_eq!(
        intake
            .accept(&keys, round, &v1, "node-1", &s)
            .await
            .expect("own vote"),
        Accepted::New
    );
    let again = SignedVote::decode(&v1.encode()).expect("decodes");
    assert_eq!(
        intake
            .accept(&keys, round, &again, "node-1", &s)
            .await
            .expect("re-delivery"),
        Accepted::Duplicate
    );
    // node-2's vote signed with another key: ignored and recorded.
    let forged = signed(tx, 2, 9, VoteDecision::Approve);
    assert!(matches!(
        intake.accept(&keys, round, &forged, "node-2", &s).await,
        Err(VoteReject::BadSignature { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_BAD_SIGNATURE)
            .await
            .len(),
        1
    );
    // node-2's vote for other sighashes: ignored and recorded.
    let mut other = subject(tx);
    other.sighashes.reverse();
    let other_vote = {
        let mut b = signed(tx, 2, 2, VoteDecision::Approve).body().clone();
        b.sighashes = other.sighashes.clone();
        SignedVote::sign(b, &key(2)).expect("valid")
    };
    assert!(matches!(
        intake.accept(&keys, round, &other_vote, "node-2", &s).await,
        Err(VoteReject::WrongSubject {
            field: "sighashes",
            ..
        })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_SUBJECT_MISMATCH)
            .await
            .len(),
        1
    );
    assert_eq!(intake.round_votes(round).await.expect("votes").len(), 1);

    // node-2 approves, then tries to switch to reject: double vote, first stays.
    let v2 = signed(tx, 2, 2, VoteDecision::Approve);
    assert_eq!(
        intake
            .accept(&keys, round, &v2, "node-2", &s)
            .await
            .expect("valid"),
        Accepted::New
    );
    let v2b = signed(tx, 2, 2, VoteDecision::Reject);
    assert!(matches!(
        intake.accept(&keys, round, &v2b, "node-2", &s).await,
        Err(VoteReject::DoubleVote { .. })
    ));
    let ev = violations(&store, "node-2", VIOLATION_DOUBLE_VOTE).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["first"], hex::encode(v2.encode()));
    assert_eq!(ev[0]["second"], hex::encode(v2b.encode()));
    let votes = intake.round_votes(round).await.expect("votes");
    assert_eq!(votes, vec![v1.clone(), v2.clone()]);

    // The stored votes settle the round and re-verify as a quorum.
    assert_eq!(evaluate_round(2, 3, &votes), Ok(RoundOutcome::Approved));
    let qc = QuorumCertificate::verify(&votes, &keys, 2, &s).expect("quorum from the database");
    assert_eq!(qc.approvers(), ["node-1", "node-2"]);

    // Every violation and pin is in the audit chain, which still verifies.
    let audit = store.audit_rows(0, 1000).await.expect("audit");
    let count = |action: &str| audit.iter().filter(|r| r.action == action).count();
    assert_eq!(count("vote_key.pin"), 3);
    assert_eq!(count("vote.violation"), 5);
    crate::audit::verify_chain(&audit).expect("unbroken chain");

    // An operator unpins node-3; its new key is then pinned on announcement. The
    // book the node keeps in memory follows each committed change.
    let pinned_of = |keys: Vec<(String, [u8; 32])>, node: &str| {
        keys.into_iter().find(|(n, _)| n == node).map(|(_, k)| k)
    };
    let book = store.vote_keys().await.expect("keys");
    assert_eq!(pinned_of(book, "node-3"), Some(key(3).vote_public_key()));
    assert!(store
        .unpin_vote_key("node-1", "cli", "node-3")
        .await
        .expect("unpin"));
    assert_eq!(
        pinned_of(store.vote_keys().await.expect("keys"), "node-3"),
        None,
        "an unpinned key is gone from the book at once"
    );
    assert!(!store
        .unpin_vote_key("node-1", "cli", "node-3")
        .await
        .expect("unpin"));
    keys.forget("node-3");
    assert_eq!(
        intake
            .accept_key_announcement(&mut keys, &changed, "node-3")
            .await
            .expect("new pin"),
        PinOutcome::NewlyPinned
    );
    assert_eq!(keys.get("node-3"), Some(&key(4).vote_public_key()));
    assert_eq!(
        pinned_of(store.vote_keys().await.expect("keys"), "node-3"),
        Some(key(4).vote_public_key()),
        "a new pin is in the book at once"
    );
    // Another handle on the same database (another process) sees the table as
    // it is, and this handle's book is the table's.
    let other = Store::connect(&pg.url, 2).await.expect("second handle");
    assert_eq!(
        other.vote_keys().await.expect("keys"),
        store.vote_keys().await.expect("keys")
    );
    drop(store);
    drop(pg);
}

/// The vote keys of node-2 and node-3 (the peers whose votes the grouping tests
/// send).
fn peer_keys() -> VoteKeyBook {
    let mut keys = VoteKeyBook::default();
    for n in [2u8, 3] {
        keys.observe(&format!("node-{n}"), key(n).vote_public_key());
    }
    keys
}

/// Accepts `votes` (round, transaction, vote; each from its voter) at once while
/// a writer holds the votes table: the first insert waits for it, and every vote
/// that arrives meanwhile queues behind that insert. The answers, in order.
async fn accept_behind_a_table_lock(
    store: &Store,
    intake: &VoteIntake,
    keys: &VoteKeyBook,
    votes: &[(Uuid, Uuid, SignedVote)],
) -> Vec<Result<Accepted, VoteReject>> {
    let mut blocker = store.pool().begin().await.expect("begin");
    sqlx::query("LOCK TABLE votes IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let accepting = futures::future::join_all(votes.iter().map(|(round, tx, v)| {
        let voter = v.voter().to_owned();
        async move { intake.accept(keys, *round, v, &voter, &subject(*tx)).await }
    }));
    let release = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        blocker.commit().await.expect("release");
    };
    let (answers, ()) = tokio::join!(accepting, release);
    answers
}

/// Peers' votes that arrive while an insert is running are stored together by the
/// next insert (one statement), each caller still gets its own answer, and two
/// different votes of one voter in one round never share a group: the second
/// finds the first stored and is caught as a double vote (issue 21).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_arriving_together_are_stored_in_one_insert_and_a_double_vote_is_still_caught() {
    let (_pg, store, _, _) = store_with_round().await;
    let intake = VoteIntake::new(store.clone(), "node-1");
    let keys = peer_keys();
    let mut rounds = Vec::new();
    for _ in 0..12 {
        rounds.push(open_round(&store).await);
    }
    let (tx0, round0) = rounds[0];
    let approve0 = signed(tx0, 2, 2, VoteDecision::Approve);
    let reject0 = signed(tx0, 2, 2, VoteDecision::Reject);
    let mut votes = vec![(round0, tx0, approve0.clone())];
    for &(tx, round) in &rounds {
        votes.push((round, tx, signed(tx, 3, 3, VoteDecision::Approve)));
    }
    for &(tx, round) in &rounds[1..] {
        votes.push((round, tx, signed(tx, 2, 2, VoteDecision::Approve)));
    }
    votes.push((round0, tx0, reject0.clone()));
    let answers = accept_behind_a_table_lock(&store, &intake, &keys, &votes).await;

    let last = answers.len() - 1;
    for (i, a) in answers.iter().enumerate().take(last) {
        assert_eq!(a.as_ref().ok(), Some(&Accepted::New), "vote {i}: {a:?}");
    }
    assert!(
        matches!(answers[last], Err(VoteReject::DoubleVote { .. })),
        "{:?}",
        answers[last]
    );
    for &(_, round) in &rounds {
        assert_eq!(intake.round_votes(round).await.expect("votes").len(), 2);
    }
    assert_eq!(
        intake.round_votes(round0).await.expect("votes"),
        vec![approve0, signed(tx0, 3, 3, VoteDecision::Approve)]
    );
    assert_eq!(
        violations(&store, "node-2", VIOLATION_DOUBLE_VOTE)
            .await
            .len(),
        1
    );
    // Rows written by one statement share a transaction id: the first insert
    // (the first vote, with any that arrived before it started), then one for
    // every vote that queued behind it.
    let (writes,): (i64,) = sqlx::query_as("SELECT count(DISTINCT xmin::text) FROM votes")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert!(
        (1..=2).contains(&writes),
        "the queued votes were not stored together: {writes} inserts"
    );
}

/// A vote that cannot be stored (its round is gone) fails alone: the others of
/// its group are still stored, each caller answered with its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_that_cannot_be_stored_fails_alone_in_its_group() {
    let (_pg, store, tx, round) = store_with_round().await;
    let intake = VoteIntake::new(store.clone(), "node-1");
    let keys = peer_keys();
    // node-2's and node-3's votes in the round, and node-3's vote for a round
    // that does not exist, queued behind a first insert.
    let v2 = signed(tx, 2, 2, VoteDecision::Approve);
    let v3 = signed(tx, 3, 3, VoteDecision::Approve);
    let orphan_tx = Uuid::new_v4();
    let orphan = signed(orphan_tx, 3, 3, VoteDecision::Approve);
    let votes = [
        (round, tx, v2.clone()),
        (Uuid::new_v4(), orphan_tx, orphan),
        (round, tx, v3.clone()),
    ];
    let answers = accept_behind_a_table_lock(&store, &intake, &keys, &votes).await;
    assert_eq!(
        answers[0].as_ref().ok(),
        Some(&Accepted::New),
        "{answers:?}"
    );
    assert!(answers[1].is_err(), "{answers:?}");
    assert_eq!(
        answers[2].as_ref().ok(),
        Some(&Accepted::New),
        "{answers:?}"
    );
    assert_eq!(
        intake.round_votes(round).await.expect("votes"),
        vec![v2, v3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_votes_count_only_under_the_voters_key() {
    let (_pg, store, tx, round) = store_with_round().await;
    for n in 1u8..=3 {
        let id = format!("node-{n}");
        store
            .pin_vote_key("node-1", &id, &key(n).vote_public_key())
            .await
            .expect("pin");
    }
    let keys = VoteKeyBook::from_pinned(store.vote_keys().await.expect("keys"));
    let intake = VoteIntake::new(store.clone(), "node-1");
    let s = subject(tx);

    // node-2 (the leader) relays node-3's vote: it counts as node-3's.
    let v3 = signed(tx, 3, 3, VoteDecision::Approve);
    assert_eq!(
        intake
            .accept_relayed(&keys, round, &v3, "node-2", &s)
            .await
            .expect("relayed vote under node-3's key"),
        Accepted::New
    );
    // The same vote relayed again, or arriving directly, changes nothing.
    assert_eq!(
        intake
            .accept(&keys, round, &v3, "node-3", &s)
            .await
            .expect("direct copy"),
        Accepted::Duplicate
    );
    // A "vote of node-3" the relayer signed itself: refused, blamed on the relayer.
    let forged = signed(tx, 3, 2, VoteDecision::Reject);
    assert!(matches!(
        intake
            .accept_relayed(&keys, round, &forged, "node-2", &s)
            .await,
        Err(VoteReject::BadSignature { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_BAD_SIGNATURE)
            .await
            .len(),
        1
    );
    assert!(violations(&store, "node-3", VIOLATION_BAD_SIGNATURE)
        .await
        .is_empty());
    // A vote of another transaction's subject relayed here: blamed on the relayer.
    let elsewhere = signed(Uuid::new_v4(), 1, 1, VoteDecision::Approve);
    assert!(matches!(
        intake
            .accept_relayed(&keys, round, &elsewhere, "node-2", &s)
            .await,
        Err(VoteReject::WrongSubject { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_SUBJECT_MISMATCH)
            .await
            .len(),
        1
    );
    // A second, different vote really signed by node-3: node-3's double vote.
    let v3b = signed(tx, 3, 3, VoteDecision::Reject);
    assert!(matches!(
        intake
            .accept_relayed(&keys, round, &v3b, "node-2", &s)
            .await,
        Err(VoteReject::DoubleVote { .. })
    ));
    assert_eq!(
        violations(&store, "node-3", VIOLATION_DOUBLE_VOTE)
            .await
            .len(),
        1
    );
    // A voter without a pinned key: refused without blame.
    let unknown = signed(tx, 7, 7, VoteDecision::Approve);
    assert!(matches!(
        intake
            .accept_relayed(&keys, round, &unknown, "node-2", &s)
            .await,
        Err(VoteReject::UnknownVoter { .. })
    ));
    // Votes of a transaction this node does not track: forgery is still recorded.
    let other_tx = Uuid::new_v4();
    let in_my_name = signed(other_tx, 1, 2, VoteDecision::Reject);
    assert!(matches!(
        intake.precheck(&keys, &in_my_name, "node-2").await,
        Err(VoteReject::SenderMismatch { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_SENDER_MISMATCH)
            .await
            .len(),
        1
    );
    let bad_sig = signed(other_tx, 2, 9, VoteDecision::Approve);
    assert!(matches!(
        intake.precheck(&keys, &bad_sig, "node-2").await,
        Err(VoteReject::BadSignature { .. })
    ));
    assert_eq!(
        violations(&store, "node-2", VIOLATION_BAD_SIGNATURE)
            .await
            .len(),
        2
    );
    intake
        .precheck(
            &keys,
            &signed(other_tx, 2, 2, VoteDecision::Approve),
            "node-2",
        )
        .await
        .map(|seen| assert_eq!(seen, Prechecked::Unseen, "no stored vote of that round"))
        .expect("a genuine vote passes");
    // A vote that arrives after the round ended here (its transaction no longer
    // tracked) is still compared with the voter's stored vote of that round.
    assert_eq!(
        intake
            .precheck(&keys, &v3, "node-3")
            .await
            .expect("same vote"),
        Prechecked::AlreadyStored
    );
    assert!(matches!(
        intake.precheck(&keys, &v3b, "node-3").await,
        Err(VoteReject::DoubleVote { .. })
    ));
    assert_eq!(
        violations(&store, "node-3", VIOLATION_DOUBLE_VOTE)
            .await
            .len(),
        2,
        "a late double vote is recorded"
    );
    assert_eq!(
        intake.round_votes(round).await.expect("votes"),
        vec![v3],
        "only the genuine vote is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_close_moves_transaction_releases_utxos_and_audits_at_once() {
    let (_pg, store, tx, round) = store_with_round().await;
    let utxo = wallet::OwnedUtxo {
        key_id: "hot".into(),
        outpoint: bitcoin::OutPoint::new(Txid::all_zeros(), 0),
        value_sats: 50_000,
        script_pubkey: bitcoin::ScriptBuf::from_bytes(vec![0x51]),
        chain: 0,
        index: 0,
    };
    store
        .add_utxos(std::slice::from_ref(&utxo))
        .await
        .expect("utxo");
    assert_eq!(
        store.reserve_inputs(tx, &[utxo]).await.expect("reserve"),
        InputReservation::Reserved
    );
    assert!(store.available_utxos("hot").await.expect("list").is_empty());
    assert!(store
        .close_round_and_transaction("node-1", round, tx, "rejected", None, 2)
        .await
        .expect("close"));
    assert_eq!(
        store.get_round(round).await.expect("round").state,
        "rejected"
    );
    assert_eq!(
        store.get_transaction(tx).await.expect("tx").state,
        "rejected"
    );
    assert_eq!(
        store.available_utxos("hot").await.expect("list").len(),
        1,
        "a rejected transaction's inputs are available again"
    );
    let audited = store.audit_rows(0, 1000).await.expect("audit");
    assert_eq!(
        audited
            .iter()
            .filter(|r| r.action == "tx.rejected" && r.subject.as_deref() == Some(&*tx.to_string()))
            .count(),
        1
    );
    // A second close (another vote, or the deadline) changes nothing.
    assert!(!store
        .close_round_and_transaction("node-1", round, tx, "expired", Some("late"), 0)
        .await
        .expect("second close"));
    assert_eq!(
        store.get_transaction(tx).await.expect("tx").state,
        "rejected"
    );
    assert_eq!(
        store.audit_rows(0, 1000).await.expect("audit").len(),
        audited.len()
    );
}

/// Voting rounds stored for transaction `id`.
async fn rounds_of(store: &Store, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM voting_rounds WHERE transaction_id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("count rounds")
}

fn utxo(n: u8, value: u64) -> wallet::OwnedUtxo {
    wallet::OwnedUtxo {
        key_id: "hot".into(),
        outpoint: bitcoin::OutPoint::new(Txid::from_byte_array([n; 32]), 0),
        value_sats: value,
        script_pubkey: bitcoin::ScriptBuf::from_bytes(vec![0x51]),
        chain: 0,
        index: 0,
    }
}

async fn new_tx(store: &Store) -> Uuid {
    let id = Uuid::new_v4();
    store
        .insert_transaction(&hot_tx(id, "test"))
        .await
        .expect("transaction");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_inputs_are_learned_reserved_once_and_never_offered_to_coin_selection() {
    let (_pg, store, tx, _round) = store_with_round().await;
    let other = new_tx(&store).await;
    let (a, b) = (utxo(1, 10_000), utxo(2, 20_000));
    let outs = [a.outpoint, b.outpoint];
    // Unknown inputs of a proposal are recorded with their proven amounts and
    // reserved for it at once; another transaction cannot take them.
    assert_eq!(
        store
            .reserve_inputs(tx, &[a.clone(), b.clone()])
            .await
            .expect("reserve"),
        InputReservation::Reserved
    );
    assert!(store.inputs_reserved_by(tx, &outs).await.expect("check"));
    assert!(!store.inputs_reserved_by(other, &outs).await.expect("check"));
    assert_eq!(
        store
            .reserve_inputs(other, std::slice::from_ref(&b))
            .await
            .expect("reserve"),
        InputReservation::Unavailable(b.outpoint)
    );
    let known = store.known_outputs(&outs).await.expect("known");
    assert_eq!(known[&a.outpoint].value.to_sat(), 10_000);
    // Released, a learned output is still not chosen by coin selection until an
    // operator imports it.
    store.release_utxos(tx).await.expect("release");
    assert!(!store.inputs_reserved_by(tx, &outs).await.expect("check"));
    assert!(store.available_utxos("hot").await.expect("list").is_empty());
    assert_eq!(
        store
            .add_utxos(std::slice::from_ref(&a))
            .await
            .expect("import"),
        1
    );
    assert_eq!(store.available_utxos("hot").await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txid_is_approved_under_one_data_hash_only() {
    let (_pg, store, tx, _round) = store_with_round().await;
    let other = new_tx(&store).await;
    let txid = "ab".repeat(32);
    assert_eq!(
        store
            .claim_txid_approval(&txid, &[1; 32], tx)
            .await
            .expect("claim"),
        None
    );
    // The same data again (e.g. another round of the same transaction) is fine.
    assert_eq!(
        store
            .claim_txid_approval(&txid, &[1; 32], other)
            .await
            .expect("claim"),
        None
    );
    // Other data for the same txid: refused, naming the first approval.
    assert_eq!(
        store
            .claim_txid_approval(&txid, &[2; 32], other)
            .await
            .expect("claim"),
        Some(tx)
    );
    assert_eq!(
        store
            .txid_approved_with_other_data(&txid, &[2; 32])
            .await
            .expect("read"),
        Some(tx)
    );
}

/// Audit rows of action `action` about transaction `id`.
async fn audit_rows_about(store: &Store, action: &str, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1 AND subject = $2")
        .bind(action)
        .bind(id.to_string())
        .fetch_one(store.pool())
        .await
        .expect("count audit rows")
}

fn vote_audit(id: Uuid) -> crate::store::audit::AuditOf {
    crate::store::audit::AuditOf::new(
        "node-1",
        crate::audit::AuditEntry::new("node", "tx.vote").subject(id.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_vote_is_written_whole_or_not_at_all() {
    use crate::store::transactions::{ApprovalClaim, VoteRecord};
    let (_pg, store, tx, round) = store_with_round().await;
    let other = new_tx(&store).await;
    let other_round = Uuid::new_v4();
    store
        .create_round(
            other_round,
            other,
            1,
            2,
            3,
            chrono::Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("round");
    let txid = "cd".repeat(32);
    let claim = |hash: &'static [u8; 32], sats| ApprovalClaim {
        txid: &txid,
        data_hash: hash,
        key_id: "hot",
        outflow_sats: sats,
    };
    let approve = vote_row(round, &signed(tx, 1, 1, VoteDecision::Approve));
    // An approval: the txid claimed under its data, the outflow counted, the
    // signed vote stored and audited, together.
    assert_eq!(
        store
            .record_own_vote(tx, Some(claim(&[1; 32], 7_000)), &approve, vote_audit(tx))
            .await
            .expect("record"),
        VoteRecord::Recorded
    );
    // What is written: the key's counted outflow, the vote's audit rows and the
    // round's votes.
    let written = |id: Uuid, round: Uuid| {
        let store = store.clone();
        async move {
            let spent = store
                .spent_in_window("hot", 3600, Uuid::new_v4(), false)
                .await
                .expect("spent");
            let votes = store.round_votes(round).await.expect("votes").len();
            (spent, audit_rows_about(&store, "tx.vote", id).await, votes)
        }
    };
    assert_eq!(written(tx, round).await, (7_000, 1, 1));
    // A second own vote in the same round: refused whole (no second outflow,
    // audit row or vote).
    let again = vote_row(round, &signed(tx, 1, 1, VoteDecision::Reject));
    assert!(store
        .record_own_vote(tx, None, &again, vote_audit(tx))
        .await
        .is_err());
    assert_eq!(written(tx, round).await, (7_000, 1, 1));
    // The same txid under other data: nothing written (no outflow, no audit row,
    // no vote), the first approval named.
    let other_approve = vote_row(other_round, &signed(other, 1, 1, VoteDecision::Approve));
    assert_eq!(
        store
            .record_own_vote(
                other,
                Some(claim(&[2; 32], 9_000)),
                &other_approve,
                vote_audit(other)
            )
            .await
            .expect("record"),
        VoteRecord::TxidApprovedWithOtherData(tx)
    );
    assert_eq!(written(other, other_round).await, (7_000, 0, 0));
    // The reject that follows is recorded without a claim or an outflow.
    let other_reject = vote_row(other_round, &signed(other, 1, 1, VoteDecision::Reject));
    assert_eq!(
        store
            .record_own_vote(other, None, &other_reject, vote_audit(other))
            .await
            .expect("record"),
        VoteRecord::Recorded
    );
    assert_eq!(written(other, other_round).await, (7_000, 1, 1));
}

/// A batch's own votes (issue 21): written in one database transaction, all or
/// nothing. One vote that cannot be written as it is (its txid approved here under
/// other data) writes none of the batch, so the caller writes each on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_own_votes_are_written_together_or_none_is() {
    use crate::store::transactions::ApprovalClaim;
    let (_pg, store, first, first_round) = store_with_round().await;
    let mut batch = vec![(first, first_round)];
    for _ in 0..2 {
        let id = new_tx(&store).await;
        let round = Uuid::new_v4();
        store
            .create_round(
                round,
                id,
                1,
                2,
                3,
                chrono::Utc::now() + chrono::Duration::seconds(60),
            )
            .await
            .expect("round");
        batch.push((id, round));
    }
    // `'static` txids for the claims (leaked: a test).
    let txids: Vec<&'static str> = (0..3)
        .map(|i| &*Box::leak(format!("{i:02x}").repeat(32).into_boxed_str()))
        .collect();
    let claim = |i: usize, hash: &'static [u8; 32]| ApprovalClaim {
        txid: txids[i],
        data_hash: hash,
        key_id: "hot",
        outflow_sats: 1_000,
    };
    let spent = || {
        let store = store.clone();
        async move {
            store
                .spent_in_window("hot", 3600, Uuid::new_v4(), false)
                .await
                .expect("spent")
        }
    };
    let votes = |round: Uuid| {
        let store = store.clone();
        async move { store.round_votes(round).await.expect("votes").len() }
    };
    // The third entry's txid is the first's under other data: nothing of the
    // batch is written.
    let clash = ApprovalClaim {
        txid: txids[0],
        data_hash: &[9; 32],
        key_id: "hot",
        outflow_sats: 1_000,
    };
    let rows = |third: ApprovalClaim<'static>| {
        batch
            .iter()
            .enumerate()
            .map(|(i, (id, round))| {
                let c = if i == 2 { third } else { claim(i, &[1; 32]) };
                (
                    *id,
                    Some(c),
                    vote_row(*round, &signed(*id, 1, 1, VoteDecision::Approve)),
                    vote_audit(*id),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(!store.record_own_votes(&rows(clash)).await.expect("batch"));
    assert_eq!(spent().await, 0);
    for (id, round) in &batch {
        assert_eq!(votes(*round).await, 0);
        assert_eq!(audit_rows_about(&store, "tx.vote", *id).await, 0);
    }
    // Without the clash: every vote, outflow and audit record, in one commit.
    assert!(store
        .record_own_votes(&rows(claim(2, &[1; 32])))
        .await
        .expect("batch"));
    assert_eq!(spent().await, 3_000);
    for (id, round) in &batch {
        assert_eq!(votes(*round).await, 1);
        assert_eq!(audit_rows_about(&store, "tx.vote", *id).await, 1);
    }
    // The same batch again: this node's votes are stored already, so the
    // statement fails and nothing more is written (no second outflow or record).
    assert!(!matches!(
        store.record_own_votes(&rows(claim(2, &[1; 32]))).await,
        Ok(true)
    ));
    assert_eq!(spent().await, 3_000);
    for (id, round) in &batch {
        assert_eq!(votes(*round).await, 1);
        assert_eq!(audit_rows_about(&store, "tx.vote", *id).await, 1);
    }
    // One txid twice in a batch under the same data (the same unsigned
    // transaction proposed twice): claimed by the first, found under the same
    // data by the second, as when written one after the other.
    let mut twice = Vec::new();
    for _ in 0..2 {
        let (id, round) = open_round(&store).await;
        twice.push((
            id,
            Some(claim(2, &[1; 32])),
            vote_row(round, &signed(id, 1, 1, VoteDecision::Approve)),
            vote_audit(id),
        ));
    }
    let twice_again = |i: usize| ApprovalClaim {
        txid: "ee".repeat(32).leak(),
        ..claim(i, &[2; 32])
    };
    twice[0].1 = Some(twice_again(0));
    twice[1].1 = Some(twice_again(1));
    assert!(store.record_own_votes(&twice).await.expect("batch"));
    let first_claim: Uuid =
        sqlx::query_scalar("SELECT transaction_id FROM approved_txids WHERE txid = $1")
            .bind("ee".repeat(32))
            .fetch_one(store.pool())
            .await
            .expect("claim");
    assert_eq!(first_claim, twice[0].0);
    assert_eq!(spent().await, 5_000);
}

/// A batch's proposals (issue 21): recorded in one database transaction, all or
/// nothing. One that cannot be written as it is (a replayed id, an input reserved
/// by another transaction) writes none of the batch, so the caller opens each on
/// its own and only that one fails or votes reject.
/// A batch's own votes take their rows' locks before the audit append lock, like
/// every audited change: a writer holding the round of the batch's second vote
/// that then waits for the append lock (a round close) is not deadlocked. Before,
/// the batch appended its first vote's record (taking the lock) and then waited
/// for that round: PostgreSQL's deadlock detector rolled one of them back (a 500
/// on submit under a 1,000-payment burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_own_votes_wait_for_a_locked_round_without_holding_the_audit_lock() {
    let (_pg, store, first, first_round) = store_with_round().await;
    let second = new_tx(&store).await;
    let second_round = Uuid::new_v4();
    store
        .create_round(
            second_round,
            second,
            1,
            2,
            3,
            chrono::Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("round");
    let last_vote_id = || {
        let store = store.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM votes")
                .fetch_one(store.pool())
                .await
                .expect("max id");
            n
        }
    };
    let before = last_vote_id().await;
    // The other writer holds the second round's row.
    let mut other = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM voting_rounds WHERE id = $1 FOR UPDATE")
        .bind(second_round)
        .execute(&mut *other)
        .await
        .expect("lock the round");
    let batch = {
        let store = store.clone();
        tokio::spawn(async move {
            let rows = [(first, first_round), (second, second_round)].map(|(id, round)| {
                (
                    id,
                    None,
                    vote_row(round, &signed(id, 1, 1, VoteDecision::Reject)),
                    vote_audit(id),
                )
            });
            store.record_own_votes(&rows).await
        })
    };
    // The batch is waiting for the round now; the other writer wants the append
    // lock (PostgreSQL checks for a deadlock after `deadlock_timeout`, 1 s).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *other)
        .await
        .expect("the append lock is free while the batch waits for a row");
    other.commit().await.expect("commit");
    assert!(batch.await.expect("task").expect("batch written"));
    // Written at the first attempt: a deadlock's victim is run again (see
    // `retry_conflicts`), and its rolled-back vote inserts would have used up ids.
    assert_eq!(
        last_vote_id().await,
        before + 2,
        "the batch was rolled back and written again"
    );
    for (id, round) in [(first, first_round), (second, second_round)] {
        assert_eq!(store.round_votes(round).await.expect("votes").len(), 1);
        assert_eq!(audit_rows_about(&store, "tx.vote", id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_proposals_are_opened_together_or_none_is() {
    let (_pg, store, known, _round) = store_with_round().await;
    let round = || crate::store::votes::NewRound {
        id: Uuid::new_v4(),
        round_no: 1,
        required_approvals: 2,
        total_nodes: 3,
        deadline: chrono::Utc::now() + chrono::Duration::seconds(60),
    };
    let proposal = |id| hot_tx(id, "leader");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (pa, pb, replay) = (proposal(a), proposal(b), proposal(known));
    let (ra, rb, rr) = (round(), round(), round());
    let (ia, ib) = ([utxo(21, 1_000)], [utxo(22, 2_000)]);
    let opened = |id: Uuid| {
        let store = store.clone();
        async move {
            let row = store.get_transaction(id).await.ok().map(|r| r.state);
            (row, rounds_of(&store, id).await)
        }
    };
    // The replayed id in the middle: nothing of the batch is written.
    let with_replay = [
        (Some(&pa), a, &ra, &ia[..]),
        (Some(&replay), known, &rr, &[][..]),
        (Some(&pb), b, &rb, &ib[..]),
    ];
    assert!(!store
        .open_votings("node-2", &with_replay)
        .await
        .expect("batch"));
    assert_eq!(opened(a).await, (None, 0));
    assert_eq!(opened(b).await, (None, 0));
    assert!(!store
        .inputs_reserved_by(a, &[ia[0].outpoint])
        .await
        .expect("check"));
    // Without it: rows, rounds and reservations of both, in one commit.
    let fine = [(Some(&pa), a, &ra, &ia[..]), (Some(&pb), b, &rb, &ib[..])];
    assert!(store.open_votings("node-2", &fine).await.expect("batch"));
    for (id, input) in [(a, ia[0].outpoint), (b, ib[0].outpoint)] {
        assert_eq!(opened(id).await, (Some("voting".to_owned()), 1));
        assert!(store.inputs_reserved_by(id, &[input]).await.expect("check"));
    }
    // A later batch whose proposal spends an input reserved by `a`: none written.
    let c = Uuid::new_v4();
    let (pc, rc) = (proposal(c), round());
    assert!(!store
        .open_votings("node-2", &[(Some(&pc), c, &rc, &ia[..])])
        .await
        .expect("batch"));
    assert_eq!(opened(c).await, (None, 0));
    // Two proposals of one batch naming one input: none written.
    let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
    let (pd, pe, rd, re) = (proposal(d), proposal(e), round(), round());
    let (known, learned) = (utxo(23, 3_000), utxo(24, 4_000));
    let both = [known.clone()];
    assert!(!store
        .open_votings(
            "node-2",
            &[
                (Some(&pd), d, &rd, &both[..]),
                (Some(&pe), e, &re, &both[..])
            ]
        )
        .await
        .expect("batch"));
    assert_eq!((opened(d).await, opened(e).await), ((None, 0), (None, 0)));
    // An output this node knew (available) and one it learns from the proposal:
    // both reserved by their transaction in the batch's commit.
    store
        .add_utxos(std::slice::from_ref(&known))
        .await
        .expect("import");
    let (id_, ie) = ([known.clone()], [learned.clone()]);
    assert!(store
        .open_votings(
            "node-2",
            &[(Some(&pd), d, &rd, &id_[..]), (Some(&pe), e, &re, &ie[..])]
        )
        .await
        .expect("batch"));
    for (id, input) in [(d, known.outpoint), (e, learned.outpoint)] {
        assert_eq!(opened(id).await, (Some("voting".to_owned()), 1));
        assert!(store.inputs_reserved_by(id, &[input]).await.expect("check"));
    }
}

/// When the audit records of `action` about `id` were written (a group's records
/// share its one timestamp).
async fn audit_ts(store: &Store, action: &str, id: Uuid) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT ts FROM audit_log WHERE action = $1 AND subject = $2")
        .bind(action)
        .bind(id.to_string())
        .fetch_all(store.pool())
        .await
        .expect("read")
}

/// A database transaction holding the audit append lock until it ends: writes
/// that arrive meanwhile queue for their group.
async fn hold_audit_lock(store: &Store) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::store::audit::AUDIT_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("lock");
    holder
}

/// A leader's submissions that arrive while one is being stored are stored
/// together (one database transaction: their audit records share its timestamp),
/// each with its row, its reservation and its audit record; one whose output is
/// no longer available fails alone, with the error a lone submission gets, and
/// nothing of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_stored_together_are_each_audited_and_one_whose_output_is_gone_fails_alone() {
    let (_pg, store, _tx, _round) = store_with_round().await;
    let coins: Vec<_> = (41..=46).map(|n| utxo(n, 10_000)).collect();
    store.add_utxos(&coins).await.expect("import");
    let submit = |outpoint: bitcoin::OutPoint| {
        let store = store.clone();
        let id = Uuid::new_v4();
        let new = NewTransaction {
            recipient: Some("bcrt1q".into()),
            amount_sats: Some(1_000),
            fee_sats: Some(200),
            ..hot_tx(id, "ops")
        };
        let audit = crate::store::audit::AuditOf::new(
            "node-1",
            crate::audit::AuditEntry::new("ops", "tx.submit").subject(id.to_string()),
        );
        (
            id,
            tokio::spawn(async move {
                store
                    .insert_submitted_transaction(&new, &[outpoint], audit)
                    .await
            }),
        )
    };
    let submit_ts = |id: Uuid| audit_ts(&store, "tx.submit", id);
    // Phase 1: the first submission's write waits for the audit lock held here;
    // three more queue behind it, one of them for the first one's output.
    let holder = hold_audit_lock(&store).await;
    let first = submit(coins[0].outpoint);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = [
        submit(coins[1].outpoint),
        submit(coins[0].outpoint),
        submit(coins[2].outpoint),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.commit().await.expect("unlock");
    first.1.await.expect("task").expect("first stored");
    let mut results = Vec::new();
    for (id, task) in queued {
        results.push((id, task.await.expect("task")));
    }
    for (i, (id, r)) in results.iter().enumerate() {
        if i == 1 {
            assert!(
                matches!(
                    r,
                    Err(crate::store::StoreError::Duplicate {
                        what: "utxo reservation",
                        ..
                    })
                ),
                "the second claim of an output fails as a lone one does: {r:?}"
            );
            assert!(store.get_transaction(*id).await.is_err(), "no row");
            assert!(submit_ts(*id).await.is_empty(), "no audit record");
        } else {
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(submit_ts(*id).await.len(), 1, "one audit record");
        }
    }
    assert!(store
        .inputs_reserved_by(first.0, &[coins[0].outpoint])
        .await
        .expect("check"));
    assert!(store
        .inputs_reserved_by(results[0].0, &[coins[1].outpoint])
        .await
        .expect("check"));

    // Phase 2: without a bad one, the queued submissions share one commit.
    let holder = hold_audit_lock(&store).await;
    let lone = submit(coins[3].outpoint);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let together = [submit(coins[4].outpoint), submit(coins[5].outpoint)];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.commit().await.expect("unlock");
    lone.1.await.expect("task").expect("stored");
    let mut stamps = Vec::new();
    for (i, (id, task)) in together.into_iter().enumerate() {
        task.await.expect("task").expect("stored");
        assert!(store
            .inputs_reserved_by(id, &[coins[4 + i].outpoint])
            .await
            .expect("check"));
        stamps.extend(submit_ts(id).await);
    }
    assert_eq!(stamps.len(), 2);
    assert_eq!(
        stamps[0], stamps[1],
        "the two were written in one transaction"
    );
    assert_ne!(
        submit_ts(lone.0).await,
        vec![stamps[0]],
        "the lone one in its own"
    );
    let (ok, _, broken) = store.verify_audit_chain().await.expect("verify");
    assert!(broken.is_none() && ok >= 6, "the chain links every record");
}

/// Signing entries that arrive while one is being written are written together
/// (their audit records share one transaction's timestamp), each with its claim,
/// its move to `signing` and its audit record; in a group with a used session id
/// and an ended transaction, those two get their own answers (nothing written
/// for them) and the others are entered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_entries_written_together_each_claim_their_session_and_a_bad_one_fails_alone() {
    use crate::store::transactions::{SessionClaim, SigningEntry};
    let (_pg, store, _tx, _round) = store_with_round().await;
    let approved = |store: Store| async move {
        let id = new_tx(&store).await;
        for to in ["voting", "approved"] {
            store
                .transition_transaction(id, to, None)
                .await
                .expect("to approved");
        }
        id
    };
    let signers = vec!["node-1".to_owned(), "node-2".to_owned()];
    let enter = |tx: Uuid, session: Uuid| {
        let store = store.clone();
        let signers = signers.clone();
        tokio::spawn(async move {
            let claim = SessionClaim {
                session,
                tx,
                input: 0,
                signers: &signers,
                leader: "node-1",
            };
            let audit = crate::store::audit::AuditOf::new(
                "node-1",
                crate::audit::AuditEntry::new("node", "tx.signing").subject(tx.to_string()),
            );
            store.enter_signing_session(&claim, audit).await
        })
    };
    let entry_ts = |id: Uuid| audit_ts(&store, "tx.signing", id);
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(300));

    // Phase 1: a used session id and an ended transaction among fine entries.
    let used = Uuid::new_v4();
    let (a, b, c, ended) = (
        approved(store.clone()).await,
        approved(store.clone()).await,
        approved(store.clone()).await,
        new_tx(&store).await,
    );
    store
        .transition_transaction(ended, "rejected", None)
        .await
        .expect("rejected");
    let holder = hold_audit_lock(&store).await;
    let first = enter(a, used);
    pause().await;
    let queued = [
        (b, enter(b, Uuid::new_v4())),
        (c, enter(c, used)),
        (ended, enter(ended, Uuid::new_v4())),
    ];
    pause().await;
    holder.commit().await.expect("unlock");
    assert_eq!(
        first.await.expect("task").expect("entry"),
        SigningEntry::Entered
    );
    let mut answers = Vec::new();
    for (id, task) in queued {
        answers.push((id, task.await.expect("task").expect("entry")));
    }
    assert_eq!(
        answers,
        [
            (b, SigningEntry::Entered),
            (c, SigningEntry::SessionUsed),
            (ended, SigningEntry::Closed)
        ]
    );
    let state = |id: Uuid| {
        let store = store.clone();
        async move { store.get_transaction(id).await.expect("row").state }
    };
    assert_eq!(state(b).await, "signing");
    assert_eq!(
        state(c).await,
        "approved",
        "nothing written for the used id"
    );
    assert_eq!(state(ended).await, "rejected");
    assert!(entry_ts(c).await.is_empty() && entry_ts(ended).await.is_empty());
    assert_eq!(entry_ts(b).await.len(), 1);

    // Phase 2: fine entries queued together share one commit.
    let (d, e, f) = (
        approved(store.clone()).await,
        approved(store.clone()).await,
        approved(store.clone()).await,
    );
    let holder = hold_audit_lock(&store).await;
    let lone = enter(d, Uuid::new_v4());
    pause().await;
    let together = [enter(e, Uuid::new_v4()), enter(f, Uuid::new_v4())];
    pause().await;
    holder.commit().await.expect("unlock");
    assert_eq!(
        lone.await.expect("task").expect("entry"),
        SigningEntry::Entered
    );
    for task in together {
        assert_eq!(
            task.await.expect("task").expect("entry"),
            SigningEntry::Entered
        );
    }
    let (te, tf) = (entry_ts(e).await, entry_ts(f).await);
    assert_eq!((te.len(), tf.len()), (1, 1));
    assert_eq!(te, tf, "the two were entered in one transaction");
    assert_ne!(entry_ts(d).await, te, "the lone one in its own");
    for id in [d, e, f] {
        assert_eq!(state(id).await, "signing");
    }
    let (_, _, broken) = store.verify_audit_chain().await.expect("verify");
    assert!(broken.is_none(), "the chain links every record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_opens_with_its_inputs_reserved_and_a_replay_opens_nothing() {
    let (_pg, store, tx, _round) = store_with_round().await;
    let rounds = |id: Uuid| {
        let store = store.clone();
        async move { rounds_of(&store, id).await }
    };
    let round = |no| crate::store::votes::NewRound {
        id: Uuid::new_v4(),
        round_no: no,
        required_approvals: 2,
        total_nodes: 3,
        deadline: chrono::Utc::now() + chrono::Duration::seconds(60),
    };
    let replay = hot_tx(tx, "replayer");
    // A peer's proposal whose id is known already: refused as a duplicate, and
    // nothing of it written (no round, no leader, state unchanged).
    let err = store
        .open_voting(Some(&replay), tx, "node-9", &round(2), &[utxo(6, 1_000)])
        .await
        .expect_err("a known id is a duplicate");
    assert!(
        matches!(err, crate::store::StoreError::Duplicate { .. }),
        "{err}"
    );
    assert_eq!(rounds(tx).await, 1);
    let row = store.get_transaction(tx).await.expect("row");
    assert_eq!(row.leader, None);
    assert_eq!(row.state, "pending");
    assert!(
        store
            .unspent_among(&[utxo(6, 1_000).outpoint])
            .await
            .expect("read")
            .is_empty(),
        "nothing of a refused proposal is reserved"
    );
    // A new one: row, leader, state, round and the reservation of its proven inputs
    // at once.
    let fresh = Uuid::new_v4();
    let new = NewTransaction {
        id: fresh,
        ..replay
    };
    let input = utxo(7, 10_000);
    let unavailable = store
        .open_voting(
            Some(&new),
            fresh,
            "node-2",
            &round(1),
            std::slice::from_ref(&input),
        )
        .await
        .expect("open");
    assert_eq!(unavailable, None);
    let row = store.get_transaction(fresh).await.expect("row");
    assert_eq!(row.leader.as_deref(), Some("node-2"));
    assert_eq!(row.state, "voting");
    assert_eq!(rounds(fresh).await, 1);
    assert!(store
        .inputs_reserved_by(fresh, &[input.outpoint])
        .await
        .expect("check"));
    // Another leader's proposal spending the same input: recorded (this node votes
    // reject on it) with nothing reserved for it, not even its other input.
    let second = Uuid::new_v4();
    let other = utxo(8, 5_000);
    let unavailable = store
        .open_voting(
            Some(&NewTransaction { id: second, ..new }),
            second,
            "node-3",
            &round(1),
            &[other.clone(), input.clone()],
        )
        .await
        .expect("open");
    assert_eq!(unavailable, Some(input.outpoint));
    assert_eq!(
        store.get_transaction(second).await.expect("row").state,
        "voting"
    );
    assert_eq!(rounds(second).await, 1);
    assert!(store
        .unspent_among(&[other.outpoint])
        .await
        .expect("read")
        .is_empty());
    assert!(store
        .inputs_reserved_by(fresh, &[input.outpoint])
        .await
        .expect("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_in_flight_expire_at_start_and_signing_ones_keep_their_inputs() {
    let (_pg, store, voting, round) = store_with_round().await;
    store
        .transition_transaction(voting, "voting", None)
        .await
        .expect("voting");
    let signing = new_tx(&store).await;
    for to in ["voting", "approved", "signing"] {
        store
            .transition_transaction(signing, to, None)
            .await
            .expect("to signing");
    }
    let done = new_tx(&store).await;
    store
        .transition_transaction(done, "rejected", None)
        .await
        .expect("rejected");
    assert_eq!(
        store
            .reserve_inputs(voting, &[utxo(1, 10_000)])
            .await
            .expect("r"),
        InputReservation::Reserved
    );
    assert_eq!(
        store
            .reserve_inputs(signing, &[utxo(2, 10_000)])
            .await
            .expect("r"),
        InputReservation::Reserved
    );
    // A transaction that already ended reserves nothing (its inputs would never
    // be released again).
    assert_eq!(
        store
            .reserve_inputs(done, &[utxo(3, 10_000)])
            .await
            .expect("r"),
        InputReservation::TransactionEnded("rejected".into())
    );
    assert!(!store
        .inputs_reserved_by(done, &[utxo(3, 1).outpoint])
        .await
        .expect("check"));

    assert_eq!(store.expire_in_flight("node-1").await.expect("expire"), 2);
    for id in [voting, signing] {
        assert_eq!(
            store.get_transaction(id).await.expect("tx").state,
            "expired"
        );
    }
    assert_eq!(
        store.get_transaction(done).await.expect("tx").state,
        "rejected"
    );
    assert_eq!(
        store.get_round(round).await.expect("round").state,
        "expired"
    );
    assert!(!store
        .inputs_reserved_by(voting, &[utxo(1, 1).outpoint])
        .await
        .expect("check"));
    assert!(
        store
            .inputs_reserved_by(signing, &[utxo(2, 1).outpoint])
            .await
            .expect("check"),
        "a partial may have left: the input stays reserved"
    );
    let audited = store.audit_rows(0, 1000).await.expect("audit");
    assert_eq!(
        audited.iter().filter(|r| r.action == "tx.expired").count(),
        2
    );
    assert_eq!(store.expire_in_flight("node-1").await.expect("again"), 0);
}

/// Makes every audit append fail (as a broken disk or a hostile trigger would),
/// or lets them through again.
async fn audit_appends_fail(store: &Store, fail: bool) {
    let sql = if fail {
        "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger AS $$ \
         BEGIN RAISE EXCEPTION 'audit append refused by the test'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION refuse_audit();"
    } else {
        "DROP TRIGGER refuse_audit ON audit_log;"
    };
    sqlx::raw_sql(sql)
        .execute(store.pool())
        .await
        .expect("trigger");
}

fn audit_of(action: &str) -> crate::store::audit::AuditOf {
    crate::store::audit::AuditOf::new("node-1", crate::audit::AuditEntry::new("test", action))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_write_that_fails_fails_the_change_and_writes_nothing() {
    let (_pg, store, tx, _round) = store_with_round().await;
    store
        .insert_token(
            "tok00001",
            "ops",
            "operator",
            &format!("sha256$v1${}", "0".repeat(64)),
            60,
            "test",
            audit_of("token.create"),
        )
        .await
        .expect("token");
    store.add_utxos(&[utxo(7, 50_000)]).await.expect("import");
    audit_appends_fail(&store, true).await;

    // Token revocation: refused, the token stays valid and nothing is announced.
    assert!(store
        .revoke_token("tok00001", audit_of("token.revoke"))
        .await
        .is_err());
    let t = store
        .find_token("tok00001")
        .await
        .expect("read")
        .expect("row");
    assert!(t.revoked_at.is_none(), "revoked without its audit row");

    // A leader's submission: no row, no reservation.
    let id = Uuid::new_v4();
    let new = NewTransaction {
        id,
        key_id: Some("hot".into()),
        recipient: None,
        amount_sats: Some(1_000),
        fee_sats: Some(200),
        psbt: None,
        initiator: "test".into(),
    };
    assert!(store
        .insert_submitted_transaction(&new, &[utxo(7, 1).outpoint], audit_of("tx.submit"))
        .await
        .is_err());
    assert!(
        store.get_transaction(id).await.is_err(),
        "transaction row without its audit row"
    );
    assert_eq!(store.available_utxos("hot").await.expect("list").len(), 1);

    // A human approval and a violation: not recorded.
    assert!(store
        .insert_approval(
            tx,
            "alice",
            "treasury",
            "node-1",
            &[1; 32],
            &[2; 64],
            audit_of("tx.approve")
        )
        .await
        .is_err());
    assert!(store.approvals(tx).await.expect("read").is_empty());
    assert!(store
        .record_violation(
            "node-2",
            "double_vote",
            None,
            &serde_json::json!({}),
            "node-1",
            "node-1"
        )
        .await
        .is_err());
    assert!(store.list_violations(10).await.expect("read").is_empty());

    // With the audit log writable again, the same changes go through, each with
    // its row, and the revocation is announced to running nodes.
    audit_appends_fail(&store, false).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool())
        .await
        .expect("listener");
    listener
        .listen(crate::store::tokens::TOKEN_REVOKED_CHANNEL)
        .await
        .expect("listen");
    assert!(store
        .revoke_token("tok00001", audit_of("token.revoke"))
        .await
        .expect("revoke"));
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("notified in time")
        .expect("notification");
    assert_eq!(n.payload(), "tok00001");
    assert!(!store
        .revoke_token("tok00001", audit_of("token.revoke"))
        .await
        .expect("second revoke"));
    store
        .insert_submitted_transaction(&new, &[utxo(7, 1).outpoint], audit_of("tx.submit"))
        .await
        .expect("submission");
    assert!(store.available_utxos("hot").await.expect("list").is_empty());
    let actions: Vec<String> = store
        .audit_rows(0, 100)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        ["token.create", "token.revoke", "tx.submit"],
        "one row per change that happened, none for the refused ones"
    );
}

/// An envelope laid out as `hsm::envelope` writes it (kind `kind`, a 3-byte KEK id,
/// a 1-byte wrapped key, a 16-byte ciphertext).
fn envelope_shaped(kind: u8) -> Vec<u8> {
    let mut b = b"CENV".to_vec();
    b.extend_from_slice(&[1, kind, 1, 0, 3]);
    b.extend_from_slice(b"kek");
    b.extend_from_slice(&[0, 1, 0xaa]);
    b.extend_from_slice(&[0; 12]);
    b.extend_from_slice(&16u32.to_be_bytes());
    b.extend_from_slice(&[0x55; 16]);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_columns_refuse_anything_but_an_envelope_of_their_kind() {
    let (_pg, store, _tx, _round) = store_with_round().await;
    let check = |b: Vec<u8>, kinds: Option<Vec<i32>>| {
        let store = store.clone();
        async move {
            let (ok,): (bool,) = sqlx::query_as("SELECT is_custody_envelope($1, $2)")
                .bind(b)
                .bind(kinds)
                .fetch_one(store.pool())
                .await
                .expect("query");
            ok
        }
    };
    assert!(check(envelope_shaped(1), Some(vec![1, 6])).await);
    assert!(check(envelope_shaped(4), None).await);
    assert!(
        !check(envelope_shaped(3), Some(vec![1, 6])).await,
        "wrong kind"
    );
    let mut long = envelope_shaped(1);
    long.push(0);
    assert!(!check(long, None).await, "bytes after the ciphertext");
    let mut short = envelope_shaped(1);
    short.pop();
    assert!(!check(short, None).await, "truncated ciphertext");
    let plaintext = br#"{"share":"0123456789abcdef0123456789abcdef0123456789abcdef"}"#.to_vec();
    assert!(!check(plaintext.clone(), None).await, "plaintext");

    // The database itself refuses a plaintext secret in a secret column.
    let insert = |envelope: Vec<u8>| {
        let store = store.clone();
        async move {
            sqlx::query(
                "INSERT INTO node_keys (purpose, algorithm, public_key, envelope, kek_id) \
                 VALUES ('vote_signing', 'ed25519', $1, $2, 'kek')",
            )
            .bind(vec![0u8; 32])
            .bind(envelope)
            .execute(store.pool())
            .await
        }
    };
    let refused = insert(plaintext).await.expect_err("plaintext refused");
    assert!(
        refused
            .to_string()
            .contains("node_keys_envelope_is_envelope"),
        "{refused}"
    );
    insert(envelope_shaped(4))
        .await
        .expect("an envelope is stored");
}
