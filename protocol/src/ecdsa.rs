//! CGGMP24 threshold ECDSA on secp256k1: keygen, aux info, presignatures, signing.
//!
//! Flow for a key:
//! 1. [`keygen`] (all n parties) → [`EcdsaIncompleteShare`] (HD-enabled, t-of-n);
//! 2. [`aux_info`] (all n parties, each with its own [`PrimeSet`]) → [`EcdsaAuxInfo`];
//!    the same aux info serves every key of the same party set and index;
//! 3. [`EcdsaKeyShare::from_parts`] combines and validates the two;
//! 4. signing, by exactly t parties:
//!    * [`presign`] ahead of time → [`EcdsaPresignature`] (secret, single use) and its
//!      [`PresignaturePublic`]; later, per message, every signer calls
//!      [`EcdsaPresignature::issue_partial_signature`] (consumes the presignature) and
//!      anyone combines the t partials with [`combine_partial_signatures`];
//!    * or [`sign`]: the interactive protocol without presignature.
//!
//! # HD derivation and presignatures (RUSTSEC-2025-0127)
//! Keys are SLIP-10 (= BIP-32 on secp256k1) HD keys; only non-hardened paths exist for
//! threshold keys. A presignature is bound to the derivation path given to [`presign`]:
//! the library folds the path's additive shift into the presignature, and this crate
//! records the path in [`PresignaturePublic`]. A path can never be chosen after
//! presigning, and [`EcdsaPresignature::issue_partial_signature`] refuses a message for
//! another path. The node therefore keeps presignature pools per (key, signer set, path):
//! for a wallet spending P2WPKH outputs of `m/<0;1>/*`, presign for the paths of outputs
//! the wallet already holds (known before any spend is requested), or use the master key
//! (empty path) when the wallet is not HD; fall back to [`sign`] (any path, no
//! presignature) otherwise.

use bitcoin::secp256k1::{self, PublicKey};
use bitcoin::NetworkKind;
use cggmp24::generic_ec::coords::AlwaysHasAffineX;
use cggmp24::generic_ec::{NonZero, Point, Scalar};
use cggmp24::key_share::{AuxInfo, IncompleteKeyShare, KeyShare};
use cggmp24::{ExecutionId as LibEid, PregeneratedPrimes};
use rand::rngs::OsRng;
use round_based::Mpc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vote::InputPermit;
use zeroize::Zeroizing;

use crate::btc::{self, SighashMessage};
use crate::codec::{decode_record, encode_record, RecordKind};
use crate::eid::ExecutionId;
use crate::error::{ProtocolError, ProtocolKind};
use crate::runtime::{traced, ProgressEvent, ProgressFn, ProgressTracer};

/// Curve of the ECDSA keys.
pub type Curve = cggmp24::supported_curves::Secp256k1;
/// CGGMP24 security level (Paillier primes of 1536 bits).
pub type Level = cggmp24::security_level::SecurityLevel128;

/// Message type of [`keygen`]; the delivery for keygen is `ChannelDelivery<EcdsaKeygenMsg>`.
pub type EcdsaKeygenMsg = cggmp24::keygen::ThresholdMsg<Curve, Level, Sha256>;
/// Message type of [`aux_info`].
pub type EcdsaAuxMsg = cggmp24::key_refresh::msg::Msg<Sha256, Level>;
/// Message type of [`presign`] and [`sign`].
pub type EcdsaSignMsg = cggmp24::signing::msg::Msg<Curve, Sha256>;

// ---------------------------------------------------------------------------------------
// key shares

fn key_info_public_key(pk: &NonZero<Point<Curve>>) -> PublicKey {
    btc::nonzero_to_secp(pk).expect("a non-zero library point is a valid secp256k1 key")
}

/// Output of [`keygen`]: a key share without aux info (cannot sign yet). Secret.
pub struct EcdsaIncompleteShare(IncompleteKeyShare<Curve>);

/// Aux info of one party (its Paillier secret key and everyone's public parameters).
/// Secret.
pub struct EcdsaAuxInfo(AuxInfo<Level>);

/// A complete CGGMP24 key share (keygen share + aux info), validated. Secret.
pub struct EcdsaKeyShare(KeyShare<Curve, Level>);

