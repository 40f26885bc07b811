//! Audit export bundles: the line format and its incremental writer (pure; see
//! `docs/AUDIT.md`, "Bundle format").
//!
//! A bundle is JSON Lines: one JSON object per line, each with a `type`. In order:
//! `header`; `ca`; one `node` per node (vote key, certificate, key binding, the
//! declared range of its records); `policy` lines; `checkpoint` lines; then the
//! `row` lines of each node in sequence order; last the `manifest`, which carries
//! the SHA-256 of every byte before it and the exporting node's Ed25519 signature.
//! A node that fails mid-export writes an `error` line and no manifest, so a
//! truncated bundle never verifies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::checkpoint::{hex_array, Checkpoint, SIGNATURE_LEN};
use super::AuditRecord;

/// `format` of the header.
pub const BUNDLE_FORMAT: &str = "signer-audit-bundle";
/// Version of the bundle format.
pub const BUNDLE_VERSION: u32 = 1;
/// Longest line a verifier accepts.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Audit action of a recorded policy version (details: [`PolicyVersion`]).
pub const POLICY_ACTION: &str = "policy.version";
/// Longest policy text kept in a `policy.version` record (longer: hash only).
pub const MAX_POLICY_TEXT: usize = 256 * 1024;

const MANIFEST_DOMAIN: &[u8] = b"signer/audit-bundle/v1\0";
const KEY_BINDING_DOMAIN: &[u8] = b"signer/vote-key-binding/v1\0";

/// One line of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// First line.
    Header(Header),
    /// The cluster CA.
    Ca(CaEntry),
    /// One node: keys, certificate, range of its records.
    Node(NodeEntry),
    /// A policy version in force during the range.
    Policy(PolicyEntry),
    /// A checkpoint as the exporting node stored it.
    Checkpoint(CheckpointEntry),
    /// One audit record of one node.
    Row(RowEntry),
    /// The export failed here; no manifest follows.
    Error(ErrorEntry),
    /// Last line.
    Manifest(Manifest),
}

/// The bundle header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_VERSION`].
    pub version: u32,
    /// Bundle id (also in the manifest's signature).
    pub bundle_id: Uuid,
    /// Cluster name.
    pub cluster_id: String,
    /// The node that wrote the bundle.
    pub exporter: String,
    /// When the export started.
    pub created_at: DateTime<Utc>,
    /// Requested range: records from this time...
    pub from: DateTime<Utc>,
    /// ...to this time (each node's records are widened to the enclosing
    /// checkpoints, see [`NodeEntry`]).
    pub to: DateTime<Utc>,
    /// The cluster threshold: the fewest co-signatures a checkpoint may have.
    pub threshold: u16,
    /// Every node of the cluster.
    pub nodes: Vec<String>,
}

/// The cluster CA certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaEntry {
    /// PEM.
    pub pem: String,
}

/// A node's vote key signed with its TLS key (whose certificate the CA issued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBinding {
    /// `ecdsa_p256_sha256`, `ecdsa_p384_sha384` or `ed25519`.
    pub scheme: String,
    /// Signature (hex) over [`key_binding_message`].
    pub signature: String,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id.
    pub node_id: String,
    /// Its Ed25519 vote key (as the exporting node pinned it).
    #[serde(with = "hex_array")]
    pub vote_key: [u8; 32],
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its vote key signed with the certificate's key.
    pub key_binding: Option<KeyBinding>,
    /// Its audit head when the export started.
    pub head_seq: i64,
    /// Hash of that head.
    #[serde(with = "hex_array")]
    pub head_hash: [u8; 32],
    /// First record in the bundle: at or before the first record at or after
    /// `from`, back to the node's head in the last checkpoint before `from`.
    pub from_seq: i64,
    /// Last record in the bundle: at or after the last record at or before `to`,
    /// up to the node's head in the first checkpoint after `to`.
    pub to_seq: i64,
}

/// A policy version recorded by a node (`policy.version` record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// The node.
    pub node_id: String,
    /// Its `policy.version` record.
    pub seq: i64,
    /// When it was recorded.
    pub ts: DateTime<Utc>,
    /// The record's details.
    pub policy: PolicyVersion,
}

/// Details of a `policy.version` record: the policy a node loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersion {
    /// The policy hash in votes (hex); `None` when the file does not load.
    pub hash: Option<String>,
    /// SHA-256 of the file (hex).
    pub text_sha256: String,
    /// The file, unless longer than [`MAX_POLICY_TEXT`].
    pub text: Option<String>,
    /// Why the file does not load, if it does not.
    #[serde(default)]
    pub error: Option<String>,
}

impl PolicyVersion {
    /// The version of policy file `text` (`None`: no file configured).
    pub fn of_text(text: &str) -> PolicyVersion {
        let (hash, error) = match policy::Policy::from_toml_str(text, "policy") {
            Ok(p) => (Some(p.hash().to_hex()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        PolicyVersion {
            hash,
            text_sha256: hex::encode(Sha256::digest(text.as_bytes())),
            text: (text.len() <= MAX_POLICY_TEXT).then(|| text.to_owned()),
            error,
        }
    }

    /// Whether the text (when present) matches `text_sha256` and `hash`; the reason
    /// when it does not.
    pub fn check(&self) -> Result<(), String> {
        let Some(text) = &self.text else {
            return Ok(());
        };
        if hex::encode(Sha256::digest(text.as_bytes())) != self.text_sha256 {
            return Err("policy text does not match its SHA-256".to_owned());
        }
        let actual = policy::Policy::from_toml_str(text, "policy")
            .ok()
            .map(|p| p.hash().to_hex());
        if actual != self.hash {
            return Err("policy text does not have the recorded policy hash".to_owned());
        }
        Ok(())
    }
}

/// A checkpoint line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEntry {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
}

/// A record line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowEntry {
    /// The node whose log holds it.
    pub node: String,
    /// The record.
    pub record: AuditRecord,
}

/// An error line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorEntry {
    /// What went wrong.
    pub message: String,
}

