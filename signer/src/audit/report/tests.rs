//! Unit tests of the report (pure: bundles built in memory).
#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::csv::{field, parse, CsvParseError};
use super::model::{parse_limits, AuditReport, Verification};
use super::{collect, generate, Esc, Format, ReportError, ReportOptions};
use crate::audit::bundle::{
    BundleWriter, Header, Line, NodeEntry, PolicyEntry, PolicyVersion, RowEntry, BUNDLE_FORMAT,
    BUNDLE_VERSION,
};
use crate::audit::checkpoint::SIGNATURE_LEN;
use crate::audit::verify::VerifyOptions;
use crate::audit::{AuditEntry, AuditRecord, GENESIS_HASH};

const KEY: &str = "7d1c0a52-4a0e-4e55-9b1e-5f8a2b1f0c11";
const XSS: &str = "<script>alert(1)</script>";

fn policy_text(name: &str, daily: u64) -> String {
    format!(
        "version = 1\nname = \"{name}\"\n\n[[scope]]\nkey_id = \"{KEY}\"\nnetwork = \"regtest\"\n\
         [scope.limits]\nmax_per_tx_sats = 1000000\n[[scope.velocity]]\nwindow_seconds = 86400\n\
         max_sats = {daily}\n[[scope.velocity]]\nwindow_seconds = 3600\nmax_sats = 80000\n\
         [[scope.approvals]]\nabove_sats = 30000\nrequired = 1\nroles = [\"approver\"]\n"
    )
}

fn at(day: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, day, h, m, s).unwrap()
}

/// Builds per-node chains of records.
struct Builder {
    chains: Vec<Vec<AuditRecord>>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            chains: vec![Vec::new(), Vec::new(), Vec::new()],
        }
    }

    /// Appends a record to node `i`'s (1-based) chain.
    fn rec(
        &mut self,
        i: usize,
        ts: DateTime<Utc>,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) {
        let c = &mut self.chains[i - 1];
        let prev = c.last().map_or(GENESIS_HASH, |r| r.hash);
        let seq = i64::try_from(c.len()).unwrap() + 1;
        let entry = AuditEntry::new(actor, action)
            .subject(subject)
            .details(details);
        c.push(AuditRecord::new(seq, ts, &format!("node-{i}"), entry, prev));
    }

    fn lines(&self, policy: &str) -> Vec<Line> {
        let mut out = vec![Line::Header(Header {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            bundle_id: Uuid::new_v4(),
            cluster_id: "unit <cluster>".into(),
            exporter: "node-1".into(),
            created_at: at(3, 12, 0, 0),
            from: at(1, 0, 0, 0),
            to: at(3, 0, 0, 0),
            threshold: 2,
            nodes: (1..=3).map(|i| format!("node-{i}")).collect(),
        })];
        for (i, c) in self.chains.iter().enumerate() {
            out.push(Line::Node(NodeEntry {
                node_id: format!("node-{}", i + 1),
                vote_key: [0; 32],
                cert_pem: String::new(),
                key_binding: None,
                head_seq: i64::try_from(c.len()).unwrap(),
                head_hash: c.last().map_or(GENESIS_HASH, |r| r.hash),
                from_seq: 1,
                to_seq: i64::try_from(c.len()).unwrap(),
            }));
        }
        out.push(Line::Policy(PolicyEntry {
            node_id: "node-1".into(),
            seq: 1,
            ts: at(1, 0, 0, 1),
            policy: PolicyVersion::of_text(policy),
        }));
        for (i, c) in self.chains.iter().enumerate() {
            for r in c {
                out.push(Line::Row(RowEntry {
                    node: format!("node-{}", i + 1),
                    record: r.clone(),
                }));
            }
        }
        out
    }
}

fn bytes(lines: &[Line], manifest: bool) -> Vec<u8> {
    let mut w = BundleWriter::new();
    let mut out = Vec::new();
    for l in lines {
        out.extend(w.line(l));
    }
    if manifest {
        let Line::Header(h) = &lines[0] else {
            panic!("header first")
        };
        out.extend(w.finish(h.bundle_id, &h.exporter, |_| [0u8; SIGNATURE_LEN]));
    }
    out
}

