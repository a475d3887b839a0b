//! What the receivers saw: deliveries, their latency, their order, and each publisher's messages
//! in flight.
//!
//! A publisher's send stamps strictly increase, so a stamp is also that publisher's sequence
//! number: each receiver remembers the last stamp it got from each publisher, which tells a
//! duplicate (the same stamp again) and a reordering (an older one) apart from a fresh message at
//! the cost of one comparison per delivery.

use hdrhistogram::Histogram;

use crate::message;

/// Latencies above this are clamped: a minute is far beyond any run's drain.
const MAX_LATENCY_US: u64 = 60_000_000;
/// hdrhistogram precision: 3 significant digits is 0.1 % error on any percentile.
const LATENCY_DIGITS: u8 = 3;

pub struct Tally {
    /// Length of every published message, so receivers find line ends without scanning.
    message_size: usize,
    /// Send-to-receive time of every delivery, in microseconds, per target URL: receivers of
    /// another instance than the publishers' show what the hop between instances costs.
    latency_us: Vec<Histogram<u64>>,
    /// Valid messages received, counting each client's copy (and each `\n`-joined line) once;
    /// duplicates are not deliveries.
    deliveries: u64,
    /// Messages a receiver got twice: a server (or a relay between instances) sent one copy too
    /// many.
    duplicates: u64,
    /// Messages older than the last one their receiver got from the same publisher.
    out_of_order: u64,
    /// Lines that carry no stamp of this harness: foreign traffic or a server that mangles bytes.
    malformed: u64,
    /// With `--room`, error replies (a publish refused: not a member, too large, rate limited):
    /// such a message reaches nobody.
    error_replies: u64,
    /// Per publisher, its messages sent but not yet received back by itself; bounds `--rate 0`.
    in_flight: Vec<u32>,
    /// Per publisher, its latest stamp, so the next one can be made strictly greater.
    last_sent_ns: Vec<u64>,
    /// Bench-clock time of the latest delivery; the drain stops once this stops moving.
    last_delivery_ns: u64,
}

/// One client as the tally sees it: who it is and what it has received so far.
pub struct Receiver {
    /// The client's publisher id, if any, so that a publisher's own messages coming back free its
    /// window.
    publisher: Option<u32>,
    /// Index of the URL it is connected to.
    target: usize,
    /// Per publisher, the stamp of the latest message received from it (0: none yet; stamps
    /// start above 0). 8 bytes per client and publisher: 152 KB for scenario (e).
    last_stamp_ns: Vec<u64>,
    /// Messages received, to tell when the drain has delivered everything.
    received: u64,
}

impl Receiver {
    pub fn new(publisher: Option<u32>, target: usize, publishers: usize) -> Self {
        Self {
            publisher,
            target,
            last_stamp_ns: vec![0; publishers],
            received: 0,
        }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

impl Tally {
    pub fn new(publishers: usize, targets: usize, message_size: usize) -> Self {
        Self {
            message_size,
            latency_us: (0..targets)
                .map(|_| {
                    Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_DIGITS)
                        .expect("valid histogram bounds")
                })
                .collect(),
            deliveries: 0,
            duplicates: 0,
            out_of_order: 0,
            malformed: 0,
            error_replies: 0,
            in_flight: vec![0; publishers],
            last_sent_ns: vec![0; publishers],
            last_delivery_ns: 0,
        }
    }

    /// Records one line received by `receiver`.
    pub fn deliver(&mut self, line: &[u8], receiver: &mut Receiver, now_ns: u64) {
        let Some(stamp) = message::parse(line) else {
            self.malformed += 1;
            return;
        };
        let Some(last) = receiver.last_stamp_ns.get_mut(stamp.publisher as usize) else {
            self.malformed += 1;
            return;
        };
        if stamp.sent_ns == *last {
            self.duplicates += 1;
            return;
        }
        if stamp.sent_ns < *last {
            self.out_of_order += 1;
        } else {
            *last = stamp.sent_ns;
        }
        let latency_us = now_ns.saturating_sub(stamp.sent_ns) / 1_000;
        self.latency_us[receiver.target].saturating_record(latency_us.max(1));
        self.deliveries += 1;
        receiver.received += 1;
        self.last_delivery_ns = now_ns;
        if receiver.publisher == Some(stamp.publisher) {
            let own = &mut self.in_flight[stamp.publisher as usize];
            *own = own.saturating_sub(1);
        }
    }

    /// Notes that `publisher` sends one more message at `now_ns`; returns its stamp, `now_ns` or
    /// just above the publisher's previous one, which a burst sent in one turn may share.
    pub fn sent(&mut self, publisher: usize, now_ns: u64) -> u64 {
        self.in_flight[publisher] += 1;
        let stamp = now_ns.max(self.last_sent_ns[publisher] + 1);
        self.last_sent_ns[publisher] = stamp;
        stamp
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

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Notes an error reply from the server.
    pub fn error_reply(&mut self) {
        self.error_replies += 1;
    }

    pub fn error_replies(&self) -> u64 {
        self.error_replies
    }

    pub fn last_delivery_ns(&self) -> u64 {
        self.last_delivery_ns
    }

    /// Every delivery's latency, all targets together.
    pub fn latency_us(&self) -> Histogram<u64> {
        let mut all = self.latency_us[0].clone();
        for target in &self.latency_us[1..] {
            all.add(target).expect("histograms with the same bounds");
        }
        all
    }

    /// Latencies per target URL, in `--url` order; each one's length is its deliveries.
    pub fn target_latency_us(&self) -> &[Histogram<u64>] {
        &self.latency_us
    }
}
