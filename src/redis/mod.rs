//! Several instances as one hub through Redis (SPEC §10): the protocol logic, as plain data.
//!
//! [`Cluster`] is driven like a sans-I/O protocol (quinn-proto's style): the loop hands it the
//! bytes read from its two Redis sockets with the turn's `now`, takes the bytes to write
//! ([`Cluster::transmit`]) and the events to apply ([`Cluster::poll_event`]), and calls
//! [`Cluster::handle_timeout`] at [`Cluster::poll_timeout`]. It owns no socket, reads no clock
//! and draws no randomness of its own, so every path (partial and pipelined replies, errors,
//! reconnects, resubscription) is unit-tested below without a network.
//!
//! How one hub is made of many instances:
//! - Every event for more than one connection (a room message, a message to everyone, a direct,
//!   presence) is published on a channel (`P:r:ROOM`, `P:all`, `P:u:USER`) and delivered when
//!   it comes back from the subscription, on the publisher too: Redis puts all of a channel's
//!   messages in one order, so every instance delivers them in that order, each exactly once.
//!   An instance listens to a room's or a user's channel exactly while it has a member of the
//!   room or a connection of the user (one subscription per channel, never per socket), plus
//!   `P:all` and `P:ctl`.
//! - Who is where is kept in Redis by Lua scripts (`*.lua` here), one call per batch of
//!   changes: per room the users and connections of all instances, per instance what it holds.
//!   The scripts decide first joins and last leaves hub-wide and publish presence on the room's
//!   channel, so presence is ordered with the room's messages.
//! - Each instance renews a key with an expiry (a heartbeat every fifth of
//!   `--redis-presence-ttl`); the heartbeat script of every instance reaps instances whose key
//!   expired, taking their users out of every room with presence `leave`.
//! - While Redis is unreachable, nothing waits for it: the loop delivers locally and answers
//!   from its own hub; on reconnecting (backoff with jitter) the instance resubscribes and
//!   replaces what Redis holds for it with what it holds now.
//!
//! Must not touch a socket, the hub, or JSON beyond the envelope: the loop owns those.

mod envelope;
mod resp;
mod url;

pub use url::{RedisUrl, parse_redis_url};

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::history::Position;
use crate::hub::Target;
use envelope::Kind;
use resp::Reply;

/// First reconnect delay after a failure; it doubles per failed attempt up to [`MAX_BACKOFF`],
/// and each delay is drawn between half and all of it, so instances that lost Redis together
/// do not reconnect together.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting and subscribing may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for its reply before Redis counts as unreachable.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most contribution changes in one script call, and channels in one (UN)SUBSCRIBE.
const BATCH: usize = 512;
/// Most bytes of one incomplete reply; a bigger one means Redis is not what we speak to.
const MAX_INPUT: usize = 64 << 20;
/// Most bytes waiting to be written to Redis: past it, Redis does not keep up and counts as
/// unusable (the events are delivered locally) rather than growing this process's memory.
const MAX_OUTPUT: usize = 64 << 20;

/// The Lua shared by the scripts, and the scripts.
const HISTORY_LUA: &str = include_str!("history.lua");
const PRESENCE_LUA: &str = include_str!("presence.lua");
const PUBLISH_LUA: &str = include_str!("publish.lua");
const APPLY_LUA: &str = include_str!("apply.lua");
const SYNC_LUA: &str = include_str!("sync.lua");
const HEARTBEAT_LUA: &str = include_str!("heartbeat.lua");
const ONLINE_LUA: &str = include_str!("online.lua");
const LEAVE_LUA: &str = include_str!("leave.lua");

/// What the cluster needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--redis-prefix`: every key and channel starts with it and a colon.
    pub prefix: String,
    /// `--instance-id`.
    pub instance: String,
    /// `--redis-presence-ttl`: a killed instance leaves the hub within this.
    pub presence_ttl: Duration,
    /// `--presence-max-members`, applied hub-wide by the scripts.
    pub presence_max_members: usize,
    /// From the URL: `AUTH` before anything else when a password is given.
    pub username: Option<String>,
    pub password: Option<String>,
    /// From the URL: `SELECT` when not 0.
    pub db: u32,
    /// `--history-size`: room messages kept in Redis per room (SPEC §11); 0 turns history
    /// off (room messages are then published as they are, unnumbered).
    pub history_size: usize,
    /// `--history-ttl`.
    pub history_ttl: Duration,
    /// Most bytes one join's replay may hold (see `History::with_max_replay`).
    pub max_replay: usize,
}

/// One of the two Redis connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Pipelined commands: publishes and scripts.
    Commands,
    /// Subscriptions: what the instance listens to.
    Subscriptions,
}

/// What the loop must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Open both sockets and report each with [`Cluster::connected`] (or [`Cluster::closed`]).
    Connect,
    /// Close both sockets: Redis failed; a reconnect follows after a backoff.
    Disconnect,
    /// Call [`Cluster::register`] with everything this instance holds now.
    Register,
    /// Redis became usable (log it).
    Up,
    /// Redis became unusable, and why (log it).
    Down(String),
    /// Deliver to this instance's connections: from Redis, or locally when Redis failed.
    Deliver {
        target: Target,
        /// Presence is for everyone in the room but the user it is about.
        except_user: Option<String>,
        binary: bool,
        payload: Vec<u8>,
    },
    /// The answer to a request made with a waiter.
    Answer { waiter: u64, answer: Answer },
    /// Another instance's heartbeat stopped and it was reaped.
    Reaped(String),
}

