//! The HWI commands, over a [`ClusterApi`]: each cluster key is one device, named
//! by the master fingerprint of its descriptors.

use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use bitcoin::bip32::{ChildNumber, Fingerprint};
use bitcoin::{Network, Psbt};
use miniscript::descriptor::{Descriptor, DescriptorPublicKey, DescriptorType};
use miniscript::ForEachKey as _;
use serde_json::{json, Value};

use super::api::{ClusterApi, ClusterKey};
use super::error::HwiError;

/// States of a transaction that carries its signatures.
const SIGNED_STATES: &[&str] = &["signed", "broadcast", "confirmed"];
/// States in which a transaction ended without signatures.
const UNSIGNED_END_STATES: &[&str] = &["rejected", "failed", "expired", "aborted_byzantine"];

/// `type` of every device in `enumerate`.
pub const DEVICE_TYPE: &str = "signer-cluster";

/// One cluster key seen as a signing device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Master fingerprint of the key's descriptors.
    pub fingerprint: Fingerprint,
    /// The key as the node lists it.
    pub key: ClusterKey,
    /// The cluster's network.
    pub network: Network,
}

impl Device {
    /// `signer-cluster-ecdsa` / `signer-cluster-taproot`.
    pub fn model(&self) -> String {
        format!("{DEVICE_TYPE}-{}", self.key.key_type)
    }

    fn descriptor_type(&self) -> Option<DescriptorType> {
        match self.key.key_type.as_str() {
            "ecdsa" => Some(DescriptorType::Wpkh),
            "taproot" => Some(DescriptorType::Tr),
            _ => None,
        }
    }
}

/// What a command may do besides its arguments.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this key: id, fingerprint, or key type (the newest key of that type).
    pub key: Option<String>,
    /// Longest wait of `signtx` for votes and signing.
    pub timeout: Duration,
    /// Interval between two state queries of `signtx`.
    pub poll_interval: Duration,
}

/// The cluster's completed keys usable as devices (share loaded on the node, so
/// with descriptors), restricted to `filter`.
pub async fn devices(api: &impl ClusterApi, filter: Option<&str>) -> Result<Vec<Device>, HwiError> {
    let mut out = Vec::new();
    for key in api.keys().await? {
        let Some(receive) = key.receive_descriptor.as_deref() else {
            continue;
        };
        let fingerprint = descriptor_fingerprint(receive)?;
        let network = Network::from_str(&key.network).map_err(|_| {
            HwiError::BadAnswer(format!(
                "key {} has unknown network {:?}",
                key.key_id, key.network
            ))
        })?;
        out.push(Device {
            fingerprint,
            key,
            network,
        });
    }
    let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(out);
    };
    let selected: Vec<Device> = if filter == "ecdsa" || filter == "taproot" {
        // Newest first: the first one of that type.
        out.into_iter()
            .find(|d| d.key.key_type == filter)
            .into_iter()
            .collect()
    } else {
        out.into_iter()
            .filter(|d| {
                d.key.key_id == filter || d.fingerprint.to_string() == filter.to_ascii_lowercase()
            })
            .collect()
    };
    if selected.is_empty() {
        return Err(HwiError::Config(format!(
            "key {filter:?} (--key or `key`) is no completed key of the signer cluster; \
             use a key id, a fingerprint, ecdsa or taproot"
        )));
    }
    Ok(selected)
}

/// Every key of `d`.
fn descriptor_keys(d: &Descriptor<DescriptorPublicKey>) -> Vec<DescriptorPublicKey> {
    let mut keys = Vec::new();
    d.for_each_key(|k| {
        keys.push(k.clone());
        true
    });
    keys
}

/// The master fingerprint of a single-key descriptor (its key origin).
fn descriptor_fingerprint(text: &str) -> Result<Fingerprint, HwiError> {
    let d = Descriptor::<DescriptorPublicKey>::from_str(text)
        .map_err(|e| HwiError::BadAnswer(format!("descriptor {text}: {e}")))?;
    let keys = descriptor_keys(&d);
    match keys.as_slice() {
        [k] => Ok(k.master_fingerprint()),
        _ => Err(HwiError::BadAnswer(format!(
            "descriptor {text} is not a single-key descriptor"
        ))),
    }
}

