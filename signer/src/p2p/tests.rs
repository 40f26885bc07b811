//! Real QUIC over loopback; certificates from the `ca` module in temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tracing_subscriber::fmt::MakeWriter;
use uuid::Uuid;

use super::*;
use crate::ca::{init_ca, issue_node_cert, issue_node_cert_with_validity};

/// Guard against hangs only; no test asserts on timing.
const GUARD: Duration = Duration::from_secs(30);

/// Captures log output of the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn install() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(sub);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until a line contains all `needles` (the refusing side may log a
    /// moment after the other side saw the error).
    async fn wait_for(&self, needles: &[&str]) {
        let found = tokio::time::timeout(GUARD, async {
            loop {
                if self
                    .text()
                    .lines()
                    .any(|l| needles.iter().all(|n| l.contains(n)))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "no log line with {needles:?} in:\n{}",
            self.text()
        );
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A CA, certificates and loopback ports for a set of nodes.
struct Net {
    ca: tempfile::TempDir,
    ports: BTreeMap<String, u16>,
}

impl Net {
    fn new(ids: &[&str]) -> Net {
        let ca = tempfile::tempdir().unwrap();
        init_ca(ca.path()).unwrap();
        let mut ports = BTreeMap::new();
        for id in ids {
            issue_node_cert(ca.path(), id, 30).unwrap();
            ports.insert(id.to_string(), free_port());
        }
        Net { ca, ports }
    }

    fn addr(&self, id: &str) -> SocketAddr {
        addr(self.ports[id])
    }

    /// Config of `id`, with every other node of the net as peer.
    fn config(&self, id: &str) -> P2pConfig {
        let peers = self
            .ports
            .iter()
            .filter(|(p, _)| p.as_str() != id)
            .map(|(p, port)| PeerConfig {
                id: p.clone(),
                addr: addr(*port),
            })
            .collect();
        let node_dir = self.ca.path().join("nodes").join(id);
        P2pConfig::new(
            id,
            self.addr(id),
            peers,
            self.ca.path().join("ca.pem"),
            node_dir.join("cert.pem"),
            node_dir.join("key.pem"),
        )
    }

    async fn start(&self, id: &str) -> (P2p, mpsc::Receiver<Inbound>) {
        P2p::start(self.config(id)).await.unwrap()
    }
}

/// Starts a node, retrying while its port is still held by a previous instance.
async fn start_when_port_free(cfg: P2pConfig) -> (P2p, mpsc::Receiver<Inbound>) {
    tokio::time::timeout(GUARD, async {
        loop {
            match P2p::start(cfg.clone()).await {
                Ok(started) => return started,
                Err(P2pError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("start failed: {e}"),
            }
        }
    })
    .await
    .expect("port never became free")
}

fn frame(text: &str) -> Frame {
    Frame::new(Uuid::new_v4(), MessageKind::PING, text.as_bytes().to_vec())
}

async fn recv(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("no frame arrived")
        .expect("inbound channel closed")
}

fn text(inbound: &Inbound) -> String {
    String::from_utf8(inbound.frame.payload.to_vec()).unwrap()
}

#[tokio::test]
async fn every_node_pair_exchanges_frames_in_both_directions() {
    let ids = ["n1", "n2", "n3", "n4"];
    let net = Net::new(&ids);
    let mut nodes = BTreeMap::new();
    for id in ids {
        nodes.insert(id, net.start(id).await);
    }
    let sends = ids.iter().flat_map(|from| {
        ids.iter()
            .filter(move |to| *to != from)
            .map(move |to| (*from, *to))
    });
    let results = futures::future::join_all(sends.map(|(from, to)| {
        let node = &nodes[from].0;
        async move {
            (
                from,
                to,
                node.send(to, frame(&format!("{from}->{to}"))).await,
            )
        }
    }))
    .await;
    for (from, to, r) in results {
        r.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    }
    for (id, (node, rx)) in nodes.iter_mut() {
        let mut got = BTreeSet::new();
        for _ in 0..ids.len() - 1 {
            let inbound = recv(rx).await;
            assert_eq!(text(&inbound), format!("{}->{id}", inbound.from));
            got.insert(inbound.from);
        }
        let expected: BTreeSet<String> = ids
            .iter()
            .filter(|p| *p != id)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, expected, "senders seen by {id}");
        assert!(rx.try_recv().is_err(), "{id} got an extra frame");
        assert_eq!(node.connected_peers(), node.peer_ids());
    }
}

#[tokio::test]
async fn broadcast_reaches_every_peer() {
    let ids = ["n1", "n2", "n3", "n4", "n5"];
    let net = Net::new(&ids);
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(net.start(id).await);
    }
    let f = Frame::new(Uuid::new_v4(), MessageKind::KEYGEN, vec![42u8; 200 * 1024]);
    let results = nodes[0].0.broadcast(f.clone()).await;
    let peers: Vec<_> = results.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(peers, ["n2", "n3", "n4", "n5"]);
    for (peer, r) in &results {
        assert!(r.is_ok(), "{peer}: {r:?}");
    }
    for (_, rx) in nodes.iter_mut().skip(1) {
        let inbound = recv(rx).await;
        assert_eq!(inbound.from, "n1");
        assert_eq!(inbound.frame, f);
    }
}

#[tokio::test]
async fn frames_up_to_the_limit_are_delivered() {
    let net = Net::new(&["a", "b"]);
    let (a, _a_rx) = net.start("a").await;
    let (_b, mut b_rx) = net.start("b").await;
    let one_mib = Frame::new(Uuid::new_v4(), MessageKind::AUX_INFO, vec![1u8; 1 << 20]);
    a.send("b", one_mib.clone()).await.unwrap();
    assert_eq!(recv(&mut b_rx).await.frame, one_mib);
    let max = Frame::new(
        Uuid::new_v4(),
        MessageKind::AUX_INFO,
        vec![2u8; DEFAULT_MAX_FRAME_BYTES - HEADER_LEN],
    );
    a.send("b", max.clone()).await.unwrap();
    assert_eq!(recv(&mut b_rx).await.frame, max);
    let over = Frame::new(
        Uuid::new_v4(),
        MessageKind::AUX_INFO,
        vec![3u8; DEFAULT_MAX_FRAME_BYTES - HEADER_LEN + 1],
    );
    assert!(matches!(
        a.send("b", over).await,
        Err(P2pError::Frame(FrameError::TooLarge { .. }))
    ));
}

#[tokio::test]
async fn frames_sent_in_sequence_arrive_in_order() {
    let net = Net::new(&["a", "b"]);
    let (a, _a_rx) = net.start("a").await;
    let (_b, mut b_rx) = net.start("b").await;
    for i in 0..50 {
        // Mix sizes so that later frames could overtake earlier ones.
        let size = if i % 5 == 0 { 300_000 } else { 10 };
        let mut payload = vec![0u8; size];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        a.send("b", Frame::new(Uuid::nil(), MessageKind::SIGN, payload))
            .await
            .unwrap();
    }
    for i in 0..50u32 {
        let inbound = recv(&mut b_rx).await;
        assert_eq!(inbound.frame.payload[..4], i.to_be_bytes());
    }
}

#[tokio::test]
async fn certificate_from_a_foreign_ca_is_refused() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b", "c"]);
    let foreign = tempfile::tempdir().unwrap();
    init_ca(foreign.path()).unwrap();
    let rogue_cert = issue_node_cert(foreign.path(), "c", 30).unwrap();
    // The rogue claims to be "c" and trusts the real CA, but its certificate is
    // signed by another CA.
    let mut rogue_cfg = net.config("c");
    rogue_cfg.cert = rogue_cert.cert;
    rogue_cfg.key = rogue_cert.key;

    let (a, mut a_rx) = net.start("a").await;
    let (rogue, _rogue_rx) = P2p::start(rogue_cfg).await.unwrap();
    let err = rogue.send("a", frame("from rogue")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
    logs.wait_for(&[
        "refused incoming connection: handshake failed",
        &net.addr("c").to_string(),
    ])
    .await;

    // Dialing the rogue at c's address: its server certificate is refused too.
    let err = a.send("c", frame("to rogue")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
    logs.wait_for(&["connection to peer failed", "peer=\"c\""])
        .await;

    // The honest node keeps working: b's frame is the first and only one a gets.
    let (b, _b_rx) = net.start("b").await;
    b.send("a", frame("hello")).await.unwrap();
    let inbound = recv(&mut a_rx).await;
    assert_eq!(
        (inbound.from.as_str(), text(&inbound).as_str()),
        ("b", "hello")
    );
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b", "c"]);
    let now = OffsetDateTime::now_utc();
    issue_node_cert_with_validity(
        net.ca.path(),
        "c",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let (a, mut a_rx) = net.start("a").await;
    let (c, _c_rx) = net.start("c").await;
    logs.wait_for(&["own certificate does not verify", "node_id=c"])
        .await;

    let err = c.send("a", frame("expired")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
    logs.wait_for(&[
        "refused incoming connection: handshake failed",
        &net.addr("c").to_string(),
    ])
    .await;
    assert!(
        logs.text().contains("certificate expired"),
        "{}",
        logs.text()
    );

    let err = a.send("c", frame("to expired")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");

    let (b, _b_rx) = net.start("b").await;
    b.send("a", frame("hello")).await.unwrap();
    let inbound = recv(&mut a_rx).await;
    assert_eq!(inbound.from, "b");
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test]
async fn valid_certificate_with_unknown_identity_is_refused() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b"]);
    let mallory = issue_node_cert(net.ca.path(), "mallory", 30).unwrap();
    let mallory_port = free_port();
    let mallory_cfg = P2pConfig::new(
        "mallory",
        addr(mallory_port),
        vec![PeerConfig {
            id: "a".into(),
            addr: net.addr("a"),
        }],
        net.ca.path().join("ca.pem"),
        mallory.cert,
        mallory.key,
    );
    let (a, mut a_rx) = net.start("a").await;
    let (m, _m_rx) = P2p::start(mallory_cfg).await.unwrap();
    let err = m.send("a", frame("let me in")).await.unwrap_err();
    match &err {
        P2pError::Connection {
            source: ConnectionError::ApplicationClosed(c),
            ..
        } => assert_eq!(c.error_code, VarInt::from_u32(CLOSE_REFUSED_IDENTITY)),
        other => panic!("unexpected error {other}"),
    }
    logs.wait_for(&[
        "identity is not a configured peer",
        "identity=mallory",
        &addr(mallory_port).to_string(),
    ])
    .await;
    assert!(a.connected_peers().is_empty());

    let (b, _b_rx) = net.start("b").await;
    b.send("a", frame("hello")).await.unwrap();
    assert_eq!(recv(&mut a_rx).await.from, "b");
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test]
async fn peer_answering_with_another_identity_is_refused() {
    let net = Net::new(&["a", "b", "c"]);
    // a believes b lives at c's address.
    let mut a_cfg = net.config("a");
    for p in &mut a_cfg.peers {
        if p.id == "b" {
            p.addr = net.addr("c");
        }
    }
    let (a, _a_rx) = P2p::start(a_cfg).await.unwrap();
    let (_c, mut c_rx) = net.start("c").await;
    let err = a.send("b", frame("for b")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // Sending to c at the same address works.
    a.send("c", frame("for c")).await.unwrap();
    let inbound = recv(&mut c_rx).await;
    assert_eq!(text(&inbound), "for c");
    assert!(c_rx.try_recv().is_err());
}

/// A bare quinn client presenting `id`'s certificate.
async fn raw_client(net: &Net, id: &str, to: &str) -> (quinn::Endpoint, Connection) {
    let cfg = net.config(id);
    let identity = tls::Identity::load(&cfg).unwrap();
    let client = tls::client_config(&identity, tls::transport(&cfg).unwrap(), WIRE_LEVEL).unwrap();
    let mut ep = quinn::Endpoint::client(addr(0)).unwrap();
    ep.set_default_client_config(client);
    let conn = ep
        .connect(net.addr(to), &ca::identity_dns_name(to).unwrap())
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_and_the_node_keeps_working() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b", "c"]);
    let (_a, mut a_rx) = net.start("a").await;
    let (_ep, conn) = raw_client(&net, "b", "a").await;

    for declared in [u32::MAX, (DEFAULT_MAX_FRAME_BYTES - HEADER_LEN + 1) as u32] {
        let mut bytes = frame("x").encode(DEFAULT_MAX_FRAME_BYTES).unwrap().to_vec();
        bytes[23..27].copy_from_slice(&declared.to_be_bytes());
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        // Keep streaming junk as an attacker would; the receiver stops the stream.
        let junk = vec![0u8; 64 * 1024];
        for _ in 0..100 {
            if s.write_all(&junk).await.is_err() {
                break;
            }
        }
        let code = tokio::time::timeout(GUARD, s.stopped())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, Some(VarInt::from_u32(STOP_FRAME_TOO_LARGE)));
    }
    logs.wait_for(&["refused frame from peer", "peer=\"b\"", "exceeds the limit"])
        .await;

    // Same connection, a well-formed frame: delivered, and it is the first one.
    let good = frame("after the attack");
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&good.encode(DEFAULT_MAX_FRAME_BYTES).unwrap())
        .await
        .unwrap();
    s.finish().unwrap();
    assert_eq!(s.stopped().await.unwrap(), None);
    let inbound = recv(&mut a_rx).await;
    assert_eq!(inbound.from, "b");
    assert_eq!(inbound.frame, good);
    assert!(conn.close_reason().is_none());

    // And other peers still get through.
    let (c, _c_rx) = net.start("c").await;
    c.send("a", frame("from c")).await.unwrap();
    assert_eq!(recv(&mut a_rx).await.from, "c");
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test]
async fn malformed_frames_are_refused_without_delivery() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b"]);
    let (_a, mut a_rx) = net.start("a").await;
    let (_ep, conn) = raw_client(&net, "b", "a").await;
    let good = frame("0123456789").encode(DEFAULT_MAX_FRAME_BYTES).unwrap();

    let mut bad_magic = good.to_vec();
    bad_magic[..4].copy_from_slice(b"HTTP");
    let mut bad_version = good.to_vec();
    bad_version[4] = 9;
    let truncated_header = good[..10].to_vec();
    let truncated_payload = good[..good.len() - 3].to_vec();
    let mut trailing = good.to_vec();
    trailing.extend_from_slice(b"extra");

    for bytes in [
        bad_magic,
        bad_version,
        truncated_header,
        truncated_payload,
        trailing,
    ] {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
        // Either stopped or acknowledged, depending on timing; never delivered.
        let _ = tokio::time::timeout(GUARD, s.stopped()).await.unwrap();
    }
    for reason in [
        "bad frame magic",
        "unsupported frame version 9",
        "stream ended after 10 header bytes",
        "payload length mismatch",
        "stream continues past the declared payload",
    ] {
        logs.wait_for(&["refused frame from peer", reason]).await;
    }

    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&good).await.unwrap();
    s.finish().unwrap();
    let inbound = recv(&mut a_rx).await;
    assert_eq!(text(&inbound), "0123456789");
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test]
async fn frame_over_the_receivers_limit_is_rejected_and_reported_to_the_sender() {
    let net = Net::new(&["a", "b"]);
    let mut a_cfg = net.config("a");
    a_cfg.max_frame_bytes = 8 * 1024 * 1024;
    let mut b_cfg = net.config("b");
    b_cfg.max_frame_bytes = 1024 * 1024;
    let (a, _a_rx) = P2p::start(a_cfg).await.unwrap();
    let (_b, mut b_rx) = P2p::start(b_cfg).await.unwrap();

    let big = Frame::new(Uuid::new_v4(), MessageKind::AUX_INFO, vec![0u8; 2 << 20]);
    match a.send("b", big).await {
        Err(P2pError::Rejected { peer, code }) => {
            assert_eq!(peer, "b");
            assert_eq!(code, u64::from(STOP_FRAME_TOO_LARGE));
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    a.send("b", frame("small")).await.unwrap();
    let inbound = recv(&mut b_rx).await;
    assert_eq!(text(&inbound), "small");
    assert!(b_rx.try_recv().is_err());
}

#[tokio::test]
async fn reconnects_after_the_peer_restarts_on_the_same_port() {
    let net = Net::new(&["a", "b"]);
    let (a, _a_rx) = net.start("a").await;
    let (b, mut b_rx) = net.start("b").await;
    a.send("b", frame("first")).await.unwrap();
    assert_eq!(text(&recv(&mut b_rx).await), "first");

    b.shutdown().await;
    drop(b);
    assert!(tokio::time::timeout(GUARD, b_rx.recv())
        .await
        .unwrap()
        .is_none());

    let (_b2, mut b2_rx) = start_when_port_free(net.config("b")).await;
    a.send("b", frame("second")).await.unwrap();
    let inbound = recv(&mut b2_rx).await;
    assert_eq!(
        (inbound.from.as_str(), text(&inbound).as_str()),
        ("a", "second")
    );
}

#[tokio::test]
async fn reconnects_after_the_peer_crashes_and_restarts() {
    let net = Net::new(&["a", "b"]);
    let (a, _a_rx) = net.start("a").await;

    // b runs on its own runtime; dropping that runtime kills it without any
    // close frame, like a crashed process.
    let b_cfg = net.config("b");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (b, rx) = rt.block_on(async {
            let (b, mut rx) = P2p::start(b_cfg).await.unwrap();
            let first = tokio::time::timeout(GUARD, rx.recv()).await.unwrap();
            first_tx.send(first).unwrap();
            // Keep running until a's send has been acknowledged.
            crash_rx.await.unwrap();
            (b, rx)
        });
        drop(rt);
        drop((b, rx));
    });
    a.send("b", frame("before crash")).await.unwrap();
    crash_tx.send(()).unwrap();
    let first = first_rx.await.unwrap().unwrap();
    assert_eq!(text(&first), "before crash");
    let old = live(&a.slot("b").unwrap()).expect("a has a connection to b");
    crashed.join().unwrap();
    assert!(old.close_reason().is_none(), "a cannot know b crashed yet");

    let (_b2, mut b2_rx) = start_when_port_free(net.config("b")).await;
    a.send("b", frame("after restart")).await.unwrap();
    let inbound = recv(&mut b2_rx).await;
    assert_eq!(
        (inbound.from.as_str(), text(&inbound).as_str()),
        ("a", "after restart")
    );
    // The restarted node reset the old connection (same stateless-reset key)
    // instead of letting it linger until the idle timeout.
    assert_eq!(old.close_reason(), Some(ConnectionError::Reset));
}

/// The restart case of the reshare cluster test (a frame to a restarted peer lost):
/// `a` sends to `b` while `b` is down, so that send waits under loss-recovery
/// backoff on the connection to the dead incarnation. When `b` is back, the new
/// incarnation's stateless reset of `b`'s old connection to `a` tells `a` that `b`
/// restarted: `a` closes its outgoing connection too, and the send waiting on it is
/// retried on a fresh connection and delivered, instead of failing with the
/// connection `a` closed itself (before, that frame was lost).
#[tokio::test]
async fn a_send_waiting_on_a_restarted_peers_old_connection_is_delivered_to_the_new_one() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b"]);
    let mut a_cfg = net.config("a");
    // a's idle inbound connection from b pings often, so b's new incarnation resets it soon.
    a_cfg.keep_alive = Duration::from_millis(200);
    let (a, mut a_rx) = P2p::start(a_cfg).await.unwrap();

    let b_cfg = net.config("b");
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (b, rx) = rt.block_on(async {
            let (b, mut rx) = P2p::start(b_cfg).await.unwrap();
            // a connection in each direction
            b.send("a", frame("hello from b")).await.unwrap();
            tokio::time::timeout(GUARD, rx.recv()).await.unwrap();
            ready_tx.send(()).unwrap();
            crash_rx.await.unwrap();
            (b, rx)
        });
        drop(rt);
        drop((b, rx));
    });
    assert_eq!(text(&recv(&mut a_rx).await), "hello from b");
    a.send("b", frame("first")).await.unwrap();
    ready_rx.await.unwrap();
    crash_tx.send(()).unwrap();
    crashed.join().unwrap();

    // b is down: this send waits on the old connection.
    let a = Arc::new(a);
    let sender = a.clone();
    let in_flight = tokio::spawn(async move { sender.send("b", frame("in flight")).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!in_flight.is_finished(), "the send waits while b is down");

    let (_b2, mut b2_rx) = start_when_port_free(net.config("b")).await;
    logs.wait_for(&["peer restarted: closing the outgoing connection"])
        .await;
    tokio::time::timeout(GUARD, in_flight)
        .await
        .expect("the send ended")
        .unwrap()
        .expect("the send was retried on a fresh connection");
    let inbound = recv(&mut b2_rx).await;
    assert_eq!(
        (inbound.from.as_str(), text(&inbound).as_str()),
        ("a", "in flight")
    );
}

