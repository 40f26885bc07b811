//! `signer aux-info start|status`: the CGGMP24 auxiliary information (Paillier keys
//! and ring-Pedersen parameters per node set) through a node's API. ECDSA signing
//! needs it once per node set; it does not depend on the key.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{ApiClient, ApiOpts, ApiRefusal};

/// `signer aux-info ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuxCmd {
    /// Start the aux-info ceremony for a node set (operator token); every
    /// participant joins. Reuses existing aux info of the same node set unless
    /// --force. With --wait, waits for its end (with the cluster file: on every
    /// participant) and shows progress.
    Start {
        /// Participants, comma-separated node ids (default: every node).
        #[arg(long, value_delimiter = ',')]
        participants: Option<Vec<String>>,
        /// Run a new ceremony even if aux info for this node set exists, or if the
        /// node holds no ECDSA key yet.
        #[arg(long)]
        force: bool,
        /// Wait until the ceremony is completed or failed; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Show the node's aux-info ceremonies and its prime pool.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
}

/// Runs an `aux-info` subcommand.
pub async fn run(cmd: AuxCmd) -> anyhow::Result<()> {
    match cmd {
        AuxCmd::Start {
            participants,
            force,
            wait,
            timeout_secs,
            json,
            api,
        } => {
            let client = api.connect().await?;
            let wait = wait.then(|| Duration::from_secs(timeout_secs));
            let out = start(&client, participants, force, wait, !json).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out.answer)?);
            }
            Ok(())
        }
        AuxCmd::Status { json, api } => {
            let client = api.connect().await?;
            let v = client.get("/api/v1/aux-info/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
    }
}

/// What `start` did.
#[derive(Debug)]
pub struct AuxOutcome {
    /// The ceremony (new or reused).
    pub ceremony_id: String,
    /// Existing aux info of the node set was reused.
    pub reused: bool,
    /// The start answer, or the ended ceremony when waited for.
    pub answer: Value,
}

