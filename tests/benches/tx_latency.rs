//! Transactions end to end on a real dev cluster, beside the bare library's signing
//! cost measured in the same run. A benchmark, not a test: run by hand, never by
//! `make test`.
//!
//! ```text
//! cargo build -p signer --release && \
//!   cargo run -p cluster-tests --release --bin tx-latency -- \
//!     [--runs 20] [--nodes 5] [--t 3] [--concurrent 100] [--ecdsa-runs 3] [--soak 10000]
//! ```
//!
//! * **Latency**: from just before `POST /api/v1/transactions` (recipient + amount,
//!   one input) to the leader's row reaching `signed` (polled every 2 ms in its own
//!   database): intake, proposal, every node's validation and signed vote, quorum,
//!   permits, threshold signing, finalization and libbitcoinconsensus verification.
//! * **Intake rate**: `--concurrent` submissions at once; submissions per second until
//!   the last `202`.
//! * **Signatures per second**: the same batch, Taproot inputs signed per second until
//!   the last transaction is `signed` at its leader.
//! * **Soak** (`--soak N`): N more payments in waves of 1,000; after each wave, the
//!   nodes' resident memory and node-1's database connections once idle (growth
//!   from the first wave to the last).
//! * **Library**: FROST signing of `t` parties in this process over channels (givre),
//!   and CGGMP24 full signing (keygen and aux info with the fixture primes first, not
//!   timed).
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use bitcoin::consensus::encode;
use bitcoin::{Address, Amount, OutPoint, Transaction, TxIn, TxOut};
use cluster_tests::bench::{ms, pct, presignatures_available, presignatures_consumed, Figure};
use cluster_tests::Cluster;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{json, Value};
use signer_protocol::ecdsa::{self, EcdsaAuxMsg, EcdsaKeygenMsg, EcdsaSignMsg, PrimeSet};
use signer_protocol::frost::{self, FrostKeygenMsg, FrostSignMsg};
use signer_protocol::local::local_network;
use signer_protocol::{channel_party, ExecutionId, ProtocolKind, SighashMessage};

/// Name of this benchmark in `make bench`'s table.
const BENCH: &str = "tx-latency";

