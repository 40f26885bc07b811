//! Restore detection. The database keeps a counter (`presign_watermark`) that every
//! reservation and consumption of a presignature advances inside its own
//! transaction; before that transaction commits, the node writes the new value to the
//! file `presign-watermark` in its data directory (fsync, then rename). So the file
//! is never behind the database.
//!
//! At start, before any presignature may be used: if the database counter is below
//! the file's, the database was restored from an older backup (or lost a committed
//! transaction), and presignatures that were used after the backup may look
//! available again. Every available presignature is then discarded (all of them were
//! created before the backup, since a restored database holds nothing newer) and the
//! counter is raised to the file's value. A crash between writing the file and the
//! commit also leaves the file ahead: that costs the pool, never safety.
//!
//! While the node runs, the same rollback is seen two ways: a reserving or consuming
//! transaction gets a counter not above the last value written ([`hook`]: that
//! transaction aborts), and the restore watcher ([`watch`]) compares the database
//! counter with the watermark every `[presign] check_interval_secs` under the counter
//! row's lock (so no transaction is between its file write and its commit). Either
//! stops every use of presignatures at once and the watcher runs the restore check,
//! which discards every available presignature, before use resumes.
//!
//! A host backup restored whole (database and data directory together) defeats the
//! file. With `[presign] tpm_counter_index` every use also increments a TPM
//! monotonic counter before its commit and stores the value in the database
//! ([`super::anchor`]); the restore check then also requires the database's anchor
//! to equal the TPM counter.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::anchor::{self, TpmAnchor};
use super::PresignCtx;

/// File name in the data directory.
pub const FILE: &str = "presign-watermark";

/// The file side of the counter, and its TPM anchor.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Highest value written, guarded so concurrent writers never lower the file.
    written: Mutex<i64>,
    /// The TPM counter, opened by the first restore check when configured.
    anchor: OnceLock<TpmAnchor>,
}

/// Reads the counter stored in `dir`; `None` if there is no file.
pub fn read(dir: &Path) -> Result<Option<i64>, String> {
    match std::fs::read_to_string(dir.join(FILE)) {
        Ok(s) if s.len() <= 32 => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|e| format!("watermark file does not parse: {e}")),
        Ok(_) => Err("watermark file too large".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading the watermark file: {e}")),
    }
}

fn write_file(dir: &Path, value: i64) -> Result<(), String> {
    use std::io::Write;
    let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("watermark file: {e}"))?;
    f.write_all(value.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("watermark file: {e}"))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| format!("watermark file: {e}"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Watermark {
    /// Moves the file to `value`, the database counter just incremented inside a
    /// consuming transaction (the row lock orders these calls). A value that is not
    /// above the last one written means the database went back under the running
    /// node (restored, or a committed transaction lost): refused, so that
    /// transaction aborts and nothing is consumed. Without a data directory there is
    /// no file (the configuration refuses that while the pool is on).
    pub fn advance(&self, dir: Option<&Path>, value: i64) -> Result<(), Rollback> {
        let Some(dir) = dir else { return Ok(()) };
        let mut w = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if value <= *w {
            return Err(Rollback {
                database: value,
                file: *w,
            });
        }
        write_file(dir, value).map_err(|e| {
            tracing::error!(error = %e, "cannot write the watermark file");
            Rollback {
                database: value,
                file: -1,
            }
        })?;
        *w = value;
        Ok(())
    }

    /// The TPM anchor when `[presign] tpm_counter_index` is set, opened on first
    /// use; `Ok(None)` without one.
    fn anchor(&self, cfg: &crate::config::NodeConfig) -> Result<Option<&TpmAnchor>, String> {
        if cfg.presign.tpm_counter_index.is_none() {
            return Ok(None);
        }
        if let Some(a) = self.anchor.get() {
            return Ok(Some(a));
        }
        let opened = TpmAnchor::open(cfg, false)?
            .ok_or_else(|| "presignature tpm counter not configured".to_owned())?;
        Ok(Some(self.anchor.get_or_init(|| opened)))
    }

    /// The last value written to the file (or aligned at the restore check).
    pub fn written(&self) -> i64 {
        *self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Raises the file to at least `value` (never lowers it); used by the restore
    /// check, which has just reconciled the database with the file.
    pub fn align(&self, dir: &Path, value: i64) -> Result<(), String> {
        let mut w = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if value <= *w {
            return Ok(());
        }
        write_file(dir, value)?;
        *w = value;
        Ok(())
    }
}

/// The database counter was not above the watermark: the database went back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    /// Counter the database gave.
    pub database: i64,
    /// Last value written to the file (-1: the file could not be written).
    pub file: i64,
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file < 0 {
            write!(
                f,
                "the watermark file could not be written (counter {})",
                self.database
            )
        } else {
            write!(
                f,
                "database counter {} is not above the watermark {}: the database went back under the running node",
                self.database, self.file
            )
        }
    }
}

/// The hook the store runs inside consuming transactions. A rollback stops every
/// use of presignatures until the restore check has discarded the pool.
/// With a TPM anchor it then increments the TPM counter and returns its value (the
/// store writes it in the same transaction); a TPM that does not answer refuses the
/// use.
pub fn hook(node: &PresignCtx) -> impl Fn(i64) -> Result<Option<i64>, String> + Send + Sync + '_ {
    move |c| {
        let w = &node.presign.watermark;
        w.advance(node.cfg.data_dir.as_deref(), c).map_err(|r| {
            if r.file >= 0 {
                tracing::error!(error = %r, "ALERT: database rollback detected at a presignature use; presignatures stopped until the pool is discarded");
                node.presign.flag_rollback(r);
            }
            r.to_string()
        })?;
        let Some(anchor) = w.anchor(&node.cfg)? else {
            return Ok(None);
        };
        anchor.increment().map(Some).map_err(|e| {
            tracing::error!(error = %e, "presignature use refused: the tpm anchor was not incremented");
            e
        })
    }
}

