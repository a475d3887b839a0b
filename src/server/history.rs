//! Room history's clock (SPEC §11): the `history` core keeps and numbers room messages as the
//! `events` core serialises them; this file only runs its sweep when it is due (dropping
//! expired messages, forgetting rooms left empty past `--history-ttl`) and tells the poll when
//! that is.
//!
//! Must not keep, number or replay messages itself, and must not run the sweep per message or
//! per turn: once a second at most, and not at all while no room is kept.

use std::time::Instant;

use super::Server;

impl Server {
    /// The turn's history step: the sweep, when due.
    pub(super) fn expire_history(&mut self) {
        if self
            .history
            .poll_timeout()
            .is_some_and(|due| due <= self.now)
        {
            let hub = &self.hub;
            self.history
                .handle_timeout(self.now, |room| !hub.room_members(room).is_empty());
        }
    }

    /// When the next sweep is due, for the poll's timeout.
    pub(super) fn history_timeout(&self) -> Option<Instant> {
        self.history.poll_timeout()
    }
}