struct Args {
    runs: usize,
    nodes: u16,
    t: u16,
    concurrent: Vec<usize>,
    utxos: usize,
    ecdsa_runs: usize,
    /// Skip the ECDSA key, its aux info and its runs (quicker runs while profiling).
    taproot_only: bool,
    /// Log every SQL statement of the batches (PostgreSQL's log in the cluster
    /// directory, `%d` = node database): for counting statements, not for figures.
    pg_log: bool,
    /// Print the batches' statements by server time from `pg_stat_statements`
    /// (needs the cluster's PostgreSQL started with it: `SIGNER_PG_STAT=1`).
    pg_stat: bool,
    /// After the batches: this many more Taproot payments in waves of
    /// [`SOAK_WAVE`], with the nodes' RSS and node-1's database connections sampled
    /// after each wave (0: no soak).
    soak: usize,
    logs: Option<std::path::PathBuf>,
    /// Profiling only: run node 1 (the leader) under `heaptrack`, writing its
    /// profile to this path (node 1 is restarted under it once the keys exist;
    /// heaptrack slows its allocations, so the run's figures are not to quote).
    heaptrack_leader: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 20,
        nodes: 5,
        t: 3,
        concurrent: vec![100],
        utxos: 0,
        ecdsa_runs: 3,
        taproot_only: false,
        pg_log: false,
        pg_stat: false,
        soak: 0,
        logs: None,
        heaptrack_leader: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> anyhow::Result<usize> {
            let v = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--runs" => a.runs = num()?.max(1),
            "--nodes" => a.nodes = u16::try_from(num()?)?,
            "--t" => a.t = u16::try_from(num()?)?,
            "--concurrent" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--concurrent needs a value"))?;
                a.concurrent = v
                    .split(',')
                    .map(|n| n.parse::<usize>().map(|n| n.max(1)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--concurrent {v}: {e}"))?;
            }
            "--utxos" => a.utxos = num()?,
            "--ecdsa-runs" => a.ecdsa_runs = num()?,
            "--taproot-only" => a.taproot_only = true,
            "--pg-log" => a.pg_log = true,
            "--pg-stat" => a.pg_stat = true,
            "--soak" => a.soak = num()?,
            "--heaptrack-leader" => {
                a.heaptrack_leader = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--heaptrack-leader needs a file path"))?
                        .into(),
                )
            }
            "--logs" => {
                a.logs = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--logs needs a directory"))?
                        .into(),
                )
            }
            "--help" | "-h" => {
                println!(
                    "tx-latency [--runs N] [--nodes N] [--t T] [--concurrent N[,N..]] [--utxos N] \
                     [--ecdsa-runs N] [--taproot-only] [--soak N] [--pg-log] [--pg-stat (with SIGNER_PG_STAT=1)] [--logs DIR (copy the node logs there; set RUST_LOG for more)] [--heaptrack-leader FILE (profiling only)]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    anyhow::ensure!(
        a.t >= 2 && a.t <= a.nodes,
        "need 2 <= t <= nodes (got t {} nodes {})",
        a.t,
        a.nodes
    );
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    cluster_tests::bench::use_signer_next_to_this_binary()?;
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = c
        .client()
        .post(c.url(i, path))
        .bearer_auth(c.admin())
        .json(body)
        .send()
        .await?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

/// Runs a ceremony (`/dkg/start` or `/aux-info/start`) and waits for it on every node.
async fn ceremony(c: &Cluster, n: usize, path: &str, body: Value) -> anyhow::Result<String> {
    let (s, v) = post(c, 0, path, &body).await?;
    anyhow::ensure!(s == 202, "{path}: {s} {v}");
    let id = v["ceremony_id"].as_str().unwrap_or_default().to_owned();
    for i in 0..n {
        let p = format!("/api/v1/dkg/ceremonies/{id}");
        let v = until(&p, Duration::from_secs(600), || async {
            c.get_ok(i, &p)
                .await
                .filter(|v| v["state"] == "completed" || v["state"] == "failed")
        })
        .await?;
        anyhow::ensure!(v["state"] == "completed", "ceremony on node {i}: {v}");
    }
    Ok(id)
}

fn other_address() -> Address {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let (_, pk) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
    Address::p2wpkh(&bitcoin::CompressedPublicKey(pk), bitcoin::Network::Regtest)
}

/// Imports a made-up funding transaction with `count` outputs of `value` to the key's
/// first address.
/// Imports `count` UTXOs of `value` sats for `key_id`, in funding transactions of
/// at most [`OUTPUTS_PER_FUNDING`] outputs each (every payment carries its input's
/// whole funding transaction to the peers for BIP-143 amount proofs, so one huge
/// funding transaction would make every payment large: not what is measured here).
async fn fund(c: &Cluster, key_id: &str, count: usize, value: u64) -> anyhow::Result<()> {
    let e = c.key_entry(0, key_id).await;
    let addr = Address::from_str(e["first_address"].as_str().unwrap_or_default())?
        .require_network(bitcoin::Network::Regtest)?;
    let mut left = count;
    while left > 0 {
        let outputs = left.min(OUTPUTS_PER_FUNDING);
        left -= outputs;
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::from_consensus(rand_u32()),
            input: vec![TxIn {
                previous_output: OutPoint::new(bitcoin::Txid::from_str(&"22".repeat(32))?, 0),
                ..TxIn::default()
            }],
            output: (0..outputs)
                .map(|_| TxOut {
                    value: Amount::from_sat(value),
                    script_pubkey: addr.script_pubkey(),
                })
                .collect(),
        };
        let (s, v) = post(
            c,
            0,
            "/api/v1/utxos",
            &json!({ "raw_tx": encode::serialize_hex(&tx) }),
        )
        .await?;
        anyhow::ensure!(s == 200, "utxo import: {s} {v}");
    }
    Ok(())
}

/// Outputs per funding transaction [`fund`] imports.
const OUTPUTS_PER_FUNDING: usize = 100;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Busy CPU ticks of the whole host (`/proc/stat`) and of the node processes.
fn cpu_ticks(c: &Cluster, n: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy = cpu.iter().sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
    let mut nodes = 0;
    for i in 0..n {
        let pid = c.node_pid(i)?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        nodes += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some((busy, nodes))
}

/// The nodes' resident memory once idle: the largest RSS and the largest anonymous
/// RSS over the nodes (MiB), each node's, and node-1's PostgreSQL connections.
struct Resources {
    rss: Vec<f64>,
    anon: Vec<f64>,
    /// Heap the node holds and free heap its allocator keeps (MiB, `/metrics`).
    heap: Vec<(f64, f64)>,
    conns: i64,
}

impl Resources {
    fn max_rss(&self) -> f64 {
        self.rss.iter().copied().fold(0.0, f64::max)
    }
    fn max_anon(&self) -> f64 {
        self.anon.iter().copied().fold(0.0, f64::max)
    }
    fn max_heap(&self) -> f64 {
        self.heap.iter().map(|h| h.0).fold(0.0, f64::max)
    }
}

/// Node `i`'s heap in use and free heap (MiB) from its `/metrics`; zeros when
/// the node does not report them.
async fn heap_mib(c: &Cluster, i: usize) -> anyhow::Result<(f64, f64)> {
    let m = c
        .client()
        .get(c.url(i, "/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let gauge = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map_or(0.0, |b| b / (1024.0 * 1024.0))
    };
    Ok((
        gauge("signer_heap_in_use_bytes"),
        gauge("signer_heap_free_bytes"),
    ))
}

/// Samples [`Resources`] after 5 s without load.
async fn sample(c: &Cluster, n: usize) -> anyhow::Result<Resources> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = (0..n).map(|i| c.node_rss_kib(i) as f64 / 1024.0).collect();
    let anon = (0..n)
        .map(|i| c.node_rss_anon_kib(i) as f64 / 1024.0)
        .collect();
    let mut heap = Vec::new();
    for i in 0..n {
        heap.push(heap_mib(c, i).await?);
    }
    let db = c.db(0).await;
    let (conns,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&db)
    .await?;
    db.close().await;
    Ok(Resources {
        rss,
        anon,
        heap,
        conns,
    })
}

/// Per-node resident memory, PostgreSQL connections (the seed's #76 and #77) after
/// the load, once the nodes are idle again.
/// Restarts node 1 under `heaptrack -o out` and waits until the cluster sees it
/// again; returns heaptrack's process.
async fn leader_under_heaptrack(
    c: &Cluster,
    n: usize,
    out: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    c.kill_node(0);
    let node = c.node(0);
    let log = std::fs::OpenOptions::new().append(true).open(&node.log)?;
    let child = std::process::Command::new("heaptrack")
        .arg("-o")
        .arg(out)
        .arg(cluster_tests::signer_bin())
        .args(["node", "run", "--config"])
        .arg(&node.config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    until(
        "node 1 back under heaptrack",
        Duration::from_secs(180),
        || async {
            for i in 0..n {
                let s = c.get_ok(i, "/api/v1/cluster/status").await?;
                (s["healthy_nodes"] == n).then_some(())?;
            }
            c.get_ok(0, "/api/v1/keys").await?["keys"]
                .as_array()?
                .iter()
                .all(|k| k["signing_ready"] == true)
                .then_some(())
        },
    )
    .await?;
    println!("node 1 runs under heaptrack (pid {})", child.id());
    Ok(child)
}

/// Stops node 1 (SIGTERM to the node under heaptrack) and waits for heaptrack to
/// write its profile.
fn end_heaptrack(c: &Cluster, mut child: std::process::Child) -> anyhow::Result<()> {
    let config = c.node(0).config.to_string_lossy().into_owned();
    let status = std::process::Command::new("pkill")
        .args(["-TERM", "-f", &format!("node run --config {config}")])
        .status()?;
    anyhow::ensure!(status.success(), "node 1 under heaptrack not found");
    let status = child.wait()?;
    println!("heaptrack ended: {status}");
    Ok(())
}

async fn resources(c: &Cluster, n: usize) -> anyhow::Result<()> {
    let r = sample(c, n).await?;
    println!(
        "idle RSS per node after the load (MiB): {:.1?}, of which anonymous {:.1?}; heap in use, free {:.1?}",
        r.rss, r.anon, r.heap
    );
    Figure::new(
        BENCH,
        "idle RSS per node after the load (largest)",
        r.max_rss(),
        "MiB",
    )
    .target("<= 50")
    .seed("#76: ~7.5 MiB per node (no keys, no pool)")
    .record()?;
    Figure::new(
        BENCH,
        "idle anonymous RSS per node after the load (largest; the rest is the mapped executable)",
        r.max_anon(),
        "MiB",
    )
    .record()?;
    Figure::new(
        BENCH,
        "node-1 database connections, idle after the load",
        r.conns as f64,
        "conns",
    )
    .seed("#77: 12 connections (1 active, 11 idle)")
    .record()?;
    Ok(())
}

/// Payments per soak wave.
const SOAK_WAVE: usize = 1_000;

/// `total` more Taproot payments in waves of [`SOAK_WAVE`] (each wave's coins
/// imported first), sampling [`Resources`] after each wave: the growth of the
/// largest RSS and of the connections from the first wave to the last.
async fn soak(
    c: &Cluster,
    n: usize,
    key: &str,
    client: &reqwest::Client,
    db: &sqlx::PgPool,
    total: usize,
) -> anyhow::Result<()> {
    let waves = total.div_ceil(SOAK_WAVE);
    let mut samples = Vec::new();
    let start = Instant::now();
    for w in 0..waves {
        let size = SOAK_WAVE.min(total - w * SOAK_WAVE);
        fund(c, key, size, 10_000).await?;
        let ids: Vec<uuid::Uuid> =
            futures::stream::iter((0..size).map(|_| submit_via(client, c, key)))
                .buffer_unordered(BATCH_IN_FLIGHT)
                .try_collect()
                .await?;
        signed(db, &ids).await?;
        let r = sample(c, n).await?;
        println!(
            "soak: {} payments signed ({:.0} s): RSS per node {:.1?} MiB (anonymous {:.1?}; heap in use, free {:.1?}), node-1 connections {}",
            w * SOAK_WAVE + size,
            start.elapsed().as_secs_f64(),
            r.rss,
            r.anon,
            r.heap,
            r.conns
        );
        samples.push(r);
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Ok(());
    };
    let peak = samples.iter().map(Resources::max_rss).fold(0.0, f64::max);
    Figure::new(
        BENCH,
        format!("soak of {total} taproot payments: largest RSS, last wave - first wave"),
        last.max_rss() - first.max_rss(),
        "MiB",
    )
    .target("no growth")
    .record()?;
    Figure::new(
        BENCH,
        format!("soak of {total} taproot payments: largest anonymous RSS, last wave - first wave"),
        last.max_anon() - first.max_anon(),
        "MiB",
    )
    .record()?;
    Figure::new(
        BENCH,
        format!("soak of {total} taproot payments: largest heap in use, last wave - first wave"),
        last.max_heap() - first.max_heap(),
        "MiB",
    )
    .record()?;
    Figure::new(
        BENCH,
        format!("soak of {total} taproot payments: largest RSS at any wave"),
        peak,
        "MiB",
    )
    .record()?;
    Figure::new(
        BENCH,
        format!("soak of {total} taproot payments: node-1 connections, last wave - first wave"),
        (last.conns - first.conns) as f64,
        "conns",
    )
    .target("no growth")
    .record()?;
    Ok(())
}

/// Turns PostgreSQL's log of every statement (with the database name) on or off.
async fn statement_log(c: &Cluster, on: bool) -> anyhow::Result<()> {
    let db = c.db_superuser(0).await;
    // Literal statements only (two fixed settings each way).
    let (duration, prefix) = if on {
        (
            "ALTER SYSTEM SET log_min_duration_statement = 0",
            "ALTER SYSTEM SET log_line_prefix = '%m %d %p '",
        )
    } else {
        (
            "ALTER SYSTEM SET log_min_duration_statement = -1",
            "ALTER SYSTEM SET log_line_prefix = '%m '",
        )
    };
    sqlx::query(duration).execute(&db).await?;
    sqlx::query(prefix).execute(&db).await?;
    sqlx::query("SELECT pg_reload_conf()").execute(&db).await?;
    db.close().await;
    Ok(())
}

/// `pg_stat_statements` over all node databases: reset (`per` is `None`), or print
/// the statements with the most server time, per payment of a batch of `per`.
async fn statement_stats(c: &Cluster, per: Option<usize>) -> anyhow::Result<()> {
    let db = c.db_superuser(0).await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&db)
        .await?;
    let Some(batch) = per else {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&db)
            .await?;
        db.close().await;
        return Ok(());
    };
    let rows: Vec<(String, i64, f64, i64, bool)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 150), sum(calls)::bigint, \
                sum(total_exec_time)::float8, sum(rows)::bigint, bool_or(toplevel) \
         FROM pg_stat_statements GROUP BY 1 ORDER BY 3 DESC LIMIT 40",
    )
    .fetch_all(&db)
    .await?;
    let (total,): (f64,) = sqlx::query_as(
        "SELECT coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements WHERE toplevel",
    )
    .fetch_one(&db)
    .await?;
    db.close().await;
    let per_tx = |x: f64| x / batch as f64;
    println!(
        "pg_stat_statements, batch of {batch}: top-level execution {:.2} ms per payment (all nodes)",
        per_tx(total)
    );
    println!("| ms per payment | calls per payment | rows per call | top level | statement |");
    println!("|---|---|---|---|---|");
    for (q, calls, ms, rows, top) in rows {
        println!(
            "| {:.3} | {:.2} | {:.1} | {} | `{}` |",
            per_tx(ms),
            per_tx(calls as f64),
            rows as f64 / calls.max(1) as f64,
            if top { "yes" } else { "no" },
            q.replace('|', "\\|")
        );
    }
    Ok(())
}

