//! Pure evaluation of a [`TxView`] and [`Context`] against a [`Policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::Address;

use crate::decision::{
    Approval, Decision, IgnoredApproval, IgnoredReason, MissingApproval, Violation,
    ViolationCode as Code,
};
use crate::descriptor::normalize_loose;
use crate::policy::{ApprovalTier, Policy, Scope, TimeWindow, BPS_DENOMINATOR, DAY_NAMES};
use crate::types::ScriptType;
use crate::view::{ApprovalRecord, Context, TxOutput, TxView};

/// Total bitcoin supply in satoshis; no valid amount or sum exceeds it.
pub const MAX_MONEY_SATS: u64 = 21_000_000 * 100_000_000;
/// Consensus limit on a script's size in bytes.
pub const MAX_SCRIPT_BYTES: usize = 10_000;
/// Consensus limit on a transaction's virtual size (4 000 000 weight units).
pub const MAX_TX_VSIZE_VB: u64 = 1_000_000;

const SECONDS_PER_DAY: u64 = 86_400;

/// Sums that every rule works from. `None` where the sum overflowed.
struct Totals {
    outputs: Option<u64>,
    /// Outputs not kept (see [`TxOutput::is_kept`]).
    sent: Option<u64>,
    /// `sent` plus the fee.
    outflow: Option<u64>,
    vsize_ok: bool,
}

fn checked_sum(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    values.into_iter().try_fold(0u64, u64::checked_add)
}

fn describe_output(i: usize, o: &TxOutput) -> String {
    match &o.address {
        Some(a) => format!("output {i} (`{a}`)"),
        None => format!(
            "output {i} (script {})",
            short_hex(o.script_pubkey.as_bytes())
        ),
    }
}

fn short_hex(b: &[u8]) -> String {
    if b.len() <= 40 {
        hex::encode(b)
    } else {
        format!("{}…", hex::encode(&b[..40]))
    }
}

/// `num/den` as a decimal with two places, rounded down (for messages only).
fn ratio_2dp(num: u64, den: u64) -> String {
    if den == 0 {
        return "∞".to_string();
    }
    let scaled = u128::from(num) * 100 / u128::from(den);
    format!("{}.{:02}", scaled / 100, scaled % 100)
}

impl Policy {
    /// Evaluates a transaction view in a context. Pure and deterministic: no clock,
    /// no I/O, no randomness; the same inputs always give the same decision.
    ///
    /// Returns [`Decision::Reject`] listing every failed rule; otherwise
    /// [`Decision::NeedsApproval`] if an approval tier is unmet; otherwise
    /// [`Decision::Approve`] with an [`Approval`] bound to this policy's hash and the
    /// view's digest.
    pub fn evaluate(&self, view: &TxView, ctx: &Context) -> Decision {
        let decision = self.evaluate_inner(view, ctx);
        tracing::debug!(
            policy_hash = %self.hash,
            key_id = %view.key_id,
            network = %view.network,
            txid = %view.txid,
            decision = %decision.kind(),
            violations = decision.violations().len(),
            "policy evaluated"
        );
        decision
    }

