//! PKCS#11 backend (any module; SoftHSM2 in dev and tests).
//!
//! The KEK is an AES-256 secret key generated inside the token (`CKA_TOKEN`,
//! `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, not modifiable or
//! copyable, and none of `CKA_DERIVE`, `CKA_WRAP`, `CKA_UNWRAP`, `CKA_SIGN`,
//! `CKA_VERIFY`), found by label. Opening refuses a KEK that does not meet this
//! ([`KekAttributes::policy_violations`]), including one whose token does not report
//! one of these attributes. A data key is wrapped by AES-GCM encryption inside the
//! token with a random 96-bit IV and the caller's associated data:
//!
//! ```text
//! wrapped = iv (12 bytes) || AES-256-GCM(KEK, iv, aad, data key) (32 bytes) || tag (16 bytes)
//! ```
//!
//! `C_Initialize` may run only once per module and process, so every module path has
//! one process-wide [`Pkcs11`] context ([`shared_context`]), never finalized.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::HsmError;
use crate::pin::PinSource;
use crate::wrapper::{check_kek, BackendKind, DataKey, KeyWrapper, WrappedKey, DATA_KEY_LEN};

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a data key wrapped by this backend.
pub const WRAPPED_LEN: usize = IV_LEN + DATA_KEY_LEN + TAG_LEN;
/// Idle sessions kept open for reuse.
const MAX_IDLE_SESSIONS: usize = 8;
/// Longest label accepted (PKCS#11 token labels are 32 bytes; object labels are free).
const MAX_LABEL_LEN: usize = 64;

/// Configuration of the PKCS#11 backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token (slot ids change when tokens are added, labels do not).
    pub token_label: String,
    /// Label of the AES-256 KEK inside the token.
    pub kek_label: String,
    /// Where the user PIN is read from.
    pub pin: PinSource,
}

impl Pkcs11Config {
    fn validate(&self) -> Result<(), HsmError> {
        for (what, v) in [
            ("token label", &self.token_label),
            ("kek label", &self.kek_label),
        ] {
            if v.is_empty() || v.len() > MAX_LABEL_LEN {
                return Err(HsmError::Config(format!(
                    "{what} must be 1..={MAX_LABEL_LEN} bytes"
                )));
            }
        }
        Ok(())
    }
}

struct Registry {
    contexts: HashMap<PathBuf, Pkcs11>,
    /// (module, token serial) -> salted hash of the PIN that logged in. PKCS#11 login
    /// state is per process and token, and a second `C_Login` answers
    /// `CKR_USER_ALREADY_LOGGED_IN` without checking the PIN; this lets a second
    /// wrapper on the same token still reject a wrong PIN.
    logins: HashMap<(PathBuf, String), [u8; 32]>,
    salt: [u8; 32],
}

