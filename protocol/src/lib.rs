//! Threshold-signature protocol layer of the signer node.
//!
//! Pure protocol glue around [`cggmp24`] (threshold ECDSA, secp256k1) and [`givre`]
//! (FROST / BIP-340, Bitcoin ciphersuite), with no database, etcd or QUIC types:
//!
//! * [`delivery`]: round-based `Delivery` over tokio channels of raw bytes, so the node
//!   plugs its authenticated transport in; size-bounded decoding that names the sender of
//!   a bad message;
//! * [`ecdsa`]: CGGMP24 keygen, aux info (with pregenerated primes), key-share
//!   completion, presignatures (single use), partial signatures, full signing;
//! * [`frost`]: FROST keygen and Taproot (BIP-86) key-path signing;
//! * [`runtime`]: run protocol futures on dedicated OS threads, progress callbacks;
//! * [`eid`]: execution id derivation;
//! * [`error`]: [`ProtocolError`] with culprit extraction;
//! * [`btc`]: Bitcoin sighash messages (double SHA-256) and key helpers;
//! * [`local`]: in-process channel network for tests and benchmarks.
//!
//! Secrets (key shares, aux info, presignatures, prime sets) serialize into
//! `Zeroizing<Vec<u8>>` for sealing and never appear in `Debug` output.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod btc;
pub mod codec;
pub mod delivery;
pub mod ecdsa;
pub mod eid;
pub mod error;
pub mod frost;
pub mod local;
pub mod reshare;
pub mod runtime;

pub use btc::SighashMessage;
pub use delivery::{
    channel_party, ChannelDelivery, DeliveryConfig, DeliveryError, DeliveryStats, MsgType,
    RawIncoming, RawOutgoing,
};
pub use eid::ExecutionId;
pub use error::{ProtocolError, ProtocolKind};
pub use runtime::{run_blocking_on_thread, run_on_thread, ProgressEvent, ProgressFn};

/// Re-exported so callers can name `round_based::Mpc` / `MpcParty` without a direct
/// dependency.
pub use round_based;
