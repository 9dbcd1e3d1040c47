//! Overload slows senders down instead of growing memory: a connection has a bounded
//! number of SENDs in flight, and all connections together a bounded number of bytes
//! of messages between their sockets and the recipients. Storage is held up here by a
//! gate in front of the real embedded engine.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Hooked, TestServer, WriteHook, writes_a_message};
use hongyan_proto::{Packet, ReasonCode, Send, device_flag};
use hongyan_store::Order;
use hongyan_testkit::Client;

/// A gate storage writes can be held at.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Set while a write is held.
    holding: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    /// Waits while the gate is closed.
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        self.holding.store(true, std::sync::atomic::Ordering::SeqCst);
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.holding.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn holding(&self) -> bool {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Opens the gate when the test ends, however it ends: a failed assertion must not
/// leave the log's writer (and so the test's shutdown) waiting forever.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// A server whose message-log writes wait at the gate before reaching the engine.
async fn gated_server(tweak: impl FnOnce(&mut hongyan::Config)) -> (TestServer, Arc<Gate>, OpenOnDrop) {
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let hook: WriteHook = Box::new(move |write, writes, _| {
        if writes_a_message(writes) {
            held.pass();
        }
        write()
    });
    let server = TestServer::start_on(move |dir| Hooked::open(dir, hook), tweak).await;
    (server, gate.clone(), OpenOnDrop(gate))
}

/// Waits (polling) until `condition` holds, failing after 10 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sealed SENDs to `to` with `payload_len`-byte payloads, encoded for `client`.
fn sends(client: &Client, to: &str, count: u32, payload_len: usize) -> Vec<bytes::Bytes> {
    let codec = hongyan_proto::Codec::new(client.version());
    (1..=count)
        .map(|seq| {
            let mut packet = Send {
                client_seq: seq,
                client_msg_no: format!("m-{seq}"),
                channel_id: to.into(),
                channel_type: 1,
                ..Send::default()
            };
            client.cipher.as_ref().unwrap().seal_send(&mut packet, &vec![b'x'; payload_len]);
            codec.encode_to_bytes(&Packet::Send(packet)).unwrap()
        })
        .collect()
}

/// Writes every frame, then hands the client back.
async fn flood(mut client: Client, frames: Vec<bytes::Bytes>) -> Client {
    for frame in frames {
        client.send_raw(frame).await.unwrap();
    }
    client
}

/// What the server has read from TCP clients, from its metrics.
async fn bytes_received(server: &TestServer) -> u64 {
    let metrics = server.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with("hongyan_gateway_bytes_received_total{transport=\"tcp\"}"));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse::<f64>().ok()).map_or(0, |n| n as u64)
}

