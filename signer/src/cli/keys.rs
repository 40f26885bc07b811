//! `signer keys list|addresses|reshare|refresh`: completed keys, watch-only
//! descriptors and addresses, and key lifecycle operations through a node's API.

use std::time::Duration;

use serde_json::Value;

use super::client::ApiOpts;

/// Address chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChainArg {
    /// External chain (`/0/*`).
    Receive,
    /// Internal chain (`/1/*`).
    Change,
}

impl ChainArg {
    fn as_str(self) -> &'static str {
        match self {
            ChainArg::Receive => "receive",
            ChainArg::Change => "change",
        }
    }
}

/// `signer keys ...`
#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// List the completed keys of a node with their descriptors and first address.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Derive addresses of a key from its xpub (as the node does).
    Addresses {
        /// Key id (from `signer keys list`).
        key_id: String,
        /// Chain: receive (/0/*) or change (/1/*).
        #[arg(long, value_enum, default_value_t = ChainArg::Receive)]
        chain: ChainArg,
        /// First index (0 to 2^31-1).
        #[arg(long, default_value_t = 0)]
        from: u32,
        /// How many addresses (1 to 1000).
        #[arg(long, default_value_t = 20)]
        count: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Reshare a key to new holders and/or a new threshold (same public key and
    /// addresses); runs only after a quorum of node votes approves it.
    Reshare {
        /// Key id (from `signer keys list`).
        key_id: String,
        /// New holders, comma-separated node ids (default: the current holders).
        #[arg(long, value_delimiter = ',')]
        participants: Option<Vec<String>>,
        /// New threshold (default: the current one).
        #[arg(long)]
        threshold: Option<u16>,
        /// Wait until the reshare completed or failed on the node.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Refresh a key: the same holders and threshold get new shares (same public key
    /// and addresses); runs only after a quorum of node votes approves it.
    Refresh {
        /// Key id (from `signer keys list`).
        key_id: String,
        /// Wait until the refresh completed or failed on the node.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
}

async fn reshare(
    api: ApiOpts,
    key_id: &str,
    body: Value,
    wait: bool,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let client = api.connect().await?;
    let v = client
        .post(
            &format!("/api/v1/keys/{}/reshare", path_segment(key_id)?),
            &body,
        )
        .await?;
    let id = v["session_id"].as_str().unwrap_or("?").to_owned();
    println!(
        "{} of key {} approved by {} and started: session {id}, {}-of-{} holders {}",
        if v["refresh"] == true {
            "refresh"
        } else {
            "reshare"
        },
        v["key_id"].as_str().unwrap_or("?"),
        v["approvers"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        v["threshold"],
        v["participants"].as_array().map(Vec::len).unwrap_or(0),
        v["participants"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
    );
    if !wait {
        return Ok(());
    }
    let end = super::dkg::wait_ended(&client, &id, Duration::from_secs(timeout_secs)).await?;
    if end["state"] == "completed" {
        println!("session {id} completed: the new shares are active");
        Ok(())
    } else {
        anyhow::bail!(
            "session {id} failed: {} (the old shares stay active; retry to start a new session)",
            end["error"].as_str().unwrap_or("?")
        )
    }
}

/// Runs a `keys` subcommand.
pub async fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::List { json, api } => {
            let client = api.connect().await?;
            let v = client.get("/api/v1/keys").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_keys(&v);
            }
            Ok(())
        }
        KeysCmd::Addresses {
            key_id,
            chain,
            from,
            count,
            json,
            api,
        } => {
            let client = api.connect().await?;
            let v = client
                .get(&format!(
                    "/api/v1/keys/{}/addresses?chain={}&from={from}&count={count}",
                    path_segment(&key_id)?,
                    chain.as_str()
                ))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{} key {} ({} chain, {})",
                    v["key_type"].as_str().unwrap_or("?"),
                    v["key_id"].as_str().unwrap_or("?"),
                    v["chain"].as_str().unwrap_or("?"),
                    v["network"].as_str().unwrap_or("?")
                );
                println!("{:>10}  {:<16}  ADDRESS", "INDEX", "PATH");
                for a in v["addresses"].as_array().into_iter().flatten() {
                    println!(
                        "{:>10}  {:<16}  {}",
                        a["index"].as_u64().unwrap_or_default(),
                        a["path"].as_str().unwrap_or("?"),
                        a["address"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(())
        }
        KeysCmd::Reshare {
            key_id,
            participants,
            threshold,
            wait,
            timeout_secs,
            api,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(p) = participants {
                body.insert("participants".into(), serde_json::json!(p));
            }
            if let Some(t) = threshold {
                body.insert("threshold".into(), serde_json::json!(t));
            }
            reshare(api, &key_id, Value::Object(body), wait, timeout_secs).await
        }
        KeysCmd::Refresh {
            key_id,
            wait,
            timeout_secs,
            api,
        } => reshare(api, &key_id, serde_json::json!({}), wait, timeout_secs).await,
    }
}

/// A key id as one URL path segment: key ids are uuids or similar plain text;
/// anything that would change the path is refused here.
fn path_segment(key_id: &str) -> anyhow::Result<&str> {
    let ok = !key_id.is_empty()
        && key_id.len() <= 128
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    anyhow::ensure!(
        ok,
        "key id {key_id:?} is not valid: use the id shown by `signer keys list`"
    );
    Ok(key_id)
}

fn print_keys(v: &Value) {
    let keys = v["keys"].as_array().cloned().unwrap_or_default();
    println!(
        "keys on {}: {} ({} shares loaded)",
        v["node_id"].as_str().unwrap_or("?"),
        keys.len(),
        v["loaded_shares"]
    );
    for k in &keys {
        let s = |f: &str| k[f].as_str().unwrap_or("-").to_owned();
        println!();
        println!(
            "{} key {}  {}-of-{}  share {}",
            s("key_type"),
            s("key_id"),
            k["t"],
            k["n"],
            if k["share_loaded"] == true {
                "loaded"
            } else {
                "NOT loaded"
            }
        );
        println!("  public key          {}", s("public_key"));
        println!("  descriptor          {}", s("descriptor"));
        println!("  receive descriptor  {}", s("receive_descriptor"));
        println!("  change descriptor   {}", s("change_descriptor"));
        println!(
            "  first address       {} ({})",
            s("first_address"),
            s("network")
        );
    }
}
