//! The reference: the `groups` shape on nats-server core pub/sub, one subject per group,
//! one connection per subscriber, one publisher per group, the same rates and payload.
//! NATS stores nothing, encrypts nothing per recipient and acknowledges nothing, so it
//! is an upper bound for the fan-out part of the work, not a peer.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::task::JoinSet;

use crate::groups::{GroupShape, Steps, Tally, report};
use crate::stats::{cpu_secs, micros_since};

#[derive(Debug, clap::Args)]
pub(crate) struct NatsArgs {
    /// nats-server address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub(crate) nats: String,
    #[command(flatten)]
    pub(crate) shape: GroupShape,
}

pub(crate) async fn run(args: NatsArgs) -> anyhow::Result<()> {
    let shape = &args.shape;
    let url = format!("nats://{}", args.nats);
    let started = Instant::now();
    let epoch = Instant::now();
    let mut steps = Steps::new();
    let mut connecting = JoinSet::new();
    let subscribers = shape.groups * (shape.members - 1);
    for i in 0..subscribers {
        let (url, subject) = (url.clone(), format!("bench.group.{}", i / (shape.members - 1)));
        connecting.spawn(async move {
            let client = async_nats::connect(url).await?;
            let subscription = client.subscribe(subject).await?;
            client.flush().await?;
            Ok::<_, anyhow::Error>((client, subscription))
        });
        while connecting.len() >= 64 {
            let (client, subscription) = connecting.join_next().await.context("join")???;
            spawn_subscriber(client, subscription, epoch, steps.tally());
        }
    }
    while let Some(done) = connecting.join_next().await {
        let (client, subscription) = done??;
        spawn_subscriber(client, subscription, epoch, steps.tally());
    }
    let mut publishers = Vec::new();
    for _ in 0..shape.groups {
        publishers.push(async_nats::connect(url.clone()).await?);
    }
    println!(
        "nats: {} subscribers and {} publishers connected in {:.1} s",
        subscribers,
        shape.groups,
        started.elapsed().as_secs_f64()
    );
    for (step, &rate) in shape.rates.iter().enumerate() {
        let cpu_before = shape.server_pid.and_then(cpu_secs);
        let step_started = Instant::now();
        let mut tasks = JoinSet::new();
        for (g, publisher) in publishers.iter().enumerate() {
            let (publisher, subject, seconds) = (publisher.clone(), format!("bench.group.{g}"), shape.seconds);
            let payload_len = shape.payload.max(16);
            tasks.spawn(async move {
                let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
                let mut next = Instant::now() + interval.mul_f64((g as f64 * 0.618_034) % 1.0);
                let end = Instant::now() + Duration::from_secs(seconds);
                let mut sent = 0u64;
                let total = (rate * seconds as f64).round() as u64;
                while next < end && sent < total {
                    tokio::time::sleep_until(next.into()).await;
                    let mut payload = vec![b'x'; payload_len];
                    payload[..8].copy_from_slice(&micros_since(epoch).to_be_bytes());
                    payload[8..16].copy_from_slice(&sent.to_be_bytes());
                    publisher.publish(subject.clone(), payload.into()).await?;
                    sent += 1;
                    next += interval;
                }
                publisher.flush().await?;
                Ok::<_, anyhow::Error>(sent)
            });
        }
        let mut sent = 0;
        while let Some(done) = tasks.join_next().await {
            sent += done??;
        }
        let elapsed = step_started.elapsed();
        let cpu = cpu_before.and_then(|b| shape.server_pid.and_then(cpu_secs).map(|a| a - b));
        let expected = sent * (shape.members as u64 - 1);
        let in_time = steps.settle(expected).await;
        let received = steps.collect(step, subscribers, in_time).await;
        report("nats", shape, rate, sent, None, received, expected, cpu, elapsed)?;
    }
    steps.stop();
    Ok(())
}

fn spawn_subscriber(
    client: async_nats::Client,
    mut subscription: async_nats::Subscriber,
    epoch: Instant,
    mut tally: Tally,
) {
    tokio::spawn(async move {
        let _client = client; // keeps the connection open
        while tally.keep_going() {
            let message = match tokio::time::timeout(Duration::from_millis(100), subscription.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => continue,
            };
            let number = |at: std::ops::Range<usize>| {
                message.payload.get(at).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
            };
            let (Some(sent_us), Some(n)) = (number(0..8), number(8..16)) else { continue };
            tally.record(n, micros_since(epoch).saturating_sub(sent_us));
        }
    });
}
