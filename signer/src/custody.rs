//! The node's custody handle once unsealed: the HSM/TPM and the vote-signing key it
//! wraps. The sealed start (retrying until the backend opens) is the node's
//! `node::unseal` task; this module only holds what exists once it succeeded.

use hsm::{Aad, Custody, RecordKind};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::audit::AuditEntry;
use crate::store::audit::AuditOf;
use crate::store::node_keys::NodeKeyRow;
use crate::store::Store;

/// Purpose name of the vote-signing key.
pub const VOTE_KEY: &str = "vote_signing";

/// The node's vote-signing key, unsealed in memory.
pub struct VoteKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for VoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteKey")
            .field("public", &hex::encode(self.public_key()))
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl VoteKey {
    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs a message.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// A key from a fixed seed (unit tests only).
    #[cfg(test)]
    pub(crate) fn from_seed_for_tests(seed: &[u8; 32]) -> Self {
        VoteKey {
            pair: Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte seed"),
        }
    }
}

/// The unsealed vote key signs votes.
impl vote::VoteSigner for VoteKey {
    fn vote_public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.public_key());
        k
    }

    fn sign_vote_message(&self, msg: &[u8]) -> [u8; vote::SIGNATURE_LEN] {
        let mut s = [0u8; vote::SIGNATURE_LEN];
        s.copy_from_slice(&self.sign(msg));
        s
    }
}

/// Loads this node's vote key from its envelope, or on first start creates it, seals
/// it in custody and records it (audit `node_key.create`).
pub async fn load_or_create_vote_key(
    store: &Store,
    node_id: &str,
    custody: &Custody,
) -> Result<VoteKey, String> {
    let node_id = node_id.to_owned();
    let aad =
        Aad::new(&node_id, VOTE_KEY, RecordKind::NodeIdentityKey).map_err(|e| e.to_string())?;
    if let Some(row) = store.node_key(VOTE_KEY).await.map_err(|e| e.to_string())? {
        let custody = custody.clone();
        return tokio::task::spawn_blocking(move || {
            let secret = custody
                .open_record(&aad, &row.envelope)
                .map_err(|e| format!("vote key envelope: {e}"))?;
            let pair = Ed25519KeyPair::from_pkcs8(secret.expose_secret())
                .map_err(|_| "vote key is not a valid ed25519 pkcs8 document".to_owned())?;
            if pair.public_key().as_ref() != row.public_key.as_slice() {
                return Err("vote key does not match its stored public key".to_owned());
            }
            Ok(VoteKey { pair })
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = zeroize::Zeroizing::new(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "cannot generate the vote key".to_owned())?
            .as_ref()
            .to_vec(),
    );
    let pair =
        Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| "generated key invalid".to_owned())?;
    let c = custody.clone();
    let envelope = tokio::task::spawn_blocking(move || c.seal(&aad, &pkcs8))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sealing the vote key: {e}"))?;
    let row = NodeKeyRow {
        purpose: VOTE_KEY.to_owned(),
        algorithm: "ed25519".to_owned(),
        public_key: pair.public_key().as_ref().to_vec(),
        envelope,
        kek_id: custody.kek_id().to_owned(),
    };
    let audit = AuditOf::new(
        &node_id,
        AuditEntry::new("node", "node_key.create")
            .subject(VOTE_KEY)
            .details(serde_json::json!({"algorithm": "ed25519", "public_key": hex::encode(&row.public_key)})),
    );
    store
        .insert_node_key(&row, audit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(VoteKey { pair })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_key_debug_shows_only_the_public_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let key = VoteKey {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("valid"),
        };
        let dbg = format!("{key:?}");
        assert!(dbg.contains("[REDACTED]"), "{dbg}");
        assert!(
            !dbg.contains(&hex::encode(&pkcs8.as_ref()[16..48])),
            "{dbg}"
        );
        assert!(dbg.contains(&hex::encode(key.public_key())));
    }
}
