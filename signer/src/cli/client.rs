//! HTTPS client of the operator commands that talk to a node's API (`signer dkg`,
//! `signer keys`): where the API is, which CA to trust and which token to send.
//!
//! By default everything comes from the `cluster.json` of a dev cluster (`signer
//! cluster up`): the first node that answers `/health`, the cluster CA and the
//! admin token. `--api-url`, `--ca-cert` and `--token-file` (or the environment
//! variables `SIGNER_API_URL`, `SIGNER_CA_CERT`, `SIGNER_API_TOKEN_FILE`,
//! `SIGNER_API_TOKEN`) override them, so a production node can be reached without
//! a cluster file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::cli::cluster::ClusterFile;

/// Largest API answer read by the CLI.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;
/// Environment variable holding an API token (never a command-line argument, so it
/// does not show in `ps`).
pub const TOKEN_ENV: &str = "SIGNER_API_TOKEN";

/// Where and how to reach a node's API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOpts {
    /// cluster.json of a dev cluster: API URLs, CA and admin token come from it
    /// unless given below.
    #[arg(long, env = "SIGNER_CLUSTER", default_value = ".cluster/cluster.json")]
    pub cluster: PathBuf,
    /// Node of the cluster file to ask (default: the first that answers /health).
    #[arg(long)]
    pub node: Option<String>,
    /// API base URL, e.g. https://127.0.0.1:7443 (instead of the cluster file's).
    #[arg(long, env = "SIGNER_API_URL", visible_alias = "url")]
    pub api_url: Option<String>,
    /// CA certificate (PEM) the API's certificate must chain to.
    #[arg(long, env = "SIGNER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// File whose first line is the API token (or set SIGNER_API_TOKEN).
    #[arg(long, env = "SIGNER_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// A connected API client for one node. `Debug` shows neither the token nor the
/// cluster file (which holds the admin token).
pub struct ApiClient {
    http: reqwest::Client,
    /// Base URL, without a trailing slash.
    pub base: String,
    /// Node id when known (from the cluster file).
    pub node_id: Option<String>,
    token: SecretString,
    /// The cluster file, when one was used (to reach other nodes).
    pub cluster: Option<ClusterFile>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("node_id", &self.node_id)
            .field("token", &"[REDACTED]")
            .field("cluster", &self.cluster.as_ref().map(|c| &c.cluster_id))
            .finish_non_exhaustive()
    }
}

/// An error answer of the API: HTTP status and the stable code.
#[derive(Debug, thiserror::Error)]
#[error("{node} answered {status} {code}: {message}")]
pub struct ApiRefusal {
    /// Node (id or URL).
    pub node: String,
    /// HTTP status.
    pub status: u16,
    /// Stable error code.
    pub code: String,
    /// Message of the node.
    pub message: String,
}

fn read_token_file(path: &Path) -> anyhow::Result<SecretString> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_TOKEN_FILE_BYTES,
        "token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(SecretString::from(token))
}

impl ApiOpts {
    /// Resolves the options into a client (probing `/health` to choose a node
    /// when neither `--api-url` nor `--node` is given).
    pub async fn connect(&self) -> anyhow::Result<ApiClient> {
        crate::tls::install_crypto_provider();
        let cluster = if self.api_url.is_some() && self.cluster_is_default_and_absent() {
            None
        } else {
            Some(ClusterFile::load(&self.cluster).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; start a cluster with `signer cluster up` or pass --api-url, --ca-cert \
                     and --token-file"
                )
            })?)
        };
        let token = match (&self.token_file, std::env::var(TOKEN_ENV).ok()) {
            (Some(f), _) => read_token_file(f)?,
            (None, Some(t)) if !t.trim().is_empty() => SecretString::from(t.trim().to_owned()),
            _ => match &cluster {
                Some(c) => SecretString::from(c.admin_token.clone()),
                None => anyhow::bail!(
                    "no API token: pass --token-file, set {TOKEN_ENV}, or use --cluster"
                ),
            },
        };
        let ca = match (&self.ca_cert, &cluster) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => c.ca_cert.clone(),
            (None, None) => {
                anyhow::bail!(
                    "no CA certificate: pass --ca-cert (or SIGNER_CA_CERT) or use --cluster"
                )
            }
        };
        let http = crate::tls::api_client(&ca)
            .map_err(|e| anyhow::anyhow!("CA certificate {}: {e}", ca.display()))?;
        let (base, node_id) = match (&self.api_url, &cluster, &self.node) {
            (Some(url), _, _) => (url.trim_end_matches('/').to_owned(), self.node.clone()),
            (None, Some(c), Some(id)) => {
                let n = c.nodes.iter().find(|n| &n.id == id).ok_or_else(|| {
                    let ids: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
                    anyhow::anyhow!(
                        "node {id} is not in {}; nodes: {}",
                        self.cluster.display(),
                        ids.join(", ")
                    )
                })?;
                (n.api_url.clone(), Some(n.id.clone()))
            }
            (None, Some(c), None) => {
                let mut found = None;
                for n in &c.nodes {
                    let ok = http
                        .get(format!("{}/health", n.api_url))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        found = Some((n.api_url.clone(), Some(n.id.clone())));
                        break;
                    }
                }
                found.ok_or_else(|| {
                    anyhow::anyhow!(
                        "no node of {} answers /health; is the cluster up?",
                        self.cluster.display()
                    )
                })?
            }
            (None, None, _) => anyhow::bail!("no API URL: pass --api-url or use --cluster"),
        };
        Ok(ApiClient {
            http,
            base,
            node_id,
            token,
            cluster,
        })
    }

    fn cluster_is_default_and_absent(&self) -> bool {
        self.cluster == Path::new(".cluster/cluster.json") && !self.cluster.exists()
    }
}