    fn evaluate_inner(&self, view: &TxView, ctx: &Context) -> Decision {
        let Some(scope) = self.scope(&view.key_id, view.network) else {
            return Decision::Reject(vec![Violation::new(
                Code::NoPolicyForKey,
                format!(
                    "policy `{}` has no scope for key `{}` on {}",
                    self.source, view.key_id, view.network
                ),
            )]);
        };
        let mut v = Vec::new();
        let totals = check_structure(view, &mut v);
        check_amount(scope, &totals, &mut v);
        check_velocity(scope, ctx, &totals, &mut v);
        check_destinations(scope, view, &mut v);
        check_fees(scope, view, &totals, &mut v);
        check_outputs(scope, view, &mut v);
        check_time(scope, ctx, &mut v);
        if !v.is_empty() {
            return Decision::Reject(v);
        }
        let outflow = totals
            .outflow
            .expect("an overflowing outflow always records a violation");
        let mut missing = Vec::new();
        let mut ignored = BTreeSet::new();
        for tier in &scope.approvals {
            if tier.above_sats.is_none_or(|t| outflow > t) {
                missing.extend(tier_missing(
                    tier,
                    &ctx.approvals,
                    &ctx.initiator,
                    &mut ignored,
                ));
            }
        }
        if missing.is_empty() {
            Decision::Approve(Approval {
                policy_hash: self.hash,
                view_digest: view.digest(),
                key_id: view.key_id.clone(),
                network: view.network,
                txid: view.txid,
            })
        } else {
            Decision::NeedsApproval {
                missing,
                ignored: ignored.into_iter().collect(),
            }
        }
    }
}

/// Checks that hold under every policy (network, consistency, arithmetic).
/// Value sent (outputs not kept) and that plus the fee; `None` on overflow.
fn sent_and_outflow(view: &TxView) -> (Option<u64>, Option<u64>) {
    let sent = checked_sum(
        view.outputs
            .iter()
            .filter(|o| !o.is_kept())
            .map(|o| o.amount_sats),
    );
    (sent, sent.and_then(|s| s.checked_add(view.fee_sats)))
}

impl TxView {
    /// What this transaction takes out of the wallet in satoshis: every output not
    /// kept ([`crate::TxOutput::is_kept`]) plus the fee; the amount the per-transaction and
    /// velocity limits count. `None` if it overflows (such a view is always
    /// rejected).
    pub fn outflow_sats(&self) -> Option<u64> {
        sent_and_outflow(self).1
    }
}

