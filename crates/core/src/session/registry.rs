//! Who is online: uid → connections, and WuKongIM's rules for which logins replace
//! which.
//!
//! Kick rules, applied when a new login of (uid, device_flag) registers:
//! * a **master** login kicks every other connection with that device flag: those with
//!   a different device id get DISCONNECT(ConnectKick) and are closed shortly after;
//!   those with the same device id are just closed (the device reconnected);
//! * a **slave** login only replaces connections with the same device id.
//!
//! Replaced connections leave the registry at once, so fan-out and online status stop
//! seeing them before their sockets close.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::quality::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hongyan_proto::DeviceLevel;

use super::conn::Conn;
use super::outbox::HeldBytes;

const SHARDS: usize = 64;

/// What to do with a connection a new login displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Displacement {
    /// Send DISCONNECT(ConnectKick), then close.
    Kick,
    /// Close without a packet (same device reconnected).
    Replace,
}

/// foldhash, seeded per process: several times cheaper than SipHash on the fan-out path
/// (a lookup per member per message), and still not predictable from outside.
type Shard = HashMap<Arc<str>, Vec<Arc<Conn>>, RandomState>;

/// The connection registry of this node.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    next_id: AtomicU64,
    len: AtomicUsize,
    /// Distinct uids online.
    users: AtomicUsize,
    /// The budget every connection's outbox counts against.
    held: Arc<HeldBytes>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry whose connections have no node-wide budget.
    pub fn new() -> Self {
        Self::with_held_budget(HeldBytes::unlimited())
    }

    /// An empty registry whose connections' outboxes count against `held`.
    pub fn with_held_budget(held: Arc<HeldBytes>) -> Self {
        Self {
            held,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            hasher: RandomState::default(),
            next_id: AtomicU64::new(1),
            len: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
        }
    }

    /// The node-wide budget of bytes connections hold.
    pub fn held(&self) -> &Arc<HeldBytes> {
        &self.held
    }

    fn shard(&self, uid: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(uid) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `conn` and returns the connections it displaces, already removed.
    pub fn register(&self, conn: Arc<Conn>) -> Vec<(Arc<Conn>, Displacement)> {
        let mut shard = self.shard(&conn.uid);
        if !shard.contains_key(&conn.uid) {
            self.users.fetch_add(1, Ordering::Relaxed);
        }
        let list = shard.entry(conn.uid.clone()).or_default();
        let mut displaced = Vec::new();
        list.retain(|other| match displacement(other, conn.device_flag, &conn.device_id, conn.level) {
            Some(d) => {
                displaced.push((other.clone(), d));
                false
            }
            None => true,
        });
        list.push(conn);
        drop(shard);
        self.len.fetch_add(1, Ordering::Relaxed);
        self.len.fetch_sub(displaced.len(), Ordering::Relaxed);
        displaced
    }

    /// Removes and returns the connections of `uid` that a login with these properties
    /// on another node displaces, among those opened before `before_ms` (a newer one
    /// is not displaced by an older login whose notice arrived late).
    pub fn displaced_by(
        &self,
        uid: &str,
        device_flag: u8,
        device_id: &str,
        level: DeviceLevel,
        before_ms: i64,
    ) -> Vec<(Arc<Conn>, Displacement)> {
        let mut shard = self.shard(uid);
        let Some(list) = shard.get_mut(uid) else { return Vec::new() };
        let mut displaced = Vec::new();
        list.retain(|other| match displacement(other, device_flag, device_id, level) {
            Some(d) if other.connected_at_ms < before_ms => {
                displaced.push((other.clone(), d));
                false
            }
            _ => true,
        });
        if list.is_empty() {
            shard.remove(uid);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        self.len.fetch_sub(displaced.len(), Ordering::Relaxed);
        displaced
    }

    /// How many of `uid`'s connections would stay online after a login with these
    /// properties (the kick rules displace the rest).
    pub fn count_after_login(&self, uid: &str, device_flag: u8, device_id: &str, level: DeviceLevel) -> usize {
        let shard = self.shard(uid);
        shard.get(uid).map_or(0, |list| {
            list.iter().filter(|other| displacement(other, device_flag, device_id, level).is_none()).count()
        })
    }

    /// Removes `conn` if it is still registered.
    pub fn remove(&self, conn: &Conn) -> bool {
        let mut shard = self.shard(&conn.uid);
        let Some(list) = shard.get_mut(&conn.uid) else { return false };
        let before = list.len();
        list.retain(|c| c.id != conn.id);
        let removed = list.len() < before;
        if list.is_empty() {
            shard.remove(&conn.uid);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes and returns the connections of `uid` with `device_flag` (all flags when
    /// `None`), e.g. to kick them after a token change.
    pub fn take(&self, uid: &str, device_flag: Option<u8>) -> Vec<Arc<Conn>> {
        let mut shard = self.shard(uid);
        let Some(list) = shard.get_mut(uid) else { return Vec::new() };
        let (taken, kept): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|c| device_flag.is_none_or(|f| c.device_flag == f));
        *list = kept;
        if list.is_empty() {
            shard.remove(uid);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        self.len.fetch_sub(taken.len(), Ordering::Relaxed);
        taken
    }

    /// Removes and returns `uid`'s connection `id`, if it is here.
    pub fn take_one(&self, uid: &str, id: u64) -> Option<Arc<Conn>> {
        let mut shard = self.shard(uid);
        let list = shard.get_mut(uid)?;
        let at = list.iter().position(|c| c.id == id)?;
        let conn = list.remove(at);
        if list.is_empty() {
            shard.remove(uid);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(conn)
    }

    /// The online connections of `uid`.
    pub fn connections(&self, uid: &str) -> Vec<Arc<Conn>> {
        self.shard(uid).get(uid).cloned().unwrap_or_default()
    }

    /// Appends the online connections of each of `uids` to `out`: fan-out's lookup,
    /// without a list per uid.
    pub fn extend_with_connections<'a>(&self, uids: impl IntoIterator<Item = &'a str>, out: &mut Vec<Arc<Conn>>) {
        for uid in uids {
            if let Some(conns) = self.shard(uid).get(uid) {
                out.extend(conns.iter().cloned());
            }
        }
    }

    /// Every connection, for admin listings. Takes each shard's lock in turn.
    pub fn all(&self) -> Vec<Arc<Conn>> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.values().flatten().cloned());
        }
        out
    }

    /// The connections of every online uid for which `wanted` holds. Visits each
    /// online uid once (each shard's lock in turn): for fan-out to a group with more
    /// members than there are users online.
    pub fn connections_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<Arc<Conn>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (uid, conns) in shard.iter() {
                if wanted(uid) {
                    out.extend(conns.iter().cloned());
                }
            }
        }
        out
    }

    /// How many distinct uids are online.
    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a login with these properties does to `other`, a connection of the same uid:
