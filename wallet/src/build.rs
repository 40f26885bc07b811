//! UTXO import and the recipient + amount form: coin selection and PSBT building.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::psbt::Psbt;
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Address, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use serde::{Deserialize, Serialize};

use super::error::{clip, WalletError};
use super::intake::{
    dust_threshold, estimate_vsize, validate_psbt, IntakeLimits, ValidatedPsbt, MAX_MONEY_SATS,
};
use super::keys::{KeyKind, ScriptPath, WalletKey, CHANGE_CHAIN};

/// Longest recipient address text accepted before parsing.
pub const MAX_ADDRESS_LEN: usize = 128;

/// An output the wallet can spend, as imported from a funding transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnedUtxo {
    /// Key that owns it.
    pub key_id: String,
    /// The output.
    pub outpoint: OutPoint,
    /// Value.
    pub value_sats: u64,
    /// Its scriptPubKey.
    pub script_pubkey: ScriptBuf,
    /// Chain (0 receive, 1 change).
    pub chain: u32,
    /// Index within the chain.
    pub index: u32,
}

/// Decodes a raw funding transaction (binary, or hex text with surrounding
/// whitespace) with a size bound of `limits.max_tx_bytes`, and returns the outputs
/// that pay one of `keys`' scripts (within each key's lookahead).
pub fn scan_funding_tx(
    raw: &[u8],
    keys: &[WalletKey],
    limits: &IntakeLimits,
) -> Result<Vec<OwnedUtxo>, WalletError> {
    let tx = decode_funding_tx(raw, limits)?;
    let txid = tx.compute_txid();
    let mut found = Vec::new();
    for (vout, out) in tx.output.iter().enumerate() {
        for key in keys {
            if let Some(p) = key.find_path(&out.script_pubkey) {
                let value = out.value.to_sat();
                if value > MAX_MONEY_SATS {
                    return Err(WalletError::AmountOutOfRange(format!(
                        "output {vout} pays {value} sats, more than can exist"
                    )));
                }
                found.push(OwnedUtxo {
                    key_id: key.key_id().to_owned(),
                    outpoint: OutPoint {
                        txid,
                        vout: u32::try_from(vout)
                            .map_err(|_| WalletError::TxMalformed("too many outputs".into()))?,
                    },
                    value_sats: value,
                    script_pubkey: out.script_pubkey.clone(),
                    chain: p.chain,
                    index: p.index,
                });
            }
        }
    }
    tracing::debug!(%txid, found = found.len(), "funding transaction scanned");
    Ok(found)
}

/// Decodes a raw funding transaction (binary, or hex text with surrounding
/// whitespace) with a size bound of `limits.max_tx_bytes`.
pub fn decode_funding_tx(raw: &[u8], limits: &IntakeLimits) -> Result<Transaction, WalletError> {
    let max = limits.max_tx_bytes;
    let text = raw.trim_ascii();
    let decoded: Vec<u8>;
    let bytes: &[u8] = if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
        if text.len() > max.saturating_mul(2) {
            return Err(WalletError::TxTooLarge {
                size: text.len() / 2,
                limit: max,
            });
        }
        decoded = hex::decode(text).map_err(|e| WalletError::TxMalformed(format!("hex: {e}")))?;
        &decoded
    } else {
        if raw.len() > max {
            return Err(WalletError::TxTooLarge {
                size: raw.len(),
                limit: max,
            });
        }
        raw
    };
    let tx: Transaction = bitcoin::consensus::deserialize(bytes)
        .map_err(|e| WalletError::TxMalformed(e.to_string()))?;
    if tx.input.is_empty() || tx.output.is_empty() {
        return Err(WalletError::TxMalformed(
            "a transaction needs inputs and outputs".into(),
        ));
    }
    Ok(tx)
}