fn check_structure(view: &TxView, v: &mut Vec<Violation>) -> Totals {
    if view.inputs.is_empty() {
        v.push(Violation::new(
            Code::NoInputs,
            "transaction has no inputs".into(),
        ));
    }
    if view.outputs.is_empty() {
        v.push(Violation::new(
            Code::NoOutputs,
            "transaction has no outputs".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, inp) in view.inputs.iter().enumerate() {
        if inp.key_id != view.key_id {
            v.push(Violation::new(
                Code::InputForeignKey,
                format!(
                    "input {i} ({}) is owned by key `{}`, not by `{}`",
                    inp.outpoint, inp.key_id, view.key_id
                ),
            ));
        }
        if !seen.insert(inp.outpoint) {
            v.push(Violation::new(
                Code::DuplicateInput,
                format!("input {i} spends {} a second time", inp.outpoint),
            ));
        }
    }

    let inputs = checked_sum(view.inputs.iter().map(|i| i.amount_sats));
    let outputs = checked_sum(view.outputs.iter().map(|o| o.amount_sats));
    for (what, sum) in [("input", inputs), ("output", outputs)] {
        match sum {
            None => v.push(Violation::new(
                Code::AmountOverflow,
                format!("{what} amounts add up to more than {} sats", u64::MAX),
            )),
            Some(s) if s > MAX_MONEY_SATS => v.push(Violation::new(
                Code::AmountOverflow,
                format!(
                    "{what} amounts add up to {s} sats, more than the {MAX_MONEY_SATS} sats that can exist"
                ),
            )),
            Some(_) => {}
        }
    }
    if let (Some(ins), Some(outs)) = (inputs, outputs) {
        match ins.checked_sub(outs) {
            None => v.push(Violation::new(
                Code::FeeMismatch,
                format!("outputs total {outs} sats, more than the {ins} sats of the inputs"),
            )),
            Some(diff) if diff != view.fee_sats => v.push(Violation::new(
                Code::FeeMismatch,
                format!(
                    "fee is given as {} sats but inputs minus outputs is {diff} sats",
                    view.fee_sats
                ),
            )),
            Some(_) => {}
        }
    }
    let vsize_ok = (1..=MAX_TX_VSIZE_VB).contains(&view.vsize_vb);
    if !vsize_ok {
        v.push(Violation::new(
            Code::InvalidVsize,
            format!(
                "virtual size {} vB is outside 1 to {MAX_TX_VSIZE_VB} vB",
                view.vsize_vb
            ),
        ));
    }

    let network = view.network.to_bitcoin();
    for (i, o) in view.outputs.iter().enumerate() {
        let spk = &o.script_pubkey;
        if spk.len() > MAX_SCRIPT_BYTES {
            v.push(Violation::new(
                Code::ScriptTooLarge,
                format!(
                    "output {i} script is {} bytes, more than {MAX_SCRIPT_BYTES}",
                    spk.len()
                ),
            ));
        }
        let actual = ScriptType::of_script(spk);
        if actual != o.script_type {
            v.push(Violation::new(
                Code::ScriptTypeMismatch,
                format!(
                    "{} is declared {} but its script is {actual}",
                    describe_output(i, o),
                    o.script_type
                ),
            ));
        }
        if actual == ScriptType::OpReturn && o.amount_sats > 0 {
            v.push(Violation::new(
                Code::BurnOutput,
                format!(
                    "output {i} is op_return with {} sats, which would be destroyed",
                    o.amount_sats
                ),
            ));
        }
        if let Some(text) = &o.address {
            match Address::<NetworkUnchecked>::from_str(text) {
                Err(e) => v.push(Violation::new(
                    Code::AddressInvalid,
                    format!("output {i} address `{text}` is not valid: {e}"),
                )),
                Ok(a) if !a.is_valid_for_network(network) => v.push(Violation::new(
                    Code::AddressWrongNetwork,
                    format!(
                        "output {i} address `{text}` is not a {} address",
                        view.network
                    ),
                )),
                Ok(a) => {
                    if a.assume_checked_ref().script_pubkey() != *spk {
                        v.push(Violation::new(
                            Code::AddressMismatch,
                            format!(
                                "output {i} address `{text}` does not encode its script {}",
                                short_hex(spk.as_bytes())
                            ),
                        ));
                    }
                }
            }
        }
    }

    let (sent, outflow) = sent_and_outflow(view);
    if sent.is_some() && outflow.is_none() {
        v.push(Violation::new(
            Code::AmountOverflow,
            format!("amount sent plus fee is more than {} sats", u64::MAX),
        ));
    }
    Totals {
        outputs,
        sent,
        outflow,
        vsize_ok,
    }
}

fn check_amount(scope: &Scope, t: &Totals, v: &mut Vec<Violation>) {
    if let (Some(max), Some(outflow), Some(sent)) = (scope.max_per_tx_sats, t.outflow, t.sent) {
        if outflow > max {
            v.push(Violation::new(
                Code::AmountOverLimit,
                format!(
                    "transaction sends {outflow} sats ({sent} to outputs plus {} fee), above the per-transaction limit of {max} sats",
                    outflow - sent
                ),
            ));
        }
    }
}

fn check_velocity(scope: &Scope, ctx: &Context, t: &Totals, v: &mut Vec<Violation>) {
    for limit in &scope.velocity {
        let w = limit.window_seconds;
        let mut entries = ctx.window_spent.iter().filter(|e| e.window_seconds == w);
        let (Some(entry), None) = (entries.next(), entries.next()) else {
            let n = ctx
                .window_spent
                .iter()
                .filter(|e| e.window_seconds == w)
                .count();
            v.push(Violation::new(
                Code::VelocityHistoryMissing,
                if n == 0 {
                    format!("context gives no amount spent in the {w} s velocity window")
                } else {
                    format!("context gives the amount spent in the {w} s velocity window {n} times")
                },
            ));
            continue;
        };
        let Some(outflow) = t.outflow else { continue };
        match entry.spent_sats.checked_add(outflow) {
            None => v.push(Violation::new(
                Code::AmountOverflow,
                format!(
                    "amount spent in the {w} s window plus this transaction is more than {} sats",
                    u64::MAX
                ),
            )),
            Some(total) if total > limit.max_sats => v.push(Violation::new(
                Code::VelocityOverLimit,
                format!(
                    "{} sats already sent in the last {w} s plus {outflow} sats now makes {total} sats, above the limit of {} sats",
                    entry.spent_sats, limit.max_sats
                ),
            )),
            Some(_) => {}
        }
    }
}

fn check_destinations(scope: &Scope, view: &TxView, v: &mut Vec<Violation>) {
    let d = &scope.destinations;
    for (i, o) in view.outputs.iter().enumerate() {
        let descs: BTreeSet<&str> = o.descriptors.iter().map(|s| normalize_loose(s)).collect();
        if let Some(text) = d.deny_addresses.get(&o.script_pubkey) {
            v.push(Violation::new(
                Code::DestinationDenied,
                format!("{} pays denied address `{text}`", describe_output(i, o)),
            ));
        }
        if let Some(desc) = d
            .deny_descriptors
            .iter()
            .find(|x| descs.contains(x.as_str()))
        {
            v.push(Violation::new(
                Code::DestinationDenied,
                format!("{} pays denied descriptor `{desc}`", describe_output(i, o)),
            ));
        }
        if !d.has_allowlist() || o.is_kept() {
            continue;
        }
        if o.amount_sats == 0 && ScriptType::of_script(&o.script_pubkey) == ScriptType::OpReturn {
            continue;
        }
        let by_address = d
            .allow_addresses
            .as_ref()
            .is_some_and(|m| m.contains_key(&o.script_pubkey));
        let by_descriptor = d
            .allow_descriptors
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| descs.contains(x.as_str())));
        if !by_address && !by_descriptor {
            v.push(Violation::new(
                Code::DestinationNotAllowed,
                format!(
                    "{} is not on the destination allowlist",
                    describe_output(i, o)
                ),
            ));
        }
    }
}