/// The last line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The header's bundle id.
    pub bundle_id: Uuid,
    /// The exporting node (its vote key signs).
    pub exporter: String,
    /// Lines before this one.
    pub lines: u64,
    /// SHA-256 of every byte before this line.
    #[serde(with = "hex_array")]
    pub sha256: [u8; 32],
    /// Records per node.
    pub rows: BTreeMap<String, u64>,
    /// Checkpoint lines.
    pub checkpoints: u64,
    /// The exporter's Ed25519 signature over [`manifest_message`].
    #[serde(with = "hex_array")]
    pub signature: [u8; SIGNATURE_LEN],
}

fn put_str8(m: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let len = u8::try_from(b.len()).unwrap_or(u8::MAX);
    m.push(len);
    m.extend_from_slice(&b[..usize::from(len)]);
}

/// The bytes the exporter signs: domain ‖ bundle id ‖ str8 exporter ‖ lines (u64)
/// ‖ SHA-256 of the lines ‖ per node in order: str8 node ‖ records (u64) ‖
/// checkpoints (u64).
pub fn manifest_message(
    bundle_id: Uuid,
    exporter: &str,
    lines: u64,
    sha256: &[u8; 32],
    rows: &BTreeMap<String, u64>,
    checkpoints: u64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128 + rows.len() * 48);
    m.extend_from_slice(MANIFEST_DOMAIN);
    m.extend_from_slice(bundle_id.as_bytes());
    put_str8(&mut m, exporter);
    m.extend_from_slice(&lines.to_be_bytes());
    m.extend_from_slice(sha256);
    for (node, n) in rows {
        put_str8(&mut m, node);
        m.extend_from_slice(&n.to_be_bytes());
    }
    m.extend_from_slice(&checkpoints.to_be_bytes());
    m
}

/// The bytes a node signs with its TLS key to bind its vote key to its certificate.
pub fn key_binding_message(node_id: &str, vote_key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(KEY_BINDING_DOMAIN.len() + 33 + 32);
    m.extend_from_slice(KEY_BINDING_DOMAIN);
    put_str8(&mut m, node_id);
    m.extend_from_slice(vote_key);
    m
}

/// Signs node `node_id`'s vote key with its TLS private key `key` (the key of the
/// certificate the cluster CA issued), so an auditor who trusts the CA trusts the
/// vote key.
pub fn sign_key_binding(
    key: &rustls::pki_types::PrivateKeyDer<'_>,
    node_id: &str,
    vote_key: &[u8; 32],
) -> Result<KeyBinding, String> {
    use rustls::SignatureScheme as S;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| format!("TLS key: {e}"))?;
    let signer = signing
        .choose_scheme(&[
            S::ECDSA_NISTP256_SHA256,
            S::ECDSA_NISTP384_SHA384,
            S::ED25519,
        ])
        .ok_or_else(|| "TLS key type cannot sign a key binding".to_owned())?;
    let scheme = match signer.scheme() {
        S::ECDSA_NISTP256_SHA256 => "ecdsa_p256_sha256",
        S::ECDSA_NISTP384_SHA384 => "ecdsa_p384_sha384",
        S::ED25519 => "ed25519",
        other => return Err(format!("unexpected signature scheme {other:?}")),
    };
    let sig = signer
        .sign(&key_binding_message(node_id, vote_key))
        .map_err(|e| format!("signing the key binding: {e}"))?;
    Ok(KeyBinding {
        scheme: scheme.to_owned(),
        signature: hex::encode(sig),
    })
}

/// Writes a bundle line by line, hashing as it goes: nothing but counters is kept.
#[derive(Debug, Default)]
pub struct BundleWriter {
    hasher: Sha256,
    lines: u64,
    rows: BTreeMap<String, u64>,
    checkpoints: u64,
}

impl BundleWriter {
    /// A writer with nothing written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes of `line` (JSON and a newline), counted in the manifest.
    pub fn line(&mut self, line: &Line) -> Vec<u8> {
        match line {
            Line::Row(r) => *self.rows.entry(r.node.clone()).or_insert(0) += 1,
            Line::Checkpoint(_) => self.checkpoints += 1,
            _ => {}
        }
        let mut b = serde_json::to_vec(line).unwrap_or_default();
        b.push(b'\n');
        self.hasher.update(&b);
        self.lines += 1;
        b
    }

    /// Declares node `node`, so the manifest counts its records even when it has
    /// none.
    pub fn expect_node(&mut self, node: &str) {
        self.rows.entry(node.to_owned()).or_insert(0);
    }

    /// The manifest line, signed by `sign` (the exporter's vote key).
    pub fn finish(
        self,
        bundle_id: Uuid,
        exporter: &str,
        sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Vec<u8> {
        let sha256: [u8; 32] = self.hasher.finalize().into();
        let signature = sign(&manifest_message(
            bundle_id,
            exporter,
            self.lines,
            &sha256,
            &self.rows,
            self.checkpoints,
        ));
        let m = Line::Manifest(Manifest {
            bundle_id,
            exporter: exporter.to_owned(),
            lines: self.lines,
            sha256,
            rows: self.rows,
            checkpoints: self.checkpoints,
            signature,
        });
        let mut b = serde_json::to_vec(&m).unwrap_or_default();
        b.push(b'\n');
        b
    }
}
