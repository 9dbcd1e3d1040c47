//! Conformance with a client we did not write: the official WuKongIM JS SDK
//! (`wukongimjssdk` 1.0.4, protocol v2, always encrypting), one Node process per client,
//! driven through `tests/conformance/client.mjs`. `./scripts/test.sh` installs and
//! bundles it first (`npm ci && npm run build` in `tests/conformance`).

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, b64, text_of};
use hongyan_proto::device_flag;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn bundle() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/dist/client.cjs");
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test.sh, or `npm ci && npm run build` in tests/conformance",
        path.display()
    );
    path
}

/// One SDK in its own Node process.
struct Sdk {
    uid: String,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Sdk {
    async fn start(server: &TestServer, uid: &str, token: &str) -> Self {
        Self::start_with_heartbeat(server, uid, token, None).await
    }

    async fn start_with_heartbeat(server: &TestServer, uid: &str, token: &str, heartbeat_ms: Option<u64>) -> Self {
        let addr = format!("ws://{}", server.server.gateway.ws_addr.unwrap());
        let mut child = Command::new("node")
            .arg(bundle())
            .args([addr.as_str(), uid, token])
            .args(heartbeat_ms.map(|ms| ms.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(event);
                }
            }
        });
        let mut sdk = Self { uid: uid.to_owned(), child, stdin, events };
        sdk.expect(|e| e["event"] == "ready").await;
        sdk
    }

    async fn command(&mut self, command: Value) {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next event `wanted` accepts, skipping others.
    async fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let uid = self.uid.clone();
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.events.recv().await.unwrap_or_else(|| panic!("{uid}: the SDK process ended"));
                if wanted(&event) {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{uid}: no such event within {WAIT:?}"))
    }

    async fn connect(&mut self) {
        self.command(json!({"op": "connect"})).await;
        let status = self.expect(|e| e["event"] == "status").await;
        assert_eq!(status["status"], 1, "{}: connected: {status}", self.uid);
    }

    async fn send(&mut self, to: &str, channel_type: u8, text: &str) -> Value {
        self.command(json!({"op": "send", "to": to, "channelType": channel_type, "text": text})).await;
        self.expect(|e| e["event"] == "sendack").await
    }

    async fn message(&mut self) -> Value {
        self.expect(|e| e["event"] == "message").await
    }

    /// Asserts no event `unwanted` accepts arrives within `within`.
    async fn none(&mut self, within: Duration, unwanted: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            // A process that died says nothing either; that is not the silence asked for.
            let event = next.unwrap_or_else(|| panic!("{}: the SDK process ended", self.uid));
            assert!(!unwanted(&event), "{}: unexpected {event}", self.uid);
        }
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn web_user(server: &TestServer, uid: &str, master: bool) -> Sdk {
    server.register(uid, &format!("tok-{uid}"), device_flag::WEB, u8::from(master)).await;
    let mut sdk = Sdk::start(server, uid, &format!("tok-{uid}")).await;
    sdk.connect().await;
    sdk
}

#[tokio::test]
async fn sdk_connects_and_a_wrong_token_fails_without_a_reconnect_storm() {
    let server = TestServer::start().await;
    let _ok = web_user(&server, "sdk-ok", true).await;
    server.register("sdk-bad", "right", device_flag::WEB, 1).await;
    let mut bad = Sdk::start(&server, "sdk-bad", "wrong").await;
    bad.command(json!({"op": "connect"})).await;
    let status = bad.expect(|e| e["event"] == "status").await;
    assert_eq!(
        (status["status"].as_i64(), status["reasonCode"].as_i64()),
        (Some(3), Some(2)),
        "ConnectFail, AuthFail: {status}"
    );
    // The SDK stops reconnecting after a refusal: the socket closes (status 0) and no
    // further attempt follows in 4 s (it retries every 3 s otherwise).
    bad.none(Duration::from_secs(4), |e| e["event"] == "status" && e["status"] != 0).await;
    let refused = server.metrics().await;
    let attempts: f64 = refused
        .lines()
        .find(|l| l.starts_with("hongyan_gateway_handshakes_total") && l.contains("auth_fail"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(attempts, 1.0, "one refused handshake, not a storm");
    server.stop().await;
}

#[tokio::test]
async fn person_chat_both_ways_and_every_recv_acknowledged() {
    let server = TestServer::start().await;
    let mut ann = web_user(&server, "sdk-ann", true).await;
    let mut ben = web_user(&server, "sdk-ben", true).await;
    let ack = ann.send("sdk-ben", 1, "hi ben, 你好 🪿").await;
    assert_eq!((ack["reasonCode"].as_i64(), ack["seq"].as_i64()), (Some(1), Some(1)), "{ack}");
    let got = ben.message().await;
    assert_eq!(
        (got["from"].as_str(), got["channel"].as_str(), got["text"].as_str()),
        (Some("sdk-ann"), Some("sdk-ann"), Some("hi ben, 你好 🪿"))
    );
    let ack = ben.send("sdk-ann", 1, "hi ann").await;
    assert_eq!((ack["reasonCode"].as_i64(), ack["seq"].as_i64()), (Some(1), Some(2)));
    let got = ann.message().await;
    assert_eq!(
        (got["from"].as_str(), got["channel"].as_str(), got["text"].as_str()),
        (Some("sdk-ben"), Some("sdk-ben"), Some("hi ann"))
    );
    // The SDK acknowledges each RECV: nothing is left to retry.
    let acked = async {
        while !server.server.core.retry_queue().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, acked).await.expect("the SDK's RECVACKs empty the retry queue");
    server.stop().await;
}

#[tokio::test]
async fn group_chat_reaches_three_sdk_clients() {
    let server = TestServer::start().await;
    let uids = ["sdk-g1", "sdk-g2", "sdk-g3", "sdk-g4"];
    let (s, _) =
        server.post("/channel", json!({"channel_id": "sdk-group", "channel_type": 2, "subscribers": uids})).await;
    assert_eq!(s, 200);
    let mut clients = Vec::new();
    for uid in uids {
        clients.push(web_user(&server, uid, true).await);
    }
    let ack = clients[0].send("sdk-group", 2, "hello group").await;
    assert_eq!(ack["reasonCode"], 1, "{ack}");
    for client in &mut clients[1..] {
        let got = client.message().await;
        assert_eq!(
            (got["from"].as_str(), got["channel"].as_str(), got["channelType"].as_i64()),
            (Some("sdk-g1"), Some("sdk-group"), Some(2))
        );
        assert_eq!(got["text"], "hello group");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_sdk_hears_of_edits_and_reads_as_commands_and_not_as_messages() {
    let server = TestServer::start().await;
    let uids = ["sdk-x1", "sdk-x2"];
    let (s, _) = server.post("/channel", json!({"channel_id": "sdk-x", "channel_type": 2, "subscribers": uids})).await;
    assert_eq!(s, 200);
    let mut sender = web_user(&server, "sdk-x1", true).await;
    let mut member = web_user(&server, "sdk-x2", true).await;
    let ack = sender.send("sdk-x", 2, "to be fixed").await;
    assert_eq!(ack["reasonCode"], 1, "{ack}");
    let got = member.message().await;
    let id: i64 = got["messageId"].as_str().unwrap().parse().unwrap();

    let change = |payload: Option<&str>| {
        let mut body = json!({"from_uid": "sdk-x1", "channel_id": "sdk-x", "channel_type": 2, "message_id": id});
        if let Some(p) = payload {
            body["payload"] = json!(common::b64(p));
        }
        body
    };
    let (s, a) = server.post("/message/edit", change(Some(r#"{"type":1,"content":"fixed"}"#))).await;
    assert_eq!(s, 200, "{a}");
    for client in [&mut sender, &mut member] {
        let cmd = client.expect(|e| e["event"] == "cmd").await;
        assert_eq!((cmd["cmd"].as_str(), cmd["channel"].as_str()), (Some("syncMessageExtra"), Some("sdk-x")), "{cmd}");
        assert_eq!(cmd["param"], json!({"channel_id": "sdk-x", "channel_type": 2, "extra_version": 1}));
    }
    // A read is told to the sender only; the member's next event is the next message.
    let (s, _) = server
        .post(
            "/message/readed",
            json!({"uid": "sdk-x2", "channel_id": "sdk-x", "channel_type": 2, "message_ids": [id]}),
        )
        .await;
    assert_eq!(s, 200);
    let cmd = sender.expect(|e| e["event"] == "cmd").await;
    assert_eq!(cmd["param"]["extra_version"], 2);
    let ack = sender.send("sdk-x", 2, "next").await;
    assert_eq!(ack["reasonCode"], 1);
    let next = member.expect(|e| e["event"] == "message" || e["event"] == "cmd").await;
    assert_eq!((next["event"].as_str(), next["text"].as_str()), (Some("message"), Some("next")), "{next}");
    server.stop().await;
}

#[tokio::test]
async fn a_second_master_login_kicks_the_first_sdk() {
    let server = TestServer::start().await;
    let mut first = web_user(&server, "sdk-kick", true).await;
    let _second = {
        let mut sdk = Sdk::start(&server, "sdk-kick", "tok-sdk-kick").await;
        sdk.connect().await;
        sdk
    };
    let status = first.expect(|e| e["event"] == "status").await;
    assert_eq!(
        (status["status"].as_i64(), status["reasonCode"].as_i64()),
        (Some(4), Some(12)),
        "ConnectKick: {status}"
    );
    // Kicked SDKs do not reconnect and fight the new login.
    first.none(Duration::from_secs(4), |e| e["event"] == "status" && e["status"] == 1).await;
    server.stop().await;
}

/// The same SDK clients on different nodes of a 3-node cluster (PostgreSQL and
/// nats-server): person and group chat arrive on every node, and a second master
/// login on another node kicks the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_cluster_sdk_clients_on_different_nodes_chat_and_kick() {
    let nats = common::NatsServer::start();
    let schema = hongyan_store_postgres::testing::fresh_schema();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let (schema, url) = (schema.clone(), nats.url());
        nodes.push(TestServer::start_with(move |c| common::cluster_member(c, &schema, &url, id)).await);
    }
    let all: Vec<&TestServer> = nodes.iter().collect();
    let uids = ["sdk-c1", "sdk-c2", "sdk-c3"];
    let (s, _) =
        nodes[0].post("/channel", json!({"channel_id": "sdk-crew", "channel_type": 2, "subscribers": uids})).await;
    assert_eq!(s, 200);
    let mut clients = Vec::new();
    for (uid, node) in uids.iter().zip(&nodes) {
        clients.push(web_user(node, uid, true).await);
    }
    common::wait_for_presence(&all, &uids, &uids).await;

    // Person chat between node 1 and node 2, both ways.
    let ack = clients[0].send("sdk-c2", 1, "hi from node 1").await;
    assert_eq!((ack["reasonCode"].as_i64(), ack["seq"].as_i64()), (Some(1), Some(1)), "{ack}");
    let got = clients[1].message().await;
    assert_eq!((got["from"].as_str(), got["text"].as_str()), (Some("sdk-c1"), Some("hi from node 1")));
    let ack = clients[1].send("sdk-c1", 1, "hi from node 2").await;
    assert_eq!((ack["reasonCode"].as_i64(), ack["seq"].as_i64()), (Some(1), Some(2)), "{ack}");
    let got = clients[0].message().await;
    assert_eq!((got["from"].as_str(), got["text"].as_str()), (Some("sdk-c2"), Some("hi from node 2")));

    // A group message from node 3 reaches nodes 1 and 2.
    let ack = clients[2].send("sdk-crew", 2, "hello crew").await;
    assert_eq!(ack["reasonCode"], 1, "{ack}");
    for client in &mut clients[..2] {
        let got = client.message().await;
        assert_eq!(
            (got["from"].as_str(), got["channel"].as_str(), got["text"].as_str()),
            (Some("sdk-c3"), Some("sdk-crew"), Some("hello crew"))
        );
    }

    // A second master login of sdk-c1 on node 3 kicks the first, on node 1.
    let _second = {
        let mut sdk = Sdk::start(&nodes[2], "sdk-c1", "tok-sdk-c1").await;
        sdk.connect().await;
        sdk
    };
    let status = clients[0].expect(|e| e["event"] == "status").await;
    assert_eq!((status["status"].as_i64(), status["reasonCode"].as_i64()), (Some(4), Some(12)), "{status}");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn http_sends_arrive_and_an_offline_sdk_catches_up_through_sync() {
    let server = TestServer::start().await;
    let mut live = web_user(&server, "sdk-live", true).await;
    let (s, _) = server
        .post("/message/send", json!({"from_uid": "app", "channel_id": "sdk-live", "channel_type": 1, "payload": b64("{\"type\":1,\"content\":\"from the app server\"}")}))
        .await;
    assert_eq!(s, 200);
    let got = live.message().await;
    assert_eq!((got["from"].as_str(), got["text"].as_str()), (Some("app"), Some("from the app server")));

    // sdk-away disconnects; messages meanwhile are found through conversation and history sync.
    let mut away = web_user(&server, "sdk-away", true).await;
    away.command(json!({"op": "disconnect"})).await;
    away.expect(|e| e["event"] == "disconnected").await;
    for text in ["one", "two", "three"] {
        let ack = live.send("sdk-away", 1, text).await;
        assert_eq!(ack["reasonCode"], 1);
    }
    let (_, conversations) = server.post("/conversation/sync", json!({"uid": "sdk-away", "msg_count": 1})).await;
    assert_eq!(
        (conversations[0]["channel_id"].as_str(), conversations[0]["unread"].as_i64()),
        (Some("sdk-live"), Some(3)),
        "{conversations}"
    );
    let (_, history) = server
        .post(
            "/channel/messagesync",
            json!({"login_uid": "sdk-away", "channel_id": "sdk-live", "channel_type": 1, "limit": 10}),
        )
        .await;
    let texts: Vec<String> = history["messages"].as_array().unwrap().iter().map(text_of).collect();
    assert_eq!(texts.len(), 3);
    assert!(texts.iter().all(|t| t.contains("\"type\":1")), "the SDK sends WuKongIM text payloads: {texts:?}");
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_sdk_connected_past_the_idle_timeout() {
    let server = TestServer::start_with(|c| c.gateway.idle_timeout_secs = 2).await;
    server.register("sdk-idle", "tok", device_flag::WEB, 1).await;
    // The SDK's heartbeat (60 s by default) shortened to fit the test's 2 s idle timeout.
    let mut idle = Sdk::start_with_heartbeat(&server, "sdk-idle", "tok", Some(500)).await;
    idle.connect().await;
    idle.none(Duration::from_secs(5), |e| e["event"] == "status").await;
    let ack = idle.send("someone", 1, "still here").await;
    assert_eq!(ack["reasonCode"], 1, "the same connection, 2.5 idle timeouts later");
    // Without heartbeats the server drops it after the idle timeout.
    server.register("sdk-quiet", "tok", device_flag::WEB, 1).await;
    let mut quiet = Sdk::start_with_heartbeat(&server, "sdk-quiet", "tok", Some(60_000)).await;
    quiet.connect().await;
    let dropped = quiet.expect(|e| e["event"] == "status").await;
    assert_eq!(dropped["status"], 0, "dropped when silent: {dropped}");
    server.stop().await;
}

/// Runs `tests/conformance/browser.mjs` with `scenario`: the SDK in headless Chromium,
/// one page per client. Returns each client's events.
async fn in_chromium(scenario: Value) -> serde_json::Map<String, Value> {
    let runner = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/browser.mjs");
    bundle();
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("node").arg(runner).arg(scenario.to_string()).stderr(Stdio::inherit()).output(),
    )
    .await
    .expect("the browser scenario finishes")
    .expect("node runs");
    let line = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("runner said: {line}"));
    assert!(output.status.success(), "browser scenario failed: {result}");
    result["events"].as_object().unwrap().clone()
}

fn of_kind<'a>(events: &'a Value, kind: &str) -> Vec<&'a Value> {
    events.as_array().unwrap().iter().filter(|e| e["event"] == kind).collect()
}

/// Messages from others (the SDK also reports the messages its own client sends).
fn received<'a>(events: &'a Value, uid: &str) -> Vec<&'a Value> {
    of_kind(events, "message").into_iter().filter(|m| m["from"] != uid).collect()
}

#[tokio::test]
async fn in_headless_chromium_person_and_group_chat_work_and_a_wrong_token_fails() {
    let server = TestServer::start().await;
    let uids = ["web-a", "web-b", "web-c", "web-d"];
    for uid in uids {
        server.register(uid, &format!("tok-{uid}"), device_flag::WEB, 1).await;
    }
    server.register("web-bad", "right", device_flag::WEB, 1).await;
    let (s, _) =
        server.post("/channel", json!({"channel_id": "web-group", "channel_type": 2, "subscribers": uids})).await;
    assert_eq!(s, 200);
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/conformance");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join("chromium-group-chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut clients: Vec<Value> = uids.iter().map(|u| json!({"uid": u, "token": format!("tok-{u}")})).collect();
    clients.push(json!({"uid": "web-bad", "token": "wrong"}));
    let scenario = json!({
        "addr": format!("ws://{}", server.server.gateway.ws_addr.unwrap()),
        "clients": clients,
        "steps": [
            {"connect": "web-a"}, {"connect": "web-b"}, {"connect": "web-c"}, {"connect": "web-d"}, {"connect": "web-bad"},
            {"send": "web-a", "to": "web-b", "channelType": 1, "text": "hi b, 你好"},
            {"receive": "web-b", "count": 1},
            {"send": "web-b", "to": "web-a", "channelType": 1, "text": "hi a"},
            {"receive": "web-a", "count": 2},
            {"send": "web-a", "to": "web-group", "channelType": 2, "text": "hello group"},
            {"receive": "web-b", "count": 3}, {"receive": "web-c", "count": 1}, {"receive": "web-d", "count": 1},
            {"pause": 3500}
        ],
        "screenshot": screenshot,
        "screenshotOf": "web-b",
    });
    let events = in_chromium(scenario).await;
    for uid in uids {
        let statuses = of_kind(&events[uid], "status");
        assert_eq!(statuses[0]["status"], 1, "{uid} connected: {statuses:?}");
    }
    let bad = of_kind(&events["web-bad"], "status");
    assert_eq!((bad[0]["status"].as_i64(), bad[0]["reasonCode"].as_i64()), (Some(3), Some(2)), "{bad:?}");
    assert!(bad.iter().all(|s| s["status"] != 1), "never connected, and no reconnect attempt succeeded: {bad:?}");
    let b = received(&events["web-b"], "web-b");
    assert_eq!(
        (b[0]["from"].as_str(), b[0]["channel"].as_str(), b[0]["text"].as_str()),
        (Some("web-a"), Some("web-a"), Some("hi b, 你好"))
    );
    assert_eq!((b[1]["channel"].as_str(), b[1]["text"].as_str()), (Some("web-group"), Some("hello group")));
    let a = received(&events["web-a"], "web-a");
    assert_eq!(a.len(), 1, "the group message is not delivered back to its sender: {a:?}");
    assert_eq!((a[0]["from"].as_str(), a[0]["text"].as_str()), (Some("web-b"), Some("hi a")));
    for uid in ["web-c", "web-d"] {
        let got = received(&events[uid], uid);
        assert_eq!(
            (got[0]["from"].as_str(), got[0]["channel"].as_str(), got[0]["text"].as_str()),
            (Some("web-a"), Some("web-group"), Some("hello group"))
        );
    }
    let acks = of_kind(&events["web-a"], "sendack");
    assert!(acks.iter().all(|a| a["reasonCode"] == 1), "{acks:?}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000, "the screenshot of the group chat was saved");
    // Every RECV was acknowledged by the browsers.
    assert!(server.server.core.retry_queue().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn in_headless_chromium_http_sends_heartbeats_and_kicks() {
    let server = TestServer::start_with(|c| c.gateway.idle_timeout_secs = 2).await;
    for uid in ["web-live", "web-k"] {
        server.register(uid, &format!("tok-{uid}"), device_flag::WEB, 1).await;
    }
    let api = format!("http://{}", server.server.api_addr);
    let payload = b64("{\"type\":1,\"content\":\"from the app server\"}");
    let scenario = json!({
        "addr": format!("ws://{}", server.server.gateway.ws_addr.unwrap()),
        "clients": [
            {"name": "live", "uid": "web-live", "token": "tok-web-live", "heartbeatMs": 500},
            {"name": "k1", "uid": "web-k", "token": "tok-web-k", "heartbeatMs": 500},
            {"name": "k2", "uid": "web-k", "token": "tok-web-k", "heartbeatMs": 500, "late": true}
        ],
        "steps": [
            {"connect": "live"}, {"connect": "k1"},
            {"http": format!("{api}/message/send"), "body": {"from_uid": "app", "channel_id": "web-live", "channel_type": 1, "payload": payload}},
            {"receive": "live", "count": 1},
            // 2.5 idle timeouts with nothing but the SDK's heartbeats.
            {"pause": 5000},
            {"send": "live", "to": "web-k", "channelType": 1, "text": "still connected?"},
            {"receive": "k1", "count": 1},
            // A second master login of web-k kicks the first.
            {"open": "k2"}, {"connect": "k2"},
            {"status": "k1", "is": 4}
        ],
    });
    let events = in_chromium(scenario).await;
    let live = of_kind(&events["live"], "status");
    assert!(live.iter().all(|s| s["status"] == 1), "heartbeats kept the page connected: {live:?}");
    let got = received(&events["live"], "web-live");
    assert_eq!((got[0]["from"].as_str(), got[0]["text"].as_str()), (Some("app"), Some("from the app server")));
    let ack = of_kind(&events["live"], "sendack");
    assert_eq!(ack[0]["reasonCode"], 1, "sent on the same connection after the pause");
    let k1 = of_kind(&events["k1"], "status");
    let kick = k1.iter().position(|s| s["status"] == 4).expect("kicked");
    assert_eq!(k1[kick]["reasonCode"], 12, "{k1:?}");
    assert!(k1[..kick].iter().all(|s| s["status"] == 1), "connected until the kick: {k1:?}");
    assert_eq!(received(&events["k1"], "web-k")[0]["text"], "still connected?");
    assert_eq!(of_kind(&events["k2"], "status")[0]["status"], 1);
    server.stop().await;
}

/// What 1.0.4 (protocol v2) cannot show, with the project's own client at v3, v4 and v5:
/// the same login, person and group scenarios, plus each version's additions (the
/// server version byte from v4, the node id from v4, expire from v3).
#[tokio::test]
async fn the_same_scenarios_at_protocol_v3_v4_and_v5_with_the_rust_client() {
    use hongyan_proto::{HeaderFlags, Packet, ReasonCode, Send};
    use hongyan_testkit::Client;
    let server = TestServer::start().await;
    for version in [3u8, 4, 5] {
        let uid = |name: &str| format!("v{version}-{name}");
        let (a, b, c) = (uid("a"), uid("b"), uid("c"));
        for u in [&a, &b, &c] {
            server.register(u, "t", device_flag::APP, 1).await;
        }
        let group = uid("group");
        server.post("/channel", json!({"channel_id": group, "channel_type": 2, "subscribers": [&a, &b, &c]})).await;
        let login = |u: String| {
            let target = server.tcp();
            async move { Client::connect(&target, &u, "t", device_flag::APP, "phone", version).await.unwrap() }
        };
        let (mut ca, connack) = login(a.clone()).await;
        assert_eq!(connack.reason_code, ReasonCode::Success);
        assert_eq!(connack.server_version, (version > 3).then_some(version), "v{version}: server version byte");
        if version >= 4 {
            assert_eq!(connack.node_id, server.config.node_id, "v{version}: node id");
        }
        let (mut cb, _) = login(b.clone()).await;
        let (mut cc, _) = login(c.clone()).await;
        let (_, wrong) = Client::connect(&server.tcp(), &a, "wrong", device_flag::APP, "x", version).await.unwrap();
        assert_eq!(wrong.reason_code, ReasonCode::AuthFail, "v{version}: wrong token");

        // Person chat with expire (v3+), both ways.
        let mut send = Send {
            client_seq: 1,
            client_msg_no: "p1".into(),
            channel_id: b.clone(),
            channel_type: 1,
            expire: 3600,
            ..Send::default()
        };
        ca.cipher.as_ref().unwrap().seal_send(&mut send, b"hello");
        ca.send(&Packet::Send(send)).await.unwrap();
        match ca.recv().await.unwrap() {
            Packet::Sendack(ack) => {
                assert_eq!((ack.reason_code, ack.message_seq), (ReasonCode::Success, 1), "v{version}")
            }
            other => panic!("v{version}: expected SENDACK, got {other:?}"),
        }
        let (recv, text) = common::receive(&mut cb).await;
        assert_eq!(
            (recv.from_uid.as_str(), recv.channel_id.as_str(), recv.expire, text.as_str()),
            (a.as_str(), a.as_str(), 3600, "hello")
        );
        let ack = common::send_text(&mut cb, (a.as_str(), 1), 1, "p2", "hi back", HeaderFlags::default()).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        let (_, text) = common::receive(&mut ca).await;
        assert_eq!(text, "hi back");

        // Group to the other two.
        let ack = common::send_text(&mut ca, (group.as_str(), 2), 2, "g1", "hello group", HeaderFlags::default()).await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        for client in [&mut cb, &mut cc] {
            let (recv, text) = common::receive(client).await;
            assert_eq!((recv.channel_id.as_str(), text.as_str()), (group.as_str(), "hello group"));
        }
        // A second master login kicks the first.
        let (_, again) = Client::connect(&server.tcp(), &c, "t", device_flag::APP, "tablet", version).await.unwrap();
        assert_eq!(again.reason_code, ReasonCode::Success);
        match cc.recv().await.unwrap() {
            Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::ConnectKick, "v{version}"),
            other => panic!("v{version}: expected DISCONNECT, got {other:?}"),
        }
    }
    server.stop().await;
}