fn check_fees(scope: &Scope, view: &TxView, t: &Totals, v: &mut Vec<Violation>) {
    let f = &scope.fees;
    let fee = view.fee_sats;
    if let Some(max) = f.max_fee_sats {
        if fee > max {
            v.push(Violation::new(
                Code::FeeOverLimit,
                format!("fee of {fee} sats is above the limit of {max} sats"),
            ));
        }
    }
    if t.vsize_ok {
        let vsize = u128::from(view.vsize_vb);
        let rate = ratio_2dp(fee, view.vsize_vb);
        if let Some(max) = f.max_fee_rate_sat_vb {
            if u128::from(fee) > u128::from(max) * vsize {
                v.push(Violation::new(
                    Code::FeeRateOverLimit,
                    format!(
                        "fee rate {rate} sat/vB ({fee} sats / {} vB) is above the limit of {max} sat/vB",
                        view.vsize_vb
                    ),
                ));
            }
        }
        if let Some(min) = f.min_fee_rate_sat_vb {
            if u128::from(fee) < u128::from(min) * vsize {
                v.push(Violation::new(
                    Code::FeeRateUnderMinimum,
                    format!(
                        "fee rate {rate} sat/vB ({fee} sats / {} vB) is below the minimum of {min} sat/vB",
                        view.vsize_vb
                    ),
                ));
            }
        }
    }
    if let (Some(bps), Some(sent), Some(outputs)) = (f.max_fee_share_bps, t.sent, t.outputs) {
        // Consolidations send nothing out; their fee is measured against what they move.
        let (base, what) = if sent > 0 {
            (sent, "the amount sent")
        } else {
            (outputs, "the amount moved")
        };
        if u128::from(fee) * u128::from(BPS_DENOMINATOR) > u128::from(bps) * u128::from(base) {
            v.push(Violation::new(
                Code::FeeShareOverLimit,
                format!(
                    "fee of {fee} sats is {}% of {what} ({base} sats), above the limit of {bps} basis points",
                    ratio_2dp(fee.saturating_mul(100), base)
                ),
            ));
        }
    }
}

