//! `signer cluster up` / `signer cluster down`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::procs::{alive, free_port, read_pid, spawn_logged, stop, wait_until};
use super::{etcd, postgres, write_private, ClusterFile, ClusterNode};
use crate::api::auth::generate_token;
use crate::audit::AuditEntry;
use crate::store::audit::AuditOf;
use crate::store::Store;

/// Options of `cluster up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory holding everything of this cluster.
    pub dir: PathBuf,
    /// Number of nodes.
    pub nodes: u16,
    /// Signing threshold.
    pub threshold: u16,
    /// Return once the cluster is up instead of supervising it.
    pub detach: bool,
    /// Tear the cluster down when this process exits (used by tests).
    pub watch_pid: Option<u32>,
    /// Delete `dir` after the teardown (test harnesses with temporary dirs).
    pub remove_dir: bool,
    /// etcd registration lease TTL of the nodes, seconds.
    pub lease_ttl_secs: i64,
    /// `[aux] prime_pool_target` of every node.
    pub prime_pool_target: usize,
    /// TESTS ONLY: directory of published prime sets to import (`primes-<i>.json`).
    pub insecure_test_primes: Option<PathBuf>,
    /// When `dir` holds a running cluster (every node answers `/health`), keep it
    /// and succeed instead of refusing.
    pub reuse: bool,
    /// etcd members (1, 3 or 5); every node takes all of them as endpoints.
    pub etcd_members: u8,
}

/// Starts a dev cluster. In the foreground it waits for Ctrl-C/SIGTERM (or the
/// watched process to exit) and then tears everything down.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&opts.nodes),
        "--nodes must be between 1 and 32"
    );
    anyhow::ensure!(
        opts.threshold >= 1 && opts.threshold <= opts.nodes,
        "--threshold must be between 1 and --nodes ({})",
        opts.nodes
    );
    let dir = absolute(&opts.dir)?;
    if let Some(pid) = read_pid(&dir.join("supervisor.pid")).filter(|p| alive(*p)) {
        anyhow::bail!(
            "a cluster is already running in {} (supervisor pid {pid}); run `signer cluster down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    match running_cluster(&dir).await {
        Running::All(file) if opts.reuse => {
            println!(
                "cluster {} already running in {} ({} nodes, threshold {}): reused",
                file.cluster_id,
                dir.display(),
                file.nodes.len(),
                file.threshold
            );
            return Ok(());
        }
        Running::All(_) | Running::Some => anyhow::bail!(
            "a cluster is already running in {d}; stop it first: `signer cluster down --dir {d}` (or `make clean-cluster`)",
            d = dir.display()
        ),
        Running::None => {}
    }
    if dir.exists() {
        // A stopped cluster from an earlier run: stop leftovers and start fresh.
        stop_all(&dir);
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o755)?;
    std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string())?;

    match start_everything(&dir, &opts).await {
        Ok(file) => print_summary(&dir, &file),
        Err(e) => {
            stop_all(&dir);
            let _ = std::fs::remove_file(dir.join("supervisor.pid"));
            return Err(e);
        }
    }
    if opts.detach {
        let _ = std::fs::remove_file(dir.join("supervisor.pid"));
        return Ok(());
    }
    wait_for_stop(opts.watch_pid).await;
    eprintln!("stopping cluster in {}", dir.display());
    stop_all(&dir);
    if opts.remove_dir {
        std::fs::remove_dir_all(&dir)?;
        return Ok(());
    }
    let _ = std::fs::remove_file(dir.join("supervisor.pid"));
    Ok(())
}

/// What runs of the cluster in a directory.
enum Running {
    /// Nothing: no node process alive.
    None,
    /// Some processes alive, but not every node answers.
    Some,
    /// Every node of its cluster file answers `/health`.
    All(ClusterFile),
}

/// Whether `pid` is a live `signer node run` (not a reused pid of a stale file).
fn is_node_process(pid: u32) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(9).any(|w| w == b"node\0run\0"))
}

