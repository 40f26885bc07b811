//! Malformed policy files fail with the file, line, column and a precise reason.

mod common;

use common::load_err;
use policy::{Policy, PolicyError, MAX_POLICY_BYTES};

const HEAD: &str = "version = 1\n[[scope]]\nkey_id = \"k1\"\nnetwork = \"bitcoin\"\n";

fn with(body: &str) -> String {
    format!("{HEAD}{body}\n")
}

#[test]
fn unknown_field_names_the_line_and_the_field() {
    assert_eq!(
        load_err(&with("max_amount = 5")),
        "bad.toml:5:1: unknown field `max_amount`, expected one of `key_id`, `network`, \
         `limits`, `velocity`, `destinations`, `fees`, `outputs`, `time_windows`, `approvals`"
    );
    assert_eq!(
        load_err(&with("[scope.fees]\nmax_fee = 5")),
        "bad.toml:6:1: unknown field `max_fee`, expected one of `max_fee_sats`, \
         `min_fee_rate_sat_vb`, `max_fee_rate_sat_vb`, `max_fee_share_bps`"
    );
    assert_eq!(
        load_err("version = 1\nextra = true\n"),
        "bad.toml:2:1: unknown field `extra`, expected one of `version`, `name`, `scope`"
    );
}

#[test]
fn toml_syntax_errors_are_located() {
    assert_eq!(
        load_err("version = 1\n[[scope]\n"),
        "bad.toml:2:8: invalid table header: expected `.`, `]]`"
    );
    assert_eq!(
        load_err("version = 1\nname = \"unterminated\n"),
        "bad.toml:2:21: invalid basic string"
    );
    assert_eq!(
        load_err("version = 1\nname =\n"),
        "bad.toml:2:7: invalid string: expected `\"`, `'`"
    );
    // At the very end of the text the toml crate gives no message of its own.
    assert_eq!(
        load_err("version = 1\nname ="),
        "bad.toml:2:7: invalid toml: a value is missing or malformed here"
    );
}

#[test]
fn version_must_be_present_and_supported() {
    assert_eq!(
        load_err("[[scope]]\nkey_id = \"k\"\nnetwork = \"bitcoin\"\n"),
        "bad.toml:1:1: missing field `version`"
    );
    assert_eq!(
        load_err("version = 2\n"),
        "bad.toml:1:11: unsupported policy version 2; this build reads version 1"
    );
    assert_eq!(
        load_err("version = \"1\"\n"),
        "bad.toml:1:11: invalid type: string \"1\", expected u32"
    );
}

#[test]
fn a_policy_without_scopes_is_refused() {
    assert_eq!(
        load_err("version = 1\n"),
        "bad.toml:1:1: policy defines no [[scope]]; every transaction would be rejected"
    );
}

#[test]
fn scope_fields_are_checked() {
    assert_eq!(
        load_err("version = 1\n[[scope]]\nnetwork = \"bitcoin\"\n"),
        "bad.toml:2:1: missing field `key_id`"
    );
    assert_eq!(
        load_err("version = 1\n[[scope]]\nkey_id = \"k1\"\nnetwork = \"mainnet\"\n"),
        "bad.toml:4:11: unknown variant `mainnet`, expected one of `bitcoin`, `testnet`, \
         `testnet4`, `signet`, `regtest`"
    );
    assert_eq!(
        load_err("version = 1\n[[scope]]\nkey_id = \"\"\nnetwork = \"bitcoin\"\n"),
        "bad.toml:3:10: key_id is empty"
    );
    assert_eq!(
        load_err("version = 1\n[[scope]]\nkey_id = \"a b\"\nnetwork = \"bitcoin\"\n"),
        "bad.toml:3:10: key_id `a b` contains ' '; allowed are ascii letters, digits and . _ - : @"
    );
    assert_eq!(
        load_err(&format!(
            "{HEAD}[[scope]]\nkey_id = \"k1\"\nnetwork = \"bitcoin\"\n"
        )),
        "bad.toml:6:10: a second [[scope]] for key `k1` on bitcoin; merge them into one"
    );
}

