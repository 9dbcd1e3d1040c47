//! Every request example of the API documents Hongyan was built from (seed 000: WuKongIM's
//! `/route/batch`; seed 001: LiMaoIM's server API), in the documents' order and shapes,
//! with real ids in place of their placeholders; and the OpenAPI document against what
//! the router serves and what docs/api.md describes.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeSet;

use common::{TestServer, b64};
use serde_json::{Value, json};

#[tokio::test]
async fn the_seed_examples_succeed_as_written() {
    let server = TestServer::start().await;
    let ok = json!({"status": 200});
    assert_eq!(server.get("/health").await, (200, json!({"status": "ok"})));

    // Seed 000.
    let (status, batch) = server.post("/route/batch?intranet=0", json!(["user1", "user2", "user3"])).await;
    assert_eq!(status, 200);
    assert_eq!(batch[0]["uids"], json!(["user1", "user2", "user3"]));
    for key in ["tcp_addr", "ws_addr", "wss_addr"] {
        assert!(batch[0][key].is_string(), "{key}: {batch}");
    }

    // Seed 001, section by section.
    let (status, route) = server.get("/route?uid=uid123").await;
    assert_eq!(status, 200);
    assert!(route["tcp_addr"].is_string() && route["ws_addr"].is_string(), "{route}");
    let (status, batch) = server.post("/route/batch", json!(["uid123", "uid32323"])).await;
    assert_eq!((status, batch[0]["uids"].clone()), (200, json!(["uid123", "uid32323"])));

    let token = json!({"uid": "uid123", "token": "token-123", "device_flag": 0, "device_level": 1});
    assert_eq!(server.post("/user/token", token).await, (200, ok.clone()));
    let (status, online) = server.post("/user/onlinestatus", json!(["uid123", "uid345", "uid456"])).await;
    assert_eq!((status, online), (200, json!([])), "nobody is connected yet");
    assert_eq!(server.post("/systemuids_add", json!({"uids": ["uid123", "uid345"]})).await, (200, ok.clone()));
    assert_eq!(server.post("/systemuids_remove", json!({"uids": ["uid345"]})).await, (200, ok.clone()));

    let group = |extra: Value| {
        let mut body = json!({"channel_id": "group1", "channel_type": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    for (path, body) in [
        ("/channel", group(json!({"subscribers": ["uid1", "uid2"]}))),
        ("/channel/subscriber_add", group(json!({"reset": 0, "subscribers": ["uid3", "uid123"]}))),
        ("/channel/subscriber_remove", group(json!({"subscribers": ["uid3"]}))),
        ("/channel/blacklist_add", group(json!({"uids": ["uid1"]}))),
        ("/channel/blacklist_remove", group(json!({"uids": ["uid1"]}))),
        ("/channel/blacklist_set", group(json!({"uids": ["uid2"]}))),
        ("/channel/whitelist_add", group(json!({"uids": ["uid1", "uid123"]}))),
        ("/channel/whitelist_remove", group(json!({"uids": ["uid1"]}))),
        ("/channel/whitelist_set", group(json!({"uids": ["uid123"]}))),
    ] {
        assert_eq!(server.post(path, body).await, (200, ok.clone()), "{path}");
    }

    let send = json!({
        "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
        "from_uid": "uid123",
        "channel_id": "group1",
        "channel_type": 2,
        "payload": b64("{\"type\":1,\"content\":\"hello\"}"),
    });
    let (status, sent) = server.post("/message/send", send).await;
    assert_eq!(status, 200, "{sent}");
    assert!(sent["data"]["message_id"].as_i64().unwrap() > 0, "{sent}");
    let batch = json!({
        "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
        "from_uid": "uid123",
        "payload": b64("{\"type\":1,\"content\":\"hi all\"}"),
        "subscribers": ["uid1", "uid2"],
    });
    assert_eq!(server.post("/message/sendbatch", batch).await, (200, json!({"fail_uids": [], "reason": []})));

    let sync = json!({"login_uid": "uid1", "channel_id": "group1", "channel_type": 2, "min_message_seq": 0, "max_message_seq": 0, "limit": 100, "reverse": false});
    let (status, page) = server.post("/channel/messagesync", sync).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!((page["min_message_seq"].clone(), page["more"].clone()), (json!(0), json!(0)));
    assert_eq!(page["messages"][0]["message_seq"], 1);
    assert_eq!(page["messages"][0]["from_uid"], "uid123");

    let command = json!({"header": {"sync_once": 1}, "from_uid": "uid123", "channel_id": "group1", "channel_type": 2, "payload": b64("{\"type\":99}")});
    assert_eq!(server.post("/message/send", command).await.0, 200);
    let (status, commands) = server.post("/message/sync", json!({"uid": "uid2", "limit": 100})).await;
    assert_eq!(status, 200);
    assert_eq!(commands.as_array().unwrap().len(), 1, "{commands}");
    let last = commands[0]["message_seq"].clone();
    assert_eq!(
        server.post("/message/syncack", json!({"uid": "uid2", "last_message_seq": last})).await,
        (200, ok.clone())
    );

    let conversations = json!({"uid": "uid1", "version": 0, "last_msg_seqs": "", "msg_count": 20});
    let (status, list) = server.post("/conversation/sync", conversations).await;
    assert_eq!(status, 200, "{list}");
    let channels: BTreeSet<&str> = list.as_array().unwrap().iter().map(|c| c["channel_id"].as_str().unwrap()).collect();
    assert_eq!(channels, BTreeSet::from(["group1", "uid123"]), "the group and the batch's person chat");
    let person = json!({"uid": "uid1", "channel_id": "uid123", "channel_type": 1, "unread": 0});
    assert_eq!(server.post("/conversations/setUnread", person).await, (200, ok.clone()));
    let delete = json!({"uid": "uid1", "channel_id": "uid123", "channel_type": 1});
    assert_eq!(server.post("/conversations/delete", delete).await, (200, ok.clone()));
    server.stop().await;
}

/// `(METHOD, /path)` pairs named in docs/api.md as "`GET /x" or "`POST /x".
fn documented_endpoints() -> BTreeSet<(String, String)> {
    let doc = include_str!("../../../docs/api.md");
    let mut found = BTreeSet::new();
    for method in ["GET", "POST"] {
        let marker = format!("`{method} /");
        for (at, _) in doc.match_indices(&marker) {
            let rest = &doc[at + marker.len() - 1..];
            let end = rest.find(['`', ' ', '?']).unwrap_or(rest.len());
            let path = &rest[..end];
            // "`POST /channel/blacklist_add|blacklist_set|…" names several.
            let (base, first) = path.rsplit_once('/').unwrap();
            for name in first.split('|') {
                let name = if name.contains('/') { name.to_owned() } else { format!("{base}/{name}") };
                found.insert((method.to_lowercase(), name));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_openapi_document_names_every_route_served_and_documented() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.insert((method.clone(), path.clone()));
        }
    }
    assert!(listed.len() >= 45, "{} operations", listed.len());

    // Every POST says what it takes, from the handlers' own request types.
    for (method, path) in listed.iter().filter(|(m, _)| m == "post") {
        let schema = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema["type"] == "object" || schema["type"] == "array", "{path}: {schema}");
    }
    let send = &doc["paths"]["/message/send"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(send["required"], json!(["payload"]), "{send}");
    assert!(send["properties"]["header"].is_object() && send["properties"]["subscribers"]["type"] == "array");
    let query = &doc["paths"]["/channel/max_message_seq"]["get"]["parameters"];
    let names: BTreeSet<&str> = query.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["channel_id", "channel_type", "login_uid"]));

    // Everything listed is served: no 404 or 405 for its method (bad bodies get 400).
    for (method, path) in &listed {
        let status = if method == "get" { server.get(path).await.0 } else { server.post(path, json!({})).await.0 };
        assert!(status != 404 && status != 405, "{method} {path} answered {status}");
    }
    // The probe can tell: unknown paths and wrong methods are refused.
    assert_eq!(server.post("/no/such/route", json!({})).await.0, 404);
    assert_eq!(server.get("/message/send").await.0, 405);

    // Everything docs/api.md describes is listed, and everything listed is described.
    let documented = documented_endpoints();
    let missing: Vec<_> = documented.difference(&listed).collect();
    assert!(missing.is_empty(), "described in docs/api.md but not in the OpenAPI document: {missing:?}");
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "served but not described in docs/api.md: {undocumented:?}");
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_a_400_on_every_post_route() {
    let server = TestServer::start().await;
    let (_, doc) = server.get("/openapi.json").await;
    let http = reqwest::Client::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("post").is_none() {
            continue;
        }
        for body in ["{not json", "\"a string\"", "{\"channel_id\": 5, \"uid\": [], \"uids\": 7}"] {
            let resp =
                http.post(server.api(path)).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(status, 400, "{path} with {body}: {answer}");
            assert_eq!(answer["status"], 400, "{path}: {answer}");
            assert!(!answer["msg"].as_str().unwrap().is_empty(), "{path}: {answer}");
        }
        checked += 1;
    }
    assert!(checked >= 35, "{checked} POST routes");
    server.stop().await;
}
