//! Room history seen from clients (SPEC §11), for tests/history.rs (one instance) and
//! tests/cluster_history.rs (several through Redis): joining with `since`, reading offsets, and
//! the busy-room seam check.

use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Client, assert_nothing_pending, connect, next_json, request_json, send_text};

/// A room's position, as a join reply gives it: its epoch and its last offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// The position a join reply carries, asserting it has one.
pub fn position(reply: &Value) -> Position {
    let data = &reply["data"];
    Position {
        epoch: data["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch in {reply}"))
            .to_owned(),
        offset: data["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset in {reply}")),
    }
}

/// Joins `room` (with `since` when given) and returns the reply, asserting code 0.
pub fn join_room(client: &mut Client, room: &str, since: Option<&Position>) -> Value {
    let request = match since {
        Some(since) => json!({
            "event": "join",
            "room": room,
            "since": {"epoch": since.epoch, "offset": since.offset},
        }),
        None => json!({"event": "join", "room": room}),
    };
    let reply = request_json(client, &request.to_string());
    assert_eq!(
        (&reply["event"], &reply["code"]),
        (&json!("join"), &json!(0)),
        "join {room} failed: {reply}"
    );
    reply
}

/// Sends a message with `data` to `room`.
pub fn say(client: &mut Client, room: &str, data: Value) {
    send_text(
        client,
        &json!({"event": "message", "room": room, "data": data}).to_string(),
    );
}

/// Reads the next `count` room messages of `room` (skipping presence), returning them whole.
pub fn read_messages(client: &mut Client, room: &str, count: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let event = next_json(client);
        if event["event"] == "presence" {
            continue;
        }
        assert_eq!(
            (&event["event"], &event["room"]),
            (&json!("message"), &json!(room)),
            "expected a message of {room}, got {event}"
        );
        got.push(event);
    }
    got
}

/// The `offset` of a message event, asserting it has one.
pub fn offset(event: &Value) -> u64 {
    event["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {event}"))
}

/// The replay bound, on a hub started with `--max-buffered 64KiB` (a replay may queue half of
/// it): `sender`, in `room` since `at_start`, sends five 10 kB messages; `joiner`, not yet in
/// the room, asking for all of them (50 kB) is not recovered and gets nothing, asking for the
/// last three gets them.
pub fn assert_replay_bounded(
    sender: &mut Client,
    joiner: &mut Client,
    room: &str,
    at_start: Position,
) {
    let padding = "x".repeat(10_000);
    for _ in 0..5 {
        say(sender, room, json!(padding));
    }
    read_messages(sender, room, 5);
    let reply = join_room(joiner, room, Some(&at_start));
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_nothing_pending(joiner);
    let recent = Position {
        offset: 2,
        ..at_start
    };
    let reply = join_room(joiner, room, Some(&recent));
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(read_messages(joiner, room, 3).len(), 3);
    assert_nothing_pending(joiner);
}

/// A publisher in `room` on its own thread, sending `{"n": 0}`, `{"n": 1}`… (`total` of them)
/// in bursts, so the room stays busy while a reader comes and goes.
pub struct Busy {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Busy {
    /// Starts publishing once the publisher, `user` on `addr`, has joined `room`.
    pub fn start(addr: SocketAddr, user: &str, room: &str, total: u64) -> Busy {
        let mut client = connect(addr, &format!("/ws?user={user}"));
        join_room(&mut client, room, None);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let room = room.to_owned();
        let thread = std::thread::spawn(move || {
            for n in 0..total {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                say(&mut client, &room, json!({ "n": n }));
                if n % 10 == 9 {
                    // Read back what this client was sent, so its queue stays small.
                    read_messages(&mut client, &room, 10);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Busy {
            thread: Some(thread),
            stop,
        }
    }

    /// Waits for the publisher to finish, failing the test if it panicked.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the publisher thread failed");
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The busy-room seam: a reader joins `room` on `addrs[0]` (before [`Busy`] starts, so it sees
/// everything from offset 1), then reads a few dozen messages, drops its socket without a
/// close, reconnects to the next address of `addrs` and rejoins with `since` its last offset,
/// again and again until it has seen offset `total`. Asserts every rejoin recovers and every
/// message arrives exactly once and in order across every seam between a replay and the live
/// messages: offset k + 1 after k, carrying `{"n": k}`. Returns how many rejoins it made.
pub fn flapping_reader(
    addrs: &[SocketAddr],
    room: &str,
    total: u64,
    start_publisher: impl FnOnce() -> Busy,
) -> usize {
    let mut client = connect(addrs[0], "/ws?user=reader");
    let reply = join_room(&mut client, room, None);
    let mut at = position(&reply);
    assert_eq!(at.offset, 0, "a fresh room: {reply}");
    let busy = start_publisher();
    let mut rejoins = 0;
    // Uneven stretches, so the cuts fall at different places in the publisher's bursts.
    let stretches = [37, 50, 11, 73, 5, 64, 29];
    loop {
        let stretch = stretches[rejoins % stretches.len()];
        let mut read = 0;
        while read < stretch && at.offset < total {
            let event = next_json(&mut client);
            if event["event"] == "presence" {
                continue;
            }
            assert_eq!(event["event"], "message", "{event}");
            assert_eq!(
                offset(&event),
                at.offset + 1,
                "after {rejoins} rejoins, offset {} was followed by {event}",
                at.offset
            );
            assert_eq!(event["data"]["n"], json!(at.offset), "{event}");
            at.offset += 1;
            read += 1;
        }
        if at.offset == total {
            break;
        }
        client
            .get_mut()
            .shutdown(Shutdown::Both)
            .expect("drop the reader's socket");
        rejoins += 1;
        client = connect(addrs[rejoins % addrs.len()], "/ws?user=reader");
        let reply = join_room(&mut client, room, Some(&at));
        assert_eq!(
            reply["data"]["recovered"],
            json!(true),
            "rejoin {rejoins} after offset {}: {reply}",
            at.offset
        );
        assert_eq!(position(&reply).epoch, at.epoch, "{reply}");
    }
    busy.finish();
    rejoins
}
