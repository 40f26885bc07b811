//! Configuration of the coordination layer (a section of the node's TOML config).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::CoordError;
use super::keys;

/// Smallest lease TTL accepted, in seconds. etcd raises shorter TTLs to its own
/// minimum (1.5 × election timeout, 2 s with default settings) anyway.
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// Largest lease TTL accepted, in seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 3600;

/// How to reach etcd and where this cluster's keys live.
///
/// TOML example (every field optional):
///
/// ```toml
/// [etcd]
/// endpoints = ["http://127.0.0.1:2379"]
/// prefix = "/signer/cluster-1"
/// lease_ttl_secs = 5
/// connect_timeout = "5s"
/// request_timeout = "5s"
/// ```
///
/// Durations are strings with a unit (`"500ms"`, `"5s"`, `"2m"`) or a number of
/// seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordConfig {
    /// etcd client URLs (`http://host:port`). Default `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Key prefix for everything this cluster stores, e.g. `/signer/<cluster-id>`.
    /// Must start with `/`, must not end with `/`; segments use `[A-Za-z0-9._-]`.
    /// Default `/signer/default`.
    pub prefix: String,
    /// TTL in seconds of the leases behind registrations, locks, leadership and
    /// barrier arrivals: how long a dead node goes unnoticed. Heartbeats run every
    /// TTL/3. Default 5, range 2..=3600.
    pub lease_ttl_secs: i64,
    /// Time allowed to open a connection to an etcd endpoint. Default 5 s.
    #[serde(with = "duration_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one etcd request (blocking lock and campaign calls
    /// excepted). Default 5 s.
    #[serde(with = "duration_serde")]
    pub request_timeout: Duration,
}

impl Default for CoordConfig {
    fn default() -> Self {
        CoordConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/signer/default".to_owned(),
            lease_ttl_secs: 5,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl CoordConfig {
    /// Checks the configuration; [`super::Coord::connect`] calls this.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bad = |reason: String| Err(CoordError::Config { reason });
        if self.endpoints.is_empty() {
            return bad("no etcd endpoints".to_owned());
        }
        for ep in &self.endpoints {
            if ep.starts_with("https://") {
                return bad(format!(
                    "endpoint {ep}: TLS to etcd is not built in; use http:// on a trusted network"
                ));
            }
            let Some(rest) = ep.strip_prefix("http://") else {
                return bad(format!("endpoint {ep} must start with http://"));
            };
            if rest.is_empty() || rest.contains('/') || rest.len() > 255 {
                return bad(format!("endpoint {ep} must be http://host:port"));
            }
        }
        keys::validate_prefix(&self.prefix)?;
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl_secs) {
            return bad(format!(
                "lease_ttl_secs {} outside {MIN_LEASE_TTL_SECS}..={MAX_LEASE_TTL_SECS}",
                self.lease_ttl_secs
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive".to_owned());
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be positive".to_owned());
        }
        Ok(())
    }
}

/// Rounds a duration up to whole seconds, clamped to the accepted lease TTL range.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs)
        .unwrap_or(MAX_LEASE_TTL_SECS)
        .clamp(MIN_LEASE_TTL_SECS, MAX_LEASE_TTL_SECS)
}

/// Serde for durations as `"500ms"`, `"5s"`, `"2m"` strings or a number of seconds.
pub(crate) mod duration_serde {
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Parses `"<n>ms"`, `"<n>s"`, `"<n>m"` or `"<n>h"` (n a non-negative integer).
    pub(crate) fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        if s.len() > 32 {
            return None;
        }
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => None,
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"500ms\", \"5s\", \"2m\" or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("duration must not be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom("duration out of range"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).ok_or_else(|| E::custom(format!("bad duration {v:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_defaults() {
        let cfg: CoordConfig = toml::from_str("prefix = \"/signer/c1\"").expect("valid toml");
        assert_eq!(cfg.prefix, "/signer/c1");
        assert_eq!(cfg.lease_ttl_secs, 5);
        assert_eq!(cfg.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        cfg.validate().expect("defaults are valid");
    }

    #[test]
    fn durations_parse_from_strings_and_numbers() {
        let cfg: CoordConfig =
            toml::from_str("connect_timeout = \"250ms\"\nrequest_timeout = 3").expect("valid");
        assert_eq!(cfg.connect_timeout, Duration::from_millis(250));
        assert_eq!(cfg.request_timeout, Duration::from_secs(3));
        assert!(toml::from_str::<CoordConfig>("connect_timeout = \"5 parsecs\"").is_err());
        assert!(toml::from_str::<CoordConfig>("connect_timeout = -1").is_err());
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = CoordConfig {
            connect_timeout: Duration::from_millis(1500),
            ..CoordConfig::default()
        };
        let text = toml::to_string(&cfg).expect("serializable");
        let back: CoordConfig = toml::from_str(&text).expect("parses back");
        assert_eq!(cfg, back);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<CoordConfig>("lease_ttl = 5").is_err());
    }

    #[test]
    fn validate_rejects_bad_values() {
        let base = CoordConfig::default();
        for cfg in [
            CoordConfig {
                endpoints: vec![],
                ..base.clone()
            },
            CoordConfig {
                endpoints: vec!["https://127.0.0.1:2379".into()],
                ..base.clone()
            },
            CoordConfig {
                endpoints: vec!["127.0.0.1:2379".into()],
                ..base.clone()
            },
            CoordConfig {
                prefix: "signer".into(),
                ..base.clone()
            },
            CoordConfig {
                prefix: "/signer/".into(),
                ..base.clone()
            },
            CoordConfig {
                lease_ttl_secs: 1,
                ..base.clone()
            },
            CoordConfig {
                request_timeout: Duration::ZERO,
                ..base.clone()
            },
        ] {
            assert!(cfg.validate().is_err(), "accepted {cfg:?}");
        }
    }

    #[test]
    fn ttl_rounds_up_and_clamps() {
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::from_millis(10)), MIN_LEASE_TTL_SECS);
        assert_eq!(ttl_secs(Duration::from_secs(1 << 40)), MAX_LEASE_TTL_SECS);
    }
}
