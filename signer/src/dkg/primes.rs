//! The node's pool of pregenerated Paillier safe-prime sets for aux-info ceremonies.
//!
//! A set takes ~35 s of one core to generate, so a background task keeps
//! `[aux] prime_pool_target` sets ready, generating one at a time on a dedicated OS
//! thread (never on the async workers, so the API and the protocols stay responsive).
//! Every set is sealed by the HSM/TPM (record kind `prime_set`) before it is stored,
//! and taken at most once: [`take`] marks the row taken in the same database
//! transaction that hands it out, before the set is opened. Progress (which of the four
//! primes is ready, durations, counts) is logged and shown by
//! `GET /api/v1/aux-info/status`.
//!
//! Tests may import published prime sets (`[aux] insecure_test_primes`), marked
//! `test_fixture` in the pool and logged with a warning at every start. Once a
//! regtest node with such sets has taken them all, it hands them out again (round
//! robin, a warning each time) rather than generating a set inline.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hsm::{Aad, RecordKind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use signer_protocol::ecdsa::PrimeSet;
use signer_protocol::{run_blocking_on_thread, ProgressEvent, ProgressFn};
use tokio::sync::Notify;
use uuid::Uuid;

use super::DkgCtx;
use super::DkgError;

/// Largest accepted test-fixture file.
const MAX_FIXTURE_BYTES: u64 = 64 * 1024;
/// Pause between pool checks when nothing happens.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Live progress of the generator (not persisted).
#[derive(Debug, Default)]
struct Progress {
    generating_since: Option<Instant>,
    generated_since_start: u64,
    last_generation_secs: Option<f64>,
    last_error: Option<String>,
}

/// Shared state of the pool task.
#[derive(Debug, Default)]
pub struct PrimePool {
    progress: Mutex<Progress>,
    /// Primes (of four) ready in the set being generated.
    primes_ready: Arc<AtomicU8>,
    /// Test sets handed out again (round robin; tests only, see [`take`]).
    reused: AtomicUsize,
    wake: Notify,
}

/// What `GET /api/v1/aux-info/status` shows about the pool.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = PrimePoolStatus)]
pub struct PoolStatus {
    /// Configured target.
    pub target: usize,
    /// Sets ready.
    pub available: i64,
    /// Sets taken by ceremonies (all time).
    pub taken: i64,
    /// Sets this node generated (all time).
    pub generated_total: i64,
    /// Available sets that are published test fixtures (never in production).
    pub test_fixtures_available: i64,
    /// Whether a set is being generated now.
    pub generating: bool,
    /// Primes ready (of 4) in the set being generated.
    pub primes_ready: u8,
    /// Seconds spent on the set being generated.
    pub generating_for_secs: Option<f64>,
    /// Sets generated since this process started.
    pub generated_since_start: u64,
    /// Duration of the last generation.
    pub last_generation_secs: Option<f64>,
    /// Last generation or storage error.
    pub last_error: Option<String>,
}

impl PrimePool {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the background task to check the pool now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Pool status for the API.
    pub async fn status(&self, node: &DkgCtx) -> Result<PoolStatus, crate::store::StoreError> {
        let counts = node.store.prime_pool_counts(&node.cfg.node_id).await?;
        let g = self.lock();
        Ok(PoolStatus {
            target: node.cfg.aux.prime_pool_target,
            available: counts.available,
            taken: counts.taken,
            generated_total: counts.generated,
            test_fixtures_available: counts.test_fixtures_available,
            generating: g.generating_since.is_some(),
            primes_ready: if g.generating_since.is_some() {
                self.primes_ready.load(Ordering::Relaxed)
            } else {
                0
            },
            generating_for_secs: g.generating_since.map(|t| t.elapsed().as_secs_f64()),
            generated_since_start: g.generated_since_start,
            last_generation_secs: g.last_generation_secs,
            last_error: g.last_error.clone(),
        })
    }
}

