//! Aux-info duration end to end on a real dev cluster (every node joins; primes from
//! each node's pool, here the TEST-ONLY fixture sets), beside the bare library's
//! aux-info generation for the same party count in this process (one protocol thread
//! per party over in-process channels, primes ready), measured in the same run. A
//! benchmark, not a test: run by hand, never by `make test`.
//!
//! ```text
//! cargo build -p signer && cargo run -p cluster-tests --bin aux-latency -- [--nodes 5]
//! ```
//!
//! End to end = from just before `POST /api/v1/aux-info/start` to the last node's
//! `completed_at` in its own database.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cluster_tests::bench::Figure;
use cluster_tests::Cluster;
use serde_json::json;
use signer_protocol::ecdsa::{self, EcdsaAuxMsg, PrimeSet};
use signer_protocol::local::local_network;
use signer_protocol::{channel_party, run_on_thread, ExecutionId, ProtocolKind};

fn main() -> anyhow::Result<()> {
    let mut nodes: u16 = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nodes" => nodes = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}; usage: aux-latency [--nodes N]"),
        }
    }
    if std::env::var_os("SIGNER_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .map(|d| d.join("signer"))
            .filter(|b| b.is_file());
        let bin =
            bin.ok_or_else(|| anyhow::anyhow!("no signer binary next to {}", exe.display()))?;
        std::env::set_var("SIGNER_BIN", bin);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(nodes))
}

async fn cluster_run(nodes: u16) -> anyhow::Result<Duration> {
    let n = usize::from(nodes);
    let c = Cluster::start(nodes, 2);
    c.wait_ready(n).await;
    // Every node must have imported its (fixture) prime set: otherwise it would
    // generate one inline and this would measure prime generation.
    for i in 0..n {
        c.eventually(
            &format!("node {i} prime pool"),
            Duration::from_secs(60),
            || async {
                c.get_ok(i, "/api/v1/aux-info/status")
                    .await
                    .filter(|v| v["prime_pool"]["available"].as_i64().unwrap_or(0) >= 1)
            },
        )
        .await;
    }
    let start_db: (DateTime<Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&c.db(0).await)
        .await?;
    let (status, v) = c.post_json(0, "/api/v1/aux-info/start", &json!({})).await;
    anyhow::ensure!(status == 202, "start refused: {v}");
    let id = v["ceremony_id"].as_str().unwrap_or_default().to_owned();
    let mut last = start_db.0;
    for i in 0..n {
        let row = c
            .eventually(
                &format!("aux info on node {i}"),
                Duration::from_secs(900),
                || async {
                    c.get_ok(i, &format!("/api/v1/dkg/ceremonies/{id}"))
                        .await
                        .filter(|v| v["state"] == "completed" || v["state"] == "failed")
                },
            )
            .await;
        anyhow::ensure!(row["state"] == "completed", "node {i}: {row}");
        let db = c.db(i).await;
        let (done,): (DateTime<Utc>,) =
            sqlx::query_as("SELECT completed_at FROM dkg_ceremonies WHERE id = $1::uuid")
                .bind(&id)
                .fetch_one(&db)
                .await?;
        last = last.max(done);
    }
    for i in 0..n {
        let p = c
            .get_ok(i, "/api/v1/aux-info/status")
            .await
            .unwrap_or_default();
        anyhow::ensure!(
            p["prime_pool"]["generated_total"] == 0,
            "node {i} generated primes during the run: {p}"
        );
    }
    Ok((last - start_db.0).to_std()?)
}

async fn library_run(n: u16) -> anyhow::Result<Duration> {
    let eid = ExecutionId::derive(
        &[7u8; 16],
        ProtocolKind::EcdsaAuxInfo,
        n,
        &["bench"],
        b"aux-bench",
    );
    let eps = local_network(n, None);
    let primes: Vec<PrimeSet> = (0..n)
        .map(cluster_tests::bench::fixture_primes)
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut hs = Vec::new();
    for ((i, ep), p) in (0..n).zip(eps).zip(primes) {
        hs.push(tokio::spawn(run_on_thread(
            ProtocolKind::EcdsaAuxInfo,
            move || {
                let party = channel_party::<EcdsaAuxMsg>(ep.config, ep.incoming, ep.outgoing);
                async move {
                    ecdsa::aux_info(party, &eid, i, n, p, None)
                        .await
                        .map(|_| ())
                }
            },
        )));
    }
    for h in hs {
        h.await??;
    }
    Ok(start.elapsed())
}

async fn bench(nodes: u16) -> anyhow::Result<()> {
    let lib = library_run(nodes).await?;
    let cluster = cluster_run(nodes).await?;
    let lib2 = library_run(nodes).await?;
    let lib_mean = (lib + lib2) / 2;
    println!("| what | seconds |\n|---|---|");
    println!(
        "| cluster aux info, {nodes} nodes, end to end | {:.1} |",
        cluster.as_secs_f64()
    );
    println!(
        "| library aux info, {nodes} parties, one thread each, over channels (before / after) | {:.1} / {:.1} |",
        lib.as_secs_f64(),
        lib2.as_secs_f64()
    );
    println!(
        "| ratio cluster / library (mean of the two library runs) | {:.2} |",
        cluster.as_secs_f64() / lib_mean.as_secs_f64()
    );
    Figure::new(
        "aux-latency",
        format!("aux info, {nodes} nodes, end to end"),
        cluster.as_secs_f64(),
        "s",
    )
    .lib(lib_mean.as_secs_f64())
    .record()?;
    Ok(())
}
