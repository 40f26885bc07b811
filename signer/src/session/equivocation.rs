//! Attributing a broadcast equivocation in a key ceremony (issue 17).
//!
//! CGGMP24's echo-broadcast check detects that a sender gave different peers
//! different versions of one broadcast, but not who: the echoes are unsigned, so a
//! node only learns which peers saw another version than it did. To attribute it,
//! the sender of every broadcast in a key ceremony (DKG of both kinds and aux info)
//! also sends each recipient a [`Statement`]: its vote-key signature (the Ed25519 key
//! whose public half every peer pinned for votes, `peer_vote_keys`) over the
//! session id, its own node id, the broadcast's sequence number within the run and
//! the SHA-256 of the frame payload that recipient got. Domain-separated
//! ([`DOMAIN`]), so a statement can never pass for a vote or any other signed
//! message.
//!
//! When a ceremony fails without a culprit, every participant sends the statements
//! it holds to the others ([`crate::p2p::MessageKind::EQUIVOCATION_EVIDENCE`]) and
//! collects theirs for [`EVIDENCE_WINDOW`]. Two statements that verify under the
//! same sender's pinned key, with the same session and sequence number and different
//! digests, prove that the sender signed two versions of one broadcast: it alone is
//! blamed ([`find_equivocations`]). A statement that does not verify (forged, or
//! corrupted by whoever forwarded it) blames nobody; it is logged with the peer that
//! forwarded it.
//!
//! Statements travel in a frame kind of their own, so an older node drops them
//! (unknown kind) and otherwise runs the ceremony unchanged; a ceremony with an
//! older sender cannot attribute that sender's equivocation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Domain separation of the signed statement.
pub const DOMAIN: &[u8] = b"signer/broadcast-statement/v1\0";
/// Bytes of a statement frame's payload: sequence number (4, big-endian), digest
/// (32), signature (64). The sender is the frame's mTLS identity.
pub const STATEMENT_LEN: usize = 4 + 32 + 64;
/// Statements kept per sender and session (a CGGMP24 keygen has 3 broadcast rounds,
/// aux info 3; a flooding sender fills only its own quota).
pub const MAX_STATEMENTS_PER_SENDER: usize = 16;
/// Statements in one evidence frame.
pub const MAX_EVIDENCE_STATEMENTS: usize = 128;
/// Bytes of one evidence frame's payload.
pub const MAX_EVIDENCE_BYTES: usize = 64 * 1024;
/// How long a failed ceremony collects the others' evidence.
pub const EVIDENCE_WINDOW: Duration = Duration::from_secs(5);

/// A sender's signed claim: "my broadcast number `seq` of session S had this digest".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The node that signed (and sent) the broadcast.
    pub sender: String,
    /// Its broadcast's number within the run, from 1.
    pub seq: u32,
    /// SHA-256 of the broadcast frame's payload, hex.
    pub digest: String,
    /// Ed25519 signature by the sender's vote key, hex.
    pub signature: String,
}

