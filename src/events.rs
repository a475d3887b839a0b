//! The `events` protocol (SPEC §5): decode a client's JSON text frame, apply it to the [`Hub`],
//! and say what must be sent to whom.
//!
//! No sockets and no clock: the caller passes `now_ms` and gets [`Delivery`]s back. Each
//! delivery is serialised once, whatever the number of recipients; the loop frames those bytes
//! once and appends the same frame to every connection [`Target::recipients`] yields. Client
//! `id` and `data` values are copied through as raw JSON text, never parsed into a tree.
//!
//! The bounds on control events (SPEC §6) are decided here too: which events are commands and
//! draw on the connection's `--command-rate` budget (the loop only holds the budget), and in
//! which rooms presence is too costly to send.

use std::borrow::Cow;
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::history::{History, Position};
use crate::hub::{ConnId, Hub, Target};

/// Longest accepted room name, in bytes: long enough for any sensible name or path-like key,
/// short enough that names cannot bloat every message and index entry.
pub const MAX_ROOM_NAME_BYTES: usize = 128;

/// Most rooms one connection may be in: a join past it is refused, so one client cannot grow
/// the hub (or the per-connection room list every join and quit searches) without bound.
pub const MAX_ROOMS_PER_CONNECTION: usize = 100;

/// Room for the `,"offset":N` Redis adds to a room message after it was measured (SPEC §11):
/// a message is refused with 413 when it would outgrow `--max-message-size` with it.
pub const OFFSET_ROOM: usize = r#","offset":18446744073709551615"#.len();

/// The `event` of an error reply to a frame whose own event name could not be read.
const UNREADABLE: &str = "error";

/// One outgoing event and who gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Who receives the event; see [`Target::recipients`].
    pub target: Target,
    /// The event serialised once: the loop frames these bytes once and appends the same frame
    /// to every recipient.
    pub json: String,
}

/// Why a request was refused: the `code` and `error` of the error reply (or, for
/// [`publish`], of the HTTP answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The protocol's code (400, 403, 404, 413, 429), which clients branch on; it doubles as
    /// the HTTP status of a refused publish.
    pub code: u16,
    /// A reason a person can act on, sent as the reply's `error`.
    pub error: &'static str,
}

impl Failure {
    /// A `--rate-limit` or `--command-rate` budget ran out: the frame is dropped (SPEC §6).
    pub const RATE_LIMITED: Self = Self::new(429, "rate limited");
    /// The `events` protocol speaks JSON text only.
    pub const BINARY_FRAME: Self = Self::new(400, "binary frames are not supported");

    const MALFORMED: Self = Self::new(400, "malformed JSON: expected an object");
    const BAD_EVENT: Self = Self::new(400, "event must be a string");
    const BAD_ROOM: Self = Self::new(400, "room must be a non-empty string of at most 128 bytes");
    const MISSING_ROOM: Self = Self::new(400, "room is required");
    const BAD_TO: Self = Self::new(400, "to must be a string");
    const BAD_SINCE: Self = Self::new(
        400,
        r#"since must be {"epoch":STRING,"offset":INTEGER} (from a join reply or a message)"#,
    );
    const MISSING_DATA: Self = Self::new(400, "data is required");
    const ROOM_AND_TO: Self = Self::new(400, "give room or to, not both");
    const NOT_ALLOWED: Self = Self::new(403, "not allowed to join this room");
    const TOO_MANY_ROOMS: Self = Self::new(403, "room limit reached: quit a room first");
    const NOT_VISIBLE: Self = Self::new(403, "not allowed to see this room");
    const NOT_TO_EVERYONE: Self =
        Self::new(403, "a message to everyone needs * in the rooms claim");
    const NOT_EVERYONE_VISIBLE: Self =
        Self::new(403, "online without a room needs * in the rooms claim");
    const NOT_A_MEMBER: Self = Self::new(403, "join the room before sending to it");
    const NOT_CONNECTED: Self = Self::new(403, "connection is not registered");
    const NOT_IN_ROOM: Self = Self::new(404, "not a member of this room");
    const OFFLINE: Self = Self::new(404, "user is offline");
    const UNKNOWN_EVENT: Self = Self::new(404, "unknown event");
    const TOO_LARGE: Self = Self::new(413, "message too large");

    const fn new(code: u16, error: &'static str) -> Self {
        Self { code, error }
    }
}

/// What a request is handled with, besides the hub.
pub struct Context<'a> {
    /// The connection the frame came from: the sender and the target of the reply.
    pub conn: ConnId,
    /// Unix time in milliseconds, stamped as `ts`; passed in because the core has no clock.
    pub now_ms: u64,
    /// The loop's clock, for history's `--history-ttl`.
    pub now: Instant,
    /// Whether this connection may join a room (the JWT `rooms` claim); false answers 403.
    pub may_join: &'a dyn Fn(&str) -> bool,
    /// Whether this connection may reach everyone at once: a message or `online` without a
    /// room (the JWT `rooms` claim must hold `*`); false answers 403.
    pub may_reach_everyone: bool,
    /// The largest frame a client accepts; a relayed event above it is refused with 413 so
    /// that receivers with the same limit can always read what they are sent.
    pub max_message_size: usize,
    /// What bounds this connection's control events (SPEC §6).
    pub control: Control<'a>,
    /// Whether this instance is one of several sharing the hub through Redis (SPEC §10): then
    /// counts, presence, `online` and whether a user is offline are decided hub-wide, so the
    /// requests that need them become [`Ask`]s instead of replies.
    pub hub_wide: bool,
}

/// A request that needs the hub-wide state (SPEC §10), already applied to this instance's hub:
/// the loop asks Redis and answers with [`join_reply`], [`online_reply`] or [`direct_reply`].
#[derive(Clone, Debug)]
pub enum Ask {
    /// `join`: the reply waits for the hub-wide count (and, with history, the room's position
    /// and the replay of what `since` missed); presence is decided hub-wide.
    Join {
        room: String,
        since: Option<Since>,
        /// The connection was not in the room before (a repeated join changes no count).
        new_member: bool,
        /// No other connection of this user is in the room on this instance.
        first_for_user: bool,
        id: Option<Box<RawValue>>,
    },
    /// `quit`, already answered: the hub-wide counts and presence follow.
    Quit {
        room: String,
        /// No other connection of this user is left in the room on this instance.
        last_for_user: bool,
        /// The room has no member left on this instance.
        emptied: bool,
    },
    /// `online`, answered from the hub-wide lists.
    Online {
        room: Option<String>,
        id: Option<Box<RawValue>>,
    },
    /// `direct`, delivered through Redis and answered 404 when no instance has the user.
    Direct {
        to: String,
        /// The event for the user's connections, serialised once.
        json: String,
        id: Option<Box<RawValue>>,
    },
}

/// Where a client's `join` asks history to resume from (SPEC §11): after `offset` of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// What bounds the cost of control events (SPEC §6), so that one client's joins, quits and
/// queries cannot make the server, or every member of a big room, work at the client's pace.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    /// Takes a token from the connection's `--command-rate` budget. Asked only once a frame
    /// turns out to be a command ([`is_command`]), so a message never pays for it; false
    /// answers 429 and the command has no effect.
    pub take_command: &'a dyn Fn() -> bool,
    /// `--presence-max-members`: the largest room, in connections, whose members are told of
    /// each arrival and departure ([`announced`]).
    pub presence_max_members: usize,
}

/// Applies one client text frame to the hub and appends what must be sent to `out`. Every
/// outcome, including garbage, is a reply or a delivery: nothing here panics or closes.
pub fn handle(
    hub: &mut Hub,
    history: &mut History,
    ctx: &Context,
    text: &str,
    out: &mut Vec<Delivery>,
    asks: &mut Vec<Ask>,
) {
    let Some(request) = decode(text) else {
        return reply_error(out, ctx.conn, UNREADABLE, None, Failure::MALFORMED);
    };
    let Some(event) = request.event.and_then(string) else {
        return reply_error(out, ctx.conn, UNREADABLE, request.id, Failure::BAD_EVENT);
    };
    if is_command(&event) && !(ctx.control.take_command)() {
        return reply_error(out, ctx.conn, &event, request.id, Failure::RATE_LIMITED);
    }
    let handled = match &*event {
        "ping" => ping(ctx, &request, out),
        "join" => join(hub, history, ctx, &request, out, asks),
        "quit" => quit(hub, ctx, &request, out, asks),
        "message" => message(hub, history, ctx, &request, out),
        "direct" => direct(hub, ctx, &request, out, asks),
        "online" => online(hub, ctx, &request, out, asks),
        _ => Err(Failure::UNKNOWN_EVENT),
    };
    if let Err(failure) = handled {
        reply_error(out, ctx.conn, &event, request.id, failure);
    }
}

