//! Fuzzes the policy file parser and validator (`Policy::from_toml_str`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    policy::fuzzing::policy_parser(data);
});
