//! PSBT intake: bounded decoding, ownership and sanity checks, sighashes, fee and
//! size estimates, and the policy view.

use std::collections::HashSet;

use base64::Engine as _;
use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, KeySource};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::PublicKey;
use bitcoin::sighash::SighashCache;
use bitcoin::{Address, Amount, OutPoint, Script, Transaction, TxOut, Txid, Witness};
use policy::{ScriptType, TxInput, TxOutput, TxView};
use signer_protocol::btc::SighashMessage;

use super::error::WalletError;
use super::keys::{KeyKind, ScriptPath, WalletKey, CHANGE_CHAIN};
use super::sighash::{ecdsa_type, input_sighash, taproot_type, InputSighash};

/// 21 million BTC in satoshis.
pub const MAX_MONEY_SATS: u64 = 21_000_000 * 100_000_000;

/// Witness bytes a P2WPKH input adds when signed: item count, signature length,
/// 72-byte DER signature with sighash byte (upper bound), key length, 33-byte key.
pub const P2WPKH_WITNESS_BYTES: u64 = 1 + 1 + 72 + 1 + 33;
/// Witness bytes a P2TR key-path input adds when signed with SIGHASH_DEFAULT: item
/// count, signature length, 64-byte signature (65 with an explicit sighash byte).
pub const P2TR_WITNESS_BYTES: u64 = 1 + 1 + 64;

/// Bounds and switches for [`intake_psbt`], [`validate_psbt`],
/// [`super::build_psbt`] and [`super::scan_funding_tx`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeLimits {
    /// Largest binary PSBT accepted (base64 text may be 4/3 of it). Default 1 MiB.
    pub max_psbt_bytes: usize,
    /// Largest raw funding transaction accepted (hex may be twice it). Default 1 MiB.
    pub max_tx_bytes: usize,
    /// Most inputs in one transaction. Default 500.
    pub max_inputs: usize,
    /// Most outputs in one transaction. Default 1000.
    pub max_outputs: usize,
    /// P2WPKH inputs must carry `non_witness_utxo` (the full previous transaction),
    /// the BIP-174 recommendation against fee-overpayment by lying about amounts.
    /// Default false: the node then proves amounts against the UTXOs it imported
    /// ([`ValidatedPsbt::check_input_proofs`]).
    pub require_non_witness_utxo: bool,
    /// Every input must carry a key origin (`bip32_derivation` for P2WPKH,
    /// `tap_key_origins` for P2TR) with the wallet's fingerprint. Default true.
    pub require_key_origin: bool,
    /// Highest fee rate accepted, sat/vB, against the estimated final size.
    /// Default 1000.
    pub max_fee_rate_sat_vb: u64,
    /// Highest absolute fee accepted, sats. Default 0.1 BTC (10 000 000 sats).
    pub max_fee_sats: u64,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_psbt_bytes: 1024 * 1024,
            max_tx_bytes: 1024 * 1024,
            max_inputs: 500,
            max_outputs: 1000,
            require_non_witness_utxo: false,
            require_key_origin: true,
            max_fee_rate_sat_vb: 1000,
            max_fee_sats: 10_000_000,
        }
    }
}

/// What the signer needs to sign one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSigning {
    /// Input index.
    pub input: usize,
    /// The spent output.
    pub outpoint: OutPoint,
    /// Its value.
    pub amount_sats: u64,
    /// Key kind (all inputs of a validated PSBT share it).
    pub kind: KeyKind,
    /// Chain (0 receive, 1 change).
    pub chain: u32,
    /// Index within the chain.
    pub index: u32,
    /// Derivation path below the threshold master key, `[chain, index]` (for
    /// `set_derivation_path` of the threshold signing libraries).
    pub path: Vec<u32>,
    /// The derived (untweaked) public key at `path`: the P2WPKH key, or the BIP-86
    /// internal key of a P2TR output (the output key is its tweak).
    pub pubkey: PublicKey,
    /// The hash to sign (BIP-143 / BIP-341).
    pub sighash: InputSighash,
}

impl InputSigning {
    /// The 32-byte digest the signature is over.
    pub fn digest(&self) -> [u8; 32] {
        self.sighash.digest()
    }

