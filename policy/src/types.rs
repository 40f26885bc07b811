//! Small shared value types: networks, output script types and 32-byte digests.

use std::fmt;
use std::str::FromStr;

use bitcoin::Script;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Bitcoin network a policy scope and a transaction view belong to.
///
/// Serialized as `bitcoin`, `testnet`, `testnet4`, `signet` or `regtest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Bitcoin mainnet.
    Bitcoin,
    /// Testnet3.
    Testnet,
    /// Testnet4.
    Testnet4,
    /// Signet.
    Signet,
    /// Regtest.
    Regtest,
}

impl Network {
    /// All networks, in canonical order.
    pub const ALL: [Network; 5] = [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ];

    /// The name used in policy files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Bitcoin => "bitcoin",
            Network::Testnet => "testnet",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }

    /// The matching `bitcoin` crate network.
    pub fn to_bitcoin(self) -> bitcoin::Network {
        match self {
            Network::Bitcoin => bitcoin::Network::Bitcoin,
            Network::Testnet => bitcoin::Network::Testnet,
            Network::Testnet4 => bitcoin::Network::Testnet4,
            Network::Signet => bitcoin::Network::Signet,
            Network::Regtest => bitcoin::Network::Regtest,
        }
    }

    pub(crate) fn canon_tag(self) -> u8 {
        match self {
            Network::Bitcoin => 1,
            Network::Testnet => 2,
            Network::Testnet4 => 3,
            Network::Signet => 4,
            Network::Regtest => 5,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an output's scriptPubKey.
///
/// Serialized as `p2pkh`, `p2sh`, `p2wpkh`, `p2wsh`, `p2tr`, `op_return` or `other`
/// (anything else: bare scripts, future witness versions, non-standard scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptType {
    /// Pay to public key hash (legacy).
    P2pkh,
    /// Pay to script hash.
    P2sh,
    /// Pay to witness public key hash (segwit v0).
    P2wpkh,
    /// Pay to witness script hash (segwit v0).
    P2wsh,
    /// Pay to taproot (segwit v1).
    P2tr,
    /// Provably unspendable data carrier.
    OpReturn,
    /// Any other script.
    Other,
}

impl ScriptType {
    /// All script types, in canonical order.
    pub const ALL: [ScriptType; 7] = [
        ScriptType::P2pkh,
        ScriptType::P2sh,
        ScriptType::P2wpkh,
        ScriptType::P2wsh,
        ScriptType::P2tr,
        ScriptType::OpReturn,
        ScriptType::Other,
    ];

    /// Classifies a scriptPubKey.
    pub fn of_script(script: &Script) -> ScriptType {
        if script.is_p2pkh() {
            ScriptType::P2pkh
        } else if script.is_p2sh() {
            ScriptType::P2sh
        } else if script.is_p2wpkh() {
            ScriptType::P2wpkh
        } else if script.is_p2wsh() {
            ScriptType::P2wsh
        } else if script.is_p2tr() {
            ScriptType::P2tr
        } else if script.is_op_return() {
            ScriptType::OpReturn
        } else {
            ScriptType::Other
        }
    }

    /// The name used in policy files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptType::P2pkh => "p2pkh",
            ScriptType::P2sh => "p2sh",
            ScriptType::P2wpkh => "p2wpkh",
            ScriptType::P2wsh => "p2wsh",
            ScriptType::P2tr => "p2tr",
            ScriptType::OpReturn => "op_return",
            ScriptType::Other => "other",
        }
    }

    pub(crate) fn canon_tag(self) -> u8 {
        match self {
            ScriptType::P2pkh => 1,
            ScriptType::P2sh => 2,
            ScriptType::P2wpkh => 3,
            ScriptType::P2wsh => 4,
            ScriptType::P2tr => 5,
            ScriptType::OpReturn => 6,
            ScriptType::Other => 7,
        }
    }
}

impl fmt::Display for ScriptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hex string was not a 32-byte digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestParseError {
    /// Not 64 hexadecimal characters.
    #[error("expected 64 hexadecimal characters, got {len} characters")]
    Length {
        /// Number of characters received.
        len: usize,
    },
    /// A character is not hexadecimal.
    #[error("digest is not hexadecimal: {0}")]
    Hex(String),
}

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw digest bytes (for example from a peer's vote).
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hexadecimal form (64 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = DigestParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 64 {
                    return Err(DigestParseError::Length { len: s.chars().count() });
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|e| DigestParseError::Hex(e.to_string().to_lowercase()))?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(
    /// SHA-256 over the canonical encoding of a parsed policy (see `docs/POLICY.md`).
    ///
    /// Votes carry it so peers can tell they evaluated the same rules.
    PolicyHash
);

digest_type!(
    /// SHA-256 over the canonical encoding of a [`crate::TxView`].
    ViewDigest
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips() {
        let h = PolicyHash::from_bytes([0xab; 32]);
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<PolicyHash>(), Ok(h));
    }

    #[test]
    fn digest_parse_rejects_wrong_length_and_non_hex() {
        assert_eq!(
            "abcd".parse::<ViewDigest>(),
            Err(DigestParseError::Length { len: 4 })
        );
        let bad = "zz".repeat(32);
        assert!(matches!(
            bad.parse::<ViewDigest>(),
            Err(DigestParseError::Hex(_))
        ));
    }

    #[test]
    fn script_types_classify_standard_scripts() {
        use bitcoin::ScriptBuf;
        let spk = |h: &str| ScriptBuf::from_hex(h).expect("test vector is hex");
        let wpkh = spk("0014751e76e8199196d454941c45d1b3a323f1433bd6");
        assert_eq!(ScriptType::of_script(&wpkh), ScriptType::P2wpkh);
        let tr = spk("5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c");
        assert_eq!(ScriptType::of_script(&tr), ScriptType::P2tr);
        let pkh = spk("76a914751e76e8199196d454941c45d1b3a323f1433bd688ac");
        assert_eq!(ScriptType::of_script(&pkh), ScriptType::P2pkh);
        let sh = spk("a914751e76e8199196d454941c45d1b3a323f1433bd687");
        assert_eq!(ScriptType::of_script(&sh), ScriptType::P2sh);
        let ret = spk("6a0568656c6c6f");
        assert_eq!(ScriptType::of_script(&ret), ScriptType::OpReturn);
        assert_eq!(ScriptType::of_script(&spk("51")), ScriptType::Other);
    }
}