macro_rules! common_key_accessors {
    ($t:ty) => {
        impl $t {
            /// This party's index at keygen (0..n).
            pub fn index(&self) -> u16 {
                let c = self.core();
                c.i
            }
            /// Number of parties holding the key.
            pub fn parties(&self) -> u16 {
                u16::try_from(self.core().public_shares.len()).unwrap_or(u16::MAX)
            }
            /// Threshold t (signers needed).
            pub fn threshold(&self) -> u16 {
                let c = self.core();
                c.vss_setup
                    .as_ref()
                    .map(|s| s.min_signers)
                    .unwrap_or_else(|| self.parties())
            }
            /// Shared (master) public key, 33-byte compressed via `.serialize()`.
            pub fn public_key(&self) -> PublicKey {
                key_info_public_key(&self.core().shared_public_key)
            }
            /// Chain code of the HD master key (`None` if HD was disabled at keygen).
            pub fn chain_code(&self) -> Option<[u8; 32]> {
                self.core().chain_code
            }
            /// BIP-32 master xpub (depth 0) for watch-only descriptors.
            pub fn xpub(&self, network: NetworkKind) -> Option<bitcoin::bip32::Xpub> {
                self.chain_code()
                    .map(|cc| btc::master_xpub(self.public_key(), cc, network))
            }
            /// Public key of the child at a non-hardened `path` (empty: master key).
            pub fn derive_public_key(&self, path: &[u32]) -> Result<PublicKey, ProtocolError> {
                derive_child(self.core(), path)
            }
        }
    };
}

fn derive_child(
    core: &cggmp24::key_share::DirtyIncompleteKeyShare<Curve>,
    path: &[u32],
) -> Result<PublicKey, ProtocolError> {
    if path.is_empty() {
        return Ok(key_info_public_key(&core.shared_public_key));
    }
    let idx = btc::non_hardened(path)?;
    let child = core
        .derive_child_public_key::<cggmp24::hd_wallet::Slip10, _>(idx)
        .map_err(|e| ProtocolError::InvalidArgument(format!("hd derivation: {e}")))?;
    btc::to_secp_pubkey(&child.public_key)
}

common_key_accessors!(EcdsaIncompleteShare);
common_key_accessors!(EcdsaKeyShare);

impl EcdsaIncompleteShare {
    fn core(&self) -> &cggmp24::key_share::DirtyIncompleteKeyShare<Curve> {
        &self.0
    }
}

impl EcdsaKeyShare {
    fn core(&self) -> &cggmp24::key_share::DirtyIncompleteKeyShare<Curve> {
        &self.0.core
    }
}

impl EcdsaIncompleteShare {
    /// Serializes (secret) for sealing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        encode_record(RecordKind::EcdsaIncompleteShare, &self.0)
    }
    /// Deserializes and validates (size bound, record kind, library validation).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_record(RecordKind::EcdsaIncompleteShare, bytes).map(Self)
    }
}

impl EcdsaAuxInfo {
    /// Number of parties this aux info was generated for.
    pub fn parties(&self) -> u16 {
        u16::try_from(self.0.N.len()).unwrap_or(u16::MAX)
    }
    /// SHA-256 over the public part only (every party's Paillier modulus and
    /// ring-Pedersen parameters, in party order). All parties of one aux-info run compute
    /// the same digest, so it serves as the run's confirmation value.
    pub fn public_digest(&self) -> [u8; 32] {
        #[derive(Serialize)]
        struct Public<'a> {
            n: &'a [cggmp24::backend::Integer],
            pedersen: Vec<[&'a cggmp24::backend::Integer; 3]>,
        }
        let public = Public {
            n: &self.0.N,
            pedersen: self
                .0
                .pedersen_params
                .iter()
                .map(|p| [&p.hat_N, &p.s, &p.t])
                .collect(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&public, &mut bytes)
            .expect("encoding public integers into a vec cannot fail");
        Sha256::digest(&bytes).into()
    }
    /// Serializes (secret) for sealing, without the multiexp tables.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        if !self.is_precomputed() {
            return encode_record(RecordKind::EcdsaAuxInfo, &self.0);
        }
        let mut stripped: cggmp24::key_share::DirtyAuxInfo<Level> = (*self.0).clone();
        for p in &mut stripped.pedersen_params {
            p.multiexp = None;
        }
        encode_record(RecordKind::EcdsaAuxInfo, &stripped)
    }

    /// A copy of this aux info with the library's precomputed multi-exponentiation
    /// tables for every party's ring-Pedersen parameters (built from public values;
    /// seconds of CPU). Every key share combined with the copy
    /// ([`EcdsaKeyShare::from_parts`]) is accelerated and shares its tables, so the
    /// keys of one node set pay for them once.
    pub fn precomputed_copy(&self) -> Result<Self, ProtocolError> {
        let mut dirty: cggmp24::key_share::DirtyAuxInfo<Level> = (*self.0).clone();
        let err = |e: cggmp24::key_share::InvalidKeyShare| ProtocolError::InvalidEncoding {
            what: "ecdsa aux info",
            reason: crate::error::display_chain(&e),
        };
        dirty.precompute_multiexp_tables().map_err(err)?;
        AuxInfo::validate(dirty)
            .map(Self)
            .map_err(|e| err(e.into_error()))
    }

    /// Whether [`Self::precomputed_copy`] made this one.
    pub fn is_precomputed(&self) -> bool {
        self.0.multiexp_tables_size() > 0
    }
    /// Deserializes and validates (size bound, record kind, library validation).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_record(RecordKind::EcdsaAuxInfo, bytes).map(Self)
    }
}

