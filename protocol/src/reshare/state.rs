//! The sans-IO state machine of one participant.

use cggmp24::generic_ec::{Point, Scalar, SecretScalar};
use cggmp24::key_share::IncompleteKeyShare;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::error::{Fault, FaultKind, ReshareError};
use super::evidence::{Ctx, Evidence, SignedClaim};
use super::identity::ReshareSigner;
use super::math::{self, Curve, SecretPolynomial};
use super::output::{build_output, ReshareOutput};
use super::setup::{OldShare, PublicKeyInfo, ReshareSetup};
use super::wire::{
    commitments_digest, commitments_statement, echo_statement, sub_share_statement, Bytes,
    CommitmentsMsg, Complaint, EchoMsg, ReshareMsg, SecretBytes, Seen, SubShareMsg,
};
use crate::delivery::MsgType;
use crate::eid::ExecutionId;

/// A message this party wants sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `None`: broadcast to every other participant; `Some(r)`: p2p to run index `r`
    /// (confidential channel).
    pub recipient: Option<u16>,
    /// The message.
    pub msg: ReshareMsg,
}

/// TEST-ONLY misbehaviour of a dealer, to exercise the checks and the blame. The faulty
/// dealer still signs everything it sends, as a real cheater would.
#[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealerFault {
    /// Sends the receiver at this run index `f_i(I'_j) + 1`.
    WrongSubShare {
        /// Run index of the victim.
        receiver: u16,
    },
    /// Deals a consistent polynomial with `count` coefficients instead of t'.
    CommitmentCount {
        /// Number of coefficients (and commitments).
        count: u16,
    },
    /// Deals a consistent polynomial with constant term `λ_i·x_i + 1`.
    WrongConstantTerm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    NotStarted,
    Round1,
    Round2,
}

/// This party's view of one dealer's commitments after round 1.
enum DealerView {
    /// Authentic and valid.
    Valid {
        points: Vec<Point<Curve>>,
        digest: [u8; 32],
        signature: [u8; 64],
    },
    /// Authentic (signed for this run) but breaking a rule: provable.
    Invalid {
        digest: [u8; 32],
        signature: [u8; 64],
    },
    /// Not authentic (bad signature or another run): only this party saw it.
    Unverified,
}

impl DealerView {
    fn signed(&self) -> Option<([u8; 32], [u8; 64])> {
        match self {
            DealerView::Valid {
                digest, signature, ..
            }
            | DealerView::Invalid { digest, signature } => Some((*digest, *signature)),
            DealerView::Unverified => None,
        }
    }
}

/// One participant of a reshare run, driven without I/O:
///
/// 1. [`ReshareParty::new`] checks the arguments (nothing is sent on error);
/// 2. [`ReshareParty::start`] returns the round-1 messages (none for a receiver-only party);
/// 3. every received message goes to [`ReshareParty::handle`], which returns the messages
///    to send (the echo, once round 1 is complete);
/// 4. when [`ReshareParty::is_finished`], [`ReshareParty::finish`] returns the new share
///    or the faults.
///
/// The caller delivers messages authenticated (sender = run index of the authenticated
/// peer), p2p messages confidential, and says whether each arrived as broadcast or p2p.
/// [`super::run`] does all this over a round-based delivery.
pub struct ReshareParty {
    eid: [u8; 32],
    setup: ReshareSetup,
    me: u16,
    old: Option<IncompleteKeyShare<Curve>>,
    stage: Stage,
    commitments: Vec<Option<CommitmentsMsg>>,
    sub_shares: Vec<Option<SubShareMsg>>,
    echoes: Vec<Option<EchoMsg>>,
    views: Vec<DealerView>,
    values: Vec<SecretScalar<Curve>>,
    faults: Vec<Fault>,
    #[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
    fault: Option<DealerFault>,
}

