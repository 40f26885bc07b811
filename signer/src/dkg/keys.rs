//! Completed keys: reload (unseal and validate) at start, and watch-only
//! descriptors with the first receive address (regtest).

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, CompressedPublicKey, Network};
use hsm::Aad;
use serde::Serialize;
use signer_protocol::{ecdsa::EcdsaIncompleteShare, frost::FrostKeyShare};

use super::{DkgProtocol, LoadedKey};
use crate::node::NodeCtx;
use crate::store::dkg::ShareRow;

/// One key in `GET /api/v1/keys`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key id (the ceremony id).
    pub key_id: String,
    /// `ecdsa` or `taproot`.
    pub key_type: &'static str,
    /// Threshold.
    pub t: i32,
    /// Number of share holders.
    pub n: usize,
    /// Share holders.
    pub participants: Vec<String>,
    /// Compressed shared public key, hex.
    pub public_key: String,
    /// Whether this node's share was unsealed and validated since start.
    pub share_loaded: bool,
    /// Watch-only descriptor (`wpkh(...)` or `tr(...)`), when the share is loaded.
    pub descriptor: Option<String>,
    /// First receive address (`.../0/0`) on regtest, when the share is loaded.
    pub first_address: Option<String>,
}

/// Why a stored share could not be reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The envelope did not open.
    #[error("share of key {key_id}: envelope: {reason}")]
    Envelope {
        /// Key.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// The opened share is not a valid share of the recorded key.
    #[error("share of key {key_id}: {reason}")]
    Invalid {
        /// Key.
        key_id: String,
        /// Why.
        reason: String,
    },
}

/// Opens and validates every usable share of this node; returns how many loaded.
/// Failures are logged per key and leave that key unloaded.
pub async fn reload_shares(node: &Arc<NodeCtx>) -> usize {
    let Some(unsealed) = node.unsealed() else {
        return 0;
    };
    let rows = match node.store.usable_shares(&node.cfg.node_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot list key shares to reload");
            return 0;
        }
    };
    let total = rows.len();
    let mut loaded = 0usize;
    for row in rows {
        let key_id = row.key_id.clone();
        let custody = unsealed.custody.clone();
        let me = node.cfg.node_id.clone();
        let r = tokio::task::spawn_blocking(move || open_share(&custody, &me, &row)).await;
        match r {
            Ok(Ok(key)) => {
                node.dkg.set_loaded(&key_id, key);
                loaded += 1;
            }
            Ok(Err(e)) => tracing::error!(key = %key_id, error = %e, "key share does not reload"),
            Err(e) => tracing::error!(key = %key_id, error = %e, "reload task failed"),
        }
    }
    tracing::info!(loaded, total, "key shares reloaded from custody");
    loaded
}

fn open_share(custody: &hsm::Custody, me: &str, row: &ShareRow) -> Result<LoadedKey, ReloadError> {
    let invalid = |reason: String| ReloadError::Invalid {
        key_id: row.key_id.clone(),
        reason,
    };
    let protocol = DkgProtocol::parse(&row.protocol)
        .ok_or_else(|| invalid(format!("unknown protocol {}", row.protocol)))?;
    let aad = Aad::new(me, row.key_id.clone(), protocol.record_kind())
        .map_err(|e| invalid(e.to_string()))?;
    let secret = custody
        .open_record(&aad, &row.envelope)
        .map_err(|e| ReloadError::Envelope {
            key_id: row.key_id.clone(),
            reason: e.to_string(),
        })?;
    let (pk, xpub) = match protocol {
        DkgProtocol::Cggmp24 => {
            let s = EcdsaIncompleteShare::from_bytes(secret.expose_secret())
                .map_err(|e| invalid(e.to_string()))?;
            (s.public_key(), s.xpub(bitcoin::NetworkKind::Test))
        }
        DkgProtocol::Frost => {
            let s = FrostKeyShare::from_bytes(secret.expose_secret())
                .map_err(|e| invalid(e.to_string()))?;
            (s.public_key(), s.xpub(bitcoin::NetworkKind::Test))
        }
        DkgProtocol::AuxInfo => return Err(invalid("aux info is not a key share".to_owned())),
    };
    if pk.serialize().as_slice() != row.public_key.as_slice() {
        return Err(invalid(
            "opened share does not match the recorded public key".to_owned(),
        ));
    }
    Ok(LoadedKey {
        xpub: xpub.map(|x| x.to_string()),
    })
}

/// Watch-only descriptor and first receive address (regtest) of a key.
pub fn descriptor_and_address(
    protocol: DkgProtocol,
    xpub: &str,
) -> Result<(String, String), String> {
    let x = Xpub::from_str(xpub).map_err(|e| e.to_string())?;
    let secp = Secp256k1::verification_only();
    let fp = x.fingerprint();
    let path = [
        ChildNumber::from_normal_idx(0).map_err(|e| e.to_string())?,
        ChildNumber::from_normal_idx(0).map_err(|e| e.to_string())?,
    ];
    let child = x.derive_pub(&secp, &path).map_err(|e| e.to_string())?;
    match protocol {
        DkgProtocol::Cggmp24 => {
            let addr = Address::p2wpkh(&CompressedPublicKey(child.public_key), Network::Regtest);
            Ok((format!("wpkh([{fp}]{x}/<0;1>/*)"), addr.to_string()))
        }
        DkgProtocol::Frost => {
            let internal = child.public_key.x_only_public_key().0;
            let addr = Address::p2tr(&secp, internal, None, Network::Regtest);
            Ok((format!("tr([{fp}]{x}/<0;1>/*)"), addr.to_string()))
        }
        DkgProtocol::AuxInfo => Err("aux info has no descriptor".to_owned()),
    }
}

/// The completed keys of this node, newest first.
pub async fn list_keys(node: &NodeCtx) -> Result<Vec<KeyInfo>, crate::store::StoreError> {
    let rows = node.store.usable_shares(&node.cfg.node_id).await?;
    let mut out: Vec<KeyInfo> = rows
        .into_iter()
        .filter_map(|r| {
            let protocol = DkgProtocol::parse(&r.protocol)?;
            let loaded = node.dkg.loaded(&r.key_id);
            let (descriptor, first_address) = match loaded.as_ref().and_then(|l| l.xpub.as_ref()) {
                Some(x) => match descriptor_and_address(protocol, x) {
                    Ok((d, a)) => (Some(d), Some(a)),
                    Err(e) => {
                        tracing::warn!(key = %r.key_id, error = %e, "cannot derive the descriptor");
                        (None, None)
                    }
                },
                None => (None, None),
            };
            Some(KeyInfo {
                key_id: r.key_id,
                key_type: protocol.key_type(),
                t: r.threshold,
                n: r.participants.len(),
                participants: r.participants,
                public_key: hex::encode(&r.public_key),
                share_loaded: loaded.is_some(),
                descriptor,
                first_address,
            })
        })
        .collect();
    out.reverse();
    Ok(out)
}
