//! Properties of the codec over wide inputs: round trips for every packet type and
//! version, streaming over arbitrary splits, and hostile bytes.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use bytes::{Bytes, BytesMut};
use hongyan_proto::{
    Codec, Connack, Connect, Disconnect, Event, HeaderFlags, Packet, ProtocolVersion, ReasonCode, Recv, RecvStream,
    Recvack, Send, Sendack, Setting, Sub, Suback,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9@#_-]{1,12}", "\\PC{0,40}"]
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(ReasonCode::ALL)
}

fn flags() -> impl Strategy<Value = HeaderFlags> {
    (0u8..16).prop_map(HeaderFlags::from_bits)
}

/// Packets whose optional fields agree with `version` and their setting bits, i.e.
/// exactly the packets the wire can express at that version.
fn packet(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v = version;
    let expire = move |e: u32| if v.has_expire() { e } else { 0 };
    let connect = (any::<u8>(), any::<u8>(), text(), text(), text(), any::<i64>(), text()).prop_map(
        |(version, device_flag, device_id, uid, token, client_timestamp, client_key)| {
            Packet::Connect(Connect { version, device_flag, device_id, uid, token, client_timestamp, client_key })
        },
    );
    let connack = (any::<Option<u8>>(), any::<i64>(), reason(), text(), text(), any::<u64>()).prop_map(
        move |(server_version, time_diff, reason_code, server_key, salt, node_id)| {
            let effective = server_version.map_or(v.get(), |s| s.min(v.get()));
            let node_id = if effective >= 4 { node_id } else { 0 };
            Packet::Connack(Connack { server_version, time_diff, reason_code, server_key, salt, node_id })
        },
    );
    let send = (
        flags(),
        any::<u8>(),
        any::<u32>(),
        text(),
        text(),
        text(),
        any::<u8>(),
        any::<u32>(),
        text(),
        text(),
        bytes(),
    )
        .prop_map(
            move |(
                flags,
                setting,
                client_seq,
                client_msg_no,
                stream_no,
                channel_id,
                channel_type,
                exp,
                msg_key,
                topic,
                payload,
            )| {
                let setting = Setting(setting);
                let streams = v.has_stream_fields() && (setting.stream() || setting.stream_legacy());
                Packet::Send(Send {
                    flags,
                    setting,
                    client_seq,
                    client_msg_no,
                    stream_no: streams.then_some(stream_no),
                    channel_id,
                    channel_type,
                    expire: expire(exp),
                    msg_key,
                    topic: setting.topic().then_some(topic),
                    payload,
                })
            },
        );
    let sendack = (flags(), any::<i64>(), any::<u32>(), any::<u32>(), reason()).prop_map(
        |(flags, message_id, client_seq, message_seq, reason_code)| {
            Packet::Sendack(Sendack { flags, message_id, client_seq, message_seq, reason_code })
        },
    );
    let recv_head = (flags(), any::<u8>(), text(), text(), text(), any::<u8>(), any::<u32>(), text());
    let recv_tail =
        (any::<u8>(), text(), any::<u64>(), any::<u32>(), any::<i64>(), any::<u32>(), any::<i32>(), text(), bytes());
    let recv = (recv_head, recv_tail).prop_map(
        move |(
            (flags, setting, msg_key, from_uid, channel_id, channel_type, exp, client_msg_no),
            (stream_flag, stream_no, stream_id, stream_seq, message_id, message_seq, timestamp, topic, payload),
        )| {
            let setting = Setting(setting);
            let stream = if !v.has_stream_fields() {
                None
            } else if setting.stream() {
                Some(RecvStream::Current { flag: stream_flag, stream_no, stream_id })
            } else if setting.stream_legacy() {
                Some(RecvStream::Legacy { stream_no, stream_seq, flag: stream_flag })
            } else {
                None
            };
            Packet::Recv(Recv {
                flags,
                setting,
                msg_key,
                from_uid,
                channel_id,
                channel_type,
                expire: expire(exp),
                client_msg_no,
                stream,
                message_id,
                message_seq,
                timestamp,
                topic: setting.topic().then_some(topic),
                payload,
            })
        },
    );
    let recvack = (flags(), any::<i64>(), any::<u32>())
        .prop_map(|(flags, message_id, message_seq)| Packet::Recvack(Recvack { flags, message_id, message_seq }));
    let disconnect =
        (reason(), text()).prop_map(|(reason_code, reason)| Packet::Disconnect(Disconnect { reason_code, reason }));
    let sub = (any::<u8>(), text(), text(), any::<u8>(), any::<u8>(), text()).prop_map(
        |(setting, sub_no, channel_id, channel_type, action, param)| {
            Packet::Sub(Sub { setting: Setting(setting), sub_no, channel_id, channel_type, action, param })
        },
    );
    let suback = (text(), text(), any::<u8>(), any::<u8>(), reason()).prop_map(
        |(sub_no, channel_id, channel_type, action, reason_code)| {
            Packet::Suback(Suback { sub_no, channel_id, channel_type, action, reason_code })
        },
    );
    let event = (text(), text(), any::<i64>(), bytes())
        .prop_map(|(id, event_type, timestamp, data)| Packet::Event(Event { id, event_type, timestamp, data }));
    prop_oneof![
        connect,
        connack,
        send,
        sendack,
        recv,
        recvack,
        Just(Packet::Ping),
        Just(Packet::Pong),
        disconnect,
        sub,
        suback,
        event,
    ]
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    (1u8..=5).prop_map(ProtocolVersion::negotiate)
}

