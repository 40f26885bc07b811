//! Who takes part in a reshare and as what; the public data of the old key.

use bitcoin::secp256k1::PublicKey;
use bitcoin::NetworkKind;
use cggmp24::generic_ec::{NonZero, Point, Scalar};
use cggmp24::key_share::{DirtyKeyInfo, IncompleteKeyShare, KeyInfo};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::ReshareError;
use super::math::{self, Curve};
use super::{MAX_MESSAGE_SIZE, MAX_PARTICIPANTS};
use crate::btc;
use crate::codec::{decode_message, decode_record, encode_message, RecordKind};
use crate::ecdsa::{EcdsaIncompleteShare, EcdsaKeyShare};
use crate::eid::ExecutionId;
use crate::frost::FrostKeyShare;

/// Which kind of key is reshared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// CGGMP24 threshold ECDSA (P2WPKH).
    Ecdsa,
    /// FROST / BIP-340 (P2TR key path).
    Frost,
}

impl KeyKind {
    fn tag(self) -> u8 {
        match self {
            KeyKind::Ecdsa => 1,
            KeyKind::Frost => 2,
        }
    }
}

/// Public information of a threshold key: shared public key, chain code, threshold, the
/// parties' public shares and evaluation points. Validated (the public shares interpolate
/// to the public key). Not secret.
#[derive(Clone)]
pub struct PublicKeyInfo(pub(crate) KeyInfo<Curve>);

impl std::fmt::Debug for PublicKeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKeyInfo")
            .field("public_key", &self.public_key().to_string())
            .field("t", &self.threshold())
            .field("n", &self.parties())
            .field("digest", &hex::encode(self.digest()))
            .finish()
    }
}

/// Only the core of a stored ECDSA key share (the aux info is skipped unparsed).
#[derive(Deserialize)]
struct CoreOnly {
    core: IncompleteKeyShare<Curve>,
}

impl PublicKeyInfo {
    pub(crate) fn from_core(core: &IncompleteKeyShare<Curve>) -> Self {
        PublicKeyInfo(
            KeyInfo::validate(core.key_info.clone())
                .unwrap_or_else(|_| unreachable!("the key info of a valid key share is valid")),
        )
    }

    /// Public information of an ECDSA key, from a complete share.
    pub fn from_ecdsa(share: &EcdsaKeyShare) -> Result<Self, ReshareError> {
        Ok(Self::from_core(&core_of_ecdsa(share)?))
    }

    /// Public information of an ECDSA key, from a share without aux info.
    pub fn from_ecdsa_incomplete(share: &EcdsaIncompleteShare) -> Result<Self, ReshareError> {
        Ok(Self::from_core(&core_of_ecdsa_incomplete(share)?))
    }

    /// Public information of a FROST key.
    pub fn from_frost(share: &FrostKeyShare) -> Result<Self, ReshareError> {
        Ok(Self::from_core(&core_of_frost(share)?))
    }

    /// Shared (master) public key. For FROST this is the full point as the key was
    /// generated (its Y may be odd: givre normalizes to even Y only when signing).
    pub fn public_key(&self) -> PublicKey {
        btc::nonzero_to_secp(&self.0.shared_public_key)
            .expect("a non-zero library point is a valid secp256k1 key")
    }

