//! TPM 2.0 backend (tss-esapi 7; swtpm in tests).
//!
//! Key hierarchy:
//! - The **storage key** (the KEK of this backend) is an ECC P-256 restricted
//!   decryption key generated inside the TPM as a child of the owner hierarchy's
//!   standard storage primary, then made persistent with `TPM2_EvictControl` at a
//!   configured handle (default `0x81010020`). Its private part exists only inside
//!   the TPM (`fixedTPM`, `fixedParent`, `sensitiveDataOrigin`); evicting the
//!   handle destroys it. It may carry an auth value (read from a file or systemd
//!   credential), which then acts as the PIN.
//! - A data key is **sealed** as a keyed-hash data object under the storage key.
//!   The object's auth value is `SHA-256("custody/tpm-seal/v1" || aad)` and it has
//!   `noDA`, so the TPM itself refuses to unseal with other associated data, without
//!   counting such attempts towards dictionary-attack lockout.
//! - The storage key can be **pinned by name** ([`TpmConfig::key_name`], the TPM name
//!   `000b ‖ SHA-256(TPMT_PUBLIC)` printed by `init`/`check`): at open its public area
//!   is read back (ReadPublic), hashed here and compared with the name the TPM
//!   reports, the name ESYS salts the session with and the pinned one; any
//!   difference refuses custody ([`HsmError::TpmKeyNameMismatch`]) before anything is
//!   sealed or unsealed. Since every command runs in a session salted with that key,
//!   a TPM (or a man in the middle on the TCTI) without its private part cannot
//!   answer.
//! - With a **PCR policy** ([`TpmConfig::pcrs`], SHA-256 bank) sealed objects get
//!   `authPolicy = PolicyPCR(current values) ; PolicyAuthValue` and no
//!   `userWithAuth`: they unseal only through a policy session in which the PCRs still
//!   hold the values they had at seal time *and* the AAD-derived auth value is
//!   proven. Changed PCRs give [`HsmError::TpmPcrPolicy`]. The PCR list is part of the
//!   KEK id (`…:pcr=16,23`), so envelopes sealed under another list are refused as
//!   [`HsmError::KekMismatch`] and can be moved with [`crate::envelope::rewrap`].
//!
//! All commands run in one salted HMAC session (salted with the storage key) with
//! parameter encryption, so the data key never crosses the TCTI in clear.
//!
//! ```text
//! wrapped = u16 BE len || TPM2B_PUBLIC (marshalled) || u16 BE len || TPM2B_PRIVATE bytes
//! ```

use std::convert::TryFrom;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use secrecy::ExposeSecret;
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, EccPoint, KeyedHashScheme, PcrSelectSize, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use crate::error::HsmError;
use crate::pin::PinSource;
use crate::wrapper::{
    check_kek, BackendKind, DataKey, KeyWrapper, WrappedKey, DATA_KEY_LEN, MAX_WRAPPED_LEN,
};

/// Default persistent handle of the storage key (owner range 0x81000000..0x817FFFFF).
pub const DEFAULT_PERSISTENT_HANDLE: u32 = 0x8101_0020;

const SEAL_AUTH_DOMAIN: &[u8] = b"custody/tpm-seal/v1";

/// `TPM_ALG_SHA256`, the name algorithm of every object this backend creates.
const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_CC_PolicyPCR`.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_CC_PolicyAuthValue`.
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;
/// Highest PCR index of a PC-client TPM (PCR 0..=23).
pub const MAX_PCR_INDEX: u8 = 23;

/// Configuration of the TPM backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI string, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Persistent handle of the storage key.
    pub persistent_handle: u32,
    /// Auth value of the storage key (set at `init`, required afterwards). `None`
    /// means an empty auth value: anyone who can talk to this TPM can then unseal a
    /// stolen blob, so set one in production.
    pub key_auth: Option<PinSource>,
    /// Owner hierarchy auth, needed to create and destroy persistent keys (usually
    /// empty on a fresh TPM).
    pub owner_auth: Option<PinSource>,
    /// Expected TPM name of the storage key, hex (`000b` followed by the SHA-256 of
    /// its public area, 68 hex digits), as printed by `init` and `check`. When set,
    /// `open` refuses custody with [`HsmError::TpmKeyNameMismatch`] if the key at the
    /// handle has another name, and `init` does not create a key. `None`: not
    /// pinned; `open` logs a warning with the name to pin.
    pub key_name: Option<String>,
    /// PCR indices (SHA-256 bank, 0..=23) whose current values sealed objects are
    /// bound to with a PolicyPCR policy; empty: no PCR policy.
    pub pcrs: Vec<u8>,
}

