//! The core as the gateway's [`SessionHandler`].

use std::sync::Arc;

use hongyan_proto::{Connect, DeviceLevel, Packet, ReasonCode, Suback};

use crate::retry::Acked;
use crate::session::{AuthFuture, Conn, PacketFuture, SessionHandler};
use crate::{Core, storage};

/// The gateway's view of the core. Implemented on `Arc<Core>` because sends outlive the
/// call that admits them.
#[derive(Debug, Clone)]
pub struct Sessions(pub Arc<Core>);

impl SessionHandler for Sessions {
    fn authenticate<'a>(&'a self, connect: &'a Connect) -> AuthFuture<'a> {
        let (core, connect) = (self.0.clone(), connect.clone());
        Box::pin(async move {
            // Storage reads block; keep them off the async workers.
            tokio::task::spawn_blocking(move || core.check_login(&connect))
                .await
                .unwrap_or(Err(ReasonCode::SystemError))
        })
    }

    fn on_online(&self, conn: &Arc<Conn>) {
        self.0.announce_login(conn);
        self.0.report_presence(conn, true);
    }

    fn on_packet<'a>(&'a self, conn: &'a Arc<Conn>, packet: Packet) -> PacketFuture<'a> {
        Box::pin(async move {
            match packet {
                Packet::Send(send) => self.0.on_send(conn, send).await,
                Packet::Sub(sub) => {
                    // WuKongIM answers SUB only for data channels, which are not built yet.
                    let ack = Suback {
                        sub_no: sub.sub_no,
                        channel_id: sub.channel_id,
                        channel_type: sub.channel_type,
                        action: sub.action,
                        reason_code: ReasonCode::NotSupportChannelType,
                    };
                    let _ = conn.send(&Packet::Suback(ack));
                }
                // The JS SDK copies NoPersist from the RECV: nothing was queued for those.
                Packet::Recvack(ack) if !ack.flags.no_persist => {
                    // A master device that took a command consumes it for the user.
                    if let Acked::Recv(Some(position)) = self.0.retry.ack(conn.id, ack.message_id)
                        && conn.level == DeviceLevel::Master
                    {
                        let (core, uid) = (self.0.clone(), conn.uid.clone());
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = core.advance_command_cursor(&uid, &position.channel, position.seq, false) {
                                storage(e);
                            }
                        });
                    }
                }
                _ => {}
            }
        })
    }

    fn on_offline(&self, conn: &Arc<Conn>) {
        self.0.retry.forget(conn.id);
        self.0.report_presence(conn, false);
    }
}
