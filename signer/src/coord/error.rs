//! Errors of the etcd coordination layer.

use std::time::Duration;

/// An error from the coordination layer (etcd).
///
/// Messages are lower-case and name the key, lock, election or party at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// The coordination configuration is unusable.
    #[error("invalid coordination config: {reason}")]
    Config {
        /// What is wrong with it.
        reason: String,
    },

    /// A name or key given by the caller is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name it is (node id, lock name, key...).
        what: &'static str,
        /// The rejected value (names are not secret).
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An argument other than a name is not acceptable.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Why it was rejected.
        reason: String,
    },

    /// etcd answered with an error or the connection failed.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        /// The operation that failed.
        op: &'static str,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },

    /// etcd did not answer in time.
    #[error("etcd {op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// How long we waited.
        after: Duration,
    },

    /// A value read from (or to be written to) etcd is over the size limit.
    #[error("value at {key} is {size} bytes, over the {limit}-byte limit")]
    ValueTooLarge {
        /// The etcd key.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// A listing returned more entries than this layer accepts.
    #[error("listing {prefix} returned more than {limit} entries")]
    TooManyEntries {
        /// The etcd prefix listed.
        prefix: String,
        /// The entry limit.
        limit: usize,
    },

    /// A value read from etcd could not be decoded.
    #[error("malformed value at {key}: {reason}")]
    Malformed {
        /// The etcd key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A record's node id does not match the coordinator's own node id.
    #[error("node record is for {record} but this coordinator is node {ours}")]
    NodeIdMismatch {
        /// The node id inside the record.
        record: String,
        /// This coordinator's node id.
        ours: String,
    },

    /// The lock could not be taken before the deadline.
    #[error("lock {name} not acquired within {after:?}")]
    LockTimeout {
        /// The lock name.
        name: String,
        /// How long we waited.
        after: Duration,
    },

    /// The lease behind a lock, leadership or barrier arrival expired.
    #[error("lease {lease_id:x} for {what} was lost")]
    LeaseLost {
        /// What the lease was protecting.
        what: String,
        /// The etcd lease id.
        lease_id: i64,
    },

    /// A fenced write was refused: the lock or leadership behind the token is gone.
    #[error("fencing token {token} on {fence_key} is stale: the lock or leadership was lost")]
    StaleFence {
        /// The etcd key of the lock or leader that the token refers to.
        fence_key: String,
        /// The stale fencing token (the create revision of that key).
        token: i64,
    },

    /// Not every participant reached the barrier before the deadline.
    #[error("barrier timed out waiting for: {}", missing.join(", "))]
    BarrierTimeout {
        /// The participants that did not arrive (sorted).
        missing: Vec<String>,
    },

    /// The caller is not one of the barrier's participants.
    #[error("node {node_id} is not a participant of barrier {barrier}")]
    NotAParticipant {
        /// The barrier name.
        barrier: String,
        /// This coordinator's node id.
        node_id: String,
    },

    /// A watch can no longer deliver every event (history was compacted or the
    /// server cancelled it).
    #[error("watch on {prefix} cancelled by etcd: {reason}")]
    WatchCancelled {
        /// The etcd prefix watched.
        prefix: String,
        /// The reason given by etcd.
        reason: String,
    },
}

impl CoordError {
    pub(crate) fn etcd(op: &'static str, source: etcd_client::Error) -> Self {
        CoordError::Etcd { op, source }
    }

    /// True if this error says a lease does not exist (expired or revoked).
    pub(crate) fn is_lease_not_found(&self) -> bool {
        match self {
            CoordError::Etcd { source, .. } => is_lease_not_found(source),
            _ => false,
        }
    }
}

/// True if an etcd client error says the lease does not exist.
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}
