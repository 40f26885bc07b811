//! Offline verification of an export bundle (`signer audit verify-export`): no
//! network, no database. Reads the bundle twice, line by line, so its size does not
//! matter: the first pass collects the keys, certificates and every checkpoint (the
//! checkpoint lines and the `audit.checkpoint` records of every node), the second
//! walks each node's records.
//!
//! Checked: the certificates against the bundle's CA (at the bundle's time) and
//! each node's vote key against its certificate's key; every checkpoint's head and
//! co-signatures under the nodes' vote keys, with at least the cluster threshold of
//! co-signatures; every record's hash and link to the previous one; that each
//! node's records are contiguous over the declared range (nothing missing between
//! checkpoints); that every head a checkpoint signed for a node is the record the
//! node's chain holds at that sequence number (a rewritten chain is caught by its
//! peers' checkpoints); the policy texts against their hashes; and the manifest's
//! digest, counts and the exporter's signature.
//!
//! Problems are sorted by their line in the bundle, so the first reported is the
//! first broken item (manifest problems, on the last line, come last).

use std::collections::BTreeMap;
use std::io::BufRead;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::bundle::{
    key_binding_message, manifest_message, Header, Line, Manifest, NodeEntry, BUNDLE_FORMAT,
    BUNDLE_VERSION, MAX_LINE_BYTES,
};
use super::checkpoint::{verify_ed25519, Checkpoint, VoteKeys, CHECKPOINT_ACTION};
use super::GENESIS_HASH;

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Require at least this many co-signatures per checkpoint (never fewer than
    /// the bundle's threshold).
    pub min_signatures: Option<u16>,
    /// The cluster CA the auditor knows (PEM): the bundle's must be the same
    /// certificate. Without it, the bundle's own CA is trusted (its SHA-256 is in
    /// the report, to compare out of band).
    pub expected_ca_pem: Option<String>,
}

/// What kind of item is broken (orders problems on the same line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A record's own hash or its link.
    Chain,
    /// A record missing from a node's range.
    Missing,
    /// A node's chain does not hold a head its peers signed.
    Head,
    /// A checkpoint.
    Checkpoint,
    /// A node's certificate or key.
    Node,
    /// A policy version.
    Policy,
    /// The bundle's structure (lines that do not parse, header, CA, order).
    Format,
    /// The manifest.
    Manifest,
}

/// One broken item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Line of the bundle (from 1).
    pub line: u64,
    /// What kind of item.
    pub kind: Kind,
    /// The node, where one is concerned.
    pub node: Option<String>,
    /// The record's sequence number, where one is concerned.
    pub seq: Option<i64>,
    /// The checkpoint, where one is concerned.
    pub checkpoint: Option<Uuid>,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.node, self.seq, self.checkpoint) {
            (Some(n), Some(s), _) => write!(f, "node {n} seq {s}: ")?,
            (_, _, Some(c)) => write!(f, "checkpoint {c}: ")?,
            (Some(n), None, None) => write!(f, "node {n}: ")?,
            (None, _, None) => match self.kind {
                Kind::Manifest => write!(f, "manifest: ")?,
                _ => write!(f, "bundle: ")?,
            },
        }
        write!(f, "{} (line {})", self.reason, self.line)
    }
}

/// Per node, what the bundle holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers present.
    pub first_seq: Option<i64>,
    /// Last present.
    pub last_seq: Option<i64>,
    /// Signed heads of this node matched against its records.
    pub heads_matched: u64,
    /// Highest sequence number a checkpoint covers.
    pub covered_to: Option<i64>,
}

