//! Encoding and streaming decoding of packets for one connection's negotiated version.
//!
//! [`Codec::decode`] takes bytes as they arrive (any number of packets, any split) and
//! answers `Ok(None)` until a whole packet is buffered. It checks the announced length
//! against the cap before reserving anything, so a hostile length costs nothing.
//! Payloads are `Bytes` slices of the received frame: decoding copies only the strings.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::header::{MAX_ENCODABLE_REMAINING_LEN, VarintRead, read_remaining_len, write_remaining_len};
use crate::{
    Connack, Connect, DecodeError, Disconnect, EncodeError, Event, HeaderFlags, Packet, PacketType, ProtocolVersion,
    ReasonCode, Recv, RecvStream, Recvack, Send, Sendack, Setting, Sub, Suback,
};

/// Default cap on a frame's remaining length: 1 MiB, as WuKongIM's server.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// Longest string the encoder writes: peers read the 2-byte length as a signed i16.
/// The decoder accepts up to 65,535 bytes, which is unambiguous.
pub const MAX_STRING_LEN: usize = i16::MAX as usize;

/// Encoder and decoder for one connection.
///
/// The version starts at [`ProtocolVersion::LATEST`] (CONNECT's layout does not depend
/// on it); after the handshake both sides set it to the negotiated version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    version: ProtocolVersion,
    max_frame_len: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(ProtocolVersion::LATEST)
    }
}

impl Codec {
    /// A codec for `version` with the default 1 MiB frame cap.
    pub fn new(version: ProtocolVersion) -> Self {
        Self { version, max_frame_len: DEFAULT_MAX_FRAME_LEN }
    }

