//! The cluster (docs/cluster.md): nodes on one PostgreSQL schema and one nats-server
//! find each other, route uids the same way from every node, refuse a duplicate node
//! id and drop a killed node from every route within a lease; each channel's messages
//! are stored by its one owner, whichever node they arrive at, with dense seqs; an
//! owner that is killed or paused loses its channels within a lease and nothing
//! acknowledged; nor does a NATS restart or a PostgreSQL outage longer than a lease. Needs PostgreSQL (`POSTGRES_TEST_URL`) and nats-server, which
//! scripts/test.sh provides.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pg_proxy::{Proxy, through};
use common::{NatsServer, TestServer, cluster_member, eventually, group_homed_on, wait_for_presence};
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

/// A node process a test started: killed (SIGCONT first, in case it was paused)
/// when dropped, so a failing test leaves no server behind.
struct NodeProcess(Child);

impl std::ops::Deref for NodeProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary as node `id` of the cluster, with its API on `api`.
fn spawn_node(schema: &str, nats: &str, id: u64, api: u16, data: &std::path::Path) -> NodeProcess {
    node_command(schema, nats, id, api, data).spawn().map(NodeProcess).unwrap()
}

/// Node 1 in process and node 2 as a spawned binary (its API on `api`, its data in
/// `dir`) on a fresh schema, each listed by node 1 as a member.
struct NodeOneAndTwo {
    nats: NatsServer,
    schema: String,
    one: TestServer,
    dir: tempfile::TempDir,
    api: u16,
    two: NodeProcess,
}

async fn node_one_and_spawned_two() -> NodeOneAndTwo {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let one = node(&schema, &nats, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let two = spawn_node(&schema, &nats.url(), 2, api, dir.path());
    wait_for_members(&[&one], &[1, 2]).await;
    NodeOneAndTwo { nats, schema, one, dir, api, two }
}

/// The command [`spawn_node`] runs (errors only in its log, which goes nowhere).
fn node_command(schema: &str, nats: &str, id: u64, api: u16, data: &std::path::Path) -> Command {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hongyan"));
    command
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
        .stderr(Stdio::null());
    command
}

/// Waits for `node` to end, at most `within`, and returns how it ended.
async fn exit_of(node: &mut NodeProcess, within: Duration, what: &str) -> std::process::ExitStatus {
    let asked = std::time::Instant::now();
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            return status;
        }
        assert!(asked.elapsed() < within, "{what} still running {within:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(node: &NodeProcess) {
    assert!(Command::new("kill").args(["-TERM", &node.0.id().to_string()]).status().unwrap().success());
}

/// With the NATS server gone, a node asked to stop (SIGTERM) still stops, and so does
/// one stopped in process: leaving the cluster does not wait for a bus that does not
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stop_when_asked_even_with_nats_down() {
    let NodeOneAndTwo { nats, one, mut two, dir: _dir, .. } = node_one_and_spawned_two().await;
    drop(nats);
    sigterm(&two);
    let status = exit_of(&mut two, Duration::from_secs(15), "node 2").await;
    assert!(status.success(), "node 2 exited with {status}");
    one.stop().await; // within TestServer::stop's 10 s
}

/// A node asked to stop while it is still starting (here: waiting out the lease of its
/// killed predecessor, already visible to its peers) stops cleanly at once, rather
/// than die by the signal or serve first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asked_to_stop_while_starting_stops_cleanly() {
    use std::io::BufRead;
    let NodeOneAndTwo { nats, schema, one, dir, api, two: mut killed } = node_one_and_spawned_two().await;
    killed.kill().unwrap();
    killed.wait().unwrap();

    // Its successor finds the row held and waits up to a lease and a half (3 s).
    let mut command = node_command(&schema, &nats.url(), 2, api, dir.path());
    command.env("HONGYAN_LOG__FILTER", "info").stdout(Stdio::piped()); // the log goes to stdout
    let mut starting = command.spawn().map(NodeProcess).unwrap();
    let (waiting, told) = std::sync::mpsc::channel();
    let log = std::io::BufReader::new(starting.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if line.contains("waiting for the lease to run out") {
                let _ = waiting.send(());
            }
        }
    });
    tokio::task::spawn_blocking(move || told.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the new node 2 waits for its predecessor's lease");
    sigterm(&starting);
    let status = exit_of(&mut starting, Duration::from_secs(2), "the starting node 2").await;
    assert!(status.success(), "the starting node 2 exited with {status}");
    // It never served: node 1 still sees only itself.
    wait_for_members(&[&one], &[1]).await;
    one.stop().await;
}

/// A SIGKILLed node leaves every route within a lease; restarted, it rejoins under a
/// new boot id (its old row is taken over once the lease has run out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_routes_within_a_lease_and_rejoins_with_a_new_boot() {
    let NodeOneAndTwo { nats, schema, one, dir, api, two: mut killed } = node_one_and_spawned_two().await;
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
    // The restarted node sees both (a view read at its start may predate node 1's
    // latest heartbeat on a loaded machine: it converges within a lease).
    eventually(WITHIN_A_LEASE, "the restarted node lists both nodes online", || async {
        let answer = reqwest::get(format!("http://127.0.0.1:{api}/cluster/nodes")).await.ok()?;
        let listed: Value = answer.json().await.ok()?;
        (listed.as_array()?.iter().filter(|n| n["online"] == true).count() == 2).then_some(())
    })
    .await;

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

