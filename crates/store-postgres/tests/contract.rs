//! The storage contract on a real PostgreSQL: `POSTGRES_TEST_URL` names a database
//! (scripts/test.sh starts PostgreSQL and creates one per run); each test works in a
//! schema of its own and drops it afterwards.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;
use std::time::Duration;

use hongyan_store::{KvBackend, Store, StoreError, Table, Write, testing};
use hongyan_store_postgres::testing::{config, url};
use hongyan_store_postgres::{ConnectError, PostgresBackend, PostgresConfig, SCHEMA_VERSION};

/// Runs SQL on the test database directly.
async fn sql(statements: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(statements).await
}

/// Runs SQL from a thread with no runtime of its own.
fn sql_blocking(statements: String) -> Result<(), tokio_postgres::Error> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(sql(&statements))
    })
    .join()
    .unwrap()
}

/// Drops the schema when the test ends, passed or not.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = sql_blocking(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}

fn open(config: &PostgresConfig) -> Arc<PostgresBackend> {
    Arc::new(PostgresBackend::connect(config).unwrap())
}

#[test]
fn the_key_value_contract_holds() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    testing::kv_contract(&*open(&config));
}

#[test]
fn expectations_are_atomic_across_connections() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    testing::expectations_are_atomic(open(&config));
}

#[test]
fn the_typed_tables_behave_as_on_every_backend() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    testing::tables_contract(&Store::new(open(&config)));
}

#[test]
fn message_extras_take_each_version_once_across_connections() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    testing::extras_contract(&Store::new(open(&config)), &Store::new(open(&config)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_log_keeps_its_promises_and_resumes_after_a_restart() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    let reopen = config.clone();
    let kv = tokio::task::spawn_blocking(move || open(&config)).await.unwrap();
    testing::log_contract(kv, move || std::thread::spawn(move || open(&reopen) as Arc<dyn KvBackend>).join().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_of_a_channel_are_fenced_by_the_database() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    let (first, second) = (config.clone(), config.clone());
    let a = tokio::task::spawn_blocking(move || open(&first)).await.unwrap();
    let b = tokio::task::spawn_blocking(move || open(&second)).await.unwrap();
    testing::fenced_owners(a, b).await;
}

#[tokio::test]
async fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    let first = config.clone();
    drop(tokio::task::spawn_blocking(move || open(&first)).await.unwrap());
    // Connecting again applies nothing twice.
    let again = config.clone();
    drop(tokio::task::spawn_blocking(move || open(&again)).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query(&format!("SELECT version FROM {}.schema_migrations ORDER BY version", config.schema), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    sql(&format!("INSERT INTO {}.schema_migrations (version, name) VALUES (9999, 'from the future')", config.schema))
        .await
        .unwrap();
    let newer = tokio::task::spawn_blocking(move || PostgresBackend::connect(&config)).await.unwrap();
    match newer {
        Err(e @ ConnectError::NewerSchema { found: 9999, .. }) => {
            assert!(e.to_string().contains("upgrade Hongyan"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn nodes_starting_at_once_migrate_once() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::task::spawn_blocking(move || PostgresBackend::connect(&config).map(drop))
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
}

#[test]
fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let config = PostgresConfig {
        url: "postgres://hongyan:very-secret@127.0.0.1:1/hongyan".into(),
        connect_timeout: Duration::from_secs(2),
        ..config()
    };
    let e = PostgresBackend::connect(&config).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Unreachable { .. }), "{e:?}");
    assert!(text.contains("postgres://hongyan:***@127.0.0.1:1/hongyan"), "{text}");
    assert!(!text.contains("very-secret"), "{text}");
}

#[test]
fn uniqueness_of_a_key_is_the_databases_and_keys_too_long_for_its_index_are_refused() {
    let config = config();
    let _schema = Schema(config.schema.clone());
    let kv = open(&config);
    let key = vec![b'k'; hongyan_store_postgres::MAX_KEY_LEN + 1];
    let refused = kv.write(vec![Write::Put(Table::ChanSeqMessage, key, b"v".to_vec())], true);
    assert!(matches!(refused, Err(StoreError::TooLong { .. })), "{refused:?}");
    assert!(!kv.health().has_failed());
    // The message table's primary key is the (channel, seq) key: a second row with
    // the same key cannot exist beside the first, whoever writes it.
    let duplicate = sql_blocking(format!(
        "INSERT INTO {s}.chanseq_msg (k, v) VALUES ('\\x01'::bytea, ''::bytea); \
         INSERT INTO {s}.chanseq_msg (k, v) VALUES ('\\x01'::bytea, ''::bytea);",
        s = config.schema
    ));
    let code = duplicate.unwrap_err().as_db_error().map(|e| e.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("23505"));
}

/// Two message logs on one schema (a cluster's stale owner and its successor): the
/// database refuses the second store of a seq, the refused writer reloads its counter
/// and carries on, and the channel's seqs stay dense with every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_can_never_both_store_a_seq() {
    use hongyan_store::{Appended, ChannelKey, Durability, MessageLog, NewMessage, Order};
    let config = config();
    let _schema = Schema(config.schema.clone());
    let (a_config, b_config) = (config.clone(), config.clone());
    let a = MessageLog::open(tokio::task::spawn_blocking(move || open(&a_config)).await.unwrap(), Durability::Fsync)
        .unwrap();
    let b = MessageLog::open(tokio::task::spawn_blocking(move || open(&b_config)).await.unwrap(), Durability::Fsync)
        .unwrap();
    let g = ChannelKey::new("g", 2);
    let message = |id: i64, cmn: &str| NewMessage {
        message_id: id,
        timestamp_ms: 1_700_000_000_000,
        from_uid: "u".into(),
        client_msg_no: cmn.into(),
        header: 0,
        setting: 0,
        expire: 0,
        topic: None,
        payload: format!("m{id}").into_bytes().into(),
    };
    for id in 1..=3 {
        assert_eq!(a.append(g.clone(), message(id, &format!("c{id}"))).await.unwrap().ids(), (id, id as u64));
    }
    // B has no counter cached: it reads the channel and stores seq 4.
    assert_eq!(b.append(g.clone(), message(4, "c4")).await.unwrap().ids(), (4, 4));
    // A still believes seq 4 is next: the database refuses, A is not failed.
    let refused = a.append(g.clone(), message(5, "c5")).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    assert!(!a.has_failed());
    // A reloads and carries on; a resend of B's message through A is recognised.
    assert_eq!(a.append(g.clone(), message(5, "c5")).await.unwrap().ids(), (5, 5));
    assert_eq!(a.append(g.clone(), message(6, "c4")).await.unwrap(), Appended::Duplicate { message_id: 4, seq: 4 });
    let stored = a.read(&g, 1, 0, usize::MAX, Order::Ascending).unwrap();
    let ids: Vec<(u64, i64)> = stored.iter().map(|m| (m.seq, m.message.message_id)).collect();
    assert_eq!(ids, vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
}