/// Parses `text` as an address for `network`.
pub fn parse_address(text: &str, network: bitcoin::Network) -> Result<Address, WalletError> {
    if text.len() > MAX_ADDRESS_LEN {
        return Err(WalletError::AddressInvalid {
            address: clip(text),
            reason: format!("longer than {MAX_ADDRESS_LEN} characters"),
        });
    }
    let a =
        Address::<NetworkUnchecked>::from_str(text).map_err(|e| WalletError::AddressInvalid {
            address: clip(text),
            reason: e.to_string(),
        })?;
    if !a.is_valid_for_network(network) {
        return Err(WalletError::AddressWrongNetwork {
            address: clip(text),
            network: network.to_string(),
        });
    }
    Ok(a.assume_checked())
}

/// Builds (and validates, exactly as [`super::intake_psbt`] would) a PSBT paying
/// `amount_sats` to `recipient` from `utxos` of `key`.
///
/// Coin selection is deterministic, largest first: UTXOs sorted by value
/// (descending, ties by outpoint), skipping those worth less than their own input
/// fee, are added until they cover amount plus fee at `fee_rate_sat_vb` for the
/// estimated signed size. Change goes to `m/1/change_index` unless it would be dust
/// (then it is left to the fee). Outputs: recipient first, then change. Version 2,
/// lock time 0, inputs signal RBF. Inputs and the change output carry
/// `witness_utxo` / key origins (`bip32_derivation`, or `tap_internal_key` +
/// `tap_key_origins`) so external wallets recognise them; `non_witness_utxo` is
/// not filled (the node knows the amounts from its own imports).
pub fn build_psbt(
    key: &WalletKey,
    utxos: &[OwnedUtxo],
    recipient: &str,
    amount_sats: u64,
    fee_rate_sat_vb: u64,
    change_index: u32,
    limits: &IntakeLimits,
) -> Result<ValidatedPsbt, WalletError> {
    let address = parse_address(recipient, key.network())?;
    let recipient_spk = address.script_pubkey();
    if amount_sats == 0 || amount_sats > MAX_MONEY_SATS {
        return Err(WalletError::AmountOutOfRange(format!(
            "amount must be between 1 and {MAX_MONEY_SATS} sats, got {amount_sats}"
        )));
    }
    let dust = dust_threshold(&recipient_spk).to_sat();
    if amount_sats < dust {
        return Err(WalletError::DustOutput {
            location: "amount".into(),
            amount_sats,
            threshold_sats: dust,
        });
    }
    if fee_rate_sat_vb == 0 || fee_rate_sat_vb > limits.max_fee_rate_sat_vb {
        return Err(WalletError::FeeRateOutOfRange(fee_rate_sat_vb));
    }
    let change_spk = key.change_script(change_index)?;
    let change_dust = dust_threshold(&change_spk).to_sat();

    // usable utxos: this key's, consistent, once each, worth more than their fee
    let input_vb = key.kind().input_vbytes();
    let mut seen = HashSet::new();
    let mut usable: Vec<&OwnedUtxo> = Vec::with_capacity(utxos.len());
    for u in utxos {
        let bad = |reason: &str| WalletError::UtxoInvalid {
            outpoint: u.outpoint.to_string(),
            reason: reason.to_owned(),
        };
        if u.key_id != key.key_id() {
            return Err(bad("belongs to another key"));
        }
        if !seen.insert(u.outpoint) {
            return Err(bad("listed twice"));
        }
        if u.value_sats == 0 || u.value_sats > MAX_MONEY_SATS {
            return Err(bad("value out of range"));
        }
        let at = ScriptPath {
            chain: u.chain,
            index: u.index,
        };
        if !key.owns_at(&u.script_pubkey, at) {
            return Err(bad("script is not the key's script at its path"));
        }
        if u.value_sats > fee_rate_sat_vb.saturating_mul(input_vb) {
            usable.push(u);
        }
    }
    usable.sort_by(|a, b| {
        b.value_sats
            .cmp(&a.value_sats)
            .then_with(|| a.outpoint.cmp(&b.outpoint))
    });
    let available = usable
        .iter()
        .fold(0u64, |acc, u| acc.saturating_add(u.value_sats));

    let template = |selected: &[&OwnedUtxo], with_change: bool, change_value: u64| Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: selected
            .iter()
            .map(|u| TxIn {
                previous_output: u.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: std::iter::once(TxOut {
            value: Amount::from_sat(amount_sats),
            script_pubkey: recipient_spk.clone(),
        })
        .chain(with_change.then(|| TxOut {
            value: Amount::from_sat(change_value),
            script_pubkey: change_spk.clone(),
        }))
        .collect(),
    };
    let fee_for = |tx: &Transaction| -> Result<u64, WalletError> {
        let kinds = vec![(key.kind(), false); tx.input.len()];
        fee_rate_sat_vb
            .checked_mul(estimate_vsize(tx, &kinds))
            .ok_or(WalletError::FeeRateOutOfRange(fee_rate_sat_vb))
    };

    let mut selected: Vec<&OwnedUtxo> = Vec::new();
    let mut total: u64 = 0;
    let mut needed = amount_sats;
    let mut chosen: Option<Transaction> = None;
    for &u in usable.iter().take(limits.max_inputs) {
        selected.push(u);
        total = total.saturating_add(u.value_sats);
        let fee_with = fee_for(&template(&selected, true, 0))?;
        let fee_without = fee_for(&template(&selected, false, 0))?;
        needed = amount_sats.saturating_add(fee_without);
        if let Some(change) = total
            .checked_sub(amount_sats)
            .and_then(|r| r.checked_sub(fee_with))
            .filter(|&c| c >= change_dust)
        {
            chosen = Some(template(&selected, true, change));
            break;
        }
        if total >= needed {
            chosen = Some(template(&selected, false, 0));
            break;
        }
    }
    let Some(tx) = chosen else {
        return Err(WalletError::InsufficientFunds {
            needed_sats: needed,
            available_sats: available,
            utxos: usable.len(),
        });
    };

    let mut psbt = Psbt::from_unsigned_tx(tx)
        .map_err(|e| WalletError::Internal(format!("psbt from a fresh transaction: {e}")))?;
    let fp = key.fingerprint();
    for (inp, u) in psbt.inputs.iter_mut().zip(&selected) {
        inp.witness_utxo = Some(TxOut {
            value: Amount::from_sat(u.value_sats),
            script_pubkey: u.script_pubkey.clone(),
        });
        let origin = (fp, path(u.chain, u.index)?);
        let pk = key.pubkey_at(u.chain, u.index)?;
        match key.kind() {
            KeyKind::Ecdsa => {
                inp.bip32_derivation = BTreeMap::from([(pk, origin)]);
            }
            KeyKind::Taproot => {
                let x = pk.x_only_public_key().0;
                inp.tap_internal_key = Some(x);
                inp.tap_key_origins = BTreeMap::from([(x, (Vec::new(), origin))]);
            }
        }
    }
    if let Some(out) = psbt.outputs.get_mut(1) {
        let origin = (fp, path(CHANGE_CHAIN, change_index)?);
        let pk = key.pubkey_at(CHANGE_CHAIN, change_index)?;
        match key.kind() {
            KeyKind::Ecdsa => out.bip32_derivation = BTreeMap::from([(pk, origin)]),
            KeyKind::Taproot => {
                let x = pk.x_only_public_key().0;
                out.tap_internal_key = Some(x);
                out.tap_key_origins = BTreeMap::from([(x, (Vec::new(), origin))]);
            }
        }
    }
    let own_limits = IntakeLimits {
        require_non_witness_utxo: false,
        ..limits.clone()
    };
    validate_psbt(psbt, std::slice::from_ref(key), &own_limits)
}

fn path(chain: u32, index: u32) -> Result<DerivationPath, WalletError> {
    let c = |i: u32| {
        ChildNumber::from_normal_idx(i)
            .map_err(|_| WalletError::DerivationInvalid(format!("index {i} is hardened")))
    };
    Ok(DerivationPath::from(vec![c(chain)?, c(index)?]))
}
