//! Versioned, length-limited binary frames.
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! offset size field
//! 0      4    magic "SGNF"
//! 4      1    version (1)
//! 5      2    message kind
//! 7      16   session / execution id (UUID bytes)
//! 23     4    payload length
//! 27     n    payload
//! ```
//!
//! The sender's identity is not part of the frame: the receiver takes it from the
//! peer's verified TLS certificate.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// Magic bytes opening every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SGNF";
/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 4 + 1 + 2 + 16 + 4;
/// Default limit on a whole encoded frame (header + payload): 4 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Type of a frame's payload.
///
/// A plain number so that a node can receive (and ignore) kinds added by newer
/// versions; the protocol layer assigns meanings. A few well-known kinds are
/// provided as constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKind(pub u16);

impl MessageKind {
    /// Liveness probe; the payload is opaque.
    pub const PING: MessageKind = MessageKind(0x0001);
    /// Answer to [`MessageKind::PING`], same session id.
    pub const PONG: MessageKind = MessageKind(0x0002);
    /// CGGMP24 threshold key generation.
    pub const KEYGEN: MessageKind = MessageKind(0x0100);
    /// CGGMP24 auxiliary info (Paillier keys and proofs).
    pub const AUX_INFO: MessageKind = MessageKind(0x0101);
    /// CGGMP24 presignature generation.
    pub const PRESIGN: MessageKind = MessageKind(0x0102);
    /// CGGMP24 signing.
    pub const SIGN: MessageKind = MessageKind(0x0103);
    /// FROST (givre) key generation.
    pub const FROST_KEYGEN: MessageKind = MessageKind(0x0110);
    /// FROST (givre) signing.
    pub const FROST_SIGN: MessageKind = MessageKind(0x0111);
    /// A key ceremony announced by its coordinator.
    pub const CEREMONY_ANNOUNCE: MessageKind = MessageKind(0x0120);
    /// Reshare/refresh protocol messages (`signer_protocol::reshare`).
    pub const RESHARE: MessageKind = MessageKind(0x0112);
    /// Proposal of a reshare/refresh, sent by its coordinator for a vote.
    pub const RESHARE_PROPOSE: MessageKind = MessageKind(0x0122);
    /// A node's signed vote on a reshare proposal, sent back to the coordinator.
    pub const RESHARE_VOTE: MessageKind = MessageKind(0x0123);
    /// Announcement of an approved reshare (proposal + quorum of signed votes).
    pub const RESHARE_ANNOUNCE: MessageKind = MessageKind(0x0124);
    /// A node with an `uncertain` reshare asks a participant for its outcome
    /// (payload: a 16-byte nonce).
    pub const RESHARE_OUTCOME_QUERY: MessageKind = MessageKind(0x0125);
    /// A participant's signed answer to [`MessageKind::RESHARE_OUTCOME_QUERY`].
    pub const RESHARE_OUTCOME_ANSWER: MessageKind = MessageKind(0x0126);
    /// Confirmation of a protocol session's result (a public key or digest).
    pub const SESSION_CONFIRM: MessageKind = MessageKind(0x0121);
    /// A transaction proposed by its leader to every participant of the key.
    pub const TX_PROPOSE: MessageKind = MessageKind(0x0140);
    /// The leader asks a signer to sign one input.
    pub const TX_SIGN: MessageKind = MessageKind(0x0141);
    /// A signer returns the signature of one input to the leader.
    pub const TX_SIGNATURE: MessageKind = MessageKind(0x0142);
    /// The leader sends the finalized, verified transaction to every participant.
    pub const TX_DONE: MessageKind = MessageKind(0x0143);
    /// A node relays a human approval it authenticated to every participant.
    pub const TX_APPROVAL: MessageKind = MessageKind(0x0144);
    /// A node's signed endorsement of an approver identity (name, role, key).
    pub const APPROVER_ENDORSE: MessageKind = MessageKind(0x0145);
    /// A node's recent signed transactions, so peers that missed them learn which
    /// of their UTXOs are spent (each verified by the receiver itself).
    pub const TX_SPENT: MessageKind = MessageKind(0x0146);
    /// Several transactions of one key proposed together by their leader (issue
    /// 21, docs/BATCHING.md).
    pub const TX_PROPOSE_BATCH: MessageKind = MessageKind(0x0147);
    /// One voter's signed votes on the transactions of one proposal batch (issue
    /// 21, docs/BATCHING.md).
    pub const TX_VOTE_BATCH: MessageKind = MessageKind(0x0148);
    /// The leader of a signer set announces a presignature generation session.
    pub const PRESIGN_ANNOUNCE: MessageKind = MessageKind(0x0150);
    /// A node relays an operator's presignature generate request to its peers.
    pub const PRESIGN_GENERATE: MessageKind = MessageKind(0x0151);
    /// An audit checkpoint's proposer asks each node for its signed audit head.
    pub const AUDIT_HEAD_REQUEST: MessageKind = MessageKind(0x0160);
    /// A node's signed audit head, to the proposer.
    pub const AUDIT_HEAD: MessageKind = MessageKind(0x0161);
    /// The proposer asks each node with a head to co-sign the checkpoint.
    pub const AUDIT_COSIGN_REQUEST: MessageKind = MessageKind(0x0162);
    /// A node's co-signature of a checkpoint, to the proposer.
    pub const AUDIT_COSIGNATURE: MessageKind = MessageKind(0x0163);
    /// A complete checkpoint, for every node to store in its audit log.
    pub const AUDIT_CHECKPOINT: MessageKind = MessageKind(0x0164);
    /// An exporting node asks a peer for its audit records (or their bounds).
    pub const AUDIT_EXPORT_REQUEST: MessageKind = MessageKind(0x0165);
    /// A page of audit records (or their bounds), to the exporting node.
    pub const AUDIT_EXPORT_REPLY: MessageKind = MessageKind(0x0166);
    /// Votes and vote-key announcements.
    pub const VOTE: MessageKind = MessageKind(0x0200);
    /// A key-ceremony sender's signed statement of one of its broadcasts (session,
    /// sequence number, payload digest; `session::equivocation`).
    pub const BROADCAST_STATEMENT: MessageKind = MessageKind(0x0127);
    /// The broadcast statements a participant holds, sent to the others when a
    /// ceremony failed without a culprit (equivocation evidence).
    pub const EQUIVOCATION_EVIDENCE: MessageKind = MessageKind(0x0128);

