//! The configuration's sections, one type each (`[api]`, `[storage]`, `[webhook]`, …),
//! with their defaults. `docs/config.md` has one row per key.

use serde::Deserialize;

/// `[demo]`: the demo chat at `http://<addr>/chatdemo` (`crates/hongyan/src/demo.rs`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Listen address. Unset: `127.0.0.1:5172` on a single node with a WebSocket
    /// listener, off otherwise (a cluster member, no `gateway.ws_addr`); empty: off.
    /// Loopback only: the demo gives a token to whoever asks.
    pub addr: Option<String>,
}

/// `[cluster]`: on when `nats_url` is set (storage must be PostgreSQL then).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server(s) of the cluster, comma-separated `nats://host:port` URLs.
    /// Empty: this node is not in a cluster.
    pub nats_url: String,
    /// A node whose heartbeat is older than this is no longer a member (heartbeats are
    /// written four times per lease).
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { nats_url: String::new(), lease_ms: 4000 }
    }
}

/// `[webhook]`: on when `url` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where events are posted (`?event=<name>` is appended). Empty: no webhooks.
    pub url: String,
    /// Which events: `user.onlinestatus`, `msg.offline`, `msg.notify`. Empty: all.
    pub events: Vec<String>,
    /// Who gets `msg.offline`.
    pub offline_rule: OfflineRuleConfig,
    /// Most messages (or presence entries) in one `msg.notify` (`user.onlinestatus`) post.
    pub batch_max: usize,
    /// Longest a batch waits to fill.
    pub batch_interval_ms: u64,
    /// Most uids in one `msg.offline` post (more are split over several posts).
    pub offline_max_uids: usize,
    /// `msg.offline` posts in flight at once (one per channel at a time).
    pub offline_lanes: u8,
    /// One post's time limit.
    pub timeout_ms: u64,
    /// First retry delay (doubled per failure up to `retry_max_ms`).
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Events still failing after this long are dropped (counted and logged).
    pub max_age_secs: u64,
    /// Most bytes of events waiting in the durable queue; past it new events are
    /// dropped (counted, logged once a minute) until the receiver catches up.
    pub max_queue_bytes: u64,
    /// Signs each post: `X-Hongyan-Signature: v1=<HMAC-SHA256 of "ts.event.id.body">`.
    pub secret: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: Vec::new(),
            offline_rule: OfflineRuleConfig::NoMasterOnline,
            batch_max: 100,
            batch_interval_ms: 500,
            offline_max_uids: 1000,
            offline_lanes: 4,
            timeout_ms: 5_000,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            max_age_secs: 86_400,
            max_queue_bytes: 256 * 1024 * 1024,
            secret: String::new(),
        }
    }
}

/// `webhook.offline_rule`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OfflineRuleConfig {
    /// No master device online (WuKongIM's rule).
    NoMasterOnline,
    /// No device online at all.
    NoDeviceOnline,
}

/// The events WuKongIM's receivers know.
pub const WEBHOOK_EVENTS: [&str; 3] = ["user.onlinestatus", "msg.offline", "msg.notify"];

impl WebhookConfig {
    /// Whether `event` is to be sent.
    pub fn sends(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// `[datasource]`: on when `url` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasourceConfig {
    /// Where `{"cmd": ..., "data": ...}` requests go. Empty: no datasource.
    pub url: String,
    /// How long an answer is used before asking again.
    pub cache_ttl_secs: u64,
    /// One request's time limit.
    pub timeout_ms: u64,
    /// Signs requests as webhook posts are signed (`X-Hongyan-Signature`); empty: none.
    pub secret: String,
}

impl Default for DatasourceConfig {
    fn default() -> Self {
        Self { url: String::new(), cache_ttl_secs: 60, timeout_ms: 3_000, secret: String::new() }
    }
}

/// Shortest secret that signs tokens (OpenIM's secret, Easemob client secrets).
pub(super) const MIN_SECRET_LEN: usize = 16;

/// `[easemob]`: on when at least one app is configured.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EasemobConfig {
    /// Its own listener at Easemob's paths (`/{org}/{app}/…`). Empty: none.
    pub addr: String,
    /// The apps, each with its client credentials.
    pub apps: Vec<EasemobAppConfig>,
    /// Calls per second per app and API (429 beyond).
    pub calls_per_sec: u32,
    /// Calls per second per app to the token endpoint.
    pub token_calls_per_sec: u32,
    /// Lifetime of a token when the request gives no `ttl`.
    pub token_ttl_secs: u64,
    /// The longest lifetime a token request may ask for; longer asks get this.
    pub max_token_ttl_secs: u64,
    /// Honour `ttl: 0` (a token that never expires). Off: it gets the maximum.
    pub allow_unexpiring_tokens: bool,
}

