//! `signer hsm rotate-kek`: moves every envelope of the node's database to a new
//! key-encryption key (docs/CUSTODY.md "KEK rotation", docs/OPERATIONS.md).
//!
//! 1. Refuses while the node (or anything else using its database role) is
//!    connected: a running node would keep sealing under the old KEK.
//! 2. Opens the old KEK, creates the new one (`hsm init` with the new label or TPM
//!    handle: the policy template, idempotent) and opens it.
//! 3. Rewraps every record in one database transaction with its `hsm.rotate_kek`
//!    audit row ([`Store::rotate_kek`]); all or nothing.
//! 4. Re-open check: a fresh handle on the new KEK opens every record.
//! 5. Only with `--destroy-old`, and only after that check: destroys the old KEK
//!    (audited `hsm.destroy_kek`).
//!
//! The configuration file is not edited: the command prints what to change.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hsm::{Custody, CustodyConfig};

use crate::audit::AuditEntry;
use crate::config::NodeConfig;
use crate::store::audit::AuditOf;
use crate::store::rotation::RotationSummary;
use crate::store::Store;

/// The new KEK to rotate to.
#[derive(Debug, Clone)]
pub enum NewKek {
    /// PKCS#11: a new KEK label in the same token.
    Label(String),
    /// TPM: a new storage key at another persistent handle.
    Handle(u32),
}

/// Parses a TPM persistent handle, hex (`0x81010021`) or decimal.
pub fn parse_handle(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("not a TPM handle ({e}): {s}"))
}

/// The custody configuration of the new KEK: the old one with the new label, or the
/// new handle (TPM: not pinned yet; `init` prints its name).
fn next_config(old: &CustodyConfig, new: &NewKek) -> anyhow::Result<CustodyConfig> {
    match (old, new) {
        (CustodyConfig::Pkcs11(c), NewKek::Label(label)) => {
            anyhow::ensure!(
                *label != c.kek_label,
                "--new-label {label:?} is the KEK the configuration already uses"
            );
            let mut n = c.clone();
            n.kek_label = label.clone();
            Ok(CustodyConfig::Pkcs11(n))
        }
        (CustodyConfig::Tpm(c), NewKek::Handle(handle)) => {
            anyhow::ensure!(
                *handle != c.persistent_handle,
                "--new-handle {handle:#010x} is the storage key the configuration already uses"
            );
            let mut n = c.clone();
            n.persistent_handle = *handle;
            n.key_name = None;
            Ok(CustodyConfig::Tpm(n))
        }
        (CustodyConfig::Pkcs11(_), NewKek::Handle(_)) => {
            anyhow::bail!("custody.backend is pkcs11: give --new-label, not --new-handle")
        }
        (CustodyConfig::Tpm(_), NewKek::Label(_)) => {
            anyhow::bail!("custody.backend is tpm: give --new-handle (a free persistent handle), not --new-label")
        }
        _ => anyhow::bail!("unsupported custody backend"),
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, hsm::HsmError> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .with_context(|| format!("{what}: task failed"))?
        .with_context(|| what.to_owned())
}

/// Runs the rotation (see the module documentation).
pub fn rotate(config: &Path, new: NewKek, destroy_old: bool) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config)?;
    let custody = cfg
        .custody
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} has no [custody] section", config.display()))?;
    // SoftHSM reads this when the module loads: set it while single-threaded.
    if let Some(conf) = custody.softhsm2_conf() {
        std::env::set_var("SOFTHSM2_CONF", conf);
    }
    let old_cfg = custody.to_hsm().map_err(|e| anyhow::anyhow!(e))?;
    let new_cfg = next_config(&old_cfg, &new)?;
    super::runtime()?.block_on(run(&cfg, config.to_owned(), old_cfg, new_cfg, destroy_old))
}

