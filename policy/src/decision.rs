//! Decisions, violations and the [`Approval`] token.

use std::fmt;

use bitcoin::Txid;
use serde::Serialize;

use crate::types::{Network, PolicyHash, ViewDigest};

/// The outcome of [`crate::Policy::evaluate`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Every rule passed and every approval requirement is met.
    Approve(Approval),
    /// At least one rule failed. Lists every failed rule, in a fixed order.
    Reject(Vec<Violation>),
    /// Every rule passed but human approvals are missing.
    NeedsApproval {
        /// What is still missing, one entry per (tier, role) shortfall.
        missing: Vec<MissingApproval>,
        /// Approvals received that did not count, and why.
        ignored: Vec<IgnoredApproval>,
    },
}

impl Decision {
    /// The kind of decision, without its payload.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Decision::Approve(_) => DecisionKind::Approve,
            Decision::Reject(_) => DecisionKind::Reject,
            Decision::NeedsApproval { .. } => DecisionKind::NeedsApproval,
        }
    }

    /// The violations (empty unless the decision is [`Decision::Reject`]).
    pub fn violations(&self) -> &[Violation] {
        match self {
            Decision::Reject(v) => v,
            _ => &[],
        }
    }

    /// Takes the approval out of an [`Decision::Approve`].
    pub fn into_approval(self) -> Option<Approval> {
        match self {
            Decision::Approve(a) => Some(a),
            _ => None,
        }
    }
}

/// The kind of a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// See [`Decision::Approve`].
    Approve,
    /// See [`Decision::Reject`].
    Reject,
    /// See [`Decision::NeedsApproval`].
    NeedsApproval,
}

impl DecisionKind {
    /// `approve`, `reject` or `needs_approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approve => "approve",
            DecisionKind::Reject => "reject",
            DecisionKind::NeedsApproval => "needs_approval",
        }
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proof that this crate's policy engine approved one exact transaction view under
/// one exact policy.
///
/// Only [`crate::Policy::evaluate`] creates it; it has no public constructor, is not
/// `Clone` and cannot be deserialized, so signing code can demand one (by reference or
/// by value) and check it with [`Approval::covers`].
///
/// It cannot be copied:
///
/// ```compile_fail
/// fn duplicate(a: &policy::Approval) -> policy::Approval {
///     a.clone()
/// }
/// ```
///
/// and it cannot be forged outside this crate:
///
/// ```compile_fail
/// use bitcoin::hashes::Hash;
/// let forged = policy::Approval {
///     policy_hash: policy::PolicyHash::from_bytes([0; 32]),
///     view_digest: policy::ViewDigest::from_bytes([0; 32]),
///     key_id: String::new(),
///     network: policy::Network::Bitcoin,
///     txid: bitcoin::Txid::from_byte_array([0; 32]),
/// };
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Approval {
    pub(crate) policy_hash: PolicyHash,
    pub(crate) view_digest: ViewDigest,
    pub(crate) key_id: String,
    pub(crate) network: Network,
    pub(crate) txid: Txid,
}

impl Approval {
    /// Hash of the policy that approved.
    pub fn policy_hash(&self) -> PolicyHash {
        self.policy_hash
    }

    /// Digest of the approved view ([`crate::TxView::digest`]).
    pub fn view_digest(&self) -> ViewDigest {
        self.view_digest
    }

    /// Key id of the approved view.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Network of the approved view.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Transaction id of the approved view.
    pub fn txid(&self) -> Txid {
        self.txid
    }

    /// True if this approval was issued by a policy with `policy_hash` for exactly
    /// `view`.
    pub fn covers(&self, policy_hash: PolicyHash, view: &crate::TxView) -> bool {
        self.policy_hash == policy_hash && self.view_digest == view.digest()
    }
}

/// Stable machine-readable code of a [`Violation`]. The string forms never change
/// meaning; new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ViolationCode {
    /// The policy has no scope for the view's key id and network.
    NoPolicyForKey,
    /// The view has no inputs.
    NoInputs,
    /// The view has no outputs.
    NoOutputs,
    /// An input is owned by a key other than the view's key.
    InputForeignKey,
    /// The same outpoint is spent twice.
    DuplicateInput,
    /// A sum of amounts does not fit in 64 bits.
    AmountOverflow,
    /// The fee is not input total minus output total, or outputs exceed inputs.
    FeeMismatch,
    /// The virtual size is zero or above the consensus maximum.
    InvalidVsize,
    /// An output's scriptPubKey is longer than the consensus script size limit.
    ScriptTooLarge,
    /// An output's declared script type disagrees with its scriptPubKey.
    ScriptTypeMismatch,
    /// An output's address does not parse.
    AddressInvalid,
    /// An output's address belongs to another network.
    AddressWrongNetwork,
    /// An output's address does not encode its scriptPubKey.
    AddressMismatch,
    /// An `OP_RETURN` output carries value (burns coins).
    BurnOutput,
    /// Amount sent plus fee is above `max_per_tx_sats`.
    AmountOverLimit,
    /// Amount sent in a rolling window would exceed its limit.
    VelocityOverLimit,
    /// The context lacks the spent amount for a velocity window the policy defines,
    /// or gives it twice.
    VelocityHistoryMissing,
    /// An output's destination is not on the allowlist.
    DestinationNotAllowed,
    /// An output's destination is on the denylist.
    DestinationDenied,
    /// The fee is above `max_fee_sats`.
    FeeOverLimit,
    /// The fee rate is above `max_fee_rate_sat_vb`.
    FeeRateOverLimit,
    /// The fee rate is below `min_fee_rate_sat_vb`.
    FeeRateUnderMinimum,
    /// The fee is above `max_fee_share_bps` of the amount sent.
    FeeShareOverLimit,
    /// An output's script type is not in `allowed_script_types`.
    ScriptTypeNotAllowed,
    /// More outputs than `max_outputs`.
    TooManyOutputs,
    /// An output is below the dust threshold of its script type.
    DustOutput,
    /// An output is below `min_output_sats`.
    OutputBelowMinimum,
    /// A change output does not belong to the wallet's descriptor.
    ChangeNotToWallet,
    /// The current time is outside every allowed time window.
    OutsideTimeWindow,
}