/// `server`'s answer to `GET path`, which must succeed.
async fn answer_of(server: &TestServer, path: &str) -> Value {
    let (status, answer) = server.get(path).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// A connected, logged-in client of `server`.
async fn login(server: &TestServer, uid: &str, device: &str) -> Client {
    let (client, connack) = Client::connect(&server.tcp(), uid, "t", device_flag::APP, device, 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} on node {}", server.config.node_id);
    client
}

/// The (message id, seq) of every message of a channel, as `server` syncs them.
async fn history(server: &TestServer, login_uid: &str, channel: (&str, u8)) -> Vec<(i64, u64)> {
    let body = json!({"login_uid": login_uid, "channel_id": channel.0, "channel_type": channel.1,
        "start_message_seq": 0, "limit": 1000});
    let (status, answer) = server.post("/channel/messagesync", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["message_id"].as_i64().unwrap(), m["message_seq"].as_u64().unwrap()))
        .collect()
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Members of a group and of a person chat on different nodes send at once: every
/// message is stored by the channel's one owner, with dense seqs, acknowledged with
/// the seq it got, the same from every node; a resend through another node is stored
/// once; member changes made on any node are heard by the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_every_node_are_stored_by_the_channels_owner_with_dense_seqs() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let nodes = [node(&schema, &nats, 1).await, node(&schema, &nats, 2).await, node(&schema, &nats, 3).await];
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_members(&all, &[1, 2, 3]).await;
    for uid in ["ann", "bob", "cid", "dee"] {
        nodes[0].register(uid, "t", device_flag::APP, 1).await;
    }
    let (status, _) = nodes[1]
        .post("/channel", json!({"channel_id": "crew", "channel_type": 2, "subscribers": ["ann", "bob", "cid"]}))
        .await;
    assert_eq!(status, 200);

    // Each sender on its own node; 20 messages each, all in flight together.
    const EACH: u32 = 20;
    let mut senders = Vec::new();
    for (i, uid) in ["ann", "bob", "cid"].into_iter().enumerate() {
        let mut client = login(&nodes[i], uid, "d1").await;
        senders.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 1..=EACH {
                let ack = common::send_text(
                    &mut client,
                    ("crew", 2),
                    n,
                    &format!("{uid}-{n}"),
                    &format!("{uid} says {n}"),
                    hongyan_proto::HeaderFlags::default(),
                )
                .await;
                assert_eq!(ack.reason_code, ReasonCode::Success, "{uid}'s message {n}");
                acks.push((ack.message_id, u64::from(ack.message_seq)));
            }
            (client, acks)
        }));
    }
    let mut acked = Vec::new();
    let mut clients = Vec::new();
    let mut anns_first = None;
    for sender in senders {
        let (client, acks) = sender.await.unwrap();
        anns_first = anns_first.or(Some(acks[0]));
        acked.extend(acks);
        clients.push(client);
    }
    acked.sort_by_key(|(_, seq)| *seq);
    let seqs: Vec<u64> = acked.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (1..=u64::from(3 * EACH)).collect::<Vec<_>>(), "one dense run of seqs");
    for server in &nodes {
        assert_eq!(
            history(server, "ann", ("crew", 2)).await,
            acked,
            "node {} syncs what was acked",
            server.config.node_id
        );
    }
    // One node owns the group and admitted the other two nodes' sends. (The test's
    // nodes share one process, hence one metrics registry: the count is the cluster's.)
    let admitted = counter(&nodes[0].metrics().await, "hongyan_cluster_admitted_forwards_total");
    assert_eq!(admitted, u64::from(2 * EACH), "forwards admitted in the cluster");

    let owners = eventually(WITHIN_A_LEASE, "the owner's row counts its channel", || async {
        let (_, listed) = nodes[0].get("/cluster/nodes").await;
        let owned: Vec<u64> = listed.as_array()?.iter().map(|n| n["owned_channels"].as_u64().unwrap_or(0)).collect();
        (owned.iter().sum::<u64>() == 1).then_some(owned)
    })
    .await;
    assert_eq!(owners.iter().filter(|&&n| n == 1).count(), 1, "{owners:?}");

    // A resend of an acknowledged message through another node: the original's ids.
    // (From her web device: a second app device would kick the first.)
    nodes[0].register("ann", "t", device_flag::WEB, 1).await;
    let (mut ann_elsewhere, connack) =
        Client::connect(&nodes[2].tcp(), "ann", "t", device_flag::WEB, "d2", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let again = common::send_text(&mut ann_elsewhere, ("crew", 2), 1, "ann-1", "ann says 1", Default::default()).await;
    assert_eq!(again.reason_code, ReasonCode::Success);
    assert_eq!(Some((again.message_id, u64::from(again.message_seq))), anns_first, "the original's ids");
    assert_eq!(history(&nodes[0], "ann", ("crew", 2)).await.len(), 3 * EACH as usize, "stored once");

    // Member changes on any node reach the owner's admission.
    let (status, _) = nodes[2]
        .post("/channel/subscriber_add", json!({"channel_id": "crew", "channel_type": 2, "subscribers": ["dee"]}))
        .await;
    assert_eq!(status, 200);
    let mut dee = login(&nodes[0], "dee", "d1").await;
    // The owner hears of the change over NATS: the first sends may race the notice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seq = 0;
    loop {
        seq += 1;
        let ack = common::send_text(&mut dee, ("crew", 2), seq, &format!("dee-{seq}"), "hi", Default::default()).await;
        if ack.reason_code == ReasonCode::Success {
            break;
        }
        assert_eq!(ack.reason_code, ReasonCode::SubscriberNotExist);
        assert!(tokio::time::Instant::now() < deadline, "the owner never admitted the new member");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(dee);

    // A person chat between nodes: both directions in one channel, dense seqs.
    let mut bob_on_3 = login(&nodes[2], "bob", "d3").await;
    let a = common::send_text(&mut clients[0], ("bob", 1), 100, "p-1", "hi bob", Default::default()).await;
    let b = common::send_text(&mut bob_on_3, ("ann", 1), 1, "p-2", "hi ann", Default::default()).await;
    assert_eq!((a.reason_code, b.reason_code), (ReasonCode::Success, ReasonCode::Success));
    assert_eq!((a.message_seq, b.message_seq), (1, 2));

    // The app server's sends from every node continue the same run.
    let mut last = history(&nodes[0], "ann", ("crew", 2)).await.last().unwrap().1;
    for server in &nodes {
        let body = json!({"from_uid": "ann", "channel_id": "crew", "channel_type": 2, "payload": common::b64("app")});
        let (status, answer) = server.post("/message/send", body).await;
        assert_eq!(status, 200, "{answer}");
        last += 1;
        assert_eq!(answer["data"]["message_seq"], last, "from node {}", server.config.node_id);
    }
}

/// The owner of a busy group is paused past its lease: within a lease the other node
/// claims the group and stores the sends it could not forward; the resumed owner,
/// home again, claims the group back and continues from the other node's seqs. Every
/// acknowledged message is stored once, at the seq it was acknowledged with, and the
/// seqs stay dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_loses_its_channels_and_no_seq_is_stored_twice_or_skipped() {
    owner_fails(false).await;
}

