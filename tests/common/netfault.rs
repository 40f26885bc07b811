//! Programmable network faults between the node processes of a test cluster
//! (issue 17): one UDP relay per directed node pair. Node `i` reaches peer `j`
//! through relay `R(i,j)`, which forwards to `j`'s real QUIC address from its own
//! upstream socket and relays `j`'s answers back; every datagram of the link, in
//! either direction, can be dropped (probability), delayed (delay + uniform jitter,
//! which also reorders) or blocked (partition), and healed at run time.
//!
//! Peers are authenticated by their certificates, never by their source address
//! (the node only uses a configured peer address to name the peer of a refused
//! incoming handshake in its status), so a peer coming in from a relay port is
//! accepted as itself. [`NetFaults::install`] rewrites every node's
//! `[[p2p.peers]] addr` to its relay and restarts the nodes.
#![allow(clippy::unwrap_used)] // test harness: a failed step must fail the test loudly

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::Cluster;

/// What a link does to its datagrams (both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    /// Every datagram is dropped (a partition).
    pub blocked: bool,
    /// Probability in [0, 1] that a datagram is dropped.
    pub drop: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform jitter: each datagram is delayed by `delay ± jitter`.
    pub jitter: Duration,
}

impl LinkFault {
    /// A healthy link.
    pub const HEALTHY: LinkFault = LinkFault {
        blocked: false,
        drop: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
    /// A cut link.
    pub const BLOCKED: LinkFault = LinkFault {
        blocked: true,
        drop: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

/// Counters of one relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    /// Datagrams forwarded (both directions).
    pub forwarded: u64,
    /// Datagrams dropped (blocked or by chance).
    pub dropped: u64,
}

type Shared = Arc<Mutex<(LinkFault, LinkStats)>>;

/// The relays of a cluster. Dropping it stops them.
pub struct NetFaults {
    rt: Option<tokio::runtime::Runtime>,
    links: HashMap<(usize, usize), Shared>,
    nodes: usize,
}

impl std::fmt::Debug for NetFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetFaults")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl NetFaults {
    /// Starts a relay per directed pair of the cluster's nodes, points every node's
    /// peers at them and restarts every node (SIGKILL, then `node start`), so that
    /// all peer traffic goes through the relays from then on.
    pub fn install(c: &Cluster) -> NetFaults {
        Self::install_with_env(c, &[])
    }

    /// [`NetFaults::install`], restarting the nodes with extra environment (config
    /// overrides such as `SIGNER__WALLET__VOTE_TIMEOUT_SECS`).
    pub fn install_with_env(c: &Cluster, env: &[(&str, &str)]) -> NetFaults {
        let n = c.file.nodes.len();
        // The relays run on their own runtime: a test blocking its own worker
        // threads (process restarts, sleeps) never stalls the network.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("netfault")
            .build()
            .unwrap();
        let mut links = HashMap::new();
        let mut relay_addr = HashMap::new();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let target: SocketAddr = c.node(j).quic_addr.parse().unwrap();
                let shared: Shared = Arc::default();
                let listen = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                listen.set_nonblocking(true).unwrap();
                relay_addr.insert((i, j), listen.local_addr().unwrap());
                let link = shared.clone();
                rt.spawn(async move {
                    relay(UdpSocket::from_std(listen).unwrap(), target, link).await;
                });
                links.insert((i, j), shared);
            }
        }
        for i in 0..n {
            let cfg = &c.node(i).config;
            let mut text = std::fs::read_to_string(cfg).unwrap();
            for j in (0..n).filter(|j| *j != i) {
                let from = format!("addr = \"{}\"", c.node(j).quic_addr);
                assert!(
                    text.contains(&from),
                    "{} has no peer line {from}",
                    cfg.display()
                );
                text = text.replace(&from, &format!("addr = \"{}\"", relay_addr[&(i, j)]));
            }
            std::fs::write(cfg, text).unwrap();
        }
        for i in 0..n {
            c.kill_node(i);
        }
        for i in 0..n {
            c.restart_node_with_env(i, env);
        }
        NetFaults {
            rt: Some(rt),
            links,
            nodes: n,
        }
    }

    /// Sets the link between nodes `a` and `b` (both relays, both directions).
    pub fn set_link(&self, a: usize, b: usize, fault: LinkFault) {
        for k in [(a, b), (b, a)] {
            self.links[&k].lock().unwrap().0 = fault;
        }
    }

    /// Sets every link.
    pub fn set_all(&self, fault: LinkFault) {
        for l in self.links.values() {
            l.lock().unwrap().0 = fault;
        }
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`; links
    /// inside each side are left as they are.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                self.set_link(a, b, LinkFault::BLOCKED);
            }
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        self.set_all(LinkFault::HEALTHY);
    }

    /// Counters of the link between `a` and `b` (both relays).
    pub fn stats(&self, a: usize, b: usize) -> LinkStats {
        let mut s = LinkStats::default();
        for k in [(a, b), (b, a)] {
            let l = self.links[&k].lock().unwrap().1;
            s.forwarded += l.forwarded;
            s.dropped += l.dropped;
        }
        s
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

impl Drop for NetFaults {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What to do with one datagram: `None` drops it, `Some(d)` sends it after `d`.
fn verdict(shared: &Shared) -> Option<Duration> {
    let mut g = shared.lock().unwrap();
    let f = g.0;
    let dropped = f.blocked || (f.drop > 0.0 && rand_unit() < f.drop);
    if dropped {
        g.1.dropped += 1;
        return None;
    }
    g.1.forwarded += 1;
    let jitter = f.jitter.as_secs_f64() * (2.0 * rand_unit() - 1.0);
    Some(Duration::from_secs_f64(
        (f.delay.as_secs_f64() + jitter).max(0.0),
    ))
}

/// A uniform number in [0, 1) (xorshift, seeded from the clock and a counter; the
/// relays need no cryptographic randomness).
fn rand_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (t ^ 0x9E37_79B9_7F4A_7C15) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Sends `buf` on `sock` (to `to`, or to the connected peer): at once (keeping the
/// order of an undelayed link) or from a task after `delay`.
async fn send(sock: &Arc<UdpSocket>, to: Option<SocketAddr>, buf: &[u8], delay: Duration) {
    async fn go(sock: &UdpSocket, to: Option<SocketAddr>, buf: &[u8]) {
        let _ = match to {
            Some(to) => sock.send_to(buf, to).await,
            None => sock.send(buf).await,
        };
    }
    if delay.is_zero() {
        go(sock, to, buf).await;
    } else {
        let sock = sock.clone();
        let buf = buf.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            go(&sock, to, &buf).await;
        });
    }
}

/// Relay `R(i,j)`: datagrams from a client (node `i`) arriving on `listen` go to
/// `target` (node `j`) from an upstream socket of that client; `target`'s answers go
/// back to the client from `listen`.
async fn relay(listen: UdpSocket, target: SocketAddr, shared: Shared) {
    let listen = Arc::new(listen);
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((len, client)) = listen.recv_from(&mut buf).await else {
            continue;
        };
        let up = match upstream.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                tokio::spawn(answers(u.clone(), listen.clone(), client, shared.clone()));
                upstream.insert(client, u.clone());
                u
            }
        };
        if let Some(delay) = verdict(&shared) {
            send(&up, None, &buf[..len], delay).await;
        }
    }
}

/// Relays `target`'s answers arriving on `up` back to `client` through `listen`.
async fn answers(up: Arc<UdpSocket>, listen: Arc<UdpSocket>, client: SocketAddr, shared: Shared) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match up.recv(&mut buf).await {
            Ok(len) => {
                if let Some(delay) = verdict(&shared) {
                    send(&listen, Some(client), &buf[..len], delay).await;
                }
            }
            // ICMP port unreachable while the target is down: keep listening.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Imports the outputs of `fund` on node `i` (the UTXOs a leader there may spend).
pub async fn import_on(c: &Cluster, i: usize, fund: &bitcoin::Transaction) {
    let (status, v) = c
        .post_json(
            i,
            "/api/v1/utxos",
            &serde_json::json!({ "raw_tx": bitcoin::consensus::encode::serialize_hex(fund) }),
        )
        .await;
    assert_eq!(status, 200, "import on node {i}: {v}");
}

/// Reads every signed transaction in every node's database and asserts that no
/// outpoint is spent by two different transactions anywhere; returns the number of
/// distinct signed transactions.
pub async fn assert_no_outpoint_signed_twice(c: &Cluster) -> usize {
    use std::collections::{BTreeMap, BTreeSet};
    let mut spends: BTreeMap<bitcoin::OutPoint, BTreeSet<bitcoin::Txid>> = BTreeMap::new();
    let mut txids = BTreeSet::new();
    for i in 0..c.file.nodes.len() {
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT signed_tx FROM transactions WHERE signed_tx IS NOT NULL")
                .fetch_all(&c.db(i).await)
                .await
                .unwrap();
        for (raw,) in rows {
            let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&raw).unwrap();
            txids.insert(tx.compute_txid());
            for inp in &tx.input {
                spends
                    .entry(inp.previous_output)
                    .or_default()
                    .insert(tx.compute_txid());
            }
        }
    }
    for (outpoint, by) in &spends {
        assert_eq!(by.len(), 1, "{outpoint} is spent by {by:?}");
    }
    txids.len()
}

/// Asserts that no node of `nodes` ran or audited a signing step for transaction
/// `id` (no `signing_sessions` row, no `tx.sign_input` audit entry).
pub async fn assert_no_signing_step(c: &Cluster, nodes: &[usize], id: &str) {
    for &i in nodes {
        let db = c.db(i).await;
        let (sessions,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM signing_sessions WHERE transaction_id::text = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
        let audited = c.audit_count(i, "tx.sign_input", id).await;
        assert_eq!(
            (sessions, audited),
            (0, 0),
            "node {i} ran a signing step for {id}"
        );
    }
}

/// The state of the UTXO `txid:vout` in node `i`'s database.
pub async fn utxo_state(c: &Cluster, i: usize, txid: bitcoin::Txid, vout: u32) -> String {
    let (state,): (String,) =
        sqlx::query_as("SELECT state FROM utxos WHERE txid = $1 AND vout = $2")
            .bind(txid.to_string())
            .bind(i32::try_from(vout).unwrap())
            .fetch_one(&c.db(i).await)
            .await
            .unwrap();
    state
}

/// After restarts: waits (up to 180 s each, restarted nodes unseal their custody
/// while sharing the CPU with the others) until each of the first `n` nodes answers
/// `/ready` with unsealed custody, then until all see each other and a healthy
/// cluster ([`Cluster::wait_ready`]).
pub async fn wait_restarted(c: &Cluster, n: usize) {
    for i in 0..n {
        c.eventually(
            &format!("node {i} up with unsealed custody"),
            Duration::from_secs(180),
            || async move {
                let r = c.client().get(c.url(i, "/ready")).send().await.ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                (v["custody"]["state"] == "unsealed").then_some(())
            },
        )
        .await;
    }
    c.wait_ready(n).await;
}