fn rand_u32() -> u32 {
    use bitcoin::secp256k1::rand::RngCore;
    bitcoin::secp256k1::rand::thread_rng().next_u32() >> 4
}

async fn submit(c: &Cluster, key_id: &str) -> anyhow::Result<uuid::Uuid> {
    submit_via(&c.client(), c, key_id).await
}

/// Requests a batch keeps open at once.
const BATCH_IN_FLIGHT: usize = 64;

async fn submit_via(
    client: &reqwest::Client,
    c: &Cluster,
    key_id: &str,
) -> anyhow::Result<uuid::Uuid> {
    let body = json!({ "key_id": key_id, "recipient": other_address().to_string(),
                       "amount_sats": 1_000, "fee_rate_sat_vb": 2 });
    let r = client
        .post(c.url(0, "/api/v1/transactions"))
        .bearer_auth(c.admin())
        .json(&body)
        .send()
        .await?;
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(s == 202, "submit: {s} {v}");
    Ok(uuid::Uuid::parse_str(v["id"].as_str().unwrap_or_default())?)
}

/// Waits until every one of `ids` is signed at the leader (node 0): polls every 2 ms
/// for one transaction (latency), every 20 ms for a batch (a 2 ms poll over a batch
/// of ids costs PostgreSQL CPU that would be counted as the cluster's).
async fn signed(db: &sqlx::PgPool, ids: &[uuid::Uuid]) -> anyhow::Result<()> {
    let poll = Duration::from_millis(if ids.len() > 1 { 20 } else { 2 });
    let start = Instant::now();
    loop {
        let (done, bad): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'signed'), \
                    count(*) FILTER (WHERE state IN ('failed', 'rejected', 'expired')) \
             FROM transactions WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(db)
        .await?;
        if bad > 0 {
            let (id, state, reason): (uuid::Uuid, String, Option<String>) = sqlx::query_as(
                "SELECT id, state, failure_reason FROM transactions \
                 WHERE id = ANY($1) AND state IN ('failed', 'rejected', 'expired') LIMIT 1",
            )
            .bind(ids)
            .fetch_one(db)
            .await?;
            anyhow::bail!(
                "{bad} transactions did not sign; the first, {id}: {state} ({})",
                reason.unwrap_or_default()
            );
        }
        if done == i64::try_from(ids.len())? {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "not signed in 900 s"
        );
        tokio::time::sleep(poll).await;
    }
}