/// A cluster's month in miniature: a DKG, an aux info, tokens (one named with a
/// script), an approver, a policy change, an approved payment with an approval and
/// its signers, a payment rejected by every node, one expired on a node, a
/// violation and a KEK rotation.
fn scenario() -> (Vec<Line>, String, String, String) {
    let policy = policy_text("treasury", 500_000);
    let hash = PolicyVersion::of_text(&policy).hash.unwrap();
    let mut b = Builder::new();
    let pay = "11111111-1111-4111-8111-111111111111";
    let rejected = "22222222-2222-4222-8222-222222222222";
    b.rec(
        1,
        at(1, 0, 0, 1),
        "node",
        "policy.version",
        "policy.toml",
        serde_json::to_value(PolicyVersion::of_text(&policy)).unwrap(),
    );
    b.rec(
        1,
        at(1, 9, 0, 0),
        "cluster-up",
        "token.create",
        "tokadmin",
        json!({"name": "dev-admin", "role": "admin"}),
    );
    b.rec(
        1,
        at(1, 9, 1, 0),
        "tokadmin",
        "token.create",
        "tokops",
        json!({"name": XSS, "role": "operator", "rate_limit_per_min": 600}),
    );
    b.rec(1, at(1, 9, 2, 0), "tokadmin", "dkg.start", KEY, json!({"protocol": "frost", "threshold": 2, "participants": ["node-1", "node-2", "node-3"], "fencing_token": 7}));
    for i in 1..=3 {
        b.rec(
            i,
            at(1, 9, 2, 10 + u32::try_from(i).unwrap()),
            "node",
            "dkg.completed",
            KEY,
            json!({"public_key": "02abcdef"}),
        );
    }
    let aux = "33333333-3333-4333-8333-333333333333";
    b.rec(1, at(1, 9, 3, 0), "tokadmin", "aux_info.start", aux, json!({"protocol": "aux_info", "threshold": 3, "participants": ["node-1", "node-2", "node-3"], "fencing_token": 8}));
    b.rec(
        2,
        at(1, 9, 4, 0),
        "node",
        "dkg.failed",
        aux,
        json!({"reason": "peer node-3 timed out"}),
    );
    for i in 1..=2 {
        b.rec(
            i,
            at(1, 9, 5, 0),
            "tokadmin",
            "approver.endorse",
            "alice\"><img src=x onerror=alert(2)>",
            json!({"role": "approver", "public_key": "aa55", "node": format!("node-{i}")}),
        );
    }
    // The approved payment: 40 000 to a recipient, fee 300.
    b.rec(1, at(2, 10, 0, 0), "tokops", "tx.submit", pay, json!({"key_id": KEY, "txid": "ab".repeat(32), "inputs": 1, "fee_sats": 300, "outflow_sats": 40_300, "recipient": XSS, "amount_sats": 40_000}));
    for i in 1..=3 {
        b.rec(
            i,
            at(2, 10, 0, 1),
            "node",
            "tx.awaiting_approval",
            pay,
            json!({"txid": "ab".repeat(32), "leader": "node-1"}),
        );
    }
    b.rec(
        3,
        at(2, 10, 5, 0),
        "tokappr",
        "tx.approve",
        pay,
        json!({"approver": "alice", "role": "approver", "via_node": "node-3"}),
    );
    for i in 1..=2 {
        b.rec(
            i,
            at(2, 10, 5, 1),
            "node",
            "tx.approval_received",
            pay,
            json!({"approver": "alice", "role": "approver", "via_node": "node-3"}),
        );
    }
    for i in 1..=3 {
        b.rec(i, at(2, 10, 5, 2), "node", "tx.vote", pay, json!({"decision": "approve", "reasons": [], "txid": "ab".repeat(32), "policy_hash": hash, "leader": "node-1"}));
        b.rec(
            i,
            at(2, 10, 5, 3),
            "node",
            "tx.approved",
            pay,
            json!({"votes": 3}),
        );
    }
    for i in 1..=2 {
        b.rec(i, at(2, 10, 5, 4), "node", "tx.sign_input", pay, json!({"input": 0, "session": Uuid::nil(), "signers": ["node-1", "node-2"], "leader": "node-1"}));
    }
    for i in 1..=3 {
        b.rec(
            i,
            at(2, 10, 5, 6),
            "node",
            "tx.signed",
            pay,
            json!({"txid": "ab".repeat(32)}),
        );
    }
    // The rejected payment: over the per-transaction limit.
    b.rec(1, at(2, 11, 0, 0), "tokops", "tx.submit", rejected, json!({"key_id": KEY, "txid": "cd".repeat(32), "inputs": 1, "fee_sats": 400, "outflow_sats": 1_200_400, "recipient": "bcrt1qother", "amount_sats": 1_200_000}));
    for i in 1..=3 {
        b.rec(i, at(2, 11, 0, 1), "node", "tx.vote", rejected, json!({"decision": "reject", "reasons": ["amount_over_limit"], "txid": "cd".repeat(32), "policy_hash": hash, "leader": "node-1"}));
        b.rec(
            i,
            at(2, 11, 0, 2),
            "node",
            "tx.rejected",
            rejected,
            json!({"votes": 3}),
        );
    }
    b.rec(2, at(2, 12, 0, 0), "node", "vote.violation", "node-3", json!({"violation_id": 1, "violation_type": "double_vote", "session": rejected, "summary": XSS}));
    b.rec(1, at(3, 8, 0, 0), "cli", "hsm.rotate_kek", "signer-kek-2#1", json!({"old_kek": "signer-kek#0", "new_kek": "signer-kek-2#1", "rewrapped": {"key_shares": 1}, "already_current": 0}));
    let lines = b.lines(&policy);
    (lines, pay.to_owned(), rejected.to_owned(), hash)
}

