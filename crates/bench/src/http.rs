//! Scenario `http` (shape S5): `POST /message/send` to a group at an open-loop rate,
//! then `POST /channel/messagesync` of 100 messages, then `POST /conversation/sync` of a
//! user with `--conversations` person chats (each with one unread message), each at
//! an open-loop rate of its own (or, with rate 0, by workers back to back: a closed
//! loop, which measures what the server sustains rather than latency at a load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::task::JoinSet;

use crate::stats::{Samples, cpu_secs, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
    /// Base URL of the server's HTTP API.
    #[arg(long)]
    api: String,
    /// Members of the group sent to (none of them online: the cost is the send itself).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// `/message/send` requests per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds per part.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// `/channel/messagesync` requests per second (0: closed loop).
    #[arg(long, default_value_t = 1_000)]
    sync_rate: u64,
    /// `/conversation/sync` requests per second (0: closed loop).
    #[arg(long, default_value_t = 100)]
    conversation_rate: u64,
    /// Workers asking back to back in a closed loop.
    #[arg(long, default_value_t = 16)]
    sync_workers: usize,
    /// Conversations of the user whose `/conversation/sync` is measured (0: skip).
    #[arg(long, default_value_t = 1_000)]
    conversations: usize,
    /// The server's process id, for its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append one JSON record per part to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: HttpArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let channel = format!("bh{run_id}");
    let members: Vec<String> = (0..args.members).map(|m| format!("bh{run_id}-{m}")).collect();
    let created = http
        .post(format!("{}/channel", args.api))
        .json(&json!({"channel_id": channel, "channel_type": 2, "subscribers": members}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating the group: HTTP {}", created.status());
    }
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [b'x'; 100]);
    let body = Arc::new(json!({"from_uid": members[0], "channel_id": channel, "channel_type": 2, "payload": payload}));
    let url = format!("{}/message/send", args.api);

    // Part 1: sends at an open-loop rate, at most `concurrency` in flight.
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let sent = open_loop(&http, &url, body, args.rate, &args, |_| true).await?;
    let (latencies, failed, skipped) = (sent.latencies, sent.failed, sent.skipped);
    let cpu = cpu_before.and_then(|b| args.server_pid.and_then(cpu_secs).map(|a| a - b));
    let secs = args.seconds as f64;
    let sends = latencies.summary();
    println!(
        "http /message/send to {} members at {}/s: {:.0} ok/s, {failed} failed, {skipped} over the in-flight limit, {sends}",
        args.members,
        args.rate,
        sends.count as f64 / secs
    );
    emit(
        args.json.as_deref(),
        &json!({"scenario": "http", "shape": "S5", "system": "hongyan", "part": "message_send", "target_rate": args.rate,
            "seconds": args.seconds, "ok_per_sec": sends.count as f64 / secs, "failed": failed, "skipped": skipped,
            "latency": sends.json(), "server_cores": cpu.map(|c| c / secs)}),
    )?;

    // Part 2: messagesync of the newest 100 messages.
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let sync_url = format!("{}/channel/messagesync", args.api);
    let sync_body = Arc::new(json!({"login_uid": members[0], "channel_id": channel, "channel_type": 2, "limit": 100}));
    let full_page = |v: &serde_json::Value| v["messages"].as_array().is_some_and(|m| m.len() == 100);
    let synced = load(&http, &sync_url, sync_body, args.sync_rate, &args, full_page).await?;
    let cpu = cpu_before.and_then(|b| args.server_pid.and_then(cpu_secs).map(|a| a - b));
    let syncs = synced.latencies.summary();
    println!(
        "http /channel/messagesync of 100 messages, {}: {:.0} ok/s, {} failed, {} over the in-flight limit, {syncs}",
        how(args.sync_rate, &args),
        syncs.count as f64 / secs,
        synced.failed,
        synced.skipped,
    );
    emit(
        args.json.as_deref(),
        &json!({"scenario": "http", "shape": "S5", "system": "hongyan", "part": "messagesync",
            "target_rate": (args.sync_rate > 0).then_some(args.sync_rate),
            "workers": (args.sync_rate == 0).then_some(args.sync_workers),
            "seconds": args.seconds, "ok_per_sec": syncs.count as f64 / secs, "failed": synced.failed,
            "skipped": synced.skipped, "latency": syncs.json(), "server_cores": cpu.map(|c| c / secs)}),
    )?;
    if args.conversations > 0 {
        conversation_sync(&args, &http, run_id, &payload, secs).await?;
    }
    Ok(())
}

