//! What the types cannot say: ranges, combinations and addresses, checked once at
//! start-up so that a bad setting stops the server with its key named.

use std::net::SocketAddr;

use super::{Config, ConfigError, MIN_SECRET_LEN, StorageBackend, WEBHOOK_EVENTS};

impl Config {
    /// Checks ranges and combinations the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid { key: key.into(), problem: problem.into() };
        if !(1..=1023).contains(&self.node_id) {
            return Err(invalid("node_id", "must be between 1 and 1023"));
        }
        if self.manager_token.is_empty() {
            // An API others can reach, with no token, is a server anyone controls.
            for (key, addr) in [("api.addr", self.api_addr()?), ("manager.addr", self.manager_addr()?)] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        "listens beyond this machine, but no manager_token is set (anyone who could reach it would \
                         control the server): set manager_token, or listen on 127.0.0.1",
                    ));
                }
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        self.gateway
            .validate()
            .map_err(|e| ConfigError::Invalid { key: format!("gateway.{}", e.key), problem: e.problem })?;
        self.api_addr()?;
        self.manager_addr()?;
        self.demo_addr()?;
        if self.storage.sync_interval_ms == 0 {
            return Err(invalid("storage.sync_interval_ms", "must be greater than 0"));
        }
        if self.storage.backend == StorageBackend::Postgres {
            if self.storage.postgres_url.is_empty() {
                return Err(invalid("storage.postgres_url", "required when storage.backend is postgres"));
            }
            for (key, value) in [
                ("storage.postgres_pool_size", self.storage.postgres_pool_size as u64),
                ("storage.postgres_statement_timeout_ms", self.storage.postgres_statement_timeout_ms),
                ("storage.postgres_connect_timeout_ms", self.storage.postgres_connect_timeout_ms),
            ] {
                if value == 0 {
                    return Err(invalid(key, "must be greater than 0"));
                }
            }
        }
        if self.clustered() {
            if self.storage.backend != StorageBackend::Postgres {
                return Err(invalid(
                    "cluster.nats_url",
                    "a cluster shares its data in PostgreSQL: set storage.backend = \"postgres\" too",
                ));
            }
            if !(1000..=60_000).contains(&self.cluster.lease_ms) {
                return Err(invalid("cluster.lease_ms", "must be between 1000 and 60000"));
            }
        }
        for (ty, days) in &self.storage.retention_days {
            let key = format!("storage.retention_days.{ty}");
            if !ty.parse::<u8>().is_ok_and(|t| (1..=12).contains(&t)) {
                return Err(invalid(&key, "channel types are 1 to 12"));
            }
            if *days == 0 {
                return Err(invalid(&key, "must be at least 1 day (leave the type out to keep messages forever)"));
            }
        }
        if self.openim.enabled {
            if self.openim.secret.is_empty() {
                return Err(invalid("openim.secret", "must be set when openim.enabled is true"));
            }
            if self.openim.secret.len() < MIN_SECRET_LEN {
                return Err(invalid("openim.secret", "must be at least 16 bytes (it signs the admin tokens)"));
            }
            if self.openim.admin_user_ids.is_empty() {
                return Err(invalid(
                    "openim.admin_user_ids",
                    "must name at least one admin when openim.enabled is true",
                ));
            }
            if let Some(bad) = self.openim.admin_user_ids.iter().find(|u| !hongyan_core::session::is_valid_uid(u)) {
                return Err(invalid("openim.admin_user_ids", &format!("`{bad}`: {}", hongyan_core::session::ID_RULE)));
            }
            if self.openim.token_expire_days == 0 {
                return Err(invalid("openim.token_expire_days", "must be at least 1"));
            }
            if !self.openim.addr.is_empty() {
                self.openim.addr.parse::<SocketAddr>().map_err(|_| invalid("openim.addr", "not an ip:port"))?;
            }
        }
        let mut apps = std::collections::HashSet::new();
        for (i, a) in self.easemob.apps.iter().enumerate() {
            let key = format!("easemob.apps[{i}]");
            let path_safe =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !path_safe(&a.org) || !path_safe(&a.app) {
                return Err(invalid(&key, "org and app must be non-empty letters, digits, '-', '_' or '.'"));
            }
            if a.client_id.is_empty() || a.client_secret.is_empty() {
                return Err(invalid(&key, "client_id and client_secret must be set"));
            }
            if a.client_secret.len() < MIN_SECRET_LEN {
                return Err(invalid(&key, "client_secret must be at least 16 bytes (it signs the app's tokens)"));
            }
            if !apps.insert((&a.org, &a.app)) {
                return Err(invalid(&key, "the same org and app twice"));
            }
        }
        if self.easemob.max_token_ttl_secs == 0 || self.easemob.token_ttl_secs > self.easemob.max_token_ttl_secs {
            return Err(invalid(
                "easemob.max_token_ttl_secs",
                "must be at least 1 and at least easemob.token_ttl_secs",
            ));
        }
        if self.easemob.calls_per_sec == 0 || self.easemob.token_calls_per_sec == 0 {
            return Err(invalid("easemob.calls_per_sec", "rate limits must be greater than 0"));
        }
        if !self.easemob.addr.is_empty() {
            self.easemob.addr.parse::<SocketAddr>().map_err(|_| invalid("easemob.addr", "not an ip:port"))?;
        }
        let url = |key: &str, value: &str| {
            if value.is_empty() || value.starts_with("http://") || value.starts_with("https://") {
                Ok(())
            } else {
                Err(invalid(key, "must be an http:// or https:// URL"))
            }
        };
        url("webhook.url", &self.webhook.url)?;
        url("datasource.url", &self.datasource.url)?;
        if let Some(bad) = self.webhook.events.iter().find(|e| !WEBHOOK_EVENTS.contains(&e.as_str())) {
            return Err(invalid("webhook.events", &format!("`{bad}` is not one of {}", WEBHOOK_EVENTS.join(", "))));
        }
        let w = &self.webhook;
        for (key, value) in [
            ("webhook.batch_max", w.batch_max as u64),
            ("webhook.max_queue_bytes", w.max_queue_bytes),
            ("webhook.batch_interval_ms", w.batch_interval_ms),
            ("webhook.offline_max_uids", w.offline_max_uids as u64),
            ("webhook.offline_lanes", u64::from(w.offline_lanes)),
            ("webhook.timeout_ms", w.timeout_ms),
            ("webhook.retry_initial_ms", w.retry_initial_ms),
            ("webhook.max_age_secs", w.max_age_secs),
            ("datasource.timeout_ms", self.datasource.timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if w.retry_max_ms < w.retry_initial_ms {
            return Err(invalid("webhook.retry_max_ms", "must be at least webhook.retry_initial_ms"));
        }
        if w.offline_lanes > 64 {
            return Err(invalid("webhook.offline_lanes", "at most 64"));
        }
        if self.storage.retention_sweep_interval_secs == 0 {
            return Err(invalid("storage.retention_sweep_interval_secs", "must be greater than 0"));
        }
        if self.delivery.retry_interval_ms == 0 {
            return Err(invalid("delivery.retry_interval_ms", "must be greater than 0"));
        }
        if self.delivery.pipeline_bytes < 1024 * 1024 || self.delivery.pipeline_bytes > u32::MAX as usize {
            return Err(invalid("delivery.pipeline_bytes", "must be from 1 MiB to 4 GiB"));
        }
        if self.delivery.retry_max_per_connection == 0 {
            return Err(invalid("delivery.retry_max_per_connection", "must be greater than 0"));
        }
        for (key, value) in [
            ("api.header_timeout_ms", self.api.header_timeout_ms),
            ("api.request_timeout_ms", self.api.request_timeout_ms),
            ("api.max_connections", self.api.max_connections as u64),
            ("api.max_concurrent_requests", self.api.max_concurrent_requests as u64),
            ("api.token_requests_per_sec_per_ip", u64::from(self.api.token_requests_per_sec_per_ip)),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be greater than 0"));
        }
        for (key, uid) in [("manager_uid", &self.manager_uid), ("system_uid", &self.system_uid)] {
            if !hongyan_core::session::is_valid_uid(uid) {
                return Err(invalid(key, hongyan_core::session::ID_RULE));
            }
        }
        Ok(())
    }
}
