//! The HTTP API fuzzed from its own OpenAPI document: schemathesis (installed by
//! `scripts/test.sh` into `target/schemathesis`) generates valid and invalid requests
//! for every operation of the three dialects against a live server for a bounded time,
//! and fails on any 5xx, undocumented status, wrong content type or answer that breaks
//! its documented schema. Afterwards the server must still work: a login, a message
//! delivered and stored, `/health` ok.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, b64, receive, send_text, text_of};
use hongyan::config::EasemobAppConfig;
use hongyan_proto::{HeaderFlags, ReasonCode, device_flag};
use hongyan_testkit::Client;
use serde_json::{Value, json};

const OPENIM_SECRET: &str = "fuzz-openim-secret-0001";
const EASEMOB_SECRET: &str = "fuzz-easemob-secret-0001";

/// How long the fuzzer runs; `API_FUZZ_SECONDS` overrides (a long run outside CI).
fn budget() -> u64 {
    std::env::var("API_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(45)
}

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/schemathesis/bin/schemathesis"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test.sh (it installs schemathesis), or set SCHEMATHESIS",
        path.display()
    );
    path
}

async fn post_json(url: String, body: Value) -> Value {
    reqwest::Client::new().post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_every_generated_request_as_documented_and_works_afterwards() {
    let server = TestServer::start_with(|c| {
        c.openim.enabled = true;
        c.openim.addr = String::new();
        c.openim.secret = OPENIM_SECRET.into();
        c.openim.admin_user_ids = vec!["admin".into()];
        // The fuzzer calls each operation hundreds of times a second; the budgets are
        // tested elsewhere (tests/easemob.rs, tests/http_limits.rs).
        c.easemob.calls_per_sec = 1_000_000;
        c.easemob.token_calls_per_sec = 1_000_000;
        c.api.token_requests_per_sec_per_ip = 1_000_000;
        c.easemob.apps = vec![EasemobAppConfig {
            org: "acme".into(),
            app: "chat".into(),
            client_id: "fuzz-client".into(),
            client_secret: EASEMOB_SECRET.into(),
        }];
    })
    .await;
    let base = format!("http://{}", server.server.api_addr);
    let openim = post_json(
        format!("{base}/openim/auth/user_token"),
        json!({"secret": OPENIM_SECRET, "platform": 8, "userID": "admin"}),
    )
    .await;
    let openim_token = openim["data"]["token"].as_str().unwrap().to_owned();
    let easemob = post_json(
        format!("{base}/easemob/acme/chat/token"),
        json!({"grant_type": "client_credentials", "client_id": "fuzz-client", "client_secret": EASEMOB_SECRET}),
    )
    .await;
    let easemob_token = easemob["access_token"].as_str().unwrap().to_owned();

    // The document covers the three dialects.
    let (status, document) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().unwrap();
    for path in ["/message/send", "/openim/manager/send_msg", "/easemob/{org}/{app}/thread/{id}/users"] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }

    let seconds = budget();
    // schemathesis keeps a cache where it runs: not in the source tree.
    let scratch = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(schemathesis())
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance"])
        .args(["--checks", "response_headers_conformance,response_schema_conformance"])
        .args(["--max-time", &seconds.to_string(), "--workers", "2", "--request-timeout", "10"])
        .args(["--header", &format!("token: {openim_token}")])
        .args(["--header", &format!("Authorization: Bearer {easemob_token}")])
        .args(["--warnings", "off", "--no-color"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(seconds + 120), run)
        .await
        .expect("schemathesis overran its time budget")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers that break the document:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", report.split("SUMMARY").last().unwrap_or_default());
    // It really tested every operation (a document it could not load tests none);
    // schemathesis leaves out the document's own path.
    let operations = paths
        .iter()
        .filter(|(p, _)| *p != "/openapi.json")
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not all {operations} operations were tested:\n{report}"
    );

    // The server works normally afterwards.
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    server.register("after-a", "token-a", device_flag::APP, 1).await;
    server.register("after-b", "token-b", device_flag::APP, 1).await;
    let (mut a, connack) =
        Client::connect(&server.tcp(), "after-a", "token-a", device_flag::APP, "d", 4).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let (mut b, _) = Client::connect(&server.tcp(), "after-b", "token-b", device_flag::APP, "d", 4).await.unwrap();
    let ack = send_text(&mut a, ("after-b", 1), 1, "after-fuzz-1", "still here", HeaderFlags::default()).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (recv, text) = receive(&mut b).await;
    assert_eq!((recv.message_seq, text.as_str()), (ack.message_seq, "still here"));
    let body = json!({"login_uid": "after-b", "channel_id": "after-a", "channel_type": 1, "limit": 10});
    let (status, page) = server.post("/channel/messagesync", body).await;
    assert_eq!(status, 200);
    let last = page["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(text_of(&last), "still here");
    let (status, _) = server
        .post(
            "/message/send",
            json!({"from_uid": "after-a", "channel_id": "after-b", "channel_type": 1,
            "payload": b64("over http")}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(receive(&mut b).await.1, "over http");
    server.stop().await;
}
