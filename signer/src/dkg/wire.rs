//! Frames of key ceremonies.
//!
//! * [`CEREMONY_ANNOUNCE`] (0x0120): JSON [`CeremonySpec`], at most
//!   [`MAX_ANNOUNCE_BYTES`]; the frame's session id must equal the spec's id.
//! * protocol messages ([`MessageKind::KEYGEN`], [`MessageKind::FROST_KEYGEN`]): one
//!   flag byte (0 broadcast, 1 p2p) followed by the encoded protocol message;
//! * [`CEREMONY_CONFIRM`] (0x0121): the 33-byte compressed shared public key (for
//!   aux info: the 32-byte SHA-256 of the public aux data).
//!
//! The sender of every frame is the peer's mTLS identity, never a field of the frame.

use super::CeremonySpec;
use crate::p2p::MessageKind;

/// Announcement of a ceremony by its coordinator.
pub const CEREMONY_ANNOUNCE: MessageKind = MessageKind::CEREMONY_ANNOUNCE;
/// Confirmation of the shared public key by a participant.
pub const CEREMONY_CONFIRM: MessageKind = crate::session::CONFIRM;
/// Upper bound of an encoded announcement.
pub const MAX_ANNOUNCE_BYTES: usize = 64 * 1024;

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than [`MAX_ANNOUNCE_BYTES`].
    #[error("announce of {0} bytes exceeds the limit of {MAX_ANNOUNCE_BYTES}")]
    TooLarge(usize),
    /// Not a valid JSON spec.
    #[error("announce does not decode: {0}")]
    Malformed(String),
}

/// Encodes an announcement.
pub fn encode_announce(spec: &CeremonySpec) -> Result<Vec<u8>, WireError> {
    let v = serde_json::to_vec(spec).map_err(|e| WireError::Malformed(e.to_string()))?;
    if v.len() > MAX_ANNOUNCE_BYTES {
        return Err(WireError::TooLarge(v.len()));
    }
    Ok(v)
}

/// Decodes an announcement (size-bounded, unknown fields refused).
pub fn decode_announce(b: &[u8]) -> Result<CeremonySpec, WireError> {
    if b.len() > MAX_ANNOUNCE_BYTES {
        return Err(WireError::TooLarge(b.len()));
    }
    serde_json::from_slice(b).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkg::DkgProtocol;

    #[test]
    fn announce_round_trips_and_refuses_unknown_fields_and_oversize() {
        let spec = CeremonySpec {
            id: uuid::Uuid::new_v4(),
            protocol: DkgProtocol::Frost,
            threshold: 2,
            participants: vec!["node-1".into(), "node-2".into()],
            coordinator: "node-1".into(),
            fencing_token: 7,
        };
        let b = encode_announce(&spec).expect("encodes");
        assert_eq!(decode_announce(&b).expect("decodes"), spec);
        let mut v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        v["extra"] = serde_json::json!(1);
        let b2 = serde_json::to_vec(&v).expect("json");
        assert!(matches!(decode_announce(&b2), Err(WireError::Malformed(_))));
        let big = vec![b' '; MAX_ANNOUNCE_BYTES + 1];
        assert!(matches!(decode_announce(&big), Err(WireError::TooLarge(_))));
    }
}