    /// The message for the ECDSA threshold signer (P2WPKH inputs only).
    pub fn ecdsa_message(&self) -> Option<SighashMessage> {
        match self.sighash {
            InputSighash::Ecdsa { message } => Some(message),
            InputSighash::Taproot { .. } => None,
        }
    }
}

/// A PSBT that passed every intake check, with what signing and policy need.
#[derive(Debug, Clone)]
pub struct ValidatedPsbt {
    /// The PSBT as received (or built); nothing was removed or added.
    pub psbt: Psbt,
    /// The one key every input belongs to.
    pub key_id: String,
    /// Its kind.
    pub kind: KeyKind,
    /// Per input, in order.
    pub inputs: Vec<InputSigning>,
    /// Id of the unsigned transaction (the final txid: segwit inputs only).
    pub txid: Txid,
    /// Input total minus output total.
    pub fee_sats: u64,
    /// Estimated virtual size once signed (upper bound for P2WPKH).
    pub vsize_vb: u64,
    /// The normalized view the policy engine evaluates.
    pub view: TxView,
}

impl ValidatedPsbt {
    /// The digests, in input order (what votes bind to).
    pub fn sighashes(&self) -> Vec<[u8; 32]> {
        self.inputs.iter().map(InputSigning::digest).collect()
    }

    /// The spent outputs in input order, for [`super::verify_consensus`].
    pub fn spent_outputs(&self) -> Vec<TxOut> {
        self.psbt
            .inputs
            .iter()
            .filter_map(|i| i.witness_utxo.clone())
            .collect()
    }

    /// Base64 (BIP-174) form of the PSBT.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.psbt.serialize())
    }
}

/// Outputs this node imported itself (its `utxos` table), by outpoint: the amount
/// and script an input's `witness_utxo` must equal when the PSBT does not prove them
/// with the full previous transaction.
pub type KnownOutputs = std::collections::HashMap<OutPoint, TxOut>;

