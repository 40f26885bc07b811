//! In-process transport connecting [`ChannelDelivery`](crate::ChannelDelivery) endpoints with tokio tasks.
//!
//! Used by this crate's tests and benchmark to drive the same byte-level path the node
//! uses (encode → channel → decode), and usable by the node's own tests. It is not a
//! network: there is no authentication, everything runs in one process.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::delivery::{DeliveryConfig, MsgType, RawIncoming, RawOutgoing};

/// Hook that may rewrite a payload in flight: `(sender, recipient, msg_type, payload)`.
/// Returning `None` keeps the payload unchanged.
pub type Tamper = Arc<dyn Fn(u16, u16, MsgType, &Bytes) -> Option<Bytes> + Send + Sync>;

/// The channel ends of one party.
#[derive(Debug)]
pub struct Endpoint {
    /// Delivery parameters for this party.
    pub config: DeliveryConfig,
    /// Frames addressed to this party.
    pub incoming: mpsc::Receiver<RawIncoming>,
    /// Frames this party sends.
    pub outgoing: mpsc::Sender<RawOutgoing>,
}

/// Channel capacity per party; protocols here send well under 100 messages per run.
const CAPACITY: usize = 1024;

/// Creates `n` connected endpoints; routing tasks run on the current tokio runtime until
/// every endpoint's `outgoing` is dropped.
pub fn local_network(n: u16, tamper: Option<Tamper>) -> Vec<Endpoint> {
    let mut in_txs = Vec::with_capacity(n.into());
    let mut in_rxs = Vec::with_capacity(n.into());
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<RawIncoming>(CAPACITY);
        in_txs.push(tx);
        in_rxs.push(rx);
    }
    let mut endpoints = Vec::with_capacity(n.into());
    for (i, incoming) in (0..n).zip(in_rxs) {
        let (out_tx, mut out_rx) = mpsc::channel::<RawOutgoing>(CAPACITY);
        let peers = in_txs.clone();
        let tamper = tamper.clone();
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let (targets, msg_type): (Vec<u16>, MsgType) = match out.recipient {
                    None => ((0..n).filter(|&j| j != i).collect(), MsgType::Broadcast),
                    Some(j) => (vec![j], MsgType::P2p),
                };
                for j in targets {
                    let payload = tamper
                        .as_ref()
                        .and_then(|t| t(i, j, msg_type, &out.payload))
                        .unwrap_or_else(|| out.payload.clone());
                    let Some(peer) = peers.get(usize::from(j)) else {
                        continue;
                    };
                    // a party that finished (or failed) drops its receiver: ignore
                    let _ = peer
                        .send(RawIncoming {
                            sender: i,
                            msg_type,
                            payload,
                        })
                        .await;
                }
            }
        });
        endpoints.push(Endpoint {
            config: DeliveryConfig::new(i, n),
            incoming,
            outgoing: out_tx,
        });
    }
    endpoints
}
