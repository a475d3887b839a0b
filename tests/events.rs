//! The `events` protocol (SPEC §5) over real sockets: every event, its reply, who else hears of
//! it, and the exact JSON each side sees.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tungstenite::Message;

use common::*;

/// How far a server timestamp may be from the test's clock: same machine, so only scheduling.
const CLOCK_SLACK_MS: u64 = 5_000;

fn unix_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds fit in u64")
}

/// Removes `ts` from `event`, asserting it is a Unix time in milliseconds close to now.
fn take_ts(event: &mut Value) -> u64 {
    let ts = event
        .as_object_mut()
        .and_then(|fields| fields.remove("ts"))
        .and_then(|ts| ts.as_u64())
        .unwrap_or_else(|| panic!("expected a numeric ts in {event}"));
    let now = unix_ms();
    assert!(
        ts.abs_diff(now) <= CLOCK_SLACK_MS,
        "ts {ts} is not near now ({now})"
    );
    ts
}

/// Joins `room` and returns the reply.
fn join(client: &mut Client, room: &str) -> Value {
    let reply = request_json(client, &json!({"event": "join", "room": room}).to_string());
    assert_eq!(reply["code"], 0, "join {room} failed: {reply}");
    reply
}

fn presence(room: &str, user: &str, state: &str) -> Value {
    json!({"event": "presence", "room": room, "data": {"user": user, "state": state}})
}

#[test]
fn ping_replies_code_0_with_the_server_time() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut reply = request_json(&mut alice, r#"{"event":"ping"}"#);
    take_ts(&mut reply);
    assert_eq!(reply, json!({"event": "ping", "code": 0}));
}

#[test]
fn join_replies_with_the_count_of_distinct_users() {
    let addr = start(&[]);
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    // With history on (the default), the room's position too (SPEC §11).
    let reply = join(&mut alice_tab1, "lobby");
    let epoch = &reply["data"]["epoch"];
    assert!(epoch.is_string(), "{reply}");
    assert_eq!(
        reply,
        json!({"event": "join", "code": 0, "room": "lobby",
               "data": {"count": 1, "epoch": epoch, "offset": 0}})
    );
    assert_eq!(join(&mut alice_tab2, "lobby")["data"]["count"], 1);
    assert_eq!(join(&mut bob, "lobby")["data"]["count"], 2);
}

#[test]
fn presence_join_goes_to_the_other_members_only() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let mut carol = connect(addr, "/ws?user=carol");
    join(&mut alice, "lobby");
    join(&mut carol, "elsewhere");
    join(&mut bob, "lobby");
    assert_eq!(next_json(&mut alice), presence("lobby", "bob", "join"));
    assert_nothing_pending(&mut alice);
    assert_nothing_pending(&mut bob);
    assert_nothing_pending(&mut carol);
}

#[test]
fn second_tab_joins_silently_and_only_the_last_tab_to_go_announces_leave() {
    let addr = start(&[]);
    let mut bob = connect(addr, "/ws?user=bob");
    join(&mut bob, "lobby");
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    join(&mut alice_tab1, "lobby");
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "join"));
    join(&mut alice_tab2, "lobby");
    assert_nothing_pending(&mut bob);
    assert_nothing_pending(&mut alice_tab1);

    close_handshake(&mut alice_tab1);
    assert_nothing_pending(&mut bob);
    close_handshake(&mut alice_tab2);
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "leave"));
}

#[test]
fn quit_replies_and_tells_the_others_the_user_left() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    join(&mut alice, "lobby");
    join(&mut bob, "lobby");
    assert_eq!(next_json(&mut alice), presence("lobby", "bob", "join"));
    assert_eq!(
        request_json(&mut bob, r#"{"event":"quit","room":"lobby"}"#),
        json!({"event": "quit", "code": 0, "room": "lobby"})
    );
    assert_eq!(next_json(&mut alice), presence("lobby", "bob", "leave"));
    assert_nothing_pending(&mut bob);
}

#[test]
fn quit_by_one_of_two_tabs_is_not_announced() {
    let addr = start(&[]);
    let mut bob = connect(addr, "/ws?user=bob");
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    join(&mut bob, "lobby");
    join(&mut alice_tab1, "lobby");
    join(&mut alice_tab2, "lobby");
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "join"));
    request_json(&mut alice_tab1, r#"{"event":"quit","room":"lobby"}"#);
    assert_nothing_pending(&mut bob);
    request_json(&mut alice_tab2, r#"{"event":"quit","room":"lobby"}"#);
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "leave"));
}

