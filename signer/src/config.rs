//! Node configuration: one TOML file, every field documented, with environment
//! overrides.
//!
//! Overrides use `SIGNER__<SECTION>__<FIELD>` (double underscores separate the path,
//! case-insensitive), for example `SIGNER__DATABASE__URL=postgres://...` or
//! `SIGNER__API__LISTEN=0.0.0.0:8443`. The value is parsed as a TOML value when it
//! parses as one (numbers, booleans, arrays) and taken as a string otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bound on the size of a configuration file.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's identity; must match the identity in its certificate
    /// (`[a-z0-9-]{1,32}`).
    pub node_id: String,
    /// Name of the cluster, used in logs and the etcd prefix default.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Signing threshold t: how many nodes must take part in a signature.
    pub threshold: u16,
    /// Where this node keeps its pid file and other small runtime files.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// REST API settings.
    pub api: ApiConfig,
    /// QUIC peer-to-peer settings.
    pub p2p: P2pSection,
    /// Certificates (PEM) of this node and of the cluster CA.
    pub tls: TlsConfig,
    /// This node's own PostgreSQL database.
    pub database: DatabaseConfig,
    /// etcd, used for liveness only.
    pub etcd: EtcdConfig,
    /// Key custody (HSM/TPM); absent means the node runs sealed for key operations.
    #[serde(default)]
    pub custody: Option<CustodyConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Aux-info ceremonies and the safe-prime pool.
    #[serde(default)]
    pub aux: AuxConfig,
    /// Key lifecycle operations (reshare, refresh).
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// Wallet: network and intake limits.
    #[serde(default)]
    pub wallet: WalletConfig,
    /// Transaction policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Optional Bitcoin Core backend (UTXO scan, broadcast, confirmations).
    #[serde(default)]
    pub chain: ChainConfig,
    /// Presignature pool (CGGMP24 ECDSA keys).
    #[serde(default)]
    pub presign: PresignConfig,
    /// Process hardening (locked memory, no core dumps).
    #[serde(default)]
    pub hardening: HardeningConfig,
    /// Cross-node audit checkpoints (see docs/AUDIT.md).
    #[serde(default)]
    pub audit: AuditConfig,
}

/// Process hardening: what the node requires before it unseals custody.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardeningConfig {
    /// DEVELOPMENT ONLY: unseal even when the process memory could not be locked
    /// (`mlockall`) or core dumps / ptrace could not be disabled. Off by default: the
    /// node then stays sealed (`/ready`: `custody.code = "unhardened_process"`).
    /// When used, the node logs a warning and writes `custody.unhardened_override`
    /// to the audit log. `signer cluster up` sets it for dev clusters.
    #[serde(default)]
    pub allow_unhardened_memory: bool,
}

/// The background presignature pool (see docs/PRESIGNATURES.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignConfig {
    /// Generate presignatures in the background and use them for ECDSA signing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Presignatures kept per (key, signer set, derivation path).
    #[serde(default = "default_presign_target")]
    pub target: usize,
    /// Refill starts when the available count is below this (at most `target`).
    #[serde(default = "default_presign_low")]
    pub low_watermark: usize,
    /// Generation sessions running at the same time in the whole cluster (etcd lock
    /// slots); each party of a session uses one dedicated thread.
    #[serde(default = "default_one")]
    pub max_concurrent: usize,
    /// Presignatures generated per session (one announce and barrier for all).
    #[serde(default = "default_presign_batch")]
    pub batch: usize,
    /// Derivation paths per key and signer set the pool serves (paths of unspent
    /// UTXOs first, then the first receive address).
    #[serde(default = "default_presign_paths")]
    pub max_paths: usize,
    /// Seconds the signing leader waits for the partial signatures of a presignature
    /// before it falls back (another signer set or full signing).
    #[serde(default = "default_presign_partial_timeout")]
    pub partial_timeout_secs: u64,
    /// Seconds between pool checks.
    #[serde(default = "default_presign_interval")]
    pub check_interval_secs: u64,
    /// NV index (owner range, `0x01800000..=0x01bfffff`) of a TPM monotonic counter
    /// that anchors the restore watermark: every presignature use increments it
    /// before its transaction commits, so a database restored together with the
    /// data directory is still detected (the TPM cannot go back). Defined by
    /// `signer hsm init`. Required off regtest when the pool runs on a TPM custody.
    #[serde(default)]
    pub tpm_counter_index: Option<u32>,
    /// TCTI of the TPM holding that counter; default: the custody TPM's. Lets a
    /// node whose keys are in a PKCS#11 HSM anchor its watermark in the host's TPM.
    #[serde(default)]
    pub tpm_counter_tcti: Option<String>,
    /// File holding the counter's auth value (mode 0600); default: the custody TPM
    /// storage key's auth value (none with a PKCS#11 custody).
    #[serde(default)]
    pub tpm_counter_auth_file: Option<PathBuf>,
}

impl Default for PresignConfig {
    fn default() -> Self {
        PresignConfig {
            enabled: true,
            target: default_presign_target(),
            low_watermark: default_presign_low(),
            max_concurrent: 1,
            batch: default_presign_batch(),
            max_paths: default_presign_paths(),
            partial_timeout_secs: default_presign_partial_timeout(),
            check_interval_secs: default_presign_interval(),
            tpm_counter_index: None,
            tpm_counter_tcti: None,
            tpm_counter_auth_file: None,
        }
    }
}

fn default_one() -> usize {
    1
}
fn default_presign_target() -> usize {
    4
}
fn default_presign_low() -> usize {
    2
}
fn default_presign_batch() -> usize {
    4
}
fn default_presign_paths() -> usize {
    4
}
fn default_presign_partial_timeout() -> u64 {
    10
}
fn default_presign_interval() -> u64 {
    2
}

