//! File helpers for certificates and keys: bounded reads, private writes.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::CaError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and missing parents with mode 0700 (existing directories are kept).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Reads a whole file, refusing files larger than `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, CaError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > max {
        return Err(CaError::FileTooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// Writes a new file with `mode`; fails if it exists.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::AlreadyInitialized {
                    path: path.to_path_buf(),
                }
            } else {
                CaError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Writes `contents` to `path` atomically (temporary file with `mode`, then rename).
pub(crate) fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let suffix: [u8; 6] = rand::random();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Parses a PEM buffer that must hold exactly one certificate.
pub(crate) fn parse_single_cert_pem(
    pem: &[u8],
    path: &Path,
) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = parse_cert_chain_pem(pem, path)?;
    if certs.len() != 1 {
        return Err(CaError::BadPem {
            path: path.to_path_buf(),
            what: "single certificate",
        });
    }
    Ok(certs.remove(0))
}

/// Parses all certificates of a PEM buffer (at least one).
pub(crate) fn parse_cert_chain_pem(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bad = || CaError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
    };
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(bad());
    }
    Ok(certs)
}

/// Reads a certificate chain PEM file (bounded).
pub(crate) fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read_bounded(path, super::MAX_PEM_BYTES)?;
    parse_cert_chain_pem(&pem, path)
}

/// Reads a private key PEM file (bounded); the file buffer is zeroized. The file
/// must be mode 0600 (or stricter) and owned by the user the process runs as.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CaError> {
    let meta = std::fs::metadata(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    hsm::memory::check_private_file(&meta).map_err(|reason| CaError::InsecureKeyFile {
        path: path.to_path_buf(),
        reason,
    })?;
    let pem = Zeroizing::new(read_bounded(path, super::MAX_PEM_BYTES)?);
    rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| CaError::BadPem {
            path: path.to_path_buf(),
            what: "private key",
        })
}