#[test]
fn quit_of_a_room_not_joined_is_404() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let reply = request_json(&mut alice, r#"{"event":"quit","room":"lobby"}"#);
    assert_eq!(reply["event"], "quit", "{reply}");
    assert_eq!(reply["code"], 404, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
}

#[test]
fn room_message_reaches_every_member_including_the_sender_with_data_verbatim() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let mut outsider = connect(addr, "/ws?user=carol");
    join(&mut alice, "lobby");
    join(&mut bob, "lobby");
    assert_eq!(next_json(&mut alice), presence("lobby", "bob", "join"));

    // Written as a client would, spacing included; a parse-and-reprint would change it
    // (2.50 → 2.5, the big integer, the escapes, the spaces).
    let data = r#"{ "price": 2.50, "big": 123456789012345678901234567890, "text": "héllo ✓ 🎉 \"q\" \u00e9",
        "nested": [1, {"deep": [null, true, -0.0, 1e3]}] }"#;
    send_text(
        &mut alice,
        &format!(r#"{{"event":"message","id":"m1","room":"lobby","data":{data}}}"#),
    );
    for (who, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let text = next_text(client);
        if who == "bob" {
            eprintln!("message as delivered: {text}");
        }
        assert!(
            text.contains(&format!(r#""data":{data}"#)),
            "{who}: data not passed through verbatim in {text}"
        );
        let mut event: Value = serde_json::from_str(&text).expect("JSON event");
        take_ts(&mut event);
        let expected_data: Value = serde_json::from_str(data).expect("JSON data");
        assert_eq!(
            event,
            json!({"event": "message", "room": "lobby", "from": "alice", "data": expected_data,
                   "offset": 1}),
            "{who}"
        );
    }
    assert_nothing_pending(&mut outsider);
    assert_nothing_pending(&mut alice);
}

#[test]
fn message_from_a_non_member_is_refused_with_403_and_delivered_to_nobody() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    join(&mut bob, "lobby");
    let reply = request_json(
        &mut alice,
        r#"{"event":"message","room":"lobby","data":"let me in"}"#,
    );
    assert_eq!(reply["event"], "message", "{reply}");
    assert_eq!(reply["code"], 403, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
    assert_nothing_pending(&mut bob);
    assert_nothing_pending(&mut alice);
}

#[test]
fn message_without_room_reaches_every_client_and_has_no_room_key() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let mut bob_tab2 = connect(addr, "/ws?user=bob");
    join(&mut bob, "lobby");
    send_text(
        &mut alice,
        r#"{"event":"message","data":{"hello":"everyone"}}"#,
    );
    for client in [&mut alice, &mut bob, &mut bob_tab2] {
        let mut event = next_json(client);
        take_ts(&mut event);
        assert_eq!(
            event,
            json!({"event": "message", "from": "alice", "data": {"hello": "everyone"}})
        );
    }
}

#[test]
fn direct_reaches_every_connection_of_the_user_and_is_acknowledged() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob_tab1 = connect(addr, "/ws?user=bob");
    let mut bob_tab2 = connect(addr, "/ws?user=bob");
    let mut carol = connect(addr, "/ws?user=carol");
    assert_eq!(
        request_json(
            &mut alice,
            r#"{"event":"direct","to":"bob","data":"psst","id":"d1"}"#
        ),
        json!({"event": "direct", "id": "d1", "code": 0})
    );
    for client in [&mut bob_tab1, &mut bob_tab2] {
        let mut event = next_json(client);
        take_ts(&mut event);
        assert_eq!(
            event,
            json!({"event": "direct", "from": "alice", "data": "psst"})
        );
    }
    assert_nothing_pending(&mut alice);
    assert_nothing_pending(&mut carol);
}

#[test]
fn direct_to_an_offline_user_is_404() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let reply = request_json(
        &mut alice,
        r#"{"event":"direct","to":"nobody","data":"hello?"}"#,
    );
    assert_eq!(reply["event"], "direct", "{reply}");
    assert_eq!(reply["code"], 404, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
}

