//! Test support: a throwaway single-member etcd on free loopback ports.
//!
//! The etcd process runs under a small `sh` wrapper that holds a pipe from this
//! process; when this process exits (even by SIGKILL) the pipe closes and the
//! wrapper stops etcd and deletes its data directory. So a server kept in a
//! `static` (see [`shared_etcd`]) does not outlive the test binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::CoordConfig;

/// Starting the test etcd failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("starting test etcd failed: {0}")]
pub struct EtcdStartError(String);

/// A running single-member etcd; stopped (and its data deleted) on drop.
#[derive(Debug)]
pub struct EtcdServer {
    endpoint: String,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

const WRAPPER: &str = r#"
dir="$1"; shift
"$@" >"$dir/etcd.log" 2>&1 &
pid=$!
read _eof
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos}", std::process::id())
}

/// A key prefix no other test uses, e.g. `/test/lock-1234-0-99`.
pub fn unique_prefix(tag: &str) -> String {
    format!("/test/{tag}-{}", unique_suffix())
}

fn free_port() -> Result<u16, EtcdStartError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| EtcdStartError(e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| EtcdStartError(e.to_string()))
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut body);
    String::from_utf8_lossy(&body).contains("\"health\":\"true\"")
}

impl EtcdServer {
    /// Starts etcd (`$ETCD_BIN`, default `etcd` on `PATH`) on free loopback ports
    /// with a fresh data directory, and waits until it reports healthy.
    pub fn start() -> Result<EtcdServer, EtcdStartError> {
        let mut last = EtcdStartError("no attempt made".to_owned());
        for _ in 0..3 {
            match Self::start_once() {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once() -> Result<EtcdServer, EtcdStartError> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
        let dir = std::env::temp_dir().join(format!("signer-test-etcd-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| EtcdStartError(format!("{}: {e}", dir.display())))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(&dir)
            .arg(&bin)
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EtcdStartError(format!("spawning sh for {bin}: {e}")))?;
        let stdin = wrapper.stdin.take();
        let server = EtcdServer {
            endpoint: client,
            wrapper,
            stdin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if healthy(client_port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(server.dir.join("etcd.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(EtcdStartError(format!(
            "etcd on {} not healthy within 20 s; log tail:\n{tail}",
            server.endpoint
        )))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The data directory (removed when the server stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A coordination config for this server under `prefix`, with the shortest
    /// lease TTL etcd accepts (2 s) so expiry tests are quick.
    pub fn config(&self, prefix: &str) -> CoordConfig {
        CoordConfig {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.to_owned(),
            lease_ttl_secs: 2,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Closing the pipe makes the wrapper stop etcd and delete the data.
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One etcd shared by every test in this process (started on first use, stopped
/// when the process exits). Give each test its own [`unique_prefix`].
pub fn shared_etcd() -> Result<&'static EtcdServer, EtcdStartError> {
    static SHARED: OnceLock<Result<EtcdServer, EtcdStartError>> = OnceLock::new();
    SHARED
        .get_or_init(EtcdServer::start)
        .as_ref()
        .map_err(Clone::clone)
}
