//! The Redis links (SPEC §10): two non-blocking sockets on the loop's `Poll` (pipelined
//! commands, subscriptions), moving bytes between them and the `redis::Cluster` core, and doing
//! what the core says: deliver an event to this instance's connections, answer a request that
//! waited for the hub-wide state, register what the hub holds, log a change of state.
//!
//! Owns the sockets, the requests waiting for an answer (by waiter number, forgotten when their
//! connection is reaped) and routing: what goes through Redis while it routes, and what is
//! delivered or answered locally when it does not. Must not decide what the core decides (what
//! to publish where, when to reconnect), and must not block: the address was resolved at
//! start-up and connecting is non-blocking.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use serde_json::value::RawValue;

use super::Server;
use super::http::{os_random, publish_response};
use crate::config::Config;
use crate::events::{self, Ask, Delivery};
use crate::frame::OpCode;
use crate::http::Response;
use crate::hub::{ConnId, Target};
use crate::redis::{Answer, Cluster, Event, Joined, Link, RedisUrl, Settings, Snapshot};

/// The commands link's token; the subscriptions link's is one below.
pub(super) const REDIS_COMMANDS: Token = Token(usize::MAX - 3);
pub(super) const REDIS_SUBSCRIPTIONS: Token = Token(usize::MAX - 4);

/// Most bytes read from one Redis socket per readiness event, so a flood of published events
/// cannot keep the loop from its clients (the rest is read on the next event or turn).
const READ_BUDGET: usize = 1 << 20;

/// An HTTP request whose answer waits for Redis: the connection answers nothing else
/// meanwhile (it is paused), then answers as the request asked.
pub(super) struct ApiAnswer {
    pub(super) conn: ConnId,
    pub(super) keep_alive: bool,
    /// A `HEAD` request: the answer has no body.
    pub(super) head: bool,
}

impl ApiAnswer {
    fn respond(self, server: &mut Server, response: Response) {
        let response = if self.keep_alive {
            response
        } else {
            response.closing()
        };
        server.respond(self.conn, &response, !self.head);
    }
}

/// A request waiting for Redis, and how to answer it.
enum Waiting {
    Join {
        conn: ConnId,
        room: String,
        /// The join had `since`: its reply says whether it recovered.
        since: bool,
        id: Option<Box<RawValue>>,
    },
    Online {
        conn: ConnId,
        room: Option<String>,
        id: Option<Box<RawValue>>,
    },
    Direct {
        conn: ConnId,
        to: String,
        id: Option<Box<RawValue>>,
    },
    /// `GET /api/online`.
    ApiOnline {
        answer: ApiAnswer,
        room: Option<String>,
    },
    /// `POST /api/publish` to a room, answered with the message's offset once Redis numbered
    /// it; `delivered` counts this instance's connections it is for.
    ApiPublish { answer: ApiAnswer, delivered: u64 },
}

impl Waiting {
    fn conn(&self) -> ConnId {
        match self {
            Waiting::Join { conn, .. }
            | Waiting::Online { conn, .. }
            | Waiting::Direct { conn, .. } => *conn,
            Waiting::ApiOnline { answer, .. } | Waiting::ApiPublish { answer, .. } => answer.conn,
        }
    }
}

/// The Redis side of the loop: the core, its sockets and what waits for it.
pub(super) struct Redis {
    cluster: Cluster,
    url: RedisUrl,
    addr: SocketAddr,
    sockets: [Option<TcpStream>; 2],
    /// Whether each socket finished connecting.
    open: [bool; 2],
    waiting: HashMap<u64, Waiting>,
    next_waiter: u64,
    /// Connections whose join of a room waits for its marker: the room's events do not reach
    /// them until then (they preceded the join).
    joining: HashMap<String, Vec<ConnId>>,
}

impl Redis {
    pub(super) fn new(
        url: RedisUrl,
        addr: SocketAddr,
        settings: Settings,
        seed: u64,
        now: Instant,
    ) -> Redis {
        Redis {
            cluster: Cluster::new(settings, seed, now),
            url,
            addr,
            sockets: [None, None],
            open: [false; 2],
            waiting: HashMap::new(),
            next_waiter: 0,
            joining: HashMap::new(),
        }
    }

    /// Whether events go through Redis now.
    pub(super) fn routes(&self) -> bool {
        self.cluster.routes()
    }

    pub(super) fn is_up(&self) -> bool {
        self.cluster.is_up()
    }

