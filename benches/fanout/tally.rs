//! What the receivers saw: deliveries, their latency, and each publisher's messages in flight.

use hdrhistogram::Histogram;

use crate::message;

/// Latencies above this are clamped: a minute is far beyond any run's drain.
const MAX_LATENCY_US: u64 = 60_000_000;
/// hdrhistogram precision: 3 significant digits is 0.1 % error on any percentile.
const LATENCY_DIGITS: u8 = 3;

pub struct Tally {
    /// Length of every published message, so receivers find line ends without scanning.
    message_size: usize,
    /// Send-to-receive time of every delivery, in microseconds.
    latency_us: Histogram<u64>,
    /// Valid messages received, counting each client's copy (and each `\n`-joined line) once.
    deliveries: u64,
    /// Lines that carry no stamp of this harness: foreign traffic or a server that mangles bytes.
    malformed: u64,
    /// Per publisher, its messages sent but not yet received back by itself; bounds `--rate 0`.
    in_flight: Vec<u32>,
    /// Bench-clock time of the latest delivery; the drain stops once this stops moving.
    last_delivery_ns: u64,
}

impl Tally {
    pub fn new(publishers: usize, message_size: usize) -> Self {
        Self {
            message_size,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_DIGITS)
                .expect("valid histogram bounds"),
            deliveries: 0,
            malformed: 0,
            in_flight: vec![0; publishers],
            last_delivery_ns: 0,
        }
    }

    /// Records one received line; `receiver` is the receiving client's publisher id, if any, so
    /// that a publisher's own messages coming back free its window. Returns whether it counted.
    pub fn deliver(&mut self, line: &[u8], receiver: Option<u32>, now_ns: u64) -> bool {
        let Some(stamp) = message::parse(line) else {
            self.malformed += 1;
            return false;
        };
        let latency_us = now_ns.saturating_sub(stamp.sent_ns) / 1_000;
        self.latency_us.saturating_record(latency_us.max(1));
        self.deliveries += 1;
        self.last_delivery_ns = now_ns;
        if receiver == Some(stamp.publisher) {
            let own = &mut self.in_flight[stamp.publisher as usize];
            *own = own.saturating_sub(1);
        }
        true
    }

    /// Notes that `publisher` sent one more message.
    pub fn sent(&mut self, publisher: usize) {
        self.in_flight[publisher] += 1;
    }

    pub fn in_flight(&self, publisher: usize) -> u32 {
        self.in_flight[publisher]
    }

    pub fn message_size(&self) -> usize {
        self.message_size
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn last_delivery_ns(&self) -> u64 {
        self.last_delivery_ns
    }

    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }
}
