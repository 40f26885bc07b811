//! `signer keys list|addresses`: completed keys, watch-only descriptors and
//! addresses through a node's API.

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