/// Looks at the cluster in `dir`: its node processes and their `/health`.
async fn running_cluster(dir: &Path) -> Running {
    let any_alive = std::fs::read_dir(dir.join("nodes"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| read_pid(&e.path().join("node.pid")))
                .any(is_node_process)
        })
        .unwrap_or(false);
    if !any_alive {
        return Running::None;
    }
    let Ok(file) = ClusterFile::load(&dir.join("cluster.json")) else {
        return Running::Some;
    };
    let Ok(client) = crate::tls::api_client(&file.ca_cert) else {
        return Running::Some;
    };
    for n in &file.nodes {
        let ok = client
            .get(format!("{}/health", n.api_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            return Running::Some;
        }
    }
    Running::All(file)
}

/// Stops the cluster in `dir` (its supervisor if one runs, else each process).
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let dir = absolute(dir)?;
    anyhow::ensure!(dir.is_dir(), "{} is not a cluster directory", dir.display());
    if let Some(pid) = read_pid(&dir.join("supervisor.pid")).filter(|p| alive(*p)) {
        stop(pid, Duration::from_secs(30));
    }
    stop_all(&dir);
    let _ = std::fs::remove_file(dir.join("supervisor.pid"));
    Ok(())
}

pub(super) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `[aux]` of node `i`: the pool target and, for tests, the published prime sets
/// `primes-<j>.json` with `j % nodes == i`.
fn aux_section(opts: &UpOptions, i: usize) -> anyhow::Result<String> {
    let mut files = Vec::new();
    if let Some(dir) = &opts.insecure_test_primes {
        let dir = absolute(dir)?;
        for j in (i..64).step_by(usize::from(opts.nodes.max(1))) {
            let f = dir.join(format!("primes-{j}.json"));
            if f.is_file() {
                files.push(format!("{:?}", f.display().to_string()));
            }
        }
    }
    Ok(format!(
        "[aux]\nprime_pool_target = {}\ninsecure_test_primes = [{}]\n",
        opts.prime_pool_target,
        files.join(", ")
    ))
}

/// Stops nodes, then etcd, then PostgreSQL, using the pid files in `dir`.
fn stop_all(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir.join("nodes")) {
        for e in rd.filter_map(Result::ok) {
            if let Some(pid) = read_pid(&e.path().join("node.pid")) {
                stop(pid, Duration::from_secs(10));
            }
        }
    }
    etcd::stop_all(&dir.join("etcd"));
    if let Some(pid) = read_pid(&dir.join("postgres/postgres.pid")) {
        // The pid is the process group leader (runuser when started as root).
        if let Ok(p) = i32::try_from(pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        stop(pid, Duration::from_secs(20));
    }
    postgres::remove_external_data(&dir.join("postgres"));
}