/// Result of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Bundle id.
    pub bundle_id: Option<Uuid>,
    /// Exporting node.
    pub exporter: Option<String>,
    /// Requested range.
    pub from: Option<DateTime<Utc>>,
    /// Requested range.
    pub to: Option<DateTime<Utc>>,
    /// SHA-256 (hex) of the bundle's CA certificate (DER).
    pub ca_sha256: Option<String>,
    /// Lines read.
    pub lines: u64,
    /// Distinct checkpoints that verified.
    pub checkpoints_verified: u64,
    /// Per node.
    pub nodes: BTreeMap<String, NodeSummary>,
    /// Policy versions listed.
    pub policies: u64,
    /// Broken items, first broken first.
    pub problems: Vec<Problem>,
    /// Remarks that are not problems (e.g. records after the last checkpoint).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether nothing is broken.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first broken item.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    fn problem(&mut self, line: u64, kind: Kind, reason: impl Into<String>) -> &mut Problem {
        self.problems.push(Problem {
            line,
            kind,
            node: None,
            seq: None,
            checkpoint: None,
            reason: reason.into(),
        });
        let last = self.problems.len() - 1;
        &mut self.problems[last]
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`] (newline included) into `buf`;
/// `Ok(false)` at the end. A longer line is an error.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// A head some checkpoint signed for a node.
#[derive(Debug, Clone)]
struct SignedAt {
    hash: [u8; 32],
    checkpoint: Uuid,
    signers: Vec<String>,
}

/// First pass: everything but the records' chain.
#[derive(Debug, Default)]
struct Collected {
    header: Option<Header>,
    ca_pem: Option<(u64, String)>,
    nodes: BTreeMap<String, (u64, NodeEntry)>,
    /// Every checkpoint by id: the versions seen (first line of each).
    checkpoints: BTreeMap<Uuid, Vec<(u64, Checkpoint)>>,
    manifest: Option<(u64, Manifest)>,
    digest_before_manifest: [u8; 32],
    lines_before_manifest: u64,
    rows: BTreeMap<String, u64>,
    checkpoint_lines: u64,
}

/// Verifies a bundle. `open` gives a fresh reader of the bundle from its start (it
/// is read twice).
pub fn verify_bundle<R: BufRead>(
    mut open: impl FnMut() -> std::io::Result<R>,
    opts: &VerifyOptions,
) -> std::io::Result<Report> {
    let mut report = Report::default();
    let c = first_pass(open()?, &mut report)?;
    let Some(header) = c.header.clone() else {
        sort(&mut report);
        return Ok(report);
    };
    report.bundle_id = Some(header.bundle_id);
    report.exporter = Some(header.exporter.clone());
    report.from = Some(header.from);
    report.to = Some(header.to);

    let keys = check_nodes(&c, &header, opts, &mut report);
    let heads = check_checkpoints(&c, &header, &keys, opts, &mut report);
    check_manifest(&c, &header, &keys, &mut report);
    second_pass(open()?, &c, &heads, &mut report)?;
    sort(&mut report);
    Ok(report)
}

fn sort(report: &mut Report) {
    report.problems.sort_by_key(|a| (a.line, a.kind));
}

fn first_pass(mut r: impl BufRead, report: &mut Report) -> std::io::Result<Collected> {
    let mut c = Collected::default();
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    while read_line(&mut r, &mut buf)? {
        n += 1;
        if let Some((at, _)) = &c.manifest {
            report.problem(
                n,
                Kind::Format,
                format!("a line follows the manifest (line {at})"),
            );
            continue;
        }
        let line: Line = match serde_json::from_slice(&buf) {
            Ok(l) => l,
            Err(e) => {
                hasher.update(&buf);
                report.problem(n, Kind::Format, format!("not a bundle line: {e}"));
                if n == 1 {
                    report.lines = n;
                    return Ok(c);
                }
                continue;
            }
        };
        if !matches!(line, Line::Manifest(_)) {
            hasher.update(&buf);
        }
        match line {
            Line::Header(h) => {
                if n != 1 {
                    report.problem(n, Kind::Format, "a second header");
                } else if h.format != BUNDLE_FORMAT || h.version != BUNDLE_VERSION {
                    report.problem(
                        n,
                        Kind::Format,
                        format!(
                            "not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} (found {} {})",
                            h.format, h.version
                        ),
                    );
                    report.lines = n;
                    return Ok(c);
                } else {
                    c.header = Some(h);
                }
            }
            _ if n == 1 => {
                report.problem(n, Kind::Format, "the first line is not the header");
                report.lines = n;
                return Ok(c);
            }
            Line::Ca(ca) => {
                if c.ca_pem.is_some() {
                    report.problem(n, Kind::Format, "a second CA");
                } else {
                    c.ca_pem = Some((n, ca.pem));
                }
            }
            Line::Node(node) => {
                if c.nodes.contains_key(&node.node_id) {
                    let p = report.problem(n, Kind::Node, "listed twice");
                    p.node = Some(node.node_id.clone());
                } else {
                    c.nodes.insert(node.node_id.clone(), (n, node));
                }
            }
            Line::Policy(p) => {
                report.policies += 1;
                if let Err(reason) = p.policy.check() {
                    let pr = report.problem(n, Kind::Policy, reason);
                    pr.node = Some(p.node_id.clone());
                }
            }
            Line::Checkpoint(cp) => {
                c.checkpoint_lines += 1;
                add_checkpoint(&mut c, n, cp.checkpoint);
            }
            Line::Row(row) => {
                *c.rows.entry(row.node.clone()).or_insert(0) += 1;
                if row.record.action == CHECKPOINT_ACTION {
                    // A record altered in the bundle is reported by its hash; its
                    // checkpoint is still collected so a forged one is named too.
                    match Checkpoint::from_details(&row.record.details) {
                        Ok(cp) => add_checkpoint(&mut c, n, cp),
                        Err(e) => {
                            let p = report.problem(
                                n,
                                Kind::Checkpoint,
                                format!("audit.checkpoint record does not hold a checkpoint: {e}"),
                            );
                            p.node = Some(row.node.clone());
                            p.seq = Some(row.record.seq);
                        }
                    }
                }
            }
            Line::Error(e) => {
                report.problem(
                    n,
                    Kind::Format,
                    format!("the export failed here: {}", e.message),
                );
            }
            Line::Manifest(m) => {
                c.digest_before_manifest = hasher.clone().finalize().into();
                c.lines_before_manifest = n - 1;
                c.manifest = Some((n, m));
            }
        }
    }
    report.lines = n;
    if n == 0 {
        report.problem(0, Kind::Format, "the bundle is empty");
    }
    Ok(c)
}

fn add_checkpoint(c: &mut Collected, line: u64, cp: Checkpoint) {
    let versions = c.checkpoints.entry(cp.id).or_default();
    if !versions.iter().any(|(_, v)| *v == cp) {
        versions.push((line, cp));
    }
}

/// Certificates, key bindings; the vote keys of the nodes.
fn check_nodes(
    c: &Collected,
    header: &Header,
    opts: &VerifyOptions,
    report: &mut Report,
) -> VoteKeys {
    let roots = match &c.ca_pem {
        None => {
            report.problem(1, Kind::Format, "no CA certificate in the bundle");
            None
        }
        Some((line, pem)) => match root_store(pem) {
            Ok(r) => {
                let der = pem_certs(pem).unwrap_or_default();
                report.ca_sha256 = der.first().map(|d| hex::encode(Sha256::digest(d.as_ref())));
                match &opts.expected_ca_pem {
                    Some(expected) if pem_certs(expected).ok() != Some(der) => {
                        report.problem(
                            *line,
                            Kind::Format,
                            "the bundle's CA is not the CA given to the verifier",
                        );
                        None
                    }
                    _ => Some(r),
                }
            }
            Err(e) => {
                report.problem(*line, Kind::Format, format!("CA certificate: {e}"));
                None
            }
        },
    };
    for id in &header.nodes {
        if !c.nodes.contains_key(id) {
            let p = report.problem(1, Kind::Node, "named in the header but has no node line");
            p.node = Some(id.clone());
        }
    }
    let mut keys = VoteKeys::new();
    for (id, (line, node)) in &c.nodes {
        keys.insert(id.clone(), node.vote_key);
        report.nodes.entry(id.clone()).or_default();
        if !header.nodes.contains(id) {
            let p = report.problem(*line, Kind::Node, "not a node of the header");
            p.node = Some(id.clone());
        }
        if let Some(roots) = &roots {
            if let Err(reason) = check_certificate(roots, node, header.created_at) {
                let p = report.problem(*line, Kind::Node, reason);
                p.node = Some(id.clone());
            }
        }
        if node.from_seq < 1 || node.to_seq < node.from_seq - 1 {
            let p = report.problem(
                *line,
                Kind::Node,
                format!(
                    "declared range {}..{} is invalid",
                    node.from_seq, node.to_seq
                ),
            );
            p.node = Some(id.clone());
        }
    }
    keys
}

fn pem_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))
}

fn root_store(pem: &str) -> Result<std::sync::Arc<rustls::RootCertStore>, String> {
    let certs = pem_certs(pem)?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".to_owned());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(std::sync::Arc::new(roots))
}

/// The node's certificate chains to the CA (at `at`), names the node, and its key
/// signed the node's vote key.
fn check_certificate(
    roots: &std::sync::Arc<rustls::RootCertStore>,
    node: &NodeEntry,
    at: DateTime<Utc>,
) -> Result<(), String> {
    let certs = rustls_pemfile::certs(&mut node.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate is not PEM: {e}"))?;
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| "no certificate".to_owned())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("CA: {e}"))?;
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    let when = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    verifier
        .verify_client_cert(leaf, intermediates, when)
        .map_err(|e| format!("certificate does not verify against the bundle's CA: {e}"))?;
    let identity = crate::ca::node_identity_from_cert(leaf)
        .map_err(|e| format!("certificate identity: {e}"))?;
    if identity != node.node_id {
        return Err(format!("certificate is for node {identity}"));
    }
    let binding = node
        .key_binding
        .as_ref()
        .ok_or_else(|| "vote key is not signed with the certificate's key".to_owned())?;
    let sig = hex::decode(&binding.signature)
        .map_err(|_| "vote key binding signature is not hex".to_owned())?;
    let msg = key_binding_message(&node.node_id, &node.vote_key);
    verify_with_certificate(leaf, &binding.scheme, &msg, &sig)
        .map_err(|e| format!("vote key binding: {e}"))
}

/// Verifies `sig` over `msg` with the public key of certificate `der`.
pub fn verify_with_certificate(
    der: &[u8],
    scheme: &str,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let key = &cert.public_key().subject_public_key.data;
    let alg: &dyn ring::signature::VerificationAlgorithm = match scheme {
        "ecdsa_p256_sha256" => &ring::signature::ECDSA_P256_SHA256_ASN1,
        "ecdsa_p384_sha384" => &ring::signature::ECDSA_P384_SHA384_ASN1,
        "ed25519" => &ring::signature::ED25519,
        other => return Err(format!("unsupported scheme {other}")),
    };
    ring::signature::UnparsedPublicKey::new(alg, key.as_ref())
        .verify(msg, sig)
        .map_err(|_| "signature does not verify under the certificate's key".to_owned())
}

/// Verifies every checkpoint; the heads of the valid ones, per node and sequence.
fn check_checkpoints(
    c: &Collected,
    header: &Header,
    keys: &VoteKeys,
    opts: &VerifyOptions,
    report: &mut Report,
) -> BTreeMap<String, BTreeMap<i64, Vec<SignedAt>>> {
    let min = header
        .threshold
        .max(opts.min_signatures.unwrap_or(0))
        .max(1);
    let mut heads: BTreeMap<String, BTreeMap<i64, Vec<SignedAt>>> = BTreeMap::new();
    for (id, versions) in &c.checkpoints {
        let mut valid = Vec::new();
        for (line, cp) in versions {
            match cp.verify(keys, min) {
                Ok(()) => valid.push(cp),
                Err(e) => {
                    let p = report.problem(*line, Kind::Checkpoint, e.to_string());
                    p.checkpoint = Some(*id);
                }
            }
        }
        if versions.len() > 1 {
            let lines: Vec<String> = versions.iter().map(|(l, _)| l.to_string()).collect();
            let (line, _) = versions[1];
            let p = report.problem(
                line,
                Kind::Checkpoint,
                format!(
                    "differs from another copy of it (lines {})",
                    lines.join(", ")
                ),
            );
            p.checkpoint = Some(*id);
        }
        if valid.len() == 1 {
            report.checkpoints_verified += 1;
            let cp = valid[0];
            let signers: Vec<String> = cp.signers().into_iter().map(str::to_owned).collect();
            for h in &cp.heads {
                heads
                    .entry(h.node_id.clone())
                    .or_default()
                    .entry(h.seq)
                    .or_default()
                    .push(SignedAt {
                        hash: h.hash,
                        checkpoint: cp.id,
                        signers: signers.clone(),
                    });
            }
        }
    }
    heads
}

fn check_manifest(c: &Collected, header: &Header, keys: &VoteKeys, report: &mut Report) {
    let Some((line, m)) = &c.manifest else {
        report.problem(
            report.lines.max(1),
            Kind::Manifest,
            "no manifest: the bundle is truncated or its export failed",
        );
        return;
    };
    let line = *line;
    if m.bundle_id != header.bundle_id || m.exporter != header.exporter {
        report.problem(
            line,
            Kind::Manifest,
            "bundle id or exporter differs from the header",
        );
    }
    if m.lines != c.lines_before_manifest {
        report.problem(
            line,
            Kind::Manifest,
            format!(
                "counts {} lines, the bundle has {}",
                m.lines, c.lines_before_manifest
            ),
        );
    }
    if m.sha256 != c.digest_before_manifest {
        report.problem(
            line,
            Kind::Manifest,
            "SHA-256 of the bundle does not match: its content was changed after export",
        );
    }
    let mut counted = c.rows.clone();
    for id in c.nodes.keys() {
        counted.entry(id.clone()).or_insert(0);
    }
    if m.rows != counted || m.checkpoints != c.checkpoint_lines {
        report.problem(
            line,
            Kind::Manifest,
            "record or checkpoint counts differ from the bundle's lines",
        );
    }
    match keys.get(&m.exporter) {
        None => {
            report.problem(
                line,
                Kind::Manifest,
                "the exporter has no vote key in the bundle",
            );
        }
        Some(key) => {
            let msg = manifest_message(
                m.bundle_id,
                &m.exporter,
                m.lines,
                &m.sha256,
                &m.rows,
                m.checkpoints,
            );
            if !verify_ed25519(key, &msg, &m.signature) {
                report.problem(
                    line,
                    Kind::Manifest,
                    "signature does not verify under the exporter's vote key",
                );
            }
        }
    }
}

/// Walking state of one node's records.
#[derive(Debug, Default)]
struct Walk {
    expected: Option<i64>,
    prev_hash: Option<[u8; 32]>,
}

fn second_pass(
    mut r: impl BufRead,
    c: &Collected,
    heads: &BTreeMap<String, BTreeMap<i64, Vec<SignedAt>>>,
    report: &mut Report,
) -> std::io::Result<()> {
    let mut walks: BTreeMap<String, Walk> = c
        .nodes
        .iter()
        .map(|(id, (_, n))| {
            (
                id.clone(),
                Walk {
                    expected: Some(n.from_seq),
                    prev_hash: None,
                },
            )
        })
        .collect();
    let mut buf = Vec::new();
    let mut n = 0u64;
    while read_line(&mut r, &mut buf)? {
        n += 1;
        let Ok(Line::Row(row)) = serde_json::from_slice::<Line>(&buf) else {
            continue;
        };
        let node = row.node;
        let rec = row.record;
        let Some(walk) = walks.get_mut(&node) else {
            let p = report.problem(n, Kind::Format, "record of a node without a node line");
            p.node = Some(node);
            p.seq = Some(rec.seq);
            continue;
        };
        let summary = report.nodes.entry(node.clone()).or_default();
        summary.records += 1;
        summary.first_seq.get_or_insert(rec.seq);
        summary.last_seq = Some(rec.seq);
        let mut problems: Vec<(Kind, i64, String)> = Vec::new();
        if let Some(expected) = walk.expected {
            if rec.seq > expected {
                problems.push((
                    Kind::Missing,
                    expected,
                    if rec.seq == expected + 1 {
                        format!(
                            "record missing (the next record present is seq {})",
                            rec.seq
                        )
                    } else {
                        format!(
                            "records {expected}..{} missing (the next record present is seq {})",
                            rec.seq - 1,
                            rec.seq
                        )
                    },
                ));
                walk.prev_hash = None;
            } else if rec.seq < expected {
                problems.push((
                    Kind::Chain,
                    rec.seq,
                    format!("out of order or repeated (expected seq {expected})"),
                ));
                push(report, n, &node, problems);
                continue;
            }
        }
        if rec.seq == 1 && rec.prev_hash != GENESIS_HASH {
            problems.push((
                Kind::Chain,
                rec.seq,
                "first record does not start from the genesis hash".to_owned(),
            ));
        }
        if let Some(prev) = walk.prev_hash {
            if rec.prev_hash != prev {
                problems.push((
                    Kind::Chain,
                    rec.seq,
                    format!("does not link to record {}", rec.seq - 1),
                ));
            }
        }
        if rec.compute_hash() != rec.hash {
            problems.push((
                Kind::Chain,
                rec.seq,
                "record altered: its stored hash does not match its contents".to_owned(),
            ));
        }
        if let Some(signed) = heads.get(&node).and_then(|h| h.get(&rec.seq)) {
            for s in signed {
                if s.hash == rec.hash {
                    summary.heads_matched += 1;
                    summary.covered_to = Some(summary.covered_to.unwrap_or(0).max(rec.seq));
                } else {
                    problems.push((
                        Kind::Head,
                        rec.seq,
                        format!(
                            "the node's chain no longer holds the head signed in checkpoint {} \
                             (co-signed by {}): signed hash {}, record hash {}",
                            s.checkpoint,
                            s.signers.join(", "),
                            hex::encode(s.hash),
                            hex::encode(rec.hash)
                        ),
                    ));
                }
            }
        }
        walk.expected = Some(rec.seq + 1);
        walk.prev_hash = Some(rec.hash);
        push(report, n, &node, problems);
    }
    // Every declared range must be complete; heads beyond what is present are
    // reported as missing records.
    for (id, (line, entry)) in &c.nodes {
        let walk = walks.get(id);
        let next = walk.and_then(|w| w.expected).unwrap_or(entry.from_seq);
        if next <= entry.to_seq {
            let present = next - 1;
            let p = report.problem(
                if next == entry.from_seq { *line } else { n },
                Kind::Missing,
                format!(
                    "records {next}..{} missing: the bundle's records of this node end at seq \
                     {present}, its declared range ends at {}",
                    entry.to_seq, entry.to_seq
                ),
            );
            p.node = Some(id.clone());
            p.seq = Some(next);
            if let Some(signed) = heads.get(id) {
                if let Some((seq, s)) = signed.range(next..=entry.to_seq).next() {
                    p.reason.push_str(&format!(
                        "; checkpoint {} signed its head at seq {seq}",
                        s[0].checkpoint
                    ));
                }
            }
        }
        let summary = report.nodes.entry(id.clone()).or_default();
        let last = summary.last_seq.unwrap_or(entry.from_seq - 1);
        match summary.covered_to {
            Some(cov) if cov >= last => {}
            Some(cov) => report.notes.push(format!(
                "node {id}: records {}..{last} follow its last checkpointed head (seq {cov}); \
                 no checkpoint covers them yet",
                cov + 1
            )),
            None if summary.records > 0 => report.notes.push(format!(
                "node {id}: no checkpoint in the bundle covers its records"
            )),
            None => {}
        }
    }
    Ok(())
}

fn push(report: &mut Report, line: u64, node: &str, problems: Vec<(Kind, i64, String)>) {
    for (kind, seq, reason) in problems {
        let p = report.problem(line, kind, reason);
        p.node = Some(node.to_owned());
        p.seq = Some(seq);
    }
}