#[test]
fn online_lists_the_distinct_users_of_a_room_or_of_everyone() {
    let addr = start(&[]);
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let _carol = connect(addr, "/ws?user=carol");
    join(&mut alice_tab1, "lobby");
    join(&mut alice_tab2, "lobby");
    join(&mut bob, "lobby");
    assert_eq!(
        request_json(&mut bob, r#"{"event":"online","room":"lobby"}"#),
        json!({"event": "online", "code": 0, "room": "lobby",
               "data": {"count": 2, "users": ["alice", "bob"]}})
    );
    assert_eq!(
        request_json(&mut bob, r#"{"event":"online"}"#),
        json!({"event": "online", "code": 0, "room": null,
               "data": {"count": 3, "users": ["alice", "bob", "carol"]}})
    );
    assert_eq!(
        request_json(&mut bob, r#"{"event":"online","room":"empty"}"#),
        json!({"event": "online", "code": 0, "room": "empty",
               "data": {"count": 0, "users": []}})
    );
}

#[test]
fn replies_and_errors_echo_string_and_number_ids() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let ping = request_json(&mut alice, r#"{"event":"ping","id":"req-1"}"#);
    assert_eq!(ping["id"], "req-1", "{ping}");
    let joined = request_json(&mut alice, r#"{"event":"join","room":"lobby","id":42}"#);
    let epoch = &joined["data"]["epoch"];
    assert_eq!(
        joined,
        json!({"event": "join", "id": 42, "code": 0, "room": "lobby",
               "data": {"count": 1, "epoch": epoch, "offset": 0}})
    );
    let online = request_json(&mut alice, r#"{"id":7.5,"event":"online"}"#);
    assert_eq!(online["id"], 7.5, "{online}");

    let not_joined = request_json(&mut alice, r#"{"event":"quit","room":"other","id":"q-9"}"#);
    assert_eq!(
        (&not_joined["event"], &not_joined["id"], &not_joined["code"]),
        (&json!("quit"), &json!("q-9"), &json!(404)),
        "{not_joined}"
    );
    let unknown = request_json(&mut alice, r#"{"event":"dance","id":3}"#);
    assert_eq!(
        (&unknown["event"], &unknown["id"], &unknown["code"]),
        (&json!("dance"), &json!(3), &json!(404)),
        "{unknown}"
    );
}

#[test]
fn malformed_json_gets_a_400_error_event_and_the_connection_stays_open() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    for garbage in [
        "{not json",
        "",
        "[1,2,3]",
        "\"event\"",
        r#"{"event":"ping""#,
        r#"{"event":5}"#,
    ] {
        let reply = request_json(&mut alice, garbage);
        assert_eq!(reply["event"], "error", "for {garbage:?}: {reply}");
        assert_eq!(reply["code"], 400, "for {garbage:?}: {reply}");
        assert!(reply["error"].is_string(), "for {garbage:?}: {reply}");
    }
    assert_nothing_pending(&mut alice);
}

#[test]
fn unknown_event_gets_404_with_its_name() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let reply = request_json(&mut alice, r#"{"event":"subscribe","room":"lobby"}"#);
    assert_eq!(reply["event"], "subscribe", "{reply}");
    assert_eq!(reply["code"], 404, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
    assert_eq!(reply.as_object().map(|o| o.len()), Some(3), "{reply}");
}

#[test]
fn binary_frame_gets_400_and_the_connection_stays_open() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    alice
        .send(Message::binary(br#"{"event":"ping"}"#.to_vec()))
        .expect("send binary");
    let reply = next_json(&mut alice);
    assert_eq!(reply["code"], 400, "{reply}");
    assert_eq!(reply["event"], "error", "{reply}");
    assert_nothing_pending(&mut alice);
}

#[test]
fn flood_of_malformed_frames_keeps_the_sender_connected_and_others_flowing_in_order() {
    const GARBAGE_FRAMES: usize = 1_000;
    const ROOM_MESSAGES: u64 = 200;
    let addr = start(&[]);
    let mut flooder = connect(addr, "/ws?user=flooder");
    let mut sender = connect(addr, "/ws?user=sender");
    let mut listener = connect(addr, "/ws?user=listener");
    join(&mut flooder, "lobby");
    join(&mut sender, "lobby");
    join(&mut listener, "lobby");
    for expected in ["sender", "listener"] {
        assert_eq!(next_json(&mut flooder)["data"]["user"], expected);
    }
    assert_eq!(next_json(&mut sender)["data"]["user"], "listener");

    let flood = std::thread::spawn(move || {
        for n in 0..GARBAGE_FRAMES {
            send_text(&mut flooder, &format!("{{garbage {n}"));
        }
        let mut errors = 0;
        let mut relayed = 0;
        for _ in 0..GARBAGE_FRAMES + ROOM_MESSAGES as usize {
            let event = next_json(&mut flooder);
            if event["event"] == "message" && event["code"].is_null() {
                relayed += 1;
            } else {
                assert_eq!(
                    (&event["event"], &event["code"]),
                    (&json!("error"), &json!(400)),
                    "{event}"
                );
                errors += 1;
            }
        }
        assert_eq!((errors, relayed), (GARBAGE_FRAMES, ROOM_MESSAGES));
        assert_nothing_pending(&mut flooder);
    });
    for seq in 0..ROOM_MESSAGES {
        send_text(
            &mut sender,
            &json!({"event": "message", "room": "lobby", "data": {"seq": seq}}).to_string(),
        );
    }
    for client in [&mut listener, &mut sender] {
        for seq in 0..ROOM_MESSAGES {
            let event = next_json(client);
            assert_eq!(event["event"], "message", "{event}");
            assert_eq!(event["data"]["seq"], seq, "out of order: {event}");
        }
    }
    flood
        .join()
        .expect("the flooder stayed connected and got every reply");
}

#[test]
fn disconnect_leaves_every_room_with_presence_leave() {
    let addr = start(&[]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    for room in ["lobby", "games"] {
        join(&mut bob, room);
        join(&mut alice, room);
        assert_eq!(next_json(&mut bob), presence(room, "alice", "join"));
    }
    // Drop the socket without a close handshake, as a crashed browser would.
    drop(alice);
    let mut leaves = vec![next_json(&mut bob), next_json(&mut bob)];
    leaves.sort_by_key(|event| event["room"].to_string());
    assert_eq!(
        leaves,
        [
            presence("games", "alice", "leave"),
            presence("lobby", "alice", "leave")
        ]
    );
    for room in ["lobby", "games"] {
        let online = request_json(
            &mut bob,
            &json!({"event": "online", "room": room}).to_string(),
        );
        assert_eq!(online["data"]["users"], json!(["bob"]), "{online}");
    }
    let everyone = request_json(&mut bob, r#"{"event":"online"}"#);
    assert_eq!(everyone["data"]["users"], json!(["bob"]), "{everyone}");
}

#[test]
fn disconnect_announces_leave_only_where_it_was_the_users_last_connection() {
    let addr = start(&[]);
    let mut bob = connect(addr, "/ws?user=bob");
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    join(&mut bob, "lobby");
    join(&mut bob, "games");
    join(&mut alice_tab1, "lobby");
    join(&mut alice_tab1, "games");
    join(&mut alice_tab2, "games");
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "join"));
    assert_eq!(next_json(&mut bob), presence("games", "alice", "join"));
    drop(alice_tab1);
    // alice is still in games through her second tab: only lobby hears she left.
    assert_eq!(next_json(&mut bob), presence("lobby", "alice", "leave"));
    assert_nothing_pending(&mut bob);
    assert_nothing_pending(&mut alice_tab2);
}

#[test]
fn relayed_event_over_the_size_limit_is_refused_with_413() {
    const LIMIT: usize = 1024;
    let addr = start(&["--max-message-size", "1KiB"]);
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    join(&mut alice, "r");
    join(&mut bob, "r");
    assert_eq!(next_json(&mut alice), presence("r", "bob", "join"));

    // The frame itself fits the limit; the relayed event adds `from` and `ts` and would not.
    let frame_for = |padding: usize| {
        format!(
            r#"{{"event":"message","room":"r","id":1,"data":"{}"}}"#,
            "x".repeat(padding)
        )
    };
    let overhead = frame_for(0).len();
    let too_big = frame_for(LIMIT - overhead);
    assert_eq!(too_big.len(), LIMIT);
    let reply = request_json(&mut alice, &too_big);
    assert_eq!(
        (&reply["event"], &reply["id"], &reply["code"]),
        (&json!("message"), &json!(1), &json!(413)),
        "{reply}"
    );
    assert_nothing_pending(&mut bob);

    // Well under the limit it flows again on the same connection.
    let fits = frame_for(LIMIT / 2);
    send_text(&mut alice, &fits);
    for client in [&mut alice, &mut bob] {
        let event = next_json(client);
        assert_eq!(
            event["data"].as_str().map(str::len),
            Some(LIMIT / 2),
            "{event}"
        );
    }
}

#[test]
fn anonymous_users_get_distinct_random_anon_names() {
    let addr = start(&[]);
    let mut first = connect(addr, "/ws");
    let _second = connect(addr, "/ws");
    let online = request_json(&mut first, r#"{"event":"online"}"#);
    let users: Vec<&str> = online["data"]["users"]
        .as_array()
        .expect("users list")
        .iter()
        .map(|user| user.as_str().expect("user name"))
        .collect();
    assert_eq!(users.len(), 2, "{online}");
    assert_ne!(users[0], users[1]);
    for user in users {
        assert_anonymous_id(user);
    }
}
