//! Signing material of this node, opened from its envelopes on first use and kept in
//! memory (the library types zeroize their secrets on drop): an ECDSA key share is the
//! keygen share combined with the aux info of the same ordered node set (with the
//! library's precomputed tables); a FROST share is used as stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hsm::Aad;
use signer_protocol::ecdsa::{EcdsaAuxInfo, EcdsaIncompleteShare, EcdsaKeyShare};
use signer_protocol::frost::FrostKeyShare;

use super::TxError;
use crate::dkg::DkgProtocol;
use crate::node::NodeCtx;

/// An opened share.
#[derive(Debug, Clone)]
pub enum Material {
    /// CGGMP24 share with aux info.
    Ecdsa(Arc<EcdsaKeyShare>),
    /// FROST share.
    Frost(Arc<FrostKeyShare>),
}

/// Cache of opened shares, by key id.
#[derive(Debug, Default)]
pub struct MaterialCache {
    inner: Mutex<HashMap<String, Material>>,
}

impl MaterialCache {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Material>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The signing material of `key_id`, opened (and cached) if needed.
pub async fn load(node: &Arc<NodeCtx>, key_id: &str) -> Result<Material, TxError> {
    if let Some(m) = node.tx_material.lock().get(key_id).cloned() {
        return Ok(m);
    }
    let unsealed = node.unsealed().ok_or(TxError::Sealed)?;
    let me = node.cfg.node_id.clone();
    let row = node
        .store
        .usable_shares(&me)
        .await?
        .into_iter()
        .find(|r| r.key_id == key_id)
        .ok_or_else(|| TxError::UnknownKey(key_id.to_owned()))?;
    let protocol = DkgProtocol::parse(&row.protocol)
        .ok_or_else(|| TxError::Internal(format!("unknown protocol {}", row.protocol)))?;
    let aux = match protocol {
        DkgProtocol::Cggmp24 => Some(
            node.store
                .latest_aux(&me, &row.participants)
                .await?
                .ok_or_else(|| TxError::Invalid {
                    code: "aux_info_missing",
                    message: format!(
                        "no aux info for the node set of key {key_id}; run POST /api/v1/aux-info/start"
                    ),
                })?,
        ),
        _ => None,
    };
    let custody = unsealed.custody.clone();
    let key = key_id.to_owned();
    let material = tokio::task::spawn_blocking(move || -> Result<Material, TxError> {
        let open = |kind, key_id: String, blob: &[u8]| {
            let aad =
                Aad::new(me.clone(), key_id, kind).map_err(|e| TxError::Internal(e.to_string()))?;
            custody
                .open_record(&aad, blob)
                .map_err(|e| TxError::Internal(format!("opening {kind:?}: {e}")))
        };
        match protocol {
            DkgProtocol::Cggmp24 => {
                let share = open(protocol.record_kind(), key.clone(), &row.envelope)?;
                let share = EcdsaIncompleteShare::from_bytes(share.expose_secret())
                    .map_err(|e| TxError::Internal(e.to_string()))?;
                let (aux_id, aux_env) = aux.ok_or_else(|| TxError::Internal("aux info".into()))?;
                let aux = open(hsm::RecordKind::AuxInfo, aux_id.to_string(), &aux_env)?;
                let aux = EcdsaAuxInfo::from_bytes(aux.expose_secret())
                    .map_err(|e| TxError::Internal(e.to_string()))?;
                let full = EcdsaKeyShare::from_parts(&share, &aux)
                    .and_then(EcdsaKeyShare::with_precomputation)
                    .map_err(|e| TxError::Internal(e.to_string()))?;
                Ok(Material::Ecdsa(Arc::new(full)))
            }
            DkgProtocol::Frost => {
                let share = open(protocol.record_kind(), key.clone(), &row.envelope)?;
                let share = FrostKeyShare::from_bytes(share.expose_secret())
                    .map_err(|e| TxError::Internal(e.to_string()))?;
                Ok(Material::Frost(Arc::new(share)))
            }
            DkgProtocol::AuxInfo => Err(TxError::UnknownKey(key)),
        }
    })
    .await
    .map_err(|e| TxError::Internal(format!("open task: {e}")))??;
    node.tx_material
        .lock()
        .insert(key_id.to_owned(), material.clone());
    Ok(material)
}
