//! Operator CLI: argument definitions and dispatch. Each subcommand lives in its
//! own file.

mod admin;
mod audit;
pub mod aux;
mod backup;
pub mod client;
pub mod cluster;
pub mod dkg;
mod journal;
mod kek;
pub mod keys;
mod policy;
pub mod progress;
mod status;
pub mod tx;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, NodeConfig};

/// Threshold-signing Bitcoin custody node and operator tool.
#[derive(Debug, Parser)]
#[command(name = "signer", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Show a readable table of the cluster's state.
    Status {
        /// cluster.json written by `signer cluster up`.
        #[arg(long, default_value = ".cluster/cluster.json")]
        cluster: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage API tokens directly in a node's database.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCmd),
    /// Check a policy file or evaluate a transaction against it.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Key custody (HSM/TPM): create and check the key-encryption key.
    #[command(subcommand)]
    Hsm(HsmCmd),
    /// Private certificate authority of the cluster.
    #[command(subcommand)]
    Ca(crate::ca::CaCommand),
    /// Local development cluster (PostgreSQL, etcd, CA and N nodes on loopback).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Key ceremonies (DKG) through a node's API.
    #[command(subcommand)]
    Dkg(dkg::DkgCmd),
    /// CGGMP24 aux info (needed once per node set for ECDSA signing), through a
    /// node's API.
    #[command(subcommand, name = "aux-info")]
    AuxInfo(aux::AuxCmd),
    /// Completed keys: descriptors and addresses, through a node's API.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Transactions: submit, follow, approve, through a node's API.
    #[command(subcommand)]
    Tx(tx::TxCmd),
    /// Funding UTXOs of the cluster's keys, through a node's API.
    #[command(subcommand)]
    Utxos(tx::UtxosCmd),
    /// Back up a node's database, or restore it (the node stopped).
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Print a shell completion script (e.g. `signer completions bash >
    /// /etc/bash_completion.d/signer`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of `signer`, or write one page per command
    /// into a directory.
    Man {
        /// Write `signer.1` and `signer-<command>.1` for every command here
        /// instead of printing `signer.1`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `signer cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Start a dev cluster and supervise it until Ctrl-C/SIGTERM.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: u16,
        /// Signing threshold t.
        #[arg(long, default_value_t = 3)]
        threshold: u16,
        /// Directory for all cluster state (wiped if it holds a stopped cluster; a
        /// running one is refused, or kept with --reuse). Any directory the invoking
        /// user can write, whatever the modes of its parents.
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
        /// If every node of a cluster already running in --dir answers, keep it and
        /// exit 0 instead of refusing (re-runnable `make demo`).
        #[arg(long)]
        reuse: bool,
        /// Return once the cluster is up; stop it with `signer cluster down`.
        #[arg(long)]
        detach: bool,
        /// Tear down when the process with this pid exits (for test harnesses).
        #[arg(long)]
        watch_pid: Option<u32>,
        /// After the teardown, delete --dir with everything in it (databases, key
        /// shares, logs): for test harnesses whose clusters live in temporary
        /// directories. Never on a cluster you want to keep.
        #[arg(long)]
        remove_dir: bool,
        /// etcd lease TTL of node registrations, in seconds.
        #[arg(long, default_value_t = 5)]
        lease_ttl_secs: i64,
        /// etcd members to run on loopback: 1 (fastest) or 3 or 5, as in production
        /// (every node takes all of them as endpoints).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        etcd_members: u8,
        /// Prime sets each node keeps pregenerated for aux info (0: no background
        /// generation).
        #[arg(long, default_value_t = 1)]
        prime_pool_target: usize,
        /// TESTS ONLY: a directory of published prime sets (`primes-<i>.json`, e.g.
        /// protocol/fixtures/test-primes); node k gets the files with i % nodes == k.
        /// Aux info built from them is insecure.
        #[arg(long)]
        insecure_test_primes: Option<PathBuf>,
    },
    /// Regtest dev clusters only: sign one sample payment per completed key (made-up
    /// funding to the key's first address, a demo policy written to every node's
    /// policy.toml, aux info run if ECDSA needs it) and verify it with Bitcoin Core's
    /// consensus code.
    DemoSign {
        #[command(flatten)]
        api: client::ApiOpts,
    },
    /// Add a node to a running dev cluster: next id (node-6, ...), certificate from
    /// the dev CA, its own database, SoftHSM token, config and process; every
    /// running node takes it as a peer without a restart (POST
    /// /api/v1/cluster/peers, audited `cluster.peer_added`). It holds no key share
    /// until a reshare gives it one (`signer keys reshare`).
    AddNode {
        /// The cluster directory.
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
    /// Stop a dev cluster started with `cluster up`.
    Down {
        /// The cluster directory.
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
}

/// `signer node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Run the node daemon in the foreground (systemd `Type=notify` aware).
    Run {
        /// Node configuration file (TOML).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
    },
    /// Start the daemon in the background (detached), logging to a file; for dev
    /// clusters and tests. Production runs `node run` under systemd.
    Start {
        /// Node configuration file (TOML).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Log file (appended).
        #[arg(long)]
        log: PathBuf,
    },
}

/// `signer policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file; print its rules and content hash.
    Check {
        /// Policy file (TOML).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a request (`{"view": ..., "context": ...}`) against a policy. Exit
    /// status 0 approve, 2 reject, 3 needs approval.
    Eval {
        /// Policy file (TOML).
        file: PathBuf,
        /// Evaluation request (JSON).
        request: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `signer hsm ...`
#[derive(Debug, Subcommand)]
pub enum HsmCmd {
    /// Create the non-extractable key-encryption key in the configured HSM/TPM
    /// (idempotent).
    Init {
        /// Node configuration file (its `[custody]` section).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
    },
    /// Check that the HSM/TPM is reachable, the PIN works and the KEK is
    /// non-extractable; exits non-zero otherwise.
    Check {
        /// Node configuration file (its `[custody]` section).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Print the steps as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the KEK: create a new one, rewrap every envelope of the node's
    /// database in one audited transaction, check they all open with it, and
    /// (with --destroy-old) destroy the old one. The node must be stopped; the
    /// configuration is not edited (the command prints what to set).
    #[command(group(clap::ArgGroup::new("new").required(true).args(["new_label", "new_handle"])))]
    RotateKek {
        /// Node configuration file (the current KEK and the database).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// PKCS#11: label of the new KEK (created in the same token).
        #[arg(long)]
        new_label: Option<String>,
        /// TPM: free persistent handle for the new storage key (e.g. 0x81010021).
        #[arg(long, value_parser = kek::parse_handle)]
        new_handle: Option<u32>,
        /// Destroy the old KEK after every record re-opened with the new one.
        /// Backups taken before the rotation can then no longer be opened.
        #[arg(long)]
        destroy_old: bool,
    },
}

/// `signer token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints it once (only its hash is stored).
    Create {
        /// Node configuration file (for the database URL).
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Role: admin, operator, approver or auditor.
        #[arg(long)]
        role: String,
        /// Human name of the token.
        #[arg(long)]
        name: String,
        /// Requests per minute allowed to this token.
        #[arg(long)]
        rate_limit_per_min: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Token id.
        id: String,
    },
}

/// `signer audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of a node's audit log.
    Verify {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export every node's audit records for a time range, with the signed
    /// checkpoints, keys, certificates and policy versions, into a bundle that
    /// `verify-export` checks offline (through a node's API; auditor or admin token).
    Export {
        #[command(flatten)]
        api: client::ApiOpts,
        /// Start of the range (RFC 3339, e.g. 2025-01-01T00:00:00Z); default: the
        /// beginning.
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339); default: now.
        #[arg(long)]
        to: Option<String>,
        /// The bundle file to write (JSON Lines).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an export bundle offline (no network, no database). Exit status 0
    /// valid, 1 invalid (the first broken item is named: node, sequence, reason),
    /// 2 unreadable.
    VerifyExport {
        /// The bundle file.
        bundle: PathBuf,
        /// Require at least this many co-signatures per checkpoint (never fewer
        /// than the bundle's cluster threshold).
        #[arg(long)]
        min_signatures: Option<u16>,
        /// The cluster CA certificate (PEM) the auditor holds: the bundle's CA must
        /// be this one (otherwise its SHA-256 is printed to compare).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compliance report of an export bundle, offline: transactions (votes and the
    /// policy hash of each, approvers, signers, amounts, timeline), key ceremonies,
    /// token, approver and policy changes, Byzantine violations, outflow per day
    /// against the velocity limits. The bundle is verified first; one that does not
    /// verify is refused (exit 1, its first broken item named) unless --unverified.
    Report {
        /// The bundle file.
        bundle: PathBuf,
        /// html: one self-contained file; csv: a directory of CSV files, one per
        /// section.
        #[arg(long, value_enum, default_value = "html")]
        format: audit::ReportFormat,
        /// Destination: the HTML file, or the CSV directory (new or empty).
        /// Default: next to the bundle (BUNDLE.report.html, BUNDLE.report/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the report even if the bundle does not verify; it is then marked
        /// UNVERIFIED throughout.
        #[arg(long)]
        unverified: bool,
        /// The cluster CA certificate (PEM) the auditor holds (as for
        /// verify-export).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Require at least this many co-signatures per checkpoint (as for
        /// verify-export).
        #[arg(long)]
        min_signatures: Option<u16>,
    },
}

/// `signer backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Write a consistent dump of the node's database with a manifest (node,
    /// cluster, schema, audit head, SHA-256). Secrets in it stay envelopes sealed by
    /// the node's HSM/TPM.
    Create {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// The backup file to write (not overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore the node's database from a backup of this same node and cluster. The
    /// node must be stopped; the database must be empty unless --replace.
    Restore {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
        /// The backup file.
        file: PathBuf,
        /// Drop what the database holds before restoring.
        #[arg(long)]
        replace: bool,
    },
}

/// `signer db ...`
#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Apply pending migrations (the node also does this at start).
    Migrate {
        /// Node configuration file.
        #[arg(long, env = "SIGNER_CONFIG")]
        config: PathBuf,
    },
}

/// The whole program: parses the command line, runs it, prints an error. Shared by
/// the `signer` binary and the test crate's `signer-faulty`.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `signer man`: `signer.1` on standard output, or one page per command (nested
/// commands joined by `-`) written into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    fn write_pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
        let page = cmd.clone().name(name.to_owned());
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd;
    cmd.build();
    write_pages(&cmd, "signer", dir)?;
    println!("manual pages written to {}", dir.display());
    Ok(())
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(NodeCmd::Run { config }) => {
            // Before any thread exists and before any secret is loaded.
            let hardening = hsm::memory::harden_process();
            let cfg = NodeConfig::load(&config)?;
            init_logging(cfg.log.format, cfg.log.filter.as_deref());
            if hardening.is_fully_hardened() {
                tracing::info!(%hardening, "process hardened");
            } else if cfg.hardening.allow_unhardened_memory {
                tracing::warn!(%hardening, warnings = ?hardening.warnings, "process only partly hardened; [hardening] allow_unhardened_memory is set, so custody will unseal anyway (development only)");
            } else {
                tracing::error!(%hardening, warnings = ?hardening.warnings, "process only partly hardened: custody stays sealed (set [hardening] allow_unhardened_memory = true only in development)");
            }
            export_softhsm_conf(&cfg);
            runtime()?.block_on(crate::node::run(cfg, hardening))
        }
        Command::Node(NodeCmd::Start { config, log }) => {
            NodeConfig::load(&config)?;
            let pid = crate::cli::cluster::start_node(&config, &log)?;
            println!("{pid}");
            Ok(())
        }
        Command::Backup(BackupCmd::Create { config, out }) => {
            init_logging(LogFormat::Text, Some("warn"));
            let out = backup::new_file(out)?;
            runtime()?.block_on(backup::create(&config, &out))
        }
        Command::Backup(BackupCmd::Restore {
            config,
            file,
            replace,
        }) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(backup::restore(&config, &file, replace))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "signer", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Status { cluster, json } => {
            init_logging(LogFormat::Text, None);
            runtime()?.block_on(status::run(&cluster, json))
        }
        Command::Token(cmd) => {
            init_logging(LogFormat::Text, None);
            runtime()?.block_on(admin::token(cmd))
        }
        Command::Audit(AuditCmd::Export { api, from, to, out }) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(audit::export(&api, from.as_deref(), to.as_deref(), &out))
        }
        Command::Audit(AuditCmd::VerifyExport {
            bundle,
            min_signatures,
            ca_cert,
            json,
        }) => {
            let code = audit::verify_export(&bundle, min_signatures, ca_cert.as_deref(), json);
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Audit(AuditCmd::Report {
            bundle,
            format,
            out,
            unverified,
            ca_cert,
            min_signatures,
        }) => audit::report(audit::ReportArgs {
            bundle,
            format,
            out,
            unverified,
            ca_cert,
            min_signatures,
        }),
        Command::Audit(cmd) => {
            init_logging(LogFormat::Text, None);
            runtime()?.block_on(admin::audit(cmd))
        }
        Command::Cluster(ClusterCmd::Up {
            nodes,
            threshold,
            dir,
            detach,
            watch_pid,
            remove_dir,
            lease_ttl_secs,
            etcd_members,
            prime_pool_target,
            insecure_test_primes,
            reuse,
        }) => {
            init_logging(LogFormat::Text, Some("warn"));
            crate::tls::install_crypto_provider();
            runtime()?.block_on(crate::cli::cluster::up(crate::cli::cluster::UpOptions {
                dir,
                nodes,
                threshold,
                detach,
                watch_pid,
                remove_dir,
                lease_ttl_secs,
                prime_pool_target,
                insecure_test_primes,
                reuse,
                etcd_members,
            }))
        }
        Command::Cluster(ClusterCmd::Down { dir }) => crate::cli::cluster::down(&dir),
        Command::Cluster(ClusterCmd::AddNode { dir }) => {
            init_logging(LogFormat::Text, Some("warn"));
            crate::tls::install_crypto_provider();
            runtime()?.block_on(async { crate::cli::cluster::add_node(&dir).await.map(|_| ()) })
        }
        Command::Cluster(ClusterCmd::DemoSign { api }) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(async {
                let c = api.connect().await?;
                crate::cli::cluster::demo_sign(&c).await
            })
        }
        Command::Policy(PolicyCmd::Check { file, json }) => policy::check(&file, json),
        Command::Policy(PolicyCmd::Eval {
            file,
            request,
            json,
        }) => {
            let code = policy::eval(&file, &request, json)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Hsm(HsmCmd::RotateKek {
            config,
            new_label,
            new_handle,
            destroy_old,
        }) => {
            init_logging(LogFormat::Text, Some("warn"));
            let new = match (new_label, new_handle) {
                (Some(label), None) => kek::NewKek::Label(label),
                (None, Some(handle)) => kek::NewKek::Handle(handle),
                _ => anyhow::bail!("give exactly one of --new-label and --new-handle"),
            };
            kek::rotate(&config, new, destroy_old)
        }
        Command::Hsm(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            admin::hsm(cmd)
        }
        Command::Ca(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            println!("{}", cmd.run()?);
            Ok(())
        }
        Command::Db(cmd) => {
            init_logging(LogFormat::Text, None);
            runtime()?.block_on(admin::db(cmd))
        }
        Command::Dkg(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(dkg::run(cmd))
        }
        Command::AuxInfo(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(aux::run(cmd))
        }
        Command::Keys(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(keys::run(cmd))
        }
        Command::Tx(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            let code = runtime()?.block_on(tx::run(cmd))?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Utxos(cmd) => {
            init_logging(LogFormat::Text, Some("warn"));
            runtime()?.block_on(tx::run_utxos(cmd))
        }
    }
}

/// SoftHSM reads `SOFTHSM2_CONF` when the module loads; set it while the process
/// is still single-threaded.
fn export_softhsm_conf(cfg: &NodeConfig) {
    if let Some(conf) = cfg.custody.as_ref().and_then(|c| c.softhsm2_conf()) {
        std::env::set_var("SOFTHSM2_CONF", conf);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Sets up `tracing` output on stderr.
pub fn init_logging(format: LogFormat, filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| filter.map(str::to_owned))
        .unwrap_or_else(|| "info".to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
        LogFormat::Journald => builder
            .json()
            .flatten_event(true)
            .with_writer(journal::PriorityStderr)
            .try_init(),
    };
}
