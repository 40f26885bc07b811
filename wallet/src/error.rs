//! Wallet errors with stable API codes.

/// Why a PSBT, an address, a funding transaction or a signature was refused.
///
/// Every variant maps to a stable, lower-case API code ([`WalletError::code`]) that the
/// REST layer returns with a 4xx status (except [`WalletError::Internal`], a bug).
/// Messages are lower-case and name the culprit (input or output index, address)
/// where there is one. No variant carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// The encoded PSBT is larger than the intake limit.
    #[error("psbt is {size} bytes, more than the limit of {limit}")]
    PsbtTooLarge {
        /// Size received (encoded form).
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The bytes are not a BIP-174 PSBT (bad base64, bad magic, bad field).
    #[error("psbt is malformed: {0}")]
    PsbtMalformed(String),
    /// The PSBT decodes but its shape is not acceptable (no inputs or outputs, too
    /// many of them, duplicate inputs, unsupported version, script-path data).
    #[error("psbt is not acceptable: {0}")]
    PsbtInvalid(String),
    /// An input already carries a final script or a signature.
    #[error("input {input} is already signed or finalized")]
    InputAlreadySigned {
        /// Input index.
        input: usize,
    },
    /// An input does not spend an output of any of our keys.
    #[error("input {input} does not spend an output of this wallet: {reason}")]
    InputNotOurs {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// An input lacks the previous output data needed to check amounts and sighashes.
    #[error("input {input} lacks {what}")]
    MissingUtxo {
        /// Input index.
        input: usize,
        /// `witness_utxo` or `non_witness_utxo`.
        what: &'static str,
    },
    /// `non_witness_utxo` contradicts the outpoint or `witness_utxo`.
    #[error("input {input}: {reason}")]
    UtxoMismatch {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// An input's amount and script are not proven: the PSBT carries no
    /// `non_witness_utxo` and this node has not imported the output itself.
    #[error("input {input} spends {outpoint}: its amount is not proven (give non_witness_utxo, the full previous transaction, or import the funding transaction on this node)")]
    UnprovenInputAmount {
        /// Input index.
        input: usize,
        /// The spent output.
        outpoint: String,
    },
    /// An input's `witness_utxo` differs from the output this node imported.
    #[error("input {input} spends {outpoint}: witness_utxo ({claimed_sats} sats) differs from the output this node imported ({known_sats} sats){script_note}")]
    InputAmountMismatch {
        /// Input index.
        input: usize,
        /// The spent output.
        outpoint: String,
        /// Amount the PSBT claims.
        claimed_sats: u64,
        /// Amount of the imported output.
        known_sats: u64,
        /// `", and its script differs"` when the script differs too, else empty.
        script_note: &'static str,
    },
    /// Key origin data (`bip32_derivation`, `tap_key_origins`, `tap_internal_key`)
    /// disagrees with the key that owns the script.
    #[error("{location}: key origin does not match the wallet: {reason}")]
    DerivationMismatch {
        /// `input N` or `output N`.
        location: String,
        /// Why.
        reason: String,
    },
    /// Inputs belong to more than one of our keys.
    #[error(
        "inputs belong to more than one key ({first} and {second}); one key signs a transaction"
    )]
    MixedKeys {
        /// The key of the first input.
        first: String,
        /// Another key.
        second: String,
    },
    /// Sighash type other than ALL (P2WPKH) or DEFAULT/ALL (P2TR).
    #[error("input {input} asks for sighash type {sighash_type:#x}; only ALL (and DEFAULT for taproot) is signed")]
    UnsupportedSighash {
        /// Input index.
        input: usize,
        /// The requested type.
        sighash_type: u32,
    },
    /// An output (or the requested amount) is below the dust threshold of its script.
    #[error(
        "{location} pays {amount_sats} sats, below the dust threshold of {threshold_sats} sats"
    )]
    DustOutput {
        /// `output N` or `amount`.
        location: String,
        /// Amount.
        amount_sats: u64,
        /// Smallest non-dust amount for that script.
        threshold_sats: u64,
    },
    /// An amount is zero where it must not be, or above 21 million BTC, or a sum
    /// overflows.
    #[error("{0}")]
    AmountOutOfRange(String),
    /// Outputs add up to more than inputs.
    #[error("outputs total {outputs_sats} sats, more than the inputs' {inputs_sats} sats")]
    OutputsExceedInputs {
        /// Input total.
        inputs_sats: u64,
        /// Output total.
        outputs_sats: u64,
    },
    /// Fee above the absolute or fee-rate cap.
    #[error("fee of {fee_sats} sats for {vsize_vb} vB is absurd: {reason}")]
    FeeTooHigh {
        /// Fee.
        fee_sats: u64,
        /// Estimated final virtual size.
        vsize_vb: u64,
        /// Which cap.
        reason: String,
    },
    /// Requested fee rate is zero or not a number the node accepts.
    #[error("fee rate of {0} sat/vB is out of range")]
    FeeRateOutOfRange(u64),
    /// The address does not parse.
    #[error("address `{address}` is not valid: {reason}")]
    AddressInvalid {
        /// The text (truncated when long).
        address: String,
        /// Why.
        reason: String,
    },
    /// The address is for another network.
    #[error("address `{address}` is not a {network} address")]
    AddressWrongNetwork {
        /// The text.
        address: String,
        /// The wallet's network.
        network: String,
    },
    /// Known UTXOs do not cover amount plus fee.
    #[error("insufficient funds: need {needed_sats} sats, {available_sats} sats available in {utxos} usable outputs")]
    InsufficientFunds {
        /// Amount plus the fee of the smallest transaction that could work.
        needed_sats: u64,
        /// Sum of usable UTXOs.
        available_sats: u64,
        /// Number of usable UTXOs.
        utxos: usize,
    },
    /// A UTXO handed to the builder is not one of this key's (or is listed twice).
    #[error("utxo {outpoint} is not usable: {reason}")]
    UtxoInvalid {
        /// The outpoint.
        outpoint: String,
        /// Why.
        reason: String,
    },
    /// The raw funding transaction is larger than the limit.
    #[error("transaction is {size} bytes, more than the limit of {limit}")]
    TxTooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The raw funding transaction does not decode.
    #[error("transaction is malformed: {0}")]
    TxMalformed(String),
    /// An input index out of range for the PSBT.
    #[error("input {input} does not exist (the psbt has {count} inputs)")]
    NoSuchInput {
        /// Requested.
        input: usize,
        /// Number of inputs.
        count: usize,
    },
    /// The signature's public key is not the key of the input's script.
    #[error("input {input}: the public key does not own the spent script")]
    KeyMismatch {
        /// Input index.
        input: usize,
    },
    /// A signature does not verify against the input's key and sighash.
    #[error("input {input}: signature does not verify against the input's key and sighash")]
    SignatureInvalid {
        /// Input index.
        input: usize,
    },
    /// Finalization failed: a signature is missing or the input is not a kind we
    /// finalize.
    #[error("input {input} cannot be finalized: {reason}")]
    NotFinalizable {
        /// Input index.
        input: usize,
        /// Why.
        reason: String,
    },
    /// Bitcoin Core's consensus code refused an input.
    #[error("input {input} fails consensus verification: {reason}")]
    ConsensusFailed {
        /// Input index.
        input: usize,
        /// libbitcoinconsensus' reason.
        reason: String,
    },
    /// Network the policy layer does not know.
    #[error("network {0} is not supported")]
    UnsupportedNetwork(String),
    /// A derivation index is hardened or otherwise unusable.
    #[error("derivation {0} is not usable")]
    DerivationInvalid(String),
    /// A bug or an impossible state (e.g. a sighash the bitcoin library refuses after
    /// validation passed).
    #[error("internal wallet error: {0}")]
    Internal(String),
}

