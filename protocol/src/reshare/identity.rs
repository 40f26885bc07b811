//! Identity signatures of reshare messages.
//!
//! Every reshare message is signed with the sender's Ed25519 identity key, so a complaint
//! can carry the accused dealer's own signed words and anyone can check it. The node uses
//! its vote key (any [`vote::VoteSigner`] is a [`ReshareSigner`]); the reshare statements
//! start with their own domain separator, so they can never be mistaken for votes.

/// Signs reshare statements with this party's Ed25519 identity key.
pub trait ReshareSigner {
    /// The 32-byte Ed25519 public key (must equal the key of this party in the
    /// [`super::ReshareSetup`]).
    fn identity_public_key(&self) -> [u8; 32];
    /// An Ed25519 signature over `msg`.
    fn sign_reshare_statement(&self, msg: &[u8]) -> [u8; 64];
}

impl<T: vote::VoteSigner + ?Sized> ReshareSigner for T {
    fn identity_public_key(&self) -> [u8; 32] {
        self.vote_public_key()
    }

    fn sign_reshare_statement(&self, msg: &[u8]) -> [u8; 64] {
        self.sign_vote_message(msg)
    }
}

/// Verifies an Ed25519 signature.
pub(crate) fn verify(public_key: &[u8; 32], msg: &[u8], signature: &[u8; 64]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(msg, signature)
        .is_ok()
}
