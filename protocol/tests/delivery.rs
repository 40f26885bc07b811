//! The channel delivery on its own: framing, sender checks, bounds, closed transports.

mod common;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use signer_protocol::ecdsa::{self, EcdsaKeygenMsg};
use signer_protocol::frost::{self, FrostKeygenMsg};
use signer_protocol::round_based::{Delivery, MessageType, Outgoing};
use signer_protocol::{
    codec, run_on_thread, ChannelDelivery, DeliveryConfig, DeliveryError, MsgType, ProtocolError,
    ProtocolKind, RawIncoming, RawOutgoing,
};
use tokio::sync::mpsc;

fn delivery(
    local: u16,
    n: u16,
    max: usize,
) -> (
    ChannelDelivery<Vec<u32>>,
    mpsc::Sender<RawIncoming>,
    mpsc::Receiver<RawOutgoing>,
) {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel(16);
    let cfg = DeliveryConfig {
        local_index: local,
        parties: n,
        max_message_size: max,
    };
    (ChannelDelivery::new(cfg, in_rx, out_tx), in_tx, out_rx)
}

#[tokio::test]
async fn incoming_frames_are_decoded_with_sender_type_and_increasing_ids() {
    let (d, in_tx, _out) = delivery(1, 3, 1024);
    let stats = d.stats();
    let (mut incoming, _outgoing) = Delivery::<Vec<u32>>::split(d);
    let payload = Bytes::from(codec::encode_message(&vec![7u32, 8]).expect("encode"));
    in_tx
        .send(RawIncoming {
            sender: 2,
            msg_type: MsgType::Broadcast,
            payload: payload.clone(),
        })
        .await
        .expect("send");
    in_tx
        .send(RawIncoming {
            sender: 0,
            msg_type: MsgType::P2p,
            payload: payload.clone(),
        })
        .await
        .expect("send");
    let a = incoming.next().await.expect("item").expect("ok");
    let b = incoming.next().await.expect("item").expect("ok");
    assert_eq!(
        (a.sender, a.msg_type, a.msg.clone()),
        (2, MessageType::Broadcast, vec![7, 8])
    );
    assert_eq!((b.sender, b.msg_type), (0, MessageType::P2P));
    assert!(b.id > a.id);
    assert_eq!(
        stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
        2 * payload.len() as u64
    );
    drop(in_tx);
    assert!(
        incoming.next().await.is_none(),
        "closed channel ends the stream"
    );
}

#[tokio::test]
async fn bad_frames_name_their_sender() {
    let (d, in_tx, _out) = delivery(0, 3, 64);
    let (mut incoming, _o) = Delivery::<Vec<u32>>::split(d);
    let frame = |sender, payload: Vec<u8>| RawIncoming {
        sender,
        msg_type: MsgType::P2p,
        payload: Bytes::from(payload),
    };
    in_tx.send(frame(2, vec![1, 0xff])).await.expect("send");
    in_tx.send(frame(1, vec![1; 65])).await.expect("send");
    in_tx.send(frame(0, vec![1])).await.expect("send");
    in_tx.send(frame(5, vec![1])).await.expect("send");
    let ok_then_trailing = {
        let mut v = codec::encode_message(&vec![1u32]).expect("encode");
        v.push(0);
        v
    };
    in_tx.send(frame(1, ok_then_trailing)).await.expect("send");
    let mut errs = Vec::new();
    for _ in 0..5 {
        errs.push(
            incoming
                .next()
                .await
                .expect("item")
                .expect_err("must be rejected"),
        );
    }
    assert!(
        matches!(errs[0], DeliveryError::Malformed { sender: 2, .. }),
        "{}",
        errs[0]
    );
    assert!(
        matches!(
            errs[1],
            DeliveryError::Oversized {
                sender: 1,
                size: 65,
                limit: 64
            }
        ),
        "{}",
        errs[1]
    );
    assert!(
        matches!(errs[2], DeliveryError::UnknownSender { sender: 0, .. }),
        "own index"
    );
    assert!(matches!(
        errs[3],
        DeliveryError::UnknownSender { sender: 5, .. }
    ));
    assert!(
        matches!(errs[4], DeliveryError::Malformed { sender: 1, .. }),
        "{}",
        errs[4]
    );
}

#[tokio::test]
async fn outgoing_messages_are_framed_and_bounded() {
    let (d, _in, mut out_rx) = delivery(0, 3, 32);
    let (_i, mut outgoing) = Delivery::<Vec<u32>>::split(d);
    outgoing
        .send(Outgoing::broadcast(vec![1, 2, 3]))
        .await
        .expect("send");
    outgoing
        .send(Outgoing::p2p(2, vec![4]))
        .await
        .expect("send");
    let a = out_rx.recv().await.expect("frame");
    let b = out_rx.recv().await.expect("frame");
    assert_eq!(a.recipient, None);
    assert_eq!(b.recipient, Some(2));
    let back: Vec<u32> = codec::decode_message(&a.payload, 32).expect("decode");
    assert_eq!(back, vec![1, 2, 3]);
    // too large for the bound, p2p to self, p2p outside the run
    assert!(matches!(
        outgoing.send(Outgoing::broadcast(vec![u32::MAX; 64])).await,
        Err(DeliveryError::OwnOversized { .. })
    ));
    assert!(outgoing.send(Outgoing::p2p(0, vec![1])).await.is_err());
    assert!(outgoing.send(Outgoing::p2p(3, vec![1])).await.is_err());
    drop(out_rx);
    assert!(matches!(
        outgoing.send(Outgoing::broadcast(vec![1])).await,
        Err(DeliveryError::Closed)
    ));
}

