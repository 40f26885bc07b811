//! The crate's error type.
//!
//! No variant carries a PIN, an auth value, a data key or plaintext: only paths, labels,
//! handles, library return codes and lengths.

use std::path::PathBuf;

/// Everything that can go wrong in key custody.
///
/// The variants are distinct on purpose: a node that fails to unseal must tell the
/// operator whether the module file is missing, the PIN is wrong, the token or the KEK
/// is absent or the TPM is unreachable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module file does not exist.
    #[error("pkcs#11 module {path} not found")]
    ModuleNotFound {
        /// Configured module path.
        path: PathBuf,
    },
    /// The PKCS#11 module exists but could not be loaded or initialised.
    #[error("pkcs#11 module {path} could not be loaded: {reason}")]
    ModuleLoad {
        /// Configured module path.
        path: PathBuf,
        /// Loader or `C_Initialize` error.
        reason: String,
    },
    /// No token with this label is present in any slot of the module.
    #[error("no pkcs#11 token labelled {label:?} (tokens present: {present:?})")]
    TokenNotFound {
        /// Configured token label.
        label: String,
        /// Labels of the tokens that were found, to help the operator.
        present: Vec<String>,
    },
    /// `C_Login` rejected the user PIN.
    #[error("wrong pin for pkcs#11 token {label:?}")]
    WrongPin {
        /// Token label.
        label: String,
    },
    /// The token's user PIN is locked after too many wrong attempts.
    #[error("user pin of pkcs#11 token {label:?} is locked")]
    PinLocked {
        /// Token label.
        label: String,
    },
    /// The PIN / auth value could not be read from its file or systemd credential.
    #[error("cannot read secret from {source_desc}: {reason}")]
    PinSource {
        /// Where the secret was to be read from (a path or a credential name, never the secret).
        source_desc: String,
        /// What went wrong.
        reason: String,
    },
    /// The key-encryption key is not in the token (run `signer hsm init`).
    #[error("key-encryption key {label:?} not found in token {token:?} (run `signer hsm init` to create it)")]
    KekNotFound {
        /// Token label.
        token: String,
        /// KEK label.
        label: String,
    },
    /// More than one object carries the KEK label.
    #[error("{count} keys labelled {label:?} in token {token:?}; expected exactly one")]
    KekAmbiguous {
        /// Token label.
        token: String,
        /// KEK label.
        label: String,
        /// Number of matching objects.
        count: usize,
    },
    /// `init` was asked to create a KEK that already exists.
    #[error("key-encryption key {label:?} already exists")]
    KekExists {
        /// KEK label or TPM handle.
        label: String,
    },
    /// The KEK's attributes do not meet the custody policy (e.g. it is extractable).
    #[error("key-encryption key {label:?} violates custody policy: {detail}")]
    KekPolicy {
        /// KEK label.
        label: String,
        /// Which attribute is wrong.
        detail: String,
    },
    /// A PKCS#11 call failed.
    #[error("pkcs#11 {op} failed: {reason}")]
    Pkcs11 {
        /// The operation that failed.
        op: &'static str,
        /// Library return value.
        reason: String,
    },
    /// The TPM (or swtpm) could not be reached through the configured TCTI.
    #[error("tpm unreachable via tcti {tcti:?}: {reason}")]
    TpmUnreachable {
        /// The TCTI string.
        tcti: String,
        /// Connection error.
        reason: String,
    },
    /// The persistent TPM storage key is not present.
    #[error("tpm storage key at persistent handle {handle:#010x} not found (run `signer hsm init` to create it)")]
    TpmKeyNotFound {
        /// Persistent handle.
        handle: u32,
    },
    /// The TPM rejected the storage key's auth value (the TPM's equivalent of a
    /// wrong PIN; repeated failures count towards dictionary-attack lockout).
    #[error("tpm rejected the storage key auth value{}", handle.map(|h| format!(" for handle {h:#010x}")).unwrap_or_default())]
    TpmAuthFailed {
        /// Persistent handle, when known.
        handle: Option<u32>,
    },
    /// The persistent storage key's TPM name is not the pinned one: another key sits
    /// at the handle (replaced, or a different TPM). Nothing is sealed or unsealed.
    #[error("tpm storage key at persistent handle {handle:#010x} has name {found}, not the pinned {expected} (custody.key_name): refusing custody")]
    TpmKeyNameMismatch {
        /// Persistent handle.
        handle: u32,
        /// The pinned name (hex).
        expected: String,
        /// The name the TPM reported / that the key's public area hashes to (hex).
        found: String,
    },
    /// The TPM refused to unseal a data key sealed under a PCR policy: the PCRs
    /// it was sealed against (SHA-256 bank) no longer hold the same values, or the
    /// configured PCR list differs from the one it was sealed with.
    #[error("tpm pcr policy not satisfied: pcrs {pcrs:?} (sha256) differ from the values the data key was sealed under")]
    TpmPcrPolicy {
        /// The PCR indices of the policy.
        pcrs: Vec<u8>,
    },
    /// A TPM command failed.
    #[error("tpm {op} failed: {reason}")]
    Tpm {
        /// The operation that failed.
        op: &'static str,
        /// TSS response code text.
        reason: String,
    },
    /// Authenticated decryption failed: the blob was modified, or it is being opened
    /// with associated data (node, key id, record kind, version) other than the one it
    /// was sealed with, or under a KEK that is not the one that wrapped it.
    #[error("authentication failed: {what} was modified or is bound to other associated data")]
    Authentication {
        /// Which layer failed (`"payload"` or `"wrapped data key"`).
        what: &'static str,
    },
    /// A blob could not be parsed.
    #[error("malformed envelope: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The blob was wrapped by another KEK than the one offered.
    #[error("envelope wrapped by kek {found:?}, not by {expected:?}")]
    KekMismatch {
        /// The KEK id of the wrapper used.
        expected: String,
        /// The KEK id recorded in the blob.
        found: String,
    },
    /// An input exceeds a size bound.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A configuration value is invalid.
    #[error("invalid custody configuration: {0}")]
    Config(String),
    /// The operating system's random generator failed.
    #[error("random number generator failed: {0}")]
    Rng(String),
    /// A system call of the process-hardening code failed.
    #[error("{call} failed: {reason}")]
    System {
        /// The call.
        call: &'static str,
        /// errno text.
        reason: String,
    },
}

