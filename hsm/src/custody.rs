//! Sealed start and operator functions: open the configured backend, `init` (create
//! the KEK), `check` (reachability, PIN, KEK attributes, export refusal, round trip)
//! and `destroy_kek` (after a rotation).

use std::fmt;
use std::sync::Arc;

use crate::envelope::{self, Aad};
use crate::error::HsmError;
use crate::memory::SecretBytes;
use crate::pkcs11::{self, Pkcs11Config, Pkcs11Wrapper};
use crate::tpm::{TpmConfig, TpmWrapper};
use crate::wrapper::{DataKey, KeyWrapper};

/// Which device holds the node's KEK, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CustodyConfig {
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
    /// A TPM 2.0.
    Tpm(TpmConfig),
}

/// An unsealed key custody: the KEK is reachable and authenticated. Cheap to clone.
///
/// A node that has no `Custody` is *sealed*: it must not take part in key ceremonies
/// or signing, and its `/ready` reports the [`HsmError::code`] of the last attempt.
#[derive(Clone, Debug)]
pub struct Custody {
    wrapper: Arc<dyn KeyWrapper>,
}

impl Custody {
    /// Opens the configured backend: loads the module / connects to the TPM, finds
    /// the token, reads the PIN from its file or credential, logs in, finds the KEK
    /// and checks its attributes. Never creates anything; on failure nothing is written.
    pub fn open(config: &CustodyConfig) -> Result<Self, HsmError> {
        let wrapper: Arc<dyn KeyWrapper> = match config {
            CustodyConfig::Pkcs11(c) => Arc::new(Pkcs11Wrapper::open(c, false)?),
            CustodyConfig::Tpm(c) => Arc::new(TpmWrapper::open(c, false)?),
        };
        Ok(Custody { wrapper })
    }

    /// Wraps an already opened backend.
    pub fn from_wrapper(wrapper: Arc<dyn KeyWrapper>) -> Self {
        Custody { wrapper }
    }

    /// The backend, for [`envelope::rewrap`] and friends.
    pub fn wrapper(&self) -> &Arc<dyn KeyWrapper> {
        &self.wrapper
    }

    /// Id of the KEK in use (recorded in every envelope).
    pub fn kek_id(&self) -> &str {
        self.wrapper.kek_id()
    }

    /// [`envelope::seal`] with this custody's KEK.
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        envelope::seal(self.wrapper.as_ref(), aad, plaintext)
    }

    /// [`envelope::open`] with this custody's KEK.
    pub fn open_record(&self, aad: &Aad, blob: &[u8]) -> Result<SecretBytes, HsmError> {
        envelope::open(self.wrapper.as_ref(), aad, blob)
    }
}

/// Result of [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Id of the KEK.
    pub kek_id: String,
    /// Whether `init` created it (false: it already existed and passed the checks).
    pub created: bool,
    /// Human-readable description of the backend.
    pub backend: String,
    /// TPM only: the storage key's TPM name (hex), to pin as `key_name`.
    pub tpm_key_name: Option<String>,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.created {
            "created"
        } else {
            "already present"
        };
        write!(
            f,
            "{}: key-encryption key {} {what}",
            self.backend, self.kek_id
        )?;
        if let Some(name) = &self.tpm_key_name {
            write!(
                f,
                "\ntpm storage key name: {name}\npin it in [custody]: key_name = \"{name}\""
            )?;
        }
        Ok(())
    }
}

/// `signer hsm init`: creates the KEK if it does not exist (idempotent) and verifies
/// it with a wrap/unwrap round trip.
pub fn init(config: &CustodyConfig) -> Result<InitReport, HsmError> {
    let (wrapper, created, backend, tpm_key_name): (Box<dyn KeyWrapper>, bool, String, _) =
        match config {
            CustodyConfig::Pkcs11(c) => {
                let (w, created) = Pkcs11Wrapper::open_inner(c, true)?;
                (
                    Box::new(w),
                    created,
                    format!("pkcs#11 token {:?} ({})", c.token_label, c.module.display()),
                    None,
                )
            }
            CustodyConfig::Tpm(c) => {
                let (w, created) = TpmWrapper::open_inner(c, true)?;
                let name = w.key_name().to_string();
                (
                    Box::new(w),
                    created,
                    format!("tpm {} handle {:#010x}", c.tcti, c.persistent_handle),
                    Some(name),
                )
            }
        };
    round_trip(wrapper.as_ref())?;
    Ok(InitReport {
        kek_id: wrapper.kek_id().to_string(),
        created,
        backend,
        tpm_key_name,
    })
}

