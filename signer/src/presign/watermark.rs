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

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::PresignCtx;

/// File name in the data directory.
pub const FILE: &str = "presign-watermark";

/// The file side of the counter.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Highest value written, guarded so concurrent writers never lower the file.
    written: Mutex<i64>,
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
pub fn hook(node: &PresignCtx) -> impl Fn(i64) -> Result<(), String> + Send + Sync + '_ {
    move |c| {
        node.presign
            .watermark
            .advance(node.cfg.data_dir.as_deref(), c)
            .map_err(|r| {
                if r.file >= 0 {
                    tracing::error!(error = %r, "ALERT: database rollback detected; presignatures stopped until the pool is discarded");
                    node.presign.flag_rollback();
                }
                r.to_string()
            })
    }
}

/// The start-up check (see the module doc). Presignatures are not used before it
/// succeeded.
pub async fn check_at_start(node: &PresignCtx) -> Result<(), super::PresignError> {
    let db = node.store.presign_counter().await?;
    let Some(dir) = node.cfg.data_dir.as_deref() else {
        tracing::warn!("no data_dir configured: presignature restore detection is off");
        node.presign.set_restore_checked();
        return Ok(());
    };
    let file = read(dir).map_err(super::PresignError::Custody)?;
    let restored = match file {
        Some(f) if db < f => Some(format!(
            "database counter {db} is behind the watermark file {f}: database restored from an older backup"
        )),
        None if db > 0 => Some(format!(
            "watermark file missing while the database counter is {db}: cannot rule out a restore"
        )),
        _ => None,
    };
    let target = file.unwrap_or(0).max(db);
    if let Some(reason) = restored {
        let n = node
            .store
            .discard_restored_presignatures(&node.cfg.node_id, target, &reason)
            .await?;
        tracing::warn!(discarded = n, %reason, "presignatures from before the restore point discarded");
    }
    node.presign
        .watermark
        .align(dir, target)
        .map_err(super::PresignError::Custody)?;
    node.presign.set_restore_checked();
    Ok(())
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