impl ValidatedPsbt {
    /// Every input's amount and script must be proven (the BIP-143 fee attack: a
    /// P2WPKH signature commits only to its own input's amount, so amounts taken from
    /// the submitter let two PSBTs of one transaction understate different inputs):
    /// either the PSBT carries `non_witness_utxo` (already checked by
    /// [`validate_psbt`] to be the transaction the input spends, with the output
    /// equal to `witness_utxo`), or `known` holds the output and it equals
    /// `witness_utxo`. An imported output that differs is refused even when a full
    /// previous transaction is given. Taproot inputs are held to the same rule so
    /// the policy sees proven amounts.
    pub fn check_input_proofs(&self, known: &KnownOutputs) -> Result<(), WalletError> {
        for (i, (inp, signing)) in self.psbt.inputs.iter().zip(&self.inputs).enumerate() {
            let claimed = inp.witness_utxo.as_ref().ok_or(WalletError::MissingUtxo {
                input: i,
                what: "witness_utxo",
            })?;
            match known.get(&signing.outpoint) {
                Some(k) if k == claimed => {}
                Some(k) => {
                    return Err(WalletError::InputAmountMismatch {
                        input: i,
                        outpoint: signing.outpoint.to_string(),
                        claimed_sats: claimed.value.to_sat(),
                        known_sats: k.value.to_sat(),
                        script_note: if k.script_pubkey == claimed.script_pubkey {
                            ""
                        } else {
                            ", and its script differs"
                        },
                    })
                }
                None if inp.non_witness_utxo.is_some() => {}
                None => {
                    return Err(WalletError::UnprovenInputAmount {
                        input: i,
                        outpoint: signing.outpoint.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Puts the full previous transaction (`non_witness_utxo`) on every input that
    /// lacks it and whose funding transaction is in `funding` (and really holds the
    /// spent output, equal to `witness_utxo`), so that every other node can prove
    /// the amounts itself. Returns how many inputs got one.
    pub fn attach_previous_transactions(
        &mut self,
        funding: &std::collections::HashMap<Txid, Transaction>,
    ) -> usize {
        let mut attached = 0;
        for (inp, signing) in self.psbt.inputs.iter_mut().zip(&self.inputs) {
            if inp.non_witness_utxo.is_some() {
                continue;
            }
            let Some(prev) = funding.get(&signing.outpoint.txid) else {
                continue;
            };
            let out = usize::try_from(signing.outpoint.vout)
                .ok()
                .and_then(|v| prev.output.get(v));
            if prev.compute_txid() == signing.outpoint.txid
                && out.is_some()
                && out == inp.witness_utxo.as_ref()
            {
                inp.non_witness_utxo = Some(prev.clone());
                attached += 1;
            }
        }
        attached
    }

    /// What an approval of this unsigned transaction is an approval of: SHA-256
    /// over a domain string and, per input, the spent amount, the spent script and
    /// the sighash. Two PSBTs of one txid with different amounts (or sighash types)
    /// have different hashes.
    pub fn approval_data_hash(&self) -> [u8; 32] {
        use bitcoin::hashes::{sha256, Hash, HashEngine};
        let mut e = sha256::Hash::engine();
        e.input(b"signer/txid-approval-data/v1\0");
        for (inp, signing) in self.psbt.inputs.iter().zip(&self.inputs) {
            let (value, script) = inp
                .witness_utxo
                .as_ref()
                .map(|o| (o.value.to_sat(), o.script_pubkey.as_bytes()))
                .unwrap_or((0, &[]));
            e.input(&value.to_be_bytes());
            e.input(
                &u64::try_from(script.len())
                    .unwrap_or(u64::MAX)
                    .to_be_bytes(),
            );
            e.input(script);
            e.input(&signing.digest());
        }
        sha256::Hash::from_engine(e).to_byte_array()
    }
}

const PSBT_MAGIC: &[u8] = b"psbt\xff";

/// Decodes a PSBT given as binary (starting with `psbt\xff`) or as base64 text
/// (surrounding whitespace allowed), refusing anything larger than
/// `limits.max_psbt_bytes` before decoding and trailing bytes after it.
pub fn decode_psbt(raw: &[u8], limits: &IntakeLimits) -> Result<Psbt, WalletError> {
    let max = limits.max_psbt_bytes;
    let bin: Vec<u8>;
    let bytes: &[u8] = if raw.starts_with(PSBT_MAGIC) {
        if raw.len() > max {
            return Err(WalletError::PsbtTooLarge {
                size: raw.len(),
                limit: max,
            });
        }
        raw
    } else {
        let max_text = max.div_ceil(3).saturating_mul(4);
        let text = raw.trim_ascii();
        if text.len() > max_text {
            return Err(WalletError::PsbtTooLarge {
                size: text.len(),
                limit: max_text,
            });
        }
        bin = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| WalletError::PsbtMalformed(format!("not binary and not base64: {e}")))?;
        if bin.len() > max {
            return Err(WalletError::PsbtTooLarge {
                size: bin.len(),
                limit: max,
            });
        }
        &bin
    };
    let mut reader = bytes;
    let psbt = Psbt::deserialize_from_reader(&mut reader)
        .map_err(|e| WalletError::PsbtMalformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(WalletError::PsbtMalformed(format!(
            "{} bytes after the end of the psbt",
            reader.len()
        )));
    }
    Ok(psbt)
}

/// Decodes (see [`decode_psbt`]) and validates (see [`validate_psbt`]) a PSBT
/// submitted through the API.
pub fn intake_psbt(
    raw: &[u8],
    keys: &[WalletKey],
    limits: &IntakeLimits,
) -> Result<ValidatedPsbt, WalletError> {
    let psbt = decode_psbt(raw, limits)?;
    validate_psbt(psbt, keys, limits)
}

/// Checks a decoded PSBT against the wallet's keys and the limits and computes
/// everything signing and policy need. Every node runs this on its own copy of the
/// PSBT before voting; the checks are listed in `docs/WALLET.md`.
pub fn validate_psbt(
    psbt: Psbt,
    keys: &[WalletKey],
    limits: &IntakeLimits,
) -> Result<ValidatedPsbt, WalletError> {
    let tx = &psbt.unsigned_tx;
    check_shape(tx, limits)?;
    if psbt.inputs.len() != tx.input.len() || psbt.outputs.len() != tx.output.len() {
        return Err(WalletError::PsbtMalformed(
            "input or output maps do not match the transaction".into(),
        ));
    }

    // ownership, one key, utxo data, sighash types
    let mut owner: Option<&WalletKey> = None;
    let mut paths = Vec::with_capacity(tx.input.len());
    let mut in_total: u64 = 0;
    for (i, inp) in psbt.inputs.iter().enumerate() {
        if inp.final_script_sig.is_some()
            || inp.final_script_witness.is_some()
            || !inp.partial_sigs.is_empty()
            || inp.tap_key_sig.is_some()
            || !inp.tap_script_sigs.is_empty()
        {
            return Err(WalletError::InputAlreadySigned { input: i });
        }
        let utxo = inp.witness_utxo.as_ref().ok_or(WalletError::MissingUtxo {
            input: i,
            what: "witness_utxo",
        })?;
        let value = utxo.value.to_sat();
        if value > MAX_MONEY_SATS {
            return Err(WalletError::AmountOutOfRange(format!(
                "input {i} spends {value} sats, more than can exist"
            )));
        }
        in_total = in_total
            .checked_add(value)
            .filter(|&s| s <= MAX_MONEY_SATS)
            .ok_or_else(|| {
                WalletError::AmountOutOfRange("input amounts add up to more than can exist".into())
            })?;

        let mut found = None;
        for key in keys {
            if let Some(path) = locate_input(key, &psbt, i, &utxo.script_pubkey, limits)? {
                if let Some(prev) = found.replace((key, path)) {
                    // two keys deriving the same script: only with duplicate xpubs
                    return Err(WalletError::MixedKeys {
                        first: prev.0.key_id().to_owned(),
                        second: key.key_id().to_owned(),
                    });
                }
            }
        }
        let Some((key, path)) = found else {
            return Err(WalletError::InputNotOurs {
                input: i,
                reason: format!(
                    "script {} is not derived from any wallet key (lookahead {} per chain)",
                    short_hex(utxo.script_pubkey.as_bytes()),
                    keys.iter().map(WalletKey::gap).max().unwrap_or(0)
                ),
            });
        };
        match owner {
            None => owner = Some(key),
            Some(o) if o.key_id() != key.key_id() => {
                return Err(WalletError::MixedKeys {
                    first: o.key_id().to_owned(),
                    second: key.key_id().to_owned(),
                })
            }
            Some(_) => {}
        }
        check_non_witness_utxo(&psbt, i, utxo, key.kind(), limits)?;
        match key.kind() {
            KeyKind::Ecdsa => {
                ecdsa_type(&psbt, i)?;
            }
            KeyKind::Taproot => {
                taproot_type(&psbt, i)?;
            }
        }
        paths.push(path);
    }
    let key = owner.ok_or_else(|| WalletError::PsbtInvalid("no inputs".into()))?;

    // outputs
    let mut out_total: u64 = 0;
    for (j, out) in tx.output.iter().enumerate() {
        let v = out.value.to_sat();
        if v > MAX_MONEY_SATS {
            return Err(WalletError::AmountOutOfRange(format!(
                "output {j} pays {v} sats, more than can exist"
            )));
        }
        let threshold = dust_threshold(&out.script_pubkey).to_sat();
        {
            if v < threshold {
                return Err(WalletError::DustOutput {
                    location: format!("output {j}"),
                    amount_sats: v,
                    threshold_sats: threshold,
                });
            }
        }
        out_total = out_total
            .checked_add(v)
            .filter(|&s| s <= MAX_MONEY_SATS)
            .ok_or_else(|| {
                WalletError::AmountOutOfRange("output amounts add up to more than can exist".into())
            })?;
        check_output_origins(key, &psbt, j)?;
    }
    if out_total > in_total {
        return Err(WalletError::OutputsExceedInputs {
            inputs_sats: in_total,
            outputs_sats: out_total,
        });
    }
    let fee_sats = in_total - out_total;

    // size and fee caps
    let kinds: Vec<(KeyKind, bool)> = (0..tx.input.len())
        .map(|i| {
            let explicit_all = key.kind() == KeyKind::Taproot
                && matches!(taproot_type(&psbt, i), Ok(bitcoin::TapSighashType::All));
            (key.kind(), explicit_all)
        })
        .collect();
    let vsize_vb = estimate_vsize(tx, &kinds);
    check_fee(fee_sats, vsize_vb, limits)?;

    // sighashes
    let prevouts: Vec<TxOut> = super::sighash::prevouts(&psbt)?;
    let mut cache = SighashCache::new(tx);
    let mut inputs = Vec::with_capacity(tx.input.len());
    for (i, path) in paths.iter().enumerate() {
        let sighash = input_sighash(&mut cache, &psbt, &prevouts, i)?;
        inputs.push(InputSigning {
            input: i,
            outpoint: tx.input[i].previous_output,
            amount_sats: prevouts[i].value.to_sat(),
            kind: key.kind(),
            chain: path.chain,
            index: path.index,
            path: path.to_vec(),
            pubkey: key.pubkey_at(path.chain, path.index)?,
            sighash,
        });
    }

    let txid = tx.compute_txid();
    let view = build_view(key, keys, &psbt, &inputs, fee_sats, vsize_vb)?;
    tracing::debug!(
        key = %key.key_id(),
        %txid,
        inputs = inputs.len(),
        outputs = tx.output.len(),
        fee_sats,
        vsize_vb,
        "psbt validated"
    );
    Ok(ValidatedPsbt {
        key_id: key.key_id().to_owned(),
        kind: key.kind(),
        inputs,
        txid,
        fee_sats,
        vsize_vb,
        view,
        psbt,
    })
}

fn check_shape(tx: &Transaction, limits: &IntakeLimits) -> Result<(), WalletError> {
    if tx.input.is_empty() {
        return Err(WalletError::PsbtInvalid("transaction has no inputs".into()));
    }
    if tx.output.is_empty() {
        return Err(WalletError::PsbtInvalid(
            "transaction has no outputs".into(),
        ));
    }
    if tx.input.len() > limits.max_inputs {
        return Err(WalletError::PsbtInvalid(format!(
            "{} inputs, more than the limit of {}",
            tx.input.len(),
            limits.max_inputs
        )));
    }
    if tx.output.len() > limits.max_outputs {
        return Err(WalletError::PsbtInvalid(format!(
            "{} outputs, more than the limit of {}",
            tx.output.len(),
            limits.max_outputs
        )));
    }
    if !matches!(tx.version.0, 1 | 2) {
        return Err(WalletError::PsbtInvalid(format!(
            "transaction version {} is not 1 or 2",
            tx.version.0
        )));
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for (i, inp) in tx.input.iter().enumerate() {
        if !seen.insert(inp.previous_output) {
            return Err(WalletError::PsbtInvalid(format!(
                "input {i} spends {} a second time",
                inp.previous_output
            )));
        }
    }
    Ok(())
}

/// Where input `i` (spending `script`) sits under `key`: `Ok(None)` if not `key`'s.
/// Key origins with `key`'s fingerprint must agree with the derived script; every
/// other origin entry on an input we own is refused.
fn locate_input(
    key: &WalletKey,
    psbt: &Psbt,
    i: usize,
    script: &Script,
    limits: &IntakeLimits,
) -> Result<Option<ScriptPath>, WalletError> {
    if !key.kind().matches_script(script) {
        return Ok(None);
    }
    let inp = &psbt.inputs[i];
    let fp = key.fingerprint();
    let location = || format!("input {i}");

    // origins that name our fingerprint
    let mut claimed: Option<ScriptPath> = None;
    let ours = inp
        .bip32_derivation
        .values()
        .chain(inp.tap_key_origins.values().map(|(_, ks)| ks))
        .filter(|(f, _)| *f == fp);
    for (_, dp) in ours {
        let p = parse_path(dp).ok_or_else(|| WalletError::DerivationMismatch {
            location: location(),
            reason: format!("path m/{dp} is not m/<0|1>/<index>"),
        })?;
        if claimed.is_some_and(|c| c != p) {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: "two different paths for the wallet's fingerprint".into(),
            });
        }
        claimed = Some(p);
    }
    let path = match claimed {
        Some(p) => {
            if !key.owns_at(script, p) {
                // the origin names us but the script is not ours there
                return Err(WalletError::DerivationMismatch {
                    location: location(),
                    reason: format!(
                        "spent script is not the wallet's script at m/{}/{}",
                        p.chain, p.index
                    ),
                });
            }
            p
        }
        None => match key.find_path(script) {
            Some(p) => p,
            None => return Ok(None),
        },
    };

    // the input is ours: every origin field must describe exactly this key
    if limits.require_key_origin && claimed.is_none() {
        return Err(WalletError::DerivationMismatch {
            location: location(),
            reason: format!("no key origin with the wallet's fingerprint {fp}"),
        });
    }
    let pk = key.pubkey_at(path.chain, path.index)?;
    let xonly = pk.x_only_public_key().0;
    for (k, ks) in &inp.bip32_derivation {
        let key_ok = match key.kind() {
            KeyKind::Ecdsa => *k == pk,
            KeyKind::Taproot => k.x_only_public_key().0 == xonly,
        };
        check_origin_entry(key_ok, ks, fp, path, &location)?;
    }
    for (k, (leaves, ks)) in &inp.tap_key_origins {
        if key.kind() == KeyKind::Ecdsa {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: "taproot key origin on a p2wpkh input".into(),
            });
        }
        if !leaves.is_empty() {
            return Err(WalletError::PsbtInvalid(format!(
                "input {i}: script-path leaves are not supported (key path only)"
            )));
        }
        check_origin_entry(*k == xonly, ks, fp, path, &location)?;
    }
    if let Some(internal) = inp.tap_internal_key {
        if key.kind() == KeyKind::Ecdsa || internal != xonly {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: "tap_internal_key is not the wallet's internal key".into(),
            });
        }
    }
    if inp.tap_merkle_root.is_some() || !inp.tap_scripts.is_empty() {
        return Err(WalletError::PsbtInvalid(format!(
            "input {i}: script-path data present; only bip-86 key-path spends are signed"
        )));
    }
    if inp.redeem_script.is_some() || inp.witness_script.is_some() {
        return Err(WalletError::PsbtInvalid(format!(
            "input {i}: redeem or witness script present on a native key spend"
        )));
    }
    Ok(Some(path))
}