/// Tells the remaining members of every room where `conn` was its user's last connection that
/// the user left (unless the room is too big to announce it, see [`announced`]), and forgets
/// `conn`.
pub fn disconnect(
    hub: &mut Hub,
    conn: ConnId,
    presence_max_members: usize,
    out: &mut Vec<Delivery>,
) {
    let Some(departure) = hub.disconnect(conn) else {
        return;
    };
    for room in departure.last_in {
        let still_in = hub.room_members(&room).len();
        if still_in > 0 && announced(still_in + 1, presence_max_members) {
            push(
                out,
                Target::Room(room.to_string()),
                &presence(&room, &departure.user, "leave"),
            );
        }
    }
}

/// Answers a frame the loop refused before decoding it (rate limit, binary frame) with
/// `failure`, echoing the frame's `event` and `id` when `text` has readable ones.
pub fn refuse(conn: ConnId, text: Option<&str>, failure: Failure, out: &mut Vec<Delivery>) {
    let request = text.and_then(decode);
    let id = request.as_ref().and_then(|request| request.id);
    let event = request.and_then(|request| request.event).and_then(string);
    reply_error(
        out,
        conn,
        event.as_deref().unwrap_or(UNREADABLE),
        id,
        failure,
    );
}

/// Turns an HTTP `POST /api/publish` body — `{"room":R}`, `{"to":USER}` or `{}` (everyone),
/// plus `"data"` — into one delivery: a `message` (room or everyone) or a `direct`, without
/// `from`. A room message is numbered and kept like a client's (with its room's position
/// returned), unless `hub_wide`: then Redis numbers it. The caller counts the connections
/// [`Target::recipients`] yields.
pub fn publish(
    history: &mut History,
    now: Instant,
    now_ms: u64,
    max_message_size: usize,
    hub_wide: bool,
    body: &str,
) -> Result<(Delivery, Option<Position>), Failure> {
    let request = decode(body).ok_or(Failure::MALFORMED)?;
    let data = request.data.ok_or(Failure::MISSING_DATA)?;
    let room = room_name(request.room)?;
    let to = request
        .to
        .map(|to| string(to).ok_or(Failure::BAD_TO))
        .transpose()?;
    let (event, target) = match (&room, to) {
        (Some(_), Some(_)) => return Err(Failure::ROOM_AND_TO),
        (Some(room), None) => ("message", Target::Room(room.to_string())),
        (None, Some(to)) => ("direct", Target::User(to.into_owned())),
        (None, None) => ("message", Target::All),
    };
    let relay = Relay {
        event,
        room: room.as_deref(),
        from: None,
        data,
        now_ms,
        max_message_size,
    };
    let (json, position) = match &room {
        Some(room) => {
            let (json, offset) = numbered(history, now, hub_wide, &relay, room)?;
            (json, offset.and_then(|_| history.position(room, now)))
        }
        None => (relay.serialise(None)?, None),
    };
    Ok((Delivery { target, json }, position))
}

/// Whether `event` is a command: `join`, `quit` and `online` change or read who is where, and
/// cost the hub (or every member of the room, through presence) work that grows with the room
/// rather than with what the client sent; `--command-rate` bounds them. `ping`, `message` and
/// `direct` are not commands (`--rate-limit` bounds those), nor is an unknown event (its 404
/// costs nothing).
fn is_command(event: &str) -> bool {
    matches!(event, "join" | "quit" | "online")
}

/// Whether a user's arrival in or departure from a room of `members` connections — counted
/// with the connection joining or leaving — is announced to the others. A presence event
/// costs one delivery per connection in the room, so a mass join of N users would cost
/// O(N²); past `presence_max_members` connections, members learn the count from their join
/// reply and who is there from `online` instead. Connections, not users, because they are
/// what a presence event costs; the same room size decides a user's join and leave, so a
/// room that stays below the limit announces both.
fn announced(members: usize, presence_max_members: usize) -> bool {
    members <= presence_max_members
}

/// A client frame with every field still raw, so a wrong type in one field still lets the
/// error reply echo `event` and `id`.
#[derive(Deserialize)]
struct Request<'a> {
    /// Which handler runs; must turn out to be a string.
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    /// Echoed verbatim in the reply, whatever JSON value it is (`null` included).
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    /// The room of join, quit, message and online; `null` counts as absent.
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    /// The user a direct message is for.
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    /// The payload relayed verbatim by message and direct (`null` included).
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    /// Where a join resumes from (SPEC §11); `null` counts as absent.
    #[serde(borrow)]
    since: Option<&'a RawValue>,
}

/// Reads a request, which must be a JSON object: serde would also accept a struct written as
/// an array, which no client means.
fn decode(text: &str) -> Option<Request<'_>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// Keeps a present `null` as `Some("null")`, unlike `Option`'s own deserialisation, because
/// `null` is a legitimate `id` or `data`.
fn present<'de, D: Deserializer<'de>>(value: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(value).map(Some)
}

/// A JSON string borrowed from the frame when it has no escapes, decoded otherwise.
#[derive(Deserialize)]
struct JsonStr<'a>(
    /// Borrowed in the common case, so reading a room or user name copies nothing.
    #[serde(borrow)]
    Cow<'a, str>,
);

/// The string `raw` holds, or `None` when it is another kind of value.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<JsonStr>(raw.get())
        .ok()
        .map(|text| text.0)
}

/// The validated room name, `None` when absent.
fn room_name(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, Failure> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match string(raw) {
        Some(room) if !room.is_empty() && room.len() <= MAX_ROOM_NAME_BYTES => Ok(Some(room)),
        _ => Err(Failure::BAD_ROOM),
    }
}

/// The validated `since` of a join, `None` when absent.
fn since(raw: Option<&RawValue>) -> Result<Option<Since>, Failure> {
    raw.map(|raw| serde_json::from_str(raw.get()).map_err(|_| Failure::BAD_SINCE))
        .transpose()
}

/// A reply to the sender: `{"event","id"?,"code",("room")?,("data")?,("ts")?}`.
#[derive(Serialize)]
struct Reply<'a, D> {
    /// The request's event name, so clients can route the answer.
    event: &'a str,
    /// The request's `id`, so clients can match answers to requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    /// Always 0: the request succeeded.
    code: u16,
    /// Absent for ping and direct, `null` for an online count of everyone, the room otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<Option<&'a str>>,
    /// The answer's payload (counts, user lists), when the event has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    /// The server's clock, for ping.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
}

impl<'a, D> Reply<'a, D> {
    /// A bare success reply to `event`, to which the handler adds its own fields.
    fn ok(event: &'a str, request: &Request<'a>) -> Self {
        Self {
            event,
            id: request.id,
            code: 0,
            room: None,
            data: None,
            ts: None,
        }
    }
}

/// An error reply: `{"event","id"?,"code","error"}`.
#[derive(Serialize)]
struct ErrorReply<'a> {
    /// The request's event name, or `"error"` when it could not be read.
    event: &'a str,
    /// The request's `id` when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    /// What went wrong, for programs.
    code: u16,
    /// What went wrong, for people.
    error: &'a str,
}

/// An event pushed to clients: `{"event","room"?,"from"?,"data","ts"?}`.
#[derive(Serialize)]
struct Pushed<'a, D> {
    /// message, direct or presence.
    event: &'a str,
    /// The room it happened in; absent for direct messages and messages to everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    /// The sending user; absent for presence and for messages published over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    /// The payload: the client's raw `data`, or presence details.
    data: D,
    /// When the server accepted it; absent for presence.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    /// A room message's place in its room's history (SPEC §11), with history on.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// `data` of a join reply.
#[derive(Serialize)]
struct Joined<'a> {
    /// Distinct users in the room after the join.
    count: usize,
    /// With history on: the epoch the room's offsets count in…
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    /// …and the offset of its last message at the join (0 before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// Only when the join had `since`: whether every message after it follows the reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

/// `data` of an online reply.
#[derive(Serialize)]
struct Online<'a> {
    /// Distinct users, the length of `users`.
    count: usize,
    /// Their names, sorted so the answer is stable.
    users: Vec<&'a str>,
}

/// `data` of a presence event.
#[derive(Serialize)]
struct Presence<'a> {
    /// Who arrived or left.
    user: &'a str,
    /// `join` or `leave`.
    state: &'a str,
}

fn ping(ctx: &Context, request: &Request, out: &mut Vec<Delivery>) -> Result<(), Failure> {
    let reply = Reply::<()> {
        ts: Some(ctx.now_ms),
        ..Reply::ok("ping", request)
    };
    push(out, Target::Conn(ctx.conn), &reply);
    Ok(())
}

