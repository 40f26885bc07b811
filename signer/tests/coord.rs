//! etcd coordination against a real etcd (started by the tests on loopback).
//!
//! Process death is simulated for real: a child process (this test binary,
//! re-run with `COORD_TEST_CHILD` set) takes a lock, leadership or registration
//! and is then killed with SIGKILL, so its lease is never revoked.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use signer::coord::testing::{shared_etcd, unique_prefix, EtcdServer};
use signer::coord::{
    Coord, CoordConfig, CoordError, NodeEvent, NodeRecord, WatchEventKind, MAX_VALUE_BYTES,
};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Mutex;
use tokio::time::timeout;

/// Upper bound for things that must happen once a 2 s lease expires. Only a
/// liveness bound (a hang becomes a failure), not a performance claim.
const EXPIRY_BOUND: Duration = Duration::from_secs(20);
const LOCK_TTL: Duration = Duration::from_secs(2);

const CHILD_ENV: &str = "COORD_TEST_CHILD";
const READY: &str = "COORD-CHILD READY";

fn etcd() -> &'static EtcdServer {
    shared_etcd().expect("test etcd must start (is /usr/bin/etcd installed?)")
}

async fn connect(prefix: &str, node: &str) -> Coord {
    Coord::connect(etcd().config(prefix), node.to_owned())
        .await
        .expect("connect to test etcd")
}

async fn raw_client() -> etcd_client::Client {
    etcd_client::Client::connect([etcd().endpoint()], None)
        .await
        .expect("raw etcd client")
}

/// Number of keys under a full etcd prefix.
async fn count_keys(prefix: &str) -> usize {
    let mut c = raw_client().await;
    let resp = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("raw get");
    resp.kvs().len()
}

/// Waits (bounded) until `count_keys(prefix) == n`.
async fn wait_for_key_count(prefix: &str, n: usize) {
    timeout(EXPIRY_BOUND, async {
        while count_keys(prefix).await != n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw {n} keys under {prefix}"));
}

fn record(node: &str) -> NodeRecord {
    NodeRecord {
        node_id: node.to_owned(),
        api_url: format!("https://{node}.test:8443"),
        quic_addr: "127.0.0.1:9443".to_owned(),
        version: "0.1.0-test".to_owned(),
        started_at: chrono::Utc::now(),
    }
}

// ---------------------------------------------------------------------------
// Child process: holds a lock / leadership / registration until killed.

struct ChildProc {
    child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProc {
    /// SIGKILL: the child gets no chance to revoke anything.
    async fn kill(mut self) {
        self.child.kill().await.expect("kill child");
    }
}

/// Starts a child that performs `role` and returns what it reported when ready.
async fn spawn_child(role: &str, prefix: &str, name: &str, node: &str) -> (ChildProc, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_process_role",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, role)
        .env("COORD_TEST_ENDPOINT", etcd().endpoint())
        .env("COORD_TEST_PREFIX", prefix)
        .env("COORD_TEST_NAME", name)
        .env("COORD_TEST_NODE", node)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let payload = timeout(Duration::from_secs(60), async {
        loop {
            match lines.next_line().await.expect("read child stdout") {
                Some(line) => {
                    // libtest may have printed "test ... " on the same line.
                    if let Some(at) = line.find(READY) {
                        return line[at + READY.len()..].trim().to_owned();
                    }
                }
                None => panic!("child ({role}) exited before it was ready"),
            }
        }
    })
    .await
    .expect("child ready in time");
    (
        ChildProc {
            child,
            _lines: lines,
        },
        payload,
    )
}

/// Entry point of the child processes; does nothing unless started by
/// `spawn_child` (hence ignored in normal runs).
#[tokio::test]
#[ignore = "runs only as a child process of the other tests"]
async fn child_process_role() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} set by parent"));
    let cfg = CoordConfig {
        endpoints: vec![var("COORD_TEST_ENDPOINT")],
        prefix: var("COORD_TEST_PREFIX"),
        lease_ttl_secs: 2,
        ..CoordConfig::default()
    };
    let name = var("COORD_TEST_NAME");
    let node = var("COORD_TEST_NODE");
    let coord = Coord::connect(cfg, node.clone())
        .await
        .expect("child connects");
    let _held: Box<dyn std::any::Any + Send> = match role.as_str() {
        "lock" => {
            let g = coord.lock(&name, LOCK_TTL).await.expect("child locks");
            println!("{READY} {}", g.fencing_token());
            Box::new(g)
        }
        "leader" => {
            let l = coord.campaign(&name, &node).await.expect("child campaigns");
            println!("{READY} {}", l.fencing_token());
            Box::new(l)
        }
        "register" => {
            let r = coord
                .register(record(&node))
                .await
                .expect("child registers");
            println!("{READY} {}", r.lease_id());
            Box::new(r)
        }
        other => panic!("unknown child role {other}"),
    };
    tokio::time::sleep(Duration::from_secs(600)).await;
}

// ---------------------------------------------------------------------------
// Node registry

#[tokio::test]
async fn registry_shows_a_node_until_its_killed_process_lease_expires() {
    let prefix = unique_prefix("registry-kill");
    let observer = connect(&prefix, "observer").await;

    let (child, _lease) = spawn_child("register", &prefix, "-", "node-x").await;
    let nodes = observer.list_nodes().await.expect("list");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node_id, "node-x");
    assert_eq!(nodes[0].api_url, "https://node-x.test:8443");

    let mut watch = observer.watch_nodes().await.expect("watch nodes");
    match watch.next().await {
        Some(Ok(NodeEvent::Up(r))) => assert_eq!(r.node_id, "node-x"),
        other => panic!("expected the live node first, got {other:?}"),
    }

    child.kill().await;
    let event = timeout(EXPIRY_BOUND, watch.next())
        .await
        .expect("node leaves within the lease ttl");
    match event {
        Some(Ok(NodeEvent::Down { node_id })) => assert_eq!(node_id, "node-x"),
        other => panic!("expected node-x down, got {other:?}"),
    }
    assert!(observer.list_nodes().await.expect("list").is_empty());
}

