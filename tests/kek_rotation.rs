//! Issue 19: `signer hsm rotate-kek` against a real node database.
//!
//! SoftHSM2 (2-node dev cluster, real SoftHSM2 token per node, FROST and CGGMP24
//! keys, aux info, prime sets, node keys, a presignature row sealed here with the
//! node's token): refused while the node runs; a record that does not rewrap and a
//! refused update each leave every row under the old KEK, unaudited; then the
//! rotation moves every envelope (payload bytes unchanged) in one audited
//! transaction, `--destroy-old` removes the old KEK after the re-open check, and the
//! node, started with the new label, reloads its shares and signs with both keys.
//!
//! TPM (swtpm started with `softhsm/start-swtpm.sh`, as tests/hardening.rs does):
//! node 1 runs on a TPM storage key and its FROST share is sealed under it;
//! `rotate-kek --new-handle` moves every envelope to a new storage key in one
//! audited transaction and `--destroy-old` evicts the old key (audited); the old
//! handle is gone, the old envelopes no longer open, the new ones do, and the node,
//! started on the new handle with its name pinned, reloads its share and signs.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Duration;

use cluster_tests::tpm::{with_custody, Swtpm};
use cluster_tests::wallet::{aux_info, fund, pay, signed_everywhere, submit, verify_consensus};
use cluster_tests::{signer_bin, Cluster};
use serde_json::Value;

const NEW_LABEL: &str = "signer-kek-2";

