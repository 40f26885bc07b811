//! Harness for the cluster tests: starts a real dev cluster (`signer cluster up`:
//! PostgreSQL, etcd, CA, N node processes) in a temporary directory and tears it
//! down when the test process exits (the supervisor watches our pid).
#![allow(clippy::unwrap_used)] // test harness: a failed step must fail the test loudly

pub mod bench;
pub mod netfault;
pub mod tpm;
pub mod wallet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use signer::cli::cluster::{ClusterFile, ClusterNode};

/// A running dev cluster.
pub struct Cluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// Contents of cluster.json.
    pub file: ClusterFile,
    _tmp: tempfile::TempDir,
    supervisor: Child,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("dir", &self.dir).finish()
    }
}

/// Path of the node binary the cluster tests run: `signer-faulty`, the `signer` CLI
/// with fault injection armed (a binary of this test crate, so `cargo test` builds
/// it with the tests). `SIGNER_BIN` overrides it.
pub fn signer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGNER_BIN") {
        return PathBuf::from(p);
    }
    profile_bin("signer-faulty", "cargo test -p cluster-tests builds it")
}

/// Path of the operators' `signer` binary (`make build`: `cargo build -p signer
/// --bins`), which must ignore fault injection.
pub fn plain_signer_bin() -> PathBuf {
    profile_bin(
        "signer",
        "run `cargo build -p signer --bins` (make build) first",
    )
}

fn profile_bin(name: &str, hint: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{name} binary not found at {}; {hint}",
        bin.display()
    );
    bin
}

/// Copies every node's log to `/tmp/<name>-failure-<pid>/` when the test panics
/// (the cluster's directory is removed with it); see [`Cluster::keep_logs_on_failure`].
pub struct KeepLogsOnFailure<'a>(&'a Cluster, &'static str);

impl std::fmt::Debug for KeepLogsOnFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeepLogsOnFailure").field(&self.1).finish()
    }
}

impl Drop for KeepLogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let out = PathBuf::from(format!("/tmp/{}-failure-{}", self.1, std::process::id()));
        let _ = std::fs::create_dir_all(&out);
        for n in &self.0.file.nodes {
            let _ = std::fs::copy(&n.log, out.join(format!("{}.log", n.id)));
        }
        eprintln!("node logs kept in {}", out.display());
    }
}

