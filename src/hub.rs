//! Who is online, which rooms exist and who is in them: the hub's state as plain data.
//!
//! No sockets, no clock, no protocol. The event loop calls in with the slab key of a connection
//! and gets back what changed (first join of a user, last leave), so `events` can decide on
//! presence and the loop can fan out. Every list a broadcast walks is a plain slice, so a fan-out
//! allocates nothing per recipient; every removal is a `swap_remove` guided by a stored slot
//! index, so no operation scans a big room.

use std::collections::HashMap;
use std::rc::Rc;

/// A connection as the event loop knows it: its slab key.
///
/// The loop calls [`Hub::disconnect`] before the slot is reused, so a reused key starts clean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// What a [`Hub::join`] changed, so the caller can answer and announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// True when no other connection of this user was in the room before: only then do the other
    /// members hear of the user (a second tab joining is not news).
    pub first_for_user: bool,
    /// Distinct users in the room after the join: the `count` the joiner is told.
    pub users: usize,
}

/// What a [`Hub::quit`] changed, so the caller can announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuitOutcome {
    /// True when no other connection of this user is left in the room: only then has the user
    /// left in the eyes of the other members.
    pub last_for_user: bool,
}

/// What a [`Hub::disconnect`] changed, so the caller can announce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    /// Who went away; after the disconnect the hub no longer maps the connection to its user.
    pub user: Rc<str>,
    /// Rooms in which this was the user's last connection: the members still there must hear
    /// that the user left. A room that became empty is listed too (with nobody to tell).
    pub last_in: Vec<Rc<str>>,
    /// Every room the connection was in, each with whether it is now empty: what the hub-wide
    /// counts (`redis`) subtract, and the rooms this instance may stop listening to.
    pub rooms: Vec<(Rc<str>, bool)>,
    /// Whether this was the user's last connection: the user is now offline here.
    pub last_connection: bool,
}

/// Rooms, users and their connections, with every index needed to answer and update in O(1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hub {
    /// Per-connection state indexed by the slab key the loop hands in with every call: slab keys
    /// are dense, so a vector costs no hashing and no spare buckets per connection.
    connections: Vec<Option<Place>>,
    /// Every connection once, so "send to everyone" walks a slice instead of a map.
    all: Vec<ConnId>,
    /// Each online user's connections (tabs), so a direct message reaches all of them; a user
    /// with no connection left is removed, which makes the key set the online list.
    users: HashMap<Rc<str>, Tabs>,
    /// Each non-empty room; a room exists exactly as long as it has a member.
    rooms: HashMap<Rc<str>, Room>,
}

/// Who a message is for: resolved against the hub by the loop at fan-out time, so a room
/// fan-out never copies its member list. Every fan-out (raw, echo, events, presence, the publish
/// API) names its recipients this way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One connection: the sender of a request being answered, or of a message echoed back.
    Conn(ConnId),
    /// Every member of a room.
    Room(String),
    /// Every member of a room but one: a presence join goes to the others, not the joiner.
    RoomExcept(String, ConnId),
    /// Every connection of one user.
    User(String),
    /// Every connected client.
    All,
}

impl Target {
    /// The connections this target names in `hub` right now, without allocating.
    pub fn recipients<'h>(&self, hub: &'h Hub) -> impl Iterator<Item = ConnId> + use<'h> {
        let (single, many, except): (Option<ConnId>, &'h [ConnId], Option<ConnId>) = match self {
            Target::Conn(conn) => (Some(*conn), &[], None),
            Target::Room(room) => (None, hub.room_members(room), None),
            Target::RoomExcept(room, conn) => (None, hub.room_members(room), Some(*conn)),
            Target::User(user) => (None, hub.user_connections(user), None),
            Target::All => (None, hub.connections(), None),
        };
        single.into_iter().chain(
            many.iter()
                .copied()
                .filter(move |conn| Some(*conn) != except),
        )
    }
}

/// One connection's place in the hub's indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    /// The identity this socket speaks for; shared with the indexes so a tab copies no name.
    user: Rc<str>,
    /// This connection's index in its user's connection list, so a disconnect removes it with
    /// `swap_remove` instead of a search.
    user_slot: usize,
    /// This connection's index in [`Hub::all`], for the same reason.
    all_slot: usize,
    /// The rooms this connection is in, each with this connection's index in the room's member
    /// list, so leaving needs no scan of the room. A list, not a map: a connection is in a few
    /// rooms, and an empty list costs no allocation on the many connections in none.
    rooms: Vec<(Rc<str>, usize)>,
}