impl TpmConfig {
    /// A configuration with the default handle, no auth values, no pinned name and
    /// no PCR policy.
    pub fn new(tcti: impl Into<String>) -> Self {
        TpmConfig {
            tcti: tcti.into(),
            persistent_handle: DEFAULT_PERSISTENT_HANDLE,
            key_auth: None,
            owner_auth: None,
            key_name: None,
            pcrs: Vec::new(),
        }
    }

    /// Checks the values that need no TPM: handle range, the pinned name's format and
    /// the PCR list.
    pub fn validate(&self) -> Result<(), HsmError> {
        self.persistent()?;
        if let Some(name) = &self.key_name {
            parse_key_name(name)?;
        }
        pcr_list(&self.pcrs)?;
        Ok(())
    }

    fn persistent(&self) -> Result<PersistentTpmHandle, HsmError> {
        if !(0x8100_0000..=0x817F_FFFF).contains(&self.persistent_handle) {
            return Err(HsmError::Config(format!(
                "tpm persistent handle {:#010x} is outside the owner range 0x81000000..0x817fffff",
                self.persistent_handle
            )));
        }
        PersistentTpmHandle::new(self.persistent_handle).map_err(|e| {
            HsmError::Config(format!(
                "tpm persistent handle {:#010x}: {e}",
                self.persistent_handle
            ))
        })
    }
}

pub(crate) fn load_auth(src: &Option<PinSource>) -> Result<Option<Auth>, HsmError> {
    let Some(src) = src else { return Ok(None) };
    let secret = src.load()?;
    let bytes = secret.expose_secret().as_bytes();
    // Auth values are at most the name-algorithm digest size (32 bytes for SHA-256);
    // longer passphrases are hashed.
    let v: Zeroizing<Vec<u8>> = if bytes.len() <= 32 {
        Zeroizing::new(bytes.to_vec())
    } else {
        Zeroizing::new(Sha256::digest(bytes).to_vec())
    };
    Auth::try_from(v.to_vec())
        .map(Some)
        .map_err(|e| HsmError::PinSource {
            source_desc: src.to_string(),
            reason: format!("invalid tpm auth value: {e}"),
        })
}

/// Parses a pinned storage-key name: hex (an optional `0x` prefix, any case) of a
/// SHA-256 TPM name, i.e. 34 bytes starting with the algorithm id `000b`.
pub fn parse_key_name(name: &str) -> Result<Vec<u8>, HsmError> {
    let t = name.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let bytes = hex::decode(t)
        .map_err(|e| HsmError::Config(format!("tpm key_name {name:?} is not hex: {e}")))?;
    if bytes.len() != 34 || bytes[..2] != TPM_ALG_SHA256.to_be_bytes() {
        return Err(HsmError::Config(format!(
            "tpm key_name {name:?} is not a sha256 tpm name (68 hex digits starting with 000b, \
             as printed by `signer hsm init` / `check`)"
        )));
    }
    Ok(bytes)
}

/// The configured PCR list, sorted; refuses indices above 23 and duplicates.
fn pcr_list(pcrs: &[u8]) -> Result<Vec<u8>, HsmError> {
    let mut v = pcrs.to_vec();
    v.sort_unstable();
    if let Some(bad) = v.iter().find(|&&p| p > MAX_PCR_INDEX) {
        return Err(HsmError::Config(format!(
            "tpm pcr {bad} is out of range 0..={MAX_PCR_INDEX}"
        )));
    }
    if v.windows(2).any(|w| w[0] == w[1]) {
        return Err(HsmError::Config(format!(
            "tpm pcrs {pcrs:?} list a pcr twice"
        )));
    }
    Ok(v)
}

/// A SHA-256 bank selection of `pcrs` (sorted, valid), three select octets
/// (PCR 0..=23), as [`pcr_selection_bytes`] marshals it.
fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, HsmError> {
    let slots = pcrs
        .iter()
        .map(|&i| PcrSlot::try_from(1u32 << i).map_err(tpm_err("pcr slot")))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_err("pcr selection"))
}

