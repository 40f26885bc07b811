//! What a report shows, collected from the lines of a bundle (one pass, any order
//! of nodes): transactions, key ceremonies, token and approver changes, policy
//! versions with their velocity limits, Byzantine violations, custody events and the
//! outflow per day and key.
//!
//! Only the records' own fields are used: a transaction's votes are the `tx.vote`
//! records each node wrote of its own vote, its approvers the `tx.approve` /
//! `tx.approval_received` records, its signers the `signers` of the `tx.sign_input`
//! records, its amounts the details of the leader's `tx.submit` record.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::Value;

use crate::audit::bundle::{Header, Line, NodeEntry, PolicyVersion, POLICY_ACTION};
use crate::audit::checkpoint::CHECKPOINT_ACTION;
use crate::audit::AuditRecord;

/// Whether the bundle verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every check of `verify-export` passed.
    Valid {
        /// Distinct checkpoints that verified.
        checkpoints: u64,
        /// Remarks of the verifier (e.g. records after the last checkpoint).
        notes: Vec<String>,
    },
    /// The bundle did not verify; the report was written anyway (`--unverified`).
    Unverified {
        /// The first broken item, as `verify-export` names it.
        first_problem: String,
        /// How many problems the verifier found.
        problems: usize,
    },
}

impl Verification {
    /// Whether the bundle verified.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verification::Valid { .. })
    }
}

/// One node of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub node_id: String,
    /// Declared range of its records in the bundle.
    pub from_seq: i64,
    /// Declared range of its records in the bundle.
    pub to_seq: i64,
    /// Records of this node present.
    pub records: u64,
    /// Time of its first record present.
    pub first: Option<DateTime<Utc>>,
    /// Time of its last record present.
    pub last: Option<DateTime<Utc>>,
}

/// One node's vote on a transaction (its own `tx.vote` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The voting node.
    pub node: String,
    /// When it voted.
    pub ts: DateTime<Utc>,
    /// `approve` or `reject`.
    pub decision: String,
    /// The policy's reasons (violation codes).
    pub reasons: Vec<String>,
    /// The policy hash it voted under (hex).
    pub policy_hash: Option<String>,
}

/// A human approval of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Approver name.
    pub approver: String,
    /// Role the approver holds.
    pub role: String,
    /// Node the approval was submitted to.
    pub via_node: String,
    /// First time a node recorded it.
    pub ts: DateTime<Utc>,
    /// The nodes that recorded it.
    pub recorded_by: BTreeSet<String>,
}

/// One record about a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub ts: DateTime<Utc>,
    /// The node whose log holds it.
    pub node: String,
    /// The record's action, e.g. `tx.approved`.
    pub action: String,
    /// A short account of its details.
    pub detail: String,
}

/// One step of a transaction's timeline: the first time any node recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The state or step (`submitted`, `approved`, `signed`...).
    pub name: &'static str,
    /// First time.
    pub ts: DateTime<Utc>,
    /// The nodes that recorded it.
    pub nodes: BTreeSet<String>,
}

/// A transaction as its records tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id.
    pub id: String,
    /// Key it spends from.
    pub key_id: Option<String>,
    /// Token id that submitted it (the `tx.submit` actor).
    pub initiator: Option<String>,
    /// The node that took the submission (and led the vote).
    pub leader: Option<String>,
    /// Bitcoin transaction id.
    pub txid: Option<String>,
    /// Recipient address of a recipient + amount request.
    pub recipient: Option<String>,
    /// Amount of a recipient + amount request.
    pub amount_sats: Option<u64>,
    /// Fee.
    pub fee_sats: Option<u64>,
    /// What leaves the wallet (outputs not kept, plus the fee): what the policy's
    /// limits count.
    pub outflow_sats: Option<u64>,
    /// Inputs.
    pub inputs: Option<u64>,
    /// Each node's own vote, by node.
    pub votes: BTreeMap<String, Vote>,
    /// Human approvals, by approver.
    pub approvals: BTreeMap<String, Approval>,
    /// Nodes the leader chose to sign (union over inputs and attempts).
    pub signers: BTreeSet<String>,
    /// Refused sign requests: (node, code).
    pub refusals: Vec<(String, String)>,
    /// Every record about it, in time order.
    pub events: Vec<Event>,
}

/// Order of the states of a transaction (a later state wins).
fn state_rank(state: &str) -> u8 {
    match state {
        "submitted" => 1,
        "awaiting_approval" => 2,
        "approved" => 3,
        "signing" => 4,
        "rejected" | "expired" | "failed" => 5,
        "signed" => 6,
        "broadcast" => 7,
        "confirmed" => 8,
        _ => 0,
    }
}

