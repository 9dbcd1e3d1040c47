//! The OpenIM v2 admin dialect over real HTTP, on its own listener and under /openim,
//! with binary-protocol clients seeing its effects.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use common::{TestServer, receive, text_of};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};
use serde_json::{Value, json};

const SECRET: &str = "s3cret-for-tests";
const ADMIN: &str = "imAdmin";

async fn server() -> TestServer {
    server_tweaked(|_| {}).await
}

async fn server_tweaked(tweak: impl FnOnce(&mut hongyan::Config)) -> TestServer {
    TestServer::start_with(|c| {
        tweak(c);
        c.auth.person_whitelist = true;
        c.openim.enabled = true;
        c.openim.addr = "127.0.0.1:0".into();
        c.openim.secret = SECRET.into();
        c.openim.admin_user_ids = vec![ADMIN.into()];
    })
    .await
}

/// POSTs to the dialect's own listener with `token` (if any).
async fn call(server: &TestServer, path: &str, token: Option<&str>, body: Value) -> Value {
    let url = format!("http://{}{path}", server.server.openim_addr.unwrap());
    let mut req = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        req = req.header("token", token);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}: OpenIM answers 200 and puts the outcome in errCode");
    resp.json().await.unwrap()
}

async fn admin_token(server: &TestServer) -> String {
    let body = json!({"secret": SECRET, "platform": 8, "userID": ADMIN, "operationID": "op-1"});
    let answer = call(server, "/auth/user_token", None, body).await;
    assert_eq!(answer["errCode"], 0, "{answer}");
    answer["data"]["token"].as_str().unwrap().to_owned()
}