/// Wallet settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletConfig {
    /// Bitcoin network of every key and address (`bitcoin`, `testnet`, `signet`,
    /// `regtest`).
    #[serde(default = "default_network")]
    pub network: bitcoin::Network,
    /// Refuse P2WPKH inputs without the full previous transaction.
    #[serde(default)]
    pub require_non_witness_utxo: bool,
    /// Highest acceptable fee rate (sat/vB).
    #[serde(default = "default_max_fee_rate")]
    pub max_fee_rate_sat_vb: u64,
    /// Highest acceptable absolute fee (sats).
    #[serde(default = "default_max_fee")]
    pub max_fee_sats: u64,
    /// Seconds a voting round stays open.
    #[serde(default = "default_vote_secs")]
    pub vote_timeout_secs: u64,
    /// Seconds the signing of one transaction may take (on a follower: after its
    /// vote deadline, it serves no sign request for the transaction any more).
    #[serde(default = "default_sign_secs")]
    pub sign_timeout_secs: u64,
    /// Seconds a signing run of one input may go without any protocol message from
    /// its participants before it is stalled: the signers it waits for are named
    /// absent and the leader tries again without them (within `sign_timeout_secs`).
    #[serde(default = "default_sign_stall_secs")]
    pub sign_stall_timeout_secs: u64,
    /// Latest voting deadline this node accepts, in seconds from when it receives a
    /// proposal: a leader's later deadline is cut down to it.
    #[serde(default = "default_max_vote_deadline_secs")]
    pub max_vote_deadline_secs: u64,
    /// Most payments of one key this node, as their leader, proposes in one batch
    /// (1 to 64, default 64; issue 21, docs/BATCHING.md); 1 proposes each on its
    /// own. Batches go out only while every participant's connection speaks wire
    /// level 2 (a release that knows batch frames): in a rolling upgrade a node
    /// proposes each payment alone until the last of them runs such a release.
    #[serde(default = "default_proposal_batch_max")]
    pub proposal_batch_max: usize,
    /// How long a lone payment waits for others to share its batch, in
    /// milliseconds (only when `proposal_batch_max` is above 1).
    #[serde(default = "default_proposal_batch_linger_ms")]
    pub proposal_batch_linger_ms: u64,
    /// How long this node, as a leader, selects coins from one read of a key's
    /// largest selectable outputs, in milliseconds (issue 21; 0 reads them for
    /// every payment). Outputs released since the read become selectable after it.
    #[serde(default = "default_selection_view_ttl_ms")]
    pub selection_view_ttl_ms: u64,
}

impl Default for WalletConfig {
    fn default() -> Self {
        WalletConfig {
            network: default_network(),
            require_non_witness_utxo: false,
            max_fee_rate_sat_vb: default_max_fee_rate(),
            max_fee_sats: default_max_fee(),
            vote_timeout_secs: default_vote_secs(),
            sign_timeout_secs: default_sign_secs(),
            sign_stall_timeout_secs: default_sign_stall_secs(),
            max_vote_deadline_secs: default_max_vote_deadline_secs(),
            proposal_batch_max: default_proposal_batch_max(),
            proposal_batch_linger_ms: default_proposal_batch_linger_ms(),
            selection_view_ttl_ms: default_selection_view_ttl_ms(),
        }
    }
}

fn default_network() -> bitcoin::Network {
    bitcoin::Network::Regtest
}
fn default_max_fee_rate() -> u64 {
    1_000
}
fn default_max_fee() -> u64 {
    10_000_000
}
fn default_vote_secs() -> u64 {
    60
}
fn default_sign_secs() -> u64 {
    120
}
fn default_sign_stall_secs() -> u64 {
    30
}

impl WalletConfig {
    /// How long a signing run may go without protocol messages (at least 2 s, at
    /// most the whole signing budget).
    pub fn sign_stall_timeout(&self) -> Duration {
        Duration::from_secs(
            self.sign_stall_timeout_secs
                .clamp(2, self.sign_timeout_secs.max(5)),
        )
    }
}
fn default_max_vote_deadline_secs() -> u64 {
    300
}
/// Most proposals one batch carries (`[wallet] proposal_batch_max`; the wire's
/// bound: the transaction wire module uses this constant).
pub const MAX_PROPOSAL_BATCH: usize = 64;

fn default_proposal_batch_max() -> usize {
    MAX_PROPOSAL_BATCH
}
fn default_proposal_batch_linger_ms() -> u64 {
    2
}
fn default_selection_view_ttl_ms() -> u64 {
    1_000
}

/// Cross-node audit checkpoints (`[audit]`, see docs/AUDIT.md): every node's audit
/// head (sequence number and hash), co-signed with the nodes' vote keys and stored
/// in every node's audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between periodic checkpoints (default 300, at least 1; dev and test
    /// clusters may use a few seconds).
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// Co-signatures a checkpoint needs. The cluster threshold `t` (top-level
    /// `threshold`) is the floor and the default; a larger value up to the number of
    /// nodes may be set, a smaller one is refused.
    #[serde(default)]
    pub checkpoint_quorum: Option<u16>,
    /// Propose a checkpoint after each transaction this node led to `signed`.
    #[serde(default = "default_true")]
    pub checkpoint_after_signing: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
            checkpoint_quorum: None,
            checkpoint_after_signing: true,
        }
    }
}

fn default_checkpoint_interval_secs() -> u64 {
    300
}

impl AuditConfig {
    /// Checks the section against the cluster threshold and size.
    fn check(&self, threshold: u16, total_nodes: usize) -> Result<(), String> {
        if !(1..=86_400).contains(&self.checkpoint_interval_secs) {
            return Err("audit.checkpoint_interval_secs must be between 1 and 86400".to_owned());
        }
        if let Some(q) = self.checkpoint_quorum {
            if q < threshold || usize::from(q) > total_nodes {
                return Err(format!(
                    "audit.checkpoint_quorum {q} must be between the threshold ({threshold}) \
                     and the number of nodes ({total_nodes})"
                ));
            }
        }
        Ok(())
    }
}