    /// Sets the cap on a frame's remaining length (at most 256 MiB − 1, what four
    /// length bytes can say).
    #[must_use]
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.min(MAX_ENCODABLE_REMAINING_LEN);
        self
    }

    /// The version packets are read and written with.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Changes the cap on a frame's remaining length (e.g. raising it after login).
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max.min(MAX_ENCODABLE_REMAINING_LEN);
    }

    /// Switches to the negotiated version after the handshake.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// The cap on a frame's remaining length.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Takes one packet off the front of `src`.
    ///
    /// `Ok(None)`: `src` holds only a prefix of a packet (possibly nothing); call again
    /// with more bytes. `Err`: the bytes can never become a valid packet; the stream is
    /// unusable and should be closed. On `Ok(Some)` exactly that packet's bytes are
    /// consumed.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        let packet = PacketType::from_nibble(first >> 4).ok_or(DecodeError::UnknownPacketType { value: first >> 4 })?;
        if packet.is_single_byte() {
            src.advance(1);
            return Ok(Some(if packet == PacketType::Ping { Packet::Ping } else { Packet::Pong }));
        }
        let (body_len, len_bytes) = match read_remaining_len(&src[1..]) {
            VarintRead::Complete { value, len } => (value, len),
            VarintRead::NeedMore => return Ok(None),
            VarintRead::TooLong => return Err(DecodeError::RemainingLengthTooLong),
        };
        if body_len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge { packet, len: body_len, max: self.max_frame_len });
        }
        let frame_len = 1 + len_bytes + body_len;
        if src.len() < frame_len {
            // Nothing is reserved for the announced length: buffers grow with the bytes
            // that arrive, so a client that announces a large frame and stalls costs
            // only what it sent.
            return Ok(None);
        }
        let frame = src.split_to(frame_len).freeze();
        let mut r = Reader { frame, pos: 1 + len_bytes, packet };
        let flags = first & 0x0f;
        self.decode_body(&mut r, flags).map(Some)
    }

    fn decode_body(&self, r: &mut Reader, flags: u8) -> Result<Packet, DecodeError> {
        let v = self.version;
        let header = HeaderFlags::from_bits(flags);
        Ok(match r.packet {
            PacketType::Connect => Packet::Connect(Connect {
                version: r.u8("version")?,
                device_flag: r.u8("device_flag")?,
                device_id: r.string("device_id")?,
                uid: r.string("uid")?,
                token: r.string("token")?,
                client_timestamp: r.i64("client_timestamp")?,
                client_key: r.string("client_key")?,
            }),
            PacketType::Connack => {
                let server_version = if flags & 0x01 != 0 { Some(r.u8("server_version")?) } else { None };
                let time_diff = r.i64("time_diff")?;
                let reason_code = r.reason("reason_code")?;
                let server_key = r.string("server_key")?;
                let salt = r.string("salt")?;
                let node_id = if connack_has_node_id(v, server_version) { r.u64("node_id")? } else { 0 };
                Packet::Connack(Connack { server_version, time_diff, reason_code, server_key, salt, node_id })
            }
            PacketType::Send => {
                let setting = Setting(r.u8("setting")?);
                let client_seq = r.u32("client_seq")?;
                let client_msg_no = r.string("client_msg_no")?;
                let stream_no = if v.has_stream_fields() && (setting.stream() || setting.stream_legacy()) {
                    Some(r.string("stream_no")?)
                } else {
                    None
                };
                let channel_id = r.string("channel_id")?;
                let channel_type = r.u8("channel_type")?;
                let expire = if v.has_expire() { r.u32("expire")? } else { 0 };
                let msg_key = r.string("msg_key")?;
                let topic = if setting.topic() { Some(r.string("topic")?) } else { None };
                Packet::Send(Send {
                    flags: header,
                    setting,
                    client_seq,
                    client_msg_no,
                    stream_no,
                    channel_id,
                    channel_type,
                    expire,
                    msg_key,
                    topic,
                    payload: r.rest(),
                })
            }
            PacketType::Sendack => Packet::Sendack(Sendack {
                flags: header,
                message_id: r.i64("message_id")?,
                client_seq: r.u32("client_seq")?,
                message_seq: r.u32("message_seq")?,
                reason_code: r.reason("reason_code")?,
            }),
            PacketType::Recv => {
                let setting = Setting(r.u8("setting")?);
                let msg_key = r.string("msg_key")?;
                let from_uid = r.string("from_uid")?;
                let channel_id = r.string("channel_id")?;
                let channel_type = r.u8("channel_type")?;
                let expire = if v.has_expire() { r.u32("expire")? } else { 0 };
                let client_msg_no = r.string("client_msg_no")?;
                let stream = match recv_stream_layout(v, setting) {
                    StreamLayout::None => None,
                    StreamLayout::Current => Some(RecvStream::Current {
                        flag: r.u8("stream_flag")?,
                        stream_no: r.string("stream_no")?,
                        stream_id: r.u64("stream_id")?,
                    }),
                    StreamLayout::Legacy => Some(RecvStream::Legacy {
                        stream_no: r.string("stream_no")?,
                        stream_seq: r.u32("stream_seq")?,
                        flag: r.u8("stream_flag")?,
                    }),
                };
                let message_id = r.i64("message_id")?;
                let message_seq = r.u32("message_seq")?;
                let timestamp = r.i32("timestamp")?;
                let topic = if setting.topic() { Some(r.string("topic")?) } else { None };
                Packet::Recv(Recv {
                    flags: header,
                    setting,
                    msg_key,
                    from_uid,
                    channel_id,
                    channel_type,
                    expire,
                    client_msg_no,
                    stream,
                    message_id,
                    message_seq,
                    timestamp,
                    topic,
                    payload: r.rest(),
                })
            }
            PacketType::Recvack => Packet::Recvack(Recvack {
                flags: header,
                message_id: r.i64("message_id")?,
                message_seq: r.u32("message_seq")?,
            }),
            PacketType::Disconnect => {
                Packet::Disconnect(Disconnect { reason_code: r.reason("reason_code")?, reason: r.string("reason")? })
            }
            PacketType::Sub => Packet::Sub(Sub {
                setting: Setting(r.u8("setting")?),
                sub_no: r.string("sub_no")?,
                channel_id: r.string("channel_id")?,
                channel_type: r.u8("channel_type")?,
                action: r.u8("action")?,
                param: r.string("param")?,
            }),
            PacketType::Suback => Packet::Suback(Suback {
                sub_no: r.string("sub_no")?,
                channel_id: r.string("channel_id")?,
                channel_type: r.u8("channel_type")?,
                action: r.u8("action")?,
                reason_code: r.reason("reason_code")?,
            }),
            PacketType::Event => Packet::Event(Event {
                id: r.string("id")?,
                event_type: r.string("event_type")?,
                timestamp: r.i64("timestamp")?,
                data: r.rest(),
            }),
            PacketType::Ping | PacketType::Pong => unreachable!("single-byte packets return early"),
        })
    }

    /// Appends `packet` to `dst`. On error `dst` is left as it was.
    pub fn encode(&self, packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let ty = packet.packet_type();
        let flags = match packet {
            Packet::Ping | Packet::Pong => {
                dst.put_u8((ty as u8) << 4);
                return Ok(());
            }
            Packet::Connack(c) => u8::from(c.server_version.is_some()),
            Packet::Send(p) => p.flags.bits(),
            Packet::Sendack(p) => p.flags.bits(),
            Packet::Recv(p) => p.flags.bits(),
            Packet::Recvack(p) => p.flags.bits(),
            _ => 0,
        };
        let start = dst.len();
        dst.put_u8(((ty as u8) << 4) | flags);
        dst.put_slice(&[0; 4]); // room for the longest remaining length; trimmed below
        let body_start = dst.len();
        let mut w = Writer { dst, packet: ty };
        if let Err(e) = self.encode_body(packet, &mut w) {
            dst.truncate(start);
            return Err(e);
        }
        let body_len = dst.len() - body_start;
        if body_len > self.max_frame_len {
            dst.truncate(start);
            return Err(EncodeError::FrameTooLarge { packet: ty, len: body_len, max: self.max_frame_len });
        }
        let mut len_bytes = [0; 4];
        let n = write_remaining_len(body_len, &mut len_bytes);
        dst[start + 1..start + 1 + n].copy_from_slice(&len_bytes[..n]);
        if n < 4 {
            dst.copy_within(body_start.., start + 1 + n);
            dst.truncate(dst.len() - (4 - n));
        }
        Ok(())
    }

    /// Encodes `packet` into a fresh buffer.
    pub fn encode_to_bytes(&self, packet: &Packet) -> Result<Bytes, EncodeError> {
        // Sized once: growing the buffer field by field cost a RECV three reallocations.
        let mut dst = BytesMut::with_capacity(encoded_len_bound(packet));
        self.encode(packet, &mut dst)?;
        Ok(dst.freeze())
    }

    fn encode_body(&self, packet: &Packet, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let v = self.version;
        match packet {
            Packet::Ping | Packet::Pong => {}
            Packet::Connect(p) => {
                w.u8(p.version);
                w.u8(p.device_flag);
                w.string("device_id", &p.device_id)?;
                w.string("uid", &p.uid)?;
                w.string("token", &p.token)?;
                w.dst.put_i64(p.client_timestamp);
                w.string("client_key", &p.client_key)?;
            }
            Packet::Connack(p) => {
                if let Some(server_version) = p.server_version {
                    w.u8(server_version);
                }
                w.dst.put_i64(p.time_diff);
                w.u8(p.reason_code.as_u8());
                w.string("server_key", &p.server_key)?;
                w.string("salt", &p.salt)?;
                if connack_has_node_id(v, p.server_version) {
                    w.dst.put_u64(p.node_id);
                }
            }
            Packet::Send(p) => {
                let wants_stream = v.has_stream_fields() && (p.setting.stream() || p.setting.stream_legacy());
                if wants_stream != p.stream_no.is_some() {
                    return Err(w.inconsistent(
                        "stream_no",
                        "must be present exactly when a stream bit is set in versions 2-4",
                    ));
                }
                check_topic(w, p.setting, &p.topic)?;
                w.u8(p.setting.0);
                w.dst.put_u32(p.client_seq);
                w.string("client_msg_no", &p.client_msg_no)?;
                if let Some(stream_no) = &p.stream_no {
                    w.string("stream_no", stream_no)?;
                }
                w.string("channel_id", &p.channel_id)?;
                w.u8(p.channel_type);
                if v.has_expire() {
                    w.dst.put_u32(p.expire);
                }
                w.string("msg_key", &p.msg_key)?;
                if let Some(topic) = &p.topic {
                    w.string("topic", topic)?;
                }
                w.dst.put_slice(&p.payload);
            }
            Packet::Sendack(p) => {
                w.dst.put_i64(p.message_id);
                w.dst.put_u32(p.client_seq);
                w.dst.put_u32(p.message_seq);
                w.u8(p.reason_code.as_u8());
            }
            Packet::Recv(p) => {
                let layout_ok = matches!(
                    (recv_stream_layout(v, p.setting), &p.stream),
                    (StreamLayout::None, None)
                        | (StreamLayout::Current, Some(RecvStream::Current { .. }))
                        | (StreamLayout::Legacy, Some(RecvStream::Legacy { .. }))
                );
                if !layout_ok {
                    return Err(w.inconsistent(
                        "stream",
                        "must match the stream bit (bit 1 current, bit 2 legacy) in versions 2-4",
                    ));
                }
                check_topic(w, p.setting, &p.topic)?;
                w.u8(p.setting.0);
                w.string("msg_key", &p.msg_key)?;
                w.string("from_uid", &p.from_uid)?;
                w.string("channel_id", &p.channel_id)?;
                w.u8(p.channel_type);
                if v.has_expire() {
                    w.dst.put_u32(p.expire);
                }
                w.string("client_msg_no", &p.client_msg_no)?;
                match &p.stream {
                    None => {}
                    Some(RecvStream::Current { flag, stream_no, stream_id }) => {
                        w.u8(*flag);
                        w.string("stream_no", stream_no)?;
                        w.dst.put_u64(*stream_id);
                    }
                    Some(RecvStream::Legacy { stream_no, stream_seq, flag }) => {
                        w.string("stream_no", stream_no)?;
                        w.dst.put_u32(*stream_seq);
                        w.u8(*flag);
                    }
                }
                w.dst.put_i64(p.message_id);
                w.dst.put_u32(p.message_seq);
                w.dst.put_i32(p.timestamp);
                if let Some(topic) = &p.topic {
                    w.string("topic", topic)?;
                }
                w.dst.put_slice(&p.payload);
            }
            Packet::Recvack(p) => {
                w.dst.put_i64(p.message_id);
                w.dst.put_u32(p.message_seq);
            }
            Packet::Disconnect(p) => {
                w.u8(p.reason_code.as_u8());
                w.string("reason", &p.reason)?;
            }
            Packet::Sub(p) => {
                w.u8(p.setting.0);
                w.string("sub_no", &p.sub_no)?;
                w.string("channel_id", &p.channel_id)?;
                w.u8(p.channel_type);
                w.u8(p.action);
                w.string("param", &p.param)?;
            }
            Packet::Suback(p) => {
                w.string("sub_no", &p.sub_no)?;
                w.string("channel_id", &p.channel_id)?;
                w.u8(p.channel_type);
                w.u8(p.action);
                w.u8(p.reason_code.as_u8());
            }
            Packet::Event(p) => {
                w.string("id", &p.id)?;
                w.string("event_type", &p.event_type)?;
                w.dst.put_i64(p.timestamp);
                w.dst.put_slice(&p.data);
            }
        }
        Ok(())
    }
}

