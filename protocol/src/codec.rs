//! Wire and storage encoding.
//!
//! * Protocol messages: one version byte ([`WIRE_VERSION`]) followed by CBOR (`ciborium`).
//!   CBOR is the binary format the cggmp24/key-share authors test against (their types
//!   rely on named fields and self-description; bincode is known to break on them).
//!   Big integers are serialized by `fast-paillier` as hex strings inside CBOR, points
//!   and scalars as byte strings.
//! * Stored values (key shares, aux info, presignatures, prime sets): a 4-byte header
//!   `b"SP" || version || kind` followed by CBOR, so that a record of one kind is never
//!   decoded as another. Secret encodings are produced into a `Zeroizing<Vec<u8>>` whose
//!   capacity is computed first, so no reallocation leaves copies in freed memory.

use serde::{de::DeserializeOwned, Serialize};
use zeroize::Zeroizing;

use crate::error::ProtocolError;

/// Default upper bound for one protocol message on the wire (4 MiB).
///
/// The largest cggmp24 message (aux info, n=5) is a few hundred KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Version byte prefixed to every protocol message.
pub const WIRE_VERSION: u8 = 1;

/// Upper bound for stored records accepted by the `from_bytes` decoders (16 MiB).
pub const MAX_STORED_SIZE: usize = 16 * 1024 * 1024;

const STORE_MAGIC: [u8; 2] = *b"SP";
const STORE_VERSION: u8 = 1;

/// Kind tag of a stored record (4th header byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    EcdsaIncompleteShare = 1,
    EcdsaAuxInfo = 2,
    EcdsaKeyShare = 3,
    EcdsaPresignature = 4,
    PrimeSet = 5,
    FrostKeyShare = 6,
    PresignaturePublic = 7,
}

impl RecordKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RecordKind::EcdsaIncompleteShare => "ecdsa incomplete key share",
            RecordKind::EcdsaAuxInfo => "ecdsa aux info",
            RecordKind::EcdsaKeyShare => "ecdsa key share",
            RecordKind::EcdsaPresignature => "ecdsa presignature",
            RecordKind::PrimeSet => "paillier prime set",
            RecordKind::FrostKeyShare => "frost key share",
            RecordKind::PresignaturePublic => "presignature public data",
        }
    }
}

/// Error of the message codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Payload exceeds the bound.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Empty payload or unknown version byte.
    #[error("unsupported wire version {0:?}")]
    Version(Option<u8>),
    /// CBOR decoding failed.
    #[error("cbor decode: {0}")]
    Decode(String),
    /// CBOR encoding failed.
    #[error("cbor encode: {0}")]
    Encode(String),
    /// Bytes left after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Counts bytes written.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn cbor_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let mut c = Counter(0);
    ciborium::into_writer(value, &mut c).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(c.0)
}

/// Encodes a protocol message: version byte || CBOR.
pub fn encode_message<M: Serialize>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let len = cbor_len(msg)?;
    let mut out = Vec::with_capacity(len + 1);
    out.push(WIRE_VERSION);
    ciborium::into_writer(msg, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a protocol message, refusing payloads above `limit` bytes, unknown versions
/// and trailing bytes.
pub fn decode_message<M: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<M, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    match bytes.first() {
        Some(&WIRE_VERSION) => {}
        other => return Err(CodecError::Version(other.copied())),
    }
    decode_cbor_exact(&bytes[1..])
}

fn decode_cbor_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut reader = bytes;
    let v = ciborium::from_reader(&mut reader).map_err(|e| CodecError::Decode(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CodecError::Trailing(reader.len()));
    }
    Ok(v)
}

/// Encodes a stored value into zeroizing memory: `b"SP" || version || kind || CBOR`.
pub(crate) fn encode_record<T: Serialize + ?Sized>(
    kind: RecordKind,
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let len = cbor_len(value).map_err(|e| ProtocolError::InvalidEncoding {
        what: kind.name(),
        reason: e.to_string(),
    })?;
    let mut out = Zeroizing::new(Vec::with_capacity(len + 4));
    out.extend_from_slice(&STORE_MAGIC);
    out.push(STORE_VERSION);
    out.push(kind as u8);
    ciborium::into_writer(value, &mut *out).map_err(|e| ProtocolError::InvalidEncoding {
        what: kind.name(),
        reason: format!("cbor encode: {e}"),
    })?;
    debug_assert_eq!(out.len(), len + 4, "precomputed length must be exact");
    Ok(out)
}

/// Decodes a stored value written by [`encode_record`], with a size bound.
pub(crate) fn decode_record<T: DeserializeOwned>(
    kind: RecordKind,
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    let err = |reason: String| ProtocolError::InvalidEncoding {
        what: kind.name(),
        reason,
    };
    if bytes.len() > MAX_STORED_SIZE {
        return Err(err(format!(
            "{} bytes exceed the limit of {MAX_STORED_SIZE} bytes",
            bytes.len()
        )));
    }
    if bytes.len() < 4 || bytes[..2] != STORE_MAGIC {
        return Err(err("missing record header".into()));
    }
    if bytes[2] != STORE_VERSION {
        return Err(err(format!("unsupported record version {}", bytes[2])));
    }
    if bytes[3] != kind as u8 {
        return Err(err(format!(
            "record kind {} is not {}",
            bytes[3], kind as u8
        )));
    }
    decode_cbor_exact(&bytes[4..]).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_bounds() {
        let v: Vec<u32> = (0..100).collect();
        let b = encode_message(&v).expect("encode");
        assert_eq!(b[0], WIRE_VERSION);
        let back: Vec<u32> = decode_message(&b, 1024).expect("decode");
        assert_eq!(back, v);
        assert!(matches!(
            decode_message::<Vec<u32>>(&b, 10),
            Err(CodecError::TooLarge { .. })
        ));
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_message::<Vec<u32>>(&bad, 1024),
            Err(CodecError::Version(Some(9)))
        ));
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(
            decode_message::<Vec<u32>>(&trailing, 1024),
            Err(CodecError::Trailing(1))
        ));
        assert!(decode_message::<Vec<u32>>(&[], 1024).is_err());
    }

    #[test]
    fn record_kind_is_checked() {
        let r = encode_record(RecordKind::PrimeSet, &vec![1u8, 2, 3]).expect("encode");
        let back: Vec<u8> = decode_record(RecordKind::PrimeSet, &r).expect("decode");
        assert_eq!(back, vec![1, 2, 3]);
        assert!(decode_record::<Vec<u8>>(RecordKind::FrostKeyShare, &r).is_err());
        assert!(decode_record::<Vec<u8>>(RecordKind::PrimeSet, &r[1..]).is_err());
    }
}
