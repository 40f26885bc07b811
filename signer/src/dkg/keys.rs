//! Completed keys: reload (unseal and validate) at start, and watch-only
//! descriptors (BIP-380 checksums) and address derivation on the configured
//! network (`[wallet] network`), through [`WalletKey`].

use std::sync::Arc;

use bitcoin::bip32::ChildNumber;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use hsm::Aad;
use serde::Serialize;
use signer_protocol::{ecdsa::EcdsaIncompleteShare, frost::FrostKeyShare};

use super::DkgCtx;
use super::{material, DkgProtocol, LoadedKey};
use crate::store::dkg::ShareRow;
use wallet::WalletKey;

/// One key in `GET /api/v1/keys`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// Key id (the ceremony id).
    pub key_id: String,
    /// `ecdsa` or `taproot`.
    #[schema(value_type = String, example = "ecdsa")]
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
    /// Whether this node's signing material of the key is open. ECDSA: the share
    /// with the aux info of its node set (the background warm-up opens it within
    /// seconds of start or of aux info; a signing request opens it itself if it
    /// comes first, in milliseconds). Taproot: the share is loaded.
    pub signing_ready: bool,
    /// ECDSA: whether the library's precomputed tables are built into the open
    /// share (they speed up signing and presigning; the warm-up builds them in the
    /// background, seconds of CPU, and the node signs with the plain share
    /// meanwhile). `None` for Taproot keys, which have no such tables.
    pub precomputed_tables: Option<bool>,
    /// Network of the descriptors and addresses.
    pub network: String,
    /// Watch-only multipath descriptor (`wpkh([fp]xpub/<0;1>/*)#checksum` or
    /// `tr(...)`), when the share is loaded.
    pub descriptor: Option<String>,
    /// Receive chain only (`.../0/*#checksum`), when the share is loaded.
    pub receive_descriptor: Option<String>,
    /// Change chain only (`.../1/*#checksum`), when the share is loaded.
    pub change_descriptor: Option<String>,
    /// First receive address (`.../0/0`), when the share is loaded.
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
pub async fn reload_shares(node: &Arc<DkgCtx>) -> usize {
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

/// Most addresses one `GET /api/v1/keys/{id}/addresses` returns.
pub const MAX_ADDRESS_COUNT: u32 = 1000;

/// Largest non-hardened BIP-32 child index (2^31 - 1).
pub const MAX_CHILD_INDEX: u32 = (1 << 31) - 1;

/// Address chain: BIP-44 style `0` (receive) or `1` (change) below the key's xpub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// External chain, `/0/*`.
    Receive,
    /// Internal chain, `/1/*`.
    Change,
}

impl Chain {
    /// The chain's child number below the xpub.
    pub fn index(self) -> u32 {
        match self {
            Chain::Receive => 0,
            Chain::Change => 1,
        }
    }

    /// `receive` or `change`.
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::Receive => "receive",
            Chain::Change => "change",
        }
    }

    /// Parses `receive` or `change`.
    pub fn parse(s: &str) -> Option<Chain> {
        match s {
            "receive" => Some(Chain::Receive),
            "change" => Some(Chain::Change),
            _ => None,
        }
    }
}

/// Why descriptors or addresses could not be derived.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// The stored xpub does not parse.
    #[error("invalid xpub: {0}")]
    Xpub(String),
    /// The requested index range leaves the non-hardened range.
    #[error(
        "indexes {from}..{from}+{count} go past the last non-hardened index {MAX_CHILD_INDEX}"
    )]
    Range {
        /// First index.
        from: u32,
        /// How many.
        count: u32,
    },
    /// More addresses than [`MAX_ADDRESS_COUNT`].
    #[error("count {0} is larger than the limit of {MAX_ADDRESS_COUNT}")]
    Count(u32),
    /// BIP-32 derivation failed.
    #[error("derivation: {0}")]
    Bip32(String),
    /// The record is not a key (aux info).
    #[error("{0} records have no descriptor or addresses")]
    NotAKey(&'static str),
}

/// Watch-only descriptors of one key, each with its BIP-380 `#checksum`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptors {
    /// Multipath `wpkh([fp]xpub/<0;1>/*)#sum` / `tr([fp]xpub/<0;1>/*)#sum`.
    pub descriptor: String,
    /// Receive chain only, `.../0/*` (for wallets without multipath support, such
    /// as Bitcoin Core's `importdescriptors`).
    pub receive_descriptor: String,
    /// Change chain only, `.../1/*`.
    pub change_descriptor: String,
}

