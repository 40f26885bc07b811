//! `signer token`, `signer audit`, `signer db`: direct database administration.

use secrecy::ExposeSecret;

use super::{AuditCmd, DbCmd, HsmCmd, TokenCmd};
use crate::api::auth::{generate_token, Role};
use crate::audit::AuditEntry;
use crate::config::NodeConfig;
use crate::store::audit::AuditOf;
use crate::store::Store;

async fn open(config: &std::path::Path) -> anyhow::Result<(NodeConfig, Store)> {
    let cfg = NodeConfig::load(config)?;
    let store = Store::connect(&cfg.database_url()?, 2).await?;
    Ok((cfg, store))
}

/// Token subcommands.
pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            config,
            role,
            name,
            rate_limit_per_min,
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("unknown role {role:?}; use admin, operator, approver or auditor")
            })?;
            let (cfg, store) = open(&config).await?;
            let rate = rate_limit_per_min.unwrap_or(cfg.api.default_rate_limit_per_min);
            let rate = i32::try_from(rate)
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| anyhow::anyhow!("rate limit must be between 1 and 2^31-1"))?;
            let t = generate_token().map_err(|e| anyhow::anyhow!(e.message))?;
            let audit = AuditOf::new(
                &cfg.node_id,
                AuditEntry::new("cli", "token.create")
                    .subject(&t.id)
                    .details(serde_json::json!({"name": name, "role": role.as_str()})),
            );
            store
                .insert_token(
                    &t.id,
                    &name,
                    role.as_str(),
                    &t.secret_hash,
                    rate,
                    "cli",
                    audit,
                )
                .await?;
            println!("{}", t.token.expose_secret());
            Ok(())
        }
        TokenCmd::List { config, json } => {
            let (_, store) = open(&config).await?;
            if json {
                // TokenRow never serializes its stored hash.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "tokens": store.list_tokens().await?
                    }))?
                );
                return Ok(());
            }
            println!(
                "{:<18} {:<10} {:<24} {:>8}  REVOKED",
                "ID", "ROLE", "NAME", "RATE/MIN"
            );
            for t in store.list_tokens().await? {
                println!(
                    "{:<18} {:<10} {:<24} {:>8}  {}",
                    t.id,
                    t.role,
                    t.name,
                    t.rate_limit_per_min,
                    t.revoked_at
                        .map(|r| r.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { config, id } => {
            let (cfg, store) = open(&config).await?;
            let audit = AuditOf::new(
                &cfg.node_id,
                AuditEntry::new("cli", "token.revoke").subject(&id),
            );
            if !store.revoke_token(&id, audit).await? {
                anyhow::bail!("token {id} not found or already revoked");
            }
            println!("revoked {id} (a running node drops it at once)");
            Ok(())
        }
    }
}

/// Audit subcommands.
pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { config, json } => {
            let (_, store) = open(&config).await?;
            let (n, head, err) = store.verify_audit_chain().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "valid": err.is_none(),
                        "records": n,
                        "head": hex::encode(head),
                        "error": err.as_ref().map(ToString::to_string),
                    }))?
                );
                anyhow::ensure!(err.is_none(), "audit chain INVALID after {n} good records");
                return Ok(());
            }
            match err {
                None => {
                    println!("audit chain valid: {n} records, head {}", hex::encode(head));
                    Ok(())
                }
                Some(e) => anyhow::bail!("audit chain INVALID after {n} good records: {e}"),
            }
        }
        AuditCmd::Export { .. } | AuditCmd::VerifyExport { .. } | AuditCmd::Report { .. } => {
            anyhow::bail!("export, verify-export and report run through cli::audit")
        }
    }
}

/// Database subcommands.
pub async fn db(cmd: DbCmd) -> anyhow::Result<()> {
    match cmd {
        DbCmd::Migrate { config } => {
            let (_, store) = open(&config).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
    }
}

/// HSM subcommands (no database needed).
pub fn hsm(cmd: HsmCmd) -> anyhow::Result<()> {
    let config = match &cmd {
        HsmCmd::Init { config } | HsmCmd::Check { config, .. } => config,
        HsmCmd::RotateKek { .. } => anyhow::bail!("rotate-kek runs through cli::kek"),
    };
    // A TPM storage key need not be pinned yet: both commands print its name to pin.
    let cfg = NodeConfig::load_for_custody_setup(config)?;
    let custody = cfg
        .custody
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} has no [custody] section", config.display()))?;
    if let Some(conf) = custody.softhsm2_conf() {
        std::env::set_var("SOFTHSM2_CONF", conf);
    }
    let hsm_cfg = custody.to_hsm().map_err(|e| anyhow::anyhow!(e))?;
    match cmd {
        HsmCmd::Init { .. } => {
            let report = hsm::custody::init(&hsm_cfg)?;
            println!("{report}");
            // The presignature watermark's TPM anchor, defined if missing.
            if let Some(a) =
                crate::presign::anchor::TpmAnchor::open(&cfg, true).map_err(anyhow::Error::msg)?
            {
                println!("{}", anchor_line(&a)?);
            }
            Ok(())
        }
        HsmCmd::Check { json, .. } => {
            let report = hsm::custody::check(&hsm_cfg);
            // The presignature watermark's TPM anchor, when one is configured (checked
            // after custody: it may open the same TPM).
            let anchor = if report.is_ok() {
                anchor_check(&cfg)
            } else {
                None
            };
            let ok = report.is_ok() && !matches!(anchor, Some(Err(_)));
            if json {
                let mut steps: Vec<_> = report
                    .steps
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name, "ok": s.ok, "detail": s.detail, "code": s.code,
                        })
                    })
                    .collect();
                if let Some(a) = &anchor {
                    let (ok, detail, code) = match a {
                        Ok(d) => (true, d.as_str(), None),
                        Err(e) => (false, e.as_str(), Some("presign_anchor")),
                    };
                    steps.push(serde_json::json!({
                        "name": "presignature watermark anchor", "ok": ok, "detail": detail,
                        "code": code,
                    }));
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "steps": steps }))?
                );
                anyhow::ensure!(ok, "custody check failed");
                return Ok(());
            }
            println!("{report}");
            anyhow::ensure!(report.is_ok(), "custody check failed");
            match anchor {
                Some(Ok(detail)) => println!("[ok] presignature watermark anchor: {detail}"),
                Some(Err(e)) => anyhow::bail!("presignature watermark anchor: {e}"),
                None => {}
            }
            Ok(())
        }
        HsmCmd::RotateKek { .. } => anyhow::bail!("rotate-kek runs through cli::kek"),
    }
}

/// What `hsm init`/`check` print about the presignature watermark's TPM counter.
fn anchor_line(a: &crate::presign::anchor::TpmAnchor) -> anyhow::Result<String> {
    Ok(format!(
        "[ok] presignature watermark anchor: {}",
        anchor_detail(a).map_err(anyhow::Error::msg)?
    ))
}

/// The anchor's index and value (`tpm counter 0x… at N`).
fn anchor_detail(a: &crate::presign::anchor::TpmAnchor) -> Result<String, String> {
    let value = a.read()?;
    Ok(format!(
        "tpm counter {:#010x} at {}",
        a.index(),
        value.map_or_else(|| "0 (never incremented)".to_owned(), |v| v.to_string())
    ))
}

/// The configured anchor's detail or why it cannot be read; `None` without one.
fn anchor_check(cfg: &crate::config::NodeConfig) -> Option<Result<String, String>> {
    match crate::presign::anchor::TpmAnchor::open(cfg, false) {
        Ok(Some(a)) => Some(anchor_detail(&a)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}