fn check_origin_entry(
    key_ok: bool,
    (f, dp): &KeySource,
    fp: Fingerprint,
    path: ScriptPath,
    location: &dyn Fn() -> String,
) -> Result<(), WalletError> {
    if *f != fp {
        return Err(WalletError::DerivationMismatch {
            location: location(),
            reason: format!("key origin names fingerprint {f}, the wallet's is {fp}"),
        });
    }
    if parse_path(dp) != Some(path) {
        return Err(WalletError::DerivationMismatch {
            location: location(),
            reason: format!(
                "key origin path m/{dp} is not m/{}/{}",
                path.chain, path.index
            ),
        });
    }
    if !key_ok {
        return Err(WalletError::DerivationMismatch {
            location: location(),
            reason: "key origin public key is not the derived key".into(),
        });
    }
    Ok(())
}

/// `m/chain/index` with chain 0 or 1 and a non-hardened index.
fn parse_path(dp: &DerivationPath) -> Option<ScriptPath> {
    match dp.as_ref() {
        [ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }]
            if *chain <= CHANGE_CHAIN =>
        {
            Some(ScriptPath {
                chain: *chain,
                index: *index,
            })
        }
        _ => None,
    }
}

fn check_non_witness_utxo(
    psbt: &Psbt,
    i: usize,
    utxo: &TxOut,
    kind: KeyKind,
    limits: &IntakeLimits,
) -> Result<(), WalletError> {
    let outpoint = psbt.unsigned_tx.input[i].previous_output;
    match &psbt.inputs[i].non_witness_utxo {
        None if kind == KeyKind::Ecdsa && limits.require_non_witness_utxo => {
            Err(WalletError::MissingUtxo {
                input: i,
                what: "non_witness_utxo",
            })
        }
        None => Ok(()),
        Some(prev) => {
            let txid = prev.compute_txid();
            if txid != outpoint.txid {
                return Err(WalletError::UtxoMismatch {
                    input: i,
                    reason: format!(
                        "non_witness_utxo is transaction {txid}, the input spends {outpoint}"
                    ),
                });
            }
            match prev.output.get(outpoint.vout as usize) {
                Some(o) if o == utxo => Ok(()),
                Some(_) => Err(WalletError::UtxoMismatch {
                    input: i,
                    reason: "witness_utxo differs from the output in non_witness_utxo".into(),
                }),
                None => Err(WalletError::UtxoMismatch {
                    input: i,
                    reason: format!(
                        "non_witness_utxo has no output {} (it has {})",
                        outpoint.vout,
                        prev.output.len()
                    ),
                }),
            }
        }
    }
}

