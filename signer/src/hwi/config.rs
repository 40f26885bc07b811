//! Configuration of `signer-hwi`: a small TOML file (`--config FILE`, or the file
//! named by `SIGNER_HWI_CONFIG`) and/or the environment, which overrides the file:
//!
//! | TOML            | environment                | meaning |
//! |-----------------|----------------------------|---------|
//! | `api_url`       | `SIGNER_HWI_API_URL`       | a node's API, `https://host:port` |
//! | `ca_cert`       | `SIGNER_HWI_CA_CERT`       | the cluster CA (PEM) the API's certificate chains to |
//! | `token_file`    | `SIGNER_HWI_TOKEN_FILE`    | file whose first line is an operator token (mode 0600, owned by the user running bitcoind) |
//! | `key`           | `SIGNER_HWI_KEY`           | optional: only this key (id, fingerprint, or `ecdsa`/`taproot`) |
//! | `timeout_secs`  | `SIGNER_HWI_TIMEOUT_SECS`  | longest wait for votes and signing in `signtx` (default 300) |
//! | `poll_interval_ms` | `SIGNER_HWI_POLL_INTERVAL_MS` | how often `signtx` asks for the transaction's state (default 500) |
//!
//! Relative paths in the file are relative to the file's directory. The token is
//! never taken from the command line or the environment itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::HwiError;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "SIGNER_HWI_CONFIG";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Default longest wait of `signtx`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// Longest accepted `timeout_secs` (one day).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Default poll interval of `signtx`.
const DEFAULT_POLL_MS: u64 = 500;

/// The file's fields (all optional: the environment may give them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    api_url: Option<String>,
    ca_cert: Option<PathBuf>,
    token_file: Option<PathBuf>,
    key: Option<String>,
    timeout_secs: Option<u64>,
    poll_interval_ms: Option<u64>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwiConfig {
    /// Base URL of a node's API (https).
    pub api_url: String,
    /// CA certificate (PEM) of the cluster.
    pub ca_cert: PathBuf,
    /// File holding the operator token (first line).
    pub token_file: PathBuf,
    /// Only this key: id, fingerprint or key type.
    pub key: Option<String>,
    /// Longest wait for the signature in `signtx`.
    pub timeout: Duration,
    /// Interval between two state queries in `signtx`.
    pub poll_interval: Duration,
}

