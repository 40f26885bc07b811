//! One test per rule, each at, just below and just above its limit.

mod common;

use common::*;
use policy::{Decision, Network, ScriptType};

const FEE: u64 = 1_000;

// --- maximum amount per transaction -------------------------------------------------

#[test]
fn max_per_tx_counts_outputs_plus_fee_at_below_and_above_the_limit() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 100_000");
    // sent 99_000 + fee 1_000 = 100_000: exactly at the limit
    assert_approved(&p.evaluate(&view(vec![out(1, 99_000)], FEE), &ctx()));
    assert_approved(&p.evaluate(&view(vec![out(1, 98_999)], FEE), &ctx()));
    let d = p.evaluate(&view(vec![out(1, 99_001)], FEE), &ctx());
    assert_eq!(codes(&d), ["amount_over_limit"]);
    assert!(d.violations()[0].message().contains("100001 sats"), "{d:?}");
}

#[test]
fn max_per_tx_ignores_change_back_to_the_wallet() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 100_000");
    let v = view(vec![out(1, 99_000), change(5_000_000)], FEE);
    assert_approved(&p.evaluate(&v, &ctx()));
}

#[test]
fn change_not_owned_by_the_wallet_counts_as_sent() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 100_000");
    let mut c = change(5_000);
    c.belongs_to_wallet = false;
    let d = p.evaluate(&view(vec![out(1, 99_000), c], FEE), &ctx());
    assert_eq!(codes(&d), ["amount_over_limit"]);
}

#[test]
fn outflow_is_what_the_limits_count_outputs_not_kept_plus_fee() {
    assert_eq!(
        view(vec![out(1, 99_000), change(5_000_000)], FEE).outflow_sats(),
        Some(100_000)
    );
    let mut foreign_change = change(5_000);
    foreign_change.belongs_to_wallet = false;
    assert_eq!(
        view(vec![out(1, 99_000), foreign_change], FEE).outflow_sats(),
        Some(105_000)
    );
    let mut huge = view(vec![out(1, 1)], FEE);
    huge.outputs[0].amount_sats = u64::MAX;
    assert_eq!(huge.outflow_sats(), None, "overflow is None, not a wrap");
}

// --- rolling-window velocity --------------------------------------------------------

#[test]
fn velocity_adds_window_history_at_below_and_above_the_limit() {
    let p = policy("[[scope.velocity]]\nwindow_seconds = 86_400\nmax_sats = 1_000_000");
    let v = view(vec![out(1, 99_000)], FEE); // outflow 100_000
    assert_approved(&p.evaluate(&v, &with_spent(ctx(), DAY, 900_000)));
    assert_approved(&p.evaluate(&v, &with_spent(ctx(), DAY, 899_999)));
    let d = p.evaluate(&v, &with_spent(ctx(), DAY, 900_001));
    assert_eq!(codes(&d), ["velocity_over_limit"]);
}

#[test]
fn velocity_checks_every_window() {
    let p = policy(
        "[[scope.velocity]]\nwindow_seconds = 86_400\nmax_sats = 1_000_000\n\
         [[scope.velocity]]\nwindow_seconds = 604_800\nmax_sats = 2_000_000",
    );
    let v = view(vec![out(1, 99_000)], FEE);
    let c = with_spent(with_spent(ctx(), DAY, 0), 7 * DAY, 1_900_001);
    assert_eq!(codes(&p.evaluate(&v, &c)), ["velocity_over_limit"]);
    let c = with_spent(with_spent(ctx(), DAY, 0), 7 * DAY, 1_900_000);
    assert_approved(&p.evaluate(&v, &c));
    assert_eq!(p.velocity_windows(KEY, Network::Regtest), [DAY, 7 * DAY]);
}

#[test]
fn velocity_without_history_for_a_window_is_rejected() {
    let p = policy("[[scope.velocity]]\nwindow_seconds = 86_400\nmax_sats = 1_000_000");
    let v = view(vec![out(1, 1_000)], FEE);
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["velocity_history_missing"]);
    let wrong_window = with_spent(ctx(), 3600, 0);
    assert_eq!(
        codes(&p.evaluate(&v, &wrong_window)),
        ["velocity_history_missing"]
    );
    let twice = with_spent(with_spent(ctx(), DAY, 0), DAY, 0);
    assert_eq!(codes(&p.evaluate(&v, &twice)), ["velocity_history_missing"]);
}

