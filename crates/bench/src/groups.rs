//! Scenario `groups` (shapes S3 and S4): G groups of S online members, one sender per
//! group sending at a rate per group; every other member receives every message. The
//! same connections run each rate of a sweep in turn.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hongyan_proto::{Packet, ReasonCode, device_flag};
use hongyan_testkit::{Client, Login, Target};
use serde_json::json;
use tokio::task::JoinSet;

use crate::pairs::stamped_send;
use crate::stats::{Samples, cpu_secs, emit, micros_since};

#[derive(Debug, clap::Args)]
pub(crate) struct GroupsArgs {
    /// TCP address of the server's binary protocol listener; several (comma-separated,
    /// the nodes of a cluster) spread each group's members over them in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) tcp: Vec<std::net::SocketAddr>,
    /// Base URL of the server's HTTP API, where the groups are created.
    #[arg(long)]
    pub(crate) api: String,
    #[command(flatten)]
    pub(crate) shape: GroupShape,
}

/// The shape both `groups` and `nats-groups` run.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct GroupShape {
    /// How many groups.
    #[arg(long, default_value_t = 10)]
    pub(crate) groups: usize,
    /// Online members per group (one of them sends).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) members: usize,
    /// Messages per second per group; several values run one after another.
    #[arg(long, value_delimiter = ',', default_value = "3,6,10,30")]
    pub(crate) rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Payload bytes (the first 8 carry the send time).
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// The server's process id, for its CPU time per step.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Append one JSON record per step to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// The shape's name in the records (S3, S4).
    #[arg(long, default_value = "S3")]
    pub(crate) shape: String,
}

/// What the receivers of one step saw.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) latencies: Samples,
    /// Every message received at least once, late ones included.
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    /// Of `unique`, those received by two seconds after the senders finished: what the
    /// step's rate counts.
    pub(crate) in_time: u64,
}

/// How a run's driver collects each step's counts from its many receiver tasks.
pub(crate) struct Steps {
    collect: Arc<AtomicU64>,
    /// Unique deliveries of the current step so far, over all receivers.
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sender: tokio::sync::mpsc::UnboundedSender<Received>,
    receiver: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

impl Steps {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        Self { collect: Arc::default(), delivered: Arc::default(), stop: Arc::default(), sender, receiver }
    }

