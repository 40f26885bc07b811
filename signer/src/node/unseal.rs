//! Sealed start: the node serves key operations only once its HSM/TPM is
//! reachable and authenticated and the process is hardened (memory locked, no core
//! dumps). Until then `/ready` reports `sealed` with the reason code, and nothing
//! secret is read or written. At unseal the node's own keys are opened (or created):
//! the vote key ([`crate::custody`]) and the API token key (installed into the
//! authenticator).

use std::sync::Arc;
use std::time::Duration;

use hsm::{Aad, Custody, RecordKind};
use tokio_util::sync::CancellationToken;

use crate::api::auth::{AuthState, TokenKey, TOKEN_KEY_PURPOSE};
use crate::audit::AuditEntry;
use crate::custody::{load_or_create_vote_key, VoteKey};
use crate::dkg::DkgCtx;
use crate::infra::{CustodyState, Infra};
use crate::store::audit::AuditOf;
use crate::store::node_keys::NodeKeyRow;

/// Opens the custody backend, retrying transient failures, then loads (or on
/// first start creates) the vote-signing key. Runs until unsealed or shutdown.
pub async fn unseal(node: Arc<DkgCtx>, auth: Arc<AuthState>, shutdown: CancellationToken) {
    let Some(cfg) = node.cfg.custody.clone() else {
        tracing::warn!("no [custody] configured: key ceremonies and signing are refused");
        return;
    };
    let hsm_cfg = match cfg.to_hsm() {
        Ok(c) => c,
        Err(e) => {
            node.set_custody_state(CustodyState::Sealed {
                code: "config".to_owned(),
                reason: e,
            });
            return;
        }
    };
    if !hardening_permits_unseal(&node).await {
        return;
    }
    let mut delay = Duration::from_millis(500);
    loop {
        let c = hsm_cfg.clone();
        let opened = tokio::task::spawn_blocking(move || Custody::open(&c)).await;
        let err = match opened {
            Ok(Ok(custody)) => match load_keys(&node, &auth, &custody).await {
                Ok(key) => {
                    tracing::info!(kek = custody.kek_id(), vote_key = %hex::encode(key.public_key()), "custody unsealed");
                    node.set_unsealed(custody, key);
                    crate::dkg::keys::reload_shares(&node).await;
                    node.finish_unseal();
                    return;
                }
                Err(e) => e,
            },
            Ok(Err(e)) => {
                let transient = e.is_transient();
                node.set_custody_state(CustodyState::Sealed {
                    code: e.code().to_owned(),
                    reason: e.to_string(),
                });
                tracing::error!(code = e.code(), error = %e, transient, "custody backend unavailable; node stays sealed");
                if !transient {
                    // Wrong PIN and friends: retrying could lock the device. Wait
                    // for an operator to fix the configuration and restart.
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            Err(e) => format!("custody task failed: {e}"),
        };
        node.set_custody_state(CustodyState::Sealed {
            code: "node_key".to_owned(),
            reason: err.clone(),
        });
        tracing::error!(error = %err, "cannot load the node's keys; node stays sealed");
        return;
    }
}

/// Whether the process is hardened enough to hold unsealed secrets: memory locked,
/// core dumps off, not dumpable. Otherwise custody stays sealed (code
/// `unhardened_process`), unless `[hardening] allow_unhardened_memory` is set, which
/// is logged and audited (issue 16, finding 3).
async fn hardening_permits_unseal(node: &Infra) -> bool {
    let report = node.hardening();
    if report.is_fully_hardened() {
        return true;
    }
    let summary = report.to_string();
    let allowed = node.cfg.hardening.allow_unhardened_memory;
    let action = if allowed {
        tracing::warn!(hardening = %summary, "unsealing an unhardened process: [hardening] allow_unhardened_memory is set (development only)");
        "custody.unhardened_override"
    } else {
        tracing::error!(hardening = %summary, "process memory is not locked or dumps are not disabled: custody stays sealed");
        "custody.refused_unhardened"
    };
    if let Err(e) = node
        .store
        .audit(
            &node.cfg.node_id,
            AuditEntry::new("node", action).details(serde_json::json!({
                "hardening": summary,
                "memory_locked": report.mlock == hsm::memory::MlockStatus::Locked,
                "core_dumps_disabled": report.core_dumps_disabled,
                "not_dumpable": report.not_dumpable,
            })),
        )
        .await
    {
        tracing::error!(error = %e, "cannot audit the hardening decision");
        if allowed {
            // The override must leave a trace; without one, stay sealed.
            node.set_custody_state(CustodyState::Sealed {
                code: "audit".to_owned(),
                reason: "cannot audit the unhardened-memory override".to_owned(),
            });
            return false;
        }
    }
    if !allowed {
        // Shown in the status once its audit row is written (a reader of /ready
        // that sees the refusal finds it in the audit log), or its write failed.
        node.set_custody_state(CustodyState::Sealed {
            code: "unhardened_process".to_owned(),
            reason: format!(
                "process not hardened ({summary}); give the unit LimitMEMLOCK=infinity or CAP_IPC_LOCK"
            ),
        });
    }
    allowed
}

/// The vote key, and the API token key installed into the authenticator.
async fn load_keys(node: &Infra, auth: &AuthState, custody: &Custody) -> Result<VoteKey, String> {
    let vote = load_or_create_vote_key(&node.store, &node.cfg.node_id, custody).await?;
    let token_key = load_or_create_token_key(node, custody).await?;
    auth.set_token_key(token_key);
    Ok(vote)
}

/// Opens (or on first start creates and seals) the API token key: 32 random bytes,
/// stored only as an envelope (`node_keys`, purpose `api_token_mac`); the row's
/// `public_key` is the key's check value.
async fn load_or_create_token_key(node: &Infra, custody: &Custody) -> Result<TokenKey, String> {
    let node_id = node.cfg.node_id.clone();
    let aad = Aad::new(&node_id, TOKEN_KEY_PURPOSE, RecordKind::NodeIdentityKey)
        .map_err(|e| e.to_string())?;
    if let Some(row) = node
        .store
        .node_key(TOKEN_KEY_PURPOSE)
        .await
        .map_err(|e| e.to_string())?
    {
        let custody = custody.clone();
        return tokio::task::spawn_blocking(move || {
            let secret = custody
                .open_record(&aad, &row.envelope)
                .map_err(|e| format!("token key envelope: {e}"))?;
            let key = TokenKey::from_bytes(secret.expose_secret())
                .ok_or_else(|| "token key has the wrong length".to_owned())?;
            if key.check_value().as_slice() != row.public_key.as_slice() {
                return Err("token key does not match its stored check value".to_owned());
            }
            Ok(key)
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let mut secret = zeroize::Zeroizing::new([0u8; TokenKey::LEN]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, secret.as_mut());
    let key = TokenKey::from_bytes(secret.as_slice())
        .ok_or_else(|| "token key has the wrong length".to_owned())?;
    let c = custody.clone();
    let envelope = tokio::task::spawn_blocking(move || c.seal(&aad, secret.as_slice()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sealing the token key: {e}"))?;
    let row = NodeKeyRow {
        purpose: TOKEN_KEY_PURPOSE.to_owned(),
        algorithm: "hmac-sha256".to_owned(),
        public_key: key.check_value().to_vec(),
        envelope,
        kek_id: custody.kek_id().to_owned(),
    };
    let audit = AuditOf::new(
        &node_id,
        AuditEntry::new("node", "node_key.create")
            .subject(TOKEN_KEY_PURPOSE)
            .details(serde_json::json!({"algorithm": "hmac-sha256", "check_value": hex::encode(&row.public_key)})),
    );
    node.store
        .insert_node_key(&row, audit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(key)
}
