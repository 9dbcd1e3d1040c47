//! What every storage backend must do, as checks a backend's tests call: the
//! key-value contract, the typed tables over it, and the message log over it. The
//! embedded and memory backends run them here; the PostgreSQL backend runs the same
//! checks in its own crate. Each check expects an empty store.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // checks panic on purpose

use std::sync::Arc;

use bytes::Bytes;
use hongyan_proto::DeviceLevel;

use crate::{
    Appended, ChannelInfo, ChannelKey, Conversation, Device, Durability, Fence, KvBackend, MAX_KEY_LEN, MemberList,
    MessageLog, NewMessage, Order, Store, StoreError, Table, Write,
};

mod extras;

pub use extras::extras_contract;

fn put(t: Table, k: &[u8], v: &[u8]) -> Write {
    Write::Put(t, k.to_vec(), v.to_vec())
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    rows.iter().map(|(k, _)| k.clone()).collect()
}

/// Point reads, ordered scans and atomic, ordered write batches.
pub fn kv_contract(kv: &dyn KvBackend) {
    let t = Table::ChanSubscriber;
    assert_eq!(kv.get(t, b"a").unwrap(), None);
    // Keys order bytewise (unsigned), whatever they hold.
    let all: [&[u8]; 6] = [b"\x00", b"a", b"a\x00", b"ab", b"b", b"\xff\xff"];
    kv.write(all.iter().rev().map(|k| put(t, k, k)).collect(), true).unwrap();
    assert_eq!(keys(&kv.scan_prefix(t, &[], usize::MAX).unwrap()), all.map(<[u8]>::to_vec));
    assert_eq!(kv.get(t, b"ab").unwrap(), Some(b"ab".to_vec()));
    assert_eq!(keys(&kv.scan_prefix(t, b"a", usize::MAX).unwrap()), [b"a".to_vec(), b"a\x00".to_vec(), b"ab".to_vec()]);
    assert_eq!(keys(&kv.scan_prefix(t, b"a", 2).unwrap()), [b"a".to_vec(), b"a\x00".to_vec()]);
    assert_eq!(keys(&kv.scan_prefix(t, b"\xff", usize::MAX).unwrap()), [b"\xff\xff".to_vec()]);
    assert!(kv.scan_prefix(t, b"c", usize::MAX).unwrap().is_empty());
    // Many keys at once, in the order asked, repeats and misses included.
    let asked = [b"ab".to_vec(), b"zz".to_vec(), b"\x00".to_vec(), b"ab".to_vec(), vec![b'k'; MAX_KEY_LEN + 1]];
    let got = kv.get_many(t, &asked).unwrap();
    assert_eq!(got, vec![Some(b"ab".to_vec()), None, Some(b"\x00".to_vec()), Some(b"ab".to_vec()), None]);
    assert!(kv.get_many(t, &[]).unwrap().is_empty());
    // The last entry of several ranges at once.
    let ranges = [(b"a".to_vec(), b"b".to_vec()), (b"c".to_vec(), b"d".to_vec()), (b"\x00".to_vec(), b"\xff".to_vec())];
    let last: Vec<Option<Vec<u8>>> =
        kv.last_in_ranges(t, &ranges).unwrap().into_iter().map(|e| e.map(|(k, _)| k)).collect();
    assert_eq!(last, vec![Some(b"ab".to_vec()), None, Some(b"b".to_vec())]);
    let pages: Vec<Vec<Vec<u8>>> = kv
        .scan_ranges(t, &ranges, 2, Order::Ascending)
        .unwrap()
        .into_iter()
        .map(|page| page.into_iter().map(|(k, _)| k).collect())
        .collect();
    assert_eq!(pages, vec![vec![b"a".to_vec(), b"a\x00".to_vec()], vec![], vec![b"\x00".to_vec(), b"a".to_vec()]]);
    let pages = kv.scan_ranges(t, &ranges, 2, Order::Descending).unwrap();
    assert_eq!(keys(&pages[0]), [b"ab".to_vec(), b"a\x00".to_vec()]);
    assert!(kv.scan_ranges(t, &[], 5, Order::Ascending).unwrap().is_empty());
    // Ranges are half-open, in either order, limited from the first end.
    let asc = kv.scan_range(t, b"a", b"b", usize::MAX, Order::Ascending).unwrap();
    assert_eq!(keys(&asc), [b"a".to_vec(), b"a\x00".to_vec(), b"ab".to_vec()]);
    let desc = kv.scan_range(t, b"a", b"\xff\xff\xff", 2, Order::Descending).unwrap();
    assert_eq!(keys(&desc), [b"\xff\xff".to_vec(), b"b".to_vec()]);
    assert!(kv.scan_range(t, b"b", b"b", 10, Order::Ascending).unwrap().is_empty());
    // Tables are apart.
    assert!(kv.scan_prefix(Table::ChanBlacklist, &[], usize::MAX).unwrap().is_empty());
    // A batch applies in order: the last write to a key wins.
    kv.write(vec![put(t, b"a", b"1"), Write::Delete(t, b"a".to_vec()), put(t, b"a", b"2")], true).unwrap();
    assert_eq!(kv.get(t, b"a").unwrap(), Some(b"2".to_vec()));
    kv.write(vec![put(t, b"a", b"3"), Write::Delete(t, b"a".to_vec())], false).unwrap();
    assert_eq!(kv.get(t, b"a").unwrap(), None);
    kv.write(vec![Write::Delete(t, b"never-there".to_vec())], true).unwrap();
    // Inserts: keys that must be new.
    kv.write(vec![Write::Insert(t, b"new".to_vec(), b"1".to_vec())], true).unwrap();
    if kv.enforces_inserts() {
        let clash = kv.write(vec![put(t, b"other", b"x"), Write::Insert(t, b"new".to_vec(), b"2".to_vec())], true);
        assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
        assert_eq!(kv.get(t, b"new").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(t, b"other").unwrap(), None, "nothing of a conflicting batch is applied");
        let twice = vec![
            Write::Insert(t, b"twice".to_vec(), b"1".to_vec()),
            Write::Insert(t, b"twice".to_vec(), b"2".to_vec()),
        ];
        let _ = kv.write(twice, true); // either refused or the last one; never a failure
        assert!(!kv.health().has_failed(), "a conflict is not a failure of the store");
    }
    expectations(kv);
    // Empty values, large values and binary values round-trip.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    kv.write(vec![put(Table::Meta, b"empty", b""), put(Table::Meta, b"big", &big)], true).unwrap();
    assert_eq!(kv.get(Table::Meta, b"empty").unwrap(), Some(Vec::new()));
    assert_eq!(kv.get(Table::Meta, b"big").unwrap(), Some(big));
    kv.sync().unwrap();
    refuses_what_it_cannot_hold(kv);
    assert!(!kv.health().has_failed());
}

