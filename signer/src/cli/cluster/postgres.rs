//! A throwaway PostgreSQL for the dev cluster: initdb in a directory, loopback
//! port, password authentication, one role and database per node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::RngCore;
use sqlx::Connection;

use super::etcd::which;
use super::procs::{free_port, spawn_logged, wait_until};

/// A started PostgreSQL.
#[derive(Debug)]
pub struct Postgres {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Superuser URL.
    pub admin_url: String,
    /// Binaries directory.
    pub bindir: PathBuf,
}

/// Locates the PostgreSQL server binaries: `$SIGNER_PG_BINDIR`, `initdb` on PATH,
/// or the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("SIGNER_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(initdb) = which("initdb") {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent() {
            return Ok(dir.to_owned());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL server binaries not found; install Debian package postgresql (make deps)"
        )
    })
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// PostgreSQL refuses to run as root: run as the `postgres` user then.
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A random password of 32 hex characters.
pub fn random_password() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Where PostgreSQL's own files of the cluster in `dir` live. Normally
/// `dir/data`; when the invoking user is root, PostgreSQL runs as `postgres`,
/// which must be able to enter every parent of its data directory. A cluster
/// directory under a parent only its owner can enter (a clone in root's home,
/// mode 0700 on Debian) gets its data directory under [`EXTERNAL_DATA_ROOT`]
/// instead, named after the cluster directory; `dir/external-data` records it so
/// that `cluster down`/`up` remove it with the cluster.
const EXTERNAL_DATA_ROOT: &str = "/var/tmp";
/// File in the PostgreSQL directory naming an external data directory.
const EXTERNAL_MARKER: &str = "external-data";

/// Whether the `postgres` user can enter `dir` (search permission on it and on
/// every parent).
fn postgres_can_enter(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// PostgreSQL's home for the cluster whose PostgreSQL directory is `dir` (already
/// created): `dir` itself when PostgreSQL can reach it, else a fresh directory
/// under [`EXTERNAL_DATA_ROOT`] recorded in `dir/external-data`.
fn data_home(dir: &Path) -> anyhow::Result<PathBuf> {
    if !is_root() || postgres_can_enter(dir) {
        return Ok(dir.to_owned());
    }
    let mut name = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut name);
    let home = Path::new(EXTERNAL_DATA_ROOT).join(format!("signer-pg-{}", hex::encode(name)));
    // A new random name (create fails if it exists: nothing planted in the shared
    // /var/tmp is used), readable only by its owner.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&home)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} cannot be entered by the postgres user and {} cannot be created: {e}",
                dir.display(),
                home.display()
            )
        })?;
    std::fs::write(dir.join(EXTERNAL_MARKER), home.display().to_string())?;
    Ok(home)
}

/// Removes the external data directory of the PostgreSQL directory `dir`, if it
/// has one (after PostgreSQL stopped). Only paths under [`EXTERNAL_DATA_ROOT`]
/// named by this module are removed.
pub fn remove_external_data(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(EXTERNAL_MARKER)) else {
        return;
    };
    let home = PathBuf::from(text.trim());
    let ours = home.parent() == Some(Path::new(EXTERNAL_DATA_ROOT))
        && home
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("signer-pg-"));
    if ours {
        if let Err(e) = std::fs::remove_dir_all(&home) {
            tracing::warn!(dir = %home.display(), error = %e, "cannot remove PostgreSQL data");
        }
    }
    let _ = std::fs::remove_file(dir.join(EXTERNAL_MARKER));
}

/// initdb + start in `dir` (or in an external data directory, see [`data_home`]).
pub async fn start(dir: &Path) -> anyhow::Result<Postgres> {
    let bindir = bindir()?;
    std::fs::create_dir_all(dir)?;
    let home = data_home(dir)?;
    let data = home.join("data");
    let password = random_password();
    let pwfile = home.join("superuser.pw");
    super::write_private(&pwfile, password.as_bytes())?;
    if is_root() {
        let pg = nix::unistd::User::from_name("postgres")?.ok_or_else(|| {
            anyhow::anyhow!("running as root but there is no 'postgres' user to run PostgreSQL as")
        })?;
        nix::unistd::chown(&home, Some(pg.uid), Some(pg.gid))?;
        nix::unistd::chown(&pwfile, Some(pg.uid), Some(pg.gid))?;
    }
    let out = pg_command(&bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .arg("-U")
        .arg("postgres")
        .arg("--auth=scram-sha-256")
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg("-E")
        .arg("UTF8")
        .arg("--locale=C")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run initdb: {e}"))?;
    let _ = std::fs::remove_file(&pwfile);
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port()?;
    let mut cmd = pg_command(&bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg("listen_addresses=127.0.0.1")
        .arg("-c")
        .arg("unix_socket_directories=")
        .arg("-c")
        .arg("max_connections=300");
    // Measurement only (`tx-latency --pg-stat`): statement statistics of the dev
    // cluster's server, nested statements included.
    if std::env::var_os("SIGNER_PG_STAT").is_some() {
        cmd.arg("-c")
            .arg("shared_preload_libraries=pg_stat_statements")
            .arg("-c")
            .arg("pg_stat_statements.track=all")
            .arg("-c")
            .arg("track_functions=all");
    }
    let log = dir.join("postgres.log");
    if is_root() {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
    }
    // Its command line, one item per line, so a fault test can start exactly this
    // server again after killing it.
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::fs::write(dir.join("postgres.cmd"), line.join("\n"))?;
    let pid = spawn_logged(cmd, &log)?;
    std::fs::write(dir.join("postgres.pid"), pid.to_string())?;
    let admin_url = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres");
    let url = admin_url.clone();
    wait_until(
        "PostgreSQL to accept connections",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move { sqlx::PgConnection::connect(&url).await.is_ok() }
        },
    )
    .await?;
    Ok(Postgres {
        port,
        admin_url,
        bindir,
    })
}

/// Creates a login role and a database it owns that nobody else may connect to.
/// Returns the node's database URL.
pub async fn create_node_database(
    admin_url: &str,
    port: u16,
    name: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "invalid database name {name}"
    );
    let password = random_password();
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    // Identifiers cannot be bound as parameters; `name` is validated above and the
    // password is hex.
    for stmt in [
        format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
        format!("CREATE DATABASE {name} OWNER {name}"),
        format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(format!(
        "postgres://{name}:{password}@127.0.0.1:{port}/{name}"
    ))
}