fn report_of(lines: &[Line], verification: Verification) -> AuditReport {
    let (r, consistent) = collect(Cursor::new(bytes(lines, true)), verification).unwrap();
    assert!(consistent, "the manifest digest covers the lines");
    r.unwrap()
}

fn valid() -> Verification {
    Verification::Valid {
        checkpoints: 2,
        notes: Vec::new(),
    }
}

#[test]
fn html_escaping_covers_text_and_attributes() {
    assert_eq!(
        Esc("a<b>&\"c'd").to_string(),
        "a&lt;b&gt;&amp;&quot;c&#39;d"
    );
    assert_eq!(Esc("plain, text").to_string(), "plain, text");
    assert_eq!(Esc("").to_string(), "");
    assert_eq!(Esc("é<").to_string(), "é&lt;");
}

#[test]
fn csv_fields_are_quoted_as_rfc_4180_says_and_formulas_neutralized() {
    assert_eq!(field("plain"), "plain");
    assert_eq!(field(""), "");
    assert_eq!(field("a,b"), "\"a,b\"");
    assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(field("two\r\nlines"), "\"two\r\nlines\"");
    assert_eq!(field("lf\nonly"), "\"lf\nonly\"");
    assert_eq!(
        field("=HYPERLINK(\"http://x\")"),
        "\"'=HYPERLINK(\"\"http://x\"\")\""
    );
    for f in ["+1", "-1", "@SUM(A1)", "\tx", "=1+1"] {
        assert_eq!(field(f), format!("'{f}"), "{f:?}");
    }
    assert_eq!(field("a=b"), "a=b", "only a leading = is a formula");
    // Read back: every field as written, formulas with their quote.
    let row = ["a,b", "say \"hi\"", "x\r\ny", "=1+1", "", "plain"];
    let line: Vec<String> = row.iter().map(|f| field(f).into_owned()).collect();
    let text = format!("h1,h2,h3,h4,h5,h6\r\n{}\r\n", line.join(","));
    let parsed = parse(&text).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(
        parsed[1],
        ["a,b", "say \"hi\"", "x\r\ny", "'=1+1", "", "plain"]
    );
    assert_eq!(
        parse("\"open,field\r\n"),
        Err(CsvParseError::Unclosed { record: 1 })
    );
    assert_eq!(
        parse("\"closed\"x,y\r\n"),
        Err(CsvParseError::AfterQuote { record: 1 })
    );
}

