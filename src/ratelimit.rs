//! Per-connection rate limits (`--rate-limit MSGS_PER_SEC` for messages,
//! `--command-rate` for `join`, `quit` and `online`): a token bucket refilled at
//! the configured rate and holding twice that, so a client may send two seconds'
//! worth in a burst and no more.
//!
//! Core, not shell: the bucket has no clock; the caller passes `now`.
//!
//! The bucket is stored as the instant it will be full again instead of a token
//! count and a last-refill time. The two are equivalent (tokens missing =
//! time until full / refill interval), but this form needs only integer
//! arithmetic, so no refill is lost to float rounding however often messages
//! arrive, and it fits in 24 bytes — or in 16, one `Instant`, where the
//! [`Rate`] is kept elsewhere (the `--command-rate` bucket of every connection).

use std::time::{Duration, Instant};

/// Seconds of the sustained rate the bucket holds: burst = 2 × rate.
const BURST_SECONDS: u32 = 2;

/// Nanoseconds in a second, to turn a rate into the time one token takes.
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A sustained rate and the burst it allows: a limit's parameters, the same for every
/// connection under it. Kept apart from a bucket's state so that a bucket every connection
/// holds (`--command-rate`) can be that state alone, one `Instant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds one token takes to refill (1 s / rate): the sustained rate.
    refill_ns: u32,
    /// Most tokens a bucket holds, so however long a client was idle it can send at most this
    /// many messages back to back.
    burst: u32,
}

impl Rate {
    /// `rate_per_sec` tokens per second with a burst of `2 × rate_per_sec`. A rate of zero
    /// refuses everything; a rate above one per nanosecond refuses nothing.
    pub const fn per_second(rate_per_sec: u32) -> Self {
        Self {
            refill_ns: match NANOS_PER_SEC.checked_div(rate_per_sec) {
                Some(ns) => ns,
                None => 0,
            },
            burst: rate_per_sec.saturating_mul(BURST_SECONDS),
        }
    }

    /// Takes one token from the bucket whose state is `full_at` (when it will be full again if
    /// nothing more is taken; a time in the past means full) if, refilled up to `now`, it
    /// holds one. A refused take changes nothing.
    pub fn try_take(self, full_at: &mut Instant, now: Instant) -> bool {
        let Some(missing_allowed) = self.burst.checked_sub(1) else {
            return false;
        };
        let refill = Duration::from_nanos(u64::from(self.refill_ns));
        // With one token left, `burst - 1` tokens are missing: the bucket is
        // full that many refill intervals from now.
        if full_at.saturating_duration_since(now) > refill * missing_allowed {
            return false;
        }
        *full_at = (*full_at).max(now) + refill;
        true
    }
}

/// A token bucket allowing `rate` messages per second with a burst of
/// `2 × rate`, holding its own [`Rate`].
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    /// When the bucket will be full again if nothing more is taken; a time in
    /// the past means full. Each token taken moves it one refill interval
    /// later, which is what makes idle time refill the bucket.
    full_at: Instant,
    /// How fast it refills and how much it holds.
    rate: Rate,
}

impl TokenBucket {
    /// A full bucket for `rate_per_sec` messages per second.
    pub fn new(rate_per_sec: u32, now: Instant) -> Self {
        Self {
            full_at: now,
            rate: Rate::per_second(rate_per_sec),
        }
    }

    /// Takes one token if the bucket, refilled up to `now`, holds one.
    /// A refused message takes nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.rate.try_take(&mut self.full_at, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn taken(bucket: &mut TokenBucket, now: Instant, attempts: usize) -> usize {
        (0..attempts).filter(|_| bucket.try_take(now)).count()
    }

    #[test]
    fn new_bucket_allows_a_burst_of_twice_the_rate_then_refuses() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, t0);
        assert_eq!(taken(&mut bucket, t0, 20), 20);
        assert!(!bucket.try_take(t0));
    }

    #[test]
    fn tokens_refill_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, t0);
        taken(&mut bucket, t0, 20);
        assert!(!bucket.try_take(t0 + 99 * MS));
        assert!(bucket.try_take(t0 + 100 * MS));
        assert!(!bucket.try_take(t0 + 100 * MS));
        assert_eq!(taken(&mut bucket, t0 + 1_100 * MS, 100), 10);
    }

    #[test]
    fn refused_messages_do_not_delay_the_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, t0);
        taken(&mut bucket, t0, 20);
        for ms in 1..100 {
            assert!(!bucket.try_take(t0 + ms * MS));
        }
        assert!(bucket.try_take(t0 + 100 * MS));
    }

    #[test]
    fn long_idle_never_refills_beyond_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, t0);
        taken(&mut bucket, t0, 20);
        let an_hour_later = t0 + Duration::from_secs(3600);
        assert_eq!(taken(&mut bucket, an_hour_later, 1_000), 20);
    }

    #[test]
    fn steady_flood_gets_the_burst_plus_the_rate_per_second() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100, t0);
        let allowed = (0..=10_000_u32)
            .filter(|&ms| bucket.try_take(t0 + ms * MS))
            .count();
        assert_eq!(allowed, 200 + 10 * 100);
    }

    #[test]
    fn zero_rate_refuses_every_message() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0, t0);
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn bucket_stays_small_enough_for_every_connection() {
        assert!(size_of::<TokenBucket>() <= 24);
    }

    #[test]
    fn a_rate_drives_a_bucket_that_is_only_its_full_time() {
        let t0 = Instant::now();
        let rate = Rate::per_second(10);
        let mut full_at = t0;
        assert_eq!(
            (0..30).filter(|_| rate.try_take(&mut full_at, t0)).count(),
            20
        );
        assert!(!rate.try_take(&mut full_at, t0 + 99 * MS));
        assert!(rate.try_take(&mut full_at, t0 + 100 * MS));
        let mut never = t0;
        assert!(!Rate::per_second(0).try_take(&mut never, t0));
    }
}
