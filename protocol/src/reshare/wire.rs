//! Wire messages of the resharing protocol and the exact bytes each signature covers.
//!
//! Messages travel as [`crate::codec`] frames (version byte || CBOR). Every decoded message
//! is checked for structural bounds ([`ReshareMsg::check_bounds`]) before it is looked at;
//! the frame itself is bounded by [`super::MAX_MESSAGE_SIZE`] in the delivery.
//!
//! Signed statements (Ed25519, by the sender's identity key, see [`super::ReshareSigner`]):
//!
//! ```text
//! D_i        = SHA-256(DOMAIN || "commitments-digest\0" || u16be(count) || C_i0 || .. )  (33-byte points)
//! commitments: DOMAIN || "commitments\0" || eid || setup || u16be(dealer) || D_i
//! sub-share:   DOMAIN || "sub-share\0"   || eid || setup || u16be(dealer) || u16be(receiver)
//!                     || D_i || f_i(I'_j) (32 bytes, big-endian)
//! echo:        DOMAIN || "echo\0"        || eid || setup || u16be(sender) || SHA-256(echo body)
//! ```
//!
//! `dealer`, `receiver` and `sender` are run indexes; `setup` is
//! [`super::ReshareSetup::digest`]. The sub-share signature binds the value to the
//! commitments it claims to match, so a receiver can prove a bad sub-share to anyone who
//! knows the commitments, and a dealer that signs two commitment digests in one run has
//! proven its own equivocation.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::MAX_PARTICIPANTS;

/// Domain separator in front of every signed reshare statement (distinct from the vote
/// domain `signer/vote/v1\0`, so a reshare signature is never a valid vote and back).
pub(crate) const DOMAIN: &[u8] = b"signer-protocol/reshare/v1\0";

/// A fixed-size byte string, CBOR-encoded as a byte string of exactly `N` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct BytesVisitor<const N: usize>;

impl<const N: usize> serde::de::Visitor<'_> for BytesVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a byte string of {N} bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
        v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor::<N>).map(Bytes)
    }
}

/// A 32-byte secret (a sub-share), zeroized on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SecretBytes(pub(crate) [u8; 32]);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut raw = d.deserialize_bytes(BytesVisitor::<32>)?;
        let out = SecretBytes(raw);
        raw.zeroize();
        Ok(out)
    }
}

/// A message of the resharing protocol.
///
/// | message | round | sent by | to | transport |
/// |---|---|---|---|---|
/// | [`ReshareMsg::Commitments`] | 1 | every dealer | every other participant | broadcast |
/// | [`ReshareMsg::SubShare`] | 1 | every dealer | each receiver (except itself) | p2p, confidential |
/// | [`ReshareMsg::Echo`] | 2 | every participant | every other participant | broadcast |
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReshareMsg {
    /// Round 1: the dealer's Feldman commitments.
    Commitments(CommitmentsMsg),
    /// Round 1: the dealer's sub-share for one receiver (secret).
    SubShare(SubShareMsg),
    /// Round 2: what the sender saw in round 1, and its complaints.
    Echo(EchoMsg),
}

impl ReshareMsg {
    /// Whether this message must travel as a broadcast (`true`) or p2p (`false`).
    pub fn is_broadcast(&self) -> bool {
        !matches!(self, ReshareMsg::SubShare(_))
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ReshareMsg::Commitments(_) => "commitments",
            ReshareMsg::SubShare(_) => "sub-share",
            ReshareMsg::Echo(_) => "echo",
        }
    }

    /// Structural bounds a decoded message must meet (lengths of its lists). Values are
    /// checked by the protocol, not here.
    pub(crate) fn check_bounds(&self) -> Result<(), String> {
        let max = usize::from(MAX_PARTICIPANTS);
        match self {
            ReshareMsg::Commitments(c) if c.commitments.len() > max + 1 => Err(format!(
                "{} commitments exceed the bound of {}",
                c.commitments.len(),
                max + 1
            )),
            ReshareMsg::Echo(e) if e.seen.len() > max || e.complaints.len() > max => Err(format!(
                "echo lists ({} seen, {} complaints) exceed the bound of {max}",
                e.seen.len(),
                e.complaints.len()
            )),
            _ => Ok(()),
        }
    }
}

