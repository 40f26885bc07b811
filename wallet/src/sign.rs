//! Completion: verified signature filling, finalization and consensus verification.

use bitcoin::key::XOnlyPublicKey;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa, schnorr, Message, PublicKey};
use bitcoin::sighash::SighashCache;
use bitcoin::{CompressedPublicKey, ScriptBuf, Transaction, TxOut, Witness};

use super::error::WalletError;
use super::intake::MAX_MONEY_SATS;
use super::keys::secp;
use super::sighash::{ecdsa_type, input_sighash, prevouts, taproot_type};

/// Script verification flags for [`verify_consensus`]: everything up to and
/// including Taproot (P2SH, DERSIG, NULLDUMMY, CLTV, CSV, WITNESS, TAPROOT).
pub const CONSENSUS_FLAGS: u32 =
    bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT;

fn check_input(psbt: &Psbt, input: usize) -> Result<&TxOut, WalletError> {
    let inp = psbt.inputs.get(input).ok_or(WalletError::NoSuchInput {
        input,
        count: psbt.inputs.len(),
    })?;
    if inp.final_script_sig.is_some() || inp.final_script_witness.is_some() {
        return Err(WalletError::InputAlreadySigned { input });
    }
    inp.witness_utxo.as_ref().ok_or(WalletError::MissingUtxo {
        input,
        what: "witness_utxo",
    })
}

/// Verifies an ECDSA signature for P2WPKH input `input` (the key must own the
/// spent script, the signature must verify, low-s, over the BIP-143 SIGHASH_ALL
/// hash recomputed from the PSBT) and only then stores it in `partial_sigs`.
pub fn fill_ecdsa_signature(
    psbt: &mut Psbt,
    input: usize,
    pubkey: PublicKey,
    signature: ecdsa::Signature,
) -> Result<(), WalletError> {
    let utxo = check_input(psbt, input)?;
    let expected = ScriptBuf::new_p2wpkh(&CompressedPublicKey(pubkey).wpubkey_hash());
    if utxo.script_pubkey != expected {
        return Err(WalletError::KeyMismatch { input });
    }
    let ty = ecdsa_type(psbt, input)?;
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    // BIP-143 only needs this input's own prevout
    let mut prevs = vec![TxOut::NULL; psbt.inputs.len()];
    prevs[input] = utxo.clone();
    let digest = input_sighash(&mut cache, psbt, &prevs, input)?.digest();
    secp()
        .verify_ecdsa(&Message::from_digest(digest), &signature, &pubkey)
        .map_err(|_| WalletError::SignatureInvalid { input })?;
    psbt.inputs[input].partial_sigs.insert(
        bitcoin::PublicKey::new(pubkey),
        bitcoin::ecdsa::Signature {
            signature,
            sighash_type: ty,
        },
    );
    Ok(())
}

/// Verifies a BIP-340 signature for P2TR input `input` against the output key in
/// the spent script (the BIP-86-tweaked key) over the BIP-341 key-path sighash
/// recomputed from the PSBT (all prevouts), and only then stores it in
/// `tap_key_sig`.
pub fn fill_taproot_signature(
    psbt: &mut Psbt,
    input: usize,
    signature: schnorr::Signature,
) -> Result<(), WalletError> {
    let utxo = check_input(psbt, input)?;
    let output_key =
        taproot_output_key(&utxo.script_pubkey).ok_or(WalletError::KeyMismatch { input })?;
    let ty = taproot_type(psbt, input)?;
    let prevs = prevouts(psbt)?;
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let digest = input_sighash(&mut cache, psbt, &prevs, input)?.digest();
    secp()
        .verify_schnorr(&signature, &Message::from_digest(digest), &output_key)
        .map_err(|_| WalletError::SignatureInvalid { input })?;
    psbt.inputs[input].tap_key_sig = Some(bitcoin::taproot::Signature {
        signature,
        sighash_type: ty,
    });
    Ok(())
}

/// The x-only output key of a P2TR script.
fn taproot_output_key(script: &bitcoin::Script) -> Option<XOnlyPublicKey> {
    if !script.is_p2tr() {
        return None;
    }
    XOnlyPublicKey::from_slice(&script.as_bytes()[2..34]).ok()
}

