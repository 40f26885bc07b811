//! Throwaway SoftHSM2 tokens and swtpm instances for tests, benchmarks and the dev
//! cluster (cargo feature `test-support`). Nothing here is for production.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and `C_Initialize` runs
//! once per process. So all tokens of one process live in one token directory:
//! [`SoftHsmToken::create`] sets `SOFTHSM2_CONF` (once, before the module is first
//! loaded) to a process-wide temporary config and initialises each new token in the
//! module's free slot, in-process, under a unique label. Separate node *processes*
//! use `softhsm/init-token.sh` to get a token directory each.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cryptoki::session::UserType;
use secrecy::SecretString;

use crate::error::HsmError;
use crate::pin::PinSource;
use crate::pkcs11::{shared_context, slot_table_lock, Pkcs11Config};
use crate::tpm::TpmConfig;

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The module path: `$SOFTHSM2_MODULE` or [`SOFTHSM_MODULE`].
pub fn softhsm_module() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOFTHSM_MODULE))
}

struct ProcessTokenDir {
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

fn process_token_dir() -> Result<&'static ProcessTokenDir, HsmError> {
    static DIR: OnceLock<Result<ProcessTokenDir, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("softhsm-test-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).map_err(|e| e.to_string())?;
        let conf = dir.path().join("softhsm2.conf");
        let template = include_str!("../../softhsm/softhsm2.conf.template");
        std::fs::write(
            &conf,
            template.replace("@TOKENDIR@", &tokens.display().to_string()),
        )
        .map_err(|e| e.to_string())?;
        // Test support only: the variable must be set before SoftHSM's C_Initialize,
        // which happens at the first `shared_context` call below, after this point.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Ok(ProcessTokenDir { _dir: dir, conf })
    })
    .as_ref()
    .map_err(|e| HsmError::Config(format!("cannot create softhsm test token dir: {e}")))
}

/// A fresh SoftHSM2 token with a PIN file, for one test.
#[derive(Debug)]
pub struct SoftHsmToken {
    /// Holds the PIN file.
    pub dir: tempfile::TempDir,
    /// Token label (unique in the process).
    pub label: String,
    /// Path of the user PIN file (mode 600).
    pub pin_file: PathBuf,
    /// The `SOFTHSM2_CONF` in effect.
    pub conf: PathBuf,
}

impl SoftHsmToken {
    /// The user PIN of every test token.
    pub const PIN: &'static str = "1234-user-pin";
    /// The SO PIN of every test token.
    pub const SO_PIN: &'static str = "5678-so-pin";

    /// Initialises a new token labelled `<prefix>-<pid>-<n>` in the free slot.
    pub fn create(prefix: &str) -> Result<Self, HsmError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let ptd = process_token_dir()?;
        let module = softhsm_module();
        let ctx = shared_context(&module)?;
        let label = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        if label.len() > 32 {
            return Err(HsmError::Config(format!(
                "token label {label:?} longer than 32 bytes"
            )));
        }
        let ck = |op: &'static str| {
            move |e: cryptoki::error::Error| HsmError::Pkcs11 {
                op,
                reason: e.to_string(),
            }
        };
        // SoftHSM keeps exactly one uninitialised slot; concurrent creators must not race
        // for it, nor enumerate slots while it turns into a token.
        let _guard = slot_table_lock();
        let slot = ctx
            .get_slots_with_token()
            .map_err(ck("C_GetSlotList"))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| HsmError::Config("softhsm has no free slot".into()))?;
        let so_pin = SecretString::from(Self::SO_PIN);
        ctx.init_token(slot, &so_pin, &label)
            .map_err(ck("C_InitToken"))?;
        {
            let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
            session
                .login(UserType::So, Some(&so_pin))
                .map_err(ck("C_Login(SO)"))?;
            session
                .init_pin(&SecretString::from(Self::PIN))
                .map_err(ck("C_InitPIN"))?;
            session.logout().map_err(ck("C_Logout"))?;
        }
        let dir = tempfile::Builder::new()
            .prefix("softhsm-pin-")
            .tempdir()
            .map_err(|e| HsmError::Config(e.to_string()))?;
        let pin_file = write_secret_file(dir.path(), "pin", Self::PIN)?;
        Ok(SoftHsmToken {
            dir,
            label,
            pin_file,
            conf: ptd.conf.clone(),
        })
    }

    /// A backend configuration for this token with the given KEK label.
    pub fn config(&self, kek_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: softhsm_module(),
            token_label: self.label.clone(),
            kek_label: kek_label.to_string(),
            pin: PinSource::File(self.pin_file.clone()),
        }
    }

    /// Writes another PIN file (e.g. a wrong PIN) next to the real one.
    pub fn pin_file_with(&self, name: &str, pin: &str) -> Result<PathBuf, HsmError> {
        write_secret_file(self.dir.path(), name, pin)
    }
}