/// The timeline step of a transaction record's action.
fn step_of(action: &str) -> Option<&'static str> {
    Some(match action {
        "tx.submit" => "submitted",
        "tx.awaiting_approval" => "awaiting_approval",
        "tx.vote" => "voted",
        "tx.approve" | "tx.approval_received" => "approval",
        "tx.approved" => "approved",
        "tx.rejected" => "rejected",
        "tx.expired" => "expired",
        "tx.failed" => "failed",
        "tx.sign_input" => "signing",
        "tx.sign_refused" => "sign_refused",
        "tx.signed" => "signed",
        "tx.broadcast" => "broadcast",
        "tx.confirmed" => "confirmed",
        _ => return None,
    })
}

impl Transaction {
    /// The most advanced state any node recorded (`submitted` at least).
    pub fn state(&self) -> &'static str {
        let mut best = ("submitted", 1);
        for e in &self.events {
            if let Some(step) = step_of(&e.action) {
                let r = state_rank(step);
                if r > best.1 {
                    best = (step, r);
                }
            }
        }
        best.0
    }

    /// Terminal states some nodes recorded that differ from [`Self::state`] (nodes
    /// disagreeing, e.g. one expired what the others signed).
    pub fn other_outcomes(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let state = self.state();
        let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for e in &self.events {
            if let Some(step @ ("rejected" | "expired" | "failed")) = step_of(&e.action) {
                if step != state {
                    out.entry(step).or_default().insert(e.node.clone());
                }
            }
        }
        out
    }

    /// The first time of each step, in time order.
    pub fn timeline(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::new();
        for e in &self.events {
            let Some(name) = step_of(&e.action) else {
                continue;
            };
            match steps.iter_mut().find(|s| s.name == name) {
                Some(s) => {
                    s.ts = s.ts.min(e.ts);
                    s.nodes.insert(e.node.clone());
                }
                None => steps.push(Step {
                    name,
                    ts: e.ts,
                    nodes: BTreeSet::from([e.node.clone()]),
                }),
            }
        }
        steps.sort_by_key(|s| (s.ts, state_rank(s.name)));
        steps
    }

    /// First record about it.
    pub fn first_ts(&self) -> Option<DateTime<Utc>> {
        self.events.first().map(|e| e.ts)
    }

    /// First time a quorum approved it here (from when the policy counts its
    /// outflow), else when it was first signed.
    pub fn counted_at(&self) -> Option<DateTime<Utc>> {
        let first = |action: &str| {
            self.events
                .iter()
                .filter(|e| e.action == action)
                .map(|e| e.ts)
                .min()
        };
        first("tx.approved").or_else(|| first("tx.signed"))
    }

    /// The outflow the policy counts, when the records carry it: `outflow_sats`,
    /// else amount plus fee.
    pub fn outflow(&self) -> Option<u64> {
        self.outflow_sats.or_else(|| {
            self.amount_sats
                .zip(self.fee_sats)
                .and_then(|(a, f)| a.checked_add(f))
        })
    }

    /// Whether a quorum approved it (so its outflow counts against the velocity
    /// limits).
    pub fn counts_against_limits(&self) -> bool {
        matches!(
            self.state(),
            "approved" | "signing" | "signed" | "broadcast" | "confirmed"
        ) || self.events.iter().any(|e| e.action == "tx.approved")
    }
}

/// A key ceremony (DKG or aux info).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ceremony {
    /// Ceremony id (for a DKG, also the key id).
    pub id: String,
    /// `dkg` or `aux_info`.
    pub kind: String,
    /// `frost`, `cggmp24`, `aux_info`.
    pub protocol: Option<String>,
    /// Threshold.
    pub threshold: Option<u64>,
    /// Participants.
    pub participants: Vec<String>,
    /// The token that asked for it.
    pub requested_by: Option<String>,
    /// The node that coordinated it.
    pub coordinator: Option<String>,
    /// When it was announced.
    pub started: Option<DateTime<Utc>>,
    /// Nodes that completed it, with when.
    pub completed: BTreeMap<String, DateTime<Utc>>,
    /// Nodes on which it failed: when and why.
    pub failed: BTreeMap<String, (DateTime<Utc>, String)>,
    /// The key's public key (DKG) or the public digest (aux info).
    pub public: Option<String>,
    /// Times an aux-info request reused this ceremony instead of running one.
    pub reused: Vec<(DateTime<Utc>, String)>,
}

