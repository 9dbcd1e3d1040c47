//! Hongyan's storage on PostgreSQL: [`PostgresBackend`] meets hongyan-store's
//! key-value contract ([`KvBackend`]) over a pool of connections, so the typed tables,
//! the message log, the core and every dialect run on it unchanged.
//!
//! * One table per [`Table`], `(k bytea PRIMARY KEY, v bytea)`, in the schema named by
//!   the configuration, created and upgraded by versioned migrations
//!   (`migrations/`, recorded in `schema_migrations`).
//! * A write batch is one transaction: per table, one `INSERT … SELECT unnest(…) ON
//!   CONFLICT DO UPDATE` for its puts and one `DELETE … = ANY(…)` for its deletes, all
//!   sent pipelined, then `COMMIT` (with `synchronous_commit` on: acknowledged writes
//!   survive a crash of the database server). The message log's group commit makes
//!   that one transaction per batch of appends.
//! * Failures are sorted by what is known: a database that cannot be reached before a
//!   commit was sent applied nothing ([`StoreError::Unavailable`]: refused now,
//!   served again when it is back, reported by [`Health`] meanwhile); a commit whose
//!   outcome is unknown, or any other error, is the store's failure (fail-stop).
//!
//! The contract is blocking; the backend runs its own small Tokio runtime for the
//! connections, and each call waits for its task on a channel, so it may be called
//! from any thread.

#![warn(missing_docs)]

mod faults;
mod migrate;
mod sql;
#[doc(hidden)]
pub mod testing;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use hongyan_store::{Entry, Health, KvBackend, Order, Result, StoreError, Table, Write, check_bound, check_writes};
use tokio_postgres::NoTls;

use faults::{Fault, describe, pool_fault};
pub use migrate::SCHEMA_VERSION;
use sql::{Shared, TableSql, group, successor};

/// The longest key this backend takes: a btree index entry must fit a third of a page
/// (about 2.7 KB). Hongyan's keys are far shorter (ids are at most 255 bytes).
pub const MAX_KEY_LEN: usize = 2048;

/// How to reach the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A libpq-style URL (`postgres://user:password@host:5432/db`) or key=value string.
    pub url: String,
    /// The schema Hongyan's tables live in; created if missing.
    pub schema: String,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Longest a statement may run (the server cancels it), and longest a call waits
    /// for a free connection.
    pub statement_timeout: Duration,
    /// Longest a new connection may take to open.
    pub connect_timeout: Duration,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse (the text names the URL without its password).
    #[error("storage.postgres_url {url}: {reason}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The schema name is not a plain lowercase identifier.
    #[error("storage.postgres_schema {0:?}: must be 1 to 63 of a-z, 0-9 and _, not starting with a digit")]
    Schema(String),
    /// The database could not be reached or refused the login.
    #[error("cannot reach PostgreSQL at {url}: {reason}")]
    Unreachable {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database holds a newer schema than this binary knows.
    #[error(
        "the PostgreSQL schema {schema} is at version {found}, newer than this Hongyan knows ({known}): upgrade Hongyan"
    )]
    NewerSchema {
        /// The schema.
        schema: String,
        /// The version recorded in the database.
        found: i32,
        /// The newest version this binary knows.
        known: i32,
    },
    /// A migration failed.
    #[error("migrating the PostgreSQL schema {schema} failed: {reason}")]
    Migration {
        /// The schema.
        schema: String,
        /// Why.
        reason: String,
    },
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    // URL form: scheme://user:password@host…
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let authority_end = out[start..].find(['/', '?']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    // password=… as a query parameter or a key=value pair.
    let mut from = 0;
    while let Some(found) = out[from..].find("password=").map(|i| from + i + "password=".len()) {
        let end = out[found..].find(['&', ' ']).map_or(out.len(), |i| found + i);
        out.replace_range(found..end, "***");
        from = found + 3;
    }
    out
}