async fn start_everything(dir: &Path, opts: &UpOptions) -> anyhow::Result<ClusterFile> {
    let cluster_id = format!("dev-{}", &postgres::random_password()[..8]);
    let ids: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();

    // Certificates.
    let ca_dir = dir.join("ca");
    crate::ca::init_ca(&ca_dir)?;
    for id in &ids {
        crate::ca::issue_node_cert_for_ips(
            &ca_dir,
            id,
            365,
            &[std::net::Ipv4Addr::LOCALHOST.into()],
        )?;
    }

    // Infrastructure.
    let pg = postgres::start(&dir.join("postgres")).await?;
    let etcd = etcd::start(&dir.join("etcd"), opts.etcd_members).await?;

    // Ports.
    let mut ports = Vec::new();
    for _ in &ids {
        ports.push((free_port()?, free_port()?));
    }

    let token = generate_token().map_err(|e| anyhow::anyhow!(e.message))?;
    let admin_token = token.token.expose_secret().to_owned();
    let prefix = format!("/signer/{cluster_id}");
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let node_dir = dir.join("nodes").join(id);
        std::fs::create_dir_all(&node_dir)?;
        let db_name = id.replace('-', "_");
        let db_url = postgres::create_node_database(&pg.admin_url, pg.port, &db_name).await?;
        write_private(&node_dir.join("database.url"), db_url.as_bytes())?;
        // Migrate and install the admin token before the node starts.
        let store = Store::connect(&db_url, 2).await?;
        store
            .insert_token(
                &token.id,
                "dev-admin",
                "admin",
                &token.secret_hash,
                100_000,
                "cluster-up",
                AuditOf::new(
                    id,
                    AuditEntry::new("cluster-up", "token.create")
                        .subject(&token.id)
                        .details(serde_json::json!({"name": "dev-admin", "role": "admin"})),
                ),
            )
            .await?;
        store.pool().close().await;

        let (api_port, quic_port) = ports[i];
        let peers: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, pid)| {
                format!(
                    "[[p2p.peers]]\nid = \"{pid}\"\naddr = \"127.0.0.1:{}\"\napi_url = \"https://127.0.0.1:{}\"\n",
                    ports[j].1, ports[j].0
                )
            })
            .collect();
        let cert_dir = ca_dir.join("nodes").join(id);
        let custody = softhsm_token(&node_dir, id)?;
        let aux = aux_section(opts, i)?;
        // A policy without scopes: every transaction is rejected until the operator
        // adds a scope for a key (`no_policy_for_key`); see docs/POLICY.md.
        let policy_file = node_dir.join("policy.toml");
        if !policy_file.exists() {
            std::fs::write(
                &policy_file,
                "# Node policy (docs/POLICY.md); read at every evaluation. Add a [[scope]] per key.\n\
                 version = 1\nname = \"dev\"\n\n[[scope]]\nkey_id = \"no-key-yet\"\nnetwork = \"regtest\"\n",
            )?;
        }
        let config = format!(
            "# Generated by `signer cluster up`; see docs/CONFIGURATION.md.\n\
             node_id = \"{id}\"\n\
             cluster_id = \"{cluster_id}\"\n\
             threshold = {t}\n\
             data_dir = \"{nd}\"\n\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\n\
             [p2p]\nlisten = \"127.0.0.1:{quic_port}\"\n{peers}\n\
             [tls]\nca_cert = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
             [database]\nurl_file = \"{dburl}\"\nmax_connections = 8\n\n\
             [etcd]\nendpoints = [{etcd}]\nprefix = \"{prefix}\"\nlease_ttl_secs = {ttl}\n\n\
             {custody}\n\
             {aux}\n\
             # Dev clusters start with the presignature pool off (it costs seconds of\n\
             # CPU per presignature); SIGNER__PRESIGN__ENABLED=true turns it on.\n\
             [presign]\nenabled = false\n\n\
             [policy]\nfile = \"{pf}\"\n\n\
             [hardening]\nallow_unhardened_memory = true # dev only: unseal even without mlock\n\n\
             [log]\nformat = \"json\"\n",
            t = opts.threshold,
            nd = node_dir.display(),
            peers = peers.join("\n"),
            ca = ca_dir.join("ca.pem").display(),
            cert = cert_dir.join("cert.pem").display(),
            key = cert_dir.join("key.pem").display(),
            dburl = node_dir.join("database.url").display(),
            etcd = etcd
                .endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", "),
            ttl = opts.lease_ttl_secs,
            pf = policy_file.display(),
        );
        let config_path = node_dir.join("node.toml");
        write_private(&config_path, config.as_bytes())?;
        nodes.push(ClusterNode {
            id: id.clone(),
            api_url: format!("https://127.0.0.1:{api_port}"),
            quic_addr: format!("127.0.0.1:{quic_port}"),
            config: config_path,
            log: node_dir.join("node.log"),
            dir: node_dir,
            database_url: db_url,
            database: db_name,
        });
    }

    for n in &nodes {
        hsm_init(&n.config)?;
    }
    for n in &nodes {
        start_node(&n.config, &n.log)?;
    }
    let client = crate::tls::api_client(&ca_dir.join("ca.pem"))?;
    for n in &nodes {
        wait_healthy(&client, n).await?;
    }

    let file = ClusterFile {
        cluster_id,
        threshold: opts.threshold,
        ca_cert: ca_dir.join("ca.pem"),
        admin_token,
        etcd_endpoints: etcd.endpoints.clone(),
        etcd_prefix: prefix,
        postgres_admin_url: pg.admin_url.clone(),
        postgres_bindir: pg.bindir.clone(),
        nodes,
    };
    file.save(&dir.join("cluster.json"))?;
    Ok(file)
}

