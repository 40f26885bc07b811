//! Key custody for the signer node.
//!
//! - [`KeyWrapper`]: a key-encryption key (KEK) inside a PKCS#11 token
//!   ([`pkcs11::Pkcs11Wrapper`], via `cryptoki`) or a TPM 2.0 ([`tpm::TpmWrapper`], via
//!   `tss-esapi`) wraps per-record data keys. There is no software/plaintext backend.
//! - [`envelope`]: versioned AES-256-GCM envelopes with a fresh data key per record and
//!   associated data binding node id, key id, record id, record kind and version;
//!   [`envelope::rewrap`] for KEK rotation.
//! - [`custody`]: sealed start ([`Custody::open`]) and the operator functions
//!   [`custody::init`], [`custody::check`], [`custody::destroy_kek`].
//! - [`tpm_counter`]: a TPM NV monotonic counter ([`tpm_counter::NvCounter`]), for
//!   rollback detection (not used by the node yet).
//! - [`memory`]: [`memory::harden_process`] (mlockall, no core dumps, not dumpable),
//!   [`SecretBytes`], [`memory::LockedRegion`], [`memory::process_hardening_status`].
//!
//! `unsafe` code exists only in [`memory`], each block with a `// SAFETY:` comment.

pub mod custody;
pub mod envelope;
mod error;
pub mod memory;
pub mod pin;
pub mod pkcs11;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tpm;
pub mod tpm_counter;
mod wrapper;

pub use custody::{Custody, CustodyConfig};
pub use envelope::{Aad, RecordKind};
pub use error::HsmError;
pub use memory::SecretBytes;
pub use pin::PinSource;
pub use wrapper::{
    BackendKind, DataKey, KeyWrapper, WrappedKey, DATA_KEY_LEN, MAX_KEK_ID_LEN, MAX_WRAPPED_LEN,
};