impl Ceremony {
    /// `completed`, `failed`, or `not finished in the bundle`.
    pub fn outcome(&self) -> String {
        match (self.completed.len(), self.failed.len()) {
            (0, 0) if self.reused.is_empty() => "not finished in the bundle".to_owned(),
            (0, 0) => "reused".to_owned(),
            (c, 0) => format!("completed on {c} node(s)"),
            (0, f) => format!("failed on {f} node(s)"),
            (c, f) => format!("completed on {c} node(s), failed on {f}"),
        }
    }

    /// When it was last completed or failed.
    pub fn ended(&self) -> Option<DateTime<Utc>> {
        self.completed
            .values()
            .copied()
            .chain(self.failed.values().map(|(t, _)| *t))
            .max()
    }
}

/// A token created or revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChange {
    /// When.
    pub ts: DateTime<Utc>,
    /// The node whose database holds the token.
    pub node: String,
    /// `create` or `revoke`.
    pub action: String,
    /// Token id.
    pub token: String,
    /// Its name (created: from the record; revoked: from its creation, if in the
    /// bundle).
    pub name: Option<String>,
    /// Its role.
    pub role: Option<String>,
    /// Who did it (token id, `cli`, `cluster-up`).
    pub by: String,
}

/// An approver endorsed by a node's admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverChange {
    /// When.
    pub ts: DateTime<Utc>,
    /// The endorsing node.
    pub node: String,
    /// Approver name.
    pub approver: String,
    /// Role.
    pub role: Option<String>,
    /// Ed25519 public key (hex).
    pub public_key: Option<String>,
    /// The admin token that endorsed it.
    pub by: String,
}

/// A velocity limit of a policy scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Velocity {
    /// Window length.
    pub window_seconds: u64,
    /// Most that may leave in any such window.
    pub max_sats: u64,
}

/// The limits of one policy scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeLimits {
    /// Key id.
    pub key_id: String,
    /// Network.
    pub network: String,
    /// Per-transaction limit.
    pub max_per_tx_sats: Option<u64>,
    /// Velocity limits, by window.
    pub velocity: Vec<Velocity>,
    /// Human approvals required (tiers): `(above_sats, required)`.
    pub approvals: Vec<(Option<u64>, u64)>,
}

/// A policy version a node recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// The node.
    pub node: String,
    /// Its `policy.version` record.
    pub seq: i64,
    /// When it was recorded.
    pub ts: DateTime<Utc>,
    /// The policy hash in votes.
    pub hash: Option<String>,
    /// SHA-256 of the file.
    pub text_sha256: String,
    /// The policy's `name`.
    pub name: Option<String>,
    /// Why the file did not load.
    pub error: Option<String>,
    /// The node's previous policy hash in the bundle (a change), if any.
    pub previous_hash: Option<String>,
    /// Limits per scope (empty when the text is absent or does not load).
    pub scopes: Vec<ScopeLimits>,
}

/// A Byzantine violation recorded by a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViolationRow {
    /// When.
    pub ts: DateTime<Utc>,
    /// The node that recorded it.
    pub detected_by: String,
    /// The node at fault.
    pub culprit: String,
    /// Violation type.
    pub kind: String,
    /// Session or ceremony concerned.
    pub session: Option<String>,
    /// Summary or other details.
    pub detail: String,
}

/// A custody event (KEK rotation, key frozen, vote key unpinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyEvent {
    /// When.
    pub ts: DateTime<Utc>,
    /// The node.
    pub node: String,
    /// The action.
    pub action: String,
    /// Who.
    pub actor: String,
    /// Subject.
    pub subject: Option<String>,
    /// Details.
    pub detail: String,
}

/// One day of a key's outflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayOutflow {
    /// Sum of the approved transactions' outflow that day.
    pub sats: u64,
    /// Approved transactions counted.
    pub transactions: u64,
    /// Approved transactions whose records carry no amount.
    pub unknown: u64,
}

/// A velocity limit over the days of a chart: the limit in force at the end of
/// each day (the strictest of the nodes' policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSeries {
    /// Window length.
    pub window_seconds: u64,
    /// Per day of [`KeyOutflow::days`]: the limit, if a policy set one.
    pub max_sats: Vec<Option<u64>>,
}