impl Cluster {
    /// A guard that keeps the node logs (in `/tmp/<name>-failure-<pid>/`) if the
    /// test panics while it lives.
    pub fn keep_logs_on_failure(&self, name: &'static str) -> KeepLogsOnFailure<'_> {
        KeepLogsOnFailure(self, name)
    }

    /// The error-level lines node `i` has logged so far (the nodes log JSON). An
    /// honest run logs none: an error line is an alert for the operator.
    pub fn errors_logged(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(&self.node(i).log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .map(str::to_owned)
            .collect()
    }

    /// Starts a cluster of `nodes` with threshold `threshold`.
    pub fn start(nodes: u16, threshold: u16) -> Cluster {
        Self::start_with(nodes, threshold, &[])
    }

    /// [`Cluster::start`] with more `signer cluster up` arguments (e.g.
    /// `--etcd-members 3`).
    pub fn start_with(nodes: u16, threshold: u16, extra: &[&str]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("signer-cluster-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().join("cluster");
        let log = std::fs::File::create(tmp.path().join("supervisor.log")).unwrap();
        let supervisor = Command::new(signer_bin())
            .args(["cluster", "up", "--nodes", &nodes.to_string()])
            .args(["--threshold", &threshold.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(["--watch-pid", &std::process::id().to_string()])
            // Clusters held in statics are never dropped: the supervisor deletes
            // the cluster's directory (about 110 MB) once this process has exited.
            .arg("--remove-dir")
            .args(["--lease-ttl-secs", "3"])
            // No background prime generation in tests (35 s of CPU per set and node);
            // the published TEST-ONLY fixture sets feed the aux-info pools instead.
            .args(["--prime-pool-target", "0"])
            .args(extra)
            .arg("--insecure-test-primes")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/fixtures/test-primes"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Cluster {
            file: wait_for_cluster_file(&dir, tmp.path()),
            dir,
            _tmp: tmp,
            supervisor,
        };
        if let Ok(Some(status)) = c.supervisor.try_wait() {
            panic!("cluster supervisor exited early: {status}");
        }
        c
    }

    /// One cluster shared by every test in this test binary.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(5, 3))
    }

    /// HTTPS client trusting the cluster CA.
    pub fn client(&self) -> reqwest::Client {
        signer::tls::install_crypto_provider();
        signer::tls::api_client(&self.file.ca_cert).unwrap()
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.file.nodes[i]
    }

    /// URL of `path` on node `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}{}", self.node(i).api_url, path)
    }

    /// `GET path` on node `i` with a bearer token.
    pub async fn get(&self, i: usize, path: &str, token: &str) -> reqwest::Response {
        self.client()
            .get(self.url(i, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` on node `i` as admin, decoded as JSON.
    pub async fn get_json(&self, i: usize, path: &str) -> serde_json::Value {
        self.get(i, path, self.admin()).await.json().await.unwrap()
    }

    /// `POST path` on node `i` as admin without a body, decoded as JSON.
    pub async fn post_admin(&self, i: usize, path: &str) -> serde_json::Value {
        self.client()
            .post(self.url(i, path))
            .bearer_auth(self.admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET path` on node `i` as admin: the JSON body if the answer is a success,
    /// `None` otherwise (for polling).
    pub async fn get_ok(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let r = self
            .client()
            .get(self.url(i, path))
            .bearer_auth(self.admin())
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// `POST path` with a JSON body on node `i` as admin: (status, JSON body).
    pub async fn post_json(
        &self,
        i: usize,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_json_as(i, path, body, self.admin()).await
    }

    /// `POST path` with a JSON body on node `i` with `token`: status and JSON answer.
    pub async fn post_json_as(
        &self,
        i: usize,
        path: &str,
        body: &serde_json::Value,
        token: &str,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client()
            .post(self.url(i, path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Creates an API token with `role` on node `i` (as admin) and returns its secret.
    pub async fn create_token(&self, i: usize, name: &str, role: &str) -> String {
        let (status, v) = self
            .post_json(
                i,
                "/api/v1/tokens",
                &serde_json::json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(status, 201, "token creation: {v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Waits until the first `n` nodes answer `/ready` with unsealed custody, see
    /// every other node connected and report all `n` nodes healthy.
    pub async fn wait_ready(&self, n: usize) {
        for i in 0..n {
            self.eventually(
                &format!("node {i} ready with {n} healthy nodes"),
                Duration::from_secs(60),
                || async move {
                    let r = self.client().get(self.url(i, "/ready")).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    if v["custody"]["state"] != "unsealed" || v["peers_connected"] != n - 1 {
                        return None;
                    }
                    self.get_ok(i, "/api/v1/cluster/status")
                        .await
                        .filter(|s| s["healthy_nodes"] == n)
                },
            )
            .await;
        }
    }

    /// How many audit entries node `i` holds with `action` about `subject`.
    pub async fn audit_count(&self, i: usize, action: &str, subject: &str) -> i64 {
        let db = self.db(i).await;
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM audit_log WHERE action = $1 AND subject = $2")
                .bind(action)
                .bind(subject)
                .fetch_one(&db)
                .await
                .unwrap();
        n
    }

    /// Node `i`'s `GET /api/v1/keys` entry for `key_id` (panics if it is missing).
    pub async fn key_entry(&self, i: usize, key_id: &str) -> serde_json::Value {
        let v = self.get_ok(i, "/api/v1/keys").await.unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id)
            .cloned()
            .unwrap_or_else(|| panic!("key {key_id} missing on node {i}: {v}"))
    }

    /// Runs a DKG of `protocol` with threshold `t` through node 0's API and waits
    /// until it is completed on the first `nodes` nodes; returns the key id.
    pub async fn dkg(&self, nodes: usize, protocol: &str, t: u16) -> String {
        let (status, v) = self
            .post_json(
                0,
                "/api/v1/dkg/start",
                &serde_json::json!({ "protocol": protocol, "threshold": t }),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let id = v["ceremony_id"].as_str().unwrap().to_owned();
        for i in 0..nodes {
            let path = format!("/api/v1/dkg/ceremonies/{id}");
            let v = self
                .eventually(
                    &format!("ceremony {id} to end on node {i}"),
                    Duration::from_secs(120),
                    || async {
                        self.get_ok(i, &path)
                            .await
                            .filter(|v| v["state"] == "completed" || v["state"] == "failed")
                    },
                )
                .await;
            assert_eq!(v["state"], "completed", "node {i}: {v}");
        }
        id
    }

    /// Writes, on the first `nodes` nodes, a policy with one regtest scope per key
    /// allowing at most `max_per_tx_sats` per transaction (read at each vote).
    pub fn write_policy(&self, nodes: usize, keys: &[&str], max_per_tx_sats: u64) {
        self.write_policy_with(nodes, keys, max_per_tx_sats, "");
    }

    /// [`Self::write_policy`] with `extra` TOML appended to every scope (e.g. an
    /// `[[scope.approvals]]` table).
    pub fn write_policy_with(
        &self,
        nodes: usize,
        keys: &[&str],
        max_per_tx_sats: u64,
        extra: &str,
    ) {
        for i in 0..nodes {
            self.write_node_policy(i, keys, max_per_tx_sats, extra);
        }
    }

    /// Writes node `i`'s policy: one regtest scope per key (at most `max_per_tx_sats`
    /// per transaction, `extra` appended to every scope); with no key at all, a
    /// policy under which that node rejects every transaction.
    pub fn write_node_policy(&self, i: usize, keys: &[&str], max_per_tx_sats: u64, extra: &str) {
        let mut text = String::from("version = 1\nname = \"tests\"\n");
        for k in keys {
            text.push_str(&format!(
                "\n[[scope]]\nkey_id = \"{k}\"\nnetwork = \"regtest\"\n[scope.limits]\nmax_per_tx_sats = {max_per_tx_sats}\n{extra}"
            ));
        }
        if keys.is_empty() {
            text.push_str("\n[[scope]]\nkey_id = \"no-such-key\"\nnetwork = \"regtest\"\n");
        }
        std::fs::write(self.node(i).dir.join("policy.toml"), &text).unwrap();
    }

    /// The admin token.
    pub fn admin(&self) -> &str {
        &self.file.admin_token
    }

    /// Resident memory (VmRSS, KiB) of node `i`'s process.
    pub fn node_rss_kib(&self, i: usize) -> u64 {
        self.node_status_kib(i, "VmRSS:")
    }

    /// Anonymous resident memory (RssAnon, KiB) of node `i`'s process: its own
    /// memory, without the pages of the executable it maps (file-backed, shared by
    /// the processes running the same binary and reclaimable).
    pub fn node_rss_anon_kib(&self, i: usize) -> u64 {
        self.node_status_kib(i, "RssAnon:")
    }

    fn node_status_kib(&self, i: usize, field: &str) -> u64 {
        let pid = self.node_pid(i).expect("node pid file");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Adds a node with the product's path, `signer cluster add-node --dir`
    /// (certificate, database, HSM token, config, process; every running node takes
    /// it as a peer without a restart), and reloads `cluster.json`. Returns the new
    /// node's index.
    pub fn add_node(&mut self) -> usize {
        let out = Command::new(signer_bin())
            .args(["cluster", "add-node", "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster add-node failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.file = ClusterFile::load(&self.dir.join("cluster.json")).unwrap();
        self.file.nodes.len() - 1
    }

    /// Pid of node `i`, from its pid file.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        std::fs::read_to_string(self.node(i).dir.join("node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub fn kill_node(&self, i: usize) {
        let pid = self.node_pid(i).expect("node pid file");
        let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL).unwrap();
        let start = Instant::now();
        while nix::sys::signal::kill(p, None).is_ok() && start.elapsed() < Duration::from_secs(10) {
            let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i` again with its existing configuration and data.
    pub fn restart_node(&self, i: usize) {
        self.restart_node_with_env(i, &[]);
    }

    /// Starts node `i` again with extra environment (config overrides such as
    /// `SIGNER__CUSTODY__PIN_FILE`).
    pub fn restart_node_with_env(&self, i: usize, env: &[(&str, &str)]) {
        self.restart_node_with(i, &[signer_bin().into_os_string()], env);
    }

    /// Starts node `i` again through `launcher` (a program and its arguments,
    /// ending with the node binary, e.g. `prlimit --memlock=0:0 <signer>`), which is
    /// run with `node start --config … --log …` appended.
    pub fn restart_node_with(
        &self,
        i: usize,
        launcher: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) {
        let n = self.node(i);
        let status = Command::new(&launcher[0])
            .args(&launcher[1..])
            .envs(env.iter().copied())
            .args(["node", "start", "--config"])
            .arg(&n.config)
            .arg("--log")
            .arg(&n.log)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "signer node start failed for {}: {}",
            n.id,
            String::from_utf8_lossy(&status.stderr)
        );
    }

    /// A pool on node `i`'s own database.
    pub async fn db(&self, i: usize) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&self.node(i).database_url)
            .await
            .unwrap()
    }

    /// A superuser pool on node `i`'s database (bypasses grants, for tampering tests).
    pub async fn db_superuser(&self, i: usize) -> sqlx::PgPool {
        let base = self
            .file
            .postgres_admin_url
            .rsplit_once('/')
            .unwrap()
            .0
            .to_owned();
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{base}/{}", self.node(i).database))
            .await
            .unwrap()
    }

    /// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(signer_bin())
            .args(["cluster", "down", "--dir"])
            .arg(&self.dir)
            .status();
        let _ = self.supervisor.wait();
    }
}

fn wait_for_cluster_file(dir: &Path, tmp: &Path) -> ClusterFile {
    let path = dir.join("cluster.json");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(180) {
        if path.is_file() {
            if let Ok(f) = ClusterFile::load(&path) {
                return f;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(tmp.join("supervisor.log")).unwrap_or_default();
    panic!("cluster did not come up within 180 s; supervisor log:\n{log}");
}

/// A transaction paying `values` to `addr` (its input is made up: only the outputs
/// matter to the node, which signs spends of them).
pub fn funding(addr: &bitcoin::Address, values: &[u64]) -> bitcoin::Transaction {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicU32, Ordering};
    // A different (made-up) spent outpoint per call: every funding transaction has
    // its own txid and none conflicts with another (wallets such as BDK drop
    // conflicting transactions).
    static SALT: AtomicU32 = AtomicU32::new(1);
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(
                bitcoin::Txid::from_str(&"11".repeat(32)).unwrap(),
                SALT.fetch_add(1, Ordering::SeqCst),
            ),
            ..bitcoin::TxIn::default()
        }],
        output: values
            .iter()
            .map(|v| bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(*v),
                script_pubkey: addr.script_pubkey(),
            })
            .collect(),
    }
}

/// State of process `pid`: `None` if gone (or a zombie), else its state letter
/// (`T` when stopped).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let s = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    (s != 'Z' && s != 'X').then_some(s)
}

/// The string field `field` of every element of the array `list` of `v`.
pub fn strings_of(v: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap().to_owned())
        .collect()
}

/// A fresh regtest P2WPKH address no cluster key owns.
pub fn other_address() -> bitcoin::Address {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let (_, pk) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
    bitcoin::Address::p2wpkh(&bitcoin::CompressedPublicKey(pk), bitcoin::Network::Regtest)
}

/// Starts `program` with `args` and `envs` again (a fault test restarting a killed
/// etcd member or PostgreSQL server with its recorded command line), in its own
/// process group, appending to `log`; writes its pid to `pid_file`, through which
/// `signer cluster down` stops it, and reaps it from a thread when it ends.
pub fn respawn<I, S>(program: &str, args: I, envs: &[(&str, &str)], log: &Path, pid_file: &Path)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    std::fs::write(pid_file, child.id().to_string()).unwrap();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// Runs the test `signer` binary with `args`, `--config config` and `env`; whether
/// it succeeded and its stdout and stderr together.
pub fn signer_with_config(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(signer_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
