//! Key layout under the cluster prefix, and validation of caller-supplied names.
//!
//! ```text
//! <prefix>/nodes/<node-id>                 node registry (leased)
//! <prefix>/locks/<name>/<lease-hex>        etcd lock API keys (leased)
//! <prefix>/elections/<name>/<lease-hex>    etcd election API keys (leased)
//! <prefix>/barriers/<name>/<node-id>       barrier arrivals (leased)
//! <prefix>/kv/<key>                        fenced application data
//! ```

use super::error::CoordError;

/// Longest accepted name (node id, lock, election or barrier name, key segment).
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted relative key for fenced data.
pub const MAX_KEY_LEN: usize = 512;
/// Longest accepted cluster prefix.
pub const MAX_PREFIX_LEN: usize = 256;

/// Checks a single name: 1..=128 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// Names never contain `/`, so one name can never reach into another's keys
/// (lock `a` must not see the keys of a lock `a/b`).
pub fn validate_name(what: &'static str, value: &str) -> Result<(), CoordError> {
    let bad = |reason| {
        Err(CoordError::InvalidName {
            what,
            value: value.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > MAX_NAME_LEN {
        return bad("longer than 128 bytes");
    }
    if value == "." || value == ".." {
        return bad("reserved");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

/// Checks a relative key: names separated by single `/`, at most 512 bytes.
pub fn validate_key(what: &'static str, value: &str) -> Result<(), CoordError> {
    if value.len() > MAX_KEY_LEN {
        return Err(CoordError::InvalidName {
            what,
            value: value.chars().take(MAX_KEY_LEN).collect(),
            reason: "longer than 512 bytes",
        });
    }
    for segment in value.split('/') {
        validate_name(what, segment).map_err(|e| match e {
            CoordError::InvalidName { reason, .. } => CoordError::InvalidName {
                what,
                value: value.to_owned(),
                reason,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// Checks a relative key prefix for watching: empty, or a key optionally
/// followed by `/`.
pub fn validate_key_prefix(what: &'static str, value: &str) -> Result<(), CoordError> {
    let trimmed = value.strip_suffix('/').unwrap_or(value);
    if trimmed.is_empty() && value.is_empty() {
        return Ok(());
    }
    validate_key(what, trimmed)
}

/// Checks the cluster prefix: `/` followed by a valid key, no trailing `/`.
pub fn validate_prefix(value: &str) -> Result<(), CoordError> {
    if value.len() > MAX_PREFIX_LEN {
        return Err(CoordError::Config {
            reason: format!("prefix is longer than {MAX_PREFIX_LEN} bytes"),
        });
    }
    let Some(rest) = value.strip_prefix('/') else {
        return Err(CoordError::Config {
            reason: format!("prefix {value:?} must start with /"),
        });
    };
    validate_key("prefix", rest).map_err(|e| CoordError::Config {
        reason: e.to_string(),
    })
}

/// Builds the full etcd keys of one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn nodes_dir(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub(crate) fn node(&self, node_id: &str) -> String {
        format!("{}/nodes/{node_id}", self.prefix)
    }

    /// The lock API name; etcd appends `/<lease-hex>` for each contender.
    pub(crate) fn lock(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix)
    }

    /// The election API name; etcd appends `/<lease-hex>` for each candidate.
    pub(crate) fn election(&self, name: &str) -> String {
        format!("{}/elections/{name}", self.prefix)
    }

    pub(crate) fn barrier_dir(&self, name: &str) -> String {
        format!("{}/barriers/{name}/", self.prefix)
    }

    pub(crate) fn kv_dir(&self) -> String {
        format!("{}/kv/", self.prefix)
    }

    pub(crate) fn kv(&self, key: &str) -> String {
        format!("{}/kv/{key}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_odd_bytes_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\0",
            "é",
            "a*",
            &"x".repeat(129),
        ] {
            assert!(validate_name("lock name", bad).is_err(), "accepted {bad:?}");
        }
        for good in ["node-1", "dkg.ceremony_42", "A", &"x".repeat(128)] {
            validate_name("lock name", good).expect("valid name");
        }
    }

    #[test]
    fn keys_allow_segments_but_not_empty_ones() {
        validate_key("key", "sessions/dkg-1/announce").expect("valid key");
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a/ b"] {
            assert!(validate_key("key", bad).is_err(), "accepted {bad:?}");
        }
        validate_key_prefix("prefix", "").expect("empty watches everything");
        validate_key_prefix("prefix", "sessions/").expect("trailing slash ok");
        assert!(validate_key_prefix("prefix", "/").is_err());
    }

    #[test]
    fn prefix_must_be_absolute_without_trailing_slash() {
        validate_prefix("/signer/cluster-1").expect("valid");
        for bad in ["signer", "/", "/signer/", "//signer", "/signer//x"] {
            assert!(validate_prefix(bad).is_err(), "accepted {bad:?}");
        }
    }
}
