//! The connection's two state machines, over a real loopback socket and a real `Poll`.

use std::io::Read;
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::*;

const TOKEN: Token = Token(7);

/// A registered server-side connection and the client end of its socket.
struct Pair {
    poll: Poll,
    conn: Connection,
    client: StdTcpStream,
}

fn pair() -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = StdTcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, peer) = listener.accept().expect("accept");
    accepted.set_nonblocking(true).expect("non-blocking");
    let poll = Poll::new().expect("poll");
    let mut conn = Connection::new(TcpStream::from_std(accepted), peer.ip(), Instant::now());
    conn.register(poll.registry(), TOKEN).expect("register");
    Pair { poll, conn, client }
}

fn open(conn: &mut Connection) {
    let now = Instant::now();
    conn.open(Session::new(None, None, Duration::from_secs(30), now), now);
}

impl Pair {
    fn flush(&mut self, max: usize) -> Flushed {
        self.conn
            .flush(max, Instant::now(), self.poll.registry(), TOKEN)
            .expect("write")
    }

    /// Whether the poll reports WRITABLE for the connection within `wait`.
    fn writable_within(&mut self, wait: Duration) -> bool {
        let mut events = Events::with_capacity(8);
        self.poll.poll(&mut events, Some(wait)).expect("poll");
        events
            .iter()
            .any(|event| event.token() == TOKEN && event.is_writable())
    }
}

#[test]
fn a_connection_is_queued_once_until_its_output_drains() {
    let mut pair = pair();
    let now = Instant::now();
    assert!(!pair.conn.queue(), "nothing to write");
    pair.conn.push(b"HTTP/1.1 200 OK\r\n\r\n", now);
    assert!(pair.conn.queue(), "first output puts it on the write list");
    pair.conn.push(b"more", now);
    assert!(!pair.conn.queue(), "already on the list: never twice");
    assert_eq!(pair.flush(4), Flushed::Partial);
    assert!(pair.conn.is_queued(), "a partial write keeps it queued");
    assert_eq!(pair.flush(usize::MAX), Flushed::Drained);
    assert!(!pair.conn.is_queued());
    let mut received = [0u8; 23];
    pair.client.read_exact(&mut received).expect("read");
    assert_eq!(&received, b"HTTP/1.1 200 OK\r\n\r\nmore");
}

#[test]
fn a_full_socket_blocks_until_writable_then_resumes() {
    let mut pair = pair();
    open(&mut pair.conn);
    let chunk = vec![0u8; 1 << 20];
    let now = Instant::now();
    let flushed = loop {
        pair.conn.push(&chunk, now);
        let _ = pair.conn.queue();
        match pair.flush(usize::MAX) {
            Flushed::Blocked => break Flushed::Blocked,
            other => assert!(pair.conn.pending() < 64 << 20, "never blocked: {other:?}"),
        }
    };
    assert_eq!(flushed, Flushed::Blocked);
    assert!(pair.conn.is_blocked());
    pair.conn.push(b"x", now);
    assert!(
        !pair.conn.queue(),
        "new output does not requeue a blocked socket"
    );
    assert!(
        !pair.writable_within(Duration::from_millis(50)),
        "nothing is read yet"
    );

    let mut sink = vec![0u8; 1 << 20];
    pair.client
        .read_exact(&mut sink)
        .expect("the client reads a megabyte");
    assert!(
        pair.writable_within(Duration::from_secs(5)),
        "WRITABLE once the client reads"
    );
    assert!(pair.conn.on_writable(), "WRITABLE puts it back on the list");
    assert!(!pair.conn.on_writable(), "but only once");
    assert!(pair.conn.is_queued());
}

