//! Issue 19: the node under systemd `Type=notify` (signer/src/node/notify.rs), with
//! a test datagram socket standing in for systemd's `$NOTIFY_SOCKET`. The node
//! (node-1 of a one-node dev cluster, real PostgreSQL, etcd and SoftHSM) sends
//! `READY=1` only once custody is unsealed and its database answers, never while
//! sealed; `WATCHDOG=1` every half `$WATCHDOG_USEC`; `STOPPING=1` on SIGTERM; and
//! abstract socket names (`@name`) work. Its stderr in the `journald` log format is
//! JSON lines with syslog priority prefixes.
#![allow(clippy::unwrap_used)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::{signer_bin, Cluster};
use serde_json::Value;

/// The test's stand-in for systemd's notification socket.
struct Listener {
    sock: tokio::net::UnixDatagram,
    /// Every datagram received, with its arrival time.
    seen: Vec<(Instant, String)>,
}

impl Listener {
    fn bind(addr: &SocketAddr) -> Listener {
        let std_sock = std::os::unix::net::UnixDatagram::bind_addr(addr).unwrap();
        std_sock.set_nonblocking(true).unwrap();
        Listener {
            sock: tokio::net::UnixDatagram::from_std(std_sock).unwrap(),
            seen: Vec::new(),
        }
    }

    /// Receives until a datagram containing the line `line` arrives (returns its
    /// index in `seen`), or panics after `within`.
    async fn until(&mut self, line: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout(left, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push((Instant::now(), msg.clone()));
                    if msg.lines().any(|l| l == line) {
                        return self.seen.len() - 1;
                    }
                }
                Ok(Err(e)) => panic!("receiving notifications: {e}"),
                Err(_) => panic!(
                    "no {line:?} within {within:?}; received: {:?}",
                    self.messages()
                ),
            }
        }
    }

    /// Receives whatever arrives during `d`.
    async fn collect(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout(left, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => self.seen.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                )),
                Ok(Err(e)) => panic!("receiving notifications: {e}"),
                Err(_) => return,
            }
        }
    }

    fn messages(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, m)| m.as_str()).collect()
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .count()
    }
}

