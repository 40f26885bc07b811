//! Health of each etcd member, probed one by one (the cluster client balances over
//! all endpoints and cannot say which member is down).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use serde::Serialize;

/// One etcd member as this node last saw it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MemberHealth {
    /// Client URL.
    pub endpoint: String,
    /// Answered a status request within the probe timeout.
    pub ok: bool,
    /// This member is the raft leader (when it answered).
    pub leader: bool,
    /// It answered and knows a leader (its cluster has quorum).
    pub has_leader: bool,
    /// Why it is not ok (short, no secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Probes each endpoint with a client of its own, kept between probes.
#[derive(Default)]
pub struct MemberProbe {
    clients: HashMap<String, Client>,
}

impl std::fmt::Debug for MemberProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberProbe")
            .field("endpoints", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MemberProbe {
    /// Status of every endpoint, each within `timeout`.
    pub async fn probe(&mut self, endpoints: &[String], timeout: Duration) -> Vec<MemberHealth> {
        let mut out = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let h = match self.status(ep, timeout).await {
                Ok((leader, has_leader)) => MemberHealth {
                    endpoint: ep.clone(),
                    ok: true,
                    leader,
                    has_leader,
                    error: None,
                },
                Err(e) => {
                    self.clients.remove(ep);
                    MemberHealth {
                        endpoint: ep.clone(),
                        ok: false,
                        leader: false,
                        has_leader: false,
                        error: Some(e),
                    }
                }
            };
            out.push(h);
        }
        out
    }

    /// Whether `ep` leads and whether it knows a leader (Ok), or why it did not
    /// answer.
    async fn status(&mut self, ep: &str, timeout: Duration) -> Result<(bool, bool), String> {
        if !self.clients.contains_key(ep) {
            let opts = ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout);
            let c = tokio::time::timeout(timeout, Client::connect([ep], Some(opts)))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| short(&e.to_string()))?;
            self.clients.insert(ep.to_owned(), c);
        }
        let c = self
            .clients
            .get_mut(ep)
            .ok_or_else(|| "no client".to_owned())?;
        let s = tokio::time::timeout(timeout, c.status())
            .await
            .map_err(|_| "status timed out".to_owned())?
            .map_err(|e| short(&e.to_string()))?;
        let me = s.header().map(|h| h.member_id());
        Ok((me.is_some_and(|m| m == s.leader()), s.leader() != 0))
    }
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}
