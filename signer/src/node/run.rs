//! Start-up and shutdown of the node daemon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{liveness, notify, unseal};
use crate::api::auth::AuthState;
use crate::api::{self, AppState};
use crate::audit::AuditEntry;
use crate::compliance::AuditCtx;
use crate::config::NodeConfig;
use crate::dkg::DkgCtx;
use crate::infra::Infra;
use crate::net::Net;
use crate::p2p::MessageKind;
use crate::p2p::{P2p, P2pConfig, PeerConfig};
use crate::presign::PresignCtx;
use crate::router::{Router, RouterBuilder, RouterError};
use crate::store::Store;
use crate::tls;
use crate::tx::TxCtx;

/// Runs the node until SIGTERM or SIGINT; `hardening` is what
/// [`hsm::memory::harden_process`] achieved (custody stays sealed without it).
pub async fn run(cfg: NodeConfig, hardening: hsm::memory::HardeningReport) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let url = cfg.database_url()?;
    notify::status("connecting to the database");
    let store = connect_store_with_retry(&url, cfg.database.max_connections).await?;
    // Round state and signing sessions are in memory: whatever was in flight when
    // this node stopped is expired before it takes part in anything.
    let expired = store
        .expire_in_flight(&cfg.node_id)
        .await
        .context("expiring transactions left in flight")?;
    if expired > 0 {
        tracing::warn!(
            count = expired,
            "transactions left in flight at the last stop expired"
        );
    }
    // A reshare this node was part of when it stopped never switched here: its
    // pending share is deleted and the old share stays (docs/RESHARING.md).
    let failed = store
        .fail_pending_reshares(&cfg.node_id)
        .await
        .context("failing reshares left pending")?;
    if failed > 0 {
        tracing::warn!(
            count = failed,
            "reshares left pending at the last stop failed"
        );
    }
    // Likewise key ceremonies: their runs were in memory.
    let interrupted = store
        .fail_interrupted_ceremonies(&cfg.node_id)
        .await
        .context("failing key ceremonies left in flight")?;
    if interrupted > 0 {
        tracing::warn!(
            count = interrupted,
            "key ceremonies left in flight at the last stop failed"
        );
    }
    notify::status("starting services");
    let api_tls = tls::api_server_config(&cfg.tls).context("api tls configuration")?;
    let listener = TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("binding api listener {}", cfg.api.listen))?;
    let (p2p, inbound) = P2p::start(p2p_config(&cfg))
        .await
        .context("starting the QUIC endpoint")?;
    let net = Net::new(p2p);
    let infra = Arc::new(Infra::new(cfg, store, net.clone(), hardening));
    // Certificates about to expire: warned at start, then daily.
    tokio::spawn({
        let infra = infra.clone();
        async move {
            loop {
                infra.warn_expiring_certificates();
                tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
            }
        }
    });
    let dkg = Arc::new(DkgCtx::new(infra.clone()));
    let presign = Arc::new(PresignCtx::new(dkg.clone()));
    let node = Arc::new(TxCtx::new(presign.clone()));
    let audit = Arc::new(AuditCtx::new(infra.clone()));
    let auth = Arc::new(AuthState::new(
        infra.cfg.api.unauthenticated_rate_limit_per_min,
    ));
    tokio::spawn(crate::api::auth::follow_revocations(
        auth.clone(),
        infra.store.pool().clone(),
    ));

    let peers = infra.cfg.p2p.peers.len();
    let (router, queues) = build_router(peers).context("building the message router")?;
    let Queues {
        net: net_rx,
        sessions: sessions_rx,
        dkg: dkg_rx,
        presign: presign_rx,
        tx: tx_rx,
        audit: audit_rx,
    } = queues;
    tokio::spawn(net.clone().serve(net_rx));
    {
        let infra = infra.clone();
        tokio::spawn(async move { crate::session::serve(&infra.sessions, sessions_rx).await });
    }
    tokio::spawn(crate::dkg::serve(dkg.clone(), dkg_rx));
    // Reshares left `uncertain` (this node confirmed but did not switch): ask the
    // other participants for the outcome (docs/RESHARING.md, outcome protocol).
    tokio::spawn(crate::dkg::reshare_outcome::resume(dkg.clone()));
    tokio::spawn(crate::presign::serve(presign.clone(), presign_rx));
    tokio::spawn(crate::tx::serve(node.clone(), tx_rx));
    tokio::spawn(crate::compliance::serve(audit.clone(), audit_rx));
    tokio::spawn(crate::compliance::checkpoints::run(
        audit.clone(),
        shutdown.clone(),
    ));

    tokio::spawn(crate::dkg::primes::run(dkg.clone()));
    tokio::spawn(crate::tx::announce_vote_key(node.clone()));
    tokio::spawn(crate::chain::run(node.clone()));
    tokio::spawn(crate::presign::pool::run(presign.clone()));
    tokio::spawn(crate::dkg::material::warm(dkg.clone()));
    tokio::spawn(crate::tx::warm_wallets(node.clone()));
    tokio::spawn(crate::tx::spent::run(node.clone()));
    tokio::spawn(crate::tx::voting::expire_at_deadlines(node.clone()));
    tokio::spawn(crate::fault::flood_peers(net.clone()));
    crate::fault::warn_if_armed();
    write_pid_file(&node.cfg)?;
    let started_at = chrono::Utc::now();

    let app = api::router(AppState {
        node: node.clone(),
        auth: auth.clone(),
        audit: audit.clone(),
    });
    let api_task = tokio::spawn(api::serve(listener, api_tls, app, shutdown.clone()));
    let dispatcher = tokio::spawn(router.run(inbound, shutdown.clone()));
    let keeper = tokio::spawn(
        net.clone()
            .keep_connected(Duration::from_secs(2), shutdown.clone()),
    );
    let liveness = tokio::spawn(liveness::maintain(
        infra.clone(),
        started_at,
        shutdown.clone(),
    ));
    tokio::spawn(liveness::watch_etcd_members(
        infra.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(unseal::unseal(dkg.clone(), auth, shutdown.clone()));
    // READY=1 once unsealed; WATCHDOG=1 while these loops run and the database answers.
    let loops = vec![
        api_task.abort_handle(),
        dispatcher.abort_handle(),
        keeper.abort_handle(),
        liveness.abort_handle(),
    ];
    tokio::spawn(notify::supervise(infra.clone(), loops, shutdown.clone()));

    node.store
        .audit(
            &node.cfg.node_id,
            AuditEntry::new("node", "node.start").details(serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "api": node.cfg.api.listen.to_string(),
                "p2p": node.cfg.p2p.listen.to_string(),
            })),
        )
        .await?;
    tracing::info!(node_id = %node.cfg.node_id, api = %node.cfg.api.listen, "node started");

    wait_for_signal().await;
    tracing::info!(node_id = %node.cfg.node_id, "shutting down");
    notify::stopping();
    shutdown.cancel();
    let _ = node
        .store
        .audit(&node.cfg.node_id, AuditEntry::new("node", "node.stop"))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), liveness).await;
    dispatcher.abort();
    keeper.abort();
    net.p2p.shutdown().await;
    remove_pid_file(&node.cfg);
    Ok(())
}

