//! The Easemob / Agora Chat thread dialect over real HTTP, with binary clients in the
//! threads' channels.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestServer, b64, nothing_more, receive};
use hongyan::config::EasemobAppConfig;
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

const ORG: &str = "acme";
const APP: &str = "chat";
const SECRET: &str = "client-secret-0001";

async fn server_with(calls_per_sec: u32) -> TestServer {
    server_tweaked(calls_per_sec, |_| {}).await
}

async fn server_tweaked(calls_per_sec: u32, tweak: impl FnOnce(&mut hongyan::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.easemob.addr = "127.0.0.1:0".into();
        c.easemob.calls_per_sec = calls_per_sec;
        c.easemob.apps = vec![EasemobAppConfig {
            org: ORG.into(),
            app: APP.into(),
            client_id: "client-1".into(),
            client_secret: SECRET.into(),
        }];
        tweak(c);
    })
    .await
}

struct Em<'a> {
    server: &'a TestServer,
    http: reqwest::Client,
    token: String,
}

impl Em<'_> {
    fn url(&self, path: &str) -> String {
        format!("http://{}/{ORG}/{APP}{path}", self.server.server.easemob_addr.unwrap())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, self.url(path)).header("Authorization", format!("Bearer {}", self.token));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, body).await
    }
}

