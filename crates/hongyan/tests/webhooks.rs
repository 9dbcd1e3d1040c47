//! Webhooks and the datasource against a real HTTP receiver started by the test:
//! WuKongIM's event bodies, the offline rules, retries through a failing receiver,
//! events queued across a SIGKILL, and channels served by the datasource.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use common::{TestServer, b64, receive};
use hmac::{Hmac, Mac};
use hongyan_proto::{HeaderFlags, ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};
use serde_json::{Value, json};

/// One post the receiver took.
#[derive(Clone, Debug)]
struct Hit {
    event: String,
    id: u64,
    signature: Option<String>,
    timestamp: Option<String>,
    raw: Vec<u8>,
    body: Value,
    /// What the receiver answered.
    accepted: bool,
}

#[derive(Default)]
struct Receiver {
    hits: Mutex<Vec<Hit>>,
    /// Answer 500 to every webhook post while set.
    failing: AtomicBool,
    /// Datasource requests, by command.
    asked: Mutex<Vec<(String, Value)>>,
    /// `channel_id` → members the datasource reports; others have none, and
    /// `broken` fails with 500.
    remote: Mutex<BTreeMap<String, Vec<String>>>,
    datasource_calls: AtomicUsize,
    /// Datasource requests whose signature (under `ds-secret`) verified / did not.
    signed: AtomicUsize,
    unsigned: AtomicUsize,
}

impl Receiver {
    fn accepted(&self, event: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.accepted && h.event == event).cloned().collect()
    }

    fn refused(&self) -> usize {
        self.hits.lock().unwrap().iter().filter(|h| !h.accepted).count()
    }

    /// The accepted `msg.notify` messages, flattened in arrival order.
    fn notified(&self) -> Vec<Value> {
        self.accepted("msg.notify").into_iter().flat_map(|h| h.body.as_array().unwrap().clone()).collect()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}: {:#?}", self.hits);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn hook(
    State(rx): State<Arc<Receiver>>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> StatusCode {
    let accepted = !rx.failing.load(Ordering::SeqCst);
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    rx.hits.lock().unwrap().push(Hit {
        event: query.get("event").cloned().unwrap_or_default(),
        id: header("x-hongyan-event-id").unwrap().parse().unwrap(),
        signature: header("x-hongyan-signature"),
        timestamp: header("x-hongyan-timestamp"),
        raw: raw.to_vec(),
        body: serde_json::from_slice(&raw).unwrap(),
        accepted,
    });
    if accepted { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR }
}

async fn datasource(
    State(rx): State<Arc<Receiver>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    rx.datasource_calls.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_slice(&raw).unwrap();
    let cmd = req["cmd"].as_str().unwrap().to_owned();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let verified = match (header("x-hongyan-timestamp"), header("x-hongyan-event-id"), header("x-hongyan-signature")) {
        (Some(ts), Some(id), Some(signature)) => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"ds-secret-0000000").unwrap();
            mac.update(format!("{ts}.{cmd}.{id}.").as_bytes());
            mac.update(&raw);
            let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            signature == format!("v1={hex}")
        }
        _ => false,
    };
    if verified { &rx.signed } else { &rx.unsigned }.fetch_add(1, Ordering::SeqCst);
    rx.asked.lock().unwrap().push((cmd.clone(), req["data"].clone()));
    let channel = req["data"]["channel_id"].as_str().unwrap_or_default().to_owned();
    if channel == "redirected" {
        // Somewhere else: a datasource must not follow.
        return (StatusCode::TEMPORARY_REDIRECT, [("location", "/ds")], "").into_response();
    }
    if channel == "huge" && cmd == "getSubscribers" {
        let many: Vec<String> = (0..1_200_000).map(|i| format!("member-{i:08}")).collect();
        return (StatusCode::OK, json!(many).to_string()).into_response();
    }
    datasource_answer(&rx, req, cmd).into_response()
}

