//! Liveness: one timer per connection in the timer wheel, checked lazily. Frames only move a
//! connection's timestamps; when its timer fires, [`Connection::check`] says what is due — a
//! Ping, an idle close, a handshake, write-stall or linger timeout — and the timer is re-armed
//! for the next deadline.
//!
//! Owns the wheel and the timeouts. Must not scan connections per tick, and must not re-arm a
//! timer per frame: a timer is only pulled earlier when a connection's state brings its
//! deadline forward (output stalls, it starts closing).

use std::time::{Duration, Instant};

use log::debug;

use super::Server;
use crate::conn::{Connection, Due, Expiry, Timeouts};
use crate::frame::{self, close_code};
use crate::hub::ConnId;
use crate::metrics::HandshakeFailure;
use crate::timer::TimerWheel;

/// The timer wheel and what its timers check.
pub(super) struct Liveness {
    /// One timer per connection, carrying its id.
    timers: TimerWheel<ConnId>,
    /// The timeouts checks apply, derived from the configuration once.
    pub(super) timeouts: Timeouts,
    /// Timers fired this turn (reused between turns).
    fired: Vec<ConnId>,
}

impl Liveness {
    /// A wheel with room for `capacity` timers reserved up front.
    pub(super) fn new(timeouts: Timeouts, capacity: usize, now: Instant) -> Liveness {
        let mut timers = TimerWheel::new(now);
        timers.reserve(capacity);
        Liveness {
            timers,
            timeouts,
            fired: Vec::new(),
        }
    }

    /// How long until the next timer fires, if any is armed.
    pub(super) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.timers.next_timeout(now)
    }

    /// Arms a new connection's timer at its first deadline.
    pub(super) fn arm(&mut self, conn: &mut Connection, id: ConnId) {
        let deadline = conn.earliest_deadline(&self.timeouts);
        conn.timer = Some((self.timers.arm(deadline, id), deadline));
    }

    /// Pulls the timer earlier when the connection's state now needs an earlier check.
    pub(super) fn reschedule(&mut self, conn: &mut Connection, id: ConnId) {
        let deadline = conn.earliest_deadline(&self.timeouts);
        if conn.timer.is_some_and(|(_, at)| at <= deadline) {
            return;
        }
        if let Some((timer, _)) = conn.timer.take() {
            self.timers.cancel(timer);
        }
        conn.timer = Some((self.timers.arm(deadline, id), deadline));
    }

    /// Cancels the timer of a connection being removed.
    pub(super) fn disarm(&mut self, conn: &mut Connection) {
        if let Some((timer, _)) = conn.timer.take() {
            self.timers.cancel(timer);
        }
    }
}

impl Server {
    /// Pulls `id`'s timer earlier when its state now needs an earlier check.
    pub(super) fn reschedule(&mut self, id: ConnId) {
        if let Some(conn) = self.table.get_mut(id) {
            self.liveness.reschedule(conn, id);
        }
    }

    /// Checks every connection whose timer fired: pings, re-arms, or ends it.
    pub(super) fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.liveness.fired);
        self.liveness.timers.expire(self.now, &mut fired);
        for id in fired.drain(..) {
            let Some(conn) = self.table.get_mut(id) else {
                continue;
            };
            conn.timer = None;
            if conn.is_doomed() {
                continue;
            }
            match conn.check(self.now, &self.liveness.timeouts) {
                Due::Later { at, ping } => {
                    conn.timer = Some((self.liveness.timers.arm(at, id), at));
                    if ping {
                        self.table.send(id, &frame::PING, self.now);
                    }
                }
                Due::Expired(expiry) => {
                    debug!("{}: {expiry:?} timeout", conn.client);
                    match expiry {
                        Expiry::Idle => self.close(id, close_code::GOING_AWAY, "idle timeout"),
                        Expiry::Handshake => {
                            if !conn.is_between_requests() {
                                self.metrics.handshake_failed(HandshakeFailure::Timeout);
                            }
                            self.doom(id);
                        }
                        Expiry::WriteStall | Expiry::Linger => self.doom(id),
                    }
                }
            }
        }
        self.liveness.fired = fired;
    }
}
