//! Feeds arbitrary bytes to the streaming decoder at every protocol version, in
//! chunks whose sizes the input chooses. Whatever decodes must re-encode and decode to
//! the same packet, and the buffer must stay within one capped frame.

#![no_main]

use bytes::BytesMut;
use hongyan_proto::{Codec, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else { return };
    let version = ProtocolVersion::negotiate(control % 6);
    let chunk = usize::from(control / 6).max(1);
    let codec = Codec::new(version).with_max_frame_len(CAP);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    // Strings over 32,767 bytes decode but are refused on encode; skip those.
                    if let Ok(wire) = codec.encode_to_bytes(&packet) {
                        let mut again = BytesMut::from(&wire[..]);
                        assert_eq!(codec.decode(&mut again).unwrap(), Some(packet));
                        assert!(again.is_empty());
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= 2 * (CAP + 5) + data.len());
    }
});