    pub(super) fn stats(&self) -> crate::redis::Stats {
        self.cluster.stats()
    }

    /// The instance shuts down: withdraw from the hub now.
    pub(super) fn leave(&mut self) {
        self.cluster.leave();
    }

    pub(super) fn settled(&self) -> bool {
        self.cluster.settled()
    }

    pub(super) fn next_timeout(&self) -> Instant {
        self.cluster.poll_timeout()
    }

    /// Whether `conn` waits for an HTTP answer from Redis (it answers nothing else meanwhile).
    pub(super) fn holds_answer_for(&self, conn: ConnId) -> bool {
        !self.waiting.is_empty()
            && self.waiting.values().any(|w| {
                matches!(w, Waiting::ApiOnline { .. } | Waiting::ApiPublish { .. })
                    && w.conn() == conn
            })
    }

    /// Drops what waits for a connection that is gone: its slot may be reused.
    pub(super) fn forget(&mut self, conn: ConnId) {
        if !self.waiting.is_empty() {
            self.waiting.retain(|_, waiting| waiting.conn() != conn);
        }
        if !self.joining.is_empty() {
            self.joining.retain(|_, conns| {
                conns.retain(|c| *c != conn);
                !conns.is_empty()
            });
        }
    }

    /// `conn`'s join of `room` was answered: the room's events reach it from now on.
    fn joined(&mut self, room: &str, conn: ConnId) {
        if let Some(conns) = self.joining.get_mut(room) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.joining.remove(room);
            }
        }
    }

    fn wait(&mut self, waiting: Waiting) -> u64 {
        self.next_waiter += 1;
        self.waiting.insert(self.next_waiter, waiting);
        self.next_waiter
    }

    /// Publishes an event for a room, a user or everyone; false when it must be delivered
    /// locally (Redis is not routing, or the target is one connection).
    pub(super) fn publish(&mut self, target: &Target, opcode: OpCode, payload: &[u8]) -> bool {
        self.cluster
            .publish(target, opcode == OpCode::Binary, payload, None)
    }

    fn link_of(token: Token) -> Link {
        if token == REDIS_COMMANDS {
            Link::Commands
        } else {
            Link::Subscriptions
        }
    }
}

/// Sets up `--redis`: resolves the address once (the loop never blocks on DNS) and names the
/// instance; the first connection attempt is made by the loop's first turn.
pub(super) fn connect_later(url: &RedisUrl, config: &Config, now: Instant) -> io::Result<Redis> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("--redis {url}: {e}")))?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--redis {url} resolves to no address"),
            )
        })?;
    let random = os_random()?;
    let instance = match &config.instance_id {
        Some(id) => id.clone(),
        None => default_instance_id(&random),
    };
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&random[8..]);
    let settings = Settings {
        prefix: config.redis_prefix.clone(),
        instance,
        presence_ttl: config.redis_presence_ttl,
        presence_max_members: config.presence_max_members,
        username: url.username.clone(),
        password: url.password.clone(),
        db: url.db,
        history_size: config.history_size as usize,
        history_ttl: config.history_ttl,
        max_replay: super::max_replay(config),
    };
    Ok(Redis::new(
        url.clone(),
        addr,
        settings,
        u64::from_le_bytes(seed),
        now,
    ))
}