/// The hub-wide answer to a join, read at the join's place in the room's order.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    /// The room's distinct users.
    pub count: usize,
    /// With history: the room's epoch and last offset.
    pub position: Option<Position>,
    /// Only for a join with `since`: whether the messages after it are all in `replay`.
    pub recovered: Option<bool>,
    /// The messages after `since`, oldest first, exactly as their recipients got them: sent
    /// to the joining connection right after its reply, before the room's next event.
    pub replay: Vec<Vec<u8>>,
}

/// The hub-wide answer to a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A join's count and, with history, position and replay.
    Joined(Joined),
    /// A numbered room message's offset and its room's epoch.
    Numbered(Position),
    /// Who is online (in a room or anywhere), and with how many connections.
    Online {
        connections: usize,
        users: Vec<String>,
    },
    /// Whether a direct reached at least one instance that has the user.
    Reached(bool),
    /// Redis failed before answering: answer from this instance's own hub. (An event that
    /// did not come back is delivered locally by the cluster itself, never by the waiter.)
    Failed,
}

/// Everything this instance holds, for [`Cluster::register`].
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each room with a member here: its connections here and its distinct users here.
    pub rooms: Vec<(String, usize, Vec<String>)>,
    /// The users with a connection here.
    pub users: Vec<String>,
    /// The connections here.
    pub connections: usize,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages published.
    pub published: u64,
    /// Messages received from subscriptions.
    pub received: u64,
    /// Times Redis became usable again after a failure.
    pub reconnects: u64,
    /// Failures: refused commands, unreadable replies, lost connections, timeouts.
    pub errors: u64,
    /// Messages delivered only to this instance's connections because Redis was unusable.
    pub local_only: u64,
}

#[derive(Debug)]
enum State {
    /// Not connected; the next attempt is at `retry_at`.
    Down { retry_at: Instant },
    /// Sockets opening; `connected` per [`Link`].
    Connecting {
        deadline: Instant,
        connected: [bool; 2],
    },
    /// Connected and registered: events are routed through Redis, waiting for the
    /// subscriptions and the registration script to complete.
    Syncing { deadline: Instant },
    /// Everything works.
    Up,
}

/// A subscription and what is wanted of it.
#[derive(Debug, Default)]
struct Channel {
    /// This instance has a member of the room or a connection of the user.
    wanted: bool,
    /// What the last (UN)SUBSCRIBE sent asked for.
    requested: bool,
    /// Redis confirmed the subscription (and no unsubscription since).
    active: bool,
    /// (UN)SUBSCRIBEs sent and not yet confirmed.
    inflight: u32,
    /// `wanted` changed since the last flush.
    dirty: bool,
}

impl Channel {
    /// Whether what is published on the channel now comes back to this instance, or does not
    /// need to (nobody here listens).
    fn ready(&self) -> bool {
        !self.wanted || (self.active && self.requested && self.inflight == 0 && !self.dirty)
    }
}

/// What waits its turn to be sent on the commands link, in the order it happened.
#[derive(Debug)]
enum Entry {
    Publish(Published),
    /// Contribution changes (and join markers), and the channels that must listen first.
    Changes {
        changes: Vec<(String, i64)>,
        needs: Vec<String>,
    },
    Online {
        room: Option<String>,
        waiter: u64,
    },
    Register(Vec<(String, i64)>),
    /// The instance shuts down.
    Leave,
}

/// A published event, kept until it comes back (or Redis fails and it is delivered locally).
#[derive(Debug)]
struct Published {
    seq: u64,
    channel: String,
    target: Target,
    binary: bool,
    /// The envelope, whose payload starts at `payload`.
    bytes: Vec<u8>,
    payload: usize,
    waiter: Option<u64>,
    /// A room message with history on: the publish script numbers and keeps it.
    numbered: bool,
}

/// A command sent, waiting for its reply.
#[derive(Debug)]
enum Expect {
    Handshake,
    Publish(Option<u64>),
    Numbered(Option<u64>),
    Changes,
    Online(u64),
    Register,
    Heartbeat,
    Leave,
}

/// One connection's bytes.
#[derive(Debug, Default)]
struct Wire {
    out: Vec<u8>,
    input: Vec<u8>,
}

/// The Redis side of one instance; see the module documentation.
pub struct Cluster {
    settings: Settings,
    state: State,
    /// Failed attempts since Redis was last up, for the backoff.
    attempts: u32,
    /// Whether `Up` (true) or `Down` (false) was last reported, so each change logs once.
    reported: Option<bool>,
    ever_up: bool,
    wires: [Wire; 2],
    /// Replies the commands link owes, oldest first, with when each was sent.
    expect: VecDeque<(Instant, Expect)>,
    /// Non-subscription replies the subscriptions link owes (AUTH, SELECT).
    sub_handshake: usize,
    /// (UN)SUBSCRIBE confirmations owed, and since when the oldest is awaited.
    sub_acks: usize,
    sub_since: Option<Instant>,
    channels: HashMap<String, Channel>,
    /// Channels whose `wanted` changed since the last flush.
    dirty: Vec<String>,
    fifo: VecDeque<Entry>,
    /// This instance's published events on channels it listens to, until they come back.
    echoes: VecDeque<Published>,
    seq: u64,
    next_heartbeat: Instant,
    heartbeat_inflight: bool,
    /// A registration is queued or in flight (another is not needed meanwhile).
    registering: bool,
    events: VecDeque<Event>,
    stats: Stats,
    rng: u64,
    /// The scripts' SHA-1s, loaded on every connection.
    scripts: Scripts,
    /// The control channel's name, compared with every message's channel.
    control: String,
    /// Joins whose marker has not come back yet.
    joining: Vec<u64>,
}

