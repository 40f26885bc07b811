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
//!
//! The library row runs the same redistribution (`signer_protocol::reshare`, 5 → 6,
//! t 3 → 4, three old holders dealing) in this process, each of the six parties on its own thread over
//! in-process channels (what a node runs, minus QUIC, the vote, sealing and the
//! confirmations), from shares of an in-process keygen, once per cluster run.
//! `make bench` records the medians and the slowest run (`BENCH_RESULTS`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cluster_tests::bench::{ms, pct, Figure};
use cluster_tests::Cluster;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};
use signer_protocol::ecdsa::{self, EcdsaKeygenMsg};
use signer_protocol::frost::{self, FrostKeygenMsg};
use signer_protocol::local::local_network;
use signer_protocol::reshare::{
    self, KeyKind, OldShare, Participant, PublicKeyInfo, ReshareMsg, ReshareParty, ReshareSetup,
};
use signer_protocol::{channel_party, ExecutionId, ProtocolKind};

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

/// 16 random bytes (a session id).
fn random16() -> anyhow::Result<[u8; 16]> {
    let mut s = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut s)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(s)
}

fn execution_id(kind: ProtocolKind) -> anyhow::Result<ExecutionId> {
    Ok(ExecutionId::derive(&random16()?, kind, 0, &["bench"], b""))
}

/// Old shares of a fresh 3-of-5 key, from the library's keygen over channels.
async fn lib_old_key(protocol: &str) -> anyhow::Result<Vec<OwnedOld>> {
    let (n, t) = (5u16, 3u16);
    let eps = local_network(n, None);
    // One execution id for all parties of the run.
    let ecdsa_eid = execution_id(ProtocolKind::EcdsaKeygen)?;
    let frost_eid = execution_id(ProtocolKind::FrostKeygen)?;
    let mut hs = Vec::new();
    for (i, ep) in (0..n).zip(eps) {
        let h = match protocol {
            "cggmp24" => {
                let e = ecdsa_eid;
                tokio::spawn(async move {
                    let p = channel_party::<EcdsaKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                    ecdsa::keygen(p, &e, i, n, t, None)
                        .await
                        .map(|s| OwnedOld::Ecdsa(Box::new(s)))
                })
            }
            _ => {
                let e = frost_eid;
                tokio::spawn(async move {
                    let p = channel_party::<FrostKeygenMsg>(ep.config, ep.incoming, ep.outgoing);
                    frost::keygen(p, &e, i, n, t)
                        .await
                        .map(|s| OwnedOld::Frost(Box::new(s)))
                })
            }
        };
        hs.push(h);
    }
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await??);
    }
    Ok(out)
}

/// An old share the library run deals from.
enum OwnedOld {
    Ecdsa(Box<ecdsa::EcdsaIncompleteShare>),
    Frost(Box<frost::FrostKeyShare>),
}

impl OwnedOld {
    fn share(&self) -> OldShare<'_> {
        match self {
            OwnedOld::Ecdsa(s) => OldShare::EcdsaIncomplete(s),
            OwnedOld::Frost(s) => OldShare::Frost(s),
        }
    }
}

/// The bare library: reshare 5 → 6, t 3 → 4, every party on its own thread over
/// in-process channels; wall time from the first party's start to the last output.
async fn lib_reshare(protocol: &str) -> anyhow::Result<Duration> {
    let old = lib_old_key(protocol).await?;
    let (kind, info) = match &old[0] {
        OwnedOld::Ecdsa(s) => (KeyKind::Ecdsa, PublicKeyInfo::from_ecdsa_incomplete(s)?),
        OwnedOld::Frost(s) => (KeyKind::Frost, PublicKeyInfo::from_frost(s)?),
    };
    let rng = SystemRandom::new();
    let ids = (0..6)
        .map(|_| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("ed25519 keygen"))?;
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("ed25519 key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let participants = (0u16..6)
        .map(|r| Participant {
            identity_key: ids[usize::from(r)]
                .public_key()
                .as_ref()
                .try_into()
                .expect("an Ed25519 public key is 32 bytes"),
            // t = 3 old holders deal (as a node's coordinator picks them); all six
            // receive.
            dealer_index: (r < 3).then_some(r),
            receiver_index: Some(r),
        })
        .collect();
    let setup = ReshareSetup::new(kind, info, 4, 6, participants)?;
    let eid = setup.execution_id(&random16()?);
    let mut parties = Vec::new();
    for r in 0u16..6 {
        let share = old
            .get(usize::from(r))
            .filter(|_| r < 3)
            .map(OwnedOld::share);
        parties.push(ReshareParty::new(&eid, setup.clone(), r, share)?);
    }
    drop(old);
    let eps = local_network(6, None);
    let start = Instant::now();
    let mut hs = Vec::new();
    for ((r, (mut ep, state)), id) in (0u16..).zip(eps.into_iter().zip(parties)).zip(ids) {
        ep.config = reshare::delivery_config(r, 6);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let res = match rt {
                Ok(rt) => rt.block_on(async move {
                    let p = channel_party::<ReshareMsg>(ep.config, ep.incoming, ep.outgoing);
                    reshare::run(p, state, &id)
                        .await
                        .map(|_| ())
                        .map_err(|e| anyhow::anyhow!("reshare party {r}: {e}"))
                }),
                Err(e) => Err(anyhow::anyhow!("runtime: {e}")),
            };
            let _ = tx.send(res);
        });
        hs.push(rx);
    }
    for h in hs {
        h.await??;
    }
    Ok(start.elapsed())
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
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.99),
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
        let (mut dkg, mut reshare, mut lib) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            lib.push(ms(lib_reshare(protocol).await?));
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
        let (d50, r50, l50) = (pct(&dkg, 0.5), pct(&reshare, 0.5), pct(&lib, 0.5));
        let rmax = reshare.iter().copied().fold(0.0, f64::max);
        let key = if protocol == "frost" {
            "taproot"
        } else {
            "ecdsa"
        };
        Figure::new(
            "reshare-latency",
            format!(
                "{key} reshare 5 → 6 nodes t 3 → 4, p50 of {runs} (fresh DKG p50 in the same run: {d50:.0} ms)"
            ),
            r50,
            "ms",
        )
        .lib(l50)
        .record()?;
        Figure::new(
            "reshare-latency",
            format!("{key} reshare 5 → 6 nodes t 3 → 4, slowest of {runs}"),
            rmax,
            "ms",
        )
        .record()?;
        Figure::new(
            "reshare-latency",
            format!("{key} DKG 5 nodes t = 3 (beside the reshare), p50 of {runs}"),
            d50,
            "ms",
        )
        .record()?;
        results.push((format!("{protocol} DKG, 5 nodes t = 3"), dkg));
        results.push((format!("{protocol} reshare 5 → 6 nodes, t 3 → 4"), reshare));
        results.push((
            format!("{protocol} library reshare 5 → 6 (threads over channels)"),
            lib,
        ));
    }
    println!(
        "\n| operation | runs | median ms | p99 ms | min ms | max ms |\n|---|---|---|---|---|---|"
    );
    for (name, v) in &results {
        summary(name, v);
    }
    summary("aux info, 5 nodes (test primes)", &[aux5]);
    Figure::new(
        "reshare-latency",
        "aux info, 5 nodes (test primes), before the reshares",
        aux5 / 1000.0,
        "s",
    )
    .record()?;
    if let Some(a) = aux6 {
        Figure::new(
            "reshare-latency",
            "ecdsa aux info for the 6 after the first reshare (from the reshare POST)",
            a / 1000.0,
            "s",
        )
        .record()?;
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
