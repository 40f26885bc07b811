//! Audit exports: the exporting node's plan and bundle stream (`GET
//! /api/v1/audit/export`), and a peer's answers to its requests.
//!
//! Every node's records come over QUIC from the node itself, page by page
//! ([`wire::MAX_PAGE_ROWS`] records, at most [`wire::MAX_PAGE_BYTES`]), and are
//! written to the HTTP response as they arrive through a bounded channel: the
//! exporting node holds a few pages at most, whatever the range.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::wire::{self, ExportReply, ExportRequest, NodeInfo};
use super::AuditCtx;
use crate::audit::bundle::{
    sign_key_binding, BundleWriter, CaEntry, CheckpointEntry, ErrorEntry, Header, Line, NodeEntry,
    PolicyEntry, PolicyVersion, RowEntry, BUNDLE_FORMAT, BUNDLE_VERSION,
};
use crate::audit::checkpoint::{Checkpoint, SIGNATURE_LEN};
use crate::audit::{AuditEntry, AuditRecord};

/// How long the exporting node waits for one answer of a peer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest certificate file sent.
const MAX_CERT_PEM: u64 = 64 * 1024;
/// Chunks buffered between the bundle writer and the HTTP response.
const STREAM_BUFFER: usize = 4;

/// Why an export cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// This node cannot sign the manifest.
    #[error("custody is sealed: this node cannot sign the bundle")]
    Sealed,
    /// A node did not answer.
    #[error("node {node} is unavailable: {reason}")]
    NodeUnavailable {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// This node's own part failed.
    #[error("{0}")]
    Internal(String),
}

/// What the bundle will hold, decided before its first byte is written.
#[derive(Debug)]
pub struct ExportPlan {
    header: Header,
    ca_pem: String,
    nodes: Vec<NodeEntry>,
    policy_refs: Vec<(String, i64)>,
    checkpoints: Vec<Checkpoint>,
}

impl ExportPlan {
    /// The bundle id.
    pub fn bundle_id(&self) -> Uuid {
        self.header.bundle_id
    }
}

