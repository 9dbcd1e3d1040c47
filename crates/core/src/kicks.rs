//! Closing a user's connections wherever they are: the kick rules of a new login and
//! the app server's kicks (`/user/token` for a master device, `/user/device_quit`, a
//! ban, a deleted account). On a single node they act on the registry; in a cluster
//! they are also announced, and every other node acts on its own connections
//! (`docs/cluster.md`, "Kicks").

use std::sync::Arc;
use std::time::Duration;

use crate::session::{CloseReason, Conn, displace_after};
use hongyan_proto::{Disconnect, Packet, ReasonCode};

use crate::Core;
use crate::cluster::Changed;

impl Core {
    /// Closes `uid`'s connections with `device_flag` (every flag when `None`) on every
    /// node: each gets DISCONNECT(`reason`, `text`) and its socket closes `delay`
    /// later. Returns how many were on this node.
    pub fn kick(&self, uid: &str, device_flag: Option<u8>, reason: ReasonCode, text: &str, delay: Duration) -> usize {
        let kicked = self.kick_here(uid, device_flag, reason, text, delay);
        self.tell_others(Changed::Kick {
            uid: uid.to_owned(),
            device_flag,
            reason,
            text: text.to_owned(),
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
        kicked
    }

    /// [`Self::kick`] on this node only.
    pub(crate) fn kick_here(
        &self,
        uid: &str,
        device_flag: Option<u8>,
        reason: ReasonCode,
        text: &str,
        delay: Duration,
    ) -> usize {
        let conns = self.registry.take(uid, device_flag);
        let count = conns.len();
        for conn in conns {
            let packet = Packet::Disconnect(Disconnect { reason_code: reason, reason: text.to_owned() });
            let frame = conn.codec().encode_to_bytes(&packet).ok();
            conn.outbox.close_after(frame, delay, CloseReason::Kicked);
        }
        count
    }

    /// Closes one connection, on whichever node it is (`/conn/kick` with `kick`: a
    /// DISCONNECT(ConnectKick) first; `/conn/remove`: just closed). On this node it
    /// answers whether the connection was there; for another node's it asks that node
    /// and answers `None` (the bus does not answer back).
    pub fn close_connection(&self, node: u64, uid: &str, conn_id: u64, kick: bool) -> Option<bool> {
        if node == self.settings.node_id {
            return Some(self.close_connection_here(uid, conn_id, kick));
        }
        self.tell_others(Changed::CloseConnection { node, conn_id, uid: uid.to_owned(), kick });
        None
    }

    /// [`Self::close_connection`] for a connection of this node.
    pub(crate) fn close_connection_here(&self, uid: &str, conn_id: u64, kick: bool) -> bool {
        let Some(conn) = self.registry.take_one(uid, conn_id) else { return false };
        let frame = kick
            .then(|| {
                let kick = Disconnect { reason_code: ReasonCode::ConnectKick, reason: "kicked by the server".into() };
                conn.codec().encode_to_bytes(&Packet::Disconnect(kick)).ok()
            })
            .flatten();
        let delay = if kick { self.settings.kick_close_delay } else { Duration::ZERO };
        conn.outbox.close_after(frame, delay, CloseReason::Requested);
        true
    }

    /// Tells the other nodes of a login here, so that they apply its kick rules to
    /// their own connections of the same user (this node's registry did it here).
    pub(crate) fn announce_login(&self, conn: &Arc<Conn>) {
        if self.notifier.get().is_none() {
            return;
        }
        self.tell_others(Changed::Login {
            uid: conn.uid.to_string(),
            device_flag: conn.device_flag,
            device_id: conn.device_id.to_string(),
            level: conn.level,
            at_ms: conn.connected_at_ms,
        });
    }

    /// Applies the kick rules of a login on another node to this node's connections.
    pub(crate) fn displace_for_login(
        &self,
        uid: &str,
        device_flag: u8,
        device_id: &str,
        level: hongyan_proto::DeviceLevel,
        at_ms: i64,
    ) {
        for (old, how) in self.registry.displaced_by(uid, device_flag, device_id, level, at_ms) {
            displace_after(&old, how, self.settings.kick_close_delay);
        }
    }
}