/// Key origins on an output that name the wallet's fingerprint must describe the
/// output's own script (how change is marked). Origins of other wallets are ignored.
fn check_output_origins(key: &WalletKey, psbt: &Psbt, j: usize) -> Result<(), WalletError> {
    output_origin_path(key, psbt, j).map(|_| ())
}

/// The path of output `j` under `key` according to its key origins, if they name
/// the key (verified against the script).
fn output_origin_path(
    key: &WalletKey,
    psbt: &Psbt,
    j: usize,
) -> Result<Option<ScriptPath>, WalletError> {
    let out = &psbt.outputs[j];
    let script = &psbt.unsigned_tx.output[j].script_pubkey;
    let fp = key.fingerprint();
    let location = || format!("output {j}");
    let mut claimed: Option<ScriptPath> = None;
    let bip32 = out
        .bip32_derivation
        .iter()
        .map(|(k, ks)| (Some(*k), None, ks));
    let tap = out
        .tap_key_origins
        .iter()
        .map(|(k, (_, ks))| (None, Some(*k), ks));
    for (full, xonly, (f, dp)) in bip32.chain(tap) {
        if *f != fp {
            continue;
        }
        let p = parse_path(dp).ok_or_else(|| WalletError::DerivationMismatch {
            location: location(),
            reason: format!("path m/{dp} is not m/<0|1>/<index>"),
        })?;
        if !key.owns_at(script, p) {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: format!(
                    "output script is not the wallet's script at m/{}/{}",
                    p.chain, p.index
                ),
            });
        }
        let pk = key.pubkey_at(p.chain, p.index)?;
        let key_ok = match (full, xonly) {
            (Some(k), _) if key.kind() == KeyKind::Ecdsa => k == pk,
            (Some(k), _) => k.x_only_public_key().0 == pk.x_only_public_key().0,
            (None, Some(x)) => key.kind() == KeyKind::Taproot && x == pk.x_only_public_key().0,
            (None, None) => false,
        };
        if !key_ok || claimed.is_some_and(|c| c != p) {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: "key origin public key or path is not the derived one".into(),
            });
        }
        claimed = Some(p);
    }
    if let (Some(internal), Some(p)) = (out.tap_internal_key, claimed) {
        if internal != key.internal_key_at(p.chain, p.index)? {
            return Err(WalletError::DerivationMismatch {
                location: location(),
                reason: "tap_internal_key is not the wallet's internal key".into(),
            });
        }
    }
    Ok(claimed)
}