/// `signer node run` for node-1 with `$NOTIFY_SOCKET`, a 1 s watchdog (pings every
/// 0.5 s) and journald-format logs on stderr (to `log`).
fn spawn_node(c: &Cluster, notify_socket: &str, env: &[(&str, &str)], log: &Path) -> Child {
    Command::new(signer_bin())
        .args(["node", "run", "--config"])
        .arg(&c.node(0).config)
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", "1000000")
        .env("SIGNER__LOG__FORMAT", "journald")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// SIGTERM, then `STOPPING=1` and a clean exit (`log`: the node's stderr, shown
/// when it does not stop).
async fn terminate(child: &mut Child, l: &mut Listener, log: &Path) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    l.until("STOPPING=1", Duration::from_secs(20)).await;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "node exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "node still running 60 s after SIGTERM:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(c: &Cluster) -> Option<(u16, Value)> {
    let r = c.client().get(c.url(0, "/ready")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_notifies_systemd_ready_after_unseal_watchdog_and_stopping() {
    let c = Cluster::start(1, 1);
    c.eventually("node-1 unsealed", Duration::from_secs(60), || async {
        ready(&c)
            .await
            .filter(|(_, v)| v["custody"]["state"] == "unsealed")
    })
    .await;
    c.kill_node(0);
    let tmp = tempfile::tempdir().unwrap();

    // 1. Sealed (wrong PIN): STATUS says why, READY=1 never comes; the watchdog is
    // still pinged (the node runs, its database answers); SIGTERM stops it.
    let wrong_pin = tmp.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "not-the-pin").unwrap();
    std::fs::set_permissions(
        &wrong_pin,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let path = tmp.path().join("sealed.sock");
    let mut l = Listener::bind(&SocketAddr::from_pathname(&path).unwrap());
    let log = tmp.path().join("sealed.log");
    let mut node = spawn_node(
        &c,
        path.to_str().unwrap(),
        &[("SIGNER__CUSTODY__PIN_FILE", wrong_pin.to_str().unwrap())],
        &log,
    );
    l.until("STATUS=sealed: wrong_pin", Duration::from_secs(60))
        .await;
    l.collect(Duration::from_secs(3)).await;
    assert_eq!(
        l.count("READY=1"),
        0,
        "READY while sealed: {:?}",
        l.messages()
    );
    assert!(l.count("WATCHDOG=1") >= 2, "{:?}", l.messages());
    let (status, v) = ready(&c).await.unwrap();
    assert_eq!(status, 503, "{v}");
    terminate(&mut node, &mut l, &log).await;

    // 2. Normal start: STATUS lines, then READY=1 only once the unseal and the key
    // reload are logged and /ready says unsealed with the database up.
    let path = tmp.path().join("notify.sock");
    let mut l = Listener::bind(&SocketAddr::from_pathname(&path).unwrap());
    let log = tmp.path().join("node.log");
    let mut node = spawn_node(&c, path.to_str().unwrap(), &[], &log);
    let at = l.until("READY=1", Duration::from_secs(90)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("custody unsealed"),
        "READY before unseal:\n{text}"
    );
    assert!(
        text.contains("key shares reloaded from custody"),
        "READY before the key shares were loaded:\n{text}"
    );
    let (status, v) = ready(&c).await.unwrap();
    assert_eq!(v["custody"]["state"], "unsealed", "{v}");
    assert_eq!(v["database"], "ok", "{v}");
    assert_eq!(status, 200, "{v}");
    let before: Vec<&str> = l.messages()[..at].to_vec();
    assert!(
        before.contains(&"STATUS=connecting to the database"),
        "{before:?}"
    );
    assert!(
        l.seen[at].1.lines().any(|line| line == "STATUS=ready"),
        "{:?}",
        l.seen[at]
    );
    assert_eq!(l.count("READY=1"), 1);

    // Watchdog: every 0.5 s (half of WATCHDOG_USEC = 1 s).
    let from = l.seen.len();
    l.collect(Duration::from_secs(4)).await;
    let pings: Vec<Instant> = l.seen[from..]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        (6..=10).contains(&pings.len()),
        "{} pings in 4 s at 0.5 s intervals: {:?}",
        pings.len(),
        l.messages()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < Duration::from_millis(900),
        "pings {widest:?} apart"
    );
    assert_eq!(l.count("READY=1"), 1, "READY=1 sent twice");

    terminate(&mut node, &mut l, &log).await;
    let stopping = l.seen.iter().position(|(_, m)| m.contains("STOPPING=1"));
    assert!(stopping.is_some_and(|i| i > at));

    // journald format: every line `<priority>{json}` with level, target, and the
    // event's fields at the top level; the priority matches the level.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut unsealed = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (prio, json) = line
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .unwrap_or_else(|| panic!("no <priority> prefix: {line}"));
        let v: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("not JSON after the prefix ({e}): {line}"));
        let level = v["level"].as_str().unwrap_or_else(|| panic!("{line}"));
        let expected = match level {
            "ERROR" => "3",
            "WARN" => "4",
            "INFO" => "6",
            _ => "7",
        };
        assert_eq!(prio, expected, "{line}");
        assert!(v["target"].is_string(), "{line}");
        if v["message"] == "custody unsealed" {
            assert!(v["kek"]
                .as_str()
                .is_some_and(|k| k.starts_with("signer-kek#")));
            unsealed = true;
        }
    }
    assert!(unsealed, "no custody unsealed line:\n{text}");

    // 3. Abstract socket name, and a watchdog addressed to another pid is not ours.
    let name = format!("signer-notify-test-{}", std::process::id());
    let mut l = Listener::bind(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap());
    let log = tmp.path().join("abstract.log");
    let mut node = spawn_node(&c, &format!("@{name}"), &[("WATCHDOG_PID", "1")], &log);
    l.until("READY=1", Duration::from_secs(90)).await;
    l.collect(Duration::from_secs(2)).await;
    assert_eq!(l.count("WATCHDOG=1"), 0, "{:?}", l.messages());
    terminate(&mut node, &mut l, &log).await;
}