/// `enumerate`: one entry per key, in HWI's form.
pub async fn enumerate(api: &impl ClusterApi, opts: &Options) -> Result<Value, HwiError> {
    let list: Vec<Value> = devices(api, opts.key.as_deref())
        .await?
        .iter()
        .map(|d| {
            json!({
                "type": DEVICE_TYPE,
                "model": d.model(),
                "label": d.key.key_id,
                "path": api.label(),
                "fingerprint": d.fingerprint.to_string(),
                "needs_pin_sent": false,
                "needs_passphrase_sent": false,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

/// The device of `--fingerprint`, checked against `--chain` (default `main`, as
/// in HWI).
pub async fn device(
    api: &impl ClusterApi,
    opts: &Options,
    fingerprint: Option<&str>,
    chain: Option<&str>,
) -> Result<Device, HwiError> {
    let fp = fingerprint
        .ok_or_else(|| HwiError::Usage("--fingerprint is required for this command".to_owned()))?
        .trim()
        .to_ascii_lowercase();
    if fp.len() != 8 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HwiError::BadArgument(format!(
            "--fingerprint must be 8 hex digits, not {:?}",
            fp.chars().take(32).collect::<String>()
        )));
    }
    let mut found: Vec<Device> = devices(api, opts.key.as_deref())
        .await?
        .into_iter()
        .filter(|d| d.fingerprint.to_string() == fp)
        .collect();
    let dev = match found.len() {
        0 => return Err(HwiError::UnknownFingerprint(fp)),
        1 => found.remove(0),
        _ => {
            return Err(HwiError::BadArgument(format!(
                "several cluster keys have fingerprint {fp}; choose one with --key KEY_ID"
            )))
        }
    };
    let given = chain.unwrap_or("main");
    let network = Network::from_core_arg(given).map_err(|_| {
        HwiError::BadArgument(format!(
            "unknown chain {:?}; use main, test, testnet4, signet or regtest",
            given.chars().take(32).collect::<String>()
        ))
    })?;
    if network != dev.network {
        return Err(HwiError::WrongChain {
            given: given.to_owned(),
            cluster: dev.network.to_core_arg().to_owned(),
        });
    }
    Ok(dev)
}

/// `getdescriptors --account N`: the key's receive and change descriptors (with
/// checksums and the `[fingerprint]` key origin Core needs to fill PSBTs).
pub fn getdescriptors(dev: &Device, account: u32) -> Result<Value, HwiError> {
    if account != 0 {
        return Err(HwiError::BadArgument(format!(
            "account {account}: a cluster key has a single account, 0"
        )));
    }
    let missing = || {
        HwiError::BadAnswer(format!(
            "key {} is listed without descriptors",
            dev.key.key_id
        ))
    };
    let receive = dev.key.receive_descriptor.clone().ok_or_else(missing)?;
    let change = dev.key.change_descriptor.clone().ok_or_else(missing)?;
    Ok(json!({ "receive": [receive], "internal": [change] }))
}

/// `displayaddress --desc DESC`: DESC must be one address of this key (the key
/// origin `[fingerprint/chain/index]` Core's wallet infers, or the key's xpub at a
/// fixed index), and its address must be the cluster's own derivation at that
/// path; the answer echoes the cluster's address.
pub async fn displayaddress(
    api: &impl ClusterApi,
    dev: &Device,
    desc: &str,
) -> Result<Value, HwiError> {
    let short: String = desc.chars().take(200).collect();
    let d = Descriptor::<DescriptorPublicKey>::from_str(desc.trim())
        .map_err(|e| HwiError::BadArgument(format!("descriptor {short} does not parse: {e}")))?;
    if d.is_multipath() || d.has_wildcard() {
        return Err(HwiError::BadArgument(format!(
            "descriptor {short} has a range; give the descriptor of one address"
        )));
    }
    let key_id = &dev.key.key_id;
    let kind_ok = match (&d, dev.descriptor_type()) {
        (Descriptor::Tr(t), Some(DescriptorType::Tr)) => t.tap_tree().is_none(),
        (_, Some(want)) => d.desc_type() == want,
        (_, None) => false,
    };
    if !kind_ok {
        return Err(HwiError::AddressMismatch(format!(
            "descriptor {short} is not an address type of the {} key {key_id}",
            dev.key.key_type
        )));
    }
    let keys = descriptor_keys(&d);
    let [k] = keys.as_slice() else {
        return Err(HwiError::AddressMismatch(format!(
            "descriptor {short} is not a single-key descriptor"
        )));
    };
    if k.master_fingerprint() != dev.fingerprint {
        return Err(HwiError::AddressMismatch(format!(
            "descriptor {short} is for key [{}], not for this signer's key [{}] ({key_id})",
            k.master_fingerprint(),
            dev.fingerprint
        )));
    }
    let path: Vec<ChildNumber> = k.full_derivation_path().map(Into::into).unwrap_or_default();
    let (chain, index) = match path.as_slice() {
        &[ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] if chain <= 1 => {
            (chain, index)
        }
        _ => {
            return Err(HwiError::AddressMismatch(format!(
                "descriptor {short}: the key's addresses are at m/0/i (receive) and m/1/i \
                 (change) below [{}]",
                dev.fingerprint
            )))
        }
    };
    let ours = d
        .at_derivation_index(0)
        .map_err(|e| HwiError::BadArgument(format!("descriptor {short}: {e}")))?
        .address(dev.network)
        .map_err(|e| HwiError::BadArgument(format!("descriptor {short}: {e}")))?
        .to_string();
    let cluster = api.address(key_id, chain, index).await?;
    if cluster.address != ours {
        return Err(HwiError::AddressMismatch(format!(
            "address {ours} of the descriptor is not the signer cluster's address {} of key \
             {key_id} at m/{chain}/{index}",
            cluster.address
        )));
    }
    Ok(json!({ "address": cluster.address }))
}

/// True if `input` carries the key origin `fp` (BIP-32 or Taproot derivation).
fn carries_origin(input: &bitcoin::psbt::Input, fp: Fingerprint) -> bool {
    input.bip32_derivation.values().any(|(f, _)| *f == fp)
        || input.tap_key_origins.values().any(|(_, (f, _))| *f == fp)
}

/// `signtx PSBT`: submits the PSBT to the cluster (which checks it, evaluates its
/// policy on every node, votes and threshold-signs), waits up to `opts.timeout`,
/// and answers `{"psbt": ...}`: the submitted PSBT with the cluster's signatures
/// added (Core finalizes it).
pub async fn signtx(
    api: &impl ClusterApi,
    dev: &Device,
    psbt_base64: &str,
    opts: &Options,
) -> Result<Value, HwiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64
        .decode(psbt_base64.trim())
        .map_err(|e| HwiError::InvalidTx(format!("the PSBT is not base64: {e}")))?;
    let psbt = Psbt::deserialize(&raw)
        .map_err(|e| HwiError::InvalidTx(format!("the PSBT does not parse: {e}")))?;
    let fp = dev.fingerprint;
    if !psbt.inputs.iter().any(|i| carries_origin(i, fp)) {
        return Err(HwiError::InvalidTx(format!(
            "no input of the PSBT carries the key origin [{fp}] of key {}; nothing was \
             submitted",
            dev.key.key_id
        )));
    }
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let secs = opts.timeout.as_secs();
    let submitted =
        match tokio::time::timeout_at(deadline, api.submit_psbt(&b64.encode(&raw))).await {
            Ok(r) => r.map_err(explain_refusal)?,
            Err(_) => {
                return Err(HwiError::Unreachable(format!(
                    "{} did not answer the submission within {secs} s",
                    api.label()
                )))
            }
        };
    let id = submitted.id.clone();
    let mut last = submitted;
    let signed = loop {
        if SIGNED_STATES.contains(&last.state.as_str()) {
            break last;
        }
        if UNSIGNED_END_STATES.contains(&last.state.as_str()) {
            return Err(HwiError::NotSigned {
                id,
                state: last.state,
                reason: last.failure_reason,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HwiError::Timeout {
                id,
                state: last.state,
                secs,
            });
        }
        tokio::time::sleep(opts.poll_interval).await;
        match tokio::time::timeout_at(deadline, api.transaction(&id)).await {
            Ok(Ok(t)) => last = t,
            // A node briefly unreachable: keep asking until the deadline.
            Ok(Err(HwiError::Unreachable(m))) => {
                eprintln!("signer-hwi: transaction {id}: {m}; retrying");
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
    };
    let signed_b64 = signed.signed_psbt.ok_or_else(|| {
        HwiError::BadAnswer(format!(
            "transaction {id} is {} without a signed PSBT",
            signed.state
        ))
    })?;
    let cluster_psbt = b64
        .decode(signed_b64.trim())
        .ok()
        .and_then(|b| Psbt::deserialize(&b).ok())
        .ok_or_else(|| {
            HwiError::BadAnswer(format!(
                "the signed PSBT of transaction {id} does not parse"
            ))
        })?;
    let mut merged = psbt;
    merged.combine(cluster_psbt).map_err(|e| {
        HwiError::BadAnswer(format!(
            "the signed PSBT of transaction {id} is not the submitted transaction: {e}"
        ))
    })?;
    for (i, input) in merged.inputs.iter().enumerate() {
        let signed = !input.partial_sigs.is_empty()
            || input.tap_key_sig.is_some()
            || input.final_script_witness.is_some();
        if carries_origin(input, fp) && !signed {
            return Err(HwiError::BadAnswer(format!(
                "input {i} of transaction {id} carries no signature of the cluster"
            )));
        }
    }
    Ok(json!({ "psbt": b64.encode(merged.serialize()), "signed": true }))
}

/// Adds what to do to the refusals an operator can fix.
fn explain_refusal(e: HwiError) -> HwiError {
    match e {
        HwiError::Refused {
            status,
            code,
            message,
        } => {
            let hint = match code.as_str() {
                "unproven_input_amount" | "input_not_ours" => {
                    " (the nodes must know the spent outputs: run them with the Bitcoin Core \
                     backend, or import the funding transactions with `signer utxos import`)"
                }
                "forbidden" => " (signer-hwi needs a token of role operator)",
                _ => "",
            };
            HwiError::Refused {
                status,
                code,
                message: format!("{message}{hint}"),
            }
        }
        other => other,
    }
}
