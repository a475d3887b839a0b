//! One client connection: its socket, where it is in its life, and its pending output.
//!
//! This is the only module that reads or writes a socket. A connection goes through three phases:
//! `Http` (a request head is being read), `Open` (WebSocket frames flow) and `Closing` (the last
//! bytes are flushed, the write side is shut, input is discarded until the peer closes).
//! Liveness is checked lazily: the loop arms one timer per connection and, when it fires, asks
//! [`Connection::check`] what is due, so nothing is re-armed per frame.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::auth::RoomRule;
use crate::frame;
use crate::http::request::RequestReader;
use crate::outbuf::OutputQueue;
use crate::ratelimit::TokenBucket;
use crate::timer::TimerId;

/// Close codes of RFC 6455 §7.4.1 that the server sends.
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Where a connection is in its life.
pub enum Phase {
    /// Reading an HTTP request (the first one, or the next on a keep-alive connection).
    Http(RequestReader),
    /// Upgraded: WebSocket frames flow both ways.
    Open(Session),
    /// Final bytes are queued; no more input is processed.
    Closing,
}

/// The WebSocket side of an open connection.
pub struct Session {
    /// tungstenite's protocol state, created when the client first sends a byte: an idle
    /// connection that never speaks then costs no read buffer at all.
    ctx: Option<Box<WebSocketContext>>,
    /// Per-connection message budget when `--rate-limit` is set; boxed so connections pay a
    /// pointer when it is not.
    pub bucket: Option<Box<TokenBucket>>,
    /// The JWT `rooms` claim: which rooms this connection may join (`None`: any). Boxed so a
    /// connection without one pays a pointer.
    pub rooms: Option<Box<RoomRule>>,
    /// When the next server Ping is due.
    next_ping: Instant,
}

/// What feeding bytes to a session produced besides messages.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed; the connection stays open.
    Open,
    /// The client completed the close handshake; the reply is queued.
    Closed,
    /// The client broke the protocol: close with this code and reason.
    Failed(u16, &'static str),
}

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
    /// A closing connection's peer never finished closing.
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

/// Outcome of one write attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything pending was written.
    Drained,
    /// This turn's fair share was written; more is pending.
    Partial,
    /// The socket's send buffer is full.
    Blocked,
}

/// One client connection.
pub struct Connection {
    /// The socket; nothing outside this module reads or writes it.
    socket: TcpStream,
    /// The socket's peer: the client, or a proxy in front of it.
    pub peer: SocketAddr,
    /// The client's address as far as it can be trusted: the peer, or what a `--trusted-proxy`
    /// peer reports in X-Forwarded-For / X-Real-IP. Shown in logs.
    pub client: IpAddr,
    /// Where the connection is in its life.
    pub phase: Phase,
    /// Bytes waiting to be written: responses and whole frames only.
    pub output: OutputQueue,
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
    /// WRITABLE is registered; only true after a write hit `WouldBlock`.
    write_interest: bool,
    /// The connection is on the loop's list of connections with output to flush.
    pub dirty: bool,
    /// The last write hit `WouldBlock`: nothing is written until the socket reports WRITABLE,
    /// so new output does not put it back on the flush list (a write would only fail again).
    pub blocked: bool,
    /// The peer closed its side (EOF): once output is flushed there is nothing left to do.
    pub peer_closed: bool,
    /// The loop will remove the connection at the end of this turn.
    pub doomed: bool,
    /// Reading stopped because the client sends requests faster than it reads the answers;
    /// resumed once the output drains.
    pub read_paused: bool,
    /// Flagged during a fan-out for exceeding `--max-buffered`; the loop closes it afterwards.
    pub slow: bool,
}

impl Connection {
    pub fn new(socket: TcpStream, peer: SocketAddr, now: Instant) -> Connection {
        Connection {
            socket,
            peer,
            client: peer.ip(),
            phase: Phase::Http(RequestReader::default()),
            output: OutputQueue::default(),
            timer: None,
            phase_since: now,
            last_input: now,
            last_progress: now,
            write_interest: false,
            dirty: false,
            blocked: false,
            peer_closed: false,
            doomed: false,
            read_paused: false,
            slow: false,
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.socket, token, Interest::READABLE)
    }

    /// One read into `scratch`; `Ok(0)` is end of stream.
    pub fn read(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        self.socket.read(scratch)
    }

    /// Queues whole frames (or a response) for the socket.
    pub fn push(&mut self, bytes: &[u8], now: Instant) {
        if self.output.is_empty() {
            self.last_progress = now;
        }
        self.output.push(bytes);
    }