/// One derived address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DerivedAddress {
    /// Child index on the chain.
    pub index: u32,
    /// Path below the key's xpub, `m/<chain>/<index>`.
    pub path: String,
    /// Address on the configured network: P2WPKH for ecdsa keys, P2TR (BIP-86, no script
    /// tree) for taproot keys.
    pub address: String,
    /// Compressed child public key, hex (for taproot, its x coordinate is the
    /// BIP-86 internal key).
    pub public_key: String,
}

/// The wallet view of a key made by `protocol` with master `xpub`, on `network`
/// (the xpub's own version bytes are ignored: `network` decides the encoding of
/// descriptors and addresses).
pub fn wallet_key(
    key_id: &str,
    protocol: DkgProtocol,
    xpub: &str,
    network: Network,
) -> Result<WalletKey, DeriveError> {
    let kind = protocol
        .key_kind()
        .ok_or(DeriveError::NotAKey(protocol.as_str()))?;
    WalletKey::from_xpub_str(key_id, kind, xpub, network)
        .map_err(|e| DeriveError::Xpub(e.to_string()))
}

/// The watch-only descriptors of a key: key origin `[fingerprint]` of the master
/// xpub, multipath `<0;1>/*` and the two single chains, each with its BIP-380
/// checksum (one implementation: [`WalletKey`]).
pub fn descriptors(key: &WalletKey) -> Descriptors {
    let (receive_descriptor, change_descriptor) = key.single_path_descriptors();
    Descriptors {
        descriptor: key.descriptor_with_checksum(),
        receive_descriptor,
        change_descriptor,
    }
}

/// Derives `count` addresses of `chain` starting at index `from` on the key's
/// network.
pub fn derive_addresses(
    key: &WalletKey,
    chain: Chain,
    from: u32,
    count: u32,
) -> Result<Vec<DerivedAddress>, DeriveError> {
    if count > MAX_ADDRESS_COUNT {
        return Err(DeriveError::Count(count));
    }
    if from > MAX_CHILD_INDEX || count.saturating_sub(1) > MAX_CHILD_INDEX - from {
        return Err(DeriveError::Range { from, count });
    }
    let secp = Secp256k1::verification_only();
    let bip32 = |e: bitcoin::bip32::Error| DeriveError::Bip32(e.to_string());
    let chain_key = key
        .xpub()
        .ckd_pub(
            &secp,
            ChildNumber::from_normal_idx(chain.index()).map_err(bip32)?,
        )
        .map_err(bip32)?;
    let mut out = Vec::with_capacity(count as usize);
    for index in (0..count).map(|k| from + k) {
        let child = chain_key
            .ckd_pub(&secp, ChildNumber::from_normal_idx(index).map_err(bip32)?)
            .map_err(bip32)?;
        out.push(DerivedAddress {
            index,
            path: format!("m/{}/{index}", chain.index()),
            address: key.address_for(child.public_key).to_string(),
            public_key: hex::encode(child.public_key.serialize()),
        });
    }
    Ok(out)
}

/// All descriptors (with checksums) and the first receive address of a key.
pub fn descriptors_and_first_address(
    key: &WalletKey,
) -> Result<(Descriptors, String), DeriveError> {
    let first = derive_addresses(key, Chain::Receive, 0, 1)?
        .pop()
        .map(|a| a.address)
        .ok_or(DeriveError::Count(0))?;
    Ok((descriptors(key), first))
}

/// Why `GET /api/v1/keys/{id}/addresses` cannot answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No usable share of that key on this node.
    #[error("key {0} not found")]
    NotFound(String),
    /// The share exists but is not loaded (custody sealed, or it failed to reload).
    #[error("key {0} is not loaded on this node (custody sealed or reload failed)")]
    NotLoaded(String),
    /// The key has no xpub (not an HD key).
    #[error("key {0} has no extended public key")]
    NoXpub(String),
    /// Derivation refused the request.
    #[error(transparent)]
    Derive(#[from] DeriveError),
    /// Database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Addresses of one key (answer of `GET /api/v1/keys/{id}/addresses`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyAddresses {
    /// Key id.
    pub key_id: String,
    /// `ecdsa` or `taproot`.
    pub key_type: &'static str,
    /// Network of the addresses.
    pub network: String,
    /// Chain.
    pub chain: Chain,
    /// The addresses, by ascending index.
    pub addresses: Vec<DerivedAddress>,
}

