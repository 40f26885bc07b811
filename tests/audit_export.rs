//! Compliance exports on a real 3-node 2-of-3 cluster (checkpoints every 4 s): two
//! DKGs, a payment, an approver endorsed by two nodes' admins, a payment that needs
//! and gets her approval (submitted with a token whose name is a `<script>`), a
//! payment every node rejects (over the per-transaction limit), cross-node
//! checkpoints (one after the signed transaction, periodic ones), `signer audit
//! export` with an auditor token and `signer audit verify-export` offline → valid;
//! `signer audit report` of that bundle in both formats lists the DKGs, the
//! payments with their votes, approver and signers, the rejection with the rejecting
//! votes, and the outflow chart, with the script escaped. Then each tampering is
//! detected with the right item named: a record edited in the bundle (whose report
//! is refused, or written marked UNVERIFIED with `--unverified`), a record deleted
//! from it, a checkpoint signature altered, and one node's database rewritten by
//! its superuser (append-only trigger disabled, chain recomputed consistently, so
//! the node's own `audit/verify` still passes) before a new export, caught by the
//! heads its peers co-signed.
//!
//! `SIGNER_TEST_KEEP_REPORT=DIR` copies the bundle and its HTML report to DIR (to
//! look at the report in a browser).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use cluster_tests::wallet::{ended_tx, ends_as, fund, pay, submit};
use cluster_tests::{signer_bin, Cluster};
use serde_json::{json, Value};
use signer::audit::report::csv::parse as parse_csv;