/// The owner of a busy group is SIGKILLed during sends: within a lease the other node
/// owns the group, and every acknowledged message is stored once at its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_loses_nothing_acknowledged_and_its_channels_move() {
    owner_fails(true).await;
}

/// Node 2 owns a group that a client on node 1 sends to; node 2 is killed (`kill`) or
/// paused and resumed while the client keeps sending, resending what is refused.
async fn owner_fails(kill: bool) {
    let NodeOneAndTwo { one, two: mut paused, nats: _nats, dir: _dir, .. } = node_one_and_spawned_two().await;
    let mut ann = GroupSender::new(&one, group_homed_on(2, &[1, 2])).await;
    for n in 1..=5 {
        ann.send(n).await;
    }
    assert_eq!(ann.refused, 0, "node 2 answers while it runs");
    let signal = |sig: &str, child: &Child| {
        assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    };
    signal(if kill { "-KILL" } else { "-STOP" }, &paused);
    // The first send after the pause waits for an answer that does not come, and is
    // refused; by the time it is resent, node 2's lease has run out and node 1 owns
    // the group.
    for n in 6..=15 {
        ann.send(n).await;
    }
    assert!(ann.refused >= 1, "a send was forwarded to the lost owner");
    let last = if kill {
        15
    } else {
        // Resumed, node 2 renews its lease (nobody took its id) and is the group's home
        // again: it claims the group anew and continues from node 1's seqs.
        signal("-CONT", &paused);
        wait_for_members(&[&one], &[1, 2]).await;
        for n in 16..=20 {
            ann.send(n).await;
        }
        20
    };
    ann.check_stored(&one, last).await;
    let _ = paused.kill();
    paused.wait().unwrap();
    one.stop().await;
}

/// nats-server is restarted while a client sends to a group owned by another node:
/// the nodes reconnect by themselves, and every acknowledged message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_traffic_loses_nothing_acknowledged() {
    let nats = NatsServer::start();
    let port = nats.port;
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let (one, two) = (node(&schema, &nats, 1).await, node(&schema, &nats, 2).await);
    wait_for_members(&[&one, &two], &[1, 2]).await;
    let mut ann = GroupSender::new(&one, group_homed_on(2, &[1, 2])).await;
    for n in 1..=5 {
        ann.send(n).await;
    }
    drop(nats);
    let (restarted, mut nats) = (tokio::sync::oneshot::channel(), None);
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = restarted.0.send(NatsServer::start_on(Some(port)));
    });
    for n in 6..=15 {
        ann.send(n).await;
    }
    restart.await.unwrap();
    nats.replace(restarted.1.await.unwrap());
    // While NATS is down the sends wait (the client holds requests until it
    // reconnects, up to the forward timeout) or are refused and resent: either way
    // each is stored once.
    for n in 16..=20 {
        ann.send(n).await;
    }
    ann.check_stored(&two, 20).await;
    two.stop().await;
    one.stop().await;
}

