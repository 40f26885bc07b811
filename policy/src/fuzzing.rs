//! Bodies of the fuzz targets in `policy/fuzz/` (`policy_parser`, `tx_view_decoder`).
//!
//! They live here so the stable test suite can run them over generated inputs
//! (`tests/fuzz_smoke.rs`) while `cargo fuzz` runs them under libFuzzer. Each body
//! accepts any bytes and panics only when an invariant of this crate is broken.

use crate::report::{DecisionReport, PolicyErrorReport, PolicySummary};
use crate::{Context, EvalRequest, Network, Policy, PolicyError, TxView};

/// Policy used by [`tx_view_decoder`]: every rule enabled, for key `fuzz` on
/// regtest and on bitcoin.
pub const FUZZ_POLICY: &str = r#"
version = 1
name = "fuzz"

[[scope]]
key_id = "fuzz"
network = "regtest"
[scope.limits]
max_per_tx_sats = 100_000_000
[[scope.velocity]]
window_seconds = 86_400
max_sats = 500_000_000
[scope.destinations]
deny_addresses = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]
allow_descriptors = ["raw(deadbeef)#89f8spxm"]
[scope.fees]
max_fee_sats = 1_000_000
min_fee_rate_sat_vb = 1
max_fee_rate_sat_vb = 500
max_fee_share_bps = 500
[scope.outputs]
allowed_script_types = ["p2wpkh", "p2tr", "p2wsh", "op_return"]
max_outputs = 10
refuse_dust = true
min_output_sats = 1_000
change_to_wallet = true
[[scope.time_windows]]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "20:00"
[[scope.time_windows]]
start = "22:00"
end = "02:00"
[[scope.approvals]]
required = 1
[[scope.approvals]]
above_sats = 10_000_000
required = 2
roles = ["treasurer", "cfo"]
min_per_role = { cfo = 1 }

[[scope]]
key_id = "fuzz"
network = "bitcoin"
[scope.limits]
max_per_tx_sats = 1_000_000
"#;

fn fuzz_policy() -> Policy {
    Policy::from_toml_str(FUZZ_POLICY, "fuzz.toml").expect("FUZZ_POLICY is a valid policy")
}

/// Parses arbitrary bytes as a policy. Checks that errors carry a location inside the
/// text, and that a valid policy hashes and evaluates deterministically.
pub fn policy_parser(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml_str(text, "fuzz.toml") {
        Err(e) => {
            let lines = text.matches('\n').count() + 1;
            if let PolicyError::Invalid {
                line,
                column,
                reason,
                ..
            } = &e
            {
                assert!(
                    *line >= 1 && *line <= lines,
                    "error line {line} outside 1..={lines}"
                );
                assert!(*column >= 1, "error column is zero");
                assert!(!reason.is_empty(), "error without a reason");
            }
            let _ = PolicyErrorReport::new(&e).to_json();
        }
        Ok(p) => {
            let again = Policy::from_toml_str(text, "fuzz.toml")
                .expect("the same text parsed a moment ago");
            assert_eq!(p.hash(), again.hash(), "policy hash is not deterministic");
            assert_eq!(p, again, "policy parsing is not deterministic");
            let _ = PolicySummary::new(&p).to_text();
            let ctx = Context {
                now_unix: 1_700_000_000,
                window_spent: p
                    .scopes()
                    .flat_map(|(k, n)| p.velocity_windows(k, n))
                    .map(|w| crate::WindowSpent {
                        window_seconds: w,
                        spent_sats: 0,
                    })
                    .collect(),
                approvals: Vec::new(),
                initiator: "fuzzer".into(),
            };
            let keys: Vec<(String, Network)> =
                p.scopes().map(|(k, n)| (k.to_string(), n)).collect();
            for (key, network) in keys {
                let view = sample_view(&key, network);
                let a = DecisionReport::new(&p, &view, &p.evaluate(&view, &ctx));
                let b = DecisionReport::new(&p, &view, &p.evaluate(&view, &ctx));
                assert_eq!(a, b, "evaluation is not deterministic");
            }
        }
    }
}

/// Decodes arbitrary bytes as an evaluation request (and as a bare view and context),
/// then evaluates it against [`FUZZ_POLICY`]: once as given and once re-targeted at the
/// policy's scope so the rules run. Checks determinism and JSON round-trips.
pub fn tx_view_decoder(data: &[u8]) {
    let _ = TxView::from_json_slice(data);
    let _ = Context::from_json_slice(data);
    let Ok(req) = EvalRequest::from_json_slice(data) else {
        return;
    };
    let json = serde_json::to_vec(&req).expect("a decoded request serializes");
    let back = EvalRequest::from_json_slice(&json);
    // A re-encoding can only fail by growing past the size limit.
    if let Ok(back) = back {
        assert_eq!(back, req, "json round trip changed the request");
        assert_eq!(back.view.digest(), req.view.digest());
    }
    let policy = fuzz_policy();
    let mut targeted = req.view.clone();
    targeted.key_id = "fuzz".into();
    targeted.network = Network::Regtest;
    for i in &mut targeted.inputs {
        i.key_id = "fuzz".into();
    }
    for view in [&req.view, &targeted] {
        let a = DecisionReport::new(&policy, view, &policy.evaluate(view, &req.context));
        let b = DecisionReport::new(&policy, view, &policy.evaluate(view, &req.context));
        assert_eq!(a, b, "evaluation is not deterministic");
        let _ = a.to_text();
    }
}

/// A small, well-formed view for `key_id` on `network` (used by [`policy_parser`]).
pub fn sample_view(key_id: &str, network: Network) -> TxView {
    use bitcoin::hashes::Hash;
    use bitcoin::{OutPoint, ScriptBuf, Txid, WPubkeyHash};

    let spk = ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([7; 20]));
    let address = bitcoin::Address::from_script(&spk, network.to_bitcoin())
        .expect("p2wpkh scripts always have an address")
        .to_string();
    TxView {
        key_id: key_id.to_string(),
        network,
        txid: Txid::from_byte_array([1; 32]),
        inputs: vec![crate::TxInput {
            outpoint: OutPoint::new(Txid::from_byte_array([2; 32]), 0),
            amount_sats: 100_000,
            key_id: key_id.to_string(),
        }],
        outputs: vec![crate::TxOutput {
            address: Some(address),
            script_pubkey: spk,
            script_type: crate::ScriptType::P2wpkh,
            amount_sats: 90_000,
            is_change: false,
            belongs_to_wallet: false,
            descriptors: Vec::new(),
        }],
        fee_sats: 10_000,
        vsize_vb: 110,
    }
}
