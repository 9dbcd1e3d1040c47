//! Message operations after sending: revoke and edit over the HTTP API, the command
//! message online members get, the sync of what changed after a version, who may do
//! what, and that it all survives a restart.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use common::{TestServer, b64, receive};
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};
use serde_json::{Value, json};

async fn online(target: &Target, uid: &str) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", device_flag::APP, "phone", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

async fn sent(server: &TestServer, from: &str, to: (&str, u8), text: &str) -> i64 {
    let body = json!({"from_uid": from, "channel_id": to.0, "channel_type": to.1, "payload": b64(text)});
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["message_id"].as_i64().unwrap()
}

/// A revoke or an edit, with its status and answer.
async fn change(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    server.post(path, body).await
}

/// The next RECV must be the extras notice for `channel` at `version`.
async fn notice(client: &mut Client, channel: (&str, u8), version: u64) {
    let (recv, text) = receive(client).await;
    assert!(recv.flags.no_persist, "a notice is not stored: {recv:?} {text}");
    let cmd: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        cmd,
        json!({"type": 99, "cmd": "syncMessageExtra",
               "param": {"channel_id": channel.0, "channel_type": channel.1, "extra_version": version}})
    );
}

async fn sync(server: &TestServer, body: Value) -> Vec<Value> {
    let (status, answer) = server.post("/message/extra/sync", body).await;
    assert_eq!(status, 200, "{answer}");
    answer.as_array().unwrap().clone()
}

/// A server with users ann, ben and cat, all in group g.
async fn group_of_three() -> TestServer {
    let server = TestServer::start().await;
    for uid in ["ann", "ben", "cat"] {
        server.register(uid, "t", device_flag::APP, 1).await;
    }
    let members = json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ann", "ben", "cat"]});
    assert_eq!(server.post("/channel", members).await.0, 200);
    server
}