fn check_topic(w: &Writer<'_>, setting: Setting, topic: &Option<String>) -> Result<(), EncodeError> {
    if setting.topic() == topic.is_some() {
        Ok(())
    } else {
        Err(w.inconsistent("topic", "must be present exactly when the Topic setting bit is set"))
    }
}

/// A CONNACK carries the node id when the version both sides speak is v4+: the
/// server's version byte, where sent, caps the codec's.
fn connack_has_node_id(v: ProtocolVersion, server_version: Option<u8>) -> bool {
    server_version.map_or(v, |s| v.min(ProtocolVersion::negotiate(s))).has_node_id()
}

/// Which stream fields a RECV carries.
enum StreamLayout {
    None,
    Current,
    Legacy,
}

/// Bit 1 wins when both stream bits are set: that is the server library's reading.
fn recv_stream_layout(v: ProtocolVersion, setting: Setting) -> StreamLayout {
    if !v.has_stream_fields() {
        StreamLayout::None
    } else if setting.stream() {
        StreamLayout::Current
    } else if setting.stream_legacy() {
        StreamLayout::Legacy
    } else {
        StreamLayout::None
    }
}

/// Reads fields off one complete frame; offsets are from the frame's first byte.
struct Reader {
    frame: Bytes,
    pos: usize,
    packet: PacketType,
}

