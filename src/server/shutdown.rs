//! Signals and the graceful drain: SIGINT/SIGTERM close the port and every connection (open
//! ones with Close 1001), then the loop runs until they are flushed or `--drain-timeout`
//! passes; SIGHUP is logged and ignored.
//!
//! Owns the signal pipes and the drain deadline. Must not act during a write pass (a pass
//! defers a signal to the next turn).

use std::io;
use std::time::{Duration, Instant};

use log::info;

use super::{HANGUP_SIGNAL, SHUTDOWN_SIGNAL, Server};
use crate::conn::Phase;
use crate::frame::close_code;
use crate::signals::Signals;

/// Signal handling and the drain.
#[derive(Default)]
pub(super) struct Shutdown {
    /// SIGINT/SIGTERM/SIGHUP pipes, when installed.
    signals: Option<Signals>,
    /// Set once shutdown began: connections are drained until then, and the loop ends.
    drain_deadline: Option<Instant>,
}

impl Shutdown {
    /// How long the drain may still take, once shutdown began.
    pub(super) fn drain_left(&self, now: Instant) -> Option<Duration> {
        self.drain_deadline
            .map(|deadline| deadline.saturating_duration_since(now))
    }
}

impl Server {
    /// Makes SIGINT/SIGTERM start a graceful shutdown and SIGHUP harmless (process-wide, so
    /// only the daemon calls it, not tests that run several servers in one process).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        self.shutdown.signals = Some(Signals::install(
            self.poll.registry(),
            SHUTDOWN_SIGNAL,
            HANGUP_SIGNAL,
        )?);
        Ok(())
    }

    /// Whether the loop is done: shutdown began, every connection is gone and Redis has been
    /// told, or the drain ran out of time.
    pub(super) fn drain_complete(&self) -> bool {
        let settled = self.redis.as_ref().is_none_or(|r| r.settled());
        self.shutdown
            .drain_deadline
            .is_some_and(|deadline| (self.table.is_empty() && settled) || self.now >= deadline)
    }

    pub(super) fn on_hangup(&mut self) {
        if let Some(signals) = &mut self.shutdown.signals {
            signals.drain_hangup();
        }
        info!("SIGHUP received: there is nothing to reload; still running");
    }

    /// Starts the drain: the port closes, open connections get Close 1001, HTTP connections
    /// finish the answer they are writing.
    pub(super) fn on_shutdown_signal(&mut self) {
        if let Some(signals) = &mut self.shutdown.signals {
            signals.drain_shutdown();
        }
        if self.shutdown.drain_deadline.is_some() {
            return;
        }
        info!(
            "shutting down: closing {} WebSocket connections (drain up to {:?})",
            self.hub.connection_count(),
            self.config.drain_timeout
        );
        self.shutdown.drain_deadline = Some(self.now + self.config.drain_timeout);
        self.acceptor.close(self.poll.registry());
        for id in self.table.ids() {
            let Some(conn) = self.table.get_mut(id) else {
                continue;
            };
            match conn.phase() {
                Phase::Open(_) | Phase::Lagging => {
                    self.close(id, close_code::GOING_AWAY, "server shutting down");
                }
                Phase::Http { .. } if conn.pending() == 0 => self.doom(id),
                Phase::Http { .. } => {
                    conn.finish_http(self.now);
                    self.reschedule(id);
                }
                Phase::Closing { .. } | Phase::Doomed => {}
            }
        }
        if let Some(redis) = &mut self.redis {
            redis.leave();
        }
    }
}