/// Part 3: one message from each of `conversations` peers to one reader, then the
/// reader's `/conversation/sync` (newest message and unread count of each), closed loop.
async fn conversation_sync(
    args: &HttpArgs,
    http: &reqwest::Client,
    run_id: u128,
    payload: &str,
    secs: f64,
) -> anyhow::Result<()> {
    let reader = format!("bc{run_id}");
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut sends = JoinSet::new();
    for peer in 0..args.conversations {
        let permit = limit.clone().acquire_owned().await?;
        let (http, url) = (http.clone(), format!("{}/message/send", args.api));
        let body = json!({"from_uid": format!("{reader}-{peer}"), "channel_id": reader, "channel_type": 1, "payload": payload});
        sends.spawn(async move {
            let _permit = permit;
            http.post(url).json(&body).send().await.map(|r| r.status().is_success())
        });
    }
    while let Some(sent) = sends.join_next().await {
        if !sent.context("send task")?.context("send")? {
            bail!("a message to set up the conversations was refused");
        }
    }
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let url = format!("{}/conversation/sync", args.api);
    let body = Arc::new(json!({"uid": reader, "version": 0, "last_msg_seqs": "", "msg_count": 1}));
    let expected = args.conversations.min(100);
    let listed = move |v: &serde_json::Value| {
        v.as_array().is_some_and(|a| a.len() == expected && a.iter().all(|c| c["unread"] == 1))
    };
    let done = load(http, &url, body, args.conversation_rate, args, listed).await?;
    let cpu = cpu_before.and_then(|b| args.server_pid.and_then(cpu_secs).map(|a| a - b));
    let summary = done.latencies.summary();
    println!(
        "http /conversation/sync of a user with {} conversations, {}: {:.0} ok/s, {} failed, {} over the in-flight limit, {summary}",
        args.conversations,
        how(args.conversation_rate, args),
        summary.count as f64 / secs,
        done.failed,
        done.skipped,
    );
    emit(
        args.json.as_deref(),
        &json!({"scenario": "http", "shape": "S5", "system": "hongyan", "part": "conversation_sync",
            "conversations": args.conversations,
            "target_rate": (args.conversation_rate > 0).then_some(args.conversation_rate),
            "workers": (args.conversation_rate == 0).then_some(args.sync_workers), "seconds": args.seconds,
            "ok_per_sec": summary.count as f64 / secs, "failed": done.failed, "skipped": done.skipped,
            "latency": summary.json(), "server_cores": cpu.map(|c| c / secs)}),
    )?;
    Ok(())
}

fn how(rate: u64, args: &HttpArgs) -> String {
    if rate == 0 { format!("{} workers back to back", args.sync_workers) } else { format!("open loop at {rate}/s") }
}

/// What a part measured.
struct Measured {
    latencies: Samples,
    /// Answers that were not a success, or whose JSON the check refused.
    failed: u64,
    /// Requests not made because `concurrency` were in flight (open loop only).
    skipped: u64,
}

/// An open loop at `rate` (or a closed loop with `rate` 0).
async fn load(
    http: &reqwest::Client,
    url: &str,
    body: Arc<serde_json::Value>,
    rate: u64,
    args: &HttpArgs,
    ok: impl Fn(&serde_json::Value) -> bool + Clone + Send + 'static,
) -> anyhow::Result<Measured> {
    if rate == 0 {
        let (latencies, failed) = closed_loop(http, url, body, args, ok).await?;
        return Ok(Measured { latencies, failed, skipped: 0 });
    }
    open_loop(http, url, body, rate, args, ok).await
}

/// POSTs `body` to `url` `rate` times a second for `args.seconds`, on a fixed schedule
/// whatever the answers take, with at most `args.concurrency` in flight (a request due
/// while that many wait is counted as skipped, not queued). Latency is from the
/// request's scheduled time, so a server that falls behind shows it.
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    body: Arc<serde_json::Value>,
    rate: u64,
    args: &HttpArgs,
    ok: impl Fn(&serde_json::Value) -> bool + Clone + Send + 'static,
) -> anyhow::Result<Measured> {
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut next = Instant::now();
    let mut tasks = JoinSet::new();
    let mut m = Measured { latencies: Samples::default(), failed: 0, skipped: 0 };
    let record = |m: &mut Measured, (counted, took): (bool, Duration)| {
        if counted { m.latencies.record(took.as_micros() as u64) } else { m.failed += 1 }
    };
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let scheduled = next;
        next += interval;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            m.skipped += 1;
            continue;
        };
        let (http, url, body, ok) = (http.clone(), url.to_owned(), body.clone(), ok.clone());
        tasks.spawn(async move {
            let counted = match http.post(url).json(&*body).send().await {
                Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.is_ok_and(|v| ok(&v)),
                _ => false,
            };
            drop(permit);
            (counted, scheduled.elapsed())
        });
        while let Some(done) = tasks.try_join_next() {
            record(&mut m, done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut m, done?);
    }
    Ok(m)
}

/// `args.sync_workers` workers POST `body` to `url` back to back for `args.seconds`;
/// an answer counts when it is a success whose JSON `ok` accepts. Latencies of those,
/// and how many did not count.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    body: Arc<serde_json::Value>,
    args: &HttpArgs,
    ok: impl Fn(&serde_json::Value) -> bool + Clone + Send + 'static,
) -> anyhow::Result<(Samples, u64)> {
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut workers = JoinSet::new();
    for _ in 0..args.sync_workers {
        let (http, url, body, ok) = (http.clone(), url.to_owned(), body.clone(), ok.clone());
        workers.spawn(async move {
            let (mut lat, mut failed) = (Samples::default(), 0u64);
            while Instant::now() < end {
                let started = Instant::now();
                let counted = match http.post(&url).json(&*body).send().await {
                    Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.is_ok_and(|v| ok(&v)),
                    _ => false,
                };
                if counted { lat.record(started.elapsed().as_micros() as u64) } else { failed += 1 }
            }
            (lat, failed)
        });
    }
    let (mut latencies, mut failed) = (Samples::default(), 0u64);
    while let Some(done) = workers.join_next().await {
        let (lat, f) = done.context("worker")?;
        latencies.extend(lat);
        failed += f;
    }
    Ok((latencies, failed))
}
