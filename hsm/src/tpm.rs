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
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, EccPoint, KeyedHashScheme, Private, Public, PublicBuilder, PublicEccParametersBuilder,
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
}

impl TpmConfig {
    /// A configuration with the default handle and no auth values.
    pub fn new(tcti: impl Into<String>) -> Self {
        TpmConfig {
            tcti: tcti.into(),
            persistent_handle: DEFAULT_PERSISTENT_HANDLE,
            key_auth: None,
            owner_auth: None,
        }
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

fn load_auth(src: &Option<PinSource>) -> Result<Option<Auth>, HsmError> {
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

fn tpm_err(op: &'static str) -> impl Fn(tss_esapi::Error) -> HsmError {
    move |e| HsmError::Tpm {
        op,
        reason: e.to_string(),
    }
}

fn rc_kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn is_auth_failure(e: &tss_esapi::Error) -> bool {
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

fn sealed_template() -> Result<Public, HsmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .build()
        .map_err(tpm_err("object attributes"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Default::default())
        .build()
        .map_err(tpm_err("public template"))
}

fn seal_auth(aad: &[u8]) -> Result<Auth, HsmError> {
    let mut h = Sha256::new();
    h.update(SEAL_AUTH_DOMAIN);
    h.update((aad.len() as u64).to_be_bytes());
    h.update(aad);
    Auth::try_from(h.finalize().to_vec()).map_err(tpm_err("seal auth"))
}

fn connect(tcti: &str) -> Result<Context, HsmError> {
    let conf = TctiNameConf::from_str(tcti)
        .map_err(|e| HsmError::Config(format!("invalid tcti {tcti:?}: {e}")))?;
    Context::new(conf).map_err(|e| HsmError::TpmUnreachable {
        tcti: tcti.to_string(),
        reason: e.to_string(),
    })
}

struct Inner {
    ctx: Context,
    key: KeyHandle,
    key_auth: Option<Auth>,
    session: Option<AuthSession>,
}

impl Inner {
    /// The salted, encrypting HMAC session, started on first use and after errors.
    fn session(&mut self) -> Result<AuthSession, HsmError> {
        if let Some(s) = self.session {
            return Ok(s);
        }
        let s = self
            .ctx
            .start_auth_session(
                Some(self.key),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_err("StartAuthSession"))?
            .ok_or(HsmError::Tpm {
                op: "StartAuthSession",
                reason: "no session returned".into(),
            })?;
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

    fn seal(&mut self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        let public = sealed_template()?;
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
}

impl fmt::Debug for TpmWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmWrapper")
            .field("tcti", &self.tcti)
            .field("handle", &format_args!("{:#010x}", self.handle))
            .field("kek_id", &self.kek_id)
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
        let persistent = config.persistent()?;
        let key_auth = load_auth(&config.key_auth)?;
        let mut ctx = connect(&config.tcti)?;
        let (key, created) = match ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)) {
            Ok(h) => (KeyHandle::from(h), false),
            Err(e) if matches!(rc_kind(&e), Some(Tss2ResponseCodeKind::Handle)) => {
                if !create_key {
                    return Err(HsmError::TpmKeyNotFound {
                        handle: config.persistent_handle,
                    });
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
        // The name is the 2-byte hash algorithm id followed by the digest of the public area.
        let kek_id = format!(
            "tpm:{:08x}:{}",
            config.persistent_handle,
            info.name.get(4..20).unwrap_or(&info.name)
        );
        let wrapper = TpmWrapper {
            inner: Mutex::new(Inner {
                ctx,
                key,
                key_auth,
                session: None,
            }),
            tcti: config.tcti.clone(),
            handle: config.persistent_handle,
            kek_id,
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

fn storage_key_info(
    ctx: &mut Context,
    key: KeyHandle,
    handle: u32,
) -> Result<StorageKeyInfo, HsmError> {
    let (public, name, _) = ctx.read_public(key).map_err(tpm_err("ReadPublic"))?;
    let a = public.object_attributes();
    Ok(StorageKeyInfo {
        handle,
        name: hex::encode(name.value()),
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
