//! Before login a client is a stranger: it gets a small frame, one deadline for the
//! whole set-up, and a bounded share of the server, in total and per address. After
//! login a uid holds a bounded number of connections.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, connect_packet};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};
use tokio::io::AsyncWriteExt;

const SHORT: Duration = Duration::from_secs(3);

async fn online(target: &Target, uid: &str, device: &str) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", device_flag::APP, device, 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid}/{device}");
    client
}

/// What the server says to a CONNECT sent on `client`.
async fn connack_of(client: &mut Client) -> ReasonCode {
    match client.recv().await.unwrap() {
        Packet::Connack(c) => c.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn before_login_a_frame_may_be_no_larger_than_a_connect_needs() {
    let server = TestServer::start().await;
    server.register("ann", "t", device_flag::APP, 0).await;
    // Announcing 8 KiB (over the 4 KiB login cap, under the 1 MiB cap after login): closed.
    let mut c = Client::open(&server.tcp()).await.unwrap();
    c.send_raw(Bytes::from_static(&[0x10, 0x80, 0x40])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();
    // A CONNECT with a 5 KiB token is refused the same way, whatever the token.
    let mut c = Client::open(&server.tcp()).await.unwrap();
    c.send(&Packet::Connect(connect_packet("ann", &"t".repeat(5000), device_flag::APP, "d", 5))).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();
    // Over WebSocket, a message larger than a login needs closes the connection before
    // the WebSocket layer has buffered it.
    let mut c = Client::open(&server.ws()).await.unwrap();
    c.send_raw(Bytes::from(vec![0x10; 64 * 1024])).await.unwrap();
    c.expect_closed(SHORT).await.unwrap();
    // After login, frames up to the ordinary cap are fine, over WS too.
    let mut ann = online(&server.ws(), "ann", "d").await;
    let text = "x".repeat(200 * 1024);
    let ack = common::send_text(&mut ann, ("ann", 1), 1, "big", &text, Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_gateway_handshakes_total{result=\"oversized\"}"), "{metrics}");
    server.stop().await;
}

/// The deadline runs from accept over every phase: a WebSocket upgrade and a CONNECT
/// that each come in time, but together too late, do not log in.
#[tokio::test]
async fn one_deadline_covers_the_upgrade_and_the_connect() {
    let server = TestServer::start_with(|c| c.gateway.auth_timeout_ms = 1_000).await;
    server.register("bo", "t", device_flag::APP, 0).await;
    let addr = server.server.gateway.ws_addr.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answer = hongyan_testkit::read_some(&mut tcp, SHORT).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 101"), "the upgrade itself was in time");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 1.2 s after accept, a valid CONNECT: each phase took 0.6 s, under the 1 s limit,
    // but the login as a whole is late. (With a timeout per phase it would log in.)
    let connect = hongyan_proto::Codec::default()
        .encode_to_bytes(&Packet::Connect(connect_packet("bo", "t", device_flag::APP, "d", 5)))
        .unwrap();
    let _ = tcp.write_all(&masked_binary_frame(&connect)).await;
    let answer = hongyan_testkit::read_some(&mut tcp, SHORT).await;
    // A close frame (0x88), an empty read or a reset: anything but a CONNACK.
    assert!(
        matches!(&answer, Ok(b) if b.is_empty() || b[0] == 0x88) || answer.is_err(),
        "expected the connection closed, got {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1_000 + 2_500), "closed at the deadline, not later");
    server.stop().await;
}

/// `payload` as one masked binary WebSocket frame, as a client sends it.
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x82];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn connections_not_logged_in_are_capped_per_address_and_in_total() {
    let server = TestServer::start_with(|c| {
        c.gateway.max_unauthenticated_per_ip = 3;
        c.gateway.max_unauthenticated = 5;
    })
    .await;
    server.register("cy", "t", device_flag::APP, 0).await;
    let target = server.tcp();
    // Three strangers from 127.0.0.1 hold their places...
    let mut strangers = Vec::new();
    for _ in 0..3 {
        strangers.push(Client::open(&target).await.unwrap());
    }
    // ...so a fourth from the same address is closed at once, before it says anything,
    // while another address still gets in.
    let mut fourth = Client::open(&target).await.unwrap();
    fourth.expect_closed(SHORT).await.unwrap();
    let other = "127.0.0.2".parse().unwrap();
    let mut elsewhere = Client::open_from(&target, Some(other)).await.unwrap();
    elsewhere.send(&Packet::Connect(connect_packet("cy", "t", device_flag::APP, "e", 5))).await.unwrap();
    assert_eq!(connack_of(&mut elsewhere).await, ReasonCode::Success);
    // One of the three logs in and gives its place back.
    let mut first = strangers.remove(0);
    first.send(&Packet::Connect(connect_packet("cy", "t", device_flag::APP, "f", 5))).await.unwrap();
    assert_eq!(connack_of(&mut first).await, ReasonCode::Success);
    let mut next = Client::open(&target).await.unwrap();
    next.send(&Packet::Connect(connect_packet("cy", "t", device_flag::APP, "n", 5))).await.unwrap();
    assert_eq!(connack_of(&mut next).await, ReasonCode::Success);
    // The total: two strangers are waiting; three more from other addresses fill it.
    let mut more = Vec::new();
    for i in 3..6 {
        more.push(Client::open_from(&target, Some(format!("127.0.0.{i}").parse().unwrap())).await.unwrap());
    }
    let mut over = Client::open_from(&target, Some("127.0.0.9".parse().unwrap())).await.unwrap();
    over.expect_closed(SHORT).await.unwrap();
    let metrics = server.metrics().await;
    for why in ["too_many_unauthenticated_per_ip", "too_many_unauthenticated"] {
        assert!(metrics.contains(&format!("hongyan_gateway_handshakes_total{{result=\"{why}\"}}")), "{why}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_uid_holds_a_bounded_number_of_connections() {
    let server = TestServer::start_with(|c| c.gateway.max_connections_per_uid = 2).await;
    server.register("di", "t", device_flag::APP, 0).await;
    let target = server.tcp();
    let _a = online(&target, "di", "a").await;
    let _b = online(&target, "di", "b").await;
    let (mut c, connack) = Client::connect(&target, "di", "t", device_flag::APP, "c", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::RateLimit);
    c.expect_closed(SHORT).await.unwrap();
    // A device reconnecting replaces its old connection, so it is not over the cap.
    let _b_again = online(&target, "di", "b").await;
    assert_eq!(server.server.registry.connections("di").len(), 2);
    server.stop().await;
}

/// Hundreds of connections announce a 1 MiB frame and stall: each is closed at once,
/// costs no buffer, and a real client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_announcements_costs_nothing_and_stops_nobody() {
    let server = TestServer::start().await;
    server.register("eve", "t", device_flag::APP, 0).await;
    let target = server.tcp();
    let mut stalled = Vec::new();
    for i in 0..400 {
        let source = format!("127.0.1.{}", 1 + i % 200).parse().unwrap();
        let mut c = Client::open_from(&target, Some(source)).await.unwrap();
        c.send_raw(Bytes::from_static(&[0x10, 0x80, 0x80, 0x40])).await.unwrap();
        stalled.push(c);
    }
    let mut eve = online(&target, "eve", "d").await;
    let ack = common::send_text(&mut eve, ("eve", 1), 1, "m", "still here", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    for c in &mut stalled {
        c.expect_closed(SHORT).await.unwrap();
    }
    server.stop().await;
}
