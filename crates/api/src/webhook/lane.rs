//! A lane: one task that posts its queue's events in id order, retrying with backoff
//! until a 2xx, and removes each after it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hongyan_core::Core;
use hongyan_core::channel::base_channel;
use hongyan_store::{Table, Write};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::pump::offline_body;
use super::queue::{Event, Queue};
use super::{LANE_READ, MSG_OFFLINE, WebhookSettings, sign};

pub(super) struct Lane {
    pub(super) lane: u8,
    pub(super) queue: Arc<Queue>,
    pub(super) core: Arc<Core>,
    pub(super) client: reqwest::Client,
    pub(super) settings: Arc<WebhookSettings>,
    pub(super) stop: CancellationToken,
}

impl Lane {
    pub(super) async fn run(self) {
        loop {
            let (kv, lane) = (self.queue.kv.clone(), self.lane);
            let rows = tokio::task::spawn_blocking(move || kv.scan_prefix(Table::HookQueue, &[lane], LANE_READ)).await;
            let rows = match rows {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    error!(error = %e, lane, "webhook queue unreadable");
                    Vec::new()
                }
                Err(_) => return,
            };
            if rows.is_empty() {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = self.queue.wake[usize::from(lane)].notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            for (key, value) in rows {
                let Some(event) = Queue::decode(key.clone(), &value) else {
                    error!(lane, "an undecodable webhook event was dropped");
                    self.remove(key, value.len()).await;
                    continue;
                };
                let event = match self.render(event).await {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        self.remove(key, value.len()).await;
                        continue;
                    }
                    Err(()) => {
                        // Storage could not be read: try again in a while, from this event.
                        tokio::select! {
                            () = self.stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        break;
                    }
                };
                if !self.deliver(&event).await {
                    return; // stopping; the event stays queued
                }
                self.remove(event.key, value.len()).await;
            }
        }
    }

    /// Makes the body of an event that refers to a stored message: the message from the
    /// log, with the event's `to_uids`. `None` when the message is gone (retention or
    /// channel deletion removed it first): the event is dropped and counted.
    pub(super) async fn render(&self, mut event: Event) -> Result<Option<Event>, ()> {
        let Some((channel, seq)) = event.message.clone() else { return Ok(Some(event)) };
        let core = self.core.clone();
        let read = channel.clone();
        let found = tokio::task::spawn_blocking(move || {
            core.log().read(&read, seq, seq + 1, 1, hongyan_store::Order::Ascending)
        })
        .await
        .map_err(|_| ())?
        .map_err(|e| error!(error = %e, "msg.offline: the message could not be read"))?;
        let Some(stored) = found.into_iter().next() else {
            metrics::counter!("hongyan_webhook_dropped_total", "event" => MSG_OFFLINE, "why" => "message_gone")
                .increment(1);
            warn!(id = event.id, seq, "msg.offline dropped: its message was deleted before it was posted");
            return Ok(None);
        };
        let mut body = offline_body(&stored, &base_channel(&channel), &self.settings);
        let to: Value = serde_json::from_slice(&event.body).unwrap_or_default();
        body["to_uids"] = to["to_uids"].clone();
        event.body = serde_json::to_vec(&body).unwrap_or_default();
        Ok(Some(event))
    }

    /// Posts until a 2xx or until the event is too old. False when stopping first.
    pub(super) async fn deliver(&self, event: &Event) -> bool {
        let mut delay = self.settings.retry_initial;
        let max_age_ms = i64::try_from(self.settings.max_age.as_millis()).unwrap_or(i64::MAX);
        let state = &self.queue.lanes[usize::from(self.lane)];
        loop {
            let failure = match self.post(event).await {
                Ok(()) => {
                    state.failing.store(false, Ordering::Relaxed);
                    let waited = (hongyan_core::now_ms() - event.created_ms).max(0) as f64 / 1000.0;
                    metrics::counter!("hongyan_webhook_sent_total", "event" => event.name).increment(1);
                    metrics::histogram!("hongyan_webhook_latency_seconds", "event" => event.name).record(waited);
                    return true;
                }
                Err(failure) => failure,
            };
            if hongyan_core::now_ms() - event.created_ms > max_age_ms {
                metrics::counter!("hongyan_webhook_dropped_total", "event" => event.name).increment(1);
                warn!(id = event.id, event = event.name, last_failure = %failure, "webhook event dropped after webhook.max_age_secs");
                return true;
            }
            metrics::counter!("hongyan_webhook_retries_total", "event" => event.name).increment(1);
            state.retries.fetch_add(1, Ordering::Relaxed);
            state.failing.store(true, Ordering::Relaxed);
            *state.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((hongyan_core::now_ms(), failure.clone()));
            warn!(id = event.id, event = event.name, failure = %failure, retry_in_ms = delay.as_millis() as u64, "webhook post failed");
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
                () = state.retry_now.notified() => {}
            }
            delay = (delay * 2).min(self.settings.retry_max);
        }
    }

    pub(super) async fn post(&self, event: &Event) -> Result<(), String> {
        let id = event.id.to_string();
        let mut request = self
            .client
            .post(&self.settings.url)
            .query(&[("event", event.name)])
            .header("content-type", "application/json")
            .header("x-hongyan-event-id", &id)
            .body(event.body.clone());
        if !self.settings.secret.is_empty() {
            request = sign(request, &self.settings.secret, event.name, &id, &event.body);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(e) => {
                // reqwest's own text names the URL; the cause (refused, timed out…) is
                // further down the chain.
                let mut why = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    why.push_str(": ");
                    why.push_str(&c.to_string());
                    cause = c.source();
                }
                Err(why)
            }
        }
    }

    pub(super) async fn remove(&self, key: Vec<u8>, size: usize) {
        let queue = self.queue.clone();
        let removed = tokio::task::spawn_blocking(move || {
            // Not fsynced: after a power loss the event is posted again, which
            // at-least-once allows.
            queue.kv.write(vec![Write::Delete(Table::HookQueue, key)], false)
        })
        .await;
        if let Ok(Err(e)) = removed {
            error!(error = %e, "a delivered webhook event could not be removed; it will be posted again");
        }
        let left = self.queue.pending.fetch_sub(1, Ordering::Relaxed) - 1;
        self.queue.lanes[usize::from(self.lane)].pending.fetch_sub(1, Ordering::Relaxed);
        let bytes = self.queue.pending_bytes.fetch_sub(size as i64, Ordering::Relaxed) - size as i64;
        metrics::gauge!("hongyan_webhook_pending_bytes").set(bytes.max(0) as f64);
        metrics::gauge!("hongyan_webhook_pending").set(left.max(0) as f64);
    }
}