/// Every envelope of a node database: (table, row, blob), in a stable order.
async fn envelopes(c: &Cluster) -> Vec<(String, String, Vec<u8>)> {
    let db = c.db_superuser(0).await;
    let rows = sqlx::query_as(
        "SELECT 'key_shares', id::text, envelope FROM key_shares \
         UNION ALL SELECT 'aux_info', id::text, envelope FROM aux_info \
         UNION ALL SELECT 'presignatures', id::text, envelope FROM presignatures \
         UNION ALL SELECT 'prime_pool', id::text, envelope FROM prime_pool \
         UNION ALL SELECT 'node_keys', purpose, envelope FROM node_keys \
         ORDER BY 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows
}

async fn audit_count(c: &Cluster, action: &str) -> i64 {
    let db = c.db_superuser(0).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

async fn superuser_exec(c: &Cluster, sql: &'static str) {
    let db = c.db_superuser(0).await;
    sqlx::raw_sql(sql).execute(&db).await.unwrap();
    db.close().await;
}

fn signer(c: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(signer_bin())
        .args(args)
        .arg("--config")
        .arg(&c.node(0).config)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Kills node 1 and waits until its database sessions are gone (they end with its
/// process).
async fn stop_node(c: &Cluster) {
    c.kill_node(0);
    let db = c.db_superuser(0).await;
    c.eventually(
        "node-1's database sessions gone",
        Duration::from_secs(20),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND usename <> current_user",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    db.close().await;
}

fn rotate(c: &Cluster, extra: &[&str]) -> Output {
    let mut args = vec!["hsm", "rotate-kek", "--new-label", NEW_LABEL];
    args.extend_from_slice(extra);
    signer(c, &args, &[])
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kek_of(blob: &[u8]) -> String {
    hsm::envelope::inspect(blob).unwrap().wrapped.kek_id
}

/// Nonce, length and ciphertext: the part of an envelope a rotation never touches.
fn payload(blob: &[u8]) -> &[u8] {
    let info = hsm::envelope::inspect(blob).unwrap();
    &blob[blob.len() - (info.ciphertext_len + 12 + 4)..]
}

/// Seals a (dummy) presignature with node-1's own token, bound to its row as the
/// node binds them, and stores it as a discarded row (dev clusters run without the
/// presignature pool; a discarded row is never used).
async fn insert_presignature(c: &Cluster, key_id: &str) {
    std::env::set_var("SOFTHSM2_CONF", c.node(0).dir.join("softhsm/softhsm2.conf"));
    let cfg = hsm::CustodyConfig::Pkcs11(hsm::pkcs11::Pkcs11Config {
        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: "node-1".into(),
        kek_label: "signer-kek".into(),
        pin: hsm::PinSource::File(c.node(0).dir.join("softhsm/user.pin")),
    });
    let public_id: [u8; 32] = rand_bytes();
    let aad = hsm::Aad::with_record_id(
        "node-1",
        key_id,
        hsm::RecordKind::Presignature,
        hex::encode(public_id),
    )
    .unwrap();
    let envelope = tokio::task::spawn_blocking(move || {
        hsm::Custody::open(&cfg)
            .unwrap()
            .seal(&aad, b"not a real presignature")
            .unwrap()
    })
    .await
    .unwrap();
    let db = c.db_superuser(0).await;
    sqlx::query(
        "INSERT INTO presignatures (id, key_id, signer_set, execution_id, envelope, \
         public_data, public_id, state, discarded_at, discard_reason) \
         VALUES ($1, $2, ARRAY['node-1','node-2'], $3, $4, $5, $6, 'discarded', now(), 'test')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(key_id)
    .bind(&public_id[..])
    .bind(&envelope)
    .bind(&b"{}"[..])
    .bind(&public_id[..])
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_kek_rewraps_every_envelope_atomically_and_the_node_signs_with_the_new_kek() {
    let c = Cluster::start(2, 2);
    c.wait_ready(2).await;
    let frost = c.dkg(2, "frost", 2).await;
    let ecdsa = c.dkg(2, "cggmp24", 2).await;
    aux_info(&c, 2).await;
    insert_presignature(&c, &ecdsa).await;

    let before = envelopes(&c).await;
    for table in [
        "key_shares",
        "aux_info",
        "presignatures",
        "prime_pool",
        "node_keys",
    ] {
        assert!(
            before.iter().any(|(t, _, _)| t == table),
            "no {table} row to rotate"
        );
    }
    assert!(before
        .iter()
        .all(|(_, _, b)| kek_of(b).starts_with("signer-kek#")));

    // 1. Refused while the node runs (it is connected to its database).
    let out = rotate(&c, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stop the node first"), "{}", text(&out));
    stop_node(&c).await;

    // 2. A record in the middle does not rewrap (its row no longer matches the data
    // it was sealed with): nothing is written, nothing audited.
    superuser_exec(
        &c,
        "UPDATE aux_info SET node_id = 'node-x' WHERE id = (SELECT min(id) FROM aux_info)",
    )
    .await;
    let out = rotate(&c, &["--destroy-old"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("aux_info"), "{}", text(&out));
    assert!(err.contains("no record was changed"), "{}", text(&out));
    superuser_exec(
        &c,
        "UPDATE aux_info SET node_id = 'node-1' WHERE node_id = 'node-x'",
    )
    .await;
    assert_eq!(
        envelopes(&c).await,
        before,
        "rows changed by a failed rotation"
    );
    assert_eq!(audit_count(&c, "hsm.rotate_kek").await, 0);

    // 3. The database refuses the last table's update after the others were
    // updated: the transaction rolls back, every row stays under the old KEK.
    superuser_exec(
        &c,
        "CREATE FUNCTION test_refuse() RETURNS trigger AS $$ BEGIN \
         RAISE EXCEPTION 'test refuses node_keys updates'; END; $$ LANGUAGE plpgsql; \
         CREATE TRIGGER test_refuse BEFORE UPDATE ON node_keys \
         FOR EACH ROW EXECUTE FUNCTION test_refuse();",
    )
    .await;
    let out = rotate(&c, &["--destroy-old"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_keys"), "{}", text(&out));
    assert!(err.contains("test refuses"), "{}", text(&out));
    superuser_exec(
        &c,
        "DROP TRIGGER test_refuse ON node_keys; DROP FUNCTION test_refuse();",
    )
    .await;
    assert_eq!(
        envelopes(&c).await,
        before,
        "rows changed by a rolled-back rotation"
    );
    assert_eq!(audit_count(&c, "hsm.rotate_kek").await, 0);
    // The old KEK still opens everything: hsm check on the unchanged config passes.
    let out = signer(&c, &["hsm", "check"], &[]);
    assert!(out.status.success(), "{}", text(&out));

    // 4. The rotation: every envelope under the new KEK, payloads untouched.
    let out = rotate(&c, &["--destroy-old"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("kek_label = \"{NEW_LABEL}\"")),
        "{said}"
    );
    assert!(
        said.contains(&format!("re-open check: all {} records open", before.len())),
        "{said}"
    );
    assert!(said.contains("destroyed"), "{said}");
    let after = envelopes(&c).await;
    assert_eq!(after.len(), before.len());
    for ((t, id, old), (t2, id2, new)) in before.iter().zip(&after) {
        assert_eq!((t, id), (t2, id2));
        assert!(
            kek_of(new).starts_with(&format!("{NEW_LABEL}#")),
            "{t} {id}: {}",
            kek_of(new)
        );
        assert_eq!(payload(old), payload(new), "{t} {id}: payload changed");
    }
    let db = c.db_superuser(0).await;
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT kek_id FROM node_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(kek_ids
        .iter()
        .all(|k| k.starts_with(&format!("{NEW_LABEL}#"))));
    let details: Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'hsm.rotate_kek'")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    let moved: u64 = details["rewrapped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(moved, before.len() as u64, "{details}");
    assert_eq!(audit_count(&c, "hsm.destroy_kek").await, 1);
    let out = signer(&c, &["audit", "verify"], &[]);
    assert!(out.status.success(), "{}", text(&out));

    // 5. The old KEK is gone from the token; the new one passes every check.
    let out = signer(&c, &["hsm", "check"], &[]);
    assert!(!out.status.success(), "old KEK still there: {}", text(&out));
    let new_label = [("SIGNER__CUSTODY__KEK_LABEL", NEW_LABEL)];
    let out = signer(&c, &["hsm", "check"], &new_label);
    assert!(out.status.success(), "{}", text(&out));

    // 6. The node runs on the new KEK: unsealed, shares reloaded, and it signs with
    // both keys (opening its CGGMP24 share and aux info, and its FROST share).
    c.restart_node_with_env(0, &new_label);
    c.wait_ready(2).await;
    let v: Value = c
        .client()
        .get(c.url(0, "/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["custody"]["kek_id"]
            .as_str()
            .is_some_and(|k| k.starts_with(&format!("{NEW_LABEL}#"))),
        "{v}"
    );
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    let reload = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "key shares reloaded from custody")
        .unwrap();
    assert_eq!(reload["loaded"], 2, "{reload}");
    assert_eq!(reload["total"], 2, "{reload}");
    c.write_policy(2, &[&frost, &ecdsa], 1_000_000);
    for key in [&frost, &ecdsa] {
        let funding = fund(&c, key, &[50_000]).await;
        let id = submit(&c, 0, &pay(key, 20_000)).await;
        let tx = signed_everywhere(&c, &[0, 1], &id, 240).await;
        verify_consensus(&tx, &[&funding]);
    }
}

/// The value of `name = "…"` (or `name = 0x…`) in the command's output.
fn printed(output: &str, name: &str) -> String {
    let rest = output
        .split(&format!("{name} = "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} printed:\n{output}"));
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

/// A token secret's hash in the legacy argon2id form.
fn argon2_hash(secret: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

const OLD_HANDLE: &str = "0x81010020";
const NEW_HANDLE: &str = "0x81010021";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_kek_on_a_tpm_moves_every_envelope_to_a_new_storage_key_and_evicts_the_old() {
    let tpm = Swtpm::start();
    let c = Cluster::start(2, 2);
    c.wait_ready(2).await;

    // 1. Node 1 moves onto the TPM: a storage key at the default handle; what its
    // SoftHSM token sealed (its vote and API token keys, prime sets) is dropped and
    // made anew under the TPM: both nodes forget the vote key they pinned for it,
    // and its admin token is enrolled again (in the legacy argon2 form, which the
    // node rewrites under its new token key at first use).
    let config = c.node(0).config.clone();
    let tpm_custody = format!("[custody]\nbackend = \"tpm\"\ntcti = \"{}\"\n", tpm.tcti);
    let tpm_config = with_custody(&std::fs::read_to_string(&config).unwrap(), &tpm_custody);
    stop_node(&c).await;
    std::fs::write(&config, &tpm_config).unwrap();
    let out = signer(&c, &["hsm", "init"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let old_name = printed(&text(&out), "key_name");
    superuser_exec(
        &c,
        "DELETE FROM node_keys; DELETE FROM prime_pool; DELETE FROM peer_vote_keys;",
    )
    .await;
    let db = c.db_superuser(1).await;
    sqlx::query("DELETE FROM peer_vote_keys WHERE node_id = $1")
        .bind(&c.node(0).id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (id, secret) = c
        .admin()
        .strip_prefix("sgn_")
        .and_then(|t| t.split_once('_'))
        .unwrap();
    let db = c.db_superuser(0).await;
    sqlx::query("UPDATE api_tokens SET secret_hash = $1 WHERE id = $2")
        .bind(argon2_hash(secret))
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    c.restart_node(0);
    c.wait_ready(2).await;
    let ready: Value = c
        .client()
        .get(c.url(0, "/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_kek = ready["custody"]["kek_id"].as_str().unwrap().to_owned();
    assert!(old_kek.starts_with("tpm:81010020:"), "{ready}");

    // 2. A FROST key: node 1's share is sealed under the TPM storage key.
    let frost = c.dkg(2, "frost", 2).await;
    let before = envelopes(&c).await;
    for table in ["key_shares", "node_keys"] {
        assert!(
            before.iter().any(|(t, _, _)| t == table),
            "no {table} row to rotate"
        );
    }
    assert!(
        before.iter().all(|(_, _, b)| kek_of(b) == old_kek),
        "not every envelope is under {old_kek}"
    );

    // 3. The rotation to a new storage key; the old one evicted.
    stop_node(&c).await;
    let out = signer(
        &c,
        &[
            "hsm",
            "rotate-kek",
            "--new-handle",
            NEW_HANDLE,
            "--destroy-old",
        ],
        &[],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("persistent_handle = {NEW_HANDLE}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("re-open check: all {} records open", before.len())),
        "{said}"
    );
    assert!(
        said.contains(&format!("old KEK handle {OLD_HANDLE} destroyed")),
        "{said}"
    );
    let new_name = printed(&said, "key_name");
    assert_ne!(new_name, old_name);
    let after = envelopes(&c).await;
    assert_eq!(after.len(), before.len());
    let new_kek = kek_of(&after[0].2);
    assert!(new_kek.starts_with("tpm:81010021:"), "{new_kek}");
    for ((t, id, old), (t2, id2, new)) in before.iter().zip(&after) {
        assert_eq!((t, id), (t2, id2));
        assert_eq!(kek_of(new), new_kek, "{t} {id}");
        assert_eq!(payload(old), payload(new), "{t} {id}: payload changed");
    }
    // Audited: the rotation (what moved, from which key to which) and the eviction.
    let db = c.db_superuser(0).await;
    let details: Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'hsm.rotate_kek'")
            .fetch_one(&db)
            .await
            .unwrap();
    let (subject, destroyed): (String, Value) =
        sqlx::query_as("SELECT subject, details FROM audit_log WHERE action = 'hsm.destroy_kek'")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(
        (details["old_kek"].as_str(), details["new_kek"].as_str()),
        (Some(old_kek.as_str()), Some(new_kek.as_str())),
        "{details}"
    );
    let moved: u64 = details["rewrapped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(moved, before.len() as u64, "{details}");
    assert!(
        details["rewrapped"]["key_shares"].as_u64() >= Some(1),
        "{details}"
    );
    assert_eq!(subject, format!("handle {OLD_HANDLE}"));
    assert_eq!(
        destroyed["after_rotation_to"],
        format!("handle {NEW_HANDLE}"),
        "{destroyed}"
    );
    let out = signer(&c, &["audit", "verify"], &[]);
    assert!(out.status.success(), "{}", text(&out));

    // 4. The old storage key is gone; the old envelopes no longer open, the new
    // ones do (with the records' own associated data).
    let out = signer(&c, &["hsm", "check"], &[]);
    assert!(!out.status.success(), "old key still there: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "tpm storage key at persistent handle {OLD_HANDLE} not found"
        )),
        "{}",
        text(&out)
    );
    let new_env = [
        ("SIGNER__CUSTODY__PERSISTENT_HANDLE", NEW_HANDLE),
        ("SIGNER__CUSTODY__KEY_NAME", new_name.as_str()),
    ];
    let out = signer(&c, &["hsm", "check"], &new_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("matches the pinned key_name"),
        "{}",
        text(&out)
    );
    let store = signer::store::Store::connect(&c.node(0).database_url, 1)
        .await
        .unwrap();
    let records = store.envelope_records(&c.node(0).id).await.unwrap();
    store.pool().close().await;
    assert_eq!(records.len(), before.len());
    let old_blobs: Vec<Vec<u8>> = before.iter().map(|(_, _, b)| b.clone()).collect();
    let tcti = tpm.tcti.clone();
    let (old_open, new_open) = tokio::task::spawn_blocking(move || {
        let mut old_cfg = hsm::tpm::TpmConfig::new(tcti);
        let old_open = hsm::Custody::open(&hsm::CustodyConfig::Tpm(old_cfg.clone()))
            .map(|_| ())
            .map_err(|e| e.code());
        old_cfg.persistent_handle = 0x8101_0021;
        let new = hsm::Custody::open(&hsm::CustodyConfig::Tpm(old_cfg)).unwrap();
        let mut new_open = Vec::new();
        for r in &records {
            new.open_record(&r.aad, &r.blob)
                .unwrap_or_else(|e| panic!("{}: {e}", r.name()));
            // The same record as it was before the rotation.
            let old_blob = old_blobs
                .iter()
                .find(|b| payload(b) == payload(&r.blob))
                .unwrap();
            new_open.push(
                new.open_record(&r.aad, old_blob)
                    .map(|_| ())
                    .map_err(|e| e.code()),
            );
        }
        (old_open, new_open)
    })
    .await
    .unwrap();
    assert_eq!(old_open, Err("tpm_key_not_found"));
    assert!(
        new_open.iter().all(|r| *r == Err("kek_mismatch")),
        "{new_open:?}"
    );

    // 5. The node on the new storage key: unsealed, its share reloaded, and it
    // signs with its peer.
    c.restart_node_with_env(0, &new_env);
    c.wait_ready(2).await;
    let v: Value = c
        .client()
        .get(c.url(0, "/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["custody"]["kek_id"], new_kek, "{v}");
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    let reload = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "key shares reloaded from custody")
        .unwrap();
    assert_eq!(
        (&reload["loaded"], &reload["total"]),
        (&Value::from(1), &Value::from(1)),
        "{reload}"
    );
    c.write_policy(2, &[&frost], 1_000_000);
    let funding = fund(&c, &frost, &[50_000]).await;
    let id = submit(&c, 0, &pay(&frost, 20_000)).await;
    let tx = signed_everywhere(&c, &[0, 1], &id, 240).await;
    verify_consensus(&tx, &[&funding]);
}