fn check_outputs(scope: &Scope, view: &TxView, v: &mut Vec<Violation>) {
    let r = &scope.outputs;
    if let Some(allowed) = &r.allowed_script_types {
        for (i, o) in view.outputs.iter().enumerate() {
            let t = ScriptType::of_script(&o.script_pubkey);
            if !allowed.contains(&t) {
                v.push(Violation::new(
                    Code::ScriptTypeNotAllowed,
                    format!(
                        "{} is {t}, which is not an allowed script type",
                        describe_output(i, o)
                    ),
                ));
            }
        }
    }
    if let Some(max) = r.max_outputs {
        let n = view.outputs.len() as u64;
        if n > max {
            v.push(Violation::new(
                Code::TooManyOutputs,
                format!("transaction has {n} outputs, more than the limit of {max}"),
            ));
        }
    }
    for (i, o) in view.outputs.iter().enumerate() {
        let spk = &o.script_pubkey;
        if spk.is_op_return() {
            continue;
        }
        if r.refuse_dust && spk.len() <= MAX_SCRIPT_BYTES {
            let threshold = spk.minimal_non_dust().to_sat();
            if o.amount_sats < threshold {
                v.push(Violation::new(
                    Code::DustOutput,
                    format!(
                        "{} pays {} sats, below the dust threshold of {threshold} sats for its script",
                        describe_output(i, o),
                        o.amount_sats
                    ),
                ));
            }
        }
        if let Some(min) = r.min_output_sats {
            if o.amount_sats < min {
                v.push(Violation::new(
                    Code::OutputBelowMinimum,
                    format!(
                        "{} pays {} sats, below the policy minimum of {min} sats",
                        describe_output(i, o),
                        o.amount_sats
                    ),
                ));
            }
        }
    }
    if r.change_to_wallet {
        for (i, o) in view.outputs.iter().enumerate() {
            if o.is_change && !o.belongs_to_wallet {
                v.push(Violation::new(
                    Code::ChangeNotToWallet,
                    format!(
                        "{} is marked change but is not the wallet's own descriptor",
                        describe_output(i, o)
                    ),
                ));
            }
        }
    }
}

impl TimeWindow {
    /// True if `now` (Unix seconds, UTC) falls inside this window.
    pub(crate) fn contains(&self, now: u64) -> bool {
        let (weekday, second) = weekday_and_second(now);
        let start = self.start_min * 60;
        let end = self.end_min * 60;
        let on = |d: u32| self.days & (1u8 << d) != 0;
        if start < end {
            on(weekday) && second >= start && second < end
        } else {
            (on(weekday) && second >= start) || (on((weekday + 6) % 7) && second < end)
        }
    }