#[tokio::test]
async fn registration_stop_removes_the_node_immediately() {
    let prefix = unique_prefix("registry-stop");
    let a = connect(&prefix, "node-a").await;
    let b = connect(&prefix, "node-b").await;
    let ra = a.register(record("node-a")).await.expect("register a");
    let _rb = b.register(record("node-b")).await.expect("register b");
    let ids: Vec<String> = a
        .list_nodes()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    assert_eq!(ids, ["node-a", "node-b"]);

    ra.stop().await.expect("stop");
    let ids: Vec<String> = a
        .list_nodes()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    assert_eq!(ids, ["node-b"]);
}

#[tokio::test]
async fn registration_reregisters_after_its_lease_is_lost() {
    let prefix = unique_prefix("registry-regrant");
    let coord = connect(&prefix, "node-r").await;
    let reg = coord.register(record("node-r")).await.expect("register");
    let first_lease = reg.lease_id();
    let mut watch = coord.watch_nodes().await.expect("watch");
    assert!(matches!(watch.next().await, Some(Ok(NodeEvent::Up(_)))));

    // Someone (an operator, an etcd hiccup) kills the lease behind the record.
    raw_client()
        .await
        .lease_revoke(first_lease)
        .await
        .expect("revoke");
    let down = timeout(EXPIRY_BOUND, watch.next())
        .await
        .expect("down event");
    assert!(matches!(down, Some(Ok(NodeEvent::Down { ref node_id })) if node_id == "node-r"));
    let up = timeout(EXPIRY_BOUND, watch.next())
        .await
        .expect("node comes back");
    match up {
        Some(Ok(NodeEvent::Up(r))) => assert_eq!(r, record_like(&r, "node-r")),
        other => panic!("expected node-r up again, got {other:?}"),
    }
    assert_ne!(
        reg.lease_id(),
        first_lease,
        "a new lease carries the record"
    );
    assert_eq!(coord.list_nodes().await.expect("list").len(), 1);
}

