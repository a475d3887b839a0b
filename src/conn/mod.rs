//! One client connection: its socket, where it is in its life, and its pending output.
//!
//! This is the only module that reads or writes a client socket. Two small state machines say
//! what a connection does, and every state is a variant, so no combination that cannot happen
//! can be written down:
//!
//! - [`Phase`], its life: `Http` (requests are read and answered) → `Open` (upgraded and in the
//!   hub) → `Closing` (out of the hub; the last bytes are flushed, input is dropped until the
//!   peer closes, for at most a second after an HTTP answer that ends the connection) →
//!   `Doomed` (removed at the end of the turn). An open connection that falls
//!   behind a fan-out is `Lagging` until the loop closes it; an HTTP connection may go straight
//!   to `Closing` or `Doomed`. Whether the socket is read follows from the phase alone.
//! - `Write`, its output: `Idle` → `Queued` (on the loop's write list) → `Idle` once drained,
//!   or `Blocked` (the socket is full, WRITABLE registered) → `Resumed` (WRITABLE came: on the
//!   write list again, still registered) → `Idle` once drained (WRITABLE dropped). WRITABLE is
//!   registered exactly in `Blocked` and `Resumed`, so the state says what epoll watches.
//!
//! Liveness is checked lazily: the loop arms one timer per connection and, when it fires, asks
//! [`Connection::check`] what is due, so nothing is re-armed per frame.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

use crate::http::request::RequestReader;
use crate::outbuf::OutputQueue;
use crate::session::{Feed, Session};
use crate::timer::TimerId;

mod liveness;
#[cfg(test)]
mod tests;
mod write;

pub use liveness::{Due, Expiry, Timeouts};
use write::Write;
pub use write::{Drained, Flushed};

/// Where a connection is in its life.
pub enum Phase {
    /// Reading HTTP requests: the first one, or the next on a keep-alive connection.
    Http {
        reader: RequestReader,
        /// The client sends requests faster than it reads the answers (over `--max-buffered`
        /// pending): nothing is read or answered until the answers drain, so memory stays
        /// bounded.
        paused: bool,
    },
    /// Upgraded and registered in the hub: WebSocket frames flow both ways.
    Open(Session),
    /// Fell behind a fan-out: over `--max-buffered` with its socket full. Still registered in
    /// the hub (it cannot leave while a fan-out walks the hub), but it takes no more messages
    /// and is not read; the loop closes it with 1008 once the fan-out is over.
    Lagging,
    /// Out of the hub, or never in it: what is queued is flushed, then the write side is shut.
    /// Input is read and dropped until the peer closes.
    Closing {
        /// The peer closed its side (end of stream): once the output is flushed there is
        /// nothing left to do, and nothing more to read.
        peer_closed: bool,
        /// What is being closed, which decides how long the peer may keep the socket once the
        /// last byte is written.
        after: After,
    },
    /// Out of the hub and finished: removed at the end of the turn, never read or written again.
    Doomed,
}

/// What a closing connection was before it began to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// An HTTP answer that ends the connection (a refusal, `Connection: close`, shutdown): once
    /// it is written the socket lingers briefly, so a peer that keeps it open (a refused client,
    /// an attacker) does not hold a slot for the whole write timeout.
    Http,
    /// A WebSocket session: the close handshake may take until the write timeout.
    WebSocket,
}

/// One client connection.
pub struct Connection {
    /// The socket; nothing outside this module reads or writes it.
    socket: TcpStream,
    /// The socket's peer address: the client, or a proxy in front of it. Its port is never
    /// used, so it is not kept.
    pub peer: IpAddr,
    /// The client's address as far as it can be trusted: the peer, or what a `--trusted-proxy`
    /// peer reports in X-Forwarded-For / X-Real-IP. Shown in logs.
    pub client: IpAddr,
    /// Where the connection is in its life; moved only by the methods below.
    phase: Phase,
    /// Bytes waiting to be written: responses and whole frames only.
    output: OutputQueue,
    /// Where the output stands with the write pass; moved only by the methods below.
    write: Write,
    /// The connection's liveness timer in the loop's wheel, and when it fires, so the loop can
    /// pull it earlier (write stall, closing) without re-arming on every frame.
    pub timer: Option<(TimerId, Instant)>,
    /// When the current phase began: the handshake and linger deadlines count from here.
    phase_since: Instant,
    /// Last time a whole frame (a message or a control frame) arrived: the idle timeout counts
    /// from here, so bytes trickling into a frame that never completes do not keep it alive.
    last_input: Instant,
    /// Last time pending output moved (or became pending): the write timeout counts from here.
    last_progress: Instant,
    /// The loop turn in which this connection used up its read budget: it then waits on the
    /// loop's unread list and is not read again before the next turn (0: never).
    read_spent_in: u64,
}

impl Connection {
    pub fn new(socket: TcpStream, peer: IpAddr, now: Instant) -> Connection {
        Connection {
            socket,
            peer,
            client: peer,
            phase: Phase::Http {
                reader: RequestReader::default(),
                paused: false,
            },
            output: OutputQueue::default(),
            write: Write::Idle,
            timer: None,
            phase_since: now,
            last_input: now,
            last_progress: now,
            read_spent_in: 0,
        }
    }

