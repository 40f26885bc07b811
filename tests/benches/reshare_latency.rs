//! Reshare latency 5 → 6 nodes on a real dev cluster, beside a fresh DKG (and, for
//! ECDSA, aux info) in the same run. A benchmark, not a test: run by hand, never by
//! `make test`.
//!
//! ```text
//! cargo build -p signer --bins && \
//!   cargo run -p cluster-tests --bin reshare-latency -- [--runs 3]
//! ```
//!
//! It starts a 5-node cluster (t = 3), adds node-6 with `signer cluster add-node`,
//! then per key type and run: a DKG on nodes 1–5 with t = 3 (`POST
//! /api/v1/dkg/start` → completed on all five), and a reshare of that key to the six
//! nodes with t = 4 (`POST /api/v1/keys/{id}/reshare` → completed on all six:
//! proposal, votes, announcement, barrier, protocol, sealing, confirmations,
//! switch). ECDSA also: aux info for nodes 1–5 once before the runs, and aux info for
//! the six once (started by the first reshare's coordinator) until completed on
//! all six. Times are wall clock from just before the POST to the last node seen
//! `completed` by polling every node's API every 20 ms.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cluster_tests::bench::{ms, pct};
use cluster_tests::Cluster;
use serde_json::{json, Value};

fn main() -> anyhow::Result<()> {
    let mut runs = 3usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a value"))?
                    .parse::<usize>()?
                    .max(1)
            }
            "--help" | "-h" => {
                println!("reshare-latency [--runs N]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    cluster_tests::bench::use_signer_next_to_this_binary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(runs))
}

/// Polls `path` on each of `nodes` until `completed` (error on `failed`).
async fn until_completed(c: &Cluster, nodes: &[usize], path: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    for &i in nodes {
        loop {
            if let Some(v) = c.get_ok(i, path).await {
                match v["state"].as_str() {
                    Some("completed") => break,
                    Some("failed") => anyhow::bail!("node {i}: {path} failed: {v}"),
                    _ => {}
                }
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(1800),
                "{path} not completed on node {i} within 30 min"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Waits until aux info for `set` completed on each of `nodes`.
async fn aux_completed(c: &Cluster, nodes: &[usize], set: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    for &i in nodes {
        loop {
            let done = c
                .get_ok(i, "/api/v1/aux-info/status")
                .await
                .and_then(|v| {
                    v["ceremonies"].as_array().map(|a| {
                        a.iter()
                            .any(|x| x["state"] == "completed" && x["participants"] == json!(set))
                    })
                })
                .unwrap_or(false);
            if done {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(1800),
                "aux info for {set:?} not completed on node {i} within 30 min"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn post(c: &Cluster, path: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, v) = c.post_json(0, path, body).await;
    anyhow::ensure!(status == 202 || status == 200, "{path}: {status} {v}");
    Ok(v)
}

fn summary(name: &str, v: &[f64]) {
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
        v.len(),
        pct(v, 0.5),
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(0.0, f64::max)
    );
}

async fn bench(runs: usize) -> anyhow::Result<()> {
    let mut c = Cluster::start(5, 3);
    c.wait_ready(5).await;
    let five: Vec<String> = (1..=5).map(|i| format!("node-{i}")).collect();
    let six: Vec<String> = (1..=6).map(|i| format!("node-{i}")).collect();

    let t0 = Instant::now();
    let aux = post(&c, "/api/v1/aux-info/start", &json!({})).await?;
    let _ = aux;
    aux_completed(&c, &[0, 1, 2, 3, 4], &five).await?;
    let aux5 = ms(t0.elapsed());

    let t0 = Instant::now();
    let idx = c.add_node();
    let add = ms(t0.elapsed());
    c.wait_ready(6).await;
    // Vote keys pinned everywhere (the reshare's identity keys).
    for i in 0..6 {
        loop {
            let db = c.db(i).await;
            let (k,): (i64,) = sqlx::query_as("SELECT count(*) FROM peer_vote_keys")
                .fetch_one(&db)
                .await?;
            if k == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    anyhow::ensure!(idx == 5);

    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let mut aux6 = None;
    for protocol in ["frost", "cggmp24"] {
        let (mut dkg, mut reshare) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let t0 = Instant::now();
            let v = post(
                &c,
                "/api/v1/dkg/start",
                &json!({"protocol": protocol, "threshold": 3, "participants": five}),
            )
            .await?;
            let key = v["ceremony_id"].as_str().unwrap_or_default().to_owned();
            until_completed(
                &c,
                &[0, 1, 2, 3, 4],
                &format!("/api/v1/dkg/ceremonies/{key}"),
            )
            .await?;
            dkg.push(ms(t0.elapsed()));

            let t0 = Instant::now();
            let v = post(
                &c,
                &format!("/api/v1/keys/{key}/reshare"),
                &json!({"participants": six, "threshold": 4}),
            )
            .await?;
            let sid = v["session_id"].as_str().unwrap_or_default().to_owned();
            until_completed(
                &c,
                &[0, 1, 2, 3, 4, 5],
                &format!("/api/v1/dkg/ceremonies/{sid}"),
            )
            .await?;
            reshare.push(ms(t0.elapsed()));
            eprintln!(
                "{protocol} run {run}: dkg {:.0} ms, reshare 5 -> 6 {:.0} ms",
                dkg[run], reshare[run]
            );
            if protocol == "cggmp24" && aux6.is_none() {
                // The coordinator starts aux info for the six after its switch.
                let t0 = Instant::now();
                aux_completed(&c, &[0, 1, 2, 3, 4, 5], &six).await?;
                aux6 = Some(ms(t0.elapsed()) + reshare[run]);
            }
        }
        results.push((format!("{protocol} DKG, 5 nodes t = 3"), dkg));
        results.push((format!("{protocol} reshare 5 → 6 nodes, t 3 → 4"), reshare));
    }
    println!("\n| operation | runs | median ms | min ms | max ms |\n|---|---|---|---|---|");
    for (name, v) in &results {
        summary(name, v);
    }
    summary("aux info, 5 nodes (test primes)", &[aux5]);
    if let Some(a) = aux6 {
        summary(
            "aux info, the 6 after the first ECDSA reshare (from the reshare POST)",
            &[a],
        );
    }
    summary(
        "cluster add-node (node-6 up, peers added everywhere)",
        &[add],
    );
    Ok(())
}
