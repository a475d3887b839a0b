//! Room history on one instance (SPEC §11, issue 13), over real sockets: offsets, epochs, the
//! join's position, recovery with `since` (exactly the missed messages, in order, before
//! anything newer, even while the room is busy), and what cannot be recovered (trimmed by
//! size, expired, another epoch). The same through Redis, across instances, is in
//! tests/cluster_history.rs; the history store's own rules are unit-tested in src/history.rs.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::history::*;
use common::*;

const ROOM: &str = "lobby";
const KEY: &str = "history-k3y";

fn client(addr: std::net::SocketAddr, user: &str) -> Client {
    connect(addr, &format!("/ws?user={user}"))
}

/// `POST /api/publish` of `body` with [`KEY`]; the JSON answer.
fn publish(addr: std::net::SocketAddr, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = tcp_connect(addr);
    let (status, head, answer) = http_request(
        &mut stream,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{head}{answer}");
    serde_json::from_str(&answer).expect("JSON answer")
}

#[test]
fn room_messages_carry_offsets_from_one_the_same_for_every_recipient() {
    let addr = start(&[]);
    let mut alice = client(addr, "alice");
    let mut bob = client(addr, "bob");
    let first = join_room(&mut alice, ROOM, None);
    let epoch = position(&first).epoch;
    assert_eq!(
        first["data"],
        json!({"count": 1, "epoch": epoch, "offset": 0})
    );
    join_room(&mut bob, ROOM, None);
    assert_eq!(next_json(&mut alice)["event"], "presence", "bob's join");
    for n in 0..3 {
        say(&mut alice, ROOM, json!(n));
    }
    let to_alice = read_messages(&mut alice, ROOM, 3);
    let to_bob = read_messages(&mut bob, ROOM, 3);
    assert_eq!(
        to_alice, to_bob,
        "one event, the same bytes, for every recipient"
    );
    let offsets: Vec<u64> = to_bob.iter().map(offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    // Another room counts on its own, under its own epoch; a message to everyone and a direct
    // carry no offset.
    let other = join_room(&mut bob, "other", None);
    assert_eq!(other["data"]["offset"], 0);
    assert_ne!(position(&other).epoch, epoch);
    say(&mut bob, "other", json!("x"));
    assert_eq!(offset(&read_messages(&mut bob, "other", 1)[0]), 1);
    send_text(&mut bob, r#"{"event":"message","data":"everyone"}"#);
    let everyone = next_json(&mut bob);
    assert_eq!(everyone["data"], "everyone");
    assert!(everyone.get("offset").is_none(), "{everyone}");
    // The join reply gives the room's position: the last offset.
    let again = join_room(&mut bob, ROOM, None);
    assert_eq!(position(&again), Position { epoch, offset: 3 });
    assert!(
        again["data"].get("recovered").is_none(),
        "no since, no recovered: {again}"
    );
}

#[test]
fn a_client_that_reconnects_gets_exactly_what_it_missed_in_order_then_live_messages() {
    let addr = start(&[]);
    let mut alice = client(addr, "alice");
    let mut bob = client(addr, "bob");
    join_room(&mut alice, ROOM, None);
    let mut seen = position(&join_room(&mut bob, ROOM, None));
    let _ = next_json(&mut alice);
    say(&mut alice, ROOM, json!("one"));
    say(&mut alice, ROOM, json!("two"));
    seen.offset = offset(&read_messages(&mut bob, ROOM, 2)[1]);
    close_handshake(&mut bob);
    for text in ["three", "four", "five"] {
        say(&mut alice, ROOM, json!(text));
    }
    let sent = read_messages(&mut alice, ROOM, 5);

    let mut bob = client(addr, "bob");
    let reply = join_room(&mut bob, ROOM, Some(&seen));
    assert_eq!(
        reply["data"],
        json!({"count": 2, "epoch": seen.epoch, "offset": 5, "recovered": true})
    );
    assert_eq!(read_messages(&mut bob, ROOM, 3), sent[2..].to_vec());
    say(&mut alice, ROOM, json!("six"));
    let live = read_messages(&mut bob, ROOM, 1);
    assert_eq!((offset(&live[0]), &live[0]["data"]), (6, &json!("six")));
    assert_nothing_pending(&mut bob);

    // Nothing missed is a recovery too, with nothing replayed.
    let mut carol = client(addr, "carol");
    let now = Position {
        epoch: seen.epoch.clone(),
        offset: 6,
    };
    let reply = join_room(&mut carol, ROOM, Some(&now));
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_nothing_pending(&mut carol);
}

#[test]
fn the_seam_between_replay_and_live_messages_has_no_gap_and_no_duplicate_in_a_busy_room() {
    let addr = start(&["--history-size", "5000"]);
    let total = 3_000;
    let rejoins = flapping_reader(&[addr], ROOM, total, || {
        Busy::start(addr, "publisher", ROOM, total)
    });
    assert!(
        rejoins >= 20,
        "only {rejoins} rejoins: the test cut too rarely"
    );
}

#[test]
fn what_was_trimmed_by_size_or_belongs_to_another_epoch_is_not_recovered_and_nothing_is_replayed() {
    let addr = start(&["--history-size", "3"]);
    let mut alice = client(addr, "alice");
    let at_start = position(&join_room(&mut alice, ROOM, None));
    for n in 1..=5 {
        say(&mut alice, ROOM, json!(n));
    }
    read_messages(&mut alice, ROOM, 5);
    let epoch = at_start.epoch;
    let cases = [
        (epoch.clone(), 0, false),
        (epoch.clone(), 1, false),
        ("another-epoch".to_owned(), 4, false),
        (epoch.clone(), 6, false),
        (epoch.clone(), 2, true),
    ];
    for (since_epoch, since, recovered) in cases {
        let mut bob = client(addr, "bob");
        let since = Position {
            epoch: since_epoch,
            offset: since,
        };
        let reply = join_room(&mut bob, ROOM, Some(&since));
        assert_eq!(
            reply["data"]["recovered"],
            json!(recovered),
            "{since:?}: {reply}"
        );
        assert_eq!(position(&reply).offset, 5);
        if recovered {
            let replay: Vec<u64> = read_messages(&mut bob, ROOM, 3)
                .iter()
                .map(offset)
                .collect();
            assert_eq!(replay, [3, 4, 5]);
        }
        assert_nothing_pending(&mut bob);
        close_handshake(&mut bob);
        let _ = next_json(&mut alice);
        let _ = next_json(&mut alice);
    }
}

#[test]
fn an_expired_message_is_not_recovered() {
    let addr = start(&["--history-ttl", "1s"]);
    let mut alice = client(addr, "alice");
    let at_start = position(&join_room(&mut alice, ROOM, None));
    say(&mut alice, ROOM, json!("soon gone"));
    read_messages(&mut alice, ROOM, 1);
    std::thread::sleep(Duration::from_millis(1_100));
    let mut bob = client(addr, "bob");
    let reply = join_room(&mut bob, ROOM, Some(&at_start));
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_nothing_pending(&mut bob);
    // Alice stayed: the room keeps its epoch and its count, and nothing missed recovers.
    let now = Position {
        epoch: at_start.epoch,
        offset: 1,
    };
    let reply = join_room(&mut bob, ROOM, Some(&now));
    assert_eq!(
        (position(&reply), &reply["data"]["recovered"]),
        (now, &json!(true))
    );
}

#[test]
fn a_room_empty_past_the_ttl_is_forgotten_and_starts_over_under_a_new_epoch() {
    let addr = start(&["--history-ttl", "1s"]);
    let mut alice = client(addr, "alice");
    let before = position(&join_room(&mut alice, ROOM, None));
    say(&mut alice, ROOM, json!("x"));
    read_messages(&mut alice, ROOM, 1);
    assert!(metric(addr, "wshub_history_bytes") > 0);
    close_handshake(&mut alice);
    eventually("the empty room's history to be freed", || {
        metric(addr, "wshub_history_bytes") == 0
    });
    let mut alice = client(addr, "alice");
    let reply = join_room(
        &mut alice,
        ROOM,
        Some(&Position {
            offset: 1,
            ..before.clone()
        }),
    );
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    let after = position(&reply);
    assert_eq!(after.offset, 0);
    assert_ne!(after.epoch, before.epoch);
}

#[test]
fn history_memory_is_counted_and_bounded_by_the_size() {
    let addr = start(&["--history-size", "10"]);
    let mut alice = client(addr, "alice");
    join_room(&mut alice, ROOM, None);
    assert!(metric(addr, "wshub_history_bytes") < 1_000);
    let padding = "x".repeat(1_000);
    for _ in 0..10 {
        say(&mut alice, ROOM, json!(padding));
    }
    read_messages(&mut alice, ROOM, 10);
    let ten = metric(addr, "wshub_history_bytes");
    assert!(
        (10_000..20_000).contains(&ten),
        "10 messages of 1 kB: {ten} bytes"
    );
    for _ in 0..100 {
        say(&mut alice, ROOM, json!(padding));
    }
    read_messages(&mut alice, ROOM, 100);
    let after = metric(addr, "wshub_history_bytes");
    assert!(
        after <= ten + 100,
        "still 10 messages: {after} bytes, was {ten}"
    );
}

#[test]
fn a_restart_without_redis_changes_every_epoch() {
    let first = start(&[]);
    let second = start(&[]);
    let mut a = client(first, "alice");
    let mut b = client(second, "alice");
    let before = position(&join_room(&mut a, ROOM, None));
    let after = position(&join_room(&mut b, ROOM, None));
    assert_ne!(before.epoch, after.epoch);
    let reply = join_room(&mut b, ROOM, Some(&before));
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
}

#[test]
fn api_publish_to_a_room_answers_its_offset_and_epoch() {
    let addr = start(&["--api-key", KEY]);
    let mut alice = client(addr, "alice");
    let epoch = position(&join_room(&mut alice, ROOM, None)).epoch;
    let answer = publish(addr, &json!({"room": ROOM, "data": "from the api"}));
    assert_eq!(answer, json!({"delivered": 1, "offset": 1, "epoch": epoch}));
    let event = read_messages(&mut alice, ROOM, 1).remove(0);
    assert_eq!(
        (offset(&event), &event["data"]),
        (1, &json!("from the api"))
    );
    assert!(event.get("from").is_none());
    // To everyone or to a user: no position.
    let answer = publish(addr, &json!({"data": "all"}));
    assert_eq!(answer, json!({"delivered": 1}));
}

#[test]
fn with_history_off_nothing_is_numbered_and_since_is_not_recovered() {
    let addr = start(&["--history-size", "0"]);
    let mut alice = client(addr, "alice");
    let reply = join_room(&mut alice, ROOM, None);
    assert_eq!(reply["data"], json!({"count": 1}));
    say(&mut alice, ROOM, json!(1));
    let event = read_messages(&mut alice, ROOM, 1).remove(0);
    assert!(event.get("offset").is_none(), "{event}");
    let since = Position {
        epoch: "any".into(),
        offset: 0,
    };
    let reply = join_room(&mut alice, ROOM, Some(&since));
    assert_eq!(reply["data"], json!({"count": 1, "recovered": false}));
    assert_nothing_pending(&mut alice);
    assert_eq!(metric(addr, "wshub_history_bytes"), 0);
}

#[test]
fn a_malformed_since_is_400_and_the_connection_lives_on() {
    let addr = start(&[]);
    let mut alice = client(addr, "alice");
    for since in [
        r#""1""#,
        r#"{"offset":1}"#,
        r#"{"epoch":"e","offset":-1}"#,
        "[]",
    ] {
        let reply = request_json(
            &mut alice,
            &format!(r#"{{"event":"join","room":"{ROOM}","since":{since},"id":1}}"#),
        );
        assert_eq!(
            (&reply["code"], &reply["id"]),
            (&json!(400), &json!(1)),
            "{reply}"
        );
    }
    assert_nothing_pending(&mut alice);
}

#[test]
fn a_gap_larger_than_half_the_output_bound_is_not_replayed_and_the_client_stays() {
    let addr = start(&["--max-buffered", "64KiB", "--max-message-size", "16KiB"]);
    let mut alice = client(addr, "alice");
    let at_start = position(&join_room(&mut alice, ROOM, None));
    let mut bob = client(addr, "bob");
    assert_replay_bounded(&mut alice, &mut bob, ROOM, at_start);
}

#[test]
fn past_the_memory_bound_the_oldest_messages_of_any_room_go_first() {
    let addr = start(&["--history-max-memory", "64KiB"]);
    let mut alice = client(addr, "alice");
    let old = position(&join_room(&mut alice, "old", None));
    let new = position(&join_room(&mut alice, "new", None));
    let padding = "x".repeat(1_000);
    for _ in 0..40 {
        say(&mut alice, "old", json!(padding));
    }
    read_messages(&mut alice, "old", 40);
    for _ in 0..40 {
        say(&mut alice, "new", json!(padding));
    }
    read_messages(&mut alice, "new", 40);
    let held = metric(addr, "wshub_history_bytes");
    assert!(held <= 64 << 10, "{held} bytes held past the 64 KiB bound");
    let mut bob = client(addr, "bob");
    let reply = join_room(&mut bob, "old", Some(&old));
    assert_eq!(
        reply["data"]["recovered"], false,
        "the oldest went first: {reply}"
    );
    assert_eq!(position(&reply).offset, 40, "the room keeps its place");
    let reply = join_room(&mut bob, "new", Some(&new));
    assert_eq!(reply["data"]["recovered"], true, "the newest stay: {reply}");
    assert_eq!(read_messages(&mut bob, "new", 40).len(), 40);
    assert_nothing_pending(&mut bob);
}