impl std::fmt::Debug for ReshareParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReshareParty")
            .field("me", &self.me)
            .field("stage", &self.stage)
            .field("setup", &self.setup)
            .field("faults", &self.faults.len())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl ReshareParty {
    /// Prepares run index `me` of the run `eid` described by `setup`. A dealer must pass
    /// its old share (which must belong to `setup.old_key()` with the dealer's old index);
    /// anybody else passes `None` (a share passed by a non-dealer is ignored).
    pub fn new(
        eid: &ExecutionId,
        setup: ReshareSetup,
        me: u16,
        old_share: Option<OldShare<'_>>,
    ) -> Result<Self, ReshareError> {
        let n = setup.run_parties();
        let Some(p) = setup.participant(me) else {
            return Err(ReshareError::InvalidArgument(format!(
                "run index {me} is not a participant (run has {n})"
            )));
        };
        let old = match p.dealer_index {
            None => None,
            Some(i) => {
                let share = old_share.ok_or_else(|| {
                    ReshareError::InvalidArgument("a dealer needs its old key share".into())
                })?;
                if share.kind() != setup.kind() {
                    return Err(ReshareError::InvalidArgument(format!(
                        "old share is {:?}, the run reshares {:?}",
                        share.kind(),
                        setup.kind()
                    )));
                }
                let core = share.core()?;
                if core.i != i {
                    return Err(ReshareError::InvalidArgument(format!(
                        "old share has index {}, the setup says {i}",
                        core.i
                    )));
                }
                if PublicKeyInfo::from_core(&core) != *setup.old_key() {
                    return Err(ReshareError::InvalidArgument(
                        "old share belongs to another key or sharing than the setup".into(),
                    ));
                }
                Some(core)
            }
        };
        let slots = usize::from(n);
        Ok(Self {
            eid: eid.0,
            setup,
            me,
            old,
            stage: Stage::NotStarted,
            commitments: vec![None; slots],
            sub_shares: vec![None; slots],
            echoes: vec![None; slots],
            views: Vec::new(),
            values: Vec::new(),
            faults: Vec::new(),
            #[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
            fault: None,
        })
    }

    /// TEST-ONLY: makes this dealer cheat as described.
    #[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
    pub fn with_dealer_fault(mut self, fault: DealerFault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The run's setup.
    pub fn setup(&self) -> &ReshareSetup {
        &self.setup
    }

    /// This party's run index.
    pub fn index(&self) -> u16 {
        self.me
    }

    fn is_receiver(&self) -> bool {
        self.setup
            .participant(self.me)
            .is_some_and(|p| p.receiver_index.is_some())
    }

    /// Round 1: a dealer's commitments (broadcast) and sub-shares (one p2p message per
    /// other receiver). Empty for a receiver-only party. May also return the echo if every
    /// round-1 message was already handed in.
    pub fn start(&mut self, signer: &dyn ReshareSigner) -> Result<Vec<Outgoing>, ReshareError> {
        if self.stage != Stage::NotStarted {
            return Err(ReshareError::State("start called twice"));
        }
        let me = self.setup.participant(self.me).map(|p| p.identity_key);
        if me != Some(signer.identity_public_key()) {
            return Err(ReshareError::InvalidArgument(
                "the signer's identity key is not this participant's key in the setup".into(),
            ));
        }
        let deals = self
            .setup
            .participant(self.me)
            .is_some_and(|p| p.dealer_index.is_some());
        let mut out = Vec::new();
        if deals {
            // taken out for good: a failed start cannot be retried as a non-dealer
            let old = self
                .old
                .take()
                .ok_or(ReshareError::State("start called again after a failure"))?;
            out = self.deal(&old, signer)?;
            // `old` (a copy of the secret share) is dropped and zeroized here
        }
        self.stage = Stage::Round1;
        out.extend(self.advance(signer));
        Ok(out)
    }

    fn deal(
        &mut self,
        old: &IncompleteKeyShare<Curve>,
        signer: &dyn ReshareSigner,
    ) -> Result<Vec<Outgoing>, ReshareError> {
        let lambda = *self
            .setup
            .lambda(self.me)
            .ok_or(ReshareError::State("dealer without lagrange coefficient"))?;
        let mut constant = Zeroizing::new(lambda * AsRef::<Scalar<Curve>>::as_ref(&old.x));
        #[allow(unused_mut)]
        let mut count = usize::from(self.setup.new_threshold());
        #[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
        match self.fault {
            Some(DealerFault::CommitmentCount { count: c }) => count = usize::from(c.max(1)),
            Some(DealerFault::WrongConstantTerm) => *constant += Scalar::one(),
            _ => {}
        }
        let poly = SecretPolynomial::random_with_constant(
            &mut OsRng,
            SecretScalar::new(&mut constant),
            count,
        );
        let commitments = poly
            .commitments()
            .iter()
            .map(|p| math::point_bytes(p).map(Bytes))
            .collect::<Option<Vec<_>>>()
            .ok_or(ReshareError::InvalidOutput(
                "a commitment is the point at infinity".into(),
            ))?;
        let setup_digest = self.setup.digest();
        let digest = commitments_digest(&commitments);
        let signature = signer.sign_reshare_statement(&commitments_statement(
            &self.eid,
            &setup_digest,
            self.me,
            &digest,
        ));
        let cmsg = CommitmentsMsg {
            eid: Bytes(self.eid),
            setup: Bytes(setup_digest),
            commitments,
            signature: Bytes(signature),
        };
        let mut out = vec![Outgoing {
            recipient: None,
            msg: ReshareMsg::Commitments(cmsg.clone()),
        }];
        self.commitments[usize::from(self.me)] = Some(cmsg);
        for j in 0..self.setup.new_parties() {
            let Some(r) = self.setup.receiver_run_index(j) else {
                continue;
            };
            #[allow(unused_mut)]
            let mut value = Zeroizing::new(*poly.eval(&math::eval_point(j)).as_ref());
            #[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
            if self.fault == Some(DealerFault::WrongSubShare { receiver: r }) {
                *value += Scalar::one();
            }
            let mut bytes = SecretBytes([0; 32]);
            bytes.0.copy_from_slice(value.to_be_bytes().as_ref());
            let signature = signer.sign_reshare_statement(&sub_share_statement(
                &self.eid,
                &setup_digest,
                self.me,
                r,
                &digest,
                &bytes,
            ));
            let smsg = SubShareMsg {
                eid: Bytes(self.eid),
                setup: Bytes(setup_digest),
                commitments_digest: Bytes(digest),
                value: bytes,
                signature: Bytes(signature),
            };
            if r == self.me {
                self.sub_shares[usize::from(r)] = Some(smsg);
            } else {
                out.push(Outgoing {
                    recipient: Some(r),
                    msg: ReshareMsg::SubShare(smsg),
                });
            }
        }
        Ok(out)
    }

    /// Handles a message from run index `sender` that arrived as `msg_type`. Protocol
    /// faults are recorded (the run then aborts in [`Self::finish`], after the echo round,
    /// so every participant learns about them); only a sender index that is not a peer
    /// or a message breaking the size bounds is an immediate error.
    pub fn handle(
        &mut self,
        signer: &dyn ReshareSigner,
        sender: u16,
        msg_type: MsgType,
        msg: ReshareMsg,
    ) -> Result<Vec<Outgoing>, ReshareError> {
        let n = self.setup.run_parties();
        if sender >= n || sender == self.me {
            return Err(ReshareError::UnknownSender {
                sender,
                n,
                local: self.me,
            });
        }
        msg.check_bounds()
            .map_err(|reason| ReshareError::MalformedMessage {
                party: sender,
                reason,
            })?;
        let name = msg.name();
        if msg.is_broadcast() != (msg_type == MsgType::Broadcast) {
            push_fault(
                &mut self.faults,
                sender,
                FaultKind::WrongTransport { message: name },
                None,
            );
        }
        let s = usize::from(sender);
        let is_dealer = self.setup.dealer_position(sender).is_some();
        let receiver = self.is_receiver();
        let duplicate = FaultKind::DuplicateMessage { message: name };
        let unexpected = FaultKind::UnexpectedMessage { message: name };
        match msg {
            ReshareMsg::Commitments(c) => {
                if !is_dealer {
                    push_fault(&mut self.faults, sender, unexpected, None);
                } else if self.commitments[s].is_some() {
                    push_fault(&mut self.faults, sender, duplicate, None);
                } else {
                    self.commitments[s] = Some(c);
                }
            }
            ReshareMsg::SubShare(m) => {
                if !is_dealer || !receiver {
                    push_fault(&mut self.faults, sender, unexpected, None);
                } else if self.sub_shares[s].is_some() {
                    push_fault(&mut self.faults, sender, duplicate, None);
                } else {
                    self.sub_shares[s] = Some(m);
                }
            }
            ReshareMsg::Echo(e) => {
                if self.echoes[s].is_some() {
                    push_fault(&mut self.faults, sender, duplicate, None);
                } else {
                    self.echoes[s] = Some(e);
                }
            }
        }
        Ok(self.advance(signer))
    }

    fn round1_missing(&self) -> Vec<u16> {
        let receiver = self.is_receiver();
        self.setup
            .dealers()
            .iter()
            .copied()
            .filter(|&d| d != self.me)
            .filter(|&d| {
                let d = usize::from(d);
                self.commitments[d].is_none() || (receiver && self.sub_shares[d].is_none())
            })
            .collect()
    }

    fn round2_missing(&self) -> Vec<u16> {
        (0..self.setup.run_parties())
            .filter(|&r| r != self.me && self.echoes[usize::from(r)].is_none())
            .collect()
    }

    /// Parties whose messages for the current round are still missing (for timeouts: the
    /// node records them as unresponsive).
    pub fn waiting_for(&self) -> Vec<u16> {
        match self.stage {
            Stage::NotStarted => Vec::new(),
            Stage::Round1 => self.round1_missing(),
            Stage::Round2 => self.round2_missing(),
        }
    }

    /// Whether every message of both rounds is in: [`Self::finish`] may be called.
    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Round2 && self.round2_missing().is_empty()
    }

    fn advance(&mut self, signer: &dyn ReshareSigner) -> Vec<Outgoing> {
        if self.stage != Stage::Round1 || !self.round1_missing().is_empty() {
            return Vec::new();
        }
        let echo = self.check_round1(signer);
        self.echoes[usize::from(self.me)] = Some(echo.clone());
        self.stage = Stage::Round2;
        vec![Outgoing {
            recipient: None,
            msg: ReshareMsg::Echo(echo),
        }]
    }

    /// Every round-1 check; returns this party's signed echo.
    fn check_round1(&mut self, signer: &dyn ReshareSigner) -> EchoMsg {
        let dealers = self.setup.dealers().to_vec();
        let receiver = self.is_receiver();
        let mut complaints = Vec::new();
        let mut views = Vec::with_capacity(dealers.len());
        for &d in &dealers {
            let Some(c) = self.commitments[usize::from(d)].clone() else {
                // round 1 is complete: every dealer's slot is filled
                views.push(DealerView::Unverified);
                continue;
            };
            let ctx = Ctx {
                eid: &self.eid,
                setup: &self.setup,
            };
            let view = match ctx.commitments_authentic(d, &c) {
                Err(kind) => {
                    push_fault(&mut self.faults, d, kind, None);
                    complaints.push(Complaint::Unverifiable { dealer: d });
                    DealerView::Unverified
                }
                Ok(()) => match ctx.commitments_valid(d, &c) {
                    Err(kind) => {
                        push_fault(
                            &mut self.faults,
                            d,
                            kind,
                            Some(Evidence::InvalidCommitments {
                                dealer: d,
                                commitments: c.clone(),
                            }),
                        );
                        complaints.push(Complaint::InvalidCommitments { dealer: d });
                        DealerView::Invalid {
                            digest: c.digest(),
                            signature: c.signature.0,
                        }
                    }
                    Ok(points) => DealerView::Valid {
                        points,
                        digest: c.digest(),
                        signature: c.signature.0,
                    },
                },
            };
            if let (
                true,
                DealerView::Valid {
                    points,
                    digest,
                    signature,
                },
            ) = (receiver, &view)
            {
                if let Some(complaint) = self.check_sub_share(d, &c, points, digest, signature) {
                    complaints.push(complaint);
                }
            }
            views.push(view);
        }
        self.views = views;
        let seen: Vec<Seen> = dealers
            .iter()
            .zip(&self.views)
            .map(|(&dealer, v)| Seen {
                dealer,
                signed: v.signed().map(|(d, s)| (Bytes(d), Bytes(s))),
            })
            .collect();
        let setup_digest = self.setup.digest();
        let signature = signer.sign_reshare_statement(&echo_statement(
            &self.eid,
            &setup_digest,
            self.me,
            &seen,
            &complaints,
        ));
        EchoMsg {
            eid: Bytes(self.eid),
            setup: Bytes(setup_digest),
            seen,
            complaints,
            signature: Bytes(signature),
        }
    }

    /// Checks the sub-share of dealer `d` (whose commitments are valid); keeps its value or
    /// returns a complaint.
    fn check_sub_share(
        &mut self,
        d: u16,
        c: &CommitmentsMsg,
        points: &[Point<Curve>],
        digest: &[u8; 32],
        signature: &[u8; 64],
    ) -> Option<Complaint> {
        let me = self.me;
        let s = self.sub_shares[usize::from(d)].clone()?;
        let ctx = Ctx {
            eid: &self.eid,
            setup: &self.setup,
        };
        if let Err(kind) = ctx.sub_share_authentic(d, me, &s) {
            push_fault(&mut self.faults, d, kind, None);
            return Some(Complaint::Unverifiable { dealer: d });
        }
        if s.commitments_digest.0 != *digest {
            push_fault(
                &mut self.faults,
                d,
                FaultKind::Equivocation,
                Some(Evidence::Equivocation {
                    dealer: d,
                    first: SignedClaim::Commitments {
                        digest: Bytes(*digest),
                        signature: Bytes(*signature),
                    },
                    second: SignedClaim::SubShare {
                        receiver: me,
                        sub_share: s.clone(),
                    },
                }),
            );
            return Some(Complaint::InvalidSubShare {
                dealer: d,
                sub_share: s,
            });
        }
        match ctx.sub_share_value(me, points, &s) {
            Some(v) => {
                self.values.push(v);
                None
            }
            None => {
                push_fault(
                    &mut self.faults,
                    d,
                    FaultKind::InvalidSubShare { receiver: me },
                    Some(Evidence::InvalidSubShare {
                        dealer: d,
                        receiver: me,
                        commitments: c.clone(),
                        sub_share: s.clone(),
                    }),
                );
                Some(Complaint::InvalidSubShare {
                    dealer: d,
                    sub_share: s,
                })
            }
        }
    }

    /// Checks every echo against this party's own view, judges every complaint, and
    /// returns the new share (receivers) and the new key's public information, or the
    /// faults. Consumes the party: a run is never resumed.
    pub fn finish(mut self) -> Result<ReshareOutput, ReshareError> {
        if !self.is_finished() {
            return Err(ReshareError::State(
                "finish called before every echo arrived",
            ));
        }
        for p in 0..self.setup.run_parties() {
            if p == self.me {
                continue;
            }
            if let Some(e) = self.echoes[usize::from(p)].clone() {
                self.check_echo(p, &e);
            }
        }
        if !self.faults.is_empty() {
            return Err(ReshareError::Aborted {
                faults: std::mem::take(&mut self.faults),
            });
        }
        let points: Vec<&[Point<Curve>]> = self
            .views
            .iter()
            .map(|v| match v {
                DealerView::Valid { points, .. } => Ok(points.as_slice()),
                _ => Err(ReshareError::State(
                    "a dealer view is invalid without a fault",
                )),
            })
            .collect::<Result<_, _>>()?;
        let receiver = self
            .setup
            .participant(self.me)
            .and_then(|p| p.receiver_index);
        let values = receiver.map(|_| std::mem::take(&mut self.values));
        build_output(&self.eid, &self.setup, &points, receiver, values)
    }

    /// Compares the echo of `p` with this party's view and judges its complaints.
    fn check_echo(&mut self, p: u16, e: &EchoMsg) {
        let ctx = Ctx {
            eid: &self.eid,
            setup: &self.setup,
        };
        if let Err(kind) = ctx.echo_authentic(p, e) {
            push_fault(&mut self.faults, p, kind, None);
            return;
        }
        if !ctx.echo_well_formed(e) {
            push_fault(&mut self.faults, p, FaultKind::MalformedEcho, None);
            return;
        }
        let dealers = self.setup.dealers().to_vec();
        for (k, &d) in dealers.iter().enumerate() {
            let mine = self.views.get(k).and_then(DealerView::signed);
            let theirs = e.seen.get(k).and_then(|s| s.signed.as_ref());
            let complained = e.complaints.iter().any(|c| c.dealer() == d);
            match (mine, theirs) {
                (_, Some((td, ts))) if !ctx.commitments_signed(d, &td.0, &ts.0) => {
                    push_fault(
                        &mut self.faults,
                        p,
                        FaultKind::FalseEcho { dealer: d },
                        Some(Evidence::FalseEcho {
                            echoer: p,
                            dealer: d,
                            echo: e.clone(),
                        }),
                    );
                }
                (Some((md, ms)), Some((td, ts))) if md != td.0 => {
                    push_fault(
                        &mut self.faults,
                        d,
                        FaultKind::Equivocation,
                        Some(Evidence::Equivocation {
                            dealer: d,
                            first: SignedClaim::Commitments {
                                digest: Bytes(md),
                                signature: Bytes(ms),
                            },
                            second: SignedClaim::Commitments {
                                digest: *td,
                                signature: *ts,
                            },
                        }),
                    );
                }
                (Some(_), None) if !complained => {
                    // saw no valid commitments but did not say why
                    push_fault(&mut self.faults, p, FaultKind::MalformedEcho, None);
                }
                _ => {}
            }
        }
        for complaint in &e.complaints {
            self.judge(p, e, complaint);
        }
    }

    /// Judges one complaint of `p` (carried in its authentic echo `e`).
    fn judge(&mut self, p: u16, e: &EchoMsg, complaint: &Complaint) {
        let d = complaint.dealer();
        let Some(k) = self.setup.dealer_position(d) else {
            return;
        };
        let theirs = e
            .seen
            .get(k)
            .and_then(|s| s.signed.as_ref())
            .map(|(d, _)| d.0);
        let false_complaint = |c: &CommitmentsMsg| {
            (
                p,
                FaultKind::FalseComplaint { dealer: d },
                Some(Evidence::FalseComplaint {
                    accuser: p,
                    dealer: d,
                    echo: e.clone(),
                    commitments: c.clone(),
                }),
            )
        };
        let (culprit, kind, evidence) = match (complaint, self.views.get(k)) {
            (Complaint::InvalidCommitments { .. }, Some(DealerView::Valid { digest, .. }))
                if theirs == Some(*digest) =>
            {
                let Some(c) = self.commitments[usize::from(d)].clone() else {
                    return;
                };
                false_complaint(&c)
            }
            (
                Complaint::InvalidSubShare { sub_share, .. },
                Some(DealerView::Valid {
                    points,
                    digest,
                    signature,
                }),
            ) => {
                let Some(c) = self.commitments[usize::from(d)].clone() else {
                    return;
                };
                let ctx = Ctx {
                    eid: &self.eid,
                    setup: &self.setup,
                };
                if self.setup.new_eval_point(p).is_none()
                    || ctx.sub_share_authentic(d, p, sub_share).is_err()
                {
                    false_complaint(&c)
                } else if sub_share.commitments_digest.0 != *digest {
                    (
                        d,
                        FaultKind::Equivocation,
                        Some(Evidence::Equivocation {
                            dealer: d,
                            first: SignedClaim::Commitments {
                                digest: Bytes(*digest),
                                signature: Bytes(*signature),
                            },
                            second: SignedClaim::SubShare {
                                receiver: p,
                                sub_share: sub_share.clone(),
                            },
                        }),
                    )
                } else if ctx.sub_share_value(p, points, sub_share).is_none() {
                    (
                        d,
                        FaultKind::InvalidSubShare { receiver: p },
                        Some(Evidence::InvalidSubShare {
                            dealer: d,
                            receiver: p,
                            commitments: c,
                            sub_share: sub_share.clone(),
                        }),
                    )
                } else {
                    false_complaint(&c)
                }
            }
            (
                Complaint::Unverifiable { .. },
                Some(DealerView::Valid { .. } | DealerView::Invalid { .. }),
            ) => (d, FaultKind::Disputed { accuser: p }, None),
            // the dealer is already at fault in this party's own view, or the echo's digest
            // differs (an equivocation found above)
            _ => return,
        };
        push_fault(&mut self.faults, culprit, kind, evidence);
    }
}

/// Records a fault once (same culprit and kind are not repeated).
fn push_fault(faults: &mut Vec<Fault>, culprit: u16, kind: FaultKind, evidence: Option<Evidence>) {
    if !faults
        .iter()
        .any(|f| f.culprit == culprit && f.kind == kind)
    {
        tracing::warn!(culprit, fault = %kind, "reshare fault");
        faults.push(Fault {
            culprit,
            kind,
            evidence,
        });
    }
}