impl ViolationCode {
    /// The stable snake_case code, for example `amount_over_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationCode::NoPolicyForKey => "no_policy_for_key",
            ViolationCode::NoInputs => "no_inputs",
            ViolationCode::NoOutputs => "no_outputs",
            ViolationCode::InputForeignKey => "input_foreign_key",
            ViolationCode::DuplicateInput => "duplicate_input",
            ViolationCode::AmountOverflow => "amount_overflow",
            ViolationCode::FeeMismatch => "fee_mismatch",
            ViolationCode::InvalidVsize => "invalid_vsize",
            ViolationCode::ScriptTooLarge => "script_too_large",
            ViolationCode::ScriptTypeMismatch => "script_type_mismatch",
            ViolationCode::AddressInvalid => "address_invalid",
            ViolationCode::AddressWrongNetwork => "address_wrong_network",
            ViolationCode::AddressMismatch => "address_mismatch",
            ViolationCode::BurnOutput => "burn_output",
            ViolationCode::AmountOverLimit => "amount_over_limit",
            ViolationCode::VelocityOverLimit => "velocity_over_limit",
            ViolationCode::VelocityHistoryMissing => "velocity_history_missing",
            ViolationCode::DestinationNotAllowed => "destination_not_allowed",
            ViolationCode::DestinationDenied => "destination_denied",
            ViolationCode::FeeOverLimit => "fee_over_limit",
            ViolationCode::FeeRateOverLimit => "fee_rate_over_limit",
            ViolationCode::FeeRateUnderMinimum => "fee_rate_under_minimum",
            ViolationCode::FeeShareOverLimit => "fee_share_over_limit",
            ViolationCode::ScriptTypeNotAllowed => "script_type_not_allowed",
            ViolationCode::TooManyOutputs => "too_many_outputs",
            ViolationCode::DustOutput => "dust_output",
            ViolationCode::OutputBelowMinimum => "output_below_minimum",
            ViolationCode::ChangeNotToWallet => "change_not_to_wallet",
            ViolationCode::OutsideTimeWindow => "outside_time_window",
        }
    }
}

impl fmt::Display for ViolationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed rule: a stable code and a human message naming the culprit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    code: ViolationCode,
    message: String,
}

impl Violation {
    pub(crate) fn new(code: ViolationCode, message: String) -> Self {
        Violation { code, message }
    }

    /// The stable code.
    pub fn code(&self) -> ViolationCode {
        self.code
    }

    /// Human-readable explanation (lower case, names the output or limit at fault).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Approvals still needed to satisfy one approval tier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MissingApproval {
    /// The tier's `above_sats` (`None`: the tier applies to every amount).
    pub tier_above_sats: Option<u64>,
    /// The role that is short (`None`: any role the tier accepts).
    pub role: Option<String>,
    /// How many more distinct approvers are needed.
    pub count: u32,
}

impl fmt::Display for MissingApproval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match &self.role {
            Some(r) => format!("in role `{r}`"),
            None => "in any accepted role".to_string(),
        };
        let plural = if self.count == 1 { "" } else { "s" };
        match self.tier_above_sats {
            Some(t) => write!(
                f,
                "{} more approval{plural} {who} (tier for amounts above {t} sats)",
                self.count
            ),
            None => write!(f, "{} more approval{plural} {who}", self.count),
        }
    }
}

/// An approval that was received but did not count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct IgnoredApproval {
    /// The `above_sats` of the tier that did not count it (`None`: the tier applies
    /// to every amount).
    pub tier_above_sats: Option<u64>,
    /// Approver id.
    pub approver: String,
    /// Role given with the approval.
    pub role: String,
    /// Why it did not count.
    pub reason: IgnoredReason,
}

/// Why an approval did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IgnoredReason {
    /// The approver initiated the transaction.
    Initiator,
    /// The approver is not in a tier's `approvers` list.
    NotAnApprover,
    /// The role is not in a tier's `roles` list.
    RoleNotAccepted,
}

impl IgnoredReason {
    /// `initiator`, `not_an_approver` or `role_not_accepted`.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoredReason::Initiator => "initiator",
            IgnoredReason::NotAnApprover => "not_an_approver",
            IgnoredReason::RoleNotAccepted => "role_not_accepted",
        }
    }
}

impl fmt::Display for IgnoredApproval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            IgnoredReason::Initiator => "the initiator cannot approve their own transaction",
            IgnoredReason::NotAnApprover => "not an allowed approver",
            IgnoredReason::RoleNotAccepted => "role not accepted",
        };
        write!(f, "{} as `{}`: {why}", self.approver, self.role)
    }
}
