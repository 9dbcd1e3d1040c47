//! Scenario `pairs` (shape S2): M person-chat pairs; each sender sends at a fixed rate
//! (open loop) for a bounded time; reports acknowledged sends per second, SENDACK and
//! delivery latency percentiles, and counts lost and duplicated deliveries (both must
//! be 0).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Login, Target};
use serde_json::json;
use tokio::task::JoinSet;

use crate::stats::{Samples, cpu_secs, emit, micros_since};

#[derive(Debug, clap::Args)]
pub(crate) struct PairsArgs {
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
    /// The server's process id, for its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append the JSON record to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: PairsArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let target = Target::Tcp(args.tcp);
    let epoch = Instant::now();
    // Senders wait for every pair to be connected, then start together.
    let (go, ready) = tokio::sync::watch::channel(None::<Instant>);
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
            let mut latencies = Samples::default();
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
                    latencies.record(micros_since(epoch).saturating_sub(sent_us));
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
        let (seconds, payload_len, mut ready) = (args.seconds, args.payload.max(8), ready.clone());
        // Sender: one message per interval, open loop; SENDACKs are read between sends.
        senders.spawn(async move {
            let start = ready.wait_for(Option::is_some).await.ok().and_then(|v| *v).context("never started")?;
            let cipher = tx.cipher.clone().context("no cipher")?;
            let mut sent_at = std::collections::HashMap::new();
            let mut latencies = Samples::default();
            let mut refused = 0u64;
            // Spread the pairs' first sends over one interval.
            let mut next = start + per_pair_interval.mul_f64((p as f64 * 0.618_033) % 1.0);
            let end = start + Duration::from_secs(seconds);
            let mut seq = 0u32;
            while Instant::now() < end || !sent_at.is_empty() {
                let wait = next.saturating_duration_since(Instant::now());
                let sending = Instant::now() < end;
                match tokio::time::timeout(if sending { wait } else { Duration::from_secs(5) }, tx.recv_forever()).await
                {
                    Ok(Ok(Packet::Sendack(ack))) => {
                        if let Some(t) = sent_at.remove(&ack.client_seq) {
                            latencies.record(micros_since(t));
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
                        let cmn = format!("{run_id}-{p}-{seq}");
                        let send = stamped_send(&cipher, seq, cmn, (rx_uid, 1), payload_len, epoch);
                        sent_at.insert(seq, Instant::now());
                        tx.send(&Packet::Send(send)).await?;
                        next += per_pair_interval;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, u64::from(seq), refused, sent_at.len() as u64, Instant::now()))
        });
    }
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let start = Instant::now();
    go.send(Some(start))?;
    let mut finished = start;
    let (mut ack_lat, mut sent, mut refused, mut unacked) = (Samples::default(), 0, 0, 0);
    while let Some(r) = senders.join_next().await {
        let (lat, s, rf, ua, done) = r??;
        finished = finished.max(done);
        ack_lat.extend(lat);
        sent += s;
        refused += rf;
        unacked += ua;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = cpu_before.and_then(|b| args.server_pid.and_then(cpu_secs).map(|a| a - b));
    let (mut delivery_lat, mut delivered, mut duplicates) = (Samples::default(), 0, 0);
    while let Some(r) = receivers.join_next().await {
        let (lat, d, dup) = r??;
        delivery_lat.extend(lat);
        delivered += d;
        duplicates += dup;
    }
    let acked = ack_lat.len() as u64;
    let (ack_summary, delivery_summary) = (ack_lat.summary(), delivery_lat.summary());
    // Rates are over the time the senders actually took: when the server falls behind,
    // the last SENDACKs come after the nominal end of the run.
    let secs = (finished - start).as_secs_f64().max(args.seconds as f64);
    println!(
        "scenario: pairs, {} pairs over TCP, protocol v5, {} B payloads, target {} msgs/s for {} s",
        args.pairs, args.payload, args.rate, args.seconds
    );
    println!(
        "sent {sent}, acked {acked} in {secs:.1} s ({:.0}/s), refused {refused}, unacknowledged {unacked}",
        acked as f64 / secs
    );
    println!("SENDACK latency: {ack_summary}");
    println!("delivery latency: {delivery_summary}");
    let lost = acked.saturating_sub(delivered);
    println!("delivered {delivered}, lost {lost}, duplicates {duplicates}");
    emit(
        args.json.as_deref(),
        &json!({"scenario": "pairs", "shape": "S2", "system": "hongyan", "pairs": args.pairs, "target_rate": args.rate,
            "seconds": args.seconds, "elapsed_secs": secs, "payload": args.payload, "sent": sent, "acked": acked, "acked_per_sec": acked as f64 / secs,
            "refused": refused, "unacknowledged": unacked, "sendack": ack_summary.json(), "delivery": delivery_summary.json(),
            "delivered": delivered, "lost": lost, "duplicates": duplicates, "server_cores": cpu.map(|c| c / secs)}),
    )?;
    if refused > 0 || unacked > 0 || acked > delivered || duplicates > 0 {
        bail!("messages were refused, unacknowledged, lost or duplicated");
    }
    Ok(())
}

/// A sealed SEND whose payload starts with the send time (microseconds since `epoch`),
/// padded to `payload_len` bytes.
pub(crate) fn stamped_send(
    cipher: &hongyan_proto::SessionCipher,
    client_seq: u32,
    client_msg_no: String,
    (channel_id, channel_type): (&str, u8),
    payload_len: usize,
    epoch: Instant,
) -> hongyan_proto::Send {
    let mut payload = vec![b'x'; payload_len.max(8)];
    payload[..8].copy_from_slice(&micros_since(epoch).to_be_bytes());
    let mut send = hongyan_proto::Send {
        client_seq,
        client_msg_no,
        channel_id: channel_id.into(),
        channel_type,
        ..Default::default()
    };
    cipher.seal_send(&mut send, &payload);
    send
}
