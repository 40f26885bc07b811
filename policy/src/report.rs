//! Serializable summaries for the operator CLI (`signer policy check|eval`).
//!
//! The CLI reads the files, calls [`crate::Policy::from_toml_str`] (and
//! [`crate::EvalRequest::from_json_slice`] + [`crate::Policy::evaluate`] for `eval`),
//! then prints one of these with `to_text()` or, under `--json`, `to_json()`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::decision::{Decision, DecisionKind};
use crate::error::PolicyError;
use crate::policy::{Policy, Scope};
use crate::types::Network;
use crate::view::TxView;

fn to_json_pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v)
        .expect("report types hold only strings, integers, booleans and lists")
}

/// A violation in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationEntry {
    /// Stable code, e.g. `amount_over_limit`.
    pub code: String,
    /// Human explanation.
    pub message: String,
}

/// A missing approval in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingEntry {
    /// The tier's threshold (`None`: applies to every amount).
    pub tier_above_sats: Option<u64>,
    /// The role that is short (`None`: any accepted role).
    pub role: Option<String>,
    /// How many more approvers are needed.
    pub count: u32,
    /// Human explanation.
    pub message: String,
}

/// An approval that did not count, in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredEntry {
    /// The tier that ignored it.
    pub tier_above_sats: Option<u64>,
    /// Approver id.
    pub approver: String,
    /// Role given.
    pub role: String,
    /// `initiator`, `not_an_approver` or `role_not_accepted`.
    pub reason: String,
    /// Human explanation.
    pub message: String,
}

/// Everything `signer policy eval` prints about one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionReport {
    /// `approve`, `reject` or `needs_approval`.
    pub decision: DecisionKind,
    /// The policy's file name.
    pub policy_source: String,
    /// The policy's `name`, if any.
    pub policy_name: Option<String>,
    /// Policy hash, 64 hex characters.
    pub policy_hash: String,
    /// Key id of the view.
    pub key_id: String,
    /// Network of the view.
    pub network: Network,
    /// Transaction id of the view.
    pub txid: String,
    /// View digest, 64 hex characters.
    pub view_digest: String,
    /// Every failed rule (empty unless rejected).
    pub violations: Vec<ViolationEntry>,
    /// What approvals are missing (empty unless `needs_approval`).
    pub missing_approvals: Vec<MissingEntry>,
    /// Approvals that did not count (empty unless `needs_approval`).
    pub ignored_approvals: Vec<IgnoredEntry>,
}

impl DecisionReport {
    /// Summarizes `decision`, which `policy` produced for `view`.
    pub fn new(policy: &Policy, view: &TxView, decision: &Decision) -> DecisionReport {
        let (violations, missing_approvals, ignored_approvals) = match decision {
            Decision::Approve(_) => (Vec::new(), Vec::new(), Vec::new()),
            Decision::Reject(v) => (
                v.iter()
                    .map(|v| ViolationEntry {
                        code: v.code().as_str().to_string(),
                        message: v.message().to_string(),
                    })
                    .collect(),
                Vec::new(),
                Vec::new(),
            ),
            Decision::NeedsApproval { missing, ignored } => (
                Vec::new(),
                missing
                    .iter()
                    .map(|m| MissingEntry {
                        tier_above_sats: m.tier_above_sats,
                        role: m.role.clone(),
                        count: m.count,
                        message: m.to_string(),
                    })
                    .collect(),
                ignored
                    .iter()
                    .map(|i| IgnoredEntry {
                        tier_above_sats: i.tier_above_sats,
                        approver: i.approver.clone(),
                        role: i.role.clone(),
                        reason: i.reason.as_str().to_string(),
                        message: i.to_string(),
                    })
                    .collect(),
            ),
        };
        DecisionReport {
            decision: decision.kind(),
            policy_source: policy.source().to_string(),
            policy_name: policy.name().map(str::to_string),
            policy_hash: policy.hash().to_hex(),
            key_id: view.key_id.clone(),
            network: view.network,
            txid: view.txid.to_string(),
            view_digest: view.digest().to_hex(),
            violations,
            missing_approvals,
            ignored_approvals,
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        to_json_pretty(self)
    }

    /// Human-readable text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "decision: {}", self.decision);
        let _ = writeln!(s, "policy: {} ({})", self.policy_source, self.policy_hash);
        let _ = writeln!(s, "key: {} on {}", self.key_id, self.network);
        let _ = writeln!(s, "txid: {}", self.txid);
        let _ = writeln!(s, "view digest: {}", self.view_digest);
        for v in &self.violations {
            let _ = writeln!(s, "violation {}: {}", v.code, v.message);
        }
        for m in &self.missing_approvals {
            let _ = writeln!(s, "missing: {}", m.message);
        }
        for i in &self.ignored_approvals {
            let _ = writeln!(s, "ignored approval: {}", i.message);
        }
        s
    }
}

/// One scope in a [`PolicySummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeSummary {
    /// Key id.
    pub key_id: String,
    /// Network.
    pub network: Network,
    /// One line per rule in force, e.g. `max_per_tx_sats = 100000`.
    pub rules: Vec<String>,
}