fn datasource_answer(rx: &Receiver, req: Value, cmd: String) -> (StatusCode, String) {
    if cmd == "getSystemUIDs" {
        return (StatusCode::OK, json!(["sysbot"]).to_string());
    }
    let channel = req["data"]["channel_id"].as_str().unwrap_or_default().to_owned();
    if channel == "broken" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down".into());
    }
    let members = rx.remote.lock().unwrap().get(&channel).cloned().unwrap_or_default();
    let answer = match cmd.as_str() {
        "getSubscribers" => json!(members),
        "getChannelInfo" => json!({"large": 0, "ban": 0, "disband": 0}),
        _ => json!([]),
    };
    (StatusCode::OK, answer.to_string())
}

async fn start_receiver() -> (Arc<Receiver>, SocketAddr) {
    let rx = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/ds", axum::routing::post(datasource))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, addr)
}

async fn hooked_server(receiver: SocketAddr, tweak: impl FnOnce(&mut hongyan::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.webhook.url = format!("http://{receiver}/hook");
        c.webhook.batch_interval_ms = 100;
        c.webhook.retry_initial_ms = 50;
        c.webhook.retry_max_ms = 200;
        tweak(c);
    })
    .await
}

async fn online(target: &Target, uid: &str, flag: u8) -> Client {
    let (client, connack) = Client::connect(target, uid, "t", flag, &format!("{uid}-{flag}"), 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success, "{uid} login");
    client
}

async fn group(server: &TestServer, id: &str, members: &[&str]) {
    let (status, _) =
        server.post("/channel", json!({"channel_id": id, "channel_type": 2, "subscribers": members})).await;
    assert_eq!(status, 200);
}

