//! `signer ca ...` subcommands.

use std::path::PathBuf;

use super::{init_ca, issue_node_cert_for_ips, CaError, DEFAULT_NODE_VALIDITY_DAYS};

/// Private CA operations: `signer ca init` and `signer ca issue`.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum CaCommand {
    /// Create a new cluster CA (ca.pem, ca.key with mode 0600) in DIR.
    ///
    /// Refuses to overwrite an existing CA.
    Init {
        /// Directory that holds the CA (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a certificate for node N, signed by the CA in DIR.
    ///
    /// Writes DIR/nodes/N/cert.pem and DIR/nodes/N/key.pem (mode 0600). The node
    /// identity is the DNS name N.signer.internal. Re-issuing replaces both files.
    Issue {
        /// Node id: 1-32 characters of [a-z0-9-].
        #[arg(long, value_name = "N")]
        node: String,
        /// Directory that holds the CA.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity of the certificate in days.
        #[arg(long, default_value_t = DEFAULT_NODE_VALIDITY_DAYS)]
        days: u32,
        /// IP addresses the node's API is reached at (repeatable); added as IP
        /// SANs so HTTPS clients can connect by address.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
    },
}

impl CaCommand {
    /// Runs the command and returns a short human-readable summary to print.
    pub fn run(&self) -> Result<String, CaError> {
        match self {
            CaCommand::Init { dir } => {
                let info = init_ca(dir)?;
                Ok(format!(
                    "created CA {:?}\n  certificate: {}\n  key:         {} (keep it secret)\n  sha256:      {}",
                    info.common_name,
                    info.cert_path.display(),
                    info.key_path.display(),
                    info.sha256_fingerprint
                ))
            }
            CaCommand::Issue {
                node,
                dir,
                days,
                ips,
            } => {
                let paths = issue_node_cert_for_ips(dir, node, *days, ips)?;
                Ok(format!(
                    "issued certificate for node {} ({}), valid {days} days\n  certificate: {}\n  key:         {}",
                    paths.node_id,
                    paths.dns_name,
                    paths.cert.display(),
                    paths.key.display()
                ))
            }
        }
    }
}
