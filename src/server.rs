//! The event loop: one `mio::Poll` on one thread owns the listener, every connection, the hub
//! and the timers.
//!
//! Each turn: wait for readiness (or the next timer), read every ready socket and act on what
//! arrived (HTTP requests, WebSocket messages), expire timers, close slow consumers, then write
//! every connection with pending output once, at most [`MAX_WRITE_PER_TURN`] bytes each, and
//! finally remove the connections that ended. A fan-out only appends the same frame bytes to each
//! recipient's queue; nothing is written to a socket in the middle of one.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

use crate::assets::Assets;
use crate::auth::JwtVerifier;
use crate::config::{Config, Protocol};
use crate::conn::{Connection, Due, Expiry, Feed, Flushed, Phase, Session, Timeouts, close_code};
use crate::events::{self, Delivery, Failure};
use crate::frame::{self, OpCode};
use crate::http::request::Limits;
use crate::http::route::{self, json_error};
use crate::http::upgrade::{Claim, Policy, switching_protocols};
use crate::http::{Response, Route, RouteContext, Upgrade};
use crate::hub::{ConnId, Hub};
use crate::metrics::{Gauges, HandshakeFailure, Metrics};
use crate::netaddr;
use crate::ratelimit::TokenBucket;
use crate::signals::Signals;
use crate::timer::TimerWheel;

const LISTENER: Token = Token(usize::MAX);
const SHUTDOWN_SIGNAL: Token = Token(usize::MAX - 1);
const HANGUP_SIGNAL: Token = Token(usize::MAX - 2);

/// Most bytes written to one connection per turn, so one big backlog cannot starve the others
/// (Redis uses the same 64 KiB).
const MAX_WRITE_PER_TURN: usize = 64 * 1024;

/// Writes between two non-blocking polls during a write pass: a pass over thousands of
/// connections takes milliseconds, and messages that arrive meanwhile should ride in the
/// writes still to come (a poll costs about as much as one write).
const MID_PASS_POLL_INTERVAL: usize = 32;

/// Most bytes read from one connection per turn before the others get their turn.
const MAX_READ_PER_TURN: usize = 256 * 1024;

/// Size of the one read buffer shared by every connection.
const SCRATCH_SIZE: usize = 64 * 1024;

/// tungstenite's per-connection read buffer. It is allocated eagerly (128 KiB by default), so
/// it is kept small: bytes are read into the shared scratch buffer and tungstenite copies from
/// there; a frame larger than this grows the buffer for that frame only.
const WS_READ_BUFFER: usize = 256;

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Connections still speaking HTTP (or being refused) on top of `--max-connections` WebSocket
/// connections, for sizing the per-connection tables.
const HTTP_HEADROOM: usize = 1024;

/// Beyond this many connections the per-connection tables grow on demand instead of being
/// reserved at start-up, so an absurd `--max-connections` cannot reserve gigabytes.
const MAX_PRESIZED_CONNECTIONS: usize = 1 << 20;

/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;

