//! The local development cluster (`signer cluster up|down`): a throwaway
//! PostgreSQL with one database and role per node, an etcd on loopback, a private
//! CA, and N node processes. Tests use the same code path.

mod add;
mod demo;
mod etcd;
mod postgres;
mod procs;
mod up;

pub use add::add_node;
pub use demo::demo_sign;
pub use up::{down, start_node, up, UpOptions};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `cluster.json`: how to reach a running dev cluster (mode 0600: holds the admin
/// token and database URLs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Cluster name.
    pub cluster_id: String,
    /// Signing threshold.
    pub threshold: u16,
    /// CA certificate to trust for the API and QUIC.
    pub ca_cert: PathBuf,
    /// An admin API token valid on every node.
    pub admin_token: String,
    /// etcd client endpoints.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix of the cluster.
    pub etcd_prefix: String,
    /// Superuser URL of the dev PostgreSQL (tests and backups).
    pub postgres_admin_url: String,
    /// PostgreSQL binaries used.
    pub postgres_bindir: PathBuf,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// One node of a dev cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// HTTPS API base URL.
    pub api_url: String,
    /// QUIC address.
    pub quic_addr: String,
    /// Node config file.
    pub config: PathBuf,
    /// Node directory (pid file, log).
    pub dir: PathBuf,
    /// Node log file.
    pub log: PathBuf,
    /// The node's own database URL.
    pub database_url: String,
    /// Database name.
    pub database: String,
}

impl ClusterFile {
    /// Reads a cluster file.
    pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        anyhow::ensure!(meta.len() < 1024 * 1024, "{} is too large", path.display());
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid cluster file {}: {e}", path.display()))
    }

    /// Writes the file with mode 0600.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
