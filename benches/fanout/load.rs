//! The client side of a run: one thread and one `mio::Poll` driving every connection through
//! three phases: connect all clients (with `--room`, until each has its join reply), publish
//! for a while, drain what is still in flight.
//!
//! With several URLs (instances of one hub) the publishers all connect to the first one and the
//! other clients go round-robin over all of them, so that every message has to cross from the
//! first instance to the others.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::config::{Config, Protocol, WsUrl};
use crate::conn::{Closed, Conn, Inbox, Reading};
use crate::events::{self, EventReader};
use crate::message::{self, Stamp};
use crate::tally::{Receiver, Tally};
use crate::wire;

/// Connects in flight at once: under the accept backlog of a listener made by mio's or std's
/// `bind` (128), so no SYN is dropped and retried a second later.
const CONNECT_CONCURRENCY: usize = 100;
/// Clients that are still not upgraded after this count as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Clients per 127.0.0.x source address: below the 28 000 ports of Linux's default ephemeral
/// range, so 19 000+ clients never run out of source ports.
const CLIENTS_PER_SOURCE: usize = 10_000;
/// The longest the loop sleeps when nothing happens, to check deadlines and due messages.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The drain waits at most this long for messages still in flight after publishing stops...
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// ... and gives up earlier once nothing has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// Any non-zero start for the xorshift mask-key generator.
const MASK_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 4096;

/// What happened to the connections, for the report.
#[derive(Default)]
pub struct ConnCounts {
    pub connected: usize,
    pub connect_failed: usize,
    pub closed_by_server: usize,
    pub protocol_errors: usize,
    /// The first failure, so a report of failures also says why.
    pub first_error: Option<String>,
    /// Per URL, in `--url` order.
    pub targets: Vec<TargetCounts>,
}

/// How the clients of one URL fared.
#[derive(Clone, Copy, Default)]
pub struct TargetCounts {
    /// Clients sent to this URL.
    pub clients: usize,
    /// Clients whose upgrade succeeded.
    pub connected: usize,
}

impl ConnCounts {
    fn record_close(&mut self, was_open: bool, closed: Closed) {
        let note = match closed {
            _ if !was_open => {
                self.connect_failed += 1;
                Some(closed.to_string())
            }
            Closed::ByServer | Closed::Io(_) => {
                self.closed_by_server += 1;
                None
            }
            Closed::Protocol(_) => {
                self.protocol_errors += 1;
                Some(closed.to_string())
            }
        };
        if self.first_error.is_none() {
            self.first_error = note;
        }
    }
}

/// One URL clients connect to.
struct Endpoint {
    address: SocketAddrV4,
    /// Every client of this URL sends the same upgrade request.
    upgrade_request: Vec<u8>,
}

pub struct Load {
    poll: Poll,
    events: Events,
    /// Index = mio token; `None` once closed, so a token never names two connections.
    conns: Vec<Option<Conn>>,
    /// Connection index of each publisher, spread evenly over the clients so that publishers are
    /// not all first (or last) in the server's pass over its connections.
    publishers: Vec<usize>,
    /// Connections started but neither upgraded nor failed yet.
    connecting: usize,
    /// Where the round-robin of `--rate` publishing goes on.
    next_publisher: usize,
    /// Receivers (clients that do not publish) started so far: the next one's URL is this
    /// modulo the number of URLs.
    receivers_started: usize,
    inbox: Inbox,
    /// The URLs, in `--url` order; publishers use the first.
    endpoints: Vec<Endpoint>,
    /// The message being stamped and sent, allocated once: the stamped text itself, or with
    /// `--room` the event that carries it.
    message: Vec<u8>,
    /// Where the stamped text starts in `message`.
    stamp_at: usize,
    /// xorshift state for mask keys: RFC 6455 wants them unpredictable, a bench needs them cheap.
    mask_state: u64,
    published: u64,
    counts: ConnCounts,
}