#[test]
fn velocity_history_near_u64_max_reports_overflow_not_panic() {
    let p = policy("[[scope.velocity]]\nwindow_seconds = 86_400\nmax_sats = 1_000_000");
    let v = view(vec![out(1, 1_000)], FEE);
    let d = p.evaluate(&v, &with_spent(ctx(), DAY, u64::MAX));
    assert_eq!(codes(&d), ["amount_overflow"]);
}

// --- destinations -------------------------------------------------------------------

fn regtest_addr(n: u8) -> String {
    address_of(&wpkh_script(n), Network::Regtest).expect("p2wpkh has an address")
}

#[test]
fn allowlisted_address_passes_and_others_are_refused() {
    let p = policy(&format!(
        "[scope.destinations]\nallow_addresses = [\"{}\"]",
        regtest_addr(1)
    ));
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000)], FEE), &ctx()));
    let d = p.evaluate(&view(vec![out(1, 10_000), out(2, 10_000)], FEE), &ctx());
    assert_eq!(codes(&d), ["destination_not_allowed"]);
    assert!(
        d.violations()[0].message().starts_with("output 1 "),
        "{d:?}"
    );
}

#[test]
fn allowlist_matches_scripts_not_spelling() {
    // Upper-case bech32 is the same address.
    let p = policy(&format!(
        "[scope.destinations]\nallow_addresses = [\"{}\"]",
        regtest_addr(1).to_uppercase()
    ));
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000)], FEE), &ctx()));
}

#[test]
fn allowlist_does_not_apply_to_wallet_change() {
    let p = policy(&format!(
        "[scope.destinations]\nallow_addresses = [\"{}\"]",
        regtest_addr(1)
    ));
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000), change(50_000)], FEE), &ctx()));
}

#[test]
fn allowlisted_descriptor_matches_outputs_the_caller_attributes_to_it() {
    let p = policy("[scope.destinations]\nallow_descriptors = [\"raw(deadbeef)#89f8spxm\"]");
    assert_eq!(p.descriptors(KEY, Network::Regtest), ["raw(deadbeef)"]);
    let mut o = out(1, 10_000);
    let d = p.evaluate(&view(vec![o.clone()], FEE), &ctx());
    assert_eq!(codes(&d), ["destination_not_allowed"]);
    o.descriptors = vec!["raw(deadbeef)".into()];
    assert_approved(&p.evaluate(&view(vec![o.clone()], FEE), &ctx()));
    // With the checksum, as the descriptor is often written.
    o.descriptors = vec!["raw(deadbeef)#89f8spxm".into()];
    assert_approved(&p.evaluate(&view(vec![o], FEE), &ctx()));
}

#[test]
fn denylisted_address_is_refused_even_as_change() {
    let p = policy(&format!(
        "[scope.destinations]\ndeny_addresses = [\"{}\"]",
        address_of(&wpkh_script(200), Network::Regtest).expect("address")
    ));
    let d = p.evaluate(&view(vec![out(1, 10_000), change(10_000)], FEE), &ctx());
    assert_eq!(codes(&d), ["destination_denied"]);
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000)], FEE), &ctx()));
}

#[test]
fn denylisted_descriptor_is_refused() {
    let p = policy("[scope.destinations]\ndeny_descriptors = [\"raw(deadbeef)\"]");
    let mut o = out(1, 10_000);
    o.descriptors = vec!["raw(deadbeef)#89f8spxm".into()];
    assert_eq!(
        codes(&p.evaluate(&view(vec![o], FEE), &ctx())),
        ["destination_denied"]
    );
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000)], FEE), &ctx()));
}

// --- fees ---------------------------------------------------------------------------

#[test]
fn max_fee_sats_at_below_and_above() {
    let p = policy("[scope.fees]\nmax_fee_sats = 5_000");
    assert_approved(&p.evaluate(&view(vec![out(1, 100_000)], 5_000), &ctx()));
    assert_approved(&p.evaluate(&view(vec![out(1, 100_000)], 4_999), &ctx()));
    let d = p.evaluate(&view(vec![out(1, 100_000)], 5_001), &ctx());
    assert_eq!(codes(&d), ["fee_over_limit"]);
}

