//! round-based [`Delivery`](round_based::Delivery) over plain tokio channels.
//!
//! The node plugs its authenticated transport (QUIC + mTLS) in by pumping bytes:
//!
//! * frames received from a peer become [`RawIncoming`] on the `incoming` channel, with
//!   `sender` set to the peer's **index in this run** (the node maps the peer's mTLS
//!   identity to that index; never trust an index written inside the frame) and
//!   `msg_type` set to what the frame header says (broadcast or p2p);
//! * [`RawOutgoing`] read from the `outgoing` channel are sent to `recipient` (p2p) or to
//!   every other participant of the run (`recipient: None`, broadcast), flagged as such.
//!
//! Payloads are encoded by [`crate::codec`]. Every decode failure names the sender (see
//! [`DeliveryError`]), which [`crate::ProtocolError`] turns into a culprit for the
//! `byzantine_violations` record.
//!
//! p2p messages must be confidential (QUIC/TLS gives that) and every message must be
//! authenticated (mTLS). cggmp24's reliable-broadcast check stays enabled, so a peer that
//! sends different broadcast messages to different parties is detected by the protocol.
//!
//! Message ids handed to the protocol are `sequence << 16 | sender`.
//!
//! To abort a run, drop the sender side feeding `incoming` (the protocol then fails with
//! [`crate::ProtocolError::TransportClosed`] at its next receive) or drop the future
//! returned by [`crate::run_on_thread`].

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use round_based::{Incoming, MessageDestination, MessageType, MpcParty, Outgoing};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::codec::{self, CodecError, DEFAULT_MAX_MESSAGE_SIZE};

/// Whether a message was sent to all parties or to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Sent to every other participant (the same bytes to all).
    Broadcast,
    /// Sent to this party only (must travel encrypted).
    P2p,
}

/// A frame received from a peer, handed to the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawIncoming {
    /// Sender's party index in this run (from the authenticated connection).
    pub sender: u16,
    /// Broadcast or p2p, as flagged by the sender's frame.
    pub msg_type: MsgType,
    /// Encoded protocol message.
    pub payload: Bytes,
}

/// A frame the protocol wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOutgoing {
    /// `None`: broadcast to every other participant; `Some(j)`: p2p to party `j`.
    pub recipient: Option<u16>,
    /// Encoded protocol message.
    pub payload: Bytes,
}

/// Parameters of a channel delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Local party index in this run.
    pub local_index: u16,
    /// Number of parties in this run (n for keygen/aux info, t for signing).
    pub parties: u16,
    /// Upper bound for one encoded message, in and out (default 4 MiB).
    pub max_message_size: usize,
}

impl DeliveryConfig {
    /// Config with the default message bound.
    pub fn new(local_index: u16, parties: u16) -> Self {
        Self {
            local_index,
            parties,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Transport fault seen by the delivery; the culprit, when there is one, is `sender`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Payload did not decode as a message of this protocol.
    #[error("party {sender} sent a malformed message: {reason}")]
    Malformed {
        /// Culprit.
        sender: u16,
        /// Decoder error.
        reason: String,
    },
    /// Payload exceeded the bound.
    #[error("party {sender} sent {size} bytes, limit is {limit}")]
    Oversized {
        /// Culprit.
        sender: u16,
        /// Payload size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The node handed over a sender index that is not a peer of this run.
    #[error("sender index {sender} is not a peer (n = {n}, local index {local})")]
    UnknownSender {
        /// Claimed sender.
        sender: u16,
        /// Parties in the run.
        n: u16,
        /// Local index.
        local: u16,
    },
    /// The outgoing channel was closed by the node.
    #[error("outgoing channel closed")]
    Closed,
    /// Encoding a local message failed.
    #[error("encode local message: {0}")]
    Encode(String),
    /// A local message exceeded the bound.
    #[error("local message of {size} bytes exceeds the limit of {limit}")]
    OwnOversized {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
}

/// Traffic counters of one delivery (messages and payload bytes).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Messages received.
    pub msgs_in: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Messages sent (a broadcast counts once).
    pub msgs_out: AtomicU64,
    /// Payload bytes sent (a broadcast counts once).
    pub bytes_out: AtomicU64,
    /// Largest payload sent.
    pub max_out: AtomicU64,
}

/// Incoming half: decodes [`RawIncoming`] into round-based [`Incoming`].
pub struct ChannelIncoming<M> {
    rx: mpsc::Receiver<RawIncoming>,
    cfg: DeliveryConfig,
    next_id: u64,
    stats: Arc<DeliveryStats>,
    _msg: PhantomData<fn() -> M>,
}

/// Outgoing half: encodes round-based [`Outgoing`] into [`RawOutgoing`].
pub struct ChannelOutgoing<M> {
    tx: PollSender<RawOutgoing>,
    cfg: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    _msg: PhantomData<fn(M)>,
}

/// round-based delivery over a pair of tokio channels.
pub struct ChannelDelivery<M> {
    incoming: ChannelIncoming<M>,
    outgoing: ChannelOutgoing<M>,
}

impl<M> std::fmt::Debug for ChannelDelivery<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelDelivery")
            .field("cfg", &self.incoming.cfg)
            .finish_non_exhaustive()
    }
}

impl<M> std::fmt::Debug for ChannelIncoming<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelIncoming")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<M> std::fmt::Debug for ChannelOutgoing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelOutgoing")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<M> ChannelDelivery<M> {
    /// Connects a delivery to the node's channels.
    pub fn new(
        cfg: DeliveryConfig,
        incoming: mpsc::Receiver<RawIncoming>,
        outgoing: mpsc::Sender<RawOutgoing>,
    ) -> Self {
        let stats = Arc::new(DeliveryStats::default());
        Self {
            incoming: ChannelIncoming {
                rx: incoming,
                cfg,
                next_id: 0,
                stats: stats.clone(),
                _msg: PhantomData,
            },
            outgoing: ChannelOutgoing {
                tx: PollSender::new(outgoing),
                cfg,
                stats,
                _msg: PhantomData,
            },
        }
    }

