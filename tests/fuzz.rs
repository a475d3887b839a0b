//! Property tests (proptest) over the inputs a stranger controls, with bounded case counts so
//! that `cargo test` runs them in seconds:
//!
//! - the HTTP request path: `RequestReader` and `route` on arbitrary bytes and on mutated valid
//!   requests, fed in arbitrary pieces: never a panic; every outcome is "incomplete", a request,
//!   or a 4xx error; and how the bytes were split never changes the outcome;
//! - the events decoder: `events::handle` on arbitrary strings and on mutated or generated
//!   events: never a panic; garbage gets exactly one 400 error reply; an error is the only
//!   delivery; every delivery is a JSON object naming its event; ids are echoed verbatim;
//! - the live server: random frames and bytes after a valid upgrade never take it down: it still
//!   answers `/healthz` and a WebSocket ping.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;
use wshub::assets::Assets;
use wshub::auth::JwtVerifier;
use wshub::events::{self, Context, Control, Delivery};
use wshub::history::History;
use wshub::http::request::{Limits, RequestReader};
use wshub::http::upgrade::Policy;
use wshub::http::{Request, Route, RouteContext, route};
use wshub::hub::{ConnId, Hub, Target};

/// `cases` per property, or `PROPTEST_CASES` from the environment for a longer local soak.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Applies byte-level mutations to `base`: each `(op, at, byte)` inserts, deletes, overwrites,
/// duplicates, or splices in a token from `dictionary`.
fn mutate(base: &[u8], mutations: &[(u8, usize, u8)], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(op, at, byte) in mutations {
        let at = at % (bytes.len() + 1);
        match op % 6 {
            0 => bytes.insert(at, byte),
            1 => {
                let end = (at + 1 + usize::from(byte % 16)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 if at < bytes.len() => bytes[at] = byte,
            3 => {
                let end = (at + usize::from(byte)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            4 => {
                let token = dictionary[usize::from(byte) % dictionary.len()];
                bytes.splice(at..at, token.iter().copied());
            }
            _ => bytes.truncate(at.max(1)),
        }
    }
    bytes
}

fn mutations() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6)
}

// ---- (a) the HTTP request path ----

const HTTP_LIMITS: Limits = Limits {
    max_head: 1024,
    max_body: 64,
};

/// What a request reader made of a connection's bytes, in order.
#[derive(Debug, PartialEq)]
enum Outcome {
    Request(Request, Vec<u8>),
    /// The error response's status; the connection ends there.
    Refused(u16),
}

/// Feeds `bytes` to a fresh reader in pieces cut at `cuts`, draining every complete request
/// after each piece as the server does.
fn read_requests(bytes: &[u8], cuts: &[usize]) -> Vec<Outcome> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut reader = RequestReader::default();
    let mut outcomes = Vec::new();
    let mut from = 0;
    for to in cuts {
        reader.push(&bytes[from..to]);
        from = to;
        loop {
            match reader.next(HTTP_LIMITS) {
                Ok(Some((request, body))) => outcomes.push(Outcome::Request(request, body)),
                Ok(None) => break,
                Err(refused) => {
                    // A refusal ends the connection: nothing after it is read.
                    assert!(
                        (400..500).contains(&refused.status),
                        "reader answered {refused:?}"
                    );
                    outcomes.push(Outcome::Refused(refused.status));
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| JwtVerifier::new(b"fuzz-secret", Duration::from_secs(30)))
}

/// A token signed with the fuzz secret, so mutations start from one that verifies.
fn valid_token() -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "alice", "exp": exp, "rooms": ["lobby", "team-*"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"fuzz-secret"),
    )
    .expect("sign token")
}

/// Routes `request` under every server setting that changes the decision; the answer must be
/// a success, a 4xx (429 only when the client's address is at its limit), or 503 when (and
/// only when) the server is full.
fn check_route(request: &Request) {
    let assets = Assets::embedded();
    for (address_full, at_capacity, verifier, api_key) in [
        (false, false, None, None),
        (false, true, None, Some("key")),
        (false, false, Some(verifier()), Some("key")),
        (true, true, None, None),
    ] {
        let ctx = RouteContext {
            ws_path: "/ws",
            policy: Policy {
                allow_origins: &[],
                verifier,
                now: SystemTime::now(),
                peer_is_trusted_proxy: false,
            },
            assets: &assets,
            address_full,
            at_capacity,
            api_key,
            redis_unavailable: address_full,
        };
        if let Route::Respond(response) = route(request, &ctx) {
            let status = response.status;
            let allowed = status == 200
                || ((400..500).contains(&status) && (status != 429 || address_full))
                || (status == 503 && at_capacity);
            assert!(
                allowed,
                "{} {} answered {status}",
                request.method, request.path
            );
        }
    }
}

fn valid_requests() -> Vec<Vec<u8>> {
    let token = valid_token();
    [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET /ws?user=al%20ice HTTP/1.1\r\nHost: x:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://x:1\r\n\r\n".to_owned(),
        format!("GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wshub, bearer.{token}\r\n\r\n"),
        "POST /api/publish HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer key\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"room\":\"lobby\",\"data\":1}\r\n".to_owned(),
        "GET /api/online?room=lobby HTTP/1.1\r\nAuthorization: Bearer key\r\n\r\nHEAD /assets/app.js HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.1\n\n".to_owned(),
        "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n\u{81}\u{85}".to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const HTTP_DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b"?",
    b"&",
    b"=",
    b"%",
    b"%zz",
    b"+",
    b"\0",
    b"\xff",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Protocol: bearer.x.y.z\r\n",
    b"Authorization: Bearer \r\n",
    b"Origin: null\r\n",
    b"token=",
    b"/ws",
    b"/api/",
];

/// Reads `bytes` split at `cuts` and whole: the outcomes must agree, and every request must
/// route sanely.
fn check_split_and_route(bytes: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let outcomes = read_requests(bytes, cuts);
    prop_assert_eq!(
        &outcomes,
        &read_requests(bytes, &[]),
        "the split changed the outcome"
    );
    for outcome in &outcomes {
        if let Outcome::Request(request, _) = outcome {
            check_route(request);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_break_the_request_reader(
        bytes in vec(any::<u8>(), 0..1200),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        check_split_and_route(&bytes, &cuts)?;
    }

    #[test]
    fn mutated_requests_split_anywhere_parse_the_same_and_route_sanely(
        which in any::<prop::sample::Index>(),
        mutations in mutations(),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let requests = valid_requests();
        let base: &Vec<u8> = which.get(&requests);
        let bytes = mutate(base, &mutations, HTTP_DICTIONARY);
        check_split_and_route(&bytes, &cuts)?;
    }

    #[test]
    fn requests_fed_one_byte_at_a_time_parse_the_same(
        which in any::<prop::sample::Index>(),
        mutations in mutations(),
    ) {
        let requests = valid_requests();
        let base: &Vec<u8> = which.get(&requests);
        let bytes = mutate(base, &mutations, HTTP_DICTIONARY);
        let every_byte: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(read_requests(&bytes, &every_byte), read_requests(&bytes, &[]));
    }
}

#[test]
fn unmutated_requests_are_read_and_routed() {
    for bytes in valid_requests() {
        let outcomes = read_requests(&bytes, &[]);
        assert!(
            matches!(outcomes.first(), Some(Outcome::Request(..))),
            "{outcomes:?}"
        );
    }
}

// ---- (b) the events decoder ----

const SENDER: ConnId = ConnId(1);
const MAX_EVENT: usize = 512;

/// alice on connections 1 and 2, bob on 3, carol on 4; alice and bob in `lobby`.
fn hub() -> Hub {
    let mut hub = Hub::default();
    for (conn, user) in [(1, "alice"), (2, "alice"), (3, "bob"), (4, "carol")] {
        hub.connect(ConnId(conn), user);
    }
    hub.join(ConnId(1), "lobby");
    hub.join(ConnId(3), "lobby");
    hub
}

fn allow_all_but_secret(room: &str) -> bool {
    !room.starts_with("secret")
}

/// The top-level fields of a JSON object, kept raw (so that `1e400` or duplicated keys, which
/// the server copies through or rejects, do not trip the test's own parsing).
fn fields(json: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Fields(Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Fields, A::Error> {
                    let mut fields = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        fields.push(entry);
                    }
                    Ok(Fields(fields))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Fields>(json).ok().map(|f| f.0)
}

fn field<'a>(fields: &'a [(String, Box<RawValue>)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.get())
}

/// Room history as the decoder runs with it: on, small enough to trim.
fn history() -> History {
    History::new(3, Duration::from_secs(60), 1)
}

/// Handles `text` from [`SENDER`] and checks what every frame must produce.
fn check_event(hub: &mut Hub, history: &mut History, text: &str) -> Vec<Delivery> {
    let ctx = Context {
        conn: SENDER,
        now_ms: 1_700_000_000_000,
        now: Instant::now(),
        may_join: &allow_all_but_secret,
        may_reach_everyone: true,
        max_message_size: MAX_EVENT,
        control: Control {
            take_command: &|| true,
            presence_max_members: 1_000,
        },
        hub_wide: false,
    };
    let mut out = Vec::new();
    events::handle(hub, history, &ctx, text, &mut out, &mut Vec::new());
    assert!(!out.is_empty(), "no reply and no delivery for {text:?}");
    let is_object = fields(text).is_some();
    for delivery in &out {
        let reply = fields(&delivery.json)
            .unwrap_or_else(|| panic!("not a JSON object: {}", delivery.json));
        let event = field(&reply, "event").and_then(|e| serde_json::from_str::<String>(e).ok());
        assert!(event.is_some(), "no event name in {}", delivery.json);
        let code: Option<u16> = field(&reply, "code").map(|c| c.parse().expect("numeric code"));
        if code.is_some_and(|code| code != 0) {
            assert_eq!(out.len(), 1, "an error must be the only delivery: {out:?}");
            assert_eq!(
                delivery.target,
                Target::Conn(SENDER),
                "errors go to the sender only"
            );
            assert!(
                field(&reply, "error").is_some(),
                "error reply without text: {}",
                delivery.json
            );
        }
        if let (Target::Conn(_), Some(id)) = (&delivery.target, field(&reply, "id")) {
            assert!(
                is_object && text.contains(id),
                "id {id} not copied from {text:?}"
            );
        }
    }
    if !is_object {
        assert_eq!(out.len(), 1, "garbage must get exactly one reply: {out:?}");
        assert_eq!(out[0].target, Target::Conn(SENDER));
        let reply: Value = serde_json::from_str(&out[0].json).expect("JSON");
        assert_eq!(
            (reply["event"].as_str(), reply["code"].as_u64()),
            (Some("error"), Some(400)),
            "{reply}"
        );
    }
    out
}

/// Checks the hub's public views agree with each other after a run of events.
fn check_hub(hub: &Hub, rooms: &[&str]) {
    assert_eq!(
        hub.connection_count(),
        4,
        "events never connect or disconnect"
    );
    for room in rooms {
        let members = hub.room_members(room);
        let mut users: Vec<&str> = members
            .iter()
            .map(|conn| hub.user_of(*conn).expect("member is connected"))
            .collect();
        users.sort_unstable();
        users.dedup();
        assert_eq!(
            users.len(),
            hub.room_user_count(room),
            "distinct users of {room}"
        );
        for conn in members {
            assert!(hub.is_member(*conn, room));
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            hash_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string field as clients might send it, or a value of the wrong type.
fn name_like(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(names).prop_map(Value::from),
        1 => "\\PC{0,140}".prop_map(Value::from),
        1 => json_value(),
    ]
}

/// An event object with each field present or not, valid or not.
fn generated_event() -> impl Strategy<Value = String> {
    let events: &'static [&'static str] = &[
        "ping", "join", "quit", "message", "direct", "online", "nope", "",
    ];
    let rooms: &'static [&'static str] = &["lobby", "team-a", "secret", "", "empty"];
    let users: &'static [&'static str] = &["alice", "bob", "carol", "nobody", ""];
    (
        prop::option::of(name_like(events)),
        prop::option::of(name_like(rooms)),
        prop::option::of(name_like(users)),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![json_value(), "x{0,600}".prop_map(Value::from)]),
        prop::option::of(prop_oneof![
            json_value(),
            (0..8u64)
                .prop_map(|offset| serde_json::json!({"epoch": "00000001-1", "offset": offset})),
        ]),
    )
        .prop_map(|(event, room, to, id, data, since)| {
            let mut object = serde_json::Map::new();
            for (key, value) in [
                ("event", event),
                ("room", room),
                ("to", to),
                ("id", id),
                ("data", data),
                ("since", since),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            Value::Object(object).to_string()
        })
}

const EVENT_TEMPLATES: &[&str] = &[
    r#"{"event":"ping","id":1}"#,
    r#"{"event":"join","room":"lobby","id":"j"}"#,
    r#"{"event":"join","room":"team-a"}"#,
    r#"{"event":"join","room":"lobby","since":{"epoch":"00000001-1","offset":1}}"#,
    r#"{"event":"quit","room":"lobby","id":[1,{"a":null}]}"#,
    r#"{"event":"message","room":"lobby","data":{"text":"hi ✓"}}"#,
    r#"{"event":"message","data":[1,2,3],"id":null}"#,
    r#"{"event":"direct","to":"bob","data":"x","id":{"n":1}}"#,
    r#"{"event":"online","room":"lobby"}"#,
    r#"{"event":"online"}"#,
];

const JSON_DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"\"event\":",
    b"\"room\":",
    b"\"id\":",
    b"\"data\":",
    b"\"to\":",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"1e400",
    b"-0",
    b"\"\"",
    b" \t\n",
    "é🦀".as_bytes(),
];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_strings_get_exactly_one_error_reply(text in "\\PC{0,64}|.{0,64}") {
        let mut hub = hub();
        check_event(&mut hub, &mut history(), &text);
        check_hub(&hub, &["lobby"]);
    }

    #[test]
    fn mutated_events_never_break_the_decoder(
        templates in vec((any::<prop::sample::Index>(), mutations()), 1..8),
    ) {
        let mut hub = hub();
        let mut history = history();
        for (which, mutations) in templates {
            let base = which.get(EVENT_TEMPLATES).as_bytes();
            let text = String::from_utf8_lossy(&mutate(base, &mutations, JSON_DICTIONARY)).into_owned();
            check_event(&mut hub, &mut history, &text);
        }
        check_hub(&hub, &["lobby", "team-a", "empty"]);
    }

    #[test]
    fn generated_events_keep_the_hub_consistent(texts in vec(generated_event(), 1..12)) {
        let mut hub = hub();
        let mut history = history();
        for text in &texts {
            check_event(&mut hub, &mut history, text);
        }
        check_hub(&hub, &["lobby", "team-a", "secret", "empty"]);
        prop_assert!(!hub.room_members("secret").contains(&SENDER), "may_join was ignored");
    }

    #[test]
    fn publish_bodies_never_panic(body in prop_oneof![generated_event(), "\\PC{0,40}"]) {
        let published =
            events::publish(&mut history(), Instant::now(), 1_700_000_000_000, MAX_EVENT, false, &body);
        match published {
            Ok((delivery, _)) => prop_assert!(fields(&delivery.json).is_some(), "{}", delivery.json),
            Err(failure) => prop_assert!(matches!(failure.code, 400 | 413), "{failure:?}"),
        }
    }
}

// ---- (c) the live server ----

fn events_server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| common::start(&["--max-message-size", "4KiB"]))
}

