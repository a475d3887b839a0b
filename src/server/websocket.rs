//! WebSocket dispatch: bytes of an open connection go to its session, each complete message to
//! the configured protocol (raw: to everyone; echo: back; events: to the `events` core), and how
//! a session ends.
//!
//! Owns the one way out of the hub: [`Server::leave_hub`] is the only place an `Open` (or
//! `Lagging`) connection becomes `Closing`. Must not write a socket, and must not frame a
//! message itself (that is `fanout`'s).

use log::{debug, warn};
use tungstenite::Message;

use super::Server;
use super::fanout::unix_ms;
use crate::config::Protocol;
use crate::events::{self, Failure};
use crate::frame::OpCode;
use crate::hub::{ConnId, Target};
use crate::ratelimit::Rate;
use crate::session::Feed;

impl Server {
    /// Hands WebSocket bytes to the session and dispatches the messages that completed.
    pub(super) fn feed(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let before = conn.pending();
        let Some(feed) = conn.feed(bytes, &self.ws_config, &mut self.inbox, self.now) else {
            return;
        };
        // Pongs and the close reply count like any other output (a ping flood the client never
        // reads makes it lag).
        self.table.note_output(id, before);
        let mut inbox = std::mem::take(&mut self.inbox);
        for message in inbox.drain(..) {
            self.on_message(id, message);
        }
        self.inbox = inbox;
        match feed {
            Feed::Open => {}
            Feed::Closed => {
                if let Some(conn) = self.table.get_mut(id) {
                    debug!("{}: closed by the client", conn.client);
                }
                self.leave_hub(id);
                self.reschedule(id);
            }
            Feed::Failed(code, reason) => {
                if let Some(conn) = self.table.get_mut(id) {
                    warn!("{}: closing with {code}: {reason}", conn.client);
                }
                self.close(id, code, reason);
            }
        }
    }

    /// One message from an open connection, to the configured protocol.
    fn on_message(&mut self, id: ConnId, message: Message) {
        let (opcode, payload, text) = match &message {
            Message::Text(text) => (OpCode::Text, text.as_bytes(), Some(text.as_str())),
            Message::Binary(bytes) => (OpCode::Binary, &bytes[..], None),
            // Control frames: tungstenite answered them already.
            _ => return,
        };
        // A connection that lags (or closed) since its read began: its requests are moot.
        let Some(session) = self.table.get_mut(id).and_then(|conn| conn.session()) else {
            return;
        };
        self.metrics.messages_received += 1;
        let allowed = session.take_token(self.now);
        match (self.config.protocol, text) {
            (Protocol::Raw | Protocol::Echo, _) if !allowed => {}
            (Protocol::Raw, _) => {
                self.relay(&Target::All, opcode, payload);
            }
            (Protocol::Echo, _) => {
                self.fan_out(&Target::Conn(id), opcode, payload);
            }
            (Protocol::Events, Some(text)) if allowed => {
                let hub_wide = self.redis.as_ref().is_some_and(|r| r.routes());
                let ctx = events::Context {
                    conn: id,
                    now_ms: unix_ms(),
                    now: self.now,
                    may_join: &|room| session.may_join(room),
                    may_reach_everyone: session.may_reach_everyone(),
                    max_message_size: self.config.max_message_size,
                    control: events::Control {
                        take_command: &|| {
                            let rate = Rate::per_second(self.config.command_rate);
                            session.take_command_token(rate, self.now)
                        },
                        presence_max_members: self.config.presence_max_members,
                    },
                    hub_wide,
                };
                events::handle(
                    &mut self.hub,
                    &mut self.history,
                    &ctx,
                    text,
                    &mut self.deliveries,
                    &mut self.asks,
                );
                self.deliver();
                if !self.asks.is_empty() {
                    let mut asks = std::mem::take(&mut self.asks);
                    self.ask(id, &mut asks);
                    self.asks = asks;
                }
            }
            (Protocol::Events, text) => {
                let failure = match text {
                    Some(_) => Failure::RATE_LIMITED,
                    None => Failure::BINARY_FRAME,
                };
                events::refuse(id, text, failure, &mut self.deliveries);
                self.deliver();
            }
        }
    }

    /// Sends a Close frame with `code` after what is queued, and ends the session.
    pub(super) fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        if !self.leave_hub(id) {
            return;
        }
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let before = conn.pending();
        conn.push_close(code, reason, self.now);
        self.table.note_output(id, before);
        self.reschedule(id);
    }

    /// Takes an `Open` or `Lagging` connection out of the hub, telling its rooms when its user
    /// left them, and starts closing it: the only place a session ends. False (and nothing
    /// done) when the connection was not in the hub.
    pub(super) fn leave_hub(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.table.get_mut(id) else {
            return false;
        };
        if !conn.leave_open(self.now) {
            return false;
        }
        self.peers.left_hub(conn.peer, conn.client);
        if self.redis.as_ref().is_some_and(|r| r.routes()) {
            self.redis_disconnected(id);
        } else if self.config.protocol == Protocol::Events {
            events::disconnect(
                &mut self.hub,
                id,
                self.config.presence_max_members,
                &mut self.deliveries,
            );
            self.deliver();
        } else {
            self.hub.disconnect(id);
        }
        true
    }
}
