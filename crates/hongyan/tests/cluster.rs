//! Cluster membership and routing (docs/cluster.md): nodes on one PostgreSQL schema
//! and one nats-server find each other, route uids the same way from every node, refuse
//! a duplicate node id, and drop a killed node from every route within a lease.
//! Needs PostgreSQL (`POSTGRES_TEST_URL`) and nats-server, which scripts/test.sh
//! provides.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NatsServer, TestServer, cluster_member, eventually};
use hongyan_proto::{ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

/// A lease (2 s in these tests) plus a heartbeat interval and some slack.
const WITHIN_A_LEASE: Duration = Duration::from_secs(4);

async fn node(schema: &str, nats: &NatsServer, id: u64) -> TestServer {
    let (schema, url) = (schema.to_owned(), nats.url());
    TestServer::start_with(move |c| cluster_member(c, &schema, &url, id)).await
}

/// The ids `server` lists as online.
async fn online_ids(server: &TestServer) -> BTreeSet<u64> {
    let (status, nodes) = server.get("/cluster/nodes").await;
    assert_eq!(status, 200, "{nodes}");
    nodes.as_array().unwrap().iter().filter(|n| n["online"] == true).map(|n| n["id"].as_u64().unwrap()).collect()
}

async fn wait_for_members(servers: &[&TestServer], ids: &[u64]) {
    let wanted: BTreeSet<u64> = ids.iter().copied().collect();
    for server in servers {
        eventually(WITHIN_A_LEASE, &format!("node {} sees {wanted:?} online", server.config.node_id), || async {
            (online_ids(server).await == wanted).then_some(())
        })
        .await;
    }
}

fn uids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_group_uids_by_node_the_same_way_from_every_node() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let nodes = [node(&schema, &nats, 1).await, node(&schema, &nats, 2).await, node(&schema, &nats, 3).await];
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_members(&all, &[1, 2, 3]).await;

    let metrics = nodes[0].metrics().await;
    assert!(metrics.contains("hongyan_cluster_live_nodes 3"), "{metrics}");
    assert!(metrics.contains("hongyan_cluster_lease_held 1"), "{metrics}");

    let asked = uids(300);
    let first = nodes[0].post("/route/batch?intranet=0", json!(asked)).await;
    assert_eq!(first.0, 200, "{}", first.1);
    let groups = first.1.as_array().unwrap();
    assert_eq!(groups.len(), 3, "one group per live node: {}", first.1);
    // Each group carries its node's own addresses, and the groups partition the uids.
    let mut seen = BTreeSet::new();
    for (group, server) in groups.iter().zip(&nodes) {
        let tcp = server.server.gateway.tcp_addr.unwrap().to_string();
        let ws = format!("ws://{}", server.server.gateway.ws_addr.unwrap());
        assert_eq!((group["tcp_addr"].as_str(), group["ws_addr"].as_str()), (Some(&*tcp), Some(&*ws)), "{group}");
        let members = group["uids"].as_array().unwrap();
        assert!(members.len() > 50, "300 uids spread over 3 nodes: {} here", members.len());
        seen.extend(members.iter().map(|u| u.as_str().unwrap().to_owned()));
    }
    assert_eq!(seen, asked.iter().cloned().collect::<BTreeSet<_>>());
    // Every node answers the same, and /route agrees with /route/batch.
    for server in &nodes[1..] {
        assert_eq!(server.post("/route/batch?intranet=0", json!(asked)).await, first);
    }
    for (i, uid) in asked.iter().enumerate().take(30) {
        let asked_at = &nodes[i % 3];
        let (status, route) = asked_at.get(&format!("/route?uid={uid}")).await;
        assert_eq!(status, 200);
        let home = groups.iter().find(|g| g["uids"].as_array().unwrap().contains(&json!(uid))).unwrap();
        assert_eq!(route["tcp_addr"], home["tcp_addr"], "{uid}");
    }
    // intranet=1 gives the intranet address (the TCP address unless configured).
    let (_, intranet) = nodes[2].post("/route/batch?intranet=1", json!(["user-1"])).await;
    assert_eq!(intranet[0]["ws_addr"], "");
    assert!(intranet[0]["tcp_addr"].as_str().unwrap().starts_with("127.0.0.1:"));

    // /cluster/nodes: addresses, boot ids, which one is asked, connection counts.
    let client_node = &nodes[1];
    client_node.register("someone", "t", device_flag::APP, 1).await;
    let (client, connack) =
        Client::connect(&client_node.tcp(), "someone", "t", device_flag::APP, "d1", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let listed = eventually(WITHIN_A_LEASE, "node 1 sees node 2's connection", || async {
        let (_, listed) = nodes[0].get("/cluster/nodes").await;
        (listed[1]["connections"] == 1).then_some(listed)
    })
    .await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for (entry, server) in listed.iter().zip(&nodes) {
        assert_eq!(entry["id"], server.config.node_id);
        assert_eq!(entry["is_self"], server.config.node_id == 1);
        assert_eq!(entry["api_addr"], format!("http://{}", server.server.api_addr));
        assert_eq!(entry["boot_id"].as_str().unwrap().len(), 32);
        assert_eq!(entry["nats"], true, "{entry}");
        assert!(entry["heartbeat_at"].as_u64().unwrap() >= entry["started_at"].as_u64().unwrap());
    }
    drop(client);

    // A node that stops cleanly leaves every route at once; the others keep theirs.
    let [one, two, three] = nodes;
    three.stop().await;
    wait_for_members(&[&one, &two], &[1, 2]).await;
    let (_, after) = one.post("/route/batch", json!(asked)).await;
    let after = after.as_array().unwrap().clone();
    assert_eq!(after.len(), 2);
    for group in &after {
        let before = groups.iter().find(|g| g["tcp_addr"] == group["tcp_addr"]).unwrap();
        let kept: BTreeSet<&str> = before["uids"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
        let now: BTreeSet<&str> = group["uids"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
        assert!(kept.is_subset(&now), "a uid moved between two nodes that stayed");
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_node_with_the_same_id_is_refused() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let first = node(&schema, &nats, 7).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    cluster_member(&mut config, &schema, &nats.url(), 7);
    let Err(refused) = hongyan::start(config).await else { panic!("a duplicate node_id must be refused") };
    let message = format!("{refused:#}");
    assert!(message.contains("node_id 7 is held by a live node"), "{message}");
    assert!(message.contains(&first.server.api_addr.to_string()), "names the holder: {message}");
    // The first node is untouched.
    assert_eq!(online_ids(&first).await, BTreeSet::from([7]));
    first.stop().await;
}

/// The binary as node `id` of the cluster, with its API on `api`.
fn spawn_node(schema: &str, nats: &str, id: u64, api: u16, data: &std::path::Path) -> Child {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Command::new(env!("CARGO_BIN_EXE_hongyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--tcp-addr", &format!("127.0.0.1:{}", free())])
        .args(["--ws-addr", ""])
        .args(["--http-addr", &format!("127.0.0.1:{api}")])
        .args(["--manager-addr", &format!("127.0.0.1:{}", free())])
        .env("HONGYAN_NODE_ID", id.to_string())
        .env("HONGYAN_STORAGE__BACKEND", "postgres")
        .env("HONGYAN_STORAGE__POSTGRES_URL", common::postgres_url())
        .env("HONGYAN_STORAGE__POSTGRES_SCHEMA", schema)
        .env("HONGYAN_CLUSTER__NATS_URL", nats)
        .env("HONGYAN_CLUSTER__LEASE_MS", "2000")
        .env("HONGYAN_STORAGE__FAIL_STOP_GRACE_SECS", "0")
        .env("HONGYAN_LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A SIGKILLed node leaves every route within a lease; restarted, it rejoins under a
/// new boot id (its old row is taken over once the lease has run out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_routes_within_a_lease_and_rejoins_with_a_new_boot() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let one = node(&schema, &nats, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut killed = spawn_node(&schema, &nats.url(), 2, api, dir.path());
    wait_for_members(&[&one], &[1, 2]).await;
    let boot_of_two =
        |listed: &Value| listed.as_array().unwrap().iter().find(|n| n["id"] == 2).unwrap()["boot_id"].clone();
    let first_boot = boot_of_two(&one.get("/cluster/nodes").await.1);
    assert_eq!(one.post("/route/batch", json!(uids(100))).await.1.as_array().unwrap().len(), 2);

    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_for_members(&[&one], &[1]).await;
    let (_, groups) = one.post("/route/batch", json!(uids(100))).await;
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["uids"].as_array().unwrap().len(), 100);

    // Restarted at once: it waits out its old lease, then serves under a new boot.
    let mut restarted = spawn_node(&schema, &nats.url(), 2, api, dir.path());
    wait_for_members(&[&one], &[1, 2]).await;
    let second_boot = boot_of_two(&one.get("/cluster/nodes").await.1);
    assert_ne!(first_boot, second_boot);
    let answer = reqwest::get(format!("http://127.0.0.1:{api}/cluster/nodes")).await.unwrap();
    let listed: Value = answer.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().iter().filter(|n| n["online"] == true).count(), 2, "{listed}");

    // Killed and restarted at once: the new process waits out the old lease instead of
    // taking the old process for a live duplicate.
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    let mut again = spawn_node(&schema, &nats.url(), 2, api, dir.path());
    let third_boot = eventually(WITHIN_A_LEASE * 2, "node 2 back under a third boot", || async {
        let boot = boot_of_two(&one.get("/cluster/nodes").await.1);
        (boot != second_boot && online_ids(&one).await.contains(&2)).then_some(boot)
    })
    .await;
    assert_ne!(third_boot, first_boot);
    assert_eq!(again.try_wait().unwrap(), None, "the restarted node is still running");

    again.kill().unwrap();
    again.wait().unwrap();
    one.stop().await;
}

/// A node paused past its lease whose id was taken over meanwhile stops when it
/// resumes (exit status 70), rather than serve as a second node 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_whose_id_was_taken_over_stops_when_it_resumes() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let one = node(&schema, &nats, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut paused = spawn_node(&schema, &nats.url(), 3, api, dir.path());
    wait_for_members(&[&one], &[1, 3]).await;
    let signal = |sig: &str, child: &Child| {
        assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    };
    signal("-STOP", &paused);
    wait_for_members(&[&one], &[1]).await;
    let successor = node(&schema, &nats, 3).await;
    wait_for_members(&[&one, &successor], &[1, 3]).await;
    signal("-CONT", &paused);
    let status = eventually(Duration::from_secs(10), "the resumed node exits", || {
        std::future::ready(paused.try_wait().unwrap())
    })
    .await;
    assert_eq!(status.code(), Some(hongyan::FAIL_STOP_EXIT_CODE));
    // The successor keeps the id.
    assert_eq!(online_ids(&one).await, BTreeSet::from([1, 3]));
    let (_, listed) = one.get("/cluster/nodes").await;
    let three = listed.as_array().unwrap().iter().find(|n| n["id"] == 3).unwrap().clone();
    assert_eq!(three["api_addr"], format!("http://{}", successor.server.api_addr));
    successor.stop().await;
    one.stop().await;
}

/// Without a cluster the node lists itself and routes everyone to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_lists_itself_and_routes_everyone_to_itself() {
    let server = TestServer::start().await;
    let (status, listed) = server.get("/cluster/nodes").await;
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["id"].as_u64(), listed[0]["online"].as_bool()), (Some(1001), Some(true)));
    let (_, groups) = server.post("/route/batch", json!(uids(50))).await;
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["tcp_addr"], server.server.gateway.tcp_addr.unwrap().to_string());
    let (status, bad) = server.post("/route/batch", json!(["ok", "bad#uid"])).await;
    assert_eq!((status, bad["msg"].as_str().unwrap().starts_with("[1]:")), (400, true), "{bad}");
    server.stop().await;
}
