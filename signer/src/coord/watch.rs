//! Prefix watches that survive connection loss (they resume from the next
//! revision) and report history compaction as an error.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::error::CoordError;
use super::{check_size, key_str, keys, Coord};

/// Kind of change seen by a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly or by lease expiry).
    Delete,
}

/// One change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// The key, relative to the watched namespace (`<prefix>/kv/` for [`KvWatch`]).
    pub key: String,
    /// The new value (empty for deletes); at most [`super::MAX_VALUE_BYTES`].
    pub value: Vec<u8>,
    /// The etcd revision of the change.
    pub revision: i64,
}

/// A change with its full etcd key.
#[derive(Debug)]
pub(crate) struct RawEvent {
    pub(crate) kind: WatchEventKind,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) revision: i64,
}

/// Receiver side of a background watch task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct RawWatch {
    rx: mpsc::Receiver<Result<RawEvent, CoordError>>,
    task: JoinHandle<()>,
}

impl RawWatch {
    pub(crate) async fn recv(&mut self) -> Option<Result<RawEvent, CoordError>> {
        self.rx.recv().await
    }

    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<RawEvent, CoordError>>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for RawWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const WATCH_CHANNEL: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Coord {
    /// Watches every key under `full_prefix`, starting at `start_revision`
    /// (0 = from now).
    pub(crate) fn watch_raw(&self, full_prefix: String, start_revision: i64) -> RawWatch {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let task = tokio::spawn(watch_task(self.clone(), full_prefix, start_revision, tx));
        RawWatch { rx, task }
    }

    /// Watches fenced data under `key_prefix` (relative to `<prefix>/kv/`; empty
    /// for all of it, or e.g. `"sessions/"`). Without `start_revision` it sees
    /// every change made after this call returns; with one it replays history
    /// from that revision (e.g. one past the revision of an earlier read).
    pub async fn watch_prefix(
        &self,
        key_prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<KvWatch, CoordError> {
        keys::validate_key_prefix("watch prefix", key_prefix)?;
        let start = match start_revision {
            Some(rev) => rev,
            None => self.ping().await? + 1,
        };
        let base = self.keys().kv_dir();
        let raw = self.watch_raw(format!("{base}{key_prefix}"), start);
        Ok(KvWatch {
            raw,
            strip: base.len(),
        })
    }
}

async fn watch_task(
    coord: Coord,
    prefix: String,
    mut next_rev: i64,
    tx: mpsc::Sender<Result<RawEvent, CoordError>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut opts = WatchOptions::new().with_prefix();
        if next_rev > 0 {
            opts = opts.with_start_revision(next_rev);
        }
        let mut c = coord.client();
        let opened = tokio::select! {
            () = tx.closed() => return,
            r = coord.rpc("watch", c.watch(prefix.clone(), Some(opts))) => r,
        };
        match opened {
            Err(e) => warn!(prefix = %prefix, error = %e, "opening etcd watch failed; retrying"),
            Ok(mut stream) => loop {
                let msg = tokio::select! {
                    () = tx.closed() => return,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        warn!(prefix = %prefix, "etcd watch stream ended; resuming");
                        break;
                    }
                    Err(e) => {
                        warn!(prefix = %prefix, error = %e, "etcd watch failed; resuming");
                        break;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    let reason = if resp.compact_revision() > 0 {
                        format!(
                            "history up to revision {} was compacted",
                            resp.compact_revision()
                        )
                    } else {
                        resp.cancel_reason().to_owned()
                    };
                    warn!(prefix = %prefix, %reason, "etcd cancelled the watch");
                    let _ = tx
                        .send(Err(CoordError::WatchCancelled {
                            prefix: prefix.clone(),
                            reason,
                        }))
                        .await;
                    return;
                }
                backoff = Duration::from_millis(100);
                if let Some(h) = resp.header() {
                    if next_rev == 0 {
                        // Anything after the watch's creation revision is delivered.
                        next_rev = h.revision() + 1;
                    }
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    next_rev = next_rev.max(kv.mod_revision() + 1);
                    let kind = match ev.event_type() {
                        EventType::Put => WatchEventKind::Put,
                        EventType::Delete => WatchEventKind::Delete,
                    };
                    let item = key_str(kv.key()).and_then(|key| {
                        check_size(key, kv.value().len())?;
                        Ok(RawEvent {
                            kind,
                            key: key.to_owned(),
                            value: kv.value().to_vec(),
                            revision: kv.mod_revision(),
                        })
                    });
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            },
        }
        debug!(prefix = %prefix, ?backoff, next_rev, "re-opening etcd watch");
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A watch on fenced data (see [`Coord::watch_prefix`]). Yields every change in
/// order; reconnects by itself; an `Err` item reports a value over the size
/// limit (the watch goes on) or a cancelled watch (the last item).
#[derive(Debug)]
pub struct KvWatch {
    raw: RawWatch,
    strip: usize,
}

impl KvWatch {
    /// The next change, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, CoordError>> {
        let item = self.raw.recv().await?;
        Some(self.convert(item))
    }

    fn convert(&self, item: Result<RawEvent, CoordError>) -> Result<WatchEvent, CoordError> {
        let raw = item?;
        Ok(WatchEvent {
            kind: raw.kind,
            key: raw.key.get(self.strip..).unwrap_or_default().to_owned(),
            value: raw.value,
            revision: raw.revision,
        })
    }
}

impl futures::Stream for KvWatch {
    type Item = Result<WatchEvent, CoordError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.raw.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(this.convert(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
