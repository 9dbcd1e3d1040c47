//! Message operations in a cluster: a change made on one node is announced to members
//! connected to another, and changes racing on two nodes each take their own extra
//! version, none lost. Needs PostgreSQL (`POSTGRES_TEST_URL`) and nats-server, which
//! scripts/test.sh provides.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{NatsServer, TestServer, b64, cluster_member, eventually, receive, wait_for_presence};
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

async fn node(schema: &str, nats: &NatsServer, id: u64) -> TestServer {
    let (schema, url) = (schema.to_owned(), nats.url());
    TestServer::start_with(move |c| cluster_member(c, &schema, &url, id)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_two_nodes_take_one_version_each_and_reach_members_on_the_other() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let nodes = [node(&schema, &nats, 1).await, node(&schema, &nats, 2).await];
    eventually(Duration::from_secs(4), "both nodes see each other", || async {
        let (_, listed) = nodes[0].get("/cluster/nodes").await;
        (listed.as_array().is_some_and(|n| n.iter().filter(|n| n["online"] == true).count() == 2)).then_some(())
    })
    .await;
    let members: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    for uid in &members {
        nodes[0].register(uid, "t", device_flag::APP, 1).await;
    }
    let (s, _) =
        nodes[0].post("/channel", json!({"channel_id": "crew", "channel_type": 2, "subscribers": members})).await;
    assert_eq!(s, 200);
    let (mut u9, connack) = Client::connect(&nodes[1].tcp(), "u9", "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_presence(&all, &["u9"], &["u9"]).await;

    let body = json!({"from_uid": "u0", "channel_id": "crew", "channel_type": 2, "payload": b64("hello crew")});
    let (s, sent) = nodes[0].post("/message/send", body).await;
    assert_eq!(s, 200, "{sent}");
    let id = sent["data"]["message_id"].as_i64().unwrap();
    assert_eq!(receive(&mut u9).await.1, "hello crew");

    // Edited on node 1, announced to u9 on node 2.
    let edit = json!({"from_uid": "u0", "channel_id": "crew", "channel_type": 2, "message_id": id, "payload": b64("hello, crew")});
    let (s, a) = nodes[0].post("/message/edit", edit).await;
    assert_eq!((s, a["extra_version"].as_u64()), (200, Some(1)), "{a}");
    let (_, notice) = receive(&mut u9).await;
    let notice: Value = serde_json::from_str(&notice).unwrap();
    assert_eq!(notice["param"], json!({"channel_id": "crew", "channel_type": 2, "extra_version": 1}));

    // Every member reacts and marks it read, half through each node, all at once.
    let calls = members.iter().enumerate().flat_map(|(i, uid)| {
        let server = &nodes[i % 2];
        let react = json!({"uid": uid, "channel_id": "crew", "channel_type": 2, "message_id": id, "emoji": "👍"});
        let read = json!({"uid": uid, "channel_id": "crew", "channel_type": 2, "message_ids": [id]});
        [server.post("/message/reaction", react), server.post("/message/readed", read)]
    });
    let answers = futures_util::future::join_all(calls).await;
    // Every call but u0's read of its own message (the second answer) changed the
    // extra: 10 reactions and 9 reads after the edit, each with a version of its own.
    let mut versions = BTreeSet::new();
    for (n, (s, a)) in answers.iter().enumerate() {
        assert_eq!(*s, 200, "{a}");
        let extra = if a.is_array() { &a[0] } else { a };
        if n != 1 {
            assert!(versions.insert(extra["extra_version"].as_u64().unwrap()), "a version given twice: {a}");
        }
    }
    assert_eq!(versions, (2..=20).collect::<BTreeSet<u64>>());
    for server in &nodes {
        let (s, synced) = server.post("/message/extra/sync", json!({"channel_id": "crew", "channel_type": 2})).await;
        assert_eq!(s, 200, "{synced}");
        let extra = &synced[0];
        assert_eq!(extra["extra_version"], 20);
        assert_eq!(extra["reactions"], json!([{"emoji": "👍", "count": 10}]));
        assert_eq!(extra["readed_count"], 9);
        assert_eq!(extra["content_edit"], b64("hello, crew"));
    }
    for server in nodes {
        server.stop().await;
    }
}
