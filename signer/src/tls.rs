//! rustls configuration shared by the API server and clients.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// File.
        path: String,
        /// What is missing.
        what: &'static str,
    },
    /// A private key file is readable by others or owned by another user.
    #[error("refusing private key file {path}: {reason}")]
    InsecureKeyFile {
        /// File.
        path: String,
        /// What is wrong with its mode or owner.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs the ring provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads all certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read_bounded(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no certificate found",
        });
    }
    Ok(certs)
}

/// Loads the private key of a PEM file, which must be mode 0600 (or stricter) and
/// owned by the user the process runs as. The file buffer is zeroized.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    hsm::memory::check_private_file(&meta).map_err(|reason| TlsError::InsecureKeyFile {
        path: path.display().to_string(),
        reason,
    })?;
    let data = zeroize::Zeroizing::new(read_bounded(path)?);
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?
        .ok_or(TlsError::Pem {
            path: path.display().to_string(),
            what: "no private key found",
        })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > 1024 * 1024 {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "file larger than 1 MiB",
        });
    }
    std::fs::read(path).map_err(err)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration of the HTTPS API (node certificate, no client certs).
pub fn api_server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts only the cluster CA.
pub fn api_client(ca_cert: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = read_bounded(ca_cert)?;
    let cert = reqwest::Certificate::from_pem(&pem)?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), b"-----BEGIN PRIVATE KEY-----\nnot a key\n").expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    #[test]
    fn tls_key_file_must_be_0600_and_owned_by_the_service_user() {
        for mode in [0o640, 0o644, 0o604, 0o660] {
            let f = key_file(mode);
            let e = load_key(f.path()).expect_err("group/other access must fail");
            assert!(
                matches!(e, TlsError::InsecureKeyFile { .. }),
                "{mode:o}: {e}"
            );
            assert!(!e.to_string().contains("not a key"), "{e}");
        }
        // 0600: the mode passes; this file then fails as a key, not as a mode.
        let f = key_file(0o600);
        let e = load_key(f.path()).expect_err("not a key");
        assert!(!matches!(e, TlsError::InsecureKeyFile { .. }), "{e}");
        if hsm::memory::effective_uid() == 0 {
            std::os::unix::fs::chown(f.path(), Some(65534), None).expect("chown");
            let e = load_key(f.path()).expect_err("foreign owner must fail");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }
}
