//! The directory: user profiles, member roles, and threads (sub-channels of a group).
//!
//! What the admin dialects (OpenIM's users and groups, Easemob's threads) keep beyond
//! WuKongIM's channels and lists. Thread membership itself is the thread channel's
//! subscriber list; this module keeps what makes a channel a thread.

use crate::backend::{Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::tables::{FORMAT_V1, corrupt, list_prefix};
use crate::{Result, Store, StoreError};

/// What a user is called and how to reach them. Every field is optional in practice:
/// empty strings and zeros mean "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserProfile {
    /// Display name.
    pub name: String,
    /// Avatar URL.
    pub avatar: String,
    /// 0 unknown, 1 male, 2 female (as the app defines it).
    pub gender: i32,
    /// Phone number.
    pub mobile: String,
    /// Birthday, as the app writes it (OpenIM v2 sends a string).
    pub birth: String,
    /// E-mail address.
    pub email: String,
    /// Free-form extension data of the app.
    pub ex: String,
}

/// What a group is called and who made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupProfile {
    /// Display name.
    pub name: String,
    /// Pinned notice.
    pub notification: String,
    /// Description.
    pub introduction: String,
    /// Avatar URL.
    pub face_url: String,
    /// Free-form extension data of the app.
    pub ex: String,
    /// Who created it (an admin's uid for admin-created groups).
    pub creator: String,
    /// When it was created, milliseconds since the epoch.
    pub created_ms: i64,
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An ordinary member.
    #[default]
    Member,
    /// Manages members and threads.
    Admin,
    /// Created the group; one per group.
    Owner,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Self::Member => 0,
            Self::Admin => 1,
            Self::Owner => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Member,
            1 => Self::Admin,
            2 => Self::Owner,
            _ => return None,
        })
    }
}

/// A thread: a sub-channel of a group, started from one of its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    /// The thread's id; its messages live in the group channel (type 2) of that id.
    pub id: String,
    /// The group it belongs to.
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// The member who created it.
    pub owner: String,
    /// The group message it was started from.
    pub message_id: String,
    /// When it was created, milliseconds since the epoch.
    pub created_ms: i64,
    /// Who it belongs to among the tenants of a dialect that has several (the Easemob
    /// app `org/app` that created it); empty when it belongs to none (created through a
    /// dialect without tenants, or before threads had one), and then every tenant sees it.
    pub tenant: String,
}

fn str16_checked(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<()> {
    if s.len() > usize::from(u16::MAX) {
        return Err(StoreError::TooLong { what });
    }
    push_str16(out, s);
    Ok(())
}

fn encode_profile(p: &UserProfile) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(32 + p.name.len() + p.avatar.len() + p.ex.len());
    v.push(FORMAT_V1);
    v.extend_from_slice(&p.gender.to_be_bytes());
    for (s, what) in [
        (&p.birth, "profile birth"),
        (&p.name, "profile name"),
        (&p.avatar, "profile avatar"),
        (&p.mobile, "profile mobile"),
        (&p.email, "profile email"),
        (&p.ex, "profile ex"),
    ] {
        str16_checked(&mut v, s, what)?;
    }
    Ok(v)
}

fn decode_profile(value: &[u8]) -> Result<UserProfile> {
    let bad = || corrupt(Table::UidProfile, "profile");
    let mut r = ValueReader { rest: value };
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    let gender = r.u32().ok_or_else(bad)? as i32;
    let mut text = || r.str16().map(str::to_owned).ok_or_else(bad);
    // The order encode_profile writes them in.
    let birth = text()?;
    Ok(UserProfile { gender, birth, name: text()?, avatar: text()?, mobile: text()?, email: text()?, ex: text()? })
}

fn encode_group(g: &GroupProfile) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(32 + g.name.len() + g.notification.len() + g.introduction.len() + g.ex.len());
    v.push(FORMAT_V1);
    v.extend_from_slice(&g.created_ms.to_be_bytes());
    for (s, what) in [
        (&g.name, "group name"),
        (&g.notification, "group notification"),
        (&g.introduction, "group introduction"),
        (&g.face_url, "group face_url"),
        (&g.ex, "group ex"),
        (&g.creator, "group creator"),
    ] {
        str16_checked(&mut v, s, what)?;
    }
    Ok(v)
}