#[test]
fn a_transaction_shows_its_votes_policy_approvers_signers_amounts_and_timeline() {
    let (lines, pay, rejected, hash) = scenario();
    let r = report_of(&lines, valid());
    assert_eq!(r.transactions.len(), 2);
    let t = r.transactions.iter().find(|t| t.id == pay).unwrap();
    assert_eq!(t.state(), "signed");
    assert_eq!(t.key_id.as_deref(), Some(KEY));
    assert_eq!(t.initiator.as_deref(), Some("tokops"));
    assert_eq!(r.actor("tokops"), format!("{XSS} (tokops)"));
    assert_eq!(t.leader.as_deref(), Some("node-1"));
    assert_eq!(
        (t.amount_sats, t.fee_sats, t.outflow()),
        (Some(40_000), Some(300), Some(40_300))
    );
    assert_eq!(t.votes.len(), 3);
    assert!(t
        .votes
        .values()
        .all(|v| v.decision == "approve" && v.policy_hash.as_deref() == Some(hash.as_str())));
    assert_eq!(r.policy_name(&hash), Some("treasury"));
    let a = &t.approvals["alice"];
    assert_eq!(
        (a.role.as_str(), a.via_node.as_str()),
        ("approver", "node-3")
    );
    assert_eq!(a.recorded_by.len(), 3);
    assert_eq!(a.ts, at(2, 10, 5, 0));
    assert_eq!(t.signers.iter().collect::<Vec<_>>(), ["node-1", "node-2"]);
    let steps: Vec<&str> = t.timeline().iter().map(|s| s.name).collect();
    assert_eq!(
        steps,
        [
            "submitted",
            "awaiting_approval",
            "approval",
            "voted",
            "approved",
            "signing",
            "signed"
        ]
    );
    let x = r.transactions.iter().find(|t| t.id == rejected).unwrap();
    assert_eq!(x.state(), "rejected");
    assert!(x
        .votes
        .values()
        .all(|v| v.decision == "reject" && v.reasons == ["amount_over_limit"]));
    assert!(x.signers.is_empty());
    assert_eq!(r.count_state("rejected"), 1);
}

#[test]
fn ceremonies_tokens_policies_violations_and_custody_events_are_listed() {
    let (lines, ..) = scenario();
    let r = report_of(&lines, valid());
    assert_eq!(r.ceremonies.len(), 2);
    let dkg = &r.ceremonies[0];
    assert_eq!((dkg.id.as_str(), dkg.kind.as_str()), (KEY, "dkg"));
    assert_eq!(dkg.protocol.as_deref(), Some("frost"));
    assert_eq!(dkg.completed.len(), 3);
    assert_eq!(dkg.coordinator.as_deref(), Some("node-1"));
    assert_eq!(dkg.public.as_deref(), Some("02abcdef"));
    assert_eq!(dkg.outcome(), "completed on 3 node(s)");
    let aux = &r.ceremonies[1];
    assert_eq!(aux.kind, "aux_info");
    assert_eq!(aux.failed["node-2"].1, "peer node-3 timed out");
    assert_eq!(r.tokens.len(), 2);
    assert_eq!(r.tokens[1].name.as_deref(), Some(XSS));
    assert_eq!(r.tokens[1].by, "tokadmin");
    assert_eq!(r.actor("tokadmin"), "dev-admin (tokadmin)");
    assert_eq!(r.approvers.len(), 2);
    // The policy line and the node's policy.version record are one version.
    assert_eq!(r.policies.len(), 1);
    let p = &r.policies[0];
    assert_eq!(p.name.as_deref(), Some("treasury"));
    assert_eq!(p.scopes.len(), 1);
    assert_eq!(p.scopes[0].max_per_tx_sats, Some(1_000_000));
    assert_eq!(p.scopes[0].velocity.len(), 2);
    assert_eq!(r.violations.len(), 1);
    let v = &r.violations[0];
    assert_eq!(
        (v.detected_by.as_str(), v.culprit.as_str(), v.kind.as_str()),
        ("node-2", "node-3", "double_vote")
    );
    assert!(v.detail.contains(XSS));
    assert_eq!(r.custody.len(), 1);
    assert_eq!(r.custody[0].action, "hsm.rotate_kek");
}

#[test]
fn outflow_per_day_counts_approved_transactions_against_the_limits_in_force() {
    let (lines, ..) = scenario();
    let r = report_of(&lines, valid());
    let k = r.outflow.iter().find(|k| k.key_id == KEY).unwrap();
    assert_eq!(k.days.len(), 3, "{:?}", k.days);
    // Day 2: the signed payment counts, the rejected one does not.
    assert_eq!(k.outflow[1].sats, 40_300);
    assert_eq!(k.outflow[1].transactions, 1);
    assert_eq!(k.outflow[0].sats + k.outflow[2].sats, 0);
    let windows: Vec<u64> = k.limits.iter().map(|l| l.window_seconds).collect();
    assert_eq!(windows, [3600, 86_400]);
    assert!(k.limits[1].max_sats.iter().all(|m| *m == Some(500_000)));
    let svg = super::chart::svg(k);
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    assert_eq!(svg.matches("class=\"limit\"").count(), 2, "{svg}");
    assert_eq!(svg.matches("class=\"bar\"").count(), 1, "{svg}");
    assert!(!svg.contains("bar over"));
    assert!(svg.contains("≤ 500\u{a0}000 / 1 d"), "{svg}");
}

