//! The `events` protocol (SPEC §5) as the harness speaks it with `--room`: the join request, the
//! envelope a publisher's stamped payload travels in, and finding that payload again in what a
//! receiver gets, all without I/O.
//!
//! A receiver reads the `data` string of each event without parsing JSON: the payload is plain
//! ASCII with no quote or backslash, so it runs from `"data":"` to the next `"`. Where the key
//! sits is remembered from one event to the next (wshub's events all have the same prefix length:
//! same room, anonymous user ids of one length), so the usual case is one 8-byte comparison and
//! one byte check at the payload's known end. A full JSON parse per delivery would make the
//! harness slower than the server it measures.

/// What starts the `data` string of an event.
const DATA_KEY: &[u8] = br#""data":""#;
/// What a join reply starts with, and what says it succeeded (SPEC §5: `code` is 0).
const JOIN_REPLY: &[u8] = br#"{"event":"join""#;
const SUCCESS: &[u8] = br#""code":0"#;

/// A room name that needs no JSON escaping and that wshub accepts; checked by `--room`.
pub fn valid_room(room: &str) -> bool {
    /// wshub's `MAX_ROOM_NAME_BYTES`.
    const MAX_ROOM_BYTES: usize = 128;
    let plain =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':');
    !room.is_empty() && room.len() <= MAX_ROOM_BYTES && room.bytes().all(plain)
}

/// `{"event":"join","room":ROOM}`: sent by every client once upgraded.
pub fn join_request(room: &str) -> Vec<u8> {
    format!(r#"{{"event":"join","room":"{room}"}}"#).into_bytes()
}

/// `{"event":"message","room":ROOM,"data":"PAYLOAD"}` and where `payload` starts in it, so that
/// each publish restamps the payload in place.
pub fn message_envelope(room: &str, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut envelope = format!(r#"{{"event":"message","room":"{room}","data":""#).into_bytes();
    let payload_at = envelope.len();
    envelope.extend_from_slice(payload);
    envelope.extend_from_slice(br#""}"#);
    (envelope, payload_at)
}

/// What a received event is to the harness.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// An event with a string `data`: a room message, whose payload this is.
    Data(&'a [u8]),
    /// The reply to this client's join, code 0.
    Joined,
    /// A join reply with another code: the client is not in the room.
    JoinRefused,
    /// An error reply to something else (a publish refused: 403, 413, 429).
    Error,
    /// Anything else: presence, pings.
    Other,
}

/// Reads received events; one per harness, its hint shared by every connection.
#[derive(Default)]
pub struct EventReader {
    /// Where `"data":"` was in the last event that had it.
    data_key_at: usize,
}

impl EventReader {
    /// Classifies `event`, a whole text message; `payload_len` is what the publishers send, so
    /// the end of their payload is checked before it is searched for.
    pub fn read<'a>(&mut self, event: &'a [u8], payload_len: usize) -> Event<'a> {
        let key_at =
            if event.get(self.data_key_at..self.data_key_at + DATA_KEY.len()) == Some(DATA_KEY) {
                Some(self.data_key_at)
            } else {
                find(event, DATA_KEY)
            };
        if let Some(key_at) = key_at {
            self.data_key_at = key_at;
            let start = key_at + DATA_KEY.len();
            let rest = &event[start..];
            let len = match rest.get(payload_len) {
                Some(b'"') => Some(payload_len),
                _ => rest.iter().position(|&byte| byte == b'"'),
            };
            if let Some(len) = len {
                return Event::Data(&rest[..len]);
            }
        }
        if event.starts_with(JOIN_REPLY) {
            return if find(event, SUCCESS).is_some() {
                Event::Joined
            } else {
                Event::JoinRefused
            };
        }
        if find(event, br#""error":"#).is_some() {
            return Event::Error;
        }
        Event::Other
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
