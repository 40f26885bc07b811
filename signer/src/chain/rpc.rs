//! A small Bitcoin Core JSON-RPC client (HTTP POST, JSON-RPC 1.0 envelopes as
//! `bitcoin-cli` sends them) with a bounded answer size.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Largest answer read from bitcoind (a `scantxoutset` of a busy wallet is the
/// biggest answer used here).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest cookie or password file read.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// Bitcoin Core RPC error codes the pipeline acts on.
pub mod codes {
    /// `RPC_INVALID_ADDRESS_OR_KEY`: e.g. no such transaction.
    pub const INVALID_ADDRESS_OR_KEY: i64 = -5;
    /// `RPC_VERIFY_REJECTED`: the transaction was refused by the mempool.
    pub const VERIFY_REJECTED: i64 = -26;
    /// `RPC_VERIFY_ALREADY_IN_CHAIN`: the transaction is already confirmed.
    pub const VERIFY_ALREADY_IN_CHAIN: i64 = -27;
}

/// Errors of an RPC call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The request did not reach bitcoind or the answer did not arrive.
    #[error("bitcoind rpc {method}: transport: {reason}")]
    Transport {
        /// Method called.
        method: String,
        /// Why.
        reason: String,
    },
    /// bitcoind answered an HTTP error without a JSON-RPC error (401: bad
    /// credentials, 404: unknown wallet or path, 403: not allowed by rpcallowip).
    #[error("bitcoind rpc {method}: http status {status}")]
    Http {
        /// Method called.
        method: String,
        /// HTTP status.
        status: u16,
    },
    /// bitcoind answered with a JSON-RPC error.
    #[error("bitcoind rpc {method}: error {code}: {message}")]
    Rpc {
        /// Method called.
        method: String,
        /// Bitcoin Core's error code (see [`codes`]).
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("bitcoind rpc {method}: answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge {
        /// Method called.
        method: String,
    },
    /// The answer is not the JSON-RPC envelope or result shape expected.
    #[error("bitcoind rpc {method}: malformed answer: {reason}")]
    Malformed {
        /// Method called.
        method: String,
        /// Why.
        reason: String,
    },
    /// Credentials could not be read.
    #[error("bitcoind rpc credentials: {0}")]
    Credentials(String),
}

impl RpcError {
    /// The Bitcoin Core error code, for JSON-RPC errors.
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How the client authenticates.
#[derive(Clone)]
pub enum RpcAuth {
    /// Bitcoin Core's cookie file, read at every call.
    Cookie(PathBuf),
    /// User and password (the password from a file, read once).
    UserPass {
        /// User.
        user: String,
        /// Password.
        password: SecretString,
    },
}

impl std::fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcAuth::Cookie(p) => f.debug_tuple("Cookie").field(p).finish(),
            RpcAuth::UserPass { user, .. } => f
                .debug_struct("UserPass")
                .field("user", user)
                .field("password", &"[REDACTED]")
                .finish(),
        }
    }
}

fn read_secret_file(path: &std::path::Path, what: &str) -> Result<SecretString, RpcError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| RpcError::Credentials(format!("{what} {}: {e}", path.display())))?;
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(RpcError::Credentials(format!(
            "{what} {} is larger than {MAX_SECRET_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| RpcError::Credentials(format!("{what} {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(RpcError::Credentials(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(line.to_owned()))
}

impl RpcAuth {
    /// `(user, password)` for this call.
    fn credentials(&self) -> Result<(String, SecretString), RpcError> {
        match self {
            RpcAuth::Cookie(path) => {
                let cookie = read_secret_file(path, "cookie file")?;
                let (user, pass) = cookie.expose_secret().split_once(':').ok_or_else(|| {
                    RpcError::Credentials(format!(
                        "cookie file {} is not user:password",
                        path.display()
                    ))
                })?;
                Ok((user.to_owned(), SecretString::from(pass.to_owned())))
            }
            RpcAuth::UserPass { user, password } => Ok((user.clone(), password.clone())),
        }
    }
}

/// A Bitcoin Core JSON-RPC client.
#[derive(Debug, Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    url: String,
    auth: RpcAuth,
    max_response: usize,
}

impl RpcClient {
    /// A client of `url` (e.g. `http://127.0.0.1:18443`, or a wallet path
    /// `.../wallet/NAME`) with a per-call `timeout`.
    pub fn new(url: &str, auth: RpcAuth, timeout: Duration) -> Result<Self, RpcError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| RpcError::Transport {
                method: "connect".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            url: url.to_owned(),
            auth,
            max_response: MAX_RESPONSE_BYTES,
        })
    }

    /// The client of a node's `[chain]` section (`None` when no URL is set).
    pub fn from_config(cfg: &crate::config::ChainConfig) -> Result<Option<Self>, RpcError> {
        let Some(url) = &cfg.bitcoind_rpc_url else {
            return Ok(None);
        };
        let auth = match (&cfg.rpc_cookie_file, &cfg.rpc_user, &cfg.rpc_password_file) {
            (Some(c), _, _) => RpcAuth::Cookie(c.clone()),
            (None, Some(u), Some(p)) => RpcAuth::UserPass {
                user: u.clone(),
                password: read_secret_file(p, "password file")?,
            },
            _ => {
                return Err(RpcError::Credentials(
                    "set rpc_cookie_file, or rpc_user and rpc_password_file".to_owned(),
                ))
            }
        };
        Self::new(url, auth, Duration::from_secs(cfg.timeout_secs)).map(Some)
    }

    /// Lowers the answer bound (tests).
    pub fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Calls `method` with positional `params` and decodes the `result`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        let (user, password) = self.auth.credentials()?;
        let body = json!({
            "jsonrpc": "1.0",
            "id": "signer",
            "method": method,
            "params": params,
        });
        let transport = |e: reqwest::Error| RpcError::Transport {
            method: method.to_owned(),
            reason: e.without_url().to_string(),
        };
        let mut resp = self
            .http
            .post(&self.url)
            .basic_auth(user, Some(password.expose_secret()))
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|l| l > self.max_response as u64)
        {
            return Err(RpcError::TooLarge {
                method: method.to_owned(),
            });
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if buf.len() + chunk.len() > self.max_response {
                return Err(RpcError::TooLarge {
                    method: method.to_owned(),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        let malformed = |reason: String| RpcError::Malformed {
            method: method.to_owned(),
            reason,
        };
        // bitcoind answers RPC errors with HTTP 500 (404 for unknown methods) and a
        // JSON-RPC envelope; other HTTP errors carry no envelope.
        let envelope: Value = match serde_json::from_slice(&buf) {
            Ok(v) => v,
            Err(_) if !status.is_success() => {
                return Err(RpcError::Http {
                    method: method.to_owned(),
                    status: status.as_u16(),
                })
            }
            Err(e) => return Err(malformed(format!("not JSON: {e}"))),
        };
        let Value::Object(mut obj) = envelope else {
            return Err(malformed("not a JSON-RPC object".to_owned()));
        };
        match obj.remove("error") {
            None | Some(Value::Null) => {}
            Some(err) => {
                return Err(RpcError::Rpc {
                    method: method.to_owned(),
                    code: err["code"].as_i64().unwrap_or(0),
                    message: err["message"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(512)
                        .collect(),
                })
            }
        }
        if !status.is_success() {
            return Err(RpcError::Http {
                method: method.to_owned(),
                status: status.as_u16(),
            });
        }
        let result = obj
            .remove("result")
            .ok_or_else(|| malformed("no result".to_owned()))?;
        serde_json::from_value(result).map_err(|e| malformed(format!("unexpected result: {e}")))
    }
}
