//! What crosses Redis: one event, serialised once, behind a one-line header that says who
//! published it and how to deliver it. `ORIGIN SEQ KIND\n` then, for presence, `USER\n`, then
//! the payload exactly as clients receive it.
//!
//! - ORIGIN: the publishing instance (`--instance-id`: no spaces or newlines);
//! - SEQ: the publisher's sequence number (0 for presence, which Redis itself publishes), so an
//!   instance recognises its own messages coming back;
//! - KIND: `t` a text message, `b` a binary one (`--protocol raw`), `p` presence about USER,
//!   for every member of the room but USER's connections, `j` the marker of a join (USER is
//!   the joining instance's waiter, the payload the room's count), answered by ORIGIN only.

/// How an event is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Presence,
    Joined,
}

/// A decoded envelope; `payload` is where the event starts in the bytes it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub kind: Kind,
    /// For presence: the user it is about; for a join marker, its waiter.
    pub user: Option<&'a str>,
    pub payload: usize,
}

/// Appends the header of a text or binary message from `origin` to `out`; the caller appends
/// the payload.
pub fn header(out: &mut Vec<u8>, origin: &str, seq: u64, binary: bool) {
    out.extend_from_slice(origin.as_bytes());
    out.push(b' ');
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(if binary { b" b\n" } else { b" t\n" });
}

/// Reads an envelope; `None` for anything else (an older or foreign publisher).
pub fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut fields = head.split(' ');
    let (origin, seq, kind) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let seq = seq.parse().ok()?;
    let kind = match kind {
        "t" => Kind::Text,
        "b" => Kind::Binary,
        "p" => Kind::Presence,
        "j" => Kind::Joined,
        _ => return None,
    };
    let mut payload = end + 1;
    let user = if matches!(kind, Kind::Presence | Kind::Joined) {
        let rest = &bytes[payload..];
        let line = rest.iter().position(|&b| b == b'\n')?;
        payload += line + 1;
        Some(std::str::from_utf8(&rest[..line]).ok()?)
    } else {
        None
    };
    Some(Envelope {
        origin,
        seq,
        kind,
        user,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_its_payload_untouched() {
        let mut out = Vec::new();
        header(&mut out, "host-1-ab", 42, false);
        out.extend_from_slice(b"{\"event\":\"message\",\"data\":\"a\\nb\"}");
        let envelope = decode(&out).unwrap();
        assert_eq!((envelope.origin, envelope.seq), ("host-1-ab", 42));
        assert_eq!(envelope.kind, Kind::Text);
        assert_eq!(
            &out[envelope.payload..],
            b"{\"event\":\"message\",\"data\":\"a\\nb\"}"
        );
    }

    #[test]
    fn presence_names_its_user_and_binary_is_kept_apart() {
        let bytes = b"a 0 p\nbob\n{\"event\":\"presence\"}";
        let envelope = decode(bytes).unwrap();
        assert_eq!(
            (envelope.kind, envelope.user),
            (Kind::Presence, Some("bob"))
        );
        assert_eq!(&bytes[envelope.payload..], b"{\"event\":\"presence\"}");
        let mut out = Vec::new();
        header(&mut out, "a", 1, true);
        assert_eq!(decode(&out).unwrap().kind, Kind::Binary);
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        for bytes in [
            &b""[..],
            b"no newline",
            b"a 1\n",
            b"a x t\n",
            b"a 1 q\n",
            b"a 1 t extra\n",
            b"a 0 p\nno user line",
            b"\xff 1 t\n",
        ] {
            assert_eq!(decode(bytes), None, "{bytes:?}");
        }
    }
}
