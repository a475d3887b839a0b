//! Reading: a ready socket is read into the one shared scratch buffer until `WouldBlock` or its
//! budget, and the bytes go where the connection's phase says — the HTTP reader, the WebSocket
//! session, or nowhere (a closing connection's input is dropped).
//!
//! Owns the read budget. Must not read a connection whose phase wants no input (paused,
//! lagging, finished), nor one that used this turn's budget: that one waits on the unread list.

use std::io;

use log::debug;

use super::Server;
use crate::hub::ConnId;

/// Size of the one read buffer shared by every connection.
pub(super) const SCRATCH_SIZE: usize = 64 * 1024;

/// Most bytes one visit reads from a connection before the others get their turn. A connection
/// that reads this much is listed to be read next turn and not read again in this one, so a
/// flooding client gets at most one budget per turn.
const MAX_READ_PER_VISIT: usize = 256 * 1024;

impl Server {
    /// Reads `id` until `WouldBlock` (or its budget) and acts on every byte.
    pub(super) fn read(&mut self, id: ConnId) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = MAX_READ_PER_VISIT;
        while let Some(conn) = self.table.get_mut(id)
            && conn.reads_input(self.turn)
        {
            match conn.read(&mut scratch) {
                Ok(0) => {
                    self.on_eof(id);
                    break;
                }
                Ok(n) => {
                    self.metrics.bytes_received += n as u64;
                    self.on_input(id, &scratch[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        if let Some(conn) = self.table.get_mut(id) {
                            conn.spend_read_budget(self.turn);
                        }
                        self.table.read_next_turn(id);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read failed: {e}", conn.client);
                    self.doom(id);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Reads the connections listed last turn (`due`); an HTTP connection first answers the
    /// requests it already holds (it was paused with requests buffered).
    pub(super) fn read_unread(&mut self, due: Vec<ConnId>) {
        for &id in &due {
            self.serve_requests(id);
            self.read(id);
        }
        self.table.end_unread(due);
    }

    fn on_input(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if let Some(reader) = conn.requests() {
            reader.push(bytes);
            self.serve_requests(id);
        } else if conn.is_open() {
            self.feed(id, bytes);
        }
    }

    /// The peer closed its side: the connection leaves the hub, flushes what is left, and goes.
    fn on_eof(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if conn.is_open() {
            debug!(
                "{}: connection closed without a close handshake",
                conn.client
            );
        }
        self.leave_hub(id);
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if conn.pending() == 0 {
            self.doom(id);
        } else {
            conn.peer_closed(self.now);
            self.reschedule(id);
        }
    }
}