/// `Write::Expect`: a batch applies only while the row holds the expected value.
fn expectations(kv: &dyn KvBackend) {
    let (t, fence) = (Table::Meta, b"fence".as_slice());
    let expect = |v: &[u8]| Write::Expect(t, fence.to_vec(), v.to_vec());
    let refused = kv.write(vec![expect(b"1"), put(t, b"x", b"1")], true);
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "a missing row matches nothing: {refused:?}");
    kv.write(vec![put(t, fence, b"1")], true).unwrap();
    kv.write(vec![expect(b"1"), put(t, b"x", b"1"), expect(b"1")], true).unwrap();
    assert_eq!(kv.get(t, b"x").unwrap(), Some(b"1".to_vec()));
    // Compare and set: the row as stored before the batch is what is compared.
    kv.write(vec![expect(b"1"), put(t, fence, b"2")], true).unwrap();
    for stale in [vec![expect(b"1"), put(t, b"y", b"1")], vec![expect(b"2"), expect(b"3"), put(t, b"y", b"1")]] {
        let refused = kv.write(stale, true);
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    }
    assert_eq!(kv.get(t, b"y").unwrap(), None, "nothing of a refused batch is applied");
    assert_eq!(kv.get(t, fence).unwrap(), Some(b"2".to_vec()));
    assert!(!kv.health().has_failed(), "a refused expectation is not a failure of the store");
}

