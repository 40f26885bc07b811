//! Presignature generation rate of a real 3-node 2-of-3 dev cluster beside the bare
//! library's presigning cost in the same run, and signing latency of a one-input
//! P2WPKH payment with and without a presignature. A benchmark, not a test: run by
//! hand, never by `make test`.
//!
//! ```text
//! cargo build -p signer --bins && \
//!   cargo run -p cluster-tests --bin presign-rate -- [--count 8] [--payments 3]
//! ```
//!
//! * library: keygen + aux info (fixture primes) in process, then `--count`
//!   presignatures for signers {0, 1} on path [0, 0], one after the other, each
//!   party on its own thread over in-process channels (wall time; the same two
//!   cores the cluster gets). Also sign-from-presignature and full signing.
//! * cluster: the pool is on with target 0 (no background refill);
//!   `POST /api/v1/presignatures/generate` asks for `--count` presignatures of the
//!   signer set node-1/node-2; the rate is count / (time until both members hold
//!   them all). Then `--payments` payments of a path no pool serves (full protocol)
//!   and `--count` payments signed with a presignature; latency =
//!   submit to `signed` on the leader (polled every 20 ms).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::bench::{presignatures_available, presignatures_consumed, Figure};
use cluster_tests::wallet::{aux_info, first_address, import, submit_payment};
use cluster_tests::{funding, Cluster};
use serde_json::json;
use signer_protocol::ecdsa::{
    self, EcdsaAuxMsg, EcdsaKeyShare, EcdsaKeygenMsg, EcdsaSignMsg, PrimeSet,
};
use signer_protocol::local::local_network;
use signer_protocol::{
    channel_party, run_on_thread, ExecutionId, ProtocolError, ProtocolKind, SighashMessage,
};

fn main() -> anyhow::Result<()> {
    let (mut count, mut payments) = (8usize, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().unwrap_or_default().parse()?,
            "--payments" => payments = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!(
                "unknown argument {other}; usage: presign-rate [--count N] [--payments N]"
            ),
        }
    }
    if std::env::var_os("SIGNER_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .map(|d| d.join("signer"))
            .filter(|b| b.is_file())
            .ok_or_else(|| anyhow::anyhow!("no signer binary next to {}", exe.display()))?;
        std::env::set_var("SIGNER_BIN", bin);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(count, payments))
}

type ChanParty<M> = signer_protocol::round_based::MpcParty<M, signer_protocol::ChannelDelivery<M>>;

fn eid(kind: ProtocolKind, tag: u64) -> ExecutionId {
    ExecutionId::derive(&[9u8; 16], kind, 2, &["bench"], &tag.to_be_bytes())
}

/// Runs one protocol with `n` parties over in-process channels, one thread each.
async fn channels<M, T, F, Fut>(kind: ProtocolKind, n: u16, f: F) -> anyhow::Result<Vec<T>>
where
    M: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: Fn(u16, ChanParty<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<T, ProtocolError>> + 'static,
{
    let mut hs = Vec::new();
    for (i, ep) in (0..n).zip(local_network(n, None)) {
        let f = f.clone();
        hs.push(tokio::spawn(run_on_thread(kind, move || {
            f(i, channel_party(ep.config, ep.incoming, ep.outgoing))
        })));
    }
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await??);
    }
    Ok(out)
}

struct Library {
    presign: Duration,
    from_presig: Duration,
    full: Duration,
}

