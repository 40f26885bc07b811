//! Policy engine: pure, deterministic transaction approval rules.
#![forbid(unsafe_code)]
