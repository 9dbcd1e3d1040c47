//! The worked examples of the WuKongIM reference (§1.9, §2), byte for byte.
//!
//! These bytes were decoded by the official JS SDK's own code, so matching them in both
//! directions is what "an official SDK can talk to us" means at the codec level.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use bytes::{Bytes, BytesMut};
use hongyan_proto::{
    ClientHandshake, Codec, Connack, Connect, Disconnect, HeaderFlags, KeyPair, Packet, ProtocolVersion, ReasonCode,
    Recv, Recvack, Send, Sendack, ServerHandshake, SessionCipher,
};
use sha2::{Digest, Sha256};

const CLIENT_SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const CLIENT_PUB: &str = "hlF7wMOf6Ha3ZGy1407gPa9xzLrWdFDBapcK2MvAPn4=";
const SERVER_PUB: &str = "IOu79AsplgQcerS773F18U1+MFRWxN2vr25v2hkBMHs=";
const SHARED: &str = "3cc6b915dc3308659ae4169f0a2ecbe3d50b7cb12e92da5e750819261c143223";
const SALT: &str = "abcdefghijklmnop";
const PLAINTEXT: &[u8] = br#"{"type":1,"content":"hi"}"#;
const ENC_PAYLOAD: &str = "9Zrk7g98SpqqOcOwuaGups0Rncd9cxzbQW8a1HqUzng=";
const SEND_MSG_KEY: &str = "4deb518a2bef1a941369702e39643fa0";
const RECV_MSG_KEY: &str = "5b518027fe87d841e38043084a587cc5";
const MESSAGE_ID: i64 = 1_234_567_890_123_456_789;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace() && *c != '|').collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn ascii_hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn server_keys() -> KeyPair {
    KeyPair::from_secret(Sha256::digest(b"server-demo-key").into())
}

fn client_keys() -> KeyPair {
    KeyPair::from_secret(*CLIENT_SECRET)
}

fn codec(version: u8) -> Codec {
    Codec::new(ProtocolVersion::negotiate(version))
}

/// Encodes `packet` to exactly `expected` and decodes `expected` back to exactly `packet`.
fn assert_both_directions(codec: Codec, packet: Packet, expected: &[u8]) {
    let encoded = codec.encode_to_bytes(&packet).unwrap();
    assert_eq!(encoded.as_ref(), expected, "encoding {packet:?}");
    let mut buf = BytesMut::from(expected);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(packet));
    assert!(buf.is_empty());
}

fn cipher() -> SessionCipher {
    client_keys().session(SERVER_PUB, SALT).unwrap()
}

#[test]
fn derived_keys() {
    assert_eq!(client_keys().public_key_base64(), CLIENT_PUB);
    assert_eq!(server_keys().public_key_base64(), SERVER_PUB);
    let shared = client_keys().shared_secret(SERVER_PUB).unwrap();
    assert_eq!(shared.to_vec(), hex(SHARED));
    assert_eq!(server_keys().shared_secret(CLIENT_PUB).unwrap(), shared);
    let c = cipher();
    assert_eq!(c.aes_key(), b"a0d00710e48f4072");
    assert_eq!(c.iv(), SALT.as_bytes());
    assert_eq!(server_keys().session(CLIENT_PUB, SALT).unwrap(), c);
}

fn connect(version: u8) -> Connect {
    Connect {
        version,
        device_flag: 1,
        device_id: "d1W".into(),
        uid: "u1".into(),
        token: "t1".into(),
        client_timestamp: 1_700_000_000_000,
        client_key: CLIENT_PUB.into(),
    }
}

#[test]
fn connect_v5_and_v2() {
    for version in [5, 2] {
        let expected = hex(&format!(
            "10 45 {version:02x} 01 0003643157 00027531 00027431 0000018bcfe56800 002c {}",
            ascii_hex(CLIENT_PUB)
        ));
        // CONNECT's layout does not depend on the version; decode it as a fresh server would.
        assert_both_directions(Codec::default(), Packet::Connect(connect(version)), &expected);
        let client = ClientHandshake::new(client_keys(), version);
        assert_eq!(client.connect("u1", "t1", 1, "d1W", 1_700_000_000_000), connect(version));
    }
}

const CONNACK_V5: &str = "215205000000000000000f01002c494f7537394173706c67516365725337373346313855312b4d465257784e32767232357632686b424d48733d00106162636465666768696a6b6c6d6e6f700000000000000001";
const CONNACK_V2: &str = "2049000000000000000f01002c494f7537394173706c67516365725337373346313855312b4d465257784e32767232357632686b424d48733d00106162636465666768696a6b6c6d6e6f70";