/// Outflow per day of one key against its velocity limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOutflow {
    /// Key id.
    pub key_id: String,
    /// Every day (UTC) of the bundle's records, in order.
    pub days: Vec<NaiveDate>,
    /// Per day.
    pub outflow: Vec<DayOutflow>,
    /// Velocity limits.
    pub limits: Vec<LimitSeries>,
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// The bundle's header.
    pub header: Header,
    /// Verification result.
    pub verification: Verification,
    /// Nodes, in id order.
    pub nodes: Vec<NodeInfo>,
    /// Checkpoint lines.
    pub checkpoint_lines: u64,
    /// Records, all nodes.
    pub records: u64,
    /// Records per action.
    pub actions: BTreeMap<String, u64>,
    /// Lines that could not be read (only in an unverified report).
    pub unreadable_lines: u64,
    /// Transactions, oldest first.
    pub transactions: Vec<Transaction>,
    /// Key ceremonies, oldest first.
    pub ceremonies: Vec<Ceremony>,
    /// Token changes, in time order.
    pub tokens: Vec<TokenChange>,
    /// Approver endorsements, in time order.
    pub approvers: Vec<ApproverChange>,
    /// Policy versions, in time order.
    pub policies: Vec<PolicyRow>,
    /// Byzantine violations, in time order.
    pub violations: Vec<ViolationRow>,
    /// Custody events, in time order.
    pub custody: Vec<CustodyEvent>,
    /// Outflow per day and key (keys with transactions or velocity limits).
    pub outflow: Vec<KeyOutflow>,
    /// Token names by id (from `token.create` records), to name actors.
    pub token_names: BTreeMap<String, String>,
}

impl AuditReport {
    /// `name (id)` for a token id whose creation is in the bundle; the actor as
    /// recorded otherwise (`cli`, `node`, a node id, or a token id).
    pub fn actor(&self, actor: &str) -> String {
        match self.token_names.get(actor) {
            Some(name) => format!("{name} ({actor})"),
            None => actor.to_owned(),
        }
    }

    /// The name of the policy with this hash, as some node recorded it.
    pub fn policy_name(&self, hash: &str) -> Option<&str> {
        self.policies
            .iter()
            .find(|p| p.hash.as_deref() == Some(hash))
            .and_then(|p| p.name.as_deref())
    }

    /// How the policy a vote names stands in the bundle: `recorded` (a policy
    /// version has this hash), `not_recorded` (no version with it in the bundle: its
    /// text cannot be checked), `none` (the voter had no policy loaded: all-zero
    /// hash, or no hash).
    pub fn policy_status(&self, hash: Option<&str>) -> &'static str {
        match hash {
            None => "none",
            Some(h) if h.bytes().all(|b| b == b'0') => "none",
            Some(h) if self.policies.iter().any(|p| p.hash.as_deref() == Some(h)) => "recorded",
            Some(_) => "not_recorded",
        }
    }

    /// Votes whose policy hash no policy version in the bundle has.
    pub fn votes_under_unrecorded_policy(&self) -> usize {
        self.transactions
            .iter()
            .flat_map(|t| t.votes.values())
            .filter(|v| self.policy_status(v.policy_hash.as_deref()) == "not_recorded")
            .count()
    }

    /// Transactions in `state`.
    pub fn count_state(&self, state: &str) -> usize {
        self.transactions
            .iter()
            .filter(|t| t.state() == state)
            .count()
    }

    /// First and last record time.
    pub fn span(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let first = self.nodes.iter().filter_map(|n| n.first).min()?;
        let last = self.nodes.iter().filter_map(|n| n.last).max()?;
        Some((first, last))
    }
}