#[test]
fn zero_and_negative_limits_are_refused() {
    assert_eq!(
        load_err(&with("[scope.limits]\nmax_per_tx_sats = 0")),
        "bad.toml:6:19: max_per_tx_sats must be greater than zero"
    );
    assert_eq!(
        load_err(&with("[scope.limits]\nmax_per_tx_sats = -1")),
        "bad.toml:6:19: invalid value: integer `-1`, expected u64"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.velocity]]\nwindow_seconds = 0\nmax_sats = 5"
        )),
        "bad.toml:6:18: window_seconds must be greater than zero"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.velocity]]\nwindow_seconds = 60\nmax_sats = 0"
        )),
        "bad.toml:7:12: max_sats must be greater than zero"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.velocity]]\nwindow_seconds = 60\nmax_sats = 5\n\
             [[scope.velocity]]\nwindow_seconds = 60\nmax_sats = 9"
        )),
        "bad.toml:9:18: a second velocity limit for window_seconds = 60"
    );
    assert_eq!(
        load_err(&with("[scope.fees]\nmax_fee_sats = 0")),
        "bad.toml:6:16: max_fee_sats must be greater than zero"
    );
    assert_eq!(
        load_err(&with("[scope.outputs]\nmax_outputs = 0")),
        "bad.toml:6:15: max_outputs must be greater than zero"
    );
    assert_eq!(
        load_err(&with("[scope.outputs]\nmin_output_sats = 0")),
        "bad.toml:6:19: min_output_sats must be greater than zero"
    );
}

#[test]
fn fee_bounds_must_be_consistent() {
    assert_eq!(
        load_err(&with(
            "[scope.fees]\nmin_fee_rate_sat_vb = 20\nmax_fee_rate_sat_vb = 10"
        )),
        "bad.toml:6:23: min_fee_rate_sat_vb (20) is greater than max_fee_rate_sat_vb (10)"
    );
    assert_eq!(
        load_err(&with("[scope.fees]\nmax_fee_share_bps = 10001")),
        "bad.toml:6:21: max_fee_share_bps (10001) is more than 10000 (100 %)"
    );
}

#[test]
fn malformed_or_wrong_network_addresses_are_refused() {
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\nallow_addresses = [\"tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx\"]"
        )),
        "bad.toml:6:20: address `tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx` in \
         allow_addresses is not valid on bitcoin"
    );
    let e = load_err(&with(
        "[scope.destinations]\ndeny_addresses = [\"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5\"]",
    ));
    assert!(
        e.starts_with(
            "bad.toml:6:19: `bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5` in deny_addresses \
             is not a valid address: "
        ),
        "{e}"
    );
    assert_eq!(
        load_err(&with("[scope.destinations]\nallow_addresses = []")),
        "bad.toml:6:19: allow_addresses is empty; remove it if no address is meant"
    );
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\nallow_addresses = [\n  \"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\",\n  \
             \"BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4\",\n]"
        )),
        "bad.toml:8:3: address `BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4` in allow_addresses \
         is listed twice (also as `bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4`)"
    );
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\nallow_addresses = [\"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\"]\n\
             deny_addresses = [\"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\"]"
        )),
        "bad.toml:7:19: address `bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4` is in both \
         allow_addresses and deny_addresses"
    );
}

#[test]
fn malformed_descriptors_are_refused() {
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\nallow_descriptors = [\"raw(deadbeef)#89f8spxn\"]"
        )),
        "bad.toml:6:22: allow_descriptors: descriptor checksum `89f8spxn` is wrong \
         (expected `89f8spxm`)"
    );
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\ndeny_descriptors = [\"wpkh(abc\"]"
        )),
        "bad.toml:6:21: deny_descriptors: descriptor has unbalanced brackets"
    );
    assert_eq!(
        load_err(&with(
            "[scope.destinations]\nallow_descriptors = [\"raw(deadbeef)\"]\n\
             deny_descriptors = [\"raw(deadbeef)#89f8spxm\"]"
        )),
        "bad.toml:7:20: descriptor `raw(deadbeef)` is in both allow_descriptors and \
         deny_descriptors"
    );
}