fn record_like(r: &NodeRecord, node: &str) -> NodeRecord {
    NodeRecord {
        started_at: r.started_at,
        ..record(node)
    }
}

#[tokio::test]
async fn register_refuses_a_record_for_another_node() {
    let prefix = unique_prefix("registry-mismatch");
    let coord = connect(&prefix, "node-a").await;
    let err = coord
        .register(record("node-b"))
        .await
        .expect_err("must refuse");
    assert!(matches!(err, CoordError::NodeIdMismatch { .. }), "{err}");
}

#[tokio::test]
async fn oversized_and_malformed_entries_are_refused() {
    let prefix = unique_prefix("bounds");
    let coord = connect(&prefix, "node-a").await;
    let _reg = coord.register(record("node-a")).await.expect("register");
    let mut raw = raw_client().await;
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    raw.put(format!("{prefix}/nodes/node-big"), big.clone(), None)
        .await
        .expect("raw put");
    let wrong = serde_json::to_vec(&record("node-c")).expect("json");
    raw.put(format!("{prefix}/nodes/node-d"), wrong, None)
        .await
        .expect("raw put");
    raw.put(format!("{prefix}/kv/big"), big.clone(), None)
        .await
        .expect("raw put");

    let ids: Vec<String> = coord
        .list_nodes()
        .await
        .expect("list survives bad entries")
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    assert_eq!(ids, ["node-a"]);

    let err = coord.get("big").await.expect_err("oversized read");
    assert!(
        matches!(err, CoordError::ValueTooLarge { size, .. } if size == MAX_VALUE_BYTES + 1),
        "{err}"
    );

    let lock = coord.lock("bounds", LOCK_TTL).await.expect("lock");
    let err = coord
        .put_fenced("other", big, lock.fence())
        .await
        .expect_err("oversized write");
    assert!(matches!(err, CoordError::ValueTooLarge { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// Locks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_gives_mutual_exclusion_under_contention() {
    const TASKS: usize = 6;
    const ROUNDS: usize = 4;
    let prefix = unique_prefix("lock-contention");
    let inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(Mutex::new(0usize)); // only for the read-await-write below
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let coord = connect(&prefix, &format!("node-{t}")).await;
        let (inside, counter, tokens) = (inside.clone(), counter.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = coord.lock("counter", LOCK_TTL).await.expect("lock");
                let others = inside.fetch_add(1, Ordering::SeqCst);
                assert_eq!(others, 0, "two holders inside the critical section");
                tokens
                    .lock()
                    .expect("not poisoned")
                    .push(guard.fencing_token());
                // Read, yield, write: loses updates unless exclusive.
                let seen = *counter.lock().await;
                tokio::time::sleep(Duration::from_millis(15)).await;
                *counter.lock().await = seen + 1;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task did not panic");
    }
    assert_eq!(*counter.lock().await, TASKS * ROUNDS, "lost updates");
    let tokens = tokens.lock().expect("not poisoned").clone();
    assert_eq!(tokens.len(), TASKS * ROUNDS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens not strictly increasing: {tokens:?}"
    );
}

#[tokio::test]
async fn lock_held_by_a_killed_process_is_released_when_its_lease_expires() {
    let prefix = unique_prefix("lock-kill");
    let coord = connect(&prefix, "survivor").await;
    let (child, token) = spawn_child("lock", &prefix, "vault", "doomed").await;
    let child_token: i64 = token.parse().expect("child prints its token");

    let err = coord
        .try_lock("vault", LOCK_TTL, Duration::from_millis(1500))
        .await
        .expect_err("the child holds the lock");
    assert!(matches!(err, CoordError::LockTimeout { .. }), "{err}");

    child.kill().await;
    let guard = timeout(EXPIRY_BOUND, coord.lock("vault", LOCK_TTL))
        .await
        .expect("lock frees once the dead holder's lease expires")
        .expect("lock");
    assert!(guard.fencing_token() > child_token);
    assert!(guard.is_held());
}

#[tokio::test]
async fn try_lock_times_out_without_blocking_later_holders() {
    let prefix = unique_prefix("lock-try");
    let a = connect(&prefix, "node-a").await;
    let b = connect(&prefix, "node-b").await;
    let held = a.lock("l", LOCK_TTL).await.expect("a locks");
    let err = b
        .try_lock("l", LOCK_TTL, Duration::from_millis(300))
        .await
        .expect_err("held by a");
    assert!(
        matches!(&err, CoordError::LockTimeout { name, .. } if name == "l"),
        "{err}"
    );
    // b's abandoned queue entry is withdrawn: only a's key remains.
    wait_for_key_count(&format!("{prefix}/locks/l/"), 1).await;
    held.release().await.expect("release");
    let again = timeout(EXPIRY_BOUND, b.lock("l", LOCK_TTL))
        .await
        .expect("free after release")
        .expect("lock");
    drop(again);
    wait_for_key_count(&format!("{prefix}/locks/l/"), 0).await;
}

#[tokio::test]
async fn lock_guard_notices_when_its_lease_is_lost() {
    let prefix = unique_prefix("lock-lost");
    let coord = connect(&prefix, "node-a").await;
    let guard = coord.lock("l", LOCK_TTL).await.expect("lock");
    assert!(guard.is_held());
    let mut raw = raw_client().await;
    let lease = raw
        .get(guard.fence().key(), None)
        .await
        .expect("raw get")
        .kvs()
        .first()
        .expect("lock key exists while held")
        .lease();
    raw.lease_revoke(lease)
        .await
        .expect("revoke behind its back");
    timeout(EXPIRY_BOUND, guard.lost())
        .await
        .expect("the guard notices the lost lease");
    assert!(!guard.is_held());
    let err = coord
        .put_fenced("x", "y", guard.fence())
        .await
        .expect_err("lost lock cannot write");
    assert!(matches!(err, CoordError::StaleFence { .. }), "{err}");
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    let prefix = unique_prefix("names");
    let coord = connect(&prefix, "node-a").await;
    let err = coord.lock("a/b", LOCK_TTL).await.expect_err("slash");
    assert!(matches!(err, CoordError::InvalidName { .. }), "{err}");
    let err = coord.campaign("", "x").await.expect_err("empty");
    assert!(matches!(err, CoordError::InvalidName { .. }), "{err}");
    let err = Coord::connect(etcd().config(&prefix), "bad id".to_owned())
        .await
        .expect_err("bad node id");
    assert!(matches!(err, CoordError::InvalidName { .. }), "{err}");
}

#[tokio::test]
async fn connect_fails_cleanly_when_etcd_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let cfg = CoordConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: "/test/unreachable".to_owned(),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        ..CoordConfig::default()
    };
    let err = Coord::connect(cfg, "node-a".to_owned())
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(err, CoordError::Etcd { .. } | CoordError::Timeout { .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Leader election

#[tokio::test]
async fn leadership_fails_over_when_the_leader_process_is_killed() {
    let prefix = unique_prefix("election-kill");
    let b = connect(&prefix, "node-b").await;
    let (child, token) = spawn_child("leader", &prefix, "coordinator", "node-a").await;
    let a_token: i64 = token.parse().expect("child prints its token");
    assert_eq!(
        b.leader("coordinator").await.expect("leader"),
        Some(("node-a".to_owned(), a_token))
    );
    let mut observe = b.observe("coordinator").await.expect("observe");
    assert_eq!(
        observe.next().await.expect("first").expect("ok"),
        Some(("node-a".to_owned(), a_token))
    );

    let campaign = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("coordinator", "node-b").await })
    };
    wait_for_key_count(&format!("{prefix}/elections/coordinator/"), 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!campaign.is_finished(), "b leads while a is alive");

    child.kill().await;
    let leadership = timeout(EXPIRY_BOUND, campaign)
        .await
        .expect("b takes over within the lease ttl")
        .expect("task")
        .expect("campaign");
    assert!(leadership.fencing_token() > a_token);
    assert_eq!(
        b.leader("coordinator").await.expect("leader"),
        Some(("node-b".to_owned(), leadership.fencing_token()))
    );
    let seen = timeout(EXPIRY_BOUND, async {
        loop {
            if let Ok(Some((v, _))) = observe.next().await.expect("watch alive") {
                if v == "node-b" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("observer sees the new leader");
    assert_eq!(seen, "node-b");
}

#[tokio::test]
async fn resign_hands_leadership_to_the_next_candidate() {
    let prefix = unique_prefix("election-resign");
    let a = connect(&prefix, "node-a").await;
    let b = connect(&prefix, "node-b").await;
    assert_eq!(a.leader("e").await.expect("leader"), None);
    let la = a.campaign("e", "node-a").await.expect("a leads");
    let campaign = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("e", "node-b").await })
    };
    wait_for_key_count(&format!("{prefix}/elections/e/"), 2).await;
    assert!(!campaign.is_finished());
    let a_token = la.fencing_token();
    la.resign().await.expect("resign");
    let lb = timeout(EXPIRY_BOUND, campaign)
        .await
        .expect("b leads after resign")
        .expect("task")
        .expect("campaign");
    assert!(lb.fencing_token() > a_token);
    assert!(lb.is_leader());
    assert_eq!(lb.value(), "node-b");
}

// ---------------------------------------------------------------------------
// Barriers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_releases_only_when_all_parties_arrive() {
    let prefix = unique_prefix("barrier");
    let parties: Vec<String> = ["node-a", "node-b", "node-c"].map(String::from).to_vec();
    let mut early = Vec::new();
    for id in ["node-a", "node-b"] {
        let coord = connect(&prefix, id).await;
        let parties = parties.clone();
        early.push(tokio::spawn(async move {
            coord
                .barrier("ready", &parties, Duration::from_secs(60))
                .await
        }));
    }
    let dir = format!("{prefix}/barriers/ready/");
    wait_for_key_count(&dir, 2).await;
    // Give a broken barrier time to return early.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in &early {
        assert!(!t.is_finished(), "released with node-c missing");
    }

    let c = connect(&prefix, "node-c").await;
    timeout(
        EXPIRY_BOUND,
        c.barrier("ready", &parties, Duration::from_secs(60)),
    )
    .await
    .expect("last arrival passes")
    .expect("barrier");
    for t in early {
        timeout(EXPIRY_BOUND, t)
            .await
            .expect("early parties released")
            .expect("task")
            .expect("barrier");
    }
    // Everyone left: arrivals are cleaned up.
    wait_for_key_count(&dir, 0).await;
}

