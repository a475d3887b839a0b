//! The write pass, and closing the connections that lag behind it.
//!
//! Once per turn every `Queued` connection is written once, in the order it became queued, at
//! most its fair share ([`fair_share`]). Every [`MID_PASS_POLL_INTERVAL`] writes the pass polls
//! without waiting and reads what arrived, so a message read mid-pass rides in the writes still
//! to come instead of waiting a whole pass. A mid-pass poll reads connections and notes
//! WRITABLE, nothing else: the listener's and the signals' readiness is deferred to the next
//! turn, timers do not run and the clock does not move.
//!
//! Owns the pass and the lagging close. Must not write a connection twice in one pass: what is
//! queued during the pass (new output, WRITABLE, a partial write's rest) goes on the list of the
//! next pass, never on the one being walked.

use std::io;
use std::time::Duration;

use log::{debug, error};
use mio::{Events, Token};

use super::Server;
use crate::conn::{Drained, Flushed, Phase};
use crate::frame::close_code;
use crate::hub::ConnId;

/// Most bytes written to one connection per pass, so one big backlog cannot starve the others
/// (Redis uses the same 64 KiB); see [`fair_share`] for the exception.
const MAX_WRITE_PER_PASS: usize = 64 * 1024;

/// Writes between two non-blocking polls during a write pass: a pass over thousands of
/// connections takes milliseconds, and messages that arrive meanwhile should ride in the
/// writes still to come (a poll costs about as much as one write).
const MID_PASS_POLL_INTERVAL: usize = 32;

impl Server {
    /// Writes every queued connection once.
    pub(super) fn write_pass(&mut self, events: &mut Events) {
        let pass = self.table.begin_pass();
        let mut sent = 0;
        for (index, &id) in pass.iter().enumerate() {
            if index > 0 && index % MID_PASS_POLL_INTERVAL == 0 {
                self.poll_mid_pass(events);
            }
            sent += self.write(id);
        }
        self.metrics.bytes_sent += sent as u64;
        self.table.end_pass(pass);
    }

    /// One write to `id`; returns the bytes written.
    fn write(&mut self, id: ConnId) -> usize {
        let Some(conn) = self.table.get_mut(id) else {
            return 0;
        };
        if !conn.is_queued() || conn.is_doomed() {
            // Doomed since it was queued: it is removed at the end of the turn.
            return 0;
        }
        let pending = conn.pending();
        let share = fair_share(pending, self.config.max_buffered);
        // What follows is decided while the connection is borrowed, so the bytes written are
        // counted before the table is used again.
        let next = match conn.flush(share, self.now, self.poll.registry(), Token(id.0)) {
            Ok(Flushed::Partial) => Next::Requeue,
            Ok(Flushed::Drained) => Next::Drained(conn.drained()),
            Ok(Flushed::Blocked) => Next::WaitWritable,
            Err(e) => {
                debug!("{}: write failed: {e}", conn.client);
                Next::Fail
            }
        };
        let sent = pending - conn.pending();
        self.table.wrote(sent);
        match next {
            Next::Requeue => self.table.requeue(id),
            Next::Drained(Drained::Nothing) => {}
            Next::Drained(Drained::ResumeReading) => self.table.read_next_turn(id),
            Next::Drained(Drained::Finished) => self.doom(id),
            Next::Drained(Drained::Lingering) | Next::WaitWritable => self.reschedule(id),
            Next::Fail => self.doom(id),
        }
        sent
    }

    /// Reads what arrived since the pass began and notes WRITABLE; defers the rest.
    fn poll_mid_pass(&mut self, events: &mut Events) {
        if let Err(e) = self.poll.poll(events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                error!("poll failed during a write pass: {e}");
            }
            return;
        }
        self.on_events(events);
    }

    /// Closes every connection that lags (its queue was cut when it fell behind): Close 1008
    /// follows the frame being written. Runs outside any fan-out, so leaving the hub is safe
    /// here.
    pub(super) fn close_lagging(&mut self) {
        while let Some(id) = self.table.pop_lagging() {
            if !self
                .table
                .get_mut(id)
                .is_some_and(|conn| matches!(conn.phase(), Phase::Lagging))
            {
                continue;
            }
            self.metrics.slow_consumer_disconnects += 1;
            self.close(id, close_code::POLICY_VIOLATION, "slow consumer");
        }
    }
}

/// What a connection needs after one write.
enum Next {
    /// Output is left and the socket took all it was given: next pass.
    Requeue,
    /// The output drained.
    Drained(Drained),
    /// The socket is full: its timer watches the stall until WRITABLE.
    WaitWritable,
    /// The write failed: the connection goes.
    Fail,
}

/// The most one pass writes to a connection: [`MAX_WRITE_PER_PASS`], or its whole backlog once
/// that is past half of `--max-buffered`. A socket that still takes data belongs to a reader
/// that keeps up; a backlog that large is a sender's burst, and draining it beats growing it
/// into a lagging disconnect.
fn fair_share(pending: usize, max_buffered: usize) -> usize {
    if pending > max_buffered / 2 {
        pending
    } else {
        MAX_WRITE_PER_PASS
    }
}