fn eid(kind: ProtocolKind, t: u16, n: u16, tag: &str) -> ExecutionId {
    let parts: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let mut sid = [0u8; 16];
    sid[..tag.len().min(16)].copy_from_slice(&tag.as_bytes()[..tag.len().min(16)]);
    ExecutionId::derive(&sid, kind, t, &parts, b"tx-latency bench")
}

/// Bare-library FROST signing of `t` parties: median and p99 ms.
async fn library_frost(n: u16, t: u16, runs: usize) -> anyhow::Result<(f64, f64)> {
    let e = eid(ProtocolKind::FrostKeygen, t, n, "lib-frost");
    let shares =
        futures::future::try_join_all((0..n).zip(local_network(n, None)).map(|(i, ep)| {
            let p = channel_party::<FrostKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
            async move { frost::keygen(p, &e, i, n, t).await }
        }))
        .await?;
    let signers: Vec<u16> = (0..t).collect();
    let mut times = Vec::new();
    for r in 0..runs {
        let sighash = [u8::try_from(r % 251)?.wrapping_add(1); 32];
        let start = Instant::now();
        futures::future::try_join_all((0..t).zip(local_network(t, None)).map(|(pos, ep)| {
            let p = channel_party::<FrostSignMsg>(ep.config, ep.incoming, ep.outgoing);
            let share = &shares[usize::from(pos)];
            let signers = &signers;
            async move {
                let ok = vote::InputPermit::for_tests_only(0, sighash);
                frost::sign(p, pos, signers, share, &[0, 0], &sighash, &ok).await
            }
        }))
        .await?;
        times.push(ms(start.elapsed()));
    }
    Ok((pct(&times, 0.5), pct(&times, 0.99)))
}

