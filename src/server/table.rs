//! The connection table: every connection in a slab, the per-turn lists about them, and the
//! output memory they hold.
//!
//! Owns the connections and four lists of their ids: `queued` (output to write in the next
//! pass), `unread` (input to read next turn), `lagging` (to close once the fan-out is over) and
//! `doomed` (to remove at the end of the turn). Appending to a connection's output and putting
//! it on the write list happen here together, so a connection is on the write list exactly when
//! its write state is `Queued` or `Resumed` (or it was doomed since, and the pass skips it).
//! Owns the output limits too (SPEC §6): every byte appended, written, cut or dropped is counted
//! here, so `--max-buffered` (one queue) is enforced at the append that crosses it, whether or
//! not the socket currently takes writes, and `--max-output-memory` (all queues) right after the
//! append or fan-out that crosses it.
//! Must not touch the hub or a socket's bytes, and must not free a slot whose id is still on a
//! list.

use std::time::Instant;

use log::{error, warn};
use mio::{Registry, Token};
use slab::Slab;

use crate::conn::Connection;
use crate::frame::{self, OpCode};
use crate::hub::ConnId;

/// Connections, and the lists a turn builds about them.
pub(super) struct ConnTable {
    /// Every connection, at the slab key its `ConnId` and its mio `Token` carry.
    conns: Slab<Connection>,
    /// The lists a turn builds about the connections.
    lists: Lists,
    /// The frame being fanned out: encoded once, appended to every recipient.
    frame: Vec<u8>,
    /// The output limits and what is held against them.
    output: OutputLimits,
}

/// Output memory: the limits and the exact number of bytes queued for all connections.
struct OutputLimits {
    /// `--max-buffered`: an open connection with more pending lags (and is cut).
    max_buffered: usize,
    /// `--max-output-memory`: past it, the largest queues are cut until the total is back
    /// under [`OutputLimits::after_cut`].
    max_total: usize,
    /// Bytes pending in every connection's output together.
    total: usize,
    /// The largest `total` seen at the end of a turn since the memory was last given back (see
    /// [`ConnTable::take_drained_peak`]); sampled per turn, not per append, which costs nothing
    /// and is precise enough to tell a burst.
    peak: usize,
    /// Trims still due to the last burst worth one: its last queues drain (or are cut) a few
    /// turns after most of them, so the memory they free is given back by a trim or two more.
    follow_ups: u8,
}

impl OutputLimits {
    /// Where cutting the largest queues stops: an eighth below the limit, so that a hub living
    /// at its limit does not scan every queue again on the very next append.
    fn after_cut(&self) -> usize {
        self.max_total - self.max_total / 8
    }
}

/// What became of a frame offered to one connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// The connection takes no messages (gone, or not open).
    Refused,
    /// Appended and kept; the caller counts the copy.
    Kept,
    /// Appended, which took the queue past `--max-buffered`: counted, and the queue cut.
    Cut,
}

/// The per-turn lists, apart from the slab so a connection can be borrowed from the slab while
/// its id is listed.
#[derive(Default)]
struct Lists {
    /// Connections in the `Queued` or `Resumed` write state, in the order they got there: the
    /// next write pass writes each once.
    queued: Worklist,
    /// Connections with input left unread: their read budget ran out, or an HTTP connection
    /// paused for its answers may be read again. Read next turn.
    unread: Worklist,
    /// Connections that became `Lagging` (their output already cut); closed once the fan-out is
    /// over.
    lagging: Vec<ConnId>,
    /// Connections doomed this turn; removed at its end.
    doomed: Vec<ConnId>,
}

/// A list of connection ids built during one turn (or pass) and consumed in the next, whose two
/// allocations are reused turn after turn.
#[derive(Default)]
struct Worklist {
    /// Ids added since the list was last taken.
    next: Vec<ConnId>,
    /// The buffer given back after the last take, ready to become `next`.
    spare: Vec<ConnId>,
}

impl Worklist {
    /// Everything listed so far; new ids go to a fresh list.
    fn take(&mut self) -> Vec<ConnId> {
        std::mem::replace(&mut self.next, std::mem::take(&mut self.spare))
    }

    /// Gives a taken list's allocation back.
    fn give_back(&mut self, mut taken: Vec<ConnId>) {
        taken.clear();
        self.spare = taken;
    }
}

impl ConnTable {
    /// A table with room for `capacity` connections reserved up front, holding at most
    /// `max_buffered` bytes of output per connection and `max_total` for all of them.
    pub(super) fn with_capacity(
        capacity: usize,
        max_buffered: usize,
        max_total: usize,
    ) -> ConnTable {
        ConnTable {
            conns: Slab::with_capacity(capacity),
            lists: Lists::default(),
            frame: Vec::new(),
            output: OutputLimits {
                max_buffered,
                max_total,
                total: 0,
                peak: 0,
                follow_ups: 0,
            },
        }
    }

