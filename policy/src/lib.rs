//! Policy engine: pure, deterministic transaction approval rules.
//!
//! Every signer node evaluates its own policy before it votes (see
//! `shared/DESIGN.md` §2 rule 3 and §5). Evaluation takes everything it needs as
//! arguments — the policy, a normalized [`TxView`] and a [`Context`] carrying the
//! current time, recent spending and human approvals — and does no I/O, reads no
//! clock and uses no randomness, so all honest nodes reach the same [`Decision`].
//!
//! ```
//! use policy::{Policy, Decision};
//!
//! let text = r#"
//! version = 1
//! [[scope]]
//! key_id = "hot"
//! network = "regtest"
//! [scope.limits]
//! max_per_tx_sats = 1_000_000
//! "#;
//! let policy = Policy::from_toml_str(text, "hot.toml").expect("valid policy");
//! assert_eq!(policy.hash().to_string().len(), 64);
//! ```
//!
//! The file format, every rule, the hash definition and the decision semantics are
//! documented in `docs/POLICY.md`.
#![forbid(unsafe_code)]

mod canon;
mod decision;
pub mod descriptor;
mod error;
mod eval;
pub mod fuzzing;
mod policy;
pub mod report;
mod types;
mod view;

pub use decision::{
    Approval, Decision, DecisionKind, IgnoredApproval, IgnoredReason, MissingApproval, Violation,
    ViolationCode,
};
pub use error::{DecodeError, PolicyError};
pub use eval::{MAX_MONEY_SATS, MAX_SCRIPT_BYTES, MAX_TX_VSIZE_VB};
pub use policy::{
    Policy, BPS_DENOMINATOR, MAX_ID_LEN, MAX_POLICY_BYTES, MAX_REQUIRED_APPROVALS, POLICY_VERSION,
};
pub use types::{DigestParseError, Network, PolicyHash, ScriptType, ViewDigest};
pub use view::{
    ApprovalRecord, Context, EvalRequest, TxInput, TxOutput, TxView, WindowSpent,
    MAX_VIEW_JSON_BYTES,
};
