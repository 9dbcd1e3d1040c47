//! The rest of WuKongIM v2's API over real HTTP: online status, batch sends, channel
//! deletion and list clearing, message lookups, conversation catch-up, /connz, /varz.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::Duration;

use common::{TestServer, b64, text_of};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};
use serde_json::{Value, json};

async fn online(target: &Target, uid: &str) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", device_flag::APP, "phone", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

async fn send(server: &TestServer, body: Value) -> Value {
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn online_status_in_both_shapes() {
    for (format, devices) in [("uids", false), ("devices", true)] {
        let server = TestServer::start_with(|c| {
            c.api.onlinestatus_format =
                if devices { hongyan_api::OnlineStatusFormat::Devices } else { hongyan_api::OnlineStatusFormat::Uids }
        })
        .await;
        server.register("on", "t", device_flag::APP, 1).await;
        let _on = online(&server.tcp(), "on").await;
        let (status, answer) = server.post("/user/onlinestatus", json!(["on", "off", "on"])).await;
        assert_eq!(status, 200, "{format}: {answer}");
        if devices {
            assert_eq!(answer, json!([{"uid": "on", "device_flag": 0, "online": 1}]));
            assert_eq!(server.post("/user/onlinestatus", json!([])).await.1, json!({"status": 200}));
        } else {
            assert_eq!(answer, json!(["on"]), "the seed's shape: the uids online");
        }
        let (status, answer) = server.post("/user/onlinestatus", json!({"uids": ["on"]})).await;
        assert_eq!(status, 400, "the body is an array: {answer}");
        server.stop().await;
    }
}

#[tokio::test]
async fn send_batch_reaches_each_person_and_names_failures() {
    let server = TestServer::start().await;
    server.register("rx", "t", device_flag::APP, 1).await;
    let mut rx = online(&server.tcp(), "rx").await;
    let body = json!({"header": {"red_dot": 1}, "from_uid": "shop", "subscribers": ["rx", "other", "bad#uid"], "payload": b64("sale")});
    let (status, answer) = server.post("/message/sendbatch", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fail_uids"], json!(["bad#uid"]));
    assert_eq!(answer["reason"].as_array().unwrap().len(), 1);
    match rx.recv().await.unwrap() {
        Packet::Recv(r) => {
            assert_eq!((r.channel_id.as_str(), r.channel_type, r.from_uid.as_str()), ("shop", 1, "shop"));
            assert_eq!(client_text(&rx, &r), "sale");
        }
        other => panic!("expected RECV, got {other:?}"),
    }
    // The offline recipient finds it in the person chat.
    let (_, history) = server
        .post("/channel/messagesync", json!({"login_uid": "other", "channel_id": "shop", "channel_type": 1}))
        .await;
    assert_eq!(history["messages"].as_array().unwrap().iter().map(text_of).collect::<Vec<_>>(), ["sale"]);
    let (status, _) = server.post("/message/sendbatch", json!({"from_uid": "shop", "payload": b64("x")})).await;
    assert_eq!(status, 400);
    server.stop().await;
}

fn client_text(client: &Client, recv: &hongyan_proto::Recv) -> String {
    String::from_utf8(client.cipher.as_ref().unwrap().open_recv(recv).unwrap()).unwrap()
}

#[tokio::test]
async fn lists_clear_and_channels_delete() {
    let server = TestServer::start().await;
    server.register("m1", "t", device_flag::APP, 1).await;
    let g = json!({"channel_id": "club", "channel_type": 2});
    let with = |extra: Value| {
        let mut body = g.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    server.post("/channel", with(json!({"subscribers": ["m1", "m2"]}))).await;
    server.post("/channel/whitelist_add", with(json!({"uids": ["m1", "m2"]}))).await;
    server.post("/channel/blacklist_add", with(json!({"uids": ["m3"]}))).await;

    let (status, list) = server.get("/channel/whitelist?channel_id=club&channel_type=2").await;
    assert_eq!(status, 200);
    let uids: Vec<&str> = list.as_array().unwrap().iter().map(|e| e["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["m1", "m2"]);
    assert!(list[0]["created_at"].as_i64().unwrap() > 1_600_000_000, "{list}");
    // Every list reads a page at a time, after the last uid seen.
    let at = &server;
    let page = |path: &str| {
        let path = format!("/channel/{path}");
        async move {
            let (status, list) = at.get(&path).await;
            assert_eq!(status, 200, "{path}: {list}");
            list.as_array().unwrap().iter().map(|e| e["uid"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(page("subscribers?channel_id=club&channel_type=2&limit=1").await, ["m1"]);
    assert_eq!(page("subscribers?channel_id=club&channel_type=2&after=m1").await, ["m2"]);
    assert_eq!(page("blacklist?channel_id=club&channel_type=2").await, ["m3"]);
    assert_eq!(page("whitelist?channel_id=club&channel_type=2&after=m1&limit=5").await, ["m2"]);
    assert_eq!(server.get("/channel/subscribers?channel_id=club&channel_type=2&limit=10001").await.0, 400);
    assert_eq!(server.get("/channel/subscribers?channel_id=club&channel_type=2&after=a%40b").await.0, 400);
    // Channels with attributes, found by id prefix.
    server.post("/channel", json!({"channel_id": "club-2", "channel_type": 2, "large": 1})).await;
    server.post("/channel", json!({"channel_id": "clan", "channel_type": 2})).await;
    let (status, found) = server.get("/channel/search?channel_type=2&prefix=club").await;
    assert_eq!(status, 200, "{found}");
    let ids: Vec<&str> = found.as_array().unwrap().iter().map(|c| c["channel_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["club", "club-2"]);
    assert_eq!((found[1]["large"].as_u64(), found[0]["large"].as_u64()), (Some(1), Some(0)));
    let (_, next) = server.get("/channel/search?channel_type=2&prefix=cl&after=club&limit=5").await;
    assert_eq!(
        next,
        json!([{"channel_id": "club-2", "channel_type": 2, "ban": 0, "disband": 0, "send_ban": 0, "large": 1, "allow_stranger": 0}])
    );
    assert_eq!(server.get("/channel/search?channel_type=2&limit=1001").await.0, 400);
    assert_eq!(server.get("/channel/search?channel_type=0").await.0, 400);

    for path in ["/channel/whitelist_remove_all", "/channel/blacklist_remove_all"] {
        assert_eq!(server.post(path, g.clone()).await, (200, json!({"status": 200})));
    }
    assert_eq!(server.get("/channel/whitelist?channel_id=club&channel_type=2").await.1, json!([]));

    // Messages: history survives list changes; deletion disbands and clears it.
    for text in ["one", "two", "three"] {
        send(&server, json!({"from_uid": "m1", "channel_id": "club", "channel_type": 2, "payload": b64(text)})).await;
    }
    let (_, seq) = server.get("/channel/max_message_seq?channel_id=club&channel_type=2").await;
    assert_eq!(seq, json!({"message_seq": 3}));
    assert_eq!(server.post("/channel/subscriber_remove_all", g.clone()).await.0, 200);
    let mut m1 = online(&server.tcp(), "m1").await;
    let ack = common::send_text(&mut m1, ("club", 2), 1, "c1", "hi", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::SubscriberNotExist, "nobody is subscribed any more");

    assert_eq!(server.post("/channel/delete", g.clone()).await, (200, json!({"status": 200})));
    let ack = common::send_text(&mut m1, ("club", 2), 2, "c2", "hi", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Disband);
    let (_, history) = server.post("/channel/messagesync", g.clone()).await;
    assert_eq!(history["messages"], json!([]), "the whole history is gone, the newest message too");
    let (_, seq) = server.get("/channel/max_message_seq?channel_id=club&channel_type=2").await;
    assert_eq!(seq, json!({"message_seq": 3}), "the seq counter stays");
    // Created again under the same id, the channel carries on from there.
    assert_eq!(
        server.post("/channel", json!({"channel_id": "club", "channel_type": 2, "subscribers": ["m1"]})).await.0,
        200
    );
    let again =
        send(&server, json!({"from_uid": "m1", "channel_id": "club", "channel_type": 2, "payload": b64("four")})).await;
    assert_eq!(again["message_seq"], 4);
    let (status, answer) = server.post("/channel/delete", json!({"channel_id": "m1", "channel_type": 1})).await;
    assert_eq!(status, 400, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn message_lookups() {
    let server = TestServer::start().await;
    let (_, empty) = server.get("/channel/last_message?channel_id=nobody&channel_type=2").await;
    assert_eq!(empty, json!({"status": 404}));
    let person = |text: &str, cmn: &str| json!({"from_uid": "amy", "channel_id": "ben", "channel_type": 1, "client_msg_no": cmn, "payload": b64(text)});
    let first = send(&server, person("hello", "n-1")).await;
    send(&server, person("again", "n-2")).await;
    send(&server, person("third", "n-3")).await;

    let (_, last) = server.get("/channel/last_message?channel_id=amy&channel_type=1&login_uid=ben").await;
    assert_eq!((text_of(&last), last["message_seq"].as_u64()), ("third".into(), Some(3)));
    let (_, seq) = server.get("/channel/max_message_seq?channel_id=ben&channel_type=1&login_uid=amy").await;
    assert_eq!(seq["message_seq"], 3);

    let by = |extra: Value| {
        let mut body = json!({"login_uid": "ben", "channel_id": "amy", "channel_type": 1});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (_, found) = server.post("/message", by(json!({"message_id": first["message_id"]}))).await;
    assert_eq!(text_of(&found), "hello");
    let (_, found) = server.post("/message", by(json!({"client_msg_no": "n-2"}))).await;
    assert_eq!(text_of(&found), "again");
    let (_, missing) = server.post("/message", by(json!({"client_msg_no": "nope"}))).await;
    assert_eq!(missing, json!({"status": 404}));
    // An id from another channel is not this channel's.
    let other = send(&server, json!({"channel_id": "g9", "channel_type": 2, "payload": b64("elsewhere")})).await;
    let (_, missing) = server.post("/message", by(json!({"message_id": other["message_id"]}))).await;
    assert_eq!(missing, json!({"status": 404}));

    let (_, page) = server
        .post(
            "/messages",
            by(json!({"message_seqs": [3, 1, 99], "client_msg_nos": ["n-1"], "message_ids": [other["message_id"]]})),
        )
        .await;
    let texts: Vec<String> = page["messages"].as_array().unwrap().iter().map(text_of).collect();
    assert_eq!(texts, ["hello", "third"], "seq order, each once, unknown ones left out");

    let (status, found) =
        server.get("/message/byclientmsgno?channel_id=ben%40amy&channel_type=1&client_msg_no=n-3").await;
    let stored = hongyan_core::channel::person_channel_id("amy", "ben");
    if stored == "ben@amy" {
        assert_eq!((status, text_of(&found)), (200, "third".into()));
    } else {
        assert_eq!(found, json!({"status": 404}));
    }
    let path =
        format!("/message/byclientmsgno?channel_id={}&channel_type=1&client_msg_no=n-3", stored.replace('@', "%40"));
    assert_eq!(text_of(&server.get(&path).await.1), "third");
    server.stop().await;
}

#[tokio::test]
async fn conversation_channels_and_sync_messages() {
    let server = TestServer::start().await;
    server.post("/channel", json!({"channel_id": "team", "channel_type": 2, "subscribers": ["cat", "dog"]})).await;
    for text in ["t1", "t2", "t3"] {
        send(&server, json!({"from_uid": "dog", "channel_id": "team", "channel_type": 2, "payload": b64(text)})).await;
    }
    send(&server, json!({"from_uid": "cat", "channel_id": "team", "channel_type": 2, "payload": b64("mine")})).await;
    send(&server, json!({"from_uid": "emu", "channel_id": "cat", "channel_type": 1, "payload": b64("dm")})).await;
    send(&server, json!({"header": {"sync_once": 1}, "from_uid": "dog", "channel_id": "team", "channel_type": 2, "payload": b64("cmd")})).await;

    let (_, channels) = server.post("/conversation/channels", json!({"uid": "cat"})).await;
    let mut got: Vec<(String, u64)> = channels
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel_id"].as_str().unwrap().to_owned(), c["channel_type"].as_u64().unwrap()))
        .collect();
    got.sort();
    let person = hongyan_core::channel::person_channel_id("cat", "emu");
    let mut want = vec![(person, 1), ("team".to_owned(), 2)];
    want.sort();
    assert_eq!(got, want, "stored ids, commands left out");

    let body = json!({"uid": "cat", "msg_count": 2, "channels": [
        {"channel_id": "team", "channel_type": 2, "last_msg_seq": 1},
        {"channel_id": "emu", "channel_type": 1, "last_msg_seq": 0}
    ]});
    let (status, answer) = server.post("/conversation/syncMessages", body).await;
    assert_eq!(status, 200, "{answer}");
    let team = &answer[0];
    assert_eq!(team["messages"].as_array().unwrap().iter().map(text_of).collect::<Vec<_>>(), ["t2", "t3"]);
    assert_eq!(team["user_last_msg_seq"], 4);
    assert_eq!(answer[1]["channel_id"], "emu");
    assert_eq!(answer[1]["messages"].as_array().unwrap().iter().map(text_of).collect::<Vec<_>>(), ["dm"]);
    server.stop().await;
}

#[tokio::test]
async fn connz_and_varz_describe_the_node() {
    let server = TestServer::start().await;
    server.register("zed", "t", device_flag::APP, 1).await;
    let _zed = online(&server.tcp(), "zed").await;
    let _other = online(&server.ws(), "zed").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, connz) = server.get("/connz?uid=zed").await;
    assert_eq!(status, 200, "{connz}");
    assert_eq!(connz["total"], 1, "the same device id replaced the first login: {connz}");
    let conn = &connz["connections"][0];
    assert_eq!(
        (conn["uid"].as_str(), conn["transport"].as_str(), conn["ip"].as_str()),
        (Some("zed"), Some("ws"), Some("127.0.0.1"))
    );
    // Filtered by device and address, on the node and for one user.
    let at = &server;
    let total = |path: &str| {
        let path = path.to_owned();
        async move { at.get(&path).await.1["total"].as_u64() }
    };
    let flag = device_flag::APP;
    assert_eq!(total(&format!("/connz?device_flag={flag}&ip=127.0.0.1&device_id=phone")).await, Some(1));
    assert_eq!(total(&format!("/connz?uid=zed&device_flag={flag}")).await, Some(1));
    assert_eq!(total("/connz?ip=10.9.9.9").await, Some(0));
    assert_eq!(total("/connz?uid=zed&device_id=tablet").await, Some(0));
    assert_eq!(total(&format!("/connz?device_flag={}", flag + 1)).await, Some(0));
    assert_eq!(server.get("/connz?ip=not-an-ip").await.0, 400);
    let (_, all) = server.get("/connz?limit=1&sort=uptime").await;
    assert_eq!(all["connections"].as_array().unwrap().len(), 1);
    assert_eq!(server.get("/connz?sort=bogus").await.0, 400);
    // A malformed query string is a 400 in WuKongIM's JSON shape, like a bad body.
    let (status, answer) = server.get("/channel/max_message_seq?channel_id=g&channel_type=two").await;
    assert_eq!(status, 400);
    assert!(answer["msg"].as_str().unwrap().starts_with("query:"), "{answer}");

    // The kernel counts CPU in 10 ms ticks: a fast start and login may not have used a
    // whole one yet. Work until this process has at least one, then /varz must show it.
    let ticks = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = stat.rsplit_once(')').unwrap().1.split_whitespace().collect::<Vec<_>>();
        after[11].parse::<u64>().unwrap() + after[12].parse::<u64>().unwrap()
    };
    let started = std::time::Instant::now();
    while ticks() == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no CPU tick counted in 10 s");
        std::hint::black_box((0..100_000u64).sum::<u64>());
    }
    let (status, varz) = server.get("/varz").await;
    assert_eq!(status, 200);
    assert_eq!((varz["connections"].as_u64(), varz["users_online"].as_u64()), (Some(1), Some(1)));
    assert_eq!(varz["server_id"], server.config.node_id);
    assert!(varz["mem_rss_bytes"].as_u64().unwrap() > 1_000_000, "{varz}");
    // The process has used at least a tick of CPU (above).
    assert!(varz["cpu_seconds"].as_f64().unwrap() > 0.0, "{varz}");
    server.stop().await;
}

/// `/conn/kick` and `/conn/remove` close one connection by id: the kicked one reads a
/// DISCONNECT(ConnectKick) first, the removed one just sees its socket close; both
/// leave `/connz` at once, and the user's other connections stay.
#[tokio::test]
async fn one_connection_is_kicked_or_removed_by_id() {
    let server = TestServer::start().await;
    server.register("zed", "t", device_flag::APP, 1).await;
    server.register("zed", "t", device_flag::WEB, 1).await;
    let (mut phone, _) = Client::connect(&server.tcp(), "zed", "t", device_flag::APP, "phone", 5).await.unwrap();
    let (mut web, _) = Client::connect(&server.tcp(), "zed", "t", device_flag::WEB, "web", 5).await.unwrap();
    let id_of = async |device: &str| {
        let (_, connz) = server.get("/connz?uid=zed").await;
        connz["connections"].as_array().unwrap().iter().find(|c| c["device_id"] == device).map(|c| c["id"].clone())
    };
    let phone_id = id_of("phone").await.unwrap();
    let body = json!({"uid": "zed", "conn_id": phone_id});
    assert_eq!(server.post("/conn/kick", body.clone()).await, (200, json!({"status": 200})));
    match phone.recv_within(Duration::from_secs(5)).await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(id_of("phone").await, None, "out of /connz at once");
    let (status, answer) = server.post("/conn/kick", body).await;
    assert_eq!(status, 400, "gone already: {answer}");

    let web_id = id_of("web").await.unwrap();
    assert_eq!(server.post("/conn/remove", json!({"uid": "zed", "conn_id": web_id})).await.0, 200);
    assert!(web.recv_within(Duration::from_secs(5)).await.is_err(), "closed without a DISCONNECT");
    let (_, connz) = server.get("/connz?uid=zed").await;
    assert_eq!(connz["total"], 0, "{connz}");
    let (status, _) = server.post("/conn/kick", json!({"uid": "zed", "conn_id": 1, "node_id": 9})).await;
    assert_eq!(status, 400, "not a live node");
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_batches_are_refused() {
    let server = TestServer::start().await;
    // Over api.max_body_bytes (1 MiB): refused before it is parsed.
    let huge = json!({"uid": "x".repeat(2 * 1024 * 1024)});
    let (status, answer) = server.post("/user/token", huge).await;
    assert_eq!((status, answer["status"].as_u64()), (413, Some(413)), "{answer}");
    assert!(answer["msg"].as_str().unwrap().starts_with("body:"), "{answer}");
    // Over a batch limit: a 400 naming the field and the limit.
    let many: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
    for (path, body, field) in [
        ("/route/batch", json!(many), "uids"),
        ("/user/onlinestatus", json!(many), "uids"),
        ("/message/sendbatch", json!({"from_uid": "a", "subscribers": many, "payload": b64("x")}), "subscribers"),
    ] {
        let (status, answer) = server.post(path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        let msg = answer["msg"].as_str().unwrap();
        assert!(msg.starts_with(field) && msg.contains("10000"), "{path}: {msg}");
    }
    server.stop().await;
}