fn sized(mut v: policy::TxView, vsize: u64) -> policy::TxView {
    v.vsize_vb = vsize;
    v
}

#[test]
fn max_fee_rate_is_exact_rational_at_below_and_above() {
    let p = policy("[scope.fees]\nmax_fee_rate_sat_vb = 10");
    // 2000 sats / 200 vB = 10 sat/vB exactly
    assert_approved(&p.evaluate(&sized(view(vec![out(1, 100_000)], 2_000), 200), &ctx()));
    assert_approved(&p.evaluate(&sized(view(vec![out(1, 100_000)], 1_999), 200), &ctx()));
    let d = p.evaluate(&sized(view(vec![out(1, 100_000)], 2_001), 200), &ctx());
    assert_eq!(codes(&d), ["fee_rate_over_limit"]);
    assert!(
        d.violations()[0].message().contains("10.00 sat/vB"),
        "{d:?}"
    );
}

#[test]
fn min_fee_rate_at_below_and_above() {
    let p = policy("[scope.fees]\nmin_fee_rate_sat_vb = 2");
    assert_approved(&p.evaluate(&sized(view(vec![out(1, 100_000)], 400), 200), &ctx()));
    assert_approved(&p.evaluate(&sized(view(vec![out(1, 100_000)], 401), 200), &ctx()));
    let d = p.evaluate(&sized(view(vec![out(1, 100_000)], 399), 200), &ctx());
    assert_eq!(codes(&d), ["fee_rate_under_minimum"]);
}

#[test]
fn max_fee_share_in_basis_points_at_below_and_above() {
    let p = policy("[scope.fees]\nmax_fee_share_bps = 100"); // 1 %
    assert_approved(&p.evaluate(&view(vec![out(1, 100_000)], 1_000), &ctx()));
    assert_approved(&p.evaluate(&view(vec![out(1, 100_000)], 999), &ctx()));
    let d = p.evaluate(&view(vec![out(1, 100_000)], 1_001), &ctx());
    assert_eq!(codes(&d), ["fee_share_over_limit"]);
}

#[test]
fn fee_share_of_a_consolidation_is_measured_against_the_amount_moved() {
    let p = policy("[scope.fees]\nmax_fee_share_bps = 100");
    assert_approved(&p.evaluate(&view(vec![change(100_000)], 1_000), &ctx()));
    let d = p.evaluate(&view(vec![change(100_000)], 1_001), &ctx());
    assert_eq!(codes(&d), ["fee_share_over_limit"]);
}

// --- outputs ------------------------------------------------------------------------

#[test]
fn allowed_script_types_refuse_other_types() {
    let p = policy("[scope.outputs]\nallowed_script_types = [\"p2wpkh\", \"p2tr\"]");
    let ok = view(
        vec![out(1, 10_000), out_kind(ScriptType::P2tr, 2, 10_000)],
        FEE,
    );
    assert_approved(&p.evaluate(&ok, &ctx()));
    let bad = view(
        vec![out(1, 10_000), out_kind(ScriptType::P2pkh, 2, 10_000)],
        FEE,
    );
    assert_eq!(
        codes(&p.evaluate(&bad, &ctx())),
        ["script_type_not_allowed"]
    );
}

#[test]
fn max_outputs_at_below_and_above() {
    let p = policy("[scope.outputs]\nmax_outputs = 3");
    let outs = |n: u8| (1..=n).map(|i| out(i, 10_000)).collect::<Vec<_>>();
    assert_approved(&p.evaluate(&view(outs(3), FEE), &ctx()));
    assert_approved(&p.evaluate(&view(outs(2), FEE), &ctx()));
    assert_eq!(
        codes(&p.evaluate(&view(outs(4), FEE), &ctx())),
        ["too_many_outputs"]
    );
}