/// Derives addresses of this node's key `key_id`.
pub async fn key_addresses(
    node: &DkgCtx,
    key_id: &str,
    chain: Chain,
    from: u32,
    count: u32,
) -> Result<KeyAddresses, AddressError> {
    let rows = node.store.usable_shares(&node.cfg.node_id).await?;
    let row = rows
        .into_iter()
        .find(|r| r.key_id == key_id)
        .ok_or_else(|| AddressError::NotFound(key_id.to_owned()))?;
    let protocol = DkgProtocol::parse(&row.protocol)
        .filter(|p| *p != DkgProtocol::AuxInfo)
        .ok_or_else(|| AddressError::NotFound(key_id.to_owned()))?;
    let loaded = node
        .dkg
        .loaded(key_id)
        .ok_or_else(|| AddressError::NotLoaded(key_id.to_owned()))?;
    let xpub = loaded
        .xpub
        .ok_or_else(|| AddressError::NoXpub(key_id.to_owned()))?;
    let key = wallet_key(key_id, protocol, &xpub, node.cfg.wallet.network)?;
    let addresses = derive_addresses(&key, chain, from, count)?;
    Ok(KeyAddresses {
        key_id: row.key_id,
        key_type: protocol.key_type(),
        network: key.network().to_string(),
        chain,
        addresses,
    })
}