struct Scripts {
    publish: (String, String),
    apply: (String, String),
    sync: (String, String),
    heartbeat: (String, String),
    online: (String, String),
    leave: (String, String),
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| {
            let text = format!("{HISTORY_LUA}\n{PRESENCE_LUA}\n{body}");
            let sha = sha1_hex(text.as_bytes());
            (text, sha)
        };
        Scripts {
            publish: script(PUBLISH_LUA),
            apply: script(APPLY_LUA),
            sync: script(SYNC_LUA),
            heartbeat: script(HEARTBEAT_LUA),
            online: script(ONLINE_LUA),
            leave: script(LEAVE_LUA),
        }
    }

    fn all(&self) -> [&(String, String); 6] {
        [
            &self.publish,
            &self.apply,
            &self.sync,
            &self.heartbeat,
            &self.online,
            &self.leave,
        ]
    }
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Contribution fields (see `presence.lua`).
fn room_connections(room: &str) -> String {
    format!("c\0{room}")
}
fn member(room: &str, user: &str) -> String {
    format!("m\0{room}\0{user}")
}
/// Not a contribution: the apply script publishes a join's marker (value: its waiter).
/// A join's marker (see `presence.lua`): the history TTL in ms and the replay bound in bytes
/// (both empty with history off), then `since`'s offset and epoch (empty without since), then
/// the room.
fn joined_marker(
    room: &str,
    history: Option<(Duration, usize)>,
    since: Option<(&str, u64)>,
) -> String {
    let (ttl, max_replay) = history.map_or((String::new(), String::new()), |(ttl, max)| {
        (ttl.as_millis().to_string(), max.to_string())
    });
    let (epoch, offset) = match since {
        // An epoch this hub never makes cannot match: sent empty, it matches no room.
        Some((epoch, offset)) => {
            let plausible = epoch.len() <= 64
                && epoch
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            (if plausible { epoch } else { "" }, offset.to_string())
        }
        None => ("", String::new()),
    };
    format!("j\0{ttl}\0{max_replay}\0{offset}\0{epoch}\0{room}")
}
fn online_user(user: &str) -> String {
    format!("u\0{user}")
}
const CONNECTIONS: &str = "n\0";

impl Cluster {
    /// A cluster that connects at its first timeout (now). `seed` feeds the backoff jitter.
    pub fn new(settings: Settings, seed: u64, now: Instant) -> Cluster {
        Cluster {
            state: State::Down { retry_at: now },
            attempts: 0,
            reported: None,
            ever_up: false,
            wires: [Wire::default(), Wire::default()],
            expect: VecDeque::new(),
            sub_handshake: 0,
            sub_acks: 0,
            sub_since: None,
            channels: HashMap::new(),
            dirty: Vec::new(),
            fifo: VecDeque::new(),
            echoes: VecDeque::new(),
            seq: 0,
            next_heartbeat: now,
            heartbeat_inflight: false,
            registering: false,
            events: VecDeque::new(),
            stats: Stats::default(),
            rng: seed | 1,
            scripts: Scripts::new(),
            control: format!("{}:ctl", settings.prefix),
            joining: Vec::new(),
            settings,
        }
    }

    /// Whether events go through Redis now (else the loop delivers and answers locally).
    pub fn routes(&self) -> bool {
        matches!(self.state, State::Syncing { .. } | State::Up)
    }