/// Reads until `count` SENDACKs have arrived; returns their seqs in arrival order.
async fn acks(client: &mut Client, count: usize) -> Vec<u32> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        match client.recv_within(Duration::from_secs(20)).await.unwrap() {
            Packet::Sendack(ack) => {
                assert_eq!(ack.reason_code, ReasonCode::Success);
                seqs.push(ack.message_seq);
            }
            other => panic!("expected SENDACK, got {other:?}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_faster_than_storage_is_held_at_its_in_flight_cap_then_served_in_order() {
    let (server, gate, _open) = gated_server(|c| c.gateway.max_sends_in_flight = 4).await;
    for uid in ["alice", "bob"] {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
    let (alice, _) = Client::connect(&server.tcp(), "alice", "t", device_flag::APP, "d", 5).await.unwrap();
    // 300 SENDs of 32 KiB: nearly 10 MiB offered.
    let frames = sends(&alice, "bob", 300, 32 * 1024);
    let total: usize = frames.iter().map(bytes::Bytes::len).sum();
    gate.set(true);
    let flood = tokio::spawn(flood(alice, frames));
    let log = server.server.log.clone();
    until("four SENDs wait for storage", || log.queued() == 4).await;
    // The fifth is read and waits for a slot; the server reads nothing more, so the
    // rest stays in the kernel's buffers (or the client's writes stall).
    let received = bytes_received(&server).await;
    assert!(received < total as u64 / 4, "the server read {received} of {total} bytes");
    assert_eq!(log.queued(), 4, "never more than the cap");
    gate.set(false);
    let mut alice = flood.await.unwrap();
    let seqs = acks(&mut alice, 300).await;
    assert_eq!(seqs, (1..=300).collect::<Vec<u32>>(), "every SEND acknowledged, in order, seqs dense");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_together_are_held_to_the_pipeline_budget() {
    let (server, gate, _open) = gated_server(|c| c.delivery.pipeline_bytes = 1024 * 1024).await;
    for i in 0..8 {
        server.register(&format!("u{i}"), "t", device_flag::APP, 0).await;
    }
    server.register("sink", "t", device_flag::APP, 0).await;
    gate.set(true);
    let mut floods = Vec::new();
    let mut total = 0;
    for i in 0..8 {
        let uid = format!("u{i}");
        let (client, _) = Client::connect(&server.tcp(), &uid, "t", device_flag::APP, "d", 5).await.unwrap();
        // 12 × 256 KiB per connection: 24 MiB offered against a 1 MiB budget.
        let frames = sends(&client, "sink", 12, 256 * 1024);
        total += frames.iter().map(bytes::Bytes::len).sum::<usize>();
        floods.push(tokio::spawn(flood(client, frames)));
    }
    let log = server.server.log.clone();
    // A 256 KiB message costs 256.5 KiB of the budget: three fit in 1 MiB.
    until("the budget is spent", || log.queued() == 3).await;
    let received = bytes_received(&server).await;
    assert!(received < total as u64 / 4, "the server read {received} of {total} bytes");
    assert_eq!(log.queued(), 3, "the budget holds across connections");
    gate.set(false);
    for flood in floods {
        let mut client = flood.await.unwrap();
        assert_eq!(acks(&mut client, 12).await.len(), 12);
    }
    let stored = server.server.log.read(
        &hongyan_store::ChannelKey::new(hongyan_core::channel::person_channel_id("u0", "sink"), 1),
        1,
        0,
        100,
        Order::Ascending,
    );
    assert_eq!(stored.unwrap().len(), 12);
    server.stop().await;
}

/// In `fsync` mode a SENDACK is never sent before its batch's write and fsync have
/// returned: while the engine holds a durable write, the connection gets its PONG but
/// no SENDACK; the SENDACK follows once the write returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sendack_before_the_fsync_returns() {
    // The engine writes and fsyncs; then the write does not return while the gate is
    // closed: the message is on disk, but the writer has not heard so yet.
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let hook: WriteHook = Box::new(move |write, writes, durable| {
        let written = write();
        if durable && writes_a_message(writes) {
            held.pass();
        }
        written
    });
    let server = TestServer::start_on(
        move |dir| Hooked::open(dir, hook),
        |c| {
            c.storage.durability = hongyan::config::DurabilityMode::Fsync;
        },
    )
    .await;
    let _open = OpenOnDrop(gate.clone());
    for uid in ["hal", "ivy"] {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
    let (mut hal, _) = Client::connect(&server.tcp(), "hal", "t", device_flag::APP, "d", 5).await.unwrap();
    gate.set(true);
    let frame = sends(&hal, "ivy", 1, 16).remove(0);
    hal.send_raw(frame).await.unwrap();
    until("the engine holds the durable write", || gate.holding()).await;
    // Anything the server had queued for this connection comes before the PONG.
    hal.send(&Packet::Ping).await.unwrap();
    match hal.recv().await.unwrap() {
        Packet::Pong => {}
        other => panic!("nothing may be acknowledged before the fsync returns, got {other:?}"),
    }
    gate.set(false);
    assert_eq!(acks(&mut hal, 1).await, [1], "the SENDACK follows the fsync");
    server.stop().await;
}