    /// Every kind this version speaks. The node's router refuses to start unless
    /// each has exactly one owning service; a frame of any other kind (sent by a
    /// newer peer) is dropped.
    pub const ALL: &'static [MessageKind] = &[
        MessageKind::PING,
        MessageKind::PONG,
        MessageKind::KEYGEN,
        MessageKind::AUX_INFO,
        MessageKind::PRESIGN,
        MessageKind::SIGN,
        MessageKind::FROST_KEYGEN,
        MessageKind::FROST_SIGN,
        MessageKind::CEREMONY_ANNOUNCE,
        MessageKind::RESHARE,
        MessageKind::RESHARE_PROPOSE,
        MessageKind::RESHARE_VOTE,
        MessageKind::RESHARE_ANNOUNCE,
        MessageKind::RESHARE_OUTCOME_QUERY,
        MessageKind::RESHARE_OUTCOME_ANSWER,
        MessageKind::SESSION_CONFIRM,
        MessageKind::BROADCAST_STATEMENT,
        MessageKind::EQUIVOCATION_EVIDENCE,
        MessageKind::TX_PROPOSE,
        MessageKind::TX_SIGN,
        MessageKind::TX_SIGNATURE,
        MessageKind::TX_DONE,
        MessageKind::TX_APPROVAL,
        MessageKind::APPROVER_ENDORSE,
        MessageKind::TX_SPENT,
        MessageKind::TX_PROPOSE_BATCH,
        MessageKind::TX_VOTE_BATCH,
        MessageKind::PRESIGN_ANNOUNCE,
        MessageKind::PRESIGN_GENERATE,
        MessageKind::AUDIT_HEAD_REQUEST,
        MessageKind::AUDIT_HEAD,
        MessageKind::AUDIT_COSIGN_REQUEST,
        MessageKind::AUDIT_COSIGNATURE,
        MessageKind::AUDIT_CHECKPOINT,
        MessageKind::AUDIT_EXPORT_REQUEST,
        MessageKind::AUDIT_EXPORT_REPLY,
        MessageKind::VOTE,
    ];
}

