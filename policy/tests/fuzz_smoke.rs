//! Runs the bodies of the fuzz targets (`policy/fuzz/`) on stable Rust over a few
//! hundred generated and mutated inputs, so `cargo test` exercises them.

mod common;

use common::*;
use policy::fuzzing::{policy_parser, tx_view_decoder, FUZZ_POLICY};
use policy::{EvalRequest, Policy};
use proptest::prelude::*;
use proptest::test_runner::Config;

const TREASURY: &str = include_str!("../examples/treasury.toml");
const REQUEST: &str = include_str!("../examples/eval-request.json");

fn policy_seeds() -> Vec<String> {
    vec![
        TREASURY.to_string(),
        FUZZ_POLICY.to_string(),
        scope_text(
            policy::Network::Regtest,
            "[scope.limits]\nmax_per_tx_sats = 5",
        ),
        "version = 1\n".to_string(),
        String::new(),
    ]
}

fn request_seeds() -> Vec<String> {
    let mut v = vec![REQUEST.to_string()];
    let extra = EvalRequest {
        view: view(vec![out(1, 5_000), change(9_000)], 321),
        context: with_spent(with_approval(ctx(), "alice", "cfo"), DAY, 42),
    };
    v.push(serde_json::to_string_pretty(&extra).expect("serializes"));
    v
}

/// One byte-, line- or token-level edit.
#[derive(Debug, Clone)]
enum Edit {
    DeleteRange(usize, usize),
    Insert(usize, Vec<u8>),
    InsertToken(usize, usize),
    FlipByte(usize, u8),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
}

const TOKENS: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1e400",
    "\"\"",
    "[]",
    "{}",
    "[[scope]]",
    "[scope.fees]",
    "[[scope.approvals]]",
    "= ",
    "\"24:00\"",
    "\"00:00\"",
    "true",
    "null",
    "\"\\u0000\"",
    "#",
    "\n",
    "\"",
    ",",
    ":",
    "é",
    "version = 1\n",
    "required = 0\n",
    "max_outputs = 0\n",
    "\"bc1q\"",
    "key_id = \"k\"\n",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::DeleteRange(a, n)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Edit::InsertToken(a, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::FlipByte(a, b)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for e in edits {
        let at = |x: usize, len: usize| if len == 0 { 0 } else { x % (len + 1) };
        match e {
            Edit::DeleteRange(a, n) => {
                let s = at(*a, b.len());
                let end = (s + n).min(b.len());
                b.drain(s..end);
            }
            Edit::Insert(a, bytes) => {
                let s = at(*a, b.len());
                b.splice(s..s, bytes.iter().copied());
            }
            Edit::InsertToken(a, t) => {
                let s = at(*a, b.len());
                b.splice(s..s, TOKENS[*t].bytes());
            }
            Edit::FlipByte(a, x) => {
                if !b.is_empty() {
                    let i = *a % b.len();
                    b[i] ^= x | 1;
                }
            }
            Edit::DuplicateLine(a) | Edit::DeleteLine(a) | Edit::SwapLines(a, _) => {
                let mut lines: Vec<Vec<u8>> =
                    b.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect();
                let i = *a % lines.len();
                match e {
                    Edit::DuplicateLine(_) => {
                        let l = lines[i].clone();
                        lines.insert(i, l);
                    }
                    Edit::DeleteLine(_) => {
                        lines.remove(i);
                    }
                    Edit::SwapLines(_, j) => {
                        let j = *j % lines.len();
                        lines.swap(i, j);
                    }
                    _ => {}
                }
                b = lines.join(&b'\n');
            }
            Edit::Truncate(a) => {
                let s = at(*a, b.len());
                b.truncate(s);
            }
        }
    }
    b
}

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn policy_parser_survives_mutated_policies(
        seed in 0usize..5,
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let input = apply(&policy_seeds()[seed], &edits);
        policy_parser(&input);
    }

    #[test]
    fn policy_parser_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        policy_parser(&data);
    }

    #[test]
    fn tx_view_decoder_survives_mutated_requests(
        seed in 0usize..2,
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let input = apply(&request_seeds()[seed], &edits);
        tx_view_decoder(&input);
    }

    #[test]
    fn tx_view_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        tx_view_decoder(&data);
    }

    #[test]
    fn tx_view_decoder_survives_extreme_values(
        field in 0usize..8,
        value in prop_oneof![
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!(0)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!(1.5)),
            Just(serde_json::json!("")),
            Just(serde_json::json!(null)),
            Just(serde_json::json!([])),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
        ],
    ) {
        let mut v: serde_json::Value = serde_json::from_str(REQUEST).expect("json");
        let slot = match field {
            0 => &mut v["view"]["fee_sats"],
            1 => &mut v["view"]["vsize_vb"],
            2 => &mut v["view"]["inputs"][0]["amount_sats"],
            3 => &mut v["view"]["outputs"][0]["amount_sats"],
            4 => &mut v["view"]["outputs"][1]["amount_sats"],
            5 => &mut v["context"]["now_unix"],
            6 => &mut v["context"]["window_spent"][1]["spent_sats"],
            _ => &mut v["view"]["outputs"][0]["address"],
        };
        *slot = value;
        tx_view_decoder(v.to_string().as_bytes());
    }
}

/// Guards the smoke tests against vacuity: the mutators must keep a share of inputs
/// valid so the post-parse paths of the fuzz bodies run too.
#[test]
fn mutated_inputs_still_reach_the_valid_paths() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (0usize..5, proptest::collection::vec(edit(), 0..4));
    let (mut policies_ok, mut requests_ok) = (0, 0);
    for _ in 0..300 {
        let (seed, edits) = strategy.new_tree(&mut runner).expect("generates").current();
        if let Ok(text) = String::from_utf8(apply(&policy_seeds()[seed], &edits)) {
            if Policy::from_toml_str(&text, "m.toml").is_ok() {
                policies_ok += 1;
            }
        }
        let req = apply(&request_seeds()[seed % 2], &edits);
        if EvalRequest::from_json_slice(&req).is_ok() {
            requests_ok += 1;
        }
    }
    assert!(
        policies_ok >= 30,
        "only {policies_ok} of 300 mutated policies were valid"
    );
    assert!(
        requests_ok >= 30,
        "only {requests_ok} of 300 mutated requests were valid"
    );
}

#[test]
fn fuzz_seed_files_are_the_examples() {
    assert_eq!(
        include_str!("../fuzz/seeds/policy_parser/treasury.toml"),
        TREASURY
    );
    assert_eq!(
        include_str!("../fuzz/seeds/tx_view_decoder/eval-request.json"),
        REQUEST
    );
}
