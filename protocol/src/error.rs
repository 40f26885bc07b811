//! Protocol errors with blame.
//!
//! The libraries (cggmp24, givre) wrap their failure reasons in private enums. The faulty
//! party of an aborted cggmp24 run is visible only in the `Debug` output of those enums
//! (`AbortBlame { faulty_party: 2, .. }`, `parties: [1, 2]`, `sender: 1`, ...). This module
//! maps library errors to [`ProtocolError`]:
//!
//! 1. transport faults raised by [`crate::delivery::ChannelDelivery`] (undecodable or
//!    oversized message, unknown sender) are found by walking the `source()` chain and
//!    down-casting to [`DeliveryError`]; they always name the sender;
//! 2. otherwise the `Debug` text of the library error is scanned for the culprit patterns
//!    that the pinned versions print (see [`culprits_from_debug`]). This is best-effort: a
//!    future library version may print differently, in which case the error is still
//!    reported, as [`ProtocolError::Aborted`] without a culprit.
//!
//! Culprits are **party indexes within the run** (the index the party had in the
//! `participants` list of that execution; for signing `0..t`), not keygen indexes.

use std::fmt;

use crate::delivery::DeliveryError;

/// Which protocol produced an error (or is being run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolKind {
    /// CGGMP24 threshold key generation.
    EcdsaKeygen,
    /// CGGMP24 auxiliary info (Paillier keys and proofs).
    EcdsaAuxInfo,
    /// CGGMP24 presignature generation.
    EcdsaPresign,
    /// CGGMP24 signing without presignature.
    EcdsaSign,
    /// CGGMP24 signing from a presignature (local partial signature + combine).
    EcdsaSignFromPresignature,
    /// FROST key generation (givre, CGGMP21 DKG).
    FrostKeygen,
    /// FROST interactive signing (givre).
    FrostSign,
    /// Verifiable secret redistribution of an existing key (reshare or refresh).
    Reshare,
}

impl ProtocolKind {
    /// Stable lower-case label, used in execution ids, logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolKind::EcdsaKeygen => "ecdsa-keygen",
            ProtocolKind::EcdsaAuxInfo => "ecdsa-aux-info",
            ProtocolKind::EcdsaPresign => "ecdsa-presign",
            ProtocolKind::EcdsaSign => "ecdsa-sign",
            ProtocolKind::EcdsaSignFromPresignature => "ecdsa-sign-presig",
            ProtocolKind::FrostKeygen => "frost-keygen",
            ProtocolKind::FrostSign => "frost-sign",
            ProtocolKind::Reshare => "reshare",
        }
    }
}

