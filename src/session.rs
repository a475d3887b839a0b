//! The WebSocket side of an open connection: tungstenite's protocol state over bytes the loop
//! already read, and what the connection may do (its message and command budgets, its `rooms`
//! claim).
//!
//! No socket and no clock: bytes go in, complete messages and tungstenite's own replies (pongs,
//! the close reply) come out. The loop reads every socket into one shared buffer and hands the
//! bytes here; replies go to the connection's [`OutputQueue`], never to a socket.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::auth::RoomRule;
use crate::frame::close_code;
use crate::outbuf::OutputQueue;
use crate::ratelimit::{Rate, TokenBucket};

/// The WebSocket side of an open connection.
pub struct Session {
    /// tungstenite's protocol state, created when the client first sends a byte: an idle
    /// connection that never speaks then costs no read buffer at all.
    ctx: Option<Box<WebSocketContext>>,
    /// Per-connection message budget when `--rate-limit` is set; boxed so connections pay a
    /// pointer when it is not.
    bucket: Option<Box<TokenBucket>>,
    /// The `--command-rate` bucket for `join`, `quit` and `online` (the requests that make the
    /// hub, or every member of a room, work for one client): when it will be full again. Always
    /// on, so inline, and only its state: the rate is the same for everyone and comes from the
    /// configuration, which keeps an open session within the space the HTTP phase takes
    /// anyway. A `Cell` because the events core draws on it through the same shared borrow of
    /// the session as `may_join`, and only once a frame turns out to be a command.
    commands_full_at: Cell<Instant>,
    /// The JWT `rooms` claim: which rooms this connection may join (`None`: any). Boxed so a
    /// connection without one pays a pointer.
    rooms: Option<Box<RoomRule>>,
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
            commands_full_at: Cell::new(now),
            rooms: rooms.map(Box::new),
            next_ping: now + ping_interval,
        }
    }

    /// When the next server Ping is due.
    pub fn next_ping(&self) -> Instant {
        self.next_ping
    }

    /// True when a Ping is due at `now`; the one after it is then due one `interval` later.
    pub fn ping_due(&mut self, now: Instant, interval: Duration) -> bool {
        let due = now >= self.next_ping;
        if due {
            self.next_ping = now + interval;
        }
        due
    }

    /// Whether this connection may join `room` (the JWT `rooms` claim).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|rule| rule.allows(room))
    }

    /// Whether this connection may reach everyone at once (a message without a room, `online`
    /// without a room): with a `rooms` claim only when it holds `*`.
    pub fn may_reach_everyone(&self) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rule| rule.allows_everyone())
    }

    /// Takes one message from the `--rate-limit` budget; false when the message must be dropped.
    pub fn take_token(&mut self, now: Instant) -> bool {
        self.bucket
            .as_mut()
            .is_none_or(|bucket| bucket.try_take(now))
    }

    /// Takes one command from the `--command-rate` budget (`rate`); false when the command must
    /// be refused.
    pub fn take_command_token(&self, rate: Rate, now: Instant) -> bool {
        let mut full_at = self.commands_full_at.get();
        let taken = rate.try_take(&mut full_at, now);
        self.commands_full_at.set(full_at);
        taken
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

/// The tests' client frame encoder, shared with the integration tests and the bench harness;
/// these tests use its frame encoder only.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/common/wire.rs"]
mod client_wire;

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
        let mut out = Vec::new();
        client_wire::encode_masked(first, payload, [1, 2, 3, 4], &mut out);
        out
    }

    #[test]
    fn command_budget_starts_full_and_refills_at_the_rate() {
        let now = Instant::now();
        let session = Session::new(None, None, Duration::from_secs(30), now);
        let rate = Rate::per_second(20);
        let taken = (0..100)
            .filter(|_| session.take_command_token(rate, now))
            .count();
        assert_eq!(taken, 40);
        assert!(session.take_command_token(rate, now + Duration::from_millis(50)));
        assert!(!session.take_command_token(rate, now + Duration::from_millis(50)));
    }

    #[test]
    fn rooms_claim_bounds_joins_and_reaching_everyone() {
        let with_claim = |patterns: &[&str]| {
            let rule = RoomRule::from(patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>());
            Session::new(Some(rule), None, Duration::from_secs(30), Instant::now())
        };
        let team = with_claim(&["team-*"]);
        assert!(team.may_join("team-a") && !team.may_join("lobby"));
        assert!(!team.may_reach_everyone());
        let star = with_claim(&["team-*", "*"]);
        assert!(star.may_join("lobby") && star.may_reach_everyone());
        assert!(session().may_join("anything") && session().may_reach_everyone());
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
