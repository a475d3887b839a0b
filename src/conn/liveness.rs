//! A connection's liveness, decided from its timestamps and phase alone: what is due when its
//! timer fires (a Ping, or which timeout ended it) and when the timer must fire next.

use std::time::{Duration, Instant};

use super::{After, Connection, Phase};

/// How long a socket may stay once an HTTP answer that ends it has been written (FIN sent):
/// input is read and dropped meanwhile, so bytes the client sent after its request (pipelined
/// requests, the rest of a refused body) do not make the close a reset that destroys the
/// answer before the client reads it. A peer that keeps the socket open past this has it closed.
const ANSWERED_LINGER: Duration = Duration::from_secs(1);

/// What a liveness check found due.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing is wrong; check again at this instant (and send a Ping first when `ping`).
    Later { at: Instant, ping: bool },
    /// The connection must go, for this reason.
    Expired(Expiry),
}

/// Why a connection timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The HTTP request never completed (`--handshake-timeout`).
    Handshake,
    /// No frame arrived for `--idle-timeout`.
    Idle,
    /// Pending output made no progress for `--write-timeout`.
    WriteStall,
    /// A closing connection's peer never finished closing: within the write timeout after a
    /// WebSocket close, or shortly after an HTTP answer that ends the connection was written.
    Linger,
}

/// The timeouts a liveness check applies (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub handshake: Duration,
    pub ping_interval: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl Connection {
    /// What is due at `now`: a ping, a timeout, or nothing until the returned instant.
    pub fn check(&mut self, now: Instant, timeouts: &Timeouts) -> Due {
        // Checks come at most every ping interval: a good moment to give back the memory of a
        // queue that is empty now.
        self.output.release();
        if !self.output.is_empty() && now >= self.last_progress + timeouts.write {
            return Due::Expired(Expiry::WriteStall);
        }
        let expired = match &self.phase {
            Phase::Http { .. } => {
                (now >= self.phase_since + timeouts.handshake).then_some(Expiry::Handshake)
            }
            Phase::Closing { after, .. } => {
                (now >= self.closing_deadline(*after, timeouts)).then_some(Expiry::Linger)
            }
            Phase::Doomed => (now >= self.phase_since + timeouts.write).then_some(Expiry::Linger),
            Phase::Open(_) | Phase::Lagging => {
                (now >= self.last_input + timeouts.idle).then_some(Expiry::Idle)
            }
        };
        if let Some(expiry) = expired {
            return Due::Expired(expiry);
        }
        let ping = match &mut self.phase {
            Phase::Open(session) => session.ping_due(now, timeouts.ping_interval),
            _ => false,
        };
        Due::Later {
            at: self.earliest_deadline(timeouts),
            ping,
        }
    }

    /// The instant by which the liveness timer must fire given the current state (used to pull
    /// the timer earlier when output starts stalling or the connection starts closing).
    pub fn earliest_deadline(&self, timeouts: &Timeouts) -> Instant {
        let phase_deadline = match &self.phase {
            Phase::Http { .. } => self.phase_since + timeouts.handshake,
            Phase::Closing { after, .. } => self.closing_deadline(*after, timeouts),
            Phase::Doomed => self.phase_since + timeouts.write,
            Phase::Open(session) => (self.last_input + timeouts.idle).min(session.next_ping()),
            Phase::Lagging => self.last_input + timeouts.idle,
        };
        if self.output.is_empty() {
            phase_deadline
        } else {
            phase_deadline.min(self.last_progress + timeouts.write)
        }
    }

    /// When a closing connection whose peer has not closed is given up: the write timeout
    /// after closing began, or, after an HTTP answer, [`ANSWERED_LINGER`] after its last byte
    /// was written (the last progress, once nothing is pending).
    fn closing_deadline(&self, after: After, timeouts: &Timeouts) -> Instant {
        let give_up = self.phase_since + timeouts.write;
        match after {
            After::Http if self.output.is_empty() => {
                give_up.min(self.phase_since.max(self.last_progress) + ANSWERED_LINGER)
            }
            After::Http | After::WebSocket => give_up,
        }
    }
}
