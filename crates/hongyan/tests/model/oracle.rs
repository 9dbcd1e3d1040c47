//! The oracle of the model test: what the server should have done, kept by rules
//! written again here, independently of the core.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hongyan_proto::ReasonCode;
use serde_json::{Value, json};

use crate::common::b64;

/// A stored message as the oracle knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    /// The server's id, from the SENDACK.
    pub(crate) message_id: i64,
    pub(crate) from: String,
    pub(crate) client_msg_no: String,
    pub(crate) text: String,
}

/// What happened to a stored message after it was stored, as the oracle knows it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extra {
    pub(crate) version: u64,
    pub(crate) revoker: Option<String>,
    pub(crate) edited: Option<String>,
    pub(crate) readers: BTreeSet<String>,
    /// kind → who gave it.
    pub(crate) reactions: BTreeMap<String, BTreeSet<String>>,
}

/// A change to a stored message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChangeKind {
    Revoke,
    Edit,
    Read,
    React { kind: &'static str, add: bool },
}

/// What the oracle believes.
#[derive(Default)]
pub(crate) struct Oracle {
    pub(crate) members: BTreeMap<&'static str, BTreeSet<&'static str>>,
    pub(crate) group_blacklist: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// owner → uids it blocks.
    pub(crate) person_blacklist: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// channel key (as the server stores it) → messages.
    pub(crate) log: BTreeMap<String, Vec<Stored>>,
    /// (channel, from, client_msg_no) → seq.
    pub(crate) sent: HashMap<(String, String, String), u64>,
    /// (uid, channel) → read cursor, for rows that exist.
    pub(crate) cursors: BTreeMap<(String, String), u64>,
    /// channel → seq → its extra, for messages that were changed.
    pub(crate) extras: BTreeMap<String, BTreeMap<u64, Extra>>,
    /// channel → its extra version.
    pub(crate) versions: BTreeMap<String, u64>,
}

pub(crate) fn person_key(a: &str, b: &str) -> String {
    hongyan_core::channel::person_channel_id(a, b)
}

impl Oracle {
    /// The SENDACK reason and, on success, the seq (the original's for a resend) and
    /// whether it is new.
    pub(crate) fn send(
        &mut self,
        from: &'static str,
        to: &'static str,
        group: bool,
        cmn: &str,
        text: &str,
    ) -> (ReasonCode, u64, bool) {
        let key = if group { to.to_owned() } else { person_key(from, to) };
        if group {
            if self.group_blacklist.get(to).is_some_and(|b| b.contains(from)) {
                return (ReasonCode::InBlacklist, 0, false);
            }
            if !self.members.get(to).is_some_and(|m| m.contains(from)) {
                return (ReasonCode::SubscriberNotExist, 0, false);
            }
        } else if self.person_blacklist.get(to).is_some_and(|b| b.contains(from)) {
            return (ReasonCode::InBlacklist, 0, false);
        }
        if let Some(seq) = self.sent.get(&(key.clone(), from.to_owned(), cmn.to_owned())) {
            return (ReasonCode::Success, *seq, false);
        }
        let log = self.log.entry(key.clone()).or_default();
        let seq = log.len() as u64 + 1;
        log.push(Stored {
            seq,
            message_id: 0,
            from: from.to_owned(),
            client_msg_no: cmn.to_owned(),
            text: text.to_owned(),
        });
        self.sent.insert((key.clone(), from.to_owned(), cmn.to_owned()), seq);
        if !group {
            for uid in [from, to] {
                self.cursors.entry((uid.to_owned(), key.clone())).or_insert(0);
            }
        }
        (ReasonCode::Success, seq, true)
    }