/// Writers racing on one fenced counter: every batch reads the value, expects it and
/// writes the next one with a row of its own. Exactly the batches that were accepted
/// are applied, and no two of them saw the same value (no lost update).
pub fn expectations_are_atomic(kv: Arc<dyn KvBackend>) {
    let t = Table::Meta;
    kv.write(vec![put(t, b"counter", &0u64.to_be_bytes())], true).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|id| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut won = 0u64;
                for i in 0..40u8 {
                    let seen = kv.get(t, b"counter").unwrap().unwrap();
                    let next = u64::from_be_bytes(seen.as_slice().try_into().unwrap()) + 1;
                    let batch = vec![
                        Write::Expect(t, b"counter".to_vec(), seen),
                        put(t, b"counter", &next.to_be_bytes()),
                        put(t, &[b'w', id, i], &next.to_be_bytes()),
                    ];
                    match kv.write(batch, false) {
                        Ok(()) => won += 1,
                        Err(StoreError::Conflict(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                won
            })
        })
        .collect();
    let won: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let counter = kv.get(t, b"counter").unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(counter.as_slice().try_into().unwrap()), won);
    let rows = kv.scan_prefix(t, b"w", usize::MAX).unwrap();
    assert_eq!(rows.len() as u64, won, "one row per accepted batch");
    let values: std::collections::BTreeSet<_> = rows.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len() as u64, won, "no two accepted batches saw the same value");
}

/// What every backend does with keys it cannot hold: refuse them with an error, apply
/// nothing of a batch that has one, and stay healthy (bad input is not a storage
/// failure).
pub fn refuses_what_it_cannot_hold(kv: &dyn KvBackend) {
    let t = Table::ChanSeqMessage;
    let too_long = vec![b'k'; kv.max_key_len() + 1];
    let longest = vec![b'k'; kv.max_key_len()];
    let batch = vec![put(t, b"a", b"1"), Write::Put(t, too_long.clone(), b"2".to_vec())];
    assert!(matches!(kv.write(batch, true), Err(StoreError::TooLong { .. })));
    assert_eq!(kv.get(t, b"a").unwrap(), None, "nothing of a refused batch is applied");
    assert!(matches!(kv.write(vec![put(t, b"", b"x")], true), Err(StoreError::TooLong { .. })));
    assert!(matches!(kv.write(vec![Write::Delete(t, too_long.clone())], true), Err(StoreError::TooLong { .. })));
    assert!(kv.get(t, &vec![b'k'; MAX_KEY_LEN + 2]).unwrap().is_none());
    assert!(kv.get(t, b"").unwrap().is_none());
    assert!(kv.scan_prefix(t, &vec![b'k'; MAX_KEY_LEN + 2], 1).is_err());
    assert!(kv.get(t, &too_long).unwrap().is_none(), "a key too long to be stored is not found");
    // Bounds one past the longest key: an answer or a refusal, never an engine failure.
    let past = vec![b'k'; MAX_KEY_LEN + 1];
    let _ = kv.scan_prefix(t, &past, 1);
    let _ = kv.scan_range(t, &past, &past, 1, Order::Ascending);
    let _ = kv.scan_range(t, b"a", &past, 1, Order::Descending);
    assert!(!kv.health().has_failed(), "a long bound failed the store");
    // The longest key is fine, and so are empty bounds and inverted ranges.
    kv.write(vec![Write::Put(t, longest.clone(), b"v".to_vec())], true).unwrap();
    assert_eq!(kv.get(t, &longest).unwrap(), Some(b"v".to_vec()));
    assert_eq!(kv.scan_prefix(t, &[], 10).unwrap().len(), 1);
    assert!(kv.scan_range(t, b"z", b"a", 10, Order::Ascending).unwrap().is_empty());
    assert!(!kv.health().has_failed());
}