impl EcdsaKeyShare {
    /// Combines a keygen share with this party's aux info and validates the result
    /// (same party count; the aux info's Paillier modulus at this index matches its
    /// primes). Aux info can be reused for several keys of the same party set.
    pub fn from_parts(
        share: &EcdsaIncompleteShare,
        aux: &EcdsaAuxInfo,
    ) -> Result<Self, ProtocolError> {
        if share.parties() != aux.parties() {
            return Err(ProtocolError::InvalidArgument(format!(
                "key share has {} parties, aux info {}",
                share.parties(),
                aux.parties()
            )));
        }
        KeyShare::from_parts((share.0.clone(), aux.0.clone()))
            .map(Self)
            .map_err(|e| ProtocolError::InvalidEncoding {
                what: "ecdsa key share",
                reason: crate::error::display_chain(&e),
            })
    }
    /// Builds the library's in-memory accelerator: multi-exponentiation tables for every
    /// party's ring-Pedersen parameters. They speed up presigning and signing;
    /// [`Self::to_bytes`] never stores them (they are large and derivable), so call this
    /// again after loading a share. (CRT parameters for this party's own modulus are
    /// already produced by aux-info generation and kept in the stored share.)
    pub fn with_precomputation(self) -> Result<Self, ProtocolError> {
        Self::accelerated(self.0.into_inner())
    }

    /// A copy of this share with the library's precomputed tables (as
    /// [`Self::with_precomputation`]), leaving this one as it is: a node keeps signing
    /// with the plain share while the tables are built.
    pub fn precomputed_copy(&self) -> Result<Self, ProtocolError> {
        Self::accelerated((*self.0).clone())
    }

    fn accelerated(
        mut dirty: cggmp24::key_share::DirtyKeyShare<Curve, Level>,
    ) -> Result<Self, ProtocolError> {
        let err = |e: cggmp24::key_share::InvalidKeyShare| ProtocolError::InvalidEncoding {
            what: "ecdsa key share",
            reason: crate::error::display_chain(&e),
        };
        dirty.aux.precompute_multiexp_tables().map_err(err)?;
        KeyShare::validate(dirty)
            .map(Self)
            .map_err(|e| err(e.into_error()))
    }

    /// Whether [`Self::with_precomputation`] was applied.
    pub fn is_precomputed(&self) -> bool {
        self.accelerator_bytes() > 0
    }

    /// Memory held by the multi-exponentiation tables (0 without precomputation).
    pub fn accelerator_bytes(&self) -> usize {
        self.0.aux.multiexp_tables_size()
    }

    /// Serializes (secret) for sealing, without the multiexp tables (the CRT parameters
    /// the library computed at aux-info time are kept: they are small and secret like the
    /// rest of the share).
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        if !self.is_precomputed() {
            return encode_record(RecordKind::EcdsaKeyShare, &self.0);
        }
        let mut stripped: cggmp24::key_share::DirtyKeyShare<Curve, Level> = (*self.0).clone();
        for p in &mut stripped.aux.pedersen_params {
            p.multiexp = None;
        }
        encode_record(RecordKind::EcdsaKeyShare, &stripped)
    }
    /// Deserializes and validates (size bound, record kind, library validation).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_record(RecordKind::EcdsaKeyShare, bytes).map(Self)
    }
}

