//! The datasource client: WuKongIM's `POST {url}` with `{"cmd": ..., "data": ...}`,
//! asked for channels the server has no record of (`getChannelInfo`, `getSubscribers`,
//! `getBlacklist`, `getWhitelist`) and for system accounts (`getSystemUIDs`). The core
//! caches the answers for `ttl`; any failure (connection, non-2xx, unexpected JSON) is
//! an error naming the command, never an empty list.

use std::time::Duration;

use hongyan_core::hooks::{Datasource, RemoteChannel};
use hongyan_store::{ChannelInfo, ChannelKey, StoreError};
use serde_json::{Value, json};

/// Largest datasource answer read; a larger one is a failure (a 100,000-member list is
/// about 2 MiB).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The HTTP datasource.
#[derive(Debug)]
pub struct HttpDatasource {
    url: String,
    ttl: Duration,
    secret: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    next_request: std::sync::atomic::AtomicU64,
}

impl HttpDatasource {
    /// A datasource at `url`; answers are kept for `ttl`, calls time out after
    /// `timeout`; with a `secret`, requests are signed as webhooks are (the command as
    /// the event, a request id as the event id). Must be created inside the server's
    /// runtime, whose reactor its (blocking) calls use.
    pub fn new(url: String, ttl: Duration, timeout: Duration, secret: String) -> Result<Self, StoreError> {
        let client = crate::webhook::app_server_client(timeout)
            .map_err(|e| StoreError::Datasource(format!("HTTP client: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Datasource("created outside a tokio runtime".into()))?;
        let first = u64::try_from(hongyan_core::now_ms()).unwrap_or(0) << 16;
        Ok(Self { url, ttl, secret, client, runtime, next_request: first.into() })
    }

    async fn ask(&self, cmd: &str, data: Value) -> Result<Value, StoreError> {
        let fail = |why: String| StoreError::Datasource(format!("{cmd}: {why}"));
        let body = serde_json::to_vec(&json!({"cmd": cmd, "data": data})).map_err(|e| fail(e.to_string()))?;
        let id = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-hongyan-event-id", &id)
            .body(body.clone());
        if !self.secret.is_empty() {
            request = crate::webhook::sign(request, &self.secret, cmd, &id, &body);
        }
        let mut response = request.send().await.map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {}", status.as_u16())));
        }
        // Read no more than the cap, whatever the answer says its length is.
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(fail(format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
            }
            answer.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&answer).map_err(|e| fail(format!("answer is not JSON: {e}")))
    }

    async fn uids(&self, cmd: &str, data: Value) -> Result<Vec<String>, StoreError> {
        let answer = self.ask(cmd, data).await?;
        match answer {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(uid) => Ok(uid),
                    other => Err(StoreError::Datasource(format!("{cmd}: expected uids, found {other}"))),
                })
                .collect(),
            other => Err(StoreError::Datasource(format!("{cmd}: expected an array of uids, found {other}"))),
        }
    }

    async fn channel_info(&self, data: Value) -> Result<ChannelInfo, StoreError> {
        let answer = self.ask("getChannelInfo", data).await?;
        if !(answer.is_object() || answer.is_null()) {
            return Err(StoreError::Datasource(format!("getChannelInfo: expected an object, found {answer}")));
        }
        // WuKongIM's fields are 0/1 integers; booleans are taken too.
        let flag = |name: &str| match &answer[name] {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
            _ => false,
        };
        Ok(ChannelInfo {
            ban: flag("ban"),
            disband: flag("disband"),
            send_ban: flag("send_ban"),
            large: flag("large"),
            allow_stranger: flag("allow_stranger"),
        })
    }
}

impl Datasource for HttpDatasource {
    fn channel(&self, key: &ChannelKey) -> Result<RemoteChannel, StoreError> {
        let data = json!({"channel_id": key.channel_id, "channel_type": key.channel_type});
        self.runtime.block_on(async {
            let (info, subscribers, blacklist, whitelist) = tokio::join!(
                self.channel_info(data.clone()),
                self.uids("getSubscribers", data.clone()),
                self.uids("getBlacklist", data.clone()),
                self.uids("getWhitelist", data.clone()),
            );
            Ok(RemoteChannel { info: info?, subscribers: subscribers?, blacklist: blacklist?, whitelist: whitelist? })
        })
    }

    fn system_uids(&self) -> Result<Vec<String>, StoreError> {
        self.runtime.block_on(self.uids("getSystemUIDs", json!({})))
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}
