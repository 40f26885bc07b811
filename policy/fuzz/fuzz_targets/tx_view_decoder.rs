//! Fuzzes the JSON transaction-view / evaluation-request decoder and evaluation.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    policy::fuzzing::tx_view_decoder(data);
});