/// Estimated virtual size of `tx` once every input carries its witness: P2WPKH
/// [`P2WPKH_WITNESS_BYTES`], P2TR [`P2TR_WITNESS_BYTES`] (+1 when the sighash type
/// is explicit, the `bool`). Any existing witnesses and scriptSigs are replaced.
pub fn estimate_vsize(tx: &Transaction, inputs: &[(KeyKind, bool)]) -> u64 {
    let mut t = tx.clone();
    for (txin, (kind, explicit)) in t.input.iter_mut().zip(inputs) {
        txin.script_sig = bitcoin::ScriptBuf::new();
        txin.witness = match kind {
            KeyKind::Ecdsa => Witness::from_slice(&[vec![0u8; 72], vec![0u8; 33]]),
            KeyKind::Taproot => Witness::from_slice(&[vec![0u8; if *explicit { 65 } else { 64 }]]),
        };
    }
    t.weight().to_vbytes_ceil()
}

pub(crate) fn check_fee(
    fee_sats: u64,
    vsize_vb: u64,
    limits: &IntakeLimits,
) -> Result<(), WalletError> {
    if fee_sats > limits.max_fee_sats {
        return Err(WalletError::FeeTooHigh {
            fee_sats,
            vsize_vb,
            reason: format!("more than the cap of {} sats", limits.max_fee_sats),
        });
    }
    let cap = limits.max_fee_rate_sat_vb.saturating_mul(vsize_vb);
    if fee_sats > cap {
        return Err(WalletError::FeeTooHigh {
            fee_sats,
            vsize_vb,
            reason: format!(
                "above the fee rate cap of {} sat/vB",
                limits.max_fee_rate_sat_vb
            ),
        });
    }
    Ok(())
}