    pub(crate) fn recipients(&self, from: &'static str, to: &'static str, group: bool) -> Vec<&'static str> {
        if group {
            self.members.get(to).map(|m| m.iter().copied().collect()).unwrap_or_default()
        } else {
            vec![from, to]
        }
    }

    pub(crate) fn join(&mut self, group: &'static str, uid: &'static str) {
        self.members.entry(group).or_default().insert(uid);
        let last = self.log.get(group).map_or(0, |l| l.len() as u64);
        self.cursors.entry((uid.to_owned(), group.to_owned())).or_insert(last);
    }

    /// Applies `change` by `operator` (`None`: the app server) to message `seq` of
    /// `key` by the core's rules: `Err` when it is refused, else its extra afterwards
    /// and whether it changed (a new version).
    pub(crate) fn change(
        &mut self,
        key: &str,
        seq: u64,
        operator: Option<&str>,
        change: ChangeKind,
        text: &str,
    ) -> Result<(Extra, bool), ()> {
        let sender = self.log[key][seq as usize - 1].from.clone();
        let person = hongyan_core::channel::person_channel_members(key);
        if let Some(uid) = operator {
            if person.is_some_and(|(a, b)| a != uid && b != uid) {
                return Err(());
            }
            if uid != sender {
                let member = person.is_some() || self.members.get(key).is_some_and(|m| m.contains(uid));
                match change {
                    ChangeKind::Read | ChangeKind::React { .. } if member => {}
                    // No system accounts, owners or admins in this workload.
                    _ => return Err(()),
                }
            }
        }
        let mut extra = self.extras.get(key).and_then(|e| e.get(&seq)).cloned().unwrap_or_default();
        let changed = match (change, operator) {
            (ChangeKind::Revoke, _) if extra.revoker.is_some() => false,
            (ChangeKind::Revoke, _) => {
                extra.revoker = Some(operator.unwrap_or_default().to_owned());
                true
            }
            (ChangeKind::Edit | ChangeKind::React { .. }, _) if extra.revoker.is_some() => return Err(()),
            (ChangeKind::Edit, _) => {
                extra.edited = Some(text.to_owned());
                true
            }
            (ChangeKind::Read, Some(uid)) if uid != sender => extra.readers.insert(uid.to_owned()),
            (ChangeKind::Read, _) => false,
            (ChangeKind::React { kind, add }, Some(uid)) => {
                let givers = extra.reactions.entry(kind.to_owned()).or_default();
                let changed = if add { givers.insert(uid.to_owned()) } else { givers.remove(uid) };
                if givers.is_empty() {
                    extra.reactions.remove(kind);
                }
                changed
            }
            (ChangeKind::React { .. }, None) => return Err(()),
        };
        if changed {
            let version = self.versions.entry(key.to_owned()).or_default();
            *version += 1;
            extra.version = *version;
            self.extras.entry(key.to_owned()).or_default().insert(seq, extra.clone());
        }
        Ok((extra, changed))
    }

    /// Unread per the cursor model: others' messages after the cursor and after the
    /// user's own latest message.
    pub(crate) fn unread(&self, uid: &str, key: &str) -> u64 {
        let cursor = self.cursors.get(&(uid.to_owned(), key.to_owned())).copied().unwrap_or(0);
        let log = self.log.get(key).map(Vec::as_slice).unwrap_or_default();
        log.iter().rev().take_while(|m| m.seq > cursor && m.from != uid).count() as u64
    }
}

/// `key` as `viewer` names it in a request: (channel_id, channel_type).
pub(crate) fn named(key: &str, viewer: &str) -> (String, u8) {
    match hongyan_core::channel::person_channel_members(key) {
        Some((a, b)) => ((if a == viewer { b } else { a }).to_owned(), 1),
        None => (key.to_owned(), 2),
    }
}

/// [`extra_fields`] as the oracle expects them.
pub(crate) fn oracle_fields(e: &Extra) -> Value {
    let reactions: Vec<Value> =
        e.reactions.iter().map(|(kind, givers)| json!({"emoji": kind, "count": givers.len()})).collect();
    json!({
        "extra_version": e.version, "revoke": u8::from(e.revoker.is_some()),
        "revoker": e.revoker.clone().unwrap_or_default(),
        "content_edit": e.edited.as_deref().map(b64), "readed_count": e.readers.len(), "reactions": reactions,
    })
}
