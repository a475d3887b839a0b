//! The one fan-out path: a [`Target`], an opcode and a payload become one frame, appended to the
//! output of every recipient the hub names. Raw broadcasts, echoes, `events` replies and
//! presence, and `/api/publish` all go through [`Server::fan_out`].
//!
//! Must not write a socket (the write pass does) and must not change the hub while its
//! recipients are walked: a recipient that falls behind is only flagged `Lagging`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Server;
use crate::frame::OpCode;
use crate::hub::{ConnId, Target};

impl Server {
    /// Frames `payload` once and queues it to every recipient of `target`; returns how many
    /// took it.
    pub(super) fn fan_out(&mut self, target: &Target, opcode: OpCode, payload: &[u8]) -> u64 {
        let delivered = self
            .table
            .fan_out(target.recipients(&self.hub), opcode, payload, self.now);
        self.metrics.messages_delivered += delivered;
        delivered
    }

    /// Fans an event from Redis out to `target` but `user`'s connections (presence about
    /// `user`, decided hub-wide: the user's own tabs are not told) and the `joining`
    /// connections (whose join's place in the room's order comes after this event). Rare, so
    /// the filter stays out of [`Server::fan_out`]'s per-recipient path.
    pub(super) fn fan_out_except(
        &mut self,
        target: &Target,
        opcode: OpCode,
        payload: &[u8],
        user: Option<&str>,
        joining: &[ConnId],
    ) {
        let hub = &self.hub;
        let recipients = target.recipients(hub).filter(|conn| {
            !joining.contains(conn) && (user.is_none() || hub.user_of(*conn) != user)
        });
        let delivered = self.table.fan_out(recipients, opcode, payload, self.now);
        self.metrics.messages_delivered += delivered;
    }

    /// Sends an event for a room, a user or everyone to every instance of the hub: through
    /// Redis while it routes (each instance delivers it when it comes back), else here at
    /// once. Returns how many took it here, or `None` when it went to Redis.
    pub(super) fn relay(&mut self, target: &Target, opcode: OpCode, payload: &[u8]) -> Option<u64> {
        let published = self
            .redis
            .as_mut()
            .is_some_and(|redis| redis.publish(target, opcode, payload));
        (!published).then(|| self.fan_out(target, opcode, payload))
    }

    /// Sends, in order, every delivery the `events` core appended to `self.deliveries`: replies
    /// here, the rest through [`Server::relay`].
    pub(super) fn deliver(&mut self) {
        let mut deliveries = std::mem::take(&mut self.deliveries);
        for delivery in deliveries.drain(..) {
            self.relay(&delivery.target, OpCode::Text, delivery.json.as_bytes());
        }
        self.deliveries = deliveries;
    }
}

/// Unix time in milliseconds, the `ts` of relayed events.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