#[tokio::test]
async fn revokes_and_edits_reach_online_members_and_sync_by_version_after_a_restart() {
    let server = group_of_three().await;
    let m1 = sent(&server, "ann", ("g", 2), "first").await;
    let m2 = sent(&server, "ann", ("g", 2), "second").await;
    let mut ben = online(&server.tcp(), "ben").await;

    // Another member may not revoke or edit ann's message; nothing is stored.
    let revoke = |who: &str, id: i64| json!({"from_uid": who, "channel_id": "g", "channel_type": 2, "message_id": id});
    let (s, a) = change(&server, "/message/revoke", revoke("ben", m1)).await;
    assert_eq!(s, 400, "{a}");
    assert!(a["msg"].as_str().unwrap().contains("only the sender"), "{a}");
    let edit = |who: &str, id: i64, text: &str| json!({"from_uid": who, "channel_id": "g", "channel_type": 2, "message_id": id, "payload": b64(text)});
    let (s, a) = change(&server, "/message/edit", edit("ben", m2, "hijack")).await;
    assert_eq!(s, 400, "{a}");
    assert!(sync(&server, json!({"channel_id": "g", "channel_type": 2})).await.is_empty());

    // The sender revokes: version 1, and online members are told at once.
    let (s, a) = change(&server, "/message/revoke", revoke("ann", m1)).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (a["revoke"].as_u64(), a["revoker"].as_str(), a["extra_version"].as_u64()),
        (Some(1), Some("ann"), Some(1))
    );
    assert_eq!(a["message_id_str"], m1.to_string());
    notice(&mut ben, ("g", 2), 1).await;
    // A revoked message cannot be edited; revoking again changes nothing.
    let (s, a) = change(&server, "/message/edit", edit("ann", m1, "too late")).await;
    assert_eq!(s, 400, "{a}");
    assert!(a["msg"].as_str().unwrap().contains("revoked"), "{a}");
    let (s, a) = change(&server, "/message/revoke", revoke("ann", m1)).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(1)));

    // Two edits of the second message: versions 2 and 3, each announced (the first
    // notice after the repeated revoke is version 2's: that revoke announced nothing).
    let (s, a) = change(&server, "/message/edit", edit("ann", m2, "second, fixed")).await;
    assert_eq!((s, a["extra_version"].as_u64(), a["is_edit"].as_u64()), (200, Some(2), Some(1)), "{a}");
    notice(&mut ben, ("g", 2), 2).await;
    let (s, _) = change(&server, "/message/edit", edit("ann", m2, "second, fixed again")).await;
    assert_eq!(s, 200);
    notice(&mut ben, ("g", 2), 3).await;

    let all = sync(&server, json!({"channel_id": "g", "channel_type": 2, "extra_version": 0})).await;
    let seen: Vec<(i64, u64)> =
        all.iter().map(|e| (e["message_id"].as_i64().unwrap(), e["extra_version"].as_u64().unwrap())).collect();
    assert_eq!(seen, [(m1, 1), (m2, 3)], "each message once, in its latest state, oldest change first");
    assert_eq!(all[1]["content_edit"], b64("second, fixed again"));
    assert_eq!(all[0]["content_edit"], Value::Null);
    let after_one = sync(&server, json!({"channel_id": "g", "channel_type": 2, "extra_version": 1})).await;
    assert_eq!(after_one.len(), 1);
    assert!(sync(&server, json!({"channel_id": "g", "channel_type": 2, "extra_version": 3})).await.is_empty());
    assert_eq!(sync(&server, json!({"channel_id": "g", "channel_type": 2, "limit": 1})).await.len(), 1);

    // A system account may revoke anyone's message; the app server (no from_uid) too.
    let (s, _) = server.post("/user/systemuids_add", json!({"uids": ["moderator"]})).await;
    assert_eq!(s, 200);
    let (s, a) = change(&server, "/message/revoke", revoke("moderator", m2)).await;
    assert_eq!((s, a["revoker"].as_str()), (200, Some("moderator")), "{a}");
    notice(&mut ben, ("g", 2), 4).await;
    let m3 = sent(&server, "cat", ("g", 2), "third").await;
    assert_eq!(receive(&mut ben).await.1, "third");
    // (The id as a string, as JavaScript clients send the message_idstr they were given.)
    let body = json!({"channel_id": "g", "channel_type": 2, "message_id": m3.to_string()});
    let (s, a) = change(&server, "/message/revoke", body).await;
    assert_eq!((s, a["revoker"].as_str()), (200, Some("")), "{a}");
    notice(&mut ben, ("g", 2), 5).await;
    // The extras of a page of history by seq: those with one, in seq order.
    let body = json!({"channel_id": "g", "channel_type": 2, "message_seqs": [3, 99, 1, 3]});
    let (s, a) = server.post("/message/extras", body).await;
    assert_eq!(s, 200, "{a}");
    let seqs: Vec<u64> = a.as_array().unwrap().iter().map(|e| e["message_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 3]);

    // Bad input: a message of another channel, no message, an empty edit, a big limit.
    let (s, _) =
        change(&server, "/message/revoke", json!({"channel_id": "h", "channel_type": 2, "message_id": m1})).await;
    assert_eq!(s, 400);
    let (s, _) =
        change(&server, "/message/revoke", json!({"channel_id": "g", "channel_type": 2, "message_id": 0})).await;
    assert_eq!(s, 400);
    let (s, _) = change(&server, "/message/edit", edit("cat", m3, "")).await;
    assert_eq!(s, 400);
    let (s, _) = server.post("/message/extra/sync", json!({"channel_id": "g", "channel_type": 2, "limit": 1001})).await;
    assert_eq!(s, 400);

    // After a restart the extras and their versions are as they were, and the next
    // change continues the versions.
    drop(ben);
    let server = server.restart().await;
    let all = sync(&server, json!({"channel_id": "g", "channel_type": 2})).await;
    let versions: Vec<u64> = all.iter().map(|e| e["extra_version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 4, 5]);
    let m4 = sent(&server, "cat", ("g", 2), "fourth").await;
    let (s, a) = change(&server, "/message/edit", edit("cat", m4, "fourth!")).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(6)));

    // A page of history carries each message's extra where it has one.
    sent(&server, "cat", ("g", 2), "fifth, untouched").await;
    let body = json!({"login_uid": "ann", "channel_id": "g", "channel_type": 2, "start_message_seq": 2, "pull_mode": 1, "limit": 10});
    let (s, page) = server.post("/channel/messagesync", body).await;
    assert_eq!(s, 200, "{page}");
    let extras: Vec<(u64, Option<u64>, Option<u64>)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let e = &m["message_extra"];
            (m["message_seq"].as_u64().unwrap(), e["extra_version"].as_u64(), e["revoke"].as_u64())
        })
        .collect();
    assert_eq!(extras, [(2, Some(4), Some(1)), (3, Some(5), Some(1)), (4, Some(6), Some(0)), (5, None, None)]);
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages[2]["message_extra"]["content_edit"], b64("fourth!"));
    assert!(messages[3].get("message_extra").is_none(), "no extra, no field: {}", messages[3]);
    server.stop().await;
}