/// Builds an [`AuditReport`] from a bundle's lines, fed in bundle order.
#[derive(Debug, Default)]
pub struct Collector {
    header: Option<Header>,
    nodes: BTreeMap<String, NodeInfo>,
    checkpoint_lines: u64,
    records: u64,
    actions: BTreeMap<String, u64>,
    unreadable: u64,
    txs: BTreeMap<String, Transaction>,
    ceremonies: BTreeMap<String, Ceremony>,
    tokens: Vec<TokenChange>,
    approvers: Vec<ApproverChange>,
    /// By (node, seq): policy lines and `policy.version` records are the same.
    policies: BTreeMap<(String, i64), (DateTime<Utc>, PolicyVersion)>,
    violations: Vec<ViolationRow>,
    custody: Vec<CustodyEvent>,
    token_names: BTreeMap<String, String>,
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn string_of(v: &Value, k: &str) -> Option<String> {
    str_of(v, k).map(str::to_owned)
}

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn strings_of(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `key=value` pairs of an object's scalar fields (sorted by key), for details
/// shown as text.
pub fn compact(details: &Value) -> String {
    match details {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Collector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// A line that did not parse (counted; only an unverified bundle has them).
    pub fn unreadable(&mut self) {
        self.unreadable += 1;
    }

    /// Takes one line of the bundle.
    pub fn push(&mut self, line: Line) {
        match line {
            Line::Header(h) => {
                if self.header.is_none() {
                    self.header = Some(h);
                }
            }
            Line::Node(n) => self.node(n),
            Line::Policy(p) => {
                self.policies
                    .entry((p.node_id, p.seq))
                    .or_insert((p.ts, p.policy));
            }
            Line::Checkpoint(_) => self.checkpoint_lines += 1,
            Line::Row(r) => self.record(&r.node, r.record),
            Line::Ca(_) | Line::Error(_) | Line::Manifest(_) => {}
        }
    }

    fn node(&mut self, n: NodeEntry) {
        let e = self
            .nodes
            .entry(n.node_id.clone())
            .or_insert_with(|| NodeInfo {
                node_id: n.node_id.clone(),
                from_seq: n.from_seq,
                to_seq: n.to_seq,
                records: 0,
                first: None,
                last: None,
            });
        e.from_seq = n.from_seq;
        e.to_seq = n.to_seq;
    }

    fn record(&mut self, node: &str, r: AuditRecord) {
        self.records += 1;
        *self.actions.entry(r.action.clone()).or_insert(0) += 1;
        let info = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeInfo {
                node_id: node.to_owned(),
                from_seq: 0,
                to_seq: 0,
                records: 0,
                first: None,
                last: None,
            });
        info.records += 1;
        info.first = Some(info.first.map_or(r.ts, |f| f.min(r.ts)));
        info.last = Some(info.last.map_or(r.ts, |l| l.max(r.ts)));
        let action = r.action.as_str();
        if action.starts_with("tx.") {
            self.tx_record(node, &r);
            return;
        }
        match action {
            "dkg.start" | "aux_info.start" | "dkg.completed" | "dkg.failed"
            | "aux_info.completed" => self.ceremony_record(node, &r),
            "token.create" | "token.revoke" => self.token_record(node, &r),
            "approver.endorse" => self.approvers.push(ApproverChange {
                ts: r.ts,
                node: node.to_owned(),
                approver: r.subject.clone().unwrap_or_default(),
                role: string_of(&r.details, "role"),
                public_key: string_of(&r.details, "public_key"),
                by: r.actor.clone(),
            }),
            POLICY_ACTION => {
                if let Ok(v) = serde_json::from_value::<PolicyVersion>(r.details.clone()) {
                    self.policies
                        .entry((node.to_owned(), r.seq))
                        .or_insert((r.ts, v));
                }
            }
            "vote.violation" | "violation.recorded" => {
                let d = &r.details;
                let kind = string_of(d, "violation_type")
                    .or_else(|| string_of(d, "type"))
                    .unwrap_or_default();
                let mut rest = d.clone();
                if let Value::Object(m) = &mut rest {
                    for k in ["violation_type", "type", "session"] {
                        m.remove(k);
                    }
                }
                self.violations.push(ViolationRow {
                    ts: r.ts,
                    detected_by: node.to_owned(),
                    culprit: r.subject.clone().unwrap_or_default(),
                    kind,
                    session: string_of(d, "session"),
                    detail: compact(&rest),
                });
            }
            "hsm.rotate_kek" | "hsm.destroy_kek" | "key.frozen" | "vote_key.unpin" => {
                self.custody.push(CustodyEvent {
                    ts: r.ts,
                    node: node.to_owned(),
                    action: r.action.clone(),
                    actor: r.actor.clone(),
                    subject: r.subject.clone(),
                    detail: compact(&r.details),
                });
            }
            // Checkpoints are what the verifier checked; counted, not listed.
            CHECKPOINT_ACTION => {}
            _ => {}
        }
    }

    fn tx_record(&mut self, node: &str, r: &AuditRecord) {
        let Some(id) = r.subject.clone() else {
            return;
        };
        let d = &r.details;
        let tx = self.txs.entry(id.clone()).or_insert_with(|| Transaction {
            id,
            ..Transaction::default()
        });
        let detail = match r.action.as_str() {
            "tx.submit" => {
                tx.initiator = Some(r.actor.clone());
                tx.leader = Some(node.to_owned());
                tx.key_id = string_of(d, "key_id").or(tx.key_id.take());
                tx.txid = string_of(d, "txid").or(tx.txid.take());
                tx.fee_sats = u64_of(d, "fee_sats");
                tx.inputs = u64_of(d, "inputs");
                tx.recipient = string_of(d, "recipient");
                tx.amount_sats = u64_of(d, "amount_sats");
                tx.outflow_sats = u64_of(d, "outflow_sats");
                format!("by {}", r.actor)
            }
            "tx.vote" => {
                let decision = string_of(d, "decision").unwrap_or_default();
                let reasons = strings_of(d, "reasons");
                if tx.txid.is_none() {
                    tx.txid = string_of(d, "txid");
                }
                let detail = if reasons.is_empty() {
                    decision.clone()
                } else {
                    format!("{decision} ({})", reasons.join(", "))
                };
                tx.votes.insert(
                    node.to_owned(),
                    Vote {
                        node: node.to_owned(),
                        ts: r.ts,
                        decision,
                        reasons,
                        policy_hash: string_of(d, "policy_hash"),
                    },
                );
                detail
            }
            "tx.approve" | "tx.approval_received" => {
                let approver = string_of(d, "approver").unwrap_or_default();
                let a = tx
                    .approvals
                    .entry(approver.clone())
                    .or_insert_with(|| Approval {
                        approver: approver.clone(),
                        role: string_of(d, "role").unwrap_or_default(),
                        via_node: string_of(d, "via_node").unwrap_or_default(),
                        ts: r.ts,
                        recorded_by: BTreeSet::new(),
                    });
                a.ts = a.ts.min(r.ts);
                a.recorded_by.insert(node.to_owned());
                format!("{approver} via {}", str_of(d, "via_node").unwrap_or("?"))
            }
            "tx.sign_input" => {
                let signers = strings_of(d, "signers");
                tx.signers.extend(signers.iter().cloned());
                format!(
                    "input {} signers {}",
                    u64_of(d, "input").map_or("?".to_owned(), |i| i.to_string()),
                    signers.join(", ")
                )
            }
            "tx.sign_refused" => {
                let code = string_of(d, "code").unwrap_or_default();
                tx.refusals.push((node.to_owned(), code.clone()));
                code
            }
            "tx.signed" | "tx.broadcast" | "tx.confirmed" => {
                if let Some(t) = string_of(d, "txid") {
                    tx.txid = Some(t);
                }
                compact(d)
            }
            _ => compact(d),
        };
        tx.events.push(Event {
            ts: r.ts,
            node: node.to_owned(),
            action: r.action.clone(),
            detail,
        });
    }

    fn ceremony_record(&mut self, node: &str, r: &AuditRecord) {
        let d = &r.details;
        // A reused aux-info request names the ceremony in its details.
        let reused = r.action == "aux_info.start" && d.get("reused") == Some(&Value::Bool(true));
        let id = if reused {
            string_of(d, "ceremony_id")
        } else {
            r.subject.clone()
        };
        let Some(id) = id else {
            return;
        };
        let kind = if r.action.starts_with("aux_info") {
            "aux_info"
        } else {
            "dkg"
        };
        let c = self
            .ceremonies
            .entry(id.clone())
            .or_insert_with(|| Ceremony {
                id,
                kind: kind.to_owned(),
                ..Ceremony::default()
            });
        match r.action.as_str() {
            _ if reused => c.reused.push((r.ts, r.actor.clone())),
            "dkg.start" | "aux_info.start" => {
                c.protocol = string_of(d, "protocol");
                c.threshold = u64_of(d, "threshold");
                c.participants = strings_of(d, "participants");
                c.requested_by = Some(r.actor.clone());
                c.coordinator = Some(node.to_owned());
                c.started = Some(c.started.map_or(r.ts, |s| s.min(r.ts)));
            }
            "dkg.completed" => {
                c.completed.insert(node.to_owned(), r.ts);
                if c.public.is_none() {
                    c.public = string_of(d, "public_key");
                }
            }
            "aux_info.completed" => {
                c.completed.insert(node.to_owned(), r.ts);
                if c.public.is_none() {
                    c.public = string_of(d, "public_digest");
                }
            }
            "dkg.failed" => {
                c.failed.insert(
                    node.to_owned(),
                    (r.ts, string_of(d, "reason").unwrap_or_default()),
                );
            }
            _ => {}
        }
    }

    fn token_record(&mut self, node: &str, r: &AuditRecord) {
        let token = r.subject.clone().unwrap_or_default();
        let name = string_of(&r.details, "name");
        if r.action == "token.create" {
            if let Some(n) = &name {
                self.token_names.insert(token.clone(), n.clone());
            }
        }
        self.tokens.push(TokenChange {
            ts: r.ts,
            node: node.to_owned(),
            action: r.action.trim_start_matches("token.").to_owned(),
            token,
            name,
            role: string_of(&r.details, "role"),
            by: r.actor.clone(),
        });
    }

    /// The report, once every line was pushed; `None` without a header.
    pub fn finish(self, verification: Verification) -> Option<AuditReport> {
        let header = self.header?;
        let mut transactions: Vec<Transaction> = self.txs.into_values().collect();
        for t in &mut transactions {
            t.events
                .sort_by(|a, b| (a.ts, &a.node, &a.action).cmp(&(b.ts, &b.node, &b.action)));
        }
        transactions.sort_by(|a, b| (a.first_ts(), &a.id).cmp(&(b.first_ts(), &b.id)));
        let mut ceremonies: Vec<Ceremony> = self.ceremonies.into_values().collect();
        ceremonies.sort_by(|a, b| {
            let at = |c: &Ceremony| c.started.or(c.ended()).or(c.reused.first().map(|r| r.0));
            (at(a), &a.id).cmp(&(at(b), &b.id))
        });
        let mut tokens = self.tokens;
        for t in &mut tokens {
            if t.name.is_none() {
                t.name = self.token_names.get(&t.token).cloned();
            }
        }
        tokens.sort_by(|a, b| (a.ts, &a.node).cmp(&(b.ts, &b.node)));
        let mut approvers = self.approvers;
        approvers.sort_by(|a, b| (a.ts, &a.node).cmp(&(b.ts, &b.node)));
        let policies = policy_rows(self.policies);
        let mut violations = self.violations;
        violations.sort_by(|a, b| (a.ts, &a.detected_by).cmp(&(b.ts, &b.detected_by)));
        let mut custody = self.custody;
        custody.sort_by(|a, b| (a.ts, &a.node).cmp(&(b.ts, &b.node)));
        let nodes: Vec<NodeInfo> = self.nodes.into_values().collect();
        let outflow = outflow(&nodes, &transactions, &policies);
        Some(AuditReport {
            header,
            verification,
            nodes,
            checkpoint_lines: self.checkpoint_lines,
            records: self.records,
            actions: self.actions,
            unreadable_lines: self.unreadable,
            transactions,
            ceremonies,
            tokens,
            approvers,
            policies,
            violations,
            custody,
            outflow,
            token_names: self.token_names,
        })
    }
}

fn policy_rows(
    versions: BTreeMap<(String, i64), (DateTime<Utc>, PolicyVersion)>,
) -> Vec<PolicyRow> {
    let mut rows: Vec<PolicyRow> = Vec::new();
    // BTreeMap order: per node, by seq: the previous row of a node is its previous
    // version.
    let mut last_hash: BTreeMap<String, Option<String>> = BTreeMap::new();
    for ((node, seq), (ts, v)) in versions {
        let (name, scopes) = v
            .text
            .as_deref()
            .filter(|_| v.error.is_none())
            .map(parse_limits)
            .unwrap_or_default();
        let previous = last_hash.insert(node.clone(), v.hash.clone()).flatten();
        rows.push(PolicyRow {
            node,
            seq,
            ts,
            previous_hash: previous.filter(|p| Some(p) != v.hash.as_ref()),
            hash: v.hash,
            text_sha256: v.text_sha256,
            name,
            error: v.error,
            scopes,
        });
    }
    rows.sort_by(|a, b| (a.ts, &a.node, a.seq).cmp(&(b.ts, &b.node, b.seq)));
    rows
}

/// The policy's name and, per scope, its limits. The text is checked by the
/// policy engine first (a text it refuses has no limits); the limits are then
/// read from the same TOML (`[[scope]]`, `[scope.limits] max_per_tx_sats`,
/// `[[scope.velocity]] window_seconds, max_sats`, `[[scope.approvals]]`), see
/// docs/POLICY.md.
pub fn parse_limits(text: &str) -> (Option<String>, Vec<ScopeLimits>) {
    let Ok(policy) = policy::Policy::from_toml_str(text, "policy") else {
        return (None, Vec::new());
    };
    let name = policy.name().map(str::to_owned);
    let Ok(doc) = text.parse::<toml::Table>() else {
        return (name, Vec::new());
    };
    let int = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_integer)
            .and_then(|i| u64::try_from(i).ok())
    };
    let mut scopes = Vec::new();
    for s in doc
        .get("scope")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(key_id) = s.get("key_id").and_then(toml::Value::as_str) else {
            continue;
        };
        let network = s
            .get("network")
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        let max_per_tx_sats = int(s.get("limits").and_then(|l| l.get("max_per_tx_sats")));
        let mut velocity: Vec<Velocity> = s
            .get("velocity")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some(Velocity {
                    window_seconds: int(v.get("window_seconds"))?,
                    max_sats: int(v.get("max_sats"))?,
                })
            })
            .collect();
        velocity.sort();
        let approvals = s
            .get("approvals")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    int(a.get("above_sats")),
                    int(a.get("required")).unwrap_or(0),
                )
            })
            .collect();
        scopes.push(ScopeLimits {
            key_id: key_id.to_owned(),
            network: network.to_owned(),
            max_per_tx_sats,
            velocity,
            approvals,
        });
    }
    (name, scopes)
}