/// PostgreSQL is taken from every node at once, for longer than a lease, while a
/// client on node 1 sends to a group node 2 owns and bob on node 3 receives: sends are
/// refused meanwhile (never acknowledged unstored); when the database is back each
/// node renews its own row (nobody could take it), the group is owned again, delivery
/// resumes where it stopped, and every acknowledged message is stored once at its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_longer_than_a_lease_loses_nothing_and_every_node_comes_back() {
    let nats = NatsServer::start();
    let (_, upstream) = through(&common::postgres_url(), "127.0.0.1:1".parse().unwrap());
    let proxy = std::sync::Arc::new(Proxy::start(upstream).await);
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let (schema, nats_url) = (schema.clone(), nats.url());
        let postgres_url = through(&common::postgres_url(), proxy.addr).0;
        nodes.push(
            TestServer::start_with(move |c| {
                cluster_member(c, &schema, &nats_url, id);
                c.storage.postgres_url = postgres_url;
                c.storage.postgres_connect_timeout_ms = 1_000;
                c.storage.postgres_statement_timeout_ms = 2_000;
            })
            .await,
        );
    }
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_members(&all, &[1, 2, 3]).await;
    let mut ann = GroupSender::new(all[0], group_homed_on(2, &[1, 2, 3])).await;
    all[0].register("bob", "t", device_flag::APP, 1).await;
    let mut bob = login(all[2], "bob", "b1").await;
    wait_for_presence(&all, &["ann", "bob"], &["ann", "bob"]).await;
    for n in 1..=5 {
        ann.send(n).await;
    }
    let group = ann.group.clone();
    let expected = |range: std::ops::RangeInclusive<u32>| -> Vec<(String, u32, String)> {
        range.map(|n| (group.clone(), n, format!("m{n}"))).collect()
    };
    assert_eq!(receive_n(&mut bob, 5).await, expected(1..=5));

    proxy.cut().await;
    let outage = WITHIN_A_LEASE;
    let back = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            proxy.restore();
        })
    };
    // Sent during the outage: refused (SENDACK 15) and resent until the database is
    // back and the group has an owner again.
    for n in 6..=10 {
        ann.send(n).await;
    }
    back.await.unwrap();
    assert!(ann.refused >= 1, "a send during the outage was refused");
    wait_for_members(&all, &[1, 2, 3]).await;
    assert_eq!(receive_n(&mut bob, 5).await, expected(6..=10), "delivery resumes in order, once");
    for node in &all {
        ann.check_stored(node, 10).await;
        assert_eq!(node.get("/health").await, (200, json!({"status": "ok"})), "node {}", node.config.node_id);
        assert!(!node.server.core.health().has_failed(), "node {}", node.config.node_id);
    }
    for node in nodes {
        node.stop().await;
    }
}

/// "ann", sending to a group of hers as a client does: each message resent (same
/// client_msg_no) until it is acknowledged.
struct GroupSender {
    client: Client,
    group: String,
    client_seq: u32,
    /// (client_msg_no, message id, seq) of each acknowledged message.
    acked: Vec<(String, i64, u64)>,
    refused: usize,
}

impl GroupSender {
    async fn new(server: &TestServer, group: String) -> Self {
        server.register("ann", "t", device_flag::APP, 1).await;
        let body = json!({"channel_id": group, "channel_type": 2, "subscribers": ["ann", "bob"]});
        assert_eq!(server.post("/channel", body).await.0, 200);
        let client = login(server, "ann", "d1").await;
        Self { client, group, client_seq: 0, acked: Vec::new(), refused: 0 }
    }

