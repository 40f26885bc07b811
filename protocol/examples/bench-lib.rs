//! Bare library costs of the threshold protocols, in process, printed as markdown.
//!
//! `cargo run -p signer-protocol --example bench-lib --release -- [--n 5] [--t 3]
//!  [--runs 3] [--aux-runs 1] [--primes]`
//!
//! * "sim" rows run all parties in one thread with round-based's simulator: the time is
//!   the CPU cost of the whole protocol (all parties), no encoding, no channels.
//! * "channels" rows run every party on its own protocol thread connected by
//!   `ChannelDelivery` (CBOR encode/decode, size checks): wall time on this machine.
//! * message sizes are what crosses the channel delivery (per recipient), CBOR as sent,
//!   and the same messages re-encoded as JSON for comparison.
//!
//! Aux info uses the public TEST-ONLY prime fixtures (primes are not generated in the
//! timed part); `--primes` additionally times one `PrimeSet::generate`.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::key::TapTweak;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use signer_protocol::ecdsa::{
    self, EcdsaAuxMsg, EcdsaKeyShare, EcdsaKeygenMsg, EcdsaSignMsg, PrimeSet,
};
use signer_protocol::frost::{self, FrostKeygenMsg, FrostSignMsg};
use signer_protocol::local::{local_network, Tamper};
use signer_protocol::round_based::{sim, MpcParty};
use signer_protocol::{
    codec, run_on_thread, ChannelDelivery, ExecutionId, MsgType, ProtocolError, ProtocolKind,
    SighashMessage,
};

struct Args {
    n: u16,
    t: u16,
    runs: usize,
    aux_runs: usize,
    primes: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 5,
        t: 3,
        runs: 3,
        aux_runs: 1,
        primes: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--n" => a.n = u16::try_from(num()).expect("n fits u16"),
            "--t" => a.t = u16::try_from(num()).expect("t fits u16"),
            "--runs" => a.runs = num().max(1),
            "--aux-runs" => a.aux_runs = num().max(1),
            "--primes" => a.primes = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.t >= 2 && a.t <= a.n && a.n <= 5,
        "need 2 <= t <= n <= 5 (5 prime fixtures)"
    );
    a
}

fn eid(kind: ProtocolKind, tag: u64) -> ExecutionId {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&tag.to_be_bytes());
    s[8..].copy_from_slice(
        &(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        .to_be_bytes(),
    );
    ExecutionId::derive(&s, kind, 0, &["bench"], b"")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt_d(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

fn fixture_primes(i: u16) -> PrimeSet {
    let path = format!(
        "{}/fixtures/test-primes/primes-{i}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    PrimeSet::from_json(&std::fs::read_to_string(path).expect("fixture")).expect("valid fixture")
}

/// Size statistics of one protocol run over channels.
#[derive(Default, Clone)]
struct Sizes {
    msgs: usize,
    cbor_total: usize,
    cbor_max: usize,
    json_total: usize,
    json_max: usize,
}

type SizeLog = Arc<Mutex<Sizes>>;

fn size_tamper<M: Serialize + DeserializeOwned + 'static>(log: SizeLog) -> Tamper {
    Arc::new(move |_s, _r, _t: MsgType, p: &Bytes| {
        let msg: M = codec::decode_message(p, codec::DEFAULT_MAX_MESSAGE_SIZE).expect("decode");
        let json = serde_json::to_vec(&msg).expect("json").len();
        let mut l = log.lock().expect("lock");
        l.msgs += 1;
        l.cbor_total += p.len();
        l.cbor_max = l.cbor_max.max(p.len());
        l.json_total += json;
        l.json_max = l.json_max.max(json);
        None
    })
}

type ChanParty<M> = MpcParty<M, ChannelDelivery<M>>;

/// Runs `n` parties over channels; returns (wall time, outputs, sizes).
async fn over_channels<M, T, F, Fut>(kind: ProtocolKind, n: u16, f: F) -> (Duration, Vec<T>, Sizes)
where
    M: Serialize + DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: Fn(u16, ChanParty<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<T, ProtocolError>> + 'static,
{
    let log = SizeLog::default();
    let endpoints = local_network(n, Some(size_tamper::<M>(log.clone())));
    let start = Instant::now();
    let mut hs = Vec::new();
    for (i, ep) in (0..n).zip(endpoints) {
        let f = f.clone();
        hs.push(tokio::spawn(run_on_thread(kind, move || {
            f(
                i,
                signer_protocol::channel_party(ep.config, ep.incoming, ep.outgoing),
            )
        })));
    }
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.expect("join").expect("protocol"));
    }
    let el = start.elapsed();
    let sizes = log.lock().expect("lock").clone();
    (el, out, sizes)
}

fn sim_run<M, T, Fut>(n: u16, f: impl FnMut(u16, sim_party::P<M>) -> Fut) -> (Duration, Vec<T>)
where
    M: Clone + 'static,
    Fut: Future<Output = Result<T, ProtocolError>>,
{
    let start = Instant::now();
    let out = sim::run(n, f)
        .expect("simulation")
        .into_vec()
        .into_iter()
        .map(|r| r.expect("protocol"))
        .collect();
    (start.elapsed(), out)
}

mod sim_party {
    pub type P<M> = signer_protocol::round_based::state_machine::MpcParty<M>;
}

struct Row {
    op: String,
    median: Duration,
    runs: usize,
    note: String,
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(args));
}