/// Round 1 broadcast: a dealer's Feldman commitments `C_ik = a_ik·G`, signed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitmentsMsg {
    pub(crate) eid: Bytes<32>,
    pub(crate) setup: Bytes<32>,
    /// Compressed points `C_i0 .. C_i,t'-1`.
    pub(crate) commitments: Vec<Bytes<33>>,
    pub(crate) signature: Bytes<64>,
}

impl CommitmentsMsg {
    /// Digest `D_i` of the commitments (what echoes and sub-shares refer to).
    pub fn digest(&self) -> [u8; 32] {
        commitments_digest(&self.commitments)
    }

    /// Number of commitments (must equal the new threshold t').
    pub fn len(&self) -> usize {
        self.commitments.len()
    }

    /// Whether the message carries no commitment at all.
    pub fn is_empty(&self) -> bool {
        self.commitments.is_empty()
    }
}

impl fmt::Debug for CommitmentsMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitmentsMsg")
            .field("count", &self.commitments.len())
            .field("digest", &hex::encode(self.digest()))
            .finish()
    }
}

/// Round 1 p2p: the dealer's sub-share `f_i(I'_j)` for receiver `j`, signed together with
/// the digest of the commitments it must match. Secret: zeroized on drop, redacted in
/// `Debug`; it must travel over a confidential channel.
#[derive(Clone, Serialize, Deserialize)]
pub struct SubShareMsg {
    pub(crate) eid: Bytes<32>,
    pub(crate) setup: Bytes<32>,
    pub(crate) commitments_digest: Bytes<32>,
    pub(crate) value: SecretBytes,
    pub(crate) signature: Bytes<64>,
}

impl fmt::Debug for SubShareMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubShareMsg")
            .field("commitments_digest", &self.commitments_digest)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// What an echo says about one dealer's commitments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Run index of the dealer.
    pub dealer: u16,
    /// `(D_i, dealer's signature)` as received; `None` if the sender got no validly signed
    /// commitments of this run from the dealer (it then also complains).
    pub signed: Option<(Bytes<32>, Bytes<64>)>,
}

/// A complaint against a dealer, carried in an echo.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Complaint {
    /// The dealer's signed commitments (as everyone received them, see the digests) are
    /// invalid: wrong count, bad encoding or constant term not `λ_i·X_i`. Anyone holding
    /// the commitments can check it.
    InvalidCommitments {
        /// Run index of the dealer.
        dealer: u16,
    },
    /// The dealer-signed sub-share to the complainer does not match the dealer's
    /// commitments (or refers to other commitments). The signed sub-share is the evidence;
    /// publishing it is harmless (it is one point of a polynomial that is thrown away).
    InvalidSubShare {
        /// Run index of the dealer.
        dealer: u16,
        /// The dealer's signed message, as received.
        sub_share: SubShareMsg,
    },
    /// The dealer's message to the complainer was missing a valid signature or belonged to
    /// another run: the complainer cannot prove it, the run aborts with both named.
    Unverifiable {
        /// Run index of the dealer.
        dealer: u16,
    },
}

impl Complaint {
    /// Run index of the accused dealer.
    pub fn dealer(&self) -> u16 {
        match self {
            Complaint::InvalidCommitments { dealer }
            | Complaint::InvalidSubShare { dealer, .. }
            | Complaint::Unverifiable { dealer } => *dealer,
        }
    }
}

/// Round 2 broadcast: the digests (with the dealers' signatures) of every dealer's
/// commitments as the sender received them, and its complaints; signed by the sender.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EchoMsg {
    pub(crate) eid: Bytes<32>,
    pub(crate) setup: Bytes<32>,
    /// One entry per dealer, in run-index order.
    pub(crate) seen: Vec<Seen>,
    pub(crate) complaints: Vec<Complaint>,
    pub(crate) signature: Bytes<64>,
}

