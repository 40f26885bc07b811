//! Bitcoin glue: sighash messages, key conversions, HD paths, xpubs.

use bitcoin::bip32::{ChainCode, ChildNumber, Xpub};
use bitcoin::secp256k1::{self, PublicKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, NetworkKind, Script, Transaction};
use cggmp24::generic_ec::{curves::Secp256k1, NonZero, Point};
use sha2::{Digest, Sha256};

use crate::error::ProtocolError;

/// A message to be signed with ECDSA, as Bitcoin defines it: the signature is over
/// `sighash = SHA-256(SHA-256(preimage))` (BIP-143 for segwit v0).
///
/// cggmp24 only issues partial signatures from a presignature for a `DataToSign` whose
/// preimage is known (RUSTSEC-2025-0127: signing raw hashes with presignatures allows
/// forgeries). This type keeps the inner hash `h1 = SHA-256(preimage)` and hands the
/// library a `DataToSign` built by hashing `h1` with SHA-256, so the value signed is
/// exactly the Bitcoin sighash and the library's last hash step is real.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SighashMessage {
    inner: [u8; 32],
}

impl std::fmt::Debug for SighashMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SighashMessage({})", hex::encode(self.sighash()))
    }
}

impl SighashMessage {
    /// From the full signing preimage (e.g. BIP-143 serialization).
    pub fn from_preimage(preimage: &[u8]) -> Self {
        Self {
            inner: Sha256::digest(preimage).into(),
        }
    }

    /// From `SHA-256(preimage)` when the caller already ran the first hash. Safe for
    /// presignatures too: the library still hashes these 32 bytes itself, so a chosen
    /// sighash cannot be injected without a SHA-256 preimage.
    pub fn from_single_sha256(inner: [u8; 32]) -> Self {
        Self { inner }
    }

    /// BIP-143 message for a P2WPKH input: builds the preimage with the `bitcoin` crate's
    /// [`SighashCache::segwit_v0_encode_signing_data_to`].
    pub fn p2wpkh<T: std::borrow::Borrow<Transaction>>(
        cache: &mut SighashCache<T>,
        input_index: usize,
        spent_script_pubkey: &Script,
        value: Amount,
        sighash_type: EcdsaSighashType,
    ) -> Result<Self, ProtocolError> {
        let script_code = spent_script_pubkey
            .p2wpkh_script_code()
            .ok_or_else(|| ProtocolError::InvalidArgument("spent output is not p2wpkh".into()))?;
        let mut preimage = Vec::with_capacity(256);
        cache
            .segwit_v0_encode_signing_data_to(
                &mut preimage,
                input_index,
                &script_code,
                value,
                sighash_type,
            )
            .map_err(|e| ProtocolError::InvalidArgument(format!("bip-143 preimage: {e}")))?;
        Ok(Self::from_preimage(&preimage))
    }

    /// The Bitcoin sighash (double SHA-256), the 32 bytes libsecp256k1 verifies against.
    pub fn sighash(&self) -> [u8; 32] {
        Sha256::digest(self.inner).into()
    }

    /// The library's `DataToSign` (SHA-256 over the inner hash).
    pub(crate) fn data_to_sign(&self) -> cggmp24::DataToSign<Secp256k1> {
        cggmp24::DataToSign::from_digest(Sha256::new().chain_update(self.inner))
    }
}

/// Checks that every index is non-hardened (< 2^31), the only kind threshold keys can
/// derive.
pub(crate) fn check_path(path: &[u32]) -> Result<(), ProtocolError> {
    if let Some(bad) = path.iter().find(|&&i| i >= 1 << 31) {
        return Err(ProtocolError::InvalidArgument(format!(
            "derivation index {bad} is hardened; only non-hardened paths are supported"
        )));
    }
    if path.len() > 255 {
        return Err(ProtocolError::InvalidArgument(
            "derivation path longer than 255".into(),
        ));
    }
    Ok(())
}

pub(crate) fn non_hardened(
    path: &[u32],
) -> Result<Vec<cggmp24::hd_wallet::NonHardenedIndex>, ProtocolError> {
    check_path(path)?;
    path.iter()
        .map(|&i| {
            cggmp24::hd_wallet::NonHardenedIndex::try_from(i).map_err(|_| {
                ProtocolError::InvalidArgument(format!("derivation index {i} is hardened"))
            })
        })
        .collect()
}

/// Converts a library point into a libsecp256k1 public key.
pub(crate) fn to_secp_pubkey(p: &Point<Secp256k1>) -> Result<PublicKey, ProtocolError> {
    PublicKey::from_slice(&p.to_bytes(true)).map_err(|e| ProtocolError::InvalidEncoding {
        what: "public key",
        reason: e.to_string(),
    })
}

pub(crate) fn nonzero_to_secp(p: &NonZero<Point<Secp256k1>>) -> Result<PublicKey, ProtocolError> {
    to_secp_pubkey(p)
}

/// BIP-32 master xpub (depth 0) from a public key and chain code. Non-hardened child
/// derivation of this xpub with the `bitcoin` crate gives the same keys as the
/// threshold libraries' SLIP-10 derivation on secp256k1 (SLIP-10 equals BIP-32 there).
pub fn master_xpub(public_key: PublicKey, chain_code: [u8; 32], network: NetworkKind) -> Xpub {
    Xpub {
        network,
        depth: 0,
        parent_fingerprint: Default::default(),
        child_number: ChildNumber::from_normal_idx(0).expect("0 is a valid normal index"),
        public_key,
        chain_code: ChainCode::from(chain_code),
    }
}

/// Verifies an ECDSA signature with libsecp256k1 over a Bitcoin sighash.
pub fn verify_ecdsa(
    pk: &PublicKey,
    msg: &SighashMessage,
    sig: &secp256k1::ecdsa::Signature,
) -> Result<(), ProtocolError> {
    let secp = secp256k1::Secp256k1::verification_only();
    let m = secp256k1::Message::from_digest(msg.sighash());
    secp.verify_ecdsa(&m, sig, pk)
        .map_err(|_| ProtocolError::InvalidSignature {
            protocol: crate::ProtocolKind::EcdsaSign,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sighash_is_double_sha256_of_preimage() {
        let pre = b"some preimage";
        let m = SighashMessage::from_preimage(pre);
        let expect: [u8; 32] = Sha256::digest(Sha256::digest(pre)).into();
        assert_eq!(m.sighash(), expect);
        assert_eq!(
            SighashMessage::from_single_sha256(Sha256::digest(pre).into()),
            m
        );
        // the library scalar is the sighash reduced mod n
        let scalar = m.data_to_sign().to_scalar();
        assert_eq!(
            scalar,
            cggmp24::generic_ec::Scalar::<Secp256k1>::from_be_bytes_mod_order(expect)
        );
    }

    #[test]
    fn hardened_indexes_are_refused() {
        assert!(check_path(&[0, 1, 5]).is_ok());
        assert!(check_path(&[0x8000_0000]).is_err());
    }
}