impl std::fmt::Debug for EcdsaIncompleteShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaIncompleteShare")
            .field("index", &self.index())
            .field("t", &self.threshold())
            .field("n", &self.parties())
            .field("public_key", &self.public_key().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for EcdsaAuxInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaAuxInfo")
            .field("n", &self.parties())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for EcdsaKeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaKeyShare")
            .field("index", &self.index())
            .field("t", &self.threshold())
            .field("n", &self.parties())
            .field("public_key", &self.public_key().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// prime sets

/// Four Paillier safe primes for one [`aux_info`] run. Secret. Generating one takes
/// tens of seconds of CPU: keep a pool, generate with [`PrimeSet::generate`] on a
/// worker thread ([`crate::run_blocking_on_thread`]). Use each set for one aux-info run
/// only.
pub struct PrimeSet(PregeneratedPrimes<Level>);

impl PrimeSet {
    /// Generates a fresh set (blocking, CPU-bound; ~35 s with GMP on one core).
    /// `progress` receives [`ProgressEvent::PrimeReady`] after each of the four primes.
    pub fn generate(progress: Option<&ProgressFn>) -> Self {
        use cggmp24::security_level::SecurityLevel;
        let bits = <Level as SecurityLevel>::RSA_PRIME_BITLEN;
        let mut primes = Vec::with_capacity(4);
        for done in 1..=4u8 {
            primes.push(cggmp24::backend::Integer::generate_safe_prime(
                &mut OsRng, bits,
            ));
            if let Some(p) = progress {
                p(ProgressEvent::PrimeReady { done });
            }
        }
        let arr: [cggmp24::backend::Integer; 4] = primes
            .try_into()
            .unwrap_or_else(|_| unreachable!("exactly four primes were pushed"));
        Self(
            PregeneratedPrimes::try_from(arr)
                .unwrap_or_else(|_| unreachable!("generated primes have the required size")),
        )
    }

    /// Checks sizes (library rule), safe-primality (p and (p-1)/2 probable primes) and
    /// that the four primes are distinct.
    fn validate(p: PregeneratedPrimes<Level>) -> Result<Self, ProtocolError> {
        let err = |reason: &str| ProtocolError::InvalidEncoding {
            what: "paillier prime set",
            reason: reason.to_string(),
        };
        let primes = p.into_primes();
        for (k, prime) in primes.iter().enumerate() {
            if !is_safe_prime(prime) {
                return Err(err(&format!("number {k} is not a safe prime")));
            }
            if primes[..k].contains(prime) {
                return Err(err("primes are not distinct"));
            }
        }
        PregeneratedPrimes::try_from(primes)
            .map(Self)
            .map_err(|_| err("primes are smaller than the security level requires"))
    }

    /// Serializes (secret) for sealing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        encode_record(RecordKind::PrimeSet, &self.0)
    }

    /// Deserializes and validates (size bound, kind, sizes, safe primality).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::validate(decode_record(RecordKind::PrimeSet, bytes)?)
    }

    /// JSON form (the library's serde layout), used by the test fixtures.
    pub fn to_json(&self) -> Result<Zeroizing<String>, ProtocolError> {
        serde_json::to_string_pretty(&self.0)
            .map(Zeroizing::new)
            .map_err(|e| ProtocolError::InvalidEncoding {
                what: "paillier prime set",
                reason: e.to_string(),
            })
    }

    /// Parses and validates the JSON form (bounded to 64 KiB).
    pub fn from_json(s: &str) -> Result<Self, ProtocolError> {
        if s.len() > 64 * 1024 {
            return Err(ProtocolError::InvalidEncoding {
                what: "paillier prime set",
                reason: "json larger than 64 KiB".into(),
            });
        }
        let p = serde_json::from_str(s).map_err(|e| ProtocolError::InvalidEncoding {
            what: "paillier prime set",
            reason: e.to_string(),
        })?;
        Self::validate(p)
    }
}

fn is_safe_prime(p: &cggmp24::backend::Integer) -> bool {
    use cggmp24::backend::IsPrime;
    let prime = |x: &cggmp24::backend::Integer| {
        matches!(
            x.is_probably_prime(30, &mut OsRng),
            IsPrime::Yes | IsPrime::Probably
        )
    };
    if p.is_even() || !prime(p) {
        return false;
    }
    let mut half = p.clone();
    half >>= 1u32;
    prime(&half)
}

impl std::fmt::Debug for PrimeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrimeSet(<redacted>)")
    }
}

/// Loads the public **test-only** prime sets shipped in `fixtures/test-primes/`
/// (`i` in 0..5). Never use them outside tests: the primes are published.
#[cfg(any(test, feature = "test-fixtures"))]
pub fn test_prime_set(i: usize) -> Result<PrimeSet, ProtocolError> {
    const FIXTURES: [&str; 5] = [
        include_str!("../fixtures/test-primes/primes-0.json"),
        include_str!("../fixtures/test-primes/primes-1.json"),
        include_str!("../fixtures/test-primes/primes-2.json"),
        include_str!("../fixtures/test-primes/primes-3.json"),
        include_str!("../fixtures/test-primes/primes-4.json"),
    ];
    let s = FIXTURES
        .get(i)
        .ok_or_else(|| ProtocolError::InvalidArgument(format!("no test prime set {i}")))?;
    PrimeSet::from_json(s)
}

// ---------------------------------------------------------------------------------------
// presignatures and partial signatures

