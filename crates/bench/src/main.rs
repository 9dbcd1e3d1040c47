//! `hongyan-bench`: load scenarios against a running server over the real protocol
//! (X25519 handshake, AES payloads), bounded in count and time.
//!
//! Scenario `connections`: open N authenticated connections, PING each once (so every
//! read path has run), hold them idle, and report the server's resident memory per
//! connection, read from `/proc/<server-pid>/status` before and after.
//!
//! ```sh
//! hongyan-bench connections --tcp 127.0.0.1:5100 --count 10000 --server-pid 1234
//! ```
//!
//! Scenario `pairs`: M person-chat pairs; each sender sends at a fixed rate (open loop)
//! for a bounded time; reports acknowledged sends per second, SENDACK latency and
//! delivery latency percentiles, and counts lost and duplicated deliveries (both must
//! be 0).
//!
//! ```sh
//! hongyan-bench pairs --tcp 127.0.0.1:5100 --pairs 1000 --rate 10000 --seconds 10
//! ```
//!
//! The server must run with `auth.token_auth = false` (or have a token `--token`
//! registered for every uid): registering thousands of users is not what this measures.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Login, Target};
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(version, about = "Hongyan load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N idle authenticated connections and report server RSS per connection.
    Connections(ConnectionsArgs),
    /// M person-chat pairs sending at a target rate: throughput, latency, loss.
    Pairs(PairsArgs),
}

