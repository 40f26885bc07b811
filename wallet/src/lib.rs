//! The wallet: descriptors and addresses of the threshold keys, PSBT intake and
//! validation, sighashes, the recipient + amount builder, UTXO import from funding
//! transactions, signature filling, finalization and consensus verification.
//!
//! Pure: no I/O, no database, no network, no clock. The transaction pipeline calls
//! it; every node runs [`validate_psbt`] on its own copy of a PSBT before it votes,
//! so the sighashes it approves are ones it computed itself.
//!
//! Keys: an ECDSA threshold key spent as P2WPKH and a FROST key spent as P2TR key
//! path with the BIP-86 tweak, both at `m/<0;1>/*` (non-hardened) below the
//! threshold master key. See `docs/WALLET.md` for the checks, sighash rules, coin
//! selection and error codes.

mod build;
mod error;
mod intake;
mod keys;
mod sighash;
mod sign;

#[cfg(test)]
mod tests;

pub use build::{
    build_psbt, decode_funding_tx, parse_address, scan_funding_tx, OwnedUtxo, MAX_ADDRESS_LEN,
};
pub use error::WalletError;
pub use intake::{
    decode_psbt, dust_threshold, estimate_vsize, intake_psbt, validate_psbt, InputSigning,
    IntakeLimits, KnownOutputs, ValidatedPsbt, MAX_MONEY_SATS, P2TR_WITNESS_BYTES,
    P2WPKH_WITNESS_BYTES,
};
pub use keys::{KeyKind, ScriptPath, WalletKey, CHANGE_CHAIN, DEFAULT_GAP, MAX_GAP, RECEIVE_CHAIN};
pub use sighash::{recompute_sighashes, InputSighash};
pub use sign::{
    fill_ecdsa_signature, fill_taproot_signature, finalize, finalize_and_verify, verify_consensus,
    CONSENSUS_FLAGS,
};