/// Finalizes every input (BIP-174 finalizer: `final_script_witness` from
/// `partial_sigs` / `tap_key_sig`, other per-input fields cleared) and extracts the
/// signed transaction. Signatures are not re-verified here: [`fill_ecdsa_signature`]
/// and [`fill_taproot_signature`] did, and [`verify_consensus`] (or
/// [`finalize_and_verify`]) checks the result.
pub fn finalize(mut psbt: Psbt) -> Result<Transaction, WalletError> {
    for (i, inp) in psbt.inputs.iter_mut().enumerate() {
        if inp.final_script_sig.is_some() || inp.final_script_witness.is_some() {
            return Err(WalletError::NotFinalizable {
                input: i,
                reason: "already finalized".into(),
            });
        }
        let utxo = inp.witness_utxo.as_ref().ok_or(WalletError::MissingUtxo {
            input: i,
            what: "witness_utxo",
        })?;
        let witness = if utxo.script_pubkey.is_p2wpkh() {
            let mut matching = inp.partial_sigs.iter().filter(|(pk, _)| {
                CompressedPublicKey::try_from(**pk)
                    .map(|c| ScriptBuf::new_p2wpkh(&c.wpubkey_hash()) == utxo.script_pubkey)
                    .unwrap_or(false)
            });
            let (pk, sig) = matching.next().ok_or_else(|| WalletError::NotFinalizable {
                input: i,
                reason: "no signature for the input's key".into(),
            })?;
            Witness::p2wpkh(sig, &pk.inner)
        } else if utxo.script_pubkey.is_p2tr() {
            let sig = inp.tap_key_sig.ok_or_else(|| WalletError::NotFinalizable {
                input: i,
                reason: "no taproot key-path signature".into(),
            })?;
            Witness::p2tr_key_spend(&sig)
        } else {
            return Err(WalletError::NotFinalizable {
                input: i,
                reason: "spent script is neither p2wpkh nor p2tr".into(),
            });
        };
        let witness_utxo = inp.witness_utxo.take();
        let non_witness_utxo = inp.non_witness_utxo.take();
        let unknown = std::mem::take(&mut inp.unknown);
        let proprietary = std::mem::take(&mut inp.proprietary);
        *inp = bitcoin::psbt::Input {
            witness_utxo,
            non_witness_utxo,
            final_script_witness: Some(witness),
            unknown,
            proprietary,
            ..Default::default()
        };
    }
    Ok(psbt.extract_tx_unchecked_fee_rate())
}

/// [`finalize`], then [`verify_consensus`] against the PSBT's `witness_utxo`s.
pub fn finalize_and_verify(psbt: Psbt) -> Result<Transaction, WalletError> {
    let spent = prevouts(&psbt)?;
    let tx = finalize(psbt)?;
    verify_consensus(&tx, &spent)?;
    Ok(tx)
}

/// Verifies every input of `tx` with Bitcoin Core's consensus script interpreter
/// (`libbitcoinconsensus` 26.0 through the `bitcoinconsensus` crate), passing all
/// spent outputs so Taproot inputs are fully checked, with [`CONSENSUS_FLAGS`].
/// `spent_outputs[i]` is the output input `i` spends.
pub fn verify_consensus(tx: &Transaction, spent_outputs: &[TxOut]) -> Result<(), WalletError> {
    if spent_outputs.len() != tx.input.len() {
        return Err(WalletError::Internal(format!(
            "{} spent outputs given for {} inputs",
            spent_outputs.len(),
            tx.input.len()
        )));
    }
    let mut utxos = Vec::with_capacity(spent_outputs.len());
    for (i, o) in spent_outputs.iter().enumerate() {
        let value = o.value.to_sat();
        if value > MAX_MONEY_SATS {
            return Err(WalletError::AmountOutOfRange(format!(
                "spent output of input {i} has {value} sats, more than can exist"
            )));
        }
        let len = u32::try_from(o.script_pubkey.len())
            .map_err(|_| WalletError::Internal(format!("spent script of input {i} too long")))?;
        let value = i64::try_from(value)
            .map_err(|_| WalletError::Internal(format!("value of input {i} out of range")))?;
        // the pointers borrow `spent_outputs`, which outlives every call below
        utxos.push(bitcoinconsensus::Utxo {
            script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: len,
            value,
        });
    }
    let bytes = bitcoin::consensus::serialize(tx);
    for (i, o) in spent_outputs.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            o.script_pubkey.as_bytes(),
            o.value.to_sat(),
            &bytes,
            Some(&utxos),
            i,
            CONSENSUS_FLAGS,
        )
        .map_err(|e| WalletError::ConsensusFailed {
            input: i,
            reason: match e {
                bitcoinconsensus::Error::ERR_SCRIPT => "script evaluation failed".to_owned(),
                other => other.to_string(),
            },
        })?;
    }
    Ok(())
}
