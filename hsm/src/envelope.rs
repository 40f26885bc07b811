//! Envelope encryption for every secret record.
//!
//! Each record gets a fresh random 256-bit data key; the payload is encrypted with
//! AES-256-GCM under a random 96-bit nonce; the data key is wrapped by the HSM/TPM KEK.
//! Both layers authenticate the same associated data ([`Aad`]): format version,
//! record kind, node id, key/ceremony id and record id. A blob copied to another node,
//! key, record or kind does not open.
//!
//! Binary format, version 1 (all integers big-endian):
//!
//! ```text
//! offset      size  field
//! 0           4     magic "CENV"
//! 4           1     format version = 1
//! 5           1     record kind code (RecordKind::code)
//! 6           1     backend code (1 = pkcs11, 2 = tpm)
//! 7           1     flags, must be 0
//! 8           1     K = length of the KEK id, 1..=128
//! 9           K     KEK id, UTF-8
//! 9+K         2     W = length of the wrapped data key, 1..=2048
//! 11+K        W     wrapped data key (backend-specific)
//! 11+K+W      12    payload nonce
//! 23+K+W      4     C = ciphertext length including the 16-byte tag, 16..=MAX_PLAINTEXT_LEN+16
//! 27+K+W      C     AES-256-GCM(data key, nonce, Aad::encode(), plaintext) || tag
//! ```
//!
//! The blob must end exactly after the ciphertext. The header fields are not part of
//! the payload's associated data, so [`rewrap`] can replace the KEK id and wrapped key
//! without touching the payload; they are protected instead by the KEK's own
//! authenticated wrapping (same [`Aad`]) and by the checks in [`open`].

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::HsmError;
use crate::memory::SecretBytes;
use crate::wrapper::{
    BackendKind, DataKey, KeyWrapper, WrappedKey, MAX_KEK_ID_LEN, MAX_WRAPPED_LEN,
};

/// Magic bytes at the start of every envelope.
pub const MAGIC: [u8; 4] = *b"CENV";
/// Current format version.
pub const FORMAT_VERSION: u8 = 1;
/// Largest plaintext accepted by [`seal`] and [`open`] (4 MiB).
pub const MAX_PLAINTEXT_LEN: usize = 4 * 1024 * 1024;
/// Largest node id, key id or record id in [`Aad`].
pub const MAX_ID_LEN: usize = 256;
/// Largest envelope [`open`] accepts.
pub const MAX_ENVELOPE_LEN: usize =
    27 + MAX_KEK_ID_LEN + MAX_WRAPPED_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"custody-envelope";

/// What a record holds. The code is part of the associated data and the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// A threshold ECDSA (CGGMP24) key share.
    KeyShare,
    /// CGGMP24 auxiliary info (Paillier keys and proofs).
    AuxInfo,
    /// A CGGMP24 presignature (use at most once).
    Presignature,
    /// The node's identity (vote-signing) private key.
    NodeIdentityKey,
    /// A pregenerated safe-prime set.
    PrimeSet,
    /// A FROST (givre) key share.
    FrostKeyShare,
    /// The node's mTLS private key.
    TlsKey,
    /// Any other secret; the code must be registered here before use.
    Other,
}

impl RecordKind {
    /// Stable wire code.
    pub fn code(self) -> u8 {
        match self {
            RecordKind::KeyShare => 1,
            RecordKind::AuxInfo => 2,
            RecordKind::Presignature => 3,
            RecordKind::NodeIdentityKey => 4,
            RecordKind::PrimeSet => 5,
            RecordKind::FrostKeyShare => 6,
            RecordKind::TlsKey => 7,
            RecordKind::Other => 255,
        }
    }

    /// Inverse of [`RecordKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => RecordKind::KeyShare,
            2 => RecordKind::AuxInfo,
            3 => RecordKind::Presignature,
            4 => RecordKind::NodeIdentityKey,
            5 => RecordKind::PrimeSet,
            6 => RecordKind::FrostKeyShare,
            7 => RecordKind::TlsKey,
            255 => RecordKind::Other,
            _ => return None,
        })
    }
}

/// Associated data binding an envelope to its place: which node stores it, which
/// key or ceremony it belongs to, which record it is, and what kind of record.
#[derive(Clone, PartialEq, Eq)]
pub struct Aad {
    node_id: String,
    key_id: String,
    record_id: String,
    kind: RecordKind,
}