    /// Registers the socket for READABLE; WRITABLE is added only when a write hits
    /// `WouldBlock` (see `Write`).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.socket, token, Interest::READABLE)
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Registered in the hub and taking messages.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    pub fn is_doomed(&self) -> bool {
        matches!(self.phase, Phase::Doomed)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.output.len()
    }

    /// Whether the socket should be read in `turn`: the phase wants input, and the connection
    /// has not used up its read budget in this turn.
    pub fn reads_input(&self, turn: u64) -> bool {
        let wanted = match &self.phase {
            Phase::Http { paused, .. } => !paused,
            Phase::Open(_) => true,
            Phase::Closing { peer_closed, .. } => !peer_closed,
            Phase::Lagging | Phase::Doomed => false,
        };
        wanted && self.read_spent_in != turn
    }

    /// One read into `scratch`; `Ok(0)` is end of stream.
    pub fn read(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        self.socket.read(scratch)
    }

    /// Records that the read budget ran out in `turn` (the caller puts the connection on the
    /// unread list).
    pub fn spend_read_budget(&mut self, turn: u64) {
        self.read_spent_in = turn;
    }

    /// The request reader of a connection still speaking HTTP.
    pub fn requests(&mut self) -> Option<&mut RequestReader> {
        match &mut self.phase {
            Phase::Http { reader, .. } => Some(reader),
            _ => None,
        }
    }

    /// Stops reading an HTTP connection until its answers drain ([`Connection::drained`]).
    pub fn pause_reading(&mut self) {
        if let Phase::Http { paused, .. } = &mut self.phase {
            *paused = true;
        }
    }

    /// Whether a keep-alive connection is idle between requests (its timeout is an idle close,
    /// not a failed handshake).
    pub fn is_between_requests(&self) -> bool {
        matches!(&self.phase, Phase::Http { reader, .. } if reader.is_between_requests())
    }

    /// The WebSocket session of an open connection.
    pub fn session(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(session) => Some(session),
            _ => None,
        }
    }

    /// Hands WebSocket bytes to the session (`None` unless open); see [`Session::feed`]. The
    /// session's replies are pushed; the caller queues them.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        config: &WebSocketConfig,
        inbox: &mut Vec<Message>,
        now: Instant,
    ) -> Option<Feed> {
        let Phase::Open(session) = &mut self.phase else {
            return None;
        };
        let was_empty = self.output.is_empty();
        let received = inbox.len();
        let feed = session.feed(bytes, &mut self.output, config, inbox);
        if was_empty && !self.output.is_empty() {
            self.last_progress = now;
        }
        if inbox.len() > received || feed == Feed::Closed {
            self.last_input = now;
        }
        Some(feed)
    }

    /// Switches to WebSocket after the `101` has been queued.
    pub fn open(&mut self, session: Session, now: Instant) {
        self.output.mark_frame_start();
        self.phase = Phase::Open(session);
        self.phase_since = now;
        self.last_input = now;
    }

    /// Restarts the phase's clock: a keep-alive connection gets a fresh handshake timeout for
    /// its next request.
    pub fn restart_phase(&mut self, now: Instant) {
        self.phase_since = now;
    }

    /// `Open` becomes `Lagging`: true when it was open.
    pub fn lag(&mut self) -> bool {
        let open = self.is_open();
        if open {
            self.phase = Phase::Lagging;
        }
        open
    }

    /// `Open` or `Lagging` becomes `Closing`: true when the connection was in the hub, and the
    /// caller must take it out. The loop calls this in one place only (its `leave_hub`).
    #[must_use]
    pub fn leave_open(&mut self, now: Instant) -> bool {
        let in_hub = matches!(self.phase, Phase::Open(_) | Phase::Lagging);
        if in_hub {
            self.begin_closing(false, After::WebSocket, now);
        }
        in_hub
    }

    /// An HTTP connection stops taking requests: what is queued is flushed, then it closes.
    pub fn finish_http(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Http { .. }) {
            self.begin_closing(false, After::Http, now);
        }
    }

    /// The peer closed its side: an HTTP or closing connection flushes what is left, then
    /// goes. (An open one must leave the hub first.)
    pub fn peer_closed(&mut self, now: Instant) {
        match self.phase {
            Phase::Http { .. } => self.begin_closing(true, After::Http, now),
            Phase::Closing {
                ref mut peer_closed,
                ..
            } => *peer_closed = true,
            Phase::Open(_) | Phase::Lagging | Phase::Doomed => {}
        }
    }

    fn begin_closing(&mut self, peer_closed: bool, after: After, now: Instant) {
        self.phase = Phase::Closing { peer_closed, after };
        self.phase_since = now;
    }

    /// Any phase but `Open` or `Lagging` (which must leave the hub first) becomes `Doomed`:
    /// true when it was not doomed yet, and the caller must list it for removal.
    #[must_use]
    pub fn doom(&mut self) -> bool {
        let doom = matches!(self.phase, Phase::Http { .. } | Phase::Closing { .. });
        if doom {
            self.phase = Phase::Doomed;
        }
        doom
    }
}
