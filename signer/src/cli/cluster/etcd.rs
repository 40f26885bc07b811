//! A single-member etcd on loopback for the dev cluster.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::procs::{free_port, spawn_logged, wait_until};

/// A started etcd.
#[derive(Debug)]
pub struct Etcd {
    /// Client URL.
    pub endpoint: String,
}

/// Starts etcd with its data in `dir` and waits until it is healthy.
pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
    let bin = which("etcd").ok_or_else(|| {
        anyhow::anyhow!("etcd binary not found; install Debian package etcd-server (make deps)")
    })?;
    std::fs::create_dir_all(dir)?;
    let client = free_port()?;
    let peer = free_port()?;
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(bin);
    cmd.arg("--name")
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen-client-urls")
        .arg(&endpoint)
        .arg("--advertise-client-urls")
        .arg(&endpoint)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("dev={peer_url}"))
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
    let pid = spawn_logged(cmd, &dir.join("etcd.log"))?;
    std::fs::write(dir.join("etcd.pid"), pid.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let health = format!("{endpoint}/health");
    wait_until("etcd to become healthy", Duration::from_secs(30), || {
        let http = http.clone();
        let health = health.clone();
        async move {
            match http.get(&health).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        }
    })
    .await?;
    Ok(Etcd { endpoint })
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