#[tokio::test]
async fn barrier_timeout_names_the_missing_party() {
    let prefix = unique_prefix("barrier-timeout");
    let parties: Vec<String> = ["node-a", "node-b", "node-ghost"]
        .map(String::from)
        .to_vec();
    let a = connect(&prefix, "node-a").await;
    let b = connect(&prefix, "node-b").await;
    let (ra, rb) = tokio::join!(
        a.barrier("ready", &parties, Duration::from_millis(1500)),
        b.barrier("ready", &parties, Duration::from_millis(1500)),
    );
    for r in [ra, rb] {
        match r {
            Err(CoordError::BarrierTimeout { missing }) => assert_eq!(missing, ["node-ghost"]),
            other => panic!("expected a timeout naming node-ghost, got {other:?}"),
        }
    }
    wait_for_key_count(&format!("{prefix}/barriers/ready/"), 0).await;
}

#[tokio::test]
async fn barrier_refuses_a_node_that_is_not_a_participant() {
    let prefix = unique_prefix("barrier-outsider");
    let x = connect(&prefix, "node-x").await;
    let err = x
        .barrier("ready", &["node-a".to_owned()], Duration::from_secs(1))
        .await
        .expect_err("outsider");
    assert!(matches!(err, CoordError::NotAParticipant { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// Fencing and watches

#[tokio::test]
async fn put_fenced_rejects_a_stale_lock_token() {
    let prefix = unique_prefix("fence-lock");
    let a = connect(&prefix, "node-a").await;
    let b = connect(&prefix, "node-b").await;

    let first = a.lock("session", LOCK_TTL).await.expect("lock");
    let stale = first.fence().clone();
    a.put_fenced("session/state", "one", &stale)
        .await
        .expect("current token writes");
    assert!(a.fence_is_current(&stale).await.expect("check"));
    first.release().await.expect("release");

    let second = b.lock("session", LOCK_TTL).await.expect("lock again");
    assert!(second.fencing_token() > stale.token());
    let err = a
        .put_fenced("session/state", "two", &stale)
        .await
        .expect_err("stale token");
    match &err {
        CoordError::StaleFence { token, fence_key } => {
            assert_eq!(*token, stale.token());
            assert_eq!(fence_key, stale.key());
        }
        other => panic!("expected StaleFence, got {other}"),
    }
    assert!(err.to_string().contains(&stale.token().to_string()));
    assert!(!a.fence_is_current(&stale).await.expect("check"));
    let err = a
        .delete_fenced("session/state", &stale)
        .await
        .expect_err("stale delete");
    assert!(matches!(err, CoordError::StaleFence { .. }), "{err}");
    assert_eq!(
        a.get("session/state").await.expect("get").map(|(v, _)| v),
        Some(b"one".to_vec()),
        "the stale write must not land"
    );

    b.put_fenced("session/state", "three", second.fence())
        .await
        .expect("new holder writes");
    assert_eq!(
        b.get("session/state").await.expect("get").map(|(v, _)| v),
        Some(b"three".to_vec())
    );
}

#[tokio::test]
async fn put_fenced_rejects_a_resigned_leaders_token() {
    let prefix = unique_prefix("fence-leader");
    let a = connect(&prefix, "node-a").await;
    let lead = a.campaign("coordinator", "node-a").await.expect("lead");
    let fence = lead.fence().clone();
    a.put_fenced("announce", "session-1", &fence)
        .await
        .expect("leader writes");
    lead.resign().await.expect("resign");
    let err = a
        .put_fenced("announce", "session-2", &fence)
        .await
        .expect_err("no longer leader");
    assert!(matches!(err, CoordError::StaleFence { token, .. } if token == fence.token()));
}

#[tokio::test]
async fn watch_prefix_reports_changes_in_order() {
    let prefix = unique_prefix("watch");
    let a = connect(&prefix, "node-a").await;
    let lead = a.campaign("w", "node-a").await.expect("lead");
    let mut watch = a.watch_prefix("sessions/", None).await.expect("watch");
    a.put_fenced("sessions/s1", "v1", lead.fence())
        .await
        .expect("put");
    a.put_fenced("other", "ignored", lead.fence())
        .await
        .expect("put");
    a.put_fenced("sessions/s2", "v2", lead.fence())
        .await
        .expect("put");
    a.delete_fenced("sessions/s1", lead.fence())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = timeout(EXPIRY_BOUND, watch.next())
            .await
            .expect("event in time")
            .expect("watch alive")
            .expect("event");
        seen.push((ev.kind, ev.key, ev.value));
    }
    assert_eq!(
        seen,
        [
            (
                WatchEventKind::Put,
                "sessions/s1".to_owned(),
                b"v1".to_vec()
            ),
            (
                WatchEventKind::Put,
                "sessions/s2".to_owned(),
                b"v2".to_vec()
            ),
            (WatchEventKind::Delete, "sessions/s1".to_owned(), Vec::new()),
        ]
    );
    let keys: BTreeSet<String> = seen.into_iter().map(|(_, k, _)| k).collect();
    assert!(!keys.contains("other"));
}