/// How long to wait before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The server: bind with [`Server::bind`], then [`Server::run`] until shutdown.
pub struct Server {
    poll: Poll,
    /// The listening socket; dropped when shutdown starts so new connections are refused.
    listener: Option<TcpListener>,
    /// The address actually bound (useful with port 0).
    local_addr: SocketAddr,
    /// The settings the server was started with.
    config: Config,
    /// The timeouts liveness checks apply, derived from `config` once.
    timeouts: Timeouts,
    /// tungstenite settings shared by every connection (sizes and limits).
    ws_config: WebSocketConfig,
    /// The page's files.
    assets: Assets,
    /// Checks upgrade tokens when `--jwt-secret` is set.
    verifier: Option<JwtVerifier>,
    /// Connections and the per-turn lists about them.
    out: Outputs,
    /// Open WebSocket connections (the slab also holds HTTP and closing ones).
    open_count: usize,
    /// Rooms, users and their connections; every open WebSocket connection is registered.
    hub: Hub,
    /// One liveness timer per connection, keyed by slab key.
    timers: TimerWheel<usize>,
    metrics: Metrics,
    /// The read buffer every connection is read into.
    scratch: Vec<u8>,
    /// Messages tungstenite produced for the connection being read, dispatched once the
    /// connection is no longer borrowed.
    inbox: Vec<Message>,
    /// Events the `events` protocol asked to send, before they are framed and fanned out.
    deliveries: Vec<Delivery>,
    /// The frame being fanned out: encoded once, appended to every recipient.
    frame: Vec<u8>,
    /// Connections whose read budget ran out with input possibly left (or whose reading just
    /// resumed): read again next turn.
    backlog: Vec<usize>,
    /// Last turn's `backlog`, being read in this turn.
    backlog_due: Vec<usize>,
    /// Connections to remove at the end of the turn.
    doomed: Vec<usize>,
    /// Connections written during the current write pass (reused between passes).
    written: Vec<usize>,
    /// Timers fired this turn.
    fired: Vec<usize>,
    /// The time of this turn: taken once after poll returns.
    now: Instant,
    /// Names anonymous users `anon-<n>`.
    anon_counter: u64,
    /// SIGINT/SIGTERM/SIGHUP pipes, when installed.
    signals: Option<Signals>,
    /// Set once shutdown began: connections are drained until then, and the loop ends.
    drain_deadline: Option<Instant>,
    /// Accepting is paused until then after the process ran out of file descriptors.
    accept_paused_until: Option<Instant>,
    /// Most sockets held at once (WebSocket and HTTP): `--max-connections` plus headroom for
    /// connections still speaking HTTP, so plain HTTP clients cannot exhaust descriptors.
    connection_cap: usize,
}

/// The connections and the per-turn lists a fan-out appends to, kept apart from the hub so a
/// room's member list can be walked while recipients' queues grow.
struct Outputs {
    conns: Slab<Connection>,
    /// Connections with output to write this turn (each at most once: `Connection::dirty`).
    dirty: Vec<usize>,
    /// Connections flagged during a fan-out for exceeding `--max-buffered`; closed afterwards.
    slow: Vec<usize>,
    /// `--max-buffered`.
    max_buffered: usize,
}

impl Outputs {
    /// Appends `frame` to an open connection's output; false when it does not take messages.
    ///
    /// A connection is flagged slow only when it is over `--max-buffered` *and* its socket is
    /// full: a reader that keeps up but has a backlog because one sender bursted is not slow,
    /// it is written without the fair-share cap until it catches up (see `flush`).
    fn send(&mut self, key: usize, frame: &[u8], now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if !conn.is_open() {
            return false;
        }
        conn.push(frame, now);
        if conn.blocked && conn.output.len() > self.max_buffered {
            conn.slow = true;
            self.slow.push(key);
        }
        self.mark_dirty(key);
        true
    }

    /// Queues `key` for writing this turn if it has output and its socket can take it.
    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
            && !conn.blocked
            && !conn.output.is_empty()
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// The socket reported WRITABLE: a blocked connection may be written again.
    fn on_writable(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.blocked = false;
        }
        self.mark_dirty(key);
    }
}

