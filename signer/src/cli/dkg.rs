//! `signer dkg start|status`: key ceremonies through a node's API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{ApiClient, ApiOpts};

/// Which DKG to run (`ecdsa` and `taproot` are aliases of the key types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// CGGMP24 threshold ECDSA (P2WPKH keys).
    #[value(alias = "ecdsa")]
    Cggmp24,
    /// FROST, Bitcoin ciphersuite (P2TR keys).
    #[value(alias = "taproot")]
    Frost,
}

impl ProtocolArg {
    fn as_str(self) -> &'static str {
        match self {
            ProtocolArg::Cggmp24 => "cggmp24",
            ProtocolArg::Frost => "frost",
        }
    }
}

/// `signer dkg ...`
#[derive(Debug, clap::Subcommand)]
pub enum DkgCmd {
    /// Start a key ceremony on a node (operator token); with --wait, wait for its end.
    Start {
        /// Protocol: cggmp24 (alias ecdsa) or frost (alias taproot).
        #[arg(long, value_enum)]
        protocol: ProtocolArg,
        /// Threshold t: how many share holders must take part in a signature.
        #[arg(long)]
        threshold: u16,
        /// Participants, comma-separated node ids (default: every node).
        #[arg(long, value_delimiter = ',')]
        participants: Option<Vec<String>>,
        /// Wait until the ceremony is completed or failed; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Retry the start for up to this many seconds while the node refuses it
        /// with 409 participants_unavailable or 503 (e.g. right after `cluster up`,
        /// before every node is connected); with --wait, also start a new ceremony
        /// when one fails on coordination (a participant not ready for a barrier),
        /// never when one failed for anything else. 0: no retry.
        #[arg(long, default_value_t = 0)]
        retry_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Show every ceremony of a node, or one ceremony in detail.
    Status {
        /// Ceremony id (default: all ceremonies).
        ceremony_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
}

/// Runs a `dkg` subcommand.
pub async fn run(cmd: DkgCmd) -> anyhow::Result<()> {
    match cmd {
        DkgCmd::Start {
            protocol,
            threshold,
            participants,
            wait,
            timeout_secs,
            retry_secs,
            json,
            api,
        } => {
            let client = api.connect().await?;
            start(
                &client,
                StartArgs {
                    protocol,
                    threshold,
                    participants,
                    wait: wait.then(|| Duration::from_secs(timeout_secs)),
                    retry: Duration::from_secs(retry_secs),
                    json,
                },
            )
            .await
        }
        DkgCmd::Status {
            ceremony_id,
            json,
            api,
        } => {
            let client = api.connect().await?;
            match ceremony_id {
                Some(id) => {
                    if uuid::Uuid::parse_str(&id).is_err() {
                        anyhow::bail!("ceremony id {id:?} is not a uuid");
                    }
                    let c = client.get(&format!("/api/v1/dkg/ceremonies/{id}")).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&c)?);
                    } else {
                        print_ceremony(&c);
                    }
                }
                None => {
                    let v = client.get("/api/v1/dkg/status").await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        print_table(&v);
                    }
                }
            }
            Ok(())
        }
    }
}

struct StartArgs {
    protocol: ProtocolArg,
    threshold: u16,
    participants: Option<Vec<String>>,
    wait: Option<Duration>,
    retry: Duration,
    json: bool,
}