    async fn send(&mut self, n: usize) {
        let cmn = format!("m{n}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            self.client_seq += 1;
            let ack = send_patiently(&mut self.client, &self.group, self.client_seq, &cmn).await;
            if ack.reason_code == ReasonCode::Success {
                self.acked.push((cmn, ack.message_id, u64::from(ack.message_seq)));
                return;
            }
            assert_eq!(ack.reason_code, ReasonCode::SystemError, "{cmn}");
            self.refused += 1;
            assert!(tokio::time::Instant::now() < deadline, "{cmn} never acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every acknowledged message is stored once, at its acknowledged seq, and the
    /// seqs are 1..=`last`.
    async fn check_stored(&self, server: &TestServer, last: u64) {
        stored_as_acked(server, "ann", &self.group, &self.acked, last).await;
    }
}

/// Asserts that `group`'s messages, as `server` syncs them for `login_uid`, are
/// exactly `acked` ((client_msg_no, message id, seq), in seq order) with seqs
/// 1..=`last`, and returns them.
async fn stored_as_acked(
    server: &TestServer,
    login_uid: &str,
    group: &str,
    acked: &[(String, i64, u64)],
    last: u64,
) -> Vec<(String, i64, u64)> {
    let body = json!({"login_uid": login_uid, "channel_id": group, "channel_type": 2,
        "start_message_seq": 0, "limit": 1000});
    let (status, answer) = server.post("/channel/messagesync", body).await;
    assert_eq!(status, 200, "{answer}");
    let stored: Vec<(String, i64, u64)> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let cmn = m["client_msg_no"].as_str().unwrap().to_owned();
            (cmn, m["message_id"].as_i64().unwrap(), m["message_seq"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(stored, acked, "every acknowledged message once, at its acknowledged seq");
    assert_eq!(stored.iter().map(|m| m.2).collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "dense");
    stored
}

/// Seals a SEND to a group and waits for its SENDACK longer than a forward may take.
async fn send_patiently(client: &mut Client, group: &str, client_seq: u32, text: &str) -> hongyan_proto::Sendack {
    use hongyan_proto::{Packet, Send};
    let mut packet =
        Send { client_seq, client_msg_no: text.into(), channel_id: group.into(), channel_type: 2, ..Send::default() };
    client.cipher.as_ref().unwrap().seal_send(&mut packet, text.as_bytes());
    client.send(&Packet::Send(packet)).await.unwrap();
    loop {
        match client.recv_within(Duration::from_secs(15)).await.unwrap() {
            Packet::Sendack(ack) if ack.client_seq == client_seq => return ack,
            Packet::Recv(_) => continue,
            other => panic!("expected SENDACK, got {other:?}"),
        }
    }
}

/// The next `n` RECVs of `client`: (channel id, seq, text), acknowledged.
async fn receive_n(client: &mut Client, n: usize) -> Vec<(String, u32, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let (recv, text) = tokio::time::timeout(Duration::from_secs(5), common::receive(client))
            .await
            .unwrap_or_else(|_| panic!("RECV {} of {n} never came (got {got:?})", got.len() + 1));
        let ack =
            hongyan_proto::Recvack { flags: recv.flags, message_id: recv.message_id, message_seq: recv.message_seq };
        client.send(&hongyan_proto::Packet::Recvack(ack)).await.unwrap();
        got.push((recv.channel_id, recv.message_seq, text));
    }
    got
}

/// Recipients connected to other nodes than the channel's owner get each message at
/// once, in seq order and once per connection; the sending connection does not get
/// its own message back, the sender's other devices do; presence follows a user who
/// moves to another node, and `/user/onlinestatus` sees every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_recipients_on_every_node_once_and_in_order() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let nodes = [node(&schema, &nats, 1).await, node(&schema, &nats, 2).await, node(&schema, &nats, 3).await];
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_members(&all, &[1, 2, 3]).await;
    let everyone = ["ann", "bob", "cid", "dee"];
    for uid in everyone {
        nodes[0].register(uid, "t", device_flag::APP, 1).await;
    }
    nodes[0].register("ann", "t", device_flag::WEB, 1).await;
    let (status, _) =
        nodes[1].post("/channel", json!({"channel_id": "crew", "channel_type": 2, "subscribers": everyone})).await;
    assert_eq!(status, 200);

    let mut ann = login(&nodes[0], "ann", "d1").await;
    // Her web device (another flag: a second app device would kick the first).
    let (mut ann_elsewhere, connack) =
        Client::connect(&nodes[2].tcp(), "ann", "t", device_flag::WEB, "d2", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let mut bob = login(&nodes[1], "bob", "d1").await;
    let mut cid = login(&nodes[2], "cid", "d1").await;
    let mut dee = login(&nodes[0], "dee", "d1").await;
    wait_for_presence(&all, &everyone, &everyone).await;

    const N: u32 = 15;
    for n in 1..=N {
        let ack =
            common::send_text(&mut ann, ("crew", 2), n, &format!("m{n}"), &format!("ann {n}"), Default::default())
                .await;
        assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, n));
    }
    let expected: Vec<(String, u32, String)> = (1..=N).map(|n| ("crew".to_owned(), n, format!("ann {n}"))).collect();
    for (who, client) in
        [("bob", &mut bob), ("cid", &mut cid), ("dee", &mut dee), ("ann's other device", &mut ann_elsewhere)]
    {
        assert_eq!(receive_n(client, N as usize).await, expected, "{who}");
    }
    // Exactly once each: nothing more on any connection, and nothing back to the sender.
    for client in [&mut ann, &mut ann_elsewhere, &mut bob, &mut cid, &mut dee] {
        common::nothing_more(client).await;
    }
    let sent = counter(&nodes[0].metrics().await, "hongyan_cluster_deliveries_sent_total");
    assert!(sent <= u64::from(N) * 2, "at most one delivery per message per other node: {sent}");

    // A person chat between two nodes, both ways.
    let a = common::send_text(&mut bob, ("cid", 1), 100, "p1", "hi cid", Default::default()).await;
    assert_eq!(a.reason_code, ReasonCode::Success);
    assert_eq!(receive_n(&mut cid, 1).await, [("bob".to_owned(), 1, "hi cid".to_owned())]);
    let b = common::send_text(&mut cid, ("bob", 1), 100, "p2", "hi bob", Default::default()).await;
    assert_eq!(b.reason_code, ReasonCode::Success);
    assert_eq!(receive_n(&mut bob, 1).await, [("cid".to_owned(), 2, "hi bob".to_owned())]);

    // The app server's send through any node reaches every member.
    let body =
        json!({"from_uid": "dee", "channel_id": "crew", "channel_type": 2, "payload": common::b64("from the app")});
    let (status, answer) = nodes[1].post("/message/send", body).await;
    assert_eq!(status, 200, "{answer}");
    let seq = N + 1;
    for client in [&mut ann, &mut ann_elsewhere, &mut bob, &mut cid] {
        assert_eq!(receive_n(client, 1).await, [("crew".to_owned(), seq, "from the app".to_owned())]);
    }
    // dee's own device gets the app's message sent in its name (as on one node).
    assert_eq!(receive_n(&mut dee, 1).await, [("crew".to_owned(), seq, "from the app".to_owned())]);

    // bob moves from node 2 to node 1: presence follows him.
    drop(bob);
    wait_for_presence(&all, &everyone, &["ann", "cid", "dee"]).await;
    let mut bob = login(&nodes[0], "bob", "d1").await;
    wait_for_presence(&all, &everyone, &everyone).await;
    let ack = common::send_text(&mut cid, ("crew", 2), 101, "m-c", "cid here", Default::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let seq = ack.message_seq;
    assert_eq!(receive_n(&mut bob, 1).await, [("crew".to_owned(), seq, "cid here".to_owned())]);
    common::nothing_more(&mut bob).await;
}

/// The next packet of `client` is a DISCONNECT with `reason`.
async fn disconnected(client: &mut Client, reason: ReasonCode, what: &str) {
    loop {
        match client.recv_within(Duration::from_secs(5)).await {
            Ok(hongyan_proto::Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, reason, "{what}");
                return;
            }
            Ok(hongyan_proto::Packet::Recv(_)) => continue,
            other => panic!("{what}: expected DISCONNECT, got {other:?}"),
        }
    }
}

/// The kick rules and the app server's kicks reach a user's connections on every
/// node: a master login elsewhere, `/user/device_quit` and a ban asked of any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_kicks_on_one_node_close_connections_on_the_others() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let nodes = [node(&schema, &nats, 1).await, node(&schema, &nats, 2).await];
    let all: Vec<&TestServer> = nodes.iter().collect();
    wait_for_members(&all, &[1, 2]).await;
    for uid in ["ann", "bob"] {
        nodes[0].register(uid, "t", device_flag::APP, 1).await;
        nodes[0].register(uid, "t", device_flag::WEB, 1).await;
    }

    // A master login on node 2 kicks the same user's device of that flag on node 1.
    let mut ann_phone = login(&nodes[0], "ann", "phone").await;
    let (mut ann_web, _) = Client::connect(&nodes[0].tcp(), "ann", "t", device_flag::WEB, "web", 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // a later login by the clock
    let mut ann_tablet = login(&nodes[1], "ann", "tablet").await;
    disconnected(&mut ann_phone, ReasonCode::ConnectKick, "the older master device on node 1").await;
    ann_phone.expect_closed(Duration::from_secs(5)).await.unwrap();

    // /user/device_quit asked of node 1 closes ann's app device on node 2; her web
    // device on node 1 stays.
    let (status, _) = nodes[0].post("/user/device_quit", json!({"uid": "ann", "device_flag": device_flag::APP})).await;
    assert_eq!(status, 200);
    disconnected(&mut ann_tablet, ReasonCode::ConnectKick, "device quit on another node").await;

    // A ban asked of node 2 closes bob's connection on node 1.
    let mut bob = login(&nodes[0], "bob", "d1").await;
    let (status, _) = nodes[1].post("/channel/info", json!({"channel_id": "bob", "channel_type": 1, "ban": 1})).await;
    assert_eq!(status, 200);
    disconnected(&mut bob, ReasonCode::Ban, "a ban asked of another node").await;

    // The web device was never displaced: it still answers a ping.
    ann_web.send(&hongyan_proto::Packet::Ping).await.unwrap();
    assert!(matches!(ann_web.recv_within(Duration::from_secs(5)).await, Ok(hongyan_proto::Packet::Pong)));
}

/// What the busy-group test's senders and receiver saw.
#[derive(Default)]
struct Traffic {
    /// (client_msg_no, message id, seq) of every acknowledged message.
    acked: Vec<(String, i64, u64)>,
    /// (message id, seq) of every RECV the receiver got, in arrival order.
    received: Vec<(i64, u64)>,
}

/// The owner of a busy group — four senders, a receiver on another node — is
/// SIGKILLed three times in a row (node 2, then the node that took over, then node 2
/// again after it rejoined): every acknowledged message is stored once at its
/// acknowledged seq, the seqs are dense, the receiver gets each message at most once
/// and in seq order, delivery resumes within a lease or so of each kill, and once the
/// last owner is gone every later message reaches the receiver at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_of_a_busy_group_killed_again_and_again_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let one = node(&schema, &nats, 1).await;
    let spawn = |id: u64, dir: &std::path::Path| {
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        spawn_node(&schema, &nats.url(), id, api, dir)
    };
    let (dir2, dir3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut two = spawn(2, dir2.path());
    let mut three = spawn(3, dir3.path());
    wait_for_members(&[&one], &[1, 2, 3]).await;
    // Homed on node 2 while it lives; on node 3 without node 2.
    use hongyan_core::cluster::{NodeInfo, home_of};
    let live = |ids: &[u64]| ids.iter().map(|&id| NodeInfo::placed_only(id)).collect::<Vec<_>>();
    let group = (0..1024)
        .map(|i| format!("busy-{i}"))
        .find(|g| {
            let key = hongyan_store::ChannelKey::new(g.as_str(), 2).encoded();
            home_of(&key, &live(&[1, 2, 3])).unwrap().id == 2 && home_of(&key, &live(&[1, 3])).unwrap().id == 3
        })
        .unwrap();
    let senders = ["s1", "s2", "s3", "s4"];
    for uid in senders.iter().chain(&["bob"]) {
        one.register(uid, "t", device_flag::APP, 1).await;
    }
    let members: Vec<&str> = senders.iter().copied().chain(["bob"]).collect();
    let body = json!({"channel_id": group, "channel_type": 2, "subscribers": members});
    assert_eq!(one.post("/channel", body).await.0, 200);

    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for uid in senders {
        let mut client = login(&one, uid, "d1").await;
        let (traffic, stop, group) = (traffic.clone(), stop.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            let mut client_seq = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let cmn = format!("{uid}-{n}");
                loop {
                    client_seq += 1;
                    let ack = send_patiently(&mut client, &group, client_seq, &cmn).await;
                    if ack.reason_code == ReasonCode::Success {
                        let acked = (cmn.clone(), ack.message_id, u64::from(ack.message_seq));
                        traffic.lock().unwrap().acked.push(acked);
                        break;
                    }
                    assert_eq!(ack.reason_code, ReasonCode::SystemError, "{cmn}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let mut bob = login(&one, "bob", "d1").await;
    let done_receiving = Arc::new(AtomicBool::new(false));
    let (seen, done) = (traffic.clone(), done_receiving.clone());
    let receiver = tokio::spawn(async move {
        while !done.load(Ordering::Relaxed) {
            match bob.recv_within(Duration::from_millis(200)).await {
                Ok(hongyan_proto::Packet::Recv(recv)) => {
                    seen.lock().unwrap().received.push((recv.message_id, u64::from(recv.message_seq)));
                    let ack = hongyan_proto::Recvack {
                        flags: recv.flags,
                        message_id: recv.message_id,
                        message_seq: recv.message_seq,
                    };
                    bob.send(&hongyan_proto::Packet::Recvack(ack)).await.unwrap();
                }
                Ok(_) | Err(hongyan_testkit::ClientError::Timeout) => {}
                Err(e) => panic!("bob's connection: {e}"),
            }
        }
    });

    // Waits until bob got a message stored after everything acknowledged so far.
    let resumed = |what: &'static str| {
        let traffic = traffic.clone();
        async move {
            let before = traffic.lock().unwrap().acked.iter().map(|m| m.2).max().unwrap_or(0);
            // A lease (2 s) until node 1 sees the owner gone and stops waiting for its
            // answers, then the resend, the claim and the delivery: well under the 5 s a
            // forward would otherwise wait.
            eventually(WITHIN_A_LEASE + Duration::from_millis(500), what, || async {
                let t = traffic.lock().unwrap();
                (t.received.iter().any(|r| r.1 > before) && t.acked.iter().any(|m| m.2 > before)).then_some(())
            })
            .await;
        }
    };
    let kill = |child: &mut NodeProcess| {
        child.kill().unwrap();
        child.wait().unwrap();
    };
    resumed("traffic flows").await;
    kill(&mut two);
    resumed("delivery resumes after node 2, the owner, is killed").await;
    kill(&mut three);
    resumed("delivery resumes after node 3, the next owner, is killed").await;
    let mut two = spawn(2, dir2.path());
    wait_for_members(&[&one], &[1, 2]).await;
    resumed("delivery goes on once node 2 is back").await;
    kill(&mut two);
    resumed("delivery resumes after node 2 is killed again").await;
    // Node 1 alone now: every message stored from here on reaches bob at once.
    let from = traffic.lock().unwrap().acked.iter().map(|m| m.2).max().unwrap();
    eventually(WITHIN_A_LEASE, "20 more messages", || async {
        (traffic.lock().unwrap().acked.iter().map(|m| m.2).max().unwrap() >= from + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let last = traffic.lock().unwrap().acked.iter().map(|m| m.2).max().unwrap();
    eventually(WITHIN_A_LEASE, "bob gets every message stored after the last takeover", || async {
        let t = traffic.lock().unwrap();
        (from + 1..=last).all(|seq| t.received.iter().any(|r| r.1 == seq)).then_some(())
    })
    .await;
    done_receiving.store(true, Ordering::Relaxed);
    receiver.await.unwrap();
    let (mut acked, received) = {
        let traffic = traffic.lock().unwrap();
        (traffic.acked.clone(), traffic.received.clone())
    };
    acked.sort_by_key(|m| m.2);
    let last = acked.last().unwrap().2;
    let stored = stored_as_acked(&one, "bob", &group, &acked, last).await;
    // bob got each message at most once, in seq order, as it was stored.
    assert!(received.windows(2).all(|w| w[0].1 < w[1].1), "in seq order, once each: {received:?}");
    for r in &received {
        assert!(stored.iter().any(|m| (m.1, m.2) == *r), "{r:?} was stored so");
    }
    println!("{} messages acknowledged over three kills; bob got {} at once", stored.len(), received.len());
    one.stop().await;
}

/// `/connz` and both forms of `/user/onlinestatus` answer for every node, whichever
/// node is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_from_any_node() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let devices = |id: u64| {
        let (schema, url) = (schema.clone(), nats.url());
        move |c: &mut hongyan::Config| {
            cluster_member(c, &schema, &url, id);
            c.api.onlinestatus_format = hongyan_api::OnlineStatusFormat::Devices;
        }
    };
    let one = TestServer::start_with(devices(1)).await;
    let two = TestServer::start_with(devices(2)).await;
    wait_for_members(&[&one, &two], &[1, 2]).await;
    for uid in ["ann", "bob"] {
        one.register(uid, "t", device_flag::APP, 1).await;
    }
    one.register("ann", "t", device_flag::WEB, 1).await;
    let _ann_phone = login(&one, "ann", "phone").await;
    let (mut ann_web, _) = Client::connect(&two.tcp(), "ann", "t", device_flag::WEB, "web", 5).await.unwrap();
    let _bob = login(&two, "bob", "d1").await;
    eventually(WITHIN_A_LEASE, "node 1 lists ann's devices on both nodes", || async {
        let (_, answer) = one.post("/user/onlinestatus", json!(["ann", "bob", "nobody"])).await;
        let mut found: Vec<(String, u64)> = answer
            .as_array()?
            .iter()
            .map(|e| (e["uid"].as_str().unwrap().to_owned(), e["device_flag"].as_u64().unwrap()))
            .collect();
        found.sort();
        let wanted = [("ann".to_owned(), 0), ("ann".to_owned(), 1), ("bob".to_owned(), 0)];
        (found == wanted).then_some(())
    })
    .await;

    // One user's connections on every node, asked of either node.
    for server in [&one, &two] {
        let (status, answer) = server.get("/connz?uid=ann").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["total"], 2, "{answer}");
        let listed: Vec<(u64, &str)> = answer["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["node_id"].as_u64().unwrap(), c["device_id"].as_str().unwrap()))
            .collect();
        assert_eq!(listed, [(1, "phone"), (2, "web")]);
    }
    // Another node's page, asked of node 1.
    let (status, answer) = one.get("/connz?node_id=2").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["node_id"].as_u64(), answer["total"].as_u64()), (Some(2), Some(2)), "{answer}");
    let uids: BTreeSet<&str> =
        answer["connections"].as_array().unwrap().iter().map(|c| c["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["ann", "bob"].into_iter().collect());
    // Filtered on the node that holds them: ann's web device only.
    let (status, answer) = one.get("/connz?node_id=2&device_id=web").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["total"].as_u64(), Some(1), "{answer}");
    assert_eq!(answer["connections"][0]["uid"], "ann", "{answer}");
    let (status, answer) = one.get("/connz?node_id=9").await;
    assert_eq!(status, 400, "no node 9: {answer}");

    // A connection on node 2, kicked through node 1.
    let web = answer_of(&two, "/connz?uid=ann").await["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node_id"] == 2)
        .unwrap()["id"]
        .clone();
    let (status, answer) = one.post("/conn/kick", json!({"uid": "ann", "conn_id": web, "node_id": 2})).await;
    assert_eq!(status, 200, "{answer}");
    disconnected(&mut ann_web, ReasonCode::ConnectKick, "ann's web connection, kicked through node 1").await;
    two.stop().await;
    one.stop().await;
}

/// The console's Cluster page (hidden on a single node) lists both nodes of a running
/// cluster as online, in headless Chromium (`tests/conformance/console-cluster.mjs`);
/// its screenshot is the one in `docs/console.md`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_the_cluster_nodes() {
    let nats = NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let member = |id: u64| {
        let (schema, url) = (schema.clone(), nats.url());
        move |c: &mut hongyan::Config| {
            cluster_member(c, &schema, &url, id);
            c.manager_token = "cluster-console".into();
        }
    };
    let one = TestServer::start_with(member(1)).await;
    let two = TestServer::start_with(member(2)).await;
    wait_for_members(&[&one, &two], &[1, 2]).await;
    let screenshots = common::repo_root().join("docs/images");
    eprintln!("console screenshots: {}", screenshots.display());
    let scenario = json!({
        "url": format!("http://{}", one.server.manager_addr),
        "token": "cluster-console",
        "nodes": [1, 2],
        "screenshots": screenshots,
    });
    let result = common::browser_scenario("console-cluster.mjs", &scenario, Duration::from_secs(90)).await;
    assert_eq!(result["ok"], true, "cluster console scenario failed: {result}");
    let size = std::fs::metadata(screenshots.join("console-cluster.png")).map_or(0, |m| m.len());
    assert!(size > 1000, "console-cluster.png was written");
    two.stop().await;
    one.stop().await;
}
