//! The audit service (router service `audit`): cross-node audit checkpoints, the
//! policy versions a node loads, and the peer side of audit exports.
//!
//! * [`checkpoints`]: at `[audit] checkpoint_interval_secs` (by the etcd leader,
//!   or by any node once one is overdue) and after each transaction this node led
//!   to `signed`, a node proposes a checkpoint: every answering node signs its own
//!   audit head, every node with a head co-signs the set, and a checkpoint with at
//!   least the cluster threshold of co-signatures is stored in every node's audit
//!   log (`audit.checkpoint`). The format and verification are pure
//!   ([`crate::audit::checkpoint`]).
//! * [`export`]: the bundle of `GET /api/v1/audit/export`, with every node's
//!   records fetched over QUIC ([`wire::ExportRequest`]), page by page as the HTTP
//!   client reads.
//!
//! See `docs/AUDIT.md`.

pub mod checkpoints;
pub mod export;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::audit::checkpoint::VoteKeys;
use crate::infra::Infra;
use crate::p2p::{Frame, MessageKind};
use crate::router::{LogThrottle, ServiceRx};

/// Dropped or refused frames of peers (logged throttled).
pub(crate) static REFUSED: LogThrottle = LogThrottle::new();

/// The kinds this service owns.
pub const KINDS: &[MessageKind] = &[
    wire::AUDIT_HEAD_REQUEST,
    wire::AUDIT_HEAD,
    wire::AUDIT_COSIGN_REQUEST,
    wire::AUDIT_COSIGNATURE,
    wire::AUDIT_CHECKPOINT,
    wire::AUDIT_EXPORT_REQUEST,
    wire::AUDIT_EXPORT_REPLY,
];

/// Requests of peers (heads, co-signatures, checkpoints, export pages) a node
/// serves at once; more wait in the service's queue.
const SERVING: usize = 4;

/// A reply to a checkpoint round this node proposes.
#[derive(Debug)]
pub(crate) enum RoundReply {
    /// A signed head.
    Head(wire::HeadReply),
    /// A co-signature.
    Cosign(wire::CosignReply),
}

type ExportWaiters = HashMap<Uuid, (String, oneshot::Sender<wire::ExportReply>)>;

/// The audit service's context.
#[derive(Debug)]
pub struct AuditCtx {
    infra: Arc<Infra>,
    /// Checkpoint rounds this node proposes, by checkpoint id.
    rounds: Mutex<HashMap<Uuid, mpsc::Sender<(String, RoundReply)>>>,
    /// Export requests waiting for a peer's reply, by request id.
    exports: Mutex<ExportWaiters>,
    /// Held while this node runs a checkpoint round (one at a time).
    proposing: tokio::sync::Mutex<()>,
    /// When this node last stored a checkpoint (any proposer's).
    last_checkpoint: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    serving: Arc<tokio::sync::Semaphore>,
}

impl std::ops::Deref for AuditCtx {
    type Target = Infra;

