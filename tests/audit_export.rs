//! Compliance exports on a real 3-node 2-of-3 cluster (checkpoints every 4 s): a
//! DKG and a payment, cross-node checkpoints (one after the signed transaction,
//! periodic ones), `signer audit export` with an auditor token and `signer audit
//! verify-export` offline → valid. Then each tampering is detected with the right
//! item named: a record edited in the bundle, a record deleted from it, a
//! checkpoint signature altered, and one node's database rewritten by its
//! superuser (append-only trigger disabled, chain recomputed consistently, so the
//! node's own `audit/verify` still passes) before a new export, caught by the
//! heads its peers co-signed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use cluster_tests::wallet::{ended_tx, fund, pay, submit};
use cluster_tests::{signer_bin, Cluster};
use serde_json::Value;

const N: usize = 3;
/// `store::audit`'s advisory lock of audit appenders: held while rewriting, so the
/// running node appends after the rewrite, to the rewritten chain.
const AUDIT_LOCK_KEY: i64 = 0x5349_474e_4155_4449;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn run(args: &[&str]) -> Output {
    std::process::Command::new(signer_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `signer audit export` through node 0 with the token in `token_file`.
fn export(c: &Cluster, token_file: &Path, from: DateTime<Utc>, to: DateTime<Utc>, out: &Path) {
    let cluster = c.dir.join("cluster.json");
    let o = run(&[
        "audit",
        "export",
        "--cluster",
        cluster.to_str().unwrap(),
        "--node",
        &c.node(0).id,
        "--token-file",
        token_file.to_str().unwrap(),
        "--from",
        &rfc3339(from),
        "--to",
        &rfc3339(to),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export failed: {}", text(&o));
}

/// `signer audit verify-export` against the cluster's CA: exit code and output.
fn verify(c: &Cluster, bundle: &Path) -> (i32, String) {
    let o = run(&[
        "audit",
        "verify-export",
        bundle.to_str().unwrap(),
        "--ca-cert",
        c.file.ca_cert.to_str().unwrap(),
    ]);
    (o.status.code().unwrap_or(-1), text(&o))
}

fn lines(bundle: &Path) -> Vec<Value> {
    std::fs::read_to_string(bundle)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `lines` (each re-serialized) as a bundle next to `bundle`.
fn write_variant(bundle: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let p = bundle.with_file_name(name);
    let mut s = String::new();
    for l in lines {
        s.push_str(&serde_json::to_string(l).unwrap());
        s.push('\n');
    }
    std::fs::write(&p, s).unwrap();
    p
}

/// Waits until every node stored a checkpoint counted by `count` (SQL on
/// `audit_log`, `$1` bound to `arg`).
async fn checkpoint_everywhere(c: &Cluster, what: &str, count: &'static str, arg: DateTime<Utc>) {
    for i in 0..N {
        let db = c.db(i).await;
        c.eventually(
            &format!("{what} stored on node {i}"),
            Duration::from_secs(60),
            || {
                let db = db.clone();
                async move {
                    let (n,): (i64,) = sqlx::query_as(count).bind(arg).fetch_one(&db).await.ok()?;
                    (n > 0).then_some(())
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_every_tampering_is_named() {
    // Inherited by `cluster up` and the nodes it starts.
    std::env::set_var("SIGNER__AUDIT__CHECKPOINT_INTERVAL_SECS", "4");
    let from = Utc::now() - chrono::TimeDelta::seconds(2);
    let c = Cluster::start(3, 2);
    c.wait_ready(N).await;

    // Who may export.
    let operator = c.create_token(0, "ops", "operator").await;
    let r = c.get(0, "/api/v1/audit/export", &operator).await;
    assert_eq!(r.status(), 403);
    let r = c
        .get(0, "/api/v1/audit/export?from=yesterday", c.admin())
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_from", "{v}");

    // A key, a policy, a payment.
    let frost = c.dkg(N, "frost", 2).await;
    c.write_policy(N, &[&frost], 1_000_000);
    fund(&c, &frost, &[100_000]).await;
    let id = submit(&c, 0, &pay(&frost, 25_000)).await;
    let v = ended_tx(&c, 0, &id, 240).await;
    assert_eq!(v["state"], "signed", "{v}");
    // The leader (node 0) proposed a checkpoint after the signature.
    checkpoint_everywhere(
        &c,
        "a checkpoint after the signed transaction",
        "SELECT count(*) FROM audit_log WHERE action = 'audit.checkpoint' \
         AND details->>'reason' = 'transaction_signed' AND ts > $1",
        from,
    )
    .await;
    let to = Utc::now();
    checkpoint_everywhere(
        &c,
        "a checkpoint after the range",
        "SELECT count(*) FROM audit_log WHERE action = 'audit.checkpoint' AND ts > $1",
        to,
    )
    .await;

    // Export with an auditor token; verify offline.
    let tmp = tempfile::tempdir().unwrap();
    let auditor = c.create_token(0, "auditor-1", "auditor").await;
    let token_file = tmp.path().join("auditor.token");
    std::fs::write(&token_file, format!("{auditor}\n")).unwrap();
    let bundle = tmp.path().join("bundle.jsonl");
    export(&c, &token_file, from, to, &bundle);
    let (code, out) = verify(&c, &bundle);
    eprintln!("verify-export of the intact bundle:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("VALID"), "{out}");
    let all = lines(&bundle);
    let of_type = |t: &str| all.iter().filter(|l| l["type"] == t).count();
    assert_eq!(of_type("node"), N);
    assert_eq!(of_type("ca"), 1);
    assert!(of_type("checkpoint") >= 2, "{out}");
    assert!(of_type("policy") >= 1, "policy versions: {out}");
    assert_eq!(all.last().unwrap()["type"], "manifest");
    for i in 0..N {
        let node = &c.node(i).id;
        let rows: Vec<&Value> = all
            .iter()
            .filter(|l| l["type"] == "row" && l["node"] == *node)
            .collect();
        let actions: Vec<&str> = rows
            .iter()
            .map(|r| r["record"]["action"].as_str().unwrap())
            .collect();
        for a in [
            "node.start",
            "audit.checkpoint",
            "tx.signed",
            "dkg.completed",
        ] {
            assert!(actions.contains(&a), "{node} lacks {a}: {actions:?}");
        }
    }
    let row_at = |node: &str, pos: usize| -> (usize, i64) {
        let (idx, l) = all
            .iter()
            .enumerate()
            .filter(|(_, l)| l["type"] == "row" && l["node"] == node)
            .nth(pos)
            .unwrap();
        (idx, l["record"]["seq"].as_i64().unwrap())
    };
    let n1 = c.node(1).id.clone();
    let n2 = c.node(2).id.clone();

    // 1. A record edited in the bundle.
    let (idx, seq) = row_at(&n1, 5);
    let mut edited = all.clone();
    edited[idx]["record"]["actor"] = Value::from("mallory");
    let (code, out) = verify(&c, &write_variant(&bundle, "edited.jsonl", &edited));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("INVALID: node {n1} seq {seq}: record altered")),
        "{out}"
    );

    // 2. A record deleted from the bundle.
    let (idx, seq) = row_at(&n2, 3);
    let mut deleted = all.clone();
    deleted.remove(idx);
    let (code, out) = verify(&c, &write_variant(&bundle, "deleted.jsonl", &deleted));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("INVALID: node {n2} seq {seq}: record missing")),
        "{out}"
    );

    // 3. A checkpoint signature altered.
    let idx = all.iter().position(|l| l["type"] == "checkpoint").unwrap();
    let cp_id = all[idx]["checkpoint"]["id"].as_str().unwrap().to_owned();
    let signer = all[idx]["checkpoint"]["signatures"][0]["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = all[idx]["checkpoint"]["signatures"][0]["signature"]
        .as_str()
        .unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, ch)| match (i, ch) {
            (7, '0') => '1',
            (7, _) => '0',
            _ => ch,
        })
        .collect();
    let mut forged = all.clone();
    forged[idx]["checkpoint"]["signatures"][0]["signature"] = Value::from(flipped);
    let (code, out) = verify(&c, &write_variant(&bundle, "forged.jsonl", &forged));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!(
            "INVALID: checkpoint {cp_id}: co-signature of {signer} does not verify"
        )),
        "{out}"
    );

    // 4. Node 1's history rewritten by its database superuser, the chain recomputed
    // with the node's own hash function: the node itself sees a valid chain.
    let rewritten_seq = 2;
    rewrite_history(&c, 1, rewritten_seq).await;
    let v = c.get_json(1, "/api/v1/audit/verify").await;
    assert_eq!(v["valid"], true, "the rewrite is consistent: {v}");
    let bundle2 = tmp.path().join("bundle-after-rewrite.jsonl");
    export(&c, &token_file, from, Utc::now(), &bundle2);
    let (code, out) = verify(&c, &bundle2);
    eprintln!("verify-export after the rewrite:\n{out}");
    assert_eq!(code, 1, "{out}");
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("INVALID: node {n1} seq ")),
        "{out}"
    );
    assert!(
        first.contains("chain no longer holds the head signed in checkpoint"),
        "{out}"
    );
    // No broken link: only the peers' checkpoints reveal the rewrite.
    assert!(
        !out.contains("record altered") && !out.contains("does not link"),
        "{out}"
    );
    let seq: i64 = first
        .split(" seq ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(seq >= rewritten_seq, "{out}");
}

/// As node `i`'s database superuser: disables the append-only trigger, changes
/// record `seq`'s actor, recomputes every later hash and link, re-enables the
/// trigger (one transaction, holding the appenders' lock).
async fn rewrite_history(c: &Cluster, i: usize, seq: i64) {
    let su = c.db_superuser(i).await;
    let mut tx = su.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
        .execute(&mut *tx)
        .await
        .unwrap();
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        i64,
        DateTime<Utc>,
        String,
        String,
        String,
        Option<String>,
        Value,
        Vec<u8>,
        Vec<u8>,
    )> = sqlx::query_as(
        "SELECT seq, ts, node_id, actor, action, subject, details, prev_hash, hash \
         FROM audit_log WHERE seq >= $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut prev: Option<[u8; 32]> = None;
    for (s, ts, node_id, actor, action, subject, details, prev_hash, hash) in rows {
        let mut r = signer::audit::AuditRecord {
            seq: s,
            ts,
            node_id,
            actor,
            action,
            subject,
            details,
            prev_hash: prev_hash.try_into().unwrap(),
            hash: hash.try_into().unwrap(),
        };
        if s == seq {
            r.actor = "mallory".into();
        }
        if let Some(p) = prev {
            r.prev_hash = p;
        }
        r.hash = r.compute_hash();
        prev = Some(r.hash);
        sqlx::query("UPDATE audit_log SET actor = $2, prev_hash = $3, hash = $4 WHERE seq = $1")
            .bind(r.seq)
            .bind(&r.actor)
            .bind(r.prev_hash.as_slice())
            .bind(r.hash.as_slice())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
