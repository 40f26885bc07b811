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

/// Environment variable: with `1`, the node exits right after it committed the
/// consumption of a presignature, before the partial signature is computed or sent.
/// With a file path, it does so only if it is the first to create that file (one
/// exit among all nodes armed with the same path; the file holds the node id).
pub const EXIT_AFTER_PRESIG_CONSUME_ENV: &str = "SIGNER_FAULT_EXIT_AFTER_PRESIG_CONSUME";

/// Exits the process if [`EXIT_AFTER_PRESIG_CONSUME_ENV`] is armed (feature
/// `fault-injection` only; a no-op otherwise).
pub fn exit_after_presig_consume(node_id: &str) {
    #[cfg(feature = "fault-injection")]
    if let Ok(v) = std::env::var(EXIT_AFTER_PRESIG_CONSUME_ENV) {
        use std::io::Write;
        let first = v == "1"
            || std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&v)
                .and_then(|mut f| f.write_all(node_id.as_bytes()))
                .is_ok();
        if first {
            tracing::error!("FAULT INJECTION: exiting after consuming a presignature");
            std::process::exit(86);
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = node_id;
}
