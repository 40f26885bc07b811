//! Signing material of this node, opened from its envelopes on first use and kept in
//! memory (the library types zeroize their secrets on drop): an ECDSA key share is the
//! keygen share combined with the aux info of the same ordered node set; a FROST share
//! is used as stored.
//!
//! Opening takes milliseconds, so a node signs as soon as it has the share. The
//! library's precomputed tables (multi-exponentiation tables for every party's
//! ring-Pedersen parameters, which speed up an ECDSA signing or presigning session)
//! take seconds of CPU; the background warm-up ([`warm`]) builds them once per node
//! set's aux info (the ECDSA keys of one node set share them) and swaps the
//! accelerated share in. Until then the node signs with the plain share: slower, but
//! it never makes its co-signers wait for it (a restarted node used to join a
//! signing session a minute late, and the others' runs stalled).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hsm::Aad;
use signer_protocol::ecdsa::{EcdsaAuxInfo, EcdsaIncompleteShare, EcdsaKeyShare};
use signer_protocol::frost::FrostKeyShare;
use uuid::Uuid;

use super::{DkgCtx, DkgProtocol};

/// Why a share cannot be opened for signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterialError {
    /// Custody is sealed.
    #[error("custody is sealed: transactions are refused")]
    Sealed,
    /// No usable share of that key on this node.
    #[error("key {0} not found or not loaded on this node")]
    UnknownKey(String),
    /// The ECDSA key's node set has no aux info yet.
    #[error("no aux info for the node set of key {0}; run POST /api/v1/aux-info/start")]
    AuxInfoMissing(String),
    /// Database failure.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Anything else that is this node's problem.
    #[error("{0}")]
    Internal(String),
}

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
    /// Held while a share is being opened (milliseconds: never while tables are
    /// built), so a signing request and the warm-up never open the same share twice
    /// at once.
    opening: tokio::sync::Mutex<()>,
    /// Bumped by every [`MaterialCache::invalidate`]: material opened from share rows
    /// read before an invalidation is never cached (a reshare that switched while
    /// the warm-up was opening the old share must not leave the old share cached).
    epoch: AtomicU64,
    /// Aux infos with the library's precomputed tables, by aux-info ceremony id: the
    /// tables belong to a node set's aux info, so the ECDSA keys of one node set
    /// share one set (about 1.5 MiB and 22 s of one core for five nodes) instead of
    /// building and holding their own.
    tables: Mutex<HashMap<Uuid, Arc<EcdsaAuxInfo>>>,
}

