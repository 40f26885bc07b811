//! Drives a [`ReshareParty`] over a round-based delivery (the node's
//! [`crate::ChannelDelivery`], or round-based's simulator in tests).

use futures::{SinkExt, StreamExt};
use round_based::{Delivery, MessageDestination, MessageType, Mpc};

use super::error::ReshareError;
use super::identity::ReshareSigner;
use super::output::ReshareOutput;
use super::state::{Outgoing, ReshareParty};
use super::wire::ReshareMsg;
use crate::delivery::{DeliveryError, MsgType};

/// Runs one participant to completion over `party`'s delivery.
///
/// Build `state` with [`ReshareParty::new`] first (argument errors surface before anything
/// is sent). With the node's transport:
///
/// ```ignore
/// let cfg = reshare::delivery_config(me, setup.run_parties());
/// let out = run_on_thread(kind, move || async move {
///     let party = channel_party::<ReshareMsg>(cfg, in_rx, out_tx);
///     Ok(reshare::run(party, state, &identity).await)
/// }).await?;
/// ```
///
/// Returns when every message of both rounds arrived: the output, or the faults. A
/// transport error aborts at once (naming the sender of a malformed message); if the
/// incoming stream ends first, [`ReshareError::TransportClosed`] lists who was missing.
pub async fn run<M, S>(
    party: M,
    mut state: ReshareParty,
    signer: &S,
) -> Result<ReshareOutput, ReshareError>
where
    M: Mpc<ProtocolMessage = ReshareMsg>,
    S: ReshareSigner + ?Sized,
{
    let signer: &dyn ReshareSigner = &DynSigner(signer);
    let (mut incoming, mut outgoing) = party.into_party().delivery.split();
    let me = state.index();
    tracing::debug!(party = me, "reshare run started");
    let first = state.start(signer)?;
    send_all(&mut outgoing, first).await?;
    while !state.is_finished() {
        let msg = match incoming.next().await {
            None => {
                return Err(ReshareError::TransportClosed {
                    waiting_for: state.waiting_for(),
                })
            }
            Some(Err(e)) => return Err(map_transport_error(&e)),
            Some(Ok(m)) => m,
        };
        let msg_type = match msg.msg_type {
            MessageType::Broadcast => MsgType::Broadcast,
            MessageType::P2P => MsgType::P2p,
        };
        let out = state.handle(signer, msg.sender, msg_type, msg.msg)?;
        send_all(&mut outgoing, out).await?;
    }
    let res = state.finish();
    match &res {
        Ok(_) => tracing::info!(party = me, "reshare run finished"),
        Err(e) => {
            tracing::warn!(party = me, culprits = ?e.culprits(), error = %e, "reshare run failed")
        }
    }
    res
}

/// Adapter so an unsized signer can be used as `&dyn ReshareSigner`.
struct DynSigner<'a, S: ?Sized>(&'a S);

impl<S: ReshareSigner + ?Sized> ReshareSigner for DynSigner<'_, S> {
    fn identity_public_key(&self) -> [u8; 32] {
        self.0.identity_public_key()
    }
    fn sign_reshare_statement(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign_reshare_statement(msg)
    }
}

async fn send_all<O, E>(outgoing: &mut O, msgs: Vec<Outgoing>) -> Result<(), ReshareError>
where
    O: futures::Sink<round_based::Outgoing<ReshareMsg>, Error = E> + Unpin,
    E: std::error::Error + 'static,
{
    for m in msgs {
        let recipient = match m.recipient {
            None => MessageDestination::AllParties,
            Some(j) => MessageDestination::OneParty(j),
        };
        outgoing
            .send(round_based::Outgoing {
                recipient,
                msg: m.msg,
            })
            .await
            .map_err(|e| map_transport_error(&e))?;
    }
    Ok(())
}

/// Maps a delivery error; a [`DeliveryError`] in the source chain names the sender.
fn map_transport_error(err: &(dyn std::error::Error + 'static)) -> ReshareError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<DeliveryError>() {
            return match d {
                DeliveryError::Malformed { sender, reason } => ReshareError::MalformedMessage {
                    party: *sender,
                    reason: reason.clone(),
                },
                DeliveryError::Oversized {
                    sender,
                    size,
                    limit,
                } => ReshareError::MalformedMessage {
                    party: *sender,
                    reason: format!("{size} bytes exceed the limit of {limit}"),
                },
                DeliveryError::UnknownSender { sender, n, local } => ReshareError::UnknownSender {
                    sender: *sender,
                    n: *n,
                    local: *local,
                },
                DeliveryError::Closed => ReshareError::TransportClosed {
                    waiting_for: Vec::new(),
                },
                other => ReshareError::Transport(other.to_string()),
            };
        }
        cur = e.source();
    }
    ReshareError::Transport(crate::error::display_chain(err))
}