impl Reader {
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.frame.get(self.pos..self.pos + N).ok_or(DecodeError::Truncated {
            packet: self.packet,
            field,
            offset: self.pos,
        })?;
        self.pos += N;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.take(field).map(u32::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.take(field).map(i32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.take(field).map(u64::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.take(field).map(i64::from_be_bytes)
    }

    fn reason(&mut self, field: &'static str) -> Result<ReasonCode, DecodeError> {
        let offset = self.pos;
        let value = self.u8(field)?;
        ReasonCode::from_u8(value).ok_or(DecodeError::InvalidValue {
            packet: self.packet,
            field,
            offset,
            value: value.into(),
        })
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let len = usize::from(u16::from_be_bytes(self.take(field)?));
        let bytes = self.frame.get(self.pos..self.pos + len).ok_or(DecodeError::Truncated {
            packet: self.packet,
            field,
            offset,
        })?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::InvalidUtf8 { packet: self.packet, field, offset })?
            .to_owned();
        self.pos += len;
        Ok(text)
    }

    /// The rest of the frame, shared with it rather than copied.
    fn rest(&mut self) -> Bytes {
        let rest = self.frame.slice(self.pos..);
        self.pos = self.frame.len();
        rest
    }
}

struct Writer<'a> {
    dst: &'a mut BytesMut,
    packet: PacketType,
}

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.dst.put_u8(value);
    }

    fn string(&mut self, field: &'static str, value: &str) -> Result<(), EncodeError> {
        let len = value.len();
        if len > MAX_STRING_LEN {
            return Err(EncodeError::StringTooLong { packet: self.packet, field, len, max: MAX_STRING_LEN });
        }
        self.dst.put_u16(len as u16);
        self.dst.put_slice(value.as_bytes());
        Ok(())
    }

    fn inconsistent(&self, field: &'static str, problem: &'static str) -> EncodeError {
        EncodeError::Inconsistent { packet: self.packet, field, problem }
    }
}