fn registry() -> MutexGuard<'static, Registry> {
    static REG: OnceLock<Mutex<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Mutex::new(Registry {
            contexts: HashMap::new(),
            logins: HashMap::new(),
            salt,
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

fn pin_digest(salt: &[u8; 32], pin: &SecretString) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(pin.expose_secret().as_bytes());
    h.finalize().into()
}

/// The process-wide, initialised context for a module (loaded and `C_Initialize`d on
/// first use). Fails with [`HsmError::ModuleNotFound`] if the file does not exist and
/// [`HsmError::ModuleLoad`] if it is not a loadable PKCS#11 library.
pub fn shared_context(module: &Path) -> Result<Pkcs11, HsmError> {
    if !module.is_file() {
        return Err(HsmError::ModuleNotFound {
            path: module.to_path_buf(),
        });
    }
    let key = module.canonicalize().map_err(|e| HsmError::ModuleLoad {
        path: module.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut reg = registry();
    if let Some(ctx) = reg.contexts.get(&key) {
        return Ok(ctx.clone());
    }
    let load_err = |e: CkError| HsmError::ModuleLoad {
        path: module.to_path_buf(),
        reason: e.to_string(),
    };
    let ctx = Pkcs11::new(&key).map_err(load_err)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_err(e)),
    }
    tracing::info!(module = %key.display(), "pkcs#11 module initialised");
    reg.contexts.insert(key, ctx.clone());
    Ok(ctx)
}

fn ck(op: &'static str) -> impl Fn(CkError) -> HsmError {
    move |e| HsmError::Pkcs11 {
        op,
        reason: e.to_string(),
    }
}

/// Serialises slot enumeration and token initialisation in this process. SoftHSM2
/// 2.6 rebuilds its slot table inside `C_GetSlotList` and aborts
/// (`SlotManager::insertToken` assertion) when two threads do that at once.
pub fn slot_table_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Finds the slot holding the token labelled `label`.
pub fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let _slots_guard = slot_table_lock();
    let slots = ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))?;
    let mut present = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let info = match ctx.get_token_info(slot) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(?slot, error = %e, "skipping slot without readable token info");
                continue;
            }
        };
        if !info.token_initialized() {
            continue;
        }
        let l = info.label().trim_end().to_string();
        if l == label {
            found.push(slot);
        }
        present.push(l);
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(HsmError::TokenNotFound {
            label: label.to_string(),
            present,
        }),
        more => Err(HsmError::Config(format!(
            "{} tokens are labelled {label:?}; token labels must be unique",
            more.len()
        ))),
    }
}

fn token_serial(ctx: &Pkcs11, slot: Slot) -> Result<String, HsmError> {
    Ok(ctx
        .get_token_info(slot)
        .map_err(ck("C_GetTokenInfo"))?
        .serial_number()
        .trim()
        .to_string())
}

/// Logs the user in on `session`, mapping failures to distinct errors.
fn login(
    ctx: &Pkcs11,
    slot: Slot,
    module: &Path,
    session: &Session,
    label: &str,
    pin: &SecretString,
) -> Result<(), HsmError> {
    let serial = token_serial(ctx, slot)?;
    let key = (module.to_path_buf(), serial);
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => {
            let mut reg = registry();
            let d = pin_digest(&reg.salt, pin);
            reg.logins.insert(key, d);
            Ok(())
        }
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            let reg = registry();
            let d = pin_digest(&reg.salt, pin);
            match reg.logins.get(&key) {
                Some(known) if known == &d => Ok(()),
                _ => Err(HsmError::WrongPin {
                    label: label.to_string(),
                }),
            }
        }
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
            _,
        )) => Err(HsmError::WrongPin {
            label: label.to_string(),
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
            label: label.to_string(),
        }),
        Err(e) => Err(ck("C_Login")(e)),
    }
}

fn kek_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
    ]
}

fn find_kek(session: &Session, token: &str, label: &str) -> Result<Option<ObjectHandle>, HsmError> {
    let found = session
        .find_objects(&kek_template(label))
        .map_err(ck("C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        more => Err(HsmError::KekAmbiguous {
            token: token.into(),
            label: label.into(),
            count: more.len(),
        }),
    }
}

fn generate_kek(session: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
    let mut id = vec![0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let mut template = kek_template(label);
    template.extend([
        Attribute::Id(id),
        Attribute::ValueLen(32.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(ck("C_GenerateKey"))
}

/// Security-relevant attributes of the KEK as read back from the token.
///
/// A policy attribute the token does not report a value for is listed in
/// [`KekAttributes::unreported`] and its field holds the failing value; either way
/// [`KekAttributes::policy_violations`] refuses the key (fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekAttributes {
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
    /// `CKA_LOCAL` (generated inside the token).
    pub local: bool,
    /// `CKA_TOKEN` (persistent).
    pub token: bool,
    /// `CKA_PRIVATE` (needs login).
    pub private: bool,
    /// `CKA_MODIFIABLE` (must be false: attributes cannot be changed later).
    pub modifiable: bool,
    /// `CKA_COPYABLE` (must be false: `C_CopyObject` could make a laxer copy).
    pub copyable: bool,
    /// `CKA_DERIVE` (must be false: no keys derived from the KEK).
    pub derive: bool,
    /// `CKA_WRAP` (must be false: the KEK only encrypts data keys with AES-GCM).
    pub wrap: bool,
    /// `CKA_UNWRAP` (must be false: nothing is imported under the KEK).
    pub unwrap: bool,
    /// `CKA_SIGN` (must be false).
    pub sign: bool,
    /// `CKA_VERIFY` (must be false).
    pub verify: bool,
    /// `CKA_VALUE_LEN` in bytes.
    pub value_len: u64,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// Whether `CKA_VALUE` is readable (must be false).
    pub value_readable: bool,
    /// Policy attributes the token did not report a value for.
    pub unreported: Vec<UnreportedAttribute>,
}

/// A KEK policy attribute for which the token returned no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreportedAttribute {
    /// PKCS#11 name, e.g. `CKA_DERIVE`.
    pub attribute: &'static str,
    /// What the token answered instead of a value.
    pub reason: &'static str,
}

impl fmt::Display for UnreportedAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not reported by the token ({})",
            self.attribute, self.reason
        )
    }
}

