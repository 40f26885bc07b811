//! Running protocol futures off the tokio worker threads, and progress reporting.
//!
//! cggmp24 and givre do their heavy arithmetic (Paillier, ZK proofs: seconds of CPU for
//! aux info and presigning) inside `poll` without yielding. [`run_on_thread`] runs such a
//! future on a dedicated OS thread with its own current-thread runtime, so the node's
//! async workers (API, QUIC, etcd) are never blocked. Bound the number of concurrent runs
//! in the node (a semaphore): each run holds one thread and one core while computing.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{ProtocolError, ProtocolKind};

/// Progress event of a protocol run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// The protocol started.
    Started {
        /// Protocol.
        protocol: ProtocolKind,
    },
    /// A new round started (`number` counts from 1).
    Round {
        /// Protocol.
        protocol: ProtocolKind,
        /// Round number, from 1.
        number: u16,
        /// Library's round name, when it has one.
        name: Option<&'static str>,
    },
    /// The protocol finished successfully.
    Finished {
        /// Protocol.
        protocol: ProtocolKind,
    },
    /// One of the four safe primes of a prime set is ready.
    PrimeReady {
        /// Primes ready so far (1..=4).
        done: u8,
    },
}

/// Progress callback. Called on the protocol thread: keep it cheap and non-blocking
/// (e.g. update an atomic or `try_send` on a channel).
pub type ProgressFn = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

/// Adapter from cggmp24's `Tracer` to [`ProgressFn`].
pub(crate) struct ProgressTracer {
    protocol: ProtocolKind,
    cb: Option<ProgressFn>,
    rounds: u16,
}

impl ProgressTracer {
    pub(crate) fn new(protocol: ProtocolKind, cb: Option<ProgressFn>) -> Self {
        Self {
            protocol,
            cb,
            rounds: 0,
        }
    }

    pub(crate) fn emit(&self, ev: ProgressEvent) {
        if let Some(cb) = &self.cb {
            cb(ev);
        }
    }
}

impl cggmp24::progress::Tracer for ProgressTracer {
    fn trace_event(&mut self, event: cggmp24::progress::Event) {
        use cggmp24::progress::Event;
        let ev = match event {
            Event::ProtocolBegins => ProgressEvent::Started {
                protocol: self.protocol,
            },
            Event::RoundBegins { name } => {
                self.rounds = self.rounds.saturating_add(1);
                ProgressEvent::Round {
                    protocol: self.protocol,
                    number: self.rounds,
                    name,
                }
            }
            Event::ProtocolEnds => ProgressEvent::Finished {
                protocol: self.protocol,
            },
            _ => return,
        };
        tracing::debug!(protocol = %self.protocol, ?ev, "protocol progress");
        self.emit(ev);
    }
}

/// Runs the future built by `make` on a new OS thread with a current-thread tokio
/// runtime and awaits its result.
///
/// `make` runs on that thread, so the protocol future itself need not be `Send`.
/// Dropping the returned future cancels the run at its next await point (the protocol
/// future is dropped on its thread). A panic on the thread is reported as
/// [`ProtocolError::ThreadFailed`].
pub async fn run_on_thread<T, F, Fut>(protocol: ProtocolKind, make: F) -> Result<T, ProtocolError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ProtocolError>> + 'static,
{
    let (res_tx, res_rx) = oneshot::channel();
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("proto-{}", protocol.as_str()))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = res_tx.send(Err(ProtocolError::ThreadFailed {
                        protocol,
                        reason: format!("build runtime: {e}"),
                    }));
                    return;
                }
            };
            let out = rt.block_on(async move {
                tokio::select! {
                    r = make() => Some(r),
                    _ = cancel_rx => None,
                }
            });
            if let Some(r) = out {
                let _ = res_tx.send(r);
            } else {
                tracing::debug!(protocol = %protocol, "protocol run cancelled");
            }
        });
    if let Err(e) = spawned {
        return Err(ProtocolError::ThreadFailed {
            protocol,
            reason: format!("spawn thread: {e}"),
        });
    }
    // keep the cancel sender alive while we wait: dropping this future drops it
    let _cancel_guard = cancel_tx;
    match res_rx.await {
        Ok(r) => r,
        Err(_) => Err(ProtocolError::ThreadFailed {
            protocol,
            reason: "protocol thread panicked".into(),
        }),
    }
}

/// Runs a CPU-bound closure on a new OS thread and awaits its result (for prime
/// generation and other non-protocol heavy work).
pub async fn run_blocking_on_thread<T, F>(name: &str, f: F) -> Result<T, ProtocolError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| ProtocolError::WorkerFailed {
            reason: format!("spawn thread: {e}"),
        })?;
    rx.await.map_err(|_| ProtocolError::WorkerFailed {
        reason: "worker thread panicked".into(),
    })
}

/// Wraps a runner's library future with structured logs (start, end, duration, culprits).
pub(crate) async fn traced<T, F>(
    protocol: ProtocolKind,
    party: u16,
    parties: u16,
    fut: F,
) -> Result<T, ProtocolError>
where
    F: Future<Output = Result<T, ProtocolError>>,
{
    let start = std::time::Instant::now();
    tracing::debug!(protocol = %protocol, party, parties, "protocol run started");
    let res = fut.await;
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &res {
        Ok(_) => {
            tracing::info!(protocol = %protocol, party, parties, elapsed_ms, "protocol run finished")
        }
        Err(e) => tracing::warn!(
            protocol = %protocol,
            party,
            parties,
            elapsed_ms,
            culprits = ?e.culprits(),
            error = %e,
            "protocol run failed"
        ),
    }
    res
}
