//! The policy file format (TOML), its validation and the canonical policy hash.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, ScriptBuf};
use serde::Deserialize;
use toml::Spanned;

use crate::canon::Canon;
use crate::descriptor::normalize_checked;
use crate::error::{line_col, PolicyError};
use crate::types::{Network, PolicyHash, ScriptType};

/// Largest policy text [`Policy::from_toml_str`] accepts (1 MiB).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// The only policy file version this build reads.
pub const POLICY_VERSION: u32 = 1;
/// Upper bound for `required` in an approval tier.
pub const MAX_REQUIRED_APPROVALS: u32 = 100;
/// Longest key id, approver id or role name accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Basis points in 100 %.
pub const BPS_DENOMINATOR: u64 = 10_000;

// ---------------------------------------------------------------------------------
// Raw (as written) form. Spans locate validation errors.
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    scope: Vec<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    key_id: Spanned<String>,
    network: Spanned<Network>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    velocity: Vec<RawVelocity>,
    #[serde(default)]
    destinations: Option<RawDestinations>,
    #[serde(default)]
    fees: Option<RawFees>,
    #[serde(default)]
    outputs: Option<RawOutputs>,
    #[serde(default)]
    time_windows: Vec<RawTimeWindow>,
    #[serde(default)]
    approvals: Vec<RawApprovals>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_per_tx_sats: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVelocity {
    window_seconds: Spanned<u64>,
    max_sats: Spanned<u64>,
}

type SpannedList<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestinations {
    #[serde(default)]
    allow_addresses: Option<SpannedList<String>>,
    #[serde(default)]
    allow_descriptors: Option<SpannedList<String>>,
    #[serde(default)]
    deny_addresses: Option<SpannedList<String>>,
    #[serde(default)]
    deny_descriptors: Option<SpannedList<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFees {
    #[serde(default)]
    max_fee_sats: Option<Spanned<u64>>,
    #[serde(default)]
    min_fee_rate_sat_vb: Option<Spanned<u64>>,
    #[serde(default)]
    max_fee_rate_sat_vb: Option<Spanned<u64>>,
    #[serde(default)]
    max_fee_share_bps: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutputs {
    #[serde(default)]
    allowed_script_types: Option<SpannedList<ScriptType>>,
    #[serde(default)]
    max_outputs: Option<Spanned<u64>>,
    #[serde(default)]
    refuse_dust: Option<bool>,
    #[serde(default)]
    min_output_sats: Option<Spanned<u64>>,
    #[serde(default)]
    change_to_wallet: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeWindow {
    #[serde(default)]
    days: Option<SpannedList<String>>,
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default)]
    above_sats: Option<Spanned<u64>>,
    required: Spanned<u32>,
    #[serde(default)]
    roles: Option<SpannedList<String>>,
    #[serde(default)]
    approvers: Option<SpannedList<String>>,
    #[serde(default)]
    min_per_role: Option<Spanned<BTreeMap<String, Spanned<u32>>>>,
}

// ---------------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------------

/// A loaded, validated policy. Build one with [`Policy::from_toml_str`]; evaluate a
/// transaction with [`Policy::evaluate`](crate::Policy::evaluate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(crate) version: u32,
    pub(crate) name: Option<String>,
    pub(crate) source: String,
    pub(crate) scopes: BTreeMap<(String, Network), Scope>,
    pub(crate) hash: PolicyHash,
}

