//! Execution ids.
//!
//! Every protocol run needs an id that all its participants agree on and that never
//! repeats: cggmp24 and givre bind every commitment and proof to it, so messages of one
//! run cannot be replayed into another. The node derives it from the session the
//! coordinator announced in etcd:
//!
//! ```text
//! eid = SHA-256( "signer-protocol/execution-id/v1"
//!              || u32be(len(protocol label)) || protocol label      (ProtocolKind::as_str)
//!              || session uuid (16 bytes, fresh per attempt: a retry gets a new uuid)
//!              || u16be(threshold)
//!              || u16be(number of participants)
//!              || for each participant in run-index order: u32be(len(id)) || id
//!              || u32be(len(context)) || context )
//! ```
//!
//! `participants[i]` is the stable identity of the party with run index `i` (for example
//! the node id or the SHA-256 of its certificate key); `context` carries whatever else the
//! run is bound to (key id, derivation path, presignature batch number). Two nodes that
//! disagree on the participant order or the context derive different ids and the run
//! fails at the first proof instead of mixing up indexes.

use sha2::{Digest, Sha256};

use crate::error::ProtocolKind;

/// A 32-byte execution id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExecutionId(pub [u8; 32]);

impl ExecutionId {
    /// Derives the id as described in the module docs.
    pub fn derive<P: AsRef<[u8]>>(
        session_id: &[u8; 16],
        protocol: ProtocolKind,
        threshold: u16,
        participants: &[P],
        context: &[u8],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"signer-protocol/execution-id/v1");
        let label = protocol.as_str().as_bytes();
        h.update(u32_len(label.len()).to_be_bytes());
        h.update(label);
        h.update(session_id);
        h.update(threshold.to_be_bytes());
        h.update(
            u16::try_from(participants.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for p in participants {
            let p = p.as_ref();
            h.update(u32_len(p.len()).to_be_bytes());
            h.update(p);
        }
        h.update(u32_len(context.len()).to_be_bytes());
        h.update(context);
        ExecutionId(h.finalize().into())
    }

    /// The raw bytes, as handed to the libraries.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_id_changes_with_every_input() {
        let s = [7u8; 16];
        let base = ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 2, &["a", "b", "c"], b"k");
        assert_eq!(
            base,
            ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 2, &["a", "b", "c"], b"k")
        );
        let variants = [
            ExecutionId::derive(
                &[8u8; 16],
                ProtocolKind::EcdsaKeygen,
                2,
                &["a", "b", "c"],
                b"k",
            ),
            ExecutionId::derive(&s, ProtocolKind::FrostKeygen, 2, &["a", "b", "c"], b"k"),
            ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 3, &["a", "b", "c"], b"k"),
            ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 2, &["b", "a", "c"], b"k"),
            ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 2, &["ab", "c"], b"k"),
            ExecutionId::derive(&s, ProtocolKind::EcdsaKeygen, 2, &["a", "b", "c"], b""),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }
}