impl Default for EasemobConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            apps: Vec::new(),
            calls_per_sec: 100,
            token_calls_per_sec: 300,
            token_ttl_secs: 604_800,
            max_token_ttl_secs: 2_592_000,
            allow_unexpiring_tokens: false,
        }
    }
}

/// One `[[easemob.apps]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EasemobAppConfig {
    /// Organisation name in paths.
    pub org: String,
    /// App name in paths.
    pub app: String,
    /// Client id of the token endpoint.
    pub client_id: String,
    /// Client secret of the token endpoint; also signs the app's tokens.
    pub client_secret: String,
}

/// `[openim]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OpenImConfig {
    /// Serve the dialect (under `/openim` on the API port, and on `addr`).
    pub enabled: bool,
    /// The dialect's own listener, at the seed's paths. Empty: none.
    pub addr: String,
    /// What `auth/user_token` must be given, and the token signing key. Required when
    /// enabled; there is no default that works.
    pub secret: String,
    /// The uids that may get an admin token.
    pub admin_user_ids: Vec<String>,
    /// How long an admin token is valid.
    pub token_expire_days: u32,
}

impl Default for OpenImConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addr: "0.0.0.0:10000".into(),
            secret: String::new(),
            admin_user_ids: Vec::new(),
            token_expire_days: 7,
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address. Empty: `127.0.0.1:5001` without a manager token (so an
    /// unauthenticated API is not exposed), `0.0.0.0:5001` with one.
    pub addr: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// `/user/onlinestatus` answers: `uids` (LiMaoIM: the uids online) or `devices`
    /// (WuKongIM v2: one entry per online connection).
    pub onlinestatus_format: hongyan_api::OnlineStatusFormat,
    /// Time a client has to send a request's headers (on every HTTP listener).
    pub header_timeout_ms: u64,
    /// Time for a whole request, body and answer; longer gets 408.
    pub request_timeout_ms: u64,
    /// Open HTTP connections per listener; more are closed at accept.
    pub max_connections: usize,
    /// Requests handled at once per listener; more wait their turn.
    pub max_concurrent_requests: usize,
    /// Requests per second from one address to the endpoints that trade a secret for a
    /// token (OpenIM `auth/user_token`, Easemob `token`); bursts of twice that.
    pub token_requests_per_sec_per_ip: u32,
}

/// `[manager]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Listen address of `/metrics`. Empty: `127.0.0.1:5300` without a manager token,
    /// `0.0.0.0:5300` with one.
    pub addr: String,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Check CONNECT tokens against `/user/token` registrations. Turn off only for
    /// local demos: anyone can then log in as anyone.
    pub token_auth: bool,
    /// Person chats follow the receiver's whitelist: when it is not empty, only the
    /// uids on it (e.g. OpenIM friends) may message them (SENDACK 13). WuKongIM's
    /// `whitelistOffOfPerson: false`; off by default, as there.
    pub person_whitelist: bool,
}

/// `[external]`: addresses as clients reach them (behind NAT or a proxy they differ
/// from the listen addresses). Empty values are derived from the listeners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// `host:port` for TCP.
    pub tcp_addr: String,
    /// `ws://host:port`.
    pub ws_addr: String,
    /// `wss://host:port`.
    pub wss_addr: String,
    /// TCP address for `/route?intranet=1`.
    pub intranet_tcp_addr: String,
    /// The HTTP API as the app server and the other nodes reach it (`/cluster/nodes`).
    pub api_addr: String,
}