/// At least the bytes [`Codec::encode`] writes for `packet` at any version (the header
/// with room for the longest remaining length, then the body), for the packets that
/// carry a payload (SEND, RECV, EVENT); a small guess for the rest. What
/// [`Codec::encode_to_bytes`] allocates.
pub fn encoded_len_bound(packet: &Packet) -> usize {
    const HEADER: usize = 5;
    let string = |s: &str| 2 + s.len();
    let optional = |s: &Option<String>| s.as_deref().map_or(0, string);
    match packet {
        Packet::Recv(p) => {
            let stream = match &p.stream {
                None => 0,
                Some(RecvStream::Current { stream_no, .. } | RecvStream::Legacy { stream_no, .. }) => {
                    1 + string(stream_no) + 8
                }
            };
            // setting, channel type, expire, message id, seq and timestamp: 22 bytes.
            HEADER
                + 22
                + string(&p.msg_key)
                + string(&p.from_uid)
                + string(&p.channel_id)
                + string(&p.client_msg_no)
                + stream
                + optional(&p.topic)
                + p.payload.len()
        }
        Packet::Send(p) => {
            // setting, client seq, channel type and expire: 10 bytes.
            HEADER
                + 10
                + string(&p.client_msg_no)
                + optional(&p.stream_no)
                + string(&p.channel_id)
                + string(&p.msg_key)
                + optional(&p.topic)
                + p.payload.len()
        }
        Packet::Event(p) => HEADER + string(&p.id) + string(&p.event_type) + 8 + p.data.len(),
        _ => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &Codec, bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = codec.decode(&mut buf)? {
            out.push(p);
        }
        assert!(buf.is_empty(), "left {} bytes", buf.len());
        Ok(out)
    }

    #[test]
    fn ping_and_pong_are_single_bytes() {
        let codec = Codec::default();
        assert_eq!(codec.encode_to_bytes(&Packet::Ping).unwrap().as_ref(), [0x70]);
        assert_eq!(codec.encode_to_bytes(&Packet::Pong).unwrap().as_ref(), [0x80]);
        assert_eq!(decode_all(&codec, &[0x70, 0x80, 0x70]).unwrap(), [Packet::Ping, Packet::Pong, Packet::Ping]);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering_it() {
        let codec = Codec::default().with_max_frame_len(100);
        let mut buf = BytesMut::from(&[0x30, 0xe5, 0x00][..]); // SEND announcing 101 bytes
        assert_eq!(
            codec.decode(&mut buf),
            Err(DecodeError::FrameTooLarge { packet: PacketType::Send, len: 101, max: 100 })
        );
        assert!(buf.capacity() < 100, "reserved {} bytes for a refused frame", buf.capacity());
    }

    #[test]
    fn an_announced_frame_is_not_reserved_before_its_bytes_arrive() {
        let codec = Codec::default();
        let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40][..]); // SEND announcing 1 MiB
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 1024, "reserved {} bytes for bytes that never came", buf.capacity());
    }

    #[test]
    fn unknown_type_and_overlong_length_are_errors() {
        let codec = Codec::default();
        assert_eq!(decode_all(&codec, &[0x00]), Err(DecodeError::UnknownPacketType { value: 0 }));
        assert_eq!(decode_all(&codec, &[0xd0, 0x00]), Err(DecodeError::UnknownPacketType { value: 13 }));
        assert_eq!(decode_all(&codec, &[0x30, 0x80, 0x80, 0x80, 0x80]), Err(DecodeError::RemainingLengthTooLong));
    }

    #[test]
    fn truncated_body_names_field_and_offset() {
        // RECVACK with a 10-byte body: message_id fits, message_seq does not.
        let codec = Codec::default();
        let err = decode_all(&codec, &[0x60, 0x0a, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { packet: PacketType::Recvack, field: "message_seq", offset: 10 });
        assert_eq!(err.to_string(), "RECVACK field `message_seq` at offset 10 runs past the end of the frame");
    }

    #[test]
    fn bad_utf8_and_bad_reason_code_are_named() {
        let codec = Codec::default();
        // DISCONNECT reason 12, reason string of one invalid byte.
        assert_eq!(
            decode_all(&codec, &[0x90, 0x04, 0x0c, 0x00, 0x01, 0xff]),
            Err(DecodeError::InvalidUtf8 { packet: PacketType::Disconnect, field: "reason", offset: 3 })
        );
        assert_eq!(
            decode_all(&codec, &[0x90, 0x03, 0x63, 0x00, 0x00]),
            Err(DecodeError::InvalidValue {
                packet: PacketType::Disconnect,
                field: "reason_code",
                offset: 2,
                value: 99
            })
        );
    }

    #[test]
    fn encoder_refuses_topic_without_bit_and_leaves_buffer_untouched() {
        let codec = Codec::default();
        let mut dst = BytesMut::from(&b"keep"[..]);
        let send = Send { topic: Some("t".into()), ..Send::default() };
        let err = codec.encode(&send.into(), &mut dst).unwrap_err();
        assert!(matches!(err, EncodeError::Inconsistent { field: "topic", .. }));
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn encoder_refuses_strings_peers_cannot_read() {
        let codec = Codec::default();
        let d = Disconnect { reason_code: ReasonCode::ConnectKick, reason: "x".repeat(MAX_STRING_LEN + 1) };
        assert!(matches!(codec.encode_to_bytes(&d.into()), Err(EncodeError::StringTooLong { field: "reason", .. })));
    }

    #[test]
    fn multi_byte_remaining_length_is_trimmed_correctly() {
        let codec = Codec::default();
        let event = Event { id: "e".into(), event_type: "t".into(), timestamp: 7, data: Bytes::from(vec![b'x'; 300]) };
        let bytes = codec.encode_to_bytes(&event.clone().into()).unwrap();
        let body = 3 + 3 + 8 + 300;
        assert_eq!(bytes.len(), 1 + 2 + body);
        assert_eq!(&bytes[..3], [0xc0, (body & 0x7f) as u8 | 0x80, (body >> 7) as u8]);
        assert_eq!(decode_all(&codec, &bytes).unwrap(), [Packet::Event(event)]);
    }

    #[test]
    fn send_stream_number_follows_either_stream_bit_in_v2_to_v4_only() {
        for (version, bit, has_stream) in [
            (2, Setting::STREAM, true),
            (4, Setting::STREAM_LEGACY, true),
            (5, Setting::STREAM, false),
            (5, Setting::STREAM_LEGACY, false),
        ] {
            let codec = Codec::new(ProtocolVersion::negotiate(version));
            let send = Send {
                setting: Setting(bit),
                stream_no: has_stream.then(|| "s1".to_owned()),
                channel_id: "c".into(),
                ..Send::default()
            };
            let bytes = codec.encode_to_bytes(&send.clone().into()).unwrap();
            assert_eq!(decode_all(&codec, &bytes).unwrap(), [Packet::Send(send)]);
        }
    }
}
