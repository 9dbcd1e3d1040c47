//! The `hongyan` binary as an operator runs it: flags, start-up errors, SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Target};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn unknown_config_keys_stop_start_up_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[gateway]\ntcp_adr = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hongyan")).arg("serve").arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tcp_adr"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_hongyan")).args(["--node-id", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node_id: must be between 1 and 1023"));
}

#[test]
fn an_unreachable_postgres_stops_start_up_naming_the_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hongyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--manager-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--tcp-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ws-addr", ""])
        .env("HONGYAN_STORAGE__BACKEND", "postgres")
        .env("HONGYAN_STORAGE__POSTGRES_URL", "postgres://hongyan:do-not-print@127.0.0.1:1/hongyan")
        .env("HONGYAN_STORAGE__POSTGRES_CONNECT_TIMEOUT_MS", "2000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach PostgreSQL at postgres://hongyan:***@127.0.0.1:1/hongyan"), "{stderr}");
    assert!(!stderr.contains("do-not-print"), "{stderr}");
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (api, tcp) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hongyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-addr", &format!("127.0.0.1:{api}")])
        .args(["--tcp-addr", &format!("127.0.0.1:{tcp}")])
        .args(["--ws-addr", ""])
        .args(["--manager-addr", &format!("127.0.0.1:{}", free_port())])
        .env("HONGYAN_AUTH__TOKEN_AUTH", "false")
        .env("HONGYAN_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let target = Target::Tcp(format!("127.0.0.1:{tcp}").parse().unwrap());
    let started = Instant::now();
    let mut client = loop {
        match Client::connect(&target, "u", "t", device_flag::APP, "d", 5).await {
            Ok((c, connack)) => {
                assert_eq!(connack.reason_code, ReasonCode::Success);
                break c;
            }
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server did not come up: {e}"),
        }
    };
    client.send(&Packet::Ping).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Packet::Pong);

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    client.expect_closed(Duration::from_secs(5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

/// Starts the binary on fresh loopback ports with `env`, reads its output until `done`
/// says enough, then stops it. Returns every line it printed. A port taken between
/// choosing it and binding it (other tests run beside this one) means another try.
fn output_until(env: &[(&str, &str)], done: impl Fn(&[String]) -> bool) -> (Vec<String>, [u16; 3]) {
    use std::io::{BufRead as _, Read as _};
    for attempt in 1.. {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port(), free_port()];
        let mut command = Command::new(env!("CARGO_BIN_EXE_hongyan"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--http-addr", &format!("127.0.0.1:{}", ports[0])])
            .args(["--tcp-addr", &format!("127.0.0.1:{}", ports[1])])
            .args(["--ws-addr", &format!("127.0.0.1:{}", ports[2])])
            .args(["--manager-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--demo-addr", &format!("127.0.0.1:{}", free_port())])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ended = false;
        while !done(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    ended = true;
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the server did not say enough within 20 s: {lines:#?}")
                }
            }
        }
        if ended {
            let status = child.wait().unwrap();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            if stderr.contains("in use") && attempt < 3 {
                continue;
            }
            panic!("the server exited ({status}) before saying enough: {lines:#?}\n{stderr}");
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        child.wait().unwrap();
        return (lines, ports);
    }
    unreachable!("attempts are counted up to 3")
}

#[test]
fn a_fresh_start_prints_every_address_and_nothing_from_dependencies() {
    let (lines, [api, tcp, ws]) = output_until(&[], |lines| lines.iter().any(|l| l.trim_start().starts_with("Health")));
    let text = lines.join("\n");
    assert!(lines[0].starts_with("Hongyan ") && lines[0].contains("is running"), "{text}");
    for expected in [
        format!("http://127.0.0.1:{api}"),
        format!("http://127.0.0.1:{api}/openapi.json"),
        format!("127.0.0.1:{tcp}"),
        format!("ws://127.0.0.1:{ws}"),
        "/chatdemo".to_owned(),
        "/metrics".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected} missing from the banner:\n{text}");
    }
    // The storage engine's internals (a line per keyspace, before) are not news.
    assert!(!text.contains("lsm_tree") && !text.contains("fjall"), "{text}");
    assert!(lines.len() <= 10, "{text}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_addresses_as_fields() {
    let (lines, [api, tcp, _]) = output_until(&[("HONGYAN_LOG__FORMAT", "json")], |lines| {
        lines.iter().any(|l| l.contains("hongyan is running"))
    });
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let running = records.iter().find(|r| r["fields"]["message"] == "hongyan is running").unwrap();
    assert_eq!(running["fields"]["api"], format!("http://127.0.0.1:{api}"));
    assert_eq!(running["fields"]["tcp"], format!("127.0.0.1:{tcp}"));
    assert_eq!(running["fields"]["wss"], "");
    assert_eq!(running["level"], "INFO");
}