    /// Whether Redis is fully usable (`/healthz`, `wshub_redis_up`).
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up)
    }

    /// `--instance-id`, as it names this instance in Redis.
    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether events wait for [`Cluster::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next event for the loop.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Cluster::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let state = match self.state {
            State::Down { retry_at } => retry_at,
            State::Connecting { deadline, .. } | State::Syncing { deadline } => deadline,
            State::Up => self.next_heartbeat,
        };
        match self.oldest_unanswered() {
            Some(sent) => state.min(sent + REPLY_TIMEOUT),
            None => state,
        }
    }

    /// When the oldest command or (un)subscription still waiting for Redis was sent.
    fn oldest_unanswered(&self) -> Option<Instant> {
        let command = self.expect.front().map(|(sent, _)| *sent);
        match (command, self.sub_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on what is due at `now`: a reconnect, a heartbeat, a timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(sent) = self.oldest_unanswered()
            && now >= sent + REPLY_TIMEOUT
        {
            return self.fail(now, "Redis did not answer in time");
        }
        match self.state {
            State::Down { retry_at } if now >= retry_at => {
                self.state = State::Connecting {
                    deadline: now + CONNECT_TIMEOUT,
                    connected: [false; 2],
                };
                self.events.push_back(Event::Connect);
            }
            State::Connecting { deadline, .. } | State::Syncing { deadline } if now >= deadline => {
                self.fail(now, "connecting timed out")
            }
            State::Up if now >= self.next_heartbeat => {
                self.next_heartbeat = now + self.heartbeat_period();
                if !self.heartbeat_inflight {
                    self.heartbeat_inflight = true;
                    self.run_script(now, Expect::Heartbeat, |s| &s.heartbeat, true, &[]);
                }
            }
            _ => {}
        }
    }

    /// Heartbeats come five times per TTL and the key lives three periods, so a killed
    /// instance is reaped between 3/5 and 4/5 of the TTL after its last heartbeat.
    fn heartbeat_period(&self) -> Duration {
        (self.settings.presence_ttl / 5).max(Duration::from_millis(20))
    }

    fn alive_ms(&self) -> String {
        (self.heartbeat_period() * 3).as_millis().to_string()
    }

    /// A socket opened. Once both are, the handshake is sent and the loop is asked to
    /// [`Cluster::register`].
    pub fn connected(&mut self, link: Link, now: Instant) {
        let State::Connecting {
            deadline,
            mut connected,
        } = self.state
        else {
            return;
        };
        connected[link as usize] = true;
        self.state = State::Connecting {
            deadline,
            connected,
        };
        if connected != [true; 2] {
            return;
        }
        for link in [Link::Commands, Link::Subscriptions] {
            let mut handshake = Vec::new();
            if let Some(password) = &self.settings.password {
                let mut auth: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(user) = &self.settings.username {
                    auth.push(user.as_bytes());
                }
                auth.push(password.as_bytes());
                handshake.push(auth.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            if self.settings.db != 0 {
                handshake.push(vec![
                    b"SELECT".to_vec(),
                    self.settings.db.to_string().into(),
                ]);
            }
            if link == Link::Commands {
                for (text, _) in self.scripts.all() {
                    handshake.push(vec![
                        b"SCRIPT".to_vec(),
                        b"LOAD".to_vec(),
                        text.clone().into(),
                    ]);
                }
            }
            for command in handshake {
                let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                resp::encode(&mut self.wires[link as usize].out, &args);
                match link {
                    Link::Commands => self.expect.push_back((now, Expect::Handshake)),
                    Link::Subscriptions => self.sub_handshake += 1,
                }
            }
        }
        self.state = State::Syncing { deadline };
        self.events.push_back(Event::Register);
    }

    /// Registers everything this instance holds: listens to its rooms' and users' channels
    /// and replaces what Redis holds for it (after a reconnect, a flush, or being reaped).
    pub fn register(&mut self, snapshot: Snapshot) {
        if !self.routes() {
            return;
        }
        let mut fields = Vec::with_capacity(2 * snapshot.rooms.len() + snapshot.users.len() + 1);
        for channel in [self.channel("all"), self.control.clone()] {
            self.want(channel);
        }
        for (room, connections, users) in &snapshot.rooms {
            self.want(self.room_channel(room));
            fields.push((room_connections(room), *connections as i64));
            for user in users {
                fields.push((member(room, user), 1));
            }
        }
        for user in &snapshot.users {
            self.want(self.user_channel(user));
            fields.push((online_user(user), 1));
        }
        if snapshot.connections > 0 {
            fields.push((CONNECTIONS.to_owned(), snapshot.connections as i64));
        }
        self.registering = true;
        self.fifo.push_back(Entry::Register(fields));
    }

    /// A socket failed to open, or closed.
    pub fn closed(&mut self, link: Link, now: Instant) {
        let which = match link {
            Link::Commands => "commands",
            Link::Subscriptions => "subscriptions",
        };
        self.fail(now, &format!("the {which} connection closed"));
    }

    /// The bytes the loop should write to `link`.
    pub fn transmit(&self, link: Link) -> &[u8] {
        &self.wires[link as usize].out
    }

    /// The loop wrote the first `n` bytes of [`Cluster::transmit`].
    pub fn transmitted(&mut self, link: Link, n: usize) {
        let out = &mut self.wires[link as usize].out;
        out.drain(..n.min(out.len()));
    }

    /// Bytes read from `link`.
    pub fn receive(&mut self, link: Link, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Down { .. }) {
            return;
        }
        let wire = &mut self.wires[link as usize];
        wire.input.extend_from_slice(bytes);
        let mut input = std::mem::take(&mut wire.input);
        let mut used = 0;
        while used < input.len() {
            match resp::decode_one(&input[used..]) {
                Ok(Some((reply, n))) => {
                    used += n;
                    let handled = match link {
                        Link::Commands => self.on_reply(reply, now),
                        Link::Subscriptions => self.on_push(reply),
                    };
                    if let Err(why) = handled {
                        return self.fail(now, &why);
                    }
                    if matches!(self.state, State::Down { .. }) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(now, &format!("unreadable reply: {e}")),
            }
        }
        input.drain(..used);
        if input.len() > MAX_INPUT {
            return self.fail(now, "a reply larger than 64 MiB");
        }
        self.wires[link as usize].input = input;
    }

    // ---- what the loop routes through Redis ----

    /// Publishes an event for `target` (a room, a user or everyone), delivered when it comes
    /// back. False when Redis is not routing: the loop delivers it locally (counted).
    pub fn publish(
        &mut self,
        target: &Target,
        binary: bool,
        payload: &[u8],
        waiter: Option<u64>,
    ) -> bool {
        let channel = match target {
            Target::Room(room) => self.room_channel(room),
            Target::User(user) => self.user_channel(user),
            Target::All => self.channel("all"),
            _ => return false,
        };
        if !self.routes() {
            self.stats.local_only += 1;
            return false;
        }
        let numbered =
            !binary && self.settings.history_size > 0 && matches!(target, Target::Room(_));
        self.seq += 1;
        let mut bytes = Vec::with_capacity(self.settings.instance.len() + 24 + payload.len());
        envelope::header(&mut bytes, &self.settings.instance, self.seq, binary);
        let start = bytes.len();
        bytes.extend_from_slice(payload);
        self.fifo.push_back(Entry::Publish(Published {
            seq: self.seq,
            channel,
            target: target.clone(),
            binary,
            bytes,
            payload: start,
            waiter,
            numbered,
        }));
        true
    }

    /// A connection of `user` arrived (`first`: the user's first here).
    pub fn connected_user(&mut self, user: &str, first: bool) {
        if !self.routes() {
            return;
        }
        let mut changes = vec![(CONNECTIONS.to_owned(), 1)];
        let mut needs = Vec::new();
        if first {
            let channel = self.user_channel(user);
            self.want(channel.clone());
            needs.push(channel);
            changes.push((online_user(user), 1));
        }
        self.changes(changes, needs);
    }

    /// A connection of `user` left the hub: its rooms (each with whether the user has no
    /// other connection left there, and whether the room is now empty here), and whether it
    /// was the user's last connection here.
    pub fn disconnected(&mut self, user: &str, rooms: &[(&str, bool, bool)], last: bool) {
        if !self.routes() {
            return;
        }
        let mut changes = Vec::with_capacity(2 * rooms.len() + 2);
        for &(room, last_for_user, emptied) in rooms {
            changes.push((room_connections(room), -1));
            if last_for_user {
                changes.push((member(room, user), -1));
            }
            if emptied {
                self.unwant(&self.room_channel(room));
            }
        }
        if last {
            changes.push((online_user(user), -1));
            self.unwant(&self.user_channel(user));
        }
        changes.push((CONNECTIONS.to_owned(), -1));
        self.changes(changes, Vec::new());
    }

    /// A connection of `user` joined `room`; `waiter` is answered with the room's count at
    /// the join's place in the room's order (the script publishes a marker on the room's
    /// channel right after the join): every event of the room before the answer preceded the
    /// join, every one after it followed.
    /// With history, the marker also carries the room's position and, for a join with
    /// `since` (epoch, offset), the messages the client missed, so they reach it exactly at
    /// that place too.
    pub fn joined(
        &mut self,
        room: &str,
        user: &str,
        new_member: bool,
        first_for_user: bool,
        since: Option<(&str, u64)>,
        waiter: u64,
    ) {
        if !self.routes() {
            return self.answer(waiter, Answer::Failed);
        }
        let channel = self.room_channel(room);
        self.want(channel.clone());
        let mut changes = vec![(room_connections(room), i64::from(new_member))];
        if first_for_user {
            changes.push((member(room, user), 1));
        }
        let s = &self.settings;
        let history = (s.history_size > 0).then_some((s.history_ttl, s.max_replay));
        changes.push((joined_marker(room, history, since), waiter as i64));
        self.joining.push(waiter);
        self.changes(changes, vec![channel]);
    }

    /// A connection of `user` quit `room`.
    pub fn quit(&mut self, room: &str, user: &str, last_for_user: bool, emptied: bool) {
        if !self.routes() {
            return;
        }
        let mut changes = vec![(room_connections(room), -1)];
        if last_for_user {
            changes.push((member(room, user), -1));
        }
        if emptied {
            self.unwant(&self.room_channel(room));
        }
        self.changes(changes, Vec::new());
    }

    /// The instance shuts down: what it still holds leaves the hub now, not at the TTL.
    pub fn leave(&mut self) {
        if self.routes() {
            self.fifo.push_back(Entry::Leave);
        }
    }

    /// Whether nothing waits to be sent or answered (a shutdown waits for this, within its
    /// drain deadline); true while Redis is unusable, as nothing more will be.
    pub fn settled(&self) -> bool {
        !self.routes()
            || (self.fifo.is_empty()
                && self.expect.is_empty()
                && self.wires.iter().all(|wire| wire.out.is_empty()))
    }

    /// Asks who is online in `room` (everyone when `None`), hub-wide.
    pub fn online(&mut self, room: Option<&str>, waiter: u64) {
        if !self.routes() {
            return self.answer(waiter, Answer::Failed);
        }
        self.fifo.push_back(Entry::Online {
            room: room.map(str::to_owned),
            waiter,
        });
    }

    /// Queues contribution changes, merged with the previous batch when it is still waiting.
    fn changes(&mut self, changes: Vec<(String, i64)>, needs: Vec<String>) {
        if !self.routes() {
            return;
        }
        if let Some(Entry::Changes {
            changes: queued,
            needs: queued_needs,
        }) = self.fifo.back_mut()
            && queued.len() + changes.len() <= BATCH
        {
            queued.extend(changes);
            queued_needs.extend(needs);
            return;
        }
        self.fifo.push_back(Entry::Changes { changes, needs });
    }

    // ---- channels ----

    fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:r:{room}", self.settings.prefix)
    }

    fn user_channel(&self, user: &str) -> String {
        format!("{}:u:{user}", self.settings.prefix)
    }

    fn want(&mut self, name: String) {
        let channel = self.channels.entry(name.clone()).or_default();
        if !channel.wanted {
            channel.wanted = true;
            if !channel.dirty {
                channel.dirty = true;
                self.dirty.push(name);
            }
        }
    }

    fn unwant(&mut self, name: &str) {
        if let Some(channel) = self.channels.get_mut(name)
            && channel.wanted
        {
            channel.wanted = false;
            if !channel.dirty {
                channel.dirty = true;
                self.dirty.push(name.to_owned());
            }
        }
    }

    fn ready(&self, name: &str) -> bool {
        self.channels.get(name).is_none_or(Channel::ready)
    }

    /// Who an event on `channel` is for here, or `None` for the control channel.
    fn audience(&self, channel: &[u8]) -> Option<Target> {
        let name = std::str::from_utf8(channel).ok()?;
        let name = name
            .strip_prefix(&self.settings.prefix)?
            .strip_prefix(':')?;
        if name == "all" {
            return Some(Target::All);
        }
        if let Some(room) = name.strip_prefix("r:") {
            return Some(Target::Room(room.to_owned()));
        }
        name.strip_prefix("u:")
            .map(|user| Target::User(user.to_owned()))
    }

    // ---- sending ----

    /// Sends what can go now: subscription changes, then the queue in order, each entry once
    /// the channels it needs listen. Called once per turn, before the loop writes.
    pub fn flush(&mut self, now: Instant) {
        if !self.routes() {
            return;
        }
        self.flush_subscriptions(now);
        while let Some(entry) = self.fifo.front() {
            let ready = match entry {
                Entry::Publish(published) => self.ready(&published.channel),
                Entry::Changes { needs, .. } => needs.iter().all(|name| self.ready(name)),
                Entry::Online { .. } | Entry::Leave => true,
                Entry::Register(_) => self.channels.values().all(Channel::ready),
            };
            if !ready {
                break;
            }
            if let Some(entry) = self.fifo.pop_front() {
                self.send(entry, now);
            }
        }
        if self.wires[Link::Commands as usize].out.len() > MAX_OUTPUT {
            self.fail(now, "Redis does not read as fast as events are published");
        }
    }

    fn flush_subscriptions(&mut self, now: Instant) {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            let Some(channel) = self.channels.get_mut(&name) else {
                continue;
            };
            channel.dirty = false;
            if channel.wanted != channel.requested {
                channel.requested = channel.wanted;
                channel.inflight += 1;
                if channel.wanted {
                    subscribe.push(name);
                } else {
                    unsubscribe.push(name);
                }
            } else if !channel.wanted && channel.inflight == 0 {
                self.channels.remove(&name);
            }
        }
        self.sub_acks += subscribe.len() + unsubscribe.len();
        if self.sub_acks > 0 && self.sub_since.is_none() {
            self.sub_since = Some(now);
        }
        let out = &mut self.wires[Link::Subscriptions as usize].out;
        for (command, names) in [
            (&b"SUBSCRIBE"[..], subscribe),
            (b"UNSUBSCRIBE", unsubscribe),
        ] {
            for chunk in names.chunks(BATCH) {
                let mut args: Vec<&[u8]> = vec![command];
                args.extend(chunk.iter().map(String::as_bytes));
                resp::encode(out, &args);
            }
        }
    }

    fn send(&mut self, entry: Entry, now: Instant) {
        match entry {
            Entry::Publish(published) => {
                self.stats.published += 1;
                let (header, event) = published.bytes.split_at(published.payload);
                match &published.target {
                    Target::Room(room) if published.numbered => {
                        let size = self.settings.history_size.to_string();
                        let ttl = self.settings.history_ttl.as_millis().to_string();
                        let args: [&[u8]; 9] = [
                            b"EVALSHA",
                            self.scripts.publish.1.as_bytes(),
                            b"0",
                            self.settings.prefix.as_bytes(),
                            room.as_bytes(),
                            header,
                            event,
                            size.as_bytes(),
                            ttl.as_bytes(),
                        ];
                        resp::encode(&mut self.wires[Link::Commands as usize].out, &args);
                        self.expect
                            .push_back((now, Expect::Numbered(published.waiter)));
                    }
                    _ => self.command(
                        now,
                        Expect::Publish(published.waiter),
                        &[b"PUBLISH", published.channel.as_bytes(), &published.bytes],
                    ),
                }
                if self
                    .channels
                    .get(&published.channel)
                    .is_some_and(|c| c.wanted)
                {
                    self.echoes.push_back(published);
                }
            }
            Entry::Changes { changes, .. } => {
                self.run_script(now, Expect::Changes, |s| &s.apply, false, &changes)
            }
            Entry::Online { room, waiter } => {
                let sha = &self.scripts.online.1;
                let mut args: Vec<&[u8]> = vec![
                    b"EVALSHA",
                    sha.as_bytes(),
                    b"0",
                    self.settings.prefix.as_bytes(),
                ];
                if let Some(room) = &room {
                    args.push(room.as_bytes());
                }
                resp::encode(&mut self.wires[Link::Commands as usize].out, &args);
                self.expect.push_back((now, Expect::Online(waiter)));
            }
            Entry::Register(fields) => {
                self.run_script(now, Expect::Register, |s| &s.sync, true, &fields)
            }
            Entry::Leave => self.run_script(now, Expect::Leave, |s| &s.leave, false, &[]),
        }
    }

    /// Runs one of the presence scripts: `EVALSHA` with the arguments they all take first
    /// (prefix, instance, `--presence-max-members`), then the key's lifetime when `alive`,
    /// then `pairs` (contribution fields and their numbers).
    fn run_script(
        &mut self,
        now: Instant,
        expect: Expect,
        script: fn(&Scripts) -> &(String, String),
        alive: bool,
        pairs: &[(String, i64)],
    ) {
        let lifetime = self.alive_ms();
        let max = self.settings.presence_max_members.to_string();
        let numbers: Vec<String> = pairs.iter().map(|(_, n)| n.to_string()).collect();
        let s = &self.settings;
        let mut args: Vec<&[u8]> = vec![
            b"EVALSHA",
            script(&self.scripts).1.as_bytes(),
            b"0",
            s.prefix.as_bytes(),
            s.instance.as_bytes(),
            max.as_bytes(),
        ];
        if alive {
            args.push(lifetime.as_bytes());
        }
        for ((field, _), number) in pairs.iter().zip(&numbers) {
            args.push(field.as_bytes());
            args.push(number.as_bytes());
        }
        resp::encode(&mut self.wires[Link::Commands as usize].out, &args);
        self.expect.push_back((now, expect));
    }

    fn command(&mut self, now: Instant, expect: Expect, args: &[&[u8]]) {
        resp::encode(&mut self.wires[Link::Commands as usize].out, args);
        self.expect.push_back((now, expect));
    }

    // ---- receiving ----

    /// A reply on the commands link, answering the oldest command.
    fn on_reply(&mut self, reply: Reply, now: Instant) -> Result<(), String> {
        let Some((_, expect)) = self.expect.pop_front() else {
            return Err("a reply nobody asked for".into());
        };
        if let Reply::Error(error) = &reply {
            return Err(format!("Redis answered an error: {error}"));
        }
        match expect {
            Expect::Handshake | Expect::Leave => {}
            Expect::Publish(waiter) => {
                let receivers = resp::integer(&reply).ok_or("PUBLISH answered no integer")?;
                if let Some(waiter) = waiter {
                    self.answer(waiter, Answer::Reached(receivers > 0));
                }
            }
            Expect::Numbered(waiter) => {
                let Reply::Array(results) = reply else {
                    return Err("the publish script answered no array".into());
                };
                let offset = results.get(1).and_then(resp::integer);
                let epoch = results.get(2).and_then(resp::bytes);
                let (Some(offset), Some(epoch)) = (offset, epoch) else {
                    return Err("the publish script answered no position".into());
                };
                if let Some(waiter) = waiter {
                    let position = Position {
                        epoch: String::from_utf8_lossy(epoch).into_owned(),
                        offset: u64::try_from(offset).unwrap_or(0),
                    };
                    self.answer(waiter, Answer::Numbered(position));
                }
            }
            Expect::Changes => {
                if !matches!(reply, Reply::Array(_)) {
                    return Err("the apply script answered no array".into());
                }
            }
            Expect::Online(waiter) => {
                let Reply::Array(mut results) = reply else {
                    return Err("the online script answered no array".into());
                };
                if results.is_empty() {
                    return Err("the online script answered an empty array".into());
                }
                let connections = resp::integer(&results.remove(0)).unwrap_or(0);
                let users = results
                    .iter()
                    .filter_map(resp::bytes)
                    .map(|user| String::from_utf8_lossy(user).into_owned())
                    .collect();
                let connections = usize::try_from(connections).unwrap_or(0);
                self.answer(waiter, Answer::Online { connections, users });
            }
            Expect::Register => {
                self.registering = false;
                if matches!(self.state, State::Syncing { .. }) {
                    self.state = State::Up;
                    self.next_heartbeat = now + self.heartbeat_period();
                    self.attempts = 0;
                    if self.ever_up {
                        self.stats.reconnects += 1;
                    }
                    self.ever_up = true;
                    if self.reported != Some(true) {
                        self.reported = Some(true);
                        self.events.push_back(Event::Up);
                    }
                }
            }
            Expect::Heartbeat => {
                self.heartbeat_inflight = false;
                let Reply::Array(results) = reply else {
                    return Err("the heartbeat script answered no array".into());
                };
                let registered = results.first().and_then(resp::integer) == Some(1);
                if !registered && !self.registering {
                    self.events.push_back(Event::Register);
                }
            }
        }
        Ok(())
    }

    /// A reply on the subscriptions link: a confirmation or a message.
    fn on_push(&mut self, reply: Reply) -> Result<(), String> {
        let Reply::Array(mut parts) = reply else {
            if let Reply::Error(error) = &reply {
                return Err(format!("Redis answered an error: {error}"));
            }
            return match self.sub_handshake.checked_sub(1) {
                Some(left) => {
                    self.sub_handshake = left;
                    Ok(())
                }
                None => Err("an unexpected reply on the subscriptions connection".into()),
            };
        };
        if parts.len() != 3 {
            return Err("a subscription reply of the wrong shape".into());
        }
        let payload = parts.pop();
        let channel = parts.pop();
        let kind = parts.pop();
        let (Some(kind), Some(channel), Some(payload)) = (kind, channel, payload) else {
            return Err("a subscription reply of the wrong shape".into());
        };
        let channel = resp::bytes(&channel).ok_or("a channel that is not a string")?;
        match resp::bytes(&kind) {
            Some(b"message") => {
                let Reply::BulkString(bytes) = payload else {
                    return Err("a message that is not a string".into());
                };
                self.on_message(channel, bytes);
            }
            Some(b"subscribe") => {
                self.confirmed();
                if let Some(c) = self.channel_mut(channel) {
                    c.inflight = c.inflight.saturating_sub(1);
                    c.active = true;
                }
            }
            Some(b"unsubscribe") => {
                self.confirmed();
                let name = String::from_utf8_lossy(channel).into_owned();
                if let Some(c) = self.channels.get_mut(&name) {
                    c.inflight = c.inflight.saturating_sub(1);
                    c.active = false;
                    if !c.wanted && !c.dirty && c.inflight == 0 {
                        self.channels.remove(&name);
                    }
                }
            }
            _ => return Err("an unknown subscription reply".into()),
        }
        Ok(())
    }

    /// Redis confirmed one (un)subscription.
    fn confirmed(&mut self) {
        self.sub_acks = self.sub_acks.saturating_sub(1);
        if self.sub_acks == 0 {
            self.sub_since = None;
        }
    }

    fn channel_mut(&mut self, name: &[u8]) -> Option<&mut Channel> {
        let name = std::str::from_utf8(name).ok()?;
        self.channels.get_mut(name)
    }

    fn on_message(&mut self, channel: &[u8], mut bytes: Vec<u8>) {
        self.stats.received += 1;
        if channel == self.control.as_bytes() {
            if let Some(gone) = bytes.strip_prefix(b"gone ") {
                let gone = String::from_utf8_lossy(gone).into_owned();
                self.events.push_back(Event::Reaped(gone));
            }
            return;
        }
        let Some(envelope) = envelope::decode(&bytes) else {
            self.stats.errors += 1;
            return;
        };
        let own = envelope.origin == self.settings.instance;
        if envelope.kind == Kind::Joined {
            if own {
                self.on_joined(envelope.user, &bytes[envelope.payload..]);
            }
            return;
        }
        if own && envelope.kind != Kind::Presence {
            while self.echoes.front().is_some_and(|e| e.seq <= envelope.seq) {
                self.echoes.pop_front();
            }
        }
        let Some(target) = self.audience(channel) else {
            return;
        };
        let binary = envelope.kind == Kind::Binary;
        let except_user = envelope.user.map(str::to_owned);
        let start = envelope.payload;
        bytes.drain(..start);
        self.events.push_back(Event::Deliver {
            target,
            except_user,
            binary,
            payload: bytes,
        });
    }

    /// This instance's join marker came back: answer the join with what it carries (see
    /// `presence.lua`) then, at the join's place in the room's order.
    fn on_joined(&mut self, waiter: Option<&str>, marker: &[u8]) {
        let waiter = waiter.and_then(|w| w.parse::<u64>().ok());
        let Some(index) = waiter.and_then(|w| self.joining.iter().position(|&j| j == w)) else {
            return;
        };
        let waiter = self.joining.swap_remove(index);
        let joined = read_marker(marker).unwrap_or_else(|| {
            self.stats.errors += 1;
            Joined {
                count: 0,
                position: None,
                recovered: Some(false),
                replay: Vec::new(),
            }
        });
        self.answer(waiter, Answer::Joined(joined));
    }

    fn answer(&mut self, waiter: u64, answer: Answer) {
        self.events.push_back(Event::Answer { waiter, answer });
    }

    // ---- failing ----

    /// Redis is unusable: close both links, deliver locally what did not come back, answer
    /// every waiter with `Failed`, and retry after a backoff.
    fn fail(&mut self, now: Instant, why: &str) {
        if matches!(self.state, State::Down { .. }) {
            return;
        }
        self.stats.errors += 1;
        self.events.push_back(Event::Disconnect);
        if self.reported != Some(false) {
            self.reported = Some(false);
            self.events.push_back(Event::Down(why.to_owned()));
        }
        for (_, expect) in std::mem::take(&mut self.expect) {
            match expect {
                Expect::Publish(Some(waiter))
                | Expect::Numbered(Some(waiter))
                | Expect::Online(waiter) => self.answer(waiter, Answer::Failed),
                _ => {}
            }
        }
        for published in std::mem::take(&mut self.echoes) {
            self.deliver_locally(published, false);
        }
        for entry in std::mem::take(&mut self.fifo) {
            match entry {
                Entry::Publish(published) => self.deliver_locally(published, true),
                Entry::Online { waiter, .. } => self.answer(waiter, Answer::Failed),
                Entry::Changes { .. } | Entry::Register(_) | Entry::Leave => {}
            }
        }
        for waiter in std::mem::take(&mut self.joining) {
            self.answer(waiter, Answer::Failed);
        }
        self.channels.clear();
        self.dirty.clear();
        self.wires = [Wire::default(), Wire::default()];
        self.sub_handshake = 0;
        self.sub_acks = 0;
        self.sub_since = None;
        self.heartbeat_inflight = false;
        self.registering = false;
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << self.attempts.min(16))
            .min(MAX_BACKOFF);
        self.attempts = self.attempts.saturating_add(1);
        let half = backoff / 2;
        let jitter = half.mul_f64(self.random_unit());
        self.state = State::Down {
            retry_at: now + half + jitter,
        };
    }

    /// An event that was published (or queued) but will not come back: deliver it here.
    /// `waiting` events never left, so a waiter learns that from `Failed`.
    fn deliver_locally(&mut self, published: Published, waiting: bool) {
        self.stats.local_only += 1;
        if let Some(waiter) = published.waiter.filter(|_| waiting) {
            self.answer(waiter, Answer::Failed);
        }
        let mut bytes = published.bytes;
        bytes.drain(..published.payload);
        self.events.push_back(Event::Deliver {
            target: published.target,
            except_user: None,
            binary: published.binary,
            payload: bytes,
        });
    }

    /// A number in [0, 1) from xorshift64*, for the jitter only.
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reads a join marker's payload: `COUNT[ EPOCH LAST[ 1|0]]\n` then each replayed event as
/// `LENGTH\nEVENT`; `None` when it is not one.
fn read_marker(marker: &[u8]) -> Option<Joined> {
    let end = marker.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&marker[..end]).ok()?;
    let mut fields = head.split(' ');
    let count = fields.next()?.parse().ok()?;
    let position = match (fields.next(), fields.next()) {
        (Some(epoch), Some(offset)) => Some(Position {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        }),
        (None, None) => None,
        _ => return None,
    };
    let recovered = match fields.next() {
        Some("1") => Some(true),
        Some("0") => Some(false),
        None => None,
        Some(_) => return None,
    };
    let mut replay = Vec::new();
    let mut rest = &marker[end + 1..];
    while !rest.is_empty() {
        let line = rest.iter().position(|&b| b == b'\n')?;
        let length: usize = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
        let event = rest.get(line + 1..line + 1 + length)?;
        replay.push(event.to_vec());
        rest = &rest[line + 1 + length..];
    }
    Some(Joined {
        count,
        position,
        recovered,
        replay,
    })
}

#[cfg(test)]
mod tests;