    /// Bytes pending in every connection's output together.
    pub(super) fn output_bytes(&self) -> usize {
        self.output.total
    }

    /// After a burst has drained (the queues hold under an eighth of their peak, and the peak
    /// was worth it), returns that peak: the moment to give freed memory back to the system.
    /// The peak then drops to an eighth, and the two next times the queues drain to an eighth of
    /// that are returned too, so what the burst's last queues free is given back as well.
    pub(super) fn take_drained_peak(&mut self, worth: usize) -> Option<usize> {
        const FOLLOW_UPS: u8 = 2;
        let output = &mut self.output;
        output.peak = output.peak.max(output.total);
        let worth_it = output.peak >= worth || output.follow_ups > 0;
        if !worth_it || output.total > output.peak / 8 {
            return None;
        }
        output.follow_ups = if output.peak >= worth {
            FOLLOW_UPS
        } else {
            output.follow_ups - 1
        };
        let peak = output.peak;
        output.peak = output.total.max(peak / 8);
        Some(peak)
    }

    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether the next turn has work before it should wait: output to write, input to read,
    /// or lagging connections to close.
    pub(super) fn has_work(&self) -> bool {
        !self.lists.queued.next.is_empty()
            || !self.lists.unread.next.is_empty()
            || !self.lists.lagging.is_empty()
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(id.0)
    }

