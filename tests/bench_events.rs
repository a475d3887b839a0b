//! The bench harness's side of the `events` protocol (`benches/fanout/events.rs`, `--room`)
//! against what wshub really sends: the harness reads events without a JSON parser, so these
//! tests pin that its join request is accepted, its message envelope is relayed, and it finds its
//! payload in the relayed event with history on (`"offset"` last) and off.

mod common;

#[allow(dead_code)]
#[path = "../benches/fanout/events.rs"]
mod events;

use common::*;
use events::{Event, EventReader};

/// A payload like the harness's stamped messages: ASCII, no quote or backslash.
const PAYLOAD: &str = "0000001234567890 000003 .......................................";

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("the harness sends UTF-8")
}

/// Joins `room` with the harness's request and checks the harness reads the reply as success.
fn join(client: &mut Client, reader: &mut EventReader, room: &str) {
    send_text(client, text(&events::join_request(room)));
    let reply = next_text(client);
    assert_eq!(
        reader.read(reply.as_bytes(), PAYLOAD.len()),
        Event::Joined,
        "{reply}"
    );
}

fn a_room_message_gives_back_the_payload(server_args: &[&str], numbered: bool) {
    let addr = start(server_args);
    let mut reader = EventReader::default();
    let mut alice = connect(addr, "/ws");
    let mut bob = connect(addr, "/ws");
    join(&mut alice, &mut reader, "bench");
    join(&mut bob, &mut reader, "bench");
    let presence = next_text(&mut alice);
    assert_eq!(
        reader.read(presence.as_bytes(), PAYLOAD.len()),
        Event::Other,
        "{presence}"
    );

    let (envelope, payload_at) = events::message_envelope("bench", PAYLOAD.as_bytes());
    assert_eq!(
        &envelope[payload_at..payload_at + PAYLOAD.len()],
        PAYLOAD.as_bytes()
    );
    send_text(&mut alice, text(&envelope));
    for client in [&mut alice, &mut bob] {
        let event = next_text(client);
        assert_eq!(event.contains(r#""offset":1"#), numbered, "{event}");
        assert_eq!(
            reader.read(event.as_bytes(), PAYLOAD.len()),
            Event::Data(PAYLOAD.as_bytes()),
            "{event}"
        );
    }
    // Another payload length is found by scanning for the closing quote.
    let (short, _) = events::message_envelope("bench", b"0000001234567891 000003 .");
    send_text(&mut bob, text(&short));
    let event = next_text(&mut alice);
    assert_eq!(
        reader.read(event.as_bytes(), PAYLOAD.len()),
        Event::Data(b"0000001234567891 000003 ."),
        "{event}"
    );
}

#[test]
fn with_history_the_harness_finds_its_payload_in_a_numbered_room_message() {
    a_room_message_gives_back_the_payload(&[], true);
}

#[test]
fn without_history_the_harness_finds_its_payload_in_a_room_message() {
    a_room_message_gives_back_the_payload(&["--history-size", "0"], false);
}

#[test]
fn a_refused_join_and_a_refused_publish_are_told_apart_from_deliveries() {
    let addr = start(&[]);
    let mut reader = EventReader::default();
    let mut client = connect(addr, "/ws");
    send_text(&mut client, r#"{"event":"join","room":""}"#);
    let refused = next_text(&mut client);
    assert_eq!(
        reader.read(refused.as_bytes(), PAYLOAD.len()),
        Event::JoinRefused,
        "{refused}"
    );
    let (envelope, _) = events::message_envelope("elsewhere", PAYLOAD.as_bytes());
    send_text(&mut client, text(&envelope));
    let error = next_text(&mut client);
    assert_eq!(
        reader.read(error.as_bytes(), PAYLOAD.len()),
        Event::Error,
        "{error}"
    );
}

#[test]
fn room_names_the_harness_accepts_need_no_json_escaping() {
    assert!(events::valid_room("bench"));
    assert!(events::valid_room("team-1.chat_room:a"));
    assert!(!events::valid_room(""));
    assert!(!events::valid_room("a\"b"));
    assert!(!events::valid_room("a\\b"));
    assert!(!events::valid_room(&"r".repeat(129)));
}