/// Starts (or reuses) aux info through `client`; with `wait`, polls the ceremony on
/// a participant until it ends and fails unless it completed. `progress` prints a
/// line when it starts, every few seconds while it runs, and at its end.
pub async fn start(
    client: &ApiClient,
    participants: Option<Vec<String>>,
    force: bool,
    wait: Option<Duration>,
    progress: bool,
) -> anyhow::Result<AuxOutcome> {
    if !force {
        let keys = client.get("/api/v1/keys").await?;
        let has_ecdsa = keys["keys"]
            .as_array()
            .is_some_and(|ks| ks.iter().any(|k| k["key_type"] == "ecdsa"));
        anyhow::ensure!(
            has_ecdsa,
            "{} holds no ECDSA key: aux info is only needed for ECDSA (CGGMP24) signing; \
             run `signer dkg start --protocol ecdsa` first, or pass --force",
            client.label()
        );
    }
    let mut body = json!({ "force": force });
    if let Some(p) = participants {
        body["participants"] = json!(p);
    }
    let v = client.post("/api/v1/aux-info/start", &body).await?;
    let id = v["ceremony_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{} answered without a ceremony_id: {v}", client.label()))?
        .to_owned();
    let reused = v["reused"] == true;
    let set = participants_of(&v);
    if reused {
        if progress {
            println!("aux info for node set {set} exists (ceremony {id}): reused");
        }
        return Ok(AuxOutcome {
            ceremony_id: id,
            reused,
            answer: v,
        });
    }
    let Some(timeout) = wait else {
        if progress {
            println!("aux info ceremony {id} started for node set {set}");
        }
        return Ok(AuxOutcome {
            ceremony_id: id,
            reused,
            answer: v,
        });
    };
    if progress {
        println!(
            "aux info ceremony {id} started for node set {set} (Paillier keys of every node; \
             can take a minute or more)..."
        );
    }
    // Poll a participant: the node asked, or the first participant when it is not
    // one (reachable only with a cluster file).
    let other;
    let poll = match &client.node_id {
        Some(me) if !set.split(',').any(|p| p == me) => {
            other = set.split(',').next().and_then(|p| client.for_node(p));
            other.as_ref().unwrap_or(client)
        }
        _ => client,
    };
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut last_state = String::from("not yet recorded");
    let spinner = super::progress::Waiting::new(&format!("aux info {id}"));
    let end = loop {
        match recorded_ceremony(poll, &id).await? {
            Some(c) if c["state"] == "completed" || c["state"] == "failed" => break c,
            Some(c) => {
                last_state = c["state"].as_str().unwrap_or("?").to_owned();
                spinner.state(&last_state);
            }
            None => {}
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "aux info ceremony {id} did not end within {} s on {} (state: {last_state})",
            timeout.as_secs(),
            poll.label()
        );
        if progress && last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let pool = pool_progress(poll).await;
            // On a terminal the spinner shows it (prime generation included);
            // otherwise a line every 5 s, as logs want.
            if spinner.is_drawn() {
                spinner.state(&format!("{last_state}{pool}"));
            } else {
                println!(
                    "  ... {:>4.0} s, {last_state}{pool}",
                    start.elapsed().as_secs_f64()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(spinner);
    if end["state"] != "completed" {
        anyhow::bail!(
            "aux info ceremony {id} failed on {}: {}",
            poll.label(),
            end["error"].as_str().unwrap_or("no reason recorded")
        );
    }
    // Completed on the node polled; with the cluster file, also on every other
    // participant (each stores its own aux info when its last round ends, and an
    // ECDSA signer without it cannot sign: `cluster demo-sign` signs right after).
    for p in set
        .split(',')
        .filter(|p| Some(*p) != poll.node_id.as_deref())
    {
        let Some(node) = client.for_node(p) else {
            continue;
        };
        loop {
            match recorded_ceremony(&node, &id).await? {
                Some(c) if c["state"] == "completed" => break,
                Some(c) if c["state"] == "failed" => anyhow::bail!(
                    "aux info ceremony {id} failed on {}: {}",
                    node.label(),
                    c["error"].as_str().unwrap_or("no reason recorded")
                ),
                _ => {}
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "aux info ceremony {id} completed on {} but not on {} within {} s",
                poll.label(),
                node.label(),
                timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if progress {
        println!(
            "aux info ceremony {id} completed in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(AuxOutcome {
        ceremony_id: id,
        reused,
        answer: end,
    })
}

/// Ceremony `id` as `node` records it; `None` while it is not recorded there yet.
async fn recorded_ceremony(node: &ApiClient, id: &str) -> anyhow::Result<Option<Value>> {
    match node.get(&format!("/api/v1/dkg/ceremonies/{id}")).await {
        Ok(c) => Ok(Some(c)),
        Err(e)
            if e.downcast_ref::<ApiRefusal>()
                .is_some_and(|r| r.status == 404) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `, generating primes (N ready, S s)` while this node's prime pool generates.
async fn pool_progress(client: &ApiClient) -> String {
    match client.get("/api/v1/aux-info/status").await {
        Ok(v) if v["prime_pool"]["generating"] == true => format!(
            ", {} generating primes ({} ready, {:.0} s)",
            client.label(),
            v["prime_pool"]["primes_ready"],
            v["prime_pool"]["generating_for_secs"]
                .as_f64()
                .unwrap_or(0.0)
        ),
        _ => String::new(),
    }
}

/// The `participants` list of an answer, comma-separated.
fn participants_of(v: &Value) -> String {
    v["participants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn print_status(v: &Value) {
    let pool = &v["prime_pool"];
    println!(
        "prime pool on {}: {} available (target {}), {} taken, {} test fixture(s){}",
        v["node_id"].as_str().unwrap_or("?"),
        pool["available"],
        pool["target"],
        pool["taken"],
        pool["test_fixtures_available"],
        if pool["generating"] == true {
            format!(", generating ({} primes ready)", pool["primes_ready"])
        } else {
            String::new()
        }
    );
    if let Some(e) = pool["last_error"].as_str() {
        println!("last generation error: {e}");
    }
    let list = v["ceremonies"].as_array().cloned().unwrap_or_default();
    println!("aux-info ceremonies: {}", list.len());
    if list.is_empty() {
        return;
    }
    println!(
        "{:<36}  {:<9}  {:<25}  {:<25}  PARTICIPANTS / ERROR",
        "ID", "STATE", "CREATED", "COMPLETED"
    );
    for c in &list {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
        let short = |t: String| t.get(..19).map_or(t.clone(), str::to_owned);
        let set = participants_of(c);
        println!(
            "{:<36}  {:<9}  {:<25}  {:<25}  {}",
            s("id"),
            s("state"),
            short(s("created_at")),
            short(s("completed_at")),
            c["error"].as_str().map_or(set, str::to_owned)
        );
    }
}
