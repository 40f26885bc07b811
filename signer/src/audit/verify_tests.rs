//! Unit tests of the offline bundle verification (pure: bundles built in memory,
//! certificates from a throwaway CA).
#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use chrono::Utc;
use uuid::Uuid;

use super::bundle::{
    sign_key_binding, BundleWriter, CaEntry, CheckpointEntry, Header, Line, NodeEntry, PolicyEntry,
    PolicyVersion, RowEntry, BUNDLE_FORMAT, BUNDLE_VERSION,
};
use super::checkpoint::tests::{key, pubkey, sig64, signed};
use super::checkpoint::{Checkpoint, CHECKPOINT_ACTION};
use super::verify::{verify_bundle, Kind, Report, VerifyOptions};
use super::{AuditEntry, AuditRecord, GENESIS_HASH};

const NODES: u8 = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    header: Header,
    ca: String,
    nodes: Vec<NodeEntry>,
    policies: Vec<PolicyEntry>,
    checkpoints: Vec<Checkpoint>,
    /// Per node (index 0 = node-1), its records.
    chains: Vec<Vec<AuditRecord>>,
}

fn node(i: u8) -> String {
    format!("node-{i}")
}

fn record(node_id: &str, seq: i64, prev: [u8; 32], entry: AuditEntry) -> AuditRecord {
    AuditRecord::new(seq, Utc::now(), node_id, entry, prev)
}

fn plain(i: u8, seq: i64) -> AuditEntry {
    AuditEntry::new("tok1", "test.action")
        .subject(format!("s{seq}"))
        .details(serde_json::json!({"node": i, "n": seq}))
}

/// Rebuilds node `i`'s chain from its entries (the consistent rewrite an
/// administrator could do).
fn rechain(records: &mut [AuditRecord]) {
    let mut prev = GENESIS_HASH;
    for r in records.iter_mut() {
        r.prev_hash = prev;
        r.hash = r.compute_hash();
        prev = r.hash;
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::ca::init_ca(dir.path()).unwrap();
    let ca_pem = std::fs::read_to_string(&ca.cert_path).unwrap();
    // Three records per node, then checkpoint 1 over seq 3 stored as seq 4 in every
    // log, two more records, checkpoint 2 over seq 6 (stored after the range).
    let mut chains: Vec<Vec<AuditRecord>> = Vec::new();
    for i in 1..=NODES {
        let mut c = Vec::new();
        let mut prev = GENESIS_HASH;
        for seq in 1..=3 {
            let r = record(&node(i), seq, prev, plain(i, seq));
            prev = r.hash;
            c.push(r);
        }
        chains.push(c);
    }
    let heads: Vec<(u8, i64, [u8; 32])> = (1..=NODES)
        .map(|i| (i, 3, chains[usize::from(i - 1)][2].hash))
        .collect();
    let cp1 = signed(&heads, &[1, 2, 3], 2);
    for i in 1..=NODES {
        let c = &mut chains[usize::from(i - 1)];
        let prev = c.last().unwrap().hash;
        let entry = AuditEntry::new("node", CHECKPOINT_ACTION)
            .subject(cp1.id.to_string())
            .details(cp1.to_details());
        c.push(record(&node(i), 4, prev, entry));
        for seq in 5..=6 {
            let prev = c.last().unwrap().hash;
            c.push(record(&node(i), seq, prev, plain(i, seq)));
        }
    }
    let heads: Vec<(u8, i64, [u8; 32])> = (1..=NODES)
        .map(|i| (i, 6, chains[usize::from(i - 1)][5].hash))
        .collect();
    let cp2 = signed(&heads, &[1, 2], 2);
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let paths = crate::ca::issue_node_cert(dir.path(), &node(i), 30).unwrap();
        let tls_key = crate::ca::files::read_private_key(&paths.key).unwrap();
        let c = &chains[usize::from(i - 1)];
        nodes.push(NodeEntry {
            node_id: node(i),
            vote_key: pubkey(i),
            cert_pem: std::fs::read_to_string(&paths.cert).unwrap(),
            key_binding: Some(sign_key_binding(&tls_key, &node(i), &pubkey(i)).unwrap()),
            head_seq: 6,
            head_hash: c[5].hash,
            from_seq: 1,
            to_seq: 6,
        });
    }
    let policy = PolicyVersion::of_text("version = 1\nname = \"unit\"\n");
    Fixture {
        _dir: dir,
        header: Header {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            bundle_id: Uuid::new_v4(),
            cluster_id: "unit".into(),
            exporter: node(1),
            created_at: Utc::now(),
            from: Utc::now() - chrono::TimeDelta::hours(1),
            to: Utc::now(),
            threshold: 2,
            nodes: (1..=NODES).map(node).collect(),
        },
        ca: ca_pem,
        nodes,
        policies: vec![PolicyEntry {
            node_id: node(1),
            seq: 1,
            ts: Utc::now(),
            policy,
        }],
        checkpoints: vec![cp1, cp2],
        chains,
    }
}