/// Policy settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (see docs/POLICY.md), read at every evaluation so an edited
    /// file takes effect without a restart; its hash is in every vote. Without one,
    /// the node votes to reject every transaction (`no_policy_configured`).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Bitcoin Core backend (`[chain]`); off unless `bitcoind_rpc_url` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC URL of a Bitcoin Core node of the wallet's network, e.g.
    /// `http://127.0.0.1:18443` (regtest). Unset: no backend.
    #[serde(default)]
    pub bitcoind_rpc_url: Option<String>,
    /// Bitcoin Core's `.cookie` file (read at every call, since bitcoind rewrites
    /// it at each start). Exclusive with `rpc_user`.
    #[serde(default)]
    pub rpc_cookie_file: Option<PathBuf>,
    /// RPC user (`rpcuser` / `rpcauth`), with `rpc_password_file`.
    #[serde(default)]
    pub rpc_user: Option<String>,
    /// File whose first line is the RPC password (never in the config itself).
    #[serde(default)]
    pub rpc_password_file: Option<PathBuf>,
    /// Seconds between two rounds of scan, broadcast and confirmation checks.
    #[serde(default = "default_chain_poll")]
    pub poll_secs: u64,
    /// Import the UTXOs of every loaded key from the node's UTXO set
    /// (`scantxoutset`) at each round.
    #[serde(default = "default_true")]
    pub scan: bool,
    /// Send signed transactions with `sendrawtransaction` and follow them to
    /// `confirmed`.
    #[serde(default)]
    pub broadcast: bool,
    /// Seconds one RPC call may take (`scantxoutset` on a large chain is slow).
    #[serde(default = "default_chain_timeout")]
    pub timeout_secs: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            bitcoind_rpc_url: None,
            rpc_cookie_file: None,
            rpc_user: None,
            rpc_password_file: None,
            poll_secs: default_chain_poll(),
            scan: true,
            broadcast: false,
            timeout_secs: default_chain_timeout(),
        }
    }
}

fn default_chain_poll() -> u64 {
    10
}
fn default_chain_timeout() -> u64 {
    120
}
fn default_true() -> bool {
    true
}

impl ChainConfig {
    /// Checks the section: a URL with exactly one way to authenticate.
    pub fn check(&self) -> Result<(), String> {
        let Some(url) = &self.bitcoind_rpc_url else {
            return Ok(());
        };
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("chain.bitcoind_rpc_url {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "chain.bitcoind_rpc_url {url:?} must be an http or https URL"
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "chain.bitcoind_rpc_url must not carry credentials; use rpc_cookie_file or \
                 rpc_user and rpc_password_file"
                    .to_owned(),
            );
        }
        match (
            &self.rpc_cookie_file,
            &self.rpc_user,
            &self.rpc_password_file,
        ) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(
                    "chain: set rpc_cookie_file, or rpc_user and rpc_password_file \
                     (one of the two)"
                        .to_owned(),
                )
            }
        }
        if self.poll_secs == 0 || self.timeout_secs == 0 {
            return Err("chain.poll_secs and chain.timeout_secs must be positive".to_owned());
        }
        Ok(())
    }
}

/// Aux-info ceremonies and the background pool of pregenerated safe primes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuxConfig {
    /// Prime sets the node keeps ready (generated in the background, one at a time,
    /// on a dedicated thread; ~35 s of one core per set). 0 disables generation.
    #[serde(default = "default_prime_target")]
    pub prime_pool_target: usize,
    /// Bound of one aux-info ceremony on a participant, in seconds (the barrier
    /// included: a participant whose pool is empty generates a set first).
    #[serde(default = "default_aux_timeout")]
    pub ceremony_timeout_secs: u64,
    /// TESTS ONLY: files with published prime sets (`PrimeSet` JSON, e.g.
    /// `protocol/fixtures/test-primes/primes-0.json`) imported into the pool at start.
    /// Anyone can read those primes: aux info built from them protects nothing. The
    /// node logs a warning and marks such sets `test_fixture`; once they are all
    /// taken, a ceremony reuses them (round robin) instead of generating a set inline.
    /// Refused (the node does not start) unless `[wallet] network = "regtest"`.
    #[serde(default)]
    pub insecure_test_primes: Vec<PathBuf>,
}

impl Default for AuxConfig {
    fn default() -> Self {
        AuxConfig {
            prime_pool_target: default_prime_target(),
            ceremony_timeout_secs: default_aux_timeout(),
            insecure_test_primes: Vec::new(),
        }
    }
}

fn default_prime_target() -> usize {
    2
}
/// Key lifecycle operations: this node's vote on a proposed reshare or refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Whether this node approves reshare/refresh proposals that pass its checks
    /// (`false`: it votes reject with reason `lifecycle_refused_by_policy`). A reshare
    /// starts only with approving votes of at least the key's threshold of nodes.
    #[serde(default = "default_true")]
    pub approve_reshare: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            approve_reshare: true,
        }
    }
}

fn default_aux_timeout() -> u64 {
    600
}

fn default_cluster_id() -> String {
    "default".to_owned()
}

/// REST API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of the HTTPS API.
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests per minute allowed to a token that has no limit of its own.
    #[serde(default = "default_rate")]
    pub default_rate_limit_per_min: u32,
    /// Requests per minute allowed per client address for requests without a valid
    /// token (bounds token guessing).
    #[serde(default = "default_unauth_rate")]
    pub unauthenticated_rate_limit_per_min: u32,
    /// Payment submissions (`POST /api/v1/transactions`) validated at once; more
    /// wait for a turn, in arrival order (nothing is refused). Each one in progress
    /// holds its coin selection, PSBT and answer (about 80 KiB), and a node's
    /// memory is locked: a burst's high-water mark stays resident.
    #[serde(default = "default_max_concurrent_submissions")]
    pub max_concurrent_submissions: usize,
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_rate() -> u32 {
    600
}
fn default_unauth_rate() -> u32 {
    120
}
fn default_max_concurrent_submissions() -> usize {
    16
}

/// QUIC peer-to-peer settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Every other node of the cluster.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Largest accepted frame payload in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// QUIC keep-alive interval in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// QUIC idle timeout in seconds.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
}

fn default_max_frame() -> usize {
    4 * 1024 * 1024
}
fn default_keep_alive() -> u64 {
    5
}
fn default_idle() -> u64 {
    60
}

