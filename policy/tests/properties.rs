//! Property tests: determinism, monotonicity under tightening, and overflow safety.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use common::*;
use policy::report::DecisionReport;
use policy::{
    ApprovalRecord, Context, Decision, Network, Policy, ScriptType, TxInput, TxOutput, TxView,
    WindowSpent,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

const KINDS: [ScriptType; 4] = [
    ScriptType::P2wpkh,
    ScriptType::P2tr,
    ScriptType::P2pkh,
    ScriptType::P2wsh,
];
const PEOPLE: [(&str, &str); 5] = [
    ("alice", "cfo"),
    ("bob", "treasurer"),
    ("carol", "treasurer"),
    ("init", "cfo"),
    ("mallory", "intern"),
];
/// Monday 2024-01-01 00:00:00 UTC.
const MON: u64 = 1_704_067_200;

/// A generated policy: every rule optional.
#[derive(Debug, Clone)]
struct GenPolicy {
    max_per_tx: Option<u64>,
    velocity_max: Option<u64>,
    allow: Option<Vec<(usize, u8)>>,
    deny: Vec<(usize, u8)>,
    max_fee: Option<u64>,
    min_rate: Option<u64>,
    max_rate: Option<u64>,
    share_bps: Option<u64>,
    types: Option<Vec<usize>>,
    max_outputs: Option<u64>,
    refuse_dust: bool,
    min_output: Option<u64>,
    change_to_wallet: bool,
    /// (day bits, start minute, end minute)
    window: Option<(u8, u32, u32)>,
    /// (above, required, restrict roles, cfo minimum, restrict approvers)
    approvals: Option<(Option<u64>, u32, bool, bool, bool)>,
}

fn dest_address(d: (usize, u8)) -> String {
    address_of(&script_of(KINDS[d.0], d.1), Network::Regtest).expect("addressable kind")
}

fn hhmm(m: u32) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

impl GenPolicy {
    fn rules(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.max_per_tx {
            let _ = writeln!(s, "[scope.limits]\nmax_per_tx_sats = {m}");
        }
        if let Some(m) = self.velocity_max {
            let _ = writeln!(
                s,
                "[[scope.velocity]]\nwindow_seconds = 86400\nmax_sats = {m}"
            );
        }
        let mut dest = String::new();
        if let Some(a) = &self.allow {
            let set: BTreeSet<String> = a
                .iter()
                .map(|d| format!("\"{}\"", dest_address(*d)))
                .collect();
            let _ = writeln!(
                dest,
                "allow_addresses = [{}]",
                set.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if !self.deny.is_empty() {
            let set: BTreeSet<String> = self
                .deny
                .iter()
                .map(|d| format!("\"{}\"", dest_address(*d)))
                .collect();
            let _ = writeln!(
                dest,
                "deny_addresses = [{}]",
                set.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if !dest.is_empty() {
            let _ = write!(s, "[scope.destinations]\n{dest}");
        }
        let mut fees = String::new();
        for (k, v) in [
            ("max_fee_sats", self.max_fee),
            ("min_fee_rate_sat_vb", self.min_rate),
            ("max_fee_rate_sat_vb", self.max_rate),
            ("max_fee_share_bps", self.share_bps),
        ] {
            if let Some(v) = v {
                let _ = writeln!(fees, "{k} = {v}");
            }
        }
        if !fees.is_empty() {
            let _ = write!(s, "[scope.fees]\n{fees}");
        }
        let _ = writeln!(s, "[scope.outputs]");
        if let Some(t) = &self.types {
            let set: BTreeSet<&str> = t.iter().map(|i| KINDS[*i].as_str()).collect();
            let list: Vec<String> = set.iter().map(|t| format!("\"{t}\"")).collect();
            let _ = writeln!(s, "allowed_script_types = [{}]", list.join(", "));
        }
        if let Some(m) = self.max_outputs {
            let _ = writeln!(s, "max_outputs = {m}");
        }
        let _ = writeln!(s, "refuse_dust = {}", self.refuse_dust);
        if let Some(m) = self.min_output {
            let _ = writeln!(s, "min_output_sats = {m}");
        }
        let _ = writeln!(s, "change_to_wallet = {}", self.change_to_wallet);
        if let Some((days, start, end)) = self.window {
            let names: Vec<String> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .enumerate()
                .filter(|(i, _)| days & (1 << i) != 0)
                .map(|(_, d)| format!("\"{d}\""))
                .collect();
            let _ = writeln!(
                s,
                "[[scope.time_windows]]\ndays = [{}]\nstart = \"{}\"\nend = \"{}\"",
                names.join(", "),
                hhmm(start),
                hhmm(end)
            );
        }
        if let Some((above, required, roles, cfo, approvers)) = self.approvals {
            let _ = writeln!(s, "[[scope.approvals]]");
            if let Some(a) = above {
                let _ = writeln!(s, "above_sats = {a}");
            }
            let _ = writeln!(s, "required = {required}");
            if roles {
                let _ = writeln!(s, "roles = [\"cfo\", \"treasurer\"]");
            }
            if cfo {
                let _ = writeln!(s, "min_per_role = {{ cfo = 1 }}");
            }
            if approvers {
                let _ = writeln!(s, "approvers = [\"alice\", \"bob\", \"carol\", \"init\"]");
            }
        }
        s
    }

    fn text(&self) -> String {
        scope_text(Network::Regtest, &self.rules())
    }

    fn load(&self) -> Option<Policy> {
        Policy::from_toml_str(&self.text(), "gen.toml").ok()
    }

    /// Makes one rule stricter (or leaves the policy unchanged where that rule cannot
    /// get stricter in a valid way).
    fn tighten(&self, which: u8, amount: u64, pick: u8) -> GenPolicy {
        let mut t = self.clone();
        let lower =
            |v: Option<u64>| Some(v.map_or(amount.max(1), |m| m.saturating_sub(amount).max(1)));
        let dest = ((pick % 4) as usize, pick % 3 + 1);
        match which {
            0 => t.max_per_tx = lower(t.max_per_tx),
            1 => t.velocity_max = lower(t.velocity_max),
            2 => match &mut t.allow {
                Some(a) if a.len() > 1 => {
                    a.remove(pick as usize % a.len());
                }
                Some(_) => {}
                None => t.allow = Some(vec![dest]),
            },
            3 => t.deny.push(dest),
            4 => t.max_fee = lower(t.max_fee),
            5 => t.min_rate = Some(t.min_rate.unwrap_or(0) + amount % 20 + 1),
            6 => t.max_rate = lower(t.max_rate),
            7 => t.share_bps = lower(t.share_bps),
            8 => match &mut t.types {
                Some(ty) if ty.len() > 1 => {
                    ty.remove(pick as usize % ty.len());
                }
                Some(_) => {}
                None => t.types = Some(vec![(pick % 4) as usize]),
            },
            9 => t.max_outputs = lower(t.max_outputs),
            10 => t.refuse_dust = true,
            11 => t.min_output = Some(t.min_output.unwrap_or(0) + amount.max(1)),
            12 => t.change_to_wallet = true,
            13 => match &mut t.window {
                Some((days, start, end)) => {
                    if days.count_ones() > 1 {
                        *days &= !(1 << days.trailing_zeros());
                    } else if *start + 1 < *end {
                        *start += 1;
                    }
                }
                None => t.window = Some((1 << (pick % 7), 9 * 60, 17 * 60)),
            },
            14 => match &mut t.approvals {
                Some((_, required, ..)) => *required = (*required + 1).min(4),
                None => t.approvals = Some((None, 1, false, false, false)),
            },
            15 => {
                if let Some((above, ..)) = &mut t.approvals {
                    *above = above
                        .and_then(|a| a.checked_sub(amount).filter(|_| pick.is_multiple_of(2)));
                }
            }
            _ => {
                if let Some((_, required, roles, cfo, _)) = &mut t.approvals {
                    *cfo = true;
                    *roles = *roles || pick.is_multiple_of(2);
                    *required = (*required).max(1);
                }
            }
        }
        t
    }
}

fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    use proptest::option::weighted as maybe;
    const P: f64 = 0.25;
    let limits = (
        maybe(P, 50_000u64..600_000),
        maybe(P, 100_000u64..2_000_000),
        maybe(P, proptest::collection::vec((0usize..4, 1u8..4), 1..10)),
        proptest::collection::vec((0usize..4, 1u8..4), 0..2),
        maybe(P, 500u64..20_000),
        maybe(P, 1u64..20),
        maybe(P, 20u64..200),
        maybe(P, 10u64..2_000),
    );
    let outputs = (
        maybe(P, proptest::collection::vec(0usize..4, 1..4)),
        maybe(P, 1u64..6),
        proptest::bool::weighted(P),
        maybe(P, 1u64..5_000),
        proptest::bool::weighted(P),
        maybe(P, (1u8..128, 0u32..720, 720u32..1441)),
        maybe(
            0.5,
            (
                maybe(0.5, 0u64..300_000),
                1u32..4,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
        ),
    );
    (limits, outputs).prop_map(|(l, o)| GenPolicy {
        max_per_tx: l.0,
        velocity_max: l.1,
        allow: l.2,
        deny: l.3,
        max_fee: l.4,
        min_rate: l.5,
        max_rate: l.6,
        share_bps: l.7,
        types: o.0,
        max_outputs: o.1,
        refuse_dust: o.2,
        min_output: o.3,
        change_to_wallet: o.4,
        window: o.5,
        approvals: o.6,
    })
}

fn gen_output() -> impl Strategy<Value = TxOutput> {
    let kind =
        prop_oneof![6 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize), 1 => Just(3usize)];
    (
        kind,
        1u8..3,
        0u64..150_000,
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.85),
    )
        .prop_map(|(k, n, amount, is_change, belongs)| {
            let mut o = out_kind(KINDS[k], n, amount);
            o.is_change = is_change;
            o.belongs_to_wallet = belongs;
            o
        })
}

fn gen_case() -> impl Strategy<Value = (TxView, Context)> {
    (
        proptest::collection::vec(gen_output(), 1..4),
        0u64..15_000,
        100u64..400,
        0u64..7 * DAY,
        proptest::option::weighted(0.85, 0u64..1_500_000),
        proptest::collection::vec(any::<bool>(), PEOPLE.len()),
    )
        .prop_map(|(outputs, fee, vsize, offset, spent, who)| {
            let mut v = view(outputs, fee);
            v.vsize_vb = vsize;
            let c = Context {
                now_unix: MON + offset,
                window_spent: spent
                    .map(|s| WindowSpent {
                        window_seconds: DAY,
                        spent_sats: s,
                    })
                    .into_iter()
                    .collect(),
                approvals: PEOPLE
                    .iter()
                    .zip(who)
                    .filter(|(_, w)| *w)
                    .map(|((a, r), _)| ApprovalRecord {
                        approver: a.to_string(),
                        role: r.to_string(),
                    })
                    .collect(),
                initiator: "init".into(),
            };
            (v, c)
        })
}

fn code_set(d: &Decision) -> BTreeSet<&'static str> {
    d.violations().iter().map(|v| v.code().as_str()).collect()
}

/// Adds a comment to every line and random indentation and blank lines.
fn reformat(text: &str, noise: &[u8]) -> String {
    let mut out = String::from("# leading comment\n\n");
    for (i, line) in text.lines().enumerate() {
        let n = noise.get(i % noise.len().max(1)).copied().unwrap_or(0);
        let indent = " ".repeat(usize::from(n % 4));
        let _ = write!(out, "{indent}{line}");
        if n.is_multiple_of(3) {
            let _ = write!(out, "   # note {n}");
        }
        out.push('\n');
        if n.is_multiple_of(5) {
            out.push_str("\n  # spacer\n");
        }
    }
    out
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn same_input_always_gives_same_decision_and_hash(
        g in gen_policy(),
        (v, c) in gen_case(),
        noise in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let Some(p) = g.load() else { return Err(TestCaseError::reject("invalid policy")) };
        let again = Policy::from_toml_str(&g.text(), "other-name.toml").expect("loaded once");
        prop_assert_eq!(p.hash(), again.hash());
        let reformatted = Policy::from_toml_str(&reformat(&g.text(), &noise), "r.toml")
            .expect("comments and whitespace keep the policy valid");
        prop_assert_eq!(p.hash(), reformatted.hash());

        let d1 = p.evaluate(&v, &c);
        let d2 = again.evaluate(&v.clone(), &c.clone());
        prop_assert_eq!(d1.kind(), d2.kind());
        prop_assert_eq!(d1.violations(), d2.violations());
        let r1 = DecisionReport::new(&p, &v, &d1);
        let r2 = DecisionReport::new(&p, &v, &d2);
        prop_assert_eq!(r1.to_json(), r2.to_json());
        prop_assert_eq!(v.digest(), v.clone().digest());
    }

    #[test]
    fn tightening_a_limit_never_turns_a_rejection_into_an_approval(
        g in gen_policy(),
        (v, c) in gen_case(),
        amount in 1u64..200_000,
        pick in any::<u8>(),
    ) {
        let Some(loose) = g.load() else { return Err(TestCaseError::reject("invalid policy")) };
        let d_loose = loose.evaluate(&v, &c);
        let loose_codes = code_set(&d_loose);
        // Every kind of tightening, each from the same starting point.
        for which in 0u8..17 {
            let t = g.tighten(which, amount, pick);
            let Some(strict) = t.load() else { continue };
            let d_strict = strict.evaluate(&v, &c);
            if !matches!(d_loose, Decision::Approve(_)) {
                prop_assert!(!matches!(d_strict, Decision::Approve(_)),
                    "tightening {} approved what the looser policy did not:\n{}\n{:?}", which, t.text(), d_loose);
            }
            if matches!(d_loose, Decision::Reject(_)) {
                prop_assert!(matches!(d_strict, Decision::Reject(_)));
            }
            let strict_codes = code_set(&d_strict);
            prop_assert!(loose_codes.is_subset(&strict_codes),
                "violations {:?} not a subset of {:?} after tightening {}", loose_codes, strict_codes, which);
        }
    }

    #[test]
    fn arbitrary_u64_amounts_never_panic_and_overflow_is_reported(
        ins in proptest::collection::vec(any::<u64>(), 0..4),
        outs in proptest::collection::vec((any::<u64>(), any::<bool>(), 0usize..4), 0..4),
        fee in any::<u64>(),
        vsize in any::<u64>(),
        spent in any::<u64>(),
        now in any::<u64>(),
    ) {
        let p = Policy::from_toml_str(policy::fuzzing::FUZZ_POLICY, "fuzz.toml").expect("valid");
        let mut v = view(vec![], 0);
        v.key_id = "fuzz".into();
        v.inputs = ins.iter().enumerate().map(|(i, a)| TxInput {
            outpoint: bitcoin::OutPoint::new(v.txid, i as u32),
            amount_sats: *a,
            key_id: "fuzz".into(),
        }).collect();
        v.outputs = outs.iter().map(|(a, change, k)| {
            let mut o = out_kind(KINDS[*k], 1, *a);
            o.is_change = *change;
            o.belongs_to_wallet = *change;
            o
        }).collect();
        v.fee_sats = fee;
        v.vsize_vb = vsize;
        let c = Context {
            now_unix: now,
            window_spent: vec![WindowSpent { window_seconds: DAY, spent_sats: spent }],
            approvals: vec![],
            initiator: "x".into(),
        };
        let d = p.evaluate(&v, &c);
        let _ = DecisionReport::new(&p, &v, &d).to_text();
        let in_sum = ins.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        let out_sum = outs.iter().try_fold(0u64, |a, (b, ..)| a.checked_add(*b));
        if in_sum.is_none() || out_sum.is_none() {
            prop_assert!(code_set(&d).contains("amount_overflow"), "{d:?}");
        }
        if matches!(d, Decision::Approve(_)) {
            prop_assert!(in_sum.is_some_and(|s| s <= policy::MAX_MONEY_SATS));
        }
    }
}

/// Guards the properties above against vacuity: the generators must produce a healthy
/// mix of approvals, rejections and pending approvals.
#[test]
fn generators_cover_every_decision_kind() {
    let mut runner = TestRunner::deterministic();
    let strategy = (gen_policy(), gen_case());
    let (mut approve, mut reject, mut needs, mut invalid) = (0, 0, 0, 0);
    let mut hist = std::collections::BTreeMap::new();
    for _ in 0..600 {
        let (g, (v, c)) = strategy
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        let Some(p) = g.load() else {
            invalid += 1;
            continue;
        };
        match p.evaluate(&v, &c) {
            Decision::Approve(_) => approve += 1,
            Decision::Reject(ref vs) => {
                reject += 1;
                for x in vs {
                    *hist.entry(x.code().as_str()).or_insert(0) += 1;
                }
            }
            Decision::NeedsApproval { .. } => needs += 1,
        }
    }
    assert!(
        invalid < 300,
        "too many invalid generated policies: {invalid}"
    );
    let stats = format!("approve {approve} reject {reject} needs {needs} violations {hist:?}");
    assert!(approve >= 60, "{stats}");
    assert!(reject >= 60, "{stats}");
    assert!(needs >= 10, "{stats}");
    // Every rule the generator can enable is seen failing at least once.
    for code in [
        "amount_over_limit",
        "velocity_over_limit",
        "destination_not_allowed",
        "destination_denied",
        "fee_over_limit",
        "fee_rate_over_limit",
        "fee_rate_under_minimum",
        "fee_share_over_limit",
        "script_type_not_allowed",
        "too_many_outputs",
        "output_below_minimum",
        "change_not_to_wallet",
        "outside_time_window",
    ] {
        assert!(hist.contains_key(code), "{code} never failed: {stats}");
    }
}
