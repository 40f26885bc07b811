//! `signer cluster add-node`: one more node for a running dev cluster, joined to
//! every running node's live peer set without restarting them. It holds no key
//! share until a reshare (approved by a quorum of the old holders' votes) gives it
//! one (docs/OPERATIONS.md, "Adding a node").

use std::path::Path;
use std::time::Duration;

use super::procs::{free_port, wait_until};
use super::up::{absolute, hsm_init, softhsm_token, start_node, wait_healthy};
use super::{postgres, write_private, ClusterFile, ClusterNode};
use crate::audit::AuditEntry;
use crate::store::audit::AuditOf;
use crate::store::Store;

/// Adds a node to the dev cluster in `dir`: the next id (`node-<n+1>`), a
/// certificate from the dev CA, its own database with the cluster's admin token,
/// a SoftHSM token and KEK, a config (the first node's, with this node's own
/// addresses, files and every other node as peer), its process; then every running
/// node gets it as a peer through `POST /api/v1/cluster/peers` (audited there as
/// `cluster.peer_added`) and in its config file (kept over restarts), and
/// `cluster.json` lists it. Returns the new node.
pub async fn add_node(dir: &Path) -> anyhow::Result<ClusterNode> {
    let dir = absolute(dir)?;
    let file_path = dir.join("cluster.json");
    let mut file = ClusterFile::load(&file_path)?;
    let template = file
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("the cluster file lists no node"))?
        .clone();
    let next = file
        .nodes
        .iter()
        .filter_map(|n| n.id.strip_prefix("node-")?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let id = format!("node-{next}");
    let node_dir = dir.join("nodes").join(&id);
    anyhow::ensure!(
        !node_dir.exists(),
        "{} already exists (an earlier add-node that failed?); remove it first",
        node_dir.display()
    );

    // Certificate from the cluster CA.
    let ca_dir = dir.join("ca");
    crate::ca::issue_node_cert_for_ips(&ca_dir, &id, 365, &[std::net::Ipv4Addr::LOCALHOST.into()])?;
    let cert_dir = ca_dir.join("nodes").join(&id);
    let cert_pem = std::fs::read_to_string(cert_dir.join("cert.pem"))?;

    // Database with the cluster's admin token.
    std::fs::create_dir_all(&node_dir)?;
    let pg_port = reqwest::Url::parse(&file.postgres_admin_url)?
        .port()
        .ok_or_else(|| anyhow::anyhow!("no port in the postgres admin url"))?;
    let db_name = id.replace('-', "_");
    let db_url =
        postgres::create_node_database(&file.postgres_admin_url, pg_port, &db_name).await?;
    write_private(&node_dir.join("database.url"), db_url.as_bytes())?;
    let (token_id, token_hash) = crate::api::auth::enrolment_form(&file.admin_token)
        .ok_or_else(|| anyhow::anyhow!("the cluster file's admin token is malformed"))?;
    let store = Store::connect(&db_url, 2).await?;
    store
        .insert_token(
            &token_id,
            "dev-admin",
            "admin",
            &token_hash,
            100_000,
            "cluster-add-node",
            AuditOf::new(
                &id,
                AuditEntry::new("cluster-add-node", "token.create")
                    .subject(&token_id)
                    .details(serde_json::json!({"name": "dev-admin", "role": "admin"})),
            ),
        )
        .await?;
    store.pool().close().await;

    // Config: the first node's, with this node's identity, addresses and files.
    let (api_port, quic_port) = (free_port()?, free_port()?);
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&template.config)?)?;
    let custody: toml::Table = toml::from_str(&softhsm_token(&node_dir, &id)?)?;
    let policy_file = node_dir.join("policy.toml");
    let template_policy = template.dir.join("policy.toml");
    if template_policy.is_file() {
        std::fs::copy(&template_policy, &policy_file)?;
    }
    let s = |v: &Path| toml::Value::String(v.display().to_string());
    cfg.insert("node_id".into(), id.clone().into());
    cfg.insert("data_dir".into(), s(&node_dir));
    set(
        &mut cfg,
        "api",
        "listen",
        format!("127.0.0.1:{api_port}").into(),
    )?;
    set(
        &mut cfg,
        "p2p",
        "listen",
        format!("127.0.0.1:{quic_port}").into(),
    )?;
    let peers: Vec<toml::Value> = file.nodes.iter().map(peer_entry).collect();
    set(&mut cfg, "p2p", "peers", peers.into())?;
    set(&mut cfg, "tls", "cert", s(&cert_dir.join("cert.pem")))?;
    set(&mut cfg, "tls", "key", s(&cert_dir.join("key.pem")))?;
    set(
        &mut cfg,
        "database",
        "url_file",
        s(&node_dir.join("database.url")),
    )?;
    cfg.insert(
        "custody".into(),
        custody
            .get("custody")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no custody section"))?,
    );
    if policy_file.is_file() {
        set(&mut cfg, "policy", "file", s(&policy_file))?;
    }
    // The test prime sets are per node; a new node generates its own (if enabled).
    if let Some(aux) = cfg.get_mut("aux").and_then(toml::Value::as_table_mut) {
        aux.insert(
            "insecure_test_primes".into(),
            toml::Value::Array(Vec::new()),
        );
    }
    let config_path = node_dir.join("node.toml");
    let text = format!(
        "# Generated by `signer cluster add-node`; see docs/CONFIGURATION.md.\n{}",
        toml::to_string(&cfg)?
    );
    write_private(&config_path, text.as_bytes())?;
    crate::config::NodeConfig::load(&config_path)
        .map_err(|e| anyhow::anyhow!("generated config {}: {e}", config_path.display()))?;

    let node = ClusterNode {
        id: id.clone(),
        api_url: format!("https://127.0.0.1:{api_port}"),
        quic_addr: format!("127.0.0.1:{quic_port}"),
        config: config_path,
        log: node_dir.join("node.log"),
        dir: node_dir,
        database_url: db_url,
        database: db_name,
    };
    hsm_init(&node.config)?;
    start_node(&node.config, &node.log)?;
    let client = crate::tls::api_client(&file.ca_cert)?;
    wait_healthy(&client, &node).await?;

    // Every running node: live peer set (no restart), then its config file. A node
    // that does not answer (down, e.g. the one being replaced) gets the config entry
    // only and takes the peer at its next start.
    let mut running = Vec::new();
    for n in &file.nodes {
        let r = client
            .post(format!("{}/api/v1/cluster/peers", n.api_url))
            .bearer_auth(&file.admin_token)
            .json(&serde_json::json!({
                "id": id,
                "addr": node.quic_addr,
                "certificate_pem": cert_pem,
            }))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                add_peer_to_config(&n.config, &node)?;
                eprintln!(
                    "warning: {} did not answer ({e}); peer {id} is in its config for its next start",
                    n.id
                );
                continue;
            }
        };
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "{} refused the new peer ({status}): {body}",
            n.id
        );
        add_peer_to_config(&n.config, &node)?;
        running.push(n.clone());
        println!("{}: peer {id} added", n.id);
    }
    file.nodes.push(node.clone());
    file.save(&file_path)?;
    // Done when every node sees the new one connected and registered (its vote key
    // announcement follows within a second or two).
    running.push(node.clone());
    let running = &running;
    for n in running {
        let url = format!("{}/api/v1/cluster/status", n.api_url);
        let (client, token, id) = (&client, &file.admin_token, &id);
        wait_until(
            &format!("{} to see {id} connected and healthy", n.id),
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    let Ok(r) = client.get(&url).bearer_auth(token).send().await else {
                        return false;
                    };
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let seen = |peer: &str| {
                        v["nodes"].as_array().is_some_and(|nodes| {
                            nodes.iter().any(|x| {
                                x["node_id"] == peer
                                    && x["healthy"] == true
                                    && x["p2p_connected"] == true
                            })
                        })
                    };
                    // Each running node sees the new one; the new one sees them all.
                    if n.id == *id {
                        running.iter().all(|r| seen(&r.id))
                    } else {
                        seen(id)
                    }
                }
            },
        )
        .await?;
    }
    println!(
        "{id} is up: api {} quic {} (no key share yet: reshare a key onto it with `signer keys reshare`)",
        node.api_url, node.quic_addr
    );
    Ok(node)
}