#[test]
fn a_day_over_its_daily_limit_is_drawn_red_and_a_policy_change_moves_the_line() {
    let (mut lines, ..) = scenario();
    // node-1 lowers the daily limit to 30 000 on day 2, before the payment.
    let lower = policy_text("treasury-tight", 30_000);
    lines.push(Line::Policy(PolicyEntry {
        node_id: "node-1".into(),
        seq: 99,
        ts: at(2, 8, 0, 0),
        policy: PolicyVersion::of_text(&lower),
    }));
    let r = report_of(&lines, valid());
    let k = r.outflow.iter().find(|k| k.key_id == KEY).unwrap();
    let daily = k
        .limits
        .iter()
        .find(|l| l.window_seconds == 86_400)
        .unwrap();
    assert_eq!(daily.max_sats, [Some(500_000), Some(30_000), Some(30_000)]);
    assert!(super::chart::over_limit(k, 1));
    let svg = super::chart::svg(k);
    assert!(svg.contains("class=\"bar over\""), "{svg}");
    let p = r.policies.iter().find(|p| p.seq == 99).unwrap();
    assert!(
        p.previous_hash.is_some(),
        "a change from the earlier version"
    );
}

#[test]
fn html_is_self_contained_and_escapes_every_bundle_string() {
    let (lines, pay, ..) = scenario();
    let html = super::html::render(&report_of(&lines, valid()));
    // The script in a token name, a recipient and a violation summary, the
    // attribute break-out in an approver name and the cluster name: all text.
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "unescaped script"
    );
    assert!(!html.contains("<img"), "unescaped tag");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("alice&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("unit &lt;cluster&gt;"));
    // No external resource, no script: only the SVG namespace names a URL, and the
    // page forbids anything but its inline style.
    assert_eq!(
        html.matches("http").count(),
        html.matches("http://www.w3.org/2000/svg").count() + 1
    );
    assert!(html.contains("http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\""));
    assert!(!html.contains(" src=\"") && !html.contains(" href=\"") && !html.contains("@import"));
    // What an auditor looks for.
    assert!(html.contains(&pay[..13]));
    assert!(html.contains("<svg class=\"chart\""));
    assert!(html.contains("amount_over_limit"));
    assert!(html.contains("treasury"));
    assert!(!html.contains("UNVERIFIED"));
    assert!(html.contains(">VALID<"));
}

#[test]
fn an_unverified_report_says_so_on_the_page_and_on_every_csv_row() {
    let (lines, ..) = scenario();
    let v = Verification::Unverified {
        first_problem: "node node-2 seq 4: record altered (line 9)".into(),
        problems: 2,
    };
    let r = report_of(&lines, v);
    let html = super::html::render(&r);
    assert!(html.contains("<title>UNVERIFIED"));
    assert!(html.contains(
        "<div class=\"banner\" role=\"alert\" id=\"unverified\"><strong>UNVERIFIED</strong>"
    ));
    assert!(html.contains("node node-2 seq 4: record altered (line 9)"));
    for f in super::csv::render(&r) {
        let rows = parse(&f.content).unwrap();
        assert_eq!(rows[0][0], "verification", "{}", f.name);
        assert!(
            rows[1..].iter().all(|row| row[0] == "UNVERIFIED"),
            "{}",
            f.name
        );
    }
}