/// The upper bound of the keys that start with `prefix`: `None` when there is none.
/// Hongyan's tables in a PostgreSQL schema.
pub struct PostgresBackend {
    shared: Arc<Shared>,
    health: Arc<Health>,
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
    schema: String,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        // May be dropped on an async thread, where a runtime must not block to stop.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether `schema` is a plain identifier (it is written into SQL as it is).
fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

impl PostgresBackend {
    /// Connects, creates or upgrades the schema, and checks that the database answers.
    /// Blocking (it waits for its own runtime), so call it off async worker threads.
    pub fn connect(config: &PostgresConfig) -> std::result::Result<Self, ConnectError> {
        let url = redact(&config.url);
        if !valid_schema(&config.schema) {
            return Err(ConnectError::Schema(config.schema.clone()));
        }
        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| ConnectError::Url { url: url.clone(), reason: e.to_string() })?;
        pg.application_name("hongyan")
            .connect_timeout(config.connect_timeout)
            .options(format!("-c statement_timeout={}", config.statement_timeout.as_millis()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hongyan-postgres")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Unreachable { url: url.clone(), reason: format!("no runtime: {e}") })?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _entered = handle.enter();
            Pool::builder(manager)
                .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                    Box::pin(async move {
                        // Every statement of this backend reads a range of a primary
                        // key, in key order. Keep the planner on that index whatever its
                        // statistics say: a plan made while a table was nearly empty or
                        // never analyzed (a sequential or bitmap scan and a sort) would
                        // read a whole channel to return a page of it, or the whole table
                        // to look up a batch's resends, and a cached generic plan keeps
                        // doing so as the table grows. Databases without these settings
                        // keep their defaults.
                        for setting in
                            ["plan_cache_mode = force_custom_plan", "enable_seqscan = off", "enable_bitmapscan = off"]
                        {
                            let _ = client.batch_execute(&format!("SET {setting}")).await;
                        }
                        Ok(())
                    })
                }))
                .max_size(config.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(config.statement_timeout))
                .create_timeout(Some(config.connect_timeout))
                .recycle_timeout(Some(config.connect_timeout))
                .build()
                .map_err(|e| ConnectError::Unreachable { url: url.clone(), reason: e.to_string() })?
        };
        let sql = Table::ALL.iter().map(|t| TableSql::new(&config.schema, *t)).collect();
        let shared = Arc::new(Shared { pool, sql });
        let backend = Self {
            shared: shared.clone(),
            health: Arc::new(Health::new()),
            handle,
            runtime: Some(runtime),
            schema: config.schema.clone(),
        };
        let schema = config.schema.clone();
        let migrated = backend.block_on(async move {
            let mut client = shared
                .pool
                .get()
                .await
                .map_err(|e| ConnectError::Unreachable { url: url.clone(), reason: describe_pool(e) })?;
            migrate::run(&mut client, &schema).await
        });
        migrated.map_err(|_| ConnectError::Unreachable {
            url: redact(&config.url),
            reason: "the connection task stopped".into(),
        })??;
        backend.watch_outages();
        Ok(backend)
    }

    /// While the database is unreachable, tries it every second so that health clears
    /// as soon as it is back, even with no traffic.
    fn watch_outages(&self) {
        let (shared, health) = (self.shared.clone(), self.health.clone());
        self.handle.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if health.unreachable().is_some() && shared.ping().await.is_ok() {
                    health.set_reachable();
                }
            }
        });
    }

    /// Runs `task` on the backend's runtime and waits for it (from any thread).
    fn block_on<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> std::result::Result<T, std::sync::mpsc::RecvError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(task.await);
        });
        rx.recv()
    }

    /// Runs a database call and sorts its failure, keeping health up to date.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        task: impl Future<Output = std::result::Result<T, Fault>> + Send + 'static,
    ) -> Result<T> {
        let outcome = self.block_on(task).unwrap_or_else(|_| Err(Fault::Failed(format!("{what} task panicked"))));
        match outcome {
            Ok(value) => {
                self.health.set_reachable();
                Ok(value)
            }
            Err(Fault::Unreachable(reason)) => {
                self.health.set_unreachable(format!("PostgreSQL: {reason}"));
                Err(StoreError::Unavailable(format!("PostgreSQL {what}: {reason}")))
            }
            Err(Fault::Conflict(reason)) => {
                self.health.set_reachable();
                Err(StoreError::Conflict(format!("PostgreSQL {what}: {reason}")))
            }
            Err(Fault::Failed(reason)) => {
                let reason = format!("PostgreSQL {what}: {reason}");
                self.health.fail(reason.clone());
                Err(StoreError::Engine(reason))
            }
        }
    }

    /// The schema the tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

fn describe_pool(e: PoolError) -> String {
    match pool_fault(e) {
        Fault::Unreachable(reason) | Fault::Conflict(reason) | Fault::Failed(reason) => reason,
    }
}

impl KvBackend for PostgresBackend {
    fn health(&self) -> &Arc<Health> {
        &self.health
    }

