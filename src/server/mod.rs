//! The event loop: one `mio::Poll` on one thread owns the listener, every connection, the hub
//! and the timers. This file holds the loop and the order of a turn; each concern it calls into
//! has a file of its own:
//!
//! - `accept`: the listening socket, accepting (the connection cap, the per-peer socket bound,
//!   the descriptor backoff) and reaping doomed connections.
//! - `input`: reading a ready socket under its budget and handing the bytes to HTTP or WebSocket.
//! - `http`: answering HTTP requests, the API, and the upgrade to WebSocket.
//! - `websocket`: WebSocket messages to raw / echo / events, and how a session ends.
//! - `fanout`: the one fan-out path: a target and a payload, framed once, queued to every
//!   recipient.
//! - `table`: the connection table and its per-turn lists (write, unread, lagging, doomed).
//! - `write`: the write pass and closing connections that lag behind.
//! - `liveness`: the timer wheel: pings, idle and write timeouts.
//! - `shutdown`: signals and the graceful drain.
//! - `memory`: giving the memory of a drained burst back to the system.
//! - `history`: when room history sweeps what expired.
//! - `redis`: the two Redis sockets (`--redis`), and what goes through Redis or waits for it.
//!
//! A turn: wait for readiness (or the next timer); read the ready connections and note WRITABLE;
//! accept and handle signals; read the connections left unread last turn; expire timers; sweep
//! room history when due; act on Redis; close lagging connections; run one write pass; remove the connections that ended; give back the
//! memory of a drained burst. A fan-out only appends frames to queues; sockets are written in the
//! write pass, each at most once.

mod accept;
mod fanout;
mod history;
mod http;
mod input;
mod liveness;
mod memory;
mod redis;
mod shutdown;
mod table;
mod websocket;
mod write;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;
use mio::event::Event;
use mio::{Events, Poll, Token};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

use crate::assets::Assets;
use crate::auth::JwtVerifier;
use crate::config::Config;
use crate::conn::Timeouts;
use crate::events::{Ask, Delivery};
use crate::history::History;
use crate::hub::{ConnId, Hub};
use crate::metrics::Metrics;
use crate::peers::Peers;

use accept::Acceptor;
use input::SCRATCH_SIZE;
use liveness::Liveness;
use redis::{REDIS_COMMANDS, REDIS_SUBSCRIPTIONS, Redis};
use shutdown::Shutdown;
use table::ConnTable;

/// The listening socket's token; connection tokens are slab keys, which never reach these.
const LISTENER: Token = Token(usize::MAX);
const SHUTDOWN_SIGNAL: Token = Token(usize::MAX - 1);
const HANGUP_SIGNAL: Token = Token(usize::MAX - 2);

/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;

/// Connections still speaking HTTP (or being refused) on top of `--max-connections` WebSocket
/// connections, for sizing the per-connection tables and capping sockets.
const HTTP_HEADROOM: usize = 1024;

/// Beyond this many connections the per-connection tables grow on demand instead of being
/// reserved at start-up, so an absurd `--max-connections` cannot reserve gigabytes.
const MAX_PRESIZED_CONNECTIONS: usize = 1 << 20;

/// tungstenite's per-connection read buffer. It is allocated eagerly (128 KiB by default), so
/// it is kept small: bytes are read into the shared scratch buffer and tungstenite copies from
/// there; a frame larger than this grows the buffer for that frame only.
const WS_READ_BUFFER: usize = 256;

/// Most bytes a recovering join replays (SPEC §11): half of what a connection may have queued
/// (`--max-buffered`), leaving the rest to the live messages that follow, so a replay never
/// makes a client a slow consumer; a longer gap is reported as not recovered.
pub(crate) fn max_replay(config: &Config) -> usize {
    config.max_buffered / 2
}

/// The server: bind with [`Server::bind`], then [`Server::run`] until shutdown.
pub struct Server {
    poll: Poll,
    /// The settings the server was started with.
    config: Config,
    /// tungstenite settings shared by every connection (sizes and limits).
    ws_config: WebSocketConfig,
    /// The page's files.
    assets: Assets,
    /// Checks upgrade tokens when `--jwt-secret` is set.
    verifier: Option<JwtVerifier>,
    /// The listening socket and when accepting may resume.
    acceptor: Acceptor,
    /// Every connection, and the per-turn lists about them.
    table: ConnTable,
    /// Rooms, users and their connections: exactly the connections that are `Open` or `Lagging`.
    hub: Hub,
    /// What each client address holds, against the per-address limits: counted when a
    /// connection is accepted, enters the hub (`upgrade`), leaves it (`leave_hub`) and is
    /// reaped, nowhere else.
    peers: Peers,
    /// One liveness timer per connection.
    liveness: Liveness,
    /// Signals, and the drain once shutdown began.
    shutdown: Shutdown,
    /// The other instances of the hub, through Redis (`--redis`).
    redis: Option<Redis>,
    /// Each room's last messages, for clients that reconnect (SPEC §11); kept in Redis
    /// instead with `--redis`.
    history: History,
    metrics: Metrics,
    /// The read buffer every connection is read into.
    scratch: Vec<u8>,
    /// Messages tungstenite produced for the connection being read, dispatched once the
    /// connection is no longer borrowed.
    inbox: Vec<Message>,
    /// Events the `events` core appends, fanned out by `deliver` right after; kept so its
    /// allocation is reused.
    deliveries: Vec<Delivery>,
    /// Requests the `events` core hands to Redis (`redis::ask`), likewise reused.
    asks: Vec<Ask>,
    /// The listener or a signal pipe became ready: acted on once per turn, after the turn's
    /// reads, never during a write pass (which may see the readiness first).
    services_ready: Vec<Token>,
    /// The time of this turn: taken once after the turn's poll returns, never during a pass.
    now: Instant,
    /// Counts turns, so a connection can tell whether it already used this turn's read budget.
    turn: u64,
}