    pub(crate) fn describe(&self) -> String {
        let days = if self.days == crate::policy::ALL_DAYS {
            "every day".to_string()
        } else {
            DAY_NAMES
                .iter()
                .enumerate()
                .filter(|(i, _)| self.days & (1u8 << i) != 0)
                .map(|(_, d)| *d)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{days} {:02}:{:02}-{:02}:{:02} UTC",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// Weekday (0 = Monday) and second of the UTC day. 1970-01-01 was a Thursday.
fn weekday_and_second(now: u64) -> (u32, u32) {
    let day = now / SECONDS_PER_DAY;
    let weekday = u32::try_from((day + 3) % 7).expect("a value below 7 fits in u32");
    let second = u32::try_from(now % SECONDS_PER_DAY).expect("a value below 86400 fits in u32");
    (weekday, second)
}

fn check_time(scope: &Scope, ctx: &Context, v: &mut Vec<Violation>) {
    if scope.time_windows.is_empty() || scope.time_windows.iter().any(|w| w.contains(ctx.now_unix))
    {
        return;
    }
    let (weekday, second) = weekday_and_second(ctx.now_unix);
    let allowed = scope
        .time_windows
        .iter()
        .map(TimeWindow::describe)
        .collect::<Vec<_>>()
        .join("; ");
    v.push(Violation::new(
        Code::OutsideTimeWindow,
        format!(
            "now ({} {:02}:{:02}:{:02} UTC) is outside the allowed time windows ({allowed})",
            DAY_NAMES[weekday as usize],
            second / 3600,
            second / 60 % 60,
            second % 60
        ),
    ));
}

/// What an approval tier still lacks. Each approver counts once; role minimums are
/// filled by a maximum matching of distinct approvers to role slots.
fn tier_missing(
    tier: &ApprovalTier,
    approvals: &[ApprovalRecord],
    initiator: &str,
    ignored: &mut BTreeSet<IgnoredApproval>,
) -> Vec<MissingApproval> {
    let mut eligible: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in approvals {
        let reason = if a.approver == initiator {
            Some(IgnoredReason::Initiator)
        } else if tier
            .approvers
            .as_ref()
            .is_some_and(|s| !s.contains(&a.approver))
        {
            Some(IgnoredReason::NotAnApprover)
        } else if tier.roles.as_ref().is_some_and(|s| !s.contains(&a.role)) {
            Some(IgnoredReason::RoleNotAccepted)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                ignored.insert(IgnoredApproval {
                    tier_above_sats: tier.above_sats,
                    approver: a.approver.clone(),
                    role: a.role.clone(),
                    reason,
                });
            }
            None => {
                eligible
                    .entry(a.approver.as_str())
                    .or_default()
                    .insert(a.role.as_str());
            }
        }
    }

    // Role slots, e.g. {cfo: 1, treasurer: 2} -> [cfo, treasurer, treasurer].
    let slots: Vec<&str> = tier
        .min_per_role
        .iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r.as_str(), *n as usize))
        .collect();
    let people: Vec<&BTreeSet<&str>> = eligible.values().collect();
    let mut owner: Vec<Option<usize>> = vec![None; slots.len()];
    let mut matched = 0usize;
    for p in 0..people.len() {
        let mut visited = vec![false; slots.len()];
        if augment(p, &people, &slots, &mut owner, &mut visited) {
            matched += 1;
        }
    }

    let mut missing = Vec::new();
    for (role, n) in &tier.min_per_role {
        let filled = slots
            .iter()
            .zip(&owner)
            .filter(|(s, o)| **s == role.as_str() && o.is_some())
            .count();
        let short = (*n as usize).saturating_sub(filled);
        if short > 0 {
            missing.push(MissingApproval {
                tier_above_sats: tier.above_sats,
                role: Some(role.clone()),
                count: u32::try_from(short).expect("bounded by a u32 minimum"),
            });
        }
    }
    let unmatched = people.len() - matched;
    let general_slots = (tier.required as usize).saturating_sub(slots.len());
    let general_missing = general_slots.saturating_sub(unmatched);
    if general_missing > 0 {
        missing.push(MissingApproval {
            tier_above_sats: tier.above_sats,
            role: None,
            count: u32::try_from(general_missing).expect("bounded by required"),
        });
    }
    missing
}

/// Kuhn's augmenting path step: tries to give person `p` a role slot.
fn augment(
    p: usize,
    people: &[&BTreeSet<&str>],
    slots: &[&str],
    owner: &mut [Option<usize>],
    visited: &mut [bool],
) -> bool {
    for s in 0..slots.len() {
        if visited[s] || !people[p].contains(slots[s]) {
            continue;
        }
        visited[s] = true;
        let free = match owner[s] {
            None => true,
            Some(q) => augment(q, people, slots, owner, visited),
        };
        if free {
            owner[s] = Some(p);
            return true;
        }
    }
    false
}