    /// Chain code (`None` if the key is not HD).
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.0.chain_code
    }

    /// BIP-32 master xpub (depth 0).
    pub fn xpub(&self, network: NetworkKind) -> Option<bitcoin::bip32::Xpub> {
        self.chain_code()
            .map(|cc| btc::master_xpub(self.public_key(), cc, network))
    }

    /// Untweaked public key of the child at a non-hardened `path` (empty: master).
    pub fn derive_public_key(&self, path: &[u32]) -> Result<PublicKey, ReshareError> {
        if path.is_empty() {
            return Ok(self.public_key());
        }
        let idx =
            btc::non_hardened(path).map_err(|e| ReshareError::InvalidArgument(e.to_string()))?;
        let child = self
            .0
            .derive_child_public_key::<cggmp24::hd_wallet::Slip10, _>(idx)
            .map_err(|e| ReshareError::InvalidArgument(format!("hd derivation: {e}")))?;
        btc::to_secp_pubkey(&child.public_key)
            .map_err(|e| ReshareError::InvalidArgument(e.to_string()))
    }

    /// Threshold t.
    pub fn threshold(&self) -> u16 {
        self.0
            .vss_setup
            .as_ref()
            .map(|s| s.min_signers)
            .unwrap_or_else(|| self.parties())
    }

    /// Number of parties n.
    pub fn parties(&self) -> u16 {
        u16::try_from(self.0.public_shares.len()).unwrap_or(u16::MAX)
    }

    /// Public share `X_j = x_j·G` of every party, by key index.
    pub fn public_shares(&self) -> Vec<PublicKey> {
        self.0
            .public_shares
            .iter()
            .map(|p| btc::nonzero_to_secp(p).expect("a non-zero library point is a valid key"))
            .collect()
    }

    /// Evaluation point `I_j` of party `j` as a big-endian scalar (`None` for additive,
    /// non-VSS keys).
    pub fn eval_point(&self, j: u16) -> Option<[u8; 32]> {
        let s = self.0.vss_setup.as_ref()?.I.get(usize::from(j))?;
        s.to_be_bytes().as_ref().try_into().ok()
    }

    /// SHA-256 over the canonical encoding: public key, chain code, threshold, evaluation
    /// points and public shares. Equal digests mean equal keys and sharings.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"signer-protocol/reshare/key-info/v1\0");
        self.hash_into(&mut h);
        h.finalize().into()
    }

    fn hash_into(&self, h: &mut Sha256) {
        let k = &self.0;
        h.update(k.shared_public_key.to_bytes(true));
        match &k.chain_code {
            Some(cc) => {
                h.update([1u8]);
                h.update(cc);
            }
            None => h.update([0u8]),
        }
        h.update(self.parties().to_be_bytes());
        match &k.vss_setup {
            Some(vss) => {
                h.update([1u8]);
                h.update(vss.min_signers.to_be_bytes());
                for i in &vss.I {
                    h.update(i.to_be_bytes());
                }
            }
            None => h.update([0u8]),
        }
        for p in &k.public_shares {
            h.update(p.to_bytes(true));
        }
    }

    /// Encodes (public) for the session announcement: new-only participants receive the
    /// old key's public information this way (and check its public key against the key
    /// the operators approved).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ReshareError> {
        encode_message(&*self.0).map_err(|e| ReshareError::InvalidArgument(e.to_string()))
    }

    /// Decodes and validates (bounded to [`MAX_MESSAGE_SIZE`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReshareError> {
        let dirty: DirtyKeyInfo<Curve> = decode_message(bytes, MAX_MESSAGE_SIZE)
            .map_err(|e| ReshareError::InvalidArgument(format!("key info: {e}")))?;
        if dirty.public_shares.len() > usize::from(MAX_PARTICIPANTS) {
            return Err(ReshareError::InvalidArgument(
                "key info has too many parties".into(),
            ));
        }
        KeyInfo::validate(dirty)
            .map(PublicKeyInfo)
            .map_err(|e| ReshareError::InvalidArgument(format!("key info: {}", e.error())))
    }

    pub(crate) fn shared_point(&self) -> NonZero<Point<Curve>> {
        self.0.shared_public_key
    }
}

impl PartialEq for PublicKeyInfo {
    fn eq(&self, other: &Self) -> bool {
        self.digest() == other.digest()
    }
}

impl Eq for PublicKeyInfo {}

// ---------------------------------------------------------------------------------------
// secret cores of the crate's share types (they keep their library value private: go
// through their sealed record form, in zeroizing memory)

pub(crate) fn core_of_ecdsa(
    share: &EcdsaKeyShare,
) -> Result<IncompleteKeyShare<Curve>, ReshareError> {
    let bytes = share.to_bytes().map_err(ReshareError::Share)?;
    decode_record::<CoreOnly>(RecordKind::EcdsaKeyShare, &bytes)
        .map(|c| c.core)
        .map_err(ReshareError::Share)
}

pub(crate) fn core_of_ecdsa_incomplete(
    share: &EcdsaIncompleteShare,
) -> Result<IncompleteKeyShare<Curve>, ReshareError> {
    let bytes = share.to_bytes().map_err(ReshareError::Share)?;
    decode_record(RecordKind::EcdsaIncompleteShare, &bytes).map_err(ReshareError::Share)
}