/// A peer node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's node id; its certificate must carry this identity.
    pub id: String,
    /// The peer's QUIC address.
    pub addr: SocketAddr,
    /// The peer's API URL (for status pages and operator tools).
    #[serde(default)]
    pub api_url: Option<String>,
}

/// TLS files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate (PEM); the only trust root for peers.
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Database settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL URL of this node's own database. Prefer `url_file` or the
    /// `SIGNER__DATABASE__URL` override so the password is not in the file.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL (for example a systemd credential).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    16
}

/// etcd settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client endpoints, e.g. `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Every key this node writes lives under this prefix.
    pub prefix: String,
    /// Lease TTL of the node's registration in seconds; a dead node disappears from
    /// cluster status after at most this long.
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: i64,
}

fn default_ttl() -> i64 {
    5
}

/// Key custody backend (HSM via PKCS#11, or TPM 2.0). Secrets are read from files
/// or systemd credentials, never from this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum CustodyConfig {
    /// A PKCS#11 module (SoftHSM2 in development).
    Pkcs11 {
        /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
        module: PathBuf,
        /// Token label (slot ids change, labels do not).
        token_label: String,
        /// Label of the non-extractable AES-256 key-encryption key in the token.
        #[serde(default = "default_kek_label")]
        kek_label: String,
        /// File holding the user PIN (mode 0600).
        #[serde(default)]
        pin_file: Option<PathBuf>,
        /// Name of a systemd credential holding the PIN (`LoadCredential=`).
        #[serde(default)]
        pin_credential: Option<String>,
        /// SoftHSM2 configuration, exported as `SOFTHSM2_CONF` before the module
        /// loads (development and tests).
        #[serde(default)]
        softhsm2_conf: Option<PathBuf>,
        /// Acknowledges running a software token (SoftHSM) with `wallet.network =
        /// "bitcoin"`: its token files and the PIN on one disk mean a disk image
        /// yields the KEK. Refused without this.
        #[serde(default)]
        accept_software_token_on_bitcoin: bool,
    },
    /// A TPM 2.0.
    Tpm {
        /// TCTI string, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
        tcti: String,
        /// Persistent handle of the storage key.
        #[serde(default = "default_tpm_handle")]
        persistent_handle: u32,
        /// File holding the storage key's auth value (mode 0600).
        #[serde(default)]
        key_auth_file: Option<PathBuf>,
        /// Name of a systemd credential holding the storage key's auth value
        /// (`LoadCredentialEncrypted=`; `$CREDENTIALS_DIRECTORY/<name>`), instead of
        /// `key_auth_file`. One of the two is required unless `wallet.network` is
        /// regtest.
        #[serde(default)]
        key_auth_credential: Option<String>,
        /// File holding the owner hierarchy auth (needed by `signer hsm init`).
        #[serde(default)]
        owner_auth_file: Option<PathBuf>,
        /// Expected TPM name of the storage key (hex, `000b…`, as printed by `signer
        /// hsm init` and `signer hsm check`); any other key at the handle is refused.
        /// Required unless `wallet.network` is regtest.
        #[serde(default)]
        key_name: Option<String>,
        /// PCR indices (SHA-256 bank, 0..=23) whose current values every sealed data
        /// key is bound to (PolicyPCR); empty: no PCR policy.
        #[serde(default)]
        pcrs: Vec<u8>,
    },
}

/// Whether `module` is a software PKCS#11 token (SoftHSM), judged by its file
/// name.
fn is_software_token(module: &Path) -> bool {
    module
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_ascii_lowercase().contains("softhsm"))
}

fn default_kek_label() -> String {
    "signer-kek".to_owned()
}
fn default_tpm_handle() -> u32 {
    0x8101_0020
}

impl CustodyConfig {
    /// The `hsm` crate's view of this configuration.
    pub fn to_hsm(&self) -> Result<hsm::CustodyConfig, String> {
        match self {
            CustodyConfig::Pkcs11 {
                module,
                token_label,
                kek_label,
                pin_file,
                pin_credential,
                ..
            } => {
                let pin = match (pin_file, pin_credential) {
                    (Some(f), None) => hsm::PinSource::File(f.clone()),
                    (None, Some(c)) => hsm::PinSource::Credential(c.clone()),
                    _ => {
                        return Err(
                            "custody: set exactly one of pin_file and pin_credential".to_owned()
                        )
                    }
                };
                Ok(hsm::CustodyConfig::Pkcs11(hsm::pkcs11::Pkcs11Config {
                    module: module.clone(),
                    token_label: token_label.clone(),
                    kek_label: kek_label.clone(),
                    pin,
                }))
            }
            CustodyConfig::Tpm {
                tcti,
                persistent_handle,
                key_auth_file,
                key_auth_credential,
                owner_auth_file,
                key_name,
                pcrs,
            } => {
                let key_auth = match (key_auth_file, key_auth_credential) {
                    (Some(f), None) => Some(hsm::PinSource::File(f.clone())),
                    (None, Some(c)) => Some(hsm::PinSource::Credential(c.clone())),
                    (None, None) => None,
                    (Some(_), Some(_)) => {
                        return Err(
                            "custody: set at most one of key_auth_file and key_auth_credential"
                                .to_owned(),
                        )
                    }
                };
                let tpm = hsm::tpm::TpmConfig {
                    tcti: tcti.clone(),
                    persistent_handle: *persistent_handle,
                    key_auth,
                    owner_auth: owner_auth_file.clone().map(hsm::PinSource::File),
                    key_name: key_name.clone(),
                    pcrs: pcrs.clone(),
                };
                tpm.validate().map_err(|e| format!("custody: {e}"))?;
                Ok(hsm::CustodyConfig::Tpm(tpm))
            }
        }
    }