#[tokio::test]
async fn send_to_an_unreachable_peer_fails_and_succeeds_once_it_is_up() {
    let net = Net::new(&["a", "b"]);
    let (a, _a_rx) = net.start("a").await;
    let err = a.send("b", frame("nobody home")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connect { .. }), "{err}");
    let (_b, mut b_rx) = net.start("b").await;
    a.send("b", frame("now")).await.unwrap();
    assert_eq!(text(&recv(&mut b_rx).await), "now");
    assert!(b_rx.try_recv().is_err());
}

#[tokio::test]
async fn unknown_peers_and_shutdown_are_reported() {
    let net = Net::new(&["a", "b"]);
    let (a, mut a_rx) = net.start("a").await;
    assert_eq!(a.node_id(), "a");
    assert_eq!(a.local_addr().unwrap(), net.addr("a"));
    assert!(matches!(
        a.send("zed", frame("?")).await,
        Err(P2pError::UnknownPeer { peer }) if peer == "zed"
    ));
    a.shutdown().await;
    assert!(matches!(
        a.send("b", frame("late")).await,
        Err(P2pError::Shutdown)
    ));
    let results = a.broadcast(frame("late")).await;
    assert!(matches!(results.as_slice(), [(p, Err(P2pError::Shutdown))] if p == "b"));
    assert!(tokio::time::timeout(GUARD, a_rx.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn start_refuses_a_certificate_for_another_node_and_a_busy_port() {
    let net = Net::new(&["a", "b"]);
    let mut cfg = net.config("a");
    cfg.cert = net.ca.path().join("nodes/b/cert.pem");
    cfg.key = net.ca.path().join("nodes/b/key.pem");
    match P2p::start(cfg).await {
        Err(P2pError::Config(m)) => assert!(m.contains("for node \"b\""), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    // Key of another node than the certificate: rustls refuses.
    let mut cfg = net.config("a");
    cfg.key = net.ca.path().join("nodes/b/key.pem");
    assert!(P2p::start(cfg).await.is_err());

    let (_a, _rx) = net.start("a").await;
    assert!(matches!(
        P2p::start(net.config("a")).await,
        Err(P2pError::Bind { .. })
    ));
    let missing = Path::new("/nonexistent/ca.pem");
    let mut cfg = net.config("b");
    cfg.ca_cert = missing.to_path_buf();
    assert!(matches!(P2p::start(cfg).await, Err(P2pError::Ca(_))));
}

#[test]
fn install_crypto_provider_is_idempotent() {
    install_crypto_provider();
    install_crypto_provider();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}

#[tokio::test]
async fn a_newer_connection_from_the_same_peer_closes_the_oldest() {
    let net = Net::new(&["a", "b"]);
    let (a, mut a_rx) = net.start("a").await;
    // Wait for each connection to be registered so that their order is known.
    let registered = |n: usize| {
        let a = &a;
        async move {
            tokio::time::timeout(GUARD, async {
                while lock(&a.shared.incoming).get("b").map_or(0, |c| c.len()) < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("connection never registered")
        }
    };
    let (_ep1, first) = raw_client(&net, "b", "a").await;
    registered(1).await;
    let (_ep2, second) = raw_client(&net, "b", "a").await;
    registered(2).await;
    let (_ep3, third) = raw_client(&net, "b", "a").await;
    let reason = tokio::time::timeout(GUARD, first.closed()).await.unwrap();
    match reason {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(CLOSE_SUPERSEDED))
        }
        other => panic!("unexpected close {other}"),
    }
    for (name, conn) in [("second", &second), ("third", &third)] {
        let f = frame(name);
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&f.encode(DEFAULT_MAX_FRAME_BYTES).unwrap())
            .await
            .unwrap();
        s.finish().unwrap();
        assert_eq!(s.stopped().await.unwrap(), None);
        let inbound = recv(&mut a_rx).await;
        assert_eq!(
            (inbound.from.as_str(), text(&inbound)),
            ("b", name.to_owned())
        );
    }
    assert_eq!(a.connected_peers(), ["b"]);
}

#[test]
fn p2p_is_usable_from_spawned_tasks_on_a_multi_thread_runtime() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<P2p>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = Net::new(&["a", "b", "c"]);
        let (a, _a_rx) = net.start("a").await;
        let a = Arc::new(a);
        let (_b, mut b_rx) = net.start("b").await;
        let (_c, mut c_rx) = net.start("c").await;
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move {
                    let to = if i % 2 == 0 { "b" } else { "c" };
                    a.send(to, frame(&i.to_string())).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut got = BTreeSet::new();
        for _ in 0..10 {
            got.insert(text(&recv(&mut b_rx).await).parse::<u32>().unwrap());
            got.insert(text(&recv(&mut c_rx).await).parse::<u32>().unwrap());
        }
        assert_eq!(got, (0..20).collect());
    });
}

#[test]
fn identity_debug_redacts_the_private_key() {
    let net = Net::new(&["a"]);
    let cfg = net.config("a");
    let identity = tls::Identity::load(&cfg).unwrap();
    let shown = format!("{identity:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let key_der = identity.key.secret_der().to_vec();
    let hex_key = hex::encode(&key_der[key_der.len() - 16..]);
    assert!(!shown.contains(&hex_key));
    assert!(!shown.contains(&format!("{:?}", &key_der[..8])));
}

/// A node added to the live set of a running endpoint (`add_peer`) may connect and
/// be sent to at once; before, it was refused like any unknown identity. A rogue
/// claiming the added identity with a certificate of another CA stays refused.
#[tokio::test]
async fn a_peer_added_at_runtime_can_connect_and_be_sent_to() {
    let (logs, _guard) = Logs::install();
    let net = Net::new(&["a", "b"]);
    let newcomer = issue_node_cert(net.ca.path(), "c", 30).unwrap();
    let c_addr = addr(free_port());
    let c_cfg = P2pConfig::new(
        "c",
        c_addr,
        vec![PeerConfig {
            id: "a".into(),
            addr: net.addr("a"),
        }],
        net.ca.path().join("ca.pem"),
        newcomer.cert,
        newcomer.key,
    );
    let (a, mut a_rx) = net.start("a").await;
    let (c, mut c_rx) = P2p::start(c_cfg).await.unwrap();
    assert_eq!(a.peer_ids(), vec!["b".to_owned()]);
    assert!(matches!(
        a.send("c", frame("too early")).await,
        Err(P2pError::UnknownPeer { .. })
    ));
    let err = c.send("a", frame("let me in")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
    logs.wait_for(&["identity is not a configured peer", "identity=c"])
        .await;

    assert_eq!(a.add_peer("c", c_addr).unwrap(), PeerChange::Added);
    assert_eq!(a.add_peer("c", c_addr).unwrap(), PeerChange::Unchanged);
    assert_eq!(a.peer_ids(), vec!["b".to_owned(), "c".to_owned()]);
    // Refused: this node itself, a bad id, another peer's address.
    assert!(a.add_peer("a", addr(free_port())).is_err());
    assert!(a.add_peer("Not An Id", addr(free_port())).is_err());
    assert!(a.add_peer("d", net.addr("b")).is_err());

    c.send("a", frame("hello from c")).await.unwrap();
    let inbound = recv(&mut a_rx).await;
    assert_eq!(
        (inbound.from.as_str(), text(&inbound).as_str()),
        ("c", "hello from c")
    );
    a.send("c", frame("welcome")).await.unwrap();
    assert_eq!(text(&recv(&mut c_rx).await), "welcome");
    assert!(a.connected_peers().contains(&"c".to_owned()));
    let results = a.broadcast(frame("to all")).await;
    assert_eq!(
        results.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    drop(c);

    // A rogue with a foreign CA's certificate for "c" at c's address is refused.
    let foreign = tempfile::tempdir().unwrap();
    init_ca(foreign.path()).unwrap();
    let rogue_cert = issue_node_cert(foreign.path(), "c", 30).unwrap();
    let rogue_cfg = P2pConfig::new(
        "c",
        addr(free_port()),
        vec![PeerConfig {
            id: "a".into(),
            addr: net.addr("a"),
        }],
        net.ca.path().join("ca.pem"),
        rogue_cert.cert,
        rogue_cert.key,
    );
    let (rogue, _r) = P2p::start(rogue_cfg).await.unwrap();
    let err = rogue.send("a", frame("rogue")).await.unwrap_err();
    assert!(matches!(err, P2pError::Connection { .. }), "{err}");
}

/// A rolling upgrade (issue 21): a node of the release before batch frames offers
/// only wire level 1. Its connections with an upgraded node speak level 1 in both
/// directions, the upgraded node learns it from the connection itself, refuses to
/// send it a batch frame (that release would drop it unread) and still sends it the
/// kinds it knows; two upgraded nodes speak level 2 and exchange batch frames.
#[tokio::test]
async fn a_peer_of_the_older_wire_level_is_known_as_such_and_sent_no_batch_frame() {
    let net = Net::new(&["new1", "new2", "old"]);
    let (new1, _rx1) = net.start("new1").await;
    let (_new2, mut rx2) = net.start("new2").await;
    let mut old_cfg = net.config("old");
    old_cfg.wire_level = 1;
    let (old, mut rx_old) = P2p::start(old_cfg).await.unwrap();
    assert_eq!(new1.peer_wire_level("old"), None, "no connection yet");

    new1.send("old", frame("hello")).await.unwrap();
    assert_eq!(text(&recv(&mut rx_old).await), "hello");
    assert_eq!(new1.peer_wire_level("old"), Some(1));
    assert_eq!(
        old.peer_wire_level("new1"),
        Some(1),
        "learnt on the incoming side too"
    );

    let batch = Frame::new(
        Uuid::new_v4(),
        MessageKind::TX_PROPOSE_BATCH,
        b"{}".to_vec(),
    );
    match new1.send("old", batch.clone()).await {
        Err(P2pError::WireLevel {
            peer,
            kind,
            needed: 2,
            level: 1,
        }) => {
            assert_eq!(peer, "old");
            assert_eq!(kind, MessageKind::TX_PROPOSE_BATCH);
        }
        other => panic!("a batch frame to a level-1 peer: {other:?}"),
    }
    // The older node sends to an upgraded one at its own level too.
    assert!(matches!(
        old.send("new1", batch.clone()).await,
        Err(P2pError::WireLevel { level: 1, .. })
    ));

    new1.send("new2", batch.clone()).await.unwrap();
    let got = recv(&mut rx2).await;
    assert_eq!(got.frame.kind, MessageKind::TX_PROPOSE_BATCH);
    assert_eq!(new1.peer_wire_level("new2"), Some(WIRE_LEVEL));
    assert_eq!(WIRE_LEVEL, 2);

    new1.send("old", frame("still here")).await.unwrap();
    assert_eq!(text(&recv(&mut rx_old).await), "still here");
    assert!(
        rx_old.try_recv().is_err(),
        "the older node got a batch frame"
    );
}

#[test]
fn only_the_batch_kinds_need_wire_level_two_and_a_config_outside_the_levels_is_refused() {
    for kind in MessageKind::ALL {
        let batch = [MessageKind::TX_PROPOSE_BATCH, MessageKind::TX_VOTE_BATCH].contains(kind);
        assert_eq!(kind.wire_level(), if batch { 2 } else { 1 }, "{kind}");
        assert!(kind.wire_level() <= WIRE_LEVEL);
    }
    let net = Net::new(&["n1"]);
    for bad in [0, WIRE_LEVEL + 1] {
        let mut cfg = net.config("n1");
        cfg.wire_level = bad;
        assert!(
            matches!(cfg.validate(), Err(P2pError::Config(m)) if m.contains("wire level")),
            "level {bad}"
        );
    }
}
