//! The byte layout shared by what nodes send each other: strings and byte strings
//! with a 4-byte length, every length checked before anything is read or allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest string a message between nodes may carry (ids are far shorter; a
/// payload is bounded by NATS's `max_payload`).
pub(crate) const MAX_FIELD: usize = 65_535;

/// Writes `s` with its length; `None` when it is longer than [`MAX_FIELD`].
pub(crate) fn put_str(out: &mut BytesMut, s: &str) -> Option<()> {
    out.put_u32(u32::try_from(s.len()).ok().filter(|&n| n as usize <= MAX_FIELD)?);
    out.put_slice(s.as_bytes());
    Some(())
}

/// Reads a byte string written with its length; `None` when the input is short.
pub(crate) fn get_bytes(input: &mut Bytes) -> Option<Bytes> {
    if input.remaining() < 4 {
        return None;
    }
    let len = input.get_u32() as usize;
    (input.remaining() >= len).then(|| input.split_to(len))
}

/// Reads a string written by [`put_str`]; `None` when short, too long or not UTF-8.
pub(crate) fn get_str(input: &mut Bytes) -> Option<String> {
    let bytes = get_bytes(input)?;
    if bytes.len() > MAX_FIELD {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

/// Writes `b` with its length; `None` past 4 GiB.
pub(crate) fn put_bytes(out: &mut BytesMut, b: &[u8]) -> Option<()> {
    out.put_u32(u32::try_from(b.len()).ok()?);
    out.put_slice(b);
    Some(())
}
