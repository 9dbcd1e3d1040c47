//! A thousand connections that never read while messages flow to them: the node's
//! memory stays within its held-bytes budget (they are closed as slow readers once the
//! node is over it), and a client that reads is served every message, in order.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, b64};
use hongyan_proto::{Packet, ReasonCode, Recvack, device_flag};
use hongyan_testkit::{Client, Login};
use serde_json::json;

const SLOW: usize = 1_000;
const MESSAGES: usize = 256;
const PAYLOAD: usize = 4 * 1024;

/// This process's resident memory.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Samples the resident memory until stopped; the peak.
fn watch_rss() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_read_cost_bounded_memory_and_stop_nobody() {
    let server = TestServer::start_with(|c| {
        c.gateway.max_held_bytes = 16 << 20;
        c.gateway.held_share_bytes = 128 << 10;
    })
    .await;
    let target = server.tcp();
    let mut members: Vec<String> = (0..SLOW).map(|i| format!("slow-{i}")).collect();
    members.push("watcher".into());
    for uid in &members {
        server.register(uid, "t", device_flag::APP, 1).await;
    }
    let (status, _) =
        server.post("/channel", json!({"channel_id": "flood", "channel_type": 2, "subscribers": members})).await;
    assert_eq!(status, 200);

    // A thousand logins that will never read again, from several source addresses.
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let source = format!("127.0.3.{}", 1 + i % 100).parse().unwrap();
        let uid = format!("slow-{i}");
        let login = Login { uid: &uid, token: "t", device_flag: device_flag::APP, device_id: "d", version: 5 };
        let (client, connack) = Client::connect_from(&target, Some(source), login).await.unwrap();
        assert_eq!(connack.reason_code, ReasonCode::Success);
        slow.push(client);
    }
    // One that reads and acknowledges everything.
    let (mut watcher, _) = Client::connect(&target, "watcher", "t", device_flag::APP, "d", 5).await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::with_capacity(MESSAGES);
        while seqs.len() < MESSAGES {
            match watcher.recv_within(Duration::from_secs(30)).await.unwrap() {
                Packet::Recv(recv) => {
                    let ack = Recvack { flags: recv.flags, message_id: recv.message_id, message_seq: recv.message_seq };
                    watcher.send(&Packet::Recvack(ack)).await.unwrap();
                    seqs.push(recv.message_seq);
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Packet::Pong => {}
                other => panic!("the watcher got {other:?}"),
            }
        }
        seqs
    });

    let idle = rss_bytes();
    let (stop, peak) = watch_rss();
    let payload = b64(&"x".repeat(PAYLOAD));
    for i in 0..MESSAGES {
        let body = json!({"from_uid": "watcher", "channel_id": "flood", "channel_type": 2,
            "client_msg_no": format!("flood-{i}"), "payload": payload});
        let (status, answer) = server.post("/message/send", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let seqs = tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();

    // The reader was served every message, in order.
    assert_eq!(seqs, (1..=MESSAGES as u32).collect::<Vec<_>>());
    // Without the node budget the never-read frames pile up (256 × 4 KiB for each of a
    // thousand connections: about 1 GiB); with it the node holds about its budget plus
    // one share per connection.
    let growth = peak.saturating_sub(idle);
    eprintln!("resident memory: {} MiB idle, {} MiB peak", idle >> 20, peak >> 20);
    assert!(growth < 256 << 20, "resident memory grew by {} MiB", growth >> 20);
    let metrics = server.metrics().await;
    let closed = metrics
        .lines()
        .find(|l| l.starts_with("hongyan_gateway_disconnects_total{reason=\"slow_reader\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(closed >= (SLOW / 2) as f64, "only {closed} slow readers were closed:\n{metrics}");

    // A new login is served normally afterwards.
    let (mut late, connack) = Client::connect(&target, "watcher", "t", device_flag::APP, "d2", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let ack = common::send_text(&mut late, ("flood", 2), 1, "late-1", "after the flood", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.message_seq, MESSAGES as u32 + 1);
    drop(slow);
    server.stop().await;
}
