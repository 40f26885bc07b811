//! FROST (givre 0.2, Bitcoin ciphersuite) threshold Schnorr for Taproot key-path spends.
//!
//! * [`keygen`]: CGGMP21 DKG as re-exported by givre, HD-enabled, t-of-n.
//! * [`sign`]: givre's interactive (two-round) signing with the BIP-86 tweak (empty
//!   merkle root), optionally for a non-hardened HD child; the 64-byte BIP-340 signature
//!   is verified with libsecp256k1 against the tweaked output key before it is returned.
//!
//! givre's signing protocol takes no execution id: the node's transport must bind every
//! frame to its session (it does, by session-scoped streams), and nonces are fresh per run
//! (the interactive API never exposes them, so they cannot be reused).

use bitcoin::key::{TapTweak, TweakedPublicKey, UntweakedPublicKey};
use bitcoin::secp256k1::{self, PublicKey, Secp256k1, XOnlyPublicKey};
use bitcoin::NetworkKind;
use cggmp24::generic_ec::curves::Secp256k1 as Curve;
use rand::rngs::OsRng;
use round_based::Mpc;
use sha2::Sha256;
use vote::InputPermit;
use zeroize::Zeroizing;

use crate::btc;
use crate::codec::{decode_record, encode_record, RecordKind};
use crate::eid::ExecutionId;
use crate::error::{ProtocolError, ProtocolKind};
use crate::runtime::traced;

/// Message type of [`keygen`].
pub type FrostKeygenMsg = givre::keygen::msg::threshold::Msg<
    Curve,
    givre::keygen::security_level::SecurityLevel128,
    Sha256,
>;
/// Message type of [`sign`].
pub type FrostSignMsg = givre::signing::full_signing::Msg<Curve>;

/// A FROST key share (validated). Secret.
pub struct FrostKeyShare(givre::KeyShare<Curve>);

impl FrostKeyShare {
    /// This party's index at keygen.
    pub fn index(&self) -> u16 {
        self.0.i
    }
    /// Number of parties holding the key.
    pub fn parties(&self) -> u16 {
        self.0.n()
    }
    /// Threshold t.
    pub fn threshold(&self) -> u16 {
        self.0.min_signers()
    }
    /// Shared (master, untweaked) public key as a full point.
    pub fn public_key(&self) -> PublicKey {
        btc::nonzero_to_secp(&self.0.shared_public_key)
            .expect("a non-zero library point is a valid secp256k1 key")
    }
    /// Chain code (`None` if HD was disabled at keygen).
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.0.chain_code
    }
    /// BIP-32 master xpub (depth 0), for `tr(xpub/<0;1>/*)` descriptors.
    pub fn xpub(&self, network: NetworkKind) -> Option<bitcoin::bip32::Xpub> {
        self.chain_code()
            .map(|cc| btc::master_xpub(self.public_key(), cc, network))
    }
    /// Untweaked child public key at a non-hardened `path` (empty: master).
    pub fn derive_public_key(&self, path: &[u32]) -> Result<PublicKey, ProtocolError> {
        if path.is_empty() {
            return Ok(self.public_key());
        }
        let idx = btc::non_hardened(path)?;
        let child = self
            .0
            .derive_child_public_key::<cggmp24::hd_wallet::Slip10, _>(idx)
            .map_err(|e| ProtocolError::InvalidArgument(format!("hd derivation: {e}")))?;
        btc::to_secp_pubkey(&child.public_key)
    }
    /// Taproot internal key (x-only) at `path`.
    pub fn internal_key(&self, path: &[u32]) -> Result<UntweakedPublicKey, ProtocolError> {
        Ok(self.derive_public_key(path)?.x_only_public_key().0)
    }
    /// Taproot output key (BIP-86: internal key tweaked with an empty merkle root) at
    /// `path`: the x-only key in the P2TR output and the key signatures verify against.
    pub fn output_key(&self, path: &[u32]) -> Result<TweakedPublicKey, ProtocolError> {
        let secp = Secp256k1::verification_only();
        Ok(self.internal_key(path)?.tap_tweak(&secp, None).0)
    }

    /// Serializes (secret) for sealing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        encode_record(RecordKind::FrostKeyShare, &self.0)
    }
    /// Deserializes and validates (size bound, kind, library validation).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_record(RecordKind::FrostKeyShare, bytes).map(Self)
    }
}