#[tokio::test]
async fn closed_transport_fails_the_run_without_blame() {
    // a party whose peers never answer and whose transport is then closed
    let eid = common::eid("closed", ProtocolKind::EcdsaKeygen, 2, 3);
    let (in_tx, in_rx) = mpsc::channel::<RawIncoming>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<RawOutgoing>(16);
    let run = tokio::spawn(run_on_thread(ProtocolKind::EcdsaKeygen, move || {
        let party = signer_protocol::channel_party::<EcdsaKeygenMsg>(
            DeliveryConfig::new(0, 3),
            in_rx,
            out_tx,
        );
        async move { ecdsa::keygen(party, &eid, 0, 3, 2, None).await }
    }));
    // the party broadcasts its first message, then we close its incoming channel
    let first = out_rx.recv().await.expect("first message");
    assert_eq!(first.recipient, None);
    drop(in_tx);
    let err = run.await.expect("join").expect_err("must fail");
    assert!(
        matches!(
            err,
            ProtocolError::TransportClosed {
                protocol: ProtocolKind::EcdsaKeygen
            }
        ),
        "{err}"
    );
    assert!(err.culprits().is_empty());

    // same for givre
    let eid = common::eid("closed", ProtocolKind::FrostKeygen, 2, 3);
    let (in_tx, in_rx) = mpsc::channel::<RawIncoming>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<RawOutgoing>(16);
    let run = tokio::spawn(run_on_thread(ProtocolKind::FrostKeygen, move || {
        let party = signer_protocol::channel_party::<FrostKeygenMsg>(
            DeliveryConfig::new(1, 3),
            in_rx,
            out_tx,
        );
        async move { frost::keygen(party, &eid, 1, 3, 2).await }
    }));
    out_rx.recv().await.expect("first message");
    drop(in_tx);
    let err = run.await.expect("join").expect_err("must fail");
    assert!(
        matches!(
            err,
            ProtocolError::TransportClosed {
                protocol: ProtocolKind::FrostKeygen
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_the_run_future_cancels_the_protocol_thread() {
    let eid = common::eid("cancel", ProtocolKind::EcdsaKeygen, 2, 3);
    let (_in_tx, in_rx) = mpsc::channel::<RawIncoming>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<RawOutgoing>(16);
    let run = tokio::spawn(run_on_thread(ProtocolKind::EcdsaKeygen, move || {
        let party = signer_protocol::channel_party::<EcdsaKeygenMsg>(
            DeliveryConfig::new(0, 3),
            in_rx,
            out_tx,
        );
        async move { ecdsa::keygen(party, &eid, 0, 3, 2, None).await }
    }));
    out_rx.recv().await.expect("first message");
    run.abort();
    // the protocol future (and with it the delivery's sender) is dropped on its thread
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while out_rx.recv().await.is_some() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the outgoing channel must close after cancellation"
    );
}

#[tokio::test]
async fn broadcast_sent_as_p2p_is_blamed_on_its_sender() {
    let eid = common::eid("type", ProtocolKind::EcdsaKeygen, 2, 3);
    let spawn_party = |i: u16| {
        let (in_tx, in_rx) = mpsc::channel::<RawIncoming>(16);
        let (out_tx, out_rx) = mpsc::channel::<RawOutgoing>(16);
        let run = tokio::spawn(run_on_thread(ProtocolKind::EcdsaKeygen, move || {
            let party = signer_protocol::channel_party::<EcdsaKeygenMsg>(
                DeliveryConfig::new(i, 3),
                in_rx,
                out_tx,
            );
            async move { ecdsa::keygen(party, &eid, i, 3, 2, None).await }
        }));
        (run, in_tx, out_rx)
    };
    let (victim, victim_in, _victim_out) = spawn_party(0);
    let (other, _other_in, mut other_out) = spawn_party(1);
    let first = other_out.recv().await.expect("party 1 round-1 broadcast");
    assert_eq!(first.recipient, None);
    // delivered to party 0 flagged as a private message
    victim_in
        .send(RawIncoming {
            sender: 1,
            msg_type: MsgType::P2p,
            payload: first.payload,
        })
        .await
        .expect("send");
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), victim)
        .await
        .expect("party 0 must abort promptly")
        .expect("join")
        .expect_err("mismatched message type must abort");
    assert_eq!(err.culprits(), vec![1], "{err}");
    other.abort();
}