async fn run(
    cfg: &NodeConfig,
    config: PathBuf,
    old_cfg: CustodyConfig,
    mut new_cfg: CustodyConfig,
    destroy_old: bool,
) -> anyhow::Result<()> {
    let node_id = cfg.node_id.clone();
    // One connection: the check below counts every other session of the role.
    let store = Store::connect(&cfg.database_url()?, 1)
        .await
        .context("connecting to the node database")?;
    let others = store.other_sessions_of_this_role().await?;
    anyhow::ensure!(
        others == 0,
        "{others} other session(s) of this node's database role are connected: stop the \
         node first (systemctl stop signer), it would keep sealing under the old KEK"
    );

    let c = old_cfg.clone();
    let old = blocking("opening the current KEK", move || Custody::open(&c)).await?;
    let c = new_cfg.clone();
    let report = blocking("creating the new KEK", move || hsm::custody::init(&c)).await?;
    println!("{report}");
    if let (CustodyConfig::Tpm(t), Some(name)) = (&mut new_cfg, &report.tpm_key_name) {
        t.key_name = Some(name.clone());
    }
    let c = new_cfg.clone();
    let new = blocking("opening the new KEK", move || Custody::open(&c)).await?;
    println!("rotating from {} to {}", old.kek_id(), new.kek_id());

    let (old_id, new_id) = (old.kek_id().to_owned(), new.kek_id().to_owned());
    let summary = store
        .rotate_kek(&node_id, &old, &new, |s: &RotationSummary| {
            let per_table: serde_json::Map<String, serde_json::Value> = s
                .rewrapped
                .iter()
                .map(|(t, n)| ((*t).to_owned(), serde_json::json!(n)))
                .collect();
            AuditOf::new(
                &node_id,
                AuditEntry::new("cli", "hsm.rotate_kek")
                    .subject(&new_id)
                    .details(serde_json::json!({
                        "old_kek": old_id,
                        "new_kek": new_id,
                        "rewrapped": per_table,
                        "already_current": s.already_current,
                    })),
            )
        })
        .await
        .context("rotation failed; no record was changed (every row is still under the old KEK)")?;
    for (table, n) in &summary.rewrapped {
        println!("  {table:<14} {n} rewrapped");
    }
    println!(
        "rewrapped {} records in one transaction ({} already under the new KEK); audited as hsm.rotate_kek",
        summary.total_rewrapped(),
        summary.already_current
    );
    drop(old);
    drop(new);

    // Re-open check with a fresh handle on the new KEK: every record opens.
    let c = new_cfg.clone();
    let fresh = blocking("re-opening the new KEK", move || Custody::open(&c)).await?;
    let records = store.envelope_records(&node_id).await?;
    let count = records.len();
    let kek = fresh.kek_id().to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for r in &records {
            let info = hsm::envelope::inspect(&r.blob)
                .with_context(|| format!("re-open check: {}", r.name()))?;
            anyhow::ensure!(
                info.wrapped.kek_id == kek,
                "re-open check: {} is still under {}",
                r.name(),
                info.wrapped.kek_id
            );
            fresh
                .open_record(&r.aad, &r.blob)
                .with_context(|| format!("re-open check: {}", r.name()))?;
        }
        Ok(())
    })
    .await
    .context("re-open check task")??;
    println!("re-open check: all {count} records open with the new KEK");

    match &new_cfg {
        CustodyConfig::Tpm(t) => println!(
            "now set in the [custody] section of {}:\n  persistent_handle = {:#010x}\n  key_name = \"{}\"\nthen start the node",
            config.display(),
            t.persistent_handle,
            t.key_name.as_deref().unwrap_or("")
        ),
        CustodyConfig::Pkcs11(p) => println!(
            "now set in the [custody] section of {}:\n  kek_label = \"{}\"\nthen start the node",
            config.display(),
            p.kek_label
        ),
        _ => {}
    }

    if destroy_old {
        let old_id = kek_id_of(&old_cfg);
        let c = old_cfg.clone();
        blocking("destroying the old KEK", move || {
            hsm::custody::destroy_kek(&c)
        })
        .await?;
        store
            .audit(
                &node_id,
                AuditEntry::new("cli", "hsm.destroy_kek")
                    .subject(&old_id)
                    .details(serde_json::json!({"after_rotation_to": kek_id_of(&new_cfg)})),
            )
            .await?;
        println!("old KEK {old_id} destroyed: backups taken before this rotation can no longer be opened");
    } else {
        println!(
            "the old KEK {} is still in the {}; to destroy it, run this command again with \
             --destroy-old before changing the configuration (it rewraps nothing more)",
            kek_id_of(&old_cfg),
            if matches!(old_cfg, CustodyConfig::Tpm(_)) {
                "TPM"
            } else {
                "token"
            }
        );
    }
    store.pool().close().await;
    Ok(())
}

/// A short name of a configured KEK for messages (label or handle).
fn kek_id_of(c: &CustodyConfig) -> String {
    match c {
        CustodyConfig::Pkcs11(p) => format!("label {:?}", p.kek_label),
        CustodyConfig::Tpm(t) => format!("handle {:#010x}", t.persistent_handle),
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_in_hex_or_decimal() {
        assert_eq!(parse_handle("0x81010021"), Ok(0x8101_0021));
        assert_eq!(parse_handle("2164326433"), Ok(0x8101_0021));
        assert!(parse_handle("0xzz").is_err());
    }

    #[test]
    fn the_new_kek_must_differ_and_match_the_backend() {
        let p = CustodyConfig::Pkcs11(hsm::pkcs11::Pkcs11Config {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "t".into(),
            kek_label: "signer-kek".into(),
            pin: hsm::PinSource::File("/p".into()),
        });
        assert!(next_config(&p, &NewKek::Label("signer-kek".into())).is_err());
        assert!(next_config(&p, &NewKek::Handle(0x8101_0021)).is_err());
        match next_config(&p, &NewKek::Label("kek-2".into())) {
            Ok(CustodyConfig::Pkcs11(n)) => assert_eq!(n.kek_label, "kek-2"),
            other => panic!("{other:?}"),
        }
    }
}
