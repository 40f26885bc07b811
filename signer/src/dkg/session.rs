//! One participant's side of a key ceremony: record, barrier, keygen, seal,
//! confirm, complete — or fail with a reason (and blame, when the protocol names a
//! culprit).

use std::collections::BTreeMap;
use std::sync::Arc;

use hsm::Aad;
use signer_protocol::{channel_party, ecdsa, frost, DeliveryConfig, RawOutgoing};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::wire::CEREMONY_CONFIRM;
use super::DkgCtx;
use super::{CeremonySpec, DkgError, DkgProtocol, LoadedKey};
use crate::p2p::Frame;
use crate::session::equivocation::{self, Finding, Statement};
use crate::session::SessionQueues;
use crate::store::dkg::NewCeremony;
use crate::store::StoreError;

/// Node ids of the cluster (this node and its live peer set, which includes peers
/// added since the start).
pub fn known_nodes(node: &DkgCtx) -> Vec<String> {
    let mut v = vec![node.cfg.node_id.clone()];
    v.extend(node.peer_ids());
    v
}

/// Joins the ceremony `spec` (announced by its coordinator) and runs it to
/// `completed` or `failed`. Never panics on peer input; every outcome is recorded.
pub async fn participate(node: Arc<DkgCtx>, spec: CeremonySpec) {
    let me = node.cfg.node_id.clone();
    if let Err(e) = spec.validate(&known_nodes(&node)) {
        tracing::warn!(ceremony = %spec.id, coordinator = %spec.coordinator, error = %e, "invalid ceremony announce; ignored");
        return;
    }
    let Some(index) = spec.participants.iter().position(|p| *p == me) else {
        tracing::warn!(ceremony = %spec.id, "announced ceremony does not include this node; ignored");
        return;
    };
    let eid = spec.execution_id();
    let new = NewCeremony {
        id: spec.id,
        protocol: spec.protocol.as_str(),
        threshold: spec.threshold,
        participants: &spec.participants,
        execution_id: eid.as_bytes(),
        coordinator: &spec.coordinator,
        fencing_token: spec.fencing_token,
    };
    match node.store.insert_ceremony(&new).await {
        Ok(()) => {}
        Err(StoreError::Duplicate { .. }) => {
            tracing::debug!(ceremony = %spec.id, "ceremony already recorded; duplicate announce ignored");
            return;
        }
        Err(e) => {
            tracing::error!(ceremony = %spec.id, error = %e, "cannot record the ceremony");
            return;
        }
    }
    tracing::info!(ceremony = %spec.id, protocol = spec.protocol.as_str(), t = spec.threshold,
        n = spec.participants.len(), index, coordinator = %spec.coordinator, "joining key ceremony");
    let Some(SessionQueues {
        protocol_rx,
        confirm_rx,
        mut evidence_rx,
    }) = node
        .sessions
        .register(spec.id, &spec.participants, spec.protocol.message_kind())
    else {
        // Another run owns this id (the ceremony row was just created, so it is not
        // this ceremony's): leave it alone.
        tracing::error!(ceremony = %spec.id, "ceremony id already has a live session; not joining");
        return;
    };
    let (_, total) = spec.protocol.timeouts(&node.cfg.aux);
    let run = run(&node, &spec, index, protocol_rx, confirm_rx);
    let outcome = match tokio::time::timeout(total, run).await {
        Ok(r) => r,
        Err(_) => {
            let absent = crate::session::absentees(
                &node.sessions,
                node.coord(),
                spec.id,
                &spec.participants,
                &node.cfg.node_id,
            )
            .await;
            Err(DkgError::Timeout {
                secs: total.as_secs(),
                stage: crate::session::stalled_stage("running the ceremony", &absent),
            })
        }
    };
    // A protocol failure without a culprit (a failed echo-broadcast check): the
    // participants exchange the senders' signed broadcast statements, which prove
    // who equivocated, if anyone did (the session stays registered meanwhile, so
    // the others' evidence reaches it).
    let outcome = match outcome {
        Err(DkgError::Protocol { reason, culprits }) if culprits.is_empty() => {
            let found = attribute_equivocation(&node, &spec, &mut evidence_rx).await;
            let reason = if found.is_empty() {
                reason
            } else {
                let names: Vec<&str> = found.iter().map(|f| f.culprit.as_str()).collect();
                format!(
                    "{reason}; equivocation by {} proven by two signed versions of one broadcast",
                    names.join(", ")
                )
            };
            Err(DkgError::Protocol {
                reason,
                culprits: Vec::new(),
            })
        }
        other => other,
    };
    node.sessions.unregister(spec.id);
    match outcome {
        Ok(pk) => {
            tracing::info!(ceremony = %spec.id, public_key = %hex::encode(&pk), "key ceremony completed");
        }
        Err(e) => fail(&node, &spec, &e).await,
    }
}

