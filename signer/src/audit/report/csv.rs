//! CSV output: one file per section in a directory (`summary.csv`,
//! `transactions.csv`, ...), each with a header row and fixed columns.
//!
//! RFC 4180: CRLF line ends; a field holding a comma, a double quote, CR or LF is
//! enclosed in double quotes, its double quotes doubled. Bundle strings are
//! attacker-influenced (token and approver names, policy names): a field that a
//! spreadsheet would take for a formula (first character `=`, `+`, `-`, `@`, tab or
//! CR) is prefixed with `'`. Every row's first column, `verification`, is
//! `verified` or `UNVERIFIED`, so a file read on its own still says it.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::model::{AuditReport, Transaction};
use super::{opt_ts, ts};

/// One CSV file: name and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFile {
    /// File name (`transactions.csv`).
    pub name: &'static str,
    /// Its content.
    pub content: String,
}

/// A field as RFC 4180 wants it, neutralized against spreadsheet formulas.
pub fn field(s: &str) -> Cow<'_, str> {
    let formula = matches!(
        s.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    let quote = s.contains([',', '"', '\r', '\n']);
    if !formula && !quote {
        return Cow::Borrowed(s);
    }
    let body = if formula {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    };
    if quote || body.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", body.replace('"', "\"\"")))
    } else {
        body
    }
}

struct Table {
    out: String,
    verification: &'static str,
}

impl Table {
    fn new(verification: &'static str, columns: &[&str]) -> Self {
        let mut t = Table {
            out: String::new(),
            verification,
        };
        let mut header = vec!["verification"];
        header.extend_from_slice(columns);
        t.raw(&header);
        t
    }

    fn raw(&mut self, fields: &[&str]) {
        let line: Vec<Cow<'_, str>> = fields.iter().map(|f| field(f)).collect();
        self.out.push_str(&line.join(","));
        self.out.push_str("\r\n");
    }

    fn row(&mut self, fields: &[&str]) {
        let mut all = vec![self.verification];
        all.extend_from_slice(fields);
        self.raw(&all);
    }

    fn file(self, name: &'static str) -> CsvFile {
        CsvFile {
            name,
            content: self.out,
        }
    }
}