/// Inbound queue of each service.
struct Queues {
    net: crate::router::ServiceRx,
    sessions: crate::router::ServiceRx,
    dkg: crate::router::ServiceRx,
    presign: crate::router::ServiceRx,
    tx: crate::router::ServiceRx,
    audit: crate::router::ServiceRx,
}

/// Queue capacity of the protocol sessions (every protocol message of every running
/// ceremony, presigning and signing session).
const SESSION_QUEUE: usize = 4096;
/// Queue capacity of each other service.
const SERVICE_QUEUE: usize = 1024;
/// Queue capacity of the audit service (checkpoint rounds and export pages).
const AUDIT_QUEUE: usize = 256;

/// The routing table: each service and the kinds it owns. Each queue's per-peer
/// quota is its capacity shared among the peers.
fn build_router(peers: usize) -> Result<(Router, Queues), RouterError> {
    let quota = |capacity: usize| (capacity / peers.max(1)).max(16);
    let mut b = RouterBuilder::new();
    let queues = Queues {
        net: b.service("net", Net::KINDS, SERVICE_QUEUE, quota(SERVICE_QUEUE)),
        sessions: b.service(
            "sessions",
            crate::session::KINDS,
            SESSION_QUEUE,
            quota(SESSION_QUEUE),
        ),
        dkg: b.service(
            "dkg",
            crate::dkg::KINDS,
            SERVICE_QUEUE,
            quota(SERVICE_QUEUE),
        ),
        presign: b.service(
            "presign",
            crate::presign::KINDS,
            SERVICE_QUEUE,
            quota(SERVICE_QUEUE),
        ),
        tx: b.service("tx", crate::tx::KINDS, SERVICE_QUEUE, quota(SERVICE_QUEUE)),
        audit: b.service(
            "audit",
            crate::compliance::KINDS,
            AUDIT_QUEUE,
            quota(AUDIT_QUEUE),
        ),
    };
    Ok((b.build(MessageKind::ALL)?, queues))
}

async fn connect_store_with_retry(url: &str, max: u32) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Store::connect(url, max).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("connecting to the node database"),
        }
    }
}

fn p2p_config(cfg: &NodeConfig) -> P2pConfig {
    let mut p = P2pConfig::new(
        cfg.node_id.clone(),
        cfg.p2p.listen,
        cfg.p2p
            .peers
            .iter()
            .map(|peer| PeerConfig {
                id: peer.id.clone(),
                addr: peer.addr,
            })
            .collect(),
        cfg.tls.ca_cert.clone(),
        cfg.tls.cert.clone(),
        cfg.tls.key.clone(),
    );
    p.max_frame_bytes = cfg.p2p.max_frame_bytes;
    p.keep_alive = Duration::from_secs(cfg.p2p.keep_alive_secs);
    p.idle_timeout = Duration::from_secs(cfg.p2p.idle_timeout_secs);
    if let Some(level) = crate::fault::wire_level() {
        p.wire_level = level;
    }
    p
}

fn write_pid_file(cfg: &NodeConfig) -> anyhow::Result<()> {
    if let Some(dir) = &cfg.data_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("node.pid"), std::process::id().to_string())?;
    }
    Ok(())
}

fn remove_pid_file(cfg: &NodeConfig) {
    if let Some(dir) = &cfg.data_dir {
        let _ = std::fs::remove_file(dir.join("node.pid"));
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_routing_table_gives_every_kind_one_owner() {
        for peers in [0, 1, 4, 9] {
            assert!(build_router(peers).is_ok());
        }
    }
}
