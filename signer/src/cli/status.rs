//! `signer status`: a readable table of the cluster.

use std::path::Path;

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
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "nodes": rows.iter().map(|(id, api, quic, up)| serde_json::json!({
                    "id": id, "api_url": api, "quic_addr": quic, "api_up": up})).collect::<Vec<_>>(),
                "cluster_status": status,
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
    Ok(())
}
