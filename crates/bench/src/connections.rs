//! Scenario `connections` (shape S1): open N authenticated connections, PING each
//! once (so every read path has run), hold them idle, and report the server's resident
//! memory per connection, read from `/proc/<server-pid>/status` before and after.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Login, Target};
use serde_json::json;
use tokio::task::JoinSet;

use crate::stats::{emit, rss_kib};

#[derive(Debug, clap::Args)]
pub(crate) struct ConnectionsArgs {
    /// TCP address of the server's binary protocol listener.
    #[arg(long, conflicts_with = "ws")]
    tcp: Option<std::net::SocketAddr>,
    /// WebSocket URL of the server, e.g. ws://127.0.0.1:5200.
    #[arg(long)]
    ws: Option<String>,
    /// How many connections.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Uids are this prefix plus the connection number.
    #[arg(long, default_value = "bench-")]
    uid_prefix: String,
    /// Token every connection presents.
    #[arg(long, default_value = "bench")]
    token: String,
    /// Spread source addresses over 127.0.0.1 … 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// The server's process id, to read its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to hold the connections after measuring.
    #[arg(long, default_value_t = 2)]
    hold_secs: u64,
    /// Protocol version to announce.
    #[arg(long, default_value_t = 5)]
    version: u8,
    /// Append the JSON record to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    let (target, label) = match (&args.tcp, &args.ws) {
        (Some(addr), None) => (Target::Tcp(*addr), "tcp"),
        (None, Some(url)) => (Target::Ws(url.clone()), "ws"),
        _ => bail!("give exactly one of --tcp or --ws"),
    };
    let before = args.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(args.count);
    let mut pending = JoinSet::new();
    let mut failures = 0usize;
    for i in 0..args.count {
        let source: IpAddr = [127, 0, 0, 1 + (i % usize::from(args.source_ips.max(1))) as u8].into();
        let (target, uid, token, version) =
            (target.clone(), format!("{}{i}", args.uid_prefix), args.token.clone(), args.version);
        pending.spawn(async move {
            let login = Login { uid: &uid, token: &token, device_flag: device_flag::APP, device_id: "bench", version };
            let (mut client, connack) = Client::connect_from(&target, Some(source), login).await?;
            if connack.reason_code != ReasonCode::Success {
                bail!("login refused: {}", connack.reason_code);
            }
            client.send(&Packet::Ping).await?;
            match client.recv().await? {
                Packet::Pong => Ok(client),
                other => bail!("expected PONG, got {other:?}"),
            }
        });
        while pending.len() >= args.concurrency {
            match pending.join_next().await.context("join")?? {
                Ok(c) => clients.push(c),
                Err(e) => {
                    failures += 1;
                    if failures <= 5 {
                        eprintln!("connection failed: {e:#}");
                    }
                }
            }
        }
    }
    while let Some(r) = pending.join_next().await {
        match r? {
            Ok(c) => clients.push(c),
            Err(e) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("connection failed: {e:#}");
                }
            }
        }
    }
    let ramp = started.elapsed();
    // Let the server settle (buffers released, allocator quiet) before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = args.server_pid.and_then(rss_kib);
    let held = clients.len();
    println!("scenario: connections ({label}), protocol v{}", args.version);
    println!(
        "held: {held} of {} ({failures} failed), ramp {:.1} s ({:.0} connections/s)",
        args.count,
        ramp.as_secs_f64(),
        held as f64 / ramp.as_secs_f64()
    );
    if let (Some(b), Some(a)) = (before, after) {
        let per_conn = (a.saturating_sub(b) * 1024) as f64 / held.max(1) as f64;
        println!("server RSS: {b} KiB before, {a} KiB after: {per_conn:.0} bytes per connection");
        emit(
            args.json.as_deref(),
            &json!({"scenario": "connections", "transport": label, "held": held, "failed": failures,
                "ramp_secs": ramp.as_secs_f64(), "rss_before_kib": b, "rss_after_kib": a, "rss_bytes_per_conn": per_conn}),
        )?;
    }
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    drop(clients);
    if failures > 0 {
        bail!("{failures} connections failed");
    }
    Ok(())
}
