//! The HTTP listeners hold their ground: slow or endless requests are cut off, open
//! connections are capped, every request has an id, bodies must be JSON, the manager
//! token guards `/metrics` too, and an open API beyond loopback is refused at start-up.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or 10 s pass); returns what came.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await;
    all
}

#[tokio::test]
async fn headers_sent_too_slowly_are_cut_off_and_others_are_served() {
    let server = TestServer::start_with(|c| c.api.header_timeout_ms = 500).await;
    let mut slow = TcpStream::connect(server.server.api_addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"POST /user/token HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The rest of the headers never come; meanwhile an ordinary request is answered.
    assert_eq!(server.get("/health").await.0, 200);
    let answer = read_to_close(&mut slow).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(5), "closed after {waited:?}");
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_never_ends_gets_408() {
    let server = TestServer::start_with(|c| c.api.request_timeout_ms = 700).await;
    let mut slow = TcpStream::connect(server.server.api_addr).await.unwrap();
    let head = "POST /user/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"uid\":";
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = String::from_utf8(read_to_close(&mut slow).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn open_connections_are_capped_per_listener() {
    let server = TestServer::start_with(|c| c.api.max_connections = 2).await;
    let addr = server.server.api_addr;
    let _first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // Both places are taken (wait until the server has accepted them).
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut third).await;
    assert!(answer.is_empty(), "the third connection is closed unanswered: {}", String::from_utf8_lossy(&answer));
    drop(_first);
    // A place is free again once the server has seen the first one go.
    let started = Instant::now();
    loop {
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        if read_to_close(&mut again).await.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no place came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hongyan_http_connections_refused_total{listener=\"api.addr\"}"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let answer = http.get(server.api("/health")).send().await.unwrap();
    let id = answer.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("1001-"), "{id}");
    let next = http.get(server.api("/health")).send().await.unwrap();
    assert_ne!(next.headers()["x-request-id"].to_str().unwrap(), id, "one id per request");
    let given = http.get(server.api("/health")).header("x-request-id", "from-the-app-42").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "from-the-app-42", "a caller's id is kept");
    server.stop().await;
}

#[tokio::test]
async fn bodies_must_be_json_so_a_web_page_cannot_post_forms_to_the_api() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let body = r#"{"uid":"u1","token":"t","device_flag":1}"#;
    for content_type in
        [Some("application/x-www-form-urlencoded"), Some("text/plain"), Some("multipart/form-data"), None]
    {
        let mut req = http.post(server.api("/user/token")).body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let answer = req.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 415, "{content_type:?}");
        let error: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(error["msg"], "content-type: must be application/json");
    }
    assert!(server.server.core.store().device("u1", 1).unwrap().is_none(), "nothing was done");
    let answer =
        http.post(server.api("/user/token")).header("content-type", "application/json; charset=utf-8").body(body);
    assert_eq!(answer.send().await.unwrap().status().as_u16(), 200);
    // Every route of the listener is guarded, whatever its dialect.
    let answer = http.post(server.api("/openim/auth/user_token")).body("x=1").header("content-type", "text/plain");
    assert_eq!(answer.send().await.unwrap().status().as_u16(), 415);
    server.stop().await;
}

#[tokio::test]
async fn the_manager_token_guards_the_api_and_metrics() {
    let server = TestServer::start_with(|c| c.manager_token = "s3cret-manager-token".into()).await;
    let http = reqwest::Client::new();
    let metrics = format!("http://{}/metrics", server.server.manager_addr);
    assert_eq!(http.get(&metrics).send().await.unwrap().status().as_u16(), 401);
    let wrong = http.get(&metrics).bearer_auth("s3cret-manager-tokeN").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = http.get(&metrics).bearer_auth("s3cret-manager-token").send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
    let right = http.get(&metrics).header("token", "s3cret-manager-token").send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
    // Health stays open for load balancers.
    let health = format!("http://{}/health", server.server.manager_addr);
    assert_eq!(http.get(&health).send().await.unwrap().status().as_u16(), 200);
    // The API: the token header, or a bearer token.
    let body = json!({"uid": "u1", "token": "t", "device_flag": 1});
    assert_eq!(http.post(server.api("/user/token")).json(&body).send().await.unwrap().status().as_u16(), 401);
    let ok = http.post(server.api("/user/token")).bearer_auth("s3cret-manager-token").json(&body).send().await;
    assert_eq!(ok.unwrap().status().as_u16(), 200);
    server.stop().await;
}

#[test]
fn an_api_beyond_loopback_without_a_token_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (api, manager) in [("0.0.0.0:5001", "127.0.0.1:0"), ("127.0.0.1:0", "0.0.0.0:5300")] {
        let mut config = common::test_config(dir.path());
        config.api.addr = api.into();
        config.manager.addr = manager.into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("no manager_token is set"), "{error}");
        config.manager_token = "a-long-enough-manager-token".into();
        config.validate().unwrap();
    }
}