/// Marshalled `TPML_PCR_SELECTION` of [`pcr_selection`]: count 1, `TPM_ALG_SHA256`,
/// sizeofSelect 3, the bitmap.
fn pcr_selection_bytes(pcrs: &[u8]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &i in pcrs {
        bitmap[usize::from(i / 8)] |= 1 << (i % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    out
}

/// The sealed objects' policy digest over `pcr_values` (the values of `pcrs`, in
/// ascending index order):
/// `H(H(0³² ‖ CC_PolicyPCR ‖ selection ‖ H(values)) ‖ CC_PolicyAuthValue)`, the
/// digest a policy session reaches with `PolicyPCR(pcrs)` then `PolicyAuthValue`.
fn pcr_policy_digest(pcrs: &[u8], pcr_values: &[Vec<u8>]) -> [u8; 32] {
    let mut values = Sha256::new();
    for v in pcr_values {
        values.update(v);
    }
    let pcr_digest = values.finalize();
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    h.update(pcr_selection_bytes(pcrs));
    h.update(pcr_digest);
    let after_pcr = h.finalize();
    let mut h = Sha256::new();
    h.update(after_pcr);
    h.update(TPM_CC_POLICY_AUTH_VALUE.to_be_bytes());
    h.finalize().into()
}

/// Current SHA-256 values of `pcrs` (sorted), in that order. PCR_Read returns at most
/// eight values per call; a TPM without an allocated SHA-256 bank returns none, which
/// is an error here rather than an endless loop.
fn read_pcrs(ctx: &mut Context, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, HsmError> {
    let mut values: Vec<Option<Vec<u8>>> = vec![None; pcrs.len()];
    for _ in 0..=pcrs.len() {
        let missing: Vec<u8> = pcrs
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(&p, _)| p)
            .collect();
        if missing.is_empty() {
            break;
        }
        let selection = pcr_selection(&missing)?;
        let (_, read, digests) = ctx
            .execute_without_session(|ctx| ctx.pcr_read(selection))
            .map_err(tpm_err("PCR_Read"))?;
        let read_slots: Vec<PcrSlot> = read
            .get_selections()
            .iter()
            .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
            .flat_map(|s| s.selected())
            .collect();
        if read_slots.is_empty() || read_slots.len() != digests.value().len() {
            return Err(HsmError::Tpm {
                op: "PCR_Read",
                reason: format!(
                    "the tpm returned no sha256 values for pcrs {missing:?} (is the sha256 bank allocated?)"
                ),
            });
        }
        // Values come in ascending PCR order of the returned selection.
        let mut read_idx: Vec<u8> = read_slots
            .iter()
            .map(|s| u32::from(*s).trailing_zeros() as u8)
            .collect();
        read_idx.sort_unstable();
        for (idx, d) in read_idx.iter().zip(digests.value()) {
            if let Some(pos) = pcrs.iter().position(|p| p == idx) {
                values[pos] = Some(d.value().to_vec());
            }
        }
    }
    values
        .into_iter()
        .zip(pcrs)
        .map(|(v, p)| {
            v.ok_or_else(|| HsmError::Tpm {
                op: "PCR_Read",
                reason: format!("pcr {p} was not returned"),
            })
        })
        .collect()
}

pub(crate) fn tpm_err(op: &'static str) -> impl Fn(tss_esapi::Error) -> HsmError {
    move |e| HsmError::Tpm {
        op,
        reason: e.to_string(),
    }
}

pub(crate) fn rc_kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

pub(crate) fn is_auth_failure(e: &tss_esapi::Error) -> bool {
    matches!(
        rc_kind(e),
        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
    )
}

/// An ECC P-256 restricted decryption (storage) key with AES-128-CFB for its children.
/// Used both for the owner hierarchy's primary (deterministic from the owner seed) and
/// for the persistent custody storage key (random, created under that primary).
fn storage_key_template() -> Result<Public, HsmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .build()
        .map_err(tpm_err("object attributes"))?;
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .map_err(tpm_err("ecc parameters"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(tpm_err("public template"))
}

/// A sealed data object. Without a policy its auth value is used directly
/// (`userWithAuth`); with one (`PolicyPCR ; PolicyAuthValue`) only a policy session
/// that satisfies it can unseal, and the auth value is still required inside it.
fn sealed_template(policy: Option<[u8; 32]>) -> Result<Public, HsmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(true)
        .build()
        .map_err(tpm_err("object attributes"))?;
    let mut b = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Default::default());
    if let Some(p) = policy {
        b = b.with_auth_policy(Digest::try_from(p.to_vec()).map_err(tpm_err("auth policy"))?);
    }
    b.build().map_err(tpm_err("public template"))
}

fn seal_auth(aad: &[u8]) -> Result<Auth, HsmError> {
    let mut h = Sha256::new();
    h.update(SEAL_AUTH_DOMAIN);
    h.update((aad.len() as u64).to_be_bytes());
    h.update(aad);
    Auth::try_from(h.finalize().to_vec()).map_err(tpm_err("seal auth"))
}

pub(crate) fn connect(tcti: &str) -> Result<Context, HsmError> {
    let conf = TctiNameConf::from_str(tcti)
        .map_err(|e| HsmError::Config(format!("invalid tcti {tcti:?}: {e}")))?;
    Context::new(conf).map_err(|e| HsmError::TpmUnreachable {
        tcti: tcti.to_string(),
        reason: e.to_string(),
    })
}

/// Starts an auth session of `kind` (AES-128-CFB parameter encryption, SHA-256),
/// salted with `salt_key` when given.
pub(crate) fn start_session(
    ctx: &mut Context,
    salt_key: Option<KeyHandle>,
    kind: SessionType,
) -> Result<AuthSession, HsmError> {
    ctx.start_auth_session(
        salt_key,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )
    .map_err(tpm_err("StartAuthSession"))?
    .ok_or(HsmError::Tpm {
        op: "StartAuthSession",
        reason: "no session returned".into(),
    })
}

struct Inner {
    ctx: Context,
    key: KeyHandle,
    key_auth: Option<Auth>,
    session: Option<AuthSession>,
    /// PCR policy indices (sorted); empty: none.
    pcrs: Vec<u8>,
}

impl Inner {
    /// The salted, encrypting HMAC session, started on first use and after errors.
    fn session(&mut self) -> Result<AuthSession, HsmError> {
        if let Some(s) = self.session {
            return Ok(s);
        }
        let s = start_session(&mut self.ctx, Some(self.key), SessionType::Hmac)?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .with_continue_session(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(s, attrs, mask)
            .map_err(tpm_err("TRSess_SetAttributes"))?;
        self.session = Some(s);
        Ok(s)
    }

    /// Drops the session after a failed command so the next call starts clean.
    fn reset_session(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = self
                .ctx
                .flush_context(tss_esapi::handles::SessionHandle::from(s).into());
        }
        self.ctx.clear_sessions();
    }

    fn with_session<T>(
        &mut self,
        f: impl FnOnce(&mut Context) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let s = self.session()?;
        self.ctx.set_sessions((Some(s), None, None));
        let res = f(&mut self.ctx);
        self.ctx.clear_sessions();
        if res.is_err() {
            self.reset_session();
        }
        res
    }

    /// A policy session salted with the storage key, encrypting its responses (the
    /// unsealed data key), on which `PolicyPCR(pcrs)` and `PolicyAuthValue` ran.
    fn pcr_policy_session(&mut self) -> Result<PolicySession, HsmError> {
        let key = self.key;
        let s = self
            .ctx
            .execute_without_session(|ctx| start_session(ctx, Some(key), SessionType::Policy))?;
        let flush = |ctx: &mut Context| {
            let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(s).into());
        };
        let policy = PolicySession::try_from(s).map_err(tpm_err("policy session"));
        let selection = pcr_selection(&self.pcrs);
        let res = policy.and_then(|ps| {
            let selection = selection?;
            let (attrs, mask) = SessionAttributesBuilder::new()
                .with_encrypt(true)
                .with_continue_session(true)
                .build();
            self.ctx
                .tr_sess_set_attributes(s, attrs, mask)
                .map_err(tpm_err("TRSess_SetAttributes"))?;
            // An empty digest: the TPM takes the PCRs' current values.
            self.ctx
                .execute_without_session(|ctx| ctx.policy_pcr(ps, Digest::default(), selection))
                .map_err(tpm_err("PolicyPCR"))?;
            self.ctx
                .execute_without_session(|ctx| ctx.policy_auth_value(ps))
                .map_err(tpm_err("PolicyAuthValue"))?;
            Ok(ps)
        });
        if res.is_err() {
            flush(&mut self.ctx);
        }
        res
    }

    /// The policy digest sealed objects get now: over the PCRs' current values.
    fn current_pcr_policy(&mut self) -> Result<Option<[u8; 32]>, HsmError> {
        if self.pcrs.is_empty() {
            return Ok(None);
        }
        let pcrs = self.pcrs.clone();
        let values = read_pcrs(&mut self.ctx, &pcrs)?;
        Ok(Some(pcr_policy_digest(&pcrs, &values)))
    }

    fn seal(&mut self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        let policy = self.current_pcr_policy()?;
        let public = sealed_template(policy)?;
        let auth = seal_auth(aad)?;
        let data = SensitiveData::try_from(dek.expose_secret().to_vec())
            .map_err(tpm_err("sensitive data"))?;
        let key = self.key;
        let key_auth = self.key_auth.clone().unwrap_or_default();
        let created = self.with_session(|ctx| {
            ctx.tr_set_auth(key.into(), key_auth)
                .map_err(tpm_err("TR_SetAuth"))?;
            ctx.create(key, public, Some(auth), Some(data), None, None)
                .map_err(|e| {
                    if is_auth_failure(&e) {
                        HsmError::TpmAuthFailed { handle: None }
                    } else {
                        tpm_err("Create")(e)
                    }
                })
        })?;
        let public = created
            .out_public
            .marshall()
            .map_err(tpm_err("marshal public"))?;
        let private = created.out_private.value();
        let mut out = Vec::with_capacity(4 + public.len() + private.len());
        for part in [public.as_slice(), private] {
            let len = u16::try_from(part.len()).map_err(|_| HsmError::Tpm {
                op: "Create",
                reason: "sealed object part longer than 65535 bytes".into(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    fn unseal(&mut self, blob: &[u8], aad: &[u8]) -> Result<DataKey, HsmError> {
        let (public, private) = parse_sealed(blob)?;
        if !self.pcrs.is_empty() {
            return self.unseal_with_pcr_policy(public, private, aad);
        }
        let auth = seal_auth(aad)?;
        let key = self.key;
        let key_auth = self.key_auth.clone().unwrap_or_default();
        let data = self.with_session(|ctx| {
            ctx.tr_set_auth(key.into(), key_auth)
                .map_err(tpm_err("TR_SetAuth"))?;
            let loaded = ctx
                .load(key, private, public)
                .map_err(|e| match rc_kind(&e) {
                    Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                        HsmError::TpmAuthFailed { handle: None }
                    }
                    // Any structural or integrity failure of the blob: it was modified,
                    // or it was sealed under another storage key.
                    Some(_) => HsmError::Authentication {
                        what: "wrapped data key",
                    },
                    None => tpm_err("Load")(e),
                })?;
            let res = ctx
                .tr_set_auth(loaded.into(), auth)
                .map_err(tpm_err("TR_SetAuth"))
                .and_then(|()| {
                    ctx.unseal(loaded.into()).map_err(|e| {
                        if is_auth_failure(&e) {
                            HsmError::Authentication {
                                what: "wrapped data key",
                            }
                        } else {
                            tpm_err("Unseal")(e)
                        }
                    })
                });
            let flushed = ctx
                .flush_context(loaded.into())
                .map_err(tpm_err("FlushContext"));
            let data = res?;
            flushed?;
            Ok(data)
        })?;
        DataKey::from_slice(data.value())
    }

    /// Loads the sealed object (HMAC session) and unseals it through a policy
    /// session: PolicyPCR over the configured PCRs' current values, then
    /// PolicyAuthValue with the AAD-derived auth value.
    fn unseal_with_pcr_policy(
        &mut self,
        public: Public,
        private: Private,
        aad: &[u8],
    ) -> Result<DataKey, HsmError> {
        let auth = seal_auth(aad)?;
        let key = self.key;
        let key_auth = self.key_auth.clone().unwrap_or_default();
        let loaded = self.with_session(|ctx| {
            ctx.tr_set_auth(key.into(), key_auth)
                .map_err(tpm_err("TR_SetAuth"))?;
            ctx.load(key, private, public)
                .map_err(|e| match rc_kind(&e) {
                    Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                        HsmError::TpmAuthFailed { handle: None }
                    }
                    Some(_) => HsmError::Authentication {
                        what: "wrapped data key",
                    },
                    None => tpm_err("Load")(e),
                })
        })?;
        let pcrs = self.pcrs.clone();
        let res = self.pcr_policy_session().and_then(|ps| {
            let session = AuthSession::from(ps);
            let res = self
                .ctx
                .tr_set_auth(loaded.into(), auth)
                .map_err(tpm_err("TR_SetAuth"))
                .and_then(|()| {
                    self.ctx
                        .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()))
                        .map_err(|e| match rc_kind(&e) {
                            // The session's digest is not the object's policy: the PCRs
                            // changed since sealing (or changed during this call).
                            Some(
                                Tss2ResponseCodeKind::PolicyFail | Tss2ResponseCodeKind::PcrChanged,
                            ) => HsmError::TpmPcrPolicy { pcrs: pcrs.clone() },
                            Some(
                                Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth,
                            ) => HsmError::Authentication {
                                what: "wrapped data key",
                            },
                            _ => tpm_err("Unseal")(e),
                        })
                });
            let _ = self
                .ctx
                .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
            res
        });
        self.ctx.clear_sessions();
        let flushed = self
            .ctx
            .flush_context(loaded.into())
            .map_err(tpm_err("FlushContext"));
        let data = res?;
        flushed?;
        DataKey::from_slice(data.value())
    }
}

fn parse_sealed(blob: &[u8]) -> Result<(Public, Private), HsmError> {
    let malformed = |reason: &str| HsmError::Malformed {
        reason: format!("tpm sealed object: {reason}"),
    };
    if blob.len() > MAX_WRAPPED_LEN {
        return Err(malformed("too long"));
    }
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, HsmError> {
        if rest.len() < 2 {
            return Err(malformed("truncated length"));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 2 + len {
            return Err(malformed("truncated field"));
        }
        let v = rest[2..2 + len].to_vec();
        *rest = &rest[2 + len..];
        Ok(v)
    };
    let mut rest = blob;
    let public = take(&mut rest)?;
    let private = take(&mut rest)?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes"));
    }
    // A blob that no longer parses was modified: report it as an authentication failure
    // like any other tampering the TPM detects.
    let public = Public::unmarshall(&public).map_err(|_| HsmError::Authentication {
        what: "wrapped data key",
    })?;
    let private = Private::try_from(private).map_err(|_| HsmError::Authentication {
        what: "wrapped data key",
    })?;
    Ok((public, private))
}

/// A data-key wrapper backed by a persistent storage key in a TPM 2.0.
pub struct TpmWrapper {
    inner: Mutex<Inner>,
    tcti: String,
    handle: u32,
    kek_id: String,
    /// TPM name of the storage key (hex), verified at open.
    name: String,
    /// PCR policy indices (sorted); empty: none.
    pcrs: Vec<u8>,
}

impl fmt::Debug for TpmWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmWrapper")
            .field("tcti", &self.tcti)
            .field("handle", &format_args!("{:#010x}", self.handle))
            .field("kek_id", &self.kek_id)
            .field("name", &self.name)
            .field("pcrs", &self.pcrs)
            .finish_non_exhaustive()
    }
}

