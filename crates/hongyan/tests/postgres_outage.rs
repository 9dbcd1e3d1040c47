//! PostgreSQL lost while the server runs: every connection to it is cut (through a
//! proxy the test controls) mid-traffic. While it is away SENDs are refused with
//! SENDACK 15, HTTP answers 503 in JSON and `/health` says why; when it is back the
//! server recovers by itself, and no acknowledged message is lost or stored twice.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::pg_proxy::{Proxy, through};
use common::{TestServer, b64, send_text, text_of};
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

async fn server_behind(proxy: &Proxy) -> TestServer {
    TestServer::start_with(|c| {
        common::use_postgres(c);
        c.storage.postgres_url = through(&common::postgres_url(), proxy.addr).0;
        c.storage.postgres_connect_timeout_ms = 1_000;
        c.storage.postgres_statement_timeout_ms = 2_000;
        c.storage.fail_stop_grace_secs = 1;
    })
    .await
}

async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < Duration::from_secs(20), "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_refused_while_postgres_is_away_and_served_again_when_it_is_back() {
    let (_, upstream) = through(&common::postgres_url(), "127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let server = server_behind(&proxy).await;
    server.register("alice", "t", device_flag::APP, 1).await;
    server.register("bob", "t", device_flag::APP, 1).await;
    let (mut alice, _) = Client::connect(&server.tcp(), "alice", "t", device_flag::APP, "d", 5).await.unwrap();
    let mut acked: BTreeMap<String, u32> = BTreeMap::new();
    let mut seq = 0;
    for i in 0..10 {
        seq += 1;
        let cmn = format!("before-{i}");
        let ack = send_text(&mut alice, ("bob", 1), seq, &cmn, &cmn, Default::default()).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        acked.insert(cmn, ack.message_seq);
    }

    proxy.cut().await;
    // Refused, not lost: SENDACK 15 and the same client_msg_no may be sent again.
    seq += 1;
    let refused = send_text(&mut alice, ("bob", 1), seq, "during", "during", Default::default()).await;
    assert_eq!(refused.reason_code, ReasonCode::SystemError);
    let (status, answer) = server
        .post(
            "/message/send",
            json!({"from_uid": "alice", "channel_id": "bob", "channel_type": 1,
            "client_msg_no": "http-during", "payload": b64("x")}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["msg"].is_string(), "{answer}");
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health["status"].clone()), (503, json!("unavailable")), "{health}");
    assert!(health["reason"].as_str().unwrap().contains("PostgreSQL"), "{health}");
    // An outage is not a failure: the node does not stop.
    assert!(!server.server.core.health().has_failed());

    proxy.restore();
    until("health to recover", async || server.get("/health").await == (200, json!({"status": "ok"}))).await;
    // The refused message, sent again, is stored once; traffic goes on.
    for cmn in ["during", "after-0", "after-1"] {
        seq += 1;
        let ack = send_text(&mut alice, ("bob", 1), seq, cmn, cmn, Default::default()).await;
        assert_eq!(ack.reason_code, ReasonCode::Success, "{cmn}");
        acked.insert(cmn.to_owned(), ack.message_seq);
    }
    let (status, _) = server
        .post(
            "/message/send",
            json!({"from_uid": "alice", "channel_id": "bob", "channel_type": 1,
            "client_msg_no": "http-after", "payload": b64("y")}),
        )
        .await;
    assert_eq!(status, 200);

    let body = json!({"login_uid": "bob", "channel_id": "alice", "channel_type": 1, "limit": 100});
    let (status, page) = server.post("/channel/messagesync", body).await;
    assert_eq!(status, 200);
    let messages: Vec<Value> = page["messages"].as_array().unwrap().clone();
    let seqs: Vec<u64> = messages.iter().map(|m| m["message_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>(), "seqs are dense");
    for (cmn, seq) in &acked {
        let found: Vec<&Value> = messages.iter().filter(|m| m["client_msg_no"] == json!(cmn)).collect();
        assert_eq!(found.len(), 1, "{cmn} stored once");
        assert_eq!(found[0]["message_seq"], json!(seq), "{cmn} at its acked seq");
        assert_eq!(text_of(found[0]), *cmn);
    }
    server.stop().await;
}

/// A commit whose outcome the server cannot know (the connection is lost after the
/// COMMIT was sent) is not guessed at: the SEND is not acknowledged and the node
/// fail-stops, to be restarted on a store it can trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_an_unknown_outcome_stops_the_node() {
    let (_, upstream) = through(&common::postgres_url(), "127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let server = server_behind(&proxy).await;
    server.register("alice", "t", device_flag::APP, 1).await;
    let (mut alice, _) = Client::connect(&server.tcp(), "alice", "t", device_flag::APP, "d", 5).await.unwrap();
    let ack = send_text(&mut alice, ("bob", 1), 1, "one", "one", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);

    proxy.cut_on_commit.store(true, Ordering::SeqCst);
    let unknown = send_text(&mut alice, ("bob", 1), 2, "two", "two", Default::default()).await;
    assert_eq!(unknown.reason_code, ReasonCode::SystemError, "never acknowledged without a known commit");
    let failure = server.server.core.health().failure().cloned().expect("the node failed");
    assert!(failure.reason.contains("commit outcome unknown"), "{failure:?}");
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health["status"].clone()), (503, json!("unhealthy")), "{health}");
    tokio::time::timeout(Duration::from_secs(10), server.server.fail_stopped()).await.expect("stops after its grace");
}
