//! `signer backup create|restore`: a node's database as an operator backs it up and
//! puts it back (issue 17).
//!
//! A backup file is `SIGNER-BACKUP 1\n`, one JSON manifest line (node, cluster,
//! schema version, audit head, presignature counter, the dump's length and SHA-256),
//! then a `pg_dump --format=custom` of the node's database: one consistent snapshot.
//! Secrets in it are the node's envelopes (sealed by its HSM/TPM KEK), so the file is
//! useless without that node's custody. Restore refuses a backup of another node or
//! cluster, a running node, a database that is not empty (unless `--replace`), and a
//! dump whose hash does not match; it loads the dump in one transaction, verifies the
//! audit chain and appends `node.restored`. At the next start the node's restore
//! check discards the presignatures the backup brings back (docs/PRESIGNATURES.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditEntry;
use crate::config::NodeConfig;
use crate::store::Store;

/// First line of every backup file.
const MAGIC: &str = "SIGNER-BACKUP 1";
/// Bound of the manifest line.
const MAX_MANIFEST: u64 = 64 * 1024;

/// What a backup says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Node whose database this is.
    pub node_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// When the backup was taken (RFC 3339).
    pub created_at: String,
    /// Newest migration applied in the dumped database.
    pub schema_version: i64,
    /// Audit records and chain head at the backup.
    pub audit_records: i64,
    /// Hex chain head.
    pub audit_head: String,
    /// Presignature restore counter at the backup.
    pub presign_counter: i64,
    /// Length of the dump in bytes.
    pub dump_bytes: u64,
    /// Hex SHA-256 of the dump.
    pub dump_sha256: String,
}

/// libpq's environment for the node's database URL, so that no password appears on
/// a command line.
fn libpq_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let u = reqwest::Url::parse(url).context("database url does not parse")?;
    ensure!(
        matches!(u.scheme(), "postgres" | "postgresql"),
        "database url is not postgres://"
    );
    let decode = |s: &str| percent_decode(s).context("database url: bad percent-encoding");
    let mut env = vec![("PGDATABASE", decode(u.path().trim_start_matches('/'))?)];
    if let Some(h) = u.host_str() {
        env.push(("PGHOST", h.to_owned()));
    }
    if let Some(p) = u.port() {
        env.push(("PGPORT", p.to_string()));
    }
    if !u.username().is_empty() {
        env.push(("PGUSER", decode(u.username())?));
    }
    if let Some(p) = u.password() {
        env.push(("PGPASSWORD", decode(p)?));
    }
    for (k, v) in u.query_pairs() {
        let var = match k.as_ref() {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "application_name" => "PGAPPNAME",
            other => bail!("database url parameter {other:?} is not supported by backups"),
        };
        env.push((var, v.into_owned()));
    }
    Ok(env)
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3).context("truncated escape")?;
            out.push(u8::from_str_radix(h, 16).context("bad escape")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

fn database_name(url: &str) -> anyhow::Result<String> {
    libpq_env(url)?
        .into_iter()
        .find_map(|(k, v)| (k == "PGDATABASE").then_some(v))
        .context("database url names no database")
}

/// Runs a PostgreSQL client program with the node database's environment.
fn pg_tool(program: &str, url: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(libpq_env(url)?);
    Ok(cmd)
}

async fn schema_version(store: &Store) -> anyhow::Result<i64> {
    let (v,): (Option<i64>,) = sqlx::query_as("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await?;
    Ok(v.unwrap_or(0))
}

/// `signer backup create --config F --out FILE`.
pub async fn create(config: &Path, out: &Path) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config)?;
    let url = cfg.database_url()?;
    let store = Store::connect(&url, 2).await?;
    store
        .audit(
            &cfg.node_id,
            AuditEntry::new("cli", "node.backup").details(serde_json::json!({
                "file": out.display().to_string(),
            })),
        )
        .await?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut dump = tempfile::NamedTempFile::new_in(dir)?;
    let status = pg_tool("pg_dump", &url)?
        .args(["--format=custom", "--no-owner", "--no-privileges"])
        .stdout(dump.reopen()?)
        .stderr(Stdio::piped())
        .output()
        .context("running pg_dump (the PostgreSQL client)")?;
    ensure!(
        status.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&status.stderr).trim()
    );
    // The dump is one snapshot; the manifest's figures are read after it, and the
    // audit head it names is at or after the dump's (verified at restore).
    let (audit_records, head, err) = store.verify_audit_chain().await?;
    ensure!(
        err.is_none(),
        "the audit chain does not verify: not backing up a broken log"
    );
    let mut bytes = Vec::new();
    dump.as_file_mut().sync_all()?;
    std::fs::File::open(dump.path())?.read_to_end(&mut bytes)?;
    let manifest = Manifest {
        node_id: cfg.node_id.clone(),
        cluster_id: cfg.cluster_id.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        schema_version: schema_version(&store).await?,
        audit_records,
        audit_head: hex::encode(head),
        presign_counter: store.presign_counter().await?,
        dump_bytes: bytes.len() as u64,
        dump_sha256: hex::encode(Sha256::digest(&bytes)),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(file, "{MAGIC}")?;
    writeln!(file, "{}", serde_json::to_string(&manifest)?)?;
    file.write_all(&bytes)?;
    file.as_file_mut().sync_all()?;
    // No overwrite even of a file created while the dump ran (new_file checked
    // before it started).
    file.persist_noclobber(out)
        .with_context(|| format!("writing {} (not overwriting a backup)", out.display()))?;
    println!(
        "backup of {} ({} audit records, {} bytes of database) written to {}",
        manifest.node_id,
        manifest.audit_records,
        manifest.dump_bytes,
        out.display()
    );
    Ok(())
}