    /// Outside development (any `wallet.network` but regtest) the TPM storage key
    /// must carry an auth value: without one anyone who can reach this TPM unseals
    /// stolen envelopes (issue 16, finding 5).
    fn check_tpm_key_auth(&self, network: bitcoin::Network) -> Result<(), String> {
        if let CustodyConfig::Tpm {
            key_auth_file: None,
            key_auth_credential: None,
            ..
        } = self
        {
            if network != bitcoin::Network::Regtest {
                return Err(format!(
                    "custody.backend = \"tpm\" without a storage key auth value on {network}: \
                     anyone who can reach this TPM could unseal stolen envelopes. Set \
                     custody.key_auth_credential (systemd credential) or key_auth_file; \
                     only regtest (development) may run without"
                ));
            }
        }
        Ok(())
    }

    /// Outside development the TPM storage key must be pinned by name, so that a
    /// replaced key or another TPM is refused (issue 16, finding 5). Not applied by
    /// `signer hsm init`/`check`, which print the name to pin.
    fn check_tpm_key_pinned(&self, network: bitcoin::Network) -> Result<(), String> {
        if let CustodyConfig::Tpm { key_name: None, .. } = self {
            if network != bitcoin::Network::Regtest {
                return Err(format!(
                    "custody.key_name must pin the TPM storage key on {network}: run \
                     `signer hsm init` (or `signer hsm check`) with this file and set \
                     custody.key_name to the name it prints; only regtest (development) \
                     may run unpinned"
                ));
            }
        }
        Ok(())
    }

