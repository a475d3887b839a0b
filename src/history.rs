//! Room history on one instance (SPEC §11): each room's last `--history-size` messages for
//! `--history-ttl`, numbered 1, 2, 3… under an epoch, so that a client that reconnects asks for
//! what came after the last offset it saw and gets exactly that, or learns that it cannot.
//!
//! A core: plain data, time passed in, no sockets. The `events` core numbers and keeps a room
//! message as it is serialised ([`History::append`]) and answers a `join` from here
//! ([`History::position`], [`History::after`]); the loop calls [`History::handle_timeout`] when
//! [`History::poll_timeout`] says so, to drop what expired and forget rooms left empty. With
//! `--redis` none of this is used: history lives in Redis (`src/redis/history.lua`).
//!
//! A message is kept once, as the exact JSON its recipients got (offset included), whatever
//! the number of recipients; a replay sends those bytes again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::mem::size_of;
use std::time::{Duration, Instant};

/// How often expired messages are dropped and empty rooms forgotten. A replay never depends on
/// it: [`History::after`] checks the TTL itself, so this only bounds how long expired bytes
/// stay counted.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A room's position: the epoch its offsets count in, and the offset of its last message (0
/// before the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Every room's history; see the module documentation.
#[derive(Debug)]
pub struct History {
    /// `--history-size`: messages kept per room; 0 turns history off.
    size: usize,
    /// `--history-ttl`: how long a message is kept, and a room forgotten once empty.
    ttl: Duration,
    /// Whether this instance keeps the messages: not with `--redis`, where Redis does, and
    /// while Redis is unreachable there is no history at all.
    here: bool,
    /// Most bytes one replay may hold: a longer gap is not recovered (the client learns it
    /// missed something) rather than queued past what the connection may buffer.
    max_replay: usize,
    /// `--history-max-memory`: past it, the oldest messages of all rooms go first, whatever
    /// their room, so that many rooms of large messages cannot hold the process's memory.
    max_bytes: usize,
    rooms: HashMap<Box<str>, Room>,
    /// What `rooms` holds on the heap, approximately, for `wshub_history_bytes`.
    bytes: usize,
    /// Random per process: every epoch starts with it, so a restart (which loses the history)
    /// starts every room over under an epoch no client has seen.
    epoch_prefix: String,
    /// Epochs handed out so far: the end of the next one, so a room forgotten and used again
    /// gets a new epoch too.
    epochs: u64,
    /// When the next sweep is due; `None` while no room is kept.
    next_sweep: Option<Instant>,
}

/// One room's history.
#[derive(Debug)]
struct Room {
    epoch: String,
    /// The last offset handed out: the offset of `kept`'s last message.
    last: u64,
    /// The kept messages, oldest first, ending with offset `last`.
    kept: VecDeque<Kept>,
    /// The bytes of the kept events, so that counting a room's memory never walks them.
    kept_bytes: usize,
    /// Since when the room has been seen without members (`None` while it has some): once
    /// that is `--history-ttl` ago and nothing is kept, the room is forgotten.
    empty_since: Option<Instant>,
}

/// One kept message.
#[derive(Debug)]
struct Kept {
    /// When it was sent: it is dropped `--history-ttl` later.
    at: Instant,
    /// The event exactly as its recipients got it.
    json: Box<str>,
}

impl Room {
    /// The offset of the oldest kept message (`last + 1` when none is kept).
    fn first(&self) -> u64 {
        self.last + 1 - self.kept.len() as u64
    }

    /// What the room holds on the heap, besides its name.
    fn heap_bytes(&self) -> usize {
        self.epoch.len() + self.kept.capacity() * size_of::<Kept>() + self.kept_bytes
    }
}

impl History {
    /// History keeping `size` messages per room (none: off) for `ttl`; `seed` makes this
    /// process's epochs its own.
    pub fn new(size: usize, ttl: Duration, seed: u64) -> History {
        History {
            size,
            ttl,
            here: true,
            max_replay: usize::MAX,
            max_bytes: usize::MAX,
            rooms: HashMap::new(),
            bytes: 0,
            epoch_prefix: format!("{:08x}", seed as u32),
            epochs: 0,
            next_sweep: None,
        }
    }