    /// The handle one receiver task records into.
    pub(crate) fn tally(&self) -> Tally {
        Tally {
            collect: self.collect.clone(),
            delivered: self.delivered.clone(),
            stop: self.stop.clone(),
            sender: self.sender.clone(),
            step: 0,
            got: Received::default(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// Once a step's senders are done: gives deliveries in flight two seconds and
    /// counts them (the step's rate), then waits while deliveries still arrive, until
    /// all `expected` are in, none came for three seconds, or a minute has passed. So a
    /// system that falls behind shows late deliveries as latency, not as loss, and they
    /// do not spill into the next step's counts.
    pub(crate) async fn settle(&self, expected: u64) -> u64 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let in_time = self.delivered.load(Ordering::Relaxed);
        let (deadline, mut last, mut last_change) = (Instant::now() + Duration::from_secs(60), in_time, Instant::now());
        while last < expected && last_change.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.delivered.load(Ordering::Relaxed);
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
        }
        in_time
    }

    /// Ends step `step` and sums what the `receivers` tasks saw in it (`in_time` from
    /// [`Steps::settle`]). A receiver that died never reports; its deliveries count as
    /// lost.
    pub(crate) async fn collect(&mut self, step: usize, receivers: usize, in_time: u64) -> Received {
        self.collect.store(step as u64 + 1, Ordering::Release);
        let mut total = Received::default();
        for _ in 0..receivers {
            let Ok(Some(got)) = tokio::time::timeout(Duration::from_secs(5), self.receiver.recv()).await else { break };
            total.latencies.extend(got.latencies);
            total.unique += got.unique;
            total.duplicates += got.duplicates;
        }
        total.in_time = in_time.min(total.unique);
        self.delivered.store(0, Ordering::Relaxed);
        total
    }

    /// Tells every receiver task to finish.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One receiver task's counts for the current step.
pub(crate) struct Tally {
    collect: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sender: tokio::sync::mpsc::UnboundedSender<Received>,
    step: u64,
    got: Received,
    seen: std::collections::HashSet<u64>,
}

impl Tally {
    /// Hands the finished step's counts over when the driver asks; false once the run
    /// is over. Call it at least every 100 ms.
    pub(crate) fn keep_going(&mut self) -> bool {
        let wanted = self.collect.load(Ordering::Acquire);
        if wanted > self.step {
            let _ = self.sender.send(std::mem::take(&mut self.got));
            self.seen.clear();
            self.step = wanted;
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// One delivery of message `key`, `latency_us` after it was sent.
    pub(crate) fn record(&mut self, key: u64, latency_us: u64) {
        self.got.latencies.record(latency_us);
        if self.seen.insert(key) {
            self.got.unique += 1;
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.got.duplicates += 1;
        }
    }
}

/// Source addresses 127.0.0.1 … 127.0.0.8, so 10,000 connections need no more than
/// one range of ephemeral ports.
pub(crate) fn source(i: usize) -> IpAddr {
    [127, 0, 0, 1 + (i % 8) as u8].into()
}

/// One step's record and summary line.
///
/// Rates are over `elapsed`, the time the senders took: when a system falls behind,
/// its senders (or their last SENDACKs) finish after the nominal step length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    system: &str,
    shape: &GroupShape,
    rate: f64,
    sent: u64,
    acked: Option<(u64, Samples)>,
    received: Received,
    expected: u64,
    cpu: Option<f64>,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64().max(shape.seconds as f64);
    let lost = expected.saturating_sub(received.unique);
    let late = received.unique - received.in_time;
    let e2e = received.latencies.summary();
    let (acked_count, ack_summary) = match &acked {
        Some((n, samples)) => (Some(*n), Some(samples.summary())),
        None => (None, None),
    };
    println!(
        "{system} {} rate {rate}/s per group: sent {sent}, deliveries {} ({:.0}/s; {late} more later), end-to-end {e2e}, lost {lost}, duplicates {}{}",
        shape.shape,
        received.in_time,
        received.in_time as f64 / secs,
        received.duplicates,
        cpu.map(|c| format!(", server CPU {:.2} cores", c / secs)).unwrap_or_default()
    );
    let record = json!({
        "scenario": "groups",
        "shape": shape.shape,
        "system": system,
        "groups": shape.groups,
        "members": shape.members,
        "rate_per_group": rate,
        "seconds": shape.seconds,
        "elapsed_secs": secs,
        "payload": shape.payload,
        "sent": sent,
        "acked": acked_count,
        "sendack": ack_summary.map(|s| s.json()),
        "deliveries": received.in_time,
        "deliveries_per_sec": received.in_time as f64 / secs,
        "deliveries_late": late,
        "expected": expected,
        "lost": lost,
        "duplicates": received.duplicates,
        "e2e": e2e.json(),
        "server_cores": cpu.map(|c| c / secs),
    });
    emit(shape.json.as_deref(), &record)
}

pub(crate) async fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let shape = &args.shape;
    if shape.members < 2 {
        bail!("--members must be at least 2");
    }
    let targets: Vec<Target> = args.tcp.iter().copied().map(Target::Tcp).collect();
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let http = reqwest::Client::new();
    let uid = |g: usize, m: usize| format!("bg{run_id}-{g}-{m}");
    for g in 0..shape.groups {
        let members: Vec<String> = (0..shape.members).map(|m| uid(g, m)).collect();
        let body = json!({"channel_id": format!("bg{run_id}-{g}"), "channel_type": 2, "subscribers": members});
        let response = http.post(format!("{}/channel", args.api)).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("creating group {g}: HTTP {}", response.status());
        }
    }
    // Connect every member, 64 handshakes at a time.
    let started = Instant::now();
    let mut pending = JoinSet::new();
    let mut clients: Vec<Option<Client>> = (0..shape.groups * shape.members).map(|_| None).collect();
    for i in 0..clients.len() {
        let (target, uid) = (targets[i % targets.len()].clone(), uid(i / shape.members, i % shape.members));
        pending.spawn(async move {
            let login =
                Login { uid: &uid, token: "bench", device_flag: device_flag::APP, device_id: "bench", version: 5 };
            let (client, connack) = Client::connect_from(&target, Some(source(i)), login).await?;
            if connack.reason_code != ReasonCode::Success {
                bail!("login refused: {} (run the server with auth.token_auth = false)", connack.reason_code);
            }
            Ok::<_, anyhow::Error>((i, client))
        });
        while pending.len() >= 64 {
            let (i, c) = pending.join_next().await.context("join")???;
            clients[i] = Some(c);
        }
    }
    while let Some(done) = pending.join_next().await {
        let (i, c) = done??;
        clients[i] = Some(c);
    }
    println!(
        "groups: {} groups x {} members connected in {:.1} s",
        shape.groups,
        shape.members,
        started.elapsed().as_secs_f64()
    );
    let epoch = Instant::now();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let client = client.context("a member did not connect")?;
        if i % shape.members == 0 { senders.push(client) } else { receivers.push(client) }
    }
    // Receivers live across steps; each step collects what they saw since the last one.
    let mut steps = Steps::new();
    for mut client in receivers {
        let mut tally = steps.tally();
        tokio::spawn(async move {
            while tally.keep_going() {
                let packet = match client.recv_within(Duration::from_millis(100)).await {
                    Ok(p) => p,
                    Err(hongyan_testkit::ClientError::Timeout) => continue,
                    Err(_) => break,
                };
                let Packet::Recv(recv) = packet else { continue };
                let Some(plain) = client.cipher.as_ref().and_then(|c| c.open_recv(&recv).ok()) else { continue };
                let Some(sent_us) = plain.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else {
                    continue;
                };
                tally.record(u64::from(recv.message_seq), micros_since(epoch).saturating_sub(sent_us));
                let ack = hongyan_proto::Recvack {
                    flags: recv.flags,
                    message_id: recv.message_id,
                    message_seq: recv.message_seq,
                };
                if client.send(&Packet::Recvack(ack)).await.is_err() {
                    break;
                }
            }
        });
    }
    let receiver_count = (shape.members - 1) * shape.groups;
    let mut senders: Vec<Option<Client>> = senders.into_iter().map(Some).collect();
    for (step, &rate) in shape.rates.iter().enumerate() {
        let cpu_before = shape.server_pid.and_then(cpu_secs);
        let step_started = Instant::now();
        let mut tasks = JoinSet::new();
        for (g, slot) in senders.iter_mut().enumerate() {
            let client = slot.take().context("sender")?;
            let (channel, payload, seconds) = (format!("bg{run_id}-{g}"), shape.payload.max(8), shape.seconds);
            let cmn_prefix = format!("{run_id}-{step}-{g}");
            tasks.spawn(send_at_rate(g, client, channel, rate, seconds, payload, epoch, cmn_prefix));
        }
        let (mut sent, mut acked, mut ack_latency) = (0u64, 0u64, Samples::default());
        while let Some(done) = tasks.join_next().await {
            let (g, client, s, a, lat) = done??;
            senders[g] = Some(client);
            sent += s;
            acked += a;
            ack_latency.extend(lat);
        }
        let elapsed = step_started.elapsed();
        let cpu = cpu_before.and_then(|b| shape.server_pid.and_then(cpu_secs).map(|a| a - b));
        let expected = acked * (shape.members as u64 - 1);
        let in_time = steps.settle(expected).await;
        let received = steps.collect(step, receiver_count, in_time).await;
        report("hongyan", shape, rate, sent, Some((acked, ack_latency)), received, expected, cpu, elapsed)?;
    }
    steps.stop();
    Ok(())
}

