//! Checks every participant makes, and evidence anyone can verify later.
//!
//! The same functions serve the live protocol ([`super::ReshareParty`]) and the offline
//! verification of a recorded fault ([`Evidence::verify`]), so an auditor applies exactly
//! the rules the participants applied.

use cggmp24::generic_ec::{Point, Scalar, SecretScalar};
use zeroize::Zeroizing;

use super::error::{FaultKind, ReshareError};
use super::identity;
use super::math::{self, Curve};
use super::setup::ReshareSetup;
use super::wire::{
    commitments_statement, echo_statement, sub_share_statement, Bytes, CommitmentsMsg, Complaint,
    EchoMsg, SubShareMsg,
};
use crate::eid::ExecutionId;

/// The checking context of one run.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) eid: &'a [u8; 32],
    pub(crate) setup: &'a ReshareSetup,
}

impl Ctx<'_> {
    fn in_run(&self, eid: &Bytes<32>, setup: &Bytes<32>) -> bool {
        eid.0 == *self.eid && setup.0 == self.setup.digest()
    }

    fn key(&self, r: u16) -> Option<&[u8; 32]> {
        self.setup.participant(r).map(|p| &p.identity_key)
    }

    /// Did `dealer` sign the commitments digest `digest` in this run?
    pub(crate) fn commitments_signed(
        &self,
        dealer: u16,
        digest: &[u8; 32],
        sig: &[u8; 64],
    ) -> bool {
        let Some(key) = self.key(dealer) else {
            return false;
        };
        let digest_msg = commitments_statement(self.eid, &self.setup.digest(), dealer, digest);
        identity::verify(key, &digest_msg, sig)
    }

    /// Run binding and dealer signature of a commitments message.
    pub(crate) fn commitments_authentic(
        &self,
        dealer: u16,
        c: &CommitmentsMsg,
    ) -> Result<(), FaultKind> {
        const M: &str = "commitments";
        if !self.in_run(&c.eid, &c.setup) {
            return Err(FaultKind::WrongRun { message: M });
        }
        if !self.commitments_signed(dealer, &c.digest(), &c.signature.0) {
            return Err(FaultKind::BadSignature { message: M });
        }
        Ok(())
    }

    /// The checks on a dealer's (authentic) commitments: exactly t' of them, each a valid
    /// non-zero point, and `C_i0 = λ_i·X_i` with `X_i` the dealer's OLD public share.
    pub(crate) fn commitments_valid(
        &self,
        dealer: u16,
        c: &CommitmentsMsg,
    ) -> Result<Vec<Point<Curve>>, FaultKind> {
        let expected = self.setup.new_threshold();
        if c.commitments.len() != usize::from(expected) {
            return Err(FaultKind::CommitmentCount {
                expected,
                got: c.commitments.len(),
            });
        }
        let points = c
            .commitments
            .iter()
            .map(|b| math::parse_point(&b.0).map(|p| *p))
            .collect::<Option<Vec<_>>>()
            .ok_or(FaultKind::InvalidCommitmentEncoding)?;
        let constant =
            self.setup
                .expected_constant(dealer)
                .ok_or(FaultKind::UnexpectedMessage {
                    message: "commitments",
                })?;
        if points.first() != Some(&constant) {
            return Err(FaultKind::WrongConstantTerm);
        }
        Ok(points)
    }

    /// Run binding and dealer signature of a sub-share for `receiver`.
    pub(crate) fn sub_share_authentic(
        &self,
        dealer: u16,
        receiver: u16,
        s: &SubShareMsg,
    ) -> Result<(), FaultKind> {
        const M: &str = "sub-share";
        if !self.in_run(&s.eid, &s.setup) {
            return Err(FaultKind::WrongRun { message: M });
        }
        let Some(key) = self.key(dealer) else {
            return Err(FaultKind::UnexpectedMessage { message: M });
        };
        let msg = sub_share_statement(
            self.eid,
            &self.setup.digest(),
            dealer,
            receiver,
            &s.commitments_digest.0,
            &s.value,
        );
        if !identity::verify(key, &msg, &s.signature.0) {
            return Err(FaultKind::BadSignature { message: M });
        }
        Ok(())
    }

    /// The Feldman check `f_i(I'_j)·G = Σ_k C_ik·I'_j^k` for the receiver at run index
    /// `receiver`; returns the sub-share when it holds.
    pub(crate) fn sub_share_value(
        &self,
        receiver: u16,
        points: &[Point<Curve>],
        s: &SubShareMsg,
    ) -> Option<SecretScalar<Curve>> {
        let x = self.setup.new_eval_point(receiver)?;
        let mut v = Zeroizing::new(Scalar::<Curve>::from_be_bytes(&s.value.0).ok()?);
        if Point::generator() * *v != math::eval_commitments(points, &x) {
            return None;
        }
        Some(SecretScalar::new(&mut v))
    }

    /// Run binding and sender signature of an echo.
    pub(crate) fn echo_authentic(&self, sender: u16, e: &EchoMsg) -> Result<(), FaultKind> {
        const M: &str = "echo";
        if !self.in_run(&e.eid, &e.setup) {
            return Err(FaultKind::WrongRun { message: M });
        }
        let Some(key) = self.key(sender) else {
            return Err(FaultKind::UnexpectedMessage { message: M });
        };
        let msg = echo_statement(
            self.eid,
            &self.setup.digest(),
            sender,
            &e.seen,
            &e.complaints,
        );
        if !identity::verify(key, &msg, &e.signature.0) {
            return Err(FaultKind::BadSignature { message: M });
        }
        Ok(())
    }

    /// An echo lists exactly the dealers, in order, and complains at most once per dealer
    /// about dealers only.
    pub(crate) fn echo_well_formed(&self, e: &EchoMsg) -> bool {
        let dealers = self.setup.dealers();
        if e.seen.len() != dealers.len() || e.seen.iter().zip(dealers).any(|(s, d)| s.dealer != *d)
        {
            return false;
        }
        let mut accused: Vec<u16> = e.complaints.iter().map(Complaint::dealer).collect();
        accused.sort_unstable();
        let n = accused.len();
        accused.dedup();
        n == accused.len() && accused.iter().all(|a| dealers.contains(a))
    }
}

