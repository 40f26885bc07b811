//! DKG latency end to end on a real dev cluster, beside the bare library's
//! in-process cost for the same parameters, measured in the same run. A benchmark,
//! not a test: run by hand, never by `make test`.
//!
//! ```text
//! cargo build -p signer --release && \
//!   cargo run -p cluster-tests --release --bin dkg-latency -- [--runs 10] [--nodes 5] [--t 3]
//! ```
//!
//! End to end = from just before `POST /api/v1/dkg/start` to the last participant's
//! `completed_at` in its own database (PostgreSQL `now()` on the same host as this
//! process, so one clock). The stage split uses the nodes' own timestamps: the
//! coordinator's "announcing key ceremony" log line, each node's ceremony row
//! (`created_at` = joined), its "all participants at the barrier" debug line (the
//! nodes run with `RUST_LOG=info,signer::dkg=debug`), its `key_shares.created_at`
//! (keygen done and share sealed) and `completed_at` (all confirmations in).
//! Each stage is the latest node's time minus the previous stage's latest time.
//! The library rows run all parties in this process: one protocol thread per party
//! over `ChannelDelivery` (what a node does, minus QUIC), and all parties on one
//! thread (total CPU).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cluster_tests::bench::{ms, pct, Figure};
use cluster_tests::Cluster;
use serde_json::{json, Value};
use signer_protocol::ecdsa::{self, EcdsaKeygenMsg};
use signer_protocol::frost::{self, FrostKeygenMsg};
use signer_protocol::local::local_network;
use signer_protocol::{channel_party, run_on_thread, ExecutionId, ProtocolError, ProtocolKind};