fn join(
    hub: &mut Hub,
    history: &mut History,
    ctx: &Context,
    request: &Request,
    out: &mut Vec<Delivery>,
    asks: &mut Vec<Ask>,
) -> Result<(), Failure> {
    let room = room_name(request.room)?.ok_or(Failure::MISSING_ROOM)?;
    let since = since(request.since)?;
    if !(ctx.may_join)(&room) {
        return Err(Failure::NOT_ALLOWED);
    }
    let new_member = !hub.is_member(ctx.conn, &room);
    if new_member && hub.rooms_of(ctx.conn) >= MAX_ROOMS_PER_CONNECTION {
        return Err(Failure::TOO_MANY_ROOMS);
    }
    let joined = hub.join(ctx.conn, &room).ok_or(Failure::NOT_CONNECTED)?;
    if ctx.hub_wide {
        asks.push(Ask::Join {
            room: room.into_owned(),
            since,
            new_member,
            first_for_user: joined.first_for_user,
            id: request.id.map(RawValue::to_owned),
        });
        return Ok(());
    }
    // The reply, then what the client missed, before anything else can reach it: the loop
    // runs nothing between these deliveries, so the replay meets the live messages exactly.
    let position = history.position(&room, ctx.now);
    let replay = since
        .as_ref()
        .and_then(|since| history.after(&room, &since.epoch, since.offset, ctx.now));
    let recovered = since.as_ref().map(|_| replay.is_some());
    out.extend(join_reply(
        ctx.conn,
        &room,
        request.id,
        joined.users,
        position.as_ref(),
        recovered,
    ));
    out.extend(replay.into_iter().flatten().map(|json| Delivery {
        target: Target::Conn(ctx.conn),
        json: json.to_owned(),
    }));
    if joined.first_for_user
        && joined.users > 1
        && announced(
            hub.room_members(&room).len(),
            ctx.control.presence_max_members,
        )
        && let Some(user) = hub.user_of(ctx.conn)
    {
        let others = Target::RoomExcept(room.to_string(), ctx.conn);
        push(out, others, &presence(&room, user, "join"));
    }
    Ok(())
}

fn quit(
    hub: &mut Hub,
    ctx: &Context,
    request: &Request,
    out: &mut Vec<Delivery>,
    asks: &mut Vec<Ask>,
) -> Result<(), Failure> {
    let room = room_name(request.room)?.ok_or(Failure::MISSING_ROOM)?;
    let left = hub.quit(ctx.conn, &room).ok_or(Failure::NOT_IN_ROOM)?;
    let reply = Reply::<()> {
        room: Some(Some(&*room)),
        ..Reply::ok("quit", request)
    };
    push(out, Target::Conn(ctx.conn), &reply);
    let still_in = hub.room_members(&room).len();
    if ctx.hub_wide {
        asks.push(Ask::Quit {
            room: room.into_owned(),
            last_for_user: left.last_for_user,
            emptied: still_in == 0,
        });
        return Ok(());
    }
    if left.last_for_user
        && still_in > 0
        && announced(still_in + 1, ctx.control.presence_max_members)
        && let Some(user) = hub.user_of(ctx.conn)
    {
        let remaining = Target::Room(room.to_string());
        push(out, remaining, &presence(&room, user, "leave"));
    }
    Ok(())
}

fn message(
    hub: &Hub,
    history: &mut History,
    ctx: &Context,
    request: &Request,
    out: &mut Vec<Delivery>,
) -> Result<(), Failure> {
    let data = request.data.ok_or(Failure::MISSING_DATA)?;
    let room = room_name(request.room)?;
    let from = hub.user_of(ctx.conn).ok_or(Failure::NOT_CONNECTED)?;
    let relay = Relay {
        event: "message",
        room: room.as_deref(),
        from: Some(from),
        data,
        now_ms: ctx.now_ms,
        max_message_size: ctx.max_message_size,
    };
    let json = match &room {
        Some(room) if !hub.is_member(ctx.conn, room) => return Err(Failure::NOT_A_MEMBER),
        Some(room) => numbered(history, ctx.now, ctx.hub_wide, &relay, room)?.0,
        None if !ctx.may_reach_everyone => return Err(Failure::NOT_TO_EVERYONE),
        None => relay.serialise(None)?,
    };
    let target = room.map_or(Target::All, |room| Target::Room(room.into_owned()));
    out.push(Delivery { target, json });
    Ok(())
}

fn direct(
    hub: &Hub,
    ctx: &Context,
    request: &Request,
    out: &mut Vec<Delivery>,
    asks: &mut Vec<Ask>,
) -> Result<(), Failure> {
    let to = request.to.and_then(string).ok_or(Failure::BAD_TO)?;
    let data = request.data.ok_or(Failure::MISSING_DATA)?;
    let from = hub.user_of(ctx.conn).ok_or(Failure::NOT_CONNECTED)?;
    if !ctx.hub_wide && hub.user_connections(&to).is_empty() {
        return Err(Failure::OFFLINE);
    }
    let json = Relay {
        event: "direct",
        room: None,
        from: Some(from),
        data,
        now_ms: ctx.now_ms,
        max_message_size: ctx.max_message_size,
    }
    .serialise(None)?;
    if ctx.hub_wide {
        asks.push(Ask::Direct {
            to: to.into_owned(),
            json,
            id: request.id.map(RawValue::to_owned),
        });
        return Ok(());
    }
    out.push(Delivery {
        target: Target::User(to.into_owned()),
        json,
    });
    out.extend(direct_reply(ctx.conn, request.id, true));
    Ok(())
}

fn online(
    hub: &Hub,
    ctx: &Context,
    request: &Request,
    out: &mut Vec<Delivery>,
    asks: &mut Vec<Ask>,
) -> Result<(), Failure> {
    let room = room_name(request.room)?;
    // A token limited to some rooms does not reveal who is in the others, nor who is online.
    match room.as_deref() {
        Some(room) if !(ctx.may_join)(room) => return Err(Failure::NOT_VISIBLE),
        None if !ctx.may_reach_everyone => return Err(Failure::NOT_EVERYONE_VISIBLE),
        _ => {}
    }
    if ctx.hub_wide {
        asks.push(Ask::Online {
            room: room.map(Cow::into_owned),
            id: request.id.map(RawValue::to_owned),
        });
        return Ok(());
    }
    let users: Vec<&str> = match &room {
        Some(room) => hub.room_users(room).collect(),
        None => hub.users().collect(),
    };
    out.extend(online_reply(ctx.conn, room.as_deref(), request.id, users));
    Ok(())
}

/// The reply to a `join` of `room` by `conn`, which now has `count` distinct users; with
/// history, the room's `position`, and `recovered` when the join had `since`.
pub fn join_reply(
    conn: ConnId,
    room: &str,
    id: Option<&RawValue>,
    count: usize,
    position: Option<&Position>,
    recovered: Option<bool>,
) -> Option<Delivery> {
    let reply = Reply {
        event: "join",
        id,
        code: 0,
        room: Some(Some(room)),
        data: Some(Joined {
            count,
            epoch: position.map(|p| p.epoch.as_str()),
            offset: position.map(|p| p.offset),
            recovered,
        }),
        ts: None,
    };
    delivery(Target::Conn(conn), &reply)
}

/// The reply to an `online` of `room` (everyone when `None`) listing `users`, in any order.
pub fn online_reply<S: AsRef<str>>(
    conn: ConnId,
    room: Option<&str>,
    id: Option<&RawValue>,
    users: Vec<S>,
) -> Option<Delivery> {
    let mut users: Vec<&str> = users.iter().map(AsRef::as_ref).collect();
    users.sort_unstable();
    let reply = Reply {
        event: "online",
        id,
        code: 0,
        room: Some(room),
        data: Some(Online {
            count: users.len(),
            users,
        }),
        ts: None,
    };
    delivery(Target::Conn(conn), &reply)
}

/// The reply to a `direct`: code 0 when the user was `online` somewhere, 404 when not.
pub fn direct_reply(conn: ConnId, id: Option<&RawValue>, online: bool) -> Option<Delivery> {
    if online {
        delivery(
            Target::Conn(conn),
            &Reply::<()> {
                event: "direct",
                id,
                code: 0,
                room: None,
                data: None,
                ts: None,
            },
        )
    } else {
        let reply = ErrorReply {
            event: "direct",
            id,
            code: Failure::OFFLINE.code,
            error: Failure::OFFLINE.error,
        };
        delivery(Target::Conn(conn), &reply)
    }
}

/// A presence event for the members of `room`.
fn presence<'a>(room: &'a str, user: &'a str, state: &'a str) -> Pushed<'a, Presence<'a>> {
    Pushed {
        event: "presence",
        room: Some(room),
        from: None,
        data: Presence { user, state },
        ts: None,
        offset: None,
    }
}