async fn http_send(server: &TestServer, from: &str, to: &str, channel_type: u8, text: &str) -> Value {
    let body = json!({"header": {"red_dot": 1}, "from_uid": from, "channel_id": to, "channel_type": channel_type, "payload": b64(text)});
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

fn red_dot() -> HeaderFlags {
    HeaderFlags { red_dot: true, ..HeaderFlags::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_have_wukongims_shapes_and_are_signed() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| c.webhook.secret = "hook-secret".into()).await;
    for uid in ["alice", "bob", "carol"] {
        server.register(uid, "t", device_flag::APP, 1).await;
    }
    group(&server, "g1", &["alice", "bob", "carol"]).await;
    let mut alice = online(&server.tcp(), "alice", device_flag::APP).await;
    let alice_conn = server.server.registry.connections("alice")[0].id;

    let ack = common::send_text(&mut alice, ("g1", 2), 1, "cmn-1", "hello group", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    rx.wait_for("msg.offline and msg.notify", |r| !r.accepted("msg.offline").is_empty() && !r.notified().is_empty())
        .await;

    // msg.offline: the message as the sync APIs show it, plus who to push.
    let offline = rx.accepted("msg.offline").remove(0).body;
    assert_eq!(offline["to_uids"], json!(["bob", "carol"]), "offline members, never the sender");
    assert_eq!(offline["from_uid"], "alice");
    assert_eq!((offline["channel_id"].as_str(), offline["channel_type"].as_u64()), (Some("g1"), Some(2)));
    assert_eq!(offline["message_id"].as_i64(), Some(ack.message_id));
    assert_eq!(offline["message_idstr"], ack.message_id.to_string());
    assert_eq!(offline["message_seq"], 1);
    assert_eq!(offline["client_msg_no"], "cmn-1");
    assert_eq!(offline["payload"], b64("hello group"));
    assert_eq!(offline["header"], json!({"no_persist": 0, "red_dot": 1, "sync_once": 0}));
    assert_eq!(offline["source_id"], 1001);

    // msg.notify: an array of stored messages.
    let notified = rx.notified();
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0]["message_id"].as_i64(), Some(ack.message_id));
    assert_eq!(notified[0]["channel_id"], "g1");
    assert!(notified[0].get("to_uids").is_none());

    // A person message names the channel as sent: the recipient.
    let sent = http_send(&server, "alice", "bob", 1, "hi bob").await;
    rx.wait_for("the person message", |r| {
        r.accepted("msg.offline").iter().any(|h| h.body["message_id"] == sent["message_id"])
    })
    .await;
    let person = rx.accepted("msg.offline").into_iter().find(|h| h.body["message_id"] == sent["message_id"]).unwrap();
    assert_eq!((person.body["channel_id"].as_str(), person.body["to_uids"].clone()), (Some("bob"), json!(["bob"])));

    // A NoPersist message is never stored (no msg.notify) but still pushed to the offline.
    let body = json!({"header": {"no_persist": 1}, "from_uid": "alice", "channel_id": "g1", "channel_type": 2, "payload": b64("ring ring")});
    let (status, _) = server.post("/message/send", body).await;
    assert_eq!(status, 200);
    rx.wait_for("the NoPersist push", |r| {
        r.accepted("msg.offline").iter().any(|h| h.body["header"]["no_persist"] == 1)
    })
    .await;
    let ring = rx.accepted("msg.offline").into_iter().find(|h| h.body["header"]["no_persist"] == 1).unwrap();
    assert_eq!(
        (ring.body["message_seq"].as_u64(), ring.body["payload"].as_str()),
        (Some(0), Some(b64("ring ring").as_str()))
    );
    assert_eq!(ring.body["to_uids"], json!(["bob", "carol"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.notified().iter().all(|m| m["message_id"] != ring.body["message_id"]), "not stored, not notified");

    // user.onlinestatus: "<uid>-<flag>-<online>-<conn>-<same flag count>-<total>".
    drop(alice);
    rx.wait_for("the logout", |r| {
        r.accepted("user.onlinestatus").iter().any(|h| h.raw.windows(9).any(|w| w == b"alice-0-0"))
    })
    .await;
    let presence: Vec<String> = rx
        .accepted("user.onlinestatus")
        .iter()
        .flat_map(|h| h.body.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>())
        .collect();
    assert_eq!(presence, [format!("alice-0-1-{alice_conn}-1-1"), format!("alice-0-0-{alice_conn}-0-0")]);

    // Every post is signed and has its own id.
    let hits = rx.hits.lock().unwrap().clone();
    let mut ids = BTreeSet::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for hit in &hits {
        // What a receiver does (docs/webhooks.md): recompute over time, event, id and
        // body, and refuse a stale timestamp.
        let timestamp = hit.timestamp.as_deref().expect("every signed post has a timestamp");
        assert!((now - timestamp.parse::<i64>().unwrap()).abs() < 300, "fresh: {timestamp}");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(format!("{timestamp}.{}.{}.", hit.event, hit.id).as_bytes());
        mac.update(&hit.raw);
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hit.signature.as_deref(), Some(format!("v1={hex}").as_str()));
        // The same body under another event name or id does not verify.
        let mut forged = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        forged.update(format!("{timestamp}.msg.notify.{}.", hit.id + 1).as_bytes());
        forged.update(&hit.raw);
        let forged: String = forged.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(hit.signature.as_deref(), Some(format!("v1={forged}").as_str()));
        assert!(ids.insert(hit.id), "event ids are unique");
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_webhook_sent_total{event=\"msg.offline\"}"), "{metrics}");
    server.stop().await;
}

/// A user online only on the web (a slave device) still gets pushes under WuKongIM's
/// rule, and does not under `no_device_online`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_rule_decides_who_gets_msg_offline() {
    use hongyan::config::OfflineRuleConfig::{NoDeviceOnline, NoMasterOnline};
    for (rule, pushed) in [(NoMasterOnline, true), (NoDeviceOnline, false)] {
        let (rx, addr) = start_receiver().await;
        let server = hooked_server(addr, |c| c.webhook.offline_rule = rule).await;
        server.register("dave", "t", device_flag::WEB, 0).await;
        server.register("erin", "t", device_flag::APP, 1).await;
        let _dave_web = online(&server.ws(), "dave", device_flag::WEB).await;
        let sent = http_send(&server, "erin", "dave", 1, "are you there").await;
        // msg.offline is queued before the message's msg.notify batch is.
        rx.wait_for("msg.notify", |r| r.notified().iter().any(|m| m["message_id"] == sent["message_id"])).await;
        if pushed {
            rx.wait_for("msg.offline", |r| !r.accepted("msg.offline").is_empty()).await;
            assert_eq!(rx.accepted("msg.offline")[0].body["to_uids"], json!(["dave"]), "{rule:?}");
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(rx.accepted("msg.offline").is_empty(), "{rule:?}: {:?}", rx.accepted("msg.offline"));
        }
        server.stop().await;
    }
}