fn versioned_packets(max: usize) -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(move |v| (Just(v), prop::collection::vec(packet(v), 1..max)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// encode → decode gives the packet back, and every true prefix asks for more bytes
    /// without consuming anything.
    #[test]
    fn round_trip_and_prefixes((v, packets) in versioned_packets(2)) {
        let codec = Codec::new(v);
        let packet = &packets[0];
        let wire = codec.encode_to_bytes(packet).unwrap();
        if matches!(packet, Packet::Send(_) | Packet::Recv(_) | Packet::Event(_)) {
            // The buffer it was encoded into was big enough from the start.
            prop_assert!(wire.len() <= hongyan_proto::encoded_len_bound(packet), "{} bytes", wire.len());
        }
        for cut in 0..wire.len() {
            let mut prefix = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(codec.decode(&mut prefix), Ok(None), "prefix of {} bytes", cut);
            prop_assert_eq!(prefix.len(), cut);
        }
        let mut whole = BytesMut::from(&wire[..]);
        let decoded = codec.decode(&mut whole).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(packet));
        prop_assert!(whole.is_empty());
    }

    /// Several packets, delivered in arbitrary chunks, come out whole and in order.
    #[test]
    fn stream_split_anywhere((v, packets) in versioned_packets(8), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let codec = Codec::new(v);
        let mut wire = BytesMut::new();
        for p in &packets {
            codec.encode(p, &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut last = 0;
        for point in points {
            buf.extend_from_slice(&wire[last..point]);
            last = point;
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        prop_assert_eq!(out, packets);
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic, and the buffer never grows past what one frame
    /// under the cap needs.
    #[test]
    fn arbitrary_bytes_are_safe(v in version(), data in prop::collection::vec(any::<u8>(), 0..2_048)) {
        const CAP: usize = 256;
        let codec = Codec::new(v).with_max_frame_len(CAP);
        let mut buf = BytesMut::with_capacity(16);
        for chunk in data.chunks(7) {
            buf.extend_from_slice(chunk);
            let before = buf.capacity();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(!e.to_string().is_empty());
                        return Ok(());
                    }
                }
            }
            prop_assert!(buf.capacity() <= 2 * before.max(1 + 4 + CAP), "capacity {}", buf.capacity());
        }
    }

    /// A valid frame with bytes flipped either decodes or fails with an error; never panics.
    #[test]
    fn corrupted_frames_fail_cleanly((v, packets) in versioned_packets(2), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let codec = Codec::new(v);
        let mut wire = codec.encode_to_bytes(&packets[0]).unwrap().to_vec();
        for (i, x) in flips {
            let i = i.index(wire.len());
            wire[i] ^= x;
        }
        let mut buf = BytesMut::from(&wire[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}

#[test]
fn huge_announced_length_allocates_nothing() {
    let codec = Codec::default();
    // SEND announcing 256 MiB − 1, far over the 1 MiB default cap.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(err.to_string(), "SEND frame body of 268435455 bytes exceeds the limit of 1048576 bytes");
    assert!(buf.capacity() < 64);
}

#[test]
fn a_frame_within_the_cap_reserves_nothing_before_its_bytes_arrive() {
    let codec = Codec::default().with_max_frame_len(10_000);
    let mut buf = BytesMut::from(&[0xc0, 0x90, 0x4e][..]); // EVENT announcing 10,000 bytes
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(buf.capacity() < 64, "a client that announces and stalls costs what it sent");
}
