//! The demo chat (`/chatdemo`) in headless Chromium, driven as a person would
//! (`tests/conformance/demo.mjs`): two pages sign in, chat one-to-one and in a group
//! with delivery ticks, unread counts and history, then the server restarts and both
//! pages reconnect by themselves and chat on. The screenshots it takes are the ones in
//! `docs/console.md` (`docs/images/demo-*.png`). Needs Node.js and Chromium, which
//! scripts/test.sh installs.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_chat_through_the_demo_and_reconnect_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.demo.addr = Some("127.0.0.1:0".into());
    let server = hongyan::start(config.clone()).await.unwrap();
    // The restart binds the same addresses, where the pages reconnect.
    config.api.addr = server.api_addr.to_string();
    config.manager.addr = server.manager_addr.to_string();
    config.gateway.tcp_addr = server.gateway.tcp_addr.unwrap().to_string();
    config.gateway.ws_addr = server.gateway.ws_addr.unwrap().to_string();
    config.demo.addr = Some(server.demo_addr.unwrap().to_string());

    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let screenshots = repo.join("docs/images");
    eprintln!("demo screenshots: {}", screenshots.display());
    let scenario = json!({"url": format!("http://{}", server.demo_addr.unwrap()), "screenshots": screenshots});
    let mut runner = tokio::process::Command::new("node")
        .arg(repo.join("tests/conformance/demo.mjs"))
        .arg(scenario.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (scripts/test.sh installs Node.js and Chromium)");
    let mut stdin = runner.stdin.take().unwrap();
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    let mut server = Some(server);
    let mut restarts = 0;
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the runner says how it went");
            let said: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("runner said: {line}"));
            if said["restart"] != true {
                return said;
            }
            let running = server.take().unwrap();
            running.shutdown();
            running.wait().await;
            drop(running);
            server = Some(common::start_again(&config).await);
            restarts += 1;
            stdin.write_all(b"restarted\n").await.unwrap();
        }
    })
    .await
    .expect("the demo scenario finishes within 2 minutes");
    assert_eq!(result["ok"], true, "demo scenario failed: {result}");
    assert_eq!(restarts, 1);
    for name in ["demo-signin", "demo-unread", "demo-chat", "demo-phone"] {
        let size = std::fs::metadata(screenshots.join(format!("{name}.png"))).map_or(0, |m| m.len());
        assert!(size > 1000, "{name}.png was written");
    }
    assert!(runner.wait().await.unwrap().success());
    let running = server.take().unwrap();
    running.shutdown();
    running.wait().await;
}
