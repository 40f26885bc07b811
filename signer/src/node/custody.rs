//! Sealed start: the node serves key operations only once its HSM/TPM is
//! reachable and authenticated. Until then `/ready` reports `sealed` with the
//! reason code, and nothing secret is read or written.

use std::sync::Arc;
use std::time::Duration;

use hsm::{Aad, Custody, RecordKind};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio_util::sync::CancellationToken;

use super::{CustodyState, NodeCtx};
use crate::audit::AuditEntry;
use crate::store::node_keys::NodeKeyRow;

/// Purpose name of the vote-signing key.
pub const VOTE_KEY: &str = "vote_signing";

/// The node's vote-signing key, unsealed in memory.
pub struct VoteKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for VoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteKey")
            .field("public", &hex::encode(self.public_key()))
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl VoteKey {
    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs a message.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// Opens the custody backend, retrying transient failures, then loads (or on
/// first start creates) the vote-signing key. Runs until unsealed or shutdown.
pub async fn unseal(node: Arc<NodeCtx>, shutdown: CancellationToken) {
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
            Ok(Ok(custody)) => match load_or_create_vote_key(&node, &custody).await {
                Ok(key) => {
                    tracing::info!(kek = custody.kek_id(), vote_key = %hex::encode(key.public_key()), "custody unsealed");
                    node.set_unsealed(custody, key);
                    crate::dkg::keys::reload_shares(&node).await;
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

async fn load_or_create_vote_key(node: &NodeCtx, custody: &Custody) -> Result<VoteKey, String> {
    let node_id = node.cfg.node_id.clone();
    let aad =
        Aad::new(&node_id, VOTE_KEY, RecordKind::NodeIdentityKey).map_err(|e| e.to_string())?;
    if let Some(row) = node
        .store
        .node_key(VOTE_KEY)
        .await
        .map_err(|e| e.to_string())?
    {
        let custody = custody.clone();
        return tokio::task::spawn_blocking(move || {
            let secret = custody
                .open_record(&aad, &row.envelope)
                .map_err(|e| format!("vote key envelope: {e}"))?;
            let pair = Ed25519KeyPair::from_pkcs8(secret.expose_secret())
                .map_err(|_| "vote key is not a valid ed25519 pkcs8 document".to_owned())?;
            if pair.public_key().as_ref() != row.public_key.as_slice() {
                return Err("vote key does not match its stored public key".to_owned());
            }
            Ok(VoteKey { pair })
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = zeroize::Zeroizing::new(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "cannot generate the vote key".to_owned())?
            .as_ref()
            .to_vec(),
    );
    let pair =
        Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| "generated key invalid".to_owned())?;
    let c = custody.clone();
    let envelope = tokio::task::spawn_blocking(move || c.seal(&aad, &pkcs8))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sealing the vote key: {e}"))?;
    let row = NodeKeyRow {
        purpose: VOTE_KEY.to_owned(),
        algorithm: "ed25519".to_owned(),
        public_key: pair.public_key().as_ref().to_vec(),
        envelope,
        kek_id: custody.kek_id().to_owned(),
    };
    node.store
        .insert_node_key(&row)
        .await
        .map_err(|e| e.to_string())?;
    let _ = node
        .store
        .audit(
            &node_id,
            AuditEntry::new("node", "node_key.create")
                .subject(VOTE_KEY)
                .details(serde_json::json!({"algorithm": "ed25519", "public_key": hex::encode(&row.public_key)})),
        )
        .await;
    Ok(VoteKey { pair })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_key_debug_shows_only_the_public_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let key = VoteKey {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("valid"),
        };
        let dbg = format!("{key:?}");
        assert!(dbg.contains("[REDACTED]"), "{dbg}");
        assert!(
            !dbg.contains(&hex::encode(&pkcs8.as_ref()[16..48])),
            "{dbg}"
        );
        assert!(dbg.contains(&hex::encode(key.public_key())));
    }
}