impl Place {
    /// This connection's index in `room`'s member list, if it is a member.
    fn slot_in(&self, room: &str) -> Option<usize> {
        self.rooms
            .iter()
            .find(|(name, _)| &**name == room)
            .map(|(_, slot)| *slot)
    }

    /// The stored member index for `room`, to update after a `swap_remove` moved this member.
    fn slot_in_mut(&mut self, room: &str) -> Option<&mut usize> {
        self.rooms
            .iter_mut()
            .find(|(name, _)| &**name == room)
            .map(|(_, slot)| slot)
    }
}

/// One user's connections. Most users have one, held inline so it costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tabs {
    One(ConnId),
    Many(Vec<ConnId>),
}

impl Tabs {
    fn as_slice(&self) -> &[ConnId] {
        match self {
            Tabs::One(conn) => std::slice::from_ref(conn),
            Tabs::Many(conns) => conns,
        }
    }

    /// Appends `conn`, returning its index.
    fn push(&mut self, conn: ConnId) -> usize {
        match self {
            Tabs::One(first) => {
                *self = Tabs::Many(vec![*first, conn]);
                1
            }
            Tabs::Many(conns) => {
                conns.push(conn);
                conns.len() - 1
            }
        }
    }

    /// Removes the entry at `slot` like [`remove_slot`]; returns the entry that moved and
    /// whether the list is now empty.
    fn remove(&mut self, slot: usize) -> (Option<ConnId>, bool) {
        match self {
            Tabs::One(_) => (None, true),
            Tabs::Many(conns) => {
                let moved = remove_slot(conns, slot);
                if let [only] = conns.as_slice() {
                    *self = Tabs::One(*only);
                }
                (moved, false)
            }
        }
    }
}

/// One room's members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Room {
    /// Every connection in the room, as a slice the loop walks to append one frame to each.
    members: Vec<ConnId>,
    /// How many connections each user has in the room, so first join and last leave of a user
    /// are known without walking the members, and the key count is the distinct-user count.
    users: HashMap<Rc<str>, usize>,
}

impl Hub {
    /// An empty hub with room for `connections` connections reserved up front, so reaching the
    /// connection limit never reallocates (or holds doubled spare capacity in) the per-connection
    /// indexes.
    pub fn with_capacity(connections: usize) -> Self {
        Hub {
            connections: Vec::with_capacity(connections),
            all: Vec::with_capacity(connections),
            users: HashMap::with_capacity(connections),
            rooms: HashMap::new(),
        }
    }

    fn member(&self, conn: ConnId) -> Option<&Place> {
        self.connections.get(conn.0).and_then(Option::as_ref)
    }

    fn member_mut(&mut self, conn: ConnId) -> Option<&mut Place> {
        self.connections.get_mut(conn.0).and_then(Option::as_mut)
    }

    /// Registers `conn` as a connection of `user` (a user may hold several: tabs share one
    /// identity). Returns false, leaving the hub unchanged, when `conn` is already connected.
    pub fn connect(&mut self, conn: ConnId, user: &str) -> bool {
        if self.member(conn).is_some() {
            return false;
        }
        let name = match self.users.get_key_value(user) {
            Some((name, _)) => Rc::clone(name),
            None => Rc::from(user),
        };
        let user_slot = match self.users.get_mut(&name) {
            Some(tabs) => tabs.push(conn),
            None => {
                self.users.insert(Rc::clone(&name), Tabs::One(conn));
                0
            }
        };
        let user = name;
        let all_slot = self.all.len();
        self.all.push(conn);
        if self.connections.len() <= conn.0 {
            self.connections.resize_with(conn.0 + 1, || None);
        }
        self.connections[conn.0] = Some(Place {
            user,
            user_slot,
            all_slot,
            rooms: Vec::new(),
        });
        true
    }