struct Args {
    runs: usize,
    nodes: u16,
    t: u16,
    poll: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 10,
        nodes: 5,
        t: 3,
        poll: Duration::from_millis(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> anyhow::Result<u64> {
            let v = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--runs" => a.runs = usize::try_from(num()?)?.max(1),
            "--nodes" => a.nodes = u16::try_from(num()?)?,
            "--t" => a.t = u16::try_from(num()?)?,
            "--poll-ms" => a.poll = Duration::from_millis(num()?.max(1)),
            "--help" | "-h" => {
                println!("dkg-latency [--runs N] [--nodes N] [--t T] [--poll-ms MS]");
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
    // The node processes inherit this: stage timestamps in their JSON logs.
    std::env::set_var("RUST_LOG", "info,signer::dkg=debug");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

fn signer_version() -> String {
    std::process::Command::new(cluster_tests::signer_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn wait_ready(c: &Cluster, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    for i in 0..n {
        loop {
            let ok = async {
                let r = c.client().get(c.url(i, "/ready")).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["custody"]["state"] == "unsealed" && v["peers_connected"] == n - 1)
                    .then_some(())?;
                let s = c.get(i, "/api/v1/cluster/status", c.admin()).await;
                let s: Value = s.json().await.ok()?;
                (s["healthy_nodes"] == n).then_some(())
            }
            .await;
            if ok.is_some() {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(90),
                "node {i} not ready within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One measured ceremony.
#[derive(Debug, Clone)]
struct Run {
    id: String,
    coordinator: usize,
    post_wall: DateTime<Utc>,
    post_rtt: Duration,
    observed: Duration,
    joined: Vec<DateTime<Utc>>,
    stored: Vec<DateTime<Utc>>,
    completed: Vec<DateTime<Utc>>,
}

async fn one_ceremony(
    c: &Cluster,
    dbs: &[sqlx::PgPool],
    protocol: &str,
    t: u16,
    coordinator: usize,
    poll: Duration,
) -> anyhow::Result<Run> {
    let client = c.client();
    let body = json!({"protocol": protocol, "threshold": t});
    let post_wall = Utc::now();
    let start = Instant::now();
    let r = client
        .post(c.url(coordinator, "/api/v1/dkg/start"))
        .bearer_auth(c.admin())
        .json(&body)
        .send()
        .await?;
    let post_rtt = start.elapsed();
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status.as_u16() == 202, "start refused: {status} {v}");
    let id = v["ceremony_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no ceremony_id in {v}"))?
        .to_owned();
    let uuid = uuid::Uuid::parse_str(&id)?;
    let n = dbs.len();
    let mut done = vec![false; n];
    loop {
        for (i, db) in dbs.iter().enumerate() {
            if done[i] {
                continue;
            }
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT state, error FROM dkg_ceremonies WHERE id = $1")
                    .bind(uuid)
                    .fetch_optional(db)
                    .await?;
            match row {
                Some((s, _)) if s == "completed" => done[i] = true,
                Some((s, e)) if s == "failed" => {
                    anyhow::bail!("ceremony {id} failed on node {}: {e:?}", i + 1)
                }
                _ => {}
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "ceremony {id} not completed within 60 s"
        );
        tokio::time::sleep(poll).await;
    }
    let observed = start.elapsed();
    let mut joined = Vec::new();
    let mut stored = Vec::new();
    let mut completed = Vec::new();
    for db in dbs {
        let (created_at, completed_at): (DateTime<Utc>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT created_at, completed_at FROM dkg_ceremonies WHERE id = $1")
                .bind(uuid)
                .fetch_one(db)
                .await?;
        let (share_at,): (DateTime<Utc>,) =
            sqlx::query_as("SELECT created_at FROM key_shares WHERE ceremony_id = $1")
                .bind(uuid)
                .fetch_one(db)
                .await?;
        joined.push(created_at);
        stored.push(share_at);
        completed.push(completed_at.ok_or_else(|| anyhow::anyhow!("no completed_at"))?);
    }
    Ok(Run {
        id,
        coordinator,
        post_wall,
        post_rtt,
        observed,
        joined,
        stored,
        completed,
    })
}

/// Timestamps of `message` lines mentioning each ceremony, per node log.
fn log_times(c: &Cluster, n: usize, message: &str) -> HashMap<(String, usize), DateTime<Utc>> {
    let mut out = HashMap::new();
    for i in 0..n {
        let text = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(message)) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] != message {
                continue;
            }
            let (Some(id), Some(ts)) = (v["ceremony"].as_str(), v["timestamp"].as_str()) else {
                continue;
            };
            if let Ok(ts) = ts.parse::<DateTime<Utc>>() {
                out.insert((id.to_owned(), i), ts);
            }
        }
    }
    out
}

fn since(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

fn eid(kind: ProtocolKind, tag: u64) -> ExecutionId {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&tag.to_be_bytes());
    s[8..].copy_from_slice(&rand_tag().to_be_bytes());
    ExecutionId::derive(&s, kind, 0, &["bench"], b"")
}

fn rand_tag() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % u128::from(u64::MAX))
            .unwrap_or(0),
    )
    .unwrap_or(0)
}

/// All parties, one protocol thread each, over in-process channels (wall time).
async fn lib_channels(protocol: &str, n: u16, t: u16, tag: u64) -> anyhow::Result<Duration> {
    let eps = local_network(n, None);
    let ecdsa_eid = eid(ProtocolKind::EcdsaKeygen, tag);
    let frost_eid = eid(ProtocolKind::FrostKeygen, tag);
    let start = Instant::now();
    let mut hs = Vec::new();
    for (i, ep) in (0..n).zip(eps) {
        let h = match protocol {
            "cggmp24" => {
                let e = ecdsa_eid;
                tokio::spawn(run_on_thread(ProtocolKind::EcdsaKeygen, move || {
                    let p = channel_party::<EcdsaKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                    async move { ecdsa::keygen(p, &e, i, n, t, None).await.map(|_| ()) }
                }))
            }
            _ => {
                let e = frost_eid;
                tokio::spawn(run_on_thread(ProtocolKind::FrostKeygen, move || {
                    let p = channel_party::<FrostKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                    async move { frost::keygen(p, &e, i, n, t).await.map(|_| ()) }
                }))
            }
        };
        hs.push(h);
    }
    for h in hs {
        h.await??;
    }
    Ok(start.elapsed())
}

/// All parties on one thread (this task), over in-process channels: total CPU.
async fn lib_one_thread(protocol: &str, n: u16, t: u16, tag: u64) -> anyhow::Result<Duration> {
    let eps = local_network(n, None);
    let start = Instant::now();
    let res: Vec<Result<(), ProtocolError>> = match protocol {
        "cggmp24" => {
            let e = eid(ProtocolKind::EcdsaKeygen, tag);
            futures::future::join_all((0..n).zip(eps).map(|(i, ep)| {
                let p = channel_party::<EcdsaKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                async move { ecdsa::keygen(p, &e, i, n, t, None).await.map(|_| ()) }
            }))
            .await
        }
        _ => {
            let e = eid(ProtocolKind::FrostKeygen, tag);
            futures::future::join_all((0..n).zip(eps).map(|(i, ep)| {
                let p = channel_party::<FrostKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                async move { frost::keygen(p, &e, i, n, t).await.map(|_| ()) }
            }))
            .await
        }
    };
    for r in res {
        r?;
    }
    Ok(start.elapsed())
}

async fn bench(a: Args) -> anyhow::Result<()> {
    let n = usize::from(a.nodes);
    eprintln!("starting a {}-node cluster ...", a.nodes);
    let c = Cluster::start(a.nodes, a.t);
    wait_ready(&c, n).await?;
    let mut dbs = Vec::new();
    for i in 0..n {
        dbs.push(c.db(i).await);
    }
    let mut table: Vec<String> = Vec::new();
    let mut stage_table: Vec<String> = Vec::new();
    for protocol in ["cggmp24", "frost"] {
        // warm-up: first ceremony of the process (connections, caches); not counted
        one_ceremony(&c, &dbs, protocol, a.t, 0, a.poll).await?;
        let mut runs = Vec::new();
        for r in 0..a.runs {
            let run = one_ceremony(&c, &dbs, protocol, a.t, r % n, a.poll).await?;
            eprintln!(
                "{protocol} run {r}: {:.1} ms to the last completed_at ({})",
                since(
                    run.post_wall,
                    *run.completed.iter().max().unwrap_or(&run.post_wall)
                ),
                run.id
            );
            runs.push(run);
        }
        // library, same parameters, same process
        let mut lib_ch = Vec::new();
        let mut lib_one = Vec::new();
        for r in 0..a.runs {
            lib_ch.push(ms(lib_channels(protocol, a.nodes, a.t, r as u64).await?));
            lib_one.push(ms(
                lib_one_thread(protocol, a.nodes, a.t, 1000 + r as u64).await?
            ));
        }

        let announce = log_times(&c, n, "announcing key ceremony");
        let barrier = log_times(&c, n, "all participants at the barrier");
        let max = |v: &[DateTime<Utc>]| v.iter().copied().max().unwrap_or_default();
        let e2e: Vec<f64> = runs
            .iter()
            .map(|r| since(r.post_wall, max(&r.completed)))
            .collect();
        let observed: Vec<f64> = runs.iter().map(|r| ms(r.observed)).collect();
        let rtt: Vec<f64> = runs.iter().map(|r| ms(r.post_rtt)).collect();
        let mut stages: Vec<(&str, Vec<f64>)> = vec![
            ("POST → announce (validate, etcd lock, fenced put)", vec![]),
            (
                "announce → last node joined (QUIC announce, row insert)",
                vec![],
            ),
            ("joined → last node past the etcd barrier", vec![]),
            (
                "barrier → last share sealed and stored (keygen + seal)",
                vec![],
            ),
            ("stored → last completed (confirmations, commit)", vec![]),
        ];
        for r in &runs {
            let Some(ann) = announce.get(&(r.id.clone(), r.coordinator)).copied() else {
                continue;
            };
            let bar: Vec<DateTime<Utc>> = (0..n)
                .filter_map(|i| barrier.get(&(r.id.clone(), i)).copied())
                .collect();
            if bar.len() != n {
                continue;
            }
            let points = [
                r.post_wall,
                ann,
                max(&r.joined),
                max(&bar),
                max(&r.stored),
                max(&r.completed),
            ];
            for (k, w) in points.windows(2).enumerate() {
                stages[k].1.push(since(w[0], w[1]));
            }
        }
        let lib_med = pct(&lib_ch, 0.5);
        let row = |what: &str, v: &[f64]| {
            format!(
                "| {protocol} | {what} | {} | {:.1} ms | {:.1} ms |",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.9)
            )
        };
        table.push(row(
            "end to end: POST → last node's completed_at (DB clock)",
            &e2e,
        ));
        table.push(row(
            &format!("end to end as polled ({} ms DB polls)", a.poll.as_millis()),
            &observed,
        ));
        table.push(row("POST answered (202)", &rtt));
        table.push(row(
            "library: one protocol thread per party over channels (wall)",
            &lib_ch,
        ));
        table.push(row("library: all parties on one thread (CPU)", &lib_one));
        table.push(format!(
            "| {protocol} | **ratio end to end / library (channels), medians** | | **{:.1}×** | |",
            pct(&e2e, 0.5) / lib_med
        ));
        Figure::new(
            "dkg-latency",
            format!("DKG {protocol} {}-of-{} end to end, median", a.t, a.nodes),
            pct(&e2e, 0.5),
            "ms",
        )
        .lib(lib_med)
        .target("<= 100 (issue 5)")
        .seed("#73: not measured (needed a DKG)")
        .record()?;
        for (what, v) in &stages {
            stage_table.push(format!(
                "| {protocol} | {what} | {} | {:.1} ms | {:.1} ms |",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.9)
            ));
        }
    }
    for db in dbs {
        db.close().await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let exe = std::env::var_os("SIGNER_BIN").map(PathBuf::from);
    println!(
        "\n{} nodes, t = {}, {} runs per key type (+1 warm-up); {}; signer binary {}; load average {}",
        a.nodes,
        a.t,
        a.runs,
        signer_version(),
        exe.map(|p| p.display().to_string()).unwrap_or_default(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("\n| protocol | what | runs | median | p90 |\n|---|---|---|---|---|");
    for l in &table {
        println!("{l}");
    }
    println!("\nWhere the time goes (latest node at each stage):\n");
    println!("| protocol | stage | runs | median | p90 |\n|---|---|---|---|---|");
    for l in &stage_table {
        println!("{l}");
    }
    Ok(())
}