impl ApiClient {
    /// A client for the API at `api_url` trusting `ca_cert`, with the token on the
    /// first line of `token_file` (no cluster file; used by `signer-hwi`).
    pub fn from_url(api_url: &str, ca_cert: &Path, token_file: &Path) -> anyhow::Result<ApiClient> {
        crate::tls::install_crypto_provider();
        let token = read_token_file(token_file)?;
        let http = crate::tls::api_client(ca_cert)
            .map_err(|e| anyhow::anyhow!("CA certificate {}: {e}", ca_cert.display()))?;
        Ok(ApiClient {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
            node_id: None,
            token,
            cluster: None,
        })
    }

    /// Name of the node for messages: its id, or the URL.
    pub fn label(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| self.base.clone())
    }

    /// A client for another node of the cluster file (same CA and token).
    pub fn for_node(&self, id: &str) -> Option<ApiClient> {
        let c = self.cluster.as_ref()?;
        let n = c.nodes.iter().find(|n| n.id == id)?;
        Some(ApiClient {
            http: self.http.clone(),
            base: n.api_url.clone(),
            node_id: Some(n.id.clone()),
            token: self.token.clone(),
            cluster: self.cluster.clone(),
        })
    }

    /// `GET path`, JSON answer; an error answer becomes [`ApiRefusal`].
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    /// `GET path`, the answer's body streamed into `out` (no size limit, no total
    /// timeout: an audit export may take long); the bytes written. An error answer
    /// becomes [`ApiRefusal`].
    pub async fn download(&self, path: &str, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(7 * 24 * 3600))
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {} ({}): {e}", self.label(), self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            let json: Option<Value> = serde_json::from_slice(&body).ok();
            let field = |k: &str| {
                json.as_ref()
                    .and_then(|j| j[k].as_str())
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            return Err(ApiRefusal {
                node: self.label(),
                status: status.as_u16(),
                code: field("code"),
                message: field("message"),
            }
            .into());
        }
        let mut n = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer of {}: {e}", self.label()))?
        {
            out.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let mut resp = req
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {} ({}): {e}", self.label(), self.base))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer of {}: {e}", self.label()))?
        {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_RESPONSE_BYTES,
                "answer of {} is larger than {MAX_RESPONSE_BYTES} bytes",
                self.label()
            );
            body.extend_from_slice(&chunk);
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let field = |k: &str| {
                json.as_ref()
                    .and_then(|j| j[k].as_str())
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            let (code, message) = match (field("code"), field("message")) {
                (c, m) if c.is_empty() => (
                    "(no error code)".to_owned(),
                    if m.is_empty() {
                        "the answer has no JSON error body (is this endpoint served by the node?)"
                            .to_owned()
                    } else {
                        m
                    },
                ),
                cm => cm,
            };
            return Err(ApiRefusal {
                node: self.label(),
                status: status.as_u16(),
                code,
                message,
            }
            .into());
        }
        json.ok_or_else(|| anyhow::anyhow!("{} answered {status} with no JSON body", self.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_client_debug_shows_neither_the_token_nor_the_cluster_admin_token() {
        crate::tls::install_crypto_provider();
        let cluster = ClusterFile {
            cluster_id: "dev-x".into(),
            threshold: 2,
            ca_cert: "/ca.pem".into(),
            admin_token: "admin-secret-token-value".into(),
            etcd_endpoints: vec![],
            etcd_prefix: "/p".into(),
            postgres_admin_url: "postgres://u:pw-secret@h/db".into(),
            postgres_bindir: "/bin".into(),
            nodes: vec![],
        };
        let c = ApiClient {
            http: reqwest::Client::new(),
            base: "https://127.0.0.1:1".into(),
            node_id: Some("node-1".into()),
            token: SecretString::from("bearer-secret-token-value"),
            cluster: Some(cluster),
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(
            dbg.contains("node-1") && dbg.contains("[REDACTED]"),
            "{dbg}"
        );
    }

    #[test]
    fn token_file_first_line_is_the_token_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tok");
        std::fs::write(&f, "  tok-123  \nsecond line\n").expect("write");
        assert_eq!(
            read_token_file(&f).expect("reads").expose_secret(),
            "tok-123"
        );
        std::fs::write(&f, "\n").expect("write");
        let e = read_token_file(&f).expect_err("empty").to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&f, vec![b'a'; 5000]).expect("write");
        let e = read_token_file(&f).expect_err("too large").to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