/// Devices, channels, member lists, conversations, system accounts and meta numbers.
pub fn tables_contract(store: &Store) {
    assert_eq!(store.device("u1", 1).unwrap(), None);
    assert!(!store.user_exists("u1").unwrap());
    let master = Device::new("t-1", DeviceLevel::Master);
    store.put_device("u1", 1, &master).unwrap();
    store.put_device("u10", 0, &Device::new("", DeviceLevel::Slave)).unwrap();
    assert_eq!(store.device("u1", 1).unwrap(), Some(master));
    assert!(store.device("u1", 1).unwrap().unwrap().token_matches("t-1"));
    assert!(!store.device("u1", 1).unwrap().unwrap().token_matches("t-2"));
    assert_eq!(store.device("u1", 0).unwrap(), None);
    assert!(store.user_exists("u1").unwrap());
    assert!(!store.device("u10", 0).unwrap().unwrap().token_matches(""), "an empty token never logs in");
    store.remove_device("u1", 1).unwrap();
    assert_eq!(store.device("u1", 1).unwrap(), None);
    assert!(!store.user_exists("u1").unwrap(), "u10 must not count as u1");

    let info = ChannelInfo { ban: true, send_ban: true, allow_stranger: true, ..ChannelInfo::default() };
    store.put_channel_info("u1", 1, info).unwrap();
    assert_eq!(store.channel_info("u1", 1).unwrap(), Some(info));
    assert_eq!(store.channel_info("u1", 2).unwrap(), None);

    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    store.add_members(MemberList::Subscribers, "g1", 2, &names(&["b", "a"]), false).unwrap();
    store.add_members(MemberList::Subscribers, "g10", 2, &names(&["z"]), false).unwrap();
    store.add_members(MemberList::Blacklist, "g1", 2, &names(&["x"]), false).unwrap();
    assert_eq!(store.members(MemberList::Subscribers, "g1", 2).unwrap(), names(&["a", "b"]));
    assert_eq!(store.members(MemberList::Blacklist, "g1", 2).unwrap(), names(&["x"]));
    let entries = store.member_entries(MemberList::Blacklist, "g1", 2).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].0 == "x" && entries[0].1 > 1_600_000_000_000, "{entries:?}");
    assert!(store.members(MemberList::Subscribers, "g1", 4).unwrap().is_empty());
    store.remove_members(MemberList::Subscribers, "g1", 2, &names(&["a"])).unwrap();
    assert_eq!(store.members(MemberList::Subscribers, "g1", 2).unwrap(), names(&["b"]));
    store.add_members(MemberList::Subscribers, "g1", 2, &names(&["c"]), true).unwrap();
    assert_eq!(store.members(MemberList::Subscribers, "g1", 2).unwrap(), names(&["c"]));
    assert_eq!(store.members(MemberList::Subscribers, "g10", 2).unwrap(), names(&["z"]));
    // Paged: from the first, then after the last seen; another channel's never shows.
    store.add_members(MemberList::Subscribers, "g1", 2, &names(&["d", "e", "f"]), false).unwrap();
    let page = |after: &str, limit| {
        let entries = store.member_page(MemberList::Subscribers, "g1", 2, after, limit).unwrap();
        entries.into_iter().map(|(uid, _)| uid).collect::<Vec<_>>()
    };
    assert_eq!(page("", 2), names(&["c", "d"]));
    assert_eq!(page("d", 2), names(&["e", "f"]));
    assert_eq!(page("f", 2), Vec::<String>::new());
    assert_eq!(page("cz", 10), names(&["d", "e", "f"]));
    store.remove_members(MemberList::Subscribers, "g1", 2, &names(&["d", "e", "f"])).unwrap();
    // Channels with attributes, by id prefix, a page at a time.
    for id in ["team-a", "team-b", "team-c", "teal", "other"] {
        store.put_channel_info(id, 2, ChannelInfo { large: true, ..ChannelInfo::default() }).unwrap();
    }
    store.put_channel_info("team-z", 4, ChannelInfo::default()).unwrap();
    let found = |prefix: &str, after: &str, limit| {
        let entries = store.channels_by_prefix(2, prefix, after, limit).unwrap();
        entries.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(found("team-", "", 2), names(&["team-a", "team-b"]));
    assert_eq!(found("team-", "team-b", 10), names(&["team-c"]));
    assert_eq!(found("tea", "", 10), names(&["teal", "team-a", "team-b", "team-c"]));
    assert_eq!(found("", "team-c", 10), Vec::<String>::new());
    assert_eq!(found("team-", "tea", 10), names(&["team-a", "team-b", "team-c"]), "a cursor before the prefix");
    assert_eq!(found("team-", "zed", 10), Vec::<String>::new(), "a cursor past the prefix");
    assert!(store.channels_by_prefix(2, "other", "", 1).unwrap()[0].1.large);
    for id in ["team-a", "team-b", "team-c", "teal", "other"] {
        store.kv().write(vec![store.channel_info_removal(id, 2)], true).unwrap();
    }
    store.kv().write(vec![store.channel_info_removal("team-z", 4)], true).unwrap();
    assert!(store.is_member(MemberList::Subscribers, "g1", 2, "c").unwrap());
    assert!(!store.is_member(MemberList::Subscribers, "g1", 2, "z").unwrap());
    assert!(store.has_members(MemberList::Blacklist, "g1", 2).unwrap());
    assert!(!store.has_members(MemberList::Whitelist, "g1", 2).unwrap());

    let g = ChannelKey::new("g", 2);
    let p = ChannelKey::new("a@b", 1);
    assert_eq!(store.conversation("a", &g).unwrap(), None);
    store.put_conversation("a", &g, Conversation { read_to: 3, deleted_at: 1 }).unwrap();
    store.put_conversation("a", &p, Conversation::default()).unwrap();
    store.put_conversation("ab", &g, Conversation::default()).unwrap();
    assert_eq!(store.conversation("a", &g).unwrap(), Some(Conversation { read_to: 3, deleted_at: 1 }));
    let mut all = store.conversations("a").unwrap();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(all, vec![(p.clone(), Conversation::default()), (g, Conversation { read_to: 3, deleted_at: 1 })]);
    store.remove_conversations(&["a".into()], &p).unwrap();
    assert_eq!(store.conversation("a", &p).unwrap(), None);
    assert_eq!(store.conversations("a").unwrap().len(), 1);

    store.set_system_uids(&["bot".into(), "admin".into()], true).unwrap();
    assert_eq!(store.system_uids().unwrap(), vec!["admin".to_owned(), "bot".to_owned()]);
    store.set_system_uids(&["bot".into()], false).unwrap();
    assert_eq!(store.system_uids().unwrap(), vec!["admin".to_owned()]);
    assert_eq!(store.meta_u64("n").unwrap(), None);
    store.put_meta_u64("n", 42).unwrap();
    assert_eq!(store.meta_u64("n").unwrap(), Some(42));
}

