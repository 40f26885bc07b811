//! Start-up and shutdown of the node daemon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::net::Net;
use super::{custody, liveness, NodeCtx};
use crate::api::{self, AppState};
use crate::audit::AuditEntry;
use crate::config::NodeConfig;
use crate::p2p::{P2p, P2pConfig, PeerConfig};
use crate::store::Store;
use crate::tls;

/// Runs the node until SIGTERM or SIGINT.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let url = cfg.database_url()?;
    let store = connect_store_with_retry(&url, cfg.database.max_connections).await?;
    let api_tls = tls::api_server_config(&cfg.tls).context("api tls configuration")?;
    let listener = TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("binding api listener {}", cfg.api.listen))?;
    let (p2p, inbound) = P2p::start(p2p_config(&cfg))
        .await
        .context("starting the QUIC endpoint")?;
    let net = Net::new(p2p);
    let node = Arc::new(NodeCtx::new(cfg, store, net.clone()));
    let (ceremony_tx, ceremony_rx) = tokio::sync::mpsc::channel(4096);
    net.set_ceremony_handler(ceremony_tx);
    tokio::spawn(crate::dkg::serve(node.clone(), ceremony_rx));
    tokio::spawn(crate::dkg::primes::run(node.clone()));
    tokio::spawn(crate::tx::announce_vote_key(node.clone()));
    tokio::spawn(crate::chain::run(node.clone()));
    tokio::spawn(crate::presign::pool::run(node.clone()));
    tokio::spawn(crate::tx::material::warm(node.clone()));
    crate::fault::warn_if_armed();
    write_pid_file(&node.cfg)?;
    let started_at = chrono::Utc::now();

    let app = api::router(AppState { node: node.clone() });
    let api_task = tokio::spawn(api::serve(listener, api_tls, app, shutdown.clone()));
    let dispatcher = tokio::spawn(net.clone().dispatch(inbound, shutdown.clone()));
    let keeper = tokio::spawn(
        net.clone()
            .keep_connected(Duration::from_secs(2), shutdown.clone()),
    );
    let liveness = tokio::spawn(liveness::maintain(
        node.clone(),
        started_at,
        shutdown.clone(),
    ));
    tokio::spawn(custody::unseal(node.clone(), shutdown.clone()));

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
    notify_systemd("READY=1");

    wait_for_signal().await;
    tracing::info!(node_id = %node.cfg.node_id, "shutting down");
    notify_systemd("STOPPING=1");
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

/// Sends a state line to systemd when started with `Type=notify`.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create notify socket");
            return;
        }
    };
    if let Err(e) = sock.send_to(state.as_bytes(), &path) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