    /// Forgets `conn` everywhere, in O(rooms of `conn`). Returns `None` when it was not
    /// connected.
    pub fn disconnect(&mut self, conn: ConnId) -> Option<Departure> {
        let gone = self.connections.get_mut(conn.0).and_then(Option::take)?;
        while let Some(None) = self.connections.last() {
            self.connections.pop();
        }
        if let Some(moved) = remove_slot(&mut self.all, gone.all_slot)
            && let Some(moved) = self.member_mut(moved)
        {
            moved.all_slot = gone.all_slot;
        }
        let mut last_connection = false;
        if let Some(tabs) = self.users.get_mut(&gone.user) {
            let (moved, empty) = tabs.remove(gone.user_slot);
            last_connection = empty;
            if empty {
                self.users.remove(&gone.user);
            } else if let Some(moved) = moved
                && let Some(moved) = self.member_mut(moved)
            {
                moved.user_slot = gone.user_slot;
            }
        }
        let mut last_in = Vec::new();
        let mut rooms = Vec::with_capacity(gone.rooms.len());
        for (room, slot) in gone.rooms {
            if self.leave_room(&gone.user, &room, slot) {
                last_in.push(Rc::clone(&room));
            }
            let emptied = !self.rooms.contains_key(&room);
            rooms.push((room, emptied));
        }
        Some(Departure {
            user: gone.user,
            last_in,
            rooms,
            last_connection,
        })
    }

    /// Puts `conn` in `room`, creating the room if needed; joining again changes nothing.
    /// Returns `None` when `conn` is not connected.
    pub fn join(&mut self, conn: ConnId, room: &str) -> Option<JoinOutcome> {
        let member = self.connections.get_mut(conn.0).and_then(Option::as_mut)?;
        if member.slot_in(room).is_some() {
            return Some(JoinOutcome {
                first_for_user: false,
                users: self.room_user_count(room),
            });
        }
        let name = match self.rooms.get_key_value(room) {
            Some((name, _)) => Rc::clone(name),
            None => Rc::from(room),
        };
        let joined = self.rooms.entry(Rc::clone(&name)).or_default();
        member.rooms.push((name, joined.members.len()));
        joined.members.push(conn);
        let tabs = joined.users.entry(Rc::clone(&member.user)).or_insert(0);
        *tabs += 1;
        let first_for_user = *tabs == 1;
        Some(JoinOutcome {
            first_for_user,
            users: joined.users.len(),
        })
    }

    /// Takes `conn` out of `room`, dropping the room when it empties. Returns `None` when `conn`
    /// was not a member (or not connected).
    pub fn quit(&mut self, conn: ConnId, room: &str) -> Option<QuitOutcome> {
        let member = self.member_mut(conn)?;
        let index = member.rooms.iter().position(|(name, _)| &**name == room)?;
        let (_, slot) = member.rooms.swap_remove(index);
        let user = Rc::clone(&member.user);
        Some(QuitOutcome {
            last_for_user: self.leave_room(&user, room, slot),
        })
    }

    /// Whether `conn` is in `room`.
    pub fn is_member(&self, conn: ConnId, room: &str) -> bool {
        self.member(conn)
            .is_some_and(|member| member.slot_in(room).is_some())
    }

    /// How many rooms `conn` is in.
    pub fn rooms_of(&self, conn: ConnId) -> usize {
        self.member(conn).map_or(0, |member| member.rooms.len())
    }

    /// The user `conn` speaks for, if it is connected.
    pub fn user_of(&self, conn: ConnId) -> Option<&str> {
        self.member(conn).map(|member| &*member.user)
    }

    /// Every connection in `room` (empty when the room does not exist).
    pub fn room_members(&self, room: &str) -> &[ConnId] {
        self.rooms.get(room).map_or(&[], |room| &room.members)
    }

    /// Every connection of `user` (empty when the user is offline).
    pub fn user_connections(&self, user: &str) -> &[ConnId] {
        self.users.get(user).map_or(&[], Tabs::as_slice)
    }

    /// Every connection, once.
    pub fn connections(&self) -> &[ConnId] {
        &self.all
    }