#[tokio::test]
async fn in_a_person_chat_each_side_names_the_other_and_only_the_sender_edits() {
    let server = TestServer::start().await;
    for uid in ["ann", "ben", "eve"] {
        server.register(uid, "t", device_flag::APP, 1).await;
    }
    let mut ann = online(&server.tcp(), "ann").await;
    let mut ben = online(&server.ws(), "ben").await;
    let m = sent(&server, "ann", ("ben", 1), "hi ben").await;
    assert_eq!(receive(&mut ben).await.1, "hi ben");
    // Sent by the app server for ann: her device gets it too.
    assert_eq!(receive(&mut ann).await.1, "hi ben");

    // ben, in his conversation with ann, may not edit ann's message; eve is not in it.
    let body = |login: &str, from: &str, peer: &str| json!({"login_uid": login, "from_uid": from, "channel_id": peer, "channel_type": 1, "message_id": m, "payload": b64("hi, ben")});
    let (s, a) = server.post("/message/edit", body("ben", "ben", "ann")).await;
    assert_eq!(s, 400, "{a}");
    let (s, a) = server.post("/message/edit", body("eve", "eve", "ann")).await;
    assert_eq!(s, 400, "{a}");
    let (s, a) = server.post("/message/edit", body("ben", "eve", "ann")).await;
    assert!(a["msg"].as_str().unwrap().contains("not in this conversation"), "{a}");
    assert_eq!(s, 400);

    let (s, a) = server.post("/message/edit", body("ann", "ann", "ben")).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(1)), "{a}");
    notice(&mut ben, ("ann", 1), 1).await;
    notice(&mut ann, ("ben", 1), 1).await;
    // Either side revokes: here ben his own copy of ann's message is not his to revoke.
    let revoke =
        |login: &str, peer: &str| json!({"from_uid": login, "channel_id": peer, "channel_type": 1, "message_id": m});
    let (s, _) = server.post("/message/revoke", revoke("ben", "ann")).await;
    assert_eq!(s, 400);
    let (s, _) = server.post("/message/revoke", revoke("ann", "ben")).await;
    assert_eq!(s, 200);
    notice(&mut ben, ("ann", 1), 2).await;

    let from_ben = sync(&server, json!({"login_uid": "ben", "channel_id": "ann", "channel_type": 1})).await;
    assert_eq!(from_ben.len(), 1);
    assert_eq!((from_ben[0]["channel_id"].as_str(), from_ben[0]["revoke"].as_u64()), (Some("ann"), Some(1)));
    assert_eq!(from_ben[0]["content_edit"], b64("hi, ben"));
    let (s, _) = server.post("/message/extra/sync", json!({"channel_id": "ann", "channel_type": 1})).await;
    assert_eq!(s, 400, "a person chat needs login_uid");
}

#[tokio::test]
async fn read_receipts_count_each_reader_once_and_tell_only_the_sender() {
    let server = group_of_three().await;
    let mut ann = online(&server.tcp(), "ann").await;
    let mut cat = online(&server.ws(), "cat").await;
    let m1 = sent(&server, "ann", ("g", 2), "read me").await;
    assert_eq!(receive(&mut ann).await.1, "read me");
    assert_eq!(receive(&mut cat).await.1, "read me");

    let read = |uid: &str, ids: Vec<i64>| json!({"uid": uid, "channel_id": "g", "channel_type": 2, "message_ids": ids});
    let (s, a) = server.post("/message/readed", read("ben", vec![m1])).await;
    assert_eq!((s, a[0]["readed_count"].as_u64(), a[0]["extra_version"].as_u64()), (200, Some(1), Some(1)), "{a}");
    notice(&mut ann, ("g", 2), 1).await;
    // Reading again, or one's own message, changes nothing.
    let (s, a) = server.post("/message/readed", read("ben", vec![m1])).await;
    assert_eq!((s, a[0]["extra_version"].as_u64()), (200, Some(1)));
    let (s, _) = server.post("/message/readed", read("ann", vec![m1])).await;
    assert_eq!(s, 200);
    // Not a member, an unknown message, none or too many: refused.
    let (s, _) = server.post("/message/readed", read("eve", vec![m1])).await;
    assert_eq!(s, 400);
    let (s, a) = server.post("/message/readed", read("cat", vec![m1, 12345])).await;
    assert_eq!(s, 400, "{a}");
    let (s, _) = server.post("/message/readed", read("cat", vec![])).await;
    assert_eq!(s, 400);
    let (s, _) = server.post("/message/readed", read("cat", vec![m1; 101])).await;
    assert_eq!(s, 400);

    // cat's read tells ann only: cat's next RECV is the next message, not a notice.
    let (s, _) = server.post("/message/readed", read("cat", vec![m1])).await;
    assert_eq!(s, 200);
    notice(&mut ann, ("g", 2), 2).await;
    sent(&server, "ben", ("g", 2), "next").await;
    assert_eq!(receive(&mut cat).await.1, "next");
    assert_eq!(receive(&mut ann).await.1, "next");

    let as_of = |uid: &str| json!({"login_uid": uid, "channel_id": "g", "channel_type": 2});
    let for_ann = sync(&server, as_of("ann")).await;
    assert_eq!((for_ann[0]["readed_count"].as_u64(), for_ann[0]["unread_count"].as_u64()), (Some(2), Some(0)));
    let for_ben = sync(&server, as_of("ben")).await;
    assert_eq!(for_ben[0]["readed"], 1);
    assert!(for_ben[0]["readed_at"].as_i64().unwrap() > 1_700_000_000);
    let (s, readers) =
        server.post("/message/readers", json!({"channel_id": "g", "channel_type": 2, "message_id": m1})).await;
    assert_eq!(s, 200, "{readers}");
    let uids: Vec<&str> = readers.as_array().unwrap().iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["ben", "cat"]);
    let (_, page) = server
        .post("/message/readers", json!({"channel_id": "g", "channel_type": 2, "message_id": m1, "after_uid": "ben"}))
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);

    // In a person chat the reader is the other side, and the sender hears of it under
    // the reader's uid.
    let m2 = sent(&server, "ann", ("ben", 1), "psst").await;
    assert_eq!(receive(&mut ann).await.1, "psst");
    let (s, a) = server
        .post("/message/readed", json!({"uid": "ben", "channel_id": "ann", "channel_type": 1, "message_ids": [m2]}))
        .await;
    assert_eq!(s, 200, "{a}");
    notice(&mut ann, ("ben", 1), 1).await;
    let for_ann = sync(&server, json!({"login_uid": "ann", "channel_id": "ben", "channel_type": 1})).await;
    assert_eq!((for_ann[0]["readed_count"].as_u64(), for_ann[0]["unread_count"].as_u64()), (Some(1), Some(0)));
}