/// The rules for one (key id, network) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) key_id: String,
    pub(crate) network: Network,
    pub(crate) max_per_tx_sats: Option<u64>,
    /// Sorted by window length, no duplicate windows.
    pub(crate) velocity: Vec<VelocityLimit>,
    pub(crate) destinations: Destinations,
    pub(crate) fees: FeeRules,
    pub(crate) outputs: OutputRules,
    /// Sorted and de-duplicated; empty means "any time".
    pub(crate) time_windows: Vec<TimeWindow>,
    /// Sorted and de-duplicated; all tiers that apply must be satisfied.
    pub(crate) approvals: Vec<ApprovalTier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct VelocityLimit {
    pub(crate) window_seconds: u64,
    pub(crate) max_sats: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Destinations {
    /// scriptPubKey → address as written. `None`: no address allowlist.
    pub(crate) allow_addresses: Option<BTreeMap<ScriptBuf, String>>,
    /// Normal forms. `None`: no descriptor allowlist.
    pub(crate) allow_descriptors: Option<BTreeSet<String>>,
    pub(crate) deny_addresses: BTreeMap<ScriptBuf, String>,
    pub(crate) deny_descriptors: BTreeSet<String>,
}

impl Destinations {
    /// True if an allowlist (of addresses, descriptors or both) is in force.
    pub(crate) fn has_allowlist(&self) -> bool {
        self.allow_addresses.is_some() || self.allow_descriptors.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FeeRules {
    pub(crate) max_fee_sats: Option<u64>,
    pub(crate) min_fee_rate_sat_vb: Option<u64>,
    pub(crate) max_fee_rate_sat_vb: Option<u64>,
    pub(crate) max_fee_share_bps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct OutputRules {
    pub(crate) allowed_script_types: Option<BTreeSet<ScriptType>>,
    pub(crate) max_outputs: Option<u64>,
    pub(crate) refuse_dust: bool,
    pub(crate) min_output_sats: Option<u64>,
    pub(crate) change_to_wallet: bool,
}

/// A UTC spending window. `days` is a bit set, bit 0 = Monday … bit 6 = Sunday; a
/// window whose end is not after its start runs past midnight into the next day and
/// belongs to the day it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimeWindow {
    pub(crate) days: u8,
    /// Minutes after midnight, 0..=1439.
    pub(crate) start_min: u32,
    /// Minutes after midnight, 0..=1440, never equal to `start_min`.
    pub(crate) end_min: u32,
}

pub(crate) const ALL_DAYS: u8 = 0b111_1111;
pub(crate) const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ApprovalTier {
    /// Tier applies when the amount sent (outputs not kept, plus fee) is strictly
    /// greater than this; `None`: always applies.
    pub(crate) above_sats: Option<u64>,
    pub(crate) required: u32,
    pub(crate) roles: Option<BTreeSet<String>>,
    pub(crate) approvers: Option<BTreeSet<String>>,
    pub(crate) min_per_role: BTreeMap<String, u32>,
}

// ---------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------

struct Loader<'a> {
    text: &'a str,
    file: &'a str,
}

impl Loader<'_> {
    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError::Invalid {
            file: self.file.to_string(),
            line,
            column,
            reason: reason.into(),
        }
    }

    fn positive(&self, v: &Spanned<u64>, field: &str) -> Result<u64, PolicyError> {
        if *v.get_ref() == 0 {
            return Err(self.err(v.span(), format!("{field} must be greater than zero")));
        }
        Ok(*v.get_ref())
    }

    fn opt_positive(
        &self,
        v: &Option<Spanned<u64>>,
        field: &str,
    ) -> Result<Option<u64>, PolicyError> {
        v.as_ref().map(|v| self.positive(v, field)).transpose()
    }

    fn id(&self, v: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
        let s = v.get_ref();
        if s.is_empty() {
            return Err(self.err(v.span(), format!("{what} is empty")));
        }
        if s.len() > MAX_ID_LEN {
            return Err(self.err(
                v.span(),
                format!("{what} is {} bytes, longer than {MAX_ID_LEN}", s.len()),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
        {
            return Err(self.err(
                v.span(),
                format!(
                    "{what} `{}` contains {c:?}; allowed are ascii letters, digits and . _ - : @",
                    s.escape_debug()
                ),
            ));
        }
        Ok(s.clone())
    }

    fn non_empty_list<'l, T>(
        &self,
        list: &'l SpannedList<T>,
        field: &str,
        hint: &str,
    ) -> Result<&'l [Spanned<T>], PolicyError> {
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), format!("{field} is empty; {hint}")));
        }
        Ok(list.get_ref())
    }

    fn id_set(
        &self,
        list: &Option<SpannedList<String>>,
        field: &str,
        what: &str,
    ) -> Result<Option<BTreeSet<String>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let items = self.non_empty_list(list, field, "remove it to accept any")?;
        let mut out = BTreeSet::new();
        for item in items {
            let id = self.id(item, what)?;
            if !out.insert(id.clone()) {
                return Err(self.err(
                    item.span(),
                    format!("{what} `{id}` is listed twice in {field}"),
                ));
            }
        }
        Ok(Some(out))
    }

    fn load(&self) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let reason = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            let reason = if reason.is_empty() {
                "invalid toml: a value is missing or malformed here".to_string()
            } else {
                reason
            };
            self.err(span, reason)
        })?;

        if *raw.version.get_ref() != POLICY_VERSION {
            return Err(self.err(
                raw.version.span(),
                format!(
                    "unsupported policy version {}; this build reads version {POLICY_VERSION}",
                    raw.version.get_ref()
                ),
            ));
        }
        let name = match &raw.name {
            None => None,
            Some(n) => {
                if n.get_ref().is_empty() || n.get_ref().len() > 200 {
                    return Err(self.err(n.span(), "name must be 1 to 200 bytes long"));
                }
                if n.get_ref().chars().any(char::is_control) {
                    return Err(self.err(n.span(), "name contains a control character"));
                }
                Some(n.get_ref().clone())
            }
        };
        if raw.scope.is_empty() {
            return Err(self.err(
                0..0,
                "policy defines no [[scope]]; every transaction would be rejected",
            ));
        }
        let mut scopes = BTreeMap::new();
        for rs in &raw.scope {
            let scope = self.scope(rs)?;
            let key = (scope.key_id.clone(), scope.network);
            if scopes.contains_key(&key) {
                return Err(self.err(
                    rs.key_id.span(),
                    format!(
                        "a second [[scope]] for key `{}` on {}; merge them into one",
                        scope.key_id, scope.network
                    ),
                ));
            }
            scopes.insert(key, scope);
        }
        let mut policy = Policy {
            version: POLICY_VERSION,
            name,
            source: self.file.to_string(),
            scopes,
            hash: PolicyHash::from_bytes([0; 32]),
        };
        policy.hash = policy.compute_hash();
        Ok(policy)
    }

    fn scope(&self, rs: &RawScope) -> Result<Scope, PolicyError> {
        let key_id = self.id(&rs.key_id, "key_id")?;
        let network = *rs.network.get_ref();

        let max_per_tx_sats = match &rs.limits {
            Some(l) => self.opt_positive(&l.max_per_tx_sats, "max_per_tx_sats")?,
            None => None,
        };

        let mut velocity = Vec::new();
        let mut seen_windows = BTreeSet::new();
        for v in &rs.velocity {
            let window_seconds = self.positive(&v.window_seconds, "window_seconds")?;
            let max_sats = self.positive(&v.max_sats, "max_sats")?;
            if !seen_windows.insert(window_seconds) {
                return Err(self.err(
                    v.window_seconds.span(),
                    format!("a second velocity limit for window_seconds = {window_seconds}"),
                ));
            }
            velocity.push(VelocityLimit {
                window_seconds,
                max_sats,
            });
        }
        velocity.sort();

        let destinations = match &rs.destinations {
            Some(d) => self.destinations(d, network)?,
            None => Destinations::default(),
        };

        let fees = match &rs.fees {
            Some(f) => self.fees(f)?,
            None => FeeRules::default(),
        };

        let outputs = match &rs.outputs {
            Some(o) => self.outputs(o)?,
            None => OutputRules::default(),
        };

        let mut time_windows = rs
            .time_windows
            .iter()
            .map(|w| self.time_window(w))
            .collect::<Result<Vec<_>, _>>()?;
        time_windows.sort();
        time_windows.dedup();

        let mut approvals = rs
            .approvals
            .iter()
            .map(|a| self.approvals(a))
            .collect::<Result<Vec<_>, _>>()?;
        approvals.sort();
        approvals.dedup();

        Ok(Scope {
            key_id,
            network,
            max_per_tx_sats,
            velocity,
            destinations,
            fees,
            outputs,
            time_windows,
            approvals,
        })
    }

    fn address_list(
        &self,
        list: &Option<SpannedList<String>>,
        field: &str,
        network: Network,
    ) -> Result<Option<BTreeMap<ScriptBuf, String>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let items = self.non_empty_list(list, field, "remove it if no address is meant")?;
        let mut out = BTreeMap::new();
        for item in items {
            let text = item.get_ref();
            let parsed = Address::<NetworkUnchecked>::from_str(text).map_err(|e| {
                self.err(
                    item.span(),
                    format!("`{text}` in {field} is not a valid address: {e}"),
                )
            })?;
            if !parsed.is_valid_for_network(network.to_bitcoin()) {
                return Err(self.err(
                    item.span(),
                    format!("address `{text}` in {field} is not valid on {network}"),
                ));
            }
            let spk = parsed.assume_checked().script_pubkey();
            if let Some(prev) = out.insert(spk, text.clone()) {
                return Err(self.err(
                    item.span(),
                    format!("address `{text}` in {field} is listed twice (also as `{prev}`)"),
                ));
            }
        }
        Ok(Some(out))
    }

    fn descriptor_list(
        &self,
        list: &Option<SpannedList<String>>,
        field: &str,
    ) -> Result<Option<BTreeSet<String>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let items = self.non_empty_list(list, field, "remove it if no descriptor is meant")?;
        let mut out = BTreeSet::new();
        for item in items {
            let norm = normalize_checked(item.get_ref())
                .map_err(|reason| self.err(item.span(), format!("{field}: {reason}")))?;
            if !out.insert(norm.clone()) {
                return Err(self.err(
                    item.span(),
                    format!("descriptor `{norm}` in {field} is listed twice"),
                ));
            }
        }
        Ok(Some(out))
    }

    fn destinations(
        &self,
        d: &RawDestinations,
        network: Network,
    ) -> Result<Destinations, PolicyError> {
        let allow_addresses = self.address_list(&d.allow_addresses, "allow_addresses", network)?;
        let deny_addresses = self
            .address_list(&d.deny_addresses, "deny_addresses", network)?
            .unwrap_or_default();
        let allow_descriptors = self.descriptor_list(&d.allow_descriptors, "allow_descriptors")?;
        let deny_descriptors = self
            .descriptor_list(&d.deny_descriptors, "deny_descriptors")?
            .unwrap_or_default();
        if let (Some(allow), Some(list)) = (&allow_addresses, &d.deny_addresses) {
            for (spk, text) in &deny_addresses {
                if allow.contains_key(spk) {
                    let span = list
                        .get_ref()
                        .iter()
                        .find(|i| i.get_ref() == text)
                        .map_or(list.span(), Spanned::span);
                    return Err(self.err(
                        span,
                        format!("address `{text}` is in both allow_addresses and deny_addresses"),
                    ));
                }
            }
        }
        if let (Some(allow), Some(list)) = (&allow_descriptors, &d.deny_descriptors) {
            if let Some(both) = deny_descriptors.intersection(allow).next() {
                return Err(self.err(
                    list.span(),
                    format!(
                        "descriptor `{both}` is in both allow_descriptors and deny_descriptors"
                    ),
                ));
            }
        }
        Ok(Destinations {
            allow_addresses,
            allow_descriptors,
            deny_addresses,
            deny_descriptors,
        })
    }

    fn fees(&self, f: &RawFees) -> Result<FeeRules, PolicyError> {
        let max_fee_sats = self.opt_positive(&f.max_fee_sats, "max_fee_sats")?;
        let min_fee_rate_sat_vb =
            self.opt_positive(&f.min_fee_rate_sat_vb, "min_fee_rate_sat_vb")?;
        let max_fee_rate_sat_vb =
            self.opt_positive(&f.max_fee_rate_sat_vb, "max_fee_rate_sat_vb")?;
        let max_fee_share_bps = self.opt_positive(&f.max_fee_share_bps, "max_fee_share_bps")?;
        if let (Some(min), Some(max), Some(span)) = (
            min_fee_rate_sat_vb,
            max_fee_rate_sat_vb,
            f.min_fee_rate_sat_vb.as_ref().map(Spanned::span),
        ) {
            if min > max {
                return Err(self.err(
                    span,
                    format!(
                        "min_fee_rate_sat_vb ({min}) is greater than max_fee_rate_sat_vb ({max})"
                    ),
                ));
            }
        }
        if let (Some(bps), Some(v)) = (max_fee_share_bps, &f.max_fee_share_bps) {
            if bps > BPS_DENOMINATOR {
                return Err(self.err(
                    v.span(),
                    format!("max_fee_share_bps ({bps}) is more than {BPS_DENOMINATOR} (100 %)"),
                ));
            }
        }
        Ok(FeeRules {
            max_fee_sats,
            min_fee_rate_sat_vb,
            max_fee_rate_sat_vb,
            max_fee_share_bps,
        })
    }

    fn outputs(&self, o: &RawOutputs) -> Result<OutputRules, PolicyError> {
        let allowed_script_types = match &o.allowed_script_types {
            None => None,
            Some(list) => {
                let items = self.non_empty_list(
                    list,
                    "allowed_script_types",
                    "remove it to allow every script type",
                )?;
                let mut set = BTreeSet::new();
                for item in items {
                    if !set.insert(*item.get_ref()) {
                        return Err(self.err(
                            item.span(),
                            format!(
                                "script type `{}` is listed twice in allowed_script_types",
                                item.get_ref()
                            ),
                        ));
                    }
                }
                Some(set)
            }
        };
        Ok(OutputRules {
            allowed_script_types,
            max_outputs: self.opt_positive(&o.max_outputs, "max_outputs")?,
            refuse_dust: o.refuse_dust.unwrap_or(false),
            min_output_sats: self.opt_positive(&o.min_output_sats, "min_output_sats")?,
            change_to_wallet: o.change_to_wallet.unwrap_or(false),
        })
    }

    fn clock(&self, v: &Spanned<String>, field: &str, allow_24: bool) -> Result<u32, PolicyError> {
        let s = v.get_ref();
        let bad = || {
            self.err(
                v.span(),
                format!(
                    "{field} `{}` is not a time of day in HH:MM form (UTC)",
                    s.escape_debug()
                ),
            )
        };
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' {
            return Err(bad());
        }
        let digits = |x: &[u8]| -> Option<u32> {
            if x.iter().all(u8::is_ascii_digit) {
                Some(x.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
            } else {
                None
            }
        };
        let (Some(h), Some(m)) = (digits(&b[..2]), digits(&b[3..])) else {
            return Err(bad());
        };
        let total = h * 60 + m;
        let ok = m < 60 && (h < 24 || (allow_24 && total == 24 * 60));
        if !ok {
            return Err(self.err(
                v.span(),
                format!(
                    "{field} `{s}` is out of range (00:00 to {})",
                    if allow_24 { "24:00" } else { "23:59" }
                ),
            ));
        }
        Ok(total)
    }

    fn time_window(&self, w: &RawTimeWindow) -> Result<TimeWindow, PolicyError> {
        let start_min = self.clock(&w.start, "start", false)?;
        let end_min = self.clock(&w.end, "end", true)?;
        if start_min == end_min {
            return Err(self.err(
                w.end.span(),
                format!(
                    "time window start and end are both {}; the window would be empty \
                     (remove time_windows to allow any time)",
                    w.start.get_ref()
                ),
            ));
        }
        let days = match &w.days {
            None => ALL_DAYS,
            Some(list) => {
                let items = self.non_empty_list(list, "days", "remove it to mean every day")?;
                let mut bits = 0u8;
                for item in items {
                    let Some(i) = DAY_NAMES.iter().position(|d| d == item.get_ref()) else {
                        return Err(self.err(
                            item.span(),
                            format!(
                                "unknown day `{}`; expected one of mon, tue, wed, thu, fri, sat, sun",
                                item.get_ref().escape_debug()
                            ),
                        ));
                    };
                    let bit = 1u8 << i;
                    if bits & bit != 0 {
                        return Err(self.err(
                            item.span(),
                            format!("day `{}` is listed twice", item.get_ref()),
                        ));
                    }
                    bits |= bit;
                }
                bits
            }
        };
        Ok(TimeWindow {
            days,
            start_min,
            end_min,
        })
    }

    fn approvals(&self, a: &RawApprovals) -> Result<ApprovalTier, PolicyError> {
        let required = *a.required.get_ref();
        if required == 0 {
            return Err(self.err(
                a.required.span(),
                "required must be at least 1; remove the [[scope.approvals]] table instead",
            ));
        }
        if required > MAX_REQUIRED_APPROVALS {
            return Err(self.err(
                a.required.span(),
                format!("required ({required}) is more than {MAX_REQUIRED_APPROVALS}"),
            ));
        }
        let roles = self.id_set(&a.roles, "roles", "role")?;
        let approvers = self.id_set(&a.approvers, "approvers", "approver")?;
        if let Some(approvers) = &approvers {
            if required as usize > approvers.len() {
                return Err(self.err(
                    a.required.span(),
                    format!(
                        "required ({required}) is more than the {} listed approvers",
                        approvers.len()
                    ),
                ));
            }
        }
        let mut min_per_role = BTreeMap::new();
        if let Some(m) = &a.min_per_role {
            if m.get_ref().is_empty() {
                return Err(self.err(m.span(), "min_per_role is empty; remove it"));
            }
            let mut sum: u64 = 0;
            for (role, n) in m.get_ref() {
                let role_id = self.id(&Spanned::new(n.span(), role.clone()), "role")?;
                if *n.get_ref() == 0 {
                    return Err(self.err(
                        n.span(),
                        format!("min_per_role for `{role}` must be at least 1"),
                    ));
                }
                if let Some(roles) = &roles {
                    if !roles.contains(&role_id) {
                        return Err(self.err(
                            n.span(),
                            format!("min_per_role names role `{role}`, which is not in roles"),
                        ));
                    }
                }
                sum += u64::from(*n.get_ref());
                min_per_role.insert(role_id, *n.get_ref());
            }
            if sum > u64::from(required) {
                return Err(self.err(
                    a.required.span(),
                    format!(
                        "required ({required}) is less than the {sum} approvals min_per_role asks for"
                    ),
                ));
            }
        }
        Ok(ApprovalTier {
            above_sats: a.above_sats.as_ref().map(|v| *v.get_ref()),
            required,
            roles,
            approvers,
            min_per_role,
        })
    }
}