    /// The distinct users in `room`, in no particular order.
    pub fn room_users<'h>(&'h self, room: &str) -> impl Iterator<Item = &'h str> + use<'h> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|room| room.users.keys().map(|user| &**user))
    }

    /// How many distinct users are in `room`.
    pub fn room_user_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |room| room.users.len())
    }

    /// The distinct online users, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|user| &**user)
    }

    /// How many distinct users are online.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Every room with its members and distinct users, in no particular order: what this
    /// instance holds, registered hub-wide (`redis`) after Redis comes back.
    pub fn rooms(&self) -> impl Iterator<Item = (&str, &[ConnId], impl Iterator<Item = &str>)> {
        self.rooms.iter().map(|(name, room)| {
            (
                &**name,
                room.members.as_slice(),
                room.users.keys().map(|user| &**user),
            )
        })
    }

    /// How many connections are registered.
    pub fn connection_count(&self) -> usize {
        self.all.len()
    }

    /// How many rooms have at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Removes the member at `slot` of `room` (already forgotten by the leaving connection) and
    /// drops the room when it empties. Returns whether `user` has no connection left there.
    fn leave_room(&mut self, user: &Rc<str>, room_name: &str, slot: usize) -> bool {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return false;
        };
        if let Some(moved) = remove_slot(&mut room.members, slot)
            && let Some(moved_slot) = self
                .connections
                .get_mut(moved.0)
                .and_then(Option::as_mut)
                .and_then(|member| member.slot_in_mut(room_name))
        {
            *moved_slot = slot;
        }
        let last_for_user = match room.users.get_mut(user) {
            Some(tabs) if *tabs > 1 => {
                *tabs -= 1;
                false
            }
            _ => {
                room.users.remove(user);
                true
            }
        };
        if room.members.is_empty() {
            self.rooms.remove(room_name);
        }
        last_for_user
    }

    /// Panics unless every index agrees with every other one.
    #[cfg(test)]
    fn check_invariants(&self) {
        let connected =
            |conn: &ConnId| self.member(*conn).expect("indexed connection is connected");
        assert_eq!(self.all.len(), self.connections.iter().flatten().count());
        for (slot, conn) in self.all.iter().enumerate() {
            assert_eq!(connected(conn).all_slot, slot, "{conn:?} all_slot");
        }
        let mut memberships = 0;
        for (index, member) in self.connections.iter().enumerate() {
            let (conn, Some(member)) = (ConnId(index), member) else {
                continue;
            };
            assert_eq!(self.users[&member.user].as_slice()[member.user_slot], conn);
            let mut names: Vec<&Rc<str>> = member.rooms.iter().map(|(name, _)| name).collect();
            names.sort();
            names.dedup();
            assert_eq!(
                names.len(),
                member.rooms.len(),
                "{conn:?} listed in a room twice"
            );
            for (room, slot) in &member.rooms {
                assert_eq!(self.rooms[room].members[*slot], conn, "{conn:?} in {room}");
                memberships += 1;
            }
        }
        let mut tabs = 0;
        for (user, conns) in &self.users {
            assert!(!conns.as_slice().is_empty(), "user {user} left behind");
            assert!(
                !matches!(conns, Tabs::Many(list) if list.len() < 2),
                "{user}: one tab not inline"
            );
            for (slot, conn) in conns.as_slice().iter().enumerate() {
                assert_eq!(connected(conn).user, *user);
                assert_eq!(connected(conn).user_slot, slot);
                tabs += 1;
            }
        }
        assert_eq!(tabs, self.all.len());
        let mut members = 0;
        for (name, room) in &self.rooms {
            assert!(!room.members.is_empty(), "room {name} left behind");
            let mut counted: HashMap<Rc<str>, usize> = HashMap::new();
            for (slot, conn) in room.members.iter().enumerate() {
                assert_eq!(connected(conn).slot_in(name), Some(slot));
                *counted.entry(Rc::clone(&connected(conn).user)).or_default() += 1;
                members += 1;
            }
            assert_eq!(counted, room.users, "user counts of {name}");
        }
        assert_eq!(members, memberships);
    }
}