fn read_small(path: &std::path::Path, max: u64) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > max {
        return Err(format!("{}: larger than {max} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// This node's answer to [`ExportRequest::Info`].
async fn local_info(
    ctx: &AuditCtx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<NodeInfo, String> {
    use vote::VoteSigner as _;
    let unsealed = ctx.unsealed().ok_or("custody is sealed")?;
    let vote_key = unsealed.vote_key.vote_public_key();
    let me = ctx.cfg.node_id.clone();
    let cert_pem = read_small(&ctx.cfg.tls.cert, MAX_CERT_PEM)?;
    let key_path = ctx.cfg.tls.key.clone();
    let node = me.clone();
    let key_binding = tokio::task::spawn_blocking(move || {
        let key = crate::ca::files::read_private_key(&key_path).map_err(|e| e.to_string())?;
        sign_key_binding(&key, &node, &vote_key)
    })
    .await
    .map_err(|e| e.to_string())??;
    let (head_seq, head_hash) = ctx.store.audit_head().await.map_err(|e| e.to_string())?;
    let (first_seq, last_seq) = ctx
        .store
        .audit_seq_bounds(from, to)
        .await
        .map_err(|e| e.to_string())?;
    let policy_seqs = ctx
        .store
        .policy_versions(from, to)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.seq)
        .take(wire::MAX_POLICY_REFS)
        .collect();
    Ok(NodeInfo {
        node_id: me,
        vote_key,
        cert_pem,
        key_binding: Some(key_binding),
        head_seq,
        head_hash,
        first_seq,
        last_seq,
        policy_seqs,
    })
}

/// Serves one export request of peer `from`.
pub(crate) async fn serve_request(ctx: &AuditCtx, from: &str, session: Uuid, payload: &[u8]) {
    let reply = match wire::decode::<ExportRequest>(payload, wire::MAX_EXPORT_REQUEST) {
        Err(e) => ExportReply::Error {
            message: format!("malformed request: {e}"),
        },
        Ok(ExportRequest::Info {
            bundle_id,
            from: t0,
            to: t1,
        }) => {
            let audit = ctx
                .store
                .audit(
                    &ctx.cfg.node_id,
                    AuditEntry::new(from, "audit.export_served")
                        .subject(bundle_id.to_string())
                        .details(serde_json::json!({"from": t0, "to": t1})),
                )
                .await;
            match audit {
                Err(e) => ExportReply::Error {
                    message: format!("cannot audit the export: {e}"),
                },
                Ok(_) => match local_info(ctx, t0, t1).await {
                    Ok(info) => ExportReply::Info { info },
                    Err(message) => ExportReply::Error { message },
                },
            }
        }
        Ok(ExportRequest::Rows { after_seq, to_seq }) => match page(ctx, after_seq, to_seq).await {
            Ok(rows) => ExportReply::Rows { rows },
            Err(message) => ExportReply::Error { message },
        },
    };
    match wire::encode(&reply) {
        Ok(b) => ctx.send(from, wire::AUDIT_EXPORT_REPLY, session, b).await,
        Err(e) => tracing::error!(error = %e, "cannot encode an export reply"),
    }
}

/// One page of this node's records after `after_seq` up to `to_seq`, within the
/// page's byte budget (a single larger record is sent alone).
async fn page(ctx: &AuditCtx, after_seq: i64, to_seq: i64) -> Result<Vec<AuditRecord>, String> {
    let rows = ctx
        .store
        .audit_rows_until(after_seq, to_seq, wire::MAX_PAGE_ROWS)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    for r in rows {
        let len = serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(0);
        if !out.is_empty() && bytes + len > wire::MAX_PAGE_BYTES {
            break;
        }
        bytes += len;
        out.push(r);
    }
    Ok(out)
}

async fn node_info(
    ctx: &AuditCtx,
    node: &str,
    bundle_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<NodeInfo, ExportError> {
    let unavailable = |reason: String| ExportError::NodeUnavailable {
        node: node.to_owned(),
        reason,
    };
    if node == ctx.cfg.node_id {
        return local_info(ctx, from, to)
            .await
            .map_err(ExportError::Internal);
    }
    match ctx
        .ask(
            node,
            &ExportRequest::Info {
                bundle_id,
                from,
                to,
            },
            PEER_TIMEOUT,
        )
        .await
        .map_err(unavailable)?
    {
        ExportReply::Info { info } if info.node_id == node => Ok(info),
        ExportReply::Info { .. } => Err(unavailable("answered for another node".to_owned())),
        ExportReply::Error { message } => Err(unavailable(message)),
        ExportReply::Rows { .. } => Err(unavailable("unexpected answer".to_owned())),
    }
}

/// Records `after_seq < seq <= to_seq` of `node`, one page.
async fn rows_of(
    ctx: &AuditCtx,
    node: &str,
    after_seq: i64,
    to_seq: i64,
) -> Result<Vec<AuditRecord>, String> {
    if node == ctx.cfg.node_id {
        return page(ctx, after_seq, to_seq).await;
    }
    match ctx
        .ask(
            node,
            &ExportRequest::Rows { after_seq, to_seq },
            PEER_TIMEOUT,
        )
        .await?
    {
        ExportReply::Rows { rows } => Ok(rows),
        ExportReply::Error { message } => Err(format!("{node}: {message}")),
        ExportReply::Info { .. } => Err(format!("{node}: unexpected answer")),
    }
}

/// Decides what the bundle for `from..=to` holds: every node's keys, certificate
/// and head, the checkpoints stored here around the range, and each node's record
/// range widened to the checkpoints enclosing it. Fails if any node does not
/// answer.
pub async fn plan(
    ctx: &AuditCtx,
    bundle_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<ExportPlan, ExportError> {
    if ctx.unsealed().is_none() {
        return Err(ExportError::Sealed);
    }
    let internal = |e: crate::store::StoreError| ExportError::Internal(e.to_string());
    let ids: Vec<String> = ctx.node_ids();
    let infos =
        futures::future::join_all(ids.iter().map(|id| node_info(ctx, id, bundle_id, from, to)))
            .await;
    let mut infos_ok = Vec::with_capacity(infos.len());
    for i in infos {
        infos_ok.push(i?);
    }
    // Checkpoints stored here: the last before the range, those in it, the first
    // after it.
    let records = ctx
        .store
        .checkpoint_records_around(from, to)
        .await
        .map_err(internal)?;
    let mut checkpoints = Vec::with_capacity(records.len());
    let (mut anchor, mut close) = (None, None);
    for r in &records {
        match Checkpoint::from_details(&r.details) {
            Ok(cp) => {
                if r.ts < from {
                    anchor = Some(cp.clone());
                } else if r.ts > to && close.is_none() {
                    close = Some(cp.clone());
                }
                checkpoints.push(cp);
            }
            Err(e) => tracing::warn!(seq = r.seq, error = %e, "stored checkpoint does not decode"),
        }
    }
    let pinned: BTreeMap<String, [u8; 32]> = ctx
        .store
        .vote_keys()
        .await
        .map_err(internal)?
        .into_iter()
        .collect();
    let mut nodes = Vec::with_capacity(infos_ok.len());
    let mut policy_refs = Vec::new();
    for info in infos_ok {
        let id = info.node_id.clone();
        let mut from_seq = info.first_seq.unwrap_or(info.head_seq + 1);
        if let Some(h) = anchor.as_ref().and_then(|c| c.head_of(&id)) {
            from_seq = from_seq.min(h.seq);
        }
        let from_seq = from_seq.max(1);
        let mut to_seq = info.last_seq.unwrap_or(from_seq - 1);
        if let Some(h) = close.as_ref().and_then(|c| c.head_of(&id)) {
            to_seq = to_seq.max(h.seq);
        }
        let to_seq = to_seq.max(from_seq - 1);
        policy_refs.extend(info.policy_seqs.iter().map(|s| (id.clone(), *s)));
        let vote_key = if id == ctx.cfg.node_id {
            info.vote_key
        } else {
            pinned.get(&id).copied().unwrap_or(info.vote_key)
        };
        nodes.push(NodeEntry {
            node_id: id,
            vote_key,
            cert_pem: info.cert_pem,
            key_binding: info.key_binding,
            head_seq: info.head_seq,
            head_hash: info.head_hash,
            from_seq,
            to_seq,
        });
    }
    let ca_pem = read_small(&ctx.cfg.tls.ca_cert, MAX_CERT_PEM).map_err(ExportError::Internal)?;
    Ok(ExportPlan {
        header: Header {
            format: BUNDLE_FORMAT.to_owned(),
            version: BUNDLE_VERSION,
            bundle_id,
            cluster_id: ctx.cfg.cluster_id.clone(),
            exporter: ctx.cfg.node_id.clone(),
            created_at: Utc::now(),
            from,
            to,
            threshold: ctx.cfg.threshold,
            nodes: ids,
        },
        ca_pem,
        nodes,
        policy_refs,
        checkpoints,
    })
}

/// Writes the bundle of `plan` into a bounded channel, as the reader takes it. A
/// failure writes an `error` line and ends the stream without a manifest.
pub fn stream(
    ctx: Arc<AuditCtx>,
    plan: ExportPlan,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut w = BundleWriter::new();
        let id = plan.bundle_id();
        if let Err(e) = write_bundle(&ctx, &plan, &mut w, &tx).await {
            tracing::warn!(bundle = %id, error = %e, "audit export failed");
            let line = w.line(&Line::Error(ErrorEntry { message: e }));
            let _ = tx.send(Ok(Bytes::from(line))).await;
            return;
        }
        let Some(unsealed) = ctx.unsealed() else {
            let line = w.line(&Line::Error(ErrorEntry {
                message: "custody sealed before the manifest".to_owned(),
            }));
            let _ = tx.send(Ok(Bytes::from(line))).await;
            return;
        };
        let manifest = w.finish(id, &ctx.cfg.node_id, |m| {
            let mut s = [0u8; SIGNATURE_LEN];
            let v = unsealed.vote_key.sign(m);
            if v.len() == SIGNATURE_LEN {
                s.copy_from_slice(&v);
            }
            s
        });
        let _ = tx.send(Ok(Bytes::from(manifest))).await;
        tracing::info!(bundle = %id, "audit export written");
    });
    rx
}

async fn write_bundle(
    ctx: &AuditCtx,
    plan: &ExportPlan,
    w: &mut BundleWriter,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let gone = || "the client went away".to_owned();
    let mut head = Vec::new();
    head.extend(w.line(&Line::Header(plan.header.clone())));
    head.extend(w.line(&Line::Ca(CaEntry {
        pem: plan.ca_pem.clone(),
    })));
    for n in &plan.nodes {
        w.expect_node(&n.node_id);
        head.extend(w.line(&Line::Node(n.clone())));
    }
    tx.send(Ok(Bytes::from(head))).await.map_err(|_| gone())?;
    for (node, seq) in &plan.policy_refs {
        let rows = rows_of(ctx, node, seq - 1, *seq).await?;
        let Some(r) = rows.into_iter().next() else {
            continue;
        };
        let Ok(policy) = serde_json::from_value::<PolicyVersion>(r.details.clone()) else {
            continue;
        };
        let line = w.line(&Line::Policy(PolicyEntry {
            node_id: node.clone(),
            seq: r.seq,
            ts: r.ts,
            policy,
        }));
        tx.send(Ok(Bytes::from(line))).await.map_err(|_| gone())?;
    }
    let mut chunk = Vec::new();
    for cp in &plan.checkpoints {
        chunk.extend(w.line(&Line::Checkpoint(CheckpointEntry {
            checkpoint: cp.clone(),
        })));
    }
    tx.send(Ok(Bytes::from(chunk))).await.map_err(|_| gone())?;
    for n in &plan.nodes {
        let mut after = n.from_seq - 1;
        while after < n.to_seq {
            let rows = rows_of(ctx, &n.node_id, after, n.to_seq).await?;
            let Some(last) = rows.last() else {
                // The node's log ends before its declared range: the verifier
                // reports the missing records.
                break;
            };
            if last.seq <= after {
                return Err(format!("{} answered records out of order", n.node_id));
            }
            after = last.seq;
            let mut chunk = Vec::new();
            for r in rows {
                chunk.extend(w.line(&Line::Row(RowEntry {
                    node: n.node_id.clone(),
                    record: r,
                })));
            }
            tx.send(Ok(Bytes::from(chunk))).await.map_err(|_| gone())?;
        }
    }
    Ok(())
}
