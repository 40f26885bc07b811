//! Byte-level reader and writer shared by the vote encodings.
//!
//! Every integer is big-endian and every variable-length field carries its length
//! in front, so an encoding has exactly one parse. The reader never allocates more
//! than the input it was given.

use super::VoteCodecError;

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// A string of at most 255 bytes, prefixed by its length in one byte. The
    /// caller has checked the length.
    pub(crate) fn short_str(&mut self, s: &str) {
        debug_assert!(s.len() <= usize::from(u8::MAX));
        self.u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
        self.raw(s.as_bytes());
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a byte slice; every read names the field it was reading so
/// that a truncated input is reported precisely.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { rest: b }
    }

    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], VoteCodecError> {
        if self.rest.len() < n {
            return Err(VoteCodecError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], VoteCodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, VoteCodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, VoteCodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, VoteCodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, VoteCodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A one-byte length followed by that many bytes of UTF-8.
    pub(crate) fn short_str(&mut self, field: &'static str) -> Result<&'a str, VoteCodecError> {
        let len = usize::from(self.u8(field)?);
        let b = self.take(len, field)?;
        std::str::from_utf8(b).map_err(|_| VoteCodecError::BadText { field })
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn end(self) -> Result<(), VoteCodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(VoteCodecError::TrailingBytes {
                extra: self.rest.len(),
            })
        }
    }
}