/// The bytes a statement signs.
pub fn signed_message(session: Uuid, sender: &str, seq: u32, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 16 + 4 + sender.len() + 4 + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(
        &u32::try_from(sender.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(sender.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// SHA-256 of a broadcast frame payload.
pub fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

impl Statement {
    /// This node's statement over the broadcast `payload` it sends.
    pub fn sign(
        session: Uuid,
        me: &str,
        seq: u32,
        payload: &[u8],
        key: &crate::custody::VoteKey,
    ) -> Self {
        let d = digest(payload);
        Statement {
            sender: me.to_owned(),
            seq,
            digest: hex::encode(d),
            signature: hex::encode(key.sign(&signed_message(session, me, seq, &d))),
        }
    }

    /// The statement frame's payload ([`STATEMENT_LEN`] bytes).
    pub fn to_frame_payload(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(STATEMENT_LEN);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&hex::decode(&self.digest).unwrap_or_default());
        v.extend_from_slice(&hex::decode(&self.signature).unwrap_or_default());
        v
    }

    /// A statement frame from `sender`; `None` unless exactly [`STATEMENT_LEN`] bytes.
    pub fn from_frame_payload(sender: &str, b: &[u8]) -> Option<Self> {
        if b.len() != STATEMENT_LEN {
            return None;
        }
        let seq = u32::from_be_bytes(b[..4].try_into().ok()?);
        Some(Statement {
            sender: sender.to_owned(),
            seq,
            digest: hex::encode(&b[4..36]),
            signature: hex::encode(&b[36..]),
        })
    }

    /// Whether it is `key`'s signature over this statement in `session`.
    pub fn verify(&self, session: Uuid, key: &[u8; 32]) -> bool {
        let (Ok(d), Ok(sig)) = (hex::decode(&self.digest), hex::decode(&self.signature)) else {
            return false;
        };
        let Ok(d) = <[u8; 32]>::try_from(d.as_slice()) else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(&signed_message(session, &self.sender, self.seq, &d), &sig)
            .is_ok()
    }
}

/// A proven equivocation: two validly signed statements of `culprit` for the same
/// broadcast with different digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The sender that signed both.
    pub culprit: String,
    /// One version.
    pub first: Statement,
    /// The other.
    pub second: Statement,
}

/// A statement that did not verify: `forwarded_by` sent it in `sender`'s name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forged {
    /// The peer whose evidence held it.
    pub forwarded_by: String,
    /// The node it claims signed it.
    pub sender: String,
}

/// The equivocations proven by the statements this node `held` (received from the
/// senders themselves) and those `received` from other participants as evidence
/// (`(forwarded by, statements)`), under the pinned vote `keys`, for `session`
/// among `participants`. Statements of non-participants or without a pinned key
/// count for nothing; those that fail verification are returned as forged.
pub fn find_equivocations(
    session: Uuid,
    participants: &[String],
    keys: &BTreeMap<String, [u8; 32]>,
    held: &[Statement],
    received: &[(String, Vec<Statement>)],
) -> (Vec<Finding>, Vec<Forged>) {
    let mut forged = Vec::new();
    // (sender, seq) -> digest -> one statement with it.
    let mut seen: BTreeMap<(String, u32), BTreeMap<String, Statement>> = BTreeMap::new();
    let all = held.iter().map(|s| (None, s)).chain(
        received
            .iter()
            .flat_map(|(from, v)| v.iter().map(move |s| (Some(from), s))),
    );
    for (from, s) in all {
        if !participants.contains(&s.sender) {
            continue;
        }
        let valid = keys.get(&s.sender).is_some_and(|k| s.verify(session, k));
        if !valid {
            forged.push(Forged {
                forwarded_by: from.cloned().unwrap_or_else(|| s.sender.clone()),
                sender: s.sender.clone(),
            });
            continue;
        }
        seen.entry((s.sender.clone(), s.seq))
            .or_default()
            .entry(s.digest.clone())
            .or_insert_with(|| s.clone());
    }
    let mut findings: Vec<Finding> = Vec::new();
    for ((sender, _), versions) in seen {
        if versions.len() < 2 || findings.iter().any(|f| f.culprit == sender) {
            continue;
        }
        let mut v = versions.into_values();
        if let (Some(first), Some(second)) = (v.next(), v.next()) {
            findings.push(Finding {
                culprit: sender,
                first,
                second,
            });
        }
    }
    (findings, forged)
}

/// The forged statements to add to this node's evidence, given the statements it
/// holds ([`crate::fault::FORGE_EVIDENCE_ENV`] armed; feature `fault-injection` only).
pub fn forged_evidence(held: &[Statement]) -> Vec<Statement> {
    #[cfg(feature = "fault-injection")]
    if let Some(target) = crate::fault::fault_var(crate::fault::FORGE_EVIDENCE_ENV) {
        tracing::error!(node = %target, "FAULT INJECTION: forging equivocation evidence");
        let seq = held
            .iter()
            .find(|s| s.sender == target)
            .map_or(1, |s| s.seq);
        let mut changed = held
            .iter()
            .find(|s| s.sender == target)
            .cloned()
            .unwrap_or_else(|| Statement {
                sender: target.clone(),
                seq,
                digest: hex::encode([0u8; 32]),
                signature: hex::encode([0u8; 64]),
            });
        changed.digest = hex::encode([0x5a; 32]);
        let mut stranger = Statement {
            sender: target,
            seq,
            digest: hex::encode([0xa5; 32]),
            signature: String::new(),
        };
        if let Ok(k) = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]) {
            stranger.signature = hex::encode(k.sign(b"not a statement").as_ref());
        }
        return vec![changed, stranger];
    }
    let _ = held;
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::VoteKey;

    fn key(seed: u8) -> VoteKey {
        VoteKey::from_seed_for_tests(&[seed; 32])
    }

    fn pk(k: &VoteKey) -> [u8; 32] {
        k.public_key().try_into().expect("test value")
    }

    #[test]
    fn statements_round_trip_the_frame_and_verify_only_under_the_senders_key() {
        let s = Uuid::new_v4();
        let a = key(1);
        let st = Statement::sign(s, "node-1", 1, b"\x00round one", &a);
        let back =
            Statement::from_frame_payload("node-1", &st.to_frame_payload()).expect("test value");
        assert_eq!(back, st);
        assert!(st.verify(s, &pk(&a)));
        // Another key, session, sender or sequence number: no.
        assert!(!st.verify(s, &pk(&key(2))));
        assert!(!st.verify(Uuid::new_v4(), &pk(&a)));
        let mut other = st.clone();
        other.sender = "node-2".into();
        assert!(!other.verify(s, &pk(&a)));
        let mut other = st.clone();
        other.seq = 2;
        assert!(!other.verify(s, &pk(&a)));
        assert!(Statement::from_frame_payload("node-1", &[0; STATEMENT_LEN - 1]).is_none());
    }

    #[test]
    fn two_signed_versions_blame_the_sender_and_forgeries_blame_nobody() {
        let s = Uuid::new_v4();
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let participants: Vec<String> = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        let keys: BTreeMap<String, [u8; 32]> = [
            ("node-1".to_owned(), pk(&k1)),
            ("node-2".to_owned(), pk(&k2)),
            ("node-3".to_owned(), pk(&k3)),
        ]
        .into();
        // node-3 sent one version to us, another to node-2; node-2 is honest.
        let mine = vec![
            Statement::sign(s, "node-3", 1, b"version a", &k3),
            Statement::sign(s, "node-2", 1, b"honest", &k2),
        ];
        let theirs = vec![Statement::sign(s, "node-3", 1, b"version b", &k3)];
        let (f, forged) = find_equivocations(
            s,
            &participants,
            &keys,
            &mine,
            &[("node-2".into(), theirs.clone())],
        );
        assert!(forged.is_empty());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].culprit, "node-3");
        assert_ne!(f[0].first.digest, f[0].second.digest);
        // The same version twice, or different sequence numbers: nothing proven.
        let same = vec![Statement::sign(s, "node-3", 1, b"version a", &k3)];
        let later = vec![Statement::sign(s, "node-3", 2, b"version b", &k3)];
        for v in [same, later] {
            let (f, _) =
                find_equivocations(s, &participants, &keys, &mine, &[("node-2".into(), v)]);
            assert!(f.is_empty());
        }
        // A forged second version in node-2's name (signed by node-1's key, or with
        // its signature changed), forwarded by node-1: nobody is blamed.
        let mut flipped = Statement::sign(s, "node-2", 1, b"other", &k2);
        let mut sig = hex::decode(&flipped.signature).expect("test value");
        sig[0] ^= 0x01;
        flipped.signature = hex::encode(sig);
        let mut in_name = Statement::sign(s, "node-1", 1, b"other", &k1);
        in_name.sender = "node-2".into();
        let (f, forged) = find_equivocations(
            s,
            &participants,
            &keys,
            &mine,
            &[("node-1".into(), vec![flipped, in_name])],
        );
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(forged.len(), 2);
        assert!(forged
            .iter()
            .all(|x| x.forwarded_by == "node-1" && x.sender == "node-2"));
        // A non-participant's statements count for nothing.
        let k9 = key(9);
        let stranger = vec![
            Statement::sign(s, "node-9", 1, b"x", &k9),
            Statement::sign(s, "node-9", 1, b"y", &k9),
        ];
        let (f, _) = find_equivocations(s, &participants, &keys, &stranger, &[]);
        assert!(f.is_empty());
    }
}