/// A relayed `message` or `direct` event, before it is serialised.
struct Relay<'a> {
    event: &'a str,
    room: Option<&'a str>,
    from: Option<&'a str>,
    data: &'a RawValue,
    now_ms: u64,
    /// The largest event receivers accept.
    max_message_size: usize,
}

impl Relay<'_> {
    /// Serialises the event (with `offset`, for a numbered room message), refusing it with
    /// 413 when receivers with a `max_message_size` limit could not read it (an event that
    /// cannot be serialised at all, which our plain fields rule out, is refused the same way
    /// rather than sent half-made).
    fn serialise(&self, offset: Option<u64>) -> Result<String, Failure> {
        self.serialise_within(offset, self.max_message_size)
    }

    fn serialise_within(&self, offset: Option<u64>, limit: usize) -> Result<String, Failure> {
        let pushed = Pushed {
            event: self.event,
            room: self.room,
            from: self.from,
            data: self.data,
            ts: Some(self.now_ms),
            offset,
        };
        match serde_json::to_string(&pushed) {
            Ok(json) if json.len() <= limit => Ok(json),
            _ => Err(Failure::TOO_LARGE),
        }
    }
}

/// Serialises a message to `room`: numbered and kept by this instance's `history`, or, when
/// the hub is `hub_wide` with history on, leaving room for the offset Redis will add. Returns
/// the event and its offset (`None` when Redis numbers it, or history is off).
fn numbered(
    history: &mut History,
    now: Instant,
    hub_wide: bool,
    relay: &Relay,
    room: &str,
) -> Result<(String, Option<u64>), Failure> {
    if hub_wide {
        let reserve = if history.is_on() { OFFSET_ROOM } else { 0 };
        let limit = relay.max_message_size.saturating_sub(reserve);
        return relay.serialise_within(None, limit).map(|json| (json, None));
    }
    history.append(room, now, |offset| relay.serialise(offset))
}

fn reply_error(
    out: &mut Vec<Delivery>,
    conn: ConnId,
    event: &str,
    id: Option<&RawValue>,
    failure: Failure,
) {
    let reply = ErrorReply {
        event,
        id,
        code: failure.code,
        error: failure.error,
    };
    push(out, Target::Conn(conn), &reply);
}

/// Serialises `value` once and queues it for `target`. Our reply types hold only strings,
/// numbers and already-valid raw JSON, so serialisation cannot fail; were it ever to, the event
/// is dropped rather than sent half-made.
fn push<T: Serialize>(out: &mut Vec<Delivery>, target: Target, value: &T) {
    out.extend(delivery(target, value));
}