/// Everything `signer policy check` prints about a valid policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    /// Always true (an invalid policy yields a [`PolicyErrorReport`]).
    pub ok: bool,
    /// File name.
    pub policy_source: String,
    /// The `name` field.
    pub policy_name: Option<String>,
    /// File version.
    pub version: u32,
    /// Policy hash, 64 hex characters.
    pub policy_hash: String,
    /// Scopes in canonical order.
    pub scopes: Vec<ScopeSummary>,
}

fn scope_rules(s: &Scope) -> Vec<String> {
    let mut r = Vec::new();
    if let Some(m) = s.max_per_tx_sats {
        r.push(format!("max_per_tx_sats = {m}"));
    }
    for v in &s.velocity {
        r.push(format!(
            "velocity: at most {} sats per {} s",
            v.max_sats, v.window_seconds
        ));
    }
    let d = &s.destinations;
    if let Some(a) = &d.allow_addresses {
        r.push(format!(
            "allow_addresses: {}",
            a.values().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(a) = &d.allow_descriptors {
        r.push(format!(
            "allow_descriptors: {}",
            a.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !d.deny_addresses.is_empty() {
        r.push(format!(
            "deny_addresses: {}",
            d.deny_addresses
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !d.deny_descriptors.is_empty() {
        r.push(format!(
            "deny_descriptors: {}",
            d.deny_descriptors
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let f = &s.fees;
    for (name, v) in [
        ("max_fee_sats", f.max_fee_sats),
        ("min_fee_rate_sat_vb", f.min_fee_rate_sat_vb),
        ("max_fee_rate_sat_vb", f.max_fee_rate_sat_vb),
        ("max_fee_share_bps", f.max_fee_share_bps),
    ] {
        if let Some(v) = v {
            r.push(format!("{name} = {v}"));
        }
    }
    let o = &s.outputs;
    if let Some(t) = &o.allowed_script_types {
        r.push(format!(
            "allowed_script_types: {}",
            t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(m) = o.max_outputs {
        r.push(format!("max_outputs = {m}"));
    }
    if o.refuse_dust {
        r.push("refuse_dust = true".to_string());
    }
    if let Some(m) = o.min_output_sats {
        r.push(format!("min_output_sats = {m}"));
    }
    if o.change_to_wallet {
        r.push("change_to_wallet = true".to_string());
    }
    if !s.time_windows.is_empty() {
        r.push(format!(
            "time_windows: {}",
            s.time_windows
                .iter()
                .map(|w| w.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for a in &s.approvals {
        let mut line = match a.above_sats {
            Some(t) => format!("approvals above {t} sats: {} required", a.required),
            None => format!("approvals: {} required", a.required),
        };
        if let Some(roles) = &a.roles {
            let _ = write!(
                line,
                ", roles {}",
                roles.iter().cloned().collect::<Vec<_>>().join(",")
            );
        }
        if !a.min_per_role.is_empty() {
            let mins = a
                .min_per_role
                .iter()
                .map(|(r, n)| format!("{r}>={n}"))
                .collect::<Vec<_>>()
                .join(",");
            let _ = write!(line, ", at least {mins}");
        }
        if let Some(who) = &a.approvers {
            let _ = write!(
                line,
                ", approvers {}",
                who.iter().cloned().collect::<Vec<_>>().join(",")
            );
        }
        r.push(line);
    }
    r
}

impl PolicySummary {
    /// Summarizes a loaded policy.
    pub fn new(policy: &Policy) -> PolicySummary {
        PolicySummary {
            ok: true,
            policy_source: policy.source().to_string(),
            policy_name: policy.name().map(str::to_string),
            version: policy.version(),
            policy_hash: policy.hash().to_hex(),
            scopes: policy
                .scopes
                .values()
                .map(|s| ScopeSummary {
                    key_id: s.key_id.clone(),
                    network: s.network,
                    rules: scope_rules(s),
                })
                .collect(),
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        to_json_pretty(self)
    }

    /// Human-readable text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "policy {} is valid", self.policy_source);
        if let Some(n) = &self.policy_name {
            let _ = writeln!(s, "name: {n}");
        }
        let _ = writeln!(s, "version: {}", self.version);
        let _ = writeln!(s, "hash: {}", self.policy_hash);
        for sc in &self.scopes {
            let _ = writeln!(s, "scope {} on {}:", sc.key_id, sc.network);
            if sc.rules.is_empty() {
                let _ = writeln!(s, "  (no rules beyond the built-in checks)");
            }
            for r in &sc.rules {
                let _ = writeln!(s, "  {r}");
            }
        }
        s
    }
}

/// What `signer policy check --json` prints for an invalid policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyErrorReport {
    /// Always false.
    pub ok: bool,
    /// File name.
    pub file: String,
    /// 1-based line, if the error has a location.
    pub line: Option<usize>,
    /// 1-based column, if the error has a location.
    pub column: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// The full `file:line:column: reason` message.
    pub message: String,
}

impl PolicyErrorReport {
    /// Describes a load error.
    pub fn new(err: &PolicyError) -> PolicyErrorReport {
        let column = match err {
            PolicyError::Invalid { column, .. } => Some(*column),
            _ => None,
        };
        PolicyErrorReport {
            ok: false,
            file: err.file().to_string(),
            line: err.line(),
            column,
            reason: err.reason(),
            message: err.to_string(),
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        to_json_pretty(self)
    }
}