pub(crate) fn core_of_frost(
    share: &FrostKeyShare,
) -> Result<IncompleteKeyShare<Curve>, ReshareError> {
    let bytes = share.to_bytes().map_err(ReshareError::Share)?;
    decode_record(RecordKind::FrostKeyShare, &bytes).map_err(ReshareError::Share)
}

/// The old key share a dealer deals from (borrowed: the protocol never changes it).
#[derive(Debug, Clone, Copy)]
pub enum OldShare<'a> {
    /// A complete CGGMP24 share.
    Ecdsa(&'a EcdsaKeyShare),
    /// A CGGMP24 share without aux info.
    EcdsaIncomplete(&'a EcdsaIncompleteShare),
    /// A FROST share.
    Frost(&'a FrostKeyShare),
}

impl OldShare<'_> {
    /// Kind of key.
    pub fn kind(&self) -> KeyKind {
        match self {
            OldShare::Ecdsa(_) | OldShare::EcdsaIncomplete(_) => KeyKind::Ecdsa,
            OldShare::Frost(_) => KeyKind::Frost,
        }
    }

    pub(crate) fn core(&self) -> Result<IncompleteKeyShare<Curve>, ReshareError> {
        match self {
            OldShare::Ecdsa(s) => core_of_ecdsa(s),
            OldShare::EcdsaIncomplete(s) => core_of_ecdsa_incomplete(s),
            OldShare::Frost(s) => core_of_frost(s),
        }
    }
}

impl<'a> From<&'a EcdsaKeyShare> for OldShare<'a> {
    fn from(s: &'a EcdsaKeyShare) -> Self {
        OldShare::Ecdsa(s)
    }
}

impl<'a> From<&'a EcdsaIncompleteShare> for OldShare<'a> {
    fn from(s: &'a EcdsaIncompleteShare) -> Self {
        OldShare::EcdsaIncomplete(s)
    }
}

impl<'a> From<&'a FrostKeyShare> for OldShare<'a> {
    fn from(s: &'a FrostKeyShare) -> Self {
        OldShare::Frost(s)
    }
}

// ---------------------------------------------------------------------------------------
// setup

/// One participant of a reshare run (the position in [`ReshareSetup::participants`] is its
/// run index, the index its messages carry on the transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// Ed25519 identity key that signs this participant's messages (the node's vote key).
    pub identity_key: [u8; 32],
    /// Its index in the OLD key if it deals (one of the t old holders of the dealer set).
    pub dealer_index: Option<u16>,
    /// Its index in the NEW key if it receives a new share.
    pub receiver_index: Option<u16>,
}

impl Participant {
    /// An old holder that deals and gets a new share (kept node).
    pub fn dealer_and_receiver(identity_key: [u8; 32], old: u16, new: u16) -> Self {
        Self {
            identity_key,
            dealer_index: Some(old),
            receiver_index: Some(new),
        }
    }
    /// An old holder that deals but leaves (removed node).
    pub fn dealer_only(identity_key: [u8; 32], old: u16) -> Self {
        Self {
            identity_key,
            dealer_index: Some(old),
            receiver_index: None,
        }
    }
    /// A node that only receives (new node, or old holder outside the dealer set).
    pub fn receiver_only(identity_key: [u8; 32], new: u16) -> Self {
        Self {
            identity_key,
            dealer_index: None,
            receiver_index: Some(new),
        }
    }
}

/// Everything all participants of one reshare run must agree on. Built by every node from
/// the session announcement; [`Self::digest`] goes into every signed message, so parties
/// with different setups fail at the first message instead of producing different keys.
///
/// A refresh is the special case where the receivers are the old holders with their old
/// indexes and the threshold and party count stay the same.
#[derive(Clone)]
pub struct ReshareSetup {
    kind: KeyKind,
    old: PublicKeyInfo,
    new_threshold: u16,
    new_parties: u16,
    participants: Vec<Participant>,
    digest: [u8; 32],
    /// Run indexes of the dealers, ascending.
    dealers: Vec<u16>,
    /// `lambdas[k]`: Lagrange coefficient at 0 of dealer `dealers[k]` within the dealer set.
    lambdas: Vec<Scalar<Curve>>,
    /// `receivers[j]`: run index of the participant with new index `j`.
    receivers: Vec<u16>,
}