/// The attributes the custody policy is checked on, with their PKCS#11 names.
/// `CKA_ID` is read too but is not part of the policy.
const POLICY_ATTRIBUTES: [(AttributeType, &str); 15] = [
    (AttributeType::Sensitive, "CKA_SENSITIVE"),
    (AttributeType::Extractable, "CKA_EXTRACTABLE"),
    (AttributeType::AlwaysSensitive, "CKA_ALWAYS_SENSITIVE"),
    (AttributeType::NeverExtractable, "CKA_NEVER_EXTRACTABLE"),
    (AttributeType::Local, "CKA_LOCAL"),
    (AttributeType::Token, "CKA_TOKEN"),
    (AttributeType::Private, "CKA_PRIVATE"),
    (AttributeType::ValueLen, "CKA_VALUE_LEN"),
    (AttributeType::Modifiable, "CKA_MODIFIABLE"),
    (AttributeType::Copyable, "CKA_COPYABLE"),
    (AttributeType::Derive, "CKA_DERIVE"),
    (AttributeType::Wrap, "CKA_WRAP"),
    (AttributeType::Unwrap, "CKA_UNWRAP"),
    (AttributeType::Sign, "CKA_SIGN"),
    (AttributeType::Verify, "CKA_VERIFY"),
];

impl KekAttributes {
    /// The custody policy: sensitive, never extractable, generated in the token,
    /// persistent, private, 256 bits, value unreadable, not modifiable, not copyable,
    /// and usable for nothing but encryption (no derive, wrap, unwrap, sign, verify).
    /// A policy attribute the token does not report is a violation too.
    pub fn policy_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        // `ok` is whether the reported value meets the policy; `text` names the failure.
        let mut check = |attribute: &'static str, ok: bool, text: &'static str| {
            if let Some(u) = self.unreported.iter().find(|u| u.attribute == attribute) {
                v.push(u.to_string());
            } else if !ok {
                v.push(text.to_string());
            }
        };
        check("CKA_SENSITIVE", self.sensitive, "CKA_SENSITIVE is false");
        check(
            "CKA_EXTRACTABLE",
            !self.extractable,
            "CKA_EXTRACTABLE is true",
        );
        check(
            "CKA_ALWAYS_SENSITIVE",
            self.always_sensitive,
            "CKA_ALWAYS_SENSITIVE is false",
        );
        check(
            "CKA_NEVER_EXTRACTABLE",
            self.never_extractable,
            "CKA_NEVER_EXTRACTABLE is false",
        );
        check(
            "CKA_LOCAL",
            self.local,
            "CKA_LOCAL is false (key was imported, not generated in the token)",
        );
        check("CKA_TOKEN", self.token, "CKA_TOKEN is false");
        check("CKA_PRIVATE", self.private, "CKA_PRIVATE is false");
        check(
            "CKA_VALUE_LEN",
            self.value_len == 32,
            "CKA_VALUE_LEN is not 32",
        );
        check("CKA_MODIFIABLE", !self.modifiable, "CKA_MODIFIABLE is true");
        check("CKA_COPYABLE", !self.copyable, "CKA_COPYABLE is true");
        check("CKA_DERIVE", !self.derive, "CKA_DERIVE is true");
        check("CKA_WRAP", !self.wrap, "CKA_WRAP is true");
        check("CKA_UNWRAP", !self.unwrap, "CKA_UNWRAP is true");
        check("CKA_SIGN", !self.sign, "CKA_SIGN is true");
        check("CKA_VERIFY", !self.verify, "CKA_VERIFY is true");
        if self.value_readable {
            v.push("CKA_VALUE is readable".to_string());
        }
        v
    }

    /// Builds the attributes from what the token answered: `infos` is the
    /// `C_GetAttributeValue` size query for each requested type, `values` the values it
    /// returned (unavailable ones are left out), `value_info` the query for
    /// `CKA_VALUE`. Every field starts at the value that fails the policy; a policy
    /// attribute without a returned value is recorded in `unreported`.
    fn from_token(
        infos: &[(AttributeType, AttributeInfo)],
        values: Vec<Attribute>,
        value_info: &[AttributeInfo],
    ) -> Self {
        let mut a = KekAttributes {
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            local: false,
            token: false,
            private: false,
            modifiable: true,
            copyable: true,
            derive: true,
            wrap: true,
            unwrap: true,
            sign: true,
            verify: true,
            value_len: 0,
            id: Vec::new(),
            value_readable: true,
            unreported: Vec::new(),
        };
        let mut returned = Vec::with_capacity(values.len());
        for attr in values {
            returned.push(attr.attribute_type());
            match attr {
                Attribute::Sensitive(b) => a.sensitive = b,
                Attribute::Extractable(b) => a.extractable = b,
                Attribute::AlwaysSensitive(b) => a.always_sensitive = b,
                Attribute::NeverExtractable(b) => a.never_extractable = b,
                Attribute::Local(b) => a.local = b,
                Attribute::Token(b) => a.token = b,
                Attribute::Private(b) => a.private = b,
                Attribute::Modifiable(b) => a.modifiable = b,
                Attribute::Copyable(b) => a.copyable = b,
                Attribute::Derive(b) => a.derive = b,
                Attribute::Wrap(b) => a.wrap = b,
                Attribute::Unwrap(b) => a.unwrap = b,
                Attribute::Sign(b) => a.sign = b,
                Attribute::Verify(b) => a.verify = b,
                Attribute::ValueLen(l) => a.value_len = u64::from(l),
                Attribute::Id(id) => a.id = id,
                _ => {}
            }
        }
        for (ty, attribute) in POLICY_ATTRIBUTES {
            if returned.contains(&ty) {
                continue;
            }
            let reason = match infos.iter().find(|(t, _)| *t == ty).map(|(_, i)| i) {
                Some(AttributeInfo::TypeInvalid) => "attribute type invalid",
                Some(AttributeInfo::Unavailable) => "information unavailable",
                Some(AttributeInfo::Sensitive) => "attribute sensitive",
                Some(AttributeInfo::Available(_)) => "no value returned",
                None => "not queried",
            };
            a.unreported.push(UnreportedAttribute { attribute, reason });
        }
        a.value_readable = !matches!(
            value_info,
            [AttributeInfo::Sensitive] | [AttributeInfo::Unavailable]
        );
        a
    }
}

