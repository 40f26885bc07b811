//! JSON decoding of views and requests (bounds, unknown fields) and the CLI reports.

mod common;

use common::*;
use policy::report::{DecisionReport, PolicyErrorReport, PolicySummary};
use policy::{
    Context, DecisionKind, DecodeError, EvalRequest, Policy, TxView, MAX_VIEW_JSON_BYTES,
};

const EXAMPLE_POLICY: &str = include_str!("../examples/treasury.toml");
const EXAMPLE_REQUEST: &str = include_str!("../examples/eval-request.json");

fn example_request_value() -> serde_json::Value {
    serde_json::from_str(EXAMPLE_REQUEST).expect("example request is json")
}

fn decode_value(v: &serde_json::Value) -> Result<EvalRequest, DecodeError> {
    EvalRequest::from_json_slice(v.to_string().as_bytes())
}

#[test]
fn example_request_needs_a_cfo_approval_under_the_example_policy() {
    let p = Policy::from_toml_str(EXAMPLE_POLICY, "treasury.toml").expect("valid");
    let req = EvalRequest::from_json_slice(EXAMPLE_REQUEST.as_bytes()).expect("valid request");
    let d = p.evaluate(&req.view, &req.context);
    let report = DecisionReport::new(&p, &req.view, &d);
    assert_eq!(report.decision, DecisionKind::NeedsApproval);
    assert_eq!(report.missing_approvals.len(), 1);
    assert_eq!(report.missing_approvals[0].role.as_deref(), Some("cfo"));
    assert_eq!(
        report.missing_approvals[0].tier_above_sats,
        Some(100_000_000)
    );
    let text = report.to_text();
    assert!(text.starts_with("decision: needs_approval\n"), "{text}");
    assert!(
        text.contains(
            "missing: 1 more approval in role `cfo` (tier for amounts above 100000000 sats)"
        ),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["decision"], "needs_approval");
    assert_eq!(json["policy_hash"], p.hash().to_hex());
    assert_eq!(json["view_digest"], req.view.digest().to_hex());
    assert_eq!(json["missing_approvals"][0]["count"], 1);

    // With the CFO's approval the example is approved.
    let mut v = example_request_value();
    v["context"]["approvals"]
        .as_array_mut()
        .expect("approvals array")
        .push(serde_json::json!({"approver": "bob", "role": "cfo"}));
    let req = decode_value(&v).expect("valid");
    let d = p.evaluate(&req.view, &req.context);
    assert_eq!(
        DecisionReport::new(&p, &req.view, &d).decision,
        DecisionKind::Approve
    );
}

#[test]
fn reject_report_lists_codes_and_messages() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000\n[scope.outputs]\nmax_outputs = 1");
    let v = view(vec![out(1, 5_000), out(2, 5_000)], 100);
    let d = p.evaluate(&v, &ctx());
    let r = DecisionReport::new(&p, &v, &d);
    assert_eq!(r.decision, DecisionKind::Reject);
    let got: Vec<_> = r.violations.iter().map(|v| v.code.as_str()).collect();
    assert_eq!(got, ["amount_over_limit", "too_many_outputs"]);
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
    assert_eq!(json["violations"][1]["code"], "too_many_outputs");
    assert_eq!(
        json["violations"][1]["message"],
        "transaction has 2 outputs, more than the limit of 1"
    );
    assert!(r
        .to_text()
        .contains("violation too_many_outputs: transaction has 2 outputs"));
}

#[test]
fn policy_error_report_carries_location() {
    let e = Policy::from_toml_str("version = 1\nbogus = 1\n", "p.toml").expect_err("invalid");
    let r = PolicyErrorReport::new(&e);
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
    assert_eq!(json["ok"], false);
    assert_eq!(json["file"], "p.toml");
    assert_eq!(json["line"], 2);
    assert_eq!(json["column"], 1);
    assert_eq!(json["message"], e.to_string());
}

#[test]
fn policy_summary_of_a_rule_free_scope_says_so() {
    let p = policy("");
    let text = PolicySummary::new(&p).to_text();
    assert!(
        text.contains("scope k1 on regtest:\n  (no rules beyond the built-in checks)"),
        "{text}"
    );
}

#[test]
fn view_json_round_trips() {
    let v = view(vec![out(1, 5_000), change(7_000)], 100);
    let json = serde_json::to_vec(&v).expect("serializes");
    assert_eq!(TxView::from_json_slice(&json), Ok(v));
}

#[test]
fn oversized_json_is_refused_before_parsing() {
    let big = vec![b' '; MAX_VIEW_JSON_BYTES + 1];
    assert_eq!(
        EvalRequest::from_json_slice(&big),
        Err(DecodeError::TooLarge {
            size: MAX_VIEW_JSON_BYTES + 1,
            limit: MAX_VIEW_JSON_BYTES
        })
    );
    assert!(matches!(
        TxView::from_json_slice(&big),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        Context::from_json_slice(&big),
        Err(DecodeError::TooLarge { .. })
    ));
}

fn decode_err(v: &serde_json::Value) -> String {
    match decode_value(v) {
        Ok(_) => panic!("decoded unexpectedly: {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_fields_are_refused_everywhere() {
    let mut v = example_request_value();
    v["view"]["outputs"][0]["colour"] = serde_json::json!("blue");
    let e = decode_err(&v);
    assert!(e.contains("unknown field `colour`"), "{e}");
    let mut v = example_request_value();
    v["context"]["now"] = serde_json::json!(1);
    assert!(decode_err(&v).contains("unknown field `now`"));
    let mut v = example_request_value();
    v["extra"] = serde_json::json!(1);
    assert!(decode_err(&v).contains("unknown field `extra`"));
}

#[test]
fn malformed_values_are_refused_with_location() {
    let mut v = example_request_value();
    v["view"]["fee_sats"] = serde_json::json!(-1);
    assert!(decode_err(&v).contains("invalid value: integer `-1`, expected u64"));
    let mut v = example_request_value();
    v["view"]["txid"] = serde_json::json!("abcd");
    assert!(decode_err(&v).starts_with("invalid json at line 1, column"));
    let mut v = example_request_value();
    v["view"]["network"] = serde_json::json!("mainnet");
    assert!(decode_err(&v).contains("unknown variant `mainnet`"));
    let mut v = example_request_value();
    v["view"]["outputs"][0]["script_pubkey"] = serde_json::json!("zz");
    decode_err(&v);
    let mut v = example_request_value();
    v["view"]["inputs"][0]["amount_sats"] = serde_json::json!(18446744073709551616u128 as f64);
    decode_err(&v);
    let e = EvalRequest::from_json_slice(b"{\n  \"view\": 3\n}").expect_err("wrong type");
    assert!(matches!(e, DecodeError::Json { line: 2, .. }), "{e:?}");
}
