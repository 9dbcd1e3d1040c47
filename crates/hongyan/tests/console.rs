//! The operators' console (`/web` on the manager listener) in headless Chromium
//! (`tests/conformance/console.mjs`): sign-in with the manager token, the overview's
//! figures moving under a small load, a connection found by uid and kicked (the client
//! gets its DISCONNECT), the user looked up (devices, conversations with unread
//! counts) and banned, a channel found by id prefix with its history's JSON and binary
//! payloads decoded, a test message sent, its lists and attributes edited, the
//! webhooks of a receiver that is down retried at once, and every page at phone width.
//! The screenshots are the ones in `docs/console.md`. Needs Node.js and Chromium,
//! which scripts/test.sh installs.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::{TestServer, send_text};
use hongyan_proto::{HeaderFlags, Packet, ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_the_load_kicks_a_connection_and_decodes_history() {
    // Webhooks to a receiver that is down, retried only after a minute unless asked.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = Arc::new(
        TestServer::start_with(move |c| {
            c.manager_token = "console-secret".into();
            c.webhook.url = format!("http://{nobody}/hook");
            c.webhook.retry_initial_ms = 60_000;
            c.webhook.retry_max_ms = 60_000;
        })
        .await,
    );
    server.register("watcher", "t", device_flag::APP, 1).await;
    let body = json!({"channel_id": "ops", "channel_type": 2, "subscribers": ["watcher", "ann"]});
    assert_eq!(server.post("/channel", body).await.0, 200);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // A quiet group for the history: a JSON payload and a binary one.
    let body = json!({"channel_id": "notes", "channel_type": 2, "subscribers": ["ann"]});
    assert_eq!(server.post("/channel", body).await.0, 200);
    let mut notes = Vec::new();
    for payload in [br#"{"type":1,"content":"hello notes"}"#.as_slice(), &[0xff, 0x00, 0xfe]] {
        let body = json!({"from_uid": "ann", "channel_id": "notes", "channel_type": 2, "payload": b64(payload)});
        let (status, sent) = server.post("/message/send", body).await;
        assert_eq!(status, 200);
        notes.push(sent["data"]["message_id"].as_i64().unwrap());
    }
    // The first edited and reacted to, for the history to show (a named reaction: the
    // test machine's Chromium may have no emoji font for the screenshot).
    let edit = json!({"from_uid": "ann", "channel_id": "notes", "channel_type": 2, "message_id": notes[0],
                      "payload": b64(br#"{"type":1,"content":"hello, notes"}"#)});
    assert_eq!(server.post("/message/edit", edit).await.0, 200);
    let react = json!({"uid": "ann", "channel_id": "notes", "channel_type": 2, "message_id": notes[0], "emoji": "+1"});
    assert_eq!(server.post("/message/reaction", react).await.0, 200);
    let (mut watcher, connack) =
        Client::connect(&server.tcp(), "watcher", "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);

    // A small load while the console watches: ann sends five messages a second to the
    // group from her client (so SENDACK latency has samples).
    server.register("ann", "t", device_flag::APP, 1).await;
    let (mut ann, connack) = Client::connect(&server.tcp(), "ann", "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while running.load(Ordering::SeqCst) {
                n += 1;
                let text = format!(r#"{{"type":1,"content":"load {n}"}}"#);
                let ack = send_text(&mut ann, ("ops", 2), n, &format!("load-{n}"), &text, HeaderFlags::default()).await;
                assert_eq!(ack.reason_code, ReasonCode::Success);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The watcher reads what it gets (RECVs, then the kick's DISCONNECT).
    let kicked = tokio::spawn(async move {
        loop {
            match watcher.recv_within(Duration::from_secs(60)).await {
                Ok(Packet::Recv(_)) => continue,
                Ok(Packet::Disconnect(d)) => return Some(d.reason_code),
                _ => return None,
            }
        }
    });

    let repo = common::repo_root();
    eprintln!("console screenshots: {}", repo.join("docs/images").display());
    let scenario = json!({
        "url": format!("http://{}", server.server.manager_addr),
        "token": "console-secret",
        "uid": "watcher",
        "channel": "ops",
        "history": "notes",
        "screenshots": repo.join("docs/images"),
    });
    let result = common::browser_scenario("console.mjs", &scenario, Duration::from_secs(120)).await;
    running.store(false, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(result["ok"], true, "console scenario failed: {result}");
    assert_eq!(kicked.await.unwrap(), Some(ReasonCode::ConnectKick), "the kicked client was told why");
    for name in [
        "console-signin",
        "console-overview",
        "console-connections",
        "console-users",
        "console-channels",
        "console-history",
        "console-webhooks",
        "console-phone-overview",
        "console-phone-channels",
    ] {
        let size = std::fs::metadata(repo.join(format!("docs/images/{name}.png"))).map_or(0, |m| m.len());
        assert!(size > 1000, "{name}.png was written");
    }
    // The console's test message went through the API: it is in the history.
    let body = json!({"channel_id": "notes", "channel_type": 2, "start_message_seq": 0, "limit": 1000});
    let (_, page) = server.post("/channel/messagesync", body).await;
    let from_console = page["messages"].as_array().unwrap().iter().any(|m| {
        base64::engine::general_purpose::STANDARD.decode(m["payload"].as_str().unwrap()).unwrap()
            == br#"{"type":1,"content":"from the console"}"#
    });
    assert!(from_console, "{page}");
    // The binary message the console revoked, as the app server (no revoker).
    let (_, extras) = server.post("/message/extra/sync", json!({"channel_id": "notes", "channel_type": 2})).await;
    let revoked = extras.as_array().unwrap().iter().find(|e| e["message_id"] == notes[1]).expect("revoked");
    assert_eq!((revoked["revoke"].as_u64(), revoked["revoker"].as_str()), (Some(1), Some("")), "{extras}");
    // The lists and attributes the console edited, as the API reads them.
    let uids = |list: Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|e| e["uid"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(uids(server.get("/channel/subscribers?channel_id=notes&channel_type=2").await.1), ["ann", "dave"]);
    assert_eq!(uids(server.get("/channel/blacklist?channel_id=notes&channel_type=2").await.1), ["mallory"]);
    let (_, info) = server.get("/channel/info?channel_id=notes&channel_type=2").await;
    assert_eq!((info["large"].as_u64(), info["ban"].as_u64()), (Some(1), Some(0)), "{info}");
    // The ban the console set holds: the user's next login is refused.
    let (_, info) = server.get("/channel/info?channel_id=watcher&channel_type=1").await;
    assert_eq!((info["ban"].as_u64(), info["send_ban"].as_u64()), (Some(1), Some(0)), "{info}");
    let (_, connack) = Client::connect(&server.tcp(), "watcher", "t", device_flag::APP, "d", 5).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Ban);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}