fn read_kek_attributes(session: &Session, kek: ObjectHandle) -> Result<KekAttributes, HsmError> {
    let types: Vec<AttributeType> = POLICY_ATTRIBUTES
        .iter()
        .map(|(t, _)| *t)
        .chain([AttributeType::Id])
        .collect();
    let infos = session
        .get_attribute_info(kek, &types)
        .map_err(ck("C_GetAttributeValue"))?;
    let infos: Vec<_> = types.iter().copied().zip(infos).collect();
    let values = session
        .get_attributes(kek, &types)
        .map_err(ck("C_GetAttributeValue"))?;
    let value_info = session
        .get_attribute_info(kek, &[AttributeType::Value])
        .map_err(ck("C_GetAttributeValue"))?;
    Ok(KekAttributes::from_token(&infos, values, &value_info))
}

/// A data-key wrapper backed by an AES-256 KEK inside a PKCS#11 token.
pub struct Pkcs11Wrapper {
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    kek_label: String,
    kek: ObjectHandle,
    kek_id: String,
    /// Keeps the login alive: PKCS#11 logs out when the last session closes.
    _anchor: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
}

impl fmt::Debug for Pkcs11Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Wrapper")
            .field("token_label", &self.token_label)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Wrapper {
    /// Opens the token, logs in with the configured PIN and finds the KEK.
    ///
    /// With `create_kek`, a missing KEK is generated (operator `init`); otherwise a
    /// missing KEK is [`HsmError::KekNotFound`]. The KEK's attributes are checked
    /// against the custody policy ([`HsmError::KekPolicy`]).
    pub fn open(config: &Pkcs11Config, create_kek: bool) -> Result<Self, HsmError> {
        Self::open_inner(config, create_kek).map(|(w, _)| w)
    }

    /// Like [`Pkcs11Wrapper::open`], also telling whether the KEK was created now.
    pub(crate) fn open_inner(
        config: &Pkcs11Config,
        create_kek: bool,
    ) -> Result<(Self, bool), HsmError> {
        config.validate()?;
        let ctx = shared_context(&config.module)?;
        let slot = find_token(&ctx, &config.token_label)?;
        let pin = config.pin.load()?;
        let anchor = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
        login(
            &ctx,
            slot,
            &config.module,
            &anchor,
            &config.token_label,
            &pin,
        )?;
        drop(pin);
        let (kek, created) = match find_kek(&anchor, &config.token_label, &config.kek_label)? {
            Some(h) => (h, false),
            None if create_kek => {
                let h = generate_kek(&anchor, &config.kek_label)?;
                tracing::info!(token = %config.token_label, kek = %config.kek_label, "generated key-encryption key in token");
                (h, true)
            }
            None => {
                return Err(HsmError::KekNotFound {
                    token: config.token_label.clone(),
                    label: config.kek_label.clone(),
                })
            }
        };
        let attrs = read_kek_attributes(&anchor, kek)?;
        let violations = attrs.policy_violations();
        if !violations.is_empty() {
            return Err(HsmError::KekPolicy {
                label: config.kek_label.clone(),
                detail: violations.join(", "),
            });
        }
        let kek_id = if attrs.id.is_empty() {
            config.kek_label.clone()
        } else {
            format!("{}#{}", config.kek_label, hex::encode(&attrs.id))
        };
        if kek_id.len() > crate::wrapper::MAX_KEK_ID_LEN {
            return Err(HsmError::Config(format!("kek id {kek_id:?} is too long")));
        }
        tracing::info!(token = %config.token_label, %kek_id, "pkcs#11 key custody unsealed");
        Ok((
            Pkcs11Wrapper {
                ctx,
                slot,
                token_label: config.token_label.clone(),
                kek_label: config.kek_label.clone(),
                kek,
                kek_id,
                _anchor: Mutex::new(anchor),
                idle: Mutex::new(Vec::new()),
            },
            created,
        ))
    }

    /// Label of the token.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Label of the KEK.
    pub fn kek_label(&self) -> &str {
        &self.kek_label
    }

    /// Reads the KEK's attributes back from the token.
    pub fn kek_attributes(&self) -> Result<KekAttributes, HsmError> {
        self.with_session(|s| read_kek_attributes(s, self.kek))
    }

    /// Tries to export the KEK with `C_WrapKey` under a fresh session key; returns the
    /// token's refusal (the expected outcome) or an error if the export succeeded.
    pub fn probe_export_refused(&self) -> Result<String, HsmError> {
        self.with_session(|s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ];
            let wrapping = s
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(ck("C_GenerateKey"))?;
            let res = s.wrap_key(&Mechanism::AesKeyWrap, wrapping, self.kek);
            let _ = s.destroy_object(wrapping);
            match res {
                Ok(mut exported) => {
                    zeroize::Zeroize::zeroize(&mut exported);
                    Err(HsmError::KekPolicy {
                        label: self.kek_label.clone(),
                        detail: "C_WrapKey exported the key".into(),
                    })
                }
                Err(e) => Ok(e.to_string()),
            }
        })
    }

    /// Destroys the KEK inside the token. Every record still wrapped by it becomes
    /// unreadable for good: only call this after all records were rewrapped
    /// ([`crate::envelope::rewrap`]) and that transaction committed.
    pub fn destroy_kek(self) -> Result<(), HsmError> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(ck("C_OpenSession"))?;
        session
            .destroy_object(self.kek)
            .map_err(ck("C_DestroyObject"))?;
        tracing::warn!(token = %self.token_label, kek_id = %self.kek_id, "destroyed key-encryption key");
        Ok(())
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let session = match pooled {
            Some(s) => s,
            None => self
                .ctx
                .open_ro_session(self.slot)
                .map_err(ck("C_OpenSession"))?,
        };
        let res = f(&session);
        // After a failure, keep the session only if the token still knows it.
        let healthy = res.is_ok() || session.get_session_info().is_ok();
        if healthy {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_SESSIONS {
                idle.push(session);
            }
        }
        res
    }
}