impl std::fmt::Debug for FrostKeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrostKeyShare")
            .field("index", &self.index())
            .field("t", &self.threshold())
            .field("n", &self.parties())
            .field("public_key", &self.public_key().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// FROST key generation (givre's CGGMP21 DKG, HD-enabled) for party `i` of `n`,
/// threshold `t`.
pub async fn keygen<M>(
    party: M,
    eid: &ExecutionId,
    i: u16,
    n: u16,
    t: u16,
) -> Result<FrostKeyShare, ProtocolError>
where
    M: Mpc<ProtocolMessage = FrostKeygenMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::FrostKeygen;
    if n < 2 || t < 2 || t > n || i >= n {
        return Err(ProtocolError::InvalidArgument(format!(
            "need 2 <= t <= n and i < n, got i={i} t={t} n={n}"
        )));
    }
    let run = async {
        givre::keygen::<Curve>(givre::keygen::ExecutionId::new(eid.as_bytes()), i, n)
            .set_threshold(t)
            .hd_wallet(true)
            .start(&mut OsRng, party)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    traced(KIND, i, n, run).await.map(FrostKeyShare)
}

/// FROST interactive signing of a BIP-341 key-spend sighash by the signer set `signers`
/// (keygen indexes in run order; this party is `signers[position]`), for the child key at
/// `derivation_path` (empty: master), with the BIP-86 tweak.
///
/// Returns the 64-byte BIP-340 signature, verified with libsecp256k1 against
/// [`FrostKeyShare::output_key`]. `permit` must allow exactly `sighash`
/// ([`ProtocolError::NotPermitted`] before any message is sent otherwise).
pub async fn sign<M>(
    party: M,
    position: u16,
    signers: &[u16],
    share: &FrostKeyShare,
    derivation_path: &[u32],
    sighash: &[u8; 32],
    permit: &InputPermit,
) -> Result<secp256k1::schnorr::Signature, ProtocolError>
where
    M: Mpc<ProtocolMessage = FrostSignMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::FrostSign;
    if !permit.permits(sighash) {
        return Err(ProtocolError::NotPermitted { protocol: KIND });
    }
    if signers.len() != usize::from(share.threshold()) {
        return Err(ProtocolError::InvalidArgument(format!(
            "signer set has {} members, threshold is {}",
            signers.len(),
            share.threshold()
        )));
    }
    let mut sorted = signers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != signers.len() || signers.iter().any(|&s| s >= share.parties()) {
        return Err(ProtocolError::InvalidArgument(
            "signer set has duplicates or unknown parties".into(),
        ));
    }
    if signers.get(usize::from(position)) != Some(&share.index()) {
        return Err(ProtocolError::InvalidArgument(format!(
            "position {position} in the signer set is not this share's index {}",
            share.index()
        )));
    }
    let output_key = share.output_key(derivation_path)?;
    let mut builder = givre::signing::<givre::ciphersuite::Bitcoin>(
        position,
        &share.0,
        signers,
        sighash.as_slice(),
    );
    if !derivation_path.is_empty() {
        builder = builder
            .set_derivation_path(btc::non_hardened(derivation_path)?)
            .map_err(|e| ProtocolError::InvalidArgument(format!("hd derivation: {e}")))?;
    }
    let builder = builder
        .set_taproot_tweak(None)
        .map_err(|e| ProtocolError::from_library(KIND, &e))?;
    let run = async {
        builder
            .sign(&mut OsRng, party)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    let sig = traced(KIND, position, share.threshold(), run).await?;
    let mut bytes = [0u8; 64];
    if givre::signing::aggregate::Signature::<givre::ciphersuite::Bitcoin>::serialized_len() != 64 {
        return Err(ProtocolError::InvalidSignature { protocol: KIND });
    }
    sig.write_to_slice(&mut bytes);
    let sig = secp256k1::schnorr::Signature::from_slice(&bytes)
        .map_err(|_| ProtocolError::InvalidSignature { protocol: KIND })?;
    verify_schnorr(&output_key, sighash, &sig)
        .map_err(|_| ProtocolError::InvalidSignature { protocol: KIND })?;
    Ok(sig)
}

/// Verifies a BIP-340 signature over a sighash with libsecp256k1.
pub fn verify_schnorr(
    output_key: &TweakedPublicKey,
    sighash: &[u8; 32],
    sig: &secp256k1::schnorr::Signature,
) -> Result<(), ProtocolError> {
    let secp = Secp256k1::verification_only();
    let msg = secp256k1::Message::from_digest(*sighash);
    let key: XOnlyPublicKey = output_key.to_x_only_public_key();
    secp.verify_schnorr(sig, &msg, &key)
        .map_err(|_| ProtocolError::InvalidSignature {
            protocol: ProtocolKind::FrostSign,
        })
}