impl fmt::Debug for Aad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aad")
            .field("node_id", &self.node_id)
            .field("key_id", &self.key_id)
            .field("record_id", &self.record_id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Aad {
    /// AAD for a record that is unique per (node, key, kind), e.g. a key share.
    pub fn new(
        node_id: impl Into<String>,
        key_id: impl Into<String>,
        kind: RecordKind,
    ) -> Result<Self, HsmError> {
        Aad::with_record_id(node_id, key_id, kind, "")
    }

    /// AAD for one of several records of a kind under a key, e.g. a presignature:
    /// `record_id` must be that record's own unique id, so a blob cannot be copied
    /// onto another row (for presignatures that would mean reuse, which leaks the key).
    pub fn with_record_id(
        node_id: impl Into<String>,
        key_id: impl Into<String>,
        kind: RecordKind,
        record_id: impl Into<String>,
    ) -> Result<Self, HsmError> {
        let aad = Aad {
            node_id: node_id.into(),
            key_id: key_id.into(),
            record_id: record_id.into(),
            kind,
        };
        if aad.node_id.is_empty() {
            return Err(HsmError::Config("aad node id must not be empty".into()));
        }
        for (what, v) in [
            ("aad node id", &aad.node_id),
            ("aad key id", &aad.key_id),
            ("aad record id", &aad.record_id),
        ] {
            if v.len() > MAX_ID_LEN {
                return Err(HsmError::TooLarge {
                    what,
                    len: v.len(),
                    max: MAX_ID_LEN,
                });
            }
        }
        Ok(aad)
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The key / ceremony id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The record id (empty when not used).
    pub fn record_id(&self) -> &str {
        &self.record_id
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// Canonical encoding, used as associated data for both the payload and the
    /// data-key wrapping:
    /// `"custody-envelope" || version u8 || kind u8 || (u16 len || bytes) for node id,
    /// key id, record id`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            AAD_DOMAIN.len()
                + 2
                + 6
                + self.node_id.len()
                + self.key_id.len()
                + self.record_id.len(),
        );
        out.extend_from_slice(AAD_DOMAIN);
        out.push(FORMAT_VERSION);
        out.push(self.kind.code());
        for field in [&self.node_id, &self.key_id, &self.record_id] {
            // Lengths are bounded by MAX_ID_LEN in the constructor.
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

/// Parsed header of an envelope (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// Format version.
    pub version: u8,
    /// Record kind from the header.
    pub kind: RecordKind,
    /// The wrapped data key, with backend and KEK id.
    pub wrapped: WrappedKey,
    /// Length of the encrypted payload (plaintext length + 16).
    pub ciphertext_len: usize,
}

struct Parsed<'a> {
    info: EnvelopeInfo,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

fn malformed(reason: impl Into<String>) -> HsmError {
    HsmError::Malformed {
        reason: reason.into(),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HsmError> {
        if self.buf.len() < n {
            return Err(malformed(format!("truncated at {what}")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, HsmError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, HsmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, HsmError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn parse(blob: &[u8]) -> Result<Parsed<'_>, HsmError> {
    if blob.len() > MAX_ENVELOPE_LEN {
        return Err(HsmError::TooLarge {
            what: "envelope",
            len: blob.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let mut r = Reader { buf: blob };
    if r.take(4, "magic")? != MAGIC {
        return Err(malformed("bad magic (not a custody envelope)"));
    }
    let version = r.u8("version")?;
    if version != FORMAT_VERSION {
        return Err(malformed(format!("unsupported format version {version}")));
    }
    let kind_code = r.u8("record kind")?;
    let kind = RecordKind::from_code(kind_code)
        .ok_or_else(|| malformed(format!("unknown record kind {kind_code}")))?;
    let backend_code = r.u8("backend")?;
    let backend = BackendKind::from_code(backend_code)
        .ok_or_else(|| malformed(format!("unknown backend {backend_code}")))?;
    if r.u8("flags")? != 0 {
        return Err(malformed("reserved flags set"));
    }
    let kek_len = usize::from(r.u8("kek id length")?);
    if kek_len == 0 || kek_len > MAX_KEK_ID_LEN {
        return Err(malformed(format!("kek id length {kek_len} out of range")));
    }
    let kek_id = std::str::from_utf8(r.take(kek_len, "kek id")?)
        .map_err(|_| malformed("kek id is not utf-8"))?
        .to_string();
    let wrapped_len = usize::from(r.u16("wrapped key length")?);
    if wrapped_len == 0 || wrapped_len > MAX_WRAPPED_LEN {
        return Err(malformed(format!(
            "wrapped key length {wrapped_len} out of range"
        )));
    }
    let wrapped = r.take(wrapped_len, "wrapped key")?.to_vec();
    let nonce: [u8; NONCE_LEN] = r
        .take(NONCE_LEN, "nonce")?
        .try_into()
        .expect("take returns NONCE_LEN bytes");
    let ct_len = r.u32("ciphertext length")? as usize;
    if !(TAG_LEN..=MAX_PLAINTEXT_LEN + TAG_LEN).contains(&ct_len) {
        return Err(malformed(format!(
            "ciphertext length {ct_len} out of range"
        )));
    }
    let ciphertext = r.take(ct_len, "ciphertext")?;
    if !r.buf.is_empty() {
        return Err(malformed(format!("{} trailing bytes", r.buf.len())));
    }
    Ok(Parsed {
        info: EnvelopeInfo {
            version,
            kind,
            wrapped: WrappedKey {
                backend,
                kek_id,
                bytes: wrapped,
            },
            ciphertext_len: ct_len,
        },
        nonce,
        ciphertext,
    })
}

fn encode_header(
    kind: RecordKind,
    wrapped: &WrappedKey,
    extra_capacity: usize,
) -> Result<Vec<u8>, HsmError> {
    let kek = wrapped.kek_id.as_bytes();
    if kek.is_empty() || kek.len() > MAX_KEK_ID_LEN {
        return Err(HsmError::TooLarge {
            what: "kek id",
            len: kek.len(),
            max: MAX_KEK_ID_LEN,
        });
    }
    if wrapped.bytes.is_empty() || wrapped.bytes.len() > MAX_WRAPPED_LEN {
        return Err(HsmError::TooLarge {
            what: "wrapped data key",
            len: wrapped.bytes.len(),
            max: MAX_WRAPPED_LEN,
        });
    }
    let mut out = Vec::with_capacity(11 + kek.len() + wrapped.bytes.len() + extra_capacity);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind.code());
    out.push(wrapped.backend.code());
    out.push(0);
    out.push(kek.len() as u8);
    out.extend_from_slice(kek);
    out.extend_from_slice(&(wrapped.bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(&wrapped.bytes);
    Ok(out)
}

fn cipher(dek: &DataKey) -> Aes256Gcm {
    Aes256Gcm::new(dek.expose_secret().into())
}

/// Encrypts `plaintext` for storage: fresh data key, AES-256-GCM with a random nonce,
/// data key wrapped by `wrapper`, everything bound to `aad`.
pub fn seal(wrapper: &dyn KeyWrapper, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(HsmError::TooLarge {
            what: "plaintext",
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    let aad_bytes = aad.encode();
    let dek = DataKey::generate()?;
    let wrapped = wrapper.wrap(&dek, &aad_bytes)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| HsmError::Rng(e.to_string()))?;

    // Reserve the whole blob up front so the plaintext copy is never reallocated
    // (which would leave a stray copy in freed memory); it is encrypted in place.
    let mut out = encode_header(
        aad.kind(),
        &wrapped,
        NONCE_LEN + 4 + plaintext.len() + TAG_LEN,
    )?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher(&dek)
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad_bytes, &mut out[start..])
        .map_err(|_| HsmError::Malformed {
            reason: "aes-gcm encryption failed".into(),
        })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Checks the header against the caller's AAD and the wrapper, and unwraps the data key.
fn unwrap_key(
    wrapper: &dyn KeyWrapper,
    aad: &Aad,
    parsed: &Parsed<'_>,
) -> Result<DataKey, HsmError> {
    if parsed.info.kind != aad.kind() {
        return Err(HsmError::Authentication {
            what: "record kind",
        });
    }
    wrapper.unwrap(&parsed.info.wrapped, &aad.encode())
}

/// Decrypts a blob made by [`seal`] (or [`rewrap`]) with the same `aad`.
///
/// Errors: [`HsmError::Malformed`] / [`HsmError::TooLarge`] if it does not parse,
/// [`HsmError::KekMismatch`] if another KEK wrapped it, [`HsmError::Authentication`]
/// if any byte was changed or `aad` differs from the one it was sealed with.
pub fn open(wrapper: &dyn KeyWrapper, aad: &Aad, blob: &[u8]) -> Result<SecretBytes, HsmError> {
    let parsed = parse(blob)?;
    let dek = unwrap_key(wrapper, aad, &parsed)?;
    let (ct, tag) = parsed
        .ciphertext
        .split_at(parsed.ciphertext.len() - TAG_LEN);
    let mut buf = Zeroizing::new(Vec::with_capacity(ct.len()));
    buf.extend_from_slice(ct);
    cipher(&dek)
        .decrypt_in_place_detached(
            Nonce::from_slice(&parsed.nonce),
            &aad.encode(),
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| HsmError::Authentication { what: "payload" })?;
    Ok(SecretBytes::new(std::mem::take(&mut *buf)))
}

/// Moves a blob from the `old` KEK to the `new` one (KEK rotation) without
/// decrypting the payload: only the data key is unwrapped (inside this function,
/// zeroized on return) and wrapped again; the new wrapping is verified by unwrapping
/// it once before the blob is returned.
///
/// A blob already wrapped by `new` is returned unchanged, so a rotation that was
/// interrupted can simply be run again.
pub fn rewrap(
    old: &dyn KeyWrapper,
    new: &dyn KeyWrapper,
    aad: &Aad,
    blob: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let parsed = parse(blob)?;
    if parsed.info.wrapped.backend == new.backend() && parsed.info.wrapped.kek_id == new.kek_id() {
        return Ok(blob.to_vec());
    }
    let dek = unwrap_key(old, aad, &parsed)?;
    let aad_bytes = aad.encode();
    let wrapped = new.wrap(&dek, &aad_bytes)?;
    let check = new.unwrap(&wrapped, &aad_bytes)?;
    if !check.ct_eq(&dek) {
        return Err(HsmError::Authentication {
            what: "rewrapped data key",
        });
    }
    let mut out = encode_header(
        parsed.info.kind,
        &wrapped,
        NONCE_LEN + 4 + parsed.ciphertext.len(),
    )?;
    out.extend_from_slice(&parsed.nonce);
    out.extend_from_slice(&(parsed.ciphertext.len() as u32).to_be_bytes());
    out.extend_from_slice(parsed.ciphertext);
    Ok(out)
}

/// Parses an envelope's header without any key (to list which KEK wrapped a record,
/// e.g. to find the records a rotation still has to move).
pub fn inspect(blob: &[u8]) -> Result<EnvelopeInfo, HsmError> {
    parse(blob).map(|p| p.info)
}

/// Whether `blob` is wrapped by a KEK other than `current`'s (i.e. still needs [`rewrap`]).
pub fn needs_rewrap(current: &dyn KeyWrapper, blob: &[u8]) -> Result<bool, HsmError> {
    let info = inspect(blob)?;
    Ok(info.wrapped.backend != current.backend() || info.wrapped.kek_id != current.kek_id())
}

/// One record to rotate: its associated data and current blob.
#[derive(Debug, Clone)]
pub struct RotationItem {
    /// Associated data of the record.
    pub aad: Aad,
    /// Current envelope.
    pub blob: Vec<u8>,
}

/// Rewraps a batch of records (all or nothing): returns the new blobs in order, or
/// the first error with its index. Write them back in one database transaction, commit,
/// and only then destroy the old KEK.
pub fn rewrap_all(
    old: &dyn KeyWrapper,
    new: &dyn KeyWrapper,
    items: &[RotationItem],
) -> Result<Vec<Vec<u8>>, (usize, HsmError)> {
    items
        .iter()
        .enumerate()
        .map(|(i, it)| rewrap(old, new, &it.aad, &it.blob).map_err(|e| (i, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_inputs_are_rejected_before_any_work() {
        let huge = vec![0u8; MAX_ENVELOPE_LEN + 1];
        assert!(matches!(inspect(&huge), Err(HsmError::TooLarge { .. })));
        assert!(matches!(
            Aad::new("n", "k".repeat(MAX_ID_LEN + 1), RecordKind::AuxInfo),
            Err(HsmError::TooLarge { .. })
        ));
        assert!(matches!(inspect(b"CENV"), Err(HsmError::Malformed { .. })));
        assert!(matches!(
            inspect(b"XXXX\x01"),
            Err(HsmError::Malformed { .. })
        ));
    }

    #[test]
    fn aad_encoding_is_injective_across_field_boundaries() {
        let a = Aad::new("ab", "c", RecordKind::KeyShare)
            .expect("aad")
            .encode();
        let b = Aad::new("a", "bc", RecordKind::KeyShare)
            .expect("aad")
            .encode();
        assert_ne!(a, b);
        let c = Aad::with_record_id("a", "b", RecordKind::Presignature, "p1")
            .expect("aad")
            .encode();
        let d = Aad::with_record_id("a", "b", RecordKind::Presignature, "p2")
            .expect("aad")
            .encode();
        assert_ne!(c, d);
    }

    #[test]
    fn record_kind_codes_round_trip() {
        for k in [
            RecordKind::KeyShare,
            RecordKind::AuxInfo,
            RecordKind::Presignature,
            RecordKind::NodeIdentityKey,
            RecordKind::PrimeSet,
            RecordKind::FrostKeyShare,
            RecordKind::TlsKey,
            RecordKind::Other,
        ] {
            assert_eq!(RecordKind::from_code(k.code()), Some(k));
        }
        assert_eq!(RecordKind::from_code(0), None);
    }
}