#[test]
fn dust_threshold_depends_on_script_type() {
    let p = policy("[scope.outputs]\nrefuse_dust = true");
    for (kind, threshold) in [
        (ScriptType::P2wpkh, 294),
        (ScriptType::P2wsh, 330),
        (ScriptType::P2tr, 330),
        (ScriptType::P2pkh, 546),
        (ScriptType::P2sh, 540),
    ] {
        let at = view(vec![out_kind(kind, 1, threshold)], FEE);
        assert_approved(&p.evaluate(&at, &ctx()));
        let above = view(vec![out_kind(kind, 1, threshold + 1)], FEE);
        assert_approved(&p.evaluate(&above, &ctx()));
        let below = view(vec![out_kind(kind, 1, threshold - 1)], FEE);
        let d = p.evaluate(&below, &ctx());
        assert_eq!(codes(&d), ["dust_output"], "{kind}");
        assert!(
            d.violations()[0]
                .message()
                .contains(&format!("threshold of {threshold} sats")),
            "{d:?}"
        );
    }
}

#[test]
fn dust_is_allowed_when_the_rule_is_off() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000_000");
    assert_approved(&p.evaluate(&view(vec![out(1, 1)], FEE), &ctx()));
}

#[test]
fn min_output_sats_applies_to_every_output_at_below_and_above() {
    let p = policy("[scope.outputs]\nmin_output_sats = 10_000");
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000), change(10_000)], FEE), &ctx()));
    assert_approved(&p.evaluate(&view(vec![out(1, 10_001)], FEE), &ctx()));
    let d = p.evaluate(&view(vec![out(1, 10_000), change(9_999)], FEE), &ctx());
    assert_eq!(codes(&d), ["output_below_minimum"]);
}

#[test]
fn change_must_belong_to_the_wallet_when_required() {
    let p = policy("[scope.outputs]\nchange_to_wallet = true");
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000), change(10_000)], FEE), &ctx()));
    let mut foreign = change(10_000);
    foreign.belongs_to_wallet = false;
    let d = p.evaluate(&view(vec![out(1, 10_000), foreign.clone()], FEE), &ctx());
    assert_eq!(codes(&d), ["change_not_to_wallet"]);
    // Without the rule, the same view passes (the output is then counted as sent).
    let lax = policy("[scope.outputs]\nmax_outputs = 5");
    assert_approved(&lax.evaluate(&view(vec![out(1, 10_000), foreign], FEE), &ctx()));
}

// --- time windows -------------------------------------------------------------------

fn at(now: u64) -> policy::Context {
    let mut c = ctx();
    c.now_unix = now;
    c
}

/// Monday 2024-01-01 00:00:00 UTC.
const MON: u64 = 1_704_067_200;

#[test]
fn time_window_start_is_inclusive_and_end_exclusive() {
    let p = policy(
        "[[scope.time_windows]]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n\
         start = \"09:00\"\nend = \"17:00\"",
    );
    let v = view(vec![out(1, 10_000)], FEE);
    let wed = MON + 2 * DAY;
    assert_approved(&p.evaluate(&v, &at(wed + 9 * 3600)));
    assert_approved(&p.evaluate(&v, &at(wed + 9 * 3600 + 1)));
    assert_eq!(
        codes(&p.evaluate(&v, &at(wed + 9 * 3600 - 1))),
        ["outside_time_window"]
    );
    assert_approved(&p.evaluate(&v, &at(wed + 17 * 3600 - 1)));
    assert_eq!(
        codes(&p.evaluate(&v, &at(wed + 17 * 3600))),
        ["outside_time_window"]
    );
    // Saturday noon is outside.
    let d = p.evaluate(&v, &at(MON + 5 * DAY + 12 * 3600));
    assert_eq!(codes(&d), ["outside_time_window"]);
    assert!(
        d.violations()[0].message().contains("sat 12:00:00 UTC"),
        "{d:?}"
    );
}