/// Destroys the configured KEK (the *old* one, after a completed rotation). Every
/// record still wrapped by it becomes unreadable for good.
pub fn destroy_kek(config: &CustodyConfig) -> Result<(), HsmError> {
    match config {
        CustodyConfig::Pkcs11(c) => Pkcs11Wrapper::open(c, false)?.destroy_kek(),
        CustodyConfig::Tpm(c) => TpmWrapper::open(c, false)?.destroy_kek(&c.owner_auth),
    }
}

fn round_trip(w: &dyn KeyWrapper) -> Result<(), HsmError> {
    let dek = DataKey::generate()?;
    let wrapped = w.wrap(&dek, b"custody/self-test")?;
    let back = w.unwrap(&wrapped, b"custody/self-test")?;
    if !back.ct_eq(&dek) {
        return Err(HsmError::Authentication {
            what: "self-test round trip",
        });
    }
    if w.unwrap(&wrapped, b"custody/self-test/other-aad").is_ok() {
        return Err(HsmError::KekPolicy {
            label: w.kek_id().to_string(),
            detail: "unwrap ignored the associated data".into(),
        });
    }
    Ok(())
}

/// One step of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStep {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Details (never secrets).
    pub detail: String,
    /// Error code when it failed ([`HsmError::code`]).
    pub code: Option<&'static str>,
}

/// Result of [`check`]: the steps run until the first failure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// Steps in order.
    pub steps: Vec<CheckStep>,
}

impl CheckReport {
    /// All steps passed.
    pub fn is_ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    /// The first failed step.
    pub fn failure(&self) -> Option<&CheckStep> {
        self.steps.iter().find(|s| !s.ok)
    }

    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.steps.push(CheckStep {
            name,
            ok: true,
            detail: detail.into(),
            code: None,
        });
    }

    fn fail(&mut self, name: &'static str, e: &HsmError) {
        self.steps.push(CheckStep {
            name,
            ok: false,
            detail: e.to_string(),
            code: Some(e.code()),
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(
                f,
                "[{}] {}: {}",
                if s.ok { " ok " } else { "FAIL" },
                s.name,
                s.detail
            )?;
        }
        write!(
            f,
            "{}",
            if self.is_ok() {
                "custody check passed"
            } else {
                "custody check FAILED"
            }
        )
    }
}

/// `signer hsm check`: verifies reachability, the PIN / auth value, the KEK and its
/// attributes, that the KEK cannot be exported, and a wrap/unwrap round trip.
/// Stops at the first failure. Creates nothing.
pub fn check(config: &CustodyConfig) -> CheckReport {
    let mut r = CheckReport::default();
    match config {
        CustodyConfig::Pkcs11(c) => check_pkcs11(c, &mut r),
        CustodyConfig::Tpm(c) => check_tpm(c, &mut r),
    }
    r
}

