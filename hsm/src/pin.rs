//! Where PINs and auth values come from: a file or a systemd credential, never a
//! command-line argument or an environment variable.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::HsmError;

/// Longest PIN file accepted (PKCS#11 PINs are short; TPM auth values at most 64 bytes).
pub const MAX_PIN_LEN: usize = 256;

/// Source of a PIN or auth value.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is stripped). Must be mode 0600
    /// (or stricter) and owned by the user the process runs as.
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (set up with
    /// `LoadCredential=` or `LoadCredentialEncrypted=` in the unit).
    Credential(String),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "PinSource::File({})", p.display()),
            PinSource::Credential(n) => write!(f, "PinSource::Credential({n})"),
        }
    }
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "file {}", p.display()),
            PinSource::Credential(n) => write!(f, "systemd credential {n:?}"),
        }
    }
}

impl PinSource {
    /// The file this source reads.
    pub fn path(&self) -> Result<PathBuf, HsmError> {
        match self {
            PinSource::File(p) => Ok(p.clone()),
            PinSource::Credential(name) => {
                credential_path(std::env::var_os("CREDENTIALS_DIRECTORY"), name)
            }
        }
    }

    /// Reads the secret. The result is zeroized when dropped; errors name the source,
    /// never its content.
    pub fn load(&self) -> Result<SecretString, HsmError> {
        let path = self.path()?;
        let err = |reason: String| HsmError::PinSource {
            source_desc: self.to_string(),
            reason,
        };
        let mut file = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        crate::memory::check_private_file(&meta).map_err(err)?;
        if meta.len() > MAX_PIN_LEN as u64 {
            return Err(err(format!("longer than {MAX_PIN_LEN} bytes")));
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PIN_LEN + 1));
        (&mut file)
            .take(MAX_PIN_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        if buf.len() > MAX_PIN_LEN {
            return Err(err(format!("longer than {MAX_PIN_LEN} bytes")));
        }
        let mut end = buf.len();
        if end > 0 && buf[end - 1] == b'\n' {
            end -= 1;
            if end > 0 && buf[end - 1] == b'\r' {
                end -= 1;
            }
        }
        if end == 0 {
            return Err(err("empty".into()));
        }
        let text = std::str::from_utf8(&buf[..end]).map_err(|_| err("not valid utf-8".into()))?;
        Ok(SecretString::from(text))
    }
}

/// `$CREDENTIALS_DIRECTORY/<name>`, given the variable's value.
fn credential_path(dir: Option<std::ffi::OsString>, name: &str) -> Result<PathBuf, HsmError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(HsmError::Config(format!(
            "invalid credential name {name:?}"
        )));
    }
    let dir = dir.ok_or_else(|| HsmError::PinSource {
        source_desc: format!("systemd credential {name:?}"),
        reason: "CREDENTIALS_DIRECTORY is not set (not started by systemd with LoadCredential=?)"
            .into(),
    })?;
    Ok(PathBuf::from(dir).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn pin_file(content: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(content).expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    #[test]
    fn pin_file_trailing_newline_is_stripped() {
        let f = pin_file(b"1234\n", 0o600);
        let pin = PinSource::File(f.path().into())
            .load()
            .expect("readable pin");
        assert_eq!(pin.expose_secret(), "1234");
    }

    #[test]
    fn world_readable_pin_file_is_rejected_without_echoing_the_pin() {
        let f = pin_file(b"s3cr3t-pin\n", 0o644);
        let e = PinSource::File(f.path().into())
            .load()
            .expect_err("mode 644 must fail");
        let msg = e.to_string();
        assert!(msg.contains("other users"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn group_readable_pin_file_is_rejected() {
        let f = pin_file(b"s3cr3t-pin\n", 0o640);
        let msg = PinSource::File(f.path().into())
            .load()
            .expect_err("mode 640 must fail")
            .to_string();
        assert!(
            msg.contains("mode 640") && msg.contains("chmod 600"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let f = pin_file(b"1234\n", 0o400);
        assert!(PinSource::File(f.path().into()).load().is_ok());
    }

    #[test]
    fn pin_file_of_another_user_is_rejected() {
        let f = pin_file(b"s3cr3t-pin\n", 0o600);
        if crate::memory::effective_uid() != 0 {
            // Only root can give a file away; as another user, check our own file passes.
            assert!(PinSource::File(f.path().into()).load().is_ok());
            return;
        }
        std::os::unix::fs::chown(f.path(), Some(65534), Some(65534)).expect("chown");
        let msg = PinSource::File(f.path().into())
            .load()
            .expect_err("foreign owner must fail")
            .to_string();
        assert!(msg.contains("owned by uid 65534"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn oversized_and_empty_pin_files_are_rejected() {
        let big = pin_file(&[b'1'; MAX_PIN_LEN + 1], 0o600);
        assert!(matches!(
            PinSource::File(big.path().into()).load(),
            Err(HsmError::PinSource { .. })
        ));
        let empty = pin_file(b"\n", 0o600);
        assert!(matches!(
            PinSource::File(empty.path().into()).load(),
            Err(HsmError::PinSource { .. })
        ));
    }

    #[test]
    fn credential_resolves_inside_the_credentials_directory() {
        let p = credential_path(Some("/run/credentials/signer.service".into()), "hsm-pin")
            .expect("path");
        assert_eq!(p, PathBuf::from("/run/credentials/signer.service/hsm-pin"));
        assert!(matches!(
            credential_path(None, "hsm-pin"),
            Err(HsmError::PinSource { .. })
        ));
    }

    #[test]
    fn credential_name_with_slash_is_rejected() {
        let e = PinSource::Credential("../etc/passwd".into())
            .path()
            .expect_err("slash");
        assert!(matches!(e, HsmError::Config(_)));
    }
}