#[tokio::test]
async fn reactions_are_counted_per_kind_shown_to_everyone_and_taken_back() {
    let server = group_of_three().await;
    let m = sent(&server, "ann", ("g", 2), "party?").await;
    let mut cat = online(&server.tcp(), "cat").await;

    let react = |uid: &str, emoji: &str, action: &str| json!({"uid": uid, "channel_id": "g", "channel_type": 2, "message_id": m, "emoji": emoji, "action": action});
    let (s, a) = server.post("/message/reaction", react("ben", "👍", "add")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["reactions"], json!([{"emoji": "👍", "count": 1}]));
    notice(&mut cat, ("g", 2), 1).await;
    let (s, _) = server.post("/message/reaction", react("cat", "🎉", "")).await;
    assert_eq!(s, 200);
    notice(&mut cat, ("g", 2), 2).await;
    let (s, a) = server.post("/message/reaction", react("ann", "👍", "add")).await;
    assert_eq!(a["reactions"], json!([{"emoji": "🎉", "count": 1}, {"emoji": "👍", "count": 2}]), "{s} {a}");
    notice(&mut cat, ("g", 2), 3).await;

    // Not a member, a bad action, an empty reaction: refused.
    let (s, _) = server.post("/message/reaction", react("eve", "👍", "add")).await;
    assert_eq!(s, 400);
    let (s, _) = server.post("/message/reaction", react("ben", "👍", "toggle")).await;
    assert_eq!(s, 400);
    let (s, _) = server.post("/message/reaction", react("ben", "", "add")).await;
    assert_eq!(s, 400);

    // ben takes his back; doing it again changes nothing (no new version).
    let (s, a) = server.post("/message/reaction", react("ben", "👍", "remove")).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(4)));
    notice(&mut cat, ("g", 2), 4).await;
    let (s, a) = server.post("/message/reaction", react("ben", "👍", "remove")).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(4)));

    let for_cat = sync(&server, json!({"login_uid": "cat", "channel_id": "g", "channel_type": 2})).await;
    assert_eq!(for_cat[0]["reactions"], json!([{"emoji": "🎉", "count": 1}, {"emoji": "👍", "count": 1}]));
    assert_eq!(for_cat[0]["my_reactions"], json!(["🎉"]));
    let (s, list) =
        server.post("/message/reactions", json!({"channel_id": "g", "channel_type": 2, "message_id": m})).await;
    assert_eq!(s, 200, "{list}");
    let pairs: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|r| (r["uid"].as_str().unwrap(), r["emoji"].as_str().unwrap())).collect();
    assert_eq!(pairs, [("ann", "👍"), ("cat", "🎉")]);
    let (_, page) = server
        .post(
            "/message/reactions",
            json!({"channel_id": "g", "channel_type": 2, "message_id": m, "after_uid": "ann", "after_emoji": "👍"}),
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
}