/// A dealer-signed statement that names the commitments digest of the dealer.
#[derive(Debug, Clone)]
pub enum SignedClaim {
    /// The dealer's signature on its commitments digest (as broadcast or echoed).
    Commitments {
        /// `D_i`.
        digest: Bytes<32>,
        /// The dealer's signature.
        signature: Bytes<64>,
    },
    /// A sub-share the dealer signed for `receiver`, which names a digest.
    SubShare {
        /// Run index of the receiver.
        receiver: u16,
        /// The signed sub-share.
        sub_share: SubShareMsg,
    },
}

impl SignedClaim {
    /// The digest the dealer vouched for, if its signature holds.
    fn digest(&self, ctx: &Ctx<'_>, dealer: u16) -> Option<[u8; 32]> {
        match self {
            SignedClaim::Commitments { digest, signature } => ctx
                .commitments_signed(dealer, &digest.0, &signature.0)
                .then_some(digest.0),
            SignedClaim::SubShare {
                receiver,
                sub_share,
            } => ctx
                .sub_share_authentic(dealer, *receiver, sub_share)
                .is_ok()
                .then_some(sub_share.commitments_digest.0),
        }
    }
}

/// Signed statements that prove a fault to anyone who knows the run's setup and execution
/// id (e.g. an auditor, or a node that only saw the abort). Contains a sub-share when the
/// fault is about one: that value is only one point of a polynomial discarded with the
/// aborted run, but keep evidence in the sealed audit store anyway.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Evidence {
    /// The dealer's signed commitments break a rule (count, encoding, constant term).
    InvalidCommitments {
        /// Run index of the dealer.
        dealer: u16,
        /// Its signed commitments.
        commitments: CommitmentsMsg,
    },
    /// The dealer's signed sub-share does not match its signed commitments.
    InvalidSubShare {
        /// Run index of the dealer.
        dealer: u16,
        /// Run index of the receiver.
        receiver: u16,
        /// The dealer's signed commitments.
        commitments: CommitmentsMsg,
        /// The dealer's signed sub-share.
        sub_share: SubShareMsg,
    },
    /// The dealer signed two different commitment digests in the same run.
    Equivocation {
        /// Run index of the dealer.
        dealer: u16,
        /// One signed digest.
        first: SignedClaim,
        /// Another signed digest.
        second: SignedClaim,
    },
    /// A party's signed echo complains about a dealer whose signed messages are valid.
    FalseComplaint {
        /// Run index of the complainer.
        accuser: u16,
        /// Run index of the accused dealer.
        dealer: u16,
        /// The complainer's signed echo.
        echo: EchoMsg,
        /// The dealer's signed commitments.
        commitments: CommitmentsMsg,
    },
    /// A party's signed echo quotes a commitments digest with a signature the dealer did not
    /// make.
    FalseEcho {
        /// Run index of the echoer.
        echoer: u16,
        /// Run index of the misquoted dealer.
        dealer: u16,
        /// The signed echo.
        echo: EchoMsg,
    },
}