#[derive(Clone, Serialize, Deserialize)]
struct PresigPublicRepr {
    gamma: NonZero<Point<Curve>>,
    commitments: Vec<(Point<Curve>, Point<Curve>)>,
    signers: Vec<u16>,
    path: Vec<u32>,
    public_key: Vec<u8>,
}

/// Public data of a presignature: needed to check and combine partial signatures.
/// Not secret; store it with the presignature envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignaturePublic {
    gamma: NonZero<Point<Curve>>,
    commitments: Vec<(Point<Curve>, Point<Curve>)>,
    signers: Vec<u16>,
    path: Vec<u32>,
    public_key: PublicKey,
}

impl std::fmt::Debug for PresignaturePublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignaturePublic")
            .field("id", &hex::encode(self.id()))
            .field("signers", &self.signers)
            .field("path", &self.path)
            .field("public_key", &self.public_key.to_string())
            .finish()
    }
}

impl PresignaturePublic {
    fn repr(&self) -> PresigPublicRepr {
        PresigPublicRepr {
            gamma: self.gamma,
            commitments: self.commitments.clone(),
            signers: self.signers.clone(),
            path: self.path.clone(),
            public_key: self.public_key.serialize().to_vec(),
        }
    }

    fn from_repr(r: PresigPublicRepr) -> Result<Self, ProtocolError> {
        let err = |reason: String| ProtocolError::InvalidEncoding {
            what: "presignature public data",
            reason,
        };
        if r.commitments.len() != r.signers.len() || r.signers.len() < 2 {
            return Err(err("commitments do not match the signer set".into()));
        }
        btc::check_path(&r.path)?;
        let public_key = PublicKey::from_slice(&r.public_key).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            gamma: r.gamma,
            commitments: r.commitments,
            signers: r.signers,
            path: r.path,
            public_key,
        })
    }

    /// Keygen indexes of the signer set, in signing order (position = party index in the
    /// presigning run and in [`EcdsaPartialSignature::signer`]).
    pub fn signers(&self) -> &[u16] {
        &self.signers
    }

    /// Derivation path the presignature is bound to (empty: master key).
    pub fn derivation_path(&self) -> &[u32] {
        &self.path
    }

    /// Public key that signatures from this presignature verify against (the child key of
    /// [`Self::derivation_path`]).
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Identifier: SHA-256 of the encoded public data. All signers compute the same id
    /// for the same presignature, so nodes can agree on which one to consume.
    pub fn id(&self) -> [u8; 32] {
        let mut bytes = Vec::new();
        ciborium::into_writer(&self.repr(), &mut bytes)
            .expect("encoding public data into a vec cannot fail");
        Sha256::digest(&bytes).into()
    }

    /// Encodes (public) for storage next to the presignature envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        encode_record(RecordKind::PresignaturePublic, &self.repr()).map(|z| z.to_vec())
    }

    /// Decodes with size bound and validation.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::from_repr(decode_record(RecordKind::PresignaturePublic, bytes)?)
    }
}

#[derive(Serialize, Deserialize)]
struct PresigRepr {
    presig: cggmp24::Presignature<Curve>,
    position: u16,
    public: PresigPublicRepr,
}

/// A CGGMP24 presignature of this party. Secret and **single use**: it is not `Clone`,
/// and [`Self::issue_partial_signature`] consumes it, so a second use does not compile:
///
/// ```compile_fail,E0382
/// # fn f(p: signer_protocol::ecdsa::EcdsaPresignature, m: signer_protocol::SighashMessage, ok: &vote::InputPermit) {
/// let _first = p.issue_partial_signature(&m, &[], ok);
/// let _second = p.issue_partial_signature(&m, &[], ok); // error[E0382]: use of moved value
/// # }
/// ```
/// The node must also make sure a
/// stored copy is deleted (or marked used) in the same transaction that records its use,
/// before the partial signature leaves the node — reusing a presignature for two
/// messages reveals the key.
pub struct EcdsaPresignature {
    presig: cggmp24::Presignature<Curve>,
    position: u16,
    public: PresignaturePublic,
}