/// The completed keys of this node, newest first.
pub async fn list_keys(node: &DkgCtx) -> Result<Vec<KeyInfo>, crate::store::StoreError> {
    let rows = node.store.usable_shares(&node.cfg.node_id).await?;
    let network = node.cfg.wallet.network;
    let mut out: Vec<KeyInfo> = rows
        .into_iter()
        .filter_map(|r| {
            let protocol = DkgProtocol::parse(&r.protocol)?;
            let loaded = node.dkg.loaded(&r.key_id);
            let derived = match loaded.as_ref().and_then(|l| l.xpub.as_ref()) {
                Some(x) => match wallet_key(&r.key_id, protocol, x, network)
                    .and_then(|k| descriptors_and_first_address(&k))
                {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(key = %r.key_id, error = %e, "cannot derive the descriptor");
                        None
                    }
                },
                None => None,
            };
            let (descriptors, first_address) = derived.unzip();
            let (signing_ready, precomputed_tables) = match protocol {
                DkgProtocol::Cggmp24 => match node.signing_material.lock().get(&r.key_id) {
                    Some(material::Material::Ecdsa(share)) => (true, Some(share.is_precomputed())),
                    Some(material::Material::Frost(_)) | None => (false, Some(false)),
                },
                _ => (loaded.is_some(), None),
            };
            Some(KeyInfo {
                key_id: r.key_id,
                key_type: protocol.key_type(),
                t: r.threshold,
                n: r.participants.len(),
                participants: r.participants,
                public_key: hex::encode(&r.public_key),
                signing_ready,
                precomputed_tables,
                share_loaded: loaded.is_some(),
                network: network.to_string(),
                descriptor: descriptors.as_ref().map(|d| d.descriptor.clone()),
                receive_descriptor: descriptors.as_ref().map(|d| d.receive_descriptor.clone()),
                change_descriptor: descriptors.map(|d| d.change_descriptor),
                first_address,
            })
        })
        .collect();
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip32::Xpub;
    use bitcoin::Address;
    use std::str::FromStr;

    /// BIP-86 test vector: account 0 xpub (m/86'/0'/0').
    const BIP86_XPUB: &str = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";

    fn key(protocol: DkgProtocol, network: Network) -> WalletKey {
        wallet_key("k", protocol, BIP86_XPUB, network).expect("wallet key")
    }

    #[test]
    fn taproot_addresses_follow_the_bip86_test_vector_on_every_network() {
        for network in [Network::Bitcoin, Network::Regtest] {
            let a = derive_addresses(&key(DkgProtocol::Frost, network), Chain::Receive, 0, 1)
                .expect("derives");
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].path, "m/0/0");
            assert_eq!(
                &a[0].public_key[2..],
                "cc8a4bc64d897bddc5fbc2f670f7a8ba0b386779106cf1223c6fc5d7cd6fc115"
            );
            let addr = Address::from_str(&a[0].address)
                .expect("address parses")
                .require_network(network)
                .expect("address of the key's network");
            assert_eq!(
                hex::encode(addr.script_pubkey().as_bytes()),
                "5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
            );
        }
        // BIP-86's own first address (mainnet).
        let a = derive_addresses(
            &key(DkgProtocol::Frost, Network::Bitcoin),
            Chain::Receive,
            0,
            1,
        )
        .expect("derives");
        assert_eq!(
            a[0].address,
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
    }

    #[test]
    fn descriptors_carry_valid_checksums_and_the_network_encoding_of_the_xpub() {
        let fp = Xpub::from_str(BIP86_XPUB).expect("xpub").fingerprint();
        for (network, prefix) in [(Network::Bitcoin, "xpub"), (Network::Regtest, "tpub")] {
            let k = key(DkgProtocol::Cggmp24, network);
            let d = descriptors(&k);
            let x = k.xpub_for_network().to_string();
            assert!(x.starts_with(prefix), "{x}");
            for (text, path) in [
                (&d.descriptor, "<0;1>"),
                (&d.receive_descriptor, "0"),
                (&d.change_descriptor, "1"),
            ] {
                let (body, sum) = text.split_once('#').expect("has a checksum");
                assert_eq!(body, format!("wpkh([{fp}]{x}/{path}/*)"));
                assert_eq!(Some(sum.to_owned()), policy::descriptor::checksum(body));
            }
            assert_eq!(
                d.descriptor.split('#').next(),
                Some(k.descriptor().as_str())
            );
        }
        let t = descriptors(&key(DkgProtocol::Frost, Network::Regtest));
        assert!(t.descriptor.starts_with("tr(["), "{}", t.descriptor);
        assert!(matches!(
            wallet_key("k", DkgProtocol::AuxInfo, BIP86_XPUB, Network::Regtest),
            Err(DeriveError::NotAKey(_))
        ));
    }

    #[test]
    fn listed_descriptor_and_first_address_are_the_wallet_keys_own() {
        for (protocol, kind) in [
            (DkgProtocol::Cggmp24, wallet::KeyKind::Ecdsa),
            (DkgProtocol::Frost, wallet::KeyKind::Taproot),
        ] {
            assert_eq!(protocol.key_kind(), Some(kind));
            let k = key(protocol, Network::Regtest);
            let (desc, first) = descriptors_and_first_address(&k).expect("derivable");
            assert_eq!(
                Some(k.descriptor().as_str()),
                desc.descriptor.split('#').next()
            );
            assert_eq!(k.receive_address(0).expect("index 0").to_string(), first);
        }
    }

    #[test]
    fn change_chain_differs_from_receive_and_indexes_are_consecutive() {
        let k = key(DkgProtocol::Cggmp24, Network::Regtest);
        let r = derive_addresses(&k, Chain::Receive, 5, 3).expect("derives");
        let c = derive_addresses(&k, Chain::Change, 5, 3).expect("derives");
        assert_eq!(r.iter().map(|a| a.index).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(c[0].path, "m/1/5");
        assert!(r[0].address.starts_with("bcrt1q"), "{}", r[0].address);
        assert_ne!(r[0].address, c[0].address);
        assert_eq!(
            r[1].address,
            k.receive_address(6).expect("derives").to_string()
        );
        assert_eq!(
            c[2].address,
            k.change_address(7).expect("derives").to_string()
        );
        let (_, first) = descriptors_and_first_address(&k).expect("ok");
        let zero = derive_addresses(&k, Chain::Receive, 0, 1).expect("derives");
        assert_eq!(first, zero[0].address);
        let main = key(DkgProtocol::Cggmp24, Network::Bitcoin);
        let (_, first_main) = descriptors_and_first_address(&main).expect("ok");
        assert!(first_main.starts_with("bc1q"), "{first_main}");
    }

    #[test]
    fn ranges_past_the_last_normal_index_and_oversized_counts_are_refused() {
        let k = key(DkgProtocol::Frost, Network::Regtest);
        let last =
            derive_addresses(&k, Chain::Change, MAX_CHILD_INDEX, 1).expect("last index derives");
        assert_eq!(last[0].index, MAX_CHILD_INDEX);
        assert!(matches!(
            derive_addresses(&k, Chain::Change, MAX_CHILD_INDEX, 2),
            Err(DeriveError::Range { .. })
        ));
        assert!(matches!(
            derive_addresses(&k, Chain::Change, MAX_CHILD_INDEX + 1, 1),
            Err(DeriveError::Range { .. })
        ));
        assert!(matches!(
            derive_addresses(&k, Chain::Receive, 0, MAX_ADDRESS_COUNT + 1),
            Err(DeriveError::Count(_))
        ));
        assert!(derive_addresses(&k, Chain::Receive, 0, 0)
            .expect("empty range")
            .is_empty());
        assert!(matches!(
            wallet_key("k", DkgProtocol::Frost, "tpubnonsense", Network::Regtest),
            Err(DeriveError::Xpub(_))
        ));
    }
}