#[test]
fn script_type_lists_are_checked() {
    assert_eq!(
        load_err(&with(
            "[scope.outputs]\nallowed_script_types = [\"p2wpkh\", \"p2wpk\"]"
        )),
        "bad.toml:6:35: unknown variant `p2wpk`, expected one of `p2pkh`, `p2sh`, `p2wpkh`, \
         `p2wsh`, `p2tr`, `op_return`, `other`"
    );
    assert_eq!(
        load_err(&with(
            "[scope.outputs]\nallowed_script_types = [\"p2tr\", \"p2tr\"]"
        )),
        "bad.toml:6:33: script type `p2tr` is listed twice in allowed_script_types"
    );
    assert_eq!(
        load_err(&with("[scope.outputs]\nallowed_script_types = []")),
        "bad.toml:6:24: allowed_script_types is empty; remove it to allow every script type"
    );
}

#[test]
fn impossible_time_windows_are_refused() {
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\nstart = \"09:00\"\nend = \"09:00\""
        )),
        "bad.toml:7:7: time window start and end are both 09:00; the window would be empty \
         (remove time_windows to allow any time)"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\nstart = \"9:00\"\nend = \"17:00\""
        )),
        "bad.toml:6:9: start `9:00` is not a time of day in HH:MM form (UTC)"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\nstart = \"24:00\"\nend = \"17:00\""
        )),
        "bad.toml:6:9: start `24:00` is out of range (00:00 to 23:59)"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\nstart = \"08:00\"\nend = \"24:01\""
        )),
        "bad.toml:7:7: end `24:01` is out of range (00:00 to 24:00)"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\ndays = [\"mon\", \"funday\"]\nstart = \"08:00\"\nend = \"17:00\""
        )),
        "bad.toml:6:16: unknown day `funday`; expected one of mon, tue, wed, thu, fri, sat, sun"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.time_windows]]\ndays = [\"mon\", \"mon\"]\nstart = \"08:00\"\nend = \"17:00\""
        )),
        "bad.toml:6:16: day `mon` is listed twice"
    );
}

#[test]
fn impossible_approval_requirements_are_refused() {
    assert_eq!(
        load_err(&with("[[scope.approvals]]\nrequired = 0")),
        "bad.toml:6:12: required must be at least 1; remove the [[scope.approvals]] table instead"
    );
    assert_eq!(
        load_err(&with("[[scope.approvals]]\nrequired = 101")),
        "bad.toml:6:12: required (101) is more than 100"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.approvals]]\nrequired = 3\napprovers = [\"alice\", \"bob\"]"
        )),
        "bad.toml:6:12: required (3) is more than the 2 listed approvers"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.approvals]]\nrequired = 2\napprovers = [\"alice\", \"alice\"]"
        )),
        "bad.toml:7:23: approver `alice` is listed twice in approvers"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.approvals]]\nrequired = 1\nroles = [\"treasurer\"]\nmin_per_role = { cfo = 1 }"
        )),
        "bad.toml:8:24: min_per_role names role `cfo`, which is not in roles"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.approvals]]\nrequired = 1\nmin_per_role = { cfo = 1, treasurer = 1 }"
        )),
        "bad.toml:6:12: required (1) is less than the 2 approvals min_per_role asks for"
    );
    assert_eq!(
        load_err(&with(
            "[[scope.approvals]]\nrequired = 1\nmin_per_role = { cfo = 0 }"
        )),
        "bad.toml:7:24: min_per_role for `cfo` must be at least 1"
    );
    assert_eq!(
        load_err(&with("[[scope.approvals]]\nrequired = 1\nroles = []")),
        "bad.toml:7:9: roles is empty; remove it to accept any"
    );
}

#[test]
fn oversized_policy_is_refused_before_parsing() {
    let text = format!("version = 1\n#{}\n", "x".repeat(MAX_POLICY_BYTES));
    let e = Policy::from_toml_str(&text, "big.toml").expect_err("over the size limit");
    assert!(matches!(e, PolicyError::TooLarge { .. }));
    assert_eq!(e.file(), "big.toml");
    assert_eq!(e.line(), None);
    assert_eq!(
        e.to_string(),
        format!(
            "big.toml: policy is {} bytes, larger than the limit of {MAX_POLICY_BYTES} bytes",
            text.len()
        )
    );
}

#[test]
fn error_accessors_expose_file_line_and_reason() {
    let e = Policy::from_toml_str(&with("[scope.limits]\nmax_per_tx_sats = 0"), "x.toml")
        .expect_err("zero limit");
    assert_eq!(e.file(), "x.toml");
    assert_eq!(e.line(), Some(6));
    assert_eq!(e.reason(), "max_per_tx_sats must be greater than zero");
}