impl Evidence {
    /// Checks the evidence against the run's execution id and setup. Returns the culprit
    /// (run index) and the fault it proves; an error if it proves nothing.
    pub fn verify(
        &self,
        eid: &ExecutionId,
        setup: &ReshareSetup,
    ) -> Result<(u16, FaultKind), ReshareError> {
        let ctx = Ctx { eid: &eid.0, setup };
        let no = |why: &str| {
            Err(ReshareError::InvalidArgument(format!(
                "evidence proves nothing: {why}"
            )))
        };
        match self {
            Evidence::InvalidCommitments {
                dealer,
                commitments,
            } => {
                if ctx.commitments_authentic(*dealer, commitments).is_err() {
                    return no("commitments are not signed by the dealer for this run");
                }
                match ctx.commitments_valid(*dealer, commitments) {
                    Err(kind) => Ok((*dealer, kind)),
                    Ok(_) => no("the commitments are valid"),
                }
            }
            Evidence::InvalidSubShare {
                dealer,
                receiver,
                commitments,
                sub_share,
            } => {
                if ctx.commitments_authentic(*dealer, commitments).is_err()
                    || ctx
                        .sub_share_authentic(*dealer, *receiver, sub_share)
                        .is_err()
                {
                    return no("messages are not signed by the dealer for this run");
                }
                if sub_share.commitments_digest.0 != commitments.digest() {
                    return Ok((*dealer, FaultKind::Equivocation));
                }
                let Ok(points) = ctx.commitments_valid(*dealer, commitments) else {
                    return no("the commitments themselves are invalid (use that evidence)");
                };
                match ctx.sub_share_value(*receiver, &points, sub_share) {
                    None => Ok((
                        *dealer,
                        FaultKind::InvalidSubShare {
                            receiver: *receiver,
                        },
                    )),
                    Some(_) => no("the sub-share matches the commitments"),
                }
            }
            Evidence::Equivocation {
                dealer,
                first,
                second,
            } => match (first.digest(&ctx, *dealer), second.digest(&ctx, *dealer)) {
                (Some(a), Some(b)) if a != b => Ok((*dealer, FaultKind::Equivocation)),
                (Some(_), Some(_)) => no("both statements name the same commitments"),
                _ => no("a statement is not signed by the dealer for this run"),
            },
            Evidence::FalseEcho {
                echoer,
                dealer,
                echo,
            } => {
                if ctx.echo_authentic(*echoer, echo).is_err() {
                    return no("the echo is not signed by the echoer for this run");
                }
                let quoted = echo.seen.iter().find(|s| s.dealer == *dealer);
                match quoted.and_then(|s| s.signed.as_ref()) {
                    Some((d, sig)) if !ctx.commitments_signed(*dealer, &d.0, &sig.0) => {
                        Ok((*echoer, FaultKind::FalseEcho { dealer: *dealer }))
                    }
                    _ => no("the echo quotes the dealer correctly"),
                }
            }
            Evidence::FalseComplaint {
                accuser,
                dealer,
                echo,
                commitments,
            } => {
                if ctx.echo_authentic(*accuser, echo).is_err() {
                    return no("the echo is not signed by the accuser for this run");
                }
                if ctx.commitments_authentic(*dealer, commitments).is_err() {
                    return no("the commitments are not signed by the dealer for this run");
                }
                let seen = echo.seen.iter().find(|s| s.dealer == *dealer);
                if seen.and_then(|s| s.signed.as_ref()).map(|(d, _)| d.0)
                    != Some(commitments.digest())
                {
                    return no(
                        "the accuser saw other commitments (equivocation, not a false complaint)",
                    );
                }
                let Some(complaint) = echo.complaints.iter().find(|c| c.dealer() == *dealer) else {
                    return no("the echo has no complaint about the dealer");
                };
                let false_complaint = Ok((*accuser, FaultKind::FalseComplaint { dealer: *dealer }));
                let points = ctx.commitments_valid(*dealer, commitments);
                match (complaint, points) {
                    (Complaint::InvalidCommitments { .. }, Ok(_)) => false_complaint,
                    (Complaint::InvalidSubShare { sub_share, .. }, Ok(points)) => {
                        if setup.new_eval_point(*accuser).is_none() {
                            // only receivers get sub-shares
                            return false_complaint;
                        }
                        if ctx
                            .sub_share_authentic(*dealer, *accuser, sub_share)
                            .is_err()
                        {
                            // the accuser published a sub-share the dealer never signed
                            return false_complaint;
                        }
                        if sub_share.commitments_digest.0 != commitments.digest() {
                            return no("the dealer signed two digests (equivocation)");
                        }
                        match ctx.sub_share_value(*accuser, &points, sub_share) {
                            Some(_) => false_complaint,
                            None => no("the complaint is justified"),
                        }
                    }
                    (Complaint::Unverifiable { .. }, _) => {
                        no("an unverifiable complaint proves nothing")
                    }
                    (_, Err(_)) => no("the commitments are invalid: the complaint is justified"),
                }
            }
        }
    }
}