fn check_pkcs11(c: &Pkcs11Config, r: &mut CheckReport) {
    let ctx = match pkcs11::shared_context(&c.module) {
        Ok(ctx) => {
            let lib = ctx
                .get_library_info()
                .map(|i| {
                    format!(
                        "{} {}",
                        i.manufacturer_id().trim(),
                        i.library_description().trim()
                    )
                })
                .unwrap_or_default();
            r.pass("module", format!("{} loaded ({lib})", c.module.display()));
            ctx
        }
        Err(e) => return r.fail("module", &e),
    };
    match pkcs11::find_token(&ctx, &c.token_label) {
        Ok(slot) => r.pass(
            "token",
            format!("{:?} found in slot {}", c.token_label, slot.id()),
        ),
        Err(e) => return r.fail("token", &e),
    }
    let w = match Pkcs11Wrapper::open(c, false) {
        Ok(w) => {
            r.pass("login", format!("pin from {} accepted", c.pin));
            r.pass("kek", format!("{} found", w.kek_id()));
            w
        }
        Err(
            e @ (HsmError::WrongPin { .. }
            | HsmError::PinLocked { .. }
            | HsmError::PinSource { .. }),
        ) => return r.fail("login", &e),
        Err(e) => return r.fail("kek", &e),
    };
    // `Pkcs11Wrapper::open` already refused a KEK that violates the policy; this step
    // reads the attributes again and shows them.
    match w.kek_attributes() {
        Ok(a) => {
            let violations = a.policy_violations();
            if !violations.is_empty() {
                return r.fail(
                    "kek attributes",
                    &HsmError::KekPolicy {
                        label: c.kek_label.clone(),
                        detail: violations.join(", "),
                    },
                );
            }
            r.pass(
                "kek attributes",
                format!(
                    "sensitive={} extractable={} always_sensitive={} never_extractable={} local={} token={} private={} modifiable={} copyable={} derive={} wrap={} unwrap={} sign={} verify={} value_len={} value_readable={}",
                    a.sensitive, a.extractable, a.always_sensitive, a.never_extractable, a.local, a.token, a.private, a.modifiable, a.copyable, a.derive, a.wrap, a.unwrap, a.sign, a.verify, a.value_len, a.value_readable
                ),
            )
        }
        Err(e) => return r.fail("kek attributes", &e),
    }
    match w.probe_export_refused() {
        Ok(refusal) => r.pass(
            "export refused",
            format!("C_WrapKey of the kek refused: {refusal}"),
        ),
        Err(e) => return r.fail("export refused", &e),
    }
    match round_trip(&w) {
        Ok(()) => r.pass(
            "round trip",
            "aes-gcm wrap/unwrap inside the token ok; other aad rejected",
        ),
        Err(e) => r.fail("round trip", &e),
    }
}

fn check_tpm(c: &TpmConfig, r: &mut CheckReport) {
    let w = match TpmWrapper::open(c, false) {
        Ok(w) => {
            r.pass("tpm", format!("reachable via {}", c.tcti));
            r.pass(
                "storage key",
                format!("{} loaded; auth accepted", w.kek_id()),
            );
            w
        }
        Err(e @ HsmError::TpmUnreachable { .. }) | Err(e @ HsmError::Config(_)) => {
            return r.fail("tpm", &e)
        }
        Err(e @ HsmError::TpmKeyNameMismatch { .. }) => {
            r.pass("tpm", format!("reachable via {}", c.tcti));
            r.pass(
                "storage key",
                format!("present at {:#010x}", c.persistent_handle),
            );
            return r.fail("storage key name", &e);
        }
        Err(e) => {
            r.pass("tpm", format!("reachable via {}", c.tcti));
            return r.fail("storage key", &e);
        }
    };
    // `open` compared the name with the pin (and the public area) already.
    if c.key_name.is_some() {
        r.pass(
            "storage key name",
            format!("{} matches the pinned key_name", w.key_name()),
        );
    } else {
        r.pass(
            "storage key name",
            format!(
                "{} NOT PINNED: set key_name = \"{}\" in [custody] (required outside regtest)",
                w.key_name(),
                w.key_name()
            ),
        );
    }
    match w.storage_key_info() {
        Ok(i) => r.pass(
            "storage key attributes",
            format!(
                "fixed_tpm={} fixed_parent={} sensitive_data_origin={} restricted_decrypt={} name={}",
                i.fixed_tpm, i.fixed_parent, i.sensitive_data_origin, i.restricted_decrypt, i.name
            ),
        ),
        Err(e) => return r.fail("storage key attributes", &e),
    }
    if !w.pcrs().is_empty() {
        r.pass(
            "pcr policy",
            format!(
                "data keys sealed under PolicyPCR(sha256 pcrs {:?}) + PolicyAuthValue",
                w.pcrs()
            ),
        );
    }
    match round_trip(&w) {
        Ok(()) => r.pass("round trip", "seal/unseal ok; other aad rejected"),
        Err(e) => r.fail("round trip", &e),
    }
}
