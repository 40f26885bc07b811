//! Crash points for the kill tests, and the switch that lets a process obey fault
//! injection at all (feature `fault-injection` only; see [`crate::fault`] for the
//! faults themselves).
//!
//! A leaf module: the store calls [`before_commit`] inside its batch writes, and
//! [`crate::fault`] (which uses the services above the store) keeps its switch here,
//! so neither makes the module graph circular.
//!
//! [`KILL_BEFORE_COMMIT_ENV`] (`<point>`, one of [`INTAKE_GROUP`],
//! [`PROPOSAL_BATCH`], [`OWN_VOTES`]) makes this node SIGKILL itself inside the
//! first database transaction of that batch write with at least two entries, after
//! every statement ran and before the commit: the kill matrix's "crash in the middle
//! of a batch commit" (docs/BATCHING.md). The node logs the entries' ids first.

#[cfg(feature = "fault-injection")]
static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets this process obey `SIGNER_FAULT_*` variables (see [`crate::fault::arm`]).
#[cfg(feature = "fault-injection")]
pub(crate) fn arm() {
    ARMED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether this process obeys fault variables.
pub fn is_armed() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        ARMED.load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// The value of fault variable `name`, only in an armed process.
#[cfg(feature = "fault-injection")]
pub(crate) fn fault_var(name: &str) -> Option<String> {
    if is_armed() {
        std::env::var(name).ok()
    } else {
        None
    }
}

/// Environment variable `<point>`: this node SIGKILLs itself right before it
/// commits the first batch write at that point with two entries or more.
pub const KILL_BEFORE_COMMIT_ENV: &str = "SIGNER_FAULT_KILL_BEFORE_COMMIT";
/// The leader's intake group: several submissions' rows, reservations and audit
/// records.
pub const INTAKE_GROUP: &str = "intake_group";
/// A follower's record of a proposal batch: rows, rounds and reservations.
pub const PROPOSAL_BATCH: &str = "proposal_batch";
/// A follower's own votes on a batch: claims, outflows, votes and audit records.
pub const OWN_VOTES: &str = "own_votes";

/// Called by a batch write at `point` after its statements and before its commit,
/// with the entries' ids (made only when the fault is armed): with
/// [`KILL_BEFORE_COMMIT_ENV`] naming `point` and two ids or more, logs the ids and
/// SIGKILLs this process (feature `fault-injection`, armed, only; a no-op
/// otherwise).
pub fn before_commit(point: &'static str, ids: impl FnOnce() -> Vec<uuid::Uuid>) {
    #[cfg(feature = "fault-injection")]
    if fault_var(KILL_BEFORE_COMMIT_ENV).is_some_and(|p| p == point) {
        let ids: Vec<String> = ids().iter().map(ToString::to_string).collect();
        if ids.len() < 2 {
            return;
        }
        tracing::error!(
            point,
            ids = %ids.join(","),
            "FAULT INJECTION: killing this node before a batch commit"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (point, ids);
}