    fn max_key_len(&self) -> usize {
        MAX_KEY_LEN
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Ok(None);
        }
        let (shared, key) = (self.shared.clone(), key.to_vec());
        self.call("read", async move { shared.get(table, key).await })
    }

    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        // Keys too long to be stored are found nowhere; ask only for the others.
        let storable: Vec<Vec<u8>> = keys.iter().filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN).cloned().collect();
        if storable.is_empty() {
            return Ok(vec![None; keys.len()]);
        }
        let shared = self.shared.clone();
        let found = self.call("read", async move {
            let values = shared.get_many(table, storable.clone()).await?;
            Ok(storable.into_iter().zip(values).collect::<std::collections::HashMap<_, _>>())
        })?;
        Ok(keys.iter().map(|k| found.get(k).cloned().flatten()).collect())
    }

    fn scan_ranges(
        &self,
        table: Table,
        ranges: &[(Vec<u8>, Vec<u8>)],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Vec<Entry>>> {
        for (start, end) in ranges {
            check_bound(start)?;
            check_bound(end)?;
        }
        if ranges.is_empty() || limit == 0 {
            return Ok(vec![Vec::new(); ranges.len()]);
        }
        let (starts, ends): (Vec<Vec<u8>>, Vec<Vec<u8>>) = ranges.iter().cloned().unzip();
        let shared = self.shared.clone();
        self.call("scan", async move { shared.scan_ranges(table, starts, ends, limit, order).await })
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(prefix)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (shared, start, end) = (self.shared.clone(), prefix.to_vec(), successor(prefix));
        self.call("scan", async move { shared.scan(table, start, end, limit, Order::Ascending).await })
    }

    fn scan_range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(start)?;
        check_bound(end)?;
        if limit == 0 || start >= end {
            return Ok(Vec::new());
        }
        let (shared, start, end) = (self.shared.clone(), start.to_vec(), Some(end.to_vec()));
        self.call("scan", async move { shared.scan(table, start, end, limit, order).await })
    }

    fn write(&self, writes: Vec<Write>, _durable: bool) -> Result<()> {
        // Every commit is durable (synchronous_commit on): `durable` asks for no more.
        check_writes(&writes, MAX_KEY_LEN)?;
        if writes.is_empty() {
            return Ok(());
        }
        let (shared, tables) = (self.shared.clone(), group(writes));
        metrics::histogram!("hongyan_postgres_batch_tables").record(tables.len() as f64);
        self.call("write", async move { shared.write(tables).await })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redact("postgres://hongyan:s3cret@db:5432/im"), "postgres://hongyan:***@db:5432/im");
        assert_eq!(redact("postgres://hongyan@db/im"), "postgres://hongyan@db/im");
        assert_eq!(redact("postgres://u:p@ss@db/im?sslmode=off"), "postgres://u:***@db/im?sslmode=off");
        assert_eq!(redact("postgres://db/im?user=u&password=x&a=b"), "postgres://db/im?user=u&password=***&a=b");
        assert_eq!(redact("host=db user=u password=secret dbname=im"), "host=db user=u password=*** dbname=im");
    }

    #[test]
    fn prefix_successors_bound_exactly_the_keys_with_the_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
        assert_eq!(successor(b""), None);
    }

    #[test]
    fn a_batch_keeps_the_last_write_to_each_key_grouped_by_table() {
        let writes = vec![
            Write::Put(Table::Meta, b"a".to_vec(), b"1".to_vec()),
            Write::Delete(Table::Meta, b"a".to_vec()),
            Write::Put(Table::UidSystem, b"x".to_vec(), Vec::new()),
            Write::Put(Table::Meta, b"a".to_vec(), b"2".to_vec()),
            Write::Delete(Table::Meta, b"b".to_vec()),
        ];
        let grouped = group(writes);
        assert_eq!(grouped.len(), 2);
        let meta = grouped.iter().find(|w| w.table == Table::Meta).unwrap();
        assert_eq!(meta.puts, (vec![b"a".to_vec()], vec![b"2".to_vec()]));
        assert_eq!(meta.deletes, vec![b"b".to_vec()]);
        let system = grouped.iter().find(|w| w.table == Table::UidSystem).unwrap();
        assert!(system.inserts.0.is_empty() && system.deletes.is_empty());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("hongyan") && valid_schema("_t1") && valid_schema("a_b_9"));
        assert!(!valid_schema("") && !valid_schema("1a") && !valid_schema("Hongyan") && !valid_schema("a;drop"));
        assert!(!valid_schema(&"a".repeat(64)));
    }
}