/// Background task: imports test fixtures once custody is unsealed, then keeps the
/// pool at its target.
pub async fn run(node: Arc<DkgCtx>) {
    let unsealed = loop {
        if let Some(u) = node.unsealed() {
            break u;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for path in &node.cfg.aux.insecure_test_primes {
        if let Err(e) = import_fixture(&node, &unsealed.custody, path).await {
            tracing::error!(path = %path.display(), error = %e, "cannot import test prime set");
        }
    }
    let pool = &node.dkg.primes;
    loop {
        let target = node.cfg.aux.prime_pool_target;
        let available = match node.store.prime_pool_counts(&node.cfg.node_id).await {
            Ok(c) => usize::try_from(c.available).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the prime pool");
                tokio::time::sleep(CHECK_EVERY).await;
                continue;
            }
        };
        if available < target {
            tracing::info!(
                available,
                target,
                "prime pool below target; generating a set"
            );
            match generate_and_store(&node, &unsealed.custody).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "prime set generation failed");
                    pool.lock().last_error = Some(e.to_string());
                }
            }
        }
        let _ = tokio::time::timeout(CHECK_EVERY, pool.wake.notified()).await;
    }
}

async fn generate_and_store(node: &Arc<DkgCtx>, custody: &hsm::Custody) -> Result<(), DkgError> {
    let started = Instant::now();
    let set = generate(node).await?;
    let elapsed = started.elapsed();
    let id = Uuid::new_v4();
    let envelope = seal(node, custody, id, &set).await?;
    let ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    node.store
        .add_prime_set(
            &node.cfg.node_id,
            id,
            &envelope,
            "generated",
            None,
            Some(ms),
        )
        .await?;
    let mut g = node.dkg.primes.lock();
    g.generated_since_start += 1;
    g.last_generation_secs = Some(elapsed.as_secs_f64());
    g.last_error = None;
    tracing::info!(set = %id, secs = elapsed.as_secs_f64(), "prime set generated and sealed into the pool");
    Ok(())
}

/// Generates a set on a dedicated thread, with progress in the logs and the status.
async fn generate(node: &Arc<DkgCtx>) -> Result<PrimeSet, DkgError> {
    let pool = &node.dkg.primes;
    pool.primes_ready.store(0, Ordering::Relaxed);
    pool.lock().generating_since = Some(Instant::now());
    let ready = pool.primes_ready.clone();
    let progress: ProgressFn = Arc::new(move |ev| {
        if let ProgressEvent::PrimeReady { done } = ev {
            ready.store(done, Ordering::Relaxed);
            tracing::info!(done, of = 4, "safe prime ready");
        }
    });
    let r = run_blocking_on_thread("prime-gen", move || PrimeSet::generate(Some(&progress))).await;
    pool.lock().generating_since = None;
    r.map_err(|e| DkgError::Aborted(format!("prime generation: {e}")))
}

async fn seal(
    node: &DkgCtx,
    custody: &hsm::Custody,
    id: Uuid,
    set: &PrimeSet,
) -> Result<Vec<u8>, DkgError> {
    let bytes = set
        .to_bytes()
        .map_err(|e| DkgError::Custody(e.to_string()))?;
    let aad = Aad::new(
        node.cfg.node_id.clone(),
        id.to_string(),
        RecordKind::PrimeSet,
    )
    .map_err(|e| DkgError::Custody(e.to_string()))?;
    let custody = custody.clone();
    tokio::task::spawn_blocking(move || custody.seal(&aad, &bytes))
        .await
        .map_err(|e| DkgError::Custody(format!("seal task: {e}")))?
        .map_err(|e| DkgError::Custody(e.to_string()))
}

/// Reads and validates a published test prime set (size-bounded); with its SHA-256.
async fn read_fixture(path: &std::path::Path) -> Result<(PrimeSet, [u8; 32]), DkgError> {
    let io = |e: std::io::Error| DkgError::Custody(format!("{}: {e}", path.display()));
    let len = tokio::fs::metadata(path).await.map_err(io)?.len();
    if len > MAX_FIXTURE_BYTES {
        return Err(DkgError::Custody(format!(
            "{}: {len} bytes exceeds the limit of {MAX_FIXTURE_BYTES}",
            path.display()
        )));
    }
    let text = zeroize::Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(io)?);
    let hash = Sha256::digest(text.as_bytes()).into();
    let set = PrimeSet::from_json(&text)
        .map_err(|e| DkgError::Custody(format!("{}: {e}", path.display())))?;
    Ok((set, hash))
}