impl Policy {
    /// Parses and validates a policy.
    ///
    /// `source` is the file name used in error messages and reports. Fails with
    /// [`PolicyError::TooLarge`] above [`MAX_POLICY_BYTES`], and with
    /// [`PolicyError::Invalid`] (file, line, column, reason) for TOML syntax errors,
    /// unknown fields, wrong types and impossible values.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file: source.to_string(),
                size: text.len(),
                limit: MAX_POLICY_BYTES,
            });
        }
        Loader { text, file: source }.load()
    }

    /// The policy's content hash (see `docs/POLICY.md`, "Policy hash").
    pub fn hash(&self) -> PolicyHash {
        self.hash
    }

    /// The file version (always [`POLICY_VERSION`]).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The optional `name` from the file.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The `source` given to [`Policy::from_toml_str`] (not part of the hash).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The (key id, network) pairs this policy has rules for, in canonical order.
    pub fn scopes(&self) -> impl Iterator<Item = (&str, Network)> + '_ {
        self.scopes.keys().map(|(k, n)| (k.as_str(), *n))
    }

    /// Velocity window lengths (seconds) defined for a key and network, ascending.
    /// The caller must put the amount spent in each into [`crate::Context::window_spent`].
    pub fn velocity_windows(&self, key_id: &str, network: Network) -> Vec<u64> {
        self.scope(key_id, network)
            .map(|s| s.velocity.iter().map(|v| v.window_seconds).collect())
            .unwrap_or_default()
    }

    /// Whether any human approval tier (`[[scope.approvals]]`) is defined for a key
    /// and network. When none is, [`crate::Context::approvals`] is never read, so
    /// the caller need not look the approvals up.
    pub fn asks_for_approvals(&self, key_id: &str, network: Network) -> bool {
        self.scope(key_id, network)
            .is_some_and(|s| !s.approvals.is_empty())
    }

    /// Descriptors (normal form, no checksum) named by the allow and deny lists of a key
    /// and network. The caller must report, per output, which of these the output's
    /// scriptPubKey derives from ([`crate::TxOutput::descriptors`]).
    pub fn descriptors(&self, key_id: &str, network: Network) -> Vec<String> {
        let Some(s) = self.scope(key_id, network) else {
            return Vec::new();
        };
        let mut all: BTreeSet<&String> = s.destinations.deny_descriptors.iter().collect();
        if let Some(a) = &s.destinations.allow_descriptors {
            all.extend(a.iter());
        }
        all.into_iter().cloned().collect()
    }

    pub(crate) fn scope(&self, key_id: &str, network: Network) -> Option<&Scope> {
        self.scopes.get(&(key_id.to_string(), network))
    }

    fn compute_hash(&self) -> PolicyHash {
        let mut c = Canon::new("custody-policy/policy/v1");
        c.u64(u64::from(self.version));
        c.opt_str(self.name.as_deref());
        c.u64(self.scopes.len() as u64);
        for s in self.scopes.values() {
            s.encode(&mut c);
        }
        PolicyHash::from_bytes(c.finish())
    }
}