#[test]
fn csv_sections_parse_back_with_the_bundle_strings_intact() {
    let (lines, pay, rejected, hash) = scenario();
    let files = super::csv::render(&report_of(&lines, valid()));
    let get = |name: &str| {
        let f = files.iter().find(|f| f.name == name).unwrap();
        assert!(f.content.ends_with("\r\n"));
        parse(&f.content).unwrap()
    };
    let txs = get("transactions.csv");
    let col = |name: &str| txs[0].iter().position(|c| c == name).unwrap();
    assert!(txs.iter().all(|r| r.len() == txs[0].len()));
    let row = txs.iter().find(|r| r[col("transaction")] == pay).unwrap();
    assert_eq!(row[col("state")], "signed");
    assert_eq!(row[col("approvers")], "alice");
    assert_eq!(row[col("signers")], "node-1 node-2");
    assert_eq!(row[col("initiator_name")], XSS);
    assert_eq!(row[col("recipient")], XSS);
    assert_eq!(row[col("amount_sats")], "40000");
    let votes = get("votes.csv");
    let rejecting: Vec<&Vec<String>> = votes.iter().filter(|r| r[1] == rejected).collect();
    assert_eq!(rejecting.len(), 3);
    assert!(rejecting.iter().all(|r| r[4] == "reject"
        && r[5] == "amount_over_limit"
        && r[6] == hash
        && r[7] == "treasury"));
    let ceremonies = get("ceremonies.csv");
    assert!(ceremonies.iter().any(|r| r[1] == KEY && r[3] == "frost"));
    let violations = get("violations.csv");
    assert_eq!(violations.len(), 2);
    assert!(violations[1][6].contains(XSS));
    let summary = get("summary.csv");
    assert!(summary
        .iter()
        .any(|r| r[1] == "verification" && r[2] == "VALID"));
    assert!(summary
        .iter()
        .any(|r| r[1] == "transactions_rejected" && r[2] == "1"));
}

#[test]
fn velocity_limits_are_read_from_policies_the_engine_accepts() {
    let (name, scopes) = parse_limits(&policy_text("p", 123));
    assert_eq!(name.as_deref(), Some("p"));
    assert_eq!(scopes[0].velocity[0].window_seconds, 3600);
    assert_eq!(scopes[0].velocity[1].max_sats, 123);
    assert_eq!(scopes[0].approvals, [(Some(30_000), 1)]);
    // A text the policy engine refuses has no limits.
    let (name, scopes) = parse_limits("version = 1\n[[scope]]\nkey_id = \"k\"\nnetwork = \"regtest\"\n[[scope.velocity]]\nwindow_seconds = 0\nmax_sats = 5\n");
    assert!(name.is_none() && scopes.is_empty());
}