impl MessageKind {
    /// The lowest wire level a peer must speak to be sent this kind (see
    /// [`WIRE_LEVEL`](super::WIRE_LEVEL)): 2 for the batch frames, 1 for the rest.
    /// [`P2p::send`](super::P2p::send) refuses to send a kind to a peer whose
    /// connection speaks a lower level (that release would drop the frame).
    pub fn wire_level(self) -> u8 {
        match self {
            MessageKind::TX_PROPOSE_BATCH | MessageKind::TX_VOTE_BATCH => 2,
            _ => 1,
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// A message between two nodes, bound to one protocol session.
///
/// `Debug` prints the payload length only, never its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame format version; must be [`FRAME_VERSION`].
    pub version: u8,
    /// Session (protocol execution) this message belongs to.
    pub session: Uuid,
    /// Payload type.
    pub kind: MessageKind,
    /// The message itself.
    pub payload: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("version", &self.version)
            .field("session", &self.session)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame truncated: {len} bytes, header needs {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
    },
    /// The magic bytes are wrong.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// What was found.
        found: [u8; 4],
    },
    /// Unsupported frame version.
    #[error("unsupported frame version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Total frame length (header + payload) declared or requested.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The payload is shorter or longer than its declared length.
    #[error("payload length mismatch: declared {declared}, got {actual}")]
    LengthMismatch {
        /// Declared payload length.
        declared: usize,
        /// Bytes actually present.
        actual: usize,
    },
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame version.
    pub version: u8,
    /// Payload type.
    pub kind: MessageKind,
    /// Session id.
    pub session: Uuid,
    /// Declared payload length (already checked against the limit).
    pub payload_len: usize,
}

impl FrameHeader {
    /// Decodes and validates a header: magic, version, and that the whole frame
    /// (header + declared payload) fits in `max_frame_bytes`. Nothing is allocated.
    pub fn decode(buf: &[u8], max_frame_bytes: usize) -> Result<Self, FrameError> {
        let hdr: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::TruncatedHeader { len: buf.len() })?;
        let (magic, rest) = hdr.split_at(4);
        if magic != FRAME_MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(FrameError::BadMagic { found });
        }
        let version = rest[0];
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { version });
        }
        let kind = MessageKind(u16::from_be_bytes([rest[1], rest[2]]));
        let mut session = [0u8; 16];
        session.copy_from_slice(&rest[3..19]);
        let len = u32::from_be_bytes([rest[19], rest[20], rest[21], rest[22]]);
        let total = HEADER_LEN as u64 + u64::from(len);
        if total > max_frame_bytes as u64 {
            return Err(FrameError::TooLarge {
                len: total,
                max: max_frame_bytes,
            });
        }
        Ok(Self {
            version,
            kind,
            session: Uuid::from_bytes(session),
            payload_len: len as usize,
        })
    }
}

impl Frame {
    /// A version-1 frame.
    pub fn new(session: Uuid, kind: MessageKind, payload: impl Into<Bytes>) -> Self {
        Self {
            version: FRAME_VERSION,
            session,
            kind,
            payload: payload.into(),
        }
    }