#[test]
fn time_window_past_midnight_belongs_to_its_start_day() {
    let p = policy("[[scope.time_windows]]\ndays = [\"fri\"]\nstart = \"22:00\"\nend = \"02:00\"");
    let v = view(vec![out(1, 10_000)], FEE);
    let fri = MON + 4 * DAY;
    let sat = MON + 5 * DAY;
    assert_eq!(
        codes(&p.evaluate(&v, &at(fri + 22 * 3600 - 1))),
        ["outside_time_window"]
    );
    assert_approved(&p.evaluate(&v, &at(fri + 22 * 3600)));
    assert_approved(&p.evaluate(&v, &at(sat + 2 * 3600 - 1)));
    assert_eq!(
        codes(&p.evaluate(&v, &at(sat + 2 * 3600))),
        ["outside_time_window"]
    );
    // Thursday night is not Friday's window.
    assert_eq!(
        codes(&p.evaluate(&v, &at(fri - 3600))),
        ["outside_time_window"]
    );
}

#[test]
fn time_window_may_end_at_24_00_and_any_window_suffices() {
    let p = policy(
        "[[scope.time_windows]]\ndays = [\"sun\"]\nstart = \"20:00\"\nend = \"24:00\"\n\
         [[scope.time_windows]]\ndays = [\"mon\"]\nstart = \"00:00\"\nend = \"01:00\"",
    );
    let v = view(vec![out(1, 10_000)], FEE);
    let sun = MON + 6 * DAY;
    assert_approved(&p.evaluate(&v, &at(sun + DAY - 1)));
    assert_approved(&p.evaluate(&v, &at(sun + DAY))); // next Monday 00:00
    assert_eq!(
        codes(&p.evaluate(&v, &at(sun + 20 * 3600 - 1))),
        ["outside_time_window"]
    );
}

// --- network check ------------------------------------------------------------------

#[test]
fn mainnet_address_never_passes_a_test_network_policy() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000_000");
    let mut o = out(1, 10_000);
    o.address = address_of(&o.script_pubkey, Network::Bitcoin);
    let d = p.evaluate(&view(vec![o], FEE), &ctx());
    assert_eq!(codes(&d), ["address_wrong_network"]);
}

#[test]
fn testnet_address_never_passes_a_mainnet_policy() {
    let text = scope_text(
        Network::Bitcoin,
        "[scope.limits]\nmax_per_tx_sats = 1_000_000",
    );
    let p = policy::Policy::from_toml_str(&text, "main.toml").expect("valid");
    let mut o = out(1, 10_000);
    o.address = address_of(&o.script_pubkey, Network::Testnet);
    let mut v = view(vec![o.clone()], FEE);
    v.network = Network::Bitcoin;
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["address_wrong_network"]);
    v.outputs[0].address = address_of(&o.script_pubkey, Network::Bitcoin);
    assert_approved(&p.evaluate(&v, &ctx()));
}

#[test]
fn a_view_for_a_network_without_a_scope_is_rejected() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000_000");
    let mut v = view(vec![out(1, 10_000)], FEE);
    v.network = Network::Testnet;
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["no_policy_for_key"]);
    let mut v = view(vec![out(1, 10_000)], FEE);
    v.key_id = "other".into();
    v.inputs[0].key_id = "other".into();
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["no_policy_for_key"]);
}

// --- built-in checks ----------------------------------------------------------------

#[test]
fn fee_must_equal_inputs_minus_outputs() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    let mut v = view(vec![out(1, 10_000)], FEE);
    v.fee_sats += 1;
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["fee_mismatch"]);
    let mut v = view(vec![out(1, 10_000)], FEE);
    v.inputs[0].amount_sats = 5_000;
    let d = p.evaluate(&v, &ctx());
    assert_eq!(codes(&d), ["fee_mismatch"]);
    assert!(
        d.violations()[0]
            .message()
            .contains("more than the 5000 sats"),
        "{d:?}"
    );
}

#[test]
fn inputs_must_belong_to_the_key_and_be_distinct() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    let mut v = view(vec![out(1, 10_000)], FEE);
    let mut second = v.inputs[0].clone();
    second.amount_sats = 0;
    v.inputs.push(second.clone());
    second.key_id = "someone-else".into();
    second.outpoint.vout = 7;
    v.inputs.push(second);
    assert_eq!(
        codes(&p.evaluate(&v, &ctx())),
        ["duplicate_input", "input_foreign_key"]
    );
}

#[test]
fn empty_transactions_are_rejected() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    let mut v = view(vec![], 0);
    v.inputs.clear();
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["no_inputs", "no_outputs"]);
}