impl MaterialCache {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Material>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the cached material of `key_id` (its share changed, e.g. a reshare
    /// switched) and makes every opening in flight discard its result.
    pub fn invalidate(&self, key_id: &str) {
        let mut cache = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.remove(key_id);
    }

    fn tables(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<EcdsaAuxInfo>>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The accelerated aux info of ceremony `aux_id`, if its tables are built.
    fn accelerated_aux(&self, aux_id: Uuid) -> Option<Arc<EcdsaAuxInfo>> {
        self.tables().get(&aux_id).cloned()
    }

    /// Keeps only the tables of the aux infos in `used` (an aux info replaced for
    /// its node set frees its tables).
    fn retain_tables(&self, used: &std::collections::HashSet<Uuid>) {
        self.tables().retain(|id, _| used.contains(id));
    }
}

/// Attempts of [`load`] when the share changes while it is being opened.
const OPEN_ATTEMPTS: usize = 3;

/// The signing material of `key_id`, opened (and cached) if needed. An ECDSA share
/// opened here has no precomputed tables yet ([`accelerate`] adds them).
pub async fn load(node: &DkgCtx, key_id: &str) -> Result<Material, MaterialError> {
    if let Some(m) = node.signing_material.lock().get(key_id).cloned() {
        return Ok(m);
    }
    let _opening = node.signing_material.opening.lock().await;
    for _ in 0..OPEN_ATTEMPTS {
        if let Some(m) = node.signing_material.lock().get(key_id).cloned() {
            return Ok(m);
        }
        let epoch = node.signing_material.epoch.load(Ordering::SeqCst);
        let material = open_material(node, key_id).await?;
        let mut cache = node.signing_material.lock();
        if node.signing_material.epoch.load(Ordering::SeqCst) == epoch {
            cache.insert(key_id.to_owned(), material.clone());
            return Ok(material);
        }
        drop(cache);
        tracing::info!(key = %key_id, "share changed while it was being opened; opening it again");
    }
    Err(MaterialError::Internal(format!(
        "the share of key {key_id} kept changing while it was being opened"
    )))
}

/// Opens `key_id`'s usable share (and, for ECDSA, the aux info of its node set).
async fn open_material(node: &DkgCtx, key_id: &str) -> Result<Material, MaterialError> {
    let unsealed = node.unsealed().ok_or(MaterialError::Sealed)?;
    let me = node.cfg.node_id.clone();
    let row = usable_share(node, key_id).await?;
    let protocol = DkgProtocol::parse(&row.protocol)
        .ok_or_else(|| MaterialError::Internal(format!("unknown protocol {}", row.protocol)))?;
    let aux = match protocol {
        DkgProtocol::Cggmp24 => Some(
            node.store
                .latest_aux(&me, &row.participants)
                .await?
                .ok_or_else(|| MaterialError::AuxInfoMissing(key_id.to_owned()))?,
        ),
        _ => None,
    };
    let accelerated = aux
        .as_ref()
        .and_then(|(aux_id, _)| node.signing_material.accelerated_aux(*aux_id));
    let custody = unsealed.custody.clone();
    let key = key_id.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Material, MaterialError> {
        let open = |kind, key_id: String, blob: &[u8]| {
            let aad = Aad::new(me.clone(), key_id, kind)
                .map_err(|e| MaterialError::Internal(e.to_string()))?;
            custody
                .open_record(&aad, blob)
                .map_err(|e| MaterialError::Internal(format!("opening {kind:?}: {e}")))
        };
        match protocol {
            DkgProtocol::Cggmp24 => {
                let share = open(protocol.record_kind(), key.clone(), &row.envelope)?;
                let share = EcdsaIncompleteShare::from_bytes(share.expose_secret())
                    .map_err(|e| MaterialError::Internal(e.to_string()))?;
                let (aux_id, aux_env) =
                    aux.ok_or_else(|| MaterialError::Internal("aux info".into()))?;
                // With the node set's tables when they are built (the share is
                // accelerated at once); else the plain aux info.
                let full = match accelerated {
                    Some(aux) => EcdsaKeyShare::from_parts(&share, &aux),
                    None => {
                        let aux = open_aux(&custody, &me, aux_id, &aux_env)?;
                        EcdsaKeyShare::from_parts(&share, &aux)
                    }
                }
                .map_err(|e| MaterialError::Internal(e.to_string()))?;
                Ok(Material::Ecdsa(Arc::new(full)))
            }
            DkgProtocol::Frost => {
                let share = open(protocol.record_kind(), key.clone(), &row.envelope)?;
                let share = FrostKeyShare::from_bytes(share.expose_secret())
                    .map_err(|e| MaterialError::Internal(e.to_string()))?;
                Ok(Material::Frost(Arc::new(share)))
            }
            DkgProtocol::AuxInfo => Err(MaterialError::UnknownKey(key)),
        }
    })
    .await
    .map_err(|e| MaterialError::Internal(format!("open task: {e}")))?
}

/// Opens ECDSA aux-info envelope `aux_id` of node `me` (blocking: the HSM).
fn open_aux(
    custody: &hsm::Custody,
    me: &str,
    aux_id: Uuid,
    envelope: &[u8],
) -> Result<EcdsaAuxInfo, MaterialError> {
    let kind = hsm::RecordKind::AuxInfo;
    let aad = Aad::new(me.to_owned(), aux_id.to_string(), kind)
        .map_err(|e| MaterialError::Internal(e.to_string()))?;
    let plain = custody
        .open_record(&aad, envelope)
        .map_err(|e| MaterialError::Internal(format!("opening {kind:?}: {e}")))?;
    EcdsaAuxInfo::from_bytes(plain.expose_secret())
        .map_err(|e| MaterialError::Internal(e.to_string()))
}

/// This node's usable share row of `key_id`.
async fn usable_share(
    node: &DkgCtx,
    key_id: &str,
) -> Result<crate::store::dkg::ShareRow, MaterialError> {
    node.store
        .usable_shares(&node.cfg.node_id)
        .await?
        .into_iter()
        .find(|r| r.key_id == key_id)
        .ok_or_else(|| MaterialError::UnknownKey(key_id.to_owned()))
}

/// The aux-info ceremony id and envelope of `key_id`'s node set on this node.
async fn key_aux(node: &DkgCtx, key_id: &str) -> Result<(Uuid, Vec<u8>), MaterialError> {
    let me = node.cfg.node_id.clone();
    let row = usable_share(node, key_id).await?;
    node.store
        .latest_aux(&me, &row.participants)
        .await?
        .ok_or_else(|| MaterialError::AuxInfoMissing(key_id.to_owned()))
}

/// Makes `key_id`'s cached ECDSA share (opening it first if needed) an accelerated
/// one: builds the library's precomputed tables for its node set's aux info unless
/// another key of the set already did, opens the share again with them and swaps it
/// in, unless the cache no longer holds the share it replaces (a reshare switched
/// meanwhile). Returns whether it swapped one in. The tables take seconds of CPU on
/// a blocking thread; signing goes on with the plain share meanwhile.
pub async fn accelerate(node: &DkgCtx, key_id: &str) -> Result<bool, MaterialError> {
    let Material::Ecdsa(plain) = load(node, key_id).await? else {
        return Ok(false);
    };
    if plain.is_precomputed() {
        return Ok(false);
    }
    let (aux_id, envelope) = key_aux(node, key_id).await?;
    if node.signing_material.accelerated_aux(aux_id).is_none() {
        crate::fault::precompute_delay().await;
        let unsealed = node.unsealed().ok_or(MaterialError::Sealed)?;
        let custody = unsealed.custody.clone();
        let me = node.cfg.node_id.clone();
        let fast = tokio::task::spawn_blocking(move || {
            open_aux(&custody, &me, aux_id, &envelope)?
                .precomputed_copy()
                .map_err(|e| MaterialError::Internal(e.to_string()))
        })
        .await
        .map_err(|e| MaterialError::Internal(format!("precompute task: {e}")))??;
        node.signing_material
            .tables()
            .insert(aux_id, Arc::new(fast));
    }
    let fast = open_material(node, key_id).await?;
    let accelerated = matches!(&fast, Material::Ecdsa(s) if s.is_precomputed());
    let mut cache = node.signing_material.lock();
    // `plain` is kept alive until here, so an equal pointer is this very share.
    let still_cached =
        matches!(cache.get(key_id), Some(Material::Ecdsa(c)) if Arc::ptr_eq(c, &plain));
    if accelerated && still_cached {
        cache.insert(key_id.to_owned(), fast);
    }
    Ok(accelerated && still_cached)
}

/// Background task: opens every CGGMP24 share of this node that has aux info ahead
/// of its first use and makes it accelerated ([`accelerate`]: the tables of its
/// node set, seconds of CPU once per node set), so signing sessions run
/// accelerated. Checked again periodically for keys and aux info that appear
/// later; tables of aux infos no key uses any more are dropped.
pub async fn warm(node: Arc<DkgCtx>) {
    loop {
        if node.unsealed().is_some() {
            let me = node.cfg.node_id.clone();
            let rows = match node.store.usable_shares(&me).await {
                Ok(rows) => Some(
                    rows.into_iter()
                        .filter(|r| DkgProtocol::parse(&r.protocol) == Some(DkgProtocol::Cggmp24))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list shares to warm up");
                    None
                }
            };
            let mut used = std::collections::HashSet::new();
            let mut complete = rows.is_some();
            for row in rows.unwrap_or_default() {
                match node.store.latest_aux(&me, &row.participants).await {
                    Ok(Some((aux_id, _))) => {
                        used.insert(aux_id);
                    }
                    Ok(None) => {}
                    Err(_) => complete = false,
                }
                let key = row.key_id;
                let accelerated = matches!(
                    node.signing_material.lock().get(&key),
                    Some(Material::Ecdsa(s)) if s.is_precomputed()
                );
                if accelerated {
                    continue;
                }
                let start = std::time::Instant::now();
                match accelerate(&node, &key).await {
                    Ok(swapped) => tracing::info!(
                        key = %key,
                        swapped,
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "signing material opened with its node set's precomputed tables"
                    ),
                    Err(e) => {
                        tracing::debug!(key = %key, error = %e, "signing material not opened yet")
                    }
                }
            }
            if complete {
                node.signing_material.retain_tables(&used);
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}
