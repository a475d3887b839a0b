//! The published payload: `size` bytes of ASCII text that say when and by whom they were sent.
//!
//! Layout: 16 decimal digits of nanoseconds since the bench clock started, a space, 6 decimal
//! digits of publisher id, a space, then `.` padding. Fixed widths make stamping and parsing a few
//! dozen byte operations; the text contains no `\n`, because gorilla's chat joins queued messages
//! with `\n` and receivers split on it.

/// Digits of the send time in nanoseconds: 10^16 ns is 115 days, longer than any run.
const TIME_DIGITS: usize = 16;
/// Digits of the publisher id.
const PUBLISHER_DIGITS: usize = 6;
const PUBLISHER_START: usize = TIME_DIGITS + 1;

/// The smallest message that holds a stamp.
pub const MIN_SIZE: usize = PUBLISHER_START + PUBLISHER_DIGITS + 1;
/// One more publisher than fits in `PUBLISHER_DIGITS`.
pub const MAX_PUBLISHERS: usize = 1_000_000;

/// Who sent a message and when, as read back by a receiver.
#[derive(Debug, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub publisher: u32,
}

/// A message of `size` bytes, padding included, whose stamp is rewritten before each send.
pub fn template(size: usize) -> Vec<u8> {
    assert!(size >= MIN_SIZE, "messages need at least {MIN_SIZE} bytes");
    let mut message = vec![b'.'; size];
    message[TIME_DIGITS] = b' ';
    message[PUBLISHER_START + PUBLISHER_DIGITS] = b' ';
    message
}

/// Writes `stamp` into the first `MIN_SIZE` bytes of a message made by [`template`].
pub fn stamp(message: &mut [u8], stamp: &Stamp) {
    write_digits(&mut message[..TIME_DIGITS], stamp.sent_ns);
    write_digits(
        &mut message[PUBLISHER_START..PUBLISHER_START + PUBLISHER_DIGITS],
        u64::from(stamp.publisher),
    );
}

/// Reads the stamp of a received line; `None` for anything this harness did not send.
pub fn parse(line: &[u8]) -> Option<Stamp> {
    if line.len() < MIN_SIZE || line[TIME_DIGITS] != b' ' {
        return None;
    }
    let sent_ns = read_digits(&line[..TIME_DIGITS])?;
    let publisher = read_digits(&line[PUBLISHER_START..PUBLISHER_START + PUBLISHER_DIGITS])?;
    Some(Stamp {
        sent_ns,
        publisher: u32::try_from(publisher).ok()?,
    })
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn read_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u64::from(byte - b'0'))
    })
}