/// Bare-library CGGMP24 full signing of `t` parties (median ms).
async fn library_ecdsa(n: u16, t: u16, runs: usize) -> anyhow::Result<f64> {
    let e = eid(ProtocolKind::EcdsaKeygen, t, n, "lib-ecdsa");
    let incomplete =
        futures::future::try_join_all((0..n).zip(local_network(n, None)).map(|(i, ep)| {
            let p = channel_party::<EcdsaKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
            async move { ecdsa::keygen(p, &e, i, n, t, None).await }
        }))
        .await?;
    let ea = eid(ProtocolKind::EcdsaAuxInfo, n, n, "lib-aux");
    let primes: Vec<PrimeSet> = (0..n)
        .map(cluster_tests::bench::fixture_primes)
        .collect::<Result<_, _>>()?;
    let aux = futures::future::try_join_all((0..n).zip(local_network(n, None)).zip(primes).map(
        |((i, ep), primes)| {
            let p = channel_party::<EcdsaAuxMsg>(ep.config, ep.incoming, ep.outgoing);
            async move { ecdsa::aux_info(p, &ea, i, n, primes, None).await }
        },
    ))
    .await?;
    let shares: Vec<_> = incomplete
        .iter()
        .zip(&aux)
        .map(|(s, a)| ecdsa::EcdsaKeyShare::from_parts(s, a).and_then(|k| k.with_precomputation()))
        .collect::<Result<_, _>>()?;
    let signers: Vec<u16> = (0..t).collect();
    let mut times = Vec::new();
    for r in 0..runs {
        let es = eid(ProtocolKind::EcdsaSign, t, n, &format!("lib-sign-{r}"));
        let msg = SighashMessage::from_single_sha256([u8::try_from(r % 251)?.wrapping_add(1); 32]);
        let start = Instant::now();
        futures::future::try_join_all((0..t).zip(local_network(t, None)).map(|(pos, ep)| {
            let p = channel_party::<EcdsaSignMsg>(ep.config, ep.incoming, ep.outgoing);
            let share = &shares[usize::from(pos)];
            let (signers, msg) = (&signers, &msg);
            async move {
                let ok = vote::InputPermit::for_tests_only(0, msg.sighash());
                ecdsa::sign(p, &es, pos, signers, share, &[0, 0], msg, &ok, None).await
            }
        }))
        .await?;
        times.push(ms(start.elapsed()));
    }
    Ok(pct(&times, 0.5))
}