fn decode_group(value: &[u8]) -> Result<GroupProfile> {
    let bad = || corrupt(Table::GroupProfile, "group");
    let mut r = ValueReader { rest: value };
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    let created_ms = r.i64().ok_or_else(bad)?;
    let mut text = || r.str16().map(str::to_owned).ok_or_else(bad);
    Ok(GroupProfile {
        created_ms,
        name: text()?,
        notification: text()?,
        introduction: text()?,
        face_url: text()?,
        ex: text()?,
        creator: text()?,
    })
}

fn encode_thread(t: &Thread) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(16 + t.group_id.len() + t.name.len() + t.owner.len() + t.message_id.len());
    v.push(FORMAT_V1);
    v.extend_from_slice(&t.created_ms.to_be_bytes());
    for (s, what) in [(&t.group_id, "thread group"), (&t.name, "thread name"), (&t.owner, "thread owner")] {
        str16_checked(&mut v, s, what)?;
    }
    str16_checked(&mut v, &t.message_id, "thread message id")?;
    str16_checked(&mut v, &t.tenant, "thread tenant")?;
    Ok(v)
}

fn decode_thread(id: &str, value: &[u8]) -> Result<Thread> {
    let bad = || corrupt(Table::ThreadInfo, "thread");
    let mut r = ValueReader { rest: value };
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    let created_ms = r.i64().ok_or_else(bad)?;
    let mut text = || r.str16().map(str::to_owned).ok_or_else(bad);
    let (group_id, name, owner, message_id) = (text()?, text()?, text()?, text()?);
    // Rows written before threads had a tenant end here.
    let tenant = if r.rest.is_empty() { String::new() } else { r.str16().map(str::to_owned).ok_or_else(bad)? };
    Ok(Thread { id: id.to_owned(), created_ms, group_id, name, owner, message_id, tenant })
}

fn group_thread_prefix(group_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + group_id.len());
    push_str16(&mut key, group_id);
    key
}

impl Store {
    /// `uid`'s profile, if one was ever set.
    pub fn profile(&self, uid: &str) -> Result<Option<UserProfile>> {
        self.kv().get(Table::UidProfile, uid.as_bytes())?.map(|v| decode_profile(&v)).transpose()
    }

    /// Sets `uid`'s profile, durably.
    pub fn put_profile(&self, uid: &str, profile: &UserProfile) -> Result<()> {
        let value = encode_profile(profile)?;
        self.kv().write(vec![Write::Put(Table::UidProfile, uid.as_bytes().to_vec(), value)], true)
    }

    /// Uids with a profile, sorted, after `after` (exclusive; "" from the start), at
    /// most `limit`.
    pub fn profile_uids(&self, after: &str, limit: usize) -> Result<Vec<String>> {
        let mut start = after.as_bytes().to_vec();
        if !after.is_empty() {
            start.push(0);
        }
        // Uids are at most 255 bytes, so 256 bytes of 0xff sort after every one.
        self.kv()
            .scan_range(Table::UidProfile, &start, &[0xff; 256], limit, crate::Order::Ascending)?
            .into_iter()
            .map(|(key, _)| String::from_utf8(key).map_err(|_| corrupt(Table::UidProfile, "uid")))
            .collect()
    }

    /// The profile of group `id`, if one was set.
    pub fn group_profile(&self, id: &str) -> Result<Option<GroupProfile>> {
        self.kv().get(Table::GroupProfile, id.as_bytes())?.map(|v| decode_group(&v)).transpose()
    }

    /// The write that sets group `id`'s profile, to batch with others.
    pub fn group_profile_write(&self, id: &str, group: &GroupProfile) -> Result<Write> {
        Ok(Write::Put(Table::GroupProfile, id.as_bytes().to_vec(), encode_group(group)?))
    }

    /// Every uid with a device token or a profile (a registered user), sorted, at most
    /// `limit`.
    pub fn registered_uids(&self, limit: usize) -> Result<Vec<String>> {
        let mut uids = std::collections::BTreeSet::new();
        for (key, _) in self.kv().scan_prefix(Table::UidProfile, b"", limit)? {
            uids.insert(String::from_utf8(key).map_err(|_| corrupt(Table::UidProfile, "uid"))?);
        }
        // Device keys are [len][uid][flag].
        for (key, _) in self.kv().scan_prefix(Table::UidDevice, b"", usize::MAX)? {
            let mut r = ValueReader { rest: &key };
            let uid = r.str16().ok_or_else(|| corrupt(Table::UidDevice, "key"))?;
            uids.insert(uid.to_owned());
        }
        Ok(uids.into_iter().take(limit).collect())
    }