impl Load {
    /// Prepares a run against `urls`, which must not be empty.
    pub fn new(config: &Config, urls: &[WsUrl], clock: Instant) -> io::Result<Self> {
        let publishers = (0..config.publishers)
            .map(|publisher| publisher * config.clients / config.publishers)
            .collect();
        let endpoints = urls
            .iter()
            .map(|url| Endpoint {
                address: url.address,
                upgrade_request: wire::upgrade_request(&url.host, &url.path, "").into_bytes(),
            })
            .collect();
        let stamped = message::template(config.size);
        let (message, stamp_at, reading) = match &config.protocol {
            Protocol::Raw => (stamped, 0, Reading::Lines),
            Protocol::Events { room } => {
                let (envelope, stamp_at) = events::message_envelope(room, &stamped);
                let reading = Reading::Events {
                    join_request: events::join_request(room),
                    reader: EventReader::default(),
                };
                (envelope, stamp_at, reading)
            }
        };
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            conns: Vec::with_capacity(config.clients),
            publishers,
            connecting: 0,
            next_publisher: 0,
            receivers_started: 0,
            inbox: Inbox::new(
                clock,
                reading,
                Tally::new(config.publishers, urls.len(), config.size),
            ),
            endpoints,
            message,
            stamp_at,
            mask_state: MASK_SEED,
            published: 0,
            counts: ConnCounts {
                targets: vec![TargetCounts::default(); urls.len()],
                ..ConnCounts::default()
            },
        })
    }

    pub fn tally(&self) -> &Tally {
        &self.inbox.tally
    }

    pub fn counts(&self) -> &ConnCounts {
        &self.counts
    }

    /// Ends the run, closing every client, and hands over how the connections fared.
    pub fn into_counts(self) -> ConnCounts {
        self.counts
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    /// Publishers the server has not closed: when it drops them all, publishing stops early.
    pub fn open_publishers(&self) -> usize {
        self.publishers
            .iter()
            .filter(|&&index| self.conns[index].is_some())
            .count()
    }

    /// Nanoseconds on the bench clock, the unit of message stamps.
    pub fn now_ns(&self) -> u64 {
        self.inbox.now_ns()
    }

    /// Opens `clients` connections, a bounded number at a time, and waits for their upgrades
    /// (with `--room`, for their join replies).
    pub fn connect_all(&mut self, clients: usize) -> io::Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while self.conns.len() < clients || self.connecting > 0 {
            while self.conns.len() < clients && self.connecting < CONNECT_CONCURRENCY {
                self.start_client();
            }
            if Instant::now() >= deadline {
                self.abandon_connecting();
                break;
            }
            self.dispatch(Some(POLL_INTERVAL))?;
        }
        Ok(())
    }

    /// Keeps the connections served (pings answered) for `duration`, publishing nothing.
    pub fn idle(&mut self, duration: Duration) -> io::Result<()> {
        let start = Instant::now();
        while let Some(left) = duration.checked_sub(start.elapsed()) {
            self.dispatch(Some(left.min(POLL_INTERVAL)))?;
        }
        Ok(())
    }

    /// Publishes for `duration`: at `rate` messages per second spread round-robin over the
    /// publishers, or with `rate` 0 as fast as each publisher's `window` allows.
    pub fn publish(&mut self, duration: Duration, rate: u64, window: u32) -> io::Result<()> {
        let start = Instant::now();
        while let Some(left) = duration.checked_sub(start.elapsed()) {
            let mut timeout = left.min(POLL_INTERVAL);
            if rate == 0 {
                self.fill_windows(window);
            } else if let Some(next_due) = self.publish_due(start.elapsed(), rate) {
                timeout = timeout.min(next_due);
            }
            self.flush_publishers();
            self.dispatch(Some(timeout))?;
        }
        Ok(())
    }

    /// Sends what the schedule says is due `elapsed` into publishing (message k is due k/rate
    /// seconds in) and returns how long until the next one; `None` once no publisher is left.
    fn publish_due(&mut self, elapsed: Duration, rate: u64) -> Option<Duration> {
        let due = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 + 1;
        let now_ns = self.now_ns();
        while self.published < due {
            let publisher = self.next_open_publisher()?;
            self.publish_one(publisher, now_ns);
            self.next_publisher = publisher + 1;
        }
        let next_due_ns = u128::from(self.published) * 1_000_000_000 / u128::from(rate);
        Some(Duration::from_nanos(next_due_ns as u64).saturating_sub(elapsed))
    }

    /// Tops every publisher up to `window` of its own messages in flight.
    fn fill_windows(&mut self, window: u32) {
        let now_ns = self.now_ns();
        for publisher in 0..self.publishers.len() {
            while self.inbox.tally.in_flight(publisher) < window
                && self.publish_one(publisher, now_ns)
            {}
        }
    }

    /// Waits for messages still in flight: until every open client has them all, nothing has
    /// arrived for `DRAIN_QUIET`, or `DRAIN_TIMEOUT` has passed.
    pub fn drain(&mut self) -> io::Result<()> {
        let start_ns = self.now_ns();
        let quiet_ns = DRAIN_QUIET.as_nanos() as u64;
        let timeout_ns = DRAIN_TIMEOUT.as_nanos() as u64;
        loop {
            let now_ns = self.now_ns();
            let last_news_ns = start_ns.max(self.inbox.tally.last_delivery_ns());
            if self.all_delivered()
                || now_ns - last_news_ns >= quiet_ns
                || now_ns - start_ns >= timeout_ns
            {
                return Ok(());
            }
            self.dispatch(Some(POLL_INTERVAL))?;
        }
    }

    fn all_delivered(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .all(|conn| conn.received() >= self.published)
    }

    fn start_client(&mut self) {
        let index = self.conns.len();
        let source_host = 2 + (index / CLIENTS_PER_SOURCE % 250) as u8;
        let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, source_host), 0);
        let publisher = self
            .publishers
            .iter()
            .position(|&conn| conn == index)
            .map(|publisher| publisher as u32);
        let target = match publisher {
            Some(_) => 0,
            None => {
                self.receivers_started += 1;
                (self.receivers_started - 1) % self.endpoints.len()
            }
        };
        self.counts.targets[target].clients += 1;
        let receiver = Receiver::new(publisher, target, self.publishers.len());
        let address = self.endpoints[target].address;
        let registry = self.poll.registry();
        match Conn::connect(source, address, receiver, registry, Token(index)) {
            Ok(conn) => {
                self.conns.push(Some(conn));
                self.connecting += 1;
            }
            Err(err) => {
                self.conns.push(None);
                self.counts.record_close(false, Closed::Io(err));
            }
        }
    }

    /// Gives up on connections that did not finish in time.
    fn abandon_connecting(&mut self) {
        for slot in &mut self.conns {
            if slot.as_ref().is_some_and(|conn| !conn.is_open()) {
                *slot = None;
                let timed_out =
                    io::Error::new(io::ErrorKind::TimedOut, "upgrade (or join) timed out");
                self.counts.record_close(false, Closed::Io(timed_out));
            }
        }
        self.connecting = 0;
    }

    /// The next publisher in round-robin order whose connection is still open.
    fn next_open_publisher(&self) -> Option<usize> {
        let count = self.publishers.len();
        (0..count)
            .map(|offset| (self.next_publisher + offset) % count)
            .find(|&publisher| self.conns[self.publishers[publisher]].is_some())
    }

    /// Queues one stamped message on `publisher`'s connection; false if it is closed.
    fn publish_one(&mut self, publisher: usize, now_ns: u64) -> bool {
        let Some(conn) = self.conns[self.publishers[publisher]].as_mut() else {
            return false;
        };
        let stamp = Stamp {
            sent_ns: self.inbox.tally.sent(publisher, now_ns),
            publisher: publisher as u32,
        };
        message::stamp(&mut self.message[self.stamp_at..], &stamp);
        conn.queue_text(&self.message, next_mask(&mut self.mask_state));
        self.published += 1;
        true
    }

    /// One write per publisher for everything it queued in this turn.
    fn flush_publishers(&mut self) {
        for publisher in 0..self.publishers.len() {
            let index = self.publishers[publisher];
            if let Some(Err(closed)) = self.conns[index].as_mut().map(Conn::flush) {
                self.close(index, closed);
            }
        }
    }

    /// Waits for readiness and lets each ready connection do its I/O.
    fn dispatch(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(()),
            result => result?,
        }
        // Taken out for the loop so that handling an event may use `&mut self`; an empty
        // `Events` does not allocate.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in &events {
            let index = event.token().0;
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            let was_open = conn.is_open();
            let upgrade_request = &self.endpoints[conn.target()].upgrade_request;
            match conn.on_event(event.is_writable(), upgrade_request, &mut self.inbox) {
                Ok(()) if !was_open && conn.is_open() => {
                    self.connecting -= 1;
                    self.counts.connected += 1;
                    self.counts.targets[conn.target()].connected += 1;
                }
                Ok(()) => {}
                Err(closed) => self.close(index, closed),
            }
        }
        self.events = events;
        Ok(())
    }

    /// Drops a connection (closing its socket) and counts why it ended.
    fn close(&mut self, index: usize, closed: Closed) {
        let Some(conn) = self.conns[index].take() else {
            return;
        };
        let was_open = conn.is_open();
        if !was_open {
            self.connecting -= 1;
        }
        self.counts.record_close(was_open, closed);
    }
}

fn next_mask(state: &mut u64) -> [u8; 4] {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state as u32).to_le_bytes()
}