fn opt_u64(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn votes_text(t: &Transaction) -> String {
    t.votes
        .values()
        .map(|v| {
            if v.reasons.is_empty() {
                format!("{}={}", v.node, v.decision)
            } else {
                format!("{}={} ({})", v.node, v.decision, v.reasons.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn timeline_text(t: &Transaction) -> String {
    t.timeline()
        .iter()
        .map(|s| {
            format!(
                "{} {} [{}]",
                s.name,
                ts(s.ts),
                s.nodes.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every section of `r` as a CSV file.
pub fn render(r: &AuditReport) -> Vec<CsvFile> {
    let v = if r.verification.is_valid() {
        "verified"
    } else {
        "UNVERIFIED"
    };
    vec![
        summary(r, v),
        nodes(r, v),
        transactions(r, v),
        votes(r, v),
        approvals(r, v),
        tx_events(r, v),
        ceremonies(r, v),
        tokens(r, v),
        approvers(r, v),
        policies(r, v),
        violations(r, v),
        custody(r, v),
        outflow(r, v),
    ]
}

fn summary(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(v, &["item", "value"]);
    let h = &r.header;
    let mut items: Vec<(String, String)> = vec![
        ("bundle_id".into(), h.bundle_id.to_string()),
        ("cluster".into(), h.cluster_id.clone()),
        ("exporter".into(), h.exporter.clone()),
        ("exported_at".into(), ts(h.created_at)),
        ("range_from".into(), ts(h.from)),
        ("range_to".into(), ts(h.to)),
        ("threshold".into(), h.threshold.to_string()),
        ("nodes".into(), h.nodes.join(" ")),
    ];
    match &r.verification {
        super::Verification::Valid { checkpoints, notes } => {
            items.push(("verification".into(), "VALID".into()));
            items.push(("checkpoints_verified".into(), checkpoints.to_string()));
            for n in notes {
                items.push(("verification_note".into(), n.clone()));
            }
        }
        super::Verification::Unverified {
            first_problem,
            problems,
        } => {
            items.push(("verification".into(), "INVALID".into()));
            items.push(("first_problem".into(), first_problem.clone()));
            items.push(("problems".into(), problems.to_string()));
        }
    }
    if let Some((first, last)) = r.span() {
        items.push(("first_record".into(), ts(first)));
        items.push(("last_record".into(), ts(last)));
    }
    items.push(("records".into(), r.records.to_string()));
    items.push(("checkpoint_lines".into(), r.checkpoint_lines.to_string()));
    if r.unreadable_lines > 0 {
        items.push(("unreadable_lines".into(), r.unreadable_lines.to_string()));
    }
    items.push(("transactions".into(), r.transactions.len().to_string()));
    for state in [
        "signed",
        "broadcast",
        "confirmed",
        "rejected",
        "expired",
        "failed",
    ] {
        items.push((
            format!("transactions_{state}"),
            r.count_state(state).to_string(),
        ));
    }
    items.push(("ceremonies".into(), r.ceremonies.len().to_string()));
    items.push(("token_changes".into(), r.tokens.len().to_string()));
    items.push((
        "approver_endorsements".into(),
        r.approvers.len().to_string(),
    ));
    items.push(("policy_versions".into(), r.policies.len().to_string()));
    items.push((
        "votes_under_unrecorded_policy".into(),
        r.votes_under_unrecorded_policy().to_string(),
    ));
    items.push(("violations".into(), r.violations.len().to_string()));
    items.push(("custody_events".into(), r.custody.len().to_string()));
    for (action, n) in &r.actions {
        items.push((format!("records {action}"), n.to_string()));
    }
    for (k, val) in &items {
        t.row(&[k, val]);
    }
    t.file("summary.csv")
}

fn nodes(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "node",
            "from_seq",
            "to_seq",
            "records",
            "first_record",
            "last_record",
        ],
    );
    for n in &r.nodes {
        t.row(&[
            &n.node_id,
            &n.from_seq.to_string(),
            &n.to_seq.to_string(),
            &n.records.to_string(),
            &opt_ts(n.first),
            &opt_ts(n.last),
        ]);
    }
    t.file("nodes.csv")
}

fn transactions(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "transaction",
            "key_id",
            "initiator",
            "initiator_name",
            "leader",
            "state",
            "txid",
            "recipient",
            "amount_sats",
            "fee_sats",
            "outflow_sats",
            "inputs",
            "votes",
            "approvers",
            "signers",
            "first_record",
            "timeline",
        ],
    );
    for tx in &r.transactions {
        let initiator = tx.initiator.clone().unwrap_or_default();
        let name = r.token_names.get(&initiator).cloned().unwrap_or_default();
        let approvers: Vec<&str> = tx.approvals.keys().map(String::as_str).collect();
        let signers: Vec<&str> = tx.signers.iter().map(String::as_str).collect();
        let mut state = tx.state().to_owned();
        for (other, nodes) in tx.other_outcomes() {
            let _ = write!(
                state,
                " ({other} on {})",
                nodes.into_iter().collect::<Vec<_>>().join(" ")
            );
        }
        t.row(&[
            &tx.id,
            tx.key_id.as_deref().unwrap_or_default(),
            &initiator,
            &name,
            tx.leader.as_deref().unwrap_or_default(),
            &state,
            tx.txid.as_deref().unwrap_or_default(),
            tx.recipient.as_deref().unwrap_or_default(),
            &opt_u64(tx.amount_sats),
            &opt_u64(tx.fee_sats),
            &opt_u64(tx.outflow()),
            &opt_u64(tx.inputs),
            &votes_text(tx),
            &approvers.join(" "),
            &signers.join(" "),
            &opt_ts(tx.first_ts()),
            &timeline_text(tx),
        ]);
    }
    t.file("transactions.csv")
}

fn votes(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "transaction",
            "node",
            "time",
            "decision",
            "reasons",
            "policy_hash",
            "policy_name",
            "policy_recorded",
        ],
    );
    for tx in &r.transactions {
        for vote in tx.votes.values() {
            let hash = vote.policy_hash.clone().unwrap_or_default();
            t.row(&[
                &tx.id,
                &vote.node,
                &ts(vote.ts),
                &vote.decision,
                &vote.reasons.join(" "),
                &hash,
                r.policy_name(&hash).unwrap_or_default(),
                r.policy_status(vote.policy_hash.as_deref()),
            ]);
        }
    }
    t.file("votes.csv")
}

fn approvals(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "transaction",
            "approver",
            "role",
            "via_node",
            "time",
            "recorded_by",
        ],
    );
    for tx in &r.transactions {
        for a in tx.approvals.values() {
            t.row(&[
                &tx.id,
                &a.approver,
                &a.role,
                &a.via_node,
                &ts(a.ts),
                &a.recorded_by.iter().cloned().collect::<Vec<_>>().join(" "),
            ]);
        }
    }
    t.file("approvals.csv")
}

fn tx_events(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(v, &["transaction", "time", "node", "event", "detail"]);
    for tx in &r.transactions {
        for e in &tx.events {
            t.row(&[&tx.id, &ts(e.ts), &e.node, &e.action, &e.detail]);
        }
    }
    t.file("tx_events.csv")
}

fn ceremonies(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "ceremony",
            "kind",
            "protocol",
            "threshold",
            "participants",
            "requested_by",
            "coordinator",
            "started_at",
            "ended_at",
            "outcome",
            "completed_on",
            "failed_on",
            "public",
        ],
    );
    for c in &r.ceremonies {
        let failed: Vec<String> = c
            .failed
            .iter()
            .map(|(n, (_, why))| format!("{n}: {why}"))
            .collect();
        t.row(&[
            &c.id,
            &c.kind,
            c.protocol.as_deref().unwrap_or_default(),
            &opt_u64(c.threshold),
            &c.participants.join(" "),
            &c.requested_by
                .as_deref()
                .map(|a| r.actor(a))
                .unwrap_or_default(),
            c.coordinator.as_deref().unwrap_or_default(),
            &opt_ts(c.started),
            &opt_ts(c.ended()),
            &c.outcome(),
            &c.completed.keys().cloned().collect::<Vec<_>>().join(" "),
            &failed.join("; "),
            c.public.as_deref().unwrap_or_default(),
        ]);
    }
    t.file("ceremonies.csv")
}

