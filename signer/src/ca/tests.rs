#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::*;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der_of(path: &Path) -> Vec<u8> {
    files::read_cert_chain(path).unwrap().remove(0).to_vec()
}

#[test]
fn node_ids_are_validated() {
    for ok in ["a", "node-1", "0", &"x".repeat(32)] {
        assert!(validate_node_id(ok).is_ok(), "{ok:?} should be valid");
    }
    for bad in [
        "",
        "Node1",
        "node_1",
        "node.1",
        "../etc",
        "a b",
        "nodé",
        &"x".repeat(33),
    ] {
        assert!(
            matches!(validate_node_id(bad), Err(CaError::InvalidNodeId { .. })),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn init_ca_writes_a_p256_ca_with_private_key_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let info = init_ca(dir.path()).unwrap();
    assert_eq!(mode(&info.key_path), 0o600);
    assert!(info.common_name.starts_with("signer cluster CA "));
    assert!(info.common_name.len() > "signer cluster CA ".len());

    let der = der_of(&info.cert_path);
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&der)),
        info.sha256_fingerprint
    );
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert!(cert.is_ca());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), info.common_name);
    // ECDSA P-256 key, self-signed.
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    cert.verify_signature(None).unwrap();
    let v = cert.validity();
    let days = (v.not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
    assert!((3649..=3650).contains(&days), "validity {days} days");
    assert!(v.is_valid());
}

#[test]
fn init_ca_refuses_to_overwrite_an_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let first = init_ca(dir.path()).unwrap();
    let before = std::fs::read(&first.key_path).unwrap();
    assert!(matches!(
        init_ca(dir.path()),
        Err(CaError::AlreadyInitialized { .. })
    ));
    assert_eq!(std::fs::read(&first.key_path).unwrap(), before);
}

#[test]
fn issued_node_cert_carries_identity_eku_and_ca_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init_ca(dir.path()).unwrap();
    let node = issue_node_cert(dir.path(), "node-3", 30).unwrap();
    assert_eq!(node.dns_name, "node-3.signer.internal");
    assert_eq!(node.cert, dir.path().join("nodes/node-3/cert.pem"));
    assert_eq!(node.key, dir.path().join("nodes/node-3/key.pem"));
    assert_eq!(mode(&node.key), 0o600);

    let ca_der = der_of(&ca.cert_path);
    let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
    let der = der_of(&node.cert);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    assert!(!cert.is_ca());
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "node-3");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let has_aki = cert.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )
    });
    assert!(has_aki);
    let days = (cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
    assert!((29..=30).contains(&days));
    assert_eq!(node_identity_from_cert(&der).unwrap(), "node-3");

    // The key file holds the key of the certificate.
    let key_pem = std::fs::read_to_string(&node.key).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
}

#[test]
fn reissuing_a_node_cert_replaces_key_and_cert() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    let a = issue_node_cert(dir.path(), "n1", 10).unwrap();
    let first = std::fs::read(&a.key).unwrap();
    let b = issue_node_cert(dir.path(), "n1", 10).unwrap();
    assert_eq!(a, b);
    assert_ne!(std::fs::read(&b.key).unwrap(), first);
    assert_eq!(mode(&b.key), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nodes/n1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn issue_rejects_bad_ids_and_validity() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    assert!(matches!(
        issue_node_cert(dir.path(), "../evil", 10),
        Err(CaError::InvalidNodeId { .. })
    ));
    assert!(!dir.path().join("evil").exists());
    assert!(matches!(
        issue_node_cert(dir.path(), "n1", 0),
        Err(CaError::InvalidValidity { .. })
    ));
    assert!(matches!(
        issue_node_cert(dir.path(), "n1", 3651),
        Err(CaError::InvalidValidity { .. })
    ));
    let now = OffsetDateTime::now_utc();
    assert!(matches!(
        issue_node_cert_with_validity(dir.path(), "n1", now, now - ::time::Duration::days(1)),
        Err(CaError::InvalidValidity { .. })
    ));
}

#[test]
fn issue_without_ca_fails_with_io_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        issue_node_cert(dir.path(), "n1", 10),
        Err(CaError::Io { .. })
    ));
}

#[test]
fn issue_detects_a_ca_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    init_ca(other.path()).unwrap();
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    assert!(matches!(
        issue_node_cert(dir.path(), "n1", 10),
        Err(CaError::CaKeyMismatch { .. })
    ));
}