    /// Bounds what one replay may hold (see [`History::after`]).
    pub fn with_max_replay(self, bytes: usize) -> History {
        History {
            max_replay: bytes,
            ..self
        }
    }

    /// Bounds what all rooms together may hold (see [`History::bytes`]).
    pub fn with_max_memory(self, bytes: usize) -> History {
        History {
            max_bytes: bytes,
            ..self
        }
    }

    /// History kept in Redis (`--redis`): on or off like [`History::new`]'s, but nothing is
    /// numbered or kept here, and a join here has no position and recovers nothing.
    pub fn in_redis(size: usize, ttl: Duration) -> History {
        History {
            here: false,
            ..History::new(size, ttl, 0)
        }
    }

    /// Whether rooms keep messages (`--history-size` above 0), here or in Redis.
    pub fn is_on(&self) -> bool {
        self.size > 0
    }

    /// What the kept messages and their rooms hold, approximately: the bytes of each event,
    /// each message's slot, and each room's name, epoch and record.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Numbers the next message of `room`: `event` gets its offset and returns the event's
    /// JSON (with that offset), which is kept and returned with it. An error from `event`
    /// (the message is refused) uses no offset and keeps nothing. With history off, `event`
    /// gets no offset and nothing is kept.
    pub fn append<E>(
        &mut self,
        room: &str,
        now: Instant,
        event: impl FnOnce(Option<u64>) -> Result<String, E>,
    ) -> Result<(String, Option<u64>), E> {
        if !self.is_on() || !self.here {
            return event(None).map(|json| (json, None));
        }
        let (size, ttl) = (self.size, self.ttl);
        let state = self.room(room, now);
        let offset = state.last + 1;
        let json = event(Some(offset))?;
        let before = state.heap_bytes();
        state.last = offset;
        state.kept_bytes += json.len();
        state.kept.push_back(Kept {
            at: now,
            json: json.as_str().into(),
        });
        trim(state, size, ttl, now);
        let after = state.heap_bytes();
        self.bytes = self.bytes - before + after;
        if self.bytes > self.max_bytes {
            self.evict();
        }
        Ok((json, Some(offset)))
    }

    /// `room`'s position, which a join reply carries; starts the room (offset 0, a new epoch)
    /// when it has none. `None` with history off.
    pub fn position(&mut self, room: &str, now: Instant) -> Option<Position> {
        if !self.is_on() || !self.here {
            return None;
        }
        let state = self.room(room, now);
        Some(Position {
            epoch: state.epoch.clone(),
            offset: state.last,
        })
    }

    /// Every message of `room` after `offset`, oldest first, when the client's `epoch` is the
    /// room's, all of them are still kept (none trimmed by size or expired) and together they
    /// fit the replay bound; `None` when not, and a client then knows it may have missed
    /// something.
    pub fn after(
        &self,
        room: &str,
        epoch: &str,
        offset: u64,
        now: Instant,
    ) -> Option<impl Iterator<Item = &str>> {
        let state = self.rooms.get(room)?;
        if state.epoch != epoch || offset > state.last || offset + 1 < state.first() {
            return None;
        }
        let skip = usize::try_from(offset + 1 - state.first()).ok()?;
        let missed = state.kept.range(skip..);
        // Kept in order of time: when the first missed one is still fresh, all of them are.
        if missed
            .clone()
            .next()
            .is_some_and(|kept| now.saturating_duration_since(kept.at) >= self.ttl)
        {
            return None;
        }
        let bytes: usize = missed.clone().map(|kept| kept.json.len()).sum();
        if bytes > self.max_replay {
            return None;
        }
        Some(missed.map(|kept| &*kept.json))
    }

    /// When [`History::handle_timeout`] should run next; `None` while no room is kept.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Drops expired messages and forgets every room that has been empty (`occupied` says
    /// which rooms have members) for `--history-ttl` with nothing left.
    pub fn handle_timeout(&mut self, now: Instant, occupied: impl Fn(&str) -> bool) {
        let (size, ttl) = (self.size, self.ttl);
        let mut freed = 0;
        self.rooms.retain(|name, state| {
            let before = state.heap_bytes();
            trim(state, size, ttl, now);
            let after = state.heap_bytes();
            freed += before - after;
            if occupied(name) {
                state.empty_since = None;
                return true;
            }
            let since = *state.empty_since.get_or_insert(now);
            let forget = state.kept.is_empty() && now.saturating_duration_since(since) >= ttl;
            if forget {
                freed += after + room_overhead(name);
            }
            !forget
        });
        self.bytes -= freed;
        self.next_sweep = (!self.rooms.is_empty()).then_some(now + SWEEP_EVERY);
    }

