//! The datasource client: WuKongIM's `POST {url}` with `{"cmd": ..., "data": ...}`,
//! asked for channels the server has no record of (`getChannelInfo`, `getSubscribers`,
//! `getBlacklist`, `getWhitelist`) and for system accounts (`getSystemUIDs`). The core
//! caches the answers for `ttl`; any failure (connection, non-2xx, unexpected JSON) is
//! an error naming the command, never an empty list.

use std::time::Duration;

use hongyan_core::hooks::{Datasource, RemoteChannel};
use hongyan_store::{ChannelInfo, ChannelKey, StoreError};
use serde_json::{Value, json};

/// The HTTP datasource.
#[derive(Debug)]
pub struct HttpDatasource {
    url: String,
    ttl: Duration,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpDatasource {
    /// A datasource at `url`; answers are kept for `ttl`, calls time out after
    /// `timeout`. Must be created inside the server's runtime, whose reactor its
    /// (blocking) calls use.
    pub fn new(url: String, ttl: Duration, timeout: Duration) -> Result<Self, StoreError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| StoreError::Datasource(format!("HTTP client: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Datasource("created outside a tokio runtime".into()))?;
        Ok(Self { url, ttl, client, runtime })
    }

    async fn ask(&self, cmd: &str, data: Value) -> Result<Value, StoreError> {
        let fail = |why: String| StoreError::Datasource(format!("{cmd}: {why}"));
        let response = self
            .client
            .post(&self.url)
            .json(&json!({"cmd": cmd, "data": data}))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {}", status.as_u16())));
        }
        let text = response.text().await.map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(format!("answer is not JSON: {e}")))
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