impl std::fmt::Debug for EcdsaPresignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaPresignature")
            .field("id", &hex::encode(self.public.id()))
            .field("position", &self.position)
            .field("signers", &self.public.signers)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EcdsaPresignature {
    /// Public data (signer set, path, commitments).
    pub fn public(&self) -> &PresignaturePublic {
        &self.public
    }

    /// This party's position in the signer set.
    pub fn position(&self) -> u16 {
        self.position
    }

    /// Issues this party's partial signature for `msg`, consuming the presignature.
    ///
    /// `derivation_path` must equal the path the presignature was generated for
    /// (RUSTSEC-2025-0127: the path cannot be chosen after presigning).
    ///
    /// `permit` must allow exactly `msg`'s sighash ([`ProtocolError::NotPermitted`]
    /// otherwise, and the presignature is not used).
    pub fn issue_partial_signature(
        self,
        msg: &SighashMessage,
        derivation_path: &[u32],
        permit: &InputPermit,
    ) -> Result<(EcdsaPartialSignature, PresignaturePublic), ProtocolError> {
        if !permit.permits(&msg.sighash()) {
            return Err(ProtocolError::NotPermitted {
                protocol: ProtocolKind::EcdsaSign,
            });
        }
        if derivation_path != self.public.path.as_slice() {
            return Err(ProtocolError::InvalidArgument(
                "presignature was generated for another derivation path".into(),
            ));
        }
        let partial = self.presig.issue_partial_signature(msg.data_to_sign());
        Ok((
            EcdsaPartialSignature {
                signer: self.position,
                sigma: partial
                    .sigma
                    .to_be_bytes()
                    .as_bytes()
                    .try_into()
                    .map_err(|_| ProtocolError::InvalidEncoding {
                        what: "partial signature",
                        reason: "scalar is not 32 bytes".into(),
                    })?,
            },
            self.public,
        ))
    }

    /// Serializes (secret) for sealing. Sealing a copy does not make it reusable: the node
    /// must consume the stored copy exactly once.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        #[derive(Serialize)]
        struct Ref<'a> {
            presig: &'a cggmp24::Presignature<Curve>,
            position: u16,
            public: PresigPublicRepr,
        }
        encode_record(
            RecordKind::EcdsaPresignature,
            &Ref {
                presig: &self.presig,
                position: self.position,
                public: self.public.repr(),
            },
        )
    }

    /// Deserializes and validates (size bound, kind, position within the signer set).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let r: PresigRepr = decode_record(RecordKind::EcdsaPresignature, bytes)?;
        let public = PresignaturePublic::from_repr(r.public)?;
        if usize::from(r.position) >= public.signers.len() {
            return Err(ProtocolError::InvalidEncoding {
                what: "ecdsa presignature",
                reason: "position outside the signer set".into(),
            });
        }
        if r.presig.Gamma != public.gamma {
            return Err(ProtocolError::InvalidEncoding {
                what: "ecdsa presignature",
                reason: "presignature does not match its public data".into(),
            });
        }
        Ok(Self {
            presig: r.presig,
            position: r.position,
            public,
        })
    }
}

/// A partial signature (public; sent to whoever combines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdsaPartialSignature {
    /// Position of the issuer in the presignature's signer set.
    pub signer: u16,
    /// σ, big-endian scalar.
    pub sigma: [u8; 32],
}

impl EcdsaPartialSignature {
    /// 34-byte wire form: `u16be(signer) || sigma`.
    pub fn to_bytes(&self) -> [u8; 34] {
        let mut out = [0u8; 34];
        out[..2].copy_from_slice(&self.signer.to_be_bytes());
        out[2..].copy_from_slice(&self.sigma);
        out
    }

    /// Parses the wire form (exactly 34 bytes).
    pub fn from_bytes(b: &[u8]) -> Result<Self, ProtocolError> {
        let b: &[u8; 34] = b.try_into().map_err(|_| ProtocolError::InvalidEncoding {
            what: "partial signature",
            reason: format!("expected 34 bytes, got {}", b.len()),
        })?;
        let mut sigma = [0u8; 32];
        sigma.copy_from_slice(&b[2..]);
        Ok(Self {
            signer: u16::from_be_bytes([b[0], b[1]]),
            sigma,
        })
    }
}