/// Outflow per UTC day of every key with transactions or velocity limits, from the
/// first to the last day of the bundle's records, with the limits in force.
fn outflow(
    nodes: &[NodeInfo],
    transactions: &[Transaction],
    policies: &[PolicyRow],
) -> Vec<KeyOutflow> {
    let first = nodes.iter().filter_map(|n| n.first).min();
    let last = nodes.iter().filter_map(|n| n.last).max();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let mut days = Vec::new();
    let mut d = first.date_naive();
    while d <= last.date_naive() {
        days.push(d);
        match d.succ_opt() {
            Some(n) => d = n,
            None => break,
        }
    }
    let mut keys: BTreeSet<&str> = transactions
        .iter()
        .filter_map(|t| t.key_id.as_deref())
        .collect();
    for p in policies {
        for s in &p.scopes {
            if !s.velocity.is_empty() {
                keys.insert(&s.key_id);
            }
        }
    }
    let mut out = Vec::new();
    for key in keys {
        let mut per_day = vec![DayOutflow::default(); days.len()];
        for t in transactions
            .iter()
            .filter(|t| t.key_id.as_deref() == Some(key))
        {
            if !t.counts_against_limits() {
                continue;
            }
            let Some(at) = t.counted_at().or(t.first_ts()) else {
                continue;
            };
            let Some(i) = days.iter().position(|d| *d == at.date_naive()) else {
                continue;
            };
            let day = &mut per_day[i];
            day.transactions += 1;
            match t.outflow() {
                Some(s) => day.sats = day.sats.saturating_add(s),
                None => day.unknown += 1,
            }
        }
        out.push(KeyOutflow {
            key_id: key.to_owned(),
            limits: limit_series(key, &days, policies),
            days: days.clone(),
            outflow: per_day,
        });
    }
    out
}