async fn bench(a: Args) {
    let (n, t) = (a.n, a.t);
    let signers: Vec<u16> = (0..t).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut sizes: Vec<(String, Sizes)> = Vec::new();

    // --- cggmp24 keygen
    let mut times = Vec::new();
    let mut incomplete = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaKeygen, r as u64);
        let (d, out) = sim_run::<EcdsaKeygenMsg, _, _>(n, |i, p| async move {
            ecdsa::keygen(p, &e, i, n, t, None).await
        });
        times.push(d);
        incomplete = out;
    }
    rows.push(Row {
        op: format!("cggmp24 threshold keygen, all {n} parties (sim)"),
        median: median(times),
        runs: a.runs,
        note: "HD enabled".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaKeygen, 100 + r as u64);
        let (d, _, s) = over_channels::<EcdsaKeygenMsg, _, _, _>(
            ProtocolKind::EcdsaKeygen,
            n,
            move |i, p| async move { ecdsa::keygen(p, &e, i, n, t, None).await },
        )
        .await;
        times.push(d);
        sizes.push(("cggmp24 keygen".into(), s));
    }
    rows.push(Row {
        op: format!("cggmp24 threshold keygen, {n} parties over channels (wall)"),
        median: median(times),
        runs: a.runs,
        note: "one thread per party, CBOR".into(),
    });

    // --- aux info
    let mut times = Vec::new();
    let mut aux = Vec::new();
    for r in 0..a.aux_runs {
        let e = eid(ProtocolKind::EcdsaAuxInfo, r as u64);
        let (d, out) = sim_run::<EcdsaAuxMsg, _, _>(n, |i, p| async move {
            ecdsa::aux_info(p, &e, i, n, fixture_primes(i), None).await
        });
        times.push(d);
        aux = out;
    }
    rows.push(Row {
        op: format!("cggmp24 aux info, all {n} parties, primes ready (sim)"),
        median: median(times),
        runs: a.aux_runs,
        note: "CPU of all parties".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.aux_runs {
        let e = eid(ProtocolKind::EcdsaAuxInfo, 100 + r as u64);
        let (d, _, s) = over_channels::<EcdsaAuxMsg, _, _, _>(
            ProtocolKind::EcdsaAuxInfo,
            n,
            move |i, p| async move { ecdsa::aux_info(p, &e, i, n, fixture_primes(i), None).await },
        )
        .await;
        times.push(d);
        sizes.push(("cggmp24 aux info".into(), s));
    }
    rows.push(Row {
        op: format!("cggmp24 aux info, {n} parties over channels (wall)"),
        median: median(times),
        runs: a.aux_runs,
        note: "one thread per party on this machine's cores".into(),
    });
    let shares: Arc<Vec<EcdsaKeyShare>> = Arc::new(
        incomplete
            .iter()
            .zip(&aux)
            .map(|(s, x)| EcdsaKeyShare::from_parts(s, x).expect("combine"))
            .collect(),
    );

    // --- presign / sign
    let msg = SighashMessage::from_preimage(b"bench transaction preimage");
    let mut times = Vec::new();
    let mut presigs = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaPresign, r as u64);
        let (sh, sg) = (&shares, &signers);
        let (d, out) = sim_run::<EcdsaSignMsg, _, _>(t, |i, p| async move {
            ecdsa::presign(p, &e, i, sg, &sh[usize::from(i)], &[], None).await
        });
        times.push(d);
        presigs.push(out);
    }
    rows.push(Row {
        op: format!("cggmp24 presignature, {t} signers (sim)"),
        median: median(times),
        runs: a.runs,
        note: "CPU of all signers".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaPresign, 100 + r as u64);
        let (sh, sg) = (shares.clone(), signers.clone());
        let (d, _, s) =
            over_channels::<EcdsaSignMsg, _, _, _>(ProtocolKind::EcdsaPresign, t, move |i, p| {
                let (sh, sg) = (sh.clone(), sg.clone());
                async move { ecdsa::presign(p, &e, i, &sg, &sh[usize::from(i)], &[], None).await }
            })
            .await;
        times.push(d);
        sizes.push(("cggmp24 presign".into(), s));
    }
    rows.push(Row {
        op: format!("cggmp24 presignature, {t} signers over channels (wall)"),
        median: median(times),
        runs: a.runs,
        note: String::new(),
    });
    // the same with the library's precomputed multiexp tables
    let start = Instant::now();
    let pre: Arc<Vec<EcdsaKeyShare>> = Arc::new(
        shares
            .iter()
            .take(usize::from(t))
            .map(|s| {
                EcdsaKeyShare::from_bytes(&s.to_bytes().expect("encode"))
                    .expect("decode")
                    .with_precomputation()
                    .expect("precompute")
            })
            .collect(),
    );
    rows.push(Row {
        op: format!("precompute multiexp tables, {t} key shares (each holds {n} tables)"),
        median: start.elapsed(),
        runs: 1,
        note: format!(
            "in memory, once per loaded share; {} per share",
            kb(pre[0].accelerator_bytes())
        ),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaPresign, 200 + r as u64);
        let (sh, sg) = (&pre, &signers);
        let (d, _) = sim_run::<EcdsaSignMsg, _, _>(t, |i, p| async move {
            ecdsa::presign(p, &e, i, sg, &sh[usize::from(i)], &[], None).await
        });
        times.push(d);
    }
    rows.push(Row {
        op: format!("cggmp24 presignature with precomputed tables, {t} signers (sim)"),
        median: median(times),
        runs: a.runs,
        note: "CPU of all signers".into(),
    });
    let mut times = Vec::new();
    let mut presig_record = 0;
    for set in presigs {
        presig_record = set[0].to_bytes().expect("encode").len();
        let start = Instant::now();
        let mut partials = Vec::new();
        let mut public = None;
        for p in set {
            let (partial, pubdata) = p
                .issue_partial_signature(
                    &msg,
                    &[],
                    &vote::InputPermit::for_tests_only(0, msg.sighash()),
                )
                .expect("issue");
            partials.push(partial);
            public = Some(pubdata);
        }
        let public = public.expect("public data");
        ecdsa::combine_partial_signatures(&public, &partials, &msg).expect("combine");
        times.push(start.elapsed());
    }
    rows.push(Row {
        op: format!("cggmp24 sign from presignature ({t} partials + combine + verify)"),
        median: median(times),
        runs: a.runs,
        note: "local, no network round".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaSign, r as u64);
        let (sh, sg, m) = (&shares, &signers, &msg);
        let (d, _) = sim_run::<EcdsaSignMsg, _, _>(t, |i, p| async move {
            ecdsa::sign(
                p,
                &e,
                i,
                sg,
                &sh[usize::from(i)],
                &[],
                m,
                &vote::InputPermit::for_tests_only(0, m.sighash()),
                None,
            )
            .await
        });
        times.push(d);
    }
    rows.push(Row {
        op: format!("cggmp24 full signing without presignature, {t} signers (sim)"),
        median: median(times),
        runs: a.runs,
        note: "CPU of all signers".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::EcdsaSign, 100 + r as u64);
        let (sh, sg) = (shares.clone(), signers.clone());
        let (d, _, s) =
            over_channels::<EcdsaSignMsg, _, _, _>(ProtocolKind::EcdsaSign, t, move |i, p| {
                let (sh, sg) = (sh.clone(), sg.clone());
                async move {
                    ecdsa::sign(
                        p,
                        &e,
                        i,
                        &sg,
                        &sh[usize::from(i)],
                        &[],
                        &msg,
                        &vote::InputPermit::for_tests_only(0, msg.sighash()),
                        None,
                    )
                    .await
                }
            })
            .await;
        times.push(d);
        sizes.push(("cggmp24 full sign".into(), s));
    }
    rows.push(Row {
        op: format!("cggmp24 full signing, {t} signers over channels (wall)"),
        median: median(times),
        runs: a.runs,
        note: String::new(),
    });

    // --- givre
    let mut times = Vec::new();
    let mut fshares = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::FrostKeygen, r as u64);
        let (d, out) = sim_run::<FrostKeygenMsg, _, _>(n, |i, p| async move {
            frost::keygen(p, &e, i, n, t).await
        });
        times.push(d);
        fshares = out;
    }
    rows.push(Row {
        op: format!("givre (FROST) keygen, all {n} parties (sim)"),
        median: median(times),
        runs: a.runs,
        note: "HD enabled".into(),
    });
    let mut times = Vec::new();
    for r in 0..a.runs {
        let e = eid(ProtocolKind::FrostKeygen, 100 + r as u64);
        let (d, _, s) = over_channels::<FrostKeygenMsg, _, _, _>(
            ProtocolKind::FrostKeygen,
            n,
            move |i, p| async move { frost::keygen(p, &e, i, n, t).await },
        )
        .await;
        times.push(d);
        sizes.push(("givre keygen".into(), s));
    }
    rows.push(Row {
        op: format!("givre keygen, {n} parties over channels (wall)"),
        median: median(times),
        runs: a.runs,
        note: String::new(),
    });
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let key = fshares[0]
        .internal_key(&[])
        .expect("key")
        .tap_tweak(&secp, None)
        .0;
    assert_eq!(key, fshares[0].output_key(&[]).expect("key"));
    let sighash = msg.sighash();
    let fshares = Arc::new(fshares);
    let mut times = Vec::new();
    for _ in 0..a.runs.max(5) {
        let (fs, sg) = (&fshares, &signers);
        let (d, _) = sim_run::<FrostSignMsg, _, _>(t, |i, p| async move {
            frost::sign(
                p,
                i,
                sg,
                &fs[usize::from(i)],
                &[],
                &sighash,
                &vote::InputPermit::for_tests_only(0, sighash),
            )
            .await
        });
        times.push(d);
    }
    rows.push(Row {
        op: format!("givre full signing (BIP-86 Taproot), {t} signers (sim)"),
        median: median(times),
        runs: a.runs.max(5),
        note: "includes libsecp256k1 verification per signer".into(),
    });
    let mut times = Vec::new();
    for _ in 0..a.runs.max(5) {
        let (fs, sg) = (fshares.clone(), signers.clone());
        let (d, _, s) =
            over_channels::<FrostSignMsg, _, _, _>(ProtocolKind::FrostSign, t, move |i, p| {
                let (fs, sg) = (fs.clone(), sg.clone());
                async move {
                    frost::sign(
                        p,
                        i,
                        &sg,
                        &fs[usize::from(i)],
                        &[],
                        &sighash,
                        &vote::InputPermit::for_tests_only(0, sighash),
                    )
                    .await
                }
            })
            .await;
        times.push(d);
        sizes.push(("givre sign".into(), s));
    }
    rows.push(Row {
        op: format!("givre full signing, {t} signers over channels (wall)"),
        median: median(times),
        runs: a.runs.max(5),
        note: String::new(),
    });

    if a.primes {
        let start = Instant::now();
        let _ = PrimeSet::generate(None);
        rows.push(Row {
            op: "Paillier prime set (4 safe primes of 1536 bits), one thread".into(),
            median: start.elapsed(),
            runs: 1,
            note: "highly variable".into(),
        });
    }

    println!(
        "### Bare library costs, n={n}, t={t} (signer-protocol bench-lib, release, GMP backend)\n"
    );
    println!("| operation | median | runs | note |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.op,
            fmt_d(r.median),
            r.runs,
            r.note
        );
    }
    println!("\n### Messages per run over ChannelDelivery (per recipient)\n");
    println!("| protocol | messages | CBOR total | CBOR largest | JSON total | JSON largest |");
    println!("|---|---|---|---|---|---|");
    let mut seen = std::collections::BTreeSet::new();
    for (name, s) in &sizes {
        if !seen.insert(name.clone()) {
            continue;
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.msgs,
            kb(s.cbor_total),
            kb(s.cbor_max),
            kb(s.json_total),
            kb(s.json_max)
        );
    }
    println!("\n### Stored sizes (sealed plaintext, CBOR record)\n");
    println!("| value | bytes |");
    println!("|---|---|");
    let share = &shares[0];
    println!(
        "| ecdsa incomplete key share | {} |",
        incomplete[0].to_bytes().expect("e").len()
    );
    println!(
        "| ecdsa aux info | {} |",
        aux[0].to_bytes().expect("e").len()
    );
    println!(
        "| ecdsa key share (incl. aux info) | {} |",
        share.to_bytes().expect("e").len()
    );
    println!("| ecdsa presignature (incl. public data) | {presig_record} |");
    println!(
        "| frost key share | {} |",
        fshares[0].to_bytes().expect("e").len()
    );
    println!(
        "| paillier prime set | {} |",
        fixture_primes(0).to_bytes().expect("e").len()
    );
}

fn kb(b: usize) -> String {
    if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}