impl std::fmt::Debug for ReshareSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReshareSetup")
            .field("kind", &self.kind)
            .field("old", &self.old)
            .field("new_threshold", &self.new_threshold)
            .field("new_parties", &self.new_parties)
            .field("participants", &self.participants.len())
            .field("digest", &hex::encode(self.digest))
            .finish()
    }
}

impl ReshareSetup {
    /// Checks and builds a setup:
    /// * 2..=[`MAX_PARTICIPANTS`] participants, distinct identity keys, each dealing,
    ///   receiving or both;
    /// * exactly `old.threshold()` dealers, with distinct old indexes `< old.parties()`;
    /// * `2 <= new_threshold <= new_parties <= MAX_PARTICIPANTS` and the receivers' new
    ///   indexes are exactly `0..new_parties`;
    /// * the old key is a VSS (polynomial) sharing.
    pub fn new(
        kind: KeyKind,
        old: PublicKeyInfo,
        new_threshold: u16,
        new_parties: u16,
        participants: Vec<Participant>,
    ) -> Result<Self, ReshareError> {
        let bad = |m: String| ReshareError::InvalidArgument(m);
        let count = participants.len();
        if !(2..=usize::from(MAX_PARTICIPANTS)).contains(&count) {
            return Err(bad(format!(
                "need 2..={MAX_PARTICIPANTS} participants, got {count}"
            )));
        }
        if new_threshold < 2 || new_threshold > new_parties || new_parties > MAX_PARTICIPANTS {
            return Err(bad(format!(
                "need 2 <= t' <= n' <= {MAX_PARTICIPANTS}, got t'={new_threshold} n'={new_parties}"
            )));
        }
        let Some(old_vss) = old.0.vss_setup.as_ref() else {
            return Err(bad(
                "the old key is an additive (non-threshold) sharing".into()
            ));
        };
        let mut keys: Vec<&[u8; 32]> = participants.iter().map(|p| &p.identity_key).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != count {
            return Err(bad("two participants share an identity key".into()));
        }
        let mut dealers = Vec::new();
        let mut dealer_old = Vec::new();
        let mut receivers: Vec<Option<u16>> = vec![None; usize::from(new_parties)];
        for (r, p) in (0u16..).zip(&participants) {
            if p.dealer_index.is_none() && p.receiver_index.is_none() {
                return Err(bad(format!("participant {r} neither deals nor receives")));
            }
            if let Some(i) = p.dealer_index {
                if i >= old.parties() || dealer_old.contains(&i) {
                    return Err(bad(format!(
                        "participant {r}: old index {i} is unknown or taken"
                    )));
                }
                dealers.push(r);
                dealer_old.push(i);
            }
            if let Some(j) = p.receiver_index {
                match receivers.get_mut(usize::from(j)) {
                    Some(slot @ None) => *slot = Some(r),
                    _ => {
                        return Err(bad(format!(
                            "participant {r}: new index {j} is unknown or taken"
                        )))
                    }
                }
            }
        }
        if dealers.len() != usize::from(old.threshold()) {
            return Err(bad(format!(
                "the dealer set has {} members, the old threshold is {}",
                dealers.len(),
                old.threshold()
            )));
        }
        let receivers: Vec<u16> = receivers
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| bad("some new index has no receiver".into()))?;
        let xs: Vec<Scalar<Curve>> = dealer_old
            .iter()
            .map(|&i| *old_vss.I[usize::from(i)])
            .collect();
        let lambdas = (0..xs.len())
            .map(|k| math::lagrange_at_zero(&xs, k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("old evaluation points of the dealers are not distinct".into()))?;
        let mut setup = Self {
            kind,
            old,
            new_threshold,
            new_parties,
            participants,
            digest: [0; 32],
            dealers,
            lambdas,
            receivers,
        };
        setup.digest = setup.compute_digest();
        Ok(setup)
    }