    /// Drops the oldest kept messages of all rooms, oldest first, until everything holds at
    /// most 7/8 of `--history-max-memory` (so the next appends do not each come back here).
    /// Rooms keep their position: a client then learns from `recovered: false` what it lost.
    fn evict(&mut self) {
        let target = self.max_bytes / 8 * 7;
        let mut oldest: BinaryHeap<Reverse<(Instant, Box<str>)>> = self
            .rooms
            .iter()
            .filter_map(|(name, room)| room.kept.front().map(|k| Reverse((k.at, name.clone()))))
            .collect();
        while self.bytes > target {
            let Some(Reverse((_, name))) = oldest.pop() else {
                break;
            };
            let Some(room) = self.rooms.get_mut(&name) else {
                continue;
            };
            if let Some(dropped) = room.kept.pop_front() {
                room.kept_bytes -= dropped.json.len();
                self.bytes -= dropped.json.len();
            }
            if let Some(next) = room.kept.front() {
                oldest.push(Reverse((next.at, name)));
            }
        }
    }

    /// `room`'s history, started (offset 0, a new epoch) when it has none.
    fn room(&mut self, room: &str, now: Instant) -> &mut Room {
        if !self.rooms.contains_key(room) {
            self.epochs += 1;
            let state = Room {
                epoch: format!("{}-{}", self.epoch_prefix, self.epochs),
                last: 0,
                kept: VecDeque::new(),
                kept_bytes: 0,
                empty_since: None,
            };
            self.bytes += state.heap_bytes() + room_overhead(room);
            self.rooms.insert(room.into(), state);
            self.next_sweep.get_or_insert(now + SWEEP_EVERY);
        }
        self.rooms
            .get_mut(room)
            .expect("the room was inserted just above")
    }
}

/// Drops what `room` keeps beyond `size` messages or older than `ttl`, and the slack of a
/// queue that shrank to a quarter of its capacity.
fn trim(room: &mut Room, size: usize, ttl: Duration, now: Instant) {
    while room.kept.len() > size
        || room
            .kept
            .front()
            .is_some_and(|kept| now.saturating_duration_since(kept.at) >= ttl)
    {
        if let Some(dropped) = room.kept.pop_front() {
            room.kept_bytes -= dropped.json.len();
        }
    }
    if room.kept.capacity() > 4 * room.kept.len().max(4) {
        room.kept.shrink_to_fit();
    }
}