    /// Traffic counters (shared; keep the `Arc` to read them after the run).
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.incoming.stats.clone()
    }
}

/// Builds an [`MpcParty`] over a [`ChannelDelivery`], ready for the runners in
/// [`crate::ecdsa`] and [`crate::frost`].
pub fn channel_party<M>(
    cfg: DeliveryConfig,
    incoming: mpsc::Receiver<RawIncoming>,
    outgoing: mpsc::Sender<RawOutgoing>,
) -> MpcParty<M, ChannelDelivery<M>>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    MpcParty::connected(ChannelDelivery::new(cfg, incoming, outgoing))
}

impl<M> round_based::Delivery<M> for ChannelDelivery<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    type Send = ChannelOutgoing<M>;
    type Receive = ChannelIncoming<M>;
    type SendError = DeliveryError;
    type ReceiveError = DeliveryError;

    fn split(self) -> (Self::Receive, Self::Send) {
        (self.incoming, self.outgoing)
    }
}

impl<M: DeserializeOwned> ChannelIncoming<M> {
    fn accept(&mut self, raw: RawIncoming) -> Result<Incoming<M>, DeliveryError> {
        let cfg = self.cfg;
        if raw.sender >= cfg.parties || raw.sender == cfg.local_index {
            return Err(DeliveryError::UnknownSender {
                sender: raw.sender,
                n: cfg.parties,
                local: cfg.local_index,
            });
        }
        let size = raw.payload.len();
        self.stats.msgs_in.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(size as u64, Ordering::Relaxed);
        let msg =
            codec::decode_message::<M>(&raw.payload, cfg.max_message_size).map_err(
                |e| match e {
                    CodecError::TooLarge { size, limit } => DeliveryError::Oversized {
                        sender: raw.sender,
                        size,
                        limit,
                    },
                    other => DeliveryError::Malformed {
                        sender: raw.sender,
                        reason: other.to_string(),
                    },
                },
            )?;
        // message id = sequence number << 16 | sender: library errors that name only a
        // message id (round-based's `MismatchedMessageType { msg_id, .. }`) still point
        // at the sender (see `error::culprits_from_debug`)
        let id = (self.next_id << 16) | u64::from(raw.sender);
        self.next_id += 1;
        tracing::trace!(sender = raw.sender, size, id, "protocol message received");
        Ok(Incoming {
            id,
            sender: raw.sender,
            msg_type: match raw.msg_type {
                MsgType::Broadcast => MessageType::Broadcast,
                MsgType::P2p => MessageType::P2P,
            },
            msg,
        })
    }
}

impl<M: DeserializeOwned> Stream for ChannelIncoming<M> {
    type Item = Result<Incoming<M>, DeliveryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(raw)) => {
                let res = this.accept(raw);
                if let Err(e) = &res {
                    tracing::warn!(error = %e, "rejected protocol message");
                }
                Poll::Ready(Some(res))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<M: Serialize> Sink<Outgoing<M>> for ChannelOutgoing<M> {
    type Error = DeliveryError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut()
            .tx
            .poll_reserve(cx)
            .map_err(|_| DeliveryError::Closed)
    }

    fn start_send(self: Pin<&mut Self>, item: Outgoing<M>) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let res = this.encode_and_send(item);
        if res.is_err() {
            // release the slot reserved by poll_ready
            this.tx.abort_send();
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().tx.close();
        Poll::Ready(Ok(()))
    }
}

impl<M: Serialize> ChannelOutgoing<M> {
    fn encode_and_send(&mut self, item: Outgoing<M>) -> Result<(), DeliveryError> {
        let this = self;
        let recipient = match item.recipient {
            MessageDestination::AllParties => None,
            MessageDestination::OneParty(j) => {
                if j >= this.cfg.parties || j == this.cfg.local_index {
                    return Err(DeliveryError::Encode(format!(
                        "p2p recipient {j} is not a peer"
                    )));
                }
                Some(j)
            }
        };
        let payload =
            codec::encode_message(&item.msg).map_err(|e| DeliveryError::Encode(e.to_string()))?;
        let size = payload.len();
        if size > this.cfg.max_message_size {
            return Err(DeliveryError::OwnOversized {
                size,
                limit: this.cfg.max_message_size,
            });
        }
        this.stats.msgs_out.fetch_add(1, Ordering::Relaxed);
        this.stats
            .bytes_out
            .fetch_add(size as u64, Ordering::Relaxed);
        this.stats.max_out.fetch_max(size as u64, Ordering::Relaxed);
        tracing::trace!(?recipient, size, "protocol message sent");
        this.tx
            .send_item(RawOutgoing {
                recipient,
                payload: Bytes::from(payload),
            })
            .map_err(|_| DeliveryError::Closed)
    }
}