#[test]
fn declared_script_type_and_address_must_match_the_script() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    let mut o = out(1, 10_000);
    o.script_type = ScriptType::P2tr;
    assert_eq!(
        codes(&p.evaluate(&view(vec![o], FEE), &ctx())),
        ["script_type_mismatch"]
    );
    let mut o = out(1, 10_000);
    o.address = address_of(&wpkh_script(2), Network::Regtest);
    assert_eq!(
        codes(&p.evaluate(&view(vec![o], FEE), &ctx())),
        ["address_mismatch"]
    );
    let mut o = out(1, 10_000);
    o.address = Some("not-an-address".into());
    assert_eq!(
        codes(&p.evaluate(&view(vec![o], FEE), &ctx())),
        ["address_invalid"]
    );
}

#[test]
fn op_return_with_value_is_refused_and_without_value_is_allowed() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    let data = out_kind(ScriptType::OpReturn, 1, 0);
    assert_eq!(data.address, None);
    assert_approved(&p.evaluate(&view(vec![out(1, 10_000), data.clone()], FEE), &ctx()));
    let burn = policy::TxOutput {
        amount_sats: 1,
        ..data
    };
    assert_eq!(
        codes(&p.evaluate(&view(vec![out(1, 10_000), burn], FEE), &ctx())),
        ["burn_output"]
    );
}

#[test]
fn vsize_must_be_within_consensus_bounds() {
    let p = policy("[scope.fees]\nmax_fee_rate_sat_vb = 10");
    let v = sized(view(vec![out(1, 10_000)], FEE), 0);
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["invalid_vsize"]);
    let v = sized(view(vec![out(1, 10_000)], FEE), policy::MAX_TX_VSIZE_VB + 1);
    assert_eq!(codes(&p.evaluate(&v, &ctx())), ["invalid_vsize"]);
    let v = sized(view(vec![out(1, 10_000)], FEE), policy::MAX_TX_VSIZE_VB);
    assert_approved(&p.evaluate(&v, &ctx()));
}

#[test]
fn amounts_beyond_the_bitcoin_supply_are_rejected() {
    let p = policy("[scope.outputs]\nmax_outputs = 5");
    // inputs: MAX_MONEY + 1 (one above), outputs: MAX_MONEY (at the limit)
    let v = view(vec![out(1, policy::MAX_MONEY_SATS)], 1);
    let d = p.evaluate(&v, &ctx());
    assert_eq!(codes(&d), ["amount_overflow"]);
    assert!(
        d.violations()[0]
            .message()
            .starts_with("input amounts add up to"),
        "{d:?}"
    );
    let v = view(vec![out(1, policy::MAX_MONEY_SATS - 1)], 1);
    assert_approved(&p.evaluate(&v, &ctx()));
}

#[test]
fn overflowing_input_sum_is_an_explicit_violation() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000");
    let mut v = view(vec![out(1, 10_000)], FEE);
    let mut extra = v.inputs[0].clone();
    extra.outpoint.vout = 2;
    extra.amount_sats = u64::MAX;
    v.inputs.push(extra);
    let d = p.evaluate(&v, &ctx());
    assert_eq!(codes(&d), ["amount_overflow", "amount_over_limit"]);
    assert!(d.violations()[0]
        .message()
        .starts_with("input amounts add up to more than"));
}

// --- every failed rule is listed ----------------------------------------------------

#[test]
fn every_failed_rule_is_listed_in_a_fixed_order() {
    let p = policy(
        "[scope.limits]\nmax_per_tx_sats = 10_000\n\
         [scope.fees]\nmax_fee_sats = 500\n\
         [scope.outputs]\nmax_outputs = 1\nrefuse_dust = true\n\
         [[scope.time_windows]]\ndays = [\"sat\"]\nstart = \"00:00\"\nend = \"24:00\"",
    );
    let v = view(vec![out(1, 20_000), out(2, 10)], FEE);
    let d = p.evaluate(&v, &ctx());
    assert_eq!(
        codes(&d),
        [
            "amount_over_limit",
            "fee_over_limit",
            "too_many_outputs",
            "dust_output",
            "outside_time_window"
        ]
    );
    assert!(matches!(d, Decision::Reject(_)));
}