impl Server {
    /// Binds the listener and loads the page; nothing runs until [`Server::run`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let addr = resolve(&config.listen)?;
        let mut listener = TcpListener::from_std(listen(addr)?);
        let local_addr = listener.local_addr()?;
        let assets = match &config.assets {
            Some(dir) => Assets::from_dir(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("could not read assets from {}: {e}", dir.display()),
                )
            })?,
            None => Assets::embedded(),
        };
        let verifier = config
            .jwt_secret
            .as_ref()
            .map(|secret| JwtVerifier::new(secret.as_bytes(), config.jwt_leeway));
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        // Per-connection tables are sized for the connection limit up front: pages are only
        // touched as connections arrive, and none of them ever doubles (and holds twice the
        // memory) on the way up.
        let capacity = config
            .max_connections
            .saturating_add(HTTP_HEADROOM)
            .min(MAX_PRESIZED_CONNECTIONS);
        let mut timers: TimerWheel<usize> = TimerWheel::new(now);
        timers.reserve(capacity);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            timeouts: Timeouts {
                handshake: config.handshake_timeout,
                ping_interval: config.ping_interval,
                idle: config.idle_timeout,
                write: config.write_timeout,
            },
            ws_config,
            assets,
            verifier,
            out: Outputs {
                conns: Slab::with_capacity(capacity),
                dirty: Vec::new(),
                slow: Vec::new(),
                max_buffered: config.max_buffered,
            },
            open_count: 0,
            hub: Hub::with_capacity(capacity),
            timers,
            metrics: Metrics::default(),
            scratch: vec![0; SCRATCH_SIZE],
            inbox: Vec::new(),
            deliveries: Vec::new(),
            frame: Vec::new(),
            backlog: Vec::new(),
            backlog_due: Vec::new(),
            doomed: Vec::new(),
            written: Vec::new(),
            fired: Vec::new(),
            now,
            anon_counter: 0,
            signals: None,
            drain_deadline: None,
            accept_paused_until: None,
            connection_cap: config.max_connections.saturating_add(HTTP_HEADROOM),
            config,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes SIGINT/SIGTERM start a graceful shutdown and SIGHUP harmless (process-wide, so
    /// only the daemon calls it, not tests that run several servers in one process).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        self.signals = Some(Signals::install(
            self.poll.registry(),
            SHUTDOWN_SIGNAL,
            HANGUP_SIGNAL,
        )?);
        Ok(())
    }

    /// Runs the loop until a shutdown signal has been handled and the connections drained.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout();
            self.poll_and_dispatch(&mut events, timeout)?;
            self.end_turn(&mut events);
            if let Some(deadline) = self.drain_deadline
                && (self.out.conns.is_empty() || self.now >= deadline)
            {
                info!(
                    "shutdown complete ({} connections left undrained)",
                    self.out.conns.len()
                );
                return Ok(());
            }
        }
    }

    /// Waits up to `timeout` for readiness and acts on every event.
    fn poll_and_dispatch(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        if let Err(e) = self.poll.poll(events, timeout) {
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        self.now = Instant::now();
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                SHUTDOWN_SIGNAL => self.on_shutdown_signal(),
                HANGUP_SIGNAL => {
                    if let Some(signals) = &mut self.signals {
                        signals.drain_hangup();
                    }
                    info!("SIGHUP received: there is nothing to reload; still running");
                }
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.on_readable(key);
                    }
                    if event.is_writable() {
                        self.out.on_writable(key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything after the readiness events: backlog reads, timers, slow consumers, writes,
    /// removals.
    fn end_turn(&mut self, events: &mut Events) {
        let mut due = std::mem::take(&mut self.backlog_due);
        for key in due.drain(..) {
            self.serve_requests(key);
            self.on_readable(key);
        }
        self.backlog_due = std::mem::replace(&mut self.backlog, due);
        if self
            .accept_paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.accept_paused_until = None;
            self.accept();
        }
        self.expire_timers();
        self.close_slow_consumers();
        self.flush(events);
        self.reap();
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.out.dirty.is_empty()
            || !self.backlog.is_empty()
            || !self.backlog_due.is_empty()
            || !self.out.slow.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        [
            self.timers.next_timeout(now),
            self.accept_paused_until
                .map(|t| t.saturating_duration_since(now)),
            self.drain_deadline
                .map(|t| t.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn accept(&mut self) {
        loop {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) if self.out.conns.len() >= self.connection_cap => {
                    // Every slot is taken (WebSocket connections up to the limit plus HTTP
                    // headroom): closing at once beats letting the descriptor table fill up.
                    debug!("{peer}: refused, {} connections open", self.out.conns.len());
                    drop(socket);
                }
                Ok((socket, peer)) => self.add_connection(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Typically EMFILE: the descriptor limit is reached. The pending connection
                    // stays in the backlog; try again shortly instead of spinning.
                    error!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn add_connection(&mut self, socket: mio::net::TcpStream, peer: SocketAddr) {
        // Writes are already coalesced per turn, so Nagle would only add latency.
        if let Err(e) = socket.set_nodelay(true) {
            debug!("{peer}: set_nodelay failed: {e}");
        }
        let entry = self.out.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Connection::new(socket, peer, self.now);
        if let Err(e) = conn.register(self.poll.registry(), Token(key)) {
            error!("{peer}: could not register the connection: {e}");
            return;
        }
        let deadline = conn.earliest_deadline(&self.timeouts);
        conn.timer = Some((self.timers.arm(deadline, key), deadline));
        entry.insert(conn);
    }

    /// Reads `key` until `WouldBlock` (or its budget for this turn) and acts on every byte.
    fn on_readable(&mut self, key: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = MAX_READ_PER_TURN;
        while let Some(conn) = self.out.conns.get_mut(key) {
            if conn.doomed || conn.peer_closed || conn.read_paused || conn.slow {
                break;
            }
            match conn.read(&mut scratch) {
                Ok(0) => {
                    self.on_eof(key);
                    break;
                }
                Ok(n) => {
                    self.metrics.bytes_received += n as u64;
                    self.on_input(key, &scratch[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.backlog.push(key);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read failed: {e}", conn.client);
                    self.doom(key);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn on_input(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.out.conns[key];
        match &mut conn.phase {
            Phase::Http(reader) => {
                reader.push(bytes);
                self.serve_requests(key);
            }
            Phase::Open(_) => self.feed(key, bytes),
            Phase::Closing => {}
        }
    }

    /// Hands WebSocket bytes to tungstenite and dispatches the messages that completed.
    fn feed(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.out.conns[key];
        let Some(feed) = conn.feed(bytes, &self.ws_config, &mut self.inbox, self.now) else {
            return;
        };
        if conn.blocked && conn.output.len() > self.out.max_buffered && !conn.slow {
            // Pongs for a ping flood the client never reads count like any other output.
            conn.slow = true;
            self.out.slow.push(key);
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        for message in inbox.drain(..) {
            self.on_message(key, message);
        }
        self.inbox = inbox;
        match feed {
            Feed::Open => {}
            Feed::Closed => {
                debug!("{}: closed by the client", self.out.conns[key].client);
                self.unregister(key);
                self.out.conns[key].begin_closing(self.now);
                self.reschedule(key);
            }
            Feed::Failed(code, reason) => {
                warn!(
                    "{}: closing with {code}: {reason}",
                    self.out.conns[key].client
                );
                self.close(key, code, reason);
            }
        }
        self.out.mark_dirty(key);
    }

    fn on_message(&mut self, key: usize, message: Message) {
        let (opcode, payload) = match &message {
            Message::Text(text) => (OpCode::Text, text.as_bytes()),
            Message::Binary(bytes) => (OpCode::Binary, &bytes[..]),
            _ => return,
        };
        let conn = &mut self.out.conns[key];
        if !conn.is_open() {
            // Flagged slow earlier in this read: it is being closed, its requests are moot.
            return;
        }
        self.metrics.messages_received += 1;
        let Phase::Open(session) = &mut conn.phase else {
            return;
        };
        let allowed = session
            .bucket
            .as_mut()
            .is_none_or(|bucket| bucket.try_take(self.now));
        match self.config.protocol {
            Protocol::Raw | Protocol::Echo if !allowed => {}
            Protocol::Raw => {
                self.frame.clear();
                frame::encode(opcode, payload, &mut self.frame);
                let mut delivered = 0;
                for conn in self.hub.connections() {
                    delivered += u64::from(self.out.send(conn.0, &self.frame, self.now));
                }
                self.metrics.messages_delivered += delivered;
            }
            Protocol::Echo => {
                self.frame.clear();
                frame::encode(opcode, payload, &mut self.frame);
                self.metrics.messages_delivered +=
                    u64::from(self.out.send(key, &self.frame, self.now));
            }
            Protocol::Events => {
                let text = match &message {
                    Message::Text(text) => Some(text.as_str()),
                    _ => None,
                };
                let mut deliveries = std::mem::take(&mut self.deliveries);
                match text {
                    Some(text) if allowed => {
                        let Phase::Open(session) = &self.out.conns[key].phase else {
                            return;
                        };
                        let ctx = events::Context {
                            conn: ConnId(key),
                            now_ms: unix_ms(),
                            may_join: &|room| session.may_join(room),
                            max_message_size: self.config.max_message_size,
                        };
                        events::handle(&mut self.hub, &ctx, text, &mut deliveries);
                    }
                    Some(text) => events::refuse(
                        ConnId(key),
                        Some(text),
                        Failure::RATE_LIMITED,
                        &mut deliveries,
                    ),
                    None => {
                        events::refuse(ConnId(key), None, Failure::BINARY_FRAME, &mut deliveries)
                    }
                }
                self.deliver(&mut deliveries);
                self.deliveries = deliveries;
            }
        }
    }

    /// Frames each delivery once and appends it to every recipient.
    fn deliver(&mut self, deliveries: &mut Vec<Delivery>) {
        for delivery in deliveries.drain(..) {
            self.deliver_one(&delivery);
        }
    }

    /// Frames one delivery and appends it to every recipient; returns how many took it.
    fn deliver_one(&mut self, delivery: &Delivery) -> u64 {
        self.frame.clear();
        frame::encode(OpCode::Text, delivery.json.as_bytes(), &mut self.frame);
        let mut delivered = 0;
        for conn in delivery.target.recipients(&self.hub) {
            delivered += u64::from(self.out.send(conn.0, &self.frame, self.now));
        }
        self.metrics.messages_delivered += delivered;
        delivered
    }

    /// Answers every complete request buffered on an HTTP connection.
    fn serve_requests(&mut self, key: usize) {
        let limits = Limits {
            max_head: self.config.max_header_bytes,
            max_body: self.config.max_message_size,
        };
        loop {
            let Some(conn) = self.out.conns.get_mut(key) else {
                return;
            };
            let Phase::Http(reader) = &mut conn.phase else {
                return;
            };
            if conn.output.len() > self.out.max_buffered {
                // A client pipelining requests without reading the answers: stop answering and
                // reading until its output drains (flush resumes it), so memory stays bounded.
                conn.read_paused = true;
                return;
            }
            let (request, body) = match reader.next(limits) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    if reader.take_continue() {
                        conn.push(b"HTTP/1.1 100 Continue\r\n\r\n", self.now);
                        self.out.mark_dirty(key);
                    }
                    return;
                }
                Err(refused) => {
                    debug!(
                        "{}: request refused with {}: {}",
                        conn.client, refused.status, refused.why
                    );
                    if refused
                        .path
                        .as_deref()
                        .is_none_or(|path| path == self.config.ws_path)
                    {
                        self.metrics
                            .handshake_failed(HandshakeFailure::from_status(refused.status));
                    }
                    self.respond(key, &route::refusal(&refused), true);
                    return;
                }
            };
            if !self.config.trusted_proxies.is_empty() {
                conn.client = netaddr::client_addr(
                    conn.peer.ip(),
                    request.header_list("x-forwarded-for").as_deref(),
                    request.header("x-real-ip"),
                    &self.config.trusted_proxies,
                );
            }
            let ctx = RouteContext {
                ws_path: &self.config.ws_path,
                policy: Policy {
                    allow_origins: &self.config.allow_origins,
                    verifier: self.verifier.as_ref(),
                    now: SystemTime::now(),
                },
                assets: &self.assets,
                at_capacity: self.open_count >= self.config.max_connections,
                api_key: self.config.api_key.as_deref(),
            };
            let response = match route::route(&request, &ctx) {
                Route::Upgrade(upgrade) => {
                    self.upgrade(key, upgrade);
                    return;
                }
                Route::ApiOnline { room } => self.api_online(room.as_deref()),
                Route::ApiPublish => self.api_publish(&body),
                Route::Metrics => Response::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.render_metrics().into_bytes(),
                ),
                Route::Respond(response) => {
                    if request.path == self.config.ws_path {
                        self.upgrade_refused(key, &response);
                    }
                    response
                }
            };
            let response = if request.keep_alive() {
                response
            } else {
                response.closing()
            };
            self.respond(key, &response, request.method != "HEAD");
            if response.close {
                return;
            }
        }
    }

    /// Counts a refused upgrade by reason and logs why (auth failures at warn: an operator
    /// wants to see those; the body holds the reason, never the token).
    fn upgrade_refused(&mut self, key: usize, response: &Response) {
        let client = self.out.conns[key].client;
        let why = String::from_utf8_lossy(&response.body);
        if response.status == 401 {
            warn!("{client}: upgrade refused: {}", why.trim());
        } else {
            debug!(
                "{client}: upgrade refused with {}: {}",
                response.status,
                why.trim()
            );
        }
        self.metrics
            .handshake_failed(HandshakeFailure::from_status(response.status));
    }

    /// `GET /api/online`: who is online, in a room or anywhere.
    fn api_online(&self, room: Option<&str>) -> Response {
        let (mut users, connections): (Vec<&str>, usize) = match room {
            Some(room) => (
                self.hub.room_users(room).collect(),
                self.hub.room_members(room).len(),
            ),
            None => (self.hub.users().collect(), self.hub.connection_count()),
        };
        users.sort_unstable();
        let body = serde_json::json!({ "room": room, "count": users.len(), "users": users, "connections": connections });
        Response::json(200, body.to_string())
    }

    /// `POST /api/publish`: delivers the body's message like a client's, without `from`.
    fn api_publish(&mut self, body: &[u8]) -> Response {
        let Ok(body) = std::str::from_utf8(body) else {
            return json_error(400, "body must be UTF-8 JSON");
        };
        match events::publish(unix_ms(), self.config.max_message_size, body) {
            Ok(delivery) => {
                let delivered = self.deliver_one(&delivery);
                Response::json(
                    200,
                    serde_json::json!({ "delivered": delivered }).to_string(),
                )
            }
            Err(failure) => json_error(failure.code, failure.error),
        }
    }

    /// Queues an HTTP response; a closing response ends the connection once it is written.
    fn respond(&mut self, key: usize, response: &Response, include_body: bool) {
        let mut bytes = Vec::with_capacity(256 + response.body.len());
        response.encode(include_body, &mut bytes);
        let conn = &mut self.out.conns[key];
        conn.push(&bytes, self.now);
        if response.close {
            conn.begin_closing(self.now);
            self.reschedule(key);
        } else {
            conn.restart_phase(self.now);
        }
        self.out.mark_dirty(key);
    }

    /// Switches an HTTP connection to WebSocket: `101`, the hub, and any bytes that came
    /// after the request head in the same packet.
    fn upgrade(&mut self, key: usize, upgrade: Upgrade) {
        let mut bytes = Vec::with_capacity(256);
        switching_protocols(&upgrade).encode(true, &mut bytes);
        let (user, rooms) = match upgrade.claim {
            Claim::Token(identity) => {
                let name = identity.name.as_deref().unwrap_or("-");
                debug!(
                    "{}: token accepted for {} (name {name})",
                    self.out.conns[key].client, identity.user
                );
                (identity.user, identity.rooms)
            }
            Claim::Named(user) => (user, None),
            Claim::Anonymous => {
                self.anon_counter += 1;
                (format!("anon-{}", self.anon_counter), None)
            }
        };
        let bucket = self
            .config
            .rate_limit
            .map(|rate| TokenBucket::new(rate, self.now));
        let conn = &mut self.out.conns[key];
        conn.push(&bytes, self.now);
        let rest = match &mut conn.phase {
            Phase::Http(reader) => reader.take_rest(),
            _ => Vec::new(),
        };
        debug!("{}: WebSocket open as {user}", conn.client);
        self.hub.connect(ConnId(key), &user);
        conn.open(
            Session::new(rooms, bucket, self.timeouts.ping_interval, self.now),
            self.now,
        );
        self.open_count += 1;
        self.metrics.connections_total += 1;
        self.reschedule(key);
        self.out.mark_dirty(key);
        if !rest.is_empty() {
            self.feed(key, &rest);
        }
    }

    fn on_eof(&mut self, key: usize) {
        let conn = &mut self.out.conns[key];
        conn.peer_closed = true;
        if matches!(conn.phase, Phase::Open(_)) {
            debug!(
                "{}: connection closed without a close handshake",
                conn.client
            );
        }
        self.unregister(key);
        let conn = &mut self.out.conns[key];
        if conn.output.is_empty() {
            self.doom(key);
        } else {
            conn.begin_closing(self.now);
            self.reschedule(key);
        }
    }

    /// Queues a Close frame with `code`, stops taking messages, and leaves the hub.
    fn close(&mut self, key: usize, code: u16, reason: &str) {
        self.unregister(key);
        self.out.conns[key].close_with(code, reason, self.now);
        self.reschedule(key);
        self.out.mark_dirty(key);
    }

    /// Removes an open connection from the hub, telling its rooms when its user left them.
    fn unregister(&mut self, key: usize) {
        if !matches!(self.out.conns[key].phase, Phase::Open(_)) {
            return;
        }
        self.open_count -= 1;
        self.out.conns[key].begin_closing(self.now);
        let mut deliveries = std::mem::take(&mut self.deliveries);
        if self.config.protocol == Protocol::Events {
            events::disconnect(&mut self.hub, ConnId(key), &mut deliveries);
        } else {
            self.hub.disconnect(ConnId(key));
        }
        self.deliver(&mut deliveries);
        self.deliveries = deliveries;
    }

    /// Pulls the connection's timer earlier when its state now needs an earlier check.
    fn reschedule(&mut self, key: usize) {
        let conn = &mut self.out.conns[key];
        let deadline = conn.earliest_deadline(&self.timeouts);
        if conn.timer.is_some_and(|(_, at)| at <= deadline) {
            return;
        }
        if let Some((id, _)) = conn.timer.take() {
            self.timers.cancel(id);
        }
        conn.timer = Some((self.timers.arm(deadline, key), deadline));
    }

    fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(self.now, &mut fired);
        for key in fired.drain(..) {
            let Some(conn) = self.out.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            if conn.doomed {
                continue;
            }
            let peer = conn.client;
            match conn.check(self.now, &self.timeouts) {
                Due::Later { at, ping } => {
                    if ping {
                        self.frame.clear();
                        frame::encode(OpCode::Ping, b"", &mut self.frame);
                        self.out.conns[key].push(&self.frame, self.now);
                        self.out.mark_dirty(key);
                    }
                    self.out.conns[key].timer = Some((self.timers.arm(at, key), at));
                }
                Due::Expired(expiry) => {
                    debug!("{peer}: {expiry:?} timeout");
                    match expiry {
                        Expiry::Idle => self.close(key, close_code::GOING_AWAY, "idle timeout"),
                        Expiry::Handshake => {
                            if !self.out.conns[key].is_between_requests() {
                                self.metrics.handshake_failed(HandshakeFailure::Timeout);
                            }
                            self.doom(key);
                        }
                        Expiry::WriteStall | Expiry::Linger => self.doom(key),
                    }
                }
            }
        }
        self.fired = fired;
    }

    /// Closes every connection flagged during this turn's fan-outs: its queue is cut after the
    /// frame being written, then Close 1008 follows.
    fn close_slow_consumers(&mut self) {
        for key in std::mem::take(&mut self.out.slow) {
            let Some(conn) = self.out.conns.get_mut(key) else {
                continue;
            };
            if conn.doomed || !conn.slow || !matches!(conn.phase, Phase::Open(_)) {
                continue;
            }
            let pending = conn.output.len();
            conn.output.cut_after_current_frame();
            warn!(
                "{}: slow consumer with {pending} bytes pending; disconnecting",
                conn.client
            );
            self.metrics.slow_consumer_disconnects += 1;
            self.close(key, close_code::POLICY_VIOLATION, "slow consumer");
        }
    }

    /// Writes each connection with pending output once, in the order they became dirty.
    ///
    /// Every [`MID_PASS_POLL_INTERVAL`] writes the loop polls (without waiting) and reads what
    /// arrived meanwhile: a message read mid-pass is appended to every queue, so connections
    /// later in this pass carry it in the write they were about to make instead of waiting a
    /// whole pass. A connection already written this pass stays marked dirty until the pass
    /// ends, so it is not written twice; what it received meanwhile goes out next pass.
    fn flush(&mut self, events: &mut Events) {
        let mut written = std::mem::take(&mut self.written);
        let mut blocked = Vec::new();
        let mut sent = 0;
        let mut index = 0;
        while let Some(&key) = self.out.dirty.get(index) {
            index += 1;
            if index % MID_PASS_POLL_INTERVAL == 0
                && let Err(e) = self.poll_and_dispatch(events, Some(Duration::ZERO))
            {
                error!("poll failed during a write pass: {e}");
            }
            let Some(conn) = self.out.conns.get_mut(key) else {
                continue;
            };
            if conn.doomed {
                conn.dirty = false;
                continue;
            }
            let before = conn.output.len();
            // A backlog past half of --max-buffered on a socket that still takes data is the
            // server's doing (a sender bursted); let it drain instead of growing into a
            // slow-consumer disconnect.
            let share = if before > self.out.max_buffered / 2 {
                before
            } else {
                MAX_WRITE_PER_TURN
            };
            let result = conn.flush(share, self.now);
            sent += before - conn.output.len();
            match result {
                Ok(Flushed::Partial) => written.push(key),
                Ok(Flushed::Drained) => {
                    if let Err(e) = conn.want_writable(self.poll.registry(), Token(key), false) {
                        debug!("{}: reregister failed: {e}", conn.client);
                    }
                    if conn.read_paused {
                        conn.read_paused = false;
                        self.backlog.push(key);
                    }
                    if matches!(conn.phase, Phase::Closing) {
                        conn.shutdown_write();
                        if conn.peer_closed {
                            self.doom(key);
                            continue;
                        }
                    }
                    written.push(key);
                }
                Ok(Flushed::Blocked) => {
                    conn.dirty = false;
                    conn.blocked = true;
                    if let Err(e) = conn.want_writable(self.poll.registry(), Token(key), true) {
                        debug!("{}: reregister failed: {e}", conn.client);
                    }
                    blocked.push(key);
                }
                Err(e) => {
                    debug!("{}: write failed: {e}", conn.client);
                    conn.dirty = false;
                    self.doom(key);
                }
            }
        }
        self.metrics.bytes_sent += sent as u64;
        self.out.dirty.clear();
        for key in written.drain(..) {
            if let Some(conn) = self.out.conns.get_mut(key) {
                conn.dirty = !conn.doomed && !conn.output.is_empty();
                if conn.dirty {
                    self.out.dirty.push(key);
                }
            }
        }
        self.written = written;
        for key in blocked {
            self.reschedule(key);
        }
    }

    fn doom(&mut self, key: usize) {
        if let Some(conn) = self.out.conns.get_mut(key)
            && !conn.doomed
        {
            conn.doomed = true;
            self.doomed.push(key);
        }
    }

    /// Removes the connections that ended this turn.
    fn reap(&mut self) {
        for key in std::mem::take(&mut self.doomed) {
            if !self.out.conns.contains(key) {
                continue;
            }
            self.unregister(key);
            let mut conn = self.out.conns.remove(key);
            if let Some((id, _)) = conn.timer.take() {
                self.timers.cancel(id);
            }
            debug!("{}: connection removed", conn.client);
        }
    }

    fn on_shutdown_signal(&mut self) {
        if let Some(signals) = &mut self.signals {
            signals.drain_shutdown();
        }
        if self.drain_deadline.is_some() {
            return;
        }
        info!(
            "shutting down: closing {} WebSocket connections (drain up to {:?})",
            self.open_count, self.config.drain_timeout
        );
        self.drain_deadline = Some(self.now + self.config.drain_timeout);
        if let Some(mut listener) = self.listener.take() {
            // Dropping the listener closes the port; deregistering first keeps poll tidy.
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.out.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.out.conns[key];
            match conn.phase {
                Phase::Open(_) => self.close(key, close_code::GOING_AWAY, "server shutting down"),
                Phase::Http(_) if conn.output.is_empty() => self.doom(key),
                Phase::Http(_) => conn.begin_closing(self.now),
                Phase::Closing => {}
            }
        }
    }

    fn render_metrics(&self) -> String {
        self.metrics.render(Gauges {
            connections: self.open_count,
            rooms: self.hub.room_count(),
            users: self.hub.user_count(),
        })
    }
}

/// A listening socket with a backlog deep enough for connection bursts (std's 128 drops SYNs
/// when a thousand clients connect at once, and each drop costs the client a 1 s retry).
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("could not bind {addr}: {e}"));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(context)?;
    socket.listen(LISTEN_BACKLOG).map_err(context)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn resolve(listen: &str) -> io::Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("invalid --listen address {listen:?}: {e}"),
            )
        })?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--listen {listen:?} resolves to no address"),
            )
        })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
