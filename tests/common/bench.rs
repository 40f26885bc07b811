//! Helpers shared by the benchmark binaries in `tests/benches/` (run by hand).

use std::time::Duration;

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile `p` (0..=1) of `v`; NaN when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Points `SIGNER_BIN` at the `signer` binary next to the running benchmark binary
/// (`target/<profile>/<bench>` -> `target/<profile>/signer`) unless already set.
pub fn use_signer_next_to_this_binary() -> anyhow::Result<()> {
    if std::env::var_os("SIGNER_BIN").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("signer"))
        .filter(|b| b.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no signer binary next to {}; build it with the same profile",
                exe.display()
            )
        })?;
    std::env::set_var("SIGNER_BIN", bin);
    Ok(())
}

/// Presignatures of `key` for `set` available on node `i`.
pub async fn presignatures_available(
    c: &crate::Cluster,
    i: usize,
    key: &str,
    set: &[&str],
) -> anyhow::Result<i64> {
    let db = c.db(i).await;
    let set: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM presignatures WHERE key_id = $1 AND signer_set = $2 AND state = 'available'",
    )
    .bind(key)
    .bind(&set)
    .fetch_one(&db)
    .await?;
    db.close().await;
    Ok(n)
}

/// Presignatures of `key` consumed on node `i` (any signer set).
pub async fn presignatures_consumed(
    c: &crate::Cluster,
    i: usize,
    key: &str,
) -> anyhow::Result<i64> {
    let db = c.db(i).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM presignatures WHERE key_id = $1 AND state = 'consumed'",
    )
    .bind(key)
    .fetch_one(&db)
    .await?;
    db.close().await;
    Ok(n)
}

/// The TEST-ONLY fixture Paillier primes of party `i` (`protocol/fixtures/test-primes`).
pub fn fixture_primes(i: u16) -> anyhow::Result<signer_protocol::ecdsa::PrimeSet> {
    let path = format!(
        "{}/../protocol/fixtures/test-primes/primes-{i}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(signer_protocol::ecdsa::PrimeSet::from_json(
        &std::fs::read_to_string(path)?,
    )?)
}

/// Environment variable naming the JSON-lines file `make bench` collects figures in
/// (`scripts/bench.sh`); without it a benchmark only prints its own tables.
pub const RESULTS_ENV: &str = "BENCH_RESULTS";

/// One figure of a benchmark run, as `make bench` tabulates it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Figure {
    /// Benchmark binary that measured it (`tx-latency`, …).
    pub bench: String,
    /// What was measured, with its conditions (`taproot submit→signed p50, idle`).
    pub what: String,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` and `lib` (`ms`, `tx/s`, `MiB`, …).
    pub unit: String,
    /// The bare library's figure for the same work, measured in the same run.
    #[serde(default)]
    pub lib: Option<f64>,
    /// The target (issue 21 or the issue that set it), as text (`<= 15`).
    #[serde(default)]
    pub target: Option<String>,
    /// The original system's figure for the seed's performance test, if it has one.
    #[serde(default)]
    pub seed: Option<String>,
}

impl Figure {
    /// Figure `what` of benchmark `bench`.
    pub fn new(bench: &str, what: impl Into<String>, value: f64, unit: &str) -> Figure {
        Figure {
            bench: bench.to_owned(),
            what: what.into(),
            value,
            unit: unit.to_owned(),
            lib: None,
            target: None,
            seed: None,
        }
    }

    /// With the bare library's figure from the same run.
    pub fn lib(mut self, lib: f64) -> Figure {
        self.lib = Some(lib);
        self
    }

    /// With a target.
    pub fn target(mut self, target: &str) -> Figure {
        self.target = Some(target.to_owned());
        self
    }

    /// With the original system's figure (seed test number and value).
    pub fn seed(mut self, seed: &str) -> Figure {
        self.seed = Some(seed.to_owned());
        self
    }

    /// Appends the figure to the [`RESULTS_ENV`] file, if one is named.
    pub fn record(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let Some(path) = std::env::var_os(RESULTS_ENV) else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }
}