/// One sender: open loop at `rate` for `seconds`, reading SENDACKs between sends.
/// Returns its group index back with the client, sent and acked counts and SENDACK
/// latencies.
#[allow(clippy::too_many_arguments)]
async fn send_at_rate(
    group: usize,
    mut client: Client,
    channel: String,
    rate: f64,
    seconds: u64,
    payload_len: usize,
    epoch: Instant,
    cmn_prefix: String,
) -> anyhow::Result<(usize, Client, u64, u64, Samples)> {
    let cipher = client.cipher.clone().context("no cipher")?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next = Instant::now() + interval.mul_f64((group as f64 * 0.618_034) % 1.0);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut sent_at: std::collections::HashMap<u32, Instant> = std::collections::HashMap::new();
    let (mut seq, mut acked, mut latencies) = (0u32, 0u64, Samples::default());
    // Exactly rate × seconds messages, so every system of a comparison sends as many.
    let total = (rate * seconds as f64).round() as u32;
    loop {
        let sending = Instant::now() < end && seq < total;
        if !sending && sent_at.is_empty() {
            break;
        }
        let wait = if sending { next.saturating_duration_since(Instant::now()) } else { Duration::from_secs(5) };
        match tokio::time::timeout(wait, client.recv_forever()).await {
            Ok(Ok(Packet::Sendack(ack))) => {
                if let Some(t) = sent_at.remove(&ack.client_seq) {
                    latencies.record(t.elapsed().as_micros() as u64);
                }
                if ack.reason_code == ReasonCode::Success {
                    acked += 1;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("sender: {e}"),
            Err(_) if !sending => break,
            Err(_) => {
                seq += 1;
                let send = stamped_send(&cipher, seq, format!("{cmn_prefix}-{seq}"), (&channel, 2), payload_len, epoch);
                sent_at.insert(seq, Instant::now());
                client.send(&Packet::Send(send)).await?;
                next += interval;
            }
        }
    }
    Ok((group, client, u64::from(seq), acked, latencies))
}