fn message(id: i64, from: &str, client_msg_no: &str, text: &str) -> NewMessage {
    NewMessage {
        message_id: id,
        timestamp_ms: 1_700_000_000_000 + id,
        from_uid: from.into(),
        client_msg_no: client_msg_no.into(),
        header: 0x02,
        setting: 0,
        expire: 0,
        topic: (id % 3 == 0).then(|| "t".to_owned()),
        payload: Bytes::from(text.to_owned()),
    }
}

/// The message log over a backend: dense seqs under concurrent appends, resends
/// stored once, reads in both orders and by id, history cleared with the counter
/// kept, and seqs resumed by a log opened again on the same store (`reopen` gives a
/// new backend over the same data).
pub async fn log_contract(kv: Arc<dyn KvBackend>, reopen: impl FnOnce() -> Arc<dyn KvBackend>) {
    let log = Arc::new(MessageLog::open(kv, Durability::Fsync).unwrap());
    let channels = [ChannelKey::new("g1", 2), ChannelKey::new("g2", 2), ChannelKey::new("u1@u2", 1)];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6i64 {
        let (log, channels) = (log.clone(), channels.clone());
        tasks.spawn(async move {
            for i in 0..50i64 {
                let id = t * 1000 + i;
                let channel = channels[(id % 3) as usize].clone();
                log.append(channel, message(id, "s", &format!("c{id}"), &format!("m{id}"))).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for channel in &channels {
        let stored = log.read(channel, 1, 0, usize::MAX, Order::Ascending).unwrap();
        assert_eq!(stored.len(), 100);
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "dense from 1");
        for m in &stored {
            assert_eq!(m.message.payload, Bytes::from(format!("m{}", m.message.message_id)));
        }
        let newest = log.read(channel, 0, 0, 3, Order::Descending).unwrap();
        assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), [100, 99, 98]);
        assert_eq!(log.last_seq(channel).unwrap(), 100);
    }

    let g = ChannelKey::new("resends", 2);
    let first = log.append(g.clone(), message(10, "alice", "cmn-1", "hello")).await.unwrap();
    assert_eq!(first, Appended::New { message_id: 10, seq: 1 });
    let again = log.append(g.clone(), message(11, "alice", "cmn-1", "hello")).await.unwrap();
    assert_eq!(again, Appended::Duplicate { message_id: 10, seq: 1 });
    assert_eq!(log.append(g.clone(), message(12, "bob", "cmn-1", "x")).await.unwrap().ids(), (12, 2));
    assert_eq!(log.append(g.clone(), message(14, "alice", "", "a")).await.unwrap().ids(), (14, 3));
    assert_eq!(log.append(g.clone(), message(15, "alice", "", "a")).await.unwrap().ids(), (15, 4));
    let found = log.by_client_msg_no(&g, "alice", "cmn-1").unwrap().unwrap();
    assert_eq!((found.seq, found.message.message_id), (1, 10));
    assert!(log.by_client_msg_no(&g, "alice", "nope").unwrap().is_none());
    let (channel, by_id) = log.by_message_id(12).unwrap().unwrap();
    assert_eq!((channel, by_id.seq), (g.clone(), 2));

    // Clearing a channel keeps its counter: seqs carry on.
    assert_eq!(log.clear_channel(&g).unwrap(), 4);
    assert!(log.read(&g, 1, 0, usize::MAX, Order::Ascending).unwrap().is_empty());
    assert_eq!(log.append(g.clone(), message(20, "alice", "cmn-1", "new")).await.unwrap().ids(), (20, 5));
    assert!(!log.has_failed());
    log.close();
    drop(log);

    // Opened again, the log resumes every channel where it was.
    let log = MessageLog::open(reopen(), Durability::Fsync).unwrap();
    assert_eq!(log.append(g.clone(), message(21, "alice", "cmn-2", "x")).await.unwrap().ids(), (21, 6));
    assert_eq!(
        log.append(g, message(22, "alice", "cmn-1", "x")).await.unwrap(),
        Appended::Duplicate { message_id: 20, seq: 5 }
    );
    assert_eq!(log.append(channels[0].clone(), message(23, "s", "", "x")).await.unwrap().ids(), (23, 101));
}

/// Two logs over one store, as two cluster nodes, each appending under its claim on a
/// channel ([`Fence`]): an append under a claim that was taken over stores nothing,
/// even in a batch with other channels' appends (which are stored), and an owner that
/// claims the channel again continues from the seqs the other stored. `a` and `b` may
/// be the same backend or two connections to one database.
pub async fn fenced_owners(a: Arc<dyn KvBackend>, b: Arc<dyn KvBackend>) {
    let g = ChannelKey::new("owned", 2);
    let other = ChannelKey::new("elsewhere", 2);
    let claim = |node: u8, epoch: u8| Fence { key: g.encoded(), value: vec![node, epoch] };
    let other_claim = Fence { key: other.encoded(), value: vec![1, 1] };
    let set_claim = |kv: &Arc<dyn KvBackend>, f: &Fence| {
        kv.write(vec![Write::Put(Table::ChanOwner, f.key.clone(), f.value.clone())], true).unwrap();
    };
    let node1 = Arc::new(MessageLog::open(a.clone(), Durability::Fsync).unwrap());
    let node2 = Arc::new(MessageLog::open(b, Durability::Fsync).unwrap());
    let append = |log: &Arc<MessageLog>, channel: &ChannelKey, fence: Fence, id: i64| {
        log.enqueue_fenced(channel.clone(), message(id, "s", "", "m"), Vec::new(), Some(fence), None).unwrap()
    };
    set_claim(&a, &claim(1, 1));
    set_claim(&a, &other_claim);
    for id in 1..=2 {
        assert_eq!(append(&node1, &g, claim(1, 1), id).await.unwrap().ids(), (id, id as u64));
    }
    // Node 2 takes the channel over and appends from where node 1 stopped.
    set_claim(&a, &claim(2, 2));
    assert_eq!(append(&node2, &g, claim(2, 2), 3).await.unwrap().ids(), (3, 3));
    // Node 1's appends under its old claim are refused; its other channel's are not,
    // whether or not they share a batch.
    // (The first refusal empties node 1's counters, so its second try takes seq 4,
    // which no row holds yet: only the claim refuses it.)
    for _ in 0..2 {
        let stale = append(&node1, &g, claim(1, 1), 4);
        let fine = append(&node1, &other, other_claim.clone(), 5);
        assert!(matches!(stale.await, Err(StoreError::Conflict(_))));
        fine.await.unwrap();
    }
    assert_eq!(node1.last_seq(&other).unwrap(), 2);
    // Node 1 claims the channel back: its counter is reloaded, not reused.
    set_claim(&a, &claim(1, 3));
    assert_eq!(append(&node1, &g, claim(1, 3), 6).await.unwrap().ids(), (6, 4));
    assert!(matches!(append(&node2, &g, claim(2, 2), 7).await, Err(StoreError::Conflict(_))));
    let stored: Vec<(i64, u64)> = node1
        .read(&g, 1, 0, usize::MAX, Order::Ascending)
        .unwrap()
        .iter()
        .map(|m| (m.message.message_id, m.seq))
        .collect();
    assert_eq!(stored, [(1, 1), (2, 2), (3, 3), (6, 4)]);
    assert_eq!(node1.read(&other, 1, 0, 9, Order::Ascending).unwrap().len(), 2);
    assert!(!node1.has_failed() && !node2.has_failed());
}
