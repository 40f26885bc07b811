//! A TPM 2.0 NV monotonic counter (`TPM_NT_COUNTER`), for anchoring rollback
//! detection (issue 16, finding 7: "where the HSM/TPM offers a monotonic counter,
//! anchor the watermark there"). The node anchors its presignature watermark in
//! one (`[presign] tpm_counter_index`, see `signer::presign::watermark`).
//!
//! A counter index can only be incremented by one, never written, decremented or
//! reset. When it is defined it starts at the highest value any counter of this TPM
//! ever had (the TPM's "maximum count"), so even undefining and redefining it (which
//! needs owner auth) never moves it back. Reading it before its first increment
//! fails in the TPM (`TPM_RC_NV_UNINITIALIZED`); [`NvCounter::read`] returns `None`
//! then.
//!
//! The index is defined `TPMA_NV_ORDERLY`: the TPM keeps the running value in RAM
//! and writes NV only when the low bits roll over or at an orderly shutdown, so an
//! increment per use does not wear NV memory. After a disorderly shutdown (power
//! loss) the TPM moves the counter forward past any value it may have handed out,
//! never back.
//!
//! The index is read and incremented with its own auth value (`authRead`,
//! `authWrite`; empty unless one is given at definition), in an HMAC session, so
//! the auth value never crosses the TCTI in clear. Defining and undefining it need
//! the owner hierarchy's auth.

use std::fmt;
use std::sync::Mutex;

use tss_esapi::attributes::{NvIndexAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{NvIndexType, SessionType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::NvPublicBuilder;
use tss_esapi::Context;

use crate::error::HsmError;
use crate::pin::PinSource;
use crate::tpm::{connect, is_auth_failure, load_auth, rc_kind, start_session, tpm_err};

/// Owner-defined NV indices (TCG handle registry): 0x01800000..=0x01BFFFFF.
pub const OWNER_NV_RANGE: std::ops::RangeInclusive<u32> = 0x0180_0000..=0x01BF_FFFF;

/// Size of a counter's value: a big-endian u64.
const COUNTER_SIZE: usize = 8;

/// A monotonic counter in TPM NV memory.
pub struct NvCounter {
    ctx: Mutex<Context>,
    handle: NvIndexHandle,
    index: u32,
    tcti: String,
}

impl fmt::Debug for NvCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvCounter")
            .field("tcti", &self.tcti)
            .field("index", &format_args!("{:#010x}", self.index))
            .finish_non_exhaustive()
    }
}

fn nv_tpm_handle(index: u32) -> Result<NvIndexTpmHandle, HsmError> {
    if !OWNER_NV_RANGE.contains(&index) {
        return Err(HsmError::Config(format!(
            "tpm nv index {index:#010x} is outside the owner range 0x01800000..0x01bfffff"
        )));
    }
    NvIndexTpmHandle::new(index)
        .map_err(|e| HsmError::Config(format!("tpm nv index {index:#010x}: {e}")))
}