/// A room's record and name in the map, besides what [`Room::heap_bytes`] counts.
fn room_overhead(name: &str) -> usize {
    name.len() + size_of::<(Box<str>, Room)>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn message(room: &str, offset: Option<u64>) -> Result<String, ()> {
        Ok(match offset {
            Some(offset) => format!(r#"{{"room":"{room}","offset":{offset}}}"#),
            None => format!(r#"{{"room":"{room}"}}"#),
        })
    }

    fn send(history: &mut History, room: &str, now: Instant) -> u64 {
        let (_, offset) = history
            .append(room, now, |offset| message(room, offset))
            .unwrap();
        offset.unwrap()
    }

    fn offsets<'a>(replay: Option<impl Iterator<Item = &'a str>>) -> Option<Vec<u64>> {
        replay.map(|messages| {
            messages
                .map(|json| {
                    let value: serde_json::Value = serde_json::from_str(json).unwrap();
                    value["offset"].as_u64().unwrap()
                })
                .collect()
        })
    }

    #[test]
    fn offsets_count_per_room_from_one_and_the_event_carries_its_own() {
        let mut history = History::new(100, TTL, 7);
        let now = Instant::now();
        let (json, offset) = history.append("a", now, |o| message("a", o)).unwrap();
        assert_eq!(
            (json.as_str(), offset),
            (r#"{"room":"a","offset":1}"#, Some(1))
        );
        assert_eq!(send(&mut history, "a", now), 2);
        assert_eq!(send(&mut history, "b", now), 1);
        assert_eq!(history.position("a", now).unwrap().offset, 2);
        assert_eq!(history.position("c", now).unwrap().offset, 0);
        let epochs: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|room| history.position(room, now).unwrap().epoch)
            .collect();
        assert!(epochs[0] != epochs[1] && epochs[1] != epochs[2]);
    }

    #[test]
    fn a_refused_message_uses_no_offset_and_keeps_nothing() {
        let mut history = History::new(100, TTL, 7);
        let now = Instant::now();
        send(&mut history, "a", now);
        let bytes = history.bytes();
        assert_eq!(
            history.append("a", now, |_| Err::<String, _>(413)),
            Err(413)
        );
        assert_eq!(history.bytes(), bytes);
        assert_eq!(send(&mut history, "a", now), 2);
    }

    #[test]
    fn after_replays_exactly_what_followed_the_offset_in_order() {
        let mut history = History::new(100, TTL, 7);
        let now = Instant::now();
        for _ in 0..5 {
            send(&mut history, "a", now);
        }
        let epoch = history.position("a", now).unwrap().epoch;
        assert_eq!(
            offsets(history.after("a", &epoch, 2, now)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(
            offsets(history.after("a", &epoch, 0, now)),
            Some(vec![1, 2, 3, 4, 5])
        );
        assert_eq!(offsets(history.after("a", &epoch, 5, now)), Some(vec![]));
        // The seam: what is sent after the position was read follows the replay, once.
        assert_eq!(send(&mut history, "a", now), 6);
        assert_eq!(offsets(history.after("a", &epoch, 5, now)), Some(vec![6]));
    }

    #[test]
    fn another_epoch_an_offset_from_the_future_or_an_unknown_room_cannot_recover() {
        let mut history = History::new(100, TTL, 7);
        let now = Instant::now();
        send(&mut history, "a", now);
        let epoch = history.position("a", now).unwrap().epoch;
        assert!(history.after("a", "other", 0, now).is_none());
        assert!(history.after("a", &epoch, 2, now).is_none());
        assert!(history.after("b", &epoch, 0, now).is_none());
    }

    #[test]
    fn a_process_restart_starts_every_room_under_a_new_epoch() {
        let now = Instant::now();
        let mut before = History::new(100, TTL, 1);
        let mut after = History::new(100, TTL, 2);
        assert_ne!(
            before.position("a", now).unwrap().epoch,
            after.position("a", now).unwrap().epoch
        );
    }

    #[test]
    fn trimmed_by_size_the_oldest_go_and_only_what_is_complete_recovers() {
        let mut history = History::new(3, TTL, 7);
        let now = Instant::now();
        for _ in 0..5 {
            send(&mut history, "a", now);
        }
        let epoch = history.position("a", now).unwrap().epoch;
        // 3, 4, 5 are kept: after 2 is complete, after 1 misses 2.
        assert_eq!(
            offsets(history.after("a", &epoch, 2, now)),
            Some(vec![3, 4, 5])
        );
        assert!(history.after("a", &epoch, 1, now).is_none());
        assert!(history.after("a", &epoch, 0, now).is_none());
    }

    #[test]
    fn a_replay_past_its_bound_is_not_recovered() {
        let mut history = History::new(100, TTL, 7).with_max_replay(60);
        let now = Instant::now();
        for _ in 0..3 {
            send(&mut history, "a", now);
        }
        // Each message is 24 bytes: two fit in 60, three do not.
        let epoch = history.position("a", now).unwrap().epoch;
        assert_eq!(
            offsets(history.after("a", &epoch, 1, now)),
            Some(vec![2, 3])
        );
        assert!(history.after("a", &epoch, 0, now).is_none());
    }

    #[test]
    fn past_the_memory_bound_the_oldest_messages_of_all_rooms_go_first() {
        let now = Instant::now();
        let mut history = History::new(100, TTL, 7);
        let json = |_| Ok::<_, ()>("x".repeat(1_000));
        for i in 0..10 {
            history
                .append("old", now + Duration::from_millis(i), json)
                .unwrap();
        }
        let ten = history.bytes();
        let mut history = history.with_max_memory(ten + 2_500);
        for i in 10..15 {
            history
                .append("new", now + Duration::from_millis(i), json)
                .unwrap();
        }
        assert!(history.bytes() <= ten + 2_500, "{}", history.bytes());
        let old = history.position("old", now).unwrap().epoch;
        let new = history.position("new", now).unwrap().epoch;
        // All of "new" survives; "old" lost its oldest, keeps its newest and its position.
        assert!(history.after("new", &new, 0, now).is_some());
        assert!(history.after("old", &old, 0, now).is_none());
        assert_eq!(
            history.after("old", &old, 9, now).map(Iterator::count),
            Some(1)
        );
        assert_eq!(history.position("old", now).unwrap().offset, 10);
    }

    #[test]
    fn expired_messages_cannot_be_recovered_even_before_the_sweep() {
        let mut history = History::new(100, TTL, 7);
        let start = Instant::now();
        send(&mut history, "a", start);
        send(&mut history, "a", start + TTL / 2);
        let epoch = history.position("a", start).unwrap().epoch;
        let later = start + TTL;
        assert!(history.after("a", &epoch, 0, later).is_none());
        assert_eq!(offsets(history.after("a", &epoch, 1, later)), Some(vec![2]));
        assert_eq!(offsets(history.after("a", &epoch, 2, later)), Some(vec![]));
    }

    #[test]
    fn the_sweep_drops_expired_messages_and_forgets_rooms_empty_past_the_ttl() {
        let mut history = History::new(100, TTL, 7);
        let start = Instant::now();
        send(&mut history, "a", start);
        send(&mut history, "busy", start);
        let epoch = history.position("a", start).unwrap().epoch;
        let busy = history.position("busy", start).unwrap();
        assert!(history.bytes() > 0);
        assert_eq!(history.poll_timeout(), Some(start + SWEEP_EVERY));

        // Nobody is in "a" from the first sweep on; "busy" keeps its members.
        let occupied = |room: &str| room == "busy";
        history.handle_timeout(start + SWEEP_EVERY, occupied);
        history.handle_timeout(start + TTL, occupied);
        assert!(history.after("busy", &busy.epoch, 0, start + TTL).is_none());
        // "a" expired its message but has not been empty for the TTL yet: it keeps its place.
        assert_eq!(history.position("a", start + TTL).unwrap().offset, 1);

        history.handle_timeout(start + SWEEP_EVERY + TTL, occupied);
        let a = history.position("a", start + SWEEP_EVERY + TTL).unwrap();
        assert_ne!(a.epoch, epoch);
        assert_eq!(a.offset, 0);
        // The occupied room keeps its place though its messages expired.
        assert_eq!(history.position("busy", start + TTL).unwrap(), busy);
    }

    #[test]
    fn bytes_follow_what_is_kept_and_return_to_zero_when_all_is_forgotten() {
        let mut history = History::new(2, TTL, 7);
        let start = Instant::now();
        for _ in 0..12 {
            send(&mut history, "a", start);
        }
        let two = history.bytes();
        assert!(two >= 2 * r#"{"room":"a","offset":10}"#.len());
        for _ in 0..10 {
            send(&mut history, "a", start);
        }
        assert_eq!(history.bytes(), two, "trimmed by size, the count stays put");
        history.handle_timeout(start + TTL, |_| false);
        history.handle_timeout(start + 2 * TTL, |_| false);
        assert_eq!(history.bytes(), 0);
        assert_eq!(history.poll_timeout(), None);
    }

    #[test]
    fn kept_in_redis_nothing_is_numbered_or_kept_here() {
        let mut history = History::in_redis(100, TTL);
        let now = Instant::now();
        assert!(history.is_on());
        let (json, offset) = history.append("a", now, |o| message("a", o)).unwrap();
        assert_eq!((json.as_str(), offset), (r#"{"room":"a"}"#, None));
        assert_eq!(history.position("a", now), None);
        assert!(history.after("a", "", 0, now).is_none());
        assert_eq!(history.bytes(), 0);
    }

    #[test]
    fn history_off_numbers_nothing_keeps_nothing_and_has_no_position() {
        let mut history = History::new(0, TTL, 7);
        let now = Instant::now();
        let (json, offset) = history.append("a", now, |o| message("a", o)).unwrap();
        assert_eq!((json.as_str(), offset), (r#"{"room":"a"}"#, None));
        assert_eq!(history.position("a", now), None);
        assert!(history.after("a", "", 0, now).is_none());
        assert_eq!(history.bytes(), 0);
    }
}