const N: usize = 3;
/// The name of the token that submits the approved payment.
const SCRIPT: &str = "<script>alert(1)</script>";
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

    // Two keys, a policy, a payment.
    let frost = c.dkg(N, "frost", 2).await;
    let frost2 = c.dkg(N, "frost", 2).await;
    // No wait for the nodes to record the new file: each records it (a
    // `policy.version` record) before its first vote under it.
    c.write_policy(N, &[&frost], 1_000_000);
    fund(&c, &frost, &[100_000]).await;
    let id = submit(&c, 0, &pay(&frost, 25_000)).await;
    let v = ended_tx(&c, 0, &id, 240).await;
    assert_eq!(v["state"], "signed", "{v}");
    // A payment that needs a human approval, and one that every node rejects.
    let (approved, rejected) = approved_and_rejected_payments(&c, &frost).await;
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
    check_reports(
        &c,
        &bundle,
        &Keys {
            dkgs: [frost.clone(), frost2.clone()],
            paid: id.clone(),
            approved: approved.clone(),
            rejected: rejected.clone(),
        },
    );
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
    // Its report is refused, naming the same item, and nothing is written; with
    // --unverified it is written, marked UNVERIFIED.
    let edited_bundle = bundle.with_file_name("edited.jsonl");
    let refused_out = tmp.path().join("edited.html");
    let o = report(&c, &edited_bundle, "html", &refused_out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&format!(
            "the bundle does not verify: INVALID: node {n1} seq {seq}: record altered"
        )),
        "{said}"
    );
    assert!(!refused_out.exists());
    let o = report(&c, &edited_bundle, "html", &refused_out, &["--unverified"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the report is marked UNVERIFIED"),
        "{}",
        text(&o)
    );
    let html = std::fs::read_to_string(&refused_out).unwrap();
    assert!(html.contains("<strong>UNVERIFIED</strong>"), "no banner");
    assert!(html.contains(&format!("node {n1} seq {seq}: record altered")));
    let csv_dir = tmp.path().join("edited-csv");
    let o = report(&c, &edited_bundle, "csv", &csv_dir, &["--unverified"]);
    assert!(o.status.success(), "{}", text(&o));
    let rows =
        parse_csv(&std::fs::read_to_string(csv_dir.join("transactions.csv")).unwrap()).unwrap();
    assert!(rows.len() > 1 && rows[1..].iter().all(|r| r[0] == "UNVERIFIED"));

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

/// Endorses approver alice on two nodes, requires an approval above 30 000 sats and
/// a daily velocity limit; a payment of 40 000 submitted with a token named
/// [`SCRIPT`] waits for alice's approval (given through node 1) and is signed; one
/// of 1 200 000 is over the per-transaction limit and rejected by every node.
/// Returns both transaction ids.
async fn approved_and_rejected_payments(c: &Cluster, key: &str) -> (String, String) {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let alice = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let register = json!({
        "name": "alice",
        "role": "approver",
        "public_key": hex::encode(alice.public_key().as_ref()),
    });
    for i in 0..2 {
        let (status, v) = c.post_json(i, "/api/v1/approvers", &register).await;
        assert_eq!(status, 201, "{v}");
    }
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
    c.write_policy_with(
        N,
        &[key],
        1_000_000,
        "[[scope.velocity]]\nwindow_seconds = 86400\nmax_sats = 500000\n\
         [[scope.approvals]]\nabove_sats = 30000\nrequired = 1\nroles = [\"approver\"]\n",
    );
    fund(c, key, &[100_000]).await;
    let scripted = c.create_token(0, SCRIPT, "operator").await;
    let (status, v) = c
        .post_json_as(0, "/api/v1/transactions", &pay(key, 40_000), &scripted)
        .await;
    assert_eq!(status, 202, "{v}");
    let approved = v["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/transactions/{approved}");
    let txid: bitcoin::Txid = c
        .eventually("the unsigned txid", Duration::from_secs(60), || async {
            c.get_ok(0, &path).await?["unsigned_txid"]
                .as_str()?
                .parse()
                .ok()
        })
        .await;
    let uuid = uuid::Uuid::parse_str(&approved).unwrap();
    let approval = json!({
        "approver": "alice",
        "signature": hex::encode(alice.sign(&vote::approval_message(uuid, txid)).as_ref()),
    });
    let approver = c.create_token(1, "alice-approver", "approver").await;
    let (status, v) = c
        .post_json_as(1, &format!("{path}/approvals"), &approval, &approver)
        .await;
    assert_eq!(status, 200, "{v}");
    ends_as(c, &[0, 1, 2], &approved, "signed").await;
    fund(c, key, &[2_000_000]).await;
    let rejected = submit(c, 0, &pay(key, 1_200_000)).await;
    ends_as(c, &[0, 1, 2], &rejected, "rejected").await;
    (approved, rejected)
}

/// `signer audit report BUNDLE --format FORMAT --out OUT` against the cluster's CA,
/// with `extra` arguments.
fn report(c: &Cluster, bundle: &Path, format: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "audit",
        "report",
        bundle.to_str().unwrap(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
        "--ca-cert",
        c.file.ca_cert.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// What the report of the intact bundle must show.
struct Keys {
    dkgs: [String; 2],
    paid: String,
    approved: String,
    rejected: String,
}

/// CSV records of `file` as maps from column name to value.
fn csv_rows(dir: &Path, file: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let mut rows = parse_csv(&text).unwrap().into_iter();
    let header = rows.next().unwrap();
    rows.map(|r| {
        assert_eq!(r.len(), header.len(), "{file}: {r:?}");
        header.iter().cloned().zip(r).collect()
    })
    .collect()
}

/// The HTML row of transaction `id` (its table row, up to the next one).
fn html_row<'a>(html: &'a str, id: &str) -> &'a str {
    let short: String = id.chars().take(13).collect();
    html.split("<tr id=\"tx-")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap())
        .find(|r| r.contains(&format!("<code title=\"{id}\">{short}")))
        .unwrap_or_else(|| panic!("no row of transaction {id}"))
}