/// Checks each partial signature against the presignature commitments (blaming the
/// first invalid one), combines them and verifies the result with libsecp256k1 against
/// [`PresignaturePublic::public_key`] over `msg`'s Bitcoin sighash.
///
/// Exactly one partial per signer position is required, in any order.
pub fn combine_partial_signatures(
    public: &PresignaturePublic,
    partials: &[EcdsaPartialSignature],
    msg: &SighashMessage,
) -> Result<secp256k1::ecdsa::Signature, ProtocolError> {
    let t = public.signers.len();
    let mut ordered: Vec<Option<Scalar<Curve>>> = vec![None; t];
    for p in partials {
        let slot = ordered.get_mut(usize::from(p.signer)).ok_or_else(|| {
            ProtocolError::InvalidArgument(format!("partial from unknown signer {}", p.signer))
        })?;
        if slot.is_some() {
            return Err(ProtocolError::InvalidArgument(format!(
                "two partial signatures from signer {}",
                p.signer
            )));
        }
        let sigma = Scalar::<Curve>::from_be_bytes(p.sigma)
            .map_err(|_| ProtocolError::InvalidPartialSignature { party: p.signer })?;
        *slot = Some(sigma);
    }
    let data = msg.data_to_sign();
    let m = data.to_scalar();
    let r = public.gamma.x().to_scalar();
    let mut lib_partials = Vec::with_capacity(t);
    for (j, (sigma, (tilde_delta, tilde_s))) in ordered.iter().zip(&public.commitments).enumerate()
    {
        let party = u16::try_from(j).unwrap_or(u16::MAX);
        let sigma = sigma.ok_or_else(|| {
            ProtocolError::InvalidArgument(format!("missing partial signature of signer {party}"))
        })?;
        // σ_j·Γ = m·Δ̃_j + r·S̃_j must hold for an honest partial
        if public.gamma * sigma != *tilde_delta * m + *tilde_s * r {
            return Err(ProtocolError::InvalidPartialSignature { party });
        }
        lib_partials.push(cggmp24::PartialSignature { sigma });
    }
    let lib_public = cggmp24::signing::PresignaturePublicData {
        Gamma: public.gamma,
        commitments: public
            .commitments
            .iter()
            .map(|(d, s)| cggmp24::signing::PresignatureCommitment {
                tilde_Delta: *d,
                tilde_S: *s,
            })
            .collect(),
    };
    let sig = cggmp24::PartialSignature::combine(&lib_partials, &lib_public, data).ok_or(
        ProtocolError::InvalidSignature {
            protocol: ProtocolKind::EcdsaSignFromPresignature,
        },
    )?;
    let sig = to_secp_signature(&sig, ProtocolKind::EcdsaSignFromPresignature)?;
    btc::verify_ecdsa(&public.public_key, msg, &sig).map_err(|_| {
        ProtocolError::InvalidSignature {
            protocol: ProtocolKind::EcdsaSignFromPresignature,
        }
    })?;
    Ok(sig)
}

