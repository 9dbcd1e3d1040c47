//! Messages over real sockets: SEND → durable append → SENDACK → RECV to every other
//! online device, encrypted per connection, with WuKongIM's reason codes.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, b64, nothing_more, receive};
use hongyan_proto::{HeaderFlags, Packet, ReasonCode, Send, Sendack, device_flag};
use hongyan_store::{ChannelKey, Order};
use hongyan_testkit::{Client, Target};
use serde_json::json;

async fn online(target: &Target, uid: &str, device: &str, version: u8) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", device_flag::APP, device, version).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

/// Seals and sends a message with a red dot; returns its SENDACK.
async fn send(client: &mut Client, to: &str, channel_type: u8, seq: u32, cmn: &str, text: &str) -> Sendack {
    let red_dot = HeaderFlags { red_dot: true, ..HeaderFlags::default() };
    common::send_text(client, (to, channel_type), seq, cmn, text, red_dot).await
}

async fn users(server: &TestServer, uids: &[&str]) {
    for uid in uids {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
}

#[tokio::test]
async fn person_chat_both_ways_with_per_recipient_views() {
    let server = TestServer::start().await;
    users(&server, &["alice", "bob"]).await;
    let mut alice = online(&server.tcp(), "alice", "phone", 5).await;
    let mut alice_web = online(&server.ws(), "alice", "web", 2).await;
    let mut bob = online(&server.ws(), "bob", "phone", 3).await;

    let ack = send(&mut alice, "bob", 1, 1, "m-1", r#"{"type":1,"content":"hi bob"}"#).await;
    assert_eq!((ack.reason_code, ack.message_seq, ack.client_seq), (ReasonCode::Success, 1, 1));
    assert!(ack.message_id > 0);
    assert!(ack.flags.red_dot, "SENDACK carries the SEND's flags");

    let (recv, text) = receive(&mut bob).await;
    assert_eq!(text, r#"{"type":1,"content":"hi bob"}"#);
    assert_eq!((recv.channel_id.as_str(), recv.from_uid.as_str(), recv.channel_type), ("alice", "alice", 1));
    assert_eq!((recv.message_id, recv.message_seq), (ack.message_id, 1));
    assert!(recv.flags.red_dot);
    assert_eq!(recv.client_msg_no, "m-1");

    // The sender's other device sees the chat under the peer's id, without a red dot.
    let (echo, text) = receive(&mut alice_web).await;
    assert_eq!((echo.channel_id.as_str(), text.as_str()), ("bob", r#"{"type":1,"content":"hi bob"}"#));
    assert!(!echo.flags.red_dot);
    nothing_more(&mut alice).await; // never to the sending connection

    let reply = send(&mut bob, "alice", 1, 1, "r-1", "hello alice").await;
    assert_eq!(reply.message_seq, 2, "one channel for the pair, seqs dense");
    for client in [&mut alice, &mut alice_web] {
        let (recv, text) = receive(client).await;
        assert_eq!((recv.channel_id.as_str(), recv.message_seq, text.as_str()), ("bob", 2, "hello alice"));
    }

    let pair = ChannelKey::new(hongyan_core::channel::person_channel_id("alice", "bob"), 1);
    let stored = server.server.log.read(&pair, 1, 0, 10, Order::Ascending).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].message.payload, Bytes::from_static(br#"{"type":1,"content":"hi bob"}"#), "stored decrypted");
    server.stop().await;
}

#[tokio::test]
async fn a_resend_is_acked_with_the_original_and_not_delivered_twice() {
    let server = TestServer::start().await;
    users(&server, &["carl", "dina"]).await;
    let mut carl = online(&server.tcp(), "carl", "d", 5).await;
    let mut dina = online(&server.tcp(), "dina", "d", 5).await;
    let first = send(&mut carl, "dina", 1, 1, "same-no", "once").await;
    let (_, text) = receive(&mut dina).await;
    assert_eq!(text, "once");
    // The SDK resends unacknowledged SENDs after a reconnect, with the same client_msg_no.
    let mut carl2 = online(&server.ws(), "carl", "d2", 2).await;
    let again = send(&mut carl2, "dina", 1, 7, "same-no", "once").await;
    assert_eq!(
        (again.message_id, again.message_seq, again.reason_code),
        (first.message_id, first.message_seq, ReasonCode::Success)
    );
    nothing_more(&mut dina).await;
    server.stop().await;
}

#[tokio::test]
async fn a_burst_arrives_complete_and_in_order() {
    let server = TestServer::start().await;
    users(&server, &["erin", "finn"]).await;
    let mut erin = online(&server.tcp(), "erin", "d", 5).await;
    let mut finn = online(&server.tcp(), "finn", "d", 5).await;
    const N: u32 = 200;
    let cipher = erin.cipher.clone().unwrap();
    for i in 1..=N {
        let mut packet = Send {
            client_seq: i,
            client_msg_no: format!("b{i}"),
            channel_id: "finn".into(),
            channel_type: 1,
            ..Send::default()
        };
        cipher.seal_send(&mut packet, format!("msg {i}").as_bytes());
        erin.send(&Packet::Send(packet)).await.unwrap();
    }
    let mut acked = std::collections::BTreeMap::new();
    while acked.len() < N as usize {
        match erin.recv().await.unwrap() {
            Packet::Sendack(a) => {
                assert_eq!(a.reason_code, ReasonCode::Success);
                acked.insert(a.client_seq, a.message_seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked.values().copied().collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>(), "seq follows send order");
    for i in 1..=N {
        let (recv, text) = receive(&mut finn).await;
        assert_eq!((recv.message_seq, text), (i, format!("msg {i}")));
    }
    nothing_more(&mut finn).await;
    server.stop().await;
}

#[tokio::test]
async fn group_delivery_and_every_refusal_code() {
    let server = TestServer::start().await;
    users(&server, &["g1", "g2", "g3", "outsider", "muted"]).await;
    let (status, _) = server
        .post("/channel", json!({"channel_id": "team", "channel_type": 2, "subscribers": ["g1", "g2", "g3", "muted"]}))
        .await;
    assert_eq!(status, 200);
    let mut a = online(&server.tcp(), "g1", "d", 5).await;
    let mut b = online(&server.ws(), "g2", "d", 2).await;
    let mut c = online(&server.tcp(), "g3", "d", 4).await;
    let mut outsider = online(&server.tcp(), "outsider", "d", 5).await;

    let ack = send(&mut a, "team", 2, 1, "g-1", "hello team").await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 1));
    for client in [&mut b, &mut c] {
        let (recv, text) = receive(client).await;
        assert_eq!((recv.channel_id.as_str(), recv.from_uid.as_str(), text.as_str()), ("team", "g1", "hello team"));
    }
    nothing_more(&mut outsider).await;

    // A channel type that does not exist: 23; a channel id that cannot be one: 16.
    assert_eq!(send(&mut a, "team", 99, 90, "t-99", "x").await.reason_code, ReasonCode::NotSupportChannelType);
    assert_eq!(send(&mut a, "te@m", 2, 91, "t-at", "x").await.reason_code, ReasonCode::ChannelIdError);
    assert_eq!(send(&mut a, &"t".repeat(256), 2, 92, "t-long", "x").await.reason_code, ReasonCode::ChannelIdError);
    // Not a subscriber: 3.
    assert_eq!(send(&mut outsider, "team", 2, 1, "o-1", "let me in").await.reason_code, ReasonCode::SubscriberNotExist);
    // Blacklisted: 4.
    server.post("/channel/blacklist_add", json!({"channel_id": "team", "channel_type": 2, "uids": ["g3"]})).await;
    assert_eq!(send(&mut c, "team", 2, 1, "c-1", "x").await.reason_code, ReasonCode::InBlacklist);
    server.post("/channel/blacklist_remove", json!({"channel_id": "team", "channel_type": 2, "uids": ["g3"]})).await;
    // A whitelist that does not name the sender: 13.
    server.post("/channel/whitelist_set", json!({"channel_id": "team", "channel_type": 2, "uids": ["g1"]})).await;
    assert_eq!(send(&mut b, "team", 2, 1, "b-1", "x").await.reason_code, ReasonCode::NotInWhitelist);
    assert_eq!(send(&mut a, "team", 2, 2, "a-2", "allowed").await.reason_code, ReasonCode::Success);
    server.post("/channel/whitelist_set", json!({"channel_id": "team", "channel_type": 2, "uids": []})).await;
    // Muted everywhere: 25.
    server.post("/channel/info", json!({"channel_id": "muted", "channel_type": 1, "send_ban": 1})).await;
    let mut muted = online(&server.tcp(), "muted", "d", 5).await;
    assert_eq!(send(&mut muted, "team", 2, 1, "m-1", "x").await.reason_code, ReasonCode::SendBan);
    // Person blacklist: 4.
    server.post("/channel/blacklist_add", json!({"channel_id": "g2", "channel_type": 1, "uids": ["outsider"]})).await;
    assert_eq!(send(&mut outsider, "g2", 1, 2, "o-2", "psst").await.reason_code, ReasonCode::InBlacklist);
    // A msgKey that does not match: 9.
    let mut forged = Send {
        client_seq: 9,
        client_msg_no: "f".into(),
        channel_id: "team".into(),
        channel_type: 2,
        ..Send::default()
    };
    a.cipher.as_ref().unwrap().seal_send(&mut forged, b"real");
    forged.channel_id = "other".into();
    a.send(&Packet::Send(forged)).await.unwrap();
    let Packet::Sendack(ack) = a.recv().await.unwrap() else { panic!("expected SENDACK") };
    assert_eq!(ack.reason_code, ReasonCode::PayloadDecodeError);
    // Banned channel: 19; disbanded: 24.
    server.post("/channel/info", json!({"channel_id": "team", "channel_type": 2, "ban": 1})).await;
    assert_eq!(send(&mut a, "team", 2, 3, "a-3", "x").await.reason_code, ReasonCode::Ban);
    server.post("/channel/info", json!({"channel_id": "team", "channel_type": 2, "disband": 1})).await;
    assert_eq!(send(&mut a, "team", 2, 4, "a-4", "x").await.reason_code, ReasonCode::Disband);
    // Refused messages were not stored.
    assert_eq!(server.server.log.last_seq(&ChannelKey::new("team", 2)).unwrap(), 2);
    server.stop().await;
}

#[tokio::test]
async fn seqs_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    for round in 0..2u32 {
        let server = hongyan::start(config.clone()).await.unwrap();
        let http = reqwest::Client::new();
        for uid in ["hal", "ivy"] {
            let body = json!({"uid": uid, "token": "t", "device_flag": 0, "device_level": 0});
            http.post(format!("http://{}/user/token", server.api_addr)).json(&body).send().await.unwrap();
        }
        let target = Target::Tcp(server.gateway.tcp_addr.unwrap());
        let mut hal = online(&target, "hal", "d", 5).await;
        for i in 1..=3u32 {
            let ack = send(&mut hal, "ivy", 1, i, &format!("r{round}-{i}"), "x").await;
            assert_eq!(ack.message_seq, round * 3 + i);
        }
        drop(hal);
        server.shutdown();
        server.wait().await;
    }
}

#[tokio::test]
async fn unacknowledged_recvs_are_resent_until_acknowledged() {
    let server = TestServer::start_with(|c| {
        c.delivery.retry_interval_ms = 300;
        c.delivery.retry_max = 2;
    })
    .await;
    users(&server, &["jay", "kay"]).await;
    let mut jay = online(&server.tcp(), "jay", "d", 5).await;
    let mut kay = online(&server.ws(), "kay", "d", 2).await;

    // Not acknowledged: the same RECV comes again after the interval, twice, then no more.
    send(&mut jay, "kay", 1, 1, "n-1", "are you there?").await;
    let (first, _) = receive(&mut kay).await;
    for _ in 0..2 {
        let (again, text) = receive(&mut kay).await;
        assert_eq!(again, first, "byte-identical resend");
        assert_eq!(text, "are you there?");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    nothing_more(&mut kay).await;
    assert!(server.server.core.retry_queue().is_empty(), "given up after the last retry");

    // Acknowledged: never resent, and nothing is left waiting.
    send(&mut jay, "kay", 1, 2, "n-2", "ping").await;
    let (recv, _) = receive(&mut kay).await;
    let ack = hongyan_proto::Recvack { flags: recv.flags, message_id: recv.message_id, message_seq: recv.message_seq };
    kay.send(&Packet::Recvack(ack)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    nothing_more(&mut kay).await;
    assert!(server.server.core.retry_queue().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn http_send_reaches_devices_and_resends_return_the_original() {
    let server = TestServer::start().await;
    users(&server, &["lia", "max"]).await;
    server.post("/channel", json!({"channel_id": "club", "channel_type": 2, "subscribers": ["lia", "max"]})).await;
    let mut lia = online(&server.tcp(), "lia", "d", 5).await;
    let mut max = online(&server.ws(), "max", "d", 2).await;

    let body = json!({"from_uid": "lia", "channel_id": "club", "channel_type": 2, "client_msg_no": "app-1",
        "header": {"red_dot": 1}, "payload": b64(r#"{"type":1,"content":"from the app server"}"#)});
    let (status, answer) = server.post("/message/send", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["data"]["client_msg_no"], "app-1");
    assert_eq!(answer["data"]["message_seq"], 1);
    let id = answer["data"]["message_id"].as_i64().unwrap();
    assert_eq!(answer["data"]["message_idstr"], id.to_string());
    // Every online member gets it, the sender's own devices included (no connection sent it).
    for client in [&mut lia, &mut max] {
        let (recv, text) = receive(client).await;
        assert_eq!((recv.message_id, recv.message_seq, recv.from_uid.as_str()), (id, 1, "lia"));
        assert_eq!(text, r#"{"type":1,"content":"from the app server"}"#);
    }
    let (_, again) = server.post("/message/send", body).await;
    assert_eq!((again["data"]["message_id"].as_i64(), again["data"]["message_seq"].as_u64()), (Some(id), Some(1)));
    nothing_more(&mut max).await;

    // From the system: no from_uid; the recipient sees an empty sender.
    let (status, answer) =
        server.post("/message/send", json!({"channel_id": "max", "channel_type": 1, "payload": b64("notice")})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!answer["data"]["client_msg_no"].as_str().unwrap().is_empty(), "a client_msg_no is made up");
    let (recv, text) = receive(&mut max).await;
    assert_eq!((recv.from_uid.as_str(), recv.channel_id.as_str(), text.as_str()), ("", "____system", "notice"));

    // Bad input is a 400 that names the field; a banned channel refuses.
    let (status, answer) =
        server.post("/message/send", json!({"channel_id": "club", "channel_type": 2, "payload": "***"})).await;
    assert_eq!((status, answer["msg"].as_str()), (400, Some("payload: not valid base64")));
    let (status, answer) = server.post("/message/send", json!({"channel_id": "club", "channel_type": 2})).await;
    assert_eq!(status, 400);
    assert!(answer["msg"].as_str().unwrap().contains("payload"), "{answer}");
    let (status, _) =
        server.post("/message/send", json!({"channel_id": "a@b", "channel_type": 2, "payload": b64("x")})).await;
    assert_eq!(status, 400);
    server.post("/channel/info", json!({"channel_id": "club", "channel_type": 2, "ban": 1})).await;
    let (status, answer) =
        server.post("/message/send", json!({"channel_id": "club", "channel_type": 2, "payload": b64("x")})).await;
    assert_eq!((status, answer["msg"].as_str()), (400, Some("message refused: Ban")));
    server.stop().await;
}

#[tokio::test]
async fn messagesync_pages_history_in_both_dialects() {
    let server = TestServer::start().await;
    users(&server, &["nia", "ole"]).await;
    let mut nia = online(&server.tcp(), "nia", "d", 5).await;
    for i in 1..=5u32 {
        assert_eq!(send(&mut nia, "ole", 1, i, &format!("s{i}"), &format!("text {i}")).await.message_seq, i);
    }
    let sync = |body: serde_json::Value| {
        let mut body = body;
        body["login_uid"] = json!("ole");
        body["channel_id"] = json!("nia");
        body["channel_type"] = json!(1);
        server.post("/channel/messagesync", body)
    };
    let seqs = |answer: &serde_json::Value| -> Vec<u64> {
        answer["messages"].as_array().unwrap().iter().map(|m| m["message_seq"].as_u64().unwrap()).collect()
    };

    let (status, newest) = sync(json!({"limit": 3})).await;
    assert_eq!(status, 200);
    assert_eq!((seqs(&newest), newest["more"].as_u64()), (vec![3, 4, 5], Some(1)));
    let m = &newest["messages"][2];
    assert_eq!(
        (m["from_uid"].as_str(), m["channel_id"].as_str(), m["client_msg_no"].as_str()),
        (Some("nia"), Some("ole"), Some("s5"))
    );
    assert_eq!(m["payload"], b64("text 5"));
    assert_eq!(m["header"]["red_dot"], 1);
    assert_eq!(m["message_idstr"], m["message_id"].as_i64().unwrap().to_string());

    let (_, up) = sync(json!({"start_message_seq": 1, "end_message_seq": 0, "pull_mode": 1, "limit": 2})).await;
    assert_eq!((seqs(&up), up["more"].as_u64(), up["start_message_seq"].as_u64()), (vec![1, 2], Some(1), Some(1)));
    let (_, down) = sync(json!({"start_message_seq": 3, "end_message_seq": 0, "pull_mode": 0, "limit": 10})).await;
    assert_eq!((seqs(&down), down["more"].as_u64()), (vec![1, 2, 3], Some(0)));
    let (_, between) = sync(json!({"start_message_seq": 2, "end_message_seq": 4, "pull_mode": 1, "limit": 10})).await;
    assert_eq!(seqs(&between), vec![2, 3]);

    // LiMaoIM's names: reverse=true pulls up from min, false pulls down from max.
    let (_, limao_up) = sync(json!({"min_message_seq": 0, "max_message_seq": 10, "reverse": true, "limit": 2})).await;
    assert_eq!((seqs(&limao_up), limao_up["min_message_seq"].as_u64()), (vec![1, 2], Some(0)));
    let (_, limao_down) = sync(json!({"min_message_seq": 0, "max_message_seq": 5, "reverse": false, "limit": 2})).await;
    assert_eq!(seqs(&limao_down), vec![3, 4]);

    // The sender's view of the same channel, and bad input.
    let (_, mine) = server
        .post("/channel/messagesync", json!({"login_uid": "nia", "channel_id": "ole", "channel_type": 1, "limit": 1}))
        .await;
    assert_eq!(seqs(&mine), vec![5]);
    let (status, answer) = sync(json!({"limit": 10_001})).await;
    assert_eq!((status, answer["msg"].as_str()), (400, Some("limit: must be at most 10000")));
    let (status, _) = server.post("/channel/messagesync", json!({"channel_id": "x", "channel_type": 99})).await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn header_flags_no_persist_dup_and_red_dot() {
    let server = TestServer::start().await;
    users(&server, &["pia", "quinn"]).await;
    let mut pia = online(&server.tcp(), "pia", "d", 5).await;
    let mut quinn = online(&server.tcp(), "quinn", "d", 5).await;
    let stored_before = |s: &TestServer| {
        s.server.log.last_seq(&ChannelKey::new(hongyan_core::channel::person_channel_id("pia", "quinn"), 1)).unwrap()
    };

    // NoPersist: acknowledged with seq 0, delivered with its flag, never stored.
    let mut typing = Send {
        flags: HeaderFlags { no_persist: true, ..HeaderFlags::default() },
        client_seq: 1,
        client_msg_no: "typing".into(),
        channel_id: "quinn".into(),
        channel_type: 1,
        ..Send::default()
    };
    pia.cipher.as_ref().unwrap().seal_send(&mut typing, b"typing...");
    pia.send(&Packet::Send(typing)).await.unwrap();
    let Packet::Sendack(ack) = pia.recv().await.unwrap() else { panic!("expected SENDACK") };
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 0));
    assert!(ack.flags.no_persist);
    let (recv, text) = receive(&mut quinn).await;
    assert_eq!((recv.message_seq, recv.flags.no_persist, text.as_str()), (0, true, "typing..."));
    assert_eq!(stored_before(&server), 0, "not stored");
    assert!(server.server.core.retry_queue().is_empty(), "online-only messages wait for no RECVACK");

    // DUP is the client's business: it does not travel on; RedDot does, to others only.
    let mut resent = Send {
        flags: HeaderFlags { dup: true, red_dot: true, ..HeaderFlags::default() },
        client_seq: 2,
        client_msg_no: "real".into(),
        channel_id: "quinn".into(),
        channel_type: 1,
        ..Send::default()
    };
    pia.cipher.as_ref().unwrap().seal_send(&mut resent, b"hello");
    pia.send(&Packet::Send(resent)).await.unwrap();
    let Packet::Sendack(ack) = pia.recv().await.unwrap() else { panic!("expected SENDACK") };
    assert_eq!(ack.message_seq, 1);
    let (recv, _) = receive(&mut quinn).await;
    assert!(!recv.flags.dup && recv.flags.red_dot && !recv.flags.no_persist);
    assert_eq!(stored_before(&server), 1);
    server.stop().await;
}

#[tokio::test]
async fn system_accounts_skip_sender_checks_and_anyone_may_message_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.data_dir = dir.path().to_path_buf()).await;
    users(&server, &["bot", "rae", "sol"]).await;
    server.post("/channel", json!({"channel_id": "lounge", "channel_type": 2, "subscribers": ["rae"]})).await;
    server.post("/channel/blacklist_add", json!({"channel_id": "bot", "channel_type": 1, "uids": ["sol"]})).await;
    let mut bot = online(&server.tcp(), "bot", "d", 5).await;
    let mut rae = online(&server.tcp(), "rae", "d", 5).await;
    let mut sol = online(&server.tcp(), "sol", "d", 5).await;
    assert_eq!(send(&mut bot, "lounge", 2, 1, "b-1", "x").await.reason_code, ReasonCode::SubscriberNotExist);
    assert_eq!(send(&mut sol, "bot", 1, 1, "s-1", "x").await.reason_code, ReasonCode::InBlacklist);

    // The seed's own path.
    let (status, _) = server.post("/systemuids_add", json!({"uids": ["bot"]})).await;
    assert_eq!(status, 200);
    let listed = reqwest::get(server.api("/user/systemuids")).await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(listed, json!(["bot"]));
    assert_eq!(send(&mut bot, "lounge", 2, 2, "b-2", "announcement").await.reason_code, ReasonCode::Success);
    let (recv, text) = receive(&mut rae).await;
    assert_eq!((recv.from_uid.as_str(), text.as_str()), ("bot", "announcement"));
    assert_eq!(
        send(&mut sol, "bot", 1, 2, "s-2", "help").await.reason_code,
        ReasonCode::Success,
        "anyone may message a system account"
    );

    // A banned channel still refuses even a system account.
    server.post("/channel/info", json!({"channel_id": "lounge", "channel_type": 2, "ban": 1})).await;
    assert_eq!(send(&mut bot, "lounge", 2, 3, "b-3", "x").await.reason_code, ReasonCode::Ban);

    let (status, _) = server.post("/user/systemuids_remove", json!({"uids": ["bot"]})).await;
    assert_eq!(status, 200);
    assert_eq!(send(&mut sol, "bot", 1, 3, "s-3", "x").await.reason_code, ReasonCode::InBlacklist);
    let (status, answer) = server.post("/user/systemuids_add", json!({"uids": ["a@b"]})).await;
    assert_eq!(
        (status, answer["msg"].as_str()),
        (400, Some("uids[0]: must be 1 to 255 bytes and contain none of @ # &"))
    );

    // Durable: a restart keeps the list.
    server.post("/user/systemuids_add", json!({"uids": ["bot", "rae"]})).await;
    let config = server.config.clone();
    drop((bot, rae, sol));
    server.stop().await;
    let again = hongyan::start(config).await.unwrap();
    assert_eq!(again.core.system_accounts(), vec!["bot".to_owned(), "rae".to_owned()]);
    again.shutdown();
    again.wait().await;
}

#[tokio::test]
async fn oversized_ids_and_client_msg_nos_are_refused_and_harm_nothing() {
    let server = TestServer::start().await;
    users(&server, &["tia", "uma"]).await;
    let long = "x".repeat(70_000);
    let (status, answer) = server.post("/user/token", json!({"uid": long, "token": "t"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["msg"].as_str().unwrap().starts_with("uid:"), "{answer}");
    let (status, _) = server.post("/channel", json!({"channel_id": long, "channel_type": 2})).await;
    assert_eq!(status, 400);
    let body =
        json!({"from_uid": "tia", "channel_id": "uma", "channel_type": 1, "client_msg_no": long, "payload": b64("x")});
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!((status, answer["msg"].as_str()), (400, Some("client_msg_no: must be at most 255 bytes")));
    // The log still takes messages.
    let (status, answer) = server
        .post(
            "/message/send",
            json!({"from_uid": "tia", "channel_id": "uma", "channel_type": 1, "payload": b64("still fine")}),
        )
        .await;
    assert_eq!((status, answer["data"]["message_seq"].as_u64()), (200, Some(1)), "{answer}");
    // Paging arithmetic at the edges is a clear answer, not an overflow.
    let (status, _) = server.post("/channel/messagesync", json!({"login_uid": "uma", "channel_id": "tia", "channel_type": 1, "end_message_seq": u64::MAX, "start_message_seq": u64::MAX})).await;
    assert_eq!(status, 200);
    let (status, answer) =
        server.post("/conversation/sync", json!({"uid": "uma", "page": usize::MAX, "page_size": 500})).await;
    assert_eq!((status, answer), (200, json!([])));
    server.stop().await;
}

/// A SEND that just fits the frame limit becomes a RECV a little larger (more fields):
/// it is still delivered, not dropped for being over the limit the server reads with.
#[tokio::test]
async fn a_send_at_the_frame_limit_is_delivered_as_a_larger_recv() {
    let server = TestServer::start().await;
    users(&server, &["fay", "gus"]).await;
    let mut fay = online(&server.tcp(), "fay", "d", 5).await;
    let mut gus = online(&server.tcp(), "gus", "d", 5).await;
    gus.set_max_frame_len(2 * hongyan_proto::DEFAULT_MAX_FRAME_LEN);
    // The longest text whose sealed SEND still encodes under the 1 MiB default.
    let codec = hongyan_proto::Codec::new(fay.version());
    let fits = |len: usize| {
        let mut packet = Send {
            client_seq: 1,
            client_msg_no: "big".into(),
            channel_id: "gus".into(),
            channel_type: 1,
            ..Send::default()
        };
        fay.cipher.as_ref().unwrap().seal_send(&mut packet, &vec![b'x'; len]);
        codec.encode_to_bytes(&Packet::Send(packet)).is_ok()
    };
    let mut len = hongyan_proto::DEFAULT_MAX_FRAME_LEN * 3 / 4;
    while !fits(len) {
        len -= 64;
    }
    let text = "x".repeat(len);
    let ack = send(&mut fay, "gus", 1, 1, "big", &text).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (recv, got) = common::receive(&mut gus).await;
    assert_eq!((recv.message_seq, got.len()), (1, len));
    server.stop().await;
}
