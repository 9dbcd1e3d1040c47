//! Who may log in, and what happens to packets after login until the messaging core
//! takes them over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hongyan_gateway::{AuthFuture, Conn, SessionHandler};
use hongyan_proto::{Connect, DeviceLevel, Packet, ReasonCode, Sendack, Suback};
use hongyan_store::Store;
use tracing::warn;

/// Person channels have type 1; `ban` on a user's person channel bans the user.
const PERSON: u8 = 1;

/// Checks logins against the tokens registered with `POST /user/token`.
#[derive(Debug)]
pub struct Logins {
    rules: Arc<Rules>,
    warned_send: AtomicBool,
}

#[derive(Debug)]
struct Rules {
    store: Store,
    token_auth: bool,
    manager_uid: String,
    manager_token: String,
    system_uid: String,
}

impl Logins {
    /// Checks against `store`; `token_auth` off lets anyone in (local demos only).
    pub fn new(store: Store, token_auth: bool, manager_uid: String, manager_token: String, system_uid: String) -> Self {
        let rules = Rules { store, token_auth, manager_uid, manager_token, system_uid };
        Self { rules: Arc::new(rules), warned_send: AtomicBool::new(false) }
    }
}

impl Rules {
    fn check(&self, connect: &Connect) -> Result<DeviceLevel, ReasonCode> {
        let storage = |e: hongyan_store::StoreError| {
            warn!(error = %e, "storage failed during login");
            ReasonCode::SystemError
        };
        if connect.uid == self.system_uid {
            return Err(ReasonCode::AuthFail);
        }
        if connect.uid == self.manager_uid && !self.manager_token.is_empty() {
            return if eq_constant_time(&connect.token, &self.manager_token) {
                Ok(DeviceLevel::Slave)
            } else {
                Err(ReasonCode::AuthFail)
            };
        }
        if self.store.channel_info(&connect.uid, PERSON).map_err(storage)?.is_some_and(|i| i.ban) {
            return Err(ReasonCode::Ban);
        }
        if !self.token_auth {
            return Ok(DeviceLevel::Slave);
        }
        match self.store.device(&connect.uid, connect.device_flag).map_err(storage)? {
            Some(device) if !connect.token.is_empty() && eq_constant_time(&connect.token, &device.token) => {
                Ok(device.level)
            }
            _ => Err(ReasonCode::AuthFail),
        }
    }
}

fn eq_constant_time(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SessionHandler for Logins {
    fn authenticate<'a>(&'a self, connect: &'a Connect) -> AuthFuture<'a> {
        let rules = self.rules.clone();
        let connect = connect.clone();
        Box::pin(async move {
            // Storage reads block; keep them off the async workers.
            tokio::task::spawn_blocking(move || rules.check(&connect)).await.unwrap_or(Err(ReasonCode::SystemError))
        })
    }

    fn on_online(&self, _conn: &Arc<Conn>) {}

    fn on_packet(&self, conn: &Arc<Conn>, packet: Packet) {
        match packet {
            Packet::Send(send) => {
                // Message delivery arrives with the messaging core; until then refuse
                // visibly rather than drop silently.
                if !self.warned_send.swap(true, Ordering::Relaxed) {
                    warn!("SEND refused: message delivery is not part of this build yet");
                }
                let ack = Sendack {
                    flags: send.flags,
                    message_id: 0,
                    client_seq: send.client_seq,
                    message_seq: 0,
                    reason_code: ReasonCode::NotAllowSend,
                };
                let _ = conn.send(&Packet::Sendack(ack));
            }
            Packet::Sub(sub) => {
                // WuKongIM answers SUB only for data channels, which arrive with the core.
                let ack = Suback {
                    sub_no: sub.sub_no,
                    channel_id: sub.channel_id,
                    channel_type: sub.channel_type,
                    action: sub.action,
                    reason_code: ReasonCode::NotSupportChannelType,
                };
                let _ = conn.send(&Packet::Suback(ack));
            }
            _ => {}
        }
    }

    fn on_offline(&self, _conn: &Arc<Conn>) {}
}