    /// Length of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Checks that this frame can be sent under `max_frame_bytes`.
    pub fn check(&self, max_frame_bytes: usize) -> Result<(), FrameError> {
        if self.version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion {
                version: self.version,
            });
        }
        let len = self.encoded_len();
        if len > max_frame_bytes || u32::try_from(self.payload.len()).is_err() {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: max_frame_bytes,
            });
        }
        Ok(())
    }

    /// Encodes the frame after checking it against `max_frame_bytes`.
    pub fn encode(&self, max_frame_bytes: usize) -> Result<Bytes, FrameError> {
        self.check(max_frame_bytes)?;
        let len = u32::try_from(self.payload.len()).map_err(|_| FrameError::TooLarge {
            len: self.encoded_len() as u64,
            max: max_frame_bytes,
        })?;
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_slice(&FRAME_MAGIC);
        buf.put_u8(self.version);
        buf.put_u16(self.kind.0);
        buf.put_slice(self.session.as_bytes());
        buf.put_u32(len);
        buf.put_slice(&self.payload);
        Ok(buf.freeze())
    }

    /// Decodes one complete frame; `buf` must hold exactly one frame.
    ///
    /// The header (including the length limit) is validated before the payload
    /// is copied.
    pub fn decode(buf: &[u8], max_frame_bytes: usize) -> Result<Self, FrameError> {
        let header = FrameHeader::decode(buf, max_frame_bytes)?;
        let body = &buf[HEADER_LEN..];
        if body.len() != header.payload_len {
            return Err(FrameError::LengthMismatch {
                declared: header.payload_len,
                actual: body.len(),
            });
        }
        Ok(Self::from_parts(header, Bytes::copy_from_slice(body)))
    }

    /// Builds a frame from a validated header and its payload.
    pub(crate) fn from_parts(header: FrameHeader, payload: Bytes) -> Self {
        Self {
            version: header.version,
            session: header.session,
            kind: header.kind,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn sample() -> Frame {
        Frame::new(Uuid::new_v4(), MessageKind::AUX_INFO, vec![7u8; 100])
    }

    #[test]
    fn encode_decode_round_trip() {
        let f = sample();
        let bytes = f.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 100);
        assert_eq!(&bytes[..4], b"SGNF");
        assert_eq!(Frame::decode(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap(), f);
        let empty = Frame::new(Uuid::nil(), MessageKind(0xffff), Bytes::new());
        let bytes = empty.encode(HEADER_LEN).unwrap();
        assert_eq!(Frame::decode(&bytes, HEADER_LEN).unwrap(), empty);
    }

    #[test]
    fn decoder_rejects_bad_magic_and_version() {
        let mut bytes = sample().encode(DEFAULT_MAX_FRAME_BYTES).unwrap().to_vec();
        bytes[0] = b'X';
        assert!(matches!(
            Frame::decode(&bytes, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::BadMagic { .. })
        ));
        bytes[0] = b'S';
        bytes[4] = 2;
        assert_eq!(
            Frame::decode(&bytes, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn decoder_rejects_truncated_and_trailing_input() {
        let bytes = sample().encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(
            Frame::decode(&bytes[..10], DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TruncatedHeader { len: 10 })
        );
        assert_eq!(
            Frame::decode(&bytes[..bytes.len() - 1], DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::LengthMismatch {
                declared: 100,
                actual: 99
            })
        );
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            Frame::decode(&longer, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn header_with_oversized_length_is_rejected_before_reading_the_payload() {
        let mut hdr = sample().encode(DEFAULT_MAX_FRAME_BYTES).unwrap()[..HEADER_LEN].to_vec();
        hdr[23..27].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            FrameHeader::decode(&hdr, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                len: HEADER_LEN as u64 + u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME_BYTES
            })
        );
        // Exactly at the limit is fine, one byte over is not.
        let limit = HEADER_LEN + 100;
        let bytes = sample().encode(limit).unwrap();
        assert!(Frame::decode(&bytes, limit).is_ok());
        assert!(matches!(
            Frame::decode(&bytes, limit - 1),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_oversized_or_wrong_version_frames() {
        let f = sample();
        assert!(matches!(
            f.encode(HEADER_LEN + 99),
            Err(FrameError::TooLarge { .. })
        ));
        let mut v2 = f;
        v2.version = 2;
        assert_eq!(
            v2.encode(DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn debug_does_not_print_the_payload() {
        let f = Frame::new(
            Uuid::nil(),
            MessageKind::SIGN,
            b"secret-share-bytes".to_vec(),
        );
        let s = format!("{f:?}");
        assert!(s.contains("payload_len: 18"));
        assert!(!s.contains("secret"));
        assert!(!s.contains("115, 101")); // no byte list either
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..300) {
            let _ = Frame::decode(&data, max);
            let _ = FrameHeader::decode(&data, max);
        }

        #[test]
        fn decode_never_panics_on_valid_prefix(
            kind in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            cut in 0usize..140,
            len_override in proptest::option::of(any::<u32>()),
        ) {
            let f = Frame::new(Uuid::new_v4(), MessageKind(kind), payload);
            let mut bytes = f.encode(DEFAULT_MAX_FRAME_BYTES).unwrap().to_vec();
            if let Some(l) = len_override {
                bytes[23..27].copy_from_slice(&l.to_be_bytes());
            }
            let cut = cut.min(bytes.len());
            let _ = Frame::decode(&bytes[..cut], DEFAULT_MAX_FRAME_BYTES);
        }

        #[test]
        fn round_trip_any_frame(
            kind in any::<u16>(),
            session in any::<[u8; 16]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let f = Frame::new(Uuid::from_bytes(session), MessageKind(kind), payload);
            let bytes = f.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(Frame::decode(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap(), f);
        }
    }

    /// The numbers are the wire format: a rolling upgrade keeps every one of them.
    #[test]
    fn message_kind_numbers_are_pinned() {
        let pinned: Vec<(u16, MessageKind)> = vec![
            (0x0001, MessageKind::PING),
            (0x0002, MessageKind::PONG),
            (0x0100, MessageKind::KEYGEN),
            (0x0101, MessageKind::AUX_INFO),
            (0x0102, MessageKind::PRESIGN),
            (0x0103, MessageKind::SIGN),
            (0x0110, MessageKind::FROST_KEYGEN),
            (0x0111, MessageKind::FROST_SIGN),
            (0x0120, MessageKind::CEREMONY_ANNOUNCE),
            (0x0112, MessageKind::RESHARE),
            (0x0122, MessageKind::RESHARE_PROPOSE),
            (0x0123, MessageKind::RESHARE_VOTE),
            (0x0124, MessageKind::RESHARE_ANNOUNCE),
            (0x0125, MessageKind::RESHARE_OUTCOME_QUERY),
            (0x0126, MessageKind::RESHARE_OUTCOME_ANSWER),
            (0x0121, MessageKind::SESSION_CONFIRM),
            (0x0127, MessageKind::BROADCAST_STATEMENT),
            (0x0128, MessageKind::EQUIVOCATION_EVIDENCE),
            (0x0140, MessageKind::TX_PROPOSE),
            (0x0141, MessageKind::TX_SIGN),
            (0x0142, MessageKind::TX_SIGNATURE),
            (0x0143, MessageKind::TX_DONE),
            (0x0144, MessageKind::TX_APPROVAL),
            (0x0145, MessageKind::APPROVER_ENDORSE),
            (0x0146, MessageKind::TX_SPENT),
            (0x0147, MessageKind::TX_PROPOSE_BATCH),
            (0x0148, MessageKind::TX_VOTE_BATCH),
            (0x0150, MessageKind::PRESIGN_ANNOUNCE),
            (0x0151, MessageKind::PRESIGN_GENERATE),
            (0x0160, MessageKind::AUDIT_HEAD_REQUEST),
            (0x0161, MessageKind::AUDIT_HEAD),
            (0x0162, MessageKind::AUDIT_COSIGN_REQUEST),
            (0x0163, MessageKind::AUDIT_COSIGNATURE),
            (0x0164, MessageKind::AUDIT_CHECKPOINT),
            (0x0165, MessageKind::AUDIT_EXPORT_REQUEST),
            (0x0166, MessageKind::AUDIT_EXPORT_REPLY),
            (0x0200, MessageKind::VOTE),
        ];
        for (n, k) in &pinned {
            assert_eq!(*n, k.0, "{k}");
        }
        let all: Vec<MessageKind> = pinned.iter().map(|(_, k)| *k).collect();
        assert_eq!(MessageKind::ALL, all.as_slice());
    }
}