#[test]
fn connack_v5_and_v2_from_the_server_handshake() {
    for (version, expected) in [(5, CONNACK_V5), (2, CONNACK_V2)] {
        let server = ServerHandshake::new(&connect(version), 1_700_000_000_015, 1);
        let (connack, server_cipher) = server.accept(CLIENT_PUB, &server_keys(), SALT.into()).unwrap();
        assert_eq!(
            connack,
            Connack {
                server_version: (version == 5).then_some(5),
                time_diff: 15,
                reason_code: ReasonCode::Success,
                server_key: SERVER_PUB.into(),
                salt: SALT.into(),
                node_id: if version == 5 { 1 } else { 0 },
            }
        );
        assert_both_directions(codec(version), Packet::Connack(connack.clone()), &hex(expected));

        let (negotiated, client_cipher) = ClientHandshake::new(client_keys(), version).finish(&connack).unwrap();
        assert_eq!(negotiated.get(), version);
        assert_eq!(client_cipher, server_cipher);
    }
}

fn send() -> Send {
    Send {
        flags: HeaderFlags { red_dot: true, ..HeaderFlags::default() },
        client_seq: 1,
        client_msg_no: "cmn1".into(),
        channel_id: "u2".into(),
        channel_type: 1,
        expire: 0,
        msg_key: SEND_MSG_KEY.into(),
        payload: Bytes::from_static(ENC_PAYLOAD.as_bytes()),
        ..Send::default()
    }
}

#[test]
fn send_v5_and_v2() {
    for (version, len, expire) in [(5, "62", "00000000"), (2, "5e", "")] {
        let expected = hex(&format!(
            "32 {len} 00 00000001 0004636d6e31 00027532 01 {expire} 0020{} {}",
            ascii_hex(SEND_MSG_KEY),
            ascii_hex(ENC_PAYLOAD)
        ));
        assert_both_directions(codec(version), Packet::Send(send()), &expected);
    }
}

#[test]
fn send_is_sealed_by_the_client_and_opened_by_the_server() {
    let mut sealed = Send { msg_key: String::new(), payload: Bytes::new(), ..send() };
    cipher().seal_send(&mut sealed, PLAINTEXT);
    assert_eq!(sealed.payload.as_ref(), ENC_PAYLOAD.as_bytes());
    assert_eq!(sealed.msg_key, SEND_MSG_KEY);
    let server_side = server_keys().session(CLIENT_PUB, SALT).unwrap();
    assert_eq!(server_side.open_send(&send()).unwrap(), PLAINTEXT);
}

#[test]
fn sendack() {
    let ack = Sendack {
        flags: HeaderFlags::default(),
        message_id: MESSAGE_ID,
        client_seq: 1,
        message_seq: 7,
        reason_code: ReasonCode::Success,
    };
    for version in [2, 5] {
        assert_both_directions(
            codec(version),
            Packet::Sendack(ack.clone()),
            &hex("40 11 112210f47de98115 00000001 00000007 01"),
        );
    }
}

fn recv() -> Recv {
    Recv {
        flags: HeaderFlags { red_dot: true, ..HeaderFlags::default() },
        msg_key: RECV_MSG_KEY.into(),
        from_uid: "u1".into(),
        channel_id: "u1".into(),
        channel_type: 1,
        client_msg_no: "cmn1".into(),
        message_id: MESSAGE_ID,
        message_seq: 7,
        timestamp: 1_700_000_000,
        payload: Bytes::from_static(ENC_PAYLOAD.as_bytes()),
        ..Recv::default()
    }
}

#[test]
fn recv_v5_and_v2() {
    for (version, len, expire) in [(5, "72", "00000000"), (2, "6e", "")] {
        let expected = hex(&format!(
            "52 {len} 00 0020{} 00027531 00027531 01 {expire} 0004636d6e31 112210f47de98115 00000007 6553f100 {}",
            ascii_hex(RECV_MSG_KEY),
            ascii_hex(ENC_PAYLOAD)
        ));
        assert_both_directions(codec(version), Packet::Recv(recv()), &expected);
    }
}

#[test]
fn recv_is_sealed_by_the_server_and_opened_by_the_client() {
    let mut sealed = Recv { msg_key: String::new(), payload: Bytes::new(), ..recv() };
    server_keys().session(CLIENT_PUB, SALT).unwrap().seal_recv(&mut sealed, PLAINTEXT);
    assert_eq!(sealed.payload.as_ref(), ENC_PAYLOAD.as_bytes());
    assert_eq!(sealed.msg_key, RECV_MSG_KEY);
    assert_eq!(cipher().open_recv(&recv()).unwrap(), PLAINTEXT);
}

#[test]
fn recvack_ping_pong_disconnect() {
    for version in [2, 5] {
        let c = codec(version);
        assert_both_directions(
            c,
            Packet::Recvack(Recvack { flags: HeaderFlags::default(), message_id: MESSAGE_ID, message_seq: 7 }),
            &hex("60 0c 112210f47de98115 00000007"),
        );
        assert_both_directions(c, Packet::Ping, &[0x70]);
        assert_both_directions(c, Packet::Pong, &[0x80]);
        assert_both_directions(
            c,
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ConnectKick,
                reason: "login in other device".into(),
            }),
            &hex(&format!("90 18 0c 0015 {}", ascii_hex("login in other device"))),
        );
    }
}