impl WalletError {
    /// Stable API code (snake case) for this error.
    pub fn code(&self) -> &'static str {
        match self {
            WalletError::PsbtTooLarge { .. } => "psbt_too_large",
            WalletError::PsbtMalformed(_) => "psbt_malformed",
            WalletError::PsbtInvalid(_) => "psbt_invalid",
            WalletError::InputAlreadySigned { .. } => "input_already_signed",
            WalletError::InputNotOurs { .. } => "input_not_ours",
            WalletError::MissingUtxo { .. } => "missing_utxo",
            WalletError::UtxoMismatch { .. } => "utxo_mismatch",
            WalletError::UnprovenInputAmount { .. } => "unproven_input_amount",
            WalletError::InputAmountMismatch { .. } => "input_amount_mismatch",
            WalletError::DerivationMismatch { .. } => "derivation_mismatch",
            WalletError::MixedKeys { .. } => "mixed_keys",
            WalletError::UnsupportedSighash { .. } => "unsupported_sighash",
            WalletError::DustOutput { .. } => "dust_output",
            WalletError::AmountOutOfRange(_) => "amount_out_of_range",
            WalletError::OutputsExceedInputs { .. } => "outputs_exceed_inputs",
            WalletError::FeeTooHigh { .. } => "fee_too_high",
            WalletError::FeeRateOutOfRange(_) => "fee_rate_out_of_range",
            WalletError::AddressInvalid { .. } => "address_invalid",
            WalletError::AddressWrongNetwork { .. } => "address_wrong_network",
            WalletError::InsufficientFunds { .. } => "insufficient_funds",
            WalletError::UtxoInvalid { .. } => "utxo_invalid",
            WalletError::TxTooLarge { .. } => "tx_too_large",
            WalletError::TxMalformed(_) => "tx_malformed",
            WalletError::NoSuchInput { .. } => "no_such_input",
            WalletError::KeyMismatch { .. } => "key_mismatch",
            WalletError::SignatureInvalid { .. } => "signature_invalid",
            WalletError::NotFinalizable { .. } => "not_finalizable",
            WalletError::ConsensusFailed { .. } => "consensus_failed",
            WalletError::UnsupportedNetwork(_) => "unsupported_network",
            WalletError::DerivationInvalid(_) => "derivation_invalid",
            WalletError::Internal(_) => "internal",
        }
    }

    /// True for errors caused by the request (PSBT, address, amounts, signatures
    /// handed in); false for [`WalletError::Internal`] and
    /// [`WalletError::ConsensusFailed`] (a signed transaction the node produced is
    /// invalid: freeze and alert, never a client error).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            WalletError::Internal(_) | WalletError::ConsensusFailed { .. }
        )
    }
}

/// Shortens user-supplied text for error messages (addresses can be arbitrary
/// strings; SQL-injection attempts and the like end up in messages, bounded).
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 100;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
