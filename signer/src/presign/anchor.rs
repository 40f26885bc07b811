//! The TPM anchor of the restore watermark (`[presign] tpm_counter_index`).
//!
//! The watermark file catches a database restored on its own, but a host backup
//! restored whole (database and data directory together) brings back a file that
//! agrees with the old database. The TPM's NV monotonic counter cannot go back: every
//! reservation and consumption increments it before its transaction commits and
//! stores the new value in that transaction (`presign_watermark.tpm_anchor`). At the
//! restore check the stored value must equal the TPM's: a smaller one means the
//! database is older than the last use ([`verdict`]). A crash between the increment
//! and the commit also leaves the TPM ahead; that costs the pool, never safety.
//!
//! One increment per use does not wear the TPM: the index is `TPMA_NV_ORDERLY`
//! (see `hsm::tpm_counter`), and after a power loss the TPM moves it forward, which
//! the next start takes for a restore (fail closed: the pool is discarded).

use hsm::tpm_counter::NvCounter;

use crate::config::{CustodyConfig, NodeConfig};

/// The node's TPM counter.
#[derive(Debug)]
pub struct TpmAnchor {
    counter: NvCounter,
}

/// A counter value as the database stores it (`BIGINT`).
fn as_i64(v: u64, index: u32) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("tpm counter {index:#010x} value {v} out of range"))
}

impl TpmAnchor {
    /// Opens the counter configured in `[presign] tpm_counter_index` (on
    /// `tpm_counter_tcti`, else the custody TPM; auth value from
    /// `tpm_counter_auth_file`, else the custody storage key's); `None` when none is
    /// configured. With `define` (`signer hsm init`), a missing index is defined
    /// (with the custody TPM's owner auth, if any).
    pub fn open(cfg: &NodeConfig, define: bool) -> Result<Option<TpmAnchor>, String> {
        let p = &cfg.presign;
        let Some(index) = p.tpm_counter_index else {
            return Ok(None);
        };
        let custody_tpm = match &cfg.custody {
            Some(c @ CustodyConfig::Tpm { .. }) => match c.to_hsm()? {
                hsm::CustodyConfig::Tpm(t) => Some(t),
                _ => None,
            },
            _ => None,
        };
        let tcti = match (&p.tpm_counter_tcti, &custody_tpm) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) => c.tcti.clone(),
            (None, None) => {
                return Err(
                    "presign.tpm_counter_index needs presign.tpm_counter_tcti or a \
                            tpm custody"
                        .to_owned(),
                )
            }
        };
        let auth = match (&p.tpm_counter_auth_file, &custody_tpm) {
            (Some(f), _) => Some(hsm::PinSource::File(f.clone())),
            (None, Some(c)) => c.key_auth.clone(),
            (None, None) => None,
        };
        let owner = custody_tpm.and_then(|c| c.owner_auth);
        let (counter, defined) = NvCounter::open(&tcti, index, &auth, &owner, define)
            .map_err(|e| format!("presignature tpm counter: {e}"))?;
        if defined {
            tracing::info!(
                index = format_args!("{index:#010x}"),
                "presignature watermark anchor defined in the tpm"
            );
        }
        Ok(Some(TpmAnchor { counter }))
    }

    /// The NV index.
    pub fn index(&self) -> u32 {
        self.counter.index()
    }

    /// The counter's value (`None` before its first increment).
    pub fn read(&self) -> Result<Option<i64>, String> {
        let index = self.counter.index();
        self.counter
            .read()
            .map_err(|e| format!("reading tpm counter {index:#010x}: {e}"))?
            .map(|v| as_i64(v, index))
            .transpose()
    }

    /// Increments the counter; its new value.
    pub fn increment(&self) -> Result<i64, String> {
        let index = self.counter.index();
        let v = self
            .counter
            .increment()
            .map_err(|e| format!("incrementing tpm counter {index:#010x}: {e}"))?;
        as_i64(v, index)
    }
}

/// Compares the anchor the database holds with the TPM counter; the reason to
/// discard the pool when they differ (`None`: they agree).
pub fn verdict(database: Option<i64>, tpm: Option<i64>) -> Option<String> {
    match (database, tpm) {
        (None, None) => None,
        (Some(d), Some(t)) if d == t => None,
        (Some(d), Some(t)) if d < t => Some(format!(
            "tpm counter {t} is ahead of the database's anchor {d}: the database (with its \
             data directory) was restored from an older backup, or the node stopped during a \
             presignature use or the host lost power"
        )),
        (Some(d), Some(t)) => Some(format!(
            "database anchor {d} is ahead of the tpm counter {t}: another tpm or counter index"
        )),
        (None, Some(t)) => Some(format!(
            "tpm counter at {t} but the database holds no anchor: database restored from \
             before the counter was in use, or replaced"
        )),
        (Some(d), None) => Some(format!(
            "database anchor {d} but the tpm counter was never incremented: another tpm or \
             counter index"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn only_an_anchor_equal_to_the_tpm_counter_passes() {
        assert_eq!(verdict(None, None), None, "never used");
        assert_eq!(verdict(Some(7), Some(7)), None, "last use committed");
        let behind = verdict(Some(5), Some(7)).expect("restored database");
        assert!(behind.contains("restored"), "{behind}");
        for (d, t) in [(Some(9), Some(7)), (None, Some(1)), (Some(3), None)] {
            assert!(verdict(d, t).is_some(), "{d:?} {t:?}");
        }
    }
}