/// Reads and checks a backup file: its manifest and the dump (hash checked).
pub fn read(path: &Path) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(f);
    let mut magic = String::new();
    r.by_ref().take(64).read_line(&mut magic)?;
    ensure!(
        magic.trim_end() == MAGIC,
        "{} is not a signer backup (no {MAGIC:?} header)",
        path.display()
    );
    let mut line = String::new();
    r.by_ref().take(MAX_MANIFEST).read_line(&mut line)?;
    ensure!(line.ends_with('\n'), "backup manifest missing or too long");
    let manifest: Manifest =
        serde_json::from_str(&line).context("backup manifest does not parse")?;
    let mut dump = Vec::new();
    r.read_to_end(&mut dump)?;
    ensure!(
        dump.len() as u64 == manifest.dump_bytes
            && hex::encode(Sha256::digest(&dump)) == manifest.dump_sha256,
        "backup damaged: the database dump does not match its manifest (length or SHA-256)"
    );
    Ok((manifest, dump))
}

/// Whether the node of `cfg` runs: its pid file names a live `signer` process.
fn node_running(cfg: &NodeConfig) -> Option<u32> {
    let dir = cfg.data_dir.as_ref()?;
    let pid: u32 = std::fs::read_to_string(dir.join("node.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("signer") && cmdline.contains("node")).then_some(pid)
}

/// `signer backup restore --config F FILE [--replace]`.
pub async fn restore(config: &Path, file: &Path, replace: bool) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config)?;
    let (m, dump) = read(file)?;
    ensure!(
        m.node_id == cfg.node_id && m.cluster_id == cfg.cluster_id,
        "backup of {} in cluster {:?}, but this configuration is {} in cluster {:?}: refused \
         (a node's database only opens with that node's custody)",
        m.node_id,
        m.cluster_id,
        cfg.node_id,
        cfg.cluster_id
    );
    if let Some(pid) = node_running(&cfg) {
        bail!("the node runs (pid {pid}): stop it before restoring its database");
    }
    let url = cfg.database_url()?;
    let store = Store::connect_unmigrated(&url, 2).await?;
    let (tables,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(store.pool())
            .await?;
    if tables > 0 {
        ensure!(
            replace,
            "the database holds {tables} tables: restore into an empty database, or give \
             --replace to drop its contents first"
        );
        for q in ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"] {
            sqlx::query(q).execute(store.pool()).await?;
        }
    }
    let known = crate::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    ensure!(
        m.schema_version <= known,
        "the backup's schema (migration {}) is newer than this binary's ({known}): restore \
         with the release that took it",
        m.schema_version
    );
    let mut tmp = tempfile::NamedTempFile::new()?;
    tmp.write_all(&dump)?;
    tmp.as_file_mut().sync_all()?;
    let out = pg_tool("pg_restore", &url)?
        .args([
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
        ])
        // The database name only (connection details and password in the environment).
        .arg(format!("--dbname={}", database_name(&url)?))
        .arg(tmp.path())
        .output()
        .context("running pg_restore (the PostgreSQL client)")?;
    ensure!(
        out.status.success(),
        "pg_restore failed (nothing restored: one transaction): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    store.pool().close().await;
    let store = Store::connect(&url, 2).await?;
    let (n, head, err) = store.verify_audit_chain().await?;
    if let Some(e) = err {
        bail!("restored, but the audit chain does not verify after {n} records: {e}");
    }
    ensure!(
        n >= m.audit_records - 1,
        "restored {n} audit records, the manifest names {}",
        m.audit_records
    );
    store
        .audit(
            &cfg.node_id,
            AuditEntry::new("cli", "node.restored").details(serde_json::json!({
                "backup_created_at": m.created_at,
                "dump_sha256": m.dump_sha256,
                "audit_records": n,
                "audit_head": hex::encode(head),
            })),
        )
        .await?;
    println!(
        "restored {} from the backup of {} ({n} audit records, chain valid); at its next \
         start the node discards the presignatures the backup brought back",
        cfg.node_id, m.created_at
    );
    Ok(())
}

/// The backup file's path, checked to be absent (no overwrite).
pub fn new_file(out: PathBuf) -> anyhow::Result<PathBuf> {
    ensure!(
        !out.exists(),
        "{} exists: not overwriting a backup",
        out.display()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_becomes_libpq_environment_without_a_command_line_password() {
        let env = libpq_env("postgres://node_1:p%40ss@127.0.0.1:5433/node_1?sslmode=require")
            .expect("parses");
        let get = |k: &str| env.iter().find(|(v, _)| *v == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGPASSWORD"), Some("p@ss"));
        assert_eq!(get("PGUSER"), Some("node_1"));
        assert_eq!(get("PGDATABASE"), Some("node_1"));
        assert_eq!(get("PGPORT"), Some("5433"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        assert!(libpq_env("mysql://x@h/db").is_err());
        assert!(libpq_env("postgres://x@h/db?options=-c").is_err());
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("b");
        std::fs::write(&p, "not a backup\n").expect("write");
        assert!(read(&p)
            .expect_err("refused")
            .to_string()
            .contains("not a signer backup"));
        let m = Manifest {
            node_id: "node-1".into(),
            cluster_id: "c".into(),
            created_at: "now".into(),
            schema_version: 15,
            audit_records: 1,
            audit_head: "00".into(),
            presign_counter: 0,
            dump_bytes: 4,
            dump_sha256: hex::encode(Sha256::digest(b"dump")),
        };
        let body = format!("{MAGIC}\n{}\n", serde_json::to_string(&m).expect("json"));
        std::fs::write(&p, format!("{body}dump")).expect("write");
        assert_eq!(read(&p).expect("intact").1, b"dump");
        std::fs::write(&p, format!("{body}dumq")).expect("write");
        assert!(read(&p)
            .expect_err("refused")
            .to_string()
            .contains("damaged"));
    }
}