impl fmt::Display for ProtocolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of a protocol run or of a protocol-layer operation.
///
/// Messages are lower-case and never contain secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A peer sent bytes that do not decode as a message of this protocol.
    #[error("{protocol}: party {party} sent a malformed message: {reason}")]
    MalformedMessage {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Culprit (party index in this run).
        party: u16,
        /// Decoder error text.
        reason: String,
    },
    /// A peer sent a message larger than the configured bound.
    #[error("{protocol}: party {party} sent an oversized message ({size} bytes, limit {limit})")]
    OversizedMessage {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Culprit (party index in this run).
        party: u16,
        /// Size of the payload.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The transport handed over a message whose sender index is not a peer of this run
    /// (a bug in the node's identity-to-index mapping, not a peer's fault).
    #[error("{protocol}: message from unknown sender index {sender} (run has {n} parties, local index {local})")]
    UnknownSender {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Claimed sender index.
        sender: u16,
        /// Number of parties in the run.
        n: u16,
        /// Local party index.
        local: u16,
    },
    /// The incoming channel closed (or the outgoing one was dropped) before completion.
    #[error("{protocol}: transport closed before the protocol completed")]
    TransportClosed {
        /// Protocol being run.
        protocol: ProtocolKind,
    },
    /// The library aborted the protocol and named one or more culprits.
    #[error("{protocol}: aborted by misbehaving part{} {}: {detail}", if culprits.len() == 1 { "y" } else { "ies" }, fmt_list(culprits))]
    Misbehaviour {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Culprits (party indexes in this run), sorted, without duplicates.
        culprits: Vec<u16>,
        /// Library error chain (display form, no secrets).
        detail: String,
    },
    /// The protocol failed and the library did not expose a culprit.
    #[error("{protocol}: protocol failed: {detail}")]
    Aborted {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Library error chain (display form, no secrets).
        detail: String,
    },
    /// A partial signature (from a presignature) failed its check against the
    /// presignature commitments.
    #[error("invalid partial signature from party {party}")]
    InvalidPartialSignature {
        /// Culprit (party index in the signer set of the presignature).
        party: u16,
    },
    /// The resulting signature does not verify against the public key.
    #[error("{protocol}: resulting signature does not verify against the public key")]
    InvalidSignature {
        /// Protocol being run.
        protocol: ProtocolKind,
    },
    /// Caller supplied inconsistent parameters.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The signing permit presented is for another message: nothing was signed.
    #[error("{protocol}: the signing permit does not cover this message")]
    NotPermitted {
        /// Protocol refused.
        protocol: ProtocolKind,
    },
    /// Encoding or decoding of a stored secret or public value failed.
    #[error("invalid {what}: {reason}")]
    InvalidEncoding {
        /// Which kind of value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A worker thread (prime generation) panicked or could not start.
    #[error("worker thread failed: {reason}")]
    WorkerFailed {
        /// Why.
        reason: String,
    },
    /// The protocol thread panicked or was torn down.
    #[error("{protocol}: protocol thread failed: {reason}")]
    ThreadFailed {
        /// Protocol being run.
        protocol: ProtocolKind,
        /// Why.
        reason: String,
    },
}

fn fmt_list(v: &[u16]) -> String {
    v.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ProtocolError {
    /// Party indexes (within the run) that this error blames; empty when none is known.
    pub fn culprits(&self) -> Vec<u16> {
        match self {
            ProtocolError::MalformedMessage { party, .. }
            | ProtocolError::OversizedMessage { party, .. }
            | ProtocolError::InvalidPartialSignature { party } => vec![*party],
            ProtocolError::Misbehaviour { culprits, .. } => culprits.clone(),
            _ => Vec::new(),
        }
    }

    /// Maps an error returned by a library protocol future to a [`ProtocolError`].
    pub fn from_library<E>(protocol: ProtocolKind, err: &E) -> Self
    where
        E: std::error::Error + 'static,
    {
        if let Some(d) = find_delivery_error(err) {
            return Self::from_delivery(protocol, d);
        }
        let detail = display_chain(err);
        let culprits = if unattributable(&detail) {
            Vec::new()
        } else {
            culprits_from_debug(&format!("{err:?}"))
        };
        if culprits.is_empty() {
            if detail.contains("eof") || detail.contains("EOF") {
                return ProtocolError::TransportClosed { protocol };
            }
            ProtocolError::Aborted { protocol, detail }
        } else {
            ProtocolError::Misbehaviour {
                protocol,
                culprits,
                detail,
            }
        }
    }

    /// Maps a transport fault.
    pub fn from_delivery(protocol: ProtocolKind, d: &DeliveryError) -> Self {
        match d {
            DeliveryError::Malformed { sender, reason } => ProtocolError::MalformedMessage {
                protocol,
                party: *sender,
                reason: reason.clone(),
            },
            DeliveryError::Oversized {
                sender,
                size,
                limit,
            } => ProtocolError::OversizedMessage {
                protocol,
                party: *sender,
                size: *size,
                limit: *limit,
            },
            DeliveryError::UnknownSender { sender, n, local } => ProtocolError::UnknownSender {
                protocol,
                sender: *sender,
                n: *n,
                local: *local,
            },
            DeliveryError::Closed => ProtocolError::TransportClosed { protocol },
            other => ProtocolError::Aborted {
                protocol,
                detail: other.to_string(),
            },
        }
    }
}

/// Finds a [`DeliveryError`] in the `source()` chain of `err` (including `err` itself).
fn find_delivery_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a DeliveryError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<DeliveryError>() {
            return Some(d);
        }
        cur = e.source();
    }
    None
}

/// `a: b: c` display form of an error and its sources, lower-cased.
pub(crate) fn display_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out.to_lowercase()
}