/// SoftHSM2 module shipped by Debian's `softhsm2` package.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Creates a fresh SoftHSM2 token for one dev node (its own token directory and
/// configuration, a random PIN in a 0600 file) and returns the node's `[custody]`
/// configuration section.
pub(super) fn softhsm_token(node_dir: &Path, node_id: &str) -> anyhow::Result<String> {
    let dir = node_dir.join("softhsm");
    std::fs::create_dir_all(dir.join("tokens"))?;
    set_mode(&dir, 0o700)?;
    let conf = dir.join("softhsm2.conf");
    write_private(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        )
        .as_bytes(),
    )?;
    let pin = postgres::random_password();
    let so_pin = postgres::random_password();
    let pin_file = dir.join("user.pin");
    write_private(&pin_file, pin.as_bytes())?;
    // Dev tooling: softhsm2-util only takes PINs as arguments. The daemon itself
    // reads its PIN from the file.
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            node_id,
            "--pin",
            &pin,
            "--so-pin",
            &so_pin,
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run softhsm2-util (install softhsm2): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "softhsm2-util --init-token failed for {node_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!(
        "[custody]\nbackend = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{node_id}\"\n\
         kek_label = \"signer-kek\"\npin_file = \"{}\"\nsofthsm2_conf = \"{}\"\n",
        pin_file.display(),
        conf.display()
    ))
}

/// Creates the node's key-encryption key in its token (`signer hsm init`, in its
/// own process because SoftHSM reads its configuration once per process).
pub(super) fn hsm_init(config: &Path) -> anyhow::Result<()> {
    let out = Command::new(std::env::current_exe()?)
        .args(["hsm", "init", "--config"])
        .arg(config)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "signer hsm init --config {} failed: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts one node process detached, logging to `log`. Used by `cluster up` and by
/// tests that restart a node.
pub fn start_node(config: &Path, log: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("node").arg("run").arg("--config").arg(config);
    spawn_logged(cmd, log)
}

fn print_summary(dir: &Path, file: &ClusterFile) {
    println!(
        "cluster {} is up: {} nodes, threshold {}",
        file.cluster_id,
        file.nodes.len(),
        file.threshold
    );
    for n in &file.nodes {
        println!("  {:<8} api {:<28} quic {}", n.id, n.api_url, n.quic_addr);
    }
    println!("  etcd     {}", file.etcd_endpoints.join(","));
    println!(
        "cluster file (admin token inside, mode 0600): {}",
        dir.join("cluster.json").display()
    );
    println!(
        "status: signer status --cluster {}",
        dir.join("cluster.json").display()
    );
}

async fn wait_for_stop(watch_pid: Option<u32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let watched = async {
        match watch_pid {
            Some(pid) => {
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = watched => {}
    }
}

/// Waits up to 60 s for `node` to answer `/health` (the error points at its log).
pub(super) async fn wait_healthy(
    client: &reqwest::Client,
    node: &ClusterNode,
) -> anyhow::Result<()> {
    let url = format!("{}/health", node.api_url);
    wait_until(
        &format!("{} to answer /health", node.id),
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; see {}", node.log.display()))
}
