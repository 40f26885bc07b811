//! Cluster coordination over etcd: node registry, locks, leader election,
//! barriers, watches and fenced writes.
//!
//! etcd is for liveness, never for safety (DESIGN.md §2 rule 2): nothing secret
//! and no approval is stored here. A compromised or partitioned etcd can stall
//! the cluster, but every write that matters carries a fencing token (the etcd
//! revision at which the lock or leader key was created), and
//! [`Coord::put_fenced`] refuses writes whose token is stale.
//!
//! All keys live under [`CoordConfig::prefix`]; see [`keys`] for the layout.
//! Every value read from etcd is size-checked before it is decoded.

mod barrier;
mod config;
mod election;
mod error;
pub mod keys;
mod lease;
mod lock;
pub mod members;
mod registry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use tracing::{debug, info, warn};

pub use config::{CoordConfig, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};
pub use election::{LeaderInfo, LeaderWatch, Leadership};
pub use error::CoordError;
pub use lock::LockGuard;
pub use registry::{NodeEvent, NodeRecord, NodeWatch, Registration};
pub use watch::{KvWatch, WatchEvent, WatchEventKind};

use keys::Keys;

/// Largest value this layer reads or writes (node records, leader values,
/// fenced data): 64 KiB.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest number of entries accepted from one listing (nodes, barrier arrivals).
pub const MAX_LIST_ENTRIES: usize = 4096;

/// A fencing token: the etcd key of a held lock or leadership and the revision
/// at which that key was created.
///
/// Tokens of successive holders of one lock (or successive leaders of one
/// election) strictly increase. A write guarded by a token succeeds only while
/// that exact key still exists ([`Coord::put_fenced`]); other stores can compare
/// tokens and refuse a smaller one than they have seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    key: String,
    token: i64,
}

impl Fence {
    /// The full etcd key of the lock or leader key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The create revision of that key: the fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }
}

/// A handle on the cluster's etcd, for one node. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct Coord {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    cfg: CoordConfig,
    node_id: String,
    keys: Keys,
    /// Endpoints the client balances over now (see [`Coord::use_endpoints`]).
    in_use: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("node_id", &self.inner.node_id)
            .field("endpoints", &self.inner.cfg.endpoints)
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