/// only the same device flag is affected; the same device id is replaced; a master
/// login kicks the other devices; slave logins coexist.
fn displacement(other: &Conn, device_flag: u8, device_id: &str, level: DeviceLevel) -> Option<Displacement> {
    if other.device_flag != device_flag {
        return None;
    }
    match (level, &*other.device_id == device_id) {
        (_, true) => Some(Displacement::Replace),
        (DeviceLevel::Master, false) => Some(Displacement::Kick),
        (DeviceLevel::Slave, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TransportKind;
    use crate::session::{Outbox, OutboxLimits};
    use hongyan_proto::ProtocolVersion;

    fn conn(reg: &Registry, uid: &str, flag: u8, level: DeviceLevel, device: &str) -> Arc<Conn> {
        Arc::new(Conn {
            id: reg.next_conn_id(),
            uid: uid.into(),
            device_flag: flag,
            level,
            device_id: device.into(),
            version: ProtocolVersion::LATEST,
            cipher: None,
            transport: TransportKind::Tcp,
            remote: "127.0.0.1:1".parse().unwrap(),
            connected_at_ms: 0,
            outbox: Outbox::new(OutboxLimits { max_frames: 4, max_bytes: 1024 }),
            sends_in_flight: tokio::sync::Semaphore::new(8),
        })
    }

    fn ids(v: &[(Arc<Conn>, Displacement)]) -> Vec<(u64, Displacement)> {
        v.iter().map(|(c, d)| (c.id, *d)).collect()
    }

    use DeviceLevel::{Master, Slave};

    #[test]
    fn kick_matrix() {
        let reg = Registry::new();
        let web_a = conn(&reg, "u", 1, Slave, "a");
        let web_b = conn(&reg, "u", 1, Slave, "b");
        let app = conn(&reg, "u", 0, Master, "x");
        assert!(reg.register(web_a.clone()).is_empty());
        assert!(reg.register(web_b.clone()).is_empty(), "slaves with different devices coexist");
        assert!(reg.register(app.clone()).is_empty(), "other device flags are untouched");

        let web_a2 = conn(&reg, "u", 1, Slave, "a");
        assert_eq!(ids(&reg.register(web_a2.clone())), [(web_a.id, Displacement::Replace)]);

        let web_master = conn(&reg, "u", 1, Master, "m");
        let mut displaced = ids(&reg.register(web_master.clone()));
        displaced.sort_unstable_by_key(|d| d.0);
        assert_eq!(displaced, [(web_b.id, Displacement::Kick), (web_a2.id, Displacement::Kick)]);

        let mut online: Vec<u64> = reg.connections("u").iter().map(|c| c.id).collect();
        online.sort_unstable();
        assert_eq!(online, [app.id, web_master.id]);
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn remove_and_take() {
        let reg = Registry::new();
        let a = conn(&reg, "u", 0, Slave, "a");
        let b = conn(&reg, "u", 1, Slave, "b");
        let c = conn(&reg, "v", 1, Slave, "c");
        for x in [&a, &b, &c] {
            reg.register(x.clone());
        }
        assert_eq!(reg.user_count(), 2);
        let mut of_u: Vec<u64> = reg.connections_where(|uid| uid == "u").iter().map(|c| c.id).collect();
        of_u.sort_unstable();
        assert_eq!(of_u, [a.id, b.id]);
        assert!(reg.remove(&a));
        assert!(!reg.remove(&a));
        assert_eq!(reg.take("u", Some(0)).len(), 0);
        assert_eq!(reg.take("u", None).iter().map(|c| c.id).collect::<Vec<_>>(), [b.id]);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.user_count(), 1);
        assert_eq!(reg.all().len(), 1);
        assert!(reg.connections("u").is_empty());
        assert!(reg.remove(&c));
        assert_eq!(reg.user_count(), 0);
    }
}
