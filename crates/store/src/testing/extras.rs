//! The message extras' contract: versions, sync, read marks and reactions, racing
//! writers, and forgetting with the messages.

use crate::{ChannelKey, ExtraChange, Store, StoreError, Table, Write};

/// Message extras: each change takes the channel's next version, a message's older
/// version is forgotten, a sync after a version returns each changed message once in
/// its latest state, and writers racing on one channel (on two connections where the
/// backend has them) never give a version twice.
pub fn extras_contract(a: &Store, b: &Store) {
    let chan = ChannelKey::new("g-extras", 2);
    let other = ChannelKey::new("g-other", 2);
    let race = ChannelKey::new("g-race", 2);
    // Stand-ins for the stored messages, their id index rows (message id → message
    // key): a change commits only while its message is stored.
    let message_row = |c: &ChannelKey, seq: u64, id: i64| {
        Write::Put(Table::MsgIdChanSeq, id.to_be_bytes().to_vec(), c.message_key(seq))
    };
    let rows =
        [(&chan, 1, 101), (&chan, 2, 102), (&other, 5, 105)].into_iter().chain((1..=10).map(|s| (&race, s, s as i64)));
    a.apply(rows.map(|(c, s, id)| message_row(c, s, id)).collect()).unwrap();
    assert_eq!(a.extra_version(&chan).unwrap(), 0);
    let revoke = |by: &'static str| {
        move |e: &mut crate::MessageExtra| -> Result<ExtraChange, StoreError> {
            if e.revoked {
                return Ok(ExtraChange::Unchanged);
            }
            e.revoked = true;
            e.revoker = by.into();
            Ok(ExtraChange::Changed(Vec::new()))
        }
    };
    // No message, no change; nor when the message goes (retention) while it is decided.
    assert_eq!(a.change_extra(&chan, 3, 103, revoke("ann")).unwrap(), None);
    assert_eq!(a.change_extra(&chan, 1, 102, revoke("ann")).unwrap(), None, "an id is its own message's only");
    let mut removed = false;
    let gone = a.change_extra(&chan, 2, 102, |e: &mut crate::MessageExtra| {
        if !removed {
            removed = true;
            b.apply(vec![Write::Delete(Table::MsgIdChanSeq, 102i64.to_be_bytes().to_vec())])?;
        }
        revoke("ann")(e)
    });
    assert_eq!(gone.unwrap(), None, "a change does not outlive its message");
    assert_eq!((a.extra_version(&chan).unwrap(), a.message_extra(&chan, 2).unwrap()), (0, None));
    a.apply(vec![message_row(&chan, 2, 102)]).unwrap();
    let first = a.change_extra(&chan, 1, 101, revoke("ann")).unwrap().unwrap();
    assert_eq!((first.version, first.message_id, first.seq, first.revoked), (1, 101, 1, true));
    // Nothing to change: nothing written, the stored state returned.
    assert_eq!(b.change_extra(&chan, 1, 101, revoke("bob")).unwrap(), Some(first));
    let edit = |text: &'static str| {
        move |e: &mut crate::MessageExtra| -> Result<ExtraChange, StoreError> {
            e.edited_payload = Some(text.as_bytes().to_vec());
            e.edited_at_ms = 7;
            Ok(ExtraChange::Changed(Vec::new()))
        }
    };
    assert_eq!(b.change_extra(&chan, 2, 102, edit("v1")).unwrap().unwrap().version, 2);
    assert_eq!(a.change_extra(&other, 5, 105, edit("x")).unwrap().unwrap().version, 1, "versions are per channel");
    let again = a.change_extra(&chan, 1, 101, edit("after")).unwrap().unwrap();
    assert_eq!((again.version, again.revoked, again.revoker.as_str()), (3, true, "ann"));
    // A refusal writes nothing.
    let refused = b.change_extra(&chan, 2, 102, |_| Err::<ExtraChange, _>(StoreError::Busy("refused")));
    assert!(matches!(refused, Err(StoreError::Busy("refused"))));
    assert_eq!(b.extra_version(&chan).unwrap(), 3);
    let since = |s: &Store, v| s.extras_since(&chan, v, 100).unwrap();
    let all = since(b, 0);
    assert_eq!(all.iter().map(|e| (e.seq, e.version)).collect::<Vec<_>>(), [(2, 2), (1, 3)]);
    assert_eq!(all[1].edited_payload.as_deref(), Some(&b"after"[..]));
    assert_eq!(since(a, 2).len(), 1);
    assert!(since(a, 3).is_empty());
    assert!(a.extras_since(&chan, u64::MAX, 10).unwrap().is_empty());
    assert_eq!(a.extras_since(&chan, 0, 1).unwrap().len(), 1, "the limit holds");
    let between = |first, last| a.extras_between(&chan, first, last).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!((between(1, 2), between(2, 9), between(3, 9), between(2, 1)), (vec![1, 2], vec![2], vec![], vec![]));
    assert_eq!(a.extras_between(&other, 1, u64::MAX).unwrap().len(), 1, "one channel's only");
    assert_eq!(
        a.message_extras(&chan, &[2, 9, 1]).unwrap().iter().map(|e| e.as_ref().map(|e| e.version)).collect::<Vec<_>>(),
        [Some(2), None, Some(3)]
    );

    // Racing writers: 4 threads, 2 stores, 10 messages, 80 changes.
    let enforced = a.backend().enforces_inserts();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let store = if t % 2 == 0 { a } else { b };
            let race = &race;
            scope.spawn(move || {
                for i in 0..20u64 {
                    let seq = 1 + (t * 7 + i) % 10;
                    let bump = |e: &mut crate::MessageExtra| -> Result<ExtraChange, StoreError> {
                        e.edited_at_ms += 1;
                        Ok(ExtraChange::Changed(Vec::new()))
                    };
                    if enforced {
                        store.change_extra_unserialised(race, seq, seq as i64, bump).unwrap();
                    } else {
                        store.change_extra(race, seq, seq as i64, bump).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(a.extra_version(&race).unwrap(), 80, "every change took one version");
    let latest = a.extras_since(&race, 0, 100).unwrap();
    assert_eq!(latest.len(), 10, "each message once");
    assert_eq!(latest.iter().map(|e| e.edited_at_ms).sum::<i64>(), 80, "no change lost");
    assert!(latest.windows(2).all(|w| w[0].version < w[1].version));

    // Read marks: counted once per reader, even when two connections race the same one.
    let read = |store: &Store, uid: &'static str| {
        store
            .change_extra(&chan, 2, 102, |e: &mut crate::MessageExtra| {
                if store.read_marks(&chan, &[2], uid)?[0].is_some() {
                    return Ok(ExtraChange::Unchanged);
                }
                e.readed_count += 1;
                Ok::<_, StoreError>(ExtraChange::Changed(vec![store.read_mark_write(&chan, 2, uid, 1_000)]))
            })
            .unwrap()
            .unwrap()
    };
    assert_eq!(read(a, "zed").readed_count, 1);
    assert_eq!(read(b, "zed").readed_count, 1, "a second mark of one read counts nothing");
    assert_eq!(read(b, "amy").readed_count, 2);
    assert_eq!(a.read_marks(&chan, &[2, 1], "amy").unwrap(), [Some(1_000), None]);
    assert_eq!(a.readers(&chan, 2, "", 10).unwrap(), [("amy".to_owned(), 1_000), ("zed".to_owned(), 1_000)]);
    assert_eq!(a.readers(&chan, 2, "amy", 10).unwrap(), [("zed".to_owned(), 1_000)]);
    assert_eq!(a.readers(&chan, 2, "", 1).unwrap().len(), 1);
    assert!(a.readers(&chan, 1, "", 10).unwrap().is_empty());
    if enforced {
        // Without the process lock, the database refuses the second insert of a mark.
        std::thread::scope(|scope| {
            for store in [a, b, a, b] {
                let chan = &chan;
                scope.spawn(move || {
                    store
                        .change_extra_unserialised(chan, 2, 102, |e: &mut crate::MessageExtra| {
                            if store.read_marks(chan, &[2], "kim")?[0].is_some() {
                                return Ok(ExtraChange::Unchanged);
                            }
                            e.readed_count += 1;
                            Ok::<_, StoreError>(ExtraChange::Changed(vec![store.read_mark_write(chan, 2, "kim", 5)]))
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(a.message_extra(&chan, 2).unwrap().unwrap().readed_count, 3, "kim counted once");
    }

    // Reactions: a mark per (user, kind), the count per kind in the extra; a removal
    // raced by two connections is counted once.
    let react = |store: &Store, uid: &'static str, kind: &'static str, add: bool, unserialised: bool| {
        let change = |e: &mut crate::MessageExtra| {
            let stored = store.reaction(&chan, 2, uid, kind)?;
            let write = match (add, stored) {
                (true, None) => crate::ReactionWrite::Add { at_ms: 9 },
                (false, Some(stored_at_ms)) => crate::ReactionWrite::Remove { stored_at_ms },
                _ => return Ok(ExtraChange::Unchanged),
            };
            match e.reactions.iter().position(|(k, _)| k == kind) {
                Some(i) if add => e.reactions[i].1 += 1,
                Some(i) => {
                    e.reactions[i].1 -= 1;
                    if e.reactions[i].1 == 0 {
                        e.reactions.remove(i);
                    }
                }
                None => e.reactions.push((kind.to_owned(), 1)),
            }
            e.reactions.sort();
            Ok::<_, StoreError>(ExtraChange::Changed(store.reaction_writes(&chan, 2, uid, kind, write)))
        };
        if unserialised {
            store.change_extra_unserialised(&chan, 2, 102, change).unwrap().unwrap()
        } else {
            store.change_extra(&chan, 2, 102, change).unwrap().unwrap()
        }
    };
    react(a, "amy", "👍", true, false);
    react(b, "zed", "👍", true, false);
    react(b, "zed", "👍", true, false);
    let e = react(a, "amy", "ok", true, false);
    assert_eq!(e.reactions, [("ok".to_owned(), 1), ("👍".to_owned(), 2)]);
    assert_eq!(a.reactions_by(&chan, &[2, 1], "amy").unwrap(), [vec!["ok".to_owned(), "👍".to_owned()], vec![]]);
    let all = a.reactions_to(&chan, 2, None, 10).unwrap();
    let pairs: Vec<(&str, &str)> = all.iter().map(|r| (r.uid.as_str(), r.kind.as_str())).collect();
    assert_eq!(pairs, [("amy", "ok"), ("amy", "👍"), ("zed", "👍")]);
    assert_eq!(a.reactions_to(&chan, 2, Some(("amy", "👍")), 10).unwrap().len(), 1, "paged after a reaction");
    std::thread::scope(|scope| {
        for store in [a, b, a, b] {
            scope.spawn(move || react(store, "zed", "👍", false, enforced));
        }
    });
    let e = a.message_extra(&chan, 2).unwrap().unwrap();
    assert_eq!(e.reactions, [("ok".to_owned(), 1), ("👍".to_owned(), 1)], "zed's removal counted once");
    assert_eq!(a.reaction(&chan, 2, "zed", "👍").unwrap(), None);

    // Forgetting with the messages.
    let writes = a.extras_removal_writes(&chan, 1).unwrap();
    a.apply(writes).unwrap();
    assert_eq!(since(a, 0).iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let writes = a.extras_removal_writes(&chan, 2).unwrap();
    a.apply(writes).unwrap();
    assert!(a.readers(&chan, 2, "", 10).unwrap().is_empty(), "read marks go with their messages");
    assert!(a.reactions_to(&chan, 2, None, 10).unwrap().is_empty(), "reactions too");
    assert_eq!(a.message_extra(&chan, 1).unwrap(), None);
}