/// Per velocity window of `key`: for each day, the strictest limit among the
/// nodes' policies in force at the end of that day (a node's first version in the
/// bundle counts from the start).
fn limit_series(key: &str, days: &[NaiveDate], policies: &[PolicyRow]) -> Vec<LimitSeries> {
    let mut windows: BTreeSet<u64> = BTreeSet::new();
    for p in policies {
        for s in p.scopes.iter().filter(|s| s.key_id == key) {
            windows.extend(s.velocity.iter().map(|v| v.window_seconds));
        }
    }
    let nodes: BTreeSet<&str> = policies.iter().map(|p| p.node.as_str()).collect();
    let mut out = Vec::new();
    for w in windows {
        let mut series = Vec::with_capacity(days.len());
        for day in days {
            let end = day
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc() + TimeDelta::days(1));
            let mut strictest: Option<u64> = None;
            for node in &nodes {
                let versions: Vec<&PolicyRow> =
                    policies.iter().filter(|p| p.node == *node).collect();
                let in_force = versions
                    .iter()
                    .rev()
                    .find(|p| end.is_some_and(|e| p.ts < e))
                    .or(versions.first());
                let limit = in_force.and_then(|p| {
                    p.scopes
                        .iter()
                        .filter(|s| s.key_id == key)
                        .flat_map(|s| s.velocity.iter())
                        .filter(|v| v.window_seconds == w)
                        .map(|v| v.max_sats)
                        .min()
                });
                if let Some(l) = limit {
                    strictest = Some(strictest.map_or(l, |s| s.min(l)));
                }
            }
            series.push(strictest);
        }
        out.push(LimitSeries {
            window_seconds: w,
            max_sats: series,
        });
    }
    out
}