impl Coord {
    /// Validates `cfg` and `node_id`, connects to etcd and checks that it answers.
    pub async fn connect(cfg: CoordConfig, node_id: String) -> Result<Coord, CoordError> {
        cfg.validate()?;
        keys::validate_name("node id", &node_id)?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), cfg.request_timeout);
        let client = match tokio::time::timeout(
            cfg.connect_timeout,
            Client::connect(&cfg.endpoints, Some(opts)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => return Err(CoordError::etcd("connect", source)),
            Err(_) => {
                return Err(CoordError::Timeout {
                    op: "connect",
                    after: cfg.connect_timeout,
                })
            }
        };
        let keys = Keys::new(&cfg.prefix);
        let coord = Coord {
            inner: Arc::new(Inner {
                client,
                in_use: tokio::sync::Mutex::new(cfg.endpoints.iter().cloned().collect()),
                cfg,
                node_id,
                keys,
            }),
        };
        coord.ping().await?;
        info!(
            node_id = %coord.inner.node_id,
            prefix = %coord.inner.cfg.prefix,
            endpoints = ?coord.inner.cfg.endpoints,
            "connected to etcd"
        );
        Ok(coord)
    }

    /// Balances requests over `healthy` only (members that answered the last probe,
    /// see [`members::MemberProbe`]): the client does not notice a dead member
    /// itself and keeps sending it requests, which fail. Members not among
    /// `healthy` are taken out, returning ones put back. An empty list changes
    /// nothing (there is nothing better to use).
    pub async fn use_endpoints(&self, healthy: &[String]) {
        if healthy.is_empty() {
            return;
        }
        let want: std::collections::BTreeSet<String> = healthy.iter().cloned().collect();
        let mut in_use = self.inner.in_use.lock().await;
        for gone in in_use.difference(&want).cloned().collect::<Vec<_>>() {
            match self.inner.client.remove_endpoint(&gone).await {
                Ok(()) => {
                    warn!(endpoint = %gone, "etcd member not answering; no longer used");
                    in_use.remove(&gone);
                }
                Err(e) => warn!(endpoint = %gone, error = %e, "cannot stop using an etcd member"),
            }
        }
        for back in want.difference(&in_use).cloned().collect::<Vec<_>>() {
            match self.inner.client.add_endpoint(&back).await {
                Ok(()) => {
                    info!(endpoint = %back, "etcd member answering again; used");
                    in_use.insert(back);
                }
                Err(e) => warn!(endpoint = %back, error = %e, "cannot use an etcd member"),
            }
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &CoordConfig {
        &self.inner.cfg
    }

    /// Checks that etcd answers (for readiness probes); returns its current revision.
    pub async fn ping(&self) -> Result<i64, CoordError> {
        let mut c = self.client();
        let resp = self
            .rpc(
                "ping",
                c.get(
                    self.inner.keys.kv_dir(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Reads fenced data at `key` (relative to `<prefix>/kv/`): its value and
    /// mod revision, or `None` if absent. Values over [`MAX_VALUE_BYTES`] are refused.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, CoordError> {
        keys::validate_key("key", key)?;
        let full = self.inner.keys.kv(key);
        let mut c = self.client();
        let resp = self.rpc("get", c.get(full.clone(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        check_size(&full, kv.value().len())?;
        Ok(Some((kv.value().to_vec(), kv.mod_revision())))
    }

    /// Writes `value` at `key` (relative to `<prefix>/kv/`) only if `fence` is
    /// still current, i.e. its lock or leader key still exists with the same
    /// create revision. Returns the revision of the write, or
    /// [`CoordError::StaleFence`] naming the stale token.
    pub async fn put_fenced(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        fence: &Fence,
    ) -> Result<i64, CoordError> {
        keys::validate_key("key", key)?;
        let value = value.into();
        let full = self.inner.keys.kv(key);
        check_size(&full, value.len())?;
        self.fenced_txn("fenced put", TxnOp::put(full, value, None), fence)
            .await
    }

    /// Deletes `key` (relative to `<prefix>/kv/`) only if `fence` is still
    /// current. Returns the revision of the delete.
    pub async fn delete_fenced(&self, key: &str, fence: &Fence) -> Result<i64, CoordError> {
        keys::validate_key("key", key)?;
        let full = self.inner.keys.kv(key);
        self.fenced_txn("fenced delete", TxnOp::delete(full, None), fence)
            .await
    }

    /// True if `fence`'s lock or leader key still exists at its create revision.
    pub async fn fence_is_current(&self, fence: &Fence) -> Result<bool, CoordError> {
        let mut c = self.client();
        let resp = self
            .rpc(
                "get fence key",
                c.get(fence.key.clone(), Some(GetOptions::new().with_keys_only())),
            )
            .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == fence.token))
    }

    async fn fenced_txn(
        &self,
        op: &'static str,
        action: TxnOp,
        fence: &Fence,
    ) -> Result<i64, CoordError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.token,
            )])
            .and_then([action]);
        let mut c = self.client();
        let resp = self.rpc(op, c.txn(txn)).await?;
        if !resp.succeeded() {
            warn!(fence_key = %fence.key, token = fence.token, op, "fenced write refused: stale token");
            return Err(CoordError::StaleFence {
                fence_key: fence.key.clone(),
                token: fence.token,
            });
        }
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// A fresh client handle (clones share the connection).
    pub(crate) fn client(&self) -> Client {
        self.inner.client.clone()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Runs one etcd request under the configured request timeout.
    pub(crate) async fn rpc<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordError> {
        let after = self.inner.cfg.request_timeout;
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(CoordError::etcd(op, source)),
            Err(_) => Err(CoordError::Timeout { op, after }),
        }
    }
}

impl Coord {
    /// [`Coord::rpc`] for a request that may safely be sent again (reads, a put of
    /// the same value, a lease grant whose unused lease expires by itself): each
    /// attempt has a third of the request timeout, and a failure of the transport
    /// (a member that just died and that the client still routes to, a connection
    /// being re-established) is retried on the next attempt until the request
    /// timeout. Any other error (etcd answered) is returned at once.
    pub(crate) async fn rpc_idempotent<T, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T, CoordError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let total = self.inner.cfg.request_timeout;
        let per_attempt = (total / 3).max(Duration::from_millis(500)).min(total);
        let deadline = tokio::time::Instant::now() + total;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let this = per_attempt.min(left);
            let failure = match tokio::time::timeout(this, attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(source)) if !is_transport_failure(&source) => {
                    return Err(CoordError::etcd(op, source))
                }
                Ok(Err(source)) => CoordError::etcd(op, source),
                Err(_) => CoordError::Timeout { op, after: this },
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match failure {
                    CoordError::Timeout { op, .. } => CoordError::Timeout { op, after: total },
                    other => other,
                });
            }
            debug!(op, error = %failure, "etcd request failed in transport; retrying");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Pause before another attempt of an idempotent request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// True when a request failed before etcd could answer it: the connection, not the
/// cluster (gRPC `Unavailable`, or `Unknown` carrying a transport error).
fn is_transport_failure(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            let code = i32::from(s.code());
            code == GRPC_UNAVAILABLE
                || (code == GRPC_UNKNOWN && s.message().contains("transport error"))
        }
        _ => false,
    }
}

/// gRPC status codes (`tonic::Code`), by number: this crate does not name tonic.
const GRPC_UNKNOWN: i32 = 2;
const GRPC_UNAVAILABLE: i32 = 14;

/// Refuses values over [`MAX_VALUE_BYTES`].
pub(crate) fn check_size(key: &str, size: usize) -> Result<(), CoordError> {
    if size > MAX_VALUE_BYTES {
        return Err(CoordError::ValueTooLarge {
            key: key.to_owned(),
            size,
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Decodes an etcd key as UTF-8 (every key this layer writes is ASCII).
pub(crate) fn key_str(key: &[u8]) -> Result<&str, CoordError> {
    std::str::from_utf8(key).map_err(|_| CoordError::Malformed {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: "key is not utf-8".to_owned(),
    })
}
