//! The cluster's private certificate authority.
//!
//! One CA per cluster signs one certificate per node. The node identity lives in
//! the certificate's only subject alternative name, the DNS name
//! `<node_id>.signer.internal`, which is also the TLS server name peers dial.
//! Keys are ECDSA P-256; private keys are written with mode 0600.
//!
//! Layout of a CA directory:
//!
//! ```text
//! D/ca.pem                      CA certificate (public)
//! D/ca.key                      CA private key (0600)
//! D/nodes/<node_id>/cert.pem    node certificate
//! D/nodes/<node_id>/key.pem     node private key (0600)
//! ```

mod cli;
pub(crate) mod files;

pub use cli::CaCommand;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// DNS suffix appended to a node id to form its certificate identity.
pub const IDENTITY_DNS_SUFFIX: &str = ".signer.internal";
/// Longest accepted node id.
pub const MAX_NODE_ID_LEN: usize = 32;
/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// CA validity in days (10 years).
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Default node certificate validity in days.
pub const DEFAULT_NODE_VALIDITY_DAYS: u32 = 365;

/// Largest PEM file (certificate or key) this module reads.
pub(crate) const MAX_PEM_BYTES: u64 = 64 * 1024;
/// Backdating of `not_before`, to tolerate small clock differences between hosts.
const CLOCK_SKEW: time::Duration = time::Duration::hours(1);

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The node id does not match `[a-z0-9-]{1,32}`.
    #[error("invalid node id {id:?}: expected 1-32 characters of [a-z0-9-]")]
    InvalidNodeId {
        /// The rejected id.
        id: String,
    },
    /// `init_ca` found an existing CA and refused to overwrite it.
    #[error("a ca already exists at {path}; refusing to overwrite it")]
    AlreadyInitialized {
        /// The existing file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than this module accepts.
    #[error("{path} is larger than {max} bytes")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A private key file is readable by others or owned by another user.
    #[error("refusing private key file {path}: {reason}")]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its mode or owner.
        reason: String,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path} does not contain a valid {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("ca key {key} does not match ca certificate {cert}")]
    CaKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The requested validity is empty or outlives the CA.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// Why.
        reason: String,
    },
    /// A certificate could not be parsed.
    #[error("certificate cannot be parsed: {reason}")]
    ParseCertificate {
        /// Parser message.
        reason: String,
    },
    /// A certificate does not carry exactly one well-formed node identity.
    #[error("certificate has no valid node identity: {reason}")]
    BadIdentity {
        /// What is wrong.
        reason: String,
    },
}

/// What `init_ca` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    /// Path of the CA certificate (`ca.pem`).
    pub cert_path: PathBuf,
    /// Path of the CA private key (`ca.key`, mode 0600).
    pub key_path: PathBuf,
    /// The CA's subject common name.
    pub common_name: String,
    /// Lower-case hex SHA-256 of the CA certificate DER.
    pub sha256_fingerprint: String,
}

/// Files of an issued node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertPaths {
    /// The node id the certificate identifies.
    pub node_id: String,
    /// The DNS SAN / TLS server name, `<node_id>.signer.internal`.
    pub dns_name: String,
    /// Path of the node certificate PEM.
    pub cert: PathBuf,
    /// Path of the node private key PEM (mode 0600).
    pub key: PathBuf,
}

/// Checks that `id` is a valid node id: 1 to 32 characters of `[a-z0-9-]`.
pub fn validate_node_id(id: &str) -> Result<(), CaError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidNodeId { id: id.to_owned() })
    }
}

/// The certificate identity (DNS SAN and TLS server name) of a node id.
pub fn identity_dns_name(node_id: &str) -> Result<String, CaError> {
    validate_node_id(node_id)?;
    Ok(format!("{node_id}{IDENTITY_DNS_SUFFIX}"))
}