fn tokens(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &["time", "node", "action", "token", "name", "role", "by"],
    );
    for c in &r.tokens {
        t.row(&[
            &ts(c.ts),
            &c.node,
            &c.action,
            &c.token,
            c.name.as_deref().unwrap_or_default(),
            c.role.as_deref().unwrap_or_default(),
            &r.actor(&c.by),
        ]);
    }
    t.file("tokens.csv")
}

fn approvers(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "time",
            "node",
            "approver",
            "role",
            "public_key",
            "endorsed_by",
        ],
    );
    for a in &r.approvers {
        t.row(&[
            &ts(a.ts),
            &a.node,
            &a.approver,
            a.role.as_deref().unwrap_or_default(),
            a.public_key.as_deref().unwrap_or_default(),
            &r.actor(&a.by),
        ]);
    }
    t.file("approvers.csv")
}

fn policies(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "time",
            "node",
            "seq",
            "policy_hash",
            "previous_hash",
            "text_sha256",
            "name",
            "error",
            "limits",
        ],
    );
    for p in &r.policies {
        t.row(&[
            &ts(p.ts),
            &p.node,
            &p.seq.to_string(),
            p.hash.as_deref().unwrap_or_default(),
            p.previous_hash.as_deref().unwrap_or_default(),
            &p.text_sha256,
            p.name.as_deref().unwrap_or_default(),
            p.error.as_deref().unwrap_or_default(),
            &super::limits_text(&p.scopes),
        ]);
    }
    t.file("policies.csv")
}

fn violations(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "time",
            "detected_by",
            "culprit",
            "type",
            "session",
            "detail",
        ],
    );
    for x in &r.violations {
        t.row(&[
            &ts(x.ts),
            &x.detected_by,
            &x.culprit,
            &x.kind,
            x.session.as_deref().unwrap_or_default(),
            &x.detail,
        ]);
    }
    t.file("violations.csv")
}

fn custody(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(v, &["time", "node", "action", "by", "subject", "detail"]);
    for e in &r.custody {
        t.row(&[
            &ts(e.ts),
            &e.node,
            &e.action,
            &r.actor(&e.actor),
            e.subject.as_deref().unwrap_or_default(),
            &e.detail,
        ]);
    }
    t.file("custody.csv")
}

fn outflow(r: &AuditReport, v: &'static str) -> CsvFile {
    let mut t = Table::new(
        v,
        &[
            "key_id",
            "day",
            "outflow_sats",
            "approved_transactions",
            "without_amount",
            "velocity_limits",
        ],
    );
    for k in &r.outflow {
        for (i, day) in k.days.iter().enumerate() {
            let o = &k.outflow[i];
            let limits: Vec<String> = k
                .limits
                .iter()
                .filter_map(|l| {
                    l.max_sats
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|m| format!("{}s<={m}", l.window_seconds))
                })
                .collect();
            if o.transactions == 0 && limits.is_empty() {
                continue;
            }
            t.row(&[
                &k.key_id,
                &day.to_string(),
                &o.sats.to_string(),
                &o.transactions.to_string(),
                &o.unknown.to_string(),
                &limits.join(" "),
            ]);
        }
    }
    t.file("outflow.csv")
}

/// Why [`parse`] refused a CSV text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvParseError {
    /// A quoted field is not closed.
    #[error("record {record}: a quoted field is not closed")]
    Unclosed {
        /// Record (from 1).
        record: usize,
    },
    /// Something follows a closing quote other than a comma or a line end.
    #[error("record {record}: text after a closing quote")]
    AfterQuote {
        /// Record (from 1).
        record: usize,
    },
}

/// Reads back a CSV text (RFC 4180: CRLF or LF line ends, quoted fields with
/// doubled quotes): its records, header included. The `'` that [`field`] puts
/// before formula-like text is kept.
pub fn parse(text: &str) -> Result<Vec<Vec<String>>, CsvParseError> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut after_quote = false;
    while let Some(ch) = chars.next() {
        if quoted {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => {
                    quoted = false;
                    after_quote = true;
                }
                c => cur.push(c),
            }
            continue;
        }
        match ch {
            '"' if cur.is_empty() && !after_quote => quoted = true,
            ',' => {
                record.push(std::mem::take(&mut cur));
                after_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut cur));
                records.push(std::mem::take(&mut record));
                after_quote = false;
            }
            _ if after_quote => {
                return Err(CsvParseError::AfterQuote {
                    record: records.len() + 1,
                })
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(CsvParseError::Unclosed {
            record: records.len() + 1,
        });
    }
    if !cur.is_empty() || !record.is_empty() || after_quote {
        record.push(cur);
        records.push(record);
    }
    Ok(records)
}
