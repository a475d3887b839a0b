//! A connection's output: appending whole frames, the write-state machine (`Write`) that keeps
//! it on the loop's write list at most once, one write per pass, and what draining leads to.

use std::io::{self, Write as _};
use std::net::Shutdown;
use std::time::Instant;

use log::debug;
use mio::{Interest, Registry, Token};

use super::{After, Connection, Phase};
use crate::frame;

/// Where a connection's output stands with the loop's write pass, and what epoll watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Write {
    /// Nothing is pending; only READABLE is registered.
    Idle,
    /// Output is pending and the connection is on the loop's write list, exactly once.
    Queued,
    /// The last write hit `WouldBlock`: WRITABLE is registered and nothing is written until it
    /// is reported, so new output does not put the connection back on the write list (a write
    /// would only fail again).
    Blocked,
    /// WRITABLE was reported after `Blocked`: on the write list like `Queued`, with WRITABLE
    /// still registered until the queue drains. A reader that fell behind often blocks again
    /// before it catches up, and keeping the registration saves two `epoll_ctl` per stall.
    Resumed,
}

/// Outcome of one write attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything pending was written; see [`Connection::drained`] for what follows.
    Drained,
    /// The share asked for was written; more is pending and the connection stays queued.
    Partial,
    /// The socket's send buffer is full; the connection waits for WRITABLE.
    Blocked,
}

/// What a connection whose output just drained needs from the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing: it waits for input or output.
    Nothing,
    /// An HTTP connection paused for its answers to drain: read (and answer) it again.
    ResumeReading,
    /// A closing connection whose peer already left has sent its last byte: remove it.
    Finished,
    /// A connection closing after an HTTP answer has sent its last byte and FIN: it may only
    /// linger briefly now, so its timer must come earlier.
    Lingering,
}

impl Connection {
    /// Appends whole frames (or a response) to the output; [`Connection::queue`] then says
    /// whether the connection must go on the write list.
    pub fn push(&mut self, bytes: &[u8], now: Instant) {
        if self.output.is_empty() {
            self.last_progress = now;
        }
        self.output.push(bytes);
    }

    /// Appends a Close frame with `code` and a short `reason` after everything queued.
    pub fn push_close(&mut self, code: u16, reason: &str, now: Instant) {
        let mut close = Vec::with_capacity(frame::MAX_HEADER_LEN + 2 + reason.len());
        frame::encode_close(code, reason, &mut close);
        self.push(&close, now);
    }

    /// `Idle` with output pending becomes `Queued`: true when the caller must put the
    /// connection on the write list (it is on no list yet).
    #[must_use]
    pub fn queue(&mut self) -> bool {
        let queue = self.write == Write::Idle && !self.output.is_empty() && !self.is_doomed();
        if queue {
            self.write = Write::Queued;
        }
        queue
    }

    /// The socket reported WRITABLE: a blocked connection becomes `Resumed`; true when the
    /// caller must put it on the write list.
    #[must_use]
    pub fn on_writable(&mut self) -> bool {
        let queue = self.write == Write::Blocked && !self.is_doomed();
        if queue {
            self.write = Write::Resumed;
        }
        queue
    }

    /// On the write list: `Queued` or `Resumed`.
    pub fn is_queued(&self) -> bool {
        matches!(self.write, Write::Queued | Write::Resumed)
    }

    pub fn is_blocked(&self) -> bool {
        self.write == Write::Blocked
    }

    /// One write of at most `max` pending bytes by a queued connection. `Partial` leaves it on
    /// the write list; `Drained` makes it `Idle` and `Blocked` makes it `Blocked`, adding or
    /// dropping WRITABLE (registered under `token`) as `Write` says.
    pub fn flush(
        &mut self,
        max: usize,
        now: Instant,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Flushed> {
        let flushed = loop {
            if self.output.is_empty() {
                break Flushed::Drained;
            }
            match self.socket.write(self.output.front(max)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.consume(n);
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Flushed::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if !self.output.is_empty() {
                break Flushed::Partial;
            }
        };
        let (next, interest) = match (flushed, self.write) {
            (Flushed::Partial, write) => (write, None),
            (Flushed::Drained, Write::Resumed) => (Write::Idle, Some(Interest::READABLE)),
            (Flushed::Drained, _) => (Write::Idle, None),
            (Flushed::Blocked, Write::Resumed | Write::Blocked) => (Write::Blocked, None),
            (Flushed::Blocked, _) => (
                Write::Blocked,
                Some(Interest::READABLE | Interest::WRITABLE),
            ),
        };
        self.write = next;
        if let Some(interest) = interest
            && let Err(e) = registry.reregister(&mut self.socket, token, interest)
        {
            // Only fails for a socket the kernel already dropped; its next read or write says
            // so and ends the connection.
            debug!("{}: reregister failed: {e}", self.client);
        }
        Ok(flushed)
    }

    /// Called once the output drained: resumes a paused HTTP connection, and sends FIN after
    /// the last byte of a closing one so the peer sees the end without a reset.
    pub fn drained(&mut self) -> Drained {
        match &mut self.phase {
            Phase::Http { paused, .. } if *paused => {
                *paused = false;
                Drained::ResumeReading
            }
            Phase::Closing { peer_closed, after } => {
                // Failure only means the peer is already gone, which removal handles.
                let _ = self.socket.shutdown(Shutdown::Write);
                match (*peer_closed, *after) {
                    (true, _) => Drained::Finished,
                    (false, After::Http) => Drained::Lingering,
                    (false, After::WebSocket) => Drained::Nothing,
                }
            }
            _ => Drained::Nothing,
        }
    }

    /// Drops every queued frame except the one partly written, so a Close frame can follow.
    pub fn cut_output(&mut self) {
        self.output.cut_after_current_frame();
    }
}
