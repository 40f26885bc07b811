//! Sighash computation from a PSBT's own data (BIP-143 for P2WPKH, BIP-341 key path
//! with all prevouts for P2TR).

use bitcoin::hashes::Hash as _;
use bitcoin::psbt::Psbt;
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{Transaction, TxOut};
use signer_protocol::btc::SighashMessage;

use super::error::WalletError;

/// The hash one input signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSighash {
    /// BIP-143 (segwit v0, P2WPKH) with SIGHASH_ALL. `message` is what the ECDSA
    /// threshold signer consumes; `message.sighash()` is the digest.
    Ecdsa {
        /// The message (keeps `SHA-256(preimage)`, see [`SighashMessage`]).
        message: SighashMessage,
    },
    /// BIP-341 key-path sighash (SIGHASH_DEFAULT or ALL).
    Taproot {
        /// The 32-byte tagged hash.
        digest: [u8; 32],
        /// DEFAULT or ALL.
        sighash_type: TapSighashType,
    },
}

impl InputSighash {
    /// The 32 bytes the signature is over.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            InputSighash::Ecdsa { message } => message.sighash(),
            InputSighash::Taproot { digest, .. } => *digest,
        }
    }

    /// The sighash type byte as the PSBT/consensus encodes it (1 = ALL, 0 = DEFAULT).
    pub fn sighash_type_u32(&self) -> u32 {
        match self {
            InputSighash::Ecdsa { .. } => EcdsaSighashType::All.to_u32(),
            InputSighash::Taproot { sighash_type, .. } => *sighash_type as u32,
        }
    }
}

/// The ECDSA sighash type of a PSBT input: absent or ALL, nothing else.
pub(crate) fn ecdsa_type(psbt: &Psbt, input: usize) -> Result<EcdsaSighashType, WalletError> {
    match psbt.inputs[input].sighash_type {
        None => Ok(EcdsaSighashType::All),
        Some(t) => match t.ecdsa_hash_ty() {
            Ok(EcdsaSighashType::All) => Ok(EcdsaSighashType::All),
            _ => Err(WalletError::UnsupportedSighash {
                input,
                sighash_type: t.to_u32(),
            }),
        },
    }
}

/// The taproot sighash type of a PSBT input: absent (DEFAULT), DEFAULT or ALL.
pub(crate) fn taproot_type(psbt: &Psbt, input: usize) -> Result<TapSighashType, WalletError> {
    match psbt.inputs[input].sighash_type {
        None => Ok(TapSighashType::Default),
        Some(t) => match t.taproot_hash_ty() {
            Ok(ty @ (TapSighashType::Default | TapSighashType::All)) => Ok(ty),
            _ => Err(WalletError::UnsupportedSighash {
                input,
                sighash_type: t.to_u32(),
            }),
        },
    }
}

/// Every input's `witness_utxo`, in input order.
pub(crate) fn prevouts(psbt: &Psbt) -> Result<Vec<TxOut>, WalletError> {
    psbt.inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| {
            inp.witness_utxo.clone().ok_or(WalletError::MissingUtxo {
                input: i,
                what: "witness_utxo",
            })
        })
        .collect()
}

/// Computes the sighash of one input from the PSBT: P2WPKH inputs by BIP-143 over
/// their `witness_utxo`, P2TR inputs by BIP-341 key path over all `witness_utxo`s.
/// Any other script is refused.
pub(crate) fn input_sighash(
    cache: &mut SighashCache<&Transaction>,
    psbt: &Psbt,
    prevouts: &[TxOut],
    input: usize,
) -> Result<InputSighash, WalletError> {
    let spent = prevouts.get(input).ok_or(WalletError::NoSuchInput {
        input,
        count: prevouts.len(),
    })?;
    let spk = &spent.script_pubkey;
    if spk.is_p2wpkh() {
        let ty = ecdsa_type(psbt, input)?;
        let message = SighashMessage::p2wpkh(cache, input, spk, spent.value, ty)
            .map_err(|e| WalletError::Internal(format!("bip-143 sighash of input {input}: {e}")))?;
        Ok(InputSighash::Ecdsa { message })
    } else if spk.is_p2tr() {
        let ty = taproot_type(psbt, input)?;
        let h = cache
            .taproot_key_spend_signature_hash(input, &Prevouts::All(prevouts), ty)
            .map_err(|e| WalletError::Internal(format!("bip-341 sighash of input {input}: {e}")))?;
        Ok(InputSighash::Taproot {
            digest: h.to_byte_array(),
            sighash_type: ty,
        })
    } else {
        Err(WalletError::InputNotOurs {
            input,
            reason: "spent script is neither p2wpkh nor p2tr".into(),
        })
    }
}

/// Recomputes every input's sighash from the PSBT alone (its unsigned transaction,
/// `witness_utxo`s and sighash types), with no reference to keys or policy. A peer
/// node compares the result with the sighashes it is asked to approve; for the full
/// independent check (ownership, amounts, fees) use [`super::validate_psbt`], which
/// computes the same values.
pub fn recompute_sighashes(psbt: &Psbt) -> Result<Vec<InputSighash>, WalletError> {
    let prevouts = prevouts(psbt)?;
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    (0..psbt.inputs.len())
        .map(|i| input_sighash(&mut cache, psbt, &prevouts, i))
        .collect()
}