/// Both reports of the intact bundle.
fn check_reports(c: &Cluster, bundle: &Path, k: &Keys) {
    let nodes: Vec<String> = (0..N).map(|i| c.node(i).id.clone()).collect();
    let dir = bundle.with_file_name("report-csv");
    let o = report(c, bundle, "csv", &dir, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(verified)"), "{}", text(&o));

    // The DKGs: completed on every node, coordinated by node 0.
    let ceremonies = csv_rows(&dir, "ceremonies.csv");
    for key in &k.dkgs {
        let r = ceremonies
            .iter()
            .find(|r| r["ceremony"] == *key)
            .unwrap_or_else(|| panic!("DKG {key} not in the report: {ceremonies:?}"));
        assert_eq!(
            (
                r["kind"].as_str(),
                r["protocol"].as_str(),
                r["threshold"].as_str()
            ),
            ("dkg", "frost", "2"),
            "{r:?}"
        );
        assert_eq!(r["outcome"], format!("completed on {N} node(s)"), "{r:?}");
        assert_eq!(r["completed_on"], nodes.join(" "), "{r:?}");
        assert_eq!(r["coordinator"], nodes[0], "{r:?}");
        assert!(r["requested_by"].contains("dev-admin"), "{r:?}");
    }
    // The payments, with their amounts, approver and signers.
    let txs = csv_rows(&dir, "transactions.csv");
    let tx = |id: &str| {
        txs.iter()
            .find(|r| r["transaction"] == id)
            .unwrap_or_else(|| panic!("transaction {id} not in the report: {txs:?}"))
    };
    let signers_of = |r: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        r["signers"].split(' ').map(str::to_owned).collect()
    };
    for (id, amount) in [(&k.paid, "25000"), (&k.approved, "40000")] {
        let r = tx(id);
        assert_eq!(r["state"], "signed", "{r:?}");
        assert_eq!(r["amount_sats"], amount, "{r:?}");
        assert_eq!(r["key_id"], k.dkgs[0], "{r:?}");
        let fee: u64 = r["fee_sats"].parse().unwrap();
        let outflow: u64 = r["outflow_sats"].parse().unwrap();
        assert_eq!(outflow, amount.parse::<u64>().unwrap() + fee, "{r:?}");
        let signers = signers_of(r);
        assert_eq!(signers.len(), 2, "{r:?}");
        assert!(signers.iter().all(|s| nodes.contains(s)), "{r:?}");
        assert!(r["timeline"].contains("signed "), "{r:?}");
    }
    assert_eq!(tx(&k.paid)["approvers"], "");
    let r = tx(&k.approved);
    assert_eq!(r["approvers"], "alice", "{r:?}");
    assert_eq!(r["initiator_name"], SCRIPT, "{r:?}");
    assert!(r["timeline"].contains("awaiting_approval"), "{r:?}");
    let approvals = csv_rows(&dir, "approvals.csv");
    let a = approvals
        .iter()
        .find(|a| a["transaction"] == k.approved)
        .unwrap();
    assert_eq!(
        (
            a["approver"].as_str(),
            a["role"].as_str(),
            a["via_node"].as_str()
        ),
        ("alice", "approver", nodes[1].as_str()),
        "{a:?}"
    );
    assert_eq!(a["recorded_by"], nodes.join(" "), "{a:?}");
    let r = tx(&k.rejected);
    assert_eq!(
        (
            r["state"].as_str(),
            r["amount_sats"].as_str(),
            r["signers"].as_str()
        ),
        ("rejected", "1200000", ""),
        "{r:?}"
    );
    // Every node's vote, with the policy hash it voted under (a recorded version).
    let votes = csv_rows(&dir, "votes.csv");
    let policies = csv_rows(&dir, "policies.csv");
    for (id, decision) in [
        (&k.paid, "approve"),
        (&k.approved, "approve"),
        (&k.rejected, "reject"),
    ] {
        let of: Vec<_> = votes.iter().filter(|v| v["transaction"] == *id).collect();
        let voters: Vec<&str> = of.iter().map(|v| v["node"].as_str()).collect();
        assert_eq!(voters, nodes, "{id}: {of:?}");
        for v in of {
            assert_eq!(v["decision"], decision, "{v:?}");
            assert!(
                policies
                    .iter()
                    .any(|p| p["policy_hash"] == v["policy_hash"]),
                "{id}: voted under {} which no recorded policy version has",
                v["policy_hash"]
            );
            assert_eq!(v["policy_recorded"], "recorded", "{v:?}");
            assert_eq!(v["policy_name"], "tests", "{v:?}");
            if decision == "reject" {
                // Over the per-transaction limit (and so over the daily one too).
                assert!(
                    v["reasons"].split(' ').any(|r| r == "amount_over_limit"),
                    "{v:?}"
                );
            }
        }
    }
    assert!(
        policies.iter().any(|p| p["limits"].contains(&format!(
            "{} (regtest): max per tx 1000000, at most 500000 per 1 d",
            k.dkgs[0]
        ))),
        "{policies:?}"
    );
    let tokens = csv_rows(&dir, "tokens.csv");
    assert!(
        tokens
            .iter()
            .any(|t| t["name"] == SCRIPT && t["action"] == "create" && t["role"] == "operator"),
        "{tokens:?}"
    );
    let summary = csv_rows(&dir, "summary.csv");
    let item = |name: &str| {
        summary
            .iter()
            .find(|r| r["item"] == name)
            .map(|r| r["value"].clone())
            .unwrap_or_default()
    };
    assert_eq!(item("verification"), "VALID");
    assert_eq!(item("transactions_signed"), "2");
    assert_eq!(item("transactions_rejected"), "1");
    let outflow = csv_rows(&dir, "outflow.csv");
    let today: u64 = outflow
        .iter()
        .filter(|r| r["key_id"] == k.dkgs[0])
        .map(|r| r["outflow_sats"].parse::<u64>().unwrap())
        .sum();
    let paid: u64 = [&k.paid, &k.approved]
        .iter()
        .map(|id| tx(id)["outflow_sats"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(today, paid, "the rejected payment's outflow is not counted");

    // The same in HTML: rows of each, the chart, the script as text.
    let page = bundle.with_file_name("report.html");
    let o = report(c, bundle, "html", &page, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    if let Some(keep) = std::env::var_os("SIGNER_TEST_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(bundle, keep.join("bundle.jsonl")).unwrap();
        std::fs::copy(&page, keep.join("report.html")).unwrap();
    }
    assert!(!html.contains("UNVERIFIED"));
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "unescaped script"
    );
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    for key in &k.dkgs {
        assert!(
            html.contains(&format!("<code title=\"{key}\">")),
            "DKG {key}"
        );
    }
    assert_eq!(html.matches("DKG frost").count(), 2);
    let row = html_row(&html, &k.approved);
    assert!(row.contains("<b>alice</b>"), "{row}");
    assert_eq!(row.matches("badge approve\"").count(), N, "{row}");
    assert!(row.contains("badge signed"), "{row}");
    assert!(
        row.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{row}"
    );
    assert!(row.contains("<b>40\u{a0}000</b>"), "{row}");
    let signers = tx(&k.approved)["signers"].replace(' ', ", ");
    assert!(row.contains(&format!("<td>{signers}</td>")), "{row}");
    let row = html_row(&html, &k.rejected);
    assert_eq!(row.matches("badge reject\"").count(), N, "{row}");
    assert_eq!(row.matches("amount_over_limit").count(), N, "{row}");
    assert!(row.contains("badge rejected"), "{row}");
    let chart = html
        .split("<svg class=\"chart\"")
        .skip(1)
        .map(|c| c.split("</svg>").next().unwrap())
        .find(|c| {
            c.contains(&format!(
                "aria-label=\"Outflow per day of key {}\"",
                k.dkgs[0]
            ))
        })
        .expect("an outflow chart of the paying key");
    assert!(
        chart.contains("class=\"limit\""),
        "no velocity limit line: {chart}"
    );
    assert!(chart.contains("≤ 500\u{a0}000 / 1 d"), "{chart}");
    assert!(chart.contains("class=\"bar\""), "no outflow bar: {chart}");
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
