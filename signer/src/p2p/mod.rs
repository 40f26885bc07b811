//! QUIC peer-to-peer transport between signer nodes.
//!
//! Every node runs one quinn endpoint that is both server and client. Connections
//! use mutual TLS 1.3 with the cluster CA as the only trust root; the identity of
//! the peer is the node id in its certificate (see [`crate::ca`]), never anything
//! the peer says in a message. A peer whose certificate comes from another CA, has
//! expired, or names a node that is not configured is refused, and the refusal is
//! logged with `tracing::warn!`.
//!
//! Each node sends over its own outgoing connection to a peer (dialed lazily,
//! redialed when it breaks) and receives over the connections peers dial to it.
//! Every [`Frame`] travels on its own unidirectional stream, length-limited on both
//! ends. A receiver that sees a bad or over-limit frame stops that stream (the
//! sender gets [`P2pError::Rejected`]), logs it, and keeps the connection.
//!
//! Delivery: `send` returns `Ok` once the peer's QUIC stack acknowledged the whole
//! frame. Frames sent one after another (each `send` awaited) to the same peer are
//! delivered in that order. A retry after a failure in the middle of a send can
//! deliver a frame twice; protocols must tolerate duplicates (e.g. by session and
//! round).

mod config;
mod frame;
pub mod json;
mod tls;

pub use config::{
    P2pConfig, PeerConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE, MAX_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
};
pub use frame::{
    Frame, FrameError, FrameHeader, MessageKind, DEFAULT_MAX_FRAME_BYTES, FRAME_MAGIC,
    FRAME_VERSION, HEADER_LEN,
};
pub use tls::{install_crypto_provider, verify_peer_certificate, ALPN, ALPN_V2, WIRE_LEVEL};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use quinn::{Connection, ConnectionError, RecvStream, VarInt};
use tokio::sync::{mpsc, Semaphore};

use crate::ca::{self, validate_node_id, CaError};

/// Connection close code: this node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0x00;
/// Connection close code: the peer's identity is not acceptable.
pub const CLOSE_REFUSED_IDENTITY: u32 = 0x10;
/// Connection close code: the connection stopped acknowledging data.
pub const CLOSE_UNRESPONSIVE: u32 = 0x11;
/// Connection close code: a newer connection from the same peer replaced this one.
pub const CLOSE_SUPERSEDED: u32 = 0x12;
/// Stream stop code: the frame exceeds the receiver's size limit.
pub const STOP_FRAME_TOO_LARGE: u32 = 0x20;
/// Stream stop code: the frame is malformed (magic, version, length mismatch).
pub const STOP_FRAME_MALFORMED: u32 = 0x21;
/// Stream stop code: the frame was not completed in time.
pub const STOP_FRAME_TIMEOUT: u32 = 0x22;