/// Writes `content` + newline to `dir/name` with mode 600.
pub fn write_secret_file(dir: &Path, name: &str, content: &str) -> Result<PathBuf, HsmError> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| HsmError::Config(e.to_string()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| HsmError::Config(e.to_string()))?;
    writeln!(f, "{content}").map_err(|e| HsmError::Config(e.to_string()))?;
    Ok(path)
}

/// A running `swtpm socket --tpm2` on loopback with a temporary state directory;
/// killed when dropped.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts swtpm on a free port pair (command port P, control port P+1).
    pub fn start() -> std::io::Result<Self> {
        let state = tempfile::Builder::new().prefix("swtpm-test-").tempdir()?;
        let mut last_err = None;
        for _ in 0..20 {
            let port = free_port_pair()?;
            match Self::spawn(state.path(), port) {
                Ok(child) => {
                    return Ok(Swtpm {
                        child: Some(child),
                        port,
                        state,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("could not start swtpm")))
    }

    fn spawn(state: &Path, port: u16) -> std::io::Result<Child> {
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .arg("--log")
            .arg(format!("file={}", state.join("swtpm.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!("swtpm exited with {status}")));
            }
            // Probe the control port: a connection to the command port would be the
            // one TPM client swtpm serves at a time.
            if TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(std::io::Error::other("swtpm did not start listening"))
    }

    /// The TCTI string, `swtpm:host=127.0.0.1,port=P`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A backend configuration for this TPM with the default handle and no auth.
    pub fn config(&self) -> TpmConfig {
        TpmConfig::new(self.tcti())
    }

    /// Directory for auth files next to the TPM state.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Extends SHA-256 PCR `index` with SHA-256(`data`) over a connection of its own
    /// (what a boot component measuring something new would do). swtpm serves one
    /// client at a time: close other handles on this TPM first.
    pub fn extend_pcr(&self, index: u8, data: &[u8]) -> Result<(), HsmError> {
        use sha2::Digest as _;
        let mut values = tss_esapi::structures::DigestValues::new();
        let digest = tss_esapi::structures::Digest::try_from(sha2::Sha256::digest(data).to_vec())
            .map_err(|e| HsmError::Config(format!("pcr digest: {e}")))?;
        values.set(
            tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
            digest,
        );
        self.with_pcr(index, "PCR_Extend", |ctx, pcr| ctx.pcr_extend(pcr, values))
    }

    /// Resets PCR `index` to zero (allowed for the debug PCR 16 and PCR 23 at
    /// locality 0), over a connection of its own.
    pub fn reset_pcr(&self, index: u8) -> Result<(), HsmError> {
        self.with_pcr(index, "PCR_Reset", |ctx, pcr| ctx.pcr_reset(pcr))
    }

    fn with_pcr(
        &self,
        index: u8,
        op: &'static str,
        f: impl FnOnce(&mut tss_esapi::Context, tss_esapi::handles::PcrHandle) -> tss_esapi::Result<()>,
    ) -> Result<(), HsmError> {
        use std::str::FromStr as _;
        let pcr = tss_esapi::handles::PcrHandle::try_from(
            tss_esapi::tss2_esys::ESYS_TR_PCR0 + u32::from(index),
        )
        .map_err(|e| HsmError::Config(format!("pcr {index}: {e}")))?;
        let conf = tss_esapi::TctiNameConf::from_str(&self.tcti())
            .map_err(|e| HsmError::Config(e.to_string()))?;
        let mut ctx = tss_esapi::Context::new(conf).map_err(|e| HsmError::TpmUnreachable {
            tcti: self.tcti(),
            reason: e.to_string(),
        })?;
        ctx.execute_with_session(
            Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
            |ctx| f(ctx, pcr),
        )
        .map_err(|e| HsmError::Tpm {
            op,
            reason: e.to_string(),
        })
    }

    /// Kills swtpm (the TPM becomes unreachable; its state directory stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port P such that P and P+1 are both free right now.
pub fn free_port_pair() -> std::io::Result<u16> {
    for _ in 0..100 {
        let l = TcpListener::bind(("127.0.0.1", 0))?;
        let p = l.local_addr()?.port();
        if p == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("no free loopback port pair"))
}
