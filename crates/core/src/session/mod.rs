//! Connected devices as the domain sees them, and what the core asks of whoever owns
//! their sockets.
//!
//! A [`Conn`] is one logged-in device with its bounded [`Outbox`]; the [`Registry`]
//! knows which of them are on this node and applies WuKongIM's rules for which login
//! displaces which. The gateway (sockets, handshakes, heartbeats) creates connections,
//! drains their outboxes and calls the [`SessionHandler`] the core implements; nothing
//! here touches a socket.

mod conn;
mod outbox;
mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hongyan_proto::{Connect, DeviceLevel, Disconnect, Packet, ReasonCode};

pub use conn::{Conn, SendError, TransportKind};
pub use outbox::{CloseReason, Drained, HeldBytes, Outbox, OutboxLimits, PushError};
pub use registry::{Displacement, Registry};

/// The future [`SessionHandler::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<DeviceLevel, ReasonCode>> + Send + 'a>>;

/// The future [`SessionHandler::on_packet`] returns: the packet's admission.
pub type PacketFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the gateway asks of the core. The gateway owns sockets and sessions; the
/// handler owns users and messages.
pub trait SessionHandler: Send + Sync + 'static {
    /// Whether `connect` may log in, and at which level. The uid has already been
    /// checked for shape. An error is the CONNACK reason code (AuthFail, Ban, …).
    fn authenticate<'a>(&'a self, connect: &'a Connect) -> AuthFuture<'a>;

    /// `conn` completed its login and is in the registry.
    fn on_online(&self, conn: &Arc<Conn>);

    /// `conn` sent SEND, RECVACK or SUB. The session awaits the returned future before
    /// reading the connection's next packet, so packets are admitted in the order they
    /// arrived. Admit quickly (checks, enqueueing) and finish slow work (durability,
    /// fan-out) elsewhere: answers go to `conn.outbox`.
    fn on_packet<'a>(&'a self, conn: &'a Arc<Conn>, packet: Packet) -> PacketFuture<'a>;

    /// `conn` is gone (closed, kicked, timed out) and no longer in the registry.
    fn on_offline(&self, conn: &Arc<Conn>);
}

/// Sends a displaced connection on its way: DISCONNECT(ConnectKick) first when kicked,
/// then the socket closes after `delay` (so the client reads why).
pub fn displace_after(old: &Conn, how: Displacement, delay: Duration) {
    let (frame, reason) = match how {
        Displacement::Kick => {
            let kick = Disconnect { reason_code: ReasonCode::ConnectKick, reason: "login in other device".into() };
            (old.codec().encode_to_bytes(&Packet::Disconnect(kick)).ok(), CloseReason::Kicked)
        }
        Displacement::Replace => (None, CloseReason::Replaced),
    };
    metrics::counter!("hongyan_gateway_kicks_total", "kind" => reason.label()).increment(1);
    old.outbox.close_after(frame, delay, reason);
}

/// Longest uid or channel id, in bytes. Ids become parts of storage keys, and a person
/// channel's stored id joins two uids.
pub const MAX_ID_LEN: usize = 255;

/// What [`is_valid_uid`] requires, for error messages.
pub const ID_RULE: &str = "must be 1 to 255 bytes and contain none of @ # &";

/// A uid or channel id the server accepts: 1 to [`MAX_ID_LEN`] bytes, and none of the
/// characters WuKongIM uses to build channel ids. The one rule for ids: the binary
/// protocol and every HTTP dialect check ids with it.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= MAX_ID_LEN && !uid.contains(['@', '#', '&'])
}

/// What [`is_valid_client_msg_no`] requires, for error messages.
pub const CLIENT_MSG_NO_RULE: &str = "must be at most 255 bytes";

/// A client_msg_no (or device id) the server accepts: empty, or up to [`MAX_ID_LEN`]
/// bytes, like an id. It becomes part of a storage key; the SDKs' are about 40 bytes.
pub fn is_valid_client_msg_no(client_msg_no: &str) -> bool {
    client_msg_no.len() <= MAX_ID_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_shape() {
        assert!(is_valid_uid("alice_01"));
        assert!(!is_valid_uid(""));
        for bad in ["a@b", "a#b", "a&b"] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
        assert!(is_valid_uid(&"x".repeat(MAX_ID_LEN)));
        assert!(!is_valid_uid(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