    /// The SoftHSM2 configuration to export before loading the module, if any.
    pub fn softhsm2_conf(&self) -> Option<&Path> {
        match self {
            CustodyConfig::Pkcs11 { softhsm2_conf, .. } => softhsm2_conf.as_deref(),
            CustodyConfig::Tpm { .. } => None,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (default for the daemon), `text`, or `journald` (the systemd unit's
    /// choice: JSON lines on stderr, each prefixed with its syslog priority `<N>`,
    /// which journald turns into the entry's `PRIORITY`).
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info,signer=debug`.
    #[serde(default)]
    pub filter: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines.
    #[default]
    Json,
    /// Human-readable text.
    Text,
    /// JSON lines, each prefixed with its syslog priority (`<3>` error, `<4>` warn,
    /// `<6>` info, `<7>` debug and trace; sd-daemon(3)): for stderr under systemd,
    /// where journald strips the prefix into `PRIORITY=` and keeps the JSON as
    /// `MESSAGE=`.
    Journald,
}

impl NodeConfig {
    /// Reads, overrides from the environment and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Like [`NodeConfig::load`], for `signer hsm init` and `signer hsm check`: every
    /// rule applies except that a TPM storage key need not be pinned by name yet
    /// (these commands print the name to pin).
    pub fn load_for_custody_setup(path: &Path) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let text = Self::read_text(path)?;
        Self::parse_for_custody_setup(&text, path, &vars)
    }

    /// Like [`NodeConfig::load`] with an explicit environment (for tests).
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = Self::read_text(path)?;
        Self::parse(&text, path, env)
    }

    fn read_text(path: &Path) -> Result<String, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let cfg = Self::parse_for_custody_setup(text, path, env)?;
        let invalid = |message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if let Some(c) = &cfg.custody {
            c.check_tpm_key_pinned(cfg.wallet.network)
                .map_err(invalid)?;
        }
        cfg.check_presign_anchor().map_err(invalid)?;
        Ok(cfg)
    }

    /// Off regtest, a presignature pool on a TPM node anchors its restore watermark
    /// in the TPM: without it a host backup restored whole (database and data
    /// directory) would make used presignatures look available again. Not applied
    /// by `signer hsm init`, which defines the counter.
    fn check_presign_anchor(&self) -> Result<(), String> {
        let network = self.wallet.network;
        if matches!(self.custody, Some(CustodyConfig::Tpm { .. }))
            && self.presign.enabled
            && self.presign.tpm_counter_index.is_none()
            && network != bitcoin::Network::Regtest
        {
            return Err(format!(
                "presign.tpm_counter_index must be set on {network} when the presignature \
                 pool runs on a TPM: it anchors the restore watermark, so a host backup \
                 restored whole (database and data directory) cannot make used \
                 presignatures available again. Pick a free owner NV index (e.g. \
                 0x01800100) and run `signer hsm init`, or set [presign] enabled = false"
            ));
        }
        Ok(())
    }

    /// [`NodeConfig::parse`] without the rule that a TPM storage key is pinned by
    /// name (see [`NodeConfig::load_for_custody_setup`]).
    pub fn parse_for_custody_setup(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut value: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        apply_env_overrides(&mut value, env).map_err(parse_err)?;
        let cfg: NodeConfig = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if !valid_node_id(&self.node_id) {
            return Err(invalid(format!(
                "node_id {:?} must match [a-z0-9-]{{1,32}}",
                self.node_id
            )));
        }
        let total = self.total_nodes();
        if self.threshold < 1 || usize::from(self.threshold) > total {
            return Err(invalid(format!(
                "threshold {} must be between 1 and the number of nodes ({total})",
                self.threshold
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(self.node_id.as_str());
        for peer in &self.p2p.peers {
            if !valid_node_id(&peer.id) {
                return Err(invalid(format!(
                    "peer id {:?} is not a valid node id",
                    peer.id
                )));
            }
            if !seen.insert(peer.id.as_str()) {
                return Err(invalid(format!("node id {:?} appears twice", peer.id)));
            }
        }
        if self.database.url.is_none() && self.database.url_file.is_none() {
            return Err(invalid(
                "database.url or database.url_file is required".to_owned(),
            ));
        }
        if let Some(c) = &self.custody {
            c.to_hsm().map_err(invalid)?;
        }
        if self.etcd.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints must not be empty".to_owned()));
        }
        if self.etcd.lease_ttl_secs < 2 {
            return Err(invalid("etcd.lease_ttl_secs must be at least 2".to_owned()));
        }
        if !(1..=MAX_PROPOSAL_BATCH).contains(&self.wallet.proposal_batch_max)
            || self.wallet.proposal_batch_linger_ms > 1000
            || self.wallet.selection_view_ttl_ms > 60_000
        {
            return Err(invalid(format!(
                "wallet.proposal_batch_max must be between 1 and {}, \
                 wallet.proposal_batch_linger_ms at most 1000 and \
                 wallet.selection_view_ttl_ms at most 60000",
                MAX_PROPOSAL_BATCH
            )));
        }
        if !(1..=1024).contains(&self.api.max_concurrent_submissions) {
            return Err(invalid(
                "api.max_concurrent_submissions must be between 1 and 1024".to_owned(),
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes must be at least 1024".to_owned(),
            ));
        }
        self.chain.check().map_err(invalid)?;
        self.audit.check(self.threshold, total).map_err(invalid)?;
        if !self.aux.insecure_test_primes.is_empty()
            && self.wallet.network != bitcoin::Network::Regtest
        {
            return Err(invalid(format!(
                "aux.insecure_test_primes is allowed only on regtest (wallet.network is {}): \
                 published Paillier primes let co-signers extract key shares",
                self.wallet.network
            )));
        }
        if let Some(CustodyConfig::Pkcs11 {
            module,
            accept_software_token_on_bitcoin: false,
            ..
        }) = &self.custody
        {
            if self.wallet.network == bitcoin::Network::Bitcoin && is_software_token(module) {
                return Err(invalid(format!(
                    "custody.module {} is a software token (SoftHSM) and wallet.network is \
                     bitcoin: a disk image holding its token files and the PIN yields the \
                     KEK. Use a hardware HSM or the TPM, or acknowledge the risk with \
                     custody.accept_software_token_on_bitcoin = true",
                    module.display()
                )));
            }
        }
        if let Some(c) = &self.custody {
            c.check_tpm_key_auth(self.wallet.network).map_err(invalid)?;
        }
        if self.presign.tpm_counter_index.is_some()
            && self.presign.tpm_counter_tcti.is_none()
            && !matches!(self.custody, Some(CustodyConfig::Tpm { .. }))
        {
            return Err(invalid(
                "presign.tpm_counter_index needs a TPM: set presign.tpm_counter_tcti, or use \
                 custody.backend = \"tpm\" (the counter then lives in the custody TPM)"
                    .to_owned(),
            ));
        }
        if self.presign.enabled && self.data_dir.is_none() {
            return Err(invalid(
                "presign.enabled needs data_dir: the presignature watermark file there is what \
                 detects a database restored from an older backup (set data_dir, or \
                 [presign] enabled = false)"
                    .to_owned(),
            ));
        }
        if self.api.default_rate_limit_per_min == 0
            || self.api.unauthenticated_rate_limit_per_min == 0
        {
            return Err(invalid("rate limits must be positive".to_owned()));
        }
        Ok(())
    }

    /// Co-signatures an audit checkpoint needs: `[audit] checkpoint_quorum`, never
    /// below the cluster threshold.
    pub fn checkpoint_quorum(&self) -> u16 {
        self.audit
            .checkpoint_quorum
            .unwrap_or(self.threshold)
            .max(self.threshold)
    }

    /// Number of nodes in the cluster (this one plus its peers).
    pub fn total_nodes(&self) -> usize {
        self.p2p.peers.len() + 1
    }

    /// The database URL, from `url` or `url_file`.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.database.url {
            return Ok(url.clone());
        }
        let Some(file) = &self.database.url_file else {
            return Err(ConfigError::Invalid {
                path: PathBuf::new(),
                message: "database.url or database.url_file is required".to_owned(),
            });
        };
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        Ok(text.trim().to_owned())
    }
}

pub use vote::valid_node_id;

fn apply_env_overrides(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), String> {
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix("SIGNER__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "environment override {key} has an empty path segment"
            ));
        }
        let value = parse_env_value(raw);
        let (last, parents) = path
            .split_last()
            .ok_or_else(|| format!("empty override {key}"))?;
        let mut cur = &mut *table;
        for seg in parents {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .ok_or_else(|| format!("environment override {key}: {seg} is not a table"))?;
        }
        cur.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse `x = <raw>` so numbers, booleans and arrays keep their types.
    let doc = format!("x = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("x")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
node_id = "node-1"
threshold = 2
data_dir = "/var/lib/signer"
[api]
listen = "127.0.0.1:8443"
[p2p]
listen = "127.0.0.1:9443"
[[p2p.peers]]
id = "node-2"
addr = "127.0.0.1:9444"
[tls]
ca_cert = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[database]
url = "postgres://x@127.0.0.1/db"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
prefix = "/signer/test"
"#;

    #[test]
    fn sample_config_parses_with_defaults() {
        let cfg = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &[]).expect("valid sample");
        assert_eq!(cfg.total_nodes(), 2);
        assert_eq!(cfg.api.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.api.max_concurrent_submissions, 16);
        assert_eq!(cfg.etcd.lease_ttl_secs, 5);
    }

    #[test]
    fn submission_turns_must_be_between_1_and_1024() {
        for bad in ["0", "1025"] {
            let env = [(
                "SIGNER__API__MAX_CONCURRENT_SUBMISSIONS".to_owned(),
                bad.to_owned(),
            )];
            let e = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &env)
                .expect_err(bad)
                .to_string();
            assert!(e.contains("api.max_concurrent_submissions"), "{e}");
        }
        let env = [(
            "SIGNER__API__MAX_CONCURRENT_SUBMISSIONS".to_owned(),
            "1".to_owned(),
        )];
        let cfg = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect("1 is valid");
        assert_eq!(cfg.api.max_concurrent_submissions, 1);
    }

    #[test]
    fn softhsm_on_the_bitcoin_network_needs_an_acknowledgement() {
        let custody =
            "[custody]\nbackend = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
                       token_label = \"t\"\npin_file = \"/p\"\n";
        for net in ["regtest", "testnet", "signet"] {
            let text = format!("{SAMPLE}{custody}[wallet]\nnetwork = \"{net}\"\n");
            NodeConfig::parse(&text, Path::new("t.toml"), &[]).expect(net);
        }
        let mainnet = format!("{SAMPLE}{custody}[wallet]\nnetwork = \"bitcoin\"\n");
        let e = NodeConfig::parse(&mainnet, Path::new("t.toml"), &[])
            .expect_err("softhsm on bitcoin")
            .to_string();
        assert!(e.contains("accept_software_token_on_bitcoin"), "{e}");
        let acked = format!(
            "{SAMPLE}{custody}accept_software_token_on_bitcoin = true\n[wallet]\nnetwork = \"bitcoin\"\n"
        );
        NodeConfig::parse(&acked, Path::new("t.toml"), &[]).expect("acknowledged");
        let hardware = mainnet.replace(
            "/usr/lib/softhsm/libsofthsm2.so",
            "/opt/hsm/libcs_pkcs11.so",
        );
        NodeConfig::parse(&hardware, Path::new("t.toml"), &[]).expect("hardware module");
    }

    #[test]
    fn tpm_custody_needs_key_auth_and_a_pinned_name_outside_regtest() {
        const NAME: &str = "000b1111111111111111111111111111111111111111111111111111111111111111";
        let tpm = "[custody]\nbackend = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"\n";
        let auth = "key_auth_credential = \"hsm-pin\"\n";
        let pin = format!("key_name = \"{NAME}\"\n");
        let parse = |custody: &str, net: &str| {
            NodeConfig::parse(
                &format!("{SAMPLE}{custody}[wallet]\nnetwork = \"{net}\"\n"),
                Path::new("t.toml"),
                &[],
            )
            .map_err(|e| e.to_string())
        };
        let setup = |custody: &str, net: &str| {
            NodeConfig::parse_for_custody_setup(
                &format!("{SAMPLE}{custody}[wallet]\nnetwork = \"{net}\"\n"),
                Path::new("t.toml"),
                &[],
            )
            .map_err(|e| e.to_string())
        };
        // Development: neither is needed.
        parse(tpm, "regtest").expect("regtest without auth or pin");
        for net in ["testnet", "signet", "bitcoin"] {
            // No auth: refused, also for `signer hsm init` (the key would be created
            // without one).
            let e = parse(&format!("{tpm}{pin}"), net).expect_err(net);
            assert!(e.contains("without a storage key auth value"), "{net}: {e}");
            let e = setup(tpm, net).expect_err(net);
            assert!(e.contains("without a storage key auth value"), "{net}: {e}");
            // Auth but no pinned name: refused at start, allowed for init/check.
            let e = parse(&format!("{tpm}{auth}"), net).expect_err(net);
            assert!(e.contains("custody.key_name must pin"), "{net}: {e}");
            setup(&format!("{tpm}{auth}"), net).expect("hsm init/check may run unpinned");
            // Both, but a presignature pool without its TPM anchor: refused (a host
            // backup restored whole would bring used presignatures back).
            let e = parse(&format!("{tpm}{auth}{pin}"), net).expect_err(net);
            assert!(
                e.contains("presign.tpm_counter_index must be set"),
                "{net}: {e}"
            );
            parse(
                &format!("{tpm}{auth}{pin}[presign]\nenabled = false\n"),
                net,
            )
            .expect("no pool, no anchor needed");
            // All three: accepted, and handed to the hsm crate.
            let anchor = "[presign]\ntpm_counter_index = 0x01800100\n";
            let cfg = parse(&format!("{tpm}{auth}{pin}pcrs = [16, 7]\n{anchor}"), net).expect(net);
            assert_eq!(cfg.presign.tpm_counter_index, Some(0x0180_0100));
            let Ok(hsm::CustodyConfig::Tpm(t)) = cfg.custody.expect("custody").to_hsm() else {
                panic!("not a tpm config");
            };
            assert_eq!(t.key_name.as_deref(), Some(NAME));
            assert_eq!(t.pcrs, [16, 7]);
            assert_eq!(
                t.key_auth,
                Some(hsm::PinSource::Credential("hsm-pin".into()))
            );
            // A key auth file works as well.
            parse(
                &format!("{tpm}key_auth_file = \"/etc/signer/tpm.auth\"\n{pin}{anchor}"),
                net,
            )
            .expect("auth from a file");
        }
        // The same through the environment.
        let env = [
            ("SIGNER__WALLET__NETWORK".to_owned(), "bitcoin".to_owned()),
            (
                "SIGNER__CUSTODY__KEY_AUTH_CREDENTIAL".to_owned(),
                "hsm-pin".to_owned(),
            ),
        ];
        let e = NodeConfig::parse(&format!("{SAMPLE}{tpm}"), Path::new("t.toml"), &env)
            .expect_err("unpinned on bitcoin")
            .to_string();
        assert!(e.contains("custody.key_name must pin"), "{e}");
        // The anchor lives in the custody TPM: refused without one.
        let e = NodeConfig::parse(
            &format!("{SAMPLE}[presign]\ntpm_counter_index = 0x01800100\n"),
            Path::new("t.toml"),
            &[],
        )
        .expect_err("anchor without a tpm")
        .to_string();
        assert!(e.contains("presign.tpm_counter_index needs a TPM"), "{e}");
        NodeConfig::parse(
            &format!(
                "{SAMPLE}[presign]\ntpm_counter_index = 0x01800100\n\
                 tpm_counter_tcti = \"device:/dev/tpmrm0\"\n"
            ),
            Path::new("t.toml"),
            &[],
        )
        .expect("a PKCS#11 or no custody with the host's TPM for the anchor");
        // Malformed values are config errors on every network.
        for bad in [
            format!("{auth}key_name = \"00\"\n"),
            format!("{auth}pcrs = [24]\n"),
            format!("{auth}key_auth_file = \"/a\"\n"),
        ] {
            let e = parse(&format!("{tpm}{bad}"), "regtest").expect_err(&bad);
            assert!(e.contains("custody"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_presignature_pool_needs_a_data_dir_for_restore_detection() {
        let without = SAMPLE.replace("data_dir = \"/var/lib/signer\"\n", "");
        let e = NodeConfig::parse(&without, Path::new("t.toml"), &[])
            .expect_err("pool on by default, no data_dir")
            .to_string();
        assert!(e.contains("presign.enabled needs data_dir"), "{e}");
        let off = format!("{without}[presign]\nenabled = false\n");
        NodeConfig::parse(&off, Path::new("t.toml"), &[]).expect("pool off: no data_dir needed");
    }

    #[test]
    fn insecure_test_primes_are_refused_off_regtest_also_from_the_environment() {
        let primes = "[aux]\ninsecure_test_primes = [\"/p/primes-0.json\"]\n";
        let regtest = format!("{SAMPLE}{primes}[wallet]\nnetwork = \"regtest\"\n");
        NodeConfig::parse(&regtest, Path::new("t.toml"), &[]).expect("regtest allows them");
        for net in ["testnet", "signet", "bitcoin"] {
            let text = format!("{SAMPLE}{primes}[wallet]\nnetwork = \"{net}\"\n");
            let e = NodeConfig::parse(&text, Path::new("t.toml"), &[])
                .expect_err(net)
                .to_string();
            assert!(
                e.contains("insecure_test_primes is allowed only on regtest"),
                "{e}"
            );
            // The same through the environment override.
            let env = [
                (
                    "SIGNER__AUX__INSECURE_TEST_PRIMES".to_owned(),
                    "[\"/p/primes-0.json\"]".to_owned(),
                ),
                ("SIGNER__WALLET__NETWORK".to_owned(), net.to_owned()),
            ];
            let e = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &env)
                .expect_err(net)
                .to_string();
            assert!(e.contains("only on regtest"), "{e}");
        }
    }

    #[test]
    fn chain_section_is_off_by_default_and_needs_one_way_to_authenticate() {
        let cfg = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &[]).expect("valid sample");
        assert!(cfg.chain.bitcoind_rpc_url.is_none());
        assert!(!cfg.chain.broadcast);
        let with = |extra: &str| {
            NodeConfig::parse(
                &format!("{SAMPLE}[chain]\n{extra}"),
                Path::new("t.toml"),
                &[],
            )
            .map_err(|e| e.to_string())
        };
        let ok = with(
            "bitcoind_rpc_url = \"http://127.0.0.1:18443\"\nrpc_cookie_file = \"/c\"\nbroadcast = true\npoll_secs = 2\n",
        )
        .expect("valid chain section");
        assert!(ok.chain.broadcast && ok.chain.scan);
        assert_eq!(ok.chain.poll_secs, 2);
        with("bitcoind_rpc_url = \"http://h:1\"\nrpc_user = \"u\"\nrpc_password_file = \"/p\"\n")
            .expect("user and password file");
        for (extra, needle) in [
            ("bitcoind_rpc_url = \"http://h:1\"\n", "one of the two"),
            (
                "bitcoind_rpc_url = \"http://h:1\"\nrpc_cookie_file = \"/c\"\nrpc_user = \"u\"\n",
                "one of the two",
            ),
            (
                "bitcoind_rpc_url = \"ftp://h\"\nrpc_cookie_file = \"/c\"\n",
                "http or https",
            ),
            (
                "bitcoind_rpc_url = \"http://u:pw@h:1\"\nrpc_cookie_file = \"/c\"\n",
                "must not carry credentials",
            ),
            (
                "bitcoind_rpc_url = \"http://h:1\"\nrpc_cookie_file = \"/c\"\npoll_secs = 0\n",
                "must be positive",
            ),
            ("rpc_password = \"x\"\n", "unknown field"),
        ] {
            let e = with(extra).expect_err(extra);
            assert!(e.contains(needle), "{extra}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn env_override_replaces_nested_field_with_typed_value() {
        let env = vec![
            ("SIGNER__API__MAX_BODY_BYTES".to_owned(), "4096".to_owned()),
            (
                "SIGNER__DATABASE__URL".to_owned(),
                "postgres://other".to_owned(),
            ),
        ];
        let cfg = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect("valid");
        assert_eq!(cfg.api.max_body_bytes, 4096);
        assert_eq!(cfg.database.url.as_deref(), Some("postgres://other"));
    }

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let text = format!("{SAMPLE}\n[log]\nfromat = \"json\"\n");
        let err = NodeConfig::parse(&text, Path::new("t.toml"), &[]).expect_err("unknown field");
        assert!(err.to_string().contains("fromat"), "{err}");
    }

    #[test]
    fn threshold_above_node_count_is_rejected() {
        let text = SAMPLE.replace("threshold = 2", "threshold = 3");
        let err = NodeConfig::parse(&text, Path::new("t.toml"), &[]).expect_err("threshold");
        assert!(err.to_string().contains("threshold 3"), "{err}");
    }

    #[test]
    fn audit_checkpoint_quorum_is_the_threshold_and_never_lower() {
        let cfg = NodeConfig::parse(SAMPLE, Path::new("t.toml"), &[]).expect("sample");
        assert_eq!(cfg.audit.checkpoint_interval_secs, 300);
        assert_eq!(cfg.checkpoint_quorum(), cfg.threshold);
        let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let low = NodeConfig::parse(
            SAMPLE,
            Path::new("t.toml"),
            &env("SIGNER__AUDIT__CHECKPOINT_QUORUM", "1"),
        )
        .expect_err("below the threshold");
        assert!(low.to_string().contains("checkpoint_quorum"), "{low}");
        let zero = NodeConfig::parse(
            SAMPLE,
            Path::new("t.toml"),
            &env("SIGNER__AUDIT__CHECKPOINT_INTERVAL_SECS", "0"),
        )
        .expect_err("zero interval");
        assert!(
            zero.to_string().contains("checkpoint_interval_secs"),
            "{zero}"
        );
        let short = NodeConfig::parse(
            SAMPLE,
            Path::new("t.toml"),
            &env("SIGNER__AUDIT__CHECKPOINT_INTERVAL_SECS", "5"),
        )
        .expect("a short interval for dev clusters");
        assert_eq!(short.audit.checkpoint_interval_secs, 5);
    }

    #[test]
    fn duplicate_peer_id_is_rejected() {
        let text = SAMPLE.replace("id = \"node-2\"", "id = \"node-1\"");
        let err = NodeConfig::parse(&text, Path::new("t.toml"), &[]).expect_err("dup");
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
