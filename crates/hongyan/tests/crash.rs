//! Durability under SIGKILL: a client sends continuously while the server process is
//! killed and restarted on the same data directory several times. Afterwards every
//! message that got a success SENDACK is stored exactly once, with the seq from its ack,
//! and the channel's seqs are dense.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hongyan_proto::{Packet, ReasonCode, Send, device_flag};
use hongyan_store::{ChannelKey, Durability, FjallBackend, KvBackend, MessageLog, Order};
use hongyan_store_postgres::{PostgresBackend, PostgresConfig};
use hongyan_testkit::{Client, ClientError, Target};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the server under test stores: its data directory, or a PostgreSQL schema.
#[derive(Clone)]
enum Storage {
    Fjall,
    Postgres { url: String, schema: String },
}

fn spawn_server(data: &std::path::Path, tcp: u16, durability: &str, storage: &Storage) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hongyan"));
    if let Storage::Postgres { url, schema } = storage {
        command
            .env("HONGYAN_STORAGE__BACKEND", "postgres")
            .env("HONGYAN_STORAGE__POSTGRES_URL", url)
            .env("HONGYAN_STORAGE__POSTGRES_SCHEMA", schema);
    }
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--tcp-addr", &format!("127.0.0.1:{tcp}")])
        .args(["--ws-addr", ""])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--manager-addr", &format!("127.0.0.1:{}", free_port())])
        .env("HONGYAN_AUTH__TOKEN_AUTH", "false")
        .env("HONGYAN_STORAGE__DURABILITY", durability)
        .env("HONGYAN_LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(target: &Target) -> Client {
    let started = Instant::now();
    loop {
        match Client::connect(target, "writer", "t", device_flag::APP, "d", 5).await {
            Ok((c, connack)) if connack.reason_code == ReasonCode::Success => return c,
            _ if started.elapsed() < Duration::from_secs(30) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("server did not come back: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill_exactly_once() {
    survives_sigkill("fsync", Storage::Fjall).await;
}

/// `interval` mode gives up power-loss durability, not crash durability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_mode_also_survives_sigkill() {
    survives_sigkill("interval", Storage::Fjall).await;
}

/// The same on PostgreSQL (`POSTGRES_TEST_URL`, set by scripts/test.sh): the server
/// is killed mid-commit, its transactions are the database's to finish or roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill_exactly_once_on_postgres() {
    let PostgresConfig { url, schema, .. } = hongyan_store_postgres::testing::config();
    survives_sigkill("fsync", Storage::Postgres { url, schema }).await;
}

/// SIGKILL/restart cycles: 4 in the suite; `CRASH_TEST_ROUNDS=20` (or more) for the
/// long run (`docs/operations.md`).
fn rounds() -> u64 {
    std::env::var("CRASH_TEST_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(4)
}

async fn survives_sigkill(durability: &str, storage: Storage) {
    let rounds = rounds();
    const WINDOW: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let target = Target::Tcp(format!("127.0.0.1:{tcp}").parse().unwrap());

    let mut acked: BTreeMap<String, u64> = BTreeMap::new(); // client_msg_no → seq from its SENDACK
    let mut unacked: BTreeSet<u64> = BTreeSet::new(); // message numbers sent without an ack yet
    let mut next_number = 0u64;
    for round in 0..rounds {
        let mut child = spawn_server(dir.path(), tcp, durability, &storage);
        let mut client = connect(&target).await;
        let cipher = client.cipher.clone().unwrap();
        // Kill the server at some point in the next 300–900 ms, mid-traffic.
        let kill_after = Duration::from_millis(300 + (round * 197) % 600);
        let deadline = Instant::now() + kill_after;
        let mut killed = false;
        let mut client_seq = 0u32;
        let mut in_flight: BTreeMap<u32, u64> = BTreeMap::new();
        'traffic: loop {
            // Resend what was never acknowledged first, like the SDKs do after reconnecting.
            while in_flight.len() < WINDOW as usize {
                let number = match unacked.pop_first() {
                    Some(n) => n,
                    None => {
                        next_number += 1;
                        next_number
                    }
                };
                client_seq += 1;
                let mut send = Send {
                    client_seq,
                    client_msg_no: format!("m{number}"),
                    channel_id: "reader".into(),
                    channel_type: 1,
                    ..Send::default()
                };
                cipher.seal_send(&mut send, format!("payload {number}").as_bytes());
                in_flight.insert(client_seq, number);
                if client.send(&Packet::Send(send)).await.is_err() {
                    break 'traffic;
                }
            }
            if !killed && Instant::now() >= deadline {
                child.kill().unwrap(); // SIGKILL: no shutdown, no flush
                killed = true;
            }
            match client.recv_within(Duration::from_secs(5)).await {
                Ok(Packet::Sendack(ack)) => {
                    let number = in_flight.remove(&ack.client_seq).expect("an ack for something in flight");
                    assert_eq!(ack.reason_code, ReasonCode::Success);
                    let previous = acked.insert(format!("m{number}"), u64::from(ack.message_seq));
                    assert!(previous.is_none_or(|p| p == u64::from(ack.message_seq)), "a resend got a different seq");
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(ClientError::Closed | ClientError::Io(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(killed, "round {round} ended before the kill");
        unacked.extend(in_flight.into_values());
        child.wait().unwrap();
    }

    let backend: Arc<dyn KvBackend> = match &storage {
        Storage::Fjall => Arc::new(FjallBackend::open(dir.path()).unwrap()),
        Storage::Postgres { url, schema } => {
            let config = PostgresConfig {
                url: url.clone(),
                schema: schema.clone(),
                ..hongyan_store_postgres::testing::config()
            };
            Arc::new(tokio::task::spawn_blocking(move || PostgresBackend::connect(&config).unwrap()).await.unwrap())
        }
    };
    let log = MessageLog::open(backend, Durability::Fsync).unwrap();
    let channel = ChannelKey::new(hongyan_core::channel::person_channel_id("writer", "reader"), 1);
    let stored = log.read(&channel, 1, 0, usize::MAX, Order::Ascending).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "seqs are dense from 1");
    let mut by_cmn: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &stored {
        by_cmn.entry(m.message.client_msg_no.as_str()).or_default().push(m.seq);
        let number = &m.message.client_msg_no[1..];
        assert_eq!(m.message.payload, format!("payload {number}").into_bytes());
    }
    assert!(by_cmn.values().all(|v| v.len() == 1), "no message is stored twice");
    for (cmn, seq) in &acked {
        assert_eq!(by_cmn.get(cmn.as_str()), Some(&vec![*seq]), "{cmn} was acknowledged at seq {seq}");
    }
    assert!(acked.len() > 100, "the test sent too little to mean anything: {}", acked.len());
    println!("{durability}: {} acknowledged, {} stored, over {rounds} kills", acked.len(), stored.len());
}