async fn token_call(server: &TestServer, body: Value) -> (u16, Value) {
    let url = format!("http://{}/{ORG}/{APP}/token", server.server.easemob_addr.unwrap());
    let resp = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn em(server: &TestServer) -> Em<'_> {
    let (status, answer) = token_call(
        server,
        json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": SECRET}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    Em { server, http: reqwest::Client::new(), token: answer["access_token"].as_str().unwrap().to_owned() }
}

fn forge(exp_offset: i64, org: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({"org": org, "app": APP, "exp": now + exp_offset, "iat": now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A group with `members` and one message in it; returns the message id.
async fn group_with_message(server: &TestServer, group: &str, members: &[&str]) -> String {
    let (s, _) = server.post("/channel", json!({"channel_id": group, "channel_type": 2, "subscribers": members})).await;
    assert_eq!(s, 200);
    let (s, sent) = server
        .post(
            "/message/send",
            json!({"from_uid": members[0], "channel_id": group, "channel_type": 2, "payload": b64("parent")}),
        )
        .await;
    assert_eq!(s, 200);
    sent["data"]["message_idstr"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_and_authentication() {
    let server = server_with(100).await;
    let (status, answer) = token_call(
        &server,
        json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": SECRET, "ttl": 3600}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["expires_in"], 3600);
    assert_eq!(answer["application"].as_str().unwrap().len(), 36, "a UUID: {answer}");
    for (body, status, error) in [
        (json!({"grant_type": "password", "client_id": "client-1", "client_secret": SECRET}), 400, "illegal_argument"),
        (json!({"grant_type": "client_credentials", "client_secret": SECRET}), 400, "illegal_argument"),
        (json!({"grant_type": "client_credentials", "client_id": "client-1"}), 400, "illegal_argument"),
        (
            json!({"grant_type": "client_credentials", "client_id": "nope", "client_secret": SECRET}),
            400,
            "invalid_grant",
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": "nope"}),
            400,
            "invalid_grant",
        ),
    ] {
        let (s, answer) = token_call(&server, body).await;
        assert_eq!((s, answer["error"].as_str()), (status, Some(error)), "{answer}");
        assert!(
            answer["exception"].is_string() && answer["timestamp"].is_i64() && answer["error_description"].is_string()
        );
    }
    let url = format!("http://{}/other/app/token", server.server.easemob_addr.unwrap());
    let resp = reqwest::Client::new().post(url).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    let mut em = em(&server).await;
    assert_eq!(em.get("/thread").await.0, 200);
    for (token, description) in [
        ("".to_owned(), "Unable to authenticate"),
        ("garbage".to_owned(), "corrupt access token"),
        (forge(-10, ORG), "expired access token"),
        (forge(3600, "other-org"), "corrupt access token"),
    ] {
        em.token = token;
        let (status, answer) = em.get("/thread").await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")), "{answer}");
        assert!(answer["error_description"].as_str().unwrap().contains(description), "{answer}");
    }
    // The same dialect under /easemob on the API port.
    let (status, token) = server
        .post(
            &format!("/easemob/{ORG}/{APP}/token"),
            json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": SECRET}),
        )
        .await;
    assert_eq!(status, 200);
    let url = format!("http://{}/easemob/{ORG}/{APP}/thread", server.server.api_addr);
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap_or_else(|| panic!("{token}")));
    let resp = reqwest::Client::new().get(url).header("Authorization", bearer).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "thread calls work under the prefix too");
    let listed: Value = resp.json().await.unwrap();
    assert!(listed["uri"].as_str().unwrap().contains("/easemob/"), "the envelope names the URI as called: {listed}");
    server.stop().await;
}

#[tokio::test]
async fn threads_members_and_their_messages() {
    let server = server_with(100).await;
    let em = em(&server).await;
    let parent = group_with_message(&server, "g1", &["own", "m1", "m2", "out"]).await;

    // Creation and its refusals.
    let create = |name: &str, msg: &str, owner: &str, group: &str| json!({"group_id": group, "name": name, "msg_id": msg, "owner": owner});
    let (status, created) = em.post("/thread", create("launch", &parent, "own", "g1")).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        (created["action"].as_str(), created["applicationName"].as_str(), created["organization"].as_str()),
        (Some("post"), Some(APP), Some(ORG))
    );
    assert!(
        created["uri"].as_str().unwrap().ends_with("/thread")
            && created["timestamp"].is_i64()
            && created["duration"].is_u64()
    );
    let thread = created["data"]["thread_id"].as_str().unwrap().to_owned();
    for (body, status, description) in [
        (create(&"x".repeat(65), &parent, "own", "g1"), 400, "thread name limit reached."),
        (create("again", &parent, "own", "g1"), 403, "msg already create thread.not allow to create."),
        (create("t", &parent, "stranger", "g1"), 404, "user not in group."),
        (create("t", &parent, "own", "nogroup"), 404, "group not found."),
        (create("t", "12345", "own", "g1"), 404, "msg not exist."),
    ] {
        let (s, answer) = em.post("/thread", body).await;
        assert_eq!((s, answer["error_description"].as_str()), (status, Some(description)), "{answer}");
    }
    let other = group_with_message(&server, "g2", &["own"]).await;
    let (s, answer) = em.post("/thread", create("t", &other, "own", "g1")).await;
    assert_eq!((s, answer["error_description"].as_str()), (400, Some("msg not belong to group .")));
    let (s, answer) = em.post("/thread", json!({"name": "t"})).await;
    assert_eq!((s, answer["error"].as_str()), (400, Some("param_illegal")));
    // A thread's channel is a group of its own, but threads do not nest.
    let (s, _) = server
        .post(
            "/message/send",
            json!({"from_uid": "own", "channel_id": thread, "channel_type": 2, "payload": b64("in")}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, page) = server.post("/channel/messagesync", json!({"channel_id": thread, "channel_type": 2})).await;
    let inner = page["messages"][0]["message_idstr"].as_str().unwrap().to_owned();
    let (s, answer) = em.post("/thread", create("nested", &inner, "own", &thread)).await;
    assert_eq!((s, answer["error_description"].as_str()), (400, Some("thread not nested.")), "{answer}");

    // Rename.
    let (s, renamed) =
        em.send(reqwest::Method::PUT, &format!("/thread/{thread}"), Some(json!({"name": "launch day"}))).await;
    assert_eq!((s, renamed["data"]["name"].as_str()), (200, Some("launch day")));

    // Members: add (group members only, at most 10), list, remove through both paths.
    let users = format!("/thread/{thread}/users");
    let (s, added) = em.post(&users, json!({"usernames": ["m1", "m2"]})).await;
    assert_eq!((s, added["data"]["status"].as_str()), (200, Some("ok")));
    let (s, answer) = em.post(&users, json!({"usernames": ["m1", "stranger"]})).await;
    assert_eq!((s, answer["error_description"].as_str()), (404, Some("user not in group.")));
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    let (s, answer) = em.post(&users, json!({"usernames": eleven})).await;
    assert_eq!((s, answer["error_description"].as_str()), (400, Some("request body reaches limit.")));
    let (s, answer) = em.get(&format!("{users}?limit=5&limit=6")).await;
    assert_eq!((s, answer["error"].as_str()), (400, Some("param_illegal")), "a malformed query: {answer}");
    for limit in ["0", "51"] {
        let (s, answer) = em.get(&format!("{users}?limit={limit}")).await;
        assert_eq!(
            (s, answer["error_description"].as_str()),
            (400, Some("query param reaches limit.")),
            "limit {limit}"
        );
    }
    let (_, list) = em.get(&users).await;
    assert_eq!(list["data"]["affiliations"], json!(["m1", "m2", "own"]));

    // Thread messages reach thread members only.
    for uid in ["m1", "out"] {
        server.register(uid, "t", device_flag::APP, 1).await;
    }
    let (mut m1, _) = Client::connect(&server.tcp(), "m1", "t", device_flag::APP, "p", 5).await.unwrap();
    let (mut out, _) = Client::connect(&server.tcp(), "out", "t", device_flag::APP, "p", 5).await.unwrap();
    server
        .post(
            "/message/send",
            json!({"from_uid": "own", "channel_id": thread, "channel_type": 2, "payload": b64("in thread")}),
        )
        .await;
    let (recv, text) = receive(&mut m1).await;
    assert_eq!((recv.channel_id.as_str(), text.as_str()), (thread.as_str(), "in thread"));
    nothing_more(&mut out).await;
    let ack = common::send_text(&mut out, (thread.as_str(), 2), 1, "c1", "me too", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::SubscriberNotExist, "a group member outside the thread cannot post in it");

    let (s, removed) = em.delete(&users, Some(json!({"usernames": ["m1", "nobody"]}))).await;
    assert_eq!(s, 200);
    assert_eq!(removed["entities"], json!([{"result": true, "user": "m1"}, {"result": false, "user": "nobody"}]));
    let (s, removed) = em.delete(&format!("/threads/{thread}/users"), Some(json!({"usernames": ["m2"]}))).await;
    assert_eq!((s, removed["entities"].clone()), (200, json!([{"result": true, "user": "m2"}])));
    assert_eq!(em.get(&users).await.1["data"]["affiliations"], json!(["own"]));

    // Listings.
    let (_, mine) = em.get("/threads/user/own").await;
    assert_eq!(mine["entities"][0]["id"], thread.as_str());
    assert_eq!(
        (mine["entities"][0]["groupId"].as_str(), mine["entities"][0]["msgId"].as_str()),
        (Some("g1"), Some(parent.as_str()))
    );
    let (_, in_group) = em.get("/threads/chatgroups/g2/user/own").await;
    assert_eq!(in_group["entities"], json!([]));
    let (_, all) = em.get("/thread?limit=10").await;
    assert_eq!(all["entities"], json!([{"id": thread}]));

    // Deletion.
    let (s, deleted) = em.delete(&format!("/thread/{thread}"), None).await;
    assert_eq!((s, deleted["data"]["status"].as_str()), (200, Some("ok")));
    let (s, answer) = em.get(&users).await;
    assert_eq!((s, answer["error_description"].as_str()), (404, Some("thread not found.")));
    drop((m1, out));
    server.stop().await;
}

#[tokio::test]
async fn member_pages_visit_everyone_once_while_members_join() {
    let server = server_with(10_000).await;
    let em = em(&server).await;
    let members: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
    let mut all: Vec<&str> = vec!["own"];
    all.extend(members.iter().map(String::as_str));
    let late: Vec<String> = (0..20).map(|i| format!("late{i:02}")).collect();
    all.extend(late.iter().map(String::as_str));
    let parent = group_with_message(&server, "big", &all).await;
    let (_, created) =
        em.post("/thread", json!({"group_id": "big", "name": "t", "msg_id": parent, "owner": "own"})).await;
    let users = format!("/thread/{}/users", created["data"]["thread_id"].as_str().unwrap());
    for chunk in members.chunks(10) {
        assert_eq!(em.post(&users, json!({"usernames": chunk})).await.0, 200);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut late_chunks = late.chunks(10);
    loop {
        let (s, page) = em.get(&format!("{users}?limit=7&cursor={cursor}")).await;
        assert_eq!(s, 200, "{page}");
        let names = page["data"]["affiliations"].as_array().unwrap().clone();
        if names.is_empty() {
            break;
        }
        seen.extend(names.iter().map(|n| n.as_str().unwrap().to_owned()));
        cursor = page["properties"]["cursor"].as_str().unwrap().to_owned();
        // Members join between pages.
        if let Some(chunk) = late_chunks.next() {
            assert_eq!(em.post(&users, json!({"usernames": chunk})).await.0, 200);
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "nobody twice");
    for m in members.iter().chain(std::iter::once(&"own".to_owned())) {
        assert!(unique.contains(m), "{m} was there throughout and must be visited");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_and_calls_under_it_succeed() {
    let server = server_with(5).await;
    let em = em(&server).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(em.get("/thread").await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    let (s, answer) = em.get("/thread").await;
    assert_eq!((s, answer["error"].as_str()), (429, Some("resource_limited")));
    // Another API has its own budget; the next second, calls succeed again.
    assert_eq!(em.get("/threads/user/x").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(em.get("/thread").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn one_apps_token_neither_sees_nor_changes_another_apps_threads() {
    const OTHER_SECRET: &str = "other-secret-0002";
    let server = server_tweaked(100, |c| {
        c.easemob.apps.push(EasemobAppConfig {
            org: ORG.into(),
            app: "other".into(),
            client_id: "client-2".into(),
            client_secret: OTHER_SECRET.into(),
        });
    })
    .await;
    let mine = em(&server).await;
    let parent = group_with_message(&server, "g1", &["own", "pal"]).await;
    let body = json!({"name": "ours", "msg_id": parent, "owner": "own", "group_id": "g1"});
    let (status, created) = mine.post("/thread", body).await;
    assert_eq!(status, 200, "{created}");
    let thread = created["data"]["thread_id"].as_str().unwrap().to_owned();

    // The other app's token, on the other app's paths.
    let base = format!("http://{}/{ORG}/other", server.server.easemob_addr.unwrap());
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{base}/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "client-2", "client_secret": OTHER_SECRET}))
        .send()
        .await
        .unwrap();
    let token: Value = answer.json().await.unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap_or_else(|| panic!("{token}")));
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http.request(method, format!("{base}{path}")).header("Authorization", &bearer);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (s, listed) = call(reqwest::Method::GET, "/thread".into(), None).await;
    assert_eq!((s, listed["entities"].as_array().map(Vec::len)), (200, Some(0)), "{listed}");
    let (s, joined) = call(reqwest::Method::GET, "/threads/user/own".into(), None).await;
    assert_eq!((s, joined["entities"].as_array().map(Vec::len)), (200, Some(0)), "{joined}");
    for (method, path, body) in [
        (reqwest::Method::GET, format!("/thread/{thread}/users"), None),
        (reqwest::Method::PUT, format!("/thread/{thread}"), Some(json!({"name": "theirs"}))),
        (reqwest::Method::POST, format!("/thread/{thread}/users"), Some(json!({"usernames": ["pal"]}))),
        (reqwest::Method::DELETE, format!("/thread/{thread}/users"), Some(json!({"usernames": ["own"]}))),
        (reqwest::Method::DELETE, format!("/thread/{thread}"), None),
    ] {
        let (s, answer) = call(method.clone(), path.clone(), body).await;
        assert_eq!((s, answer["error_description"].as_str()), (404, Some("thread not found.")), "{method} {path}");
    }
    // Nothing changed, and its own app still sees it.
    let (s, listed) = mine.get("/thread").await;
    assert_eq!((s, listed["entities"][0]["id"].as_str()), (200, Some(thread.as_str())), "{listed}");
    let (_, members) = mine.get(&format!("/thread/{thread}/users")).await;
    assert_eq!(members["data"]["affiliations"], json!(["own"]), "{members}");
    server.stop().await;
}

#[tokio::test]
async fn a_bad_token_spends_nothing_of_the_apps_budget() {
    let server = server_with(3).await;
    let mut em = em(&server).await;
    let good = std::mem::replace(&mut em.token, "garbage".into());
    for _ in 0..10 {
        assert_eq!(em.get("/thread").await.0, 401);
    }
    em.token = good;
    for _ in 0..3 {
        assert_eq!(em.get("/thread").await.0, 200, "the app's real server still has its whole budget");
    }
    assert_eq!(em.get("/thread").await.0, 429);
    server.stop().await;
}

#[tokio::test]
async fn token_lifetimes_are_capped_unless_unexpiring_tokens_are_allowed() {
    let server = server_with(100).await;
    let ask = |ttl: u64| json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": SECRET, "ttl": ttl});
    for ttl in [0, 1_000_000_000] {
        let (status, answer) = token_call(&server, ask(ttl)).await;
        assert_eq!((status, answer["expires_in"].as_u64()), (200, Some(2_592_000)), "asked {ttl}");
    }
    server.stop().await;
    let server = server_tweaked(100, |c| c.easemob.allow_unexpiring_tokens = true).await;
    let (status, answer) = token_call(&server, ask(0)).await;
    assert_eq!((status, answer["expires_in"].as_u64()), (200, Some(0)), "explicitly allowed: never expires");
    server.stop().await;
}

#[tokio::test]
async fn token_requests_are_limited_per_client_address() {
    let server = server_tweaked(100, |c| c.api.token_requests_per_sec_per_ip = 1).await;
    let ask = json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": "a-wrong-guess"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(token_call(&server, ask.clone()).await.0);
    }
    assert_eq!(statuses, [400, 400, 429, 429], "a burst of two, then one a second");
    server.stop().await;
}

#[tokio::test]
async fn the_seed_examples_succeed_as_written() {
    let server = server_with(100).await;
    let em = em(&server).await;
    let parent = group_with_message(&server, "testgroup", &["test1", "test2", "test3", "test4"]).await;
    let (_, created) =
        em.post("/thread", json!({"group_id": "testgroup", "name": "seed", "msg_id": parent, "owner": "test4"})).await;
    let thread = created["data"]["thread_id"].as_str().unwrap().to_owned();
    // curl -X GET …/thread/{id}/users
    let (s, list) = em.get(&format!("/thread/{thread}/users")).await;
    assert_eq!((s, list["data"]["affiliations"].clone()), (200, json!(["test4"])));
    assert!(list["properties"]["cursor"].is_string());
    // curl -X POST …/thread/{id}/users -d '{"usernames": ["test2", "test3"]}'
    let (s, added) = em.post(&format!("/thread/{thread}/users"), json!({"usernames": ["test2", "test3"]})).await;
    assert_eq!((s, added["data"]["status"].as_str()), (200, Some("ok")));
    // curl -X DELETE …/thread/{id}/users (no body in the seed's example)
    let (s, removed) = em.delete(&format!("/thread/{thread}/users"), None).await;
    assert_eq!((s, removed["entities"].clone()), (200, json!([])));
    server.stop().await;
}
