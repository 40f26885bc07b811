//! Key resharing and refresh: verifiable secret redistribution (Desmedt–Jajodia,
//! Wong–Wang–Wing) with Feldman commitments, for both key types (CGGMP24 ECDSA and FROST),
//! keeping the public key AND the chain code, so every descriptor, xpub and address stays
//! the same. See `docs/RESHARING.md` for the protocol, the checks and the node's duties.
//!
//! * Old set: key `x = F(0)` shared with threshold t at evaluation points `I_i`. A dealer
//!   set `S` of exactly t old holders deals; dealer `i` has Lagrange coefficient `λ_i`
//!   (over `S`, at 0) and deals `λ_i·x_i` with a fresh random polynomial `f_i` of degree
//!   t'−1.
//! * New set: n' receivers, threshold t', evaluation points `I'_j = j + 1`; receiver `j`
//!   gets `x'_j = Σ_{i∈S} f_i(I'_j)`, a share of `Σ λ_i·x_i = x`.
//! * Round 1: each dealer broadcasts signed commitments `C_ik = a_ik·G` and sends each
//!   receiver its signed sub-share p2p. Round 2: everyone broadcasts a signed echo (the
//!   commitments digest of every dealer as received, with the dealer's signature) and
//!   its complaints. A participant ends with the new share only if nobody misbehaved;
//!   otherwise the run aborts naming the culprits, with evidence.
//!
//! Roles ([`Participant`]): an old holder in `S` that stays deals and receives; a removed
//! node only deals; a new node (or an old holder outside `S`) only receives. A refresh
//! is the same set and threshold.
//!
//! The protocol never changes its inputs: old shares are borrowed ([`OldShare`]) and stay
//! valid whatever happens; the node switches to the new shares only after every new
//! participant confirmed ([`ReshareOutput::confirmation`]).
//!
//! Shapes: a sans-IO state machine ([`ReshareParty`]) and an async driver over the
//! crate's round-based delivery ([`run`]). Message type on the wire: [`ReshareMsg`]
//! (bound it with [`delivery_config`]).

mod driver;
mod error;
mod evidence;
mod identity;
mod math;
mod output;
mod setup;
mod state;
mod wire;

pub use driver::run;
pub use error::{Fault, FaultKind, ReshareError};
pub use evidence::{Evidence, SignedClaim};
pub use identity::ReshareSigner;
pub use output::{NewShare, ReshareOutput};
pub use setup::{KeyKind, OldShare, Participant, PublicKeyInfo, ReshareSetup};
#[cfg(any(test, feature = "test-fixtures", feature = "dealer-faults"))]
pub use state::DealerFault;
pub use state::{Outgoing, ReshareParty};
pub use wire::{Bytes, CommitmentsMsg, Complaint, EchoMsg, ReshareMsg, Seen, SubShareMsg};

use crate::delivery::DeliveryConfig;

/// Most participants of one run, and most parties of a new key.
pub const MAX_PARTICIPANTS: u16 = 128;

/// Upper bound for one encoded reshare message (the largest, an echo with a complaint
/// about every dealer, stays far below).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// Delivery parameters for a reshare run: local run index, run size and
/// [`MAX_MESSAGE_SIZE`].
pub fn delivery_config(local_index: u16, run_parties: u16) -> DeliveryConfig {
    DeliveryConfig {
        local_index,
        parties: run_parties,
        max_message_size: MAX_MESSAGE_SIZE,
    }
}
