//! Group-commit throughput and ack latency of the message log on this machine.
//!
//! `cargo run --release -p hongyan-store --example append_throughput -- [appenders] [seconds] [fsync|interval] [groups|pairs]`
//!
//! Each appender is a closed loop (append, wait for the ack, repeat) with a 100-byte
//! payload, like senders waiting for their SENDACKs: spread over 1,000 short group ids
//! (`groups`, the default), or as person chats between pairs of appenders with ids and
//! client_msg_nos as long as the benchmark's and the SDKs' (`pairs`: a 40-byte `a@b`
//! channel id and a 32-character client_msg_no, as in shape S2).

#![allow(clippy::unwrap_used)] // an example; failures should be loud

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hongyan_store::{ChannelKey, Durability, FjallBackend, MessageLog, NewMessage};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let appenders: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let durability = match args.get(3).map(String::as_str) {
        Some("interval") => Durability::Interval(Duration::from_millis(100)),
        _ => Durability::Fsync,
    };
    let pairs = args.get(4).map(String::as_str) == Some("pairs");
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MessageLog::open(Arc::new(FjallBackend::open(dir.path()).unwrap()), durability).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let payload = Bytes::from(vec![b'x'; 100]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for a in 0..appenders {
            let (log, payload) = (log.clone(), payload.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0i64;
                let uid = |a: usize| if pairs { format!("bp1764650000000-{a}") } else { format!("u{a}") };
                let channel = if pairs {
                    let (x, y) = (uid(a & !1), uid(a | 1));
                    ChannelKey::new(format!("{x}@{y}"), 1)
                } else {
                    ChannelKey::new(format!("g{}", a % 1000), 2)
                };
                while Instant::now() < deadline {
                    let m = NewMessage {
                        message_id: (a as i64) << 32 | n,
                        timestamp_ms: 0,
                        from_uid: uid(a),
                        client_msg_no: if pairs { format!("{:016x}{n:016x}", a) } else { format!("{a}-{n}") },
                        header: 0,
                        setting: 0,
                        expire: 0,
                        topic: None,
                        payload: payload.clone(),
                    };
                    let t = Instant::now();
                    log.append(channel.clone(), m).await.unwrap();
                    lat.push(t.elapsed());
                    n += 1;
                }
                lat
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{:?}: {} appenders ({}), {:.0} appends/s, ack latency p50 {:?} p99 {:?} p999 {:?}",
        durability,
        appenders,
        if pairs { "pairs" } else { "groups" },
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}