impl KeyWrapper for Pkcs11Wrapper {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<WrappedKey, HsmError> {
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut iv)
            .map_err(|e| HsmError::Rng(e.to_string()))?;
        // The IV buffer is passed mutably: a token that generates IVs itself writes the
        // one it used back into it, so the stored IV is read after the call.
        let ct = self.with_session(|s| {
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(ck("AES-GCM parameters"))?;
            s.encrypt(&Mechanism::AesGcm(params), self.kek, dek.expose_secret())
                .map_err(ck("C_Encrypt"))
        })?;
        if ct.len() != DATA_KEY_LEN + TAG_LEN {
            return Err(HsmError::Pkcs11 {
                op: "C_Encrypt",
                reason: format!("unexpected ciphertext length {}", ct.len()),
            });
        }
        let mut bytes = Vec::with_capacity(WRAPPED_LEN);
        bytes.extend_from_slice(&iv);
        bytes.extend_from_slice(&ct);
        Ok(WrappedKey {
            backend: BackendKind::Pkcs11,
            kek_id: self.kek_id.clone(),
            bytes,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey, HsmError> {
        check_kek(self, wrapped)?;
        if wrapped.bytes.len() != WRAPPED_LEN {
            return Err(HsmError::Malformed {
                reason: format!(
                    "pkcs#11 wrapped key is {} bytes, expected {WRAPPED_LEN}",
                    wrapped.bytes.len()
                ),
            });
        }
        let (iv, ct) = wrapped.bytes.split_at(IV_LEN);
        let mut iv = <[u8; IV_LEN]>::try_from(iv).expect("split_at(IV_LEN) yields IV_LEN bytes");
        let pt = self.with_session(|s| {
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(ck("AES-GCM parameters"))?;
            match s.decrypt(&Mechanism::AesGcm(params), self.kek, ct) {
                Ok(pt) => Ok(Zeroizing::new(pt)),
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError,
                    _,
                )) => Err(HsmError::Authentication {
                    what: "wrapped data key",
                }),
                Err(e) => Err(ck("C_Decrypt")(e)),
            }
        })?;
        DataKey::from_slice(&pt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SoftHSM answers for a KEK made by [`generate_kek`].
    fn good_values() -> Vec<Attribute> {
        vec![
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Local(true),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::ValueLen(32.into()),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
            Attribute::Derive(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Id(vec![1, 2, 3]),
        ]
    }

    /// The size query answer for `values`: each returned value is available, any
    /// other queried type gets `missing`.
    fn infos(
        values: &[Attribute],
        missing: &[(AttributeType, AttributeInfo)],
    ) -> Vec<(AttributeType, AttributeInfo)> {
        let mut infos: Vec<_> = values
            .iter()
            .map(|a| (a.attribute_type(), AttributeInfo::Available(1)))
            .collect();
        infos.extend_from_slice(missing);
        infos
    }

    fn without(types: &[AttributeType]) -> Vec<Attribute> {
        good_values()
            .into_iter()
            .filter(|a| !types.contains(&a.attribute_type()))
            .collect()
    }

    #[test]
    fn a_kek_reported_as_generated_meets_the_policy() {
        let values = good_values();
        let a =
            KekAttributes::from_token(&infos(&values, &[]), values, &[AttributeInfo::Sensitive]);
        assert!(a.unreported.is_empty(), "{:?}", a.unreported);
        assert_eq!(a.policy_violations(), Vec::<String>::new());
        assert_eq!(a.id, [1, 2, 3]);
    }

    #[test]
    fn each_forbidden_capability_is_its_own_violation() {
        let cases = [
            (Attribute::Modifiable(true), "CKA_MODIFIABLE is true"),
            (Attribute::Copyable(true), "CKA_COPYABLE is true"),
            (Attribute::Derive(true), "CKA_DERIVE is true"),
            (Attribute::Wrap(true), "CKA_WRAP is true"),
            (Attribute::Unwrap(true), "CKA_UNWRAP is true"),
            (Attribute::Sign(true), "CKA_SIGN is true"),
            (Attribute::Verify(true), "CKA_VERIFY is true"),
            (Attribute::Extractable(true), "CKA_EXTRACTABLE is true"),
        ];
        for (flipped, text) in cases {
            let ty = flipped.attribute_type();
            let mut values = without(&[ty]);
            values.push(flipped.clone());
            let a = KekAttributes::from_token(
                &infos(&values, &[]),
                values,
                &[AttributeInfo::Sensitive],
            );
            assert_eq!(a.policy_violations(), [text], "{flipped:?}");
        }
    }

    #[test]
    fn a_policy_attribute_the_token_does_not_report_fails_closed() {
        // Type invalid and unavailable information: no value comes back.
        let gone = [
            AttributeType::Derive,
            AttributeType::Modifiable,
            AttributeType::Wrap,
        ];
        let values = without(&gone);
        let infos = infos(
            &values,
            &[
                (AttributeType::Derive, AttributeInfo::TypeInvalid),
                (AttributeType::Modifiable, AttributeInfo::Unavailable),
                // Announced, but then not returned.
                (AttributeType::Wrap, AttributeInfo::Available(1)),
            ],
        );
        let a = KekAttributes::from_token(&infos, values, &[AttributeInfo::Sensitive]);
        // The fields hold the failing value, and the violation says why.
        assert!(a.derive && a.modifiable && a.wrap);
        assert_eq!(
            a.policy_violations(),
            [
                "CKA_MODIFIABLE is not reported by the token (information unavailable)",
                "CKA_DERIVE is not reported by the token (attribute type invalid)",
                "CKA_WRAP is not reported by the token (no value returned)",
            ]
        );
    }

    #[test]
    fn a_token_that_reports_nothing_violates_every_rule() {
        let infos: Vec<_> = POLICY_ATTRIBUTES
            .iter()
            .map(|(t, _)| (*t, AttributeInfo::TypeInvalid))
            .collect();
        let a = KekAttributes::from_token(&infos, Vec::new(), &[AttributeInfo::TypeInvalid]);
        let v = a.policy_violations();
        // Every policy attribute, then the readable CKA_VALUE.
        assert_eq!(v.len(), POLICY_ATTRIBUTES.len() + 1, "{v:?}");
        for (_, name) in POLICY_ATTRIBUTES {
            assert!(
                v.contains(&format!(
                    "{name} is not reported by the token (attribute type invalid)"
                )),
                "{name}: {v:?}"
            );
        }
        assert!(v.contains(&"CKA_VALUE is readable".to_string()));
        // An attribute missing from the query altogether also fails.
        let a = KekAttributes::from_token(
            &[],
            without(&[AttributeType::Sign]),
            &[AttributeInfo::Sensitive],
        );
        assert_eq!(
            a.policy_violations(),
            ["CKA_SIGN is not reported by the token (not queried)"]
        );
    }
}