/// `value` serialised once for `target` (`None` in the case [`push`] rules out).
fn delivery<T: Serialize>(target: Target, value: &T) -> Option<Delivery> {
    let json = serde_json::to_string(value).ok()?;
    Some(Delivery { target, json })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::Rng;

    const NOW: u64 = 1_700_000_000_000;
    const LIMIT: usize = 64 * 1024;
    const TTL: std::time::Duration = std::time::Duration::from_secs(60);
    /// The `--presence-max-members` default: rooms in these tests are far smaller.
    const PRESENCE_MAX: usize = 1_000;

    /// A command budget that never runs out.
    fn unlimited() -> bool {
        true
    }

    /// Bounds that never bind in these tests' rooms: the behaviour of a 30-person room.
    fn unbounded() -> Control<'static> {
        Control {
            take_command: &unlimited,
            presence_max_members: PRESENCE_MAX,
        }
    }

    fn allow_all(_: &str) -> bool {
        true
    }

    fn only_public(room: &str) -> bool {
        room.starts_with("public.")
    }

    fn send(hub: &mut Hub, conn: usize, text: &str) -> Vec<Delivery> {
        send_as(hub, conn, &allow_all, text)
    }

    /// Sends `text` from `conn` holding a token whose `rooms` claim is `may_join`.
    fn send_as(
        hub: &mut Hub,
        conn: usize,
        may_join: &dyn Fn(&str) -> bool,
        text: &str,
    ) -> Vec<Delivery> {
        send_under(hub, conn, may_join, unbounded(), text)
    }

    /// Sends `text` from `conn` under the control-event bounds `control`.
    fn send_under(
        hub: &mut Hub,
        conn: usize,
        may_join: &dyn Fn(&str) -> bool,
        control: Control,
        text: &str,
    ) -> Vec<Delivery> {
        let ctx = Context {
            conn: ConnId(conn),
            now_ms: NOW,
            now: Instant::now(),
            may_join,
            // As with a `RoomRule`, a claim that allows every room (`*`) reaches everyone.
            may_reach_everyone: may_join("*"),
            max_message_size: LIMIT,
            control,
            hub_wide: false,
        };
        let mut out = Vec::new();
        handle(
            hub,
            &mut no_history(),
            &ctx,
            text,
            &mut out,
            &mut Vec::new(),
        );
        out
    }

    fn no_history() -> History {
        History::new(0, TTL, 0)
    }

    fn to_conn(conn: usize, json: &str) -> Delivery {
        Delivery {
            target: Target::Conn(ConnId(conn)),
            json: json.to_string(),
        }
    }

    fn to(target: Target, json: &str) -> Delivery {
        Delivery {
            target,
            json: json.to_string(),
        }
    }

    fn room(name: &str) -> Target {
        Target::Room(name.to_string())
    }

    /// alice on connections 1 and 2 (two tabs), bob on 3, carol on 4.
    fn hub() -> Hub {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.connect(ConnId(2), "alice");
        hub.connect(ConnId(3), "bob");
        hub.connect(ConnId(4), "carol");
        hub
    }

    fn recipients(hub: &Hub, target: &Target) -> Vec<usize> {
        let mut conns: Vec<usize> = target.recipients(hub).map(|conn| conn.0).collect();
        conns.sort_unstable();
        conns
    }

    #[test]
    fn ping_answers_with_the_server_time() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"ping"}"#),
            [to_conn(
                1,
                r#"{"event":"ping","code":0,"ts":1700000000000}"#
            )]
        );
    }

    #[test]
    fn replies_echo_string_number_and_structured_ids() {
        let mut hub = hub();
        for (id, echoed) in [
            (r#""req-7""#, r#""req-7""#),
            ("42", "42"),
            (r#" { "n" : [1, 2] } "#, r#"{ "n" : [1, 2] }"#),
            ("null", "null"),
        ] {
            let request = format!(r#"{{"event":"ping","id":{id}}}"#);
            let expected = format!(r#"{{"event":"ping","id":{echoed},"code":0,"ts":{NOW}}}"#);
            assert_eq!(send(&mut hub, 1, &request), [to_conn(1, &expected)]);
        }
    }

    #[test]
    fn error_replies_echo_the_id_too() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"quit","room":"lobby","id":5}"#),
            [to_conn(
                1,
                r#"{"event":"quit","id":5,"code":404,"error":"not a member of this room"}"#
            )]
        );
    }

    #[test]
    fn first_join_answers_count_and_tells_the_other_members() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#),
            [to_conn(
                3,
                r#"{"event":"join","code":0,"room":"lobby","data":{"count":1}}"#
            )]
        );
        let out = send(&mut hub, 1, r#"{"event":"join","room":"lobby","id":1}"#);
        assert_eq!(
            out,
            [
                to_conn(
                    1,
                    r#"{"event":"join","id":1,"code":0,"room":"lobby","data":{"count":2}}"#
                ),
                to(
                    Target::RoomExcept("lobby".into(), ConnId(1)),
                    r#"{"event":"presence","room":"lobby","data":{"user":"alice","state":"join"}}"#
                ),
            ]
        );
        assert_eq!(recipients(&hub, &out[1].target), [3]);
    }

    #[test]
    fn second_tab_joining_is_not_announced() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#);
        assert_eq!(
            send(&mut hub, 2, r#"{"event":"join","room":"lobby"}"#),
            [to_conn(
                2,
                r#"{"event":"join","code":0,"room":"lobby","data":{"count":2}}"#
            )]
        );
    }

    #[test]
    fn joining_again_answers_again_without_presence() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#);
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#),
            [to_conn(
                1,
                r#"{"event":"join","code":0,"room":"lobby","data":{"count":2}}"#
            )]
        );
        assert_eq!(hub.room_members("lobby").len(), 2);
    }

    #[test]
    fn join_outside_the_allowed_rooms_is_403_and_joins_nothing() {
        let mut hub = hub();
        let mut out = send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"join","room":"secret"}"#,
        );
        out.extend(send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"join","room":"public.a"}"#,
        ));
        assert_eq!(
            out[0],
            to_conn(
                1,
                r#"{"event":"join","code":403,"error":"not allowed to join this room"}"#
            )
        );
        assert_eq!(out.len(), 2);
        assert_eq!(hub.room_count(), 1);
        assert!(!hub.is_member(ConnId(1), "secret"));
    }

    #[test]
    fn online_of_a_room_the_token_excludes_is_403() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"secret"}"#);
        assert_eq!(
            send_as(
                &mut hub,
                1,
                &only_public,
                r#"{"event":"online","room":"secret"}"#
            ),
            [to_conn(
                1,
                r#"{"event":"online","code":403,"error":"not allowed to see this room"}"#
            )]
        );
    }

    #[test]
    fn a_claim_without_star_cannot_message_or_list_everyone_but_may_send_directs() {
        let mut hub = hub();
        send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"join","room":"public.a"}"#,
        );
        assert_eq!(
            send_as(
                &mut hub,
                1,
                &only_public,
                r#"{"event":"message","data":"to all","id":7}"#
            ),
            [to_conn(
                1,
                r#"{"event":"message","id":7,"code":403,"error":"a message to everyone needs * in the rooms claim"}"#
            )]
        );
        assert_eq!(
            send_as(&mut hub, 1, &only_public, r#"{"event":"online"}"#),
            [to_conn(
                1,
                r#"{"event":"online","code":403,"error":"online without a room needs * in the rooms claim"}"#
            )]
        );
        let in_room = send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"message","room":"public.a","data":1}"#,
        );
        assert_eq!(in_room[0].target, room("public.a"));
        let online_room = send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"online","room":"public.a"}"#,
        );
        assert!(
            online_room[0].json.contains(r#""code":0"#),
            "{online_room:?}"
        );
        let direct = send_as(
            &mut hub,
            1,
            &only_public,
            r#"{"event":"direct","to":"bob","data":1}"#,
        );
        assert_eq!(direct[0].target, Target::User("bob".into()));
    }

    #[test]
    fn joins_past_the_room_limit_are_refused_but_rejoining_is_fine() {
        let mut hub = hub();
        for n in 0..MAX_ROOMS_PER_CONNECTION {
            let out = send(&mut hub, 1, &format!(r#"{{"event":"join","room":"r{n}"}}"#));
            assert!(
                out[0].json.contains(r#""code":0"#),
                "join {n}: {}",
                out[0].json
            );
        }
        let refused = send(&mut hub, 1, r#"{"event":"join","room":"one-too-many"}"#);
        assert_eq!(
            refused,
            [to_conn(
                1,
                r#"{"event":"join","code":403,"error":"room limit reached: quit a room first"}"#
            )]
        );
        let again = send(&mut hub, 1, r#"{"event":"join","room":"r0"}"#);
        assert!(again[0].json.contains(r#""code":0"#));
        assert_eq!(hub.rooms_of(ConnId(1)), MAX_ROOMS_PER_CONNECTION);
    }

    #[test]
    fn bad_room_names_are_400() {
        let mut hub = hub();
        let too_long = "r".repeat(MAX_ROOM_NAME_BYTES + 1);
        let longest = "r".repeat(MAX_ROOM_NAME_BYTES);
        for room in [r#""""#, "7", "[]", &format!("\"{too_long}\"")] {
            for event in ["join", "quit", "message", "online"] {
                let request = format!(r#"{{"event":"{event}","room":{room},"data":1}}"#);
                let expected = format!(
                    r#"{{"event":"{event}","code":400,"error":"room must be a non-empty string of at most {MAX_ROOM_NAME_BYTES} bytes"}}"#
                );
                assert_eq!(send(&mut hub, 1, &request), [to_conn(1, &expected)]);
            }
        }
        let request = format!(r#"{{"event":"join","room":"{longest}"}}"#);
        assert!(send(&mut hub, 1, &request)[0].json.contains(r#""code":0"#));
        assert!(hub.is_member(ConnId(1), &longest));
        assert_eq!(hub.room_count(), 1);
    }

    #[test]
    fn join_and_quit_without_a_room_are_400() {
        let mut hub = hub();
        for event in ["join", "quit"] {
            let expected =
                format!(r#"{{"event":"{event}","code":400,"error":"room is required"}}"#);
            let request = format!(r#"{{"event":"{event}"}}"#);
            assert_eq!(send(&mut hub, 1, &request), [to_conn(1, &expected)]);
            let request = format!(r#"{{"event":"{event}","room":null}}"#);
            assert_eq!(send(&mut hub, 1, &request), [to_conn(1, &expected)]);
        }
    }

    #[test]
    fn last_tab_quitting_tells_the_remaining_members() {
        let mut hub = hub();
        for conn in [1, 2, 3] {
            send(&mut hub, conn, r#"{"event":"join","room":"lobby"}"#);
        }
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"quit","room":"lobby"}"#),
            [to_conn(1, r#"{"event":"quit","code":0,"room":"lobby"}"#)]
        );
        let out = send(&mut hub, 2, r#"{"event":"quit","room":"lobby","id":"q"}"#);
        assert_eq!(
            out,
            [
                to_conn(2, r#"{"event":"quit","id":"q","code":0,"room":"lobby"}"#),
                to(
                    room("lobby"),
                    r#"{"event":"presence","room":"lobby","data":{"user":"alice","state":"leave"}}"#
                ),
            ]
        );
        assert_eq!(recipients(&hub, &out[1].target), [3]);
    }

    #[test]
    fn last_member_quitting_announces_to_nobody() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"quit","room":"lobby"}"#),
            [to_conn(3, r#"{"event":"quit","code":0,"room":"lobby"}"#)]
        );
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn closing_one_of_two_tabs_is_not_a_leave() {
        let mut hub = hub();
        for conn in [1, 2, 3] {
            send(&mut hub, conn, r#"{"event":"join","room":"lobby"}"#);
        }
        let mut out = Vec::new();
        disconnect(&mut hub, ConnId(1), PRESENCE_MAX, &mut out);
        assert_eq!(out, []);
        assert_eq!(hub.room_user_count("lobby"), 2);
    }

    #[test]
    fn disconnect_leaves_every_room_and_tells_the_remaining_members() {
        let mut hub = hub();
        for room in ["a", "b", "c"] {
            send(
                &mut hub,
                1,
                &format!(r#"{{"event":"join","room":"{room}"}}"#),
            );
        }
        send(&mut hub, 3, r#"{"event":"join","room":"a"}"#);
        send(&mut hub, 4, r#"{"event":"join","room":"b"}"#);
        let mut out = Vec::new();
        disconnect(&mut hub, ConnId(1), PRESENCE_MAX, &mut out);
        out.sort_by(|x, y| x.json.cmp(&y.json));
        assert_eq!(
            out,
            [
                to(
                    room("a"),
                    r#"{"event":"presence","room":"a","data":{"user":"alice","state":"leave"}}"#
                ),
                to(
                    room("b"),
                    r#"{"event":"presence","room":"b","data":{"user":"alice","state":"leave"}}"#
                ),
            ]
        );
        assert_eq!(hub.room_count(), 2);
        assert!(!hub.is_member(ConnId(1), "c"));
        assert_eq!(hub.user_connections("alice"), &[ConnId(2)]);
        let mut again = Vec::new();
        disconnect(&mut hub, ConnId(1), PRESENCE_MAX, &mut again);
        assert_eq!(again, []);
    }

    #[test]
    fn room_message_reaches_every_member_sender_included() {
        let mut hub = hub();
        for conn in [1, 2, 3] {
            send(&mut hub, conn, r#"{"event":"join","room":"lobby"}"#);
        }
        let out = send(
            &mut hub,
            3,
            r#"{"event":"message","room":"lobby","data":{"text":"hi", "n":[1,2.50]}}"#,
        );
        assert_eq!(
            out,
            [to(
                room("lobby"),
                r#"{"event":"message","room":"lobby","from":"bob","data":{"text":"hi", "n":[1,2.50]},"ts":1700000000000}"#
            )]
        );
        assert_eq!(recipients(&hub, &out[0].target), [1, 2, 3]);
    }

    #[test]
    fn message_to_a_room_one_is_not_in_is_403() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        assert_eq!(
            send(
                &mut hub,
                1,
                r#"{"event":"message","room":"lobby","data":"x"}"#
            ),
            [to_conn(
                1,
                r#"{"event":"message","code":403,"error":"join the room before sending to it"}"#
            )]
        );
    }

    #[test]
    fn message_without_room_reaches_everyone_and_has_no_room_key() {
        let mut hub = hub();
        let out = send(&mut hub, 4, r#"{"event":"message","data":"hello all"}"#);
        assert_eq!(
            out,
            [to(
                Target::All,
                r#"{"event":"message","from":"carol","data":"hello all","ts":1700000000000}"#
            )]
        );
        assert_eq!(recipients(&hub, &out[0].target), [1, 2, 3, 4]);
        let null_room = send(&mut hub, 4, r#"{"event":"message","room":null,"data":1}"#);
        assert_eq!(null_room[0].target, Target::All);
    }

    #[test]
    fn message_and_direct_need_data_but_null_is_data() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"message"}"#),
            [to_conn(
                1,
                r#"{"event":"message","code":400,"error":"data is required"}"#
            )]
        );
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"direct","to":"bob"}"#),
            [to_conn(
                1,
                r#"{"event":"direct","code":400,"error":"data is required"}"#
            )]
        );
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"message","data":null}"#),
            [to(
                Target::All,
                r#"{"event":"message","from":"alice","data":null,"ts":1700000000000}"#
            )]
        );
    }

    #[test]
    fn direct_reaches_every_tab_of_the_user_and_answers_the_sender() {
        let mut hub = hub();
        let out = send(
            &mut hub,
            3,
            r#"{"event":"direct","to":"alice","data":[1],"id":9}"#,
        );
        assert_eq!(
            out,
            [
                to(
                    Target::User("alice".into()),
                    r#"{"event":"direct","from":"bob","data":[1],"ts":1700000000000}"#
                ),
                to_conn(3, r#"{"event":"direct","id":9,"code":0}"#),
            ]
        );
        assert_eq!(recipients(&hub, &out[0].target), [1, 2]);
    }

    #[test]
    fn direct_to_an_offline_user_is_404() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"direct","to":"dave","data":1}"#),
            [to_conn(
                3,
                r#"{"event":"direct","code":404,"error":"user is offline"}"#
            )]
        );
    }

    #[test]
    fn direct_without_a_string_to_is_400() {
        let mut hub = hub();
        for request in [
            r#"{"event":"direct","data":1}"#,
            r#"{"event":"direct","to":3,"data":1}"#,
        ] {
            assert_eq!(
                send(&mut hub, 3, request),
                [to_conn(
                    3,
                    r#"{"event":"direct","code":400,"error":"to must be a string"}"#
                )]
            );
        }
    }

    #[test]
    fn relayed_event_over_the_size_limit_is_413_and_not_sent() {
        let mut hub = hub();
        send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#);
        let ctx = Context {
            conn: ConnId(1),
            now_ms: NOW,
            now: Instant::now(),
            may_join: &allow_all,
            may_reach_everyone: true,
            max_message_size: 100,
            control: unbounded(),
            hub_wide: false,
        };
        let history = &mut no_history();
        let fits = format!(
            r#"{{"event":"message","room":"lobby","data":"{}"}}"#,
            "x".repeat(22)
        );
        let too_big = format!(
            r#"{{"event":"message","room":"lobby","data":"{}"}}"#,
            "x".repeat(23)
        );
        let direct = format!(
            r#"{{"event":"direct","to":"bob","data":"{}"}}"#,
            "x".repeat(90)
        );
        let mut out = Vec::new();
        handle(&mut hub, history, &ctx, &fits, &mut out, &mut Vec::new());
        assert_eq!(out[0].json.len(), 100);
        out.clear();
        handle(&mut hub, history, &ctx, &too_big, &mut out, &mut Vec::new());
        handle(&mut hub, history, &ctx, &direct, &mut out, &mut Vec::new());
        assert_eq!(
            out,
            [
                to_conn(
                    1,
                    r#"{"event":"message","code":413,"error":"message too large"}"#
                ),
                to_conn(
                    1,
                    r#"{"event":"direct","code":413,"error":"message too large"}"#
                ),
            ]
        );
    }

    #[test]
    fn online_counts_distinct_users_in_a_room_or_everywhere() {
        let mut hub = hub();
        for conn in [1, 2, 4] {
            send(&mut hub, conn, r#"{"event":"join","room":"lobby"}"#);
        }
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"online","room":"lobby"}"#),
            [to_conn(
                3,
                r#"{"event":"online","code":0,"room":"lobby","data":{"count":2,"users":["alice","carol"]}}"#
            )]
        );
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"online","id":"o"}"#),
            [to_conn(
                3,
                r#"{"event":"online","id":"o","code":0,"room":null,"data":{"count":3,"users":["alice","bob","carol"]}}"#
            )]
        );
        assert_eq!(
            send(&mut hub, 3, r#"{"event":"online","room":"empty"}"#),
            [to_conn(
                3,
                r#"{"event":"online","code":0,"room":"empty","data":{"count":0,"users":[]}}"#
            )]
        );
    }

    #[test]
    fn unknown_event_is_404_with_its_name() {
        let mut hub = hub();
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"dance","id":[1]}"#),
            [to_conn(
                1,
                r#"{"event":"dance","id":[1],"code":404,"error":"unknown event"}"#
            )]
        );
    }

    #[test]
    fn missing_or_non_string_event_is_400_named_error() {
        let mut hub = hub();
        for request in [
            r#"{"id":1}"#,
            r#"{"event":7,"id":1}"#,
            r#"{"event":null,"id":1}"#,
        ] {
            assert_eq!(
                send(&mut hub, 1, request),
                [to_conn(
                    1,
                    r#"{"event":"error","id":1,"code":400,"error":"event must be a string"}"#
                )]
            );
        }
    }

    #[test]
    fn malformed_json_flood_gets_400s_and_leaves_the_hub_unchanged() {
        let mut hub = hub();
        send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#);
        let before = hub.clone();
        let valid = [
            r#"{"event":"join","room":"other","id":"x"}"#,
            r#"{"event":"message","room":"lobby","data":{"a":[1,{"b":"\u00e9"}]}}"#,
            r#"{"event":"direct","to":"bob","data":"\ud83d\ude00"}"#,
        ];
        let mut flood: Vec<String> = valid
            .iter()
            .flat_map(|request| (0..request.len()).map(|end| request[..end].to_string()))
            .collect();
        flood.extend(
            [
                "",
                " ",
                "null",
                "[]",
                "\"join\"",
                "{\"event\":\"ping\"}}",
                "{'event':'ping'}",
                "{\"event\":\"ping\",}",
                "[\"ping\",null,null,null,null]",
                "{\"event\":\"join\",\"event\":\"ping\"}",
                "\u{0}",
            ]
            .map(String::from),
        );
        flood.push("[".repeat(10_000));
        let alphabet = b"{}[]\":,\\ nul1e.-tfabx\xc3\xa9";
        let mut rng = Rng(42);
        flood.extend((0..2_000).map(|_| {
            let bytes: Vec<u8> = (0..rng.below(40))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }));
        let mut rejected = 0;
        for text in &flood {
            let out = send(&mut hub, 1, text);
            assert_eq!(out.len(), 1, "one answer to {text:?}");
            assert_eq!(out[0].target, Target::Conn(ConnId(1)), "{text:?}");
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_err() {
                let reply: serde_json::Value = serde_json::from_str(&out[0].json).expect("json");
                assert_eq!(reply["code"], 400, "{text:?}");
                assert_eq!(reply["event"], "error", "{text:?}");
                rejected += 1;
            }
        }
        assert!(rejected > 2_000);
        assert_eq!(hub, before);
    }

    #[test]
    fn weird_user_and_room_names_are_escaped_in_every_event() {
        let mut hub = Hub::default();
        let user = "bob \"the\" \\ <b>\n\u{1}ü😀";
        let room_name = "r\"oo/m\t✓";
        hub.connect(ConnId(1), user);
        hub.connect(ConnId(2), "other");
        let encoded_room = serde_json::to_string(room_name).expect("string");
        send(
            &mut hub,
            2,
            &format!(r#"{{"event":"join","room":{encoded_room}}}"#),
        );
        let join = send(
            &mut hub,
            1,
            &format!(r#"{{"event":"join","room":{encoded_room}}}"#),
        );
        let message = send(
            &mut hub,
            1,
            &format!(r#"{{"event":"message","room":{encoded_room},"data":"\"x\""}}"#),
        );
        assert_eq!(
            join[1].json,
            r#"{"event":"presence","room":"r\"oo/m\t✓","data":{"user":"bob \"the\" \\ <b>\n\u0001ü😀","state":"join"}}"#
        );
        let presence: serde_json::Value = serde_json::from_str(&join[1].json).expect("json");
        assert_eq!(presence["room"], room_name);
        assert_eq!(presence["data"]["user"], user);
        let message: serde_json::Value = serde_json::from_str(&message[0].json).expect("json");
        assert_eq!(message["from"], user);
        assert_eq!(message["room"], room_name);
        assert_eq!(message["data"], "\"x\"");
        let online = send(&mut hub, 2, r#"{"event":"online"}"#);
        let online: serde_json::Value = serde_json::from_str(&online[0].json).expect("json");
        assert_eq!(online["data"]["users"][0], user);
    }

    #[test]
    fn escaped_room_names_in_requests_are_decoded() {
        let mut hub = hub();
        send(&mut hub, 1, r#"{"event":"join","room":"caf\u00e9 \"x\""}"#);
        assert!(hub.is_member(ConnId(1), "café \"x\""));
        assert_eq!(
            send(&mut hub, 1, r#"{"event":"quit","room":"café \"x\""}"#),
            [to_conn(
                1,
                r#"{"event":"quit","code":0,"room":"café \"x\""}"#
            )]
        );
    }

    #[test]
    fn unknown_connection_gets_403_and_changes_nothing() {
        let mut hub = hub();
        let before = hub.clone();
        for event in ["join", "message", "direct"] {
            let request = format!(r#"{{"event":"{event}","room":"a","to":"bob","data":1}}"#);
            let expected = format!(
                r#"{{"event":"{event}","code":403,"error":"connection is not registered"}}"#
            );
            assert_eq!(send(&mut hub, 99, &request), [to_conn(99, &expected)]);
        }
        assert_eq!(hub, before);
    }

    #[test]
    fn refused_frames_name_their_event_when_readable() {
        let mut out = Vec::new();
        let conn = ConnId(1);
        let request = r#"{"event":"message","id":3,"data":1}"#;
        refuse(conn, Some(request), Failure::RATE_LIMITED, &mut out);
        refuse(conn, None, Failure::BINARY_FRAME, &mut out);
        refuse(conn, Some("garbage"), Failure::RATE_LIMITED, &mut out);
        assert_eq!(
            out,
            [
                to_conn(
                    1,
                    r#"{"event":"message","id":3,"code":429,"error":"rate limited"}"#
                ),
                to_conn(
                    1,
                    r#"{"event":"error","code":400,"error":"binary frames are not supported"}"#
                ),
                to_conn(1, r#"{"event":"error","code":429,"error":"rate limited"}"#),
            ]
        );
    }

    #[test]
    fn publish_to_a_room_a_user_or_everyone_has_no_from() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        let cases = [
            (
                r#"{"room":"lobby","data":{"k":1}}"#,
                room("lobby"),
                r#"{"event":"message","room":"lobby","data":{"k":1},"ts":1700000000000}"#,
                vec![3],
            ),
            (
                r#"{"to":"alice","data":"psst"}"#,
                Target::User("alice".into()),
                r#"{"event":"direct","data":"psst","ts":1700000000000}"#,
                vec![1, 2],
            ),
            (
                r#"{"data":true}"#,
                Target::All,
                r#"{"event":"message","data":true,"ts":1700000000000}"#,
                vec![1, 2, 3, 4],
            ),
            (
                r#"{"to":"nobody","data":0}"#,
                Target::User("nobody".into()),
                r#"{"event":"direct","data":0,"ts":1700000000000}"#,
                vec![],
            ),
        ];
        for (body, target, json, delivered) in cases {
            let (delivery, position) =
                publish(&mut no_history(), Instant::now(), NOW, LIMIT, false, body)
                    .expect("valid body");
            assert_eq!(position, None);
            assert_eq!(delivery, to(target, json));
            assert_eq!(recipients(&hub, &delivery.target), delivered);
        }
    }

    #[test]
    fn publish_rejects_bad_bodies() {
        let cases = [
            ("not json", Failure::MALFORMED),
            (r#"{"room":"lobby"}"#, Failure::MISSING_DATA),
            (r#"{"room":"","data":1}"#, Failure::BAD_ROOM),
            (r#"{"to":1,"data":1}"#, Failure::BAD_TO),
            (r#"{"room":"a","to":"b","data":1}"#, Failure::ROOM_AND_TO),
            (r#"{"data":"0123456789"}"#, Failure::TOO_LARGE),
        ];
        for (body, failure) in cases {
            let published = publish(&mut no_history(), Instant::now(), NOW, 50, false, body);
            assert_eq!(published, Err(failure), "{body}");
        }
    }

    /// The test hub (alice on 1 and 2, bob on 3, carol on 4), with room history on, at a
    /// fixed clock.
    struct WithHistory {
        hub: Hub,
        history: History,
        now: Instant,
        hub_wide: bool,
    }

    impl WithHistory {
        fn new() -> Self {
            WithHistory {
                hub: hub(),
                history: History::new(100, TTL, 42),
                now: Instant::now(),
                hub_wide: false,
            }
        }

        fn send(&mut self, conn: usize, text: &str) -> (Vec<Delivery>, Vec<Ask>) {
            let ctx = Context {
                conn: ConnId(conn),
                now_ms: NOW,
                now: self.now,
                may_join: &allow_all,
                may_reach_everyone: true,
                max_message_size: LIMIT,
                control: unbounded(),
                hub_wide: self.hub_wide,
            };
            let (mut out, mut asks) = (Vec::new(), Vec::new());
            handle(
                &mut self.hub,
                &mut self.history,
                &ctx,
                text,
                &mut out,
                &mut asks,
            );
            (out, asks)
        }

        fn say(&mut self, conn: usize, text: &str) -> String {
            let message = format!(r#"{{"event":"message","room":"lobby","data":"{text}"}}"#);
            let (mut out, _) = self.send(conn, &message);
            assert_eq!(out.len(), 1, "{out:?}");
            out.remove(0).json
        }

        fn epoch(&mut self) -> String {
            self.history.position("lobby", self.now).unwrap().epoch
        }
    }

    #[test]
    fn room_messages_carry_offsets_and_the_join_reply_the_room_position() {
        let mut h = WithHistory::new();
        let (out, _) = h.send(1, r#"{"event":"join","room":"lobby"}"#);
        let epoch = h.epoch();
        assert_eq!(
            out,
            vec![to_conn(
                1,
                &format!(
                    r#"{{"event":"join","code":0,"room":"lobby","data":{{"count":1,"epoch":"{epoch}","offset":0}}}}"#
                )
            )]
        );
        assert_eq!(
            h.say(1, "one"),
            r#"{"event":"message","room":"lobby","from":"alice","data":"one","ts":1700000000000,"offset":1}"#
        );
        assert!(h.say(1, "two").ends_with(r#","offset":2}"#));
        // Messages to everyone and directs are not kept, nor numbered.
        let (out, _) = h.send(1, r#"{"event":"message","data":"all"}"#);
        assert!(!out[0].json.contains("offset"));
        let (out, _) = h.send(3, r#"{"event":"join","room":"lobby"}"#);
        assert!(
            out[0].json.ends_with(&format!(
                r#""data":{{"count":2,"epoch":"{epoch}","offset":2}}}}"#
            )),
            "{}",
            out[0].json
        );
    }

    #[test]
    fn join_since_replays_what_was_missed_right_after_the_reply() {
        let mut h = WithHistory::new();
        h.send(1, r#"{"event":"join","room":"lobby"}"#);
        let kept: Vec<String> = (1..=4).map(|n| h.say(1, &format!("m{n}"))).collect();
        let epoch = h.epoch();
        let (out, _) = h.send(
            3,
            &format!(
                r#"{{"event":"join","room":"lobby","since":{{"epoch":"{epoch}","offset":2}}}}"#
            ),
        );
        let reply = format!(
            r#"{{"event":"join","code":0,"room":"lobby","data":{{"count":2,"epoch":"{epoch}","offset":4,"recovered":true}}}}"#
        );
        assert_eq!(out[0], to_conn(3, &reply));
        assert_eq!(out[1], to_conn(3, &kept[2]));
        assert_eq!(out[2], to_conn(3, &kept[3]));
        // Then presence for the others; nothing else reaches bob.
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].target, Target::RoomExcept("lobby".into(), ConnId(3)));
    }

    #[test]
    fn join_since_another_epoch_or_a_trimmed_offset_is_not_recovered_and_replays_nothing() {
        let mut h = WithHistory::new();
        h.history = History::new(2, TTL, 42);
        h.send(1, r#"{"event":"join","room":"lobby"}"#);
        for n in 1..=4 {
            h.say(1, &format!("m{n}"));
        }
        let epoch = h.epoch();
        for since in [
            r#"{"epoch":"other","offset":3}"#.to_owned(),
            format!(r#"{{"epoch":"{epoch}","offset":1}}"#),
            format!(r#"{{"epoch":"{epoch}","offset":5}}"#),
        ] {
            let (out, _) = h.send(
                3,
                &format!(r#"{{"event":"join","room":"lobby","since":{since}}}"#),
            );
            let reply = format!(
                r#"{{"event":"join","code":0,"room":"lobby","data":{{"count":2,"epoch":"{epoch}","offset":4,"recovered":false}}}}"#
            );
            assert_eq!(out[0], to_conn(3, &reply), "{since}");
            assert!(
                out[1..].iter().all(|d| d.target != Target::Conn(ConnId(3))),
                "{since}: {out:?}"
            );
        }
    }

    #[test]
    fn a_malformed_since_is_400_and_joins_nothing() {
        let mut h = WithHistory::new();
        for since in [
            r#""3""#,
            r#"{"epoch":"e"}"#,
            r#"{"epoch":1,"offset":1}"#,
            r#"{"epoch":"e","offset":-1}"#,
        ] {
            let (out, _) = h.send(
                1,
                &format!(r#"{{"event":"join","room":"lobby","since":{since},"id":9}}"#),
            );
            assert_eq!(out.len(), 1);
            assert!(
                out[0]
                    .json
                    .starts_with(r#"{"event":"join","id":9,"code":400,"error":"since must be"#),
                "{since}: {}",
                out[0].json
            );
            assert!(!h.hub.is_member(ConnId(1), "lobby"));
        }
        // `null` is no since at all.
        let (out, _) = h.send(1, r#"{"event":"join","room":"lobby","since":null}"#);
        assert!(!out[0].json.contains("recovered"), "{}", out[0].json);
    }

    #[test]
    fn hub_wide_history_is_left_to_redis_with_room_for_its_offset() {
        let mut h = WithHistory::new();
        h.history = History::in_redis(100, TTL);
        h.hub_wide = true;
        h.send(1, r#"{"event":"join","room":"lobby"}"#);
        let (_, asks) = h.send(
            3,
            r#"{"event":"join","room":"lobby","since":{"epoch":"e-1","offset":7}}"#,
        );
        let Some(Ask::Join { since, .. }) = asks.first() else {
            panic!("{asks:?}");
        };
        let since = since.clone().unwrap();
        assert_eq!((since.epoch.as_str(), since.offset), ("e-1", 7));
        assert!(!h.say(1, "unnumbered here").contains("offset"));

        // Redis adds `,"offset":N` after the size check: a message that fills the limit
        // without it is refused.
        let ctx_limit = |h: &mut WithHistory, size: usize| {
            let text = format!(
                r#"{{"event":"message","room":"lobby","data":"{}"}}"#,
                "x".repeat(size)
            );
            h.send(1, &text).0.remove(0).json
        };
        let fits = LIMIT - OFFSET_ROOM - ctx_limit(&mut h, 0).len();
        assert!(!ctx_limit(&mut h, fits).contains("code"));
        assert!(ctx_limit(&mut h, fits + 1).contains(r#""code":413"#));
    }

    #[test]
    fn publish_to_a_room_is_numbered_and_answers_the_position() {
        let mut history = History::new(100, TTL, 42);
        let now = Instant::now();
        let body = r#"{"room":"lobby","data":1}"#;
        publish(&mut history, now, NOW, LIMIT, false, body).unwrap();
        let (delivery, position) = publish(&mut history, now, NOW, LIMIT, false, body).unwrap();
        assert!(delivery.json.ends_with(r#","offset":2}"#));
        assert_eq!(position, history.position("lobby", now));
        assert_eq!(position.unwrap().offset, 2);
        // Through Redis, Redis numbers it.
        let mut remote = History::in_redis(100, TTL);
        let (delivery, position) = publish(&mut remote, now, NOW, LIMIT, true, body).unwrap();
        assert!(!delivery.json.contains("offset"));
        assert_eq!(position, None);
    }

    #[test]
    fn join_quit_and_online_are_commands_and_nothing_else_is() {
        for event in ["join", "quit", "online"] {
            assert!(is_command(event), "{event}");
        }
        for event in ["ping", "message", "direct", "dance", "", "JOIN", "join "] {
            assert!(!is_command(event), "{event:?}");
        }
    }

    #[test]
    fn commands_past_the_budget_are_429_with_their_event_and_id_and_change_nothing() {
        let mut hub = hub();
        send(&mut hub, 3, r#"{"event":"join","room":"lobby"}"#);
        let tokens = std::cell::Cell::new(1_u32);
        let take = || {
            let left = tokens.get();
            tokens.set(left.saturating_sub(1));
            left > 0
        };
        let control = Control {
            take_command: &take,
            presence_max_members: PRESENCE_MAX,
        };
        let first = send_under(
            &mut hub,
            1,
            &allow_all,
            control,
            r#"{"event":"join","room":"lobby"}"#,
        );
        assert_eq!(first.len(), 2, "reply and presence: {first:?}");
        let before = hub.clone();
        for (request, reply) in [
            (
                r#"{"event":"join","room":"other","id":1}"#,
                r#"{"event":"join","id":1,"code":429,"error":"rate limited"}"#,
            ),
            (
                r#"{"event":"quit","room":"lobby","id":"q"}"#,
                r#"{"event":"quit","id":"q","code":429,"error":"rate limited"}"#,
            ),
            (
                r#"{"event":"online","id":null}"#,
                r#"{"event":"online","id":null,"code":429,"error":"rate limited"}"#,
            ),
        ] {
            assert_eq!(
                send_under(&mut hub, 1, &allow_all, control, request),
                [to_conn(1, reply)]
            );
        }
        assert_eq!(hub, before);
    }

    #[test]
    fn pings_and_messages_never_ask_for_a_command_token() {
        let mut hub = hub();
        send(&mut hub, 1, r#"{"event":"join","room":"lobby"}"#);
        let asked = std::cell::Cell::new(0);
        let take = || {
            asked.set(asked.get() + 1);
            false
        };
        let control = Control {
            take_command: &take,
            presence_max_members: PRESENCE_MAX,
        };
        for request in [
            r#"{"event":"ping"}"#,
            r#"{"event":"message","room":"lobby","data":1}"#,
            r#"{"event":"message","data":1}"#,
            r#"{"event":"direct","to":"bob","data":1}"#,
            r#"{"event":"dance"}"#,
            "not json",
        ] {
            let out = send_under(&mut hub, 1, &allow_all, control, request);
            assert!(
                out.iter().all(|delivery| !delivery.json.contains("429")),
                "{request}: {out:?}"
            );
        }
        assert_eq!(asked.get(), 0);
    }

    #[test]
    fn presence_counts_the_connection_joining_or_leaving_against_the_limit() {
        assert!(announced(2, 3));
        assert!(announced(3, 3));
        assert!(!announced(4, 3));
        assert!(!announced(1, 0));
    }

    #[test]
    fn rooms_above_the_presence_limit_announce_no_join_or_leave_but_still_count() {
        let mut hub = Hub::default();
        for (conn, user) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            hub.connect(ConnId(conn), user);
        }
        let control = Control {
            take_command: &unlimited,
            presence_max_members: 3,
        };
        let join = |hub: &mut Hub, conn| {
            send_under(
                hub,
                conn,
                &allow_all,
                control,
                r#"{"event":"join","room":"big"}"#,
            )
        };
        join(&mut hub, 0);
        assert_eq!(join(&mut hub, 1).len(), 2, "2 members: announced");
        assert_eq!(join(&mut hub, 2).len(), 2, "3 members: announced");
        assert_eq!(
            join(&mut hub, 3),
            [to_conn(
                3,
                r#"{"event":"join","code":0,"room":"big","data":{"count":4}}"#
            )],
            "4 members: the joiner learns the count, nobody else hears"
        );
        join(&mut hub, 4);
        let online = send_under(
            &mut hub,
            0,
            &allow_all,
            control,
            r#"{"event":"online","room":"big"}"#,
        );
        assert!(online[0].json.contains(r#""count":5"#), "{online:?}");

        let quit = r#"{"event":"quit","room":"big"}"#;
        let out = send_under(&mut hub, 4, &allow_all, control, quit);
        assert_eq!(out.len(), 1, "left a room of 5: not announced: {out:?}");
        let mut out = Vec::new();
        disconnect(&mut hub, ConnId(3), 3, &mut out);
        assert_eq!(out, [], "left a room of 4: not announced");
        let out = send_under(&mut hub, 2, &allow_all, control, quit);
        assert_eq!(
            out[1],
            to(
                room("big"),
                r#"{"event":"presence","room":"big","data":{"user":"c","state":"leave"}}"#
            ),
            "left a room of 3: announced"
        );
        let mut out = Vec::new();
        disconnect(&mut hub, ConnId(1), 3, &mut out);
        assert_eq!(out.len(), 1, "left a room of 2: announced");
        assert_eq!(recipients(&hub, &out[0].target), [0]);
    }
}