/// Public properties of the persistent storage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageKeyInfo {
    /// Persistent handle.
    pub handle: u32,
    /// TPM name (hash of the public area), hex.
    pub name: String,
    /// `fixedTPM`: cannot be duplicated out of this TPM.
    pub fixed_tpm: bool,
    /// `fixedParent`.
    pub fixed_parent: bool,
    /// `sensitiveDataOrigin`: generated inside the TPM.
    pub sensitive_data_origin: bool,
    /// `restricted` + `decrypt`: a storage key.
    pub restricted_decrypt: bool,
}

impl TpmWrapper {
    /// Connects to the TPM and loads the persistent storage key; with `create_key`, a
    /// missing key is generated and persisted (operator `init`).
    ///
    /// Runs a seal/unseal self-test, so a wrong storage-key auth value fails here
    /// ([`HsmError::TpmAuthFailed`]) rather than at the first record.
    pub fn open(config: &TpmConfig, create_key: bool) -> Result<Self, HsmError> {
        Self::open_inner(config, create_key).map(|(w, _)| w)
    }

    pub(crate) fn open_inner(
        config: &TpmConfig,
        create_key: bool,
    ) -> Result<(Self, bool), HsmError> {
        config.validate()?;
        let persistent = config.persistent()?;
        let pinned = config.key_name.as_deref().map(parse_key_name).transpose()?;
        let pcrs = pcr_list(&config.pcrs)?;
        let key_auth = load_auth(&config.key_auth)?;
        if key_auth.is_none() {
            tracing::warn!(
                handle = format_args!("{:#010x}", config.persistent_handle),
                "tpm storage key without an auth value: anyone who can reach this tpm can \
                 unseal stolen envelopes (allowed on regtest only)"
            );
        }
        let mut ctx = connect(&config.tcti)?;
        let (key, created) = match ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)) {
            Ok(h) => (KeyHandle::from(h), false),
            Err(e) if matches!(rc_kind(&e), Some(Tss2ResponseCodeKind::Handle)) => {
                if !create_key {
                    return Err(HsmError::TpmKeyNotFound {
                        handle: config.persistent_handle,
                    });
                }
                if pinned.is_some() {
                    // The pinned key is gone (or the handle is wrong): a new key would
                    // have another name, and records sealed under the old one are lost.
                    return Err(HsmError::Config(format!(
                        "no tpm storage key at persistent handle {:#010x}, but key_name pins one: \
                         check the handle and the tpm; to create a new key remove key_name",
                        config.persistent_handle
                    )));
                }
                let owner_auth = load_auth(&config.owner_auth)?;
                let h = create_storage_key(&mut ctx, persistent, key_auth.clone(), owner_auth)?;
                tracing::info!(
                    handle = format_args!("{:#010x}", config.persistent_handle),
                    "created persistent tpm storage key"
                );
                (h, true)
            }
            Err(e) => return Err(tpm_err("TR_FromTPMPublic")(e)),
        };
        let info = storage_key_info(&mut ctx, key, config.persistent_handle)?;
        // Pinned name first: a key that is not the pinned one is refused before
        // anything is sealed or unsealed with it.
        match &pinned {
            Some(expected) if hex::encode(expected) != info.name => {
                return Err(HsmError::TpmKeyNameMismatch {
                    handle: config.persistent_handle,
                    expected: hex::encode(expected),
                    found: info.name,
                });
            }
            Some(_) => {}
            None => tracing::warn!(
                handle = format_args!("{:#010x}", config.persistent_handle),
                name = %info.name,
                "tpm storage key name not pinned: set key_name = \"{}\" in [custody] \
                 (required outside regtest)",
                info.name
            ),
        }
        if !(info.fixed_tpm
            && info.fixed_parent
            && info.sensitive_data_origin
            && info.restricted_decrypt)
        {
            return Err(HsmError::KekPolicy {
                label: format!("tpm:{:#010x}", config.persistent_handle),
                detail: format!("not a fixedTPM storage key generated in the TPM: {info:?}"),
            });
        }
        // The name is the 2-byte hash algorithm id followed by the digest of the public
        // area. A PCR policy is part of the KEK id: envelopes sealed under another PCR
        // list (or none) are refused as `KekMismatch` and can be rewrapped.
        let mut kek_id = format!(
            "tpm:{:08x}:{}",
            config.persistent_handle,
            info.name.get(4..20).unwrap_or(&info.name)
        );
        if !pcrs.is_empty() {
            let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
            kek_id.push_str(&format!(":pcr={}", list.join(",")));
        }
        if !pcrs.is_empty() {
            // Fails early on a TPM without an allocated SHA-256 bank.
            read_pcrs(&mut ctx, &pcrs)?;
        }
        let wrapper = TpmWrapper {
            inner: Mutex::new(Inner {
                ctx,
                key,
                key_auth,
                session: None,
                pcrs: pcrs.clone(),
            }),
            tcti: config.tcti.clone(),
            handle: config.persistent_handle,
            kek_id,
            name: info.name.clone(),
            pcrs,
        };
        wrapper.self_test().map_err(|e| match e {
            HsmError::TpmAuthFailed { .. } => HsmError::TpmAuthFailed {
                handle: Some(config.persistent_handle),
            },
            other => other,
        })?;
        tracing::info!(tcti = %config.tcti, kek_id = %wrapper.kek_id, "tpm key custody unsealed");
        Ok((wrapper, created))
    }

    fn self_test(&self) -> Result<(), HsmError> {
        let dek = DataKey::generate()?;
        let w = self.wrap(&dek, b"custody/tpm-self-test")?;
        let back = self.unwrap(&w, b"custody/tpm-self-test")?;
        if !back.ct_eq(&dek) {
            return Err(HsmError::Tpm {
                op: "self-test",
                reason: "unsealed key differs from sealed key".into(),
            });
        }
        Ok(())
    }

    /// Reads the storage key's public properties.
    pub fn storage_key_info(&self) -> Result<StorageKeyInfo, HsmError> {
        let mut inner = self.lock();
        let key = inner.key;
        storage_key_info(&mut inner.ctx, key, self.handle)
    }

    /// The persistent handle.
    pub fn persistent_handle(&self) -> u32 {
        self.handle
    }

    /// TPM name of the storage key (hex, `000b…`), verified against its public area
    /// at open: the value to pin as `key_name`.
    pub fn key_name(&self) -> &str {
        &self.name
    }

    /// PCR indices of the PCR policy (sorted); empty: no PCR policy.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    /// Evicts (destroys) the persistent storage key. Every record still sealed under
    /// it becomes unreadable for good: only call this after all records were rewrapped
    /// and that transaction committed. `owner_auth` is the owner hierarchy auth.
    pub fn destroy_kek(self, owner_auth: &Option<PinSource>) -> Result<(), HsmError> {
        let owner = load_auth(owner_auth)?;
        let inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let Inner { mut ctx, key, .. } = inner;
        ctx.clear_sessions();
        ctx.tr_set_auth(ObjectHandle::Owner, owner.unwrap_or_default())
            .map_err(tpm_err("TR_SetAuth"))?;
        let persistent =
            PersistentTpmHandle::new(self.handle).map_err(tpm_err("persistent handle"))?;
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(
                Provision::Owner,
                key.into(),
                Persistent::Persistent(persistent),
            )
        })
        .map_err(|e| {
            if is_auth_failure(&e) {
                HsmError::TpmAuthFailed { handle: None }
            } else {
                tpm_err("EvictControl")(e)
            }
        })?;
        tracing::warn!(handle = format_args!("{:#010x}", self.handle), kek_id = %self.kek_id, "destroyed tpm storage key");
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the key's public area (ReadPublic) and its name. The name is computed here
/// from the public area (`000b ‖ SHA-256(TPMT_PUBLIC)`) and must equal both the name
/// the TPM reports and the name of the public area ESYS holds for the handle (the one
/// it salts sessions with); otherwise the answer is refused.
fn storage_key_info(
    ctx: &mut Context,
    key: KeyHandle,
    handle: u32,
) -> Result<StorageKeyInfo, HsmError> {
    let (public, name, _) = ctx
        .execute_without_session(|ctx| ctx.read_public(key))
        .map_err(tpm_err("ReadPublic"))?;
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(HsmError::KekPolicy {
            label: format!("tpm:{handle:#010x}"),
            detail: "storage key name algorithm is not sha256".into(),
        });
    }
    let marshalled = public.marshall().map_err(tpm_err("marshal public"))?;
    let mut computed = TPM_ALG_SHA256.to_be_bytes().to_vec();
    computed.extend_from_slice(&Sha256::digest(&marshalled));
    let esys_name = ctx.tr_get_name(key.into()).map_err(tpm_err("TR_GetName"))?;
    if name.value() != computed.as_slice() || esys_name.value() != computed.as_slice() {
        // Not transient: a TPM (or something on the TCTI) answering inconsistently.
        return Err(HsmError::KekPolicy {
            label: format!("tpm:{handle:#010x}"),
            detail: format!(
                "tpm name {} / esys name {} do not match the public area (name {})",
                hex::encode(name.value()),
                hex::encode(esys_name.value()),
                hex::encode(&computed)
            ),
        });
    }
    let a = public.object_attributes();
    Ok(StorageKeyInfo {
        handle,
        name: hex::encode(&computed),
        fixed_tpm: a.fixed_tpm(),
        fixed_parent: a.fixed_parent(),
        sensitive_data_origin: a.sensitive_data_origin(),
        restricted_decrypt: a.restricted() && a.decrypt(),
    })
}