#[test]
fn oversized_ca_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    let big = vec![b'A'; (MAX_PEM_BYTES + 1) as usize];
    std::fs::write(dir.path().join(CA_CERT_FILE), big).unwrap();
    assert!(matches!(
        issue_node_cert(dir.path(), "n1", 10),
        Err(CaError::FileTooLarge { .. })
    ));
}

#[test]
fn expired_certificates_can_be_issued_for_tests() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc();
    let p = issue_node_cert_with_validity(
        dir.path(),
        "old",
        now - ::time::Duration::days(10),
        now - ::time::Duration::days(1),
    )
    .unwrap();
    let der = der_of(&p.cert);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert!(!cert.validity().is_valid());
}

fn self_signed_with_sans(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.self_signed(&key).unwrap().der().to_vec()
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

#[test]
fn identity_extraction_requires_exactly_one_well_formed_name() {
    let good = self_signed_with_sans(vec![dns("n-1.signer.internal")]);
    assert_eq!(node_identity_from_cert(&good).unwrap(), "n-1");

    let cases = [
        vec![],
        vec![dns("n-1.signer.internal.evil.com")],
        vec![dns("n-1.example.com")],
        vec![dns("N1.signer.internal")],
        vec![dns(".signer.internal")],
        vec![dns("a.b.signer.internal")],
        vec![dns("n-1.signer.internal"), dns("n-2.signer.internal")],
        vec![SanType::IpAddress([127, 0, 0, 1].into())],
        vec![
            dns("n-1.signer.internal"),
            SanType::URI("spiffe://n-2".try_into().unwrap()),
        ],
    ];
    for sans in cases {
        let der = self_signed_with_sans(sans.clone());
        assert!(
            matches!(
                node_identity_from_cert(&der),
                Err(CaError::BadIdentity { .. })
            ),
            "{sans:?} should be rejected"
        );
    }
}

#[test]
fn an_ip_san_beside_the_identity_name_is_allowed_and_carries_no_identity() {
    let der = self_signed_with_sans(vec![
        dns("n-1.signer.internal"),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ]);
    assert_eq!(node_identity_from_cert(&der).unwrap(), "n-1");
}

#[test]
fn identity_extraction_rejects_garbage_and_trailing_bytes() {
    assert!(matches!(
        node_identity_from_cert(b"not a certificate"),
        Err(CaError::ParseCertificate { .. })
    ));
    let mut der = self_signed_with_sans(vec![dns("n-1.signer.internal")]);
    der.push(0);
    assert!(matches!(
        node_identity_from_cert(&der),
        Err(CaError::ParseCertificate { .. })
    ));
}

#[test]
fn ca_cli_init_and_issue_produce_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = CaCommand::Init {
        dir: dir.path().join("ca"),
    }
    .run()
    .unwrap();
    assert!(out.contains("created CA"));
    let out = CaCommand::Issue {
        node: "n9".into(),
        dir: dir.path().join("ca"),
        days: 5,
        ips: vec!["127.0.0.1".parse().unwrap()],
    }
    .run()
    .unwrap();
    assert!(out.contains("n9.signer.internal"));
    assert!(dir.path().join("ca/nodes/n9/key.pem").exists());
    // An IP SAN for the API does not change the identity.
    let pem = std::fs::read(dir.path().join("ca/nodes/n9/cert.pem")).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(node_identity_from_cert(&der).unwrap(), "n9");
    assert_eq!(mode(&dir.path().join("ca")), 0o700);
}

#[test]
fn node_identity_key_is_refused_unless_0600_and_owned_by_the_service_user() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    let node = issue_node_cert(dir.path(), "node-4", 30).unwrap();
    assert!(files::read_private_key(&node.key).is_ok());
    for m in [0o640, 0o644, 0o660] {
        std::fs::set_permissions(&node.key, std::fs::Permissions::from_mode(m)).unwrap();
        let e = files::read_private_key(&node.key).unwrap_err();
        assert!(matches!(e, CaError::InsecureKeyFile { .. }), "{m:o}: {e}");
    }
    std::fs::set_permissions(&node.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if hsm::memory::effective_uid() == 0 {
        std::os::unix::fs::chown(&node.key, Some(65534), None).unwrap();
        let e = files::read_private_key(&node.key).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}