/// In a cluster, `msg.offline` is posted once, by the node that stored the message,
/// and counts the recipients connected to other nodes as online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_offline_in_a_cluster_counts_every_nodes_connections() {
    let nats = common::NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let (rx, addr) = start_receiver().await;
    let member = |id: u64| {
        let (schema, url) = (schema.clone(), nats.url());
        move |c: &mut hongyan::Config| common::cluster_member(c, &schema, &url, id)
    };
    let one = hooked_server(addr, member(1)).await;
    let two = hooked_server(addr, member(2)).await;
    for uid in ["ann", "bob", "cid"] {
        one.register(uid, "t", device_flag::APP, 1).await;
    }
    common::eventually(Duration::from_secs(5), "both nodes live", || async {
        let (_, nodes) = one.get("/cluster/nodes").await;
        (nodes.as_array()?.iter().filter(|n| n["online"] == true).count() == 2).then_some(())
    })
    .await;
    let homed_on_one = common::group_homed_on(1, &[1, 2]);
    group(&two, &homed_on_one, &["ann", "bob", "cid"]).await;
    // bob's master device is on node 2; node 1 stores the group's messages.
    let _bob = online(&two.tcp(), "bob", device_flag::APP).await;
    common::eventually(Duration::from_secs(5), "node 1 sees bob online", || async {
        let (_, online) = one.post("/user/onlinestatus", json!(["bob"])).await;
        (online == json!(["bob"])).then_some(())
    })
    .await;
    let sent = http_send(&two, "ann", &homed_on_one, 2, "who is there").await;
    rx.wait_for("msg.offline", |r| {
        r.accepted("msg.offline").iter().any(|h| h.body["message_id"] == sent["message_id"])
    })
    .await;
    rx.wait_for("msg.notify", |r| r.notified().iter().any(|m| m["message_id"] == sent["message_id"])).await;
    let offline: Vec<Value> = rx
        .accepted("msg.offline")
        .into_iter()
        .filter(|h| h.body["message_id"] == sent["message_id"])
        .map(|h| h.body["to_uids"].clone())
        .collect();
    assert_eq!(offline, [json!(["cid"])], "bob is online on node 2; one event for the cluster");
    let notified = rx.notified().into_iter().filter(|m| m["message_id"] == sent["message_id"]).count();
    assert_eq!(notified, 1, "msg.notify once for the cluster");
    two.stop().await;
    one.stop().await;
}