impl Scope {
    fn encode(&self, c: &mut Canon) {
        c.str(&self.key_id);
        c.tag(self.network.canon_tag());
        c.opt_u64(self.max_per_tx_sats);
        c.u64(self.velocity.len() as u64);
        for v in &self.velocity {
            c.u64(v.window_seconds);
            c.u64(v.max_sats);
        }
        let d = &self.destinations;
        let scripts = |c: &mut Canon, m: &BTreeMap<ScriptBuf, String>| {
            c.u64(m.len() as u64);
            for spk in m.keys() {
                c.bytes(spk.as_bytes());
            }
        };
        let strings = |c: &mut Canon, s: &BTreeSet<String>| {
            c.u64(s.len() as u64);
            for d in s {
                c.str(d);
            }
        };
        match &d.allow_addresses {
            None => c.tag(0),
            Some(m) => {
                c.tag(1);
                scripts(c, m);
            }
        }
        match &d.allow_descriptors {
            None => c.tag(0),
            Some(s) => {
                c.tag(1);
                strings(c, s);
            }
        }
        scripts(c, &d.deny_addresses);
        strings(c, &d.deny_descriptors);
        let f = &self.fees;
        c.opt_u64(f.max_fee_sats);
        c.opt_u64(f.min_fee_rate_sat_vb);
        c.opt_u64(f.max_fee_rate_sat_vb);
        c.opt_u64(f.max_fee_share_bps);
        let o = &self.outputs;
        match &o.allowed_script_types {
            None => c.tag(0),
            Some(set) => {
                c.tag(1);
                c.u64(set.len() as u64);
                for t in set {
                    c.tag(t.canon_tag());
                }
            }
        }
        c.opt_u64(o.max_outputs);
        c.bool(o.refuse_dust);
        c.opt_u64(o.min_output_sats);
        c.bool(o.change_to_wallet);
        c.u64(self.time_windows.len() as u64);
        for w in &self.time_windows {
            c.tag(w.days);
            c.u64(u64::from(w.start_min));
            c.u64(u64::from(w.end_min));
        }
        c.u64(self.approvals.len() as u64);
        for a in &self.approvals {
            c.opt_u64(a.above_sats);
            c.u64(u64::from(a.required));
            for set in [&a.roles, &a.approvers] {
                match set {
                    None => c.tag(0),
                    Some(s) => {
                        c.tag(1);
                        strings(c, s);
                    }
                }
            }
            c.u64(a.min_per_role.len() as u64);
            for (role, n) in &a.min_per_role {
                c.str(role);
                c.u64(u64::from(*n));
            }
        }
    }
}