#[derive(Debug, clap::Args)]
struct PairsArgs {
    /// TCP address of the server's binary protocol listener.
    #[arg(long)]
    tcp: std::net::SocketAddr,
    /// How many sender → receiver pairs.
    #[arg(long, default_value_t = 1_000)]
    pairs: usize,
    /// Total messages per second over all pairs.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes (the first bytes carry the send time).
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

#[derive(Debug, clap::Args)]
struct ConnectionsArgs {
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
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the server's status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

async fn connections(args: ConnectionsArgs) -> anyhow::Result<()> {
    let (target, label) = match (&args.tcp, &args.ws) {
        (Some(addr), None) => (Target::Tcp(*addr), "tcp"),
        (None, Some(url)) => (Target::Ws(url.clone()), "ws"),
        _ => bail!("give exactly one of --tcp or --ws"),
    };
    let before = args.server_pid.map(rss_kib).transpose()?;
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
    let after = args.server_pid.map(rss_kib).transpose()?;
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
        println!(
            "{{\"scenario\":\"connections\",\"transport\":\"{label}\",\"held\":{held},\"failed\":{failures},\"ramp_secs\":{:.2},\"rss_before_kib\":{b},\"rss_after_kib\":{a},\"rss_bytes_per_conn\":{per_conn:.0}}}",
            ramp.as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    drop(clients);
    if failures > 0 {
        bail!("{failures} connections failed");
    }
    Ok(())
}

/// Microsecond latencies, summarised.
fn percentiles(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
    format!("p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms", at(0.5), at(0.99), at(0.999), at(1.0))
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

async fn pairs(args: PairsArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let target = Target::Tcp(args.tcp);
    let epoch = Instant::now();
    // client_msg_nos must be new on every run: the server rightly treats a repeated one
    // as a resend and does not deliver it again.
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let per_pair_interval = Duration::from_secs_f64(args.pairs as f64 / args.rate as f64);
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    for p in 0..args.pairs {
        let source: IpAddr = [127, 0, 0, 1 + (p % 8) as u8].into();
        let (rx_uid, tx_uid) = (format!("pr-{p}"), format!("ps-{p}"));
        let login = |uid: &'static str| Login {
            uid,
            token: "bench",
            device_flag: device_flag::APP,
            device_id: "bench",
            version: 5,
        };
        let rx_uid: &'static str = Box::leak(rx_uid.into_boxed_str());
        let tx_uid: &'static str = Box::leak(tx_uid.into_boxed_str());
        let (mut rx, c1) = Client::connect_from(&target, Some(source), login(rx_uid)).await?;
        let (mut tx, c2) = Client::connect_from(&target, Some(source), login(tx_uid)).await?;
        if c1.reason_code != ReasonCode::Success || c2.reason_code != ReasonCode::Success {
            bail!("login refused (run the server with auth.token_auth = false)");
        }
        let stop_rx = stop.clone();
        // Receiver: decrypt, check, acknowledge, and time each delivery.
        receivers.spawn(async move {
            let mut latencies = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut duplicates = 0u64;
            loop {
                let packet = match rx.recv_within(Duration::from_millis(500)).await {
                    Ok(p) => p,
                    Err(_) if stop_rx.load(Ordering::Relaxed) => break,
                    Err(hongyan_testkit::ClientError::Timeout) => continue,
                    Err(e) => return Err(anyhow::anyhow!("receiver: {e}")),
                };
                if let Packet::Recv(recv) = packet {
                    let plain = rx.cipher.as_ref().context("no cipher")?.open_recv(&recv)?;
                    let sent_us = u64::from_be_bytes(plain[..8].try_into()?);
                    latencies.push(micros_since(epoch).saturating_sub(sent_us));
                    if !seen.insert(recv.message_seq) {
                        duplicates += 1;
                    }
                    let ack = hongyan_proto::Recvack {
                        flags: recv.flags,
                        message_id: recv.message_id,
                        message_seq: recv.message_seq,
                    };
                    rx.send(&Packet::Recvack(ack)).await?;
                }
            }
            Ok::<_, anyhow::Error>((latencies, seen.len() as u64, duplicates))
        });
        let (seconds, payload_len) = (args.seconds, args.payload.max(8));
        // Sender: one message per interval, open loop; SENDACKs are read between sends.
        senders.spawn(async move {
            let cipher = tx.cipher.clone().context("no cipher")?;
            let mut sent_at = std::collections::HashMap::new();
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            // Spread the pairs' first sends over one interval.
            let mut next = Instant::now() + per_pair_interval.mul_f64((p as f64 * 0.618_033) % 1.0);
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut seq = 0u32;
            while Instant::now() < end || !sent_at.is_empty() {
                let wait = next.saturating_duration_since(Instant::now());
                let sending = Instant::now() < end;
                match tokio::time::timeout(if sending { wait } else { Duration::from_secs(5) }, tx.recv_forever()).await
                {
                    Ok(Ok(Packet::Sendack(ack))) => {
                        if let Some(t) = sent_at.remove(&ack.client_seq) {
                            latencies.push(micros_since(t));
                        }
                        if ack.reason_code != ReasonCode::Success {
                            refused += 1;
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(anyhow::anyhow!("sender: {e}")),
                    Err(_) if !sending => break,
                    Err(_) => {
                        seq += 1;
                        let mut payload = vec![b'x'; payload_len];
                        payload[..8].copy_from_slice(&micros_since(epoch).to_be_bytes());
                        let mut send = hongyan_proto::Send {
                            client_seq: seq,
                            client_msg_no: format!("{run_id}-{p}-{seq}"),
                            channel_id: rx_uid.into(),
                            channel_type: 1,
                            ..Default::default()
                        };
                        cipher.seal_send(&mut send, &payload);
                        sent_at.insert(seq, Instant::now());
                        tx.send(&Packet::Send(send)).await?;
                        next += per_pair_interval;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, u64::from(seq), refused, sent_at.len() as u64))
        });
    }
    let (mut ack_lat, mut sent, mut refused, mut unacked) = (Vec::new(), 0, 0, 0);
    while let Some(r) = senders.join_next().await {
        let (lat, s, rf, ua) = r??;
        ack_lat.extend(lat);
        sent += s;
        refused += rf;
        unacked += ua;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut delivery_lat, mut delivered, mut duplicates) = (Vec::new(), 0, 0);
    while let Some(r) = receivers.join_next().await {
        let (lat, d, dup) = r??;
        delivery_lat.extend(lat);
        delivered += d;
        duplicates += dup;
    }
    let acked = ack_lat.len() as u64;
    println!(
        "scenario: pairs, {} pairs over TCP, protocol v5, {} B payloads, target {} msgs/s for {} s",
        args.pairs, args.payload, args.rate, args.seconds
    );
    println!(
        "sent {sent}, acked {acked} ({:.0}/s), refused {refused}, unacknowledged {unacked}",
        acked as f64 / args.seconds as f64
    );
    println!("SENDACK latency: {}", percentiles(ack_lat));
    println!("delivery latency: {}", percentiles(delivery_lat));
    println!("delivered {delivered}, lost {}, duplicates {duplicates}", acked.saturating_sub(delivered));
    if refused > 0 || unacked > 0 || acked > delivered || duplicates > 0 {
        bail!("messages were refused, unacknowledged, lost or duplicated");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Connections(args) => connections(args).await,
            Scenario::Pairs(args) => pairs(args).await,
        }
    })
}