/// The running check of the restore watcher: the database counter, read under its
/// row lock (every reserving or consuming transaction holds it from its increment
/// through the file write to its commit, so none is half-way), must not be below
/// the last value written to the file. Returns the rollback it saw (already flagged:
/// presignature use stopped).
pub async fn check_running(node: &PresignCtx) -> Result<Option<Rollback>, super::PresignError> {
    if node.cfg.data_dir.is_none() {
        return Ok(None);
    }
    let seen = node
        .store
        .presign_counter_settled(|db| {
            let file = node.presign.watermark.written();
            (db < file).then_some(Rollback { database: db, file })
        })
        .await?;
    if let Some(r) = seen {
        tracing::error!(error = %r, "ALERT: database rollback detected by the watermark check; presignatures stopped until the pool is discarded");
        node.presign.flag_rollback(r);
    }
    Ok(seen)
}

/// The start-up check (see the module doc). Presignatures are not used before it
/// succeeded.
pub async fn check_at_start(node: &PresignCtx) -> Result<(), super::PresignError> {
    check(node).await
}

/// The restore check, at start and after a rollback seen while running: discards
/// every available presignature when the database is behind the watermark, when the
/// file is missing while the database counter is not 0, or when a rollback was seen
/// while running (whatever the counters say by now: fail closed); then raises the
/// counters to each other and lets presignatures be used again.
pub async fn check(node: &PresignCtx) -> Result<(), super::PresignError> {
    let (seen, rollback) = node.presign.pending_rollback();
    let db = node.store.presign_counter().await?;
    let Some(dir) = node.cfg.data_dir.as_deref() else {
        tracing::warn!("no data_dir configured: presignature restore detection is off");
        node.presign.restore_handled(seen);
        return Ok(());
    };
    let file = read(dir).map_err(super::PresignError::Custody)?;
    let mark = file.unwrap_or(0).max(node.presign.watermark.written());
    // The TPM anchor: the database's stored value against the TPM counter.
    let tpm = match node
        .presign
        .watermark
        .anchor(&node.cfg)
        .map_err(super::PresignError::Custody)?
    {
        Some(a) => Some(a.read().map_err(super::PresignError::Custody)?),
        None => None,
    };
    let (db_anchor, anchor_reason) = match tpm {
        Some(t) => {
            let d = node.store.presign_tpm_anchor().await?;
            (d, anchor::verdict(d, t))
        }
        None => (None, None),
    };
    let file_reason = match (rollback, file) {
        (Some(r), _) => Some(format!(
            "database went back under the running node: counter {} not above the watermark {} (database counter now {db})",
            r.database, r.file
        )),
        (None, _) if db < mark => Some(format!(
            "database counter {db} is behind the watermark file {mark}: database restored from an older backup"
        )),
        (None, None) if db > 0 => Some(format!(
            "watermark file missing while the database counter is {db}: cannot rule out a restore"
        )),
        _ => None,
    };
    let restored = match (file_reason, anchor_reason) {
        (Some(f), Some(a)) => Some(format!("{f}; {a}")),
        (f, a) => f.or(a),
    };
    let target = mark.max(db);
    if let Some(reason) = restored {
        let details = serde_json::json!({
            "while_running": rollback.is_some(),
            "database_counter": db,
            "watermark": mark,
            "rollbacks_detected": seen,
            "tpm_counter": tpm.flatten(),
            "tpm_anchor": db_anchor,
        });
        let n = node
            .store
            .discard_restored_presignatures(&node.cfg.node_id, target, tpm, &reason, details)
            .await?;
        tracing::warn!(discarded = n, %reason, "presignatures from before the restore point discarded");
    }
    node.presign
        .watermark
        .align(dir, target)
        .map_err(super::PresignError::Custody)?;
    node.presign.restore_handled(seen);
    Ok(())
}

/// The restore watcher (runs while the pool is enabled): every `interval`, and at
/// once when a use saw a rollback, checks the database counter against the
/// watermark; after a rollback it runs the restore check (retrying until it
/// succeeds; presignatures stay stopped meanwhile).
pub async fn watch(node: std::sync::Arc<PresignCtx>, interval: Duration) {
    loop {
        if node.presign.restore_checked() {
            if let Err(e) = check_running(&node).await {
                tracing::warn!(error = %e, "presignature watermark check failed; retrying");
            }
        }
        if !node.presign.restore_checked() {
            match check(&node).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "presignature restore check failed; retrying (no presignature is used meanwhile)");
                }
            }
        }
        tokio::select! {
            _ = node.presign.restore_wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_only_moves_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let w = Watermark::default();
        w.advance(Some(dir.path()), 5).expect("write");
        assert_eq!(
            w.advance(Some(dir.path()), 3),
            Err(Rollback {
                database: 3,
                file: 5
            }),
            "a counter behind the file is a rollback"
        );
        assert_eq!(
            w.advance(Some(dir.path()), 5),
            Err(Rollback {
                database: 5,
                file: 5
            }),
            "so is the same counter again"
        );
        assert_eq!(read(dir.path()).expect("read"), Some(5));
        w.align(dir.path(), 4).expect("never lowers");
        assert_eq!(read(dir.path()).expect("read"), Some(5));
        w.advance(Some(dir.path()), 9).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(9));
        std::fs::write(dir.path().join(FILE), "x").expect("write");
        assert!(read(dir.path()).is_err());
    }
}