    /// Every connection's id, for shutdown.
    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.conns.iter().map(|(key, _)| ConnId(key)).collect()
    }

    /// Adds an accepted connection and registers its socket under its id; `None` (the
    /// connection dropped, logged) when registration fails.
    pub(super) fn insert(&mut self, mut conn: Connection, registry: &Registry) -> Option<ConnId> {
        let entry = self.conns.vacant_entry();
        let id = ConnId(entry.key());
        if let Err(e) = conn.register(registry, Token(id.0)) {
            error!("{}: could not register the connection: {e}", conn.peer);
            return None;
        }
        entry.insert(conn);
        Some(id)
    }

    /// Appends a message's frame to an open connection; false when it takes no messages.
    pub(super) fn send(&mut self, id: ConnId, frame: &[u8], now: Instant) -> bool {
        let appended = self.append(id, frame, now);
        if appended == Appended::Kept {
            self.output.total += frame.len();
            self.check_total();
        }
        appended != Appended::Refused
    }

    /// Frames `payload` once and appends the frame to every recipient that takes messages;
    /// returns how many took it.
    pub(super) fn fan_out(
        &mut self,
        recipients: impl Iterator<Item = ConnId>,
        opcode: OpCode,
        payload: &[u8],
        now: Instant,
    ) -> u64 {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame::encode(opcode, payload, &mut frame);
        let (mut kept, mut cut) = (0, 0);
        for id in recipients {
            match self.append(id, &frame, now) {
                Appended::Kept => kept += 1,
                Appended::Cut => cut += 1,
                Appended::Refused => {}
            }
        }
        // The copies kept are counted once per fan-out rather than per recipient (the hot
        // loop's only extra cost); the total is checked right after, so it never passes the
        // limit by more than this one message's copies.
        self.output.total += frame.len() * kept;
        self.frame = frame;
        self.check_total();
        (kept + cut) as u64
    }

    /// Appends a frame to an open connection. Past `--max-buffered` the connection lags (the
    /// copy is counted first, since the cut takes off everything the queue held); otherwise an
    /// idle one goes on the write list, and the copy is left for the caller to count.
    #[inline]
    fn append(&mut self, id: ConnId, frame: &[u8], now: Instant) -> Appended {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Appended::Refused;
        };
        if !conn.is_open() {
            return Appended::Refused;
        }
        conn.push(frame, now);
        if conn.pending() > self.output.max_buffered {
            self.output.total += frame.len();
            self.lag(id);
            return Appended::Cut;
        }
        if conn.queue() {
            self.lists.queued.next.push(id);
        }
        Appended::Kept
    }

    /// Appends bytes in any phase (an HTTP response, a Close frame) and queues them.
    pub(super) fn push(&mut self, id: ConnId, bytes: &[u8], now: Instant) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            conn.push(bytes, now);
            self.output_added(id, bytes.len());
        }
    }

    /// Counts and queues output appended to the connection directly (tungstenite's pongs and
    /// close reply, a Close frame): `before` is what it had pending before the append.
    pub(super) fn note_output(&mut self, id: ConnId, before: usize) {
        if let Some(conn) = self.conns.get(id.0) {
            let added = conn.pending().saturating_sub(before);
            self.output_added(id, added);
        }
    }

    /// Counts `written` bytes that left a connection's output for its socket.
    pub(super) fn wrote(&mut self, written: usize) {
        self.output.total = self.output.total.saturating_sub(written);
    }

    /// Acts on `added` bytes just appended to `id`, whoever appended them (a fan-out, the
    /// heartbeat, tungstenite's pongs, a response): an open connection now over
    /// `--max-buffered` lags, whether or not its socket takes writes, so no queue ever holds
    /// more than the cap plus one message; an idle one goes on the write list. Past
    /// `--max-output-memory` in total, the largest queues are cut.
    fn output_added(&mut self, id: ConnId, added: usize) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        self.output.total += added;
        if conn.pending() > self.output.max_buffered && conn.is_open() {
            self.lag(id);
        } else if conn.queue() {
            self.lists.queued.next.push(id);
        }
        self.check_total();
    }

    /// Past `--max-output-memory` in total, cuts the largest queues.
    fn check_total(&mut self) {
        if self.output.total > self.output.max_total {
            self.cut_largest();
        }
    }

    /// An open connection falls behind: its queue is cut after the frame being written (so a
    /// Close frame can follow) and it is listed to be closed once the fan-out is over. Nothing
    /// for a connection that is not open.
    #[cold]
    #[inline(never)]
    fn lag(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if !conn.lag() {
            return;
        }
        let pending = conn.pending();
        conn.cut_output();
        let cut = pending - conn.pending();
        self.output.total = self.output.total.saturating_sub(cut);
        warn!(
            "{}: slow consumer with {pending} bytes pending; disconnecting",
            conn.client
        );
        self.lists.lagging.push(id);
    }

    /// Cuts the largest queues of open connections, largest first, until all queues together
    /// are back under [`OutputLimits::after_cut`]. Scans every connection, which only happens
    /// when the total passes `--max-output-memory`.
    #[cold]
    #[inline(never)]
    fn cut_largest(&mut self) {
        let mut largest: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.is_open() && conn.pending() > 0)
            .map(|(key, conn)| (conn.pending(), ConnId(key)))
            .collect();
        largest.sort_unstable_by_key(|&(pending, _)| std::cmp::Reverse(pending));
        let target = self.output.after_cut();
        for (_, id) in largest {
            if self.output.total <= target {
                break;
            }
            self.lag(id);
        }
    }

    /// The socket reported WRITABLE: a blocked connection goes back on the write list.
    pub(super) fn on_writable(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0)
            && conn.on_writable()
        {
            self.lists.queued.next.push(id);
        }
    }

    /// Starts a write pass: the queued connections, in the order they were queued. Whatever
    /// is queued during the pass goes on a fresh list for the next one.
    pub(super) fn begin_pass(&mut self) -> Vec<ConnId> {
        self.lists.queued.take()
    }

    /// A connection written in this pass with output left stays `Queued`, for the next pass.
    pub(super) fn requeue(&mut self, id: ConnId) {
        self.lists.queued.next.push(id);
    }

    pub(super) fn end_pass(&mut self, pass: Vec<ConnId>) {
        self.lists.queued.give_back(pass);
    }

    /// Lists `id` to be read next turn.
    pub(super) fn read_next_turn(&mut self, id: ConnId) {
        self.lists.unread.next.push(id);
    }

    /// The connections listed to be read this turn (taken at its start, so what this turn lists
    /// waits for the next); give the list back with [`ConnTable::end_unread`].
    pub(super) fn take_unread(&mut self) -> Vec<ConnId> {
        self.lists.unread.take()
    }

    pub(super) fn end_unread(&mut self, due: Vec<ConnId>) {
        self.lists.unread.give_back(due);
    }

    /// The next connection flagged as lagging, if any.
    pub(super) fn pop_lagging(&mut self) -> Option<ConnId> {
        self.lists.lagging.pop()
    }

    /// Marks a connection that already left the hub for removal at the end of the turn.
    pub(super) fn doom(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0)
            && conn.doom()
        {
            self.lists.doomed.push(id);
        }
    }

    /// Removes every doomed connection, after taking its id off every list, so a slot reused
    /// by a new connection never inherits an old entry; `removed` sees each connection last, and
    /// the output it still held is no longer counted.
    pub(super) fn reap(&mut self, mut removed: impl FnMut(ConnId, &mut Connection)) {
        if self.lists.doomed.is_empty() {
            return;
        }
        let conns = &self.conns;
        let live = |id: &ConnId| conns.get(id.0).is_some_and(|conn| !conn.is_doomed());
        self.lists.queued.next.retain(live);
        self.lists.unread.next.retain(live);
        self.lists.lagging.retain(live);
        for id in self.lists.doomed.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(id.0) {
                self.output.total = self.output.total.saturating_sub(conn.pending());
                removed(id, &mut conn);
            }
        }
    }
}