impl Fixture {
    fn lines(&self) -> Vec<Line> {
        let mut out = vec![
            Line::Header(self.header.clone()),
            Line::Ca(CaEntry {
                pem: self.ca.clone(),
            }),
        ];
        out.extend(self.nodes.iter().cloned().map(Line::Node));
        out.extend(self.policies.iter().cloned().map(Line::Policy));
        out.extend(self.checkpoints.iter().map(|c| {
            Line::Checkpoint(CheckpointEntry {
                checkpoint: c.clone(),
            })
        }));
        for (i, c) in self.chains.iter().enumerate() {
            for r in c {
                out.push(Line::Row(RowEntry {
                    node: node(u8::try_from(i + 1).unwrap()),
                    record: r.clone(),
                }));
            }
        }
        out
    }

    /// The bundle, with a manifest signed by the exporter (node-1).
    fn render(&self) -> Vec<u8> {
        render(&self.lines())
    }
}

fn render(lines: &[Line]) -> Vec<u8> {
    let mut w = BundleWriter::new();
    let mut out = Vec::new();
    for l in lines {
        if let Line::Node(n) = l {
            w.expect_node(&n.node_id);
        }
        out.extend(w.line(l));
    }
    let Line::Header(h) = &lines[0] else {
        panic!("header first")
    };
    out.extend(w.finish(h.bundle_id, &h.exporter, |m| sig64(&key(1), m)));
    out
}

fn verify(bytes: &[u8]) -> Report {
    verify_bundle(
        || Ok(Cursor::new(bytes.to_vec())),
        &VerifyOptions::default(),
    )
    .unwrap()
}

/// The bundle with line `n` (from 1) replaced by `f(line)`.
fn edit_line(bytes: &[u8], n: usize, mut f: impl FnMut(&str) -> Option<String>) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        if i + 1 == n {
            if let Some(new) = f(l) {
                out.push_str(&new);
                out.push('\n');
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Line number of node `i`'s record `seq`.
fn row_line(bytes: &[u8], i: u8, seq: i64) -> usize {
    let text = std::str::from_utf8(bytes).unwrap();
    text.lines()
        .position(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["type"] == "row" && v["node"] == node(i) && v["record"]["seq"] == seq
        })
        .unwrap()
        + 1
}

#[test]
fn an_intact_bundle_verifies() {
    let f = fixture();
    let r = verify(&f.render());
    assert!(r.is_valid(), "{:?}", r.problems);
    assert_eq!(r.checkpoints_verified, 2);
    assert_eq!(r.policies, 1);
    for i in 1..=NODES {
        let s = &r.nodes[&node(i)];
        assert_eq!((s.records, s.first_seq, s.last_seq), (6, Some(1), Some(6)));
        assert_eq!(s.covered_to, Some(6), "{s:?}");
        assert_eq!(s.heads_matched, 2);
    }
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn a_row_edited_in_the_bundle_is_named_by_node_and_sequence() {
    let f = fixture();
    let b = f.render();
    let n = row_line(&b, 2, 5);
    let edited = edit_line(&b, n, |l| Some(l.replace("\"tok1\"", "\"mallory\"")));
    let r = verify(&edited);
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref(), p.seq),
        (Kind::Chain, Some("node-2"), Some(5)),
        "{p}"
    );
    assert!(p.to_string().contains("altered"), "{p}");
    // The manifest's digest is wrong too, reported after.
    assert!(r.problems.iter().any(|p| p.kind == Kind::Manifest));
}

#[test]
fn a_row_deleted_from_the_bundle_is_named_as_missing() {
    let f = fixture();
    let b = f.render();
    let n = row_line(&b, 3, 2);
    let r = verify(&edit_line(&b, n, |_| None));
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref(), p.seq),
        (Kind::Missing, Some("node-3"), Some(2)),
        "{p}"
    );
    // The last record of a range deleted: missing at the end.
    let n = row_line(&b, 1, 6);
    let r = verify(&edit_line(&b, n, |_| None));
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref(), p.seq),
        (Kind::Missing, Some("node-1"), Some(6)),
        "{p}"
    );
}

#[test]
fn an_altered_checkpoint_signature_is_named() {
    let f = fixture();
    let b = f.render();
    let id = f.checkpoints[1].id;
    let text = std::str::from_utf8(&b).unwrap();
    let n = text
        .lines()
        .position(|l| l.contains("\"type\":\"checkpoint\"") && l.contains(&id.to_string()))
        .unwrap()
        + 1;
    let sig = hex::encode(f.checkpoints[1].signatures[0].signature);
    let mut forged = sig.clone().into_bytes();
    forged[10] = if forged[10] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let r = verify(&edit_line(&b, n, |l| Some(l.replace(&sig, &forged))));
    let p = r.first_problem().expect("invalid");
    assert_eq!((p.kind, p.checkpoint), (Kind::Checkpoint, Some(id)), "{p}");
    assert!(p.to_string().contains("co-signature of node-1"), "{p}");
}

