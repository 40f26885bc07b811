//! Sealed start: the node serves key operations only once its HSM/TPM is
//! reachable and authenticated. Until then `/ready` reports `sealed` with the
//! reason code, and nothing secret is read or written.

use std::sync::Arc;
use std::time::Duration;

use hsm::Custody;
use tokio_util::sync::CancellationToken;

use crate::custody::load_or_create_vote_key;
use crate::dkg::DkgCtx;
use crate::infra::CustodyState;

/// Opens the custody backend, retrying transient failures, then loads (or on
/// first start creates) the vote-signing key. Runs until unsealed or shutdown.
pub async fn unseal(node: Arc<DkgCtx>, shutdown: CancellationToken) {
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
    let mut delay = Duration::from_millis(500);
    loop {
        let c = hsm_cfg.clone();
        let opened = tokio::task::spawn_blocking(move || Custody::open(&c)).await;
        let err = match opened {
            Ok(Ok(custody)) => {
                match load_or_create_vote_key(&node.store, &node.cfg.node_id, &custody).await {
                    Ok(key) => {
                        tracing::info!(kek = custody.kek_id(), vote_key = %hex::encode(key.public_key()), "custody unsealed");
                        node.set_unsealed(custody, key);
                        crate::dkg::keys::reload_shares(&node).await;
                        return;
                    }
                    Err(e) => e,
                }
            }
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
