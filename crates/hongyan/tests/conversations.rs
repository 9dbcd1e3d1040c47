//! Conversations and unread counts over real sockets and HTTP, including the cases
//! WuKongIM users report wrong: own messages, deletion, new members, multi-device.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use common::TestServer;
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

async fn online(server: &TestServer, uid: &str) -> Client {
    server.register(uid, "t", device_flag::APP, 0).await;
    let (client, connack) = Client::connect(&server.tcp(), uid, "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client
}

/// Sends and returns the seq from the SENDACK, which must be a success.
async fn say(client: &mut Client, to: &str, channel_type: u8, seq: u32, text: &str) -> u32 {
    let cmn = format!("{to}-{seq}-{text}");
    let ack = common::send_text(client, (to, channel_type), seq, &cmn, text, Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    ack.message_seq
}

async fn conversations(server: &TestServer, uid: &str, extra: Value) -> Vec<Value> {
    let mut body = json!({"uid": uid, "msg_count": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = server.post("/conversation/sync", body).await;
    assert_eq!(status, 200, "{answer}");
    answer.as_array().unwrap().clone()
}

/// (channel_id, unread) of each conversation, in the order returned.
async fn unread(server: &TestServer, uid: &str) -> Vec<(String, u64)> {
    conversations(server, uid, json!({}))
        .await
        .iter()
        .map(|c| (c["channel_id"].as_str().unwrap().to_owned(), c["unread"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn person_chat_unread_counts_from_both_sides() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice").await;
    let mut bob = online(&server, "bob").await;
    for i in 1..=3 {
        say(&mut alice, "bob", 1, i, &format!("a{i}")).await;
    }
    let bobs = conversations(&server, "bob", json!({})).await;
    assert_eq!(bobs.len(), 1);
    let c = &bobs[0];
    assert_eq!(
        (c["channel_id"].as_str(), c["channel_type"].as_u64(), c["unread"].as_u64(), c["last_msg_seq"].as_u64()),
        (Some("alice"), Some(1), Some(3), Some(3))
    );
    let recents: Vec<u64> =
        c["recents"].as_array().unwrap().iter().map(|m| m["message_seq"].as_u64().unwrap()).collect();
    assert_eq!(recents, vec![3, 2], "newest first, msg_count of them");
    assert_eq!(c["last_client_msg_no"], "bob-3-a3");
    assert_eq!(unread(&server, "alice").await, vec![("bob".to_owned(), 0)], "own messages are never unread");

    // Bob answers: he has read everything before his own message; Alice has one unread.
    say(&mut bob, "alice", 1, 1, "b1").await;
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 0)]);
    assert_eq!(unread(&server, "alice").await, vec![("bob".to_owned(), 1)]);

    // Cursor operations: forward only, one cursor for all of a user's devices.
    for i in 4..=6 {
        say(&mut alice, "bob", 1, i, &format!("a{i}")).await;
    }
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 3)]);
    let target = json!({"uid": "bob", "channel_id": "alice", "channel_type": 1});
    let mut set = target.clone();
    set["unread"] = json!(1);
    assert_eq!(server.post("/conversations/setUnread", set.clone()).await.0, 200);
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 1)]);
    set["unread"] = json!(5);
    server.post("/conversations/setUnread", set).await;
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 1)], "setUnread cannot raise the count");
    server.post("/conversations/clearUnread", target.clone()).await;
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 0)]);

    // Deleted: gone until a newer message, which then is the only unread one.
    assert_eq!(server.post("/conversations/delete", target.clone()).await.0, 200);
    assert!(unread(&server, "bob").await.is_empty());
    say(&mut alice, "bob", 1, 7, "again").await;
    assert_eq!(unread(&server, "bob").await, vec![("alice".to_owned(), 1)]);
    assert!(!unread(&server, "alice").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn group_members_start_at_the_present_and_filters_apply() {
    let server = TestServer::start().await;
    let mut carl = online(&server, "carl").await;
    let mut dina = online(&server, "dina").await;
    server.post("/channel", json!({"channel_id": "crew", "channel_type": 2, "subscribers": ["carl", "dina"]})).await;
    say(&mut carl, "crew", 2, 1, "before").await;
    say(&mut carl, "crew", 2, 2, "before too").await;
    // Erin joins later: earlier history is not unread for her.
    online(&server, "erin").await;
    server
        .post("/channel/subscriber_add", json!({"channel_id": "crew", "channel_type": 2, "subscribers": ["erin"]}))
        .await;
    assert_eq!(unread(&server, "erin").await, vec![("crew".to_owned(), 0)], "history before joining is not unread");
    say(&mut carl, "crew", 2, 3, "welcome").await;
    assert_eq!(unread(&server, "erin").await, vec![("crew".to_owned(), 1)]);
    assert_eq!(unread(&server, "dina").await, vec![("crew".to_owned(), 3)]);

    // A person chat too, newer than the group's last message.
    say(&mut dina, "carl", 1, 1, "psst").await;
    assert_eq!(unread(&server, "carl").await, vec![("dina".to_owned(), 1), ("crew".to_owned(), 0)], "newest first");

    let only = conversations(&server, "carl", json!({"only_unread": 1})).await;
    assert_eq!(only.len(), 1);
    let groups_only = conversations(&server, "carl", json!({"exclude_channel_types": [1]})).await;
    assert_eq!(groups_only[0]["channel_id"], "crew");
    assert_eq!(groups_only.len(), 1);
    let up_to_date = conversations(&server, "carl", json!({"last_msg_seqs": "crew:2:3|dina:1:1"})).await;
    assert!(up_to_date.is_empty(), "{up_to_date:?}");
    let page2 = conversations(&server, "carl", json!({"page": 2, "page_size": 1})).await;
    assert_eq!(page2[0]["channel_id"], "crew");
    let newest = conversations(&server, "carl", json!({})).await;
    let version = newest[1]["version"].as_i64().unwrap();
    let newer = conversations(&server, "carl", json!({"version": version})).await;
    assert_eq!(newer.len(), 1, "only what changed after the given version");

    // Bad input.
    let (status, answer) = server.post("/conversation/sync", json!({"uid": "carl", "last_msg_seqs": "crew:x"})).await;
    assert_eq!(status, 400);
    assert!(answer["msg"].as_str().unwrap().starts_with("last_msg_seqs:"), "{answer}");
    let (status, _) = server
        .post(
            "/conversations/setUnread",
            json!({"uid": "carl", "channel_id": "nowhere", "channel_type": 2, "unread": 0}),
        )
        .await;
    assert_eq!(status, 400);
    server.stop().await;
}

/// Counts past the page every conversation is read with at once (64 messages): a long
/// run of unread messages, and one that ends at the reader's own message.
#[tokio::test]
async fn long_unread_runs_are_counted_exactly() {
    let server = TestServer::start().await;
    let send = |from: &'static str, to: &'static str, n: usize| {
        let server = &server;
        async move {
            for i in 0..n {
                let body = json!({"from_uid": from, "channel_id": to, "channel_type": 1,
                    "payload": common::b64(&format!("{from} {i}"))});
                assert_eq!(server.post("/message/send", body).await.0, 200);
            }
        }
    };
    send("alice", "bob", 100).await;
    send("carol", "bob", 10).await;
    send("bob", "carol", 1).await;
    send("carol", "bob", 70).await;
    send("dave", "bob", 64).await;
    let mut counts = unread(&server, "bob").await;
    counts.sort();
    assert_eq!(counts, vec![("alice".to_owned(), 100), ("carol".to_owned(), 70), ("dave".to_owned(), 64)]);
    server.stop().await;
}

/// Pages are cut before unread counts are read: with 150 person chats, a third of them
/// answered by the reader, `only_unread` pages through exactly the unanswered ones,
/// newest first, across the server's internal chunks.
#[tokio::test]
async fn unread_only_pages_run_in_order_over_many_conversations() {
    let server = TestServer::start().await;
    let b64 = |t: &str| common::b64(t);
    for i in 0..150 {
        let peer = format!("peer{i:03}");
        let body = json!({"from_uid": peer, "channel_id": "pia", "channel_type": 1, "payload": b64("hi")});
        assert_eq!(server.post("/message/send", body).await.0, 200);
        if i % 3 == 0 {
            let body = json!({"from_uid": "pia", "channel_id": peer, "channel_type": 1, "payload": b64("yo")});
            assert_eq!(server.post("/message/send", body).await.0, 200);
        }
    }
    let ids = |page: Vec<Value>| page.iter().map(|c| c["channel_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let all = ids(conversations(&server, "pia", json!({"page_size": 500})).await);
    assert_eq!(all.len(), 150);
    let unanswered: Vec<String> = all.iter().filter(|p| p[4..].parse::<u32>().unwrap() % 3 != 0).cloned().collect();
    assert_eq!(unanswered.len(), 100);
    let mut paged = Vec::new();
    for page in 1..=6 {
        let got = ids(conversations(&server, "pia", json!({"only_unread": 1, "page": page, "page_size": 20})).await);
        assert_eq!(got.len(), if page <= 5 { 20 } else { 0 }, "page {page}");
        paged.extend(got);
    }
    assert_eq!(paged, unanswered, "unread-only pages are the unanswered chats in the full list's order");
    server.stop().await;
}