/// The receiver fails for a while: every event is retried until it is accepted, and
/// each channel's events are accepted once each, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_event_once_in_order_per_channel() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| c.webhook.batch_max = 4).await;
    group(&server, "ga", &["sender", "x1", "x2"]).await;
    group(&server, "gb", &["sender", "y1"]).await;
    rx.failing.store(true, Ordering::SeqCst);
    for i in 0..12 {
        http_send(&server, "sender", if i % 2 == 0 { "ga" } else { "gb" }, 2, &format!("m{i}")).await;
    }
    rx.wait_for("refused attempts", |r| r.refused() >= 6).await;
    rx.failing.store(false, Ordering::SeqCst);
    rx.wait_for("everything", |r| r.notified().len() >= 12 && r.accepted("msg.offline").len() >= 12).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (name, accepted) in [
        ("msg.notify", rx.notified()),
        ("msg.offline", rx.accepted("msg.offline").into_iter().map(|h| h.body).collect()),
    ] {
        let mut per_channel: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for m in &accepted {
            per_channel
                .entry(m["channel_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(m["message_seq"].as_u64().unwrap());
        }
        let expected: Vec<u64> = (1..=6).collect();
        assert_eq!(per_channel.get("ga"), Some(&expected), "{name}");
        assert_eq!(per_channel.get("gb"), Some(&expected), "{name}");
    }
    let notify_posts = rx.accepted("msg.notify");
    assert!(notify_posts.iter().all(|h| h.body.as_array().unwrap().len() <= 4), "batches hold at most batch_max");
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_webhook_retries_total"), "{metrics}");
    server.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_server(data: &std::path::Path, api: u16, hook: SocketAddr) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_hongyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--tcp-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ws-addr", ""])
        .args(["--http-addr", &format!("127.0.0.1:{api}")])
        .args(["--manager-addr", &format!("127.0.0.1:{}", free_port())])
        .env("HONGYAN_WEBHOOK__URL", format!("http://{hook}/hook"))
        .env("HONGYAN_WEBHOOK__RETRY_INITIAL_MS", "50")
        .env("HONGYAN_WEBHOOK__RETRY_MAX_MS", "200")
        .env("HONGYAN_WEBHOOK__BATCH_INTERVAL_MS", "50")
        .env("HONGYAN_LOG__FILTER", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Events waiting for a failing receiver survive a SIGKILL of the server and are all
/// delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_when_the_server_is_killed_arrive_after_the_restart() {
    let (rx, addr) = start_receiver().await;
    let data = tempfile::tempdir().unwrap();
    let api = free_port();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{api}{path}");
    let mut child = spawn_server(data.path(), api, addr);
    let started = Instant::now();
    while http.get(url("/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = http
        .post(url("/channel"))
        .json(&json!({"channel_id": "gk", "channel_type": 2, "subscribers": ["s", "r1", "r2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    rx.failing.store(true, Ordering::SeqCst);
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        let body = json!({"from_uid": "s", "channel_id": "gk", "channel_type": 2, "payload": b64(&format!("k{i}"))});
        let answer: Value = http.post(url("/message/send")).json(&body).send().await.unwrap().json().await.unwrap();
        ids.insert(answer["data"]["message_id"].as_i64().unwrap());
    }
    rx.wait_for("refused attempts", |r| r.refused() >= 3).await;
    child.kill().unwrap(); // SIGKILL: nothing is flushed
    child.wait().unwrap();
    let before = rx.notified().len();
    assert_eq!(before, 0);

    rx.failing.store(false, Ordering::SeqCst);
    let mut child = spawn_server(data.path(), api, addr);
    let seen = |r: &Receiver, event: &str| -> BTreeSet<i64> {
        match event {
            "msg.notify" => r.notified().iter().map(|m| m["message_id"].as_i64().unwrap()).collect(),
            _ => r.accepted(event).iter().map(|h| h.body["message_id"].as_i64().unwrap()).collect(),
        }
    };
    rx.wait_for("every message's events", |r| seen(r, "msg.notify") == ids && seen(r, "msg.offline") == ids).await;
    let offline = rx.accepted("msg.offline");
    assert!(offline.iter().all(|h| h.body["to_uids"] == json!(["r1", "r2"])));
    let seqs: Vec<u64> = rx.notified().iter().map(|m| m["message_seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order: {seqs:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasource_channels_reach_their_members_and_failures_are_reported() {
    let (rx, addr) = start_receiver().await;
    rx.remote.lock().unwrap().insert("remote".into(), vec!["ann".into(), "ben".into()]);
    let server = TestServer::start_with(|c| {
        c.datasource.url = format!("http://{addr}/ds");
        c.auth.token_auth = false;
    })
    .await;
    let mut ann = online(&server.tcp(), "ann", device_flag::APP).await;
    let mut ben = online(&server.tcp(), "ben", device_flag::APP).await;
    let mut cat = online(&server.tcp(), "cat", device_flag::APP).await;

    // A member per the datasource sends; the other member gets it.
    let ack = common::send_text(&mut ann, ("remote", 2), 1, "r-1", "from the datasource", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (recv, text) = receive(&mut ben).await;
    assert_eq!((recv.channel_id.as_str(), text.as_str()), ("remote", "from the datasource"));
    // Not a member: refused like any non-subscriber.
    let ack = common::send_text(&mut cat, ("remote", 2), 1, "r-2", "let me in", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::SubscriberNotExist);
    let asked: Vec<String> = rx.asked.lock().unwrap().iter().map(|(cmd, _)| cmd.clone()).collect();
    for cmd in ["getChannelInfo", "getSubscribers", "getBlacklist", "getWhitelist"] {
        assert!(asked.contains(&cmd.to_owned()), "{cmd} in {asked:?}");
    }
    let asked_about_remote = rx
        .asked
        .lock()
        .unwrap()
        .iter()
        .any(|(cmd, data)| cmd == "getSubscribers" && *data == json!({"channel_id": "remote", "channel_type": 2}));
    assert!(asked_about_remote);
    // The sender's own person channel (its ban and mute) came from there too.
    assert!(rx.asked.lock().unwrap().iter().any(|(_, data)| *data == json!({"channel_id": "ann", "channel_type": 1})));

    // Answers are cached: more sends within the TTL ask nothing more about "remote".
    let remote_calls =
        |rx: &Receiver| rx.asked.lock().unwrap().iter().filter(|(_, d)| d["channel_id"] == "remote").count();
    let before = remote_calls(&rx);
    common::send_text(&mut ann, ("remote", 2), 2, "r-3", "again", red_dot()).await;
    receive(&mut ben).await;
    assert_eq!(remote_calls(&rx), before);

    // System accounts from the datasource may send anywhere.
    let mut bot = online(&server.tcp(), "sysbot", device_flag::APP).await;
    let ack = common::send_text(&mut bot, ("remote", 2), 1, "r-4", "announcement", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);

    // A redirect is a failure, not followed; an answer over the size cap is a failure.
    for channel in ["redirected", "huge"] {
        let body = json!({"from_uid": "ann", "channel_id": channel, "channel_type": 2, "payload": b64("x")});
        let (status, answer) = server.post("/message/send", body).await;
        assert_eq!(status, 503, "{channel}: {answer}");
    }
    assert_eq!(
        rx.asked.lock().unwrap().iter().filter(|(_, d)| d["channel_id"] == "redirected").count(),
        4,
        "each of the four commands asked once; nothing followed the redirect"
    );
    assert_eq!(rx.signed.load(Ordering::SeqCst), 0, "no secret configured: nothing signed");

    // A channel the datasource fails on: the send fails with a clear error, nothing is stored.
    let body = json!({"from_uid": "ann", "channel_id": "broken", "channel_type": 2, "payload": b64("x")});
    let (status, answer) = server.post("/message/send", body).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["status"], 503);
    assert!(answer["msg"].as_str().unwrap().starts_with("datasource: get"), "{answer}");
    let ack = common::send_text(&mut ann, ("broken", 2), 3, "r-5", "x", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::SystemError);
    let (status, answer) = server
        .post("/channel/messagesync", json!({"login_uid": "ann", "channel_id": "broken", "channel_type": 2}))
        .await;
    assert_eq!((status, answer["messages"].as_array().map(Vec::len)), (200, Some(0)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasource_requests_are_signed_like_webhooks() {
    let (rx, addr) = start_receiver().await;
    rx.remote.lock().unwrap().insert("remote".into(), vec!["ann".into()]);
    let server = TestServer::start_with(|c| {
        c.datasource.url = format!("http://{addr}/ds");
        c.datasource.secret = "ds-secret-0000000".into();
        c.auth.token_auth = false;
    })
    .await;
    let mut ann = online(&server.tcp(), "ann", device_flag::APP).await;
    let ack = common::send_text(&mut ann, ("remote", 2), 1, "r-1", "signed", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(rx.signed.load(Ordering::SeqCst) >= 4, "every command of the channel's load is signed");
    assert_eq!(rx.unsigned.load(Ordering::SeqCst), 0);
    server.stop().await;
}

/// An event that keeps failing past `webhook.max_age_secs` is dropped, counted, and no
/// longer holds up its lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_failing_past_their_max_age_are_dropped_and_counted() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| {
        c.webhook.max_age_secs = 1;
        c.webhook.events = vec!["msg.notify".into()];
    })
    .await;
    group(&server, "gd", &["s", "r"]).await;
    rx.failing.store(true, Ordering::SeqCst);
    let old = http_send(&server, "s", "gd", 2, "too late").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    rx.failing.store(false, Ordering::SeqCst);
    let new = http_send(&server, "s", "gd", 2, "in time").await;
    rx.wait_for("the newer message", |r| r.notified().iter().any(|m| m["message_id"] == new["message_id"])).await;
    assert!(rx.notified().iter().all(|m| m["message_id"] != old["message_id"]), "the old one was dropped");
    assert!(rx.refused() >= 2, "it was retried before being dropped");
    assert!(rx.accepted("msg.offline").is_empty() && rx.accepted("user.onlinestatus").is_empty(), "events not chosen");
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_webhook_dropped_total{event=\"msg.notify\"} 1"), "{metrics}");
    server.stop().await;
}

/// A receiver that is down cannot fill the disk: past `webhook.max_queue_bytes` new
/// events are dropped and counted, messaging goes on, and what was queued is delivered
/// once the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_events_and_messaging_goes_on() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| {
        c.webhook.events = vec!["msg.notify".into()];
        c.webhook.batch_max = 1;
        c.webhook.max_queue_bytes = 2_048;
    })
    .await;
    group(&server, "gq", &["s", "r"]).await;
    rx.failing.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(http_send(&server, "s", "gq", 2, &format!("message {i} with some text in it")).await);
    }
    let dropped = || async {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .find(|l| l.starts_with("hongyan_webhook_dropped_total") && l.contains("why=\"queue_full\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    while dropped().await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.failing.store(false, Ordering::SeqCst);
    // Wait until every message is either delivered or counted as dropped.
    let started = Instant::now();
    loop {
        let delivered = rx.notified().len();
        if delivered as f64 + dropped().await >= 30.0 {
            assert!(delivered > 0 && delivered < 30, "some were queued and delivered, the rest dropped: {delivered}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "events neither delivered nor dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every message itself was stored.
    let (_, history) =
        server.post("/channel/messagesync", json!({"channel_id": "gq", "channel_type": 2, "limit": 100})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 30);
    server.stop().await;
}

/// A message to a large group with most members offline gives one `msg.offline` per
/// 1,000 of them, but the queue holds the message once (in the log), not once per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_message_is_not_copied_into_every_offline_event() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| c.webhook.events = vec!["msg.offline".into()]).await;
    let members: Vec<String> = (0..2_500).map(|i| format!("member{i:04}")).collect();
    let (status, _) =
        server.post("/channel", json!({"channel_id": "big", "channel_type": 2, "subscribers": members})).await;
    assert_eq!(status, 200);
    rx.failing.store(true, Ordering::SeqCst);
    let payload = "p".repeat(48 * 1024);
    let sent = http_send(&server, "member0000", "big", 2, &payload).await;
    // Three events wait (2,499 offline members, 1,000 per event) ...
    let gauge = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    loop {
        let metrics = server.metrics().await;
        if gauge(&metrics, "hongyan_webhook_pending") >= 3.0 {
            // ... in far less than one copy of the 64 KiB (base64) message.
            let bytes = gauge(&metrics, "hongyan_webhook_pending_bytes");
            assert!(bytes > 0.0 && bytes < 48.0 * 1024.0, "the queue holds {bytes} bytes");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the events were not queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.failing.store(false, Ordering::SeqCst);
    rx.wait_for("three accepted events", |r| r.accepted("msg.offline").len() == 3).await;
    let mut reached = BTreeSet::new();
    for hit in rx.accepted("msg.offline") {
        assert_eq!(hit.body["message_id"], sent["message_id"]);
        assert_eq!(hit.body["payload"], b64(&payload), "each post carries the whole message");
        assert_eq!(hit.body["source_id"], 1001);
        let uids = hit.body["to_uids"].as_array().unwrap();
        assert!(uids.len() <= 1_000);
        reached.extend(uids.iter().map(|u| u.as_str().unwrap().to_owned()));
    }
    assert_eq!(reached.len(), 2_499, "every offline member but the sender, once");
    server.stop().await;
}

/// With only `user.onlinestatus` chosen, logins are posted and messages are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_chosen_events_are_sent() {
    let (rx, addr) = start_receiver().await;
    let server = hooked_server(addr, |c| c.webhook.events = vec!["user.onlinestatus".into()]).await;
    server.register("fay", "t", device_flag::APP, 1).await;
    group(&server, "gp", &["fay", "gus"]).await;
    let mut fay = online(&server.tcp(), "fay", device_flag::APP).await;
    let ack = common::send_text(&mut fay, ("gp", 2), 1, "p-1", "hello", red_dot()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    rx.wait_for("the login", |r| !r.accepted("user.onlinestatus").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let events: BTreeSet<String> = rx.hits.lock().unwrap().iter().map(|h| h.event.clone()).collect();
    assert_eq!(events, BTreeSet::from(["user.onlinestatus".to_owned()]));
    server.stop().await;
}