impl EchoMsg {
    /// The complaints the sender raised.
    pub fn complaints(&self) -> &[Complaint] {
        &self.complaints
    }

    /// What the sender saw of each dealer's commitments.
    pub fn seen(&self) -> &[Seen] {
        &self.seen
    }
}

// ---------------------------------------------------------------------------------------
// signed bytes

/// `D_i` over the commitments as they are on the wire.
pub(crate) fn commitments_digest(points: &[Bytes<33>]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(b"commitments-digest\0");
    h.update(
        u16::try_from(points.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for p in points {
        h.update(p.0);
    }
    h.finalize().into()
}

fn header(tag: &[u8], eid: &[u8; 32], setup: &[u8; 32], capacity: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + tag.len() + 64 + capacity);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(tag);
    m.extend_from_slice(eid);
    m.extend_from_slice(setup);
    m
}

/// Bytes the dealer signs for its commitments.
pub(crate) fn commitments_statement(
    eid: &[u8; 32],
    setup: &[u8; 32],
    dealer: u16,
    digest: &[u8; 32],
) -> Vec<u8> {
    let mut m = header(b"commitments\0", eid, setup, 34);
    m.extend_from_slice(&dealer.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// Bytes the dealer signs for a sub-share (contains the secret value: zeroized).
pub(crate) fn sub_share_statement(
    eid: &[u8; 32],
    setup: &[u8; 32],
    dealer: u16,
    receiver: u16,
    digest: &[u8; 32],
    value: &SecretBytes,
) -> Zeroizing<Vec<u8>> {
    let mut m = Zeroizing::new(header(b"sub-share\0", eid, setup, 68));
    m.extend_from_slice(&dealer.to_be_bytes());
    m.extend_from_slice(&receiver.to_be_bytes());
    m.extend_from_slice(digest);
    m.extend_from_slice(&value.0);
    m
}

/// SHA-256 of an echo's body (everything but its signature), canonical encoding.
fn echo_body_digest(seen: &[Seen], complaints: &[Complaint]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(b"echo-body\0");
    h.update(u16::try_from(seen.len()).unwrap_or(u16::MAX).to_be_bytes());
    for s in seen {
        h.update(s.dealer.to_be_bytes());
        match &s.signed {
            None => h.update([0u8]),
            Some((d, sig)) => {
                h.update([1u8]);
                h.update(d.0);
                h.update(sig.0);
            }
        }
    }
    h.update(
        u16::try_from(complaints.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for c in complaints {
        match c {
            Complaint::InvalidCommitments { dealer } => {
                h.update([1u8]);
                h.update(dealer.to_be_bytes());
            }
            Complaint::InvalidSubShare { dealer, sub_share } => {
                h.update([2u8]);
                h.update(dealer.to_be_bytes());
                h.update(sub_share.eid.0);
                h.update(sub_share.setup.0);
                h.update(sub_share.commitments_digest.0);
                h.update(sub_share.value.0);
                h.update(sub_share.signature.0);
            }
            Complaint::Unverifiable { dealer } => {
                h.update([3u8]);
                h.update(dealer.to_be_bytes());
            }
        }
    }
    h.finalize().into()
}

/// Bytes the sender of an echo signs.
pub(crate) fn echo_statement(
    eid: &[u8; 32],
    setup: &[u8; 32],
    sender: u16,
    seen: &[Seen],
    complaints: &[Complaint],
) -> Vec<u8> {
    let mut m = header(b"echo\0", eid, setup, 34);
    m.extend_from_slice(&sender.to_be_bytes());
    m.extend_from_slice(&echo_body_digest(seen, complaints));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bytes_round_trip_and_refuse_other_lengths() {
        let b = Bytes([7u8; 33]);
        let enc = crate::codec::encode_message(&b).expect("encode");
        let back: Bytes<33> = crate::codec::decode_message(&enc, 1024).expect("decode");
        assert_eq!(back, b);
        assert!(crate::codec::decode_message::<Bytes<32>>(&enc, 1024).is_err());
    }

    #[test]
    fn secret_bytes_debug_is_redacted() {
        let s = SecretBytes([0xab; 32]);
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
