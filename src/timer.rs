//! A hashed timing wheel for connection timers: handshake timeout, ping/idle
//! check, write-stall check.
//!
//! Core, not shell: the wheel has no clock, no thread and no I/O. The event loop
//! passes `now` into every call, asks [`TimerWheel::next_timeout`] how long
//! `poll` may sleep, and calls [`TimerWheel::expire`] after it wakes.
//!
//! Layout: time since the wheel's origin is cut into ticks, and tick `t` hashes
//! to slot `t % slots`. Each slot is an intrusive doubly linked list threaded
//! through one `Vec` arena, so arming and cancelling are O(1) and allocate
//! nothing once the arena has grown. A slot mixes timers from several
//! revolutions: each entry keeps its exact deadline, and each slot keeps a lower
//! bound of its deadlines, so a slot holding only later revolutions is passed
//! over without walking its list. An occupancy bitmap lets `expire` and
//! `next_timeout` jump between non-empty slots with `trailing_zeros`.

use std::time::{Duration, Instant};

/// Default tick length: the granularity at which deadlines are hashed to slots.
/// Timers still fire at their exact deadline; the tick only decides how many
/// timers share a slot and how far a revolution reaches.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// Default slot count: with [`DEFAULT_TICK`] one revolution spans 10.24 s, so
/// handshake and write-stall timeouts land in their first revolution.
pub const DEFAULT_SLOTS: usize = 1024;

/// `poll` (epoll) sleeps in whole milliseconds and truncates anything shorter,
/// so sleeps are rounded up to this many nanoseconds to avoid spinning on
/// zero-millisecond timeouts just before a deadline.
const POLL_GRANULARITY_NS: u64 = 1_000_000;

/// Slots per occupancy word.
const SLOTS_PER_WORD: usize = u64::BITS as usize;

/// Marks the end of a slot list or of the free list.
const NIL: u32 = u32::MAX;

/// Names one armed timer so it can be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId {
    /// Position of the timer's entry in the arena, so cancel finds it in O(1).
    index: u32,
    /// The entry's generation when the timer was armed; entries are reused
    /// after firing or cancelling, and a mismatch marks this id as stale.
    generation: u32,
}

/// Timers keyed by deadline, each carrying a payload handed back when it fires.
pub struct TimerWheel<T> {
    /// The instant all deadlines are measured from, so entries can store a
    /// `u64` of nanoseconds instead of a 16-byte `Instant`.
    origin: Instant,
    /// Length of one tick in nanoseconds; a deadline's tick picks its slot.
    tick_ns: u64,
    /// The list of timers per slot, indexed by `tick % slots.len()`.
    slots: Vec<Slot>,
    /// One bit per slot, set while the slot's list is non-empty, so finding
    /// the next armed slot costs a word scan instead of a walk over slots.
    occupied: Vec<u64>,
    /// Storage for every timer, armed or free; a `TimerId` indexes into it.
    entries: Vec<Entry<T>>,
    /// Head of the free list threaded through `Entry::next`, so arming reuses
    /// a fired or cancelled entry instead of growing the arena.
    free_head: u32,
    /// Every tick before this one has been expired; it only moves forward.
    /// Invariant: an armed timer whose deadline tick is earlier than this sits
    /// in this tick's slot (it was armed with a deadline already passed).
    current_tick: u64,
    /// Number of armed timers, so `len` is O(1) and `expire` stops early.
    armed: usize,
    /// Timers collected by one `expire` call, kept so its allocation is
    /// reused; sorted by deadline before being handed out, because a walk
    /// over several slots (or a jump past a revolution) collects them out of
    /// order.
    due: Vec<(u64, T)>,
}

/// One bucket of the wheel.
#[derive(Clone, Copy)]
struct Slot {
    /// First entry of the list, so the slot can be walked.
    head: u32,
    /// Last entry of the list, so arming appends in O(1) and timers with equal
    /// deadlines fire in arming order.
    tail: u32,
    /// No entry in the list has an earlier deadline (nanoseconds since origin;
    /// `u64::MAX` when empty). Cancelling leaves it in place, so it may be
    /// lower than the true minimum until the slot is next walked.
    earliest: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        head: NIL,
        tail: NIL,
        earliest: u64::MAX,
    };
}