/// Capacity of the inbound channel returned by [`P2p::start`].
pub const INBOUND_CHANNEL_CAPACITY: usize = 256;
/// Incoming connections kept per peer; a newer one closes the oldest. A peer only
/// dials again when it gave up on its previous connection, so older ones are stale.
const MAX_INCOMING_PER_PEER: usize = 2;
/// How many times `send` tries before giving up.
const MAX_SEND_ATTEMPTS: u32 = 4;
/// First retry delay; doubles per attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Time for a frame to be fully acknowledged by the peer before the connection
/// is considered broken.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a peer to deliver a whole frame once its stream is open.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Incoming handshakes processed at once; more are refused.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Initial buffer for a payload; it grows as data arrives, up to the declared length.
const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// Errors of the P2P layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// The configuration is invalid.
    #[error("invalid p2p configuration: {0}")]
    Config(String),
    /// Certificate or key files could not be loaded.
    #[error("p2p certificates: {0}")]
    Ca(#[from] CaError),
    /// rustls rejected the configuration (e.g. key and certificate do not match).
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind quic endpoint on {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer is not in the configuration.
    #[error("unknown peer {peer:?}")]
    UnknownPeer {
        /// The requested peer id.
        peer: String,
    },
    /// The frame cannot be sent (too large, wrong version).
    #[error("frame refused locally: {0}")]
    Frame(#[from] FrameError),
    /// A connection to the peer could not be started or timed out.
    #[error("cannot connect to peer {peer}: {reason}")]
    Connect {
        /// The peer id.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer's certificate names another node than the one dialed.
    #[error("peer at the address of {peer} presented identity {found:?}")]
    IdentityMismatch {
        /// The peer id dialed.
        peer: String,
        /// The identity found (or why none was found).
        found: String,
    },
    /// The connection failed or was closed (by the peer, TLS, or a timeout).
    #[error("connection to peer {peer} failed: {source}")]
    Connection {
        /// The peer id.
        peer: String,
        /// The quinn error.
        #[source]
        source: ConnectionError,
    },
    /// The peer refused the frame by stopping its stream.
    #[error("peer {peer} refused the frame (stream stopped with code {code:#x})")]
    Rejected {
        /// The peer id.
        peer: String,
        /// The stop code, one of the `STOP_*` constants for a signer peer.
        code: u64,
    },
    /// The peer did not acknowledge the frame in time.
    #[error("peer {peer} did not acknowledge the frame in time")]
    Timeout {
        /// The peer id.
        peer: String,
    },
    /// The peer's connection speaks a lower wire level than the frame's kind needs
    /// (the peer runs an older release, which would drop the frame unread).
    #[error("peer {peer} speaks wire level {level}; frames of kind {kind} need {needed}")]
    WireLevel {
        /// The peer id.
        peer: String,
        /// The frame's kind.
        kind: MessageKind,
        /// The level the kind needs.
        needed: u8,
        /// The level of the connection to the peer.
        level: u8,
    },
    /// [`P2p::shutdown`] was called.
    #[error("p2p endpoint is shut down")]
    Shutdown,
}

impl P2pError {
    /// Whether another attempt on a fresh connection may succeed.
    fn is_retryable(&self) -> bool {
        match self {
            P2pError::Timeout { .. } => true,
            P2pError::Connection { source, .. } => match source {
                ConnectionError::ApplicationClosed(c) => {
                    c.error_code != VarInt::from_u32(CLOSE_REFUSED_IDENTITY)
                }
                ConnectionError::ConnectionClosed(c) => !is_crypto_code(c.error_code.into()),
                ConnectionError::TransportError(e) => !is_crypto_code(e.code.into()),
                ConnectionError::Reset | ConnectionError::TimedOut => true,
                // Closed by this node because it stopped trusting the connection
                // (another send on it failed, or the peer restarted): the frame may
                // never have left, so it goes again on a fresh connection. At shutdown
                // the send loop stops first ([`P2pError::Shutdown`]).
                ConnectionError::LocallyClosed => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100-0x1ff.
fn is_crypto_code(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// A frame received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Node id of the sender, taken from its verified certificate.
    pub from: String,
    /// The frame.
    pub frame: Frame,
}

/// The outgoing side towards one peer.
#[derive(Debug)]
struct PeerSlot {
    addr: SocketAddr,
    /// Serializes dialing so that concurrent senders share one connection.
    dial: tokio::sync::Mutex<()>,
    conn: Mutex<Option<Connection>>,
    /// Value of [`Shared::events`] when `conn` was dialed.
    dialed: AtomicU64,
}

/// State shared with the background tasks.
#[derive(Debug)]
struct Shared {
    node_id: String,
    endpoint: quinn::Endpoint,
    max_frame_bytes: usize,
    closed: AtomicBool,
    /// Live incoming connections, per peer id, by arrival sequence number.
    incoming: Mutex<HashMap<String, BTreeMap<u64, Connection>>>,
    /// Orders connection events: the sequence number of an incoming connection, or
    /// of a dial ([`PeerSlot::dialed`]).
    events: AtomicU64,
    handshakes: Arc<Semaphore>,
    /// Configured peers by their QUIC address (an incoming connection comes from
    /// the peer's one endpoint, so a refused handshake is put on its peer).
    peer_addrs: RwLock<HashMap<SocketAddr, String>>,
    /// The live peer set: only these identities may connect, and only these can be
    /// sent to. Starts as the configured peers; [`P2p::add_peer`] extends it.
    peers: RwLock<BTreeMap<String, Arc<PeerSlot>>>,
    /// Why the last connection with a peer failed (dialed or incoming), until one
    /// succeeds; shown in the cluster status.
    peer_errors: Mutex<BTreeMap<String, String>>,
    /// The wire level of the latest connection with each peer, in either direction.
    levels: Mutex<HashMap<String, u8>>,
    /// This node's own wire level ([`P2pConfig::wire_level`]).
    wire_level: u8,
}

impl Shared {
    fn peer_failed(&self, peer: &str, reason: String) {
        lock(&self.peer_errors).insert(peer.to_owned(), reason);
    }

    fn peer_ok(&self, peer: &str) {
        lock(&self.peer_errors).remove(peer);
    }

    fn note_level(&self, peer: &str, conn: &Connection) {
        let level = conn_level(conn);
        let before = lock(&self.levels).insert(peer.to_owned(), level);
        if before != Some(level) {
            tracing::info!(peer, level, "peer speaks wire level {level}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// What [`P2p::add_peer`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// The peer was not known: it may connect and be sent to from now on.
    Added,
    /// The peer was known with another address: later dials use the new one.
    AddressChanged,
    /// The peer was already known with this address: nothing changed.
    Unchanged,
}

impl PeerSlot {
    fn new(addr: SocketAddr) -> Arc<PeerSlot> {
        Arc::new(PeerSlot {
            addr,
            dial: tokio::sync::Mutex::new(()),
            conn: Mutex::new(None),
            dialed: AtomicU64::new(0),
        })
    }
}

/// A running P2P endpoint. Dropping it closes the endpoint.
#[derive(Debug)]
pub struct P2p {
    shared: Arc<Shared>,
}

impl P2p {
    /// Loads certificates, binds the endpoint on `cfg.listen` and starts accepting
    /// peer connections. Frames received from peers arrive on the returned channel.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(cfg: P2pConfig) -> Result<(P2p, mpsc::Receiver<Inbound>), P2pError> {
        cfg.validate()?;
        let identity = tls::Identity::load(&cfg)?;
        if let Err(reason) = identity.self_check() {
            tracing::warn!(
                node_id = %cfg.node_id,
                cert = %cfg.cert.display(),
                %reason,
                "own certificate does not verify against the cluster ca; peers will refuse this node"
            );
        }
        let transport = tls::transport(&cfg)?;
        let server = tls::server_config(&identity, transport.clone(), cfg.wire_level)?;
        let client = tls::client_config(&identity, transport, cfg.wire_level)?;
        let endpoint_config = identity.endpoint_config();

        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(|source| P2pError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| P2pError::Config("no async runtime found".into()))?;
        let mut endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(|source| P2pError::Bind {
                addr: cfg.listen,
                source,
            })?;
        endpoint.set_default_client_config(client);

        let shared = Arc::new(Shared {
            node_id: cfg.node_id.clone(),
            endpoint,
            max_frame_bytes: cfg.max_frame_bytes,
            closed: AtomicBool::new(false),
            incoming: Mutex::new(HashMap::new()),
            events: AtomicU64::new(1),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            peer_addrs: RwLock::new(cfg.peers.iter().map(|p| (p.addr, p.id.clone())).collect()),
            peers: RwLock::new(
                cfg.peers
                    .iter()
                    .map(|p| (p.id.clone(), PeerSlot::new(p.addr)))
                    .collect(),
            ),
            peer_errors: Mutex::new(BTreeMap::new()),
            levels: Mutex::new(HashMap::new()),
            wire_level: cfg.wire_level,
        });

        let (tx, rx) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
        tokio::spawn(accept_loop(shared.clone(), tx));
        tracing::info!(
            node_id = %cfg.node_id,
            listen = %cfg.listen,
            peers = cfg.peers.len(),
            "p2p endpoint started"
        );
        Ok((P2p { shared }, rx))
    }

    /// Adds `id` at `addr` to the live peer set (or changes its address), without
    /// restarting the endpoint: from now on it may connect (its certificate must
    /// still chain to the cluster CA and carry this identity) and be sent to.
    /// Peers are never removed while the node runs.
    pub fn add_peer(&self, id: &str, addr: SocketAddr) -> Result<PeerChange, P2pError> {
        if validate_node_id(id).is_err() {
            return Err(P2pError::Config(format!("invalid peer id {id:?}")));
        }
        if id == self.shared.node_id {
            return Err(P2pError::Config(format!("{id:?} is this node")));
        }
        let mut peers = write(&self.shared.peers);
        let mut addrs = write(&self.shared.peer_addrs);
        if let Some(other) = addrs.get(&addr).filter(|o| o.as_str() != id) {
            return Err(P2pError::Config(format!(
                "address {addr} is already peer {other:?}'s"
            )));
        }
        let change = match peers.get(id) {
            Some(slot) if slot.addr == addr => return Ok(PeerChange::Unchanged),
            Some(slot) => {
                addrs.remove(&slot.addr);
                if let Some(c) = lock(&slot.conn).take() {
                    c.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer address changed");
                }
                PeerChange::AddressChanged
            }
            None => PeerChange::Added,
        };
        peers.insert(id.to_owned(), PeerSlot::new(addr));
        addrs.insert(addr, id.to_owned());
        drop((peers, addrs));
        tracing::info!(node_id = %self.shared.node_id, peer = id, %addr, ?change, "peer set changed");
        Ok(change)
    }

    /// The live peers with their QUIC addresses, sorted by id.
    pub fn peers(&self) -> Vec<(String, SocketAddr)> {
        read(&self.shared.peers)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.addr))
            .collect()
    }

    fn slot(&self, peer: &str) -> Option<Arc<PeerSlot>> {
        read(&self.shared.peers).get(peer).cloned()
    }

    fn slots(&self) -> Vec<(String, Arc<PeerSlot>)> {
        read(&self.shared.peers)
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Ids of the live peer set (configured and added), sorted.
    pub fn peer_ids(&self) -> Vec<String> {
        read(&self.shared.peers).keys().cloned().collect()
    }

    /// Peers with a live connection in either direction, sorted.
    pub fn connected_peers(&self) -> Vec<String> {
        let slots = self.slots();
        let incoming = lock(&self.shared.incoming);
        slots
            .iter()
            .filter(|(id, slot)| {
                let out = lock(&slot.conn)
                    .as_ref()
                    .is_some_and(|c| c.close_reason().is_none());
                out || incoming
                    .get(id.as_str())
                    .is_some_and(|conns| conns.values().any(|c| c.close_reason().is_none()))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sends `frame` to `peer`, dialing or redialing as needed.
    ///
    /// Returns once the peer acknowledged the whole frame. Retries on a fresh
    /// connection (up to 4 attempts, exponential backoff from 100 ms) when the
    /// connection breaks; does not retry when the peer refuses this node's
    /// certificate or the frame, or cannot be reached within the handshake timeout.
    ///
    /// A frame whose kind needs a higher wire level than the connection to `peer`
    /// speaks ([`MessageKind::wire_level`]) is not sent: [`P2pError::WireLevel`].
    pub async fn send(&self, peer: &str, frame: Frame) -> Result<(), P2pError> {
        let bytes = frame.encode(self.shared.max_frame_bytes)?;
        self.send_encoded(peer, frame.kind, bytes).await
    }

    /// The highest wire level this node speaks ([`P2pConfig::wire_level`]).
    pub fn wire_level(&self) -> u8 {
        self.shared.wire_level
    }

    /// The wire level `peer` speaks, from the latest connection with it in either
    /// direction; `None` before the first. An upgraded node proposes in batches only
    /// to peers that speak them.
    pub fn peer_wire_level(&self, peer: &str) -> Option<u8> {
        lock(&self.shared.levels).get(peer).copied()
    }

    /// Sends `frame` to every peer of the live set concurrently; one result per peer,
    /// sorted by peer id.
    pub async fn broadcast(&self, frame: Frame) -> Vec<(String, Result<(), P2pError>)> {
        let ids = self.peer_ids();
        let kind = frame.kind;
        let bytes = match frame.encode(self.shared.max_frame_bytes) {
            Ok(b) => b,
            Err(e) => {
                return ids
                    .into_iter()
                    .map(|p| (p, Err(P2pError::Frame(e.clone()))))
                    .collect()
            }
        };
        futures::future::join_all(ids.iter().map(|p| {
            let bytes = bytes.clone();
            async move { (p.clone(), self.send_encoded(p, kind, bytes).await) }
        }))
        .await
    }

    /// Closes all connections and the endpoint. Later sends fail with
    /// [`P2pError::Shutdown`]; the inbound channel ends once the connection
    /// tasks have stopped.
    pub async fn shutdown(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        // Let the close frames go out; bounded in case a peer misbehaves.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
        tracing::info!(node_id = %self.shared.node_id, "p2p endpoint shut down");
    }

    async fn send_encoded(
        &self,
        peer: &str,
        kind: MessageKind,
        bytes: Bytes,
    ) -> Result<(), P2pError> {
        let slot = self.slot(peer).ok_or_else(|| P2pError::UnknownPeer {
            peer: peer.to_owned(),
        })?;
        let slot = &*slot;
        let mut attempt = 0;
        loop {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(P2pError::Shutdown);
            }
            let result = match self.connection(peer, slot).await {
                Ok(conn) => {
                    // Every connection speaks level 1: only the later kinds read the
                    // connection's level (an allocation per call), once.
                    let needed = kind.wire_level();
                    if needed > 1 {
                        let level = conn_level(&conn);
                        if level < needed {
                            return Err(P2pError::WireLevel {
                                peer: peer.to_owned(),
                                kind,
                                needed,
                                level,
                            });
                        }
                    }
                    let r = send_on(&conn, peer, bytes.clone()).await;
                    if let Err(e) = &r {
                        if !matches!(e, P2pError::Rejected { .. }) {
                            forget(slot, &conn, e);
                        }
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt + 1 < MAX_SEND_ATTEMPTS => {
                    let delay = RETRY_BACKOFF * 2u32.pow(attempt);
                    tracing::debug!(peer, attempt, error = %e, ?delay, "send failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, "send to peer failed");
                    return Err(e);
                }
            }
        }
    }

    /// The live outgoing connection to `peer`, dialed if needed.
    async fn connection(&self, peer: &str, slot: &PeerSlot) -> Result<Connection, P2pError> {
        if let Some(c) = live(slot) {
            return Ok(c);
        }
        let _dialing = slot.dial.lock().await;
        if let Some(c) = live(slot) {
            return Ok(c);
        }
        let conn = self.dial(peer, slot.addr).await?;
        slot.dialed.store(
            self.shared.events.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        *lock(&slot.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// Why the last connection with each peer failed, for peers whose last attempt
    /// failed (e.g. `invalid peer certificate: Expired`).
    pub fn peer_errors(&self) -> BTreeMap<String, String> {
        lock(&self.shared.peer_errors).clone()
    }

    async fn dial(&self, peer: &str, addr: SocketAddr) -> Result<Connection, P2pError> {
        let r = self.dial_inner(peer, addr).await;
        match &r {
            Ok(_) => self.shared.peer_ok(peer),
            Err(P2pError::Shutdown) => {}
            Err(e) => self.shared.peer_failed(peer, format!("outgoing: {e}")),
        }
        r
    }

    async fn dial_inner(&self, peer: &str, addr: SocketAddr) -> Result<Connection, P2pError> {
        let server_name = ca::identity_dns_name(peer)?;
        let connecting = self
            .shared
            .endpoint
            .connect(addr, &server_name)
            .map_err(|e| {
                if matches!(e, quinn::ConnectError::EndpointStopping) {
                    P2pError::Shutdown
                } else {
                    P2pError::Connect {
                        peer: peer.to_owned(),
                        reason: e.to_string(),
                    }
                }
            })?;
        let conn = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) => {
                tracing::warn!(peer, %addr, "connection to peer timed out");
                return Err(P2pError::Connect {
                    peer: peer.to_owned(),
                    reason: format!("no handshake within {:?}", tls::HANDSHAKE_TIMEOUT),
                });
            }
            Ok(Err(source)) => {
                tracing::warn!(peer, %addr, error = %source, "connection to peer failed");
                return Err(P2pError::Connection {
                    peer: peer.to_owned(),
                    source,
                });
            }
            Ok(Ok(c)) => c,
        };
        // rustls already checked the server name; check the extracted identity too.
        match peer_identity(&conn) {
            Ok(found) if found == peer => {}
            Ok(found) | Err(found) => {
                conn.close(
                    VarInt::from_u32(CLOSE_REFUSED_IDENTITY),
                    b"identity mismatch",
                );
                tracing::warn!(peer, %addr, found = %found, "refused peer: identity mismatch");
                return Err(P2pError::IdentityMismatch {
                    peer: peer.to_owned(),
                    found,
                });
            }
        }
        tracing::info!(peer, %addr, "connected to peer");
        self.shared.note_level(peer, &conn);
        Ok(conn)
    }
}

impl Drop for P2p {
    fn drop(&mut self) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.shared
                .endpoint
                .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
    }
}

fn live(slot: &PeerSlot) -> Option<Connection> {
    lock(&slot.conn)
        .as_ref()
        .filter(|c| c.close_reason().is_none())
        .cloned()
}

/// Drops `conn` from the slot after a failure, closing it if it is still open.
fn forget(slot: &PeerSlot, conn: &Connection, error: &P2pError) {
    let mut guard = lock(&slot.conn);
    if guard
        .as_ref()
        .is_some_and(|c| c.stable_id() == conn.stable_id())
    {
        *guard = None;
    }
    drop(guard);
    if conn.close_reason().is_none() {
        tracing::debug!(error = %error, "closing unresponsive connection");
        conn.close(VarInt::from_u32(CLOSE_UNRESPONSIVE), b"unresponsive");
    }
}

/// Sends one encoded frame on its own uni-stream and waits for the acknowledgement.
async fn send_on(conn: &Connection, peer: &str, bytes: Bytes) -> Result<(), P2pError> {
    let conn_err = |source: ConnectionError| P2pError::Connection {
        peer: peer.to_owned(),
        source,
    };
    let attempt = async {
        let mut stream = conn.open_uni().await.map_err(conn_err)?;
        stream.write_chunk(bytes).await.map_err(|e| match e {
            quinn::WriteError::Stopped(code) => P2pError::Rejected {
                peer: peer.to_owned(),
                code: code.into_inner(),
            },
            quinn::WriteError::ConnectionLost(e) => conn_err(e),
            other => P2pError::Connect {
                peer: peer.to_owned(),
                reason: other.to_string(),
            },
        })?;
        // Cannot fail: the stream was neither finished nor reset.
        let _ = stream.finish();
        match stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(P2pError::Rejected {
                peer: peer.to_owned(),
                code: code.into_inner(),
            }),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(conn_err(e)),
            Err(other) => Err(P2pError::Connect {
                peer: peer.to_owned(),
                reason: other.to_string(),
            }),
        }
    };
    tokio::time::timeout(SEND_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(P2pError::Timeout {
                peer: peer.to_owned(),
            })
        })
}

/// The wire level a connection speaks: the one its ALPN id names (both ends offer
/// every level up to their own, so it is the lower of the two).
fn conn_level(conn: &Connection) -> u8 {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .and_then(|alpn| tls::level_of(&alpn))
        .unwrap_or(1)
}

/// The node id in the verified certificate of the connection's peer.
fn peer_identity(conn: &Connection) -> Result<String, String> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| "no peer certificate".to_owned())?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type".to_owned())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "empty certificate chain".to_owned())?;
    ca::node_identity_from_cert(leaf).map_err(|e| e.to_string())
}

async fn accept_loop(shared: Arc<Shared>, tx: mpsc::Sender<Inbound>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "refused incoming connection: too many pending handshakes");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let conn = handshake(incoming, remote).await;
            drop(permit);
            if let Err(reason) = &conn {
                let peer = read(&shared.peer_addrs).get(&remote).cloned();
                if let Some(peer) = peer {
                    shared.peer_failed(&peer, format!("incoming: {reason}"));
                }
            }
            let conn = conn.ok();
            if let Some(conn) = conn {
                serve_connection(shared, conn, remote, tx).await;
            }
        });
    }
    tracing::debug!("p2p accept loop ended");
}

/// Completes an incoming handshake; logs and returns why on failure.
async fn handshake(incoming: quinn::Incoming, remote: SocketAddr) -> Result<Connection, String> {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%remote, %error, "refused incoming connection");
            return Err(error.to_string());
        }
    };
    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => {
            tracing::warn!(%remote, %error, "refused incoming connection: handshake failed");
            Err(error.to_string())
        }
        Err(_) => {
            tracing::warn!(%remote, "refused incoming connection: handshake timed out");
            Err("handshake timed out".to_owned())
        }
    }
}

/// Authenticates an incoming connection and delivers its frames until it closes.
async fn serve_connection(
    shared: Arc<Shared>,
    conn: Connection,
    remote: SocketAddr,
    tx: mpsc::Sender<Inbound>,
) {
    let peer = match peer_identity(&conn) {
        Ok(id) if read(&shared.peers).contains_key(&id) => id,
        Ok(id) => {
            conn.close(
                VarInt::from_u32(CLOSE_REFUSED_IDENTITY),
                b"unknown identity",
            );
            tracing::warn!(%remote, identity = %id, "refused peer connection: identity is not a configured peer");
            return;
        }
        Err(reason) => {
            conn.close(VarInt::from_u32(CLOSE_REFUSED_IDENTITY), b"bad identity");
            tracing::warn!(%remote, %reason, "refused peer connection: no valid identity");
            return;
        }
    };
    shared.peer_ok(&peer);
    shared.note_level(&peer, &conn);
    let seq = shared.events.fetch_add(1, Ordering::Relaxed);
    let superseded = {
        let mut incoming = lock(&shared.incoming);
        let conns = incoming.entry(peer.clone()).or_default();
        conns.insert(seq, conn.clone());
        let mut old = Vec::new();
        while conns.len() > MAX_INCOMING_PER_PEER {
            old.extend(conns.pop_first().map(|(_, c)| c));
        }
        old
    };
    for old in superseded {
        tracing::info!(peer = %peer, remote = %old.remote_address(), "closing superseded peer connection");
        old.close(VarInt::from_u32(CLOSE_SUPERSEDED), b"superseded");
    }
    tracing::info!(peer = %peer, %remote, "accepted peer connection");

    let reason = receive_frames(&shared, &conn, &peer, remote, &tx).await;

    let mut incoming = lock(&shared.incoming);
    if let Some(conns) = incoming.get_mut(&peer) {
        conns.remove(&seq);
        if conns.is_empty() {
            incoming.remove(&peer);
        }
    }
    drop(incoming);
    tracing::info!(peer = %peer, %remote, %reason, "peer connection closed");
    if matches!(reason, ConnectionError::Reset) {
        retire_outgoing_after_restart(&shared, &peer, seq);
    }
}

/// `peer` reset its connection to this node with a stateless reset: a new incarnation
/// (restarted on the same address with the same key) no longer knows the connection.
/// This node's outgoing connection to it most likely points at the old incarnation
/// too; frames sent there would wait, under loss-recovery backoff, for a reset of
/// their own or for the idle timeout. Closing it makes the next send dial the new
/// incarnation, and sends in flight on it are retried there.
///
/// The new incarnation dials this node when it starts: an outgoing connection dialed
/// after the first incoming one that followed the reset one (`reset_seq`) already
/// reaches it and is kept.
fn retire_outgoing_after_restart(shared: &Shared, peer: &str, reset_seq: u64) {
    let Some(slot) = read(&shared.peers).get(peer).cloned() else {
        return;
    };
    let restarted_before = lock(&shared.incoming)
        .get(peer)
        .and_then(|conns| conns.range(reset_seq + 1..).next().map(|(s, _)| *s))
        .unwrap_or_else(|| shared.events.load(Ordering::Relaxed));
    let mut guard = lock(&slot.conn);
    if slot.dialed.load(Ordering::Relaxed) >= restarted_before {
        return;
    }
    let old = guard.take();
    drop(guard);
    if let Some(old) = old.filter(|c| c.close_reason().is_none()) {
        tracing::info!(
            peer,
            "peer restarted: closing the outgoing connection to its previous incarnation"
        );
        old.close(VarInt::from_u32(CLOSE_UNRESPONSIVE), b"peer restarted");
    }
}

/// Reads frames from the connection's uni-streams, several at a time, and delivers
/// them in stream order. Returns why the connection ended.
async fn receive_frames(
    shared: &Shared,
    conn: &Connection,
    peer: &str,
    remote: SocketAddr,
    tx: &mpsc::Sender<Inbound>,
) -> ConnectionError {
    let max = shared.max_frame_bytes;
    let mut pending = FuturesOrdered::new();
    let mut receiver_gone = false;
    loop {
        tokio::select! {
            Some(result) = pending.next(), if !pending.is_empty() => match result {
                Ok(frame) => {
                    let frame: Frame = frame;
                    if frame.kind.wire_level() > shared.wire_level {
                        // Only when playing an older release (tests): it drops kinds
                        // it does not know.
                        tracing::warn!(peer, kind = %frame.kind, "frame above this node's wire level; dropped");
                        continue;
                    }
                    let inbound = Inbound { from: peer.to_owned(), frame };
                    if tx.send(inbound).await.is_err() && !receiver_gone {
                        receiver_gone = true;
                        tracing::debug!(peer, "inbound receiver dropped; discarding frames");
                    }
                }
                Err(refusal) => Refusal::log(&refusal, peer, remote),
            },
            accepted = conn.accept_uni(), if pending.len() < tls::MAX_CONCURRENT_FRAMES as usize => {
                match accepted {
                    Ok(stream) => pending.push_back(read_frame(stream, max)),
                    Err(e) => return e,
                }
            }
        }
    }
}

/// Why an incoming frame was not delivered.
#[derive(Debug)]
enum Refusal {
    /// The peer sent something unacceptable; the stream was stopped.
    Refused(String),
    /// The stream or connection broke (reset by the peer, connection lost).
    Broken(String),
}

impl Refusal {
    fn log(&self, peer: &str, remote: SocketAddr) {
        match self {
            Refusal::Refused(reason) => {
                tracing::warn!(peer, %remote, %reason, "refused frame from peer")
            }
            Refusal::Broken(reason) => {
                tracing::debug!(peer, %remote, %reason, "incomplete frame from peer")
            }
        }
    }
}

/// Reads one frame from a stream, stopping the stream if the frame is refused.
async fn read_frame(mut stream: RecvStream, max: usize) -> Result<Frame, Refusal> {
    let result =
        match tokio::time::timeout(FRAME_READ_TIMEOUT, read_frame_inner(&mut stream, max)).await {
            Ok(r) => r,
            Err(_) => Err((
                Some(STOP_FRAME_TIMEOUT),
                Refusal::Refused(format!("frame not completed within {FRAME_READ_TIMEOUT:?}")),
            )),
        };
    result.map_err(|(stop, refusal)| {
        if let Some(code) = stop {
            // Fails only if the stream is already closed, which is fine.
            let _ = stream.stop(VarInt::from_u32(code));
        }
        refusal
    })
}

type ReadError = (Option<u32>, Refusal);

async fn read_frame_inner(stream: &mut RecvStream, max: usize) -> Result<Frame, ReadError> {
    let broken = |e: quinn::ReadError| (None, Refusal::Broken(e.to_string()));
    let mut hdr = [0u8; HEADER_LEN];
    stream.read_exact(&mut hdr).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => (
            Some(STOP_FRAME_MALFORMED),
            Refusal::Refused(format!("stream ended after {n} header bytes")),
        ),
        quinn::ReadExactError::ReadError(e) => broken(e),
    })?;
    let header = FrameHeader::decode(&hdr, max).map_err(|e| {
        let code = match e {
            FrameError::TooLarge { .. } => STOP_FRAME_TOO_LARGE,
            _ => STOP_FRAME_MALFORMED,
        };
        (Some(code), Refusal::Refused(e.to_string()))
    })?;
    let mut payload = BytesMut::with_capacity(header.payload_len.min(INITIAL_PAYLOAD_CAPACITY));
    while payload.len() < header.payload_len {
        match stream
            .read_chunk(header.payload_len - payload.len(), true)
            .await
            .map_err(broken)?
        {
            Some(chunk) => payload.extend_from_slice(&chunk.bytes),
            None => {
                let e = FrameError::LengthMismatch {
                    declared: header.payload_len,
                    actual: payload.len(),
                };
                return Err((Some(STOP_FRAME_MALFORMED), Refusal::Refused(e.to_string())));
            }
        }
    }
    if stream.read_chunk(1, true).await.map_err(broken)?.is_some() {
        return Err((
            Some(STOP_FRAME_MALFORMED),
            Refusal::Refused(format!(
                "stream continues past the declared payload of {} bytes",
                header.payload_len
            )),
        ));
    }
    Ok(Frame::from_parts(header, payload.freeze()))
}

#[cfg(test)]
mod tests;