    fn deref(&self) -> &Infra {
        &self.infra
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuditCtx {
    /// The service's context over the infrastructure.
    pub fn new(infra: Arc<Infra>) -> Self {
        AuditCtx {
            infra,
            rounds: Mutex::default(),
            exports: Mutex::default(),
            proposing: tokio::sync::Mutex::new(()),
            last_checkpoint: Mutex::new(None),
            serving: Arc::new(tokio::sync::Semaphore::new(SERVING)),
        }
    }

    /// The vote keys this node trusts: the pinned ones and its own.
    pub async fn vote_keys(&self) -> Result<VoteKeys, crate::store::StoreError> {
        let mut keys: VoteKeys = self.store.vote_keys().await?.into_iter().collect();
        if let Some(u) = self.unsealed() {
            use vote::VoteSigner as _;
            keys.insert(self.cfg.node_id.clone(), u.vote_key.vote_public_key());
        }
        Ok(keys)
    }

    /// Sends `payload` as a frame of `kind` to `peer` (failures are logged).
    pub(crate) async fn send(
        &self,
        peer: &str,
        kind: MessageKind,
        session: Uuid,
        payload: Vec<u8>,
    ) {
        if let Err(e) = self
            .net
            .p2p
            .send(peer, Frame::new(session, kind, payload))
            .await
        {
            tracing::debug!(%peer, %kind, error = %e, "audit frame not delivered");
        }
    }

    /// Asks `peer` and waits up to `timeout` for its answer.
    pub(crate) async fn ask(
        &self,
        peer: &str,
        req: &wire::ExportRequest,
        timeout: std::time::Duration,
    ) -> Result<wire::ExportReply, String> {
        let payload = wire::encode(req).map_err(|e| e.to_string())?;
        let session = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        lock(&self.exports).insert(session, (peer.to_owned(), tx));
        let sent = self
            .net
            .p2p
            .send(
                peer,
                Frame::new(session, wire::AUDIT_EXPORT_REQUEST, payload),
            )
            .await;
        let res = match sent {
            Err(e) => Err(format!("cannot reach {peer}: {e}")),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(format!("{peer}: request abandoned")),
                Err(_) => Err(format!("{peer} did not answer within {timeout:?}")),
            },
        };
        lock(&self.exports).remove(&session);
        res
    }

    fn note_checkpoint(&self, at: chrono::DateTime<chrono::Utc>) {
        let mut g = lock(&self.last_checkpoint);
        if g.is_none_or(|t| t < at) {
            *g = Some(at);
        }
    }

    fn last_checkpoint(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *lock(&self.last_checkpoint)
    }
}

/// Handles the frames routed to this service until the router stops.
pub async fn serve(ctx: Arc<AuditCtx>, mut rx: ServiceRx) {
    while let Some(inbound) = rx.recv().await {
        let from = inbound.from;
        let session = inbound.frame.session;
        let payload = inbound.frame.payload;
        let kind = inbound.frame.kind;
        let ctx = ctx.clone();
        if matches!(kind, wire::AUDIT_HEAD | wire::AUDIT_COSIGNATURE) {
            // Replies to this node's own round: cheap, handled here.
            checkpoints::on_round_reply(&ctx, &from, kind, &payload);
            continue;
        }
        if kind == wire::AUDIT_EXPORT_REPLY {
            deliver_export_reply(&ctx, &from, session, &payload);
            continue;
        }
        // Work that reads the database or signs: at most SERVING frames at once,
        // taken off the queue only when a slot is free, so a flooding peer is held
        // to its queue quota.
        let Ok(permit) = ctx.serving.clone().acquire_owned().await else {
            continue;
        };
        match kind {
            wire::AUDIT_HEAD_REQUEST => {
                tokio::spawn(async move {
                    checkpoints::on_head_request(&ctx, &from, session, &payload).await;
                    drop(permit);
                });
            }
            wire::AUDIT_COSIGN_REQUEST => {
                tokio::spawn(async move {
                    checkpoints::on_cosign_request(&ctx, &from, session, &payload).await;
                    drop(permit);
                });
            }
            wire::AUDIT_CHECKPOINT => {
                tokio::spawn(async move {
                    checkpoints::on_checkpoint(&ctx, &from, &payload).await;
                    drop(permit);
                });
            }
            wire::AUDIT_EXPORT_REQUEST => {
                tokio::spawn(async move {
                    export::serve_request(&ctx, &from, session, &payload).await;
                    drop(permit);
                });
            }
            other => {
                tracing::error!(peer = %from, kind = %other, "router delivered a kind this service does not own");
            }
        }
    }
}

/// Hands a peer's export reply to the request waiting for it; only the peer that
/// was asked may answer.
fn deliver_export_reply(ctx: &AuditCtx, from: &str, session: Uuid, payload: &[u8]) {
    let waiter = {
        let mut g = lock(&ctx.exports);
        match g.get(&session) {
            Some((peer, _)) if *peer == from => g.remove(&session),
            _ => None,
        }
    };
    let Some((_, tx)) = waiter else {
        return;
    };
    let reply = wire::decode::<wire::ExportReply>(payload, crate::p2p::json::MAX_JSON_PAYLOAD)
        .unwrap_or_else(|e| wire::ExportReply::Error {
            message: format!("malformed reply: {e}"),
        });
    let _ = tx.send(reply);
}