impl Server {
    /// Binds the listener and loads the page; nothing runs until [`Server::run`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let acceptor = Acceptor::bind(
            &config.listen,
            poll.registry(),
            LISTENER,
            config.max_connections.saturating_add(HTTP_HEADROOM),
        )?;
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
        let now = Instant::now();
        let redis = match &config.redis {
            Some(url) => Some(redis::connect_later(url, &config, now)?),
            None => None,
        };
        let history_size = config.history_size as usize;
        let history = if redis.is_some() {
            History::in_redis(history_size, config.history_ttl)
        } else {
            let random = http::os_random()?;
            let mut seed = [0u8; 8];
            seed.copy_from_slice(&random[..8]);
            History::new(history_size, config.history_ttl, u64::from_le_bytes(seed))
                .with_max_replay(max_replay(&config))
                .with_max_memory(config.history_max_memory)
        };
        // Per-connection tables are sized for the connection limit up front: pages are only
        // touched as connections arrive, and none of them ever doubles (and holds twice the
        // memory) on the way up.
        let capacity = config
            .max_connections
            .saturating_add(HTTP_HEADROOM)
            .min(MAX_PRESIZED_CONNECTIONS);
        let timeouts = Timeouts {
            handshake: config.handshake_timeout,
            ping_interval: config.ping_interval,
            idle: config.idle_timeout,
            write: config.write_timeout,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Ok(Server {
            poll,
            ws_config,
            assets,
            verifier,
            acceptor,
            table: ConnTable::with_capacity(
                capacity,
                config.max_buffered,
                config.max_output_memory,
            ),
            hub: Hub::with_capacity(capacity),
            peers: Peers::new(config.max_connections_per_ip, &config.trusted_proxies),
            liveness: Liveness::new(timeouts, capacity, now),
            shutdown: Shutdown::default(),
            redis,
            history,
            metrics: Metrics::default(),
            scratch: vec![0; SCRATCH_SIZE],
            inbox: Vec::new(),
            deliveries: Vec::new(),
            asks: Vec::new(),
            services_ready: Vec::new(),
            now,
            turn: 0,
            config,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    /// Runs the loop until a shutdown signal has been handled and the connections drained.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.turn += 1;
            // Taken before this turn's reads, which list connections for the next turn.
            let unread = self.table.take_unread();
            self.on_events(&events);
            self.serve_listener_and_signals();
            self.read_unread(unread);
            self.accept_after_backoff();
            self.expire_timers();
            self.expire_history();
            self.redis_turn();
            self.close_lagging();
            self.write_pass(&mut events);
            self.redis_flush();
            self.reap();
            self.give_back_memory();
            if self.drain_complete() {
                info!(
                    "shutdown complete ({} connections left undrained)",
                    self.table.len()
                );
                return Ok(());
            }
        }
    }

    /// How long the turn's poll may wait: not at all while work is left over, else until the
    /// next timer, the end of an accept backoff or the drain deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        if self.table.has_work() || !self.services_ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        [
            self.liveness.next_timeout(now),
            self.acceptor.resume_in(now),
            self.shutdown.drain_left(now),
            self.redis
                .as_ref()
                .map(|redis| redis.next_timeout().saturating_duration_since(now)),
            self.history_timeout()
                .map(|due| due.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Reads the connections `events` says are ready and notes WRITABLE. The listener's and the
    /// signal pipes' readiness is only listed, for [`Server::serve_listener_and_signals`]: the
    /// same events come from a write pass's polls, which must not accept or shut down.
    fn on_events(&mut self, events: &Events) {
        for event in events {
            match event.token() {
                token @ (LISTENER | SHUTDOWN_SIGNAL | HANGUP_SIGNAL) => {
                    self.services_ready.push(token)
                }
                token @ (REDIS_COMMANDS | REDIS_SUBSCRIPTIONS) => self.on_redis_event(
                    token,
                    event.is_readable() || event.is_read_closed() || event.is_error(),
                    event.is_writable(),
                ),
                Token(key) => self.on_connection_event(ConnId(key), event),
            }
        }
    }

    /// Accepts and handles signals whose readiness this turn's poll or the last write pass saw.
    fn serve_listener_and_signals(&mut self) {
        while let Some(token) = self.services_ready.pop() {
            match token {
                LISTENER => self.accept(),
                SHUTDOWN_SIGNAL => self.on_shutdown_signal(),
                _ => self.on_hangup(),
            }
        }
    }

    /// A connection's socket is ready: read it, and requeue it if it was waiting for WRITABLE.
    fn on_connection_event(&mut self, id: ConnId, event: &Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(id);
        }
        if event.is_writable() {
            self.table.on_writable(id);
        }
    }
}
