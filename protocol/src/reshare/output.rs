//! The result of a successful run: the new share and the new key's public information.

use cggmp24::generic_ec::serde::CurveName;
use cggmp24::generic_ec::{NonZero, Point, Scalar, SecretScalar};
use cggmp24::key_share::{
    DirtyIncompleteKeyShare, DirtyKeyInfo, IncompleteKeyShare, KeyInfo, VssSetup,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::error::ReshareError;
use super::math::{self, Curve};
use super::setup::{KeyKind, PublicKeyInfo, ReshareSetup};
use super::wire::DOMAIN;
use crate::codec::{encode_record, RecordKind};
use crate::ecdsa::EcdsaIncompleteShare;
use crate::frost::FrostKeyShare;

/// A new key share (secret; `Debug` redacted by the wrapped types).
#[derive(Debug)]
pub enum NewShare {
    /// CGGMP24 share without aux info: run aux-info generation for the new party set,
    /// then [`crate::ecdsa::EcdsaKeyShare::from_parts`].
    Ecdsa(EcdsaIncompleteShare),
    /// FROST share, ready to sign.
    Frost(FrostKeyShare),
}

/// Result of a successful run for one participant.
#[derive(Debug)]
pub struct ReshareOutput {
    share: Option<NewShare>,
    key_info: PublicKeyInfo,
    confirmation: [u8; 32],
}

impl ReshareOutput {
    /// The new share (`None` for a dealer-only participant, i.e. a removed node).
    pub fn share(&self) -> Option<&NewShare> {
        self.share.as_ref()
    }

    /// Takes the new share out.
    pub fn into_share(self) -> Option<NewShare> {
        self.share
    }

    /// The new ECDSA share; error if the run reshared a FROST key.
    pub fn into_ecdsa(self) -> Result<Option<EcdsaIncompleteShare>, ReshareError> {
        match self.share {
            None => Ok(None),
            Some(NewShare::Ecdsa(s)) => Ok(Some(s)),
            Some(NewShare::Frost(_)) => Err(ReshareError::InvalidArgument(
                "the run reshared a frost key".into(),
            )),
        }
    }

    /// The new FROST share; error if the run reshared an ECDSA key.
    pub fn into_frost(self) -> Result<Option<FrostKeyShare>, ReshareError> {
        match self.share {
            None => Ok(None),
            Some(NewShare::Frost(s)) => Ok(Some(s)),
            Some(NewShare::Ecdsa(_)) => Err(ReshareError::InvalidArgument(
                "the run reshared an ecdsa key".into(),
            )),
        }
    }

    /// Public information of the new sharing: same public key and chain code, new
    /// threshold, parties, public shares.
    pub fn key_info(&self) -> &PublicKeyInfo {
        &self.key_info
    }

    /// Confirmation value: `SHA-256(DOMAIN || "confirmation\0" || eid || setup digest ||
    /// new key info digest)`. Every participant of a successful run computes the same
    /// value; the node commits the new shares only when every new participant (and every
    /// dealer) confirmed this value (see `docs/RESHARING.md`).
    pub fn confirmation(&self) -> [u8; 32] {
        self.confirmation
    }
}

/// Builds the output from the valid commitments of every dealer (in dealer order) and,
/// for a receiver with new index `receiver`, its verified sub-shares.
pub(crate) fn build_output(
    eid: &[u8; 32],
    setup: &ReshareSetup,
    commitments: &[&[Point<Curve>]],
    receiver: Option<u16>,
    values: Option<Vec<SecretScalar<Curve>>>,
) -> Result<ReshareOutput, ReshareError> {
    let bad = |m: &str| ReshareError::InvalidOutput(m.to_string());
    let t_new = usize::from(setup.new_threshold());
    if commitments.len() != setup.dealers().len() || commitments.iter().any(|c| c.len() != t_new) {
        return Err(bad("commitments do not match the setup"));
    }
    // commitments of the new polynomial F = Σ_i f_i
    let combined: Vec<Point<Curve>> = (0..t_new)
        .map(|k| commitments.iter().map(|c| c[k]).sum())
        .collect();
    let old_pk = setup.old_key().shared_point();
    if combined.first() != Some(&*old_pk) {
        return Err(bad("the new sharing's constant term is not the public key"));
    }
    let public_shares = (0..setup.new_parties())
        .map(|j| NonZero::from_point(math::eval_commitments(&combined, &math::eval_point(j))))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a new public share is the point at infinity"))?;
    let dirty = DirtyKeyInfo {
        curve: CurveName::new(),
        shared_public_key: old_pk,
        public_shares,
        vss_setup: Some(VssSetup {
            min_signers: setup.new_threshold(),
            I: (0..setup.new_parties()).map(math::eval_point).collect(),
        }),
        chain_code: setup.old_key().chain_code(),
    };
    // library validation of the public part: the first t' public shares interpolate to
    // the (unchanged) public key and the others lie on the same polynomial
    let key_info = KeyInfo::validate(dirty.clone())
        .map(PublicKeyInfo)
        .map_err(|e| ReshareError::InvalidOutput(e.error().to_string()))?;
    let confirmation = {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(b"confirmation\0");
        h.update(eid);
        h.update(setup.digest());
        h.update(key_info.digest());
        h.finalize().into()
    };
    let share = match (receiver, values) {
        (Some(j), Some(values)) => {
            if values.len() != setup.dealers().len() {
                return Err(bad("missing sub-shares"));
            }
            let mut x = Zeroizing::new(Scalar::<Curve>::zero());
            for v in &values {
                *x += v.as_ref();
            }
            let x = NonZero::from_secret_scalar(SecretScalar::new(&mut x))
                .ok_or_else(|| bad("the new secret share is zero"))?;
            let core = IncompleteKeyShare::validate(DirtyIncompleteKeyShare {
                i: j,
                key_info: dirty,
                x,
            })
            .map_err(|e| ReshareError::InvalidOutput(e.error().to_string()))?;
            Some(wrap(setup.kind(), &core)?)
        }
        (None, _) => None,
        (Some(_), None) => return Err(bad("missing sub-shares")),
    };
    Ok(ReshareOutput {
        share,
        key_info,
        confirmation,
    })
}

/// Wraps a validated core share into the crate's share type of `kind` (through its
/// sealed record form, in zeroizing memory; the decoder validates again).
fn wrap(kind: KeyKind, core: &IncompleteKeyShare<Curve>) -> Result<NewShare, ReshareError> {
    let err = |e: crate::ProtocolError| ReshareError::InvalidOutput(e.to_string());
    match kind {
        KeyKind::Ecdsa => {
            let bytes = encode_record(RecordKind::EcdsaIncompleteShare, core).map_err(err)?;
            EcdsaIncompleteShare::from_bytes(&bytes)
                .map(NewShare::Ecdsa)
                .map_err(err)
        }
        KeyKind::Frost => {
            let bytes = encode_record(RecordKind::FrostKeyShare, core).map_err(err)?;
            FrostKeyShare::from_bytes(&bytes)
                .map(NewShare::Frost)
                .map_err(err)
        }
    }
}
