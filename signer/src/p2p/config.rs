//! Configuration of the P2P endpoint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::frame::{DEFAULT_MAX_FRAME_BYTES, HEADER_LEN};
use super::tls::WIRE_LEVEL;
use super::P2pError;
use crate::ca::validate_node_id;

/// Default keep-alive interval.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Default idle timeout: a connection without any traffic for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest accepted `max_frame_bytes`.
pub const MIN_MAX_FRAME_BYTES: usize = 1024;
/// Largest accepted `max_frame_bytes` (256 MiB).
pub const MAX_MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// A peer node this node talks to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Node id of the peer. It is also the identity its certificate must carry
    /// (DNS SAN `<id>.signer.internal`).
    pub id: String,
    /// QUIC address of the peer.
    pub addr: SocketAddr,
}

/// Configuration of [`P2p`](super::P2p).
///
/// In TOML, durations are either integer seconds (`keep_alive = 5`) or strings
/// with a unit (`idle_timeout = "90s"`, `"500ms"`, `"2m"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// This node's id; must equal the identity in `cert`.
    pub node_id: String,
    /// UDP address to listen on (also the source address of outgoing connections).
    pub listen: SocketAddr,
    /// The other nodes of the cluster (not this node). Only these identities may
    /// connect, and only these can be sent to.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// PEM file with the cluster CA certificate, the only trust root.
    pub ca_cert: PathBuf,
    /// PEM file with this node's certificate (issued by the cluster CA).
    pub cert: PathBuf,
    /// PEM file with this node's private key.
    pub key: PathBuf,
    /// Limit on one encoded frame (header + payload), enforced on send and receive.
    /// Default 4 MiB (DKG aux-info messages reach ~1 MiB).
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Interval of QUIC keep-alive packets. Default 5 s.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Idle timeout of a connection. Default 60 s. Must exceed `keep_alive`.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub idle_timeout: Duration,
    /// Highest wire level this node offers (default [`WIRE_LEVEL`], this build's).
    /// Not in the configuration file: only the tests of a rolling upgrade set it
    /// lower, to play a node of an older release.
    #[serde(skip, default = "default_wire_level")]
    pub wire_level: u8,
}

fn default_wire_level() -> u8 {
    WIRE_LEVEL
}

fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_keep_alive() -> Duration {
    DEFAULT_KEEP_ALIVE
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

impl P2pConfig {
    /// A configuration with default frame limit, keep-alive and idle timeout.
    pub fn new(
        node_id: impl Into<String>,
        listen: SocketAddr,
        peers: Vec<PeerConfig>,
        ca_cert: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            listen,
            peers,
            ca_cert: ca_cert.into(),
            cert: cert.into(),
            key: key.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            wire_level: WIRE_LEVEL,
        }
    }

    /// Checks ids, peers, limits and timeouts.
    pub fn validate(&self) -> Result<(), P2pError> {
        let bad = |msg: String| Err(P2pError::Config(msg));
        if validate_node_id(&self.node_id).is_err() {
            return bad(format!("invalid node id {:?}", self.node_id));
        }
        if !(1..=WIRE_LEVEL).contains(&self.wire_level) {
            return bad(format!(
                "wire level {} is not between 1 and {WIRE_LEVEL}",
                self.wire_level
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &self.peers {
            if validate_node_id(&p.id).is_err() {
                return bad(format!("invalid peer id {:?}", p.id));
            }
            if p.id == self.node_id {
                return bad(format!("peer list contains this node ({:?})", p.id));
            }
            if !seen.insert(p.id.as_str()) {
                return bad(format!("peer {:?} is listed twice", p.id));
            }
        }
        if !(MIN_MAX_FRAME_BYTES..=MAX_MAX_FRAME_BYTES).contains(&self.max_frame_bytes)
            || self.max_frame_bytes <= HEADER_LEN
        {
            return bad(format!(
                "max_frame_bytes {} is outside {MIN_MAX_FRAME_BYTES}..={MAX_MAX_FRAME_BYTES}",
                self.max_frame_bytes
            ));
        }
        if self.keep_alive.is_zero() {
            return bad("keep_alive must be positive".into());
        }
        if self.idle_timeout <= self.keep_alive {
            return bad(format!(
                "idle_timeout ({:?}) must exceed keep_alive ({:?})",
                self.idle_timeout, self.keep_alive
            ));
        }
        Ok(())
    }
}

/// Serde helper: durations as integer seconds or strings with a unit.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    /// Parses `"500ms"`, `"5s"`, `"2m"` or a bare number of seconds.
    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"5s\""))?;
        match unit.trim() {
            "" | "s" => Ok(Duration::from_secs(n)),
            "ms" => Ok(Duration::from_millis(n)),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("duration {s:?} is too large")),
            other => Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s or m"
            )),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds as an integer or a string like \"5s\" or \"500ms\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("duration must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg() -> P2pConfig {
        P2pConfig::new(
            "n1",
            "127.0.0.1:7000".parse().unwrap(),
            vec![PeerConfig {
                id: "n2".into(),
                addr: "127.0.0.1:7001".parse().unwrap(),
            }],
            "/ca.pem",
            "/cert.pem",
            "/key.pem",
        )
    }

    #[test]
    fn deserializes_from_toml_with_defaults() {
        let c: P2pConfig = toml::from_str(
            r#"
            node_id = "n1"
            listen = "127.0.0.1:7000"
            ca_cert = "/ca.pem"
            cert = "/cert.pem"
            key = "/key.pem"
            [[peers]]
            id = "n2"
            addr = "127.0.0.1:7001"
            "#,
        )
        .unwrap();
        assert_eq!(c, cfg());
        c.validate().unwrap();
    }

    #[test]
    fn deserializes_durations_with_units() {
        let c: P2pConfig = toml::from_str(
            r#"
            node_id = "n1"
            listen = "127.0.0.1:7000"
            ca_cert = "/ca.pem"
            cert = "/cert.pem"
            key = "/key.pem"
            keep_alive = "1500ms"
            idle_timeout = "2m"
            max_frame_bytes = 2097152
            "#,
        )
        .unwrap();
        assert_eq!(c.keep_alive, Duration::from_millis(1500));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.max_frame_bytes, 2 * 1024 * 1024);
        let n: Result<P2pConfig, _> = toml::from_str(
            r#"
            node_id = "n1"
            listen = "127.0.0.1:7000"
            ca_cert = "/ca.pem"
            cert = "/cert.pem"
            key = "/key.pem"
            keep_alive = "5 parsecs"
            "#,
        );
        assert!(n.is_err());
        let typo: Result<P2pConfig, _> = toml::from_str(
            r#"
            node_id = "n1"
            listen = "127.0.0.1:7000"
            ca_cert = "/ca.pem"
            cert = "/cert.pem"
            key = "/key.pem"
            keepalive = 5
            "#,
        );
        assert!(typo.is_err(), "unknown fields are rejected");
    }

    #[test]
    fn validation_rejects_bad_peers_limits_and_timeouts() {
        let mut c = cfg();
        c.peers.push(c.peers[0].clone());
        assert!(matches!(c.validate(), Err(P2pError::Config(m)) if m.contains("twice")));

        let mut c = cfg();
        c.peers[0].id = "n1".into();
        assert!(matches!(c.validate(), Err(P2pError::Config(m)) if m.contains("this node")));

        let mut c = cfg();
        c.peers[0].id = "N2".into();
        assert!(c.validate().is_err());

        let mut c = cfg();
        c.node_id = "bad id".into();
        assert!(c.validate().is_err());

        let mut c = cfg();
        c.max_frame_bytes = 10;
        assert!(c.validate().is_err());

        let mut c = cfg();
        c.keep_alive = Duration::from_secs(60);
        assert!(c.validate().is_err());

        let mut c = cfg();
        c.keep_alive = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