/// Removes `list[slot]` in O(1) by moving the last entry into its place. Returns the entry that
/// moved, whose stored slot the caller must update.
fn remove_slot(list: &mut Vec<ConnId>, slot: usize) -> Option<ConnId> {
    if slot >= list.len() {
        return None;
    }
    list.swap_remove(slot);
    list.get(slot).copied()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn sorted<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut names: Vec<_> = names.collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn two_tabs_share_one_identity() {
        let mut hub = Hub::default();
        assert!(hub.connect(ConnId(1), "alice"));
        assert!(hub.connect(ConnId(2), "alice"));
        assert_eq!(hub.user_of(ConnId(2)), Some("alice"));
        assert_eq!(hub.user_connections("alice"), &[ConnId(1), ConnId(2)]);
        assert_eq!((hub.user_count(), hub.connection_count()), (1, 2));
        hub.check_invariants();
    }

    #[test]
    fn connecting_an_id_twice_is_refused_and_changes_nothing() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        let before = hub.clone();
        assert!(!hub.connect(ConnId(1), "bob"));
        assert_eq!(hub, before);
    }

    #[test]
    fn first_join_of_a_user_is_news_second_tab_is_not() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.connect(ConnId(2), "alice");
        hub.connect(ConnId(3), "bob");
        let first = hub.join(ConnId(1), "lobby");
        assert_eq!(
            first,
            Some(JoinOutcome {
                first_for_user: true,
                users: 1
            })
        );
        let second_tab = hub.join(ConnId(2), "lobby");
        assert_eq!(
            second_tab,
            Some(JoinOutcome {
                first_for_user: false,
                users: 1
            })
        );
        let bob = hub.join(ConnId(3), "lobby");
        assert_eq!(
            bob,
            Some(JoinOutcome {
                first_for_user: true,
                users: 2
            })
        );
        assert_eq!(sorted(hub.room_users("lobby")), ["alice", "bob"]);
        assert_eq!(hub.room_members("lobby").len(), 3);
        hub.check_invariants();
    }

    #[test]
    fn joining_twice_is_idempotent() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.join(ConnId(1), "lobby");
        let again = hub.join(ConnId(1), "lobby");
        assert_eq!(
            again,
            Some(JoinOutcome {
                first_for_user: false,
                users: 1
            })
        );
        assert_eq!(hub.room_members("lobby"), &[ConnId(1)]);
        hub.check_invariants();
    }

    #[test]
    fn unknown_connection_cannot_join_quit_or_disconnect() {
        let mut hub = Hub::default();
        assert_eq!(hub.join(ConnId(9), "lobby"), None);
        assert_eq!(hub.quit(ConnId(9), "lobby"), None);
        assert_eq!(hub.disconnect(ConnId(9)), None);
        assert_eq!(hub, Hub::default());
    }

    #[test]
    fn only_the_last_tab_leaving_a_room_is_news() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.connect(ConnId(2), "alice");
        hub.join(ConnId(1), "lobby");
        hub.join(ConnId(2), "lobby");
        assert_eq!(
            hub.quit(ConnId(1), "lobby"),
            Some(QuitOutcome {
                last_for_user: false
            })
        );
        assert_eq!(
            hub.quit(ConnId(2), "lobby"),
            Some(QuitOutcome {
                last_for_user: true
            })
        );
        assert_eq!(hub.room_count(), 0);
        hub.check_invariants();
    }

    #[test]
    fn quitting_a_room_one_is_not_in_is_none() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.connect(ConnId(2), "bob");
        hub.join(ConnId(2), "lobby");
        assert_eq!(hub.quit(ConnId(1), "lobby"), None);
        assert_eq!(hub.quit(ConnId(1), "nowhere"), None);
        assert_eq!(hub.room_members("lobby"), &[ConnId(2)]);
        hub.check_invariants();
    }

    #[test]
    fn disconnect_reports_rooms_where_it_was_the_users_last_connection() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.connect(ConnId(2), "alice");
        hub.connect(ConnId(3), "bob");
        for room in ["a", "b", "c"] {
            hub.join(ConnId(1), room);
            hub.join(ConnId(3), room);
        }
        hub.join(ConnId(2), "b");
        let departure = hub.disconnect(ConnId(1)).expect("connected");
        assert_eq!(&*departure.user, "alice");
        assert_eq!(sorted(departure.last_in.iter().map(|r| &**r)), ["a", "c"]);
        assert_eq!(hub.room_members("a"), &[ConnId(3)]);
        assert_eq!(sorted(hub.room_users("b")), ["alice", "bob"]);
        hub.check_invariants();
    }

    #[test]
    fn last_connection_leaving_takes_user_and_empty_rooms_with_it() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.join(ConnId(1), "lobby");
        hub.disconnect(ConnId(1));
        assert_eq!(hub, Hub::default());
        assert_eq!((hub.user_count(), hub.room_count()), (0, 0));
    }

    #[test]
    fn reused_slab_key_starts_clean() {
        let mut hub = Hub::default();
        hub.connect(ConnId(1), "alice");
        hub.join(ConnId(1), "lobby");
        hub.disconnect(ConnId(1));
        hub.connect(ConnId(1), "bob");
        assert!(!hub.is_member(ConnId(1), "lobby"));
        assert_eq!(hub.user_of(ConnId(1)), Some("bob"));
        assert!(hub.user_connections("alice").is_empty());
        hub.check_invariants();
    }

    #[test]
    fn leaving_a_big_room_keeps_every_other_member_findable() {
        let mut hub = Hub::default();
        for n in 0..100 {
            hub.connect(ConnId(n), &format!("user{n}"));
            hub.join(ConnId(n), "big");
        }
        for n in (0..100).step_by(3) {
            hub.quit(ConnId(n), "big");
        }
        hub.check_invariants();
        assert_eq!(hub.room_members("big").len(), 66);
        assert!(hub.is_member(ConnId(1), "big"));
        assert!(!hub.is_member(ConnId(3), "big"));
    }

    /// A tiny xorshift generator, so random tests need no crate and repeat exactly.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// The obvious, slow model the hub must agree with: conn → (user, rooms).
    type Model = BTreeMap<ConnId, (String, BTreeSet<String>)>;

    fn tabs_in(model: &Model, user: &str, room: &str) -> usize {
        model
            .values()
            .filter(|(u, rooms)| u == user && rooms.contains(room))
            .count()
    }

    fn users_in(model: &Model, room: &str) -> usize {
        let users: BTreeSet<_> = model
            .values()
            .filter(|(_, rooms)| rooms.contains(room))
            .map(|(user, _)| user)
            .collect();
        users.len()
    }

    #[test]
    fn random_operations_keep_every_index_consistent_with_a_simple_model() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut hub = Hub::default();
        let mut model = Model::new();
        for _ in 0..20_000 {
            let conn = ConnId(rng.below(24));
            let user = format!("u{}", rng.below(6));
            let room = format!("r{}", rng.below(5));
            match rng.below(10) {
                0..=1 => {
                    let fresh = !model.contains_key(&conn);
                    assert_eq!(hub.connect(conn, &user), fresh);
                    if fresh {
                        model.insert(conn, (user, BTreeSet::new()));
                    }
                }
                2 => {
                    let departure = hub.disconnect(conn);
                    match model.remove(&conn) {
                        None => assert_eq!(departure, None),
                        Some((user, rooms)) => {
                            let departure = departure.expect("model says connected");
                            assert_eq!(*departure.user, *user);
                            let expected: BTreeSet<&str> = rooms
                                .iter()
                                .filter(|room| tabs_in(&model, &user, room) == 0)
                                .map(String::as_str)
                                .collect();
                            let got: BTreeSet<&str> =
                                departure.last_in.iter().map(|r| &**r).collect();
                            assert_eq!(got, expected);
                        }
                    }
                }
                3..=6 => {
                    let outcome = hub.join(conn, &room);
                    match model.get_mut(&conn) {
                        None => assert_eq!(outcome, None),
                        Some((user, rooms)) => {
                            let user = user.clone();
                            let inserted = rooms.insert(room.clone());
                            let first = inserted && tabs_in(&model, &user, &room) == 1;
                            let expected = JoinOutcome {
                                first_for_user: first,
                                users: users_in(&model, &room),
                            };
                            assert_eq!(outcome, Some(expected));
                        }
                    }
                }
                _ => {
                    let outcome = hub.quit(conn, &room);
                    let member = model.get_mut(&conn);
                    match member.filter(|(_, rooms)| rooms.contains(&room)) {
                        Some((user, rooms)) => {
                            rooms.remove(&room);
                            let user = user.clone();
                            let last_for_user = tabs_in(&model, &user, &room) == 0;
                            assert_eq!(outcome, Some(QuitOutcome { last_for_user }));
                        }
                        None => assert_eq!(outcome, None),
                    }
                }
            }
            hub.check_invariants();
            assert_eq!(hub.connection_count(), model.len());
            for (conn, (user, rooms)) in &model {
                assert_eq!(hub.user_of(*conn), Some(user.as_str()));
                for room in rooms {
                    assert!(hub.is_member(*conn, room));
                }
            }
        }
        for conn in model.keys() {
            hub.disconnect(*conn);
        }
        assert_eq!(hub, Hub::default());
    }
}