    /// Forgets everything the directory keeps about `uid` (profile), durably.
    pub fn remove_profile(&self, uid: &str) -> Result<()> {
        self.kv().write(vec![self.profile_removal_write(uid)], true)
    }

    /// The write of [`Store::remove_profile`], to batch.
    pub fn profile_removal_write(&self, uid: &str) -> Write {
        Write::Delete(Table::UidProfile, uid.as_bytes().to_vec())
    }

    /// The non-ordinary members of a channel and their roles, in uid order.
    pub fn roles(&self, channel_id: &str, channel_type: u8) -> Result<Vec<(String, Role)>> {
        let prefix = list_prefix(channel_id, channel_type);
        self.kv()
            .scan_prefix(Table::ChanUidRole, &prefix, usize::MAX)?
            .into_iter()
            .map(|(key, value)| {
                let bad = || corrupt(Table::ChanUidRole, "role");
                let uid = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| bad())?.to_owned();
                match value.as_slice() {
                    [FORMAT_V1, b] => Ok((uid, Role::from_u8(*b).ok_or_else(bad)?)),
                    _ => Err(bad()),
                }
            })
            .collect()
    }

    /// The writes that give `uid` `role` in a channel (ordinary members have no row).
    pub fn role_write(&self, channel_id: &str, channel_type: u8, uid: &str, role: Role) -> Write {
        let mut key = list_prefix(channel_id, channel_type);
        key.extend_from_slice(uid.as_bytes());
        match role {
            Role::Member => Write::Delete(Table::ChanUidRole, key),
            other => Write::Put(Table::ChanUidRole, key, vec![FORMAT_V1, other.to_u8()]),
        }
    }

    /// Applies `writes` atomically and durably.
    pub fn apply(&self, writes: Vec<Write>) -> Result<()> {
        self.kv().write(writes, true)
    }

    /// The thread `id`, if it exists.
    pub fn thread(&self, id: &str) -> Result<Option<Thread>> {
        self.kv().get(Table::ThreadInfo, id.as_bytes())?.map(|v| decode_thread(id, &v)).transpose()
    }

    /// The writes that record `thread` (and index it under its group).
    pub fn thread_writes(&self, thread: &Thread) -> Result<Vec<Write>> {
        let mut index = group_thread_prefix(&thread.group_id);
        index.extend_from_slice(thread.id.as_bytes());
        Ok(vec![
            Write::Put(Table::ThreadInfo, thread.id.as_bytes().to_vec(), encode_thread(thread)?),
            Write::Put(Table::GroupThread, index, vec![FORMAT_V1]),
        ])
    }

    /// The writes that forget `thread`.
    pub fn thread_removal(&self, thread: &Thread) -> Vec<Write> {
        let mut index = group_thread_prefix(&thread.group_id);
        index.extend_from_slice(thread.id.as_bytes());
        vec![Write::Delete(Table::ThreadInfo, thread.id.as_bytes().to_vec()), Write::Delete(Table::GroupThread, index)]
    }

    /// Every thread, in id order.
    pub fn all_threads(&self) -> Result<Vec<Thread>> {
        self.kv()
            .scan_prefix(Table::ThreadInfo, b"", usize::MAX)?
            .into_iter()
            .map(|(key, value)| {
                let id = std::str::from_utf8(&key).map_err(|_| corrupt(Table::ThreadInfo, "thread id"))?;
                decode_thread(id, &value)
            })
            .collect()
    }

    /// The ids of a group's threads, in id order.
    pub fn group_threads(&self, group_id: &str) -> Result<Vec<String>> {
        let prefix = group_thread_prefix(group_id);
        self.kv()
            .scan_prefix(Table::GroupThread, &prefix, usize::MAX)?
            .into_iter()
            .map(|(key, _)| {
                std::str::from_utf8(&key[prefix.len()..])
                    .map(str::to_owned)
                    .map_err(|_| corrupt(Table::GroupThread, "thread id"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FjallBackend, MemoryBackend};
    use std::sync::Arc;

    fn conformance(store: &Store) {
        assert_eq!(store.profile("u").unwrap(), None);
        let p = UserProfile {
            name: "Ann".into(),
            avatar: "https://a/1.png".into(),
            gender: 2,
            mobile: "+86 1".into(),
            birth: "1999-01-01".into(),
            email: "ann@example.com".into(),
            ex: "{\"vip\":true}".into(),
        };
        store.put_profile("u", &p).unwrap();
        assert_eq!(store.profile("u").unwrap(), Some(p));
        let huge = UserProfile { ex: "x".repeat(70_000), ..UserProfile::default() };
        assert!(matches!(store.put_profile("v", &huge), Err(StoreError::TooLong { .. })));
        store.put_profile("u1", &UserProfile::default()).unwrap();
        store.put_profile("w", &UserProfile::default()).unwrap();
        assert_eq!(store.profile_uids("", 10).unwrap(), ["u", "u1", "w"]);
        assert_eq!(store.profile_uids("u", 10).unwrap(), ["u1", "w"]);
        assert_eq!(store.profile_uids("", 2).unwrap(), ["u", "u1"]);
        store.remove_profile("u").unwrap();
        assert_eq!(store.profile("u").unwrap(), None);
        assert_eq!(store.profile_uids("", 10).unwrap(), ["u1", "w"]);
        store.put_device("dev", 1, &crate::Device::new("t", hongyan_proto::DeviceLevel::Slave)).unwrap();
        assert_eq!(store.registered_uids(10).unwrap(), ["dev", "u1", "w"]);
        assert_eq!(store.registered_uids(2).unwrap(), ["dev", "u1"]);

        let group =
            GroupProfile { name: "Team".into(), creator: "admin".into(), created_ms: 5, ..GroupProfile::default() };
        store.apply(vec![store.group_profile_write("g", &group).unwrap()]).unwrap();
        assert_eq!(store.group_profile("g").unwrap(), Some(group));
        assert_eq!(store.group_profile("h").unwrap(), None);

        store
            .apply(vec![
                store.role_write("g", 2, "boss", Role::Owner),
                store.role_write("g", 2, "mod", Role::Admin),
                store.role_write("g2", 2, "x", Role::Admin),
            ])
            .unwrap();
        assert_eq!(store.roles("g", 2).unwrap(), [("boss".into(), Role::Owner), ("mod".into(), Role::Admin)]);
        store.apply(vec![store.role_write("g", 2, "mod", Role::Member)]).unwrap();
        assert_eq!(store.roles("g", 2).unwrap(), [("boss".into(), Role::Owner)]);

        let t = Thread {
            id: "t1".into(),
            group_id: "g".into(),
            name: "launch".into(),
            owner: "boss".into(),
            message_id: "123".into(),
            created_ms: 1_700_000_000_000,
            tenant: "acme/chat".into(),
        };
        store.apply(store.thread_writes(&t).unwrap()).unwrap();
        let t2 = Thread { id: "t2".into(), ..t.clone() };
        store.apply(store.thread_writes(&t2).unwrap()).unwrap();
        assert_eq!(store.thread("t1").unwrap(), Some(t.clone()));
        assert_eq!(store.group_threads("g").unwrap(), ["t1", "t2"]);
        assert_eq!(store.all_threads().unwrap().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
        assert!(store.group_threads("g2").unwrap().is_empty());
        // A row from before threads had a tenant reads as belonging to none.
        let mut old = encode_thread(&Thread { tenant: String::new(), ..t.clone() }).unwrap();
        old.truncate(old.len() - 2);
        store.apply(vec![Write::Put(Table::ThreadInfo, b"t0".to_vec(), old)]).unwrap();
        assert_eq!(store.thread("t0").unwrap().map(|t| t.tenant), Some(String::new()));
        store.apply(store.thread_removal(&t)).unwrap();
        assert_eq!(store.thread("t1").unwrap(), None);
        assert_eq!(store.group_threads("g").unwrap(), ["t2"]);
    }

    #[test]
    fn directory_on_both_backends() {
        conformance(&Store::new(Arc::new(MemoryBackend::new())));
        let dir = tempfile::tempdir().unwrap();
        conformance(&Store::new(Arc::new(FjallBackend::open(dir.path()).unwrap())));
    }
}
