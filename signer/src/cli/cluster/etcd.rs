//! The dev cluster's etcd on loopback: one member (the default, fastest) or a
//! 3- or 5-member cluster as in production (`cluster up --etcd-members 3`). Member
//! `i` lives in `<dir>/member-<i>` (data, `etcd.pid`, `etcd.log`, and `etcd.args`,
//! its command line, so a fault test can restart exactly that member).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::procs::{free_port, read_pid, spawn_logged, stop, wait_until};

/// A started etcd.
#[derive(Debug)]
pub struct Etcd {
    /// Client URL of every member.
    pub endpoints: Vec<String>,
}

/// Starts `members` etcd members with their data under `dir` and waits until every
/// one is healthy.
pub async fn start(dir: &Path, members: u8) -> anyhow::Result<Etcd> {
    anyhow::ensure!(
        matches!(members, 1 | 3 | 5),
        "--etcd-members must be 1, 3 or 5"
    );
    let bin = which("etcd").ok_or_else(|| {
        anyhow::anyhow!("etcd binary not found; install Debian package etcd-server (make deps)")
    })?;
    std::fs::create_dir_all(dir)?;
    let mut urls = Vec::new();
    for i in 0..members {
        let client = format!("http://127.0.0.1:{}", free_port()?);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        urls.push((format!("m{i}"), client, peer));
    }
    let initial = urls
        .iter()
        .map(|(name, _, peer)| format!("{name}={peer}"))
        .collect::<Vec<_>>()
        .join(",");
    for (i, (name, client, peer)) in urls.iter().enumerate() {
        let mdir = dir.join(format!("member-{i}"));
        std::fs::create_dir_all(&mdir)?;
        let args: Vec<String> = vec![
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            mdir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            format!("signer-dev-{}", std::process::id()),
        ];
        std::fs::write(mdir.join("etcd.args"), args.join("\n"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        let pid = spawn_logged(cmd, &mdir.join("etcd.log"))?;
        std::fs::write(mdir.join("etcd.pid"), pid.to_string())?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for (_, client, _) in &urls {
        let health = format!("{client}/health");
        wait_until("etcd to become healthy", Duration::from_secs(60), || {
            let http = http.clone();
            let health = health.clone();
            async move {
                match http.get(&health).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                }
            }
        })
        .await?;
    }
    Ok(Etcd {
        endpoints: urls.into_iter().map(|(_, client, _)| client).collect(),
    })
}

/// Stops every member started under `dir` (and the single member of clusters
/// started by earlier versions, `<dir>/etcd.pid`).
pub fn stop_all(dir: &Path) {
    let mut pids: Vec<u32> = read_pid(&dir.join("etcd.pid")).into_iter().collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("member-") {
                pids.extend(read_pid(&e.path().join("etcd.pid")));
            }
        }
    }
    for pid in pids {
        stop(pid, Duration::from_secs(10));
    }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
