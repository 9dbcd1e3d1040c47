//! Command (SyncOnce) messages, sends to an explicit list of subscribers, and expiry,
//! over real sockets and the HTTP API.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::Duration;

use common::{TestServer, b64, nothing_more, receive, text_of};
use hongyan_proto::{HeaderFlags, Packet, ReasonCode, Recv, Recvack, device_flag};
use hongyan_testkit::{Client, Target};
use serde_json::{Value, json};

async fn online(target: &Target, uid: &str, flag: u8, device: &str) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", flag, device, 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

/// The texts `/message/sync` returns for `uid`.
async fn pending(server: &TestServer, uid: &str) -> Vec<String> {
    let (status, answer) = server.post("/message/sync", json!({"uid": uid, "limit": 50})).await;
    assert_eq!(status, 200, "{answer}");
    answer.as_array().unwrap().iter().map(text_of).collect()
}

async fn command(server: &TestServer, body: Value) -> Value {
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn ack(client: &mut Client, recv: &Recv) {
    let ack = Recvack { flags: recv.flags, message_id: recv.message_id, message_seq: recv.message_seq };
    client.send(&Packet::Recvack(ack)).await.unwrap();
}

#[tokio::test]
async fn group_commands_are_consumed_once_per_user() {
    let server = TestServer::start().await;
    server.register("ann", "t", device_flag::APP, 1).await; // master
    server.register("ann", "t", device_flag::WEB, 0).await; // slave
    server.register("ben", "t", device_flag::APP, 1).await;
    let (s, _) =
        server.post("/channel", json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ann", "ben"]})).await;
    assert_eq!(s, 200);
    let mut ann_app = online(&server.tcp(), "ann", device_flag::APP, "phone").await;
    let mut ann_web = online(&server.ws(), "ann", device_flag::WEB, "browser").await;

    let cmd = |text: &str| json!({"header": {"sync_once": 1}, "from_uid": "boss", "channel_id": "g", "channel_type": 2, "payload": b64(text)});
    let sent = command(&server, cmd("refresh-1")).await;
    assert_eq!(sent["data"]["message_seq"], 1, "the command channel has its own seqs");

    // Every online device gets it, flagged SyncOnce, under the group's own id.
    let (on_app, text) = receive(&mut ann_app).await;
    assert_eq!(text, "refresh-1");
    assert!(on_app.flags.sync_once);
    assert_eq!((on_app.channel_id.as_str(), on_app.channel_type, on_app.message_seq), ("g", 2, 1));
    let (on_web, _) = receive(&mut ann_web).await;

    // Until consumed, /message/sync offers it (to ben, offline, and to ann).
    assert_eq!(pending(&server, "ben").await, ["refresh-1"]);
    assert_eq!(pending(&server, "ann").await, ["refresh-1"]);
    // A slave device's ack does not consume it for the user; the master's does.
    ack(&mut ann_web, &on_web).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&server, "ann").await, ["refresh-1"]);
    ack(&mut ann_app, &on_app).await;
    let consumed = async {
        while !pending(&server, "ann").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), consumed).await.expect("the master's RECVACK consumes the command");

    // ben consumes through /message/syncack, which covers what the last sync returned.
    assert_eq!(pending(&server, "ben").await, ["refresh-1"]);
    command(&server, cmd("refresh-2")).await;
    let (s, _) = server.post("/message/syncack", json!({"uid": "ben", "last_message_seq": 1})).await;
    assert_eq!(s, 200);
    assert_eq!(pending(&server, "ben").await, ["refresh-2"], "only what the last sync returned was consumed");
    server.post("/message/syncack", json!({"uid": "ben", "last_message_seq": 2})).await;
    assert!(pending(&server, "ben").await.is_empty());
    let (s, answer) = server.post("/message/syncack", json!({"uid": "ben", "last_message_seq": 0})).await;
    assert_eq!(s, 400, "{answer}");

    // Commands are not chat: not in the group's history, not a conversation.
    let (_, history) = server.post("/channel/messagesync", json!({"channel_id": "g", "channel_type": 2})).await;
    assert_eq!(history["messages"], json!([]));
    let (_, conversations) = server.post("/conversation/sync", json!({"uid": "ben"})).await;
    assert_eq!(conversations, json!([]));

    // Leaving the group ends its commands, pending ones included; joining starts them
    // from the next one.
    command(&server, cmd("refresh-3")).await;
    let (s, _) = server
        .post("/channel/subscriber_remove", json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ben"]}))
        .await;
    assert_eq!(s, 200);
    assert!(pending(&server, "ben").await.is_empty());
    server.post("/channel/subscriber_add", json!({"channel_id": "g", "channel_type": 2, "subscribers": ["cat"]})).await;
    assert!(pending(&server, "cat").await.is_empty());
    command(&server, cmd("refresh-4")).await;
    assert_eq!(pending(&server, "cat").await, ["refresh-4"]);
    assert!(pending(&server, "ben").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_sync_once_send_from_a_client_is_a_command_for_the_peer_only() {
    let server = TestServer::start().await;
    server.register("dan", "t", device_flag::APP, 1).await;
    let mut dan = online(&server.tcp(), "dan", device_flag::APP, "phone").await;
    let flags = HeaderFlags { sync_once: true, ..HeaderFlags::default() };
    let ack = common::send_text(&mut dan, ("eve", 1), 1, "c-1", "typing", flags).await;
    assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 1));
    // eve (offline) gets it as a command from dan; dan's own command is not his to sync.
    let (s, answer) = server.post("/message/sync", json!({"uid": "eve"})).await;
    assert_eq!(s, 200);
    let messages = answer.as_array().unwrap();
    assert_eq!(messages.len(), 1, "{answer}");
    assert_eq!((messages[0]["channel_id"].as_str(), messages[0]["from_uid"].as_str()), (Some("dan"), Some("dan")));
    assert_eq!(messages[0]["header"]["sync_once"], 1);
    assert!(pending(&server, "dan").await.is_empty());
    // The chat itself is untouched.
    let (_, history) =
        server.post("/channel/messagesync", json!({"login_uid": "eve", "channel_id": "dan", "channel_type": 1})).await;
    assert_eq!(history["messages"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn sends_to_a_list_of_subscribers() {
    let server = TestServer::start().await;
    server.register("fay", "t", device_flag::APP, 1).await;
    let mut fay = online(&server.tcp(), "fay", device_flag::APP, "phone").await;
    let to_list = |text: &str, no_persist: u8| json!({"header": {"sync_once": 1, "no_persist": no_persist}, "subscribers": ["fay", "gus", "fay"], "payload": b64(text)});
    let answer = command(&server, to_list("notice", 0)).await;
    assert_eq!(answer, json!({"status": 200}), "WuKongIM answers a list send with the status alone");
    let (recv, text) = receive(&mut fay).await;
    assert_eq!((text.as_str(), recv.channel_type, recv.message_seq), ("notice", 8, 1));
    assert!(recv.flags.sync_once);
    let notice_channel = recv.channel_id.clone();
    nothing_more(&mut fay).await; // a uid named twice gets it once
    assert_eq!(pending(&server, "gus").await, ["notice"], "offline members sync it");

    // Online only: delivered now, never stored.
    command(&server, to_list("flash", 1)).await;
    let (recv, text) = receive(&mut fay).await;
    assert_eq!((text.as_str(), recv.message_seq), ("flash", 0));
    assert_eq!(pending(&server, "gus").await, ["notice"]);

    for bad in [
        json!({"subscribers": ["fay"], "payload": b64("x")}),
        json!({"header": {"sync_once": 1}, "channel_id": "g", "channel_type": 2, "subscribers": ["fay"], "payload": b64("x")}),
        json!({"header": {"sync_once": 1}, "subscribers": ["bad@uid"], "payload": b64("x")}),
    ] {
        let (status, answer) = server.post("/message/send", bad).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["msg"].as_str().unwrap().starts_with("subscribers"), "{answer}");
    }

    // A client cannot post into the temporary channel it received the notice from.
    let ack = common::send_text(&mut fay, (&notice_channel, 8), 1, "r", "reply", Default::default()).await;
    assert_eq!(ack.reason_code, hongyan_proto::ReasonCode::NotSupportChannelType);
    // Temporary channels expire: younger than the limit they stay, older they go whole.
    let temp = hongyan_store::ChannelKey::new(notice_channel, 8);
    assert_eq!(server.server.core.expire_temp_channels(Duration::from_secs(3600)).unwrap(), 0);
    assert!(server.server.core.channel_state(&temp).unwrap().subscribers.contains("gus"), "still there");
    assert_eq!(server.server.core.expire_temp_channels(Duration::ZERO).unwrap(), 1, "the stored one");
    let state = server.server.core.channel_state(&temp).unwrap();
    assert!(state.subscribers.is_empty(), "members gone");
    assert!(pending(&server, "gus").await.is_empty(), "and what they had not synced");
    let commands = hongyan_core::channel::command_channel(&temp);
    assert!(server.server.log.read(&commands, 1, 0, 10, hongyan_store::Order::Ascending).unwrap().is_empty());
    assert!(server.server.core.store().channel_info(&temp.channel_id, 8).unwrap().is_none(), "attributes too");
    assert_eq!(server.server.core.expire_temp_channels(Duration::ZERO).unwrap(), 0, "nothing left");
    server.stop().await;
}

#[tokio::test]
async fn expired_messages_leave_sync_and_unread() {
    let server = TestServer::start().await;
    server.register("hal", "t", device_flag::APP, 1).await;
    server.post("/channel", json!({"channel_id": "news", "channel_type": 2, "subscribers": ["hal"]})).await;
    let mut hal = online(&server.tcp(), "hal", device_flag::APP, "phone").await;
    let send = |text: &str, expire: u32| json!({"from_uid": "ed", "channel_id": "news", "channel_type": 2, "expire": expire, "payload": b64(text)});
    command(&server, send("lasting", 0)).await;
    command(&server, send("fleeting", 1)).await;
    // Delivered with its expiry while it lasts.
    let (first, _) = receive(&mut hal).await;
    let (second, text) = receive(&mut hal).await;
    assert_eq!((first.expire, second.expire, text.as_str()), (0, 1, "fleeting"));

    let texts = |answer: &Value| answer["messages"].as_array().unwrap().iter().map(text_of).collect::<Vec<_>>();
    let (_, history) = server.post("/channel/messagesync", json!({"channel_id": "news", "channel_type": 2})).await;
    assert_eq!(texts(&history), ["lasting", "fleeting"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, history) = server.post("/channel/messagesync", json!({"channel_id": "news", "channel_type": 2})).await;
    assert_eq!(texts(&history), ["lasting"], "an expired message is gone from history");
    let (_, conversations) = server.post("/conversation/sync", json!({"uid": "hal", "msg_count": 5})).await;
    assert_eq!(conversations[0]["unread"], 1, "{conversations}");
    assert_eq!(texts(&json!({"messages": conversations[0]["recents"]})), ["lasting"]);
    server.stop().await;
}