#[test]
fn only_a_connection_in_the_hub_leaves_it_and_only_a_finished_one_is_doomed() {
    let now = Instant::now();
    let mut http = pair().conn;
    assert!(
        !http.leave_open(now),
        "an HTTP connection was never in the hub"
    );
    assert!(!http.lag(), "only an open connection lags");
    assert!(http.doom());
    assert!(!http.doom(), "doomed once");

    let mut conn = pair().conn;
    open(&mut conn);
    assert!(!conn.doom(), "an open connection must leave the hub first");
    assert!(conn.lag());
    assert!(!conn.is_open(), "a lagging connection takes no messages");
    assert!(!conn.reads_input(1), "and is not read");
    assert!(conn.leave_open(now), "lagging is still in the hub");
    assert!(matches!(
        conn.phase(),
        Phase::Closing {
            peer_closed: false,
            after: After::WebSocket
        }
    ));
    assert!(!conn.leave_open(now), "it leaves once");
    assert!(conn.doom());
}

#[test]
fn reading_follows_the_phase_and_the_turns_budget() {
    let mut pair = pair();
    let conn = &mut pair.conn;
    assert!(conn.reads_input(1));
    conn.spend_read_budget(1);
    assert!(!conn.reads_input(1), "no second budget in the same turn");
    assert!(conn.reads_input(2), "a fresh budget next turn");

    conn.pause_reading();
    assert!(!conn.reads_input(2), "paused for its answers to drain");
    assert_eq!(conn.drained(), Drained::ResumeReading);
    assert!(conn.reads_input(2));
    assert_eq!(conn.drained(), Drained::Nothing, "resumed once");

    conn.peer_closed(Instant::now());
    assert!(!conn.reads_input(2), "nothing to read after end of stream");
}

#[test]
fn a_closing_connection_whose_peer_left_finishes_after_its_last_byte() {
    let mut pair = pair();
    let now = Instant::now();
    pair.conn.push(b"HTTP/1.1 400 Bad Request\r\n\r\n", now);
    let _ = pair.conn.queue();
    pair.conn.peer_closed(now);
    assert_eq!(pair.flush(usize::MAX), Flushed::Drained);
    assert_eq!(pair.conn.drained(), Drained::Finished);
    let mut rest = Vec::new();
    pair.client
        .read_to_end(&mut rest)
        .expect("FIN after the answer");
    assert_eq!(rest, b"HTTP/1.1 400 Bad Request\r\n\r\n");
}

#[test]
fn an_open_session_with_its_command_budget_costs_no_more_per_connection() {
    // The per-connection figure ARCHITECTURE.md gives: the session (with its inline
    // `--command-rate` bucket) fits in the space the HTTP phase's request reader takes anyway.
    assert!(size_of::<Session>() <= 56);
    assert!(size_of::<Phase>() <= 64);
    assert!(size_of::<Connection>() <= 248);
}

#[test]
fn an_answered_http_connection_lingers_briefly_a_websocket_close_until_the_write_timeout() {
    let timeouts = Timeouts {
        handshake: Duration::from_secs(10),
        ping_interval: Duration::from_secs(30),
        idle: Duration::from_secs(75),
        write: Duration::from_secs(10),
    };
    let mut answered = pair();
    let now = Instant::now();
    answered.conn.push(b"HTTP/1.1 400 Bad Request\r\n\r\n", now);
    let _ = answered.conn.queue();
    answered.conn.finish_http(now);
    assert_eq!(
        answered.conn.earliest_deadline(&timeouts),
        now + timeouts.write,
        "an answer still being written has the write timeout"
    );
    assert_eq!(answered.flush(usize::MAX), Flushed::Drained);
    assert_eq!(answered.conn.drained(), Drained::Lingering);
    let lingered = answered.conn.earliest_deadline(&timeouts);
    assert!(
        lingered <= Instant::now() + Duration::from_secs(1),
        "written: at most a second more"
    );
    assert!(matches!(
        answered.conn.check(lingered, &timeouts),
        Due::Expired(Expiry::Linger)
    ));

    let mut conn = pair().conn;
    open(&mut conn);
    let now = Instant::now();
    assert!(conn.leave_open(now));
    assert_eq!(conn.drained(), Drained::Nothing);
    assert_eq!(conn.earliest_deadline(&timeouts), now + timeouts.write);
}
