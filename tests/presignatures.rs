//! The presignature pool on one real 3-node 2-of-3 cluster (PostgreSQL, etcd,
//! SoftHSM, QUIC): the pools fill to target and agree across nodes; ECDSA signing
//! consumes exactly one presignature per input on each signer; 50 concurrent input
//! signatures consume 50 distinct presignatures; after a database rollback under
//! running nodes, no presignature from before it is used (every node's database
//! checked); a signer killed right after it consumed one never uses it again and
//! the transaction still gets signed; after a restore of a stopped node's database
//! and data directory together, its TPM counter (the watermark's anchor) shows it
//! and presignatures from before the backup are not used.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster_tests::tpm::{anchor_watermark_in_tpm, Swtpm};
use cluster_tests::wallet::{
    aux_info, first_address, import, signed_everywhere, submit_payment, verify_consensus,
};
use cluster_tests::{funding, Cluster};
use serde_json::json;

const N: usize = 3;
const TARGET: i64 = 3;

/// A presignature row as every node stores it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Row {
    public_id: Vec<u8>,
    signer_set: Vec<String>,
    state: String,
    consumed_by: Option<uuid::Uuid>,
    consumed_input: Option<i32>,
}

async fn rows(c: &Cluster, i: usize, key: &str) -> Vec<Row> {
    let db = c.db(i).await;
    let r = sqlx::query_as::<_, Row>(
        "SELECT public_id, signer_set, state, consumed_by, consumed_input \
         FROM presignatures WHERE key_id = $1 ORDER BY seq",
    )
    .bind(key)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    r
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Available public ids of `set` on node `i`.
async fn available(c: &Cluster, i: usize, key: &str, set: &[String]) -> BTreeSet<Vec<u8>> {
    rows(c, i, key)
        .await
        .into_iter()
        .filter(|r| r.signer_set == set && r.state == "available")
        .map(|r| r.public_id)
        .collect()
}

/// Index of node `id` (`node-<k>` is index k-1).
fn index_of(c: &Cluster, id: &str) -> usize {
    (0..N).find(|i| c.node(*i).id == id).unwrap()
}

/// Waits until both members of `set` hold the same available presignatures, at
/// least `min` of them; returns them.
async fn agreed_pool(
    c: &Cluster,
    key: &str,
    set: &[String],
    min: usize,
    within: u64,
) -> BTreeSet<Vec<u8>> {
    c.eventually(
        &format!("pool of {set:?} agreed on both members with >= {min}"),
        Duration::from_secs(within),
        || async {
            let mut seen: Option<BTreeSet<Vec<u8>>> = None;
            for m in set {
                let a = available(c, index_of(c, m), key, set).await;
                if a.len() < min || seen.as_ref().is_some_and(|s| *s != a) {
                    return None;
                }
                seen = Some(a);
            }
            seen
        },
    )
    .await
}

/// Waits until the leader of `set` (its lowest node id) holds at least `min`
/// available presignatures of `set` and every other member holds each of them
/// (members may hold more: copies of presignatures the leader discarded, which it
/// never names).
async fn leader_pool(c: &Cluster, key: &str, set: &[String], min: usize, within: u64) {
    c.eventually(
        &format!("pool of {set:?}: >= {min} on its leader, all held by the others"),
        Duration::from_secs(within),
        || async {
            let lead = available(c, index_of(c, &set[0]), key, set).await;
            if lead.len() < min {
                return None;
            }
            for m in &set[1..] {
                if !lead.is_subset(&available(c, index_of(c, m), key, set).await) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Rows of `key` consumed for transaction `tx` on node `i`: (public id, input).
async fn consumed_for(c: &Cluster, i: usize, key: &str, tx: &str) -> Vec<(Vec<u8>, i32)> {
    let tx: uuid::Uuid = tx.parse().unwrap();
    rows(c, i, key)
        .await
        .into_iter()
        .filter(|r| r.state == "consumed" && r.consumed_by == Some(tx))
        .map(|r| (r.public_id, r.consumed_input.unwrap()))
        .collect()
}

/// No presignature used twice: every node holds a public id at most once, and across
/// all nodes a public id is reserved or consumed for one (transaction, input) only.
async fn none_used_twice(c: &Cluster, nodes: &[usize], key: &str) {
    let mut uses: BTreeMap<Vec<u8>, (Option<uuid::Uuid>, Option<i32>)> = BTreeMap::new();
    for &i in nodes {
        let all = rows(c, i, key).await;
        let distinct: BTreeSet<_> = all.iter().map(|r| r.public_id.clone()).collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "node {i} holds a presignature twice"
        );
        for r in all {
            if r.state != "consumed" && r.state != "reserved" {
                continue;
            }
            let u = (r.consumed_by, r.consumed_input);
            let prev = uses.entry(r.public_id.clone()).or_insert(u);
            assert_eq!(
                *prev,
                u,
                "presignature {} used for two inputs",
                hex::encode(&r.public_id)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presignature_pool_fills_signs_once_survives_crash_and_restore() {
    // Every node process (also restarted ones) inherits these overrides.
    for (k, v) in [
        ("SIGNER__PRESIGN__ENABLED", "true"),
        ("SIGNER__PRESIGN__TARGET", "3"),
        ("SIGNER__PRESIGN__LOW_WATERMARK", "2"),
        ("SIGNER__PRESIGN__BATCH", "8"),
        ("SIGNER__PRESIGN__MAX_PATHS", "1"),
        ("SIGNER__PRESIGN__PARTIAL_TIMEOUT_SECS", "20"),
        ("SIGNER__PRESIGN__CHECK_INTERVAL_SECS", "1"),
    ] {
        std::env::set_var(k, v);
    }
    let start = Instant::now();
    let step = |n: u32| println!("step {n} at {:.1} s", start.elapsed().as_secs_f64());
    let c = Cluster::start(3, 2);
    let _logs = c.keep_logs_on_failure("presignatures");
    c.wait_ready(N).await;
    // node-3 anchors its restore watermark in a TPM (swtpm) counter (step 6).
    let tpm = Swtpm::start();
    anchor_watermark_in_tpm(&c, 2, &tpm).await;
    c.wait_ready(N).await;
    let key = c.dkg(N, "cggmp24", 2).await;
    aux_info(&c, N).await;
    for i in 0..N {
        c.write_node_policy(i, &[&key], 1_000_000, "");
    }
    let addr = first_address(&c, &key).await;
    let sets = [
        ids(&["node-1", "node-2"]),
        ids(&["node-1", "node-3"]),
        ids(&["node-2", "node-3"]),
    ];

    step(1);
    // 1. Every pool fills to the target on both of its members, with the same
    //    presignatures (compared by public id); status and metrics report it.
    for set in &sets {
        let pool = agreed_pool(&c, &key, set, TARGET as usize, 600).await;
        assert_eq!(
            pool.len() as i64,
            TARGET,
            "{set:?} fills to the target exactly"
        );
    }
    for i in 0..N {
        let st = c.get_ok(i, "/api/v1/presignatures/status").await.unwrap();
        let pools = st["pools"].as_array().unwrap();
        assert_eq!(pools.len(), 2, "node {i} is in two signer sets: {st}");
        for p in pools {
            assert!(p["available"].as_i64().unwrap() >= TARGET, "{p}");
        }
        let m = c
            .client()
            .get(c.url(i, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("signer_presignatures{key_id="), "{m}");
    }
    // Bad generate requests: 4xx with a code.
    for (body, want, code) in [
        (json!({ "count": 0 }), 400, "count_out_of_range"),
        (json!({ "count": 100000 }), 400, "count_out_of_range"),
        (json!({ "key_id": "nope", "count": 1 }), 400, "unknown_key"),
        (
            json!({ "signer_set": ["node-9"], "count": 1 }),
            400,
            "invalid_signer_set",
        ),
        (json!({ "count": 1, "x": 1 }), 422, "invalid_request"),
    ] {
        let (status, v) = c
            .post_json(0, "/api/v1/presignatures/generate", &body)
            .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (want, Some(code)),
            "{body}: {v}"
        );
    }

    step(2);
    // 2. A two-input payment: exactly one presignature per input on each signer.
    let fund_a = funding(&addr, &[20_000, 20_000]);
    import(&c, &fund_a).await;
    let tx_a = submit_payment(&c, &key, 30_000, 1).await;
    let signed = signed_everywhere(&c, &[0, 1, 2], &tx_a, 300).await;
    assert_eq!(signed.input.len(), 2);
    verify_consensus(&signed, &[&fund_a]);
    let mut signer_nodes = Vec::new();
    let mut used: Option<BTreeSet<(Vec<u8>, i32)>> = None;
    for i in 0..N {
        let u: BTreeSet<_> = consumed_for(&c, i, &key, &tx_a).await.into_iter().collect();
        if u.is_empty() {
            continue;
        }
        signer_nodes.push(i);
        assert_eq!(u.len(), 2, "node {i}: one presignature per input");
        assert_eq!(
            u.iter().map(|(_, inp)| *inp).collect::<BTreeSet<_>>(),
            BTreeSet::from([0, 1])
        );
        assert_eq!(
            used.get_or_insert(u.clone()),
            &u,
            "signers consumed the same ones"
        );
    }
    // The leader node-1 and one partner: usually node-2 (first in key order), but
    // under load node-2's vote may reach the leader after the round closed with
    // node-3's, and then node-3 signs (see step 3).
    assert!(
        signer_nodes == [0, 1] || signer_nodes == [0, 2],
        "node-1 (leader) and one partner signed: {signer_nodes:?}"
    );

    step(3);
    // 3. 50 inputs signed concurrently: 50 distinct presignatures on each signer.
    let pair = &sets[0];
    let t0 = Instant::now();
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/presignatures/generate",
            &json!({ "key_id": key, "signer_set": pair, "count": 50 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    agreed_pool(&c, &key, pair, 50, 1800).await;
    println!(
        "generating 50 presignatures for {pair:?} took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let fund_b = funding(&addr, &[10_000; 50]);
    import(&c, &fund_b).await;
    let tx_b = submit_payment(&c, &key, 494_000, 1).await;
    let signed = signed_everywhere(&c, &[0, 1, 2], &tx_b, 600).await;
    assert_eq!(signed.input.len(), 50, "all 50 UTXOs spent");
    verify_consensus(&signed, &[&fund_b]);
    // The leader (node-1) used one presignature per input, 50 distinct.
    let lead: BTreeSet<(Vec<u8>, i32)> =
        consumed_for(&c, 0, &key, &tx_b).await.into_iter().collect();
    let distinct: BTreeSet<_> = lead.iter().map(|(id, _)| id.clone()).collect();
    let inputs: BTreeSet<_> = lead.iter().map(|(_, inp)| *inp).collect();
    assert_eq!(
        (lead.len(), distinct.len(), inputs.len()),
        (50, 50, 50),
        "node-1 (leader)"
    );
    // Each input's second signer consumed the same presignature for the same input.
    // Usually node-2 for all of them; a vote of node-2 that reaches the leader after
    // the round closed makes it start with the node-1/node-3 pool (target 3), then
    // widen to node-2 once the vote is in, so the partner is not fixed.
    let mut partners = consumed_for(&c, 1, &key, &tx_b).await;
    partners.extend(consumed_for(&c, 2, &key, &tx_b).await);
    assert_eq!(partners.len(), 50, "one partner consumption per input");
    let partners: BTreeSet<(Vec<u8>, i32)> = partners.into_iter().collect();
    assert_eq!(
        partners, lead,
        "each input's signers used the same presignature"
    );
    none_used_twice(&c, &[0, 1, 2], &key).await;

    step(4);
    // 4. Rollback under running nodes (see `rollback_while_running`): node-2 rejects
    //    by policy meanwhile, so the leader node-1 signs with node-3.
    c.write_node_policy(1, &[], 1_000_000, "");
    rollback_while_running(&c, &key, &addr, &sets[1]).await;
    c.write_node_policy(1, &[&key], 1_000_000, "");

    step(5);
    // 5. The partner of the leader exits right after consuming a presignature (fault
    //    injection, armed on node-2 and node-3 with one marker file: only the first
    //    to consume exits, whichever set the leader picks). That presignature stays
    //    consumed and the input is signed by the other node.
    let marker = c.dir.join("presig-fault-marker");
    let marker_s = marker.display().to_string();
    for i in [1, 2] {
        c.kill_node(i);
        c.restart_node_with_env(i, &[("SIGNER_FAULT_EXIT_AFTER_PRESIG_CONSUME", &marker_s)]);
    }
    c.wait_ready(N).await;
    // (After step 4, node-2 still holds its copies of the node-1/node-2
    // presignatures node-1 discarded: node-1 never names those.)
    leader_pool(&c, &key, pair, 1, 600).await;
    leader_pool(&c, &key, &sets[1], 1, 600).await;
    let fund_c = funding(&addr, &[50_000]);
    import(&c, &fund_c).await;
    let tx_c = submit_payment(&c, &key, 20_000, 1).await;
    let dead_id = c
        .eventually(
            "a signer exited after consuming",
            Duration::from_secs(120),
            || async {
                std::fs::read_to_string(&marker)
                    .ok()
                    .filter(|s| !s.is_empty())
            },
        )
        .await;
    let dead = index_of(&c, &dead_id);
    let alive = if dead == 1 { 2 } else { 1 };
    let signed = signed_everywhere(&c, &[0, alive], &tx_c, 300).await;
    verify_consensus(&signed, &[&fund_c]);
    let pid = nix::unistd::Pid::from_raw(c.node_pid(dead).unwrap() as i32);
    c.eventually(
        "the faulty node exited",
        Duration::from_secs(30),
        || async {
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            nix::sys::signal::kill(pid, None).is_err().then_some(())
        },
    )
    .await;
    // Back without the fault (the variable is not in this process's environment).
    for i in [1, 2] {
        if i == alive {
            c.kill_node(i);
        }
        c.restart_node(i);
    }
    c.wait_ready(N).await;
    let burnt = consumed_for(&c, dead, &key, &tx_c).await;
    assert_eq!(
        burnt.len(),
        1,
        "{dead_id} consumed one presignature before exiting"
    );
    let burnt_id = burnt[0].0.clone();
    let other = consumed_for(&c, alive, &key, &tx_c).await;
    assert!(
        other.iter().all(|(id, _)| *id != burnt_id),
        "the retry did not reuse the burnt presignature"
    );
    for i in 0..N {
        for r in rows(&c, i, &key).await {
            if r.public_id == burnt_id {
                assert_ne!(
                    r.state, "available",
                    "node {i}: burnt presignature is available"
                );
            }
        }
    }
    none_used_twice(&c, &[0, 1, 2], &key).await;

    step(6);
    // 6. Restore: node-3's host goes back to a backup while it is stopped: its
    //    database AND its data directory (the watermark file agrees with the old
    //    database, so the file alone sees nothing). Its TPM counter cannot go back:
    //    presignatures from before the backup are never used by node-3 again. node-2
    //    rejects by policy, so the leader node-1 must sign with node-3 (set
    //    node-1/node-3).
    c.write_node_policy(1, &[], 1_000_000, "");
    let pool13 = &sets[1];
    agreed_pool(&c, &key, pool13, 2, 600).await;
    let su = c.db_superuser(2).await;
    for q in [
        "CREATE TABLE backup_presignatures AS SELECT * FROM presignatures",
        "CREATE TABLE backup_presign_watermark AS SELECT * FROM presign_watermark",
    ] {
        sqlx::query(q).execute(&su).await.unwrap();
    }
    let watermark_file = c.node(2).dir.join("presign-watermark");
    let backup_file = std::fs::read(&watermark_file).unwrap();
    let backup_ids: BTreeSet<Vec<u8>> = rows(&c, 2, &key)
        .await
        .into_iter()
        .filter(|r| r.state == "available")
        .map(|r| r.public_id)
        .collect();
    let fund_d = funding(&addr, &[50_000, 50_000]);
    import(&c, &fund_d).await;
    let tx_d = submit_payment(&c, &key, 20_000, 1).await;
    let signed = signed_everywhere(&c, &[0, 2], &tx_d, 300).await;
    verify_consensus(&signed, &[&fund_d]);
    let after_backup = consumed_for(&c, 2, &key, &tx_d).await;
    assert_eq!(
        after_backup.len(),
        1,
        "node-3 used a presignature after the backup"
    );
    assert!(backup_ids.contains(&after_backup[0].0));
    c.kill_node(2);
    for q in [
        "DELETE FROM presignatures",
        "INSERT INTO presignatures OVERRIDING SYSTEM VALUE SELECT * FROM backup_presignatures",
        "UPDATE presign_watermark SET (counter, tpm_anchor) = \
         (SELECT counter, tpm_anchor FROM backup_presign_watermark)",
        "DROP TABLE backup_presignatures",
        "DROP TABLE backup_presign_watermark",
    ] {
        sqlx::query(q).execute(&su).await.unwrap();
    }
    su.close().await;
    std::fs::write(&watermark_file, &backup_file).unwrap();
    c.restart_node(2);
    c.wait_ready(N).await;
    c.eventually(
        "restore detected on node-3",
        Duration::from_secs(60),
        || async {
            c.get_ok(2, "/api/v1/presignatures/status")
                .await
                .filter(|v| v["restore_checked"] == true)
        },
    )
    .await;
    for r in rows(&c, 2, &key).await {
        if backup_ids.contains(&r.public_id) {
            assert_eq!(
                r.state, "discarded",
                "pre-backup presignature on node-3: {r:?}"
            );
        }
    }
    // The TPM alone saw it: the restored file agreed with the restored database.
    let (reason, details): (String, serde_json::Value) = sqlx::query_as(
        "SELECT details->>'reason', details FROM audit_log \
         WHERE action = 'presign.discarded' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&c.db(2).await)
    .await
    .unwrap();
    assert!(
        reason.starts_with("tpm counter") && reason.contains("ahead of the database's anchor"),
        "{reason}"
    );
    assert_eq!(
        details["watermark"], details["database_counter"],
        "{details}"
    );
    assert!(
        details["tpm_counter"].as_i64().unwrap() > details["tpm_anchor"].as_i64().unwrap(),
        "{details}"
    );
    let tx_e = submit_payment(&c, &key, 20_000, 1).await;
    let signed = signed_everywhere(&c, &[0, 2], &tx_e, 300).await;
    verify_consensus(&signed, &[&fund_d]);
    for r in rows(&c, 2, &key).await {
        if backup_ids.contains(&r.public_id) {
            assert_eq!(
                r.state, "discarded",
                "node-3 used a pre-backup presignature: {r:?}"
            );
        }
    }
    none_used_twice(&c, &[0, 2], &key).await;
    println!("done at {:.1} s", start.elapsed().as_secs_f64());
}

/// A presignature row's state and recorded use.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Use {
    public_id: Vec<u8>,
    state: String,
    consumed_by: Option<uuid::Uuid>,
    consumed_input: Option<i32>,
}

/// Every presignature row of node `i` (all keys), by public id.
async fn uses(c: &Cluster, i: usize) -> BTreeMap<Vec<u8>, Use> {
    let db = c.db(i).await;
    let r = sqlx::query_as::<_, Use>(
        "SELECT public_id, state, consumed_by, consumed_input FROM presignatures ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    r.into_iter().map(|u| (u.public_id.clone(), u)).collect()
}

fn used(u: &Use) -> bool {
    u.state == "reserved" || u.state == "consumed"
}

/// Waits until `set`'s pool agrees on both members with at least `min` available and
/// none of `set` is being generated on either (nothing of it in flight).
async fn settled_pool(c: &Cluster, key: &str, set: &[String], min: usize) {
    agreed_pool(c, key, set, min, 600).await;
    c.eventually(
        &format!("no generation in flight on {set:?}"),
        Duration::from_secs(600),
        || async {
            for m in set {
                let st = c
                    .get_ok(index_of(c, m), "/api/v1/presignatures/status")
                    .await?;
                let busy = st["pools"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["signer_set"] == serde_json::json!(set))
                    .any(|p| p["generating"].as_u64() != Some(0));
                if busy {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    agreed_pool(c, key, set, min, 600).await;
}

/// Issue 16, finding 7: a database rolled back under running nodes. node-1 (the
/// leader) and node-3 (its partner: node-2 rejects by policy) both get their
/// presignature tables and watermark counter restored by the database administrator
/// to a snapshot taken before a payment used two presignatures, while both keep
/// running. Both rows of each of those presignatures then read `available` again
/// on both members, so only the restore detection stands between them and a
/// second use (nonce reuse: the key). Shown: each restored node detects the
/// rollback by itself, audits and logs it and discards every available presignature
/// (those of the snapshot end `discarded`); on every node's database no
/// presignature used before the rollback is used again and none created before it
/// is used after it; payments are signed meanwhile and, with fresh presignatures,
/// afterwards.
async fn rollback_while_running(c: &Cluster, key: &str, addr: &bitcoin::Address, pool: &[String]) {
    let restored = [0usize, 2];
    let t0 = Instant::now();
    let lap = |what: &str| {
        println!(
            "rollback step: {what} at {:.1} s",
            t0.elapsed().as_secs_f64()
        )
    };
    settled_pool(c, key, pool, 2).await;
    lap("pool settled");
    let discarded_audits = |i: usize| async move {
        let db = c.db(i).await;
        let n: Vec<(serde_json::Value,)> = sqlx::query_as(
            "SELECT details FROM audit_log WHERE action = 'presign.discarded' ORDER BY seq",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        db.close().await;
        n.into_iter().map(|(d,)| d).collect::<Vec<_>>()
    };
    let mut audits_before = Vec::new();
    let mut snapshot: Vec<BTreeMap<Vec<u8>, Use>> = Vec::new();
    for &i in &restored {
        audits_before.push(discarded_audits(i).await.len());
        // The administrator's backup: both tables in one consistent snapshot.
        let su = c.db_superuser(i).await;
        let mut t = su.begin().await.unwrap();
        for q in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "CREATE TABLE snapshot_presignatures AS SELECT * FROM presignatures",
            "CREATE TABLE snapshot_presign_watermark AS SELECT * FROM presign_watermark",
        ] {
            sqlx::query(q).execute(&mut *t).await.unwrap();
        }
        // What the snapshot holds (the node may store new rows meanwhile).
        let held = sqlx::query_as::<_, Use>(
            "SELECT public_id, state, consumed_by, consumed_input FROM snapshot_presignatures",
        )
        .fetch_all(&mut *t)
        .await
        .unwrap();
        t.commit().await.unwrap();
        su.close().await;
        snapshot.push(
            held.into_iter()
                .map(|u| (u.public_id.clone(), u))
                .collect::<BTreeMap<_, _>>(),
        );
    }

    // A two-input payment after the snapshot: two presignatures of the snapshot used.
    let fund_f = funding(addr, &[30_000, 30_000]);
    import(c, &fund_f).await;
    let tx_f = submit_payment(c, key, 40_000, 1).await;
    let signed = signed_everywhere(c, &[0, 2], &tx_f, 300).await;
    assert_eq!(signed.input.len(), 2);
    verify_consensus(&signed, &[&fund_f]);
    let after_snapshot: BTreeSet<Vec<u8>> = consumed_for(c, 2, key, &tx_f)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let lead: BTreeSet<Vec<u8>> = consumed_for(c, 0, key, &tx_f)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(after_snapshot.len(), 2, "one presignature per input");
    assert_eq!(after_snapshot, lead, "both signers used the same two");
    for (k, &i) in restored.iter().enumerate() {
        for id in &after_snapshot {
            assert_eq!(
                snapshot[k].get(id).map(|u| u.state.as_str()),
                Some("available"),
                "node {i}: the snapshot holds {} unused",
                hex::encode(id)
            );
        }
    }
    lap("payment after the snapshot signed");
    // The refill after that payment ends before the rollback (nothing in flight).
    settled_pool(c, key, pool, 2).await;
    lap("refilled");
    let before: Vec<BTreeMap<Vec<u8>, Use>> = {
        let mut v = Vec::new();
        for i in 0..N {
            v.push(uses(c, i).await);
        }
        v
    };
    let known_before: BTreeSet<Vec<u8>> = before.iter().flat_map(|m| m.keys().cloned()).collect();

    // The rollback, each node's in one transaction, while the nodes keep running.
    for &i in &restored {
        let su = c.db_superuser(i).await;
        let mut t = su.begin().await.unwrap();
        for q in [
            "DELETE FROM presignatures",
            "INSERT INTO presignatures OVERRIDING SYSTEM VALUE SELECT * FROM snapshot_presignatures",
            "UPDATE presign_watermark SET counter = (SELECT counter FROM snapshot_presign_watermark)",
            "DROP TABLE snapshot_presignatures",
            "DROP TABLE snapshot_presign_watermark",
        ] {
            sqlx::query(q).execute(&mut *t).await.unwrap();
        }
        // What the node now reads: the presignatures used by the payment look unused.
        let states: Vec<(String,)> =
            sqlx::query_as("SELECT state FROM presignatures WHERE public_id = ANY($1)")
                .bind(after_snapshot.iter().cloned().collect::<Vec<_>>())
                .fetch_all(&mut *t)
                .await
                .unwrap();
        assert_eq!(
            states,
            vec![("available".to_owned(),); 2],
            "node {i}: restored"
        );
        t.commit().await.unwrap();
        su.close().await;
    }

    // A payment right away: signed whether or not the rollback was seen yet (a use
    // that sees it aborts; the leader then signs without a presignature).
    let fund_g = funding(addr, &[50_000]);
    import(c, &fund_g).await;
    let tx_g = submit_payment(c, key, 20_000, 1).await;
    let signed = signed_everywhere(c, &[0, 2], &tx_g, 300).await;
    verify_consensus(&signed, &[&fund_g]);
    lap("payment right after the rollback signed");

    // Each restored node detected it by itself: audited (with its counters), logged,
    // presignatures in use again only after the discard.
    for (k, &i) in restored.iter().enumerate() {
        let audit = c
            .eventually(
                &format!("node {i} discarded its pool after the rollback"),
                Duration::from_secs(120),
                || async {
                    let a = discarded_audits(i).await;
                    (a.len() > audits_before[k]).then(|| a[audits_before[k]].clone())
                },
            )
            .await;
        assert_eq!(audit["while_running"], true, "node {i}: {audit}");
        assert!(
            audit["database_counter"].as_i64().unwrap() < audit["watermark"].as_i64().unwrap(),
            "node {i}: {audit}"
        );
        let n_available = snapshot[k]
            .values()
            .filter(|u| u.state == "available")
            .count();
        assert!(
            audit["count"].as_u64().unwrap() >= n_available as u64,
            "node {i} discarded at least the snapshot's {n_available} available: {audit}"
        );
        let st = c
            .eventually(
                &format!("node {i} uses presignatures again"),
                Duration::from_secs(60),
                || async {
                    c.get_ok(i, "/api/v1/presignatures/status")
                        .await
                        .filter(|v| v["restore_checked"] == true)
                },
            )
            .await;
        let discarded: i64 = st["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["discarded"].as_i64().unwrap())
            .sum();
        assert!(discarded >= n_available as i64, "node {i}: {st}");
        assert!(
            st["rollbacks_detected"].as_u64().unwrap() >= 1,
            "node {i} reports the rollback in its status: {st}"
        );
        let log = std::fs::read_to_string(&c.node(i).log).unwrap();
        assert!(
            log.contains("ALERT: database rollback detected"),
            "node {i} logs the rollback"
        );
        println!(
            "node {i}: rollback seen {} at a use, {} by the watermark check; {audit}",
            log.matches("rollback detected at a presignature use")
                .count(),
            log.matches("rollback detected by the watermark check")
                .count(),
        );
        // The restored node used none of the snapshot's presignatures: those it
        // held unused are discarded, those it had used keep that use.
        let now = uses(c, i).await;
        for (id, was) in &snapshot[k] {
            let u = &now[id];
            if was.state == "available" {
                assert_eq!(u.state, "discarded", "node {i}: snapshot row {u:?}");
            } else {
                assert_eq!(u, was, "node {i}: snapshot row");
            }
        }
    }

    lap("detected and discarded on both");
    // Payments go on with fresh presignatures (generated after the discard on both).
    settled_pool(c, key, pool, 2).await;
    lap("refilled");
    let fund_h = funding(addr, &[50_000]);
    import(c, &fund_h).await;
    let tx_h = submit_payment(c, key, 20_000, 1).await;
    let signed = signed_everywhere(c, &[0, 2], &tx_h, 300).await;
    verify_consensus(&signed, &[&fund_h]);
    let fresh = consumed_for(c, 0, key, &tx_h).await;
    assert_eq!(fresh.len(), 1, "tx_h signed with a presignature");
    assert_eq!(fresh, consumed_for(c, 2, key, &tx_h).await);
    assert!(!known_before.contains(&fresh[0].0), "a fresh presignature");
    lap("payment with a fresh presignature signed");

    // Every node's database: a presignature used before the rollback keeps that one
    // use (on a restored node it may only have become `discarded`, having come back
    // as available); none that existed before the rollback is used after it.
    let later: BTreeSet<uuid::Uuid> = [&tx_g, &tx_h].iter().map(|t| t.parse().unwrap()).collect();
    for (i, before) in before.iter().enumerate() {
        let now = uses(c, i).await;
        for (id, was) in before.iter().filter(|(_, u)| used(u)) {
            let u = &now[id];
            if restored.contains(&i) && after_snapshot.contains(id) {
                // Came back as available with the snapshot, then discarded.
                assert_eq!(u.state, "discarded", "node {i}: {u:?}");
            } else {
                assert_eq!(u, was, "node {i}: used before the rollback");
            }
        }
        for u in now.values().filter(|u| used(u)) {
            if u.consumed_by.is_some_and(|t| later.contains(&t)) {
                assert!(
                    !known_before.contains(&u.public_id),
                    "node {i}: a presignature from before the rollback was used after it: {u:?}"
                );
            }
        }
    }
    none_used_twice(c, &[0, 1, 2], key).await;
}
