//! Per-message cost of the protocol: decode a SEND, encode a RECV, and the crypto a
//! server does for every message (verify + decrypt one SEND, encrypt + sign one RECV per
//! recipient connection), with a 100-byte payload as in the standard benchmark shapes.
//!
//! Run: `cargo bench -p hongyan-proto --bench codec`

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hongyan_proto::{Codec, HeaderFlags, KeyPair, Packet, ProtocolVersion, Recv, Send, SessionCipher};

const PAYLOAD: &[u8; 100] =
    br#"{"type":1,"content":"a one-hundred-byte chat message, about as long as a typical line of chat text"}"#;

fn cipher() -> SessionCipher {
    let client = KeyPair::from_secret([1; 32]);
    let server = KeyPair::from_secret([2; 32]);
    client.session(&server.public_key_base64(), "abcdefghijklmnop").unwrap()
}

fn sealed_send(cipher: &SessionCipher) -> Send {
    let mut send = Send {
        flags: HeaderFlags { red_dot: true, ..HeaderFlags::default() },
        client_seq: 42,
        client_msg_no: "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e_7f3a_3".into(),
        channel_id: "group-000123".into(),
        channel_type: 2,
        ..Send::default()
    };
    cipher.seal_send(&mut send, PAYLOAD);
    send
}

fn recv_for(send: &Send) -> Recv {
    Recv {
        flags: send.flags,
        setting: send.setting,
        from_uid: "user-000042".into(),
        channel_id: send.channel_id.clone(),
        channel_type: send.channel_type,
        client_msg_no: send.client_msg_no.clone(),
        message_id: 1_234_567_890_123_456_789,
        message_seq: 1_000_001,
        timestamp: 1_700_000_000,
        ..Recv::default()
    }
}

fn benches(c: &mut Criterion) {
    let cipher = cipher();
    let codec = Codec::new(ProtocolVersion::V5);
    let send = sealed_send(&cipher);
    let send_wire = codec.encode_to_bytes(&Packet::Send(send.clone())).unwrap();
    let mut recv = recv_for(&send);
    cipher.seal_recv(&mut recv, PAYLOAD);
    let recv_packet = Packet::Recv(recv);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode SEND (100 B payload)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&send_wire[..]);
            black_box(codec.decode(&mut buf).unwrap())
        })
    });
    g.bench_function("encode RECV (100 B payload)", |b| {
        let mut dst = BytesMut::with_capacity(512);
        b.iter(|| {
            dst.clear();
            codec.encode(black_box(&recv_packet), &mut dst).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Elements(1));
    g.bench_function("SEND verify + decrypt", |b| b.iter(|| black_box(cipher.open_send(black_box(&send)).unwrap())));
    g.bench_function("RECV encrypt + msgKey", |b| {
        let template = recv_for(&send);
        b.iter(|| {
            let mut recv = template.clone();
            recv.payload = Bytes::new();
            cipher.seal_recv(&mut recv, black_box(PAYLOAD));
            black_box(recv)
        })
    });
    g.bench_function("SEND verify + RECV produce + encode", |b| {
        let template = recv_for(&send);
        let mut dst = BytesMut::with_capacity(512);
        b.iter(|| {
            let plain = cipher.open_send(black_box(&send)).unwrap();
            let mut recv = template.clone();
            cipher.seal_recv(&mut recv, &plain);
            dst.clear();
            codec.encode(&Packet::Recv(recv), &mut dst).unwrap();
        })
    });
    g.finish();
}

criterion_group!(proto, benches);
criterion_main!(proto);