#[test]
fn a_consistently_rewritten_chain_is_caught_by_the_peers_checkpoints() {
    let mut f = fixture();
    // The administrator of node-2 edits record 2 and recomputes the whole chain:
    // every link holds, the manifest is signed over the rewritten records.
    let c = &mut f.chains[1];
    c[1].actor = "mallory".into();
    rechain(c);
    let r = verify(&f.render());
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref(), p.seq),
        (Kind::Head, Some("node-2"), Some(3)),
        "{p}"
    );
    assert!(
        p.to_string().contains(&f.checkpoints[0].id.to_string()),
        "{p}"
    );
    // And the chain itself is consistent: no chain problem at all.
    assert!(
        r.problems.iter().all(|p| p.kind != Kind::Chain),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_truncated_bundle_or_a_changed_manifest_does_not_verify() {
    let f = fixture();
    let b = f.render();
    let text = std::str::from_utf8(&b).unwrap();
    let lines = text.lines().count();
    let r = verify(&edit_line(&b, lines, |_| None));
    let p = r.first_problem().expect("invalid");
    assert_eq!(p.kind, Kind::Manifest, "{p}");
    assert!(p.reason.contains("no manifest"), "{p}");
    // A manifest re-signed by another key.
    let mut other = f.lines();
    let Line::Header(h) = &mut other[0] else {
        panic!()
    };
    h.cluster_id = "forged".into();
    let mut w = BundleWriter::new();
    let mut forged = Vec::new();
    for l in &other {
        if let Line::Node(n) = l {
            w.expect_node(&n.node_id);
        }
        forged.extend(w.line(l));
    }
    forged.extend(w.finish(f.header.bundle_id, "node-1", |m| sig64(&key(9), m)));
    let r = verify(&forged);
    let p = r.first_problem().expect("invalid");
    assert_eq!(p.kind, Kind::Manifest, "{p}");
    assert!(p.reason.contains("signature"), "{p}");
}

#[test]
fn a_vote_key_not_bound_to_the_certificate_is_refused() {
    let mut f = fixture();
    f.nodes[2].vote_key = pubkey(7);
    let r = verify(&f.render());
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref()),
        (Kind::Node, Some("node-3")),
        "{p}"
    );
    assert!(p.reason.contains("vote key binding"), "{p}");
    // A certificate of another CA.
    let mut f = fixture();
    let other = tempfile::tempdir().unwrap();
    crate::ca::init_ca(other.path()).unwrap();
    let paths = crate::ca::issue_node_cert(other.path(), "node-2", 30).unwrap();
    f.nodes[1].cert_pem = std::fs::read_to_string(paths.cert).unwrap();
    let r = verify(&f.render());
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.node.as_deref()),
        (Kind::Node, Some("node-2")),
        "{p}"
    );
    assert!(p.reason.contains("CA"), "{p}");
}

#[test]
fn the_auditors_own_ca_must_be_the_bundles() {
    let f = fixture();
    let b = f.render();
    let same = VerifyOptions {
        expected_ca_pem: Some(f.ca.clone()),
        ..VerifyOptions::default()
    };
    let r = verify_bundle(|| Ok(Cursor::new(b.clone())), &same).unwrap();
    assert!(r.is_valid(), "{:?}", r.problems);
    assert_eq!(r.ca_sha256.as_ref().map(String::len), Some(64));
    let other = tempfile::tempdir().unwrap();
    let ca = crate::ca::init_ca(other.path()).unwrap();
    let foreign = VerifyOptions {
        expected_ca_pem: Some(std::fs::read_to_string(ca.cert_path).unwrap()),
        ..VerifyOptions::default()
    };
    let r = verify_bundle(|| Ok(Cursor::new(b.clone())), &foreign).unwrap();
    let p = r.first_problem().expect("invalid");
    assert!(p.reason.contains("not the CA given"), "{p}");
}

#[test]
fn a_checkpoint_below_the_threshold_and_a_wrong_policy_text_are_reported() {
    let mut f = fixture();
    f.header.threshold = 3;
    let r = verify(&f.render());
    // Checkpoint 2 has two co-signatures, three are needed now.
    let p = r.first_problem().expect("invalid");
    assert_eq!(
        (p.kind, p.checkpoint),
        (Kind::Checkpoint, Some(f.checkpoints[1].id)),
        "{p}"
    );
    let mut f = fixture();
    f.policies[0].policy.text = Some("version = 1\nname = \"other\"\n".into());
    let r = verify(&f.render());
    let p = r.first_problem().expect("invalid");
    assert_eq!(p.kind, Kind::Policy, "{p}");
}

#[test]
fn uncovered_records_are_noted_not_failed() {
    let mut f = fixture();
    f.checkpoints.pop();
    let r = verify(&f.render());
    assert!(r.is_valid(), "{:?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("records 4..6")),
        "{:?}",
        r.notes
    );
}
