//! Human approvers as identities with their own Ed25519 keys.
//!
//! * An approver (`name`, `role`, public key) is registered by a quorum of nodes:
//!   each node's own admin endorses exactly that triple, the node signs the
//!   endorsement with its vote key ([`endorsement_message`]) and sends it to every
//!   peer; a node treats the approver as active once it holds valid endorsements of
//!   the same triple from at least `t` distinct nodes. One admin token can endorse
//!   on its own node only.
//! * An approval is the approver's signature over [`approval_message`]: the
//!   transaction id and the txid of the unsigned transaction (which fixes every
//!   input and output). Every node verifies it itself, whoever relayed it.

use bitcoin::hashes::Hash as _;
use bitcoin::Txid;
use uuid::Uuid;

use super::message::{verify_ed25519, SIGNATURE_LEN};

/// Domain of an approver endorsement signed by a node's vote key.
pub const ENDORSEMENT_DOMAIN: &[u8] = b"signer/approver-endorsement/v1\0";
/// Domain of an approval signed by an approver's key.
pub const APPROVAL_DOMAIN: &[u8] = b"signer/approval/v1\0";
/// Longest role name.
pub const MAX_APPROVER_ROLE_LEN: usize = 32;

/// Whether `name` is a valid approver name (`[a-z0-9][a-z0-9._-]{0,63}`).
pub fn valid_approver_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// Whether `role` is a valid approver role (`[a-z0-9_-]{1,32}`).
pub fn valid_approver_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= MAX_APPROVER_ROLE_LEN
        && role
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// An approver identity as the nodes endorse it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Approver {
    /// Name (also what policies list in `approvers = [...]`).
    pub name: String,
    /// Role it approves in (policies' `roles = [...]`).
    pub role: String,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
}

impl Approver {
    /// A checked approver; `None` for an invalid name or role.
    pub fn new(name: &str, role: &str, public_key: [u8; 32]) -> Option<Self> {
        (valid_approver_name(name) && valid_approver_role(role)).then(|| Approver {
            name: name.to_owned(),
            role: role.to_owned(),
            public_key,
        })
    }
}

/// What node `node_id` signs with its vote key to endorse `a`.
pub fn endorsement_message(a: &Approver, node_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENDORSEMENT_DOMAIN.len() + 160);
    m.extend_from_slice(ENDORSEMENT_DOMAIN);
    for part in [node_id.as_bytes(), a.name.as_bytes(), a.role.as_bytes()] {
        m.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&a.public_key);
    m
}

/// Whether `signature` is `node_key`'s endorsement of `a` by `node_id`.
pub fn verify_endorsement(
    a: &Approver,
    node_id: &str,
    node_key: &[u8; 32],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    verify_ed25519(node_key, &endorsement_message(a, node_id), signature).is_ok()
}

/// What an approver signs to approve transaction `transaction_id` whose unsigned
/// transaction is `txid`.
pub fn approval_message(transaction_id: Uuid, txid: Txid) -> Vec<u8> {
    let mut m = Vec::with_capacity(APPROVAL_DOMAIN.len() + 48);
    m.extend_from_slice(APPROVAL_DOMAIN);
    m.extend_from_slice(transaction_id.as_bytes());
    m.extend_from_slice(txid.as_byte_array());
    m
}

/// Whether `signature` is `public_key`'s approval of `transaction_id` / `txid`.
pub fn verify_approval(
    public_key: &[u8; 32],
    transaction_id: Uuid,
    txid: Txid,
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    verify_ed25519(
        public_key,
        &approval_message(transaction_id, txid),
        signature,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VoteSigner as _;
    use ring::signature::Ed25519KeyPair;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed")
    }

    #[test]
    fn names_and_roles_are_checked() {
        assert!(valid_approver_name("alice.smith-2"));
        for bad in ["", "Alice", ".x", "a b", &"a".repeat(65)] {
            assert!(!valid_approver_name(bad), "{bad:?}");
        }
        assert!(valid_approver_role("cfo") && !valid_approver_role("C F O"));
        assert!(Approver::new("alice", "", [0; 32]).is_none());
    }

    #[test]
    fn an_endorsement_binds_the_node_name_role_and_key() {
        let node = key(1);
        let a = Approver::new("alice", "approver", key(2).vote_public_key()).expect("valid");
        let sig = node.sign_vote_message(&endorsement_message(&a, "node-1"));
        let pk = node.vote_public_key();
        assert!(verify_endorsement(&a, "node-1", &pk, &sig));
        assert!(!verify_endorsement(&a, "node-2", &pk, &sig), "another node");
        for other in [
            Approver::new("mallory", "approver", a.public_key),
            Approver::new("alice", "cfo", a.public_key),
            Approver::new("alice", "approver", key(3).vote_public_key()),
        ] {
            assert!(!verify_endorsement(
                &other.expect("valid"),
                "node-1",
                &pk,
                &sig
            ));
        }
    }

    #[test]
    fn an_approval_binds_the_transaction_and_its_txid() {
        let k = key(4);
        let (tx, txid) = (Uuid::from_u128(9), Txid::from_byte_array([7; 32]));
        let sig = k.sign_vote_message(&approval_message(tx, txid));
        let pk = k.vote_public_key();
        assert!(verify_approval(&pk, tx, txid, &sig));
        assert!(!verify_approval(&pk, Uuid::from_u128(8), txid, &sig));
        assert!(!verify_approval(
            &pk,
            tx,
            Txid::from_byte_array([6; 32]),
            &sig
        ));
        assert!(!verify_approval(&key(5).vote_public_key(), tx, txid, &sig));
    }
}