impl NvCounter {
    /// Opens the counter at NV `index` on the TPM at `tcti`. With `define`, a
    /// missing index is defined as a counter (with `owner_auth`; `auth` becomes the
    /// index's auth value) and the second value is `true`. An index that exists but
    /// is not an 8-byte counter is refused (it could be written back).
    pub fn open(
        tcti: &str,
        index: u32,
        auth: &Option<PinSource>,
        owner_auth: &Option<PinSource>,
        define: bool,
    ) -> Result<(Self, bool), HsmError> {
        let nv = nv_tpm_handle(index)?;
        let auth = load_auth(auth)?;
        let mut ctx = connect(tcti)?;
        let (handle, created) = match ctx.tr_from_tpm_public(TpmHandle::NvIndex(nv)) {
            Ok(h) => (NvIndexHandle::from(h), false),
            Err(e) if matches!(rc_kind(&e), Some(Tss2ResponseCodeKind::Handle)) => {
                if !define {
                    return Err(HsmError::Config(format!(
                        "no tpm nv counter at index {index:#010x}"
                    )));
                }
                let attributes = NvIndexAttributesBuilder::new()
                    .with_nv_index_type(NvIndexType::Counter)
                    .with_auth_write(true)
                    .with_auth_read(true)
                    .with_orderly(true)
                    .build()
                    .map_err(tpm_err("nv attributes"))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(nv)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attributes)
                    .with_data_area_size(COUNTER_SIZE)
                    .build()
                    .map_err(tpm_err("nv public"))?;
                let owner = load_auth(owner_auth)?;
                ctx.tr_set_auth(ObjectHandle::Owner, owner.unwrap_or_default())
                    .map_err(tpm_err("TR_SetAuth"))?;
                let h = ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.nv_define_space(Provision::Owner, auth.clone(), public)
                    })
                    .map_err(|e| {
                        if is_auth_failure(&e) {
                            HsmError::Config("owner hierarchy auth rejected by the tpm".into())
                        } else {
                            tpm_err("NV_DefineSpace")(e)
                        }
                    })?;
                tracing::info!(
                    index = format_args!("{index:#010x}"),
                    "defined tpm nv counter"
                );
                (h, true)
            }
            Err(e) => return Err(tpm_err("TR_FromTPMPublic")(e)),
        };
        let (public, _) = ctx
            .execute_without_session(|ctx| ctx.nv_read_public(handle))
            .map_err(tpm_err("NV_ReadPublic"))?;
        let a = public.attributes();
        let is_counter = matches!(a.index_type(), Ok(NvIndexType::Counter));
        if !is_counter || public.data_size() != COUNTER_SIZE {
            return Err(HsmError::Config(format!(
                "tpm nv index {index:#010x} is not a monotonic counter (type {:?}, {} bytes)",
                a.index_type().ok(),
                public.data_size()
            )));
        }
        if !(a.auth_read() && a.auth_write()) {
            return Err(HsmError::Config(format!(
                "tpm nv counter {index:#010x} is not read and incremented with its own auth value"
            )));
        }
        ctx.tr_set_auth(handle.into(), auth.unwrap_or_default())
            .map_err(tpm_err("TR_SetAuth"))?;
        Ok((
            NvCounter {
                ctx: Mutex::new(ctx),
                handle,
                index,
                tcti: tcti.to_owned(),
            },
            created,
        ))
    }

    /// The NV index.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Context> {
        self.ctx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with an HMAC session (unsalted; the index auth keys its HMAC), then
    /// flushes the session.
    fn with_hmac<T>(
        ctx: &mut Context,
        op: &'static str,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, HsmError> {
        let s = start_session(ctx, None, SessionType::Hmac)?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .build();
        let res = ctx
            .tr_sess_set_attributes(s, attrs, mask)
            .map_err(tpm_err("TRSess_SetAttributes"))
            .and_then(|()| {
                ctx.execute_with_session(Some(s), f).map_err(|e| {
                    if is_auth_failure(&e) {
                        HsmError::TpmAuthFailed { handle: None }
                    } else {
                        tpm_err(op)(e)
                    }
                })
            });
        let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(s).into());
        res
    }

    /// The counter's value, `None` before its first increment.
    pub fn read(&self) -> Result<Option<u64>, HsmError> {
        let mut ctx = self.lock();
        let handle = self.handle;
        let res = Self::with_hmac(&mut ctx, "NV_Read", |ctx| {
            ctx.nv_read(NvAuth::NvIndex(handle), handle, COUNTER_SIZE as u16, 0)
        });
        match res {
            Ok(data) => {
                let bytes: [u8; COUNTER_SIZE] =
                    data.value().try_into().map_err(|_| HsmError::Tpm {
                        op: "NV_Read",
                        reason: format!("counter value of {} bytes", data.value().len()),
                    })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            Err(HsmError::Tpm { op: "NV_Read", .. }) if self.uninitialized(&mut ctx) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the index was never incremented (`TPMA_NV_WRITTEN` clear).
    fn uninitialized(&self, ctx: &mut Context) -> bool {
        let handle = self.handle;
        ctx.execute_without_session(|ctx| ctx.nv_read_public(handle))
            .map(|(p, _)| !p.attributes().written())
            .unwrap_or(false)
    }

    /// Increments the counter by one and returns its new value.
    pub fn increment(&self) -> Result<u64, HsmError> {
        {
            let mut ctx = self.lock();
            let handle = self.handle;
            Self::with_hmac(&mut ctx, "NV_Increment", |ctx| {
                ctx.nv_increment(NvAuth::NvIndex(handle), handle)
            })?;
        }
        self.read()?.ok_or(HsmError::Tpm {
            op: "NV_Read",
            reason: "counter still unwritten after NV_Increment".into(),
        })
    }

    /// Undefines the index (owner auth). A counter defined again later at any index
    /// starts no lower than this one's last value.
    pub fn undefine(self, owner_auth: &Option<PinSource>) -> Result<(), HsmError> {
        let owner = load_auth(owner_auth)?;
        let mut ctx = self.ctx.into_inner().unwrap_or_else(|p| p.into_inner());
        ctx.tr_set_auth(ObjectHandle::Owner, owner.unwrap_or_default())
            .map_err(tpm_err("TR_SetAuth"))?;
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_undefine_space(Provision::Owner, self.handle)
        })
        .map_err(tpm_err("NV_UndefineSpace"))
    }
}