async fn library(count: usize) -> anyhow::Result<Library> {
    let (n, t) = (3u16, 2u16);
    let e = eid(ProtocolKind::EcdsaKeygen, 1);
    let shares =
        channels::<EcdsaKeygenMsg, _, _, _>(ProtocolKind::EcdsaKeygen, n, move |i, p| async move {
            ecdsa::keygen(p, &e, i, n, t, None).await
        })
        .await?;
    let primes: Vec<PrimeSet> = (0..n)
        .map(cluster_tests::bench::fixture_primes)
        .collect::<Result<_, _>>()?;
    let primes = Arc::new(std::sync::Mutex::new(
        primes.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let e = eid(ProtocolKind::EcdsaAuxInfo, 2);
    let aux = channels::<EcdsaAuxMsg, _, _, _>(ProtocolKind::EcdsaAuxInfo, n, move |i, p| {
        let (e, primes) = (e, primes.clone());
        async move {
            let pr = primes.lock().expect("lock")[usize::from(i)]
                .take()
                .expect("one prime set per party");
            ecdsa::aux_info(p, &e, i, n, pr, None).await
        }
    })
    .await?;
    let full: Arc<Vec<EcdsaKeyShare>> = Arc::new(
        shares
            .iter()
            .zip(&aux)
            .map(|(s, a)| {
                EcdsaKeyShare::from_parts(s, a).and_then(EcdsaKeyShare::with_precomputation)
            })
            .collect::<Result<_, _>>()?,
    );
    let signers = vec![0u16, 1];
    let path = vec![0u32, 0];
    let start = Instant::now();
    let mut last = Vec::new();
    for r in 0..count {
        let e = eid(ProtocolKind::EcdsaPresign, 100 + r as u64);
        let (sh, sg, pa) = (full.clone(), signers.clone(), path.clone());
        last = channels::<EcdsaSignMsg, _, _, _>(ProtocolKind::EcdsaPresign, t, move |i, p| {
            let (e, sh, sg, pa) = (e, sh.clone(), sg.clone(), pa.clone());
            async move { ecdsa::presign(p, &e, i, &sg, &sh[usize::from(i)], &pa, None).await }
        })
        .await?;
    }
    let presign = start.elapsed() / u32::try_from(count.max(1)).unwrap_or(1);
    let msg = SighashMessage::from_preimage(b"bench preimage");
    let start = Instant::now();
    let mut partials = Vec::new();
    let mut public = None;
    for p in last {
        let ok = vote::InputPermit::for_tests_only(0, msg.sighash());
        let (partial, pubd) = p.issue_partial_signature(&msg, &path, &ok)?;
        partials.push(partial);
        public = Some(pubd);
    }
    let public = public.ok_or_else(|| anyhow::anyhow!("no presignature"))?;
    ecdsa::combine_partial_signatures(&public, &partials, &msg)?;
    let from_presig = start.elapsed();
    let start = Instant::now();
    let e = eid(ProtocolKind::EcdsaSign, 7);
    let (sh, sg, pa) = (full.clone(), signers.clone(), path.clone());
    channels::<EcdsaSignMsg, _, _, _>(ProtocolKind::EcdsaSign, t, move |i, p| {
        let (e, sh, sg, pa) = (e, sh.clone(), sg.clone(), pa.clone());
        async move {
            let ok = vote::InputPermit::for_tests_only(0, msg.sighash());
            ecdsa::sign(p, &e, i, &sg, &sh[usize::from(i)], &pa, &msg, &ok, None).await
        }
    })
    .await?;
    Ok(Library {
        presign,
        from_presig,
        full: start.elapsed(),
    })
}

async fn pay_latency(c: &Cluster, key: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let id = submit_payment(c, key, 20_000, 1).await;
    loop {
        if let Some(v) = c.get_ok(0, &format!("/api/v1/transactions/{id}")).await {
            match v["state"].as_str() {
                Some("signed") => return Ok(start.elapsed()),
                Some("failed" | "rejected" | "expired") => anyhow::bail!("payment ended: {v}"),
                _ => {}
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "payment timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn bench(count: usize, payments: usize) -> anyhow::Result<()> {
    let lib = library(count).await?;
    for (k, v) in [
        ("SIGNER__PRESIGN__ENABLED", "true"),
        ("SIGNER__PRESIGN__TARGET", "0"),
        ("SIGNER__PRESIGN__BATCH", "32"),
        ("SIGNER__PRESIGN__MAX_PATHS", "1"),
        ("SIGNER__PRESIGN__CHECK_INTERVAL_SECS", "1"),
    ] {
        std::env::set_var(k, v);
    }
    let c = Cluster::start(3, 2);
    c.wait_ready(3).await;
    let key = c.dkg(3, "cggmp24", 2).await;
    aux_info(&c, 3).await;
    for i in 0..3 {
        c.write_node_policy(i, &[&key], 1_000_000, "");
    }
    let set = ["node-1", "node-2"];
    // Warm-up: every node opens the key material in the background after aux
    // info, or at its first session. One presignature of a set with each node
    // makes sure all three have done so: the third node's one-time opening
    // otherwise overlaps the timed generation. Not part of the steady-state rate.
    let side = ["node-1", "node-3"];
    for (members, nodes) in [(&set, [0, 1]), (&side, [0, 2])] {
        let (status, v) = c
            .post_json(
                0,
                "/api/v1/presignatures/generate",
                &json!({ "key_id": key, "signer_set": members, "count": 1 }),
            )
            .await;
        anyhow::ensure!(status == 202, "generate refused: {v}");
        while presignatures_available(&c, nodes[0], &key, members).await? < 1
            || presignatures_available(&c, nodes[1], &key, members).await? < 1
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Since session 25 a node signs with its plain share at once and builds the
    // tables in the background (about 22 s of one core per node): wait for all
    // three, so the timed generation neither shares the cores with that build nor
    // runs without the tables the library side uses (`with_precomputation` above).
    let tables_by = Instant::now() + Duration::from_secs(600);
    for i in 0..3 {
        while c.key_entry(i, &key).await["precomputed_tables"] != true {
            anyhow::ensure!(
                Instant::now() < tables_by,
                "node {i} did not build its precomputed tables within 600 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let warm = presignatures_available(&c, 0, &key, &set).await?;
    let want = warm + count as i64;
    let start = Instant::now();
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/presignatures/generate",
            &json!({ "key_id": key, "signer_set": set, "count": count }),
        )
        .await;
    anyhow::ensure!(status == 202, "generate refused: {v}");
    loop {
        if presignatures_available(&c, 0, &key, &set).await? >= want
            && presignatures_available(&c, 1, &key, &set).await? >= want
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(3600),
            "generation timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster_each = start.elapsed() / u32::try_from(count.max(1)).unwrap_or(1);

    // Payments without a presignature spend outputs of receive index 5 (no pool
    // serves that path: max_paths = 1, target 0); they are the largest, so the
    // wallet spends them first. Then one UTXO of [0, 0] per presignature.
    let other = c
        .get_ok(
            0,
            &format!("/api/v1/keys/{key}/addresses?chain=receive&from=5&count=1"),
        )
        .await
        .ok_or_else(|| anyhow::anyhow!("addresses"))?;
    let other: bitcoin::Address = other["addresses"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
        .require_network(bitcoin::Network::Regtest)?;
    let big: Vec<u64> = (0..payments as u64).map(|k| 900_000 + k * 1000).collect();
    import(&c, &funding(&other, &big)).await;
    let addr = first_address(&c, &key).await;
    let total = usize::try_from(want).unwrap_or(count);
    let values: Vec<u64> = (0..total as u64).map(|k| 100_000 + k * 1000).collect();
    import(&c, &funding(&addr, &values)).await;
    // A payment counts as "with" when it consumed a presignature on the leader (the
    // leader only picks among nodes whose approval it has when the round closes).
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..(payments + total) {
        let before = presignatures_consumed(&c, 0, &key).await?;
        let d = pay_latency(&c, &key).await?;
        if presignatures_consumed(&c, 0, &key).await? > before {
            with.push(d);
        } else {
            without.push(d);
        }
    }
    println!("| what | value |\n|---|---|");
    println!(
        "| library presignature, 2 signers over channels (wall, mean of {count}) | {:.2} s ({:.3}/s) |",
        lib.presign.as_secs_f64(),
        1.0 / lib.presign.as_secs_f64()
    );
    println!(
        "| cluster presignatures, set node-1/node-2, {count} on request (wall each) | {:.2} s ({:.3}/s) |",
        cluster_each.as_secs_f64(),
        1.0 / cluster_each.as_secs_f64()
    );
    println!(
        "| ratio cluster rate / library rate | {:.2} |",
        lib.presign.as_secs_f64() / cluster_each.as_secs_f64()
    );
    Figure::new(
        "presign-rate",
        "presignatures/s, one signer set, on request",
        1.0 / cluster_each.as_secs_f64(),
        "presig/s",
    )
    .lib(1.0 / lib.presign.as_secs_f64())
    .target(">= 0.9 x library (issue 7)")
    .record()?;
    println!(
        "| library sign from presignature (2 partials + combine + verify) | {:.2} ms |",
        lib.from_presig.as_secs_f64() * 1e3
    );
    println!(
        "| library full signing, 2 signers over channels | {:.2} s |",
        lib.full.as_secs_f64()
    );
    println!(
        "| cluster payment submit→signed with presignature (median of {}) | {:.0} ms |",
        with.len(),
        median(with).as_secs_f64() * 1e3
    );
    println!(
        "| cluster payment submit→signed without presignature (median of {}) | {:.0} ms |",
        without.len(),
        median(without).as_secs_f64() * 1e3
    );
    Ok(())
}
