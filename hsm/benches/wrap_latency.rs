//! Wrap / unwrap latency of the custody backends (p50 / p99), plus whole-envelope
//! seal / open of a 20 KiB record (the size of a key share with aux info, n = 5).
//!
//! Run: `cargo bench -p hsm --bench wrap_latency` (starts its own SoftHSM2 token and
//! swtpm). Optional: `HSM_BENCH_ITERS=N` (default 2000 for SoftHSM, 500 for swtpm).

use std::time::{Duration, Instant};

use hsm::envelope;
use hsm::pkcs11::Pkcs11Wrapper;
use hsm::testing::{SoftHsmToken, Swtpm};
use hsm::tpm::TpmWrapper;
use hsm::{Aad, DataKey, KeyWrapper, RecordKind};

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    Stats {
        p50: pick(0.50),
        p99: pick(0.99),
        mean,
    }
}

fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..n.min(50) {
        f();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    stats(v)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn row(backend: &str, op: &str, n: usize, s: &Stats) {
    println!(
        "| {backend} | {op} | {n} | {} | {} | {} |",
        us(s.p50),
        us(s.p99),
        us(s.mean)
    );
    record(&format!("{backend}: {op}, p50"), s.p50);
}

/// Appends the p50 figure to the JSON-lines file `make bench` names in
/// `BENCH_RESULTS` (the table's format: tests/common/bench.rs `Figure`); the names
/// written are this file's own constants, so no JSON escaping is needed.
fn record(what: &str, d: Duration) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("BENCH_RESULTS") else {
        return;
    };
    let line = format!(
        "{{\"bench\":\"wrap-latency\",\"what\":\"{what}\",\"value\":{:.1},\"unit\":\"µs\"}}\n",
        d.as_secs_f64() * 1e6
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the figure: {e}");
    }
}

fn bench_backend(name: &str, w: &dyn KeyWrapper, n: usize) {
    let aad = Aad::new("node-1", "key-1", RecordKind::KeyShare).expect("aad");
    let aad_bytes = aad.encode();
    let dek = DataKey::generate().expect("rng");
    let wrapped = w.wrap(&dek, &aad_bytes).expect("wrap");
    let s = measure(n, || {
        w.wrap(&dek, &aad_bytes).expect("wrap");
    });
    row(name, "wrap data key", n, &s);
    let s = measure(n, || {
        w.unwrap(&wrapped, &aad_bytes).expect("unwrap");
    });
    row(name, "unwrap data key", n, &s);
    let record = vec![0x42u8; 20 * 1024];
    let blob = envelope::seal(w, &aad, &record).expect("seal");
    let s = measure(n, || {
        envelope::seal(w, &aad, &record).expect("seal");
    });
    row(name, "seal 20 KiB record", n, &s);
    let s = measure(n, || {
        envelope::open(w, &aad, &blob).expect("open");
    });
    row(name, "open 20 KiB record", n, &s);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special.
    let iters = |default: usize| {
        std::env::var("HSM_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let (n_hsm, n_tpm) = if quick {
        (20, 5)
    } else {
        (iters(2000), iters(500))
    };

    println!("| backend | operation | iterations | p50 | p99 | mean |");
    println!("|---|---|---|---|---|---|");
    let token = SoftHsmToken::create("bench").expect("softhsm token");
    let p = Pkcs11Wrapper::open(&token.config("bench-kek"), true).expect("pkcs11 wrapper");
    bench_backend("SoftHSM2 2.6.1 (PKCS#11 AES-GCM)", &p, n_hsm);

    let tpm = Swtpm::start().expect("swtpm");
    let t = TpmWrapper::open(&tpm.config(), true).expect("tpm wrapper");
    bench_backend("swtpm 0.7.1 (TPM2 seal/unseal)", &t, n_tpm);
}