/// Extracts culprit party indexes from the `Debug` text of a cggmp24 / round-based error.
///
/// Patterns recognised (as printed by cggmp24 0.7.0-alpha.3, cggmp24-keygen and
/// cggmp21-keygen, round-based 0.4):
/// * `faulty_party: N` (`AbortBlame`),
/// * `parties: [N, M]` (Feldman / data-size failures; lists of `AbortBlame` are handled by
///   the first pattern),
/// * `sender: N` (round-based `RoundInputError`: duplicate or mistyped message),
/// * `NotReliable([(N, id), ...])` (keygen reliable-broadcast check: `(party, msg id)`),
/// * `MismatchedMessageType { msg_id: X, .. }` (p2p sent where broadcast was expected or
///   the reverse): the sender is `X & 0xffff`, as [`crate::ChannelDelivery`] encodes it
///   (with other deliveries this pattern would name a wrong party).
///
/// Returns a sorted list without duplicates; empty when nothing matched.
///
/// Not for [`unattributable`] errors: their lists name parties that merely disagree.
pub fn culprits_from_debug(debug: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for key in ["faulty_party: ", "sender: "] {
        let mut rest = debug;
        while let Some(pos) = rest.find(key) {
            rest = &rest[pos + key.len()..];
            if let Some(n) = leading_u16(rest) {
                out.push(n);
            }
        }
    }
    let mut rest = debug;
    while let Some(pos) = rest.find("parties: [") {
        rest = &rest[pos + "parties: [".len()..];
        let end = rest.find(']').unwrap_or(rest.len());
        let list = &rest[..end];
        let nums: Option<Vec<u16>> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u16>().ok())
            .collect();
        if let Some(nums) = nums {
            out.extend(nums);
        }
    }
    // a message of the wrong type (broadcast vs p2p): the id encodes the sender
    // (ChannelDelivery ids are `seq << 16 | sender`)
    let mut rest = debug;
    while let Some(pos) = rest.find("MismatchedMessageType { msg_id: ") {
        rest = &rest[pos + "MismatchedMessageType { msg_id: ".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(id) = rest[..digits].parse::<u64>() {
            out.push((id & 0xffff) as u16);
        }
    }
    let mut rest = debug;
    while let Some(pos) = rest.find("NotReliable([") {
        rest = &rest[pos + "NotReliable([".len()..];
        let end = rest.find("])").unwrap_or(rest.len());
        let mut list = &rest[..end];
        while let Some(p) = list.find('(') {
            list = &list[p + 1..];
            if let Some(n) = leading_u16(list) {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn leading_u16(s: &str) -> Option<u16> {
    let digits: &str = &s[..s.bytes().take_while(u8::is_ascii_digit).count()];
    digits.parse().ok()
}

/// Whether a library error names no culprit even though it lists parties: a failed
/// echo-broadcast check ("round1 wasn't reliable") lists the parties whose echo of
/// a broadcast differs from this party's view. When a sender equivocates, that is
/// every honest party that saw the other version, not the sender (the echoes are
/// not signed, so nobody can tell who lied): blaming them would record honest
/// nodes as Byzantine (issue 17, found by `tests/dkg_equivocation.rs`).
pub fn unattributable(detail: &str) -> bool {
    detail.contains("wasn't reliable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprits_are_extracted_from_abort_blame_debug() {
        let s = "SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 2, data_message: 7, proof_message: 9 }, InvalidProof)])))";
        assert_eq!(culprits_from_debug(s), vec![2]);
    }

    #[test]
    fn culprits_are_extracted_from_party_lists_and_tuples() {
        assert_eq!(
            culprits_from_debug("FeldmanVerificationFailed { parties: [3, 1] }"),
            vec![1, 3]
        );
        assert_eq!(
            culprits_from_debug("Round1NotReliable([(4, 10), (0, 11)])"),
            vec![0, 4]
        );
        assert_eq!(
            culprits_from_debug("AttemptToOverwriteReceivedMsg { msgs_ids: [1, 2], sender: 1 }"),
            vec![1]
        );
        let id = (7u64 << 16) | 2;
        assert_eq!(
            culprits_from_debug(&format!(
                "MismatchedMessageType {{ msg_id: {id}, expected: Broadcast, actual: P2P }}"
            )),
            vec![2]
        );
    }

    #[test]
    fn no_culprit_when_nothing_matches() {
        assert!(culprits_from_debug("SignatureInvalid").is_empty());
        assert!(culprits_from_debug("parties: [AbortBlame").is_empty());
    }

    #[test]
    fn error_messages_are_lower_case() {
        let e = ProtocolError::Misbehaviour {
            protocol: ProtocolKind::EcdsaPresign,
            culprits: vec![1, 2],
            detail: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            "ecdsa-presign: aborted by misbehaving parties 1, 2: x"
        );
        assert_eq!(e.culprits(), vec![1, 2]);
    }

    #[test]
    fn a_failed_echo_check_blames_nobody() {
        assert!(unattributable(
            "keygen protocol is failed to complete: protocol was aborted by malicious party: round1 wasn't reliable"
        ));
        assert!(!unattributable("invalid decommitment"));
    }
}
