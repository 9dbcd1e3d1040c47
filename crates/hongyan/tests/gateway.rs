//! The gateway over real sockets: handshakes at every version on TCP, WS and WSS, every
//! way a login fails, heartbeats, idle timeouts, kicks, WebSocket framing, PROXY
//! headers, metrics and shutdown.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::TestServer;
use hongyan_proto::{Codec, Connect, Packet, ProtocolVersion, ReasonCode, device_flag};
use hongyan_testkit::{Client, ClientError, Target};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const SHORT: Duration = Duration::from_millis(1500);

async fn login(
    target: &Target,
    uid: &str,
    token: &str,
    flag: u8,
    device: &str,
    version: u8,
) -> (Client, hongyan_proto::Connack) {
    Client::connect(target, uid, token, flag, device, version).await.unwrap()
}

/// Logs in and asserts success.
async fn online(target: &Target, uid: &str, token: &str, flag: u8, device: &str) -> Client {
    let (client, connack) = login(target, uid, token, flag, device, 5).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client
}

async fn ping(client: &mut Client) -> Result<(), ClientError> {
    client.send(&Packet::Ping).await?;
    match client.recv_within(SHORT).await? {
        Packet::Pong => Ok(()),
        other => panic!("expected PONG, got {other:?}"),
    }
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn handshake_at_every_version_over_tcp_ws_and_wss() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let server = TestServer::start_with(|c| {
        c.gateway.wss_addr = "127.0.0.1:0".into();
        c.gateway.tls_cert = Some(cert);
        c.gateway.tls_key = Some(key);
    })
    .await;
    server.register("alice", "secret", device_flag::APP, 0).await;
    let mut held = Vec::new();
    for (t, target) in [server.tcp(), server.ws(), server.wss()].into_iter().enumerate() {
        for version in 2..=5u8 {
            let device = format!("d{t}-{version}");
            let (mut client, connack) = login(&target, "alice", "secret", device_flag::APP, &device, version).await;
            assert_eq!(connack.reason_code, ReasonCode::Success, "{target:?} v{version}");
            assert_eq!(connack.server_version, (version > 3).then_some(version), "{target:?} v{version}");
            assert_eq!(connack.node_id, if version >= 4 { 1001 } else { 0 }, "{target:?} v{version}");
            assert_eq!(connack.salt.len(), 16);
            assert!(client.cipher.is_some(), "both sides derived a key");
            assert_eq!(client.version().get(), version);
            ping(&mut client).await.unwrap();
            held.push(client);
        }
    }
    let online = server.server.registry.connections("alice");
    assert_eq!(online.len(), 12, "slaves with different device ids coexist");
    let transports: std::collections::HashSet<_> = online.iter().map(|c| c.transport.label()).collect();
    assert_eq!(transports.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn every_refusal_is_a_connack_then_a_close() {
    let server = TestServer::start().await;
    server.register("bob", "right", device_flag::WEB, 0).await;
    server.register("banned", "t", device_flag::APP, 0).await;
    let (status, _) = server.post("/channel/info", json!({"channel_id": "banned", "channel_type": 1, "ban": 1})).await;
    assert_eq!(status, 200);

    let cases = [
        ("bob", "wrong", device_flag::WEB, ReasonCode::AuthFail),
        ("bob", "right", device_flag::APP, ReasonCode::AuthFail), // token is per device flag
        ("bob", "", device_flag::WEB, ReasonCode::AuthFail),
        ("nobody", "x", device_flag::WEB, ReasonCode::AuthFail),
        ("a@b", "x", device_flag::WEB, ReasonCode::AuthFail),
        ("", "x", device_flag::WEB, ReasonCode::AuthFail),
        ("banned", "t", device_flag::APP, ReasonCode::Ban),
        ("____system", "x", device_flag::APP, ReasonCode::AuthFail),
    ];
    for target in [server.tcp(), server.ws()] {
        for (uid, token, flag, reason) in cases {
            let (mut client, connack) = login(&target, uid, token, flag, "d", 2).await;
            assert_eq!(connack.reason_code, reason, "{uid}/{token}/{flag} over {target:?}");
            assert!(connack.server_key.is_empty() && connack.salt.is_empty());
            client.expect_closed(SHORT).await.unwrap();
        }
    }
    // A key that is not a key: refused with the reason the SDKs understand.
    let mut raw = Client::open(&server.tcp()).await.unwrap();
    let mut connect =
        Connect { version: 5, device_flag: 1, uid: "bob".into(), token: "right".into(), ..Connect::default() };
    raw.send(&Packet::Connect(connect.clone())).await.unwrap();
    let Packet::Connack(c) = raw.recv().await.unwrap() else { panic!("no CONNACK") };
    assert_eq!(c.reason_code, ReasonCode::ClientKeyIsEmpty);
    let mut raw = Client::open(&server.tcp()).await.unwrap();
    connect.client_key = "bm90IGEga2V5".into();
    raw.send(&Packet::Connect(connect)).await.unwrap();
    let Packet::Connack(c) = raw.recv().await.unwrap() else { panic!("no CONNACK") };
    assert_eq!(c.reason_code, ReasonCode::AuthFail);
    server.stop().await;
}

#[tokio::test]
async fn malformed_unexpected_and_oversized_first_packets_are_closed() {
    let server = TestServer::start_with(|c| c.gateway.max_frame_bytes = 4096).await;
    server.register("carol", "t", device_flag::APP, 0).await;
    let target = server.tcp();

    // Garbage: type 0 is no packet.
    let mut c = Client::open(&target).await.unwrap();
    c.send_raw(Bytes::from_static(&[0x00, 0x01, 0x02])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    // A PING before CONNECT.
    let mut c = Client::open(&target).await.unwrap();
    c.send(&Packet::Ping).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    // A CONNECT whose body ends mid-field.
    let mut c = Client::open(&target).await.unwrap();
    c.send_raw(Bytes::from_static(&[0x10, 0x03, 0x05, 0x01, 0x00])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    // A frame announcing more than the cap.
    let mut c = Client::open(&target).await.unwrap();
    c.send_raw(Bytes::from_static(&[0x10, 0x80, 0x80, 0x40])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    // After login, an oversized frame closes the connection too.
    let mut c = online(&target, "carol", "t", device_flag::APP, "d").await;
    c.send_raw(Bytes::from_static(&[0x30, 0xff, 0xff, 0x7f])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    // So does a packet only servers send.
    let mut c = online(&target, "carol", "t", device_flag::APP, "d2").await;
    c.send(&Packet::Pong).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();

    let metrics = server.metrics().await;
    for result in ["malformed", "not_connect", "oversized", "ok"] {
        assert!(
            metrics.contains(&format!("hongyan_gateway_handshakes_total{{result=\"{result}\"}}")),
            "{result} missing:\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn silent_connections_are_dropped_before_and_after_login() {
    let server = TestServer::start_with(|c| {
        c.gateway.auth_timeout_ms = 300;
        c.gateway.idle_timeout_secs = 1;
    })
    .await;
    server.register("dave", "t", device_flag::APP, 0).await;

    // Connected but never sends CONNECT.
    let mut silent = Client::open(&server.tcp()).await.unwrap();
    silent.expect_closed(Duration::from_secs(2)).await.unwrap();

    // Logged in: PINGs keep it open past the idle timeout; silence closes it.
    let mut pinging = online(&server.ws(), "dave", "t", device_flag::APP, "p").await;
    let mut quiet = online(&server.tcp(), "dave", "t", device_flag::APP, "q").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ping(&mut pinging).await.unwrap();
    }
    quiet.expect_closed(SHORT).await.unwrap();
    assert_eq!(server.server.registry.connections("dave").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn kick_rules_for_master_and_slave_logins() {
    let server = TestServer::start().await;
    server.register("erin", "m", device_flag::APP, 1).await; // master on app
    server.register("erin", "s", device_flag::WEB, 0).await; // slave on web
    let (tcp, ws) = (server.tcp(), server.ws());

    // Master, different device: the old one gets DISCONNECT(ConnectKick), then a close.
    let mut phone1 = online(&tcp, "erin", "m", device_flag::APP, "phone-1").await;
    let mut web1 = online(&ws, "erin", "s", device_flag::WEB, "tab-1").await;
    let mut phone2 = online(&ws, "erin", "m", device_flag::APP, "phone-2").await;
    match phone1.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    phone1.expect_closed(SHORT).await.unwrap();

    // Master, same device id: replaced without a DISCONNECT.
    let mut phone2b = online(&tcp, "erin", "m", device_flag::APP, "phone-2").await;
    phone2.expect_closed(SHORT).await.unwrap();

    // Slaves with different device ids coexist; the same device id replaces.
    let mut web2 = online(&tcp, "erin", "s", device_flag::WEB, "tab-2").await;
    ping(&mut web1).await.unwrap();
    ping(&mut web2).await.unwrap();
    let _web1b = online(&tcp, "erin", "s", device_flag::WEB, "tab-1").await;
    web1.expect_closed(SHORT).await.unwrap();
    ping(&mut phone2b).await.unwrap();
    assert_eq!(server.server.registry.connections("erin").len(), 3);

    // A master token update kicks the device flag's logins.
    server.register("erin", "s2", device_flag::WEB, 1).await;
    match web2.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(server.server.registry.connections("erin").len(), 1, "only the app login is left");

    // device_quit kicks and forgets the token: the next login fails.
    let (status, _) = server.post("/user/device_quit", json!({"uid": "erin", "device_flag": 0})).await;
    assert_eq!(status, 200);
    match phone2b.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    phone2b.expect_closed(SHORT).await.unwrap();
    let (_, connack) = login(&tcp, "erin", "m", device_flag::APP, "phone-3", 5).await;
    assert_eq!(connack.reason_code, ReasonCode::AuthFail);

    // Banning a user kicks every login with DISCONNECT(Ban).
    server.register("frank", "t", device_flag::PC, 0).await;
    let mut pc = online(&tcp, "frank", "t", device_flag::PC, "pc").await;
    server.post("/channel/info", json!({"channel_id": "frank", "channel_type": 1, "ban": 1})).await;
    match pc.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::Ban),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_gateway_kicks_total{kind=\"kicked\"}"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn websocket_is_a_byte_stream_in_and_one_packet_per_message_out() {
    let server = TestServer::start().await;
    server.register("gina", "t", device_flag::WEB, 0).await;
    let ws = server.ws();

    // One CONNECT split across three WebSocket messages.
    let connect = common::connect_packet("gina", "t", device_flag::WEB, "split", 2);
    let wire = Codec::new(ProtocolVersion::V2).encode_to_bytes(&Packet::Connect(connect)).unwrap();
    let mut client = Client::open(&ws).await.unwrap();
    let third = wire.len() / 3;
    client.send_raw(wire.slice(..third)).await.unwrap();
    client.send_raw(wire.slice(third..2 * third)).await.unwrap();
    client.send_raw(wire.slice(2 * third..)).await.unwrap();
    let message = client.recv_ws_message(SHORT).await.unwrap();
    let Some(Packet::Connack(connack)) =
        Codec::new(ProtocolVersion::V2).decode(&mut BytesMut::from(&message[..])).unwrap()
    else {
        panic!("expected CONNACK")
    };
    assert_eq!(connack.reason_code, ReasonCode::Success);

    // Three PINGs in one binary message: three PONGs, each its own message.
    client.send_raw(Bytes::from_static(&[0x70, 0x70, 0x70])).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.recv_ws_message(SHORT).await.unwrap().as_ref(), [0x80]);
    }
    // Text frames feed the same stream ("p" is 0x70, a PING).
    client.send_text(b"pp").await.unwrap();
    for _ in 0..2 {
        assert_eq!(client.recv_ws_message(SHORT).await.unwrap().as_ref(), [0x80]);
    }
    server.stop().await;
}

#[tokio::test]
async fn proxy_protocol_header_gives_the_client_address() {
    let server = TestServer::start_with(|c| c.gateway.proxy_protocol = true).await;
    server.register("hank", "t", device_flag::APP, 0).await;
    let addr = server.server.gateway.tcp_addr.unwrap();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connect = common::connect_packet("hank", "t", device_flag::APP, "px", 5);
    let mut bytes = BytesMut::new();
    bytes.put_slice(b"PROXY TCP4 203.0.113.9 10.0.0.1 40123 5100\r\n");
    Codec::default().encode(&Packet::Connect(connect), &mut bytes).unwrap();
    stream.write_all(&bytes).await.unwrap();
    let answer = hongyan_testkit::read_some(&mut stream, SHORT).await.unwrap();
    let Some(Packet::Connack(c)) = Codec::default().decode(&mut BytesMut::from(&answer[..])).unwrap() else {
        panic!("expected CONNACK, got {answer:?}")
    };
    assert_eq!(c.reason_code, ReasonCode::Success);
    let conns = server.server.registry.connections("hank");
    assert_eq!(conns[0].remote.to_string(), "203.0.113.9:40123");

    // Without a header the connection is refused.
    let mut plain = Client::open(&server.tcp()).await.unwrap();
    plain.send(&Packet::Ping).await.unwrap();
    plain.expect_closed(SHORT).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection() {
    let server = TestServer::start().await;
    server.register("ivy", "t", device_flag::APP, 0).await;
    let mut a = online(&server.tcp(), "ivy", "t", device_flag::APP, "a").await;
    let mut b = online(&server.ws(), "ivy", "t", device_flag::APP, "b").await;
    let registry = server.server.registry.clone();
    server.stop().await;
    a.expect_closed(SHORT).await.unwrap();
    b.expect_closed(SHORT).await.unwrap();
    assert!(registry.is_empty());
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    let first = hongyan::start(config.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/user/token", first.api_addr);
    let body = json!({"uid": "jo", "token": "kept", "device_flag": 0, "device_level": 1});
    assert_eq!(http.post(url).json(&body).send().await.unwrap().status(), 200);
    first.shutdown();
    first.wait().await;
    drop(first);

    let second = hongyan::start(config).await.unwrap();
    let target = Target::Tcp(second.gateway.tcp_addr.unwrap());
    let (_, connack) = login(&target, "jo", "kept", device_flag::APP, "d", 5).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    second.shutdown();
    second.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_held_authenticated() {
    const N: usize = 5_000;
    // One uid on 5,000 devices: far over the default per-uid cap, raised here.
    let server = TestServer::start_with(|c| {
        c.gateway.idle_timeout_secs = 600;
        c.gateway.max_connections_per_uid = N;
    })
    .await;
    server.register("many", "t", device_flag::APP, 0).await;
    let target = server.tcp();
    let mut clients = Vec::with_capacity(N);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..N {
        let target = target.clone();
        pending.spawn(async move { online(&target, "many", "t", device_flag::APP, &format!("dev-{i}")).await });
        if pending.len() >= 64 {
            clients.push(pending.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(c) = pending.join_next().await {
        clients.push(c.unwrap());
    }
    assert_eq!(clients.len(), N);
    assert_eq!(server.server.registry.len(), N);
    // Every one of them is still alive and answering.
    for c in clients.iter_mut().step_by(97) {
        ping(c).await.unwrap();
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_gateway_connections{transport=\"tcp\"}"), "{metrics}");
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn forwarded_for_gives_the_client_address_when_trusted() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start_with(|c| c.gateway.trust_forwarded_for = true).await;
    server.register("kim", "t", device_flag::WEB, 0).await;
    let addr = server.server.gateway.ws_addr.unwrap();
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", "198.51.100.7, 10.0.0.2".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();

    let connect = common::connect_packet("kim", "t", device_flag::WEB, "xff", 5);
    let frame = Codec::default().encode_to_bytes(&Packet::Connect(connect)).unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(frame)).await.unwrap();
    let reply = tokio::time::timeout(SHORT, ws.next()).await.unwrap().unwrap().unwrap().into_data();
    let Some(Packet::Connack(c)) = Codec::default().decode(&mut BytesMut::from(&reply[..])).unwrap() else {
        panic!("expected CONNACK")
    };
    assert_eq!(c.reason_code, ReasonCode::Success);
    assert_eq!(server.server.registry.connections("kim")[0].remote.ip().to_string(), "198.51.100.7");
    server.stop().await;
}

/// A client that keeps sending but never reads cannot make the server buffer without
/// bound: once a write stalls past the write timeout the connection is closed.
#[tokio::test]
async fn a_peer_that_does_not_read_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start_with(|c| c.gateway.write_timeout_ms = 500).await;
    server.register("lee", "t", device_flag::APP, 0).await;
    let mut stream = tokio::net::TcpStream::connect(server.server.gateway.tcp_addr.unwrap()).await.unwrap();
    let connect = common::connect_packet("lee", "t", device_flag::APP, "slow", 5);
    stream.write_all(&Codec::default().encode_to_bytes(&Packet::Connect(connect)).unwrap()).await.unwrap();
    let mut connack = [0u8; 2];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[0] >> 4, 2, "CONNACK");
    assert_eq!(server.server.registry.connections("lee").len(), 1);

    // Flood PINGs and never read a PONG: the server's replies back up in the socket
    // buffers until its writes stall.
    let (_read_half, mut write_half) = stream.into_split();
    let flood = tokio::spawn(async move {
        let chunk = vec![0x70u8; 64 * 1024];
        let mut sent = 0usize;
        while write_half.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
            if sent > 512 * 1024 * 1024 {
                break;
            }
        }
        sent
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !server.server.registry.connections("lee").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "a peer that never reads was not disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.abort();
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_gateway_disconnects_total{reason=\"write_failed\"}"), "{metrics}");
    server.stop().await;
}