    /// A refresh: the same parties keep their indexes, threshold and party count;
    /// `identity_keys[i]` is the identity key of old holder `i`, `dealers` the old indexes
    /// of the t dealers. Run index = old index.
    pub fn refresh(
        kind: KeyKind,
        old: PublicKeyInfo,
        identity_keys: &[[u8; 32]],
        dealers: &[u16],
    ) -> Result<Self, ReshareError> {
        if identity_keys.len() != usize::from(old.parties()) {
            return Err(ReshareError::InvalidArgument(format!(
                "{} identity keys for {} parties",
                identity_keys.len(),
                old.parties()
            )));
        }
        let participants = (0u16..)
            .zip(identity_keys)
            .map(|(i, k)| Participant {
                identity_key: *k,
                dealer_index: dealers.contains(&i).then_some(i),
                receiver_index: Some(i),
            })
            .collect();
        let (t, n) = (old.threshold(), old.parties());
        Self::new(kind, old, t, n, participants)
    }

    /// Whether this setup is a refresh (same threshold and party count, every old holder
    /// receives its own index; run index = old index).
    pub fn is_refresh(&self) -> bool {
        self.new_threshold == self.old.threshold()
            && self.new_parties == self.old.parties()
            && (0u16..)
                .zip(&self.participants)
                .all(|(r, p)| p.receiver_index == Some(r))
    }

    fn compute_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"signer-protocol/reshare/setup/v1\0");
        h.update([self.kind.tag()]);
        self.old.hash_into(&mut h);
        h.update(self.new_threshold.to_be_bytes());
        h.update(self.new_parties.to_be_bytes());
        h.update(
            u16::try_from(self.participants.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for p in &self.participants {
            h.update(p.identity_key);
            for role in [p.dealer_index, p.receiver_index] {
                match role {
                    Some(i) => {
                        h.update([1u8]);
                        h.update(i.to_be_bytes());
                    }
                    None => h.update([0u8, 0, 0]),
                }
            }
        }
        h.finalize().into()
    }

    /// Execution id for one attempt (`session_id`: fresh per attempt, e.g. the session
    /// uuid the coordinator announced): `SHA-256("signer-protocol/reshare/execution-id/v1\0"
    /// || session_id || setup digest)`.
    pub fn execution_id(&self, session_id: &[u8; 16]) -> ExecutionId {
        let mut h = Sha256::new();
        h.update(b"signer-protocol/reshare/execution-id/v1\0");
        h.update(session_id);
        h.update(self.digest);
        ExecutionId(h.finalize().into())
    }

    /// Kind of key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    /// Public information of the old key.
    pub fn old_key(&self) -> &PublicKeyInfo {
        &self.old
    }
    /// New threshold t'.
    pub fn new_threshold(&self) -> u16 {
        self.new_threshold
    }
    /// New number of parties n'.
    pub fn new_parties(&self) -> u16 {
        self.new_parties
    }
    /// Participants in run-index order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }
    /// Number of participants (parties of the run).
    pub fn run_parties(&self) -> u16 {
        u16::try_from(self.participants.len()).unwrap_or(u16::MAX)
    }
    /// Run indexes of the dealers, ascending.
    pub fn dealers(&self) -> &[u16] {
        &self.dealers
    }
    /// Run index of the receiver with new index `j`.
    pub fn receiver_run_index(&self, j: u16) -> Option<u16> {
        self.receivers.get(usize::from(j)).copied()
    }
    /// SHA-256 binding everything above (kind, old key, t', n', participants and roles).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub(crate) fn participant(&self, r: u16) -> Option<&Participant> {
        self.participants.get(usize::from(r))
    }

    /// Position of run index `r` among the dealers.
    pub(crate) fn dealer_position(&self, r: u16) -> Option<usize> {
        self.dealers.iter().position(|&d| d == r)
    }

    /// `λ_i` of dealer at run index `r`.
    pub(crate) fn lambda(&self, r: u16) -> Option<&Scalar<Curve>> {
        self.dealer_position(r).and_then(|k| self.lambdas.get(k))
    }

    /// `λ_i·X_i` for the dealer at run index `r`: the constant commitment it must publish.
    pub(crate) fn expected_constant(&self, r: u16) -> Option<Point<Curve>> {
        let i = self.participant(r)?.dealer_index?;
        let x = self.old.0.public_shares.get(usize::from(i))?;
        Some(**x * self.lambda(r)?)
    }

    /// New evaluation point of the receiver at run index `r`.
    pub(crate) fn new_eval_point(&self, r: u16) -> Option<NonZero<Scalar<Curve>>> {
        self.participant(r)?.receiver_index.map(math::eval_point)
    }
}
