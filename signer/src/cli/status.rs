//! `signer status`: a readable table of the cluster.

use std::path::Path;

use serde_json::Value;

use crate::cli::cluster::ClusterFile;

/// Prints the cluster status as seen by each node.
pub async fn run(cluster: &Path, json: bool) -> anyhow::Result<()> {
    let file = ClusterFile::load(cluster)?;
    let client = crate::tls::api_client(&file.ca_cert)?;
    let mut rows = Vec::new();
    let mut status: Option<serde_json::Value> = None;
    for n in &file.nodes {
        let health = client
            .get(format!("{}/health", n.api_url))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        let up = health.is_some();
        if up && status.is_none() {
            let resp = client
                .get(format!("{}/api/v1/cluster/status", n.api_url))
                .bearer_auth(&file.admin_token)
                .send()
                .await;
            if let Ok(r) = resp {
                if r.status().is_success() {
                    status = r.json().await.ok();
                }
            }
        }
        rows.push((n.id.clone(), n.api_url.clone(), n.quic_addr.clone(), up));
    }
    // Keys, pools and pending transactions, from the first node that answers.
    let first_up = rows
        .iter()
        .zip(&file.nodes)
        .find(|((_, _, _, up), _)| *up)
        .map(|(_, n)| n.api_url.clone());
    let get = |path: String| {
        let client = client.clone();
        let base = first_up.clone();
        let token = file.admin_token.clone();
        async move {
            let base = base?;
            let r = client
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<Value>().await.ok()
        }
    };
    let keys = get("/api/v1/keys".to_owned()).await;
    let pools = get("/api/v1/presignatures/status".to_owned()).await;
    let mut pending = Vec::new();
    for state in PENDING_STATES {
        if let Some(v) = get(format!("/api/v1/transactions?state={state}&limit=100")).await {
            if let Some(list) = v["transactions"].as_array() {
                pending.extend(list.iter().cloned());
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "nodes": rows.iter().map(|(id, api, quic, up)| serde_json::json!({
                    "id": id, "api_url": api, "quic_addr": quic, "api_up": up})).collect::<Vec<_>>(),
                "cluster_status": status,
                "keys": keys.as_ref().map(|k| k["keys"].clone()),
                "presignatures": pools.as_ref().map(|p| p["pools"].clone()),
                "pending_transactions": pending,
            }))?
        );
        return Ok(());
    }
    println!("{:<10} {:<8} {:<32} QUIC", "NODE", "API", "URL");
    for (id, api, quic, up) in &rows {
        println!(
            "{:<10} {:<8} {:<32} {}",
            id,
            if *up { "up" } else { "DOWN" },
            api,
            quic
        );
    }
    match status {
        Some(s) => println!(
            "\ncluster: {} ({}/{} healthy, threshold {})",
            s["status"].as_str().unwrap_or("?"),
            s["healthy_nodes"],
            s["total_nodes"],
            s["threshold"]
        ),
        None => println!("\ncluster: no node answered"),
    }
    print_keys(keys.as_ref());
    print_pools(pools.as_ref());
    print_pending(&pending);
    Ok(())
}

/// Transaction states shown as pending (not yet signed nor ended).
const PENDING_STATES: &[&str] = &["pending", "voting", "approved", "signing"];

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print_keys(keys: Option<&Value>) {
    let Some(list) = keys.and_then(|k| k["keys"].as_array()) else {
        return println!("\nkeys: unavailable");
    };
    println!(
        "\nKEY{:<34} {:<9} {:<8} FIRST ADDRESS",
        "", "TYPE", "T-OF-N"
    );
    if list.is_empty() {
        println!("(none: signer dkg start --wait)");
    }
    for k in list {
        println!(
            "{:<37} {:<9} {:<8} {}",
            text(k, "key_id"),
            text(k, "key_type"),
            format!("{}-of-{}", text(k, "t"), text(k, "n")),
            text(k, "first_address")
        );
    }
}

fn print_pools(pools: Option<&Value>) {
    let Some(list) = pools.and_then(|p| p["pools"].as_array()) else {
        return;
    };
    if list.is_empty() {
        return println!("\npresignatures: none pooled on the first node");
    }
    println!("\nPRESIGNATURES (first node)  AVAILABLE GENERATING  SIGNER SET");
    for p in list {
        println!(
            "{:<27} {:>9} {:>10}  {}",
            text(p, "key_id"),
            text(p, "available"),
            text(p, "generating"),
            p["signer_set"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        );
    }
}

fn print_pending(pending: &[Value]) {
    println!("\npending transactions: {}", pending.len());
    for t in pending.iter().take(20) {
        println!(
            "  {} {:<9} key {} {} sats",
            text(t, "id"),
            text(t, "state"),
            text(t, "key_id"),
            text(t, "amount_sats")
        );
    }
    if pending.len() > 20 {
        println!("  ... {} more (signer tx status)", pending.len() - 20);
    }
}
