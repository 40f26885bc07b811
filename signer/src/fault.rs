//! Fault injection for the Byzantine tests, compiled only with the cargo feature
//! `fault-injection` (the cluster test crate enables it for its debug builds; a
//! release build of the node, `cargo build --release -p signer`, does not contain it).
//!
//! With the feature, the environment variable `SIGNER_FAULT_CORRUPT_OUTGOING=<protocol>`
//! (e.g. `frost`, `cggmp24`, `aux_info`) makes this node replace every protocol
//! message it sends in ceremonies of that protocol with bytes that do not decode, so
//! the tests can check that honest nodes abort and blame this node. The node logs an
//! error at start when a fault is armed.

use bytes::Bytes;

/// Environment variable arming the fault.
pub const CORRUPT_ENV: &str = "SIGNER_FAULT_CORRUPT_OUTGOING";

/// The payload to send for `protocol`: unchanged unless a corruption fault is armed
/// for it (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn corrupt_outgoing(protocol: &str, payload: Bytes) -> Bytes {
    match std::env::var(CORRUPT_ENV) {
        Ok(p) if p == protocol => Bytes::from_static(b"\x01corrupted by fault injection"),
        _ => payload,
    }
}

/// The payload to send: always unchanged (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
pub fn corrupt_outgoing(_protocol: &str, payload: Bytes) -> Bytes {
    payload
}

/// Logs loudly when a fault is armed (feature `fault-injection` only).
pub fn warn_if_armed() {
    #[cfg(feature = "fault-injection")]
    if let Ok(p) = std::env::var(CORRUPT_ENV) {
        tracing::error!(protocol = %p, "FAULT INJECTION ARMED: this node corrupts its outgoing protocol messages");
    }
}
