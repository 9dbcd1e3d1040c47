//! Key and value encodings shared by every backend.
//!
//! Keys are composites that sort usefully: fixed-width integers big-endian, strings
//! length-prefixed (so `u1` is not a prefix of `u10`) unless they are the last part.
//! Values start with a format byte so that a later format can be read beside this one.

/// Appends a string as a 2-byte big-endian length and its bytes.
pub(crate) fn push_str16(out: &mut Vec<u8>, s: &str) {
    // Callers validate: ids are at most 255 bytes (hongyan_core::session::MAX_ID_LEN), and the
    // message log refuses longer message strings before they reach its writer.
    let len = u16::try_from(s.len()).expect("invariant: stored strings are at most 65,535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads values written by the table layer.
pub(crate) struct ValueReader<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> ValueReader<'a> {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.rest.split_at_checked(N)?;
        self.rest = rest;
        head.try_into().ok()
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }

    /// A 2-byte-length-prefixed UTF-8 string.
    pub(crate) fn str16(&mut self) -> Option<&'a str> {
        let len = usize::from(u16::from_be_bytes(self.take()?));
        let (s, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        std::str::from_utf8(s).ok()
    }

    pub(crate) fn rest_str(&mut self) -> Option<&'a str> {
        let s = std::str::from_utf8(self.rest).ok()?;
        self.rest = &[];
        Some(s)
    }
}