/// Creates a new CA in `dir`: `ca.pem` and `ca.key` (mode 0600).
///
/// ECDSA P-256, CA basic constraints (path length 0), 10-year validity, common
/// name `signer cluster CA <random suffix>`. Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<CaInfo, CaError> {
    files::create_private_dir(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for existing in [&key_path, &cert_path] {
        if existing.exists() {
            return Err(CaError::AlreadyInitialized {
                path: existing.clone(),
            });
        }
    }

    let suffix: [u8; 4] = rand::random();
    let common_name = format!("signer cluster CA {}", hex::encode(suffix));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name.as_str());
    dn.push(DnType::OrganizationName, "signer");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + time::Duration::days(i64::from(CA_VALIDITY_DAYS));
    let cert = params.self_signed(&key)?;

    let key_pem = Zeroizing::new(key.serialize_pem());
    files::write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    files::write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;

    tracing::info!(
        dir = %dir.display(),
        common_name = %common_name,
        "created cluster ca"
    );
    Ok(CaInfo {
        cert_path,
        key_path,
        common_name,
        sha256_fingerprint: hex::encode(Sha256::digest(cert.der())),
    })
}

/// Issues a certificate for `node_id`, valid for `validity_days` from now, signed by
/// the CA in `dir`, and writes `dir/nodes/<node_id>/{cert.pem,key.pem}` (key 0600).
///
/// The certificate has the DNS SAN `<node_id>.signer.internal`, CN = `node_id` and
/// EKU serverAuth + clientAuth. Re-issuing replaces the node's files atomically.
pub fn issue_node_cert(
    dir: &Path,
    node_id: &str,
    validity_days: u32,
) -> Result<NodeCertPaths, CaError> {
    if validity_days == 0 {
        return Err(CaError::InvalidValidity {
            reason: "validity must be at least one day".into(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now + time::Duration::days(i64::from(validity_days));
    issue_node_cert_with_validity(dir, node_id, now - CLOCK_SKEW, not_after)
}

/// Like [`issue_node_cert`], with an explicit validity window, which may lie in
/// the past. Meant for tests (expired or not-yet-valid certificates); operators
/// use [`issue_node_cert`].
#[doc(hidden)]
pub fn issue_node_cert_with_validity(
    dir: &Path,
    node_id: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<NodeCertPaths, CaError> {
    issue_inner(dir, node_id, not_before, not_after, &[])
}

/// Like [`issue_node_cert`], and also valid as a TLS server name for the given IP
/// addresses (so API clients can connect to `https://<ip>:<port>`). The node
/// identity stays the single DNS name; IP entries never carry identity.
pub fn issue_node_cert_for_ips(
    dir: &Path,
    node_id: &str,
    validity_days: u32,
    ips: &[std::net::IpAddr],
) -> Result<NodeCertPaths, CaError> {
    if validity_days == 0 {
        return Err(CaError::InvalidValidity {
            reason: "validity must be at least one day".into(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now + time::Duration::days(i64::from(validity_days));
    issue_inner(dir, node_id, now - CLOCK_SKEW, not_after, ips)
}

fn issue_inner(
    dir: &Path,
    node_id: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ips: &[std::net::IpAddr],
) -> Result<NodeCertPaths, CaError> {
    let dns_name = identity_dns_name(node_id)?;
    if not_after <= not_before {
        return Err(CaError::InvalidValidity {
            reason: "not_after must be later than not_before".into(),
        });
    }
    let ca = LoadedCa::load(dir)?;
    if not_after > ca.not_after {
        return Err(CaError::InvalidValidity {
            reason: format!(
                "node certificate would outlive the ca (ca expires {})",
                ca.not_after
            ),
        });
    }

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(dns_name.clone().try_into()?)];
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;

    let node_dir = dir.join("nodes").join(node_id);
    files::create_private_dir(&node_dir)?;
    let cert_path = node_dir.join("cert.pem");
    let key_path = node_dir.join("key.pem");
    let key_pem = Zeroizing::new(key.serialize_pem());
    files::write_replace(&key_path, key_pem.as_bytes(), 0o600)?;
    files::write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;

    tracing::info!(node_id, dir = %node_dir.display(), "issued node certificate");
    Ok(NodeCertPaths {
        node_id: node_id.to_owned(),
        dns_name,
        cert: cert_path,
        key: key_path,
    })
}

/// The end of validity of the (single) certificate in the PEM file `path`.
pub fn certificate_not_after(path: &Path) -> Result<chrono::DateTime<chrono::Utc>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let der = files::parse_single_cert_pem(&pem, path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::ParseCertificate {
            reason: format!("{}: {e}", path.display()),
        })?;
    chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0).ok_or_else(|| {
        CaError::ParseCertificate {
            reason: format!("{}: notAfter out of range", path.display()),
        }
    })
}

/// Extracts the node id from a DER certificate's subject alternative name.
///
/// The certificate must carry exactly one DNS name SAN, of the exact form
/// `<node_id>.signer.internal` with a valid node id; IP address SANs (for the API)
/// may accompany it; any other SAN type is refused. This does not verify the
/// certificate chain: call it on certificates the TLS layer already verified.
pub fn node_identity_from_cert(der: &[u8]) -> Result<String, CaError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::ParseCertificate {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CaError::ParseCertificate {
            reason: "trailing bytes after the certificate".into(),
        });
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::BadIdentity {
            reason: format!("malformed subject alternative name: {e}"),
        })?
        .ok_or_else(|| CaError::BadIdentity {
            reason: "no subject alternative name".into(),
        })?;
    use x509_parser::extensions::GeneralName;
    let names = &san.value.general_names;
    if let Some(other) = names
        .iter()
        .find(|n| !matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
    {
        return Err(CaError::BadIdentity {
            reason: format!("unexpected subject alternative name {other:?}"),
        });
    }
    let dns: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    let [name] = dns.as_slice() else {
        return Err(CaError::BadIdentity {
            reason: format!("expected exactly one dns name, found {}", dns.len()),
        });
    };
    let id = name
        .strip_suffix(IDENTITY_DNS_SUFFIX)
        .ok_or_else(|| CaError::BadIdentity {
            reason: format!("dns name {name:?} is not under {IDENTITY_DNS_SUFFIX}"),
        })?;
    validate_node_id(id).map_err(|_| CaError::BadIdentity {
        reason: format!("dns name {name:?} does not hold a valid node id"),
    })?;
    Ok(id.to_owned())
}

/// A CA loaded from disk, ready to sign.
struct LoadedCa {
    /// Issuer view of the CA certificate (subject, key identifier).
    cert: rcgen::Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl LoadedCa {
    fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = files::read_bounded(&cert_path, MAX_PEM_BYTES)?;
        let cert_pem = String::from_utf8(cert_pem).map_err(|_| CaError::BadPem {
            path: cert_path.clone(),
            what: "certificate",
        })?;
        let key_pem = Zeroizing::new(files::read_bounded(&key_path, MAX_PEM_BYTES)?);
        let key_pem = std::str::from_utf8(&key_pem).map_err(|_| CaError::BadPem {
            path: key_path.clone(),
            what: "private key",
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| CaError::BadPem {
            path: key_path.clone(),
            what: "private key",
        })?;

        let der = files::parse_single_cert_pem(cert_pem.as_bytes(), &cert_path)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::ParseCertificate {
                reason: format!("{}: {e}", cert_path.display()),
            })?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(CaError::CaKeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let params =
            CertificateParams::from_ca_cert_der(&der).map_err(|e| CaError::ParseCertificate {
                reason: format!("{}: {e}", cert_path.display()),
            })?;
        // Re-signing the parsed parameters gives rcgen an issuer with the CA's exact
        // subject and key identifier; the resulting certificate itself is discarded.
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert,
            key,
            not_after,
        })
    }
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests;
