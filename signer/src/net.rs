//! The node's network handle: the QUIC endpoint, peer pings (liveness over p2p)
//! and the keeper that redials lost peers. Inbound frames reach their service
//! through [`crate::router`]; this module owns `PING` and `PONG`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::p2p::{Frame, MessageKind, P2p};
use crate::router::ServiceRx;

/// Result of pinging one peer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PingResult {
    /// Peer id.
    pub peer: String,
    /// Whether a pong came back in time.
    pub ok: bool,
    /// Round trip in microseconds.
    pub rtt_us: Option<u64>,
    /// Why not, when it failed.
    pub error: Option<String>,
}

/// The node's network handle.
#[derive(Debug)]
pub struct Net {
    /// The QUIC endpoint.
    pub p2p: P2p,
    pending: Mutex<HashMap<Uuid, (String, oneshot::Sender<()>)>>,
}

impl Net {
    /// Wraps a started endpoint.
    pub fn new(p2p: P2p) -> Arc<Net> {
        Arc::new(Net {
            p2p,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// This node's id (its certificate's).
    pub fn node_id(&self) -> &str {
        self.p2p.node_id()
    }

    /// The message kinds this module serves.
    pub const KINDS: &'static [MessageKind] = &[MessageKind::PING, MessageKind::PONG];

    /// Pings every peer concurrently and waits up to `timeout` for each pong.
    pub async fn ping_all(&self, timeout: Duration) -> Vec<PingResult> {
        let peers = self.p2p.peer_ids();
        futures::future::join_all(peers.into_iter().map(|p| self.ping(p, timeout))).await
    }

    async fn ping(&self, peer: String, timeout: Duration) -> PingResult {
        let session = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        self.pending_map().insert(session, (peer.clone(), tx));
        let start = Instant::now();
        let fail = |e: String| PingResult {
            peer: peer.clone(),
            ok: false,
            rtt_us: None,
            error: Some(e),
        };
        let res = match self
            .p2p
            .send(&peer, Frame::new(session, MessageKind::PING, Vec::new()))
            .await
        {
            Err(e) => fail(e.to_string()),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(())) => PingResult {
                    peer: peer.clone(),
                    ok: true,
                    rtt_us: Some(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    error: None,
                },
                Ok(Err(_)) => fail("ping abandoned".to_owned()),
                Err(_) => fail(format!("no pong within {timeout:?}")),
            },
        };
        self.pending_map().remove(&session);
        res
    }

    fn pending_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, (String, oneshot::Sender<()>)>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Dials peers that have no open connection, every `period`, so connectivity
    /// (and its loss) shows in status without waiting for protocol traffic.
    pub async fn keep_connected(self: Arc<Self>, period: Duration, shutdown: CancellationToken) {
        loop {
            let connected = self.p2p.connected_peers();
            let missing: Vec<String> = self
                .p2p
                .peer_ids()
                .into_iter()
                .filter(|p| !connected.contains(p))
                .collect();
            futures::future::join_all(missing.into_iter().map(|p| self.ping(p, period))).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Answers pings and completes pongs until the router closes the queue.
    pub async fn serve(self: Arc<Self>, mut rx: ServiceRx) {
        while let Some(inbound) = rx.recv().await {
            match inbound.frame.kind {
                MessageKind::PING => {
                    let reply = Frame::new(inbound.frame.session, MessageKind::PONG, Vec::new());
                    if let Err(e) = self.p2p.send(&inbound.from, reply).await {
                        tracing::debug!(peer = %inbound.from, error = %e, "pong failed");
                    }
                }
                MessageKind::PONG => {
                    let mut pending = self.pending_map();
                    // Only the peer that was pinged may complete the ping.
                    let matches = pending
                        .get(&inbound.frame.session)
                        .is_some_and(|(peer, _)| *peer == inbound.from);
                    if matches {
                        if let Some((_, tx)) = pending.remove(&inbound.frame.session) {
                            let _ = tx.send(());
                        }
                    }
                }
                other => {
                    tracing::error!(peer = %inbound.from, kind = %other, "router delivered a kind this service does not own");
                }
            }
        }
    }
}
