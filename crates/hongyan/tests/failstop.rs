//! One client cannot stop message storage, and when storage does fail the node says so
//! and stops taking work (fail-stop), on the real embedded engine.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Hooked, TestServer, WriteHook, b64, receive, send_text};
use hongyan_proto::{HeaderFlags, ReasonCode, device_flag};
use hongyan_store::{Order, StoreError};
use hongyan_testkit::Client;
use serde_json::json;

fn person_chat(a: &str, b: &str) -> hongyan_store::ChannelKey {
    hongyan_store::ChannelKey::new(hongyan_core::channel::person_channel_id(a, b), 1)
}

/// Sends a sealed SEND to bob whose client_msg_no is `cmn`, encoded by hand (a v5 SEND
/// with setting 0 starts `[setting][client_seq u32][len u16][client_msg_no]`), and
/// waits for its SENDACK.
async fn send_raw_with_client_msg_no(client: &mut Client, client_seq: u32, cmn: &str) -> hongyan_proto::Sendack {
    let mut packet = hongyan_proto::Send {
        client_seq,
        client_msg_no: cmn.into(),
        channel_id: "bob".into(),
        channel_type: 1,
        ..hongyan_proto::Send::default()
    };
    client.cipher.as_ref().unwrap().seal_send(&mut packet, b"hostile");
    let mut short = packet.clone();
    short.client_msg_no = "X".into();
    let codec = hongyan_proto::Codec::new(client.version());
    let frame = codec.encode_to_bytes(&hongyan_proto::Packet::Send(short)).unwrap();
    let (mut at, mut shift, mut remaining) = (1, 0, 0usize);
    loop {
        let b = frame[at];
        remaining |= usize::from(b & 0x7f) << shift;
        at += 1;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = &frame[at..];
    assert_eq!((body.len(), &body[5..8]), (remaining, &[0, 1, b'X'][..]), "the layout this helper assumes");
    let mut new_body = body[..5].to_vec();
    new_body.extend_from_slice(&(cmn.len() as u16).to_be_bytes());
    new_body.extend_from_slice(cmn.as_bytes());
    new_body.extend_from_slice(&body[8..]);
    let mut raw = vec![frame[0]];
    let mut len = new_body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        raw.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    raw.extend_from_slice(&new_body);
    client.send_raw(bytes::Bytes::from(raw)).await.unwrap();
    loop {
        match client.recv().await.unwrap() {
            hongyan_proto::Packet::Sendack(ack) if ack.client_seq == client_seq => return ack,
            hongyan_proto::Packet::Recv(_) => continue,
            other => panic!("expected SENDACK, got {other:?}"),
        }
    }
}

async fn online(server: &TestServer, uid: &str) -> Client {
    let (client, connack) = Client::connect(&server.tcp(), uid, "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

/// The one-packet outage: a SEND whose client_msg_no is as long as the protocol allows
/// (65,535 bytes) used to make the engine panic in the log writer, after which every
/// send failed. Now it is refused with a reason code and storage carries on.
#[tokio::test]
async fn a_huge_client_msg_no_is_refused_and_storage_carries_on() {
    let server = TestServer::start().await;
    for uid in ["alice", "bob"] {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
    let mut alice = online(&server, "alice").await;
    let mut bob = online(&server, "bob").await;
    let flags = HeaderFlags::default();

    // Our encoder refuses strings over 32,767 bytes, as the SDKs do; a hostile client
    // writes the frame by hand, with the u16 length the decoder accepts.
    let ack = send_raw_with_client_msg_no(&mut alice, 1, &"n".repeat(usize::from(u16::MAX))).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::NotAllowSend, 0), "65,535-byte client_msg_no");
    let ack = send_text(&mut alice, ("bob", 1), 2, &"n".repeat(256), "too long", flags).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::NotAllowSend, 0), "256-byte client_msg_no");
    let longest = "n".repeat(255);
    let ack = send_text(&mut alice, ("bob", 1), 3, &longest, "just fits", flags).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 1));
    let (recv, text) = receive(&mut bob).await;
    assert_eq!((text.as_str(), recv.client_msg_no.as_str()), ("just fits", longest.as_str()));

    // HTTP sends go through the same rule and still work.
    let body = |cmn: &str| json!({"from_uid": "bob", "channel_id": "alice", "channel_type": 1, "client_msg_no": cmn, "payload": b64("hi")});
    let (status, answer) = server.post("/message/send", body(&"h".repeat(70_000))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["msg"].as_str().unwrap().starts_with("client_msg_no:"), "{answer}");
    let (status, answer) = server.post("/message/send", body("h-1")).await;
    assert_eq!((status, answer["data"]["message_seq"].as_u64()), (200, Some(2)), "{answer}");
    let ack = send_text(&mut alice, ("bob", 1), 4, "m-4", "after", flags).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 3));

    assert_eq!(server.get("/health").await, (200, json!({"status": "ok"})));
    let stored = server.server.log.read(&person_chat("alice", "bob"), 1, 0, 10, Order::Ascending);
    assert_eq!(stored.unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    server.stop().await;
}