async fn bench(a: Args) -> anyhow::Result<()> {
    let n = usize::from(a.nodes);
    // The presignature pool is on but generates only on request (target 0), so the
    // Taproot and full-signing figures are not disturbed by background generation.
    for (k, v) in [
        ("SIGNER__PRESIGN__ENABLED", "true"),
        ("SIGNER__PRESIGN__TARGET", "0"),
        ("SIGNER__PRESIGN__BATCH", "8"),
        ("SIGNER__PRESIGN__MAX_PATHS", "1"),
        ("SIGNER__PRESIGN__CHECK_INTERVAL_SECS", "1"),
    ] {
        std::env::set_var(k, v);
    }
    let c = Cluster::start(a.nodes, a.t);
    until("cluster ready", Duration::from_secs(120), || async {
        for i in 0..n {
            let s = c.get_ok(i, "/api/v1/cluster/status").await?;
            (s["healthy_nodes"] == n).then_some(())?;
        }
        Some(())
    })
    .await?;
    let frost_key = ceremony(
        &c,
        n,
        "/api/v1/dkg/start",
        json!({"protocol": "frost", "threshold": a.t}),
    )
    .await?;
    let ecdsa_key = if a.taproot_only {
        None
    } else {
        let key = ceremony(
            &c,
            n,
            "/api/v1/dkg/start",
            json!({"protocol": "cggmp24", "threshold": a.t}),
        )
        .await?;
        ceremony(&c, n, "/api/v1/aux-info/start", json!({})).await?;
        Some(key)
    };
    let mut policy = String::from("version = 1\nname = \"bench\"\n");
    for k in std::iter::once(&frost_key).chain(ecdsa_key.as_ref()) {
        policy.push_str(&format!(
            "\n[[scope]]\nkey_id = \"{k}\"\nnetwork = \"regtest\"\n[scope.limits]\nmax_per_tx_sats = 100_000_000\n"
        ));
    }
    for i in 0..n {
        std::fs::write(c.node(i).dir.join("policy.toml"), &policy)?;
    }
    let heaptrack = match &a.heaptrack_leader {
        Some(out) => Some(leader_under_heaptrack(&c, n, out).await?),
        None => None,
    };
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&c.node(0).database_url)
        .await?;

    println!(
        "tx-latency: {} nodes, t={}, loopback, one host with {} cores",
        a.nodes,
        a.t,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "| key | runs | p50 ms | p99 ms | min ms | max ms | presignatures used (incl. warm-up) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let set: Vec<String> = (1..=a.t).map(|i| format!("node-{i}")).collect();
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    for (label, key, runs, presign) in [
        ("taproot (FROST)", Some(&frost_key), a.runs, false),
        (
            "ecdsa (CGGMP24, full signing)",
            ecdsa_key.as_ref(),
            a.ecdsa_runs,
            false,
        ),
        (
            "ecdsa (CGGMP24, presignature)",
            ecdsa_key.as_ref(),
            a.runs,
            true,
        ),
    ] {
        let Some(key) = key.filter(|_| runs > 0) else {
            continue;
        };
        fund(&c, key, runs + 1, 100_000).await?;
        if presign {
            // Presignatures for the leader's first choice of signer set, one per run
            // and one for the warm-up, ready on every member before timing.
            let want = i64::try_from(runs + 1)?;
            let (s, v) = post(
                &c,
                0,
                "/api/v1/presignatures/generate",
                &json!({ "key_id": key, "signer_set": set, "count": want }),
            )
            .await?;
            anyhow::ensure!(s == 202, "generate: {s} {v}");
            until(
                "presignatures generated",
                Duration::from_secs(1800),
                || async {
                    for i in 0..set.len() {
                        if presignatures_available(&c, i, key, &set).await.ok()? < want {
                            return None;
                        }
                    }
                    Some(())
                },
            )
            .await?;
        }
        let consumed_before = presignatures_consumed(&c, 0, key).await?;
        // One warm-up transaction (first use loads the share and precomputations).
        let id = submit(&c, key).await?;
        signed(&db, &[id]).await?;
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let id = submit(&c, key).await?;
            signed(&db, &[id]).await?;
            times.push(ms(start.elapsed()));
        }
        let used = presignatures_consumed(&c, 0, key).await? - consumed_before;
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {runs} | {:.1} | {:.1} | {min:.1} | {max:.1} | {used} |",
            pct(&times, 0.5),
            pct(&times, 0.99)
        );
        let seed = "#74: not measured (needed a DKG)";
        for (q, name, target) in [(0.5, "p50", "<= 15"), (0.99, "p99", "<= 50")] {
            let mut f = Figure::new(
                BENCH,
                format!("{label} submit→signed {name}, idle cluster"),
                pct(&times, q),
                "ms",
            )
            .seed(seed);
            if !label.contains("full signing") {
                f = f.target(target);
            }
            f.record()?;
        }
    }

    if a.utxos > 0 {
        // Coins that stay unspent: the backlog of UTXOs every selection sees (smaller
        // than the batch's coins, which the largest-first selection picks).
        fund(&c, &frost_key, a.utxos, 3_000).await?;
    }
    let mut rates = Vec::new();
    let batch_client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            &c.file.ca_cert,
        )?)?)
        .timeout(Duration::from_secs(900))
        .build()?;
    for &batch in &a.concurrent {
        fund(&c, &frost_key, batch, 10_000).await?;
        if a.pg_log {
            statement_log(&c, true).await?;
        }
        if a.pg_stat {
            statement_stats(&c, None).await?;
        }
        let cpu_before = cpu_ticks(&c, n);
        let start = Instant::now();
        // All queued at once, at most BATCH_IN_FLIGHT requests open (a client with
        // connection reuse, not 1,000 TLS handshakes), each allowed to wait as long as
        // the backlog takes (the API client's 30 s would cut the tail of the batch).
        let ids: Vec<uuid::Uuid> =
            futures::stream::iter((0..batch).map(|_| submit_via(&batch_client, &c, &frost_key)))
                .buffer_unordered(BATCH_IN_FLIGHT)
                .try_collect()
                .await?;
        let intake = start.elapsed();
        signed(&db, &ids).await?;
        let all = start.elapsed();
        let cpu_after = cpu_ticks(&c, n);
        if a.pg_stat {
            statement_stats(&c, Some(batch)).await?;
        }
        if a.pg_log {
            statement_log(&c, false).await?;
        }
        let intake_rate = batch as f64 / intake.as_secs_f64();
        let sign_rate = batch as f64 / all.as_secs_f64();
        rates.push((batch, sign_rate));
        println!();
        println!(
            "concurrent: {batch} taproot payments ({} idle UTXOs beside them): intake {intake_rate:.1} \
             tx/s ({:.0} ms to the last 202), {sign_rate:.1} signatures/s ({:.0} ms to the last signed)",
            a.utxos,
            ms(intake),
            ms(all)
        );
        Figure::new(
            BENCH,
            format!("intake, {batch} taproot payments at once"),
            intake_rate,
            "tx/s",
        )
        .target(">= 200")
        .seed("#71: 61.7 tx/s (no validation, voting or signing)")
        .record()?;
        Figure::new(
            BENCH,
            format!(
                "taproot signatures/s, {batch} payments at once, {} idle UTXOs",
                a.utxos
            ),
            sign_rate,
            "sig/s",
        )
        .target(">= 100")
        .seed("#72: not measured (needed a DKG)")
        .record()?;
        if let (Some(b), Some(e)) = (cpu_before, cpu_after) {
            let per_tx = |ticks: u64| ticks as f64 * 1000.0 / CLK_TCK / batch as f64;
            let host = per_tx(e.0.saturating_sub(b.0));
            let nodes = per_tx(e.1.saturating_sub(b.1));
            println!(
                "cpu per transaction (whole host, all {} nodes): {host:.1} ms busy, of which signer \
                 processes {nodes:.1} ms, the rest (PostgreSQL, etcd, this client) {:.1} ms",
                a.nodes,
                host - nodes
            );
            Figure::new(
                BENCH,
                format!("host CPU per taproot payment, batch of {batch}"),
                host,
                "ms",
            )
            .target("<= 20")
            .seed("#75: 0.00 % per node, idle only")
            .record()?;
        }
    }
    if let (Some(&(small, r0)), Some(&(large, r1))) = (rates.first(), rates.last()) {
        if large > small {
            Figure::new(
                BENCH,
                format!("signature rate, batch of {large} / batch of {small}"),
                r1 / r0,
                "ratio",
            )
            .target(">= 0.9")
            .record()?;
        }
    }
    if a.soak > 0 {
        soak(&c, n, &frost_key, &batch_client, &db, a.soak).await?;
    }
    db.close().await;
    resources(&c, n).await?;
    if let Some(child) = heaptrack {
        end_heaptrack(&c, child)?;
    }
    if let Some(dir) = &a.logs {
        std::fs::create_dir_all(dir)?;
        for i in 0..n {
            std::fs::copy(&c.node(i).log, dir.join(format!("node-{}.log", i + 1)))?;
        }
        let pg = c.dir.join("postgres").join("postgres.log");
        if a.pg_log && pg.exists() {
            std::fs::copy(&pg, dir.join("postgres.log"))?;
        }
    }
    let (f50, f99) = library_frost(a.nodes, a.t, a.runs.max(20)).await?;
    println!(
        "library: FROST sign {}-of-{} in process: p50 {f50:.2} ms, p99 {f99:.2} ms",
        a.t, a.nodes
    );
    Figure::new(
        BENCH,
        format!("library FROST sign {}-of-{} p50", a.t, a.nodes),
        f50,
        "ms",
    )
    .record()?;
    if a.ecdsa_runs > 0 && !a.taproot_only {
        let e50 = library_ecdsa(a.nodes, a.t, a.ecdsa_runs).await?;
        println!(
            "library: CGGMP24 full sign {}-of-{} in process: p50 {e50:.0} ms",
            a.t, a.nodes
        );
    }
    Ok(())
}
