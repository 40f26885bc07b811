//! Canonical, length-prefixed binary encoding fed into SHA-256.
//!
//! Used for the policy hash and the transaction-view digest. Every value is written with
//! a fixed width or a length prefix, so two different structures can never produce the
//! same byte stream. Field order is fixed by the code, never by map iteration.

use sha2::{Digest, Sha256};

/// Streaming canonical encoder that hashes what it is fed.
pub(crate) struct Canon(Sha256);

impl Canon {
    /// Starts an encoding under a domain-separation tag.
    pub(crate) fn new(domain: &str) -> Self {
        let mut c = Canon(Sha256::new());
        c.str(domain);
        c
    }

    /// Writes a big-endian `u64`.
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.update(v.to_be_bytes());
    }

    /// Writes a one-byte tag.
    pub(crate) fn tag(&mut self, v: u8) {
        self.0.update([v]);
    }

    /// Writes a boolean as one byte.
    pub(crate) fn bool(&mut self, v: bool) {
        self.tag(u8::from(v));
    }

    /// Writes a length-prefixed byte string.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }

    /// Writes a length-prefixed UTF-8 string.
    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Writes an optional `u64` (presence tag, then value).
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.tag(0),
            Some(v) => {
                self.tag(1);
                self.u64(v);
            }
        }
    }

    /// Writes an optional string (presence tag, then value).
    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.tag(0),
            Some(v) => {
                self.tag(1);
                self.str(v);
            }
        }
    }

    /// Finishes and returns the SHA-256 digest.
    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_separates_adjacent_strings() {
        let mut a = Canon::new("t");
        a.str("ab");
        a.str("c");
        let mut b = Canon::new("t");
        b.str("a");
        b.str("bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn domain_tag_separates_encodings() {
        let mut a = Canon::new("one");
        a.u64(1);
        let mut b = Canon::new("two");
        b.u64(1);
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn absent_and_present_options_differ() {
        let mut a = Canon::new("t");
        a.opt_u64(None);
        a.opt_u64(Some(0));
        let mut b = Canon::new("t");
        b.opt_u64(Some(0));
        b.opt_u64(None);
        assert_ne!(a.finish(), b.finish());
    }
}
