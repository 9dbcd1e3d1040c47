//! The message log's tests: appends, resends, fences, retention, the journal, failures.

use super::*;
use crate::backend::Order;
use crate::{FjallBackend, MemoryBackend};
use std::collections::BTreeMap;

fn msg(id: i64, from: &str, cmn: &str, body: &str) -> NewMessage {
    NewMessage {
        message_id: id,
        timestamp_ms: 1_700_000_000_000 + id,
        from_uid: from.into(),
        client_msg_no: cmn.into(),
        header: 0x02,
        setting: 0,
        expire: 0,
        topic: (id % 3 == 0).then(|| "t".to_owned()),
        payload: Bytes::from(body.to_owned()),
    }
}

fn memory_log() -> Arc<MessageLog> {
    Arc::new(MessageLog::open(Arc::new(MemoryBackend::new()), Durability::Fsync).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_its_contract_on_memory_and_fjall() {
    let memory: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
    crate::testing::log_contract(memory.clone(), move || memory).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::testing::log_contract(Arc::new(FjallBackend::open(&path).unwrap()), move || {
        Arc::new(FjallBackend::open(&path).unwrap())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_under_a_lost_claim_store_nothing() {
    let memory: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
    crate::testing::fenced_owners(memory.clone(), memory).await;
}

#[tokio::test]
async fn counters_reload_from_storage_once_the_cache_is_emptied() {
    let log = memory_log();
    for round in 1..=3u64 {
        for c in 0..20i64 {
            let id = round as i64 * 100 + c;
            let got = log.append(ChannelKey::new(format!("c{c}"), 2), msg(id, "s", "", "m")).await.unwrap();
            assert_eq!(got.ids(), (id, round), "channel c{c}, round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_dense_seqs_per_channel() {
    let log = memory_log();
    let channels = [ChannelKey::new("g1", 2), ChannelKey::new("g2", 2), ChannelKey::new("u1@u2", 1)];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8i64 {
        let (log, channels) = (log.clone(), channels.clone());
        tasks.spawn(async move {
            for i in 0..300i64 {
                let id = t * 1000 + i;
                let channel = channels[(id % 3) as usize].clone();
                log.append(channel, msg(id, "s", &format!("c{id}"), &format!("m{id}"))).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut total = 0;
    for channel in &channels {
        let stored = log.read(channel, 1, 0, usize::MAX, Order::Ascending).unwrap();
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense from 1");
        for m in &stored {
            assert_eq!(m.message.payload, Bytes::from(format!("m{}", m.message.message_id)));
        }
        assert_eq!(log.last_seq(channel).unwrap(), stored.len() as u64);
        total += stored.len();
    }
    assert_eq!(total, 2400);
}

#[tokio::test]
async fn resends_return_the_original_and_store_nothing() {
    let log = memory_log();
    let g = ChannelKey::new("g", 2);
    let first = log.append(g.clone(), msg(10, "alice", "cmn-1", "hello")).await.unwrap();
    assert_eq!(first, Appended::New { message_id: 10, seq: 1 });
    let again = log.append(g.clone(), msg(11, "alice", "cmn-1", "hello")).await.unwrap();
    assert_eq!(again, Appended::Duplicate { message_id: 10, seq: 1 });
    // Another sender may use the same client_msg_no; so may the same sender elsewhere.
    assert_eq!(log.append(g.clone(), msg(12, "bob", "cmn-1", "x")).await.unwrap().ids(), (12, 2));
    assert_eq!(log.append(ChannelKey::new("h", 2), msg(13, "alice", "cmn-1", "x")).await.unwrap().ids(), (13, 1));
    // Empty client_msg_no never deduplicates.
    assert_eq!(log.append(g.clone(), msg(14, "alice", "", "a")).await.unwrap().ids(), (14, 3));
    assert_eq!(log.append(g.clone(), msg(15, "alice", "", "a")).await.unwrap().ids(), (15, 4));
    assert_eq!(log.last_seq(&g).unwrap(), 4);
    let found = log.by_client_msg_no(&g, "alice", "cmn-1").unwrap().unwrap();
    assert_eq!((found.seq, found.message.message_id), (1, 10));
    assert!(log.by_client_msg_no(&g, "alice", "nope").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_racing_in_one_batch_store_once() {
    let log = memory_log();
    let g = ChannelKey::new("g", 2);
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..50 {
        let log = log.clone();
        let g = g.clone();
        tasks.spawn(async move { log.append(g, msg(id, "alice", "same", "once")).await.unwrap() });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap());
    }
    assert_eq!(results.iter().filter(|r| matches!(r, Appended::New { .. })).count(), 1);
    let ids: std::collections::HashSet<_> = results.iter().map(|r| r.ids()).collect();
    assert_eq!(ids.len(), 1, "every resend got the original's ids");
    assert_eq!(log.last_seq(&g).unwrap(), 1);
}

#[tokio::test]
async fn first_message_writes_land_with_seq_1_only() {
    let kv = Arc::new(MemoryBackend::new());
    let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
    let g = ChannelKey::new("g", 2);
    let side = |v: u8| vec![Write::Put(Table::ChanWhitelist, b"side".to_vec(), vec![v])];
    log.enqueue_with_first(g.clone(), msg(1, "s", "c1", "m"), side(1), None).unwrap().await.unwrap();
    assert_eq!(kv.get(Table::ChanWhitelist, b"side").unwrap(), Some(vec![1]));
    // A resend of the first message writes nothing, its side writes included.
    let dup = log.enqueue_with_first(g.clone(), msg(2, "s", "c1", "m"), side(2), None).unwrap().await.unwrap();
    assert!(matches!(dup, Appended::Duplicate { .. }));
    // Nor does a later message.
    let second = log.enqueue_with_first(g, msg(3, "s", "c3", "m"), side(3), None).unwrap().await.unwrap();
    assert_eq!(second.ids(), (3, 2));
    assert_eq!(kv.get(Table::ChanWhitelist, b"side").unwrap(), Some(vec![1]));
}

#[tokio::test]
async fn retention_removes_old_messages_the_newest_too_but_keeps_the_counter() {
    let kv = Arc::new(MemoryBackend::new());
    let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
    let (g, cmd, h, p) =
        (ChannelKey::new("g", 2), ChannelKey::new("g", 0x82), ChannelKey::new("h", 2), ChannelKey::new("a@b", 1));
    // msg(id) is stamped 1_700_000_000_000 + id.
    for id in 1..=5 {
        log.append(g.clone(), msg(id, "s", &format!("c{id}"), "m")).await.unwrap();
    }
    log.append(h.clone(), msg(1, "s", "", "m")).await.unwrap();
    log.append(h.clone(), msg(2, "s", "", "m")).await.unwrap();
    log.append(cmd.clone(), msg(1, "s", "", "m")).await.unwrap();
    log.append(p.clone(), msg(1, "s", "", "m")).await.unwrap();
    log.append(p.clone(), msg(2, "s", "", "m")).await.unwrap();

    let cutoff = 1_700_000_000_000 + 4; // ids 1..=3 are older
    let pruned = log.prune_older_than(2, cutoff).unwrap();
    assert_eq!(pruned, Pruned { channels: 2, messages: 5 });
    let seqs =
        |c: &ChannelKey| log.read(c, 1, 0, 100, Order::Ascending).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&g), [4, 5]);
    assert_eq!(seqs(&h), Vec::<u64>::new(), "the newest goes too when it is old");
    assert_eq!(log.last_seq(&h).unwrap(), 2, "but the counter stays");
    assert_eq!(seqs(&cmd), [1], "command channels are their own channels");
    assert_eq!(seqs(&p), [1, 2], "other types are untouched");
    assert!(log.by_client_msg_no(&g, "s", "c1").unwrap().is_none(), "the resend index went too");
    assert!(log.by_message_id(3).unwrap().is_none(), "and the id index");
    assert_eq!(log.by_message_id(5).unwrap().map(|(c, m)| (c, m.seq)), Some((g.clone(), 5)));
    assert_eq!(log.by_client_msg_no(&g, "s", "c4").unwrap().map(|m| m.seq), Some(4));
    assert_eq!(log.read_by_client_msg_no(&g, "c4").unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
    assert!(log.read_by_client_msg_no(&g, "c").unwrap().is_empty(), "a prefix of a client_msg_no is not it");
    drop(log);
    // Seqs continue after a restart, from the counter of an emptied channel too.
    let log = MessageLog::open(kv, Durability::Fsync).unwrap();
    assert_eq!(log.append(h.clone(), msg(9, "s", "", "m")).await.unwrap().ids(), (9, 3));
    assert_eq!(log.prune_older_than(2, cutoff).unwrap(), Pruned::default(), "nothing old is left");
    // Clearing a channel deletes everything; its seqs carry on.
    assert_eq!(log.clear_channel(&g).unwrap(), 2);
    assert!(log.read(&g, 1, 0, 10, Order::Ascending).unwrap().is_empty());
    assert!(log.by_message_id(5).unwrap().is_none());
    assert_eq!(log.append(g.clone(), msg(10, "s", "c1", "m")).await.unwrap().ids(), (10, 6), "c1 is free again");
}

#[tokio::test]
async fn retention_removes_extras_after_their_messages_and_what_a_crash_left_between() {
    let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
    let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
    let store = crate::Store::new(kv.clone());
    let g = ChannelKey::new("g", 2);
    for id in 1..=4 {
        log.append(g.clone(), msg(id, "s", "", "m")).await.unwrap();
    }
    let revoke = |e: &mut crate::MessageExtra| {
        e.revoked = true;
        Ok::<_, StoreError>(crate::ExtraChange::Changed(vec![store.read_mark_write(&g, e.seq, "r", 1)]))
    };
    for seq in 1..=4 {
        assert!(store.change_extra(&g, seq, seq as i64, revoke).unwrap().is_some());
    }
    // A crash between retention's two steps: message 1 gone, its extra and mark left.
    let gone = vec![
        Write::Delete(Table::ChanSeqMessage, g.message_key(1)),
        Write::Delete(Table::MsgIdChanSeq, 1i64.to_be_bytes().to_vec()),
    ];
    kv.write(gone, true).unwrap();
    let cutoff = 1_700_000_000_000 + 3; // message 2 is older (1 is gone already)
    assert_eq!(log.prune_older_than(2, cutoff).unwrap(), Pruned { channels: 1, messages: 1 });
    let left: Vec<u64> = store.extras_since(&g, 0, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(left, [3, 4], "message 1's extra went with the next retention, 2's with its message");
    assert!(store.read_marks(&g, &[1, 2], "r").unwrap().iter().all(Option::is_none));
    assert_eq!(store.change_extra(&g, 2, 2, revoke).unwrap(), None, "no change after its message");
}

#[tokio::test]
async fn oversized_strings_are_refused_and_the_writer_lives_on() {
    let log = memory_log();
    let g = ChannelKey::new("g", 2);
    let huge = msg(1, "s", &"n".repeat(70_000), "m");
    assert!(matches!(log.append(g.clone(), huge).await, Err(StoreError::TooLong { .. })));
    assert_eq!(log.append(g, msg(2, "s", "ok", "m")).await.unwrap().ids(), (2, 1));
    assert!(!log.has_failed());
}

#[tokio::test]
async fn commit_callbacks_run_in_commit_order() {
    let log = memory_log();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut pending = Vec::new();
    for id in 1..=100 {
        let seen = seen.clone();
        let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a.unwrap().ids()));
        pending.push(log.enqueue(ChannelKey::new("g", 2), msg(id, "s", "", "m"), Some(on_commit)).unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
    let expected: Vec<(i64, u64)> = (1..=100).map(|i| (i, i as u64)).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[tokio::test]
async fn reads_by_range_limit_and_order() {
    let log = memory_log();
    let g = ChannelKey::new("g", 2);
    for id in 1..=10 {
        log.append(g.clone(), msg(id, "s", "", "m")).await.unwrap();
    }
    let seqs = |v: Vec<StoredMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(log.read(&g, 3, 6, 100, Order::Ascending).unwrap()), [3, 4, 5]);
    assert_eq!(seqs(log.read(&g, 3, 0, 2, Order::Ascending).unwrap()), [3, 4]);
    assert_eq!(seqs(log.read(&g, 1, 0, 3, Order::Descending).unwrap()), [10, 9, 8]);
    assert_eq!(seqs(log.read(&g, 11, 0, 3, Order::Ascending).unwrap()), Vec::<u64>::new());
    assert!(
        log.read(&ChannelKey::new("g", 3), 1, 0, 10, Order::Ascending).unwrap().is_empty(),
        "type is part of the key"
    );
    let m = &log.read(&g, 3, 4, 1, Order::Ascending).unwrap()[0];
    assert_eq!(m.message, msg(3, "s", "", "m"), "every field round-trips");
    assert_eq!(log.by_message_id(4).unwrap().map(|(c, m)| (c, m.seq)), Some((g.clone(), 4)));
    assert!(log.by_message_id(99).unwrap().is_none());
}

#[tokio::test]
async fn seqs_and_dedupe_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let g = ChannelKey::new("g", 2);
    {
        let log = MessageLog::open(Arc::new(FjallBackend::open(dir.path()).unwrap()), Durability::Fsync).unwrap();
        for id in 1..=5 {
            log.append(g.clone(), msg(id, "s", &format!("c{id}"), "m")).await.unwrap();
        }
    }
    let log = MessageLog::open(
        Arc::new(FjallBackend::open(dir.path()).unwrap()),
        Durability::Interval(Duration::from_millis(20)),
    )
    .unwrap();
    assert_eq!(
        log.append(g.clone(), msg(3, "s", "c3", "m")).await.unwrap(),
        Appended::Duplicate { message_id: 3, seq: 3 }
    );
    assert_eq!(log.append(g.clone(), msg(6, "s", "c6", "m")).await.unwrap(), Appended::New { message_id: 6, seq: 6 });
    assert_eq!(log.read(&g, 1, 0, 100, Order::Ascending).unwrap().len(), 6);
}

/// Memory storage whose writes go through `hook` (which may fail, panic or pass
/// them on to the memory backend it is given).
struct Hooked {
    inner: MemoryBackend,
    hook: Box<WriteHook>,
}

type WriteHook = dyn Fn(&MemoryBackend, Vec<Write>, bool) -> Result<()> + Send + Sync;

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

impl KvBackend for Hooked {
    fn health(&self) -> &Arc<crate::Health> {
        self.inner.health()
    }
    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(t, k)
    }
    fn scan_prefix(&self, t: Table, p: &[u8], l: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(t, p, l)
    }
    fn scan_range(&self, t: Table, s: &[u8], e: &[u8], l: usize, o: Order) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_range(t, s, e, l, o)
    }
    fn write(&self, w: Vec<Write>, d: bool) -> Result<()> {
        (self.hook)(&self.inner, w, d)
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

fn hooked(hook: impl Fn(&MemoryBackend, Vec<Write>, bool) -> Result<()> + Send + Sync + 'static) -> Arc<Hooked> {
    Arc::new(Hooked { inner: MemoryBackend::new(), hook: Box::new(hook) })
}

#[tokio::test]
async fn a_failed_write_acknowledges_nothing_from_then_on() {
    // Writes fail after the first, as on a disk that filled up.
    let ok = std::sync::atomic::AtomicUsize::new(1);
    let kv = hooked(move |inner, w, d| {
        if ok.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            return Err(StoreError::Engine("disk full".into()));
        }
        inner.write(w, d)
    });
    let log = MessageLog::open(kv, Durability::Fsync).unwrap();
    let g = ChannelKey::new("g", 2);
    assert!(log.append(g.clone(), msg(1, "s", "", "m")).await.is_ok());
    let outcome = Arc::new(Mutex::new(Vec::new()));
    let seen = outcome.clone();
    let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a));
    assert!(log.enqueue(g.clone(), msg(2, "s", "", "m"), Some(on_commit)).unwrap().await.is_err());
    assert_eq!(*outcome.lock().unwrap(), [None], "the callback hears of the failure too");
    assert!(log.has_failed());
    assert!(log.health().failure().is_some_and(|f| f.reason.contains("disk full")), "the reason is kept");
    assert!(log.append(g.clone(), msg(3, "s", "", "m")).await.is_err(), "fail-stop");
    assert_eq!(log.last_seq(&g).unwrap(), 1);
}

#[tokio::test]
async fn a_panic_in_the_engine_fails_the_batch_and_stops_the_log_without_killing_the_writer() {
    // Writes panic, as an engine does on input it cannot take.
    let log = MessageLog::open(hooked(|_, _, _| panic!("the engine gave up")), Durability::Fsync).unwrap();
    let g = ChannelKey::new("g", 2);
    let outcome = Arc::new(Mutex::new(Vec::new()));
    let seen = outcome.clone();
    let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a));
    let first = log.enqueue(g.clone(), msg(1, "s", "c1", "m"), Some(on_commit)).unwrap().await;
    assert!(matches!(first, Err(StoreError::Engine(ref m)) if m.contains("the engine gave up")), "{first:?}");
    assert_eq!(*outcome.lock().unwrap(), [None], "the sender hears that nothing was stored");
    assert!(log.health().failure().is_some_and(|f| f.reason.contains("panicked")));
    // The writer is alive and answers at once: refused, not left waiting.
    let later = tokio::time::timeout(Duration::from_secs(5), log.append(g, msg(2, "s", "c2", "m"))).await;
    assert!(matches!(later, Ok(Err(StoreError::Engine(_)))), "{later:?}");
}

#[tokio::test]
async fn a_panicking_commit_callback_becomes_a_failure_not_a_silent_stop() {
    let log = memory_log();
    let g = ChannelKey::new("g", 2);
    let on_commit: OnCommit = Box::new(|_| panic!("callback bug"));
    let stored = log.enqueue(g.clone(), msg(1, "s", "", "m"), Some(on_commit)).unwrap().await;
    assert_eq!(stored.unwrap().ids(), (1, 1), "the message was stored, and its sender is told so");
    assert!(log.health().failure().is_some_and(|f| f.reason.contains("callback bug")));
    let later = tokio::time::timeout(Duration::from_secs(5), log.append(g, msg(2, "s", "", "m"))).await;
    assert!(matches!(later, Ok(Err(_))), "refused at once: {later:?}");
}

/// The one-packet outage: a client_msg_no at the protocol's string limit made the
/// resend-index key longer than the embedded engine takes, and the engine panicked
/// in the writer thread. On the real engine it is now refused, and the log lives on.
#[tokio::test]
async fn a_key_too_long_for_the_engine_is_refused_on_fjall_and_the_log_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(Arc::new(FjallBackend::open(dir.path()).unwrap()), Durability::Fsync).unwrap();
    let g = ChannelKey::new("g", 2);
    for cmn_len in [usize::from(u16::MAX), usize::from(u16::MAX) - 10] {
        let huge = msg(1, "sender", &"n".repeat(cmn_len), "m");
        assert!(matches!(log.append(g.clone(), huge).await, Err(StoreError::TooLong { .. })), "{cmn_len}");
    }
    assert_eq!(log.append(g.clone(), msg(2, "s", "ok", "m")).await.unwrap().ids(), (2, 1));
    assert!(!log.has_failed());
    // The first-message rows are checked too.
    let bad_row = vec![Write::Put(Table::UidChanConversation, vec![b'k'; crate::MAX_KEY_LEN + 1], vec![1])];
    let h = ChannelKey::new("h", 2);
    assert!(matches!(
        log.enqueue_with_first(h.clone(), msg(3, "s", "", "m"), bad_row, None),
        Err(StoreError::TooLong { .. })
    ));
    assert_eq!(log.append(h, msg(4, "s", "", "m")).await.unwrap().ids(), (4, 1));
    assert!(!log.has_failed());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Against a model: each channel holds exactly the first copy of every
    /// (sender, client_msg_no), in append order, at seqs 1..=n.
    #[test]
    fn log_matches_a_model(ops in proptest::collection::vec((0u8..3, 0u8..3, 0u8..6), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let log = memory_log();
            let mut model: BTreeMap<u8, Vec<(i64, String, String)>> = BTreeMap::new();
            for (i, (channel, sender, cmn)) in ops.into_iter().enumerate() {
                let key = ChannelKey::new(format!("c{channel}"), 2);
                let (from, cmn) = (format!("u{sender}"), if cmn == 0 { String::new() } else { format!("n{cmn}") });
                let got = log.append(key, msg(i as i64, &from, &cmn, "p")).await.unwrap();
                let entries = model.entry(channel).or_default();
                let earlier = entries.iter().position(|(_, f, c)| !cmn.is_empty() && *f == from && *c == cmn);
                match earlier {
                    Some(pos) => assert_eq!(got, Appended::Duplicate { message_id: entries[pos].0, seq: pos as u64 + 1 }),
                    None => {
                        entries.push((i as i64, from, cmn));
                        assert_eq!(got, Appended::New { message_id: i as i64, seq: entries.len() as u64 });
                    }
                }
            }
            for (channel, entries) in model {
                let stored = log.read(&ChannelKey::new(format!("c{channel}"), 2), 1, 0, usize::MAX, Order::Ascending).unwrap();
                let ids: Vec<i64> = stored.iter().map(|m| m.message.message_id).collect();
                assert_eq!(ids, entries.iter().map(|e| e.0).collect::<Vec<_>>());
            }
        });
    }
}

#[tokio::test]
async fn the_journal_hands_over_new_messages_and_keeps_the_rest_across_restarts() {
    let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = |heard: Arc<Mutex<Vec<Journaled>>>| -> JournalSink { Box::new(move |j| heard.lock().unwrap().push(j)) };
    let (log, backlog) = MessageLog::open_journaled(kv.clone(), Durability::Fsync, sink(heard.clone())).unwrap();
    assert!(backlog.is_empty());
    let g = ChannelKey::new("g1", 2);
    for i in 1..=3 {
        log.append(g.clone(), msg(i, "u1", &format!("c{i}"), "hi")).await.unwrap();
    }
    // A resend stores nothing and journals nothing.
    log.append(g.clone(), msg(9, "u1", "c2", "again")).await.unwrap();
    log.close();
    let heard_ids: Vec<(u64, u64)> = heard.lock().unwrap().iter().map(|j| (j.id, j.seq)).collect();
    assert_eq!(heard_ids, vec![(1, 1), (2, 2), (3, 3)]);

    // The consumer took in the first; the other two come back as the backlog.
    kv.write(vec![Write::Delete(Table::Journal, 1u64.to_be_bytes().to_vec())], true).unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let (log, backlog) = MessageLog::open_journaled(kv.clone(), Durability::Fsync, sink(heard.clone())).unwrap();
    assert_eq!(backlog.iter().map(|j| (j.id, j.seq)).collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
    assert_eq!(backlog[0].message.client_msg_no, "c2");
    assert_eq!(backlog[0].channel, g);
    log.append(g.clone(), msg(4, "u1", "c4", "new")).await.unwrap();
    log.close();
    // Ids continue after the last row; seqs after the last message.
    assert_eq!(heard.lock().unwrap().iter().map(|j| (j.id, j.seq)).collect::<Vec<_>>(), vec![(4, 4)]);
}
