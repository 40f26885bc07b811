//! The `KeyWrapper` abstraction: a key-encryption key (KEK) that never leaves its
//! HSM or TPM wraps and unwraps per-record data keys.

use std::fmt;

use rand::RngCore;
use zeroize::Zeroize;

use crate::error::HsmError;

/// Length of a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// Upper bound for a wrapped data key from any backend (TPM sealed objects are the
/// largest, a few hundred bytes).
pub const MAX_WRAPPED_LEN: usize = 2048;

/// Upper bound for a KEK id string.
pub const MAX_KEK_ID_LEN: usize = 128;

/// A 256-bit data-encryption key, fresh for every record.
///
/// Lives on the heap (so moves do not leave copies on the stack), is zeroized on
/// drop, has a redacted `Debug`, and is neither `Clone` nor `Serialize`.
pub struct DataKey {
    bytes: Box<[u8; DATA_KEY_LEN]>,
}

impl DataKey {
    /// Draws a fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self, HsmError> {
        let mut bytes = Box::new([0u8; DATA_KEY_LEN]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes[..])
            .map_err(|e| HsmError::Rng(e.to_string()))?;
        Ok(DataKey { bytes })
    }

    /// Builds a key from exactly 32 bytes, e.g. the output of an unwrap. The caller
    /// remains responsible for zeroizing its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, HsmError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(HsmError::Malformed {
                reason: format!("data key is {} bytes, expected {DATA_KEY_LEN}", bytes.len()),
            });
        }
        let mut b = Box::new([0u8; DATA_KEY_LEN]);
        b.copy_from_slice(bytes);
        Ok(DataKey { bytes: b })
    }

    /// The raw key. Only for the backends and the envelope code.
    pub fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }

    /// Constant-time equality (used to verify a rewrap).
    pub fn ct_eq(&self, other: &DataKey) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.bytes.iter().zip(other.bytes.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for DataKey {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Which kind of device holds the KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// A PKCS#11 token (SoftHSM2 in dev and tests).
    Pkcs11,
    /// A TPM 2.0 (swtpm in tests).
    Tpm,
}

impl BackendKind {
    /// Wire code used in the envelope header.
    pub fn code(self) -> u8 {
        match self {
            BackendKind::Pkcs11 => 1,
            BackendKind::Tpm => 2,
        }
    }

    /// Inverse of [`BackendKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(BackendKind::Pkcs11),
            2 => Some(BackendKind::Tpm),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Tpm => "tpm",
        })
    }
}

/// A data key wrapped by a KEK. Not secret: it can only be unwrapped inside the
/// device that holds the KEK, and only with the same associated data.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Backend that produced it.
    pub backend: BackendKind,
    /// Id of the KEK that wrapped it ([`KeyWrapper::kek_id`]).
    pub kek_id: String,
    /// Backend-specific wrapped bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("backend", &self.backend)
            .field("kek_id", &self.kek_id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A key-encryption key held by an HSM or TPM.
///
/// Implementations are thread-safe; calls may block on device I/O (run them on a
/// blocking thread from async code, e.g. `tokio::task::spawn_blocking`).
pub trait KeyWrapper: Send + Sync + fmt::Debug {
    /// Stable identifier of the KEK (backend-specific, at most
    /// [`MAX_KEK_ID_LEN`] bytes); recorded in every envelope.
    fn kek_id(&self) -> &str;

    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// Wraps `dek` under the KEK, binding `aad` (authenticated, not encrypted).
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<WrappedKey, HsmError>;

    /// Unwraps a key produced by [`KeyWrapper::wrap`] with the same `aad`.
    ///
    /// Returns [`HsmError::Authentication`] if the wrapped bytes were modified or
    /// `aad` differs, and [`HsmError::KekMismatch`] if another KEK wrapped it.
    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey, HsmError>;
}

/// Checks that `wrapped` was produced by this wrapper's KEK.
pub(crate) fn check_kek(wrapper: &dyn KeyWrapper, wrapped: &WrappedKey) -> Result<(), HsmError> {
    if wrapped.backend != wrapper.backend() || wrapped.kek_id != wrapper.kek_id() {
        return Err(HsmError::KekMismatch {
            expected: format!("{}:{}", wrapper.backend(), wrapper.kek_id()),
            found: format!("{}:{}", wrapped.backend, wrapped.kek_id),
        });
    }
    if wrapped.bytes.len() > MAX_WRAPPED_LEN {
        return Err(HsmError::TooLarge {
            what: "wrapped data key",
            len: wrapped.bytes.len(),
            max: MAX_WRAPPED_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_debug_is_redacted() {
        let k = DataKey::from_slice(&[0xAB; 32]).expect("32 bytes");
        let d = format!("{k:?}");
        assert_eq!(d, "DataKey([REDACTED])");
        assert!(!d.to_lowercase().contains("ab"), "{d}");
    }

    #[test]
    fn generated_data_keys_differ() {
        let a = DataKey::generate().expect("os rng");
        let b = DataKey::generate().expect("os rng");
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&DataKey::from_slice(a.expose_secret()).expect("32 bytes")));
    }

    #[test]
    fn data_key_rejects_wrong_length() {
        assert!(matches!(
            DataKey::from_slice(&[0; 31]),
            Err(HsmError::Malformed { .. })
        ));
    }
}