fn raw_server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| common::start(&["--protocol", "raw", "--max-message-size", "4KiB"]))
}

/// A piece of what a hostile client sends after its upgrade.
#[derive(Clone, Debug)]
enum Piece {
    /// A well-formed masked frame with any first byte (FIN, RSV bits, opcode).
    Frame(u8, Vec<u8>),
    /// A text frame carrying a generated event, so the events path runs too.
    Event(String),
    /// Bytes with no structure at all.
    Garbage(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => (any::<u8>(), vec(any::<u8>(), 0..200)).prop_map(|(first, payload)| Piece::Frame(first, payload)),
        2 => generated_event().prop_map(Piece::Event),
        1 => vec(any::<u8>(), 1..64).prop_map(Piece::Garbage),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn random_frames_after_an_upgrade_never_take_the_server_down(
        raw in any::<bool>(),
        pieces in vec(piece(), 1..8),
        wait_for_close in any::<bool>(),
    ) {
        let addr = if raw { raw_server() } else { events_server() };
        let mut stream = common::raw_websocket(addr, "/ws?user=fuzz");
        let bytes: Vec<u8> = pieces
            .iter()
            .flat_map(|piece| match piece {
                Piece::Frame(first, payload) => common::client_frame(*first, payload),
                Piece::Event(text) => common::client_frame(0x81, text.as_bytes()),
                Piece::Garbage(bytes) => bytes.clone(),
            })
            .collect();
        // The server may close (and reset) at the first bad frame, so writes may fail.
        let _ = stream.write_all(&bytes);
        if wait_for_close {
            stream.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let _ = common::read_until_close(&mut stream);
        }
        drop(stream);
        let (status, _, body) = common::get(addr, "/healthz");
        prop_assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
}

#[test]
fn server_still_speaks_websocket_after_the_fuzzing() {
    let ping = r#"{"event":"ping","id":"after"}"#;
    for addr in [events_server(), raw_server()] {
        let mut client = common::connect(addr, "/ws?user=after");
        common::send_text(&mut client, ping);
        // Concurrent fuzz cases may broadcast to everyone; skip their messages.
        loop {
            let Ok(reply) = serde_json::from_str::<Value>(&common::next_text(&mut client)) else {
                continue;
            };
            if reply["event"] == "ping" && reply["id"] == "after" {
                break;
            }
        }
    }
}
