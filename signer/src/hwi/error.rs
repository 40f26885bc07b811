//! Errors of `signer-hwi` and their HWI error codes.
//!
//! Bitcoin Core reads an external signer's answer from the first line of its
//! standard output and, when the process exits 0, shows the `error` field of a JSON
//! object. `signer-hwi` therefore answers every failure as `{"error": "...",
//! "code": N}` with HWI's numeric codes (`hwilib/errors.py`) and exit status 0;
//! only command-line misuse exits 2, as HWI does.

use serde_json::{json, Value};

/// HWI error codes (`hwilib/errors.py`).
pub mod codes {
    /// Arguments missing or not understood.
    pub const MISSING_ARGUMENTS: i32 = -2;
    /// The device (here: the cluster, or the key with that fingerprint) cannot be
    /// reached or found.
    pub const DEVICE_CONN_ERROR: i32 = -3;
    /// The PSBT is invalid or was refused as invalid.
    pub const INVALID_TX: i32 = -5;
    /// An argument has a wrong value (chain, account, descriptor).
    pub const BAD_ARGUMENT: i32 = -7;
    /// The command is not implemented by this signer.
    pub const NOT_IMPLEMENTED: i32 = -8;
    /// Anything else.
    pub const UNKNOWN_ERROR: i32 = -13;
    /// The signer declined: the cluster's policy or votes refused the transaction.
    pub const ACTION_CANCELED: i32 = -14;
    /// The signer did not finish in time (the transaction may still be signed).
    pub const DEVICE_BUSY: i32 = -15;
}

/// Why a `signer-hwi` command failed. Messages never contain the API token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HwiError {
    /// The command line (or the `--stdin` text) is not a command.
    #[error("{0}")]
    Usage(String),
    /// An argument has a wrong value.
    #[error("{0}")]
    BadArgument(String),
    /// The configuration (file, environment, token file, CA) is unusable.
    #[error("signer-hwi configuration: {0}")]
    Config(String),
    /// The cluster's API cannot be reached.
    #[error("cannot reach the signer cluster: {0}")]
    Unreachable(String),
    /// The cluster answered with an error.
    #[error("the signer cluster refused the request ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's stable error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The cluster answered something that is not what the API documents.
    #[error("unexpected answer from the signer cluster: {0}")]
    BadAnswer(String),
    /// No cluster key has this fingerprint.
    #[error("Could not find device with specified fingerprint {0} (no key of the signer cluster has it; see `signer-hwi enumerate`)")]
    UnknownFingerprint(String),
    /// `--chain` is not the cluster's network.
    #[error("chain {given} does not match the signer cluster's network {cluster}")]
    WrongChain {
        /// What was asked.
        given: String,
        /// The cluster's network.
        cluster: String,
    },
    /// The PSBT cannot be used.
    #[error("{0}")]
    InvalidTx(String),
    /// The cluster submitted the transaction to its policy and votes, and it ended
    /// without a signature.
    #[error("the signer cluster did not sign transaction {id}: it ended {state}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotSigned {
        /// Cluster transaction id.
        id: String,
        /// `rejected`, `failed`, `expired` or `aborted_byzantine`.
        state: String,
        /// Why, as recorded by the node (rejections by vote carry their reasons in
        /// the nodes' votes and audit logs).
        reason: Option<String>,
    },
    /// The wait for the signature timed out.
    #[error("transaction {id} was not signed within {secs} s (state {state}); it may still be signed: `signer tx status {id}` shows it")]
    Timeout {
        /// Cluster transaction id.
        id: String,
        /// Last state seen.
        state: String,
        /// The timeout.
        secs: u64,
    },
    /// The address of a descriptor is not the cluster's.
    #[error("{0}")]
    AddressMismatch(String),
    /// A command this signer does not offer.
    #[error("{0} is not implemented by signer-hwi")]
    NotImplemented(String),
}

impl HwiError {
    /// The HWI error code of this error.
    pub fn code(&self) -> i32 {
        use codes::*;
        match self {
            HwiError::Usage(_) => MISSING_ARGUMENTS,
            HwiError::BadArgument(_) | HwiError::WrongChain { .. } => BAD_ARGUMENT,
            HwiError::AddressMismatch(_) => BAD_ARGUMENT,
            HwiError::Config(_) | HwiError::Unreachable(_) | HwiError::UnknownFingerprint(_) => {
                DEVICE_CONN_ERROR
            }
            HwiError::Refused { status, .. } if *status == 400 || *status == 409 => INVALID_TX,
            HwiError::Refused { .. } | HwiError::BadAnswer(_) => UNKNOWN_ERROR,
            HwiError::InvalidTx(_) => INVALID_TX,
            HwiError::NotSigned { state, .. } if state == "rejected" => ACTION_CANCELED,
            HwiError::NotSigned { .. } => UNKNOWN_ERROR,
            HwiError::Timeout { .. } => DEVICE_BUSY,
            HwiError::NotImplemented(_) => NOT_IMPLEMENTED,
        }
    }

    /// The answer Bitcoin Core reads: `{"error": message, "code": code}`.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.to_string(), "code": self.code() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_answers_core_with_a_string_error_and_an_hwi_code() {
        let cases = [
            (HwiError::Usage("x".into()), -2),
            (HwiError::UnknownFingerprint("deadbeef".into()), -3),
            (
                HwiError::WrongChain {
                    given: "main".into(),
                    cluster: "regtest".into(),
                },
                -7,
            ),
            (
                HwiError::Refused {
                    status: 400,
                    code: "input_not_ours".into(),
                    message: "m".into(),
                },
                -5,
            ),
            (
                HwiError::NotSigned {
                    id: "i".into(),
                    state: "rejected".into(),
                    reason: None,
                },
                -14,
            ),
            (
                HwiError::Timeout {
                    id: "i".into(),
                    state: "voting".into(),
                    secs: 3,
                },
                -15,
            ),
            (HwiError::NotImplemented("signmessage".into()), -8),
        ];
        for (e, code) in cases {
            let v = e.to_json();
            assert_eq!(v["code"], code, "{v}");
            assert!(!v["error"].as_str().unwrap_or("").is_empty(), "{v}");
        }
    }

    #[test]
    fn a_rejection_names_the_transaction_and_its_state() {
        let e = HwiError::NotSigned {
            id: "7f".into(),
            state: "failed".into(),
            reason: Some("signing deadline passed".into()),
        };
        assert_eq!(
            e.to_string(),
            "the signer cluster did not sign transaction 7f: it ended failed: signing deadline passed"
        );
    }
}