fn create_storage_key(
    ctx: &mut Context,
    persistent: PersistentTpmHandle,
    key_auth: Option<Auth>,
    owner_auth: Option<Auth>,
) -> Result<KeyHandle, HsmError> {
    let owner_fail = |op: &'static str| {
        move |e: tss_esapi::Error| {
            if is_auth_failure(&e) {
                HsmError::Config("owner hierarchy auth rejected by the tpm".into())
            } else {
                tpm_err(op)(e)
            }
        }
    };
    ctx.tr_set_auth(ObjectHandle::Owner, owner_auth.unwrap_or_default())
        .map_err(tpm_err("TR_SetAuth"))?;
    let srk = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(
                Hierarchy::Owner,
                storage_key_template()?,
                None,
                None,
                None,
                None,
            )
            .map_err(owner_fail("CreatePrimary"))
        })?
        .key_handle;
    let res = (|| {
        let created = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create(srk, storage_key_template()?, key_auth, None, None, None)
                .map_err(tpm_err("Create"))
        })?;
        let loaded = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(srk, created.out_private, created.out_public)
                .map_err(tpm_err("Load"))
        })?;
        let persisted = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(
                Provision::Owner,
                loaded.into(),
                Persistent::Persistent(persistent),
            )
            .map_err(owner_fail("EvictControl"))
        });
        let _ = ctx.flush_context(loaded.into());
        persisted
    })();
    let _ = ctx.flush_context(srk.into());
    Ok(KeyHandle::from(res?))
}

impl KeyWrapper for TpmWrapper {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<WrappedKey, HsmError> {
        let bytes = self.lock().seal(dek, aad)?;
        if bytes.len() > MAX_WRAPPED_LEN {
            return Err(HsmError::TooLarge {
                what: "tpm sealed object",
                len: bytes.len(),
                max: MAX_WRAPPED_LEN,
            });
        }
        Ok(WrappedKey {
            backend: BackendKind::Tpm,
            kek_id: self.kek_id.clone(),
            bytes,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey, HsmError> {
        check_kek(self, wrapped)?;
        let dek = self.lock().unseal(&wrapped.bytes, aad)?;
        debug_assert_eq!(dek.expose_secret().len(), DATA_KEY_LEN);
        Ok(dek)
    }
}