fn peer_entry(n: &ClusterNode) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("id".into(), n.id.clone().into());
    t.insert("addr".into(), n.quic_addr.clone().into());
    t.insert("api_url".into(), n.api_url.clone().into());
    toml::Value::Table(t)
}

fn set(cfg: &mut toml::Table, section: &str, key: &str, v: toml::Value) -> anyhow::Result<()> {
    cfg.get_mut(section)
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| anyhow::anyhow!("the template config has no [{section}]"))?
        .insert(key.into(), v);
    Ok(())
}

/// Appends `new` to `[[p2p.peers]]` of the node config at `path` (unless listed).
fn add_peer_to_config(path: &Path, new: &ClusterNode) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let cfg: toml::Table = toml::from_str(&text)?;
    let listed = cfg
        .get("p2p")
        .and_then(|p| p.get("peers"))
        .and_then(toml::Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|p| p.get("id").and_then(|i| i.as_str()) == Some(&new.id))
        });
    if listed {
        return Ok(());
    }
    // Appended as text so the file keeps its comments and layout.
    let entry = format!(
        "\n# Added by `signer cluster add-node`.\n[[p2p.peers]]\nid = \"{}\"\naddr = \"{}\"\napi_url = \"{}\"\n",
        new.id, new.quic_addr, new.api_url
    );
    let mut out = text;
    out.push_str(&entry);
    write_private(path, out.as_bytes())?;
    crate::config::NodeConfig::load(path)
        .map_err(|e| anyhow::anyhow!("updated config {}: {e}", path.display()))?;
    Ok(())
}