/// TESTS ONLY (regtest, `[aux] insecure_test_primes` configured, the pool empty): hands
/// out one of this node's published test sets again, round robin, instead of
/// generating one inline. Those primes are public whether used once or twice; reusing
/// them keeps test clusters from spending minutes of CPU per ceremony (a retried
/// ceremony, a reshare's new node set). A node never reuses a set it generated.
async fn reuse_fixture(node: &Arc<DkgCtx>, ceremony: Uuid) -> Result<PrimeSet, DkgError> {
    let files = &node.cfg.aux.insecure_test_primes;
    let turn = node.dkg.primes.reused.fetch_add(1, Ordering::Relaxed);
    let path = &files[turn % files.len()];
    let (set, _) = read_fixture(path).await?;
    tracing::warn!(%ceremony, path = %path.display(),
        "INSECURE: prime pool empty; reusing a published TEST prime set");
    Ok(set)
}

async fn import_fixture(
    node: &DkgCtx,
    custody: &hsm::Custody,
    path: &std::path::Path,
) -> Result<(), DkgError> {
    let (set, hash) = read_fixture(path).await?;
    let id = Uuid::new_v4();
    let envelope = seal(node, custody, id, &set).await?;
    let added = node
        .store
        .add_prime_set(
            &node.cfg.node_id,
            id,
            &envelope,
            "test_fixture",
            Some(hash.as_slice()),
            None,
        )
        .await?;
    tracing::warn!(path = %path.display(), added,
        "INSECURE: published TEST prime set in the pool; aux info built from it protects nothing");
    Ok(())
}

/// Takes a prime set for `ceremony`: from the pool when it has one (marked taken
/// before it is opened), otherwise one generated now into the pool (slow; kept in
/// the pool if the ceremony ends before the set is ready) and then taken.
pub async fn take(node: &Arc<DkgCtx>, ceremony: Uuid) -> Result<PrimeSet, DkgError> {
    let me = &node.cfg.node_id;
    let unsealed = node.unsealed().ok_or(DkgError::Sealed)?;
    // Published fixtures only ever feed regtest nodes (issue 16, finding 2).
    let allow_fixtures = node.cfg.wallet.network == bitcoin::Network::Regtest;
    let mut generated_for_us = false;
    let row = loop {
        let taken = node
            .store
            .take_prime_set(me, ceremony, allow_fixtures)
            .await?;
        node.dkg.primes.wake();
        if let Some(row) = taken {
            break row;
        }
        if allow_fixtures && !node.cfg.aux.insecure_test_primes.is_empty() {
            return reuse_fixture(node, ceremony).await;
        }
        if generated_for_us {
            // Another ceremony took the set generated for this one: generate again.
            tracing::warn!(%ceremony, "the set generated for this ceremony was taken by another");
        }
        tracing::warn!(%ceremony, "prime pool empty; generating a set now (tens of seconds)");
        // Generated and sealed into the pool by a task of its own, then taken from
        // the pool: if this ceremony ends first (its time bound), the set is not
        // lost but waits in the pool for the retry.
        let task = tokio::spawn({
            let node = node.clone();
            let custody = unsealed.custody.clone();
            async move { generate_and_store(&node, &custody).await }
        });
        task.await
            .map_err(|e| DkgError::Custody(format!("prime generation task: {e}")))??;
        generated_for_us = true;
    };
    let aad = Aad::new(me.clone(), row.id.to_string(), RecordKind::PrimeSet)
        .map_err(|e| DkgError::Custody(e.to_string()))?;
    let custody = unsealed.custody.clone();
    let set = tokio::task::spawn_blocking(move || {
        custody
            .open_record(&aad, &row.envelope)
            .map_err(|e| e.to_string())
            .and_then(|s| PrimeSet::from_bytes(s.expose_secret()).map_err(|e| e.to_string()))
    })
    .await
    .map_err(|e| DkgError::Custody(format!("open task: {e}")))?
    .map_err(DkgError::Custody)?;
    tracing::info!(%ceremony, set = %row.id, source = %row.source, "prime set taken from the pool");
    Ok(set)
}