impl HsmError {
    /// Whether retrying later can succeed without operator action (device or daemon
    /// not up yet). A wrong PIN is *not* transient: retrying it would lock the token.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HsmError::TpmUnreachable { .. }
                | HsmError::TokenNotFound { .. }
                | HsmError::Pkcs11 { .. }
                | HsmError::Tpm { .. }
        )
    }

    /// A short, stable, machine-readable code for `/ready` and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            HsmError::ModuleNotFound { .. } => "module_not_found",
            HsmError::ModuleLoad { .. } => "module_load",
            HsmError::TokenNotFound { .. } => "token_not_found",
            HsmError::WrongPin { .. } => "wrong_pin",
            HsmError::PinLocked { .. } => "pin_locked",
            HsmError::PinSource { .. } => "pin_source",
            HsmError::KekNotFound { .. } => "kek_not_found",
            HsmError::KekAmbiguous { .. } => "kek_ambiguous",
            HsmError::KekExists { .. } => "kek_exists",
            HsmError::KekPolicy { .. } => "kek_policy",
            HsmError::Pkcs11 { .. } => "pkcs11",
            HsmError::TpmUnreachable { .. } => "tpm_unreachable",
            HsmError::TpmKeyNotFound { .. } => "tpm_key_not_found",
            HsmError::TpmAuthFailed { .. } => "tpm_auth_failed",
            HsmError::TpmKeyNameMismatch { .. } => "tpm_key_name_mismatch",
            HsmError::TpmPcrPolicy { .. } => "tpm_pcr_policy",
            HsmError::Tpm { .. } => "tpm",
            HsmError::Authentication { .. } => "authentication",
            HsmError::Malformed { .. } => "malformed",
            HsmError::KekMismatch { .. } => "kek_mismatch",
            HsmError::TooLarge { .. } => "too_large",
            HsmError::Config(_) => "config",
            HsmError::Rng(_) => "rng",
            HsmError::System { .. } => "system",
        }
    }
}
