//! What `signer-hwi` asks of the cluster, as a small trait over the node API, and
//! its implementation by the operator CLI's HTTPS client
//! ([`crate::cli::client::ApiClient`]).

use std::future::Future;

use serde::Deserialize;
use serde_json::json;

use super::error::HwiError;
use crate::cli::client::{ApiClient, ApiRefusal};

/// One completed key of `GET /api/v1/keys` (the fields `signer-hwi` uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterKey {
    /// Key id.
    pub key_id: String,
    /// `ecdsa` or `taproot`.
    pub key_type: String,
    /// Network of the descriptors and addresses (`bitcoin`, `testnet`, `regtest`…).
    pub network: String,
    /// Receive descriptor with checksum (`wpkh([fp]xpub/0/*)#…`), when the node has
    /// the key's share loaded.
    #[serde(default)]
    pub receive_descriptor: Option<String>,
    /// Change descriptor with checksum (`…/1/*`).
    #[serde(default)]
    pub change_descriptor: Option<String>,
}

/// One address of `GET /api/v1/keys/{id}/addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterAddress {
    /// Index on its chain.
    pub index: u32,
    /// `m/<chain>/<index>`.
    pub path: String,
    /// The address.
    pub address: String,
}

/// A transaction of `GET /api/v1/transactions/{id}` (the fields `signer-hwi` uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterTx {
    /// Transaction id (uuid).
    pub id: String,
    /// State (`pending`, `voting`, …, `signed`, or `rejected`, `failed`, …).
    pub state: String,
    /// Why it failed, when recorded.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The signed, unfinalized PSBT (base64) once signed.
    #[serde(default)]
    pub signed_psbt: Option<String>,
}

/// The calls `signer-hwi` makes to a node's API (operator token).
pub trait ClusterApi {
    /// The node, for messages (its URL).
    fn label(&self) -> String;

    /// Completed keys, newest first.
    fn keys(&self) -> impl Future<Output = Result<Vec<ClusterKey>, HwiError>> + Send;

    /// The cluster's own address of `key_id` at `m/<chain>/<index>` (chain 0
    /// receive, 1 change).
    fn address(
        &self,
        key_id: &str,
        chain: u32,
        index: u32,
    ) -> impl Future<Output = Result<ClusterAddress, HwiError>> + Send;

    /// Submits a PSBT (`POST /api/v1/transactions`); the stored transaction.
    fn submit_psbt(
        &self,
        psbt_base64: &str,
    ) -> impl Future<Output = Result<ClusterTx, HwiError>> + Send;

    /// The transaction `id` now.
    fn transaction(&self, id: &str) -> impl Future<Output = Result<ClusterTx, HwiError>> + Send;
}

/// The API's error answers keep their status and code; anything else (connection,
/// TLS, timeouts) means the cluster was not reached.
fn api_error(e: anyhow::Error) -> HwiError {
    match e.downcast::<ApiRefusal>() {
        Ok(r) => HwiError::Refused {
            status: r.status,
            code: r.code,
            message: r.message,
        },
        Err(e) => HwiError::Unreachable(format!("{e:#}")),
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T, HwiError> {
    serde_json::from_value(v).map_err(|e| HwiError::BadAnswer(format!("{what}: {e}")))
}

/// A key id as one URL path segment (key ids are uuids).
fn key_segment(key_id: &str) -> Result<&str, HwiError> {
    let ok = !key_id.is_empty()
        && key_id.len() <= 128
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(key_id)
    } else {
        Err(HwiError::BadAnswer(format!(
            "key id {key_id:?} is not valid"
        )))
    }
}

impl ClusterApi for ApiClient {
    fn label(&self) -> String {
        ApiClient::label(self)
    }

    async fn keys(&self) -> Result<Vec<ClusterKey>, HwiError> {
        #[derive(Deserialize)]
        struct Keys {
            keys: Vec<ClusterKey>,
        }
        let v = self.get("/api/v1/keys").await.map_err(api_error)?;
        Ok(decode::<Keys>(v, "GET /api/v1/keys")?.keys)
    }

    async fn address(
        &self,
        key_id: &str,
        chain: u32,
        index: u32,
    ) -> Result<ClusterAddress, HwiError> {
        #[derive(Deserialize)]
        struct Addresses {
            addresses: Vec<ClusterAddress>,
        }
        let chain_name = if chain == 0 { "receive" } else { "change" };
        let path = format!(
            "/api/v1/keys/{}/addresses?chain={chain_name}&from={index}&count=1",
            key_segment(key_id)?
        );
        let v = self.get(&path).await.map_err(api_error)?;
        decode::<Addresses>(v, "GET addresses")?
            .addresses
            .into_iter()
            .find(|a| a.index == index)
            .ok_or_else(|| HwiError::BadAnswer(format!("no address at index {index}")))
    }

    async fn submit_psbt(&self, psbt_base64: &str) -> Result<ClusterTx, HwiError> {
        let v = self
            .post("/api/v1/transactions", &json!({ "psbt": psbt_base64 }))
            .await
            .map_err(api_error)?;
        decode(v, "POST /api/v1/transactions")
    }

    async fn transaction(&self, id: &str) -> Result<ClusterTx, HwiError> {
        let id = uuid::Uuid::parse_str(id)
            .map_err(|_| HwiError::BadAnswer(format!("transaction id {id:?} is not a uuid")))?;
        let v = self
            .get(&format!("/api/v1/transactions/{id}"))
            .await
            .map_err(api_error)?;
        decode(v, "GET /api/v1/transactions/{id}")
    }
}