/// `[delivery]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// A stored message written to a connection and not acknowledged within this time
    /// is written again, byte for byte.
    pub retry_interval_ms: u64,
    /// Retries before giving up (the client catches up through sync).
    pub retry_max: u32,
    /// Most unacknowledged messages remembered per connection.
    pub retry_max_per_connection: usize,
    /// Bytes of messages admitted and not yet delivered (each counts 1 KiB more than
    /// its payload); past it senders wait instead of memory growing.
    pub pipeline_bytes: usize,
    /// Temporary channels of sends to a list of uids are removed this long after the
    /// send (checked every `storage.retention_sweep_interval_secs`).
    pub temp_channel_ttl_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_interval_ms: 60_000,
            retry_max: 5,
            retry_max_per_connection: 1024,
            pipeline_bytes: 64 * 1024 * 1024,
            temp_channel_ttl_secs: 604_800,
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where everything is stored: `fjall` (embedded, in `data_dir`; the default) or
    /// `postgres` (the database at `postgres_url`).
    pub backend: StorageBackend,
    /// libpq-style URL of the database (`postgres://user:password@host:5432/db`), for
    /// `backend = "postgres"`.
    pub postgres_url: String,
    /// The schema Hongyan's tables live in (created if missing).
    pub postgres_schema: String,
    /// Most database connections open at once.
    pub postgres_pool_size: usize,
    /// Longest a statement may run, and longest a call waits for a free connection.
    pub postgres_statement_timeout_ms: u64,
    /// Longest opening a connection may take.
    pub postgres_connect_timeout_ms: u64,
    /// `fsync`: a message is acknowledged only after an fsync (one per batch), so it
    /// survives a power loss. `interval`: acknowledged once written, surviving a crash
    /// of the process; fsync at most every `sync_interval_ms`, so a power loss can lose
    /// that long's messages. Trades durability for latency.
    pub durability: DurabilityMode,
    /// How often `interval` mode fsyncs.
    pub sync_interval_ms: u64,
    /// Retention by age: channel type ("1" person, "2" group, …) → days messages are
    /// kept. Types not listed keep messages forever.
    pub retention_days: std::collections::BTreeMap<String, u32>,
    /// How often the retention sweep runs.
    pub retention_sweep_interval_secs: u64,
    /// Fail-stop: after a storage failure the node refuses work at once, and the
    /// process exits (status 70) this many seconds later so that a supervisor restarts
    /// it; 0 exits at once.
    pub fail_stop_grace_secs: u64,
}

/// `storage.backend`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded, in `data_dir`.
    #[default]
    Fjall,
    /// A PostgreSQL database (`storage.postgres_url`).
    Postgres,
}

/// `storage.durability`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// fsync before every acknowledgement.
    Fsync,
    /// fsync on a timer.
    Interval,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fjall,
            postgres_url: String::new(),
            postgres_schema: "hongyan".into(),
            postgres_pool_size: 16,
            postgres_statement_timeout_ms: 5_000,
            postgres_connect_timeout_ms: 5_000,
            durability: DurabilityMode::Fsync,
            sync_interval_ms: 100,
            retention_days: std::collections::BTreeMap::new(),
            retention_sweep_interval_secs: 3600,
            fail_stop_grace_secs: 10,
        }
    }
}

impl StorageConfig {
    /// Retention as (channel type, maximum age), checked by [`Config::validate`].
    pub fn retention(&self) -> Vec<(u8, std::time::Duration)> {
        self.retention_days
            .iter()
            .filter_map(|(ty, days)| {
                let ty = ty.parse::<u8>().ok()?;
                Some((ty, std::time::Duration::from_secs(u64::from(*days) * 86_400)))
            })
            .collect()
    }

    /// How to reach PostgreSQL, for `backend = "postgres"`.
    pub fn postgres(&self) -> hongyan_store_postgres::PostgresConfig {
        hongyan_store_postgres::PostgresConfig {
            url: self.postgres_url.clone(),
            schema: self.postgres_schema.clone(),
            pool_size: self.postgres_pool_size,
            statement_timeout: std::time::Duration::from_millis(self.postgres_statement_timeout_ms),
            connect_timeout: std::time::Duration::from_millis(self.postgres_connect_timeout_ms),
        }
    }

    /// The message log's durability.
    pub fn durability(&self) -> hongyan_store::Durability {
        match self.durability {
            DurabilityMode::Fsync => hongyan_store::Durability::Fsync,
            DurabilityMode::Interval => {
                hongyan_store::Durability::Interval(std::time::Duration::from_millis(self.sync_interval_ms))
            }
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `hongyan_gateway=debug,info`. `RUST_LOG` wins.
    /// The default keeps Hongyan's own news at `info` and dependencies at `warn`.
    pub filter: String,
    /// `text` (for people) or `json` (one object per line, for log collectors).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, and a start-up banner with every address.
    #[default]
    Text,
    /// One JSON object per line; the banner is a log record too.
    Json,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            max_body_bytes: 1024 * 1024,
            onlinestatus_format: hongyan_api::OnlineStatusFormat::Uids,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 4_096,
            max_concurrent_requests: 256,
            token_requests_per_sec_per_ip: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { token_auth: true, person_whitelist: false }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "warn,hongyan=info".into(), format: LogFormat::Text }
    }
}