#[test]
fn a_bundle_that_does_not_verify_is_refused_unless_unverified_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, ..) = scenario();
    // No CA, no certificates, an unsigned manifest: INVALID.
    let bundle = dir.path().join("june.jsonl");
    std::fs::write(&bundle, bytes(&lines, true)).unwrap();
    let out = dir.path().join("june.html");
    let mut opts = ReportOptions {
        format: Format::Html,
        out: Some(out.clone()),
        unverified: false,
        verify: VerifyOptions::default(),
    };
    match generate(&bundle, &opts) {
        Err(e @ ReportError::Invalid { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("the bundle does not verify: INVALID: "),
                "{msg}"
            );
            assert!(
                msg.contains("(line "),
                "the first broken item names its line: {msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(dir.path()), ["june.jsonl"]);
    opts.unverified = true;
    let w = generate(&bundle, &opts).unwrap();
    assert!(!w.report.verification.is_valid());
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<strong>UNVERIFIED</strong>"));
    // CSV: a directory, default name next to the bundle; refused over files.
    opts.format = Format::Csv;
    opts.out = None;
    let w = generate(&bundle, &opts).unwrap();
    assert_eq!(w.path, dir.path().join("june.report"));
    assert!(w.files.contains(&"transactions.csv"));
    assert_eq!(names(&w.path).len(), w.files.len());
    assert_eq!(
        names(dir.path()),
        ["june.html", "june.jsonl", "june.report"]
    );
    match generate(&bundle, &opts) {
        Err(e @ ReportError::OutNotEmpty { .. }) => {
            assert!(
                e.to_string()
                    .contains("june.report exists and is not an empty directory"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    opts.out = Some(empty.clone());
    generate(&bundle, &opts).unwrap();
    assert!(empty.join("summary.csv").is_file());
    assert!(!names(dir.path()).iter().any(|n| n.contains("partial")));
}

#[test]
fn not_a_bundle_is_a_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let opts = ReportOptions {
        format: Format::Html,
        out: None,
        unverified: true,
        verify: VerifyOptions::default(),
    };
    match generate(&missing, &opts) {
        Err(e @ ReportError::Read { .. }) => {
            assert!(e.to_string().starts_with("cannot read "), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello\n").unwrap();
    match generate(&text, &opts) {
        Err(e @ ReportError::NoHeader { .. }) => {
            assert!(e.to_string().contains("has no header line"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn days_span_the_records_and_the_timeline_is_in_time_order() {
    let (lines, pay, ..) = scenario();
    let r = report_of(&lines, valid());
    let (first, last) = r.span().unwrap();
    assert_eq!(first, at(1, 0, 0, 1));
    assert!(last - first > TimeDelta::days(2));
    let t = r.transactions.iter().find(|t| t.id == pay).unwrap();
    assert!(t.events.windows(2).all(|w| w[0].ts <= w[1].ts));
}

#[test]
fn a_vote_under_a_policy_whose_text_is_not_in_the_bundle_is_flagged() {
    let (mut lines, ..) = scenario();
    let id = "44444444-4444-4444-8444-444444444444";
    let unknown = "ee".repeat(32);
    let zero = "0".repeat(64);
    let mut b = Builder::new();
    b.rec(
        1,
        at(3, 9, 0, 0),
        "tokops",
        "tx.submit",
        id,
        json!({"key_id": KEY, "txid": "ef".repeat(32), "inputs": 1, "fee_sats": 200}),
    );
    b.rec(
        1,
        at(3, 9, 0, 1),
        "node",
        "tx.vote",
        id,
        json!({"decision": "approve", "reasons": [], "policy_hash": unknown}),
    );
    b.rec(
        2,
        at(3, 9, 0, 1),
        "node",
        "tx.vote",
        id,
        json!({"decision": "reject", "reasons": ["policy_unavailable"], "policy_hash": zero}),
    );
    for (i, c) in b.chains.iter().enumerate() {
        for r in c {
            lines.push(Line::Row(RowEntry {
                node: format!("node-{}", i + 1),
                record: r.clone(),
            }));
        }
    }
    let r = report_of(&lines, valid());
    assert_eq!(r.policy_status(Some(&unknown)), "not_recorded");
    assert_eq!(r.policy_status(Some(&zero)), "none");
    assert_eq!(r.policy_status(None), "none");
    assert_eq!(r.votes_under_unrecorded_policy(), 1);
    let html = super::html::render(&r);
    assert!(
        html.contains("under a policy not recorded"),
        "no summary flag"
    );
    assert_eq!(html.matches(">not recorded</span>").count(), 1);
    assert_eq!(html.matches(">none loaded</span>").count(), 1);
    let files = super::csv::render(&r);
    let votes = parse(
        &files
            .iter()
            .find(|f| f.name == "votes.csv")
            .unwrap()
            .content,
    )
    .unwrap();
    let status: Vec<&str> = votes
        .iter()
        .filter(|v| v[1] == id)
        .map(|v| v[8].as_str())
        .collect();
    assert_eq!(status, ["not_recorded", "none"]);
    // Not approved by a quorum: no outflow counted, known or not.
    let k = r.outflow.iter().find(|k| k.key_id == KEY).unwrap();
    assert_eq!(k.outflow.iter().map(|d| d.unknown).sum::<u64>(), 0);
}

#[test]
fn an_approved_transaction_without_amounts_is_counted_as_unknown_outflow() {
    let (mut lines, ..) = scenario();
    let id = "55555555-5555-4555-8555-555555555555";
    let mut b = Builder::new();
    // A submission recorded before the records carried amounts: fee only.
    b.rec(
        1,
        at(3, 9, 0, 0),
        "tokops",
        "tx.submit",
        id,
        json!({"key_id": KEY, "txid": "ef".repeat(32), "inputs": 1, "fee_sats": 200}),
    );
    b.rec(
        1,
        at(3, 9, 0, 2),
        "node",
        "tx.approved",
        id,
        json!({"votes": 2}),
    );
    for r in &b.chains[0] {
        lines.push(Line::Row(RowEntry {
            node: "node-1".into(),
            record: r.clone(),
        }));
    }
    let r = report_of(&lines, valid());
    let t = r.transactions.iter().find(|t| t.id == id).unwrap();
    assert_eq!((t.amount_sats, t.outflow()), (None, None));
    let k = r.outflow.iter().find(|k| k.key_id == KEY).unwrap();
    assert_eq!(k.outflow[2].unknown, 1);
    assert_eq!(k.outflow[2].sats, 0);
    let svg = super::chart::svg(k);
    assert!(svg.contains("class=\"unknown\""), "{svg}");
    let html = super::html::render(&r);
    assert!(
        html.contains("1 without an amount in the records (marked ?)"),
        "no note"
    );
}