async fn start(client: &ApiClient, a: StartArgs) -> anyhow::Result<()> {
    let mut body = json!({"protocol": a.protocol.as_str(), "threshold": a.threshold});
    if let Some(p) = &a.participants {
        body["participants"] = json!(p);
    }
    let first_try = Instant::now();
    loop {
        match start_once(client, &body, first_try, &a).await? {
            Started::Done => return Ok(()),
            // A ceremony that failed on coordination (a participant that was not
            // ready for its barrier, e.g. right after `cluster up`) is started
            // again within the retry window; one that failed for anything else
            // (a culprit, a protocol error) is reported at once.
            Started::CoordinationFailed(e) if first_try.elapsed() < a.retry => {
                tracing::info!(error = %e, "ceremony failed on coordination; starting a new one");
                eprintln!("{e}; starting a new ceremony");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Started::CoordinationFailed(e) => anyhow::bail!(e),
        }
    }
}

/// How one start ended.
enum Started {
    /// Started (and, with --wait, completed).
    Done,
    /// With --wait: the ceremony failed on coordination (the message to report).
    CoordinationFailed(String),
}

/// One start (retried while refused, within the window), and with --wait the
/// ceremony's end.
async fn start_once(
    client: &ApiClient,
    body: &Value,
    first_try: Instant,
    a: &StartArgs,
) -> anyhow::Result<Started> {
    let &StartArgs {
        protocol,
        threshold,
        wait,
        retry,
        json,
        ..
    } = a;
    let (started_at, v) = loop {
        let started_at = Instant::now();
        match client.post("/api/v1/dkg/start", body).await {
            Ok(v) => break (started_at, v),
            Err(e) => {
                let retryable = e
                    .downcast_ref::<super::client::ApiRefusal>()
                    .is_some_and(|r| r.status == 409 || r.status == 503);
                if !retryable || first_try.elapsed() >= retry {
                    return Err(e);
                }
                tracing::info!(error = %e, "start refused; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let id = v["ceremony_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{} answered without a ceremony_id: {v}", client.label()))?
        .to_owned();
    let Some(timeout) = wait else {
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "ceremony {id} started: {}, {}-of-{}, coordinator {}",
                protocol.as_str(),
                threshold,
                v["participants"].as_array().map_or(0, Vec::len),
                v["coordinator"].as_str().unwrap_or("?")
            );
        }
        return Ok(Started::Done);
    };
    // Poll a participant: the node asked, or the first participant when the node
    // asked is not one (only possible with a cluster file to find it).
    let participants: Vec<String> = v["participants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let other;
    let poll = match &client.node_id {
        Some(me) if !participants.contains(me) => {
            other = participants.first().and_then(|p| client.for_node(p));
            other.as_ref().unwrap_or(client)
        }
        _ => client,
    };
    let end = wait_ended(poll, &id, timeout).await?;
    let elapsed = started_at.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&end)?);
    } else if end["state"] == "completed" {
        println!(
            "ceremony {id} completed in {:.2} s: {} key {id}, {}-of-{}, public key {}",
            elapsed.as_secs_f64(),
            key_type(&end),
            end["t"],
            end["n"],
            end["public_key"].as_str().unwrap_or("?")
        );
    }
    if end["state"] != "completed" {
        let reason = end["error"].as_str().unwrap_or("no reason recorded");
        let message = format!("ceremony {id} failed on {}: {reason}", poll.label());
        if reason.starts_with("coordination:") {
            return Ok(Started::CoordinationFailed(message));
        }
        anyhow::bail!(message);
    }
    Ok(Started::Done)
}

fn key_type(c: &Value) -> &'static str {
    match c["protocol"].as_str() {
        Some("cggmp24") => "ecdsa",
        Some("frost") => "taproot",
        _ => "?",
    }
}

/// Polls the ceremony until `completed` or `failed`.
pub(crate) async fn wait_ended(
    client: &ApiClient,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut last_state = String::from("not yet recorded");
    let spinner = super::progress::Waiting::new(&format!("ceremony {id}"));
    loop {
        match client.get(&format!("/api/v1/dkg/ceremonies/{id}")).await {
            Ok(c) => {
                if c["state"] == "completed" || c["state"] == "failed" {
                    return Ok(c);
                }
                last_state = c["state"].as_str().unwrap_or("?").to_owned();
                spinner.state(&last_state);
            }
            // not recorded yet on this node: keep waiting
            Err(e)
                if e.downcast_ref::<super::client::ApiRefusal>()
                    .is_some_and(|r| r.status == 404) => {}
            Err(e) => return Err(e),
        }
        if start.elapsed() >= timeout {
            anyhow::bail!(
                "ceremony {id} did not end within {} s on {} (state: {last_state})",
                timeout.as_secs(),
                client.label()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_ceremony(c: &Value) {
    let s = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
    println!("ceremony     {}", s("id"));
    println!("protocol     {} ({} key)", s("protocol"), key_type(c));
    println!("threshold    {}-of-{}", c["t"], c["n"]);
    println!(
        "participants {}",
        c["participants"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    println!("coordinator  {}", s("coordinator"));
    println!("state        {}", s("state"));
    println!("public key   {}", s("public_key"));
    println!("created      {}", s("created_at"));
    println!("completed    {}", s("completed_at"));
    if let Some(e) = c["error"].as_str() {
        println!("error        {e}");
    }
}

fn print_table(v: &Value) {
    let list = v["ceremonies"].as_array().cloned().unwrap_or_default();
    println!(
        "ceremonies on {}: {}",
        v["node_id"].as_str().unwrap_or("?"),
        list.len()
    );
    if list.is_empty() {
        return;
    }
    println!(
        "{:<36}  {:<8}  {:<5}  {:<9}  {:<25}  ERROR",
        "ID", "PROTOCOL", "T/N", "STATE", "CREATED"
    );
    for c in &list {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
        let created = s("created_at");
        println!(
            "{:<36}  {:<8}  {:<5}  {:<9}  {:<25}  {}",
            s("id"),
            s("protocol"),
            format!("{}/{}", c["t"], c["n"]),
            s("state"),
            created.get(..19).unwrap_or(&created),
            c["error"].as_str().unwrap_or("")
        );
    }
}