/// A CONNECT whose device id is longer than an id is refused like a bad uid.
#[tokio::test]
async fn a_huge_device_id_is_refused_at_login() {
    let server = TestServer::start().await;
    server.register("alice", "t", device_flag::APP, 0).await;
    let device = "d".repeat(256);
    let (_, connack) = Client::connect(&server.tcp(), "alice", "t", device_flag::APP, &device, 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::AuthFail);
    let device = "d".repeat(255);
    let (_, connack) = Client::connect(&server.tcp(), "alice", "t", device_flag::APP, &device, 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    server.stop().await;
}

#[tokio::test]
async fn after_a_storage_failure_the_node_refuses_work_reports_it_and_stops() {
    // The embedded engine with a switch that makes its writes fail as a full disk does.
    let broken = Arc::new(AtomicBool::new(false));
    let full = broken.clone();
    let hook: WriteHook = Box::new(move |write, _, _| {
        if full.load(Ordering::Relaxed) {
            return Err(StoreError::Engine("No space left on device (os error 28)".into()));
        }
        write()
    });
    let server = TestServer::start_on(move |dir| Hooked::open(dir, hook), |c| c.storage.fail_stop_grace_secs = 1).await;
    for uid in ["alice", "bob"] {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
    let mut alice = online(&server, "alice").await;
    let flags = HeaderFlags::default();
    let ack = send_text(&mut alice, ("bob", 1), 1, "m-1", "stored", flags).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);

    broken.store(true, Ordering::Relaxed);
    let ack = send_text(&mut alice, ("bob", 1), 2, "m-2", "lost disk", flags).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::SystemError, 0), "never acknowledged");
    let ack = send_text(&mut alice, ("bob", 1), 3, "m-3", "after", flags).await;
    assert_eq!(ack.reason_code, ReasonCode::SystemError, "every later send is refused too");

    // Health, on the API and the manager listener, tells the truth with the reason.
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (503, Some("unhealthy")), "{health}");
    assert!(health["reason"].as_str().unwrap().contains("No space left"), "{health}");
    let manager = reqwest::get(format!("http://{}/health", server.server.manager_addr)).await.unwrap();
    assert_eq!(manager.status().as_u16(), 503);
    let (status, varz) = server.get("/varz").await;
    assert_eq!((status, varz["storage_failed"].as_bool()), (200, Some(true)), "{varz}");
    assert!(varz["storage_failure"].as_str().unwrap().contains("No space left"), "{varz}");
    assert!(server.metrics().await.contains("hongyan_storage_failed 1"));

    // HTTP work is refused with the reason; logins are refused with a reason code.
    let send = json!({"from_uid": "bob", "channel_id": "alice", "channel_type": 1, "payload": b64("x")});
    let (status, answer) = server.post("/message/send", send).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["msg"].as_str().unwrap().contains("No space left"), "{answer}");
    let (status, _) = server.post("/user/token", json!({"uid": "carol", "token": "t", "device_flag": 1})).await;
    assert_eq!(status, 503);
    let (_, connack) = Client::connect(&server.tcp(), "bob", "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::SystemError);

    // The process is told to stop once the grace period is over.
    let failure = tokio::time::timeout(Duration::from_secs(10), server.server.fail_stopped()).await.unwrap();
    assert!(failure.reason.contains("No space left"));
    // Nothing unacknowledged was stored.
    let stored = server.server.log.read(&person_chat("alice", "bob"), 1, 0, 10, Order::Ascending);
    assert_eq!(stored.unwrap().len(), 1);
    server.stop().await;
}
