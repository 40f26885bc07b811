//! Errors of the resharing protocol, with culprits and evidence.

use std::fmt;

use super::evidence::Evidence;
use crate::error::ProtocolError;

/// Error of a reshare run. Messages are lower-case and never contain secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReshareError {
    /// Caller supplied inconsistent parameters (nothing was sent).
    #[error("reshare: invalid argument: {0}")]
    InvalidArgument(String),
    /// The old key share could not be read.
    #[error("reshare: old key share: {0}")]
    Share(#[source] ProtocolError),
    /// The transport handed over a message whose sender index is not a peer of this run
    /// (a bug in the node's identity-to-index mapping, not a peer's fault).
    #[error("reshare: message from unknown sender index {sender} (run has {n} parties, local index {local})")]
    UnknownSender {
        /// Claimed sender index.
        sender: u16,
        /// Parties in the run.
        n: u16,
        /// Local index.
        local: u16,
    },
    /// A peer sent bytes that do not decode (or exceed the size bound or a list bound).
    #[error("reshare: party {party} sent a malformed message: {reason}")]
    MalformedMessage {
        /// Culprit (run index).
        party: u16,
        /// Why.
        reason: String,
    },
    /// The transport closed (or the node gave up) before the run completed.
    #[error("reshare: transport closed while waiting for part{} {}", if waiting_for.len() == 1 { "y" } else { "ies" }, fmt_list(waiting_for))]
    TransportClosed {
        /// Parties whose messages were still missing (run indexes).
        waiting_for: Vec<u16>,
    },
    /// Another transport failure without a culprit.
    #[error("reshare: transport failed: {0}")]
    Transport(String),
    /// The run was aborted because of misbehaviour. Nothing was produced; old shares stay
    /// valid. Every fault names its culprit (run index); provable faults carry evidence.
    #[error("reshare: aborted: {}", fmt_faults(faults))]
    Aborted {
        /// What went wrong, by whom.
        faults: Vec<Fault>,
    },
    /// The new share failed the library's validation although every check passed (a bug,
    /// or a collusion the checks cannot see): nothing is returned.
    #[error("reshare: the new key share is invalid: {0}")]
    InvalidOutput(String),
    /// A method of [`super::ReshareParty`] was called out of order.
    #[error("reshare: {0}")]
    State(&'static str),
}

fn fmt_list(v: &[u16]) -> String {
    v.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_faults(f: &[Fault]) -> String {
    f.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ReshareError {
    /// Parties (run indexes) this error blames: the culprits of every fault that is not a
    /// mere dispute, and the sender of a malformed message. Sorted, without duplicates.
    pub fn culprits(&self) -> Vec<u16> {
        let mut out: Vec<u16> = match self {
            ReshareError::MalformedMessage { party, .. } => vec![*party],
            ReshareError::Aborted { faults } => faults
                .iter()
                .filter(|f| !matches!(f.kind, FaultKind::Disputed { .. }))
                .map(|f| f.culprit)
                .collect(),
            _ => Vec::new(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Parties involved in unprovable disputes (accuser and accused): one of each pair
    /// lied, nobody can tell which. Sorted, without duplicates.
    pub fn suspects(&self) -> Vec<u16> {
        let mut out = Vec::new();
        if let ReshareError::Aborted { faults } = self {
            for f in faults {
                if let FaultKind::Disputed { accuser } = f.kind {
                    out.push(f.culprit);
                    out.push(accuser);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The faults of an aborted run (empty otherwise).
    pub fn faults(&self) -> &[Fault] {
        match self {
            ReshareError::Aborted { faults } => faults,
            _ => &[],
        }
    }
}

/// One fault found in a run.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The party at fault (run index); for [`FaultKind::Disputed`] the accused dealer.
    pub culprit: u16,
    /// What it did.
    pub kind: FaultKind,
    /// Signed statements proving it to anyone with the setup and execution id
    /// ([`Evidence::verify`]); `None` for faults only the reporting party could see
    /// (bad signatures, missing roles, transport-level faults).
    pub evidence: Option<Evidence>,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "party {}: {}", self.culprit, self.kind)?;
        if self.evidence.is_some() {
            f.write_str(" (with evidence)")?;
        }
        Ok(())
    }
}

/// Kinds of misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// A dealer committed to a polynomial with the wrong number of coefficients (the
    /// threshold would silently change; cf. CVE-2025-58359).
    CommitmentCount {
        /// t' (the agreed new threshold).
        expected: u16,
        /// Commitments sent.
        got: usize,
    },
    /// A commitment is not a canonical, non-zero compressed point.
    InvalidCommitmentEncoding,
    /// `C_i0 ≠ λ_i·X_i`: the dealer shares another secret than its old share.
    WrongConstantTerm,
    /// The dealer's sub-share to `receiver` does not match its commitments.
    InvalidSubShare {
        /// Run index of the receiver.
        receiver: u16,
    },
    /// The dealer signed two different commitment sets in the same run.
    Equivocation,
    /// The party complained about `dealer` although the dealer's messages were valid.
    FalseComplaint {
        /// Run index of the wrongly accused dealer.
        dealer: u16,
    },
    /// The party's echo carries a commitments digest that `dealer` did not sign.
    FalseEcho {
        /// Run index of the dealer the echo misquotes.
        dealer: u16,
    },
    /// A message failed its identity signature.
    BadSignature {
        /// Message name.
        message: &'static str,
    },
    /// A message belongs to another run (execution id or setup digest differ).
    WrongRun {
        /// Message name.
        message: &'static str,
    },
    /// A message its sender's role does not allow (a non-dealer dealing, a sub-share to a
    /// non-receiver).
    UnexpectedMessage {
        /// Message name.
        message: &'static str,
    },
    /// A second message of the same kind from the same sender.
    DuplicateMessage {
        /// Message name.
        message: &'static str,
    },
    /// A broadcast message sent p2p or the reverse.
    WrongTransport {
        /// Message name.
        message: &'static str,
    },
    /// An echo that does not list the dealers as the setup says.
    MalformedEcho,
    /// `accuser` says this dealer sent it an unverifiable message: one of them lies.
    Disputed {
        /// Run index of the accuser.
        accuser: u16,
    },
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::CommitmentCount { expected, got } => write!(
                f,
                "sent {got} commitments, the new threshold requires exactly {expected}"
            ),
            FaultKind::InvalidCommitmentEncoding => {
                f.write_str("sent a commitment that is not a valid non-zero point")
            }
            FaultKind::WrongConstantTerm => f.write_str(
                "constant commitment does not match its old public share times its lagrange coefficient",
            ),
            FaultKind::InvalidSubShare { receiver } => write!(
                f,
                "sub-share to party {receiver} does not match its commitments"
            ),
            FaultKind::Equivocation => {
                f.write_str("sent different commitments to different parties")
            }
            FaultKind::FalseComplaint { dealer } => {
                write!(f, "falsely complained about dealer {dealer}")
            }
            FaultKind::FalseEcho { dealer } => write!(
                f,
                "echoed commitments of dealer {dealer} that the dealer did not sign"
            ),
            FaultKind::BadSignature { message } => {
                write!(f, "{message} message has an invalid signature")
            }
            FaultKind::WrongRun { message } => {
                write!(f, "{message} message belongs to another run or setup")
            }
            FaultKind::UnexpectedMessage { message } => {
                write!(f, "sent a {message} message its role does not allow")
            }
            FaultKind::DuplicateMessage { message } => {
                write!(f, "sent a second {message} message")
            }
            FaultKind::WrongTransport { message } => {
                write!(f, "sent a {message} message over the wrong channel type")
            }
            FaultKind::MalformedEcho => f.write_str("sent an echo that does not list the dealers"),
            FaultKind::Disputed { accuser } => write!(
                f,
                "accused by party {accuser} of an unverifiable message (one of them lies)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprits_and_suspects_are_separated() {
        let e = ReshareError::Aborted {
            faults: vec![
                Fault {
                    culprit: 3,
                    kind: FaultKind::WrongConstantTerm,
                    evidence: None,
                },
                Fault {
                    culprit: 1,
                    kind: FaultKind::Disputed { accuser: 4 },
                    evidence: None,
                },
            ],
        };
        assert_eq!(e.culprits(), vec![3]);
        assert_eq!(e.suspects(), vec![1, 4]);
        let s = e.to_string();
        assert!(
            s.starts_with("reshare: aborted: party 3: constant commitment"),
            "{s}"
        );
    }
}