/// `HOST-PID-XXXX`: unique among instances on one host and across hosts, and readable in logs.
fn default_instance_id(random: &[u8; 16]) -> String {
    let mut name = [0u8; 64];
    // SAFETY: the pointer and length describe `name`; gethostname writes at most that many
    // bytes.
    let rc = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    let host: String = if rc == 0 {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(40)
            .collect()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "wshub".into()
    } else {
        host
    };
    let suffix: String = random[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{}-{suffix}", std::process::id())
}

fn token_of(link: Link) -> Token {
    match link {
        Link::Commands => REDIS_COMMANDS,
        Link::Subscriptions => REDIS_SUBSCRIPTIONS,
    }
}

impl Server {
    /// A Redis socket is ready.
    pub(super) fn on_redis_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(redis) = &mut self.redis else {
            return;
        };
        let link = Redis::link_of(token);
        let index = link as usize;
        if !redis.open[index] && (writable || readable) {
            let Some(socket) = &redis.sockets[index] else {
                return;
            };
            match socket.take_error() {
                Ok(None) if socket.peer_addr().is_ok() => {
                    redis.open[index] = true;
                    redis.cluster.connected(link, self.now);
                }
                Ok(None) => {
                    if !readable {
                        return;
                    }
                    redis.cluster.closed(link, self.now);
                }
                _ => redis.cluster.closed(link, self.now),
            }
        }
        if readable && redis.open[index] {
            let mut budget = READ_BUDGET;
            while budget > 0 {
                let Some(socket) = &mut redis.sockets[index] else {
                    break;
                };
                match socket.read(&mut self.scratch) {
                    Ok(0) => {
                        redis.cluster.closed(link, self.now);
                        break;
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        redis.cluster.receive(link, &self.scratch[..n], self.now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        redis.cluster.closed(link, self.now);
                        break;
                    }
                }
            }
        }
        self.redis_flush();
    }

    /// The turn's Redis step: reconnects, heartbeats and timeouts that are due, then what
    /// this turn's messages published.
    pub(super) fn redis_turn(&mut self) {
        let Some(redis) = &mut self.redis else {
            return;
        };
        if self.now >= redis.cluster.poll_timeout() {
            redis.cluster.handle_timeout(self.now);
        }
        self.redis_flush();
    }

    /// Applies the core's events, sends what can be sent and writes both sockets.
    pub(super) fn redis_flush(&mut self) {
        loop {
            self.apply_redis_events();
            let Some(redis) = &mut self.redis else {
                return;
            };
            redis.cluster.flush(self.now);
            for link in [Link::Commands, Link::Subscriptions] {
                let index = link as usize;
                if !redis.open[index] {
                    continue;
                }
                while !redis.cluster.transmit(link).is_empty() {
                    let Some(socket) = &mut redis.sockets[index] else {
                        break;
                    };
                    match socket.write(redis.cluster.transmit(link)) {
                        Ok(0) => {
                            redis.cluster.closed(link, self.now);
                            break;
                        }
                        Ok(n) => redis.cluster.transmitted(link, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            redis.cluster.closed(link, self.now);
                            break;
                        }
                    }
                }
            }
            // A failed write queues events (local deliveries, a reconnect): apply them too.
            if self
                .redis
                .as_ref()
                .is_none_or(|redis| !redis.cluster.has_events())
            {
                return;
            }
        }
    }

    fn apply_redis_events(&mut self) {
        while let Some(event) = self.redis.as_mut().and_then(|r| r.cluster.poll_event()) {
            match event {
                Event::Connect => self.redis_connect(),
                Event::Disconnect => self.redis_disconnect(),
                Event::Register => {
                    let snapshot = self.snapshot();
                    if let Some(redis) = &mut self.redis {
                        redis.cluster.register(snapshot);
                    }
                }
                Event::Up => {
                    if let Some(redis) = &self.redis {
                        info!(
                            "redis: connected to {} as instance {}",
                            redis.url,
                            redis.cluster.instance()
                        );
                    }
                }
                Event::Down(why) => {
                    if let Some(redis) = &self.redis {
                        warn!(
                            "redis: unavailable at {} ({why}): serving this instance's clients only until it is back",
                            redis.url
                        );
                    }
                }
                Event::Reaped(instance) => {
                    info!("redis: instance {instance} stopped; its users left the hub")
                }
                Event::Deliver {
                    target,
                    except_user,
                    binary,
                    payload,
                } => {
                    let opcode = if binary { OpCode::Binary } else { OpCode::Text };
                    let joining = match (&target, &self.redis) {
                        (Target::Room(room), Some(redis)) => redis.joining.get(room),
                        _ => None,
                    };
                    if except_user.is_none() && joining.is_none() {
                        self.fan_out(&target, opcode, &payload);
                    } else {
                        let joining = joining.cloned().unwrap_or_default();
                        let except_user = except_user.as_deref();
                        self.fan_out_except(&target, opcode, &payload, except_user, &joining);
                    }
                }
                Event::Answer { waiter, answer } => self.answer(waiter, answer),
            }
        }
    }

    fn redis_connect(&mut self) {
        let registry = self.poll.registry();
        let Some(redis) = &mut self.redis else {
            return;
        };
        for link in [Link::Commands, Link::Subscriptions] {
            let index = link as usize;
            redis.open[index] = false;
            let opened = TcpStream::connect(redis.addr).and_then(|mut socket| {
                socket.set_nodelay(true)?;
                registry.register(
                    &mut socket,
                    token_of(link),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(socket)
            });
            match opened {
                Ok(socket) => redis.sockets[index] = Some(socket),
                Err(_) => redis.cluster.closed(link, self.now),
            }
        }
    }

    fn redis_disconnect(&mut self) {
        let registry = self.poll.registry();
        let Some(redis) = &mut self.redis else {
            return;
        };
        for index in 0..2 {
            if let Some(mut socket) = redis.sockets[index].take() {
                let _ = registry.deregister(&mut socket);
            }
            redis.open[index] = false;
        }
    }

    /// Everything this instance's hub holds, for registering it hub-wide.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            rooms: self
                .hub
                .rooms()
                .map(|(room, members, users)| {
                    (
                        room.to_owned(),
                        members.len(),
                        users.map(str::to_owned).collect(),
                    )
                })
                .collect(),
            users: self.hub.users().map(str::to_owned).collect(),
            connections: self.hub.connection_count(),
        }
    }

    // ---- requests that need the hub-wide state ----

    /// Hands the `events` core's hub-wide requests from `conn` to Redis.
    pub(super) fn ask(&mut self, conn: ConnId, asks: &mut Vec<Ask>) {
        for ask in asks.drain(..) {
            let user = self.hub.user_of(conn).unwrap_or_default().to_owned();
            let Some(redis) = &mut self.redis else {
                return;
            };
            match ask {
                Ask::Join {
                    room,
                    since,
                    new_member,
                    first_for_user,
                    id,
                } => {
                    let waiter = redis.wait(Waiting::Join {
                        conn,
                        room: room.clone(),
                        since: since.is_some(),
                        id,
                    });
                    if new_member {
                        redis.joining.entry(room.clone()).or_default().push(conn);
                    }
                    let since = since.as_ref().map(|s| (s.epoch.as_str(), s.offset));
                    redis
                        .cluster
                        .joined(&room, &user, new_member, first_for_user, since, waiter);
                }
                Ask::Quit {
                    room,
                    last_for_user,
                    emptied,
                } => redis.cluster.quit(&room, &user, last_for_user, emptied),
                Ask::Online { room, id } => {
                    let waiter = redis.wait(Waiting::Online {
                        conn,
                        room: room.clone(),
                        id,
                    });
                    redis.cluster.online(room.as_deref(), waiter);
                }
                Ask::Direct { to, json, id } => {
                    let target = Target::User(to.clone());
                    let waiter = redis.wait(Waiting::Direct { conn, to, id });
                    if !redis
                        .cluster
                        .publish(&target, false, json.as_bytes(), Some(waiter))
                    {
                        self.fan_out(&target, OpCode::Text, json.as_bytes());
                        self.answer(waiter, Answer::Failed);
                    }
                }
            }
        }
        self.redis_flush();
    }

    /// Starts answering `GET /api/online` from Redis; false when Redis is not routing (answer
    /// locally).
    pub(super) fn ask_api_online(
        &mut self,
        conn: ConnId,
        room: Option<String>,
        keep_alive: bool,
        head: bool,
    ) -> bool {
        let Some(redis) = self.redis.as_mut().filter(|r| r.routes()) else {
            return false;
        };
        let answer = ApiAnswer {
            conn,
            keep_alive,
            head,
        };
        let waiter = redis.wait(Waiting::ApiOnline {
            answer,
            room: room.clone(),
        });
        redis.cluster.online(room.as_deref(), waiter);
        self.redis_flush();
        true
    }

    /// Starts `POST /api/publish` of a room message through Redis, which numbers it: the
    /// answer (with its offset) waits for Redis. False when Redis is not routing (publish and
    /// answer locally).
    pub(super) fn ask_api_publish(
        &mut self,
        delivery: &Delivery,
        delivered: u64,
        answer: ApiAnswer,
    ) -> bool {
        let Some(redis) = self.redis.as_mut().filter(|r| r.routes()) else {
            return false;
        };
        let waiter = redis.wait(Waiting::ApiPublish { answer, delivered });
        if !redis.cluster.publish(
            &delivery.target,
            false,
            delivery.json.as_bytes(),
            Some(waiter),
        ) {
            redis.waiting.remove(&waiter);
            return false;
        }
        self.redis_flush();
        true
    }

    /// Takes `conn` out of the hub and reports what it held; presence is decided hub-wide.
    pub(super) fn redis_disconnected(&mut self, conn: ConnId) {
        let Some(departure) = self.hub.disconnect(conn) else {
            return;
        };
        let rooms: Vec<(&str, bool, bool)> = departure
            .rooms
            .iter()
            .map(|(room, emptied)| (&**room, departure.last_in.contains(room), *emptied))
            .collect();
        if let Some(redis) = &mut self.redis {
            redis
                .cluster
                .disconnected(&departure.user, &rooms, departure.last_connection);
        }
    }

    /// Reports a connection that entered the hub as `user`.
    pub(super) fn redis_connected(&mut self, user: &str) {
        let first = self.hub.user_connections(user).len() == 1;
        if let Some(redis) = self.redis.as_mut().filter(|r| r.routes()) {
            redis.cluster.connected_user(user, first);
        }
    }

    fn answer(&mut self, waiter: u64, answer: Answer) {
        let Some(waiting) = self.redis.as_mut().and_then(|r| r.waiting.remove(&waiter)) else {
            return;
        };
        let reply = match waiting {
            Waiting::Join {
                conn,
                room,
                since,
                id,
            } => {
                if let Some(redis) = &mut self.redis {
                    redis.joined(&room, conn);
                }
                let joined = match answer {
                    Answer::Joined(joined) => joined,
                    _ => Joined {
                        count: self.hub.room_user_count(&room),
                        position: None,
                        recovered: None,
                        replay: Vec::new(),
                    },
                };
                let recovered = since.then_some(joined.recovered == Some(true));
                let reply = events::join_reply(
                    conn,
                    &room,
                    id.as_deref(),
                    joined.count,
                    joined.position.as_ref(),
                    recovered,
                );
                if let Some(reply) = reply {
                    self.fan_out(&reply.target, OpCode::Text, reply.json.as_bytes());
                }
                // What the client missed, right after the reply and before the room's next
                // event (which Redis ordered after the marker that brought this).
                for event in joined.replay {
                    self.fan_out(&Target::Conn(conn), OpCode::Text, &event);
                }
                return;
            }
            Waiting::Online { conn, room, id } => match answer {
                Answer::Online { users, .. } => {
                    events::online_reply(conn, room.as_deref(), id.as_deref(), users)
                }
                _ => {
                    let users = self.local_users(room.as_deref());
                    events::online_reply(conn, room.as_deref(), id.as_deref(), users)
                }
            },
            Waiting::Direct { conn, to, id } => {
                let reached = match answer {
                    Answer::Reached(reached) => reached,
                    _ => !self.hub.user_connections(&to).is_empty(),
                };
                events::direct_reply(conn, id.as_deref(), reached)
            }
            Waiting::ApiOnline { answer: api, room } => {
                let (users, connections) = match answer {
                    Answer::Online { connections, users } => (users, connections),
                    _ => (
                        self.local_users(room.as_deref()),
                        self.local_connections(room.as_deref()),
                    ),
                };
                api.respond(self, online_response(room.as_deref(), users, connections));
                return;
            }
            Waiting::ApiPublish {
                answer: api,
                delivered,
            } => {
                let position = match answer {
                    Answer::Numbered(position) => Some(position),
                    _ => None,
                };
                api.respond(self, publish_response(delivered, position.as_ref()));
                return;
            }
        };
        if let Some(reply) = reply {
            self.fan_out(&reply.target, OpCode::Text, reply.json.as_bytes());
        }
    }

    /// Who is online in `room` (everyone when `None`) on this instance.
    pub(super) fn local_users(&self, room: Option<&str>) -> Vec<String> {
        match room {
            Some(room) => self.hub.room_users(room).map(str::to_owned).collect(),
            None => self.hub.users().map(str::to_owned).collect(),
        }
    }

    /// This instance's connections in `room` (everywhere when `None`).
    pub(super) fn local_connections(&self, room: Option<&str>) -> usize {
        match room {
            Some(room) => self.hub.room_members(room).len(),
            None => self.hub.connection_count(),
        }
    }
}

/// The answer to `GET /api/online`: who, sorted, how many, with how many connections.
pub(super) fn online_response(
    room: Option<&str>,
    mut users: Vec<String>,
    connections: usize,
) -> Response {
    users.sort_unstable();
    let body = serde_json::json!({
        "room": room,
        "count": users.len(),
        "users": users,
        "connections": connections,
    });
    Response::json(200, body.to_string())
}
