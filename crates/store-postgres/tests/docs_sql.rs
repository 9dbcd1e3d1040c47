//! The plain-SQL queries of docs/postgres.md, run against data the server's own code
//! wrote: they must read it right.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use hongyan_store::{ChannelKey, Conversation, Durability, MessageLog, NewMessage, Store};
use hongyan_store_postgres::PostgresBackend;

/// The SQL block of the doc whose first line is `marker`, on `schema`.
fn query(marker: &str, schema: &str) -> String {
    let doc = include_str!("../../../docs/postgres.md");
    let start = doc.find(marker).unwrap_or_else(|| panic!("no {marker:?} in docs/postgres.md"));
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].replace("hongyan.", &format!("{schema}."))
}

fn message(id: i64, from: &str, cmn: &str, topic: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        message_id: id,
        timestamp_ms: 1_700_000_000_000 + id,
        from_uid: from.into(),
        client_msg_no: cmn.into(),
        header: 0,
        setting: 0,
        expire: 0,
        topic: topic.map(Into::into),
        payload: text.as_bytes().to_vec().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_queries_read_history_and_conversations() {
    let config = hongyan_store_postgres::testing::config();
    let (url, schema) = (config.url.clone(), config.schema.clone());
    let backend = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || PostgresBackend::connect(&config).unwrap()).await.unwrap(),
    );
    let log = MessageLog::open(backend.clone(), Durability::Fsync).unwrap();
    let g1 = ChannelKey::new("g1", 2);
    log.append(g1.clone(), message(11, "alice", "c1", None, "hello")).await.unwrap();
    log.append(g1.clone(), message(12, "bob", "c2", Some("news"), "with a topic")).await.unwrap();
    log.append(g1.clone(), message(13, "carol-the-third", "", None, "你好")).await.unwrap();
    // Another channel whose id starts the same way must not show.
    log.append(ChannelKey::new("g10", 2), message(14, "alice", "c9", None, "elsewhere")).await.unwrap();
    let person = ChannelKey::new("alice@bob", 1);
    log.append(person.clone(), message(15, "bob", "p1", None, "hi alice")).await.unwrap();
    let store = Store::new(backend);
    tokio::task::spawn_blocking(move || {
        store.put_conversation("alice", &g1, Conversation { read_to: 1, deleted_at: 0 }).unwrap();
        store.put_conversation("alice", &person, Conversation { read_to: 1, deleted_at: 1 }).unwrap();
        store.put_conversation("alicia", &person, Conversation::default()).unwrap();
    })
    .await
    .unwrap();

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let history = client.query(&query("-- one channel's history", &schema), &[]).await.unwrap();
    let rows: Vec<(i64, i64, String, String, String)> =
        history.iter().map(|r| (r.get(0), r.get(1), r.get(3), r.get(4), r.get(5))).collect();
    assert_eq!(
        rows,
        vec![
            (3, 13, "carol-the-third".into(), String::new(), "你好".into()),
            (2, 12, "bob".into(), "c2".into(), "with a topic".into()),
            (1, 11, "alice".into(), "c1".into(), "hello".into()),
        ]
    );
    let sent_at: std::time::SystemTime = history[2].get(2);
    let millis = sent_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(millis, 1_700_000_000_011);

    let conversations = client.query(&query("-- one user's conversations", &schema), &[]).await.unwrap();
    let rows: Vec<(i32, String, i64, i64, Option<i64>)> =
        conversations.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(rows, vec![(1, "alice@bob".into(), 1, 1, Some(1)), (2, "g1".into(), 1, 0, Some(3))]);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
