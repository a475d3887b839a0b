//! SPEC §6, control events bounded: one client's `join`/`quit`/`online` cannot make the server
//! do work for every member of a room at its own pace (`--command-rate`), and a big room does
//! not announce each arrival to everyone (`--presence-max-members`). Issue 11, point 2, scaled
//! to run in seconds: a room of hundreds, not thousands.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

const DELIVERED: &str = "wshub_messages_delivered_total";

/// The default `--command-rate`: tokens per second, and the burst a fresh connection holds.
const COMMAND_RATE: u64 = 20;
const COMMAND_BURST: u64 = 2 * COMMAND_RATE;

/// Connects `count` users named `{prefix}{i}` and joins each to `room`, one after the other;
/// returns the clients in joining order.
fn members(addr: SocketAddr, room: &str, prefix: &str, count: usize) -> Vec<Client> {
    (0..count)
        .map(|i| {
            let mut client = connect(addr, &format!("/ws?user={prefix}{i}"));
            let reply = request_json(
                &mut client,
                &json!({"event": "join", "room": room}).to_string(),
            );
            assert_eq!(reply["code"], 0, "{prefix}{i} could not join: {reply}");
            client
        })
        .collect()
}

/// Writes `frames` (JSON texts) to `client`'s socket in one write, as one flood.
fn flood(client: &mut Client, frames: impl Iterator<Item = String>) {
    let bytes: Vec<u8> = frames
        .flat_map(|text| client_frame(0x81, text.as_bytes()))
        .collect();
    client.get_mut().write_all(&bytes).expect("write flood");
}

/// Reads `count` replies and returns how many had each code (0, 429, other).
fn reply_codes(client: &mut Client, count: usize) -> (u64, u64, u64) {
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for _ in 0..count {
        let reply = next_json(client);
        match reply["code"].as_u64() {
            Some(0) => ok += 1,
            Some(429) => {
                assert_eq!(reply["error"], "rate limited", "{reply}");
                limited += 1;
            }
            _ => other += 1,
        }
    }
    (ok, limited, other)
}