fn to_secp_signature(
    sig: &cggmp24::Signature<Curve>,
    protocol: ProtocolKind,
) -> Result<secp256k1::ecdsa::Signature, ProtocolError> {
    let mut bytes = [0u8; 64];
    sig.normalize_s().write_to_slice(&mut bytes);
    let mut s = secp256k1::ecdsa::Signature::from_compact(&bytes)
        .map_err(|_| ProtocolError::InvalidSignature { protocol })?;
    s.normalize_s();
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// runners

fn check_n_t(i: u16, n: u16, t: u16) -> Result<(), ProtocolError> {
    if n < 2 || t < 2 || t > n || i >= n {
        return Err(ProtocolError::InvalidArgument(format!(
            "need 2 <= t <= n and i < n, got i={i} t={t} n={n}"
        )));
    }
    Ok(())
}

/// Validates a signer set: `signers[i]` are keygen indexes in run order, exactly t of
/// them, distinct, all < n, and `signers[position]` is this share's index.
fn check_signers(
    share: &EcdsaKeyShare,
    position: u16,
    signers: &[u16],
) -> Result<(), ProtocolError> {
    let t = usize::from(share.threshold());
    if signers.len() != t {
        return Err(ProtocolError::InvalidArgument(format!(
            "signer set has {} members, threshold is {t}",
            signers.len()
        )));
    }
    if signers.iter().any(|&s| s >= share.parties()) {
        return Err(ProtocolError::InvalidArgument(
            "signer index outside the key's parties".into(),
        ));
    }
    let mut sorted = signers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != signers.len() {
        return Err(ProtocolError::InvalidArgument(
            "duplicate signer in the signer set".into(),
        ));
    }
    if signers.get(usize::from(position)) != Some(&share.index()) {
        return Err(ProtocolError::InvalidArgument(format!(
            "position {position} in the signer set is not this share's index {}",
            share.index()
        )));
    }
    Ok(())
}

/// CGGMP24 threshold key generation (HD-enabled) for party `i` of `n`, threshold `t`.
pub async fn keygen<M>(
    party: M,
    eid: &ExecutionId,
    i: u16,
    n: u16,
    t: u16,
    progress: Option<ProgressFn>,
) -> Result<EcdsaIncompleteShare, ProtocolError>
where
    M: Mpc<ProtocolMessage = EcdsaKeygenMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::EcdsaKeygen;
    check_n_t(i, n, t)?;
    let mut tracer = ProgressTracer::new(KIND, progress);
    let run = async {
        cggmp24::keygen::<Curve>(LibEid::new(eid.as_bytes()), i, n)
            .set_threshold(t)
            .hd_wallet(true)
            .set_progress_tracer(&mut tracer)
            .start(&mut OsRng, party)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    traced(KIND, i, n, run).await.map(EcdsaIncompleteShare)
}

/// CGGMP24 aux-info generation for party `i` of `n` with a pregenerated prime set
/// (consumed: never use a prime set twice).
pub async fn aux_info<M>(
    party: M,
    eid: &ExecutionId,
    i: u16,
    n: u16,
    primes: PrimeSet,
    progress: Option<ProgressFn>,
) -> Result<EcdsaAuxInfo, ProtocolError>
where
    M: Mpc<ProtocolMessage = EcdsaAuxMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::EcdsaAuxInfo;
    if n < 2 || i >= n {
        return Err(ProtocolError::InvalidArgument(format!(
            "need n >= 2 and i < n, got i={i} n={n}"
        )));
    }
    let mut tracer = ProgressTracer::new(KIND, progress);
    let run = async {
        cggmp24::aux_info_gen(LibEid::new(eid.as_bytes()), i, n, primes.0)
            .set_progress_tracer(&mut tracer)
            .start(&mut OsRng, party)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    traced(KIND, i, n, run).await.map(EcdsaAuxInfo)
}

/// Generates a presignature for the signer set `signers` (keygen indexes in run order;
/// this party is `signers[position]`), bound to `derivation_path` (empty: master key).
pub async fn presign<M>(
    party: M,
    eid: &ExecutionId,
    position: u16,
    signers: &[u16],
    share: &EcdsaKeyShare,
    derivation_path: &[u32],
    progress: Option<ProgressFn>,
) -> Result<EcdsaPresignature, ProtocolError>
where
    M: Mpc<ProtocolMessage = EcdsaSignMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::EcdsaPresign;
    check_signers(share, position, signers)?;
    let public_key = share.derive_public_key(derivation_path)?;
    let mut tracer = ProgressTracer::new(KIND, progress);
    let mut builder = cggmp24::signing(LibEid::new(eid.as_bytes()), position, signers, &share.0)
        .set_progress_tracer(&mut tracer);
    if !derivation_path.is_empty() {
        builder = builder
            .set_derivation_path(btc::non_hardened(derivation_path)?)
            .map_err(|e| ProtocolError::InvalidArgument(format!("hd derivation: {e}")))?;
    }
    let run = async {
        builder
            .generate_presignature(&mut OsRng, party)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    let (presig, public) = traced(KIND, position, share.threshold(), run).await?;
    Ok(EcdsaPresignature {
        presig,
        position,
        public: PresignaturePublic {
            gamma: public.Gamma,
            commitments: public
                .commitments
                .iter()
                .map(|c| (c.tilde_Delta, c.tilde_S))
                .collect(),
            signers: signers.to_vec(),
            path: derivation_path.to_vec(),
            public_key,
        },
    })
}

/// Interactive signing without presignature (any derivation path). The signature is
/// verified with libsecp256k1 against the child key before it is returned.
///
/// `permit` must allow exactly `msg`'s sighash: [`ProtocolError::NotPermitted`]
/// before any message is sent otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn sign<M>(
    party: M,
    eid: &ExecutionId,
    position: u16,
    signers: &[u16],
    share: &EcdsaKeyShare,
    derivation_path: &[u32],
    msg: &SighashMessage,
    permit: &InputPermit,
    progress: Option<ProgressFn>,
) -> Result<secp256k1::ecdsa::Signature, ProtocolError>
where
    M: Mpc<ProtocolMessage = EcdsaSignMsg>,
{
    const KIND: ProtocolKind = ProtocolKind::EcdsaSign;
    if !permit.permits(&msg.sighash()) {
        return Err(ProtocolError::NotPermitted { protocol: KIND });
    }
    check_signers(share, position, signers)?;
    let public_key = share.derive_public_key(derivation_path)?;
    let mut tracer = ProgressTracer::new(KIND, progress);
    let mut builder = cggmp24::signing(LibEid::new(eid.as_bytes()), position, signers, &share.0)
        .set_progress_tracer(&mut tracer);
    if !derivation_path.is_empty() {
        builder = builder
            .set_derivation_path(btc::non_hardened(derivation_path)?)
            .map_err(|e| ProtocolError::InvalidArgument(format!("hd derivation: {e}")))?;
    }
    let data = msg.data_to_sign();
    let run = async {
        builder
            .sign(&mut OsRng, party, &data)
            .await
            .map_err(|e| ProtocolError::from_library(KIND, &e))
    };
    let sig = traced(KIND, position, share.threshold(), run).await?;
    let sig = to_secp_signature(&sig, KIND)?;
    btc::verify_ecdsa(&public_key, msg, &sig)
        .map_err(|_| ProtocolError::InvalidSignature { protocol: KIND })?;
    Ok(sig)
}