/// One timer, or a free place for one.
struct Entry<T> {
    /// Bumped each time the entry is freed, so ids of earlier timers go stale.
    generation: u32,
    /// The slot whose list holds the entry, so cancel can unlink the head or
    /// tail without recomputing where a clamped past deadline was put.
    slot: u32,
    /// Previous entry in the slot list, so cancel unlinks in O(1).
    prev: u32,
    /// Next entry in the slot list while armed; next free entry while free.
    next: u32,
    /// Exact deadline in nanoseconds since origin, so a timer never fires
    /// before it and entries of later revolutions stay in place.
    deadline_ns: u64,
    /// The value handed back on fire or cancel; `None` while the entry is free.
    payload: Option<T>,
}

impl<T> TimerWheel<T> {
    /// A wheel with [`DEFAULT_TICK`] and [`DEFAULT_SLOTS`], its origin at `now`.
    pub fn new(now: Instant) -> Self {
        Self::with_resolution(now, DEFAULT_TICK, DEFAULT_SLOTS)
    }

    /// A wheel with `slots` slots of `tick` each, its origin at `now`.
    ///
    /// # Panics
    ///
    /// If `tick` is zero, or `slots` is zero or does not fit in a `u32`.
    pub fn with_resolution(now: Instant, tick: Duration, slots: usize) -> Self {
        assert!(!tick.is_zero(), "timer wheel tick must be longer than zero");
        assert!(
            slots > 0 && u32::try_from(slots).is_ok_and(|slots| slots != NIL),
            "timer wheel needs between 1 and {} slots, got {slots}",
            NIL - 1
        );
        Self {
            origin: now,
            tick_ns: u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX),
            slots: vec![Slot::EMPTY; slots],
            occupied: vec![0; slots.div_ceil(SLOTS_PER_WORD)],
            entries: Vec::new(),
            free_head: NIL,
            current_tick: 0,
            armed: 0,
            due: Vec::new(),
        }
    }

    /// Reserves room for `additional` more timers, so arming up to that many never reallocates
    /// the arena (or leaves it with doubled spare capacity).
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve_exact(additional);
    }

    /// Arms a timer that fires on the first `expire` whose `now` is at or
    /// after `deadline`; a deadline already passed fires on the next `expire`.
    ///
    /// # Panics
    ///
    /// If more than `u32::MAX - 1` timers are armed at once.
    pub fn arm(&mut self, deadline: Instant, payload: T) -> TimerId {
        let deadline_ns = self.nanos_since_origin(deadline);
        // A deadline behind the wheel goes to the current slot, which the next
        // `expire` visits whatever `now` it is given.
        let tick = (deadline_ns / self.tick_ns).max(self.current_tick);
        let slot = self.slot_of_tick(tick);
        let index = self.allocate(slot, deadline_ns, payload);
        self.push_back(slot, index);
        self.armed += 1;
        TimerId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Disarms the timer and returns its payload, or `None` if it already
    /// fired or was cancelled (even if its entry now holds another timer).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        self.unlink(id.index);
        self.release(id.index)
    }

    /// Appends the payload of every timer whose deadline is at or before `now`
    /// to `fired`, earliest deadline first (equal deadlines in arming order).
    ///
    /// Visits only the non-empty slots among the ticks since the last call,
    /// and at most one revolution of them however far `now` has jumped.
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<T>) {
        let now_ns = self.nanos_since_origin(now);
        let now_tick = now_ns / self.tick_ns;
        let ticks_to_visit = now_tick.saturating_sub(self.current_tick).saturating_add(1);
        let reach = usize::try_from(ticks_to_visit)
            .map_or(self.slots.len(), |ticks| ticks.min(self.slots.len()));
        let start = self.slot_of_tick(self.current_tick);
        let mut from = 0;
        while self.armed > 0
            && let Some(distance) = self.next_occupied(start, from)
            && distance < reach
        {
            self.expire_slot((start + distance) % self.slots.len(), now_ns);
            from = distance + 1;
        }
        self.current_tick = self.current_tick.max(now_tick);
        self.due.sort_by_key(|&(deadline_ns, _)| deadline_ns);
        fired.extend(self.due.drain(..).map(|(_, payload)| payload));
    }

    /// How long the poll loop may sleep before the next timer is due: `None`
    /// when no timer is armed, zero when one is already due.
    ///
    /// Never later than the earliest deadline except for rounding up to a
    /// whole millisecond; it may be earlier after a cancel, and the `expire`
    /// that follows tightens it again. Costs a scan of the occupancy bitmap,
    /// visiting non-empty slots only until no later slot can hold an earlier
    /// deadline.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.armed == 0 {
            return None;
        }
        let start = self.slot_of_tick(self.current_tick);
        let mut earliest_ns = u64::MAX;
        let mut from = 0;
        while let Some(distance) = self.next_occupied(start, from) {
            // Timers in this slot and all later ones are due no earlier than
            // this tick begins; the only exceptions are passed deadlines, and
            // those sit in the current slot (distance 0), visited first.
            let tick_begins_ns = self
                .current_tick
                .saturating_add(distance as u64)
                .saturating_mul(self.tick_ns);
            if tick_begins_ns >= earliest_ns {
                break;
            }
            let slot = &self.slots[(start + distance) % self.slots.len()];
            earliest_ns = earliest_ns.min(slot.earliest);
            from = distance + 1;
        }
        let wait_ns = earliest_ns.saturating_sub(self.nanos_since_origin(now));
        let rounded_ns = wait_ns
            .div_ceil(POLL_GRANULARITY_NS)
            .saturating_mul(POLL_GRANULARITY_NS);
        Some(Duration::from_nanos(rounded_ns))
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot_of_tick(&self, tick: u64) -> usize {
        // The remainder is below `slots.len()`, which is a `usize`.
        (tick % self.slots.len() as u64) as usize
    }

    /// Fires the timers of one slot that are due at `now_ns` into `due`, and
    /// tightens the slot's lower bound to the timers left.
    fn expire_slot(&mut self, slot: usize, now_ns: u64) {
        if self.slots[slot].earliest > now_ns {
            return;
        }
        let mut earliest_left = u64::MAX;
        let mut cursor = self.slots[slot].head;
        while cursor != NIL {
            let entry = &self.entries[cursor as usize];
            let (next, deadline_ns) = (entry.next, entry.deadline_ns);
            if deadline_ns <= now_ns {
                self.unlink(cursor);
                if let Some(payload) = self.release(cursor) {
                    self.due.push((deadline_ns, payload));
                }
            } else {
                earliest_left = earliest_left.min(deadline_ns);
            }
            cursor = next;
        }
        self.slots[slot].earliest = earliest_left;
    }

    /// Ring distance from `start` of the first non-empty slot at least `from`
    /// slots on, looking no further than one revolution.
    fn next_occupied(&self, start: usize, from: usize) -> Option<usize> {
        let slots = self.slots.len();
        if from >= slots {
            return None;
        }
        let position = start + from;
        if position < slots
            && let Some(found) = self.first_occupied_at_or_after(position)
        {
            return Some(found - start);
        }
        let wrapped_from = position.saturating_sub(slots);
        self.first_occupied_at_or_after(wrapped_from)
            .filter(|&found| found < start)
            .map(|found| found + slots - start)
    }

    /// Lowest non-empty slot index at or after `position`, without wrapping.
    fn first_occupied_at_or_after(&self, position: usize) -> Option<usize> {
        let mut word_index = position / SLOTS_PER_WORD;
        let mut word = self.occupied.get(word_index)? & (u64::MAX << (position % SLOTS_PER_WORD));
        while word == 0 {
            word_index += 1;
            word = *self.occupied.get(word_index)?;
        }
        Some(word_index * SLOTS_PER_WORD + word.trailing_zeros() as usize)
    }

    /// Takes a free entry (or grows the arena) and fills it with a timer.
    fn allocate(&mut self, slot: usize, deadline_ns: u64, payload: T) -> u32 {
        // `with_resolution` checked that every slot index fits in a `u32`.
        let slot = slot as u32;
        if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.slot = slot;
            entry.deadline_ns = deadline_ns;
            entry.payload = Some(payload);
            return index;
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&index| index != NIL)
            .expect("more than u32::MAX - 1 timers armed at once");
        self.entries.push(Entry {
            generation: 0,
            slot,
            prev: NIL,
            next: NIL,
            deadline_ns,
            payload: Some(payload),
        });
        index
    }

    /// Returns an unlinked entry to the free list, staling its ids.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.next = self.free_head;
        self.free_head = index;
        self.armed -= 1;
        entry.payload.take()
    }

    fn push_back(&mut self, slot: usize, index: u32) {
        let tail = self.slots[slot].tail;
        let entry = &mut self.entries[index as usize];
        entry.prev = tail;
        entry.next = NIL;
        let deadline_ns = entry.deadline_ns;
        if tail == NIL {
            self.slots[slot].head = index;
            self.occupied[slot / SLOTS_PER_WORD] |= 1 << (slot % SLOTS_PER_WORD);
        } else {
            self.entries[tail as usize].next = index;
        }
        let slot = &mut self.slots[slot];
        slot.tail = index;
        slot.earliest = slot.earliest.min(deadline_ns);
    }

    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (slot, prev, next) = (entry.slot as usize, entry.prev, entry.next);
        if prev == NIL {
            self.slots[slot].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.slots[slot].tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if self.slots[slot].head == NIL {
            self.slots[slot].earliest = u64::MAX;
            self.occupied[slot / SLOTS_PER_WORD] &= !(1 << (slot % SLOTS_PER_WORD));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn expired<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        let mut fired = Vec::new();
        wheel.expire(now, &mut fired);
        fired
    }

    /// Eight 10 ms slots: one revolution is 80 ms, easy to wrap in a test.
    fn small_wheel(origin: Instant) -> TimerWheel<&'static str> {
        TimerWheel::with_resolution(origin, 10 * MS, 8)
    }

    #[test]
    fn timers_fire_in_deadline_order_whatever_the_arming_order() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for (deadline_ms, name) in [(300, "c"), (10, "a"), (5_000, "e"), (25, "b"), (900, "d")] {
            wheel.arm(t0 + deadline_ms * MS, name);
        }
        assert_eq!(
            expired(&mut wheel, t0 + 10_000 * MS),
            ["a", "b", "c", "d", "e"]
        );
        assert!(wheel.is_empty());
    }

    #[test]
    fn equal_deadlines_fire_in_arming_order() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for name in ["first", "second", "third"] {
            wheel.arm(t0 + 42 * MS, name);
        }
        assert_eq!(
            expired(&mut wheel, t0 + 42 * MS),
            ["first", "second", "third"]
        );
    }

    #[test]
    fn timer_fires_exactly_at_its_deadline_never_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let deadline = t0 + 15 * MS + Duration::from_micros(300);
        wheel.arm(deadline, "handshake");
        assert!(expired(&mut wheel, t0 + 15 * MS).is_empty());
        assert!(expired(&mut wheel, deadline - Duration::from_nanos(1)).is_empty());
        assert_eq!(expired(&mut wheel, deadline), ["handshake"]);
        assert!(expired(&mut wheel, deadline + 1_000 * MS).is_empty());
    }

    #[test]
    fn timer_due_within_the_current_tick_fires_on_a_later_call_in_that_tick() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        wheel.arm(t0 + 13 * MS, "early");
        wheel.arm(t0 + 17 * MS, "late");
        assert_eq!(expired(&mut wheel, t0 + 14 * MS), ["early"]);
        assert_eq!(expired(&mut wheel, t0 + 18 * MS), ["late"]);
    }

    #[test]
    fn cancelled_timer_returns_its_payload_and_never_fires() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let idle = wheel.arm(t0 + 50 * MS, "idle");
        wheel.arm(t0 + 60 * MS, "stall");
        assert_eq!(wheel.cancel(idle), Some("idle"));
        assert_eq!(wheel.cancel(idle), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(expired(&mut wheel, t0 + 100 * MS), ["stall"]);
    }

    #[test]
    fn cancelling_a_stale_id_after_its_entry_was_reused_is_a_no_op() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let old = wheel.arm(t0 + 10 * MS, "old");
        assert_eq!(expired(&mut wheel, t0 + 10 * MS), ["old"]);
        let new = wheel.arm(t0 + 20 * MS, "new");
        assert_eq!(new.index, old.index, "the freed entry is reused");
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(expired(&mut wheel, t0 + 20 * MS), ["new"]);
        assert_eq!(wheel.cancel(new), None);
    }

    #[test]
    fn timer_can_be_rearmed_from_its_fired_payload() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.arm(t0 + 30 * MS, 7_usize);
        let mut now = t0;
        let mut pings = 0;
        for _ in 0..5 {
            now += 30 * MS;
            for token in expired(&mut wheel, now) {
                pings += 1;
                wheel.arm(now + 30 * MS, token);
            }
        }
        assert_eq!(pings, 5);
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn many_timers_in_one_slot_fire_by_deadline_and_cancel_from_the_middle() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_resolution(t0, 10 * MS, 8);
        // Slot 3 in every revolution: 30 ms, 110 ms, 190 ms, ...
        let ids: Vec<_> = (0..1_000_u32)
            .map(|n| wheel.arm(t0 + (30 + 80 * (n % 10)) * MS, n))
            .collect();
        for id in ids.iter().skip(1).step_by(2) {
            assert!(wheel.cancel(*id).is_some());
        }
        assert_eq!(wheel.len(), 500);
        let first_revolution = expired(&mut wheel, t0 + 30 * MS);
        assert_eq!(first_revolution, (0..1_000).step_by(10).collect::<Vec<_>>());
        let rest = expired(&mut wheel, t0 + 800 * MS);
        assert_eq!(rest.len(), 400);
        assert!(rest.iter().all(|n| n % 2 == 0));
        assert!(rest.windows(2).all(|pair| pair[0] % 10 <= pair[1] % 10));
        assert!(wheel.is_empty());
    }

    #[test]
    fn timers_past_one_revolution_wait_for_their_own_revolution() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        wheel.arm(t0 + 50 * MS, "first lap");
        wheel.arm(t0 + 130 * MS, "second lap");
        wheel.arm(t0 + 290 * MS, "fourth lap");
        let mut fired_at = Vec::new();
        for ms in (0..=400).step_by(10) {
            for name in expired(&mut wheel, t0 + ms * MS) {
                fired_at.push((name, ms));
            }
        }
        assert_eq!(
            fired_at,
            [("first lap", 50), ("second lap", 130), ("fourth lap", 290)]
        );
    }

    #[test]
    fn timer_hours_away_fires_after_hours_and_not_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let three_hours = Duration::from_secs(3 * 3600);
        wheel.arm(t0 + three_hours, "idle");
        let mut now = t0;
        while now + Duration::from_secs(7) < t0 + three_hours {
            now += Duration::from_secs(7);
            assert!(expired(&mut wheel, now).is_empty());
        }
        assert_eq!(wheel.next_timeout(now), Some(t0 + three_hours - now));
        assert_eq!(expired(&mut wheel, t0 + three_hours), ["idle"]);
    }

    #[test]
    fn jump_far_ahead_fires_everything_due_in_order_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        wheel.arm(t0 + Duration::from_secs(86_400), "tomorrow");
        wheel.arm(t0 + 650 * MS, "d");
        wheel.arm(t0 + 5 * MS, "a");
        wheel.arm(t0 + 75 * MS, "b");
        wheel.arm(t0 + 95 * MS, "c");
        let an_hour = t0 + Duration::from_secs(3600);
        assert_eq!(expired(&mut wheel, an_hour), ["a", "b", "c", "d"]);
        assert_eq!(wheel.len(), 1);
        wheel.arm(an_hour + 20 * MS, "soon");
        assert_eq!(expired(&mut wheel, an_hour + 20 * MS), ["soon"]);
        assert!(expired(&mut wheel, t0 + Duration::from_secs(86_399)).is_empty());
        assert_eq!(
            expired(&mut wheel, t0 + Duration::from_secs(86_400)),
            ["tomorrow"]
        );
    }

    #[test]
    fn deadline_in_the_past_fires_on_the_next_expire() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        let now = t0 + 1_000 * MS;
        assert!(expired(&mut wheel, now).is_empty());
        wheel.arm(now + 5 * MS, "future");
        wheel.arm(t0 + 500 * MS, "past");
        wheel.arm(t0, "origin");
        assert_eq!(wheel.next_timeout(now), Some(Duration::ZERO));
        assert_eq!(expired(&mut wheel, now), ["origin", "past"]);
        assert_eq!(expired(&mut wheel, now + 5 * MS), ["future"]);
    }

    #[test]
    fn next_timeout_is_none_without_armed_timers() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        assert_eq!(wheel.next_timeout(t0), None);
        let id = wheel.arm(t0 + 10 * MS, ());
        wheel.cancel(id);
        assert_eq!(wheel.next_timeout(t0), None);
    }

    #[test]
    fn next_timeout_rounds_a_sub_millisecond_wait_up_not_down_to_zero() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.arm(t0 + Duration::from_micros(2_300), "deadline");
        assert_eq!(wheel.next_timeout(t0 + 2 * MS), Some(MS));
        assert_eq!(wheel.next_timeout(t0), Some(3 * MS));
    }

    #[test]
    fn next_timeout_looks_past_slots_holding_only_later_revolutions() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        wheel.arm(t0 + (10 + 3 * 80) * MS, "slot 1, fourth lap");
        wheel.arm(t0 + 55 * MS, "slot 5, first lap");
        assert_eq!(wheel.next_timeout(t0), Some(55 * MS));
    }

    #[test]
    fn next_timeout_after_a_cancel_costs_at_most_one_early_wakeup() {
        let t0 = Instant::now();
        let mut wheel = small_wheel(t0);
        let soon = wheel.arm(t0 + 20 * MS, "soon");
        wheel.arm(t0 + 25 * MS, "same slot");
        wheel.arm(t0 + 60 * MS, "later");
        wheel.cancel(soon);
        // The slot still remembers the cancelled 20 ms deadline as its bound.
        assert_eq!(wheel.next_timeout(t0), Some(20 * MS));
        assert!(expired(&mut wheel, t0 + 20 * MS).is_empty());
        assert_eq!(wheel.next_timeout(t0 + 20 * MS), Some(5 * MS));
    }

    #[test]
    fn next_timeout_is_never_later_than_the_earliest_deadline() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_resolution(t0, 10 * MS, 64);
        let mut armed = Vec::new();
        let mut rng = Lcg(7);
        let mut now = t0;
        for _ in 0..2_000 {
            match rng.below(4) {
                0 | 1 => {
                    let deadline = now + rng.below(20_000) * MS;
                    armed.push((deadline, wheel.arm(deadline, ())));
                }
                2 if !armed.is_empty() => {
                    let (_, id) = armed.swap_remove(rng.below(armed.len() as u32) as usize);
                    wheel.cancel(id);
                }
                _ => {
                    now += rng.below(300) * MS;
                    expired(&mut wheel, now);
                    armed.retain(|&(deadline, _)| deadline > now);
                }
            }
            let earliest = armed.iter().map(|&(deadline, _)| deadline).min();
            match (wheel.next_timeout(now), earliest) {
                (None, None) => {}
                (Some(timeout), Some(earliest)) => assert!(now + timeout <= earliest),
                other => panic!("next_timeout disagrees with the armed set: {other:?}"),
            }
        }
    }

    #[test]
    fn wheel_agrees_with_a_sorted_reference_under_random_operations() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_resolution(t0, 10 * MS, 16);
        let mut reference: Vec<(Instant, u64, TimerId)> = Vec::new();
        let mut rng = Lcg(42);
        let mut now = t0;
        for serial in 0..5_000 {
            match rng.below(5) {
                0 | 1 => {
                    // Some deadlines already passed, some several revolutions out.
                    let deadline = (now + rng.below(2_000) * MS)
                        .checked_sub(300 * MS)
                        .map_or(t0, |deadline| deadline.max(t0));
                    reference.push((deadline, serial, wheel.arm(deadline, serial)));
                }
                2 if !reference.is_empty() => {
                    let (_, serial, id) =
                        reference.remove(rng.below(reference.len() as u32) as usize);
                    assert_eq!(wheel.cancel(id), Some(serial));
                }
                _ => {
                    // Mostly small steps, now and then a jump of several revolutions.
                    let max_step_ms = if rng.below(50) == 0 { 5_000 } else { 40 };
                    now += rng.below(max_step_ms) * MS;
                    let mut due: Vec<_> = reference
                        .iter()
                        .filter(|entry| entry.0 <= now)
                        .copied()
                        .collect();
                    due.sort_by_key(|&(deadline, serial, _)| (deadline, serial));
                    reference.retain(|entry| entry.0 > now);
                    let expected: Vec<_> = due.iter().map(|entry| entry.1).collect();
                    assert_eq!(expired(&mut wheel, now), expected);
                    for (_, _, id) in due {
                        assert_eq!(wheel.cancel(id), None);
                    }
                }
            }
            assert_eq!(wheel.len(), reference.len());
        }
    }

    /// A tiny deterministic generator, so the randomised tests need no crate
    /// and fail the same way every run.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u32) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as u32 % bound
        }
    }
}