/// Sends a ping and reads (skipping whatever was queued before it) until its reply: the round
/// trip another member of the room sees while the room is being flooded.
fn ping_round_trip(client: &mut Client) -> Duration {
    let started = Instant::now();
    send_text(client, r#"{"event":"ping","id":"rtt"}"#);
    while next_json(client)["id"] != "rtt" {}
    started.elapsed()
}

#[test]
fn join_quit_toggling_in_a_big_room_is_rate_limited_and_others_stay_responsive() {
    const MEMBERS: u64 = 500;
    const TOGGLES: usize = 2_000;
    let addr = start(&["--protocol", "events"]);
    let mut room = members(addr, "big", "member", MEMBERS as usize);
    let mut toggler = connect(addr, "/ws?user=toggler");
    let before = metric(addr, DELIVERED);
    let started = Instant::now();

    flood(
        &mut toggler,
        (0..TOGGLES).flat_map(|_| {
            [
                r#"{"event":"join","room":"big"}"#.to_owned(),
                r#"{"event":"quit","room":"big"}"#.to_owned(),
            ]
        }),
    );
    let observer = room.last_mut().expect("a member");
    let round_trip = ping_round_trip(observer);
    let (ok, limited, other) = reply_codes(&mut toggler, 2 * TOGGLES);
    let elapsed = started.elapsed().as_secs_f64().ceil() as u64;
    let delivered = metric(addr, DELIVERED) - before;

    eprintln!(
        "toggling: {delivered} deliveries, {ok} accepted, {limited} refused, ping round trip {round_trip:?}"
    );
    let accepted_bound = COMMAND_BURST + COMMAND_RATE * elapsed;
    assert_eq!(other, 0, "every toggle is either done or refused");
    assert!(
        ok <= accepted_bound,
        "{ok} toggles accepted, at most {accepted_bound} expected"
    );
    assert_eq!(ok + limited, 2 * TOGGLES as u64);
    // Every request gets its reply; each accepted toggle is announced to the room; the
    // observer's ping is answered.
    let delivered_bound = 2 * TOGGLES as u64 + accepted_bound * MEMBERS + 1;
    assert!(
        delivered <= delivered_bound,
        "{delivered} deliveries for one client's toggles, at most {delivered_bound} expected"
    );
    assert!(
        round_trip < Duration::from_millis(500),
        "another member waited {round_trip:?} for a ping reply"
    );
}

#[test]
fn mass_join_past_the_presence_threshold_costs_linear_deliveries() {
    const USERS: u64 = 300;
    const THRESHOLD: u64 = 50;
    let addr = start(&[
        "--protocol",
        "events",
        "--presence-max-members",
        &THRESHOLD.to_string(),
    ]);
    let before = metric(addr, DELIVERED);
    let mut room = members(addr, "crowd", "user", USERS as usize);
    let delivered = metric(addr, DELIVERED) - before;

    eprintln!("mass join of {USERS}: {delivered} deliveries");
    // One join reply each, and presence only while the room was small: the k-th joiner is
    // announced to k - 1 members for k up to the threshold.
    let bound = USERS + THRESHOLD * (THRESHOLD - 1) / 2;
    assert!(
        delivered <= bound,
        "{delivered} deliveries for {USERS} joins, at most {bound} expected"
    );
    // Counts still answer past the threshold.
    let last = room.last_mut().expect("a member");
    let online = request_json(last, r#"{"event":"online","room":"crowd"}"#);
    assert_eq!(online["data"]["count"], USERS, "{online}");
    let late = request_json(
        &mut connect(addr, "/ws?user=late"),
        r#"{"event":"join","room":"crowd"}"#,
    );
    assert_eq!(late["data"]["count"], USERS + 1, "{late}");
    assert_nothing_pending(last);
}

#[test]
fn online_flood_is_refused_past_the_burst_but_pings_and_messages_are_not_commands() {
    const RATE: u64 = 1;
    const FLOOD: usize = 200;
    let addr = start(&["--protocol", "events", "--command-rate", &RATE.to_string()]);
    let mut others = members(addr, "lobby", "member", 20);
    let mut client = connect(addr, "/ws?user=flooder");
    let started = Instant::now();

    flood(
        &mut client,
        (0..FLOOD).map(|i| json!({"event": "online", "room": "lobby", "id": i}).to_string()),
    );
    let (ok, limited, other) = reply_codes(&mut client, FLOOD);
    let elapsed = started.elapsed().as_secs_f64().ceil() as u64;
    eprintln!("online flood: {ok} answered, {limited} refused");
    assert_eq!(other, 0);
    assert!(
        (2 * RATE..=2 * RATE + RATE * elapsed).contains(&ok),
        "{ok} online answers, the burst is {}",
        2 * RATE
    );

    // The refusal echoes the request's event and id.
    let refused = request_json(&mut client, r#"{"event":"online","id":"again"}"#);
    assert_eq!(
        refused,
        json!({"event": "online", "id": "again", "code": 429, "error": "rate limited"})
    );
    // A refused join has no effect: nobody hears of it, the room does not change.
    let refused = request_json(&mut client, r#"{"event":"join","room":"lobby"}"#);
    assert_eq!(refused["code"], 429, "{refused}");
    let member = others.last_mut().expect("a member");
    assert_nothing_pending(member);

    // Pings and messages do not draw on the command budget.
    flood(
        &mut client,
        (0..FLOOD).map(|i| json!({"event": "ping", "id": i}).to_string()),
    );
    assert_eq!(reply_codes(&mut client, FLOOD), (FLOOD as u64, 0, 0));
    flood(
        &mut client,
        (0..FLOOD).map(|i| json!({"event": "message", "data": i}).to_string()),
    );
    for i in 0..FLOOD {
        let message = next_json(member);
        assert_eq!(message["data"], i, "{message}");
    }
}

#[test]
fn small_room_still_announces_every_join_and_leave() {
    const MEMBERS: usize = 30;
    let addr = start(&["--protocol", "events"]);
    let mut room = members(addr, "team", "member", MEMBERS);
    let presence = |user: &str, state: &str| -> Value {
        json!({"event": "presence", "room": "team", "data": {"user": user, "state": state}})
    };
    for (i, client) in room.iter_mut().enumerate() {
        for later in i + 1..MEMBERS {
            assert_eq!(
                next_json(client),
                presence(&format!("member{later}"), "join")
            );
        }
    }
    let mut quitter = room.remove(0);
    let reply = request_json(&mut quitter, r#"{"event":"quit","room":"team"}"#);
    assert_eq!(reply["code"], 0, "{reply}");
    let mut leaver = room.remove(0);
    close_handshake(&mut leaver);
    for client in &mut room {
        assert_eq!(next_json(client), presence("member0", "leave"));
        assert_eq!(next_json(client), presence("member1", "leave"));
        assert_nothing_pending(client);
    }
}