impl HwiConfig {
    /// Reads `file` (if any) and applies the environment (`env` looks a variable
    /// up); checks that every required field is given, the URL is https and the
    /// token file is private to this user.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<HwiConfig, HwiError> {
        let (mut f, base) = match file {
            Some(p) => (read_file(p)?, p.parent().map(Path::to_path_buf)),
            None => (FileConfig::default(), None),
        };
        let resolve = |p: PathBuf| match (&base, p.is_relative()) {
            (Some(b), true) => b.join(p),
            _ => p,
        };
        f.ca_cert = f.ca_cert.map(resolve);
        f.token_file = f.token_file.map(resolve);
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let number = |name: &str, file: Option<u64>| -> Result<Option<u64>, HwiError> {
            match var(name) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| HwiError::Config(format!("{name} is not a number: {v:?}"))),
                None => Ok(file),
            }
        };
        let missing = |what: &str, var_name: &str| {
            HwiError::Config(format!(
                "no {what}: set `{what}` in the configuration file (--config or \
                 {CONFIG_ENV}) or {var_name}"
            ))
        };
        let api_url = var("SIGNER_HWI_API_URL")
            .or(f.api_url)
            .ok_or_else(|| missing("api_url", "SIGNER_HWI_API_URL"))?;
        let api_url = api_url.trim().trim_end_matches('/').to_owned();
        if !api_url.starts_with("https://") || api_url.len() > 2048 {
            return Err(HwiError::Config(format!(
                "api_url must be an https:// URL (the token is sent with every request), not {api_url:?}"
            )));
        }
        let ca_cert = var("SIGNER_HWI_CA_CERT")
            .map(PathBuf::from)
            .or(f.ca_cert)
            .ok_or_else(|| missing("ca_cert", "SIGNER_HWI_CA_CERT"))?;
        let token_file = var("SIGNER_HWI_TOKEN_FILE")
            .map(PathBuf::from)
            .or(f.token_file)
            .ok_or_else(|| missing("token_file", "SIGNER_HWI_TOKEN_FILE"))?;
        let meta = std::fs::metadata(&token_file)
            .map_err(|e| HwiError::Config(format!("token file {}: {e}", token_file.display())))?;
        hsm::memory::check_private_file(&meta)
            .map_err(|e| HwiError::Config(format!("token file {}: {e}", token_file.display())))?;
        let key = var("SIGNER_HWI_KEY").or(f.key).map(|k| k.trim().to_owned());
        let timeout_secs =
            number("SIGNER_HWI_TIMEOUT_SECS", f.timeout_secs)?.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT_SECS {
            return Err(HwiError::Config(format!(
                "timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}, not {timeout_secs}"
            )));
        }
        let poll_ms =
            number("SIGNER_HWI_POLL_INTERVAL_MS", f.poll_interval_ms)?.unwrap_or(DEFAULT_POLL_MS);
        if !(50..=60_000).contains(&poll_ms) {
            return Err(HwiError::Config(format!(
                "poll_interval_ms must be between 50 and 60000, not {poll_ms}"
            )));
        }
        Ok(HwiConfig {
            api_url,
            ca_cert,
            token_file,
            key,
            timeout: Duration::from_secs(timeout_secs),
            poll_interval: Duration::from_millis(poll_ms),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, HwiError> {
    let err = |e: String| HwiError::Config(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt as _;

    fn private(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn the_file_gives_the_fields_relative_to_itself_and_the_environment_overrides_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        private(&dir.path().join("token"), "tok\n");
        let file = dir.path().join("hwi.toml");
        std::fs::write(
            &file,
            "api_url = \"https://127.0.0.1:7443/\"\nca_cert = \"ca.pem\"\ntoken_file = \"token\"\nkey = \"taproot\"\n",
        )
        .expect("write");
        let c = HwiConfig::load(Some(&file), |_| None).expect("loads");
        assert_eq!(c.api_url, "https://127.0.0.1:7443");
        assert_eq!(c.ca_cert, dir.path().join("ca.pem"));
        assert_eq!(c.token_file, dir.path().join("token"));
        assert_eq!(c.key.as_deref(), Some("taproot"));
        assert_eq!(c.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        let env: HashMap<&str, String> = [
            ("SIGNER_HWI_API_URL", "https://10.0.0.2:7443".to_owned()),
            ("SIGNER_HWI_KEY", "ecdsa".to_owned()),
            ("SIGNER_HWI_TIMEOUT_SECS", "42".to_owned()),
        ]
        .into();
        let c = HwiConfig::load(Some(&file), |k| env.get(k).cloned()).expect("loads");
        assert_eq!(c.api_url, "https://10.0.0.2:7443");
        assert_eq!(c.key.as_deref(), Some("ecdsa"));
        assert_eq!(c.timeout, Duration::from_secs(42));
    }

    #[test]
    fn the_packaged_example_configuration_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let example = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/signer-hwi.toml"
        ));
        let file = dir.path().join("signer-hwi.toml");
        std::fs::write(&file, example).expect("write");
        private(&dir.path().join("signer-hwi.token"), "tok\n");
        let c = HwiConfig::load(Some(&file), |_| None).expect("example loads");
        assert!(c.api_url.starts_with("https://"), "{}", c.api_url);
        assert_eq!(c.timeout, Duration::from_secs(300));
    }

    #[test]
    fn missing_fields_plain_http_open_token_files_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        private(&token, "tok\n");
        let env = |url: &'static str| {
            let token = token.display().to_string();
            move |k: &str| match k {
                "SIGNER_HWI_API_URL" => Some(url.to_owned()),
                "SIGNER_HWI_CA_CERT" => Some("/ca.pem".to_owned()),
                "SIGNER_HWI_TOKEN_FILE" => Some(token.clone()),
                _ => None,
            }
        };
        assert!(HwiConfig::load(None, env("https://h:1")).is_ok());
        let e = HwiConfig::load(None, env("http://h:1")).expect_err("http");
        assert!(e.to_string().contains("https://"), "{e}");
        let e = HwiConfig::load(None, |_| None).expect_err("nothing given");
        assert!(e.to_string().contains("api_url"), "{e}");
        assert_eq!(e.code(), -3);
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = HwiConfig::load(None, env("https://h:1")).expect_err("readable token");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("tok\n"));
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "api_url = \"https://h:1\"\ntoken = \"inline\"\n").expect("write");
        let e = HwiConfig::load(Some(&file), |_| None).expect_err("unknown field");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