pub(crate) fn policy_network(n: bitcoin::Network) -> Result<policy::Network, WalletError> {
    Ok(match n {
        bitcoin::Network::Bitcoin => policy::Network::Bitcoin,
        bitcoin::Network::Testnet => policy::Network::Testnet,
        bitcoin::Network::Testnet4 => policy::Network::Testnet4,
        bitcoin::Network::Signet => policy::Network::Signet,
        bitcoin::Network::Regtest => policy::Network::Regtest,
        #[allow(unreachable_patterns)] // bitcoin::Network may grow
        other => return Err(WalletError::UnsupportedNetwork(other.to_string())),
    })
}

fn build_view(
    key: &WalletKey,
    keys: &[WalletKey],
    psbt: &Psbt,
    inputs: &[InputSigning],
    fee_sats: u64,
    vsize_vb: u64,
) -> Result<TxView, WalletError> {
    let network = policy_network(key.network())?;
    let tx = &psbt.unsigned_tx;
    let mut outputs = Vec::with_capacity(tx.output.len());
    for (j, out) in tx.output.iter().enumerate() {
        let spk = &out.script_pubkey;
        let marked = output_origin_path(key, psbt, j)?;
        let found = marked.or_else(|| key.find_path(spk));
        let belongs_to_wallet = found.is_some();
        // change: marked by the builder with our key origin, or on our change chain
        let is_change = belongs_to_wallet
            && (marked.is_some() || found.is_some_and(|p| p.chain == CHANGE_CHAIN));
        let descriptors = keys
            .iter()
            .filter(|k| {
                if k.key_id() == key.key_id() {
                    belongs_to_wallet
                } else {
                    k.find_path(spk).is_some()
                }
            })
            .map(WalletKey::descriptor)
            .collect();
        outputs.push(TxOutput {
            address: Address::from_script(spk, key.network())
                .ok()
                .map(|a| a.to_string()),
            script_pubkey: spk.clone(),
            script_type: ScriptType::of_script(spk),
            amount_sats: out.value.to_sat(),
            is_change,
            belongs_to_wallet,
            descriptors,
        });
    }
    Ok(TxView {
        key_id: key.key_id().to_owned(),
        network,
        txid: tx.compute_txid(),
        inputs: inputs
            .iter()
            .map(|i| TxInput {
                outpoint: i.outpoint,
                amount_sats: i.amount_sats,
                key_id: key.key_id().to_owned(),
            })
            .collect(),
        outputs,
        fee_sats,
        vsize_vb,
    })
}

pub(crate) fn short_hex(b: &[u8]) -> String {
    if b.len() <= 40 {
        hex::encode(b)
    } else {
        format!("{}…", hex::encode(&b[..40]))
    }
}

/// The amount an output must carry to not be dust (Bitcoin Core's rule at the
/// default dust relay fee of 3 sat/vB: 546 for P2PKH, 294 for P2WPKH, 330 for P2TR
/// and P2WSH); 0 for OP_RETURN.
pub fn dust_threshold(script: &Script) -> Amount {
    if script.is_op_return() {
        Amount::ZERO
    } else {
        script.minimal_non_dust()
    }
}
