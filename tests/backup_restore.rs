//! `signer backup create|restore` on a real 3-node 2-of-3 cluster (issue 17): a
//! node's database backed up while it runs, then lost; restored from the backup,
//! the node reloads its key share from custody, its audit chain verifies, and it
//! signs again with its peers. A backup is refused for another node, while the node
//! runs, over a database that is not empty (without --replace), and when damaged.
#![allow(clippy::unwrap_used)]

use cluster_tests::wallet::{
    first_address, import, signed_everywhere, submit_payment, verify_consensus,
};
use cluster_tests::{funding, signer_with_config, Cluster};

const N: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_restored_from_its_backup_rejoins_and_signs() {
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;
    let key = c.dkg(N, "frost", 2).await;
    for i in 0..N {
        c.write_node_policy(i, &[&key], 1_000_000, "");
    }
    let addr = first_address(&c, &key).await;
    let fund = funding(&addr, &[50_000, 50_000, 50_000]);
    import(&c, &fund).await;
    let tx_a = submit_payment(&c, &key, 10_000, 1).await;
    verify_consensus(
        &signed_everywhere(&c, &[0, 1, 2], &tx_a, 120).await,
        &[&fund],
    );

    // node-2's backup, taken while it runs.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("node-2.backup");
    let cfg2 = c.node(1).config.clone();
    let cfg3 = c.node(2).config.clone();
    let (ok, out) = signer_with_config(
        &["backup", "create", "--out", backup.to_str().unwrap()],
        &cfg2,
        &[],
    );
    assert!(ok, "backup create: {out}");
    let (ok, out) = signer_with_config(
        &["backup", "create", "--out", backup.to_str().unwrap()],
        &cfg2,
        &[],
    );
    assert!(!ok && out.contains("not overwriting"), "{out}");
    // A payment after the backup: the backup does not hold it.
    let tx_b = submit_payment(&c, &key, 10_000, 1).await;
    verify_consensus(
        &signed_everywhere(&c, &[0, 1, 2], &tx_b, 120).await,
        &[&fund],
    );

    let restore = |cfg: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["backup", "restore", backup.to_str().unwrap()];
        args.extend_from_slice(extra);
        signer_with_config(&args, cfg, &[])
    };
    // Refused: onto another node; while the node runs; damaged.
    let (ok, out) = restore(&cfg3, &[]);
    assert!(!ok && out.contains("backup of node-2"), "{out}");
    let (ok, out) = restore(&cfg2, &[]);
    assert!(!ok && out.contains("the node runs"), "{out}");
    let damaged = dir.path().join("damaged.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, out) = signer_with_config(
        &["backup", "restore", damaged.to_str().unwrap()],
        &cfg2,
        &[],
    );
    assert!(!ok && out.contains("backup damaged"), "{out}");

    // node-2 stops; a restore over its (intact) database needs --replace.
    c.kill_node(1);
    let (ok, out) = restore(&cfg2, &[]);
    assert!(!ok && out.contains("--replace"), "{out}");
    // The database is lost: emptied by its superuser.
    let su = c.db_superuser(1).await;
    let (role,): (String,) = sqlx::query_as(
        "SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&su)
    .await
    .unwrap();
    for q in [
        "DROP SCHEMA public CASCADE".to_owned(),
        format!("CREATE SCHEMA public AUTHORIZATION {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q))
            .execute(&su)
            .await
            .unwrap();
    }
    su.close().await;
    let (ok, out) = restore(&cfg2, &[]);
    assert!(ok, "restore: {out}");
    assert!(out.contains("chain valid"), "{out}");

    c.restart_node(1);
    c.wait_ready(N).await;
    // Its share is back from custody, its audit chain verifies with the restore
    // recorded, and it knows the payment before the backup, not the one after.
    let e = c.key_entry(1, &key).await;
    assert_eq!(e["share_loaded"], true, "{e}");
    let (ok, out) = signer_with_config(&["audit", "verify", "--json"], &cfg2, &[]);
    assert!(ok, "{out}");
    // stdout (the JSON) comes first, then stderr.
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(v["valid"], true, "{v}");
    let db = c.db(1).await;
    let (restored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit_log WHERE action = 'node.restored'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(restored, 1);
    let known = |id: String| {
        let db = db.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM transactions WHERE id::text = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            n
        }
    };
    assert_eq!(known(tx_a.clone()).await, 1, "payment before the backup");
    assert_eq!(known(tx_b.clone()).await, 0, "payment after the backup");

    // It signs again: node-3 rejects by policy, so node-1 needs node-2.
    c.write_node_policy(2, &[], 1_000_000, "");
    let tx_c = submit_payment(&c, &key, 10_000, 1).await;
    verify_consensus(&signed_everywhere(&c, &[0, 1], &tx_c, 120).await, &[&fund]);
}