fn forge(secret: &str, uid: &str, exp_offset: i64, nbf_offset: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({"UID": uid, "Platform": "Admin", "exp": now + exp_offset, "nbf": now + nbf_offset, "iat": now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn admin_token_requests_are_limited_per_client_address() {
    let server = server_tweaked(|c| c.api.token_requests_per_sec_per_ip = 1).await;
    let guess = json!({"secret": "a-wrong-guess-0000", "platform": 8, "userID": ADMIN});
    let mut messages = Vec::new();
    for _ in 0..4 {
        let answer = call(&server, "/auth/user_token", None, guess.clone()).await;
        assert_ne!(answer["errCode"], 0);
        messages.push(answer["errMsg"].as_str().unwrap().to_owned());
    }
    assert_eq!(messages[..2], ["secret: wrong", "secret: wrong"], "a burst of two is checked");
    assert_eq!(messages[2..], ["too many token requests from this address"; 2], "then one a second");
    server.stop().await;
}

#[tokio::test]
async fn admin_tokens_and_every_token_error() {
    let server = server().await;
    let ask = |secret: &str, uid: &str, platform: i32| json!({"secret": secret, "platform": platform, "userID": uid, "operationID": "x"});
    let answer = call(&server, "/auth/user_token", None, ask(SECRET, ADMIN, 8)).await;
    assert_eq!((answer["errCode"].as_i64(), answer["errMsg"].as_str()), (Some(0), Some("")));
    assert_eq!(answer["data"]["userID"], ADMIN);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let expires = answer["data"]["expiredTime"].as_i64().unwrap();
    assert!((expires - now - 7 * 86_400).abs() < 60, "seven days: {answer}");

    assert_eq!(call(&server, "/auth/user_token", None, ask("wrong", ADMIN, 8)).await["errCode"], 801);
    assert_eq!(call(&server, "/auth/user_token", None, ask(SECRET, "someone", 8)).await["errCode"], 801);
    assert_eq!(call(&server, "/auth/user_token", None, ask(SECRET, ADMIN, 42)).await["errCode"], 803);
    assert_eq!(call(&server, "/auth/user_token", None, json!({"secret": SECRET})).await["errCode"], 803);

    let check = json!({"operationID": "x", "userIDList": ["a"]});
    let with = |token: Option<String>| {
        let server = &server;
        let check = check.clone();
        async move { call(server, "/manager/account_check", token.as_deref(), check).await["errCode"].clone() }
    };
    assert_eq!(with(None).await, 700, "no token");
    assert_eq!(with(Some("not-a-jwt".into())).await, 703, "malformed");
    assert_eq!(with(Some(forge("other-key", ADMIN, 3600, 0))).await, 702, "forged");
    assert_eq!(with(Some(forge(SECRET, ADMIN, -10, -100))).await, 701, "expired");
    assert_eq!(with(Some(forge(SECRET, ADMIN, 3600, 600))).await, 704, "not valid yet");
    assert_eq!(with(Some(forge(SECRET, "someone", 3600, 0))).await, 801, "not an admin's");
    assert_eq!(with(Some(admin_token(&server).await)).await, 0);

    // The same dialect under /openim on the API port.
    let (status, answer) = server.post("/openim/auth/user_token", ask(SECRET, ADMIN, 8)).await;
    assert_eq!((status, answer["errCode"].as_i64()), (200, Some(0)));
    server.stop().await;
}

#[tokio::test]
async fn users_profiles_status_and_deletion() {
    let server = server().await;
    let token = admin_token(&server).await;
    let t = Some(token.as_str());
    let update = json!({"operationID": "x", "uid": "ann", "name": "Ann", "icon": "https://a/1.png", "gender": 2, "birth": "1999-01-01"});
    assert_eq!(call(&server, "/user/update_user_info", t, update).await, json!({"errCode": 0, "errMsg": ""}));
    server.register("bob", "t", device_flag::APP, 1).await;

    let info =
        call(&server, "/user/get_user_info", t, json!({"operationID": "x", "uidList": ["ann", "bob", "nobody"]})).await;
    let users = info["data"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{info}");
    assert_eq!(
        (users[0]["uid"].as_str(), users[0]["name"].as_str(), users[0]["gender"].as_i64()),
        (Some("ann"), Some("Ann"), Some(2))
    );
    assert_eq!((users[0]["icon"].as_str(), users[0]["birth"].as_str()), (Some("https://a/1.png"), Some("1999-01-01")));
    assert_eq!(users[1]["name"], "", "registered by token, no profile yet");

    let all = call(&server, "/manager/get_all_users_uid", t, json!({"operationID": "x"})).await;
    assert_eq!(all["uidList"], json!(["ann", "bob"]));

    let (mut bob, connack) = Client::connect(&server.tcp(), "bob", "t", device_flag::APP, "phone", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let status =
        call(&server, "/manager/get_users_online_status", t, json!({"operationID": "x", "userIDList": ["bob", "ann"]}))
            .await;
    assert_eq!(
        status["successResult"][0],
        json!({"userID": "bob", "status": "online", "detailPlatformStatus": [{"platform": "IOS", "status": "online"}]})
    );
    assert_eq!(status["successResult"][1], json!({"userID": "ann", "status": "offline"}));
    let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    assert_eq!(call(&server, "/manager/get_users_online_status", t, json!({"userIDList": many})).await["errCode"], 803);

    let check =
        call(&server, "/manager/account_check", t, json!({"operationID": "x", "userIDList": ["ann", "zed"]})).await;
    assert_eq!(
        check["result"],
        json!([{"userID": "ann", "accountStatus": "registered"}, {"userID": "zed", "accountStatus": "unregistered"}])
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(call(&server, "/manager/account_check", t, json!({"userIDList": many})).await["errCode"], 803);

    // Deleting bob: his connection is kicked, his token no longer logs in.
    let deleted =
        call(&server, "/manager/delete_user", t, json!({"operationID": "x", "deleteUidList": ["bob", "ghost"]})).await;
    assert_eq!(deleted, json!({"errCode": 0, "errMsg": "", "failedUidList": ["ghost"]}));
    match bob.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let (_, connack) = Client::connect(&server.tcp(), "bob", "t", device_flag::APP, "phone", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::AuthFail);
    let check = call(&server, "/manager/account_check", t, json!({"userIDList": ["bob"]})).await;
    assert_eq!(check["result"][0]["accountStatus"], "unregistered");
    server.stop().await;
}

async fn online(server: &TestServer, uid: &str) -> Client {
    server.register(uid, "t", device_flag::APP, 1).await;
    let target: Target = server.tcp();
    let (client, connack) = Client::connect(&target, uid, "t", device_flag::APP, "phone", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client
}

#[tokio::test]
async fn groups_and_messages_reach_binary_clients() {
    let server = server().await;
    let token = admin_token(&server).await;
    let t = Some(token.as_str());
    let create = json!({
        "ownerUserID": "owner", "groupType": 0, "groupName": "test group name", "operationID": "x",
        "memberList": [{"userID": "m1", "roleLevel": 1}, {"userID": "m2", "roleLevel": 3}]
    });
    let created = call(&server, "/group/create_group", t, create).await;
    assert_eq!(created["errCode"], 0, "{created}");
    let group = created["data"]["groupID"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["memberCount"], 3);
    assert_eq!(
        (created["data"]["creatorUserID"].as_str(), created["data"]["ownerUserID"].as_str()),
        (Some(ADMIN), Some("owner"))
    );
    assert_eq!(server.server.core.roles(&group).unwrap().len(), 2, "owner and admin");

    let mut m1 = online(&server, "m1").await;
    let send = json!({
        "operationID": "x", "sendID": "owner", "groupID": group, "sessionType": 2, "contentType": 101,
        "content": {"text": "hello group"}, "senderPlatformID": 1
    });
    let sent = call(&server, "/manager/send_msg", t, send).await;
    assert_eq!(sent["errCode"], 0, "{sent}");
    assert!(sent["sendTime"].as_i64().unwrap() > 1_600_000_000_000_000_000, "nanoseconds: {sent}");
    let (recv, text) = receive(&mut m1).await;
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"type": 1, "content": "hello group"}));
    assert_eq!((recv.channel_id.as_str(), recv.channel_type, recv.from_uid.as_str()), (group.as_str(), 2, "owner"));
    assert_eq!(recv.message_id.to_string(), sent["msgID"].as_str().unwrap());
    let (_, history) = server.post("/channel/messagesync", json!({"channel_id": group, "channel_type": 2})).await;
    assert_eq!(history["messages"].as_array().unwrap().iter().map(text_of).collect::<Vec<_>>(), [text]);
    // Seed 003's shape: the group id in recvID.
    let send = json!({
        "operationID": "y", "sendID": "owner", "recvID": group, "sessionType": 2, "contentType": 101,
        "content": {"text": "by recvID"}
    });
    let sent = call(&server, "/manager/send_msg", t, send).await;
    assert_eq!(sent["errCode"], 0, "{sent}");
    let (recv, text) = receive(&mut m1).await;
    assert_eq!(recv.channel_id, group);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"type": 1, "content": "by recvID"}));
    let clash = json!({
        "operationID": "z", "sendID": "owner", "recvID": group, "groupID": "another", "sessionType": 2,
        "contentType": 101, "content": {"text": "?"}
    });
    let refused = call(&server, "/manager/send_msg", t, clash).await;
    assert_eq!(refused["errCode"], 803, "{refused}");

    // Invitations and kicks with per-user results.
    let invite = json!({"groupID": group, "invitedUserIDList": ["m3", "bad@id"], "reason": "hi", "operationID": "x"});
    let invited = call(&server, "/group/invite_user_to_group", t, invite).await;
    assert_eq!(invited["data"], json!([{"userID": "m3", "result": 0}, {"userID": "bad@id", "result": -1}]));
    let kick =
        json!({"groupID": group, "kickedUserIDList": ["m1", "owner", "stranger"], "reason": "bye", "operationID": "x"});
    let kicked = call(&server, "/group/kick_group", t, kick).await;
    assert_eq!(
        kicked["data"],
        json!([{"userID": "m1", "result": 0}, {"userID": "owner", "result": -1}, {"userID": "stranger", "result": -1}])
    );
    let ack = common::send_text(&mut m1, (group.as_str(), 2), 1, "c1", "still here?", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::SubscriberNotExist);
    assert_eq!(
        call(&server, "/group/kick_group", t, json!({"groupID": "nope", "kickedUserIDList": ["m1"]})).await["errCode"],
        803
    );

    // Person messages, content validation, online-only.
    let person = |content_type: i32, content: Value, online_only: bool| json!({"sendID": "owner", "recvID": "m1", "sessionType": 1, "contentType": content_type, "content": content, "isOnlineOnly": online_only});
    let sent =
        call(&server, "/manager/send_msg", t, person(102, json!({"sourcePicture": {"url": "https://p/1.jpg"}}), false))
            .await;
    assert_eq!(sent["errCode"], 0, "{sent}");
    let (recv, text) = receive(&mut m1).await;
    let picture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((picture["type"].as_i64(), recv.channel_id.as_str()), (Some(2), "owner"));
    assert_eq!(picture["sourcePicture"]["url"], "https://p/1.jpg");
    call(&server, "/manager/send_msg", t, person(101, json!({"text": "now only"}), true)).await;
    let (recv, _) = receive(&mut m1).await;
    assert_eq!(recv.message_seq, 0, "online only: not stored");
    for (content_type, content, session) in
        [(101, json!({}), 1), (999, json!({"text": "x"}), 1), (101, json!({"text": "x"}), 3), (101, json!("text"), 1)]
    {
        let mut body = person(content_type, content, false);
        body["sessionType"] = json!(session);
        let answer = call(&server, "/manager/send_msg", t, body).await;
        assert_eq!(answer["errCode"], 803, "{answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn friends_and_blacklists() {
    let server = server().await;
    let token = admin_token(&server).await;
    let t = Some(token.as_str());
    let friends = call(
        &server,
        "/friend/import_friend",
        t,
        json!({"fromUserID": "amy", "friendUserIDList": ["ben", "amy", "b#d"], "operationID": "x"}),
    )
    .await;
    assert_eq!(
        friends["data"],
        json!([{"userID": "ben", "result": 0}, {"userID": "amy", "result": -1}, {"userID": "b#d", "result": -1}])
    );
    let whitelist = |uid: &str| format!("/channel/whitelist?channel_id={uid}&channel_type=1");
    let uids =
        |v: Value| v.as_array().unwrap().iter().map(|e| e["uid"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(uids(server.get(&whitelist("amy")).await.1), ["ben"], "mutual");
    assert_eq!(uids(server.get(&whitelist("ben")).await.1), ["amy"]);

    // With auth.person_whitelist on, friends may chat and strangers may not.
    let mut ben = online(&server, "ben").await;
    let ack = common::send_text(&mut ben, ("amy", 1), 1, "c0", "hi amy", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "friends may chat");
    let mut cal = online(&server, "cal").await;
    let ack = common::send_text(&mut cal, ("amy", 1), 1, "c1", "hi amy", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::NotInWhitelist, "a stranger may not");
    let ack = common::send_text(&mut cal, ("dee", 1), 2, "c2", "hi dee", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "nobody on dee's whitelist: open to all");

    let block = json!({"fromUserID": "amy", "ToUserID": "ben", "operationID": "x"});
    assert_eq!(call(&server, "/friend/add_blacklist", t, block).await, json!({"errCode": 0, "errMsg": ""}));
    let ack = common::send_text(&mut ben, ("amy", 1), 2, "c3", "hi again", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::InBlacklist, "the blacklist wins over friendship");
    server.stop().await;
}

#[tokio::test]
async fn the_seed_examples_succeed_as_written() {
    let server = server().await;
    // The seed asks for its token with platform 1; the admin's uid is ours.
    let token = call(
        &server,
        "/auth/user_token",
        None,
        json!({"secret": SECRET, "platform": 1, "userID": ADMIN, "operationID": "asdfasdfsadf"}),
    )
    .await;
    assert_eq!(token["errCode"], 0, "{token}");
    let token = token["data"]["token"].as_str().unwrap().to_owned();
    let t = Some(token.as_str());
    let ok = |answer: &Value| assert_eq!(answer["errCode"], 0, "{answer}");

    let created = call(
        &server,
        "/group/create_group",
        t,
        json!({
            "ownerUserID": "19828950910", "groupType": 0, "groupName": "test group name", "notification": "",
            "introduction": "", "faceURL": "", "ex": "", "operationID": "sdadfsdfssdfasdafvcdxsdafdsfsdfaa",
            "memberList": [{"userID": "18666662412", "roleLevel": 1}]
        }),
    )
    .await;
    ok(&created);
    let group = created["data"]["groupID"].as_str().unwrap().to_owned();
    let invited = call(&server, "/group/invite_user_to_group", t, json!({"groupID": group, "operationID": "341323253454352", "invitedUserIDList": ["18349115126"], "reason": "hello"})).await;
    assert_eq!(invited["data"], json!([{"userID": "18349115126", "result": 0}]));
    let kicked = call(&server, "/group/kick_group", t, json!({"groupID": group, "operationID": "dasdavdsadsfasdf", "reason": "kkk", "kickedUserIDList": ["18666662412"]})).await;
    assert_eq!(kicked["data"], json!([{"userID": "18666662412", "result": 0}]));
    let friends = call(&server, "/friend/import_friend", t, json!({"friendUserIDList": ["21979710c3fe454d", "3434344"], "operationID": "1111111222", "fromUserID": "f732156059eeb5d0"})).await;
    assert_eq!(
        friends["data"],
        json!([{"userID": "21979710c3fe454d", "result": 0}, {"userID": "3434344", "result": 0}])
    );
    ok(&call(
        &server,
        "/friend/add_blacklist",
        t,
        json!({"ToUserID": "21979710c3fe454d", "operationID": "1111111222", "fromUserID": "f732156059eeb5d0"}),
    )
    .await);
    ok(&call(
        &server,
        "/user/update_user_info",
        t,
        json!({"uid": "21979710c3fe454d", "operationID": "1111111222", "name": "sssssssssskkkkk"}),
    )
    .await);
    let deleted = call(
        &server,
        "/manager/delete_user",
        t,
        json!({"operationID": "1111111222", "deleteUidList": ["123", "343", "456"]}),
    )
    .await;
    assert_eq!(deleted["failedUidList"], json!(["123", "343", "456"]), "none of them registered");
    let info = call(
        &server,
        "/user/get_user_info",
        t,
        json!({"operationID": "1111111222", "uidList": ["123", "21979710c3fe454d"]}),
    )
    .await;
    assert_eq!(info["data"][0]["name"], "sssssssssskkkkk", "{info}");
    let status = call(
        &server,
        "/manager/get_users_online_status",
        t,
        json!({"operationID": "545454", "userIDList": ["18349115126", "45", "17396220460", "sadsdf"]}),
    )
    .await;
    assert_eq!(status["successResult"].as_array().unwrap().len(), 4, "{status}");
    let all = call(&server, "/manager/get_all_users_uid", t, json!({"operationID": "1111111222"})).await;
    assert_eq!(all["uidList"], json!(["21979710c3fe454d"]));
    let check = call(
        &server,
        "/manager/account_check",
        t,
        json!({"operationID": "1111", "userIDList": ["18349115126", "111", "222", "17396220460"]}),
    )
    .await;
    assert_eq!(check["result"].as_array().unwrap().len(), 4, "{check}");
    let sent = call(
        &server,
        "/manager/send_msg",
        t,
        json!({
            "operationID": "1111111222", "sendID": "1111111222", "recvID": "1111111222", "senderNickName": "张三",
            "senderFaceURL": "http://www.head.com", "forceList": ["122", "223"], "content": {"text": "nihao"},
            "contentType": 101, "sessionType": 1
        }),
    )
    .await;
    ok(&sent);
    let custom = call(
        &server,
        "/manager/send_msg",
        t,
        json!({
            "sendID": "1111111222", "recvID": "1111111223", "content": {"data": "", "description": "", "extension": ""},
            "contentType": 110, "sessionType": 1
        }),
    )
    .await;
    ok(&custom);
    server.stop().await;
}