    /// One write of at most `max` pending bytes.
    pub fn flush(&mut self, max: usize, now: Instant) -> io::Result<Flushed> {
        loop {
            match self.socket.write(self.output.front(max)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.consume(n);
                    self.last_progress = now;
                    return Ok(if self.output.is_empty() {
                        Flushed::Drained
                    } else {
                        Flushed::Partial
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Registers or drops WRITABLE interest; a no-op when it is already as asked.
    pub fn want_writable(&mut self, registry: &Registry, token: Token, on: bool) -> io::Result<()> {
        if self.write_interest == on {
            return Ok(());
        }
        self.write_interest = on;
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut self.socket, token, interest)
    }

    /// Sends FIN after the last byte, so the peer sees the end without a reset.
    pub fn shutdown_write(&self) {
        // Failure only means the peer is already gone, which removal handles.
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    /// Switches to WebSocket after the `101` has been queued.
    pub fn open(&mut self, session: Session, now: Instant) {
        self.output.mark_frame_start();
        self.phase = Phase::Open(session);
        self.phase_since = now;
        self.last_input = now;
    }

    /// Hands WebSocket bytes to the session (`None` unless open); see [`Session::feed`].
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

    /// Restarts the phase's clock: a keep-alive connection gets a fresh handshake timeout for
    /// its next request.
    pub fn restart_phase(&mut self, now: Instant) {
        self.phase_since = now;
    }

    /// Stops processing input; queued bytes are still flushed.
    pub fn begin_closing(&mut self, now: Instant) {
        self.phase = Phase::Closing;
        self.phase_since = now;
    }

    /// Queues a Close frame and starts closing (the frame follows everything already queued).
    pub fn close_with(&mut self, code: u16, reason: &str, now: Instant) {
        let mut close = Vec::with_capacity(frame::MAX_HEADER_LEN + 2 + reason.len());
        frame::encode_close(code, reason, &mut close);
        self.push(&close, now);
        self.begin_closing(now);
    }

    /// Whether a keep-alive connection is idle between requests (its timeout is an idle close,
    /// not a failed handshake).
    pub fn is_between_requests(&self) -> bool {
        matches!(&self.phase, Phase::Http(reader) if reader.is_between_requests())
    }

    /// Whether broadcasts should be queued for this connection.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_)) && !self.slow
    }

    /// What is due at `now`: a ping, a timeout, or nothing until the returned instant.
    pub fn check(&mut self, now: Instant, timeouts: &Timeouts) -> Due {
        // Checks come at most every ping interval: a good moment to give back the memory of a
        // queue that is empty now.
        self.output.release();
        if !self.output.is_empty() && now >= self.last_progress + timeouts.write {
            return Due::Expired(Expiry::WriteStall);
        }
        let expired = match &self.phase {
            Phase::Http(_) => {
                (now >= self.phase_since + timeouts.handshake).then_some(Expiry::Handshake)
            }
            Phase::Closing => (now >= self.phase_since + timeouts.write).then_some(Expiry::Linger),
            Phase::Open(_) => (now >= self.last_input + timeouts.idle).then_some(Expiry::Idle),
        };
        if let Some(expiry) = expired {
            return Due::Expired(expiry);
        }
        let mut ping = false;
        if let Phase::Open(session) = &mut self.phase
            && now >= session.next_ping
        {
            session.next_ping = now + timeouts.ping_interval;
            ping = true;
        }
        Due::Later {
            at: self.earliest_deadline(timeouts),
            ping,
        }
    }

    /// The instant by which the liveness timer must fire given the current state (used to pull
    /// the timer earlier when output starts stalling or the connection starts closing).
    pub fn earliest_deadline(&self, timeouts: &Timeouts) -> Instant {
        let phase_deadline = match &self.phase {
            Phase::Http(_) => self.phase_since + timeouts.handshake,
            Phase::Closing => self.phase_since + timeouts.write,
            Phase::Open(session) => (self.last_input + timeouts.idle).min(session.next_ping),
        };
        if self.output.is_empty() {
            phase_deadline
        } else {
            phase_deadline.min(self.last_progress + timeouts.write)
        }
    }
}

impl Session {
    /// A session whose first server Ping is due one interval from `now`.
    pub fn new(
        rooms: Option<RoomRule>,
        bucket: Option<TokenBucket>,
        ping_interval: Duration,
        now: Instant,
    ) -> Session {
        Session {
            ctx: None,
            bucket: bucket.map(Box::new),
            rooms: rooms.map(Box::new),
            next_ping: now + ping_interval,
        }
    }

    /// Whether this connection may join `room` (the JWT `rooms` claim).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|rule| rule.allows(room))
    }

    /// Feeds bytes read from the socket to tungstenite; complete messages are appended to
    /// `inbox` and tungstenite's own replies (pongs, the close reply) to `output`.
    pub fn feed(
        &mut self,
        input: &[u8],
        output: &mut OutputQueue,
        config: &WebSocketConfig,
        inbox: &mut Vec<Message>,
    ) -> Feed {
        let ctx = self
            .ctx
            .get_or_insert_with(|| Box::new(WebSocketContext::new(Role::Server, Some(*config))));
        let mut wire = Wire { input, output };
        loop {
            match ctx.read(&mut wire) {
                Ok(message) => inbox.push(message),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Feed::Open,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return Feed::Closed,
                Err(WsError::Capacity(_)) => {
                    return Feed::Failed(close_code::TOO_BIG, "message too big");
                }
                Err(WsError::Utf8(_)) => {
                    return Feed::Failed(close_code::INVALID_PAYLOAD, "invalid UTF-8");
                }
                Err(WsError::Protocol(_)) => {
                    return Feed::Failed(close_code::PROTOCOL_ERROR, "protocol error");
                }
                Err(_) => return Feed::Failed(close_code::INTERNAL_ERROR, "internal error"),
            }
        }
    }
}

/// tungstenite's view of the connection: reads come from bytes the loop already read, writes
/// (pongs and close replies, whole frames) go to the connection's output queue.
struct Wire<'a> {
    /// Bytes not yet handed to tungstenite.
    input: &'a [u8],
    /// Where tungstenite's replies are queued.
    output: &'a mut OutputQueue,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Ok(0) would mean end of stream to tungstenite.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.len().min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(64)
            .max_message_size(Some(1024))
            .max_frame_size(Some(1024))
    }

    fn session() -> Session {
        Session::new(None, None, Duration::from_secs(30), Instant::now())
    }

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn messages_split_across_reads_come_out_whole() {
        let mut session = session();
        let mut output = OutputQueue::default();
        let mut inbox = Vec::new();
        let bytes = [client_frame(0x81, b"hello"), client_frame(0x82, &[0, 1, 2])].concat();
        for byte in &bytes {
            assert_eq!(
                session.feed(
                    std::slice::from_ref(byte),
                    &mut output,
                    &config(),
                    &mut inbox
                ),
                Feed::Open
            );
        }
        assert_eq!(
            inbox,
            [Message::text("hello"), Message::binary(vec![0, 1, 2])]
        );
        assert!(output.is_empty());
    }

    #[test]
    fn ping_is_answered_with_the_same_payload() {
        let mut session = session();
        let mut output = OutputQueue::default();
        let mut inbox = Vec::new();
        session.feed(
            &client_frame(0x89, b"abc"),
            &mut output,
            &config(),
            &mut inbox,
        );
        session.feed(&[], &mut output, &config(), &mut inbox);
        assert_eq!(output.front(usize::MAX), &[0x8A, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn protocol_errors_map_to_close_codes() {
        let cases: [(Vec<u8>, u16); 4] = [
            (
                client_frame(0x81, &[0xC3, 0x28]),
                close_code::INVALID_PAYLOAD,
            ),
            (client_frame(0x82, &[0; 2000]), close_code::TOO_BIG),
            (client_frame(0x83, b"x"), close_code::PROTOCOL_ERROR),
            (vec![0x81, 0x01, b'x'], close_code::PROTOCOL_ERROR),
        ];
        for (bytes, code) in cases {
            let mut output = OutputQueue::default();
            let feed = session().feed(&bytes, &mut output, &config(), &mut Vec::new());
            assert!(
                matches!(feed, Feed::Failed(c, _) if c == code),
                "{feed:?} for {bytes:?}"
            );
        }
    }

    #[test]
    fn close_handshake_queues_the_reply() {
        let mut session = session();
        let mut output = OutputQueue::default();
        let mut inbox = Vec::new();
        let feed = session.feed(
            &client_frame(0x88, &1000u16.to_be_bytes()),
            &mut output,
            &config(),
            &mut inbox,
        );
        assert_eq!(feed, Feed::Closed);
        assert_eq!(output.front(usize::MAX), &[0x88, 2, 0x03, 0xE8]);
    }
}