async fn fail(node: &DkgCtx, spec: &CeremonySpec, e: &DkgError) {
    let me = &node.cfg.node_id;
    let reason = e.to_string();
    tracing::warn!(ceremony = %spec.id, error = %reason, "key ceremony failed");
    if let Err(err) = node.store.ceremony_failed(me, spec.id, &reason).await {
        tracing::error!(ceremony = %spec.id, error = %err, "cannot record the ceremony failure");
    }
    if let DkgError::Protocol { culprits, .. } = e {
        for culprit in culprits {
            record_culprit(node, spec, culprit, &reason).await;
        }
    }
}

async fn record_culprit(node: &DkgCtx, spec: &CeremonySpec, culprit: &str, reason: &str) {
    let me = &node.cfg.node_id;
    let evidence = serde_json::json!({
        "protocol": spec.protocol.as_str(),
        "error": reason,
    });
    let session = spec.id.to_string();
    if let Err(e) = node
        .store
        .record_violation(culprit, "dkg_protocol", Some(&session), &evidence, me, me)
        .await
    {
        tracing::error!(ceremony = %spec.id, %culprit, error = %e, "cannot record the violation");
    }
}

/// Sends the broadcast statements this node holds for ceremony `spec` to the other
/// participants, collects theirs for [`EVIDENCE_WINDOW`] (or until all answered),
/// and records every sender that two validly signed statements prove equivocated
/// (`dkg_equivocation`, the two statements as evidence). Statements that do not
/// verify blame nobody; they are logged with the peer that forwarded them.
async fn attribute_equivocation(
    node: &DkgCtx,
    spec: &CeremonySpec,
    evidence_rx: &mut mpsc::Receiver<(String, Vec<Statement>)>,
) -> Vec<Finding> {
    let me = &node.cfg.node_id;
    let mut held = node.sessions.statements(spec.id);
    held.truncate(equivocation::MAX_EVIDENCE_STATEMENTS);
    let mut sent = held.clone();
    sent.extend(crate::session::equivocation::forged_evidence(&held));
    sent.truncate(equivocation::MAX_EVIDENCE_STATEMENTS);
    let others: Vec<&String> = spec.participants.iter().filter(|p| *p != me).collect();
    match serde_json::to_vec(&sent) {
        Ok(payload) => {
            let frame = Frame::new(spec.id, crate::session::EVIDENCE, payload);
            let sends = futures::future::join_all(others.iter().map(|p| {
                let f = frame.clone();
                async move { (p.to_string(), node.net.p2p.send(p, f).await) }
            }))
            .await;
            for (peer, r) in sends {
                if let Err(e) = r {
                    tracing::warn!(ceremony = %spec.id, %peer, error = %e, "sending equivocation evidence failed");
                }
            }
        }
        Err(e) => {
            tracing::error!(ceremony = %spec.id, error = %e, "cannot encode equivocation evidence")
        }
    }
    let deadline = tokio::time::Instant::now() + equivocation::EVIDENCE_WINDOW;
    let mut received: Vec<(String, Vec<Statement>)> = Vec::new();
    while received.len() < others.len() {
        match tokio::time::timeout_at(deadline, evidence_rx.recv()).await {
            Ok(Some((from, v))) if !received.iter().any(|(f, _)| *f == from) => {
                received.push((from, v));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let keys: BTreeMap<String, [u8; 32]> = match node.store.vote_keys().await {
        Ok(k) => k.into_iter().collect(),
        Err(e) => {
            tracing::error!(ceremony = %spec.id, error = %e, "cannot read the pinned vote keys; equivocation not attributed");
            return Vec::new();
        }
    };
    let (found, forged) =
        equivocation::find_equivocations(spec.id, &spec.participants, &keys, &held, &received);
    for f in &forged {
        tracing::warn!(ceremony = %spec.id, forwarded_by = %f.forwarded_by, sender = %f.sender,
            "broadcast statement that does not verify under the sender's vote key; nobody blamed");
    }
    let session = spec.id.to_string();
    for f in &found {
        tracing::error!(ceremony = %spec.id, culprit = %f.culprit, seq = f.first.seq,
            "equivocation proven: two signed versions of one broadcast");
        let evidence = serde_json::json!({
            "protocol": spec.protocol.as_str(),
            "seq": f.first.seq,
            "statements": [f.first, f.second],
            "exchanged_with": received.iter().map(|(from, _)| from).collect::<Vec<_>>(),
        });
        if let Err(e) = node
            .store
            .record_violation(
                &f.culprit,
                "dkg_equivocation",
                Some(&session),
                &evidence,
                me,
                me,
            )
            .await
        {
            tracing::error!(ceremony = %spec.id, culprit = %f.culprit, error = %e, "cannot record the violation");
        }
    }
    found
}

/// The ceremony proper; returns the confirmed public key.
async fn run(
    node: &Arc<DkgCtx>,
    spec: &CeremonySpec,
    index: usize,
    protocol_rx: mpsc::Receiver<signer_protocol::RawIncoming>,
    mut confirm_rx: mpsc::Receiver<(String, Vec<u8>)>,
) -> Result<Vec<u8>, DkgError> {
    let me = node.cfg.node_id.clone();
    let unsealed = node.unsealed().ok_or(DkgError::Sealed)?;
    let coord = node
        .coord()
        .ok_or_else(|| DkgError::EtcdUnavailable("not connected".to_owned()))?;
    node.store.ceremony_running(spec.id).await?;
    // Aux info needs this node's prime set; take it (or generate it) before the
    // barrier, so the protocol does not start until every party has one.
    let primes = match spec.protocol {
        DkgProtocol::AuxInfo => Some(super::primes::take(node, spec.id).await?),
        DkgProtocol::Cggmp24 | DkgProtocol::Frost => None,
    };
    let (barrier_timeout, _) = spec.protocol.timeouts(&node.cfg.aux);
    coord
        .barrier(
            &format!("dkg-{}", spec.id),
            &spec.participants,
            barrier_timeout,
        )
        .await?;
    tracing::debug!(ceremony = %spec.id, "all participants at the barrier");

    let n = u16::try_from(spec.participants.len())
        .map_err(|_| DkgError::InvalidParticipants("too many participants".to_owned()))?;
    let i = u16::try_from(index)
        .map_err(|_| DkgError::InvalidParticipants("index out of range".to_owned()))?;
    let (out_tx, out_rx) = mpsc::channel::<RawOutgoing>(1024);
    let pump = tokio::spawn(crate::session::pump_outgoing(
        node.net.clone(),
        spec.id,
        spec.participants.clone(),
        spec.protocol.message_kind(),
        spec.protocol.as_str(),
        Some(unsealed.clone() as Arc<dyn crate::session::StatementSigner>),
        out_rx,
    ));
    let produced = keygen(node, spec, i, n, primes, protocol_rx, out_tx).await;
    // The pump ends once the protocol dropped its sender; let it flush the last
    // round (the others may still need it).
    if let Err(e) = pump.await {
        tracing::warn!(ceremony = %spec.id, error = %e, "outgoing pump failed");
    }
    let produced = produced?;

    // Seal and store the share, not usable yet.
    let aad = Aad::new(me.clone(), spec.key_id(), spec.protocol.record_kind())
        .map_err(|e| DkgError::Custody(e.to_string()))?;
    let custody = unsealed.custody.clone();
    let secret = produced.secret;
    let envelope = tokio::task::spawn_blocking(move || custody.seal(&aad, &secret))
        .await
        .map_err(|e| DkgError::Custody(format!("seal task: {e}")))?
        .map_err(|e| DkgError::Custody(e.to_string()))?;
    match spec.protocol {
        DkgProtocol::AuxInfo => {
            node.store
                .insert_aux(spec.id, &me, &spec.participants, &envelope)
                .await?;
        }
        DkgProtocol::Cggmp24 | DkgProtocol::Frost => {
            node.store
                .insert_share(
                    spec.id,
                    &me,
                    &spec.key_id(),
                    &produced.public_key,
                    &envelope,
                )
                .await?;
        }
    }

    // Confirm our public key to every other participant and collect theirs.
    let confirm = Frame::new(spec.id, CEREMONY_CONFIRM, produced.public_key.clone());
    let others: Vec<&String> = spec.participants.iter().filter(|p| **p != me).collect();
    let sends = futures::future::join_all(others.iter().map(|p| {
        let f = confirm.clone();
        async move { (p.to_string(), node.net.p2p.send(p, f).await) }
    }))
    .await;
    for (peer, r) in sends {
        if let Err(e) = r {
            tracing::warn!(ceremony = %spec.id, %peer, error = %e, "sending the confirmation failed");
        }
    }
    let mut confirmed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while confirmed.len() < others.len() {
        let Some((from, pk)) = confirm_rx.recv().await else {
            return Err(DkgError::Aborted("confirmation channel closed".to_owned()));
        };
        if pk != produced.public_key {
            return Err(DkgError::KeyMismatch {
                node: from,
                theirs: hex::encode(&pk[..pk.len().min(crate::session::MAX_CONFIRM_LEN)]),
                ours: hex::encode(&produced.public_key),
            });
        }
        confirmed.insert(from, pk);
    }
    match spec.protocol {
        DkgProtocol::AuxInfo => {
            node.store
                .complete_aux_ceremony(&me, spec.id, &produced.public_key)
                .await?;
        }
        DkgProtocol::Cggmp24 | DkgProtocol::Frost => {
            node.store
                .complete_ceremony(&me, spec.id, &produced.public_key)
                .await?;
            node.dkg.set_loaded(
                &spec.key_id(),
                LoadedKey {
                    xpub: produced.xpub,
                },
            );
        }
    }
    Ok(produced.public_key)
}

/// What keygen hands back.
struct Produced {
    public_key: Vec<u8>,
    xpub: Option<String>,
    secret: Zeroizing<Vec<u8>>,
}

async fn keygen(
    node: &DkgCtx,
    spec: &CeremonySpec,
    i: u16,
    n: u16,
    primes: Option<ecdsa::PrimeSet>,
    protocol_rx: mpsc::Receiver<signer_protocol::RawIncoming>,
    out_tx: mpsc::Sender<RawOutgoing>,
) -> Result<Produced, DkgError> {
    let eid = spec.execution_id();
    let t = spec.threshold;
    let kind = spec.protocol.protocol_kind();
    let res = match spec.protocol {
        DkgProtocol::Cggmp24 => {
            node.protocol_slots
                .run(kind, move || {
                    let party = channel_party(DeliveryConfig::new(i, n), protocol_rx, out_tx);
                    async move {
                        let share = ecdsa::keygen(party, &eid, i, n, t, None).await?;
                        Ok(Produced {
                            public_key: share.public_key().serialize().to_vec(),
                            xpub: share
                                .xpub(bitcoin::NetworkKind::Test)
                                .map(|x| x.to_string()),
                            secret: share.to_bytes()?,
                        })
                    }
                })
                .await
        }
        DkgProtocol::Frost => {
            node.protocol_slots
                .run(kind, move || {
                    let party = channel_party(DeliveryConfig::new(i, n), protocol_rx, out_tx);
                    async move {
                        let share = frost::keygen(party, &eid, i, n, t).await?;
                        Ok(Produced {
                            public_key: share.public_key().serialize().to_vec(),
                            xpub: share
                                .xpub(bitcoin::NetworkKind::Test)
                                .map(|x| x.to_string()),
                            secret: share.to_bytes()?,
                        })
                    }
                })
                .await
        }
        DkgProtocol::AuxInfo => {
            let primes = primes.ok_or_else(|| {
                DkgError::Aborted("aux info started without a prime set".to_owned())
            })?;
            node.protocol_slots
                .run(kind, move || {
                    let party = channel_party(DeliveryConfig::new(i, n), protocol_rx, out_tx);
                    async move {
                        let aux = ecdsa::aux_info(party, &eid, i, n, primes, None).await?;
                        Ok(Produced {
                            public_key: aux.public_digest().to_vec(),
                            xpub: None,
                            secret: aux.to_bytes()?,
                        })
                    }
                })
                .await
        }
    };
    res.map_err(|e| DkgError::Protocol {
        reason: e.to_string(),
        culprits: e
            .culprits()
            .into_iter()
            .filter_map(|c| spec.participants.get(usize::from(c)).cloned())
            .collect(),
    })
}
