//! Several wshub instances joined through Redis, when something fails (SPEC §10, issue 12 item
//! 3): an instance killed with SIGKILL drops out of the hub within `--redis-presence-ttl`; Redis
//! killed in the middle of traffic, restarted, flushed, never there at start-up, or answering
//! garbage: every instance keeps serving its own clients, says so on `/healthz`, counts what
//! could not cross, and comes back (resubscribed, its users re-registered) with Redis.
//!
//! Redis comes from `WSHUB_REDIS_SERVER` (default `redis-server`); without it these tests skip,
//! or fail when `CI=true` (install: `sudo bash scripts/test-deps.sh`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use common::redis::*;
use common::*;

/// How long after the event the tests accept a TTL-bound outcome: the TTL itself, plus as much
/// again for scheduling on a loaded two-core machine.
const TTL_BOUND: Duration = Duration::from_secs(2 * PRESENCE_TTL.as_secs());

fn count_lines(node: &Daemon, needle: &str) -> usize {
    node.log()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

/// Asserts the next event of `conn` is room message `seq` from `by`.
fn expect_room_message(conn: &mut Conn, by: &str, seq: u64) {
    assert_eq!(
        read_room_messages(conn, 1),
        [(by.to_owned(), seq)],
        "{}",
        conn.name()
    );
}

/// Waits, from `since`, at most [`TTL_BOUND`] until `/api/online[?room]` of `addr` lists exactly
/// `users`; returns how long after `since` it did.
fn users_within_ttl(
    addr: SocketAddr,
    room: Option<&str>,
    users: &[String],
    since: Instant,
) -> Duration {
    let limit = TTL_BOUND.saturating_sub(since.elapsed());
    within(&format!("{room:?} online on {addr}"), limit, || {
        let got = api_users(addr, room);
        if got == users {
            Ok(())
        } else {
            Err(format!("{got:?}, expected {users:?}"))
        }
    });
    since.elapsed()
}

// ---- SIGKILL of an instance ----

fn sigkill_of_an_instance_drops_its_users_everywhere_within_the_presence_ttl(n: usize) {
    let Some(cluster) = Cluster::start(n, &[]) else {
        return;
    };
    let victim = n - 1;
    let mut survivors: Vec<Conn> = (0..victim)
        .map(|k| Conn::open(&cluster, k, &format!("u{k}")))
        .collect();
    survivors.push(Conn::open(&cluster, 0, "tabs"));
    // carol lives only on the victim; `tabs` also has a tab there; dave is in no room.
    let mut doomed = [
        Conn::open(&cluster, victim, "carol"),
        Conn::open(&cluster, victim, "tabs"),
    ];
    let _dave = Conn::open(&cluster, victim, "dave");
    join_all(
        ROOM,
        &mut survivors
            .iter_mut()
            .chain(doomed.iter_mut())
            .collect::<Vec<_>>(),
    );
    let mut staying: Vec<String> = (0..victim).map(|k| format!("u{k}")).collect();
    staying.push("tabs".to_owned());
    let with = |extra: &[&str]| {
        let mut users = staying.clone();
        users.extend(extra.iter().map(|user| (*user).to_owned()));
        users.sort();
        users
    };
    wait_users_everywhere(&cluster, Some(ROOM), &with(&["carol"]));
    wait_users_everywhere(&cluster, None, &with(&["carol", "dave"]));

    let killed = Instant::now();
    cluster.nodes[victim].signal(libc::SIGKILL);
    for conn in &mut survivors {
        assert_eq!(
            next_json(&mut conn.client),
            presence(ROOM, "carol", "leave"),
            "{}",
            conn.name()
        );
        let after = killed.elapsed();
        eprintln!(
            "SIGKILL ({n} instances): {} got carol's leave {after:?} after the kill",
            conn.name()
        );
        assert!(
            after <= TTL_BOUND,
            "{}: leave came {after:?} after the kill (--redis-presence-ttl {PRESENCE_TTL:?})",
            conn.name()
        );
    }
    for node in 0..victim {
        let addr = cluster.addr(node);
        let room = users_within_ttl(addr, Some(ROOM), &with(&[]), killed);
        let all = users_within_ttl(addr, None, &with(&[]), killed);
        eprintln!(
            "SIGKILL ({n} instances): gone from {}'s room list {room:?} and online list {all:?} \
             after the kill",
            instance_id(node)
        );
    }

    // The hub goes on without the dead instance: counts, presence and delivery.
    let mut eve = Conn::open(&cluster, 0, "eve");
    let reply = join(&mut eve.client, ROOM);
    assert_eq!(reply["data"]["count"], staying.len() + 1, "{reply}");
    expect_presence(&mut survivors, "eve", "join");
    survivors.push(eve);
    send_text(&mut survivors[0].client, &room_message("u0", 0));
    for conn in &mut survivors {
        expect_room_message(conn, "u0", 0);
    }
    assert_quiet(&mut survivors);
}

#[test]
fn sigkill_of_an_instance_drops_its_users_everywhere_within_the_presence_ttl_2_instances() {
    sigkill_of_an_instance_drops_its_users_everywhere_within_the_presence_ttl(2);
}

#[test]
fn sigkill_of_an_instance_drops_its_users_everywhere_within_the_presence_ttl_3_instances() {
    sigkill_of_an_instance_drops_its_users_everywhere_within_the_presence_ttl(3);
}

/// A clean shutdown does not wait for the TTL: the instance withdraws its users from the hub
/// while it drains, so the others hear the `leave` at once.
#[test]
fn sigterm_of_an_instance_withdraws_its_users_at_once() {
    let Some(mut cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut stay = Conn::open(&cluster, 0, "stay");
    let mut going = Conn::open(&cluster, 1, "going");
    join_all(ROOM, &mut [&mut stay, &mut going]);
    wait_users_everywhere(
        &cluster,
        Some(ROOM),
        &["going".to_owned(), "stay".to_owned()],
    );
    let stopped = Instant::now();
    cluster.nodes[1].signal(libc::SIGTERM);
    assert_eq!(
        next_json(&mut stay.client),
        presence(ROOM, "going", "leave")
    );
    let after = stopped.elapsed();
    eprintln!("SIGTERM: the leave came {after:?} after the signal");
    // Reaping takes at least three heartbeat periods (3/5 of the TTL) after the last one.
    assert!(
        after < PRESENCE_TTL / 5,
        "{after:?}: as slow as the TTL ({PRESENCE_TTL:?})"
    );
    assert_eq!(api_users(cluster.addr(0), None), ["stay"]);
    assert_eq!(cluster.nodes[1].wait_exit(TIMEOUT), Some(0));
}

// ---- Redis killed in the middle of traffic, then restarted ----

/// Reads `conn` until it stays silent for [`QUIET`]; returns every event.
fn drain(conn: &mut Conn) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(event) = next_json_within(&mut conn.client, QUIET) {
        events.push(event);
    }
    events
}

fn probe(by: &str, round: u64) -> String {
    json!({"event": "message", "room": ROOM, "data": {"by": by, "probe": round}}).to_string()
}

fn is_probe(event: &Value) -> bool {
    event["event"] == "message" && event["room"] == ROOM && event["data"]["probe"].is_u64()
}

/// Sends probes to the room from `sender` until each of `receivers` got one: the instances
/// resubscribe asynchronously after Redis comes back.
fn probe_until_everyone_hears(sender: &mut Conn, receivers: &mut [&mut Conn]) {
    let deadline = Instant::now() + TIMEOUT;
    let mut heard = vec![false; receivers.len()];
    let by = sender.user.clone();
    let mut round = 0;
    while heard.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "no probe from {} reached {:?} within {TIMEOUT:?} of Redis coming back",
            sender.name(),
            receivers
                .iter()
                .zip(&heard)
                .filter(|(_, heard)| !**heard)
                .map(|(conn, _)| conn.name())
                .collect::<Vec<_>>()
        );
        send_text(&mut sender.client, &probe(&by, round));
        round += 1;
        for (conn, heard) in receivers.iter_mut().zip(heard.iter_mut()) {
            while let Some(event) = next_json_within(&mut conn.client, Duration::from_millis(50)) {
                assert!(is_probe(&event), "{}: unexpected {event}", conn.name());
                *heard = true;
            }
        }
    }
}

fn redis_killed_in_the_middle_of_traffic_then_restarted(n: usize) {
    const IN_FLIGHT: u64 = 300;
    let Some(mut cluster) = Cluster::start(n, &[]) else {
        return;
    };
    let last = n - 1;
    // a<k> and b<k> on instance k, all in the room.
    let mut members: Vec<Conn> = (0..n)
        .flat_map(|k| {
            [
                Conn::open(&cluster, k, &format!("a{k}")),
                Conn::open(&cluster, k, &format!("b{k}")),
            ]
        })
        .collect();
    join_all(ROOM, &mut members.iter_mut().collect::<Vec<_>>());
    send_text(&mut members[0].client, &room_message("a0", 0));
    for conn in &mut members {
        expect_room_message(conn, "a0", 0);
    }
    let reconnects_before: Vec<u64> = (0..n)
        .map(|k| metric_total(cluster.addr(k), "wshub_redis_reconnects_total"))
        .collect();
    let connected_before: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|node| {
            node.wait_for_line("redis: connected");
            count_lines(node, "redis: connected")
        })
        .collect();

    // Two senders on different instances pipeline messages; Redis dies under them.
    let senders = [0, 2 * last + 1];
    for seq in 1..=IN_FLIGHT {
        for &i in &senders {
            let by = members[i].user.clone();
            members[i]
                .client
                .write(Message::text(room_message(&by, seq)))
                .expect("queue message");
        }
    }
    for &i in &senders {
        members[i].client.flush().expect("send messages");
    }
    cluster.redis.kill();
    let killed = Instant::now();
    let names: Vec<String> = senders.iter().map(|&i| members[i].user.clone()).collect();
    for conn in &mut members {
        let events = drain(conn);
        for name in &names {
            let seqs: Vec<u64> = events
                .iter()
                .filter(|event| event["from"] == json!(name))
                .map(|event| event["data"]["seq"].as_u64().expect("seq"))
                .collect();
            assert!(
                seqs.windows(2).all(|pair| pair[0] < pair[1]),
                "{}: messages of {name} duplicated or reordered across the outage: {seqs:?}",
                conn.name()
            );
            eprintln!(
                "outage ({n} instances): {} got {} of {IN_FLIGHT} in-flight messages of {name}",
                conn.name(),
                seqs.len()
            );
        }
        assert_eq!(
            events.len(),
            events
                .iter()
                .filter(|event| event["event"] == "message" && event["room"] == ROOM)
                .count(),
            "{}: only room messages expected: {events:?}",
            conn.name()
        );
    }

    for node in &cluster.nodes {
        wait_health(node, DEGRADED);
        assert_eq!(metric_total(node.addr, "wshub_redis_up"), 0);
        node.wait_for_line("redis: unavailable");
    }
    eprintln!(
        "outage ({n} instances): every instance degraded {:?} after the kill",
        killed.elapsed()
    );

    // Each instance serves its own clients: room messages, directs, presence.
    let mut joined_meanwhile = Vec::new();
    for k in 0..n {
        let addr = cluster.addr(k);
        let (a, b) = (2 * k, 2 * k + 1);
        let a_name = members[a].user.clone();
        let b_name = members[b].user.clone();
        let local_only_before = metric_total(addr, "wshub_redis_local_only_total");
        send_text(&mut members[a].client, &room_message(&a_name, 1_000));
        expect_room_message(&mut members[a], &a_name, 1_000);
        expect_room_message(&mut members[b], &a_name, 1_000);
        within(
            "wshub_redis_local_only_total counts the local-only message",
            TIMEOUT,
            || {
                let now = metric_total(addr, "wshub_redis_local_only_total");
                if now > local_only_before {
                    Ok(())
                } else {
                    Err(format!("{now}"))
                }
            },
        );
        let reply = request_json(
            &mut members[b].client,
            &json!({"event": "direct", "to": a_name, "data": "local"}).to_string(),
        );
        assert_eq!(reply, json!({"event": "direct", "code": 0}));
        assert_eq!(
            without_ts(next_json(&mut members[a].client)),
            json!({"event": "direct", "from": b_name, "data": "local"})
        );
        let mut newcomer = Conn::open(&cluster, k, &format!("c{k}"));
        join(&mut newcomer.client, ROOM);
        for i in [a, b] {
            assert_eq!(
                next_json(&mut members[i].client),
                presence(ROOM, &newcomer.user, "join"),
                "{}",
                members[i].name()
            );
        }
        joined_meanwhile.push(newcomer);
    }
    assert_quiet(members.iter_mut().chain(joined_meanwhile.iter_mut()));
    members.extend(joined_meanwhile);

    // Redis comes back empty: the instances reconnect, resubscribe and re-register.
    cluster.redis.restart();
    let restarted = Instant::now();
    for (k, node) in cluster.nodes.iter().enumerate() {
        wait_redis_up(node);
        assert_eq!(metric_total(node.addr, "wshub_redis_up"), 1);
        let reconnects = metric_total(node.addr, "wshub_redis_reconnects_total");
        assert!(
            reconnects > reconnects_before[k],
            "{}: wshub_redis_reconnects_total stayed {reconnects}",
            instance_id(k)
        );
        node.wait_for_line("redis: connected");
        within("the reconnection logged", TIMEOUT, || {
            match count_lines(node, "redis: connected") {
                c if c == connected_before[k] + 1 => Ok(()),
                c => Err(format!(
                    "{c} `redis: connected` lines, {} before",
                    connected_before[k]
                )),
            }
        });
        assert_eq!(
            count_lines(node, "redis: unavailable"),
            1,
            "{}: one `redis: unavailable` line per outage, not one per retry:\n{}",
            instance_id(k),
            node.log()
        );
    }
    eprintln!(
        "outage ({n} instances): every instance reconnected {:?} after the restart",
        restarted.elapsed()
    );
    // From the first instance to the others, and from the last to the others.
    for sender_index in senders {
        let mut sender = members.remove(sender_index);
        let node = sender.node;
        probe_until_everyone_hears(
            &mut sender,
            &mut members
                .iter_mut()
                .filter(|conn| conn.node != node)
                .collect::<Vec<_>>(),
        );
        members.insert(sender_index, sender);
    }
    for conn in &mut members {
        for event in drain(conn) {
            assert!(is_probe(&event), "{}: unexpected {event}", conn.name());
        }
    }
    eprintln!(
        "outage ({n} instances): cross-instance delivery back {:?} after the restart",
        restarted.elapsed()
    );

    // Every user is registered again, as a newly started instance sees.
    let mut users: Vec<String> = members.iter().map(|conn| conn.user.clone()).collect();
    users.sort();
    cluster.add(&[]);
    wait_users_everywhere(&cluster, None, &users);
    wait_users_everywhere(&cluster, Some(ROOM), &users);

    // Exactly once again, from the last instance to every member everywhere.
    let by = members[2 * last + 1].user.clone();
    send_text(&mut members[2 * last + 1].client, &room_message(&by, 2_000));
    for conn in &mut members {
        expect_room_message(conn, &by, 2_000);
    }
    assert_quiet(&mut members);
    for (k, node) in cluster.nodes.iter_mut().enumerate() {
        assert_eq!(
            node.child.try_wait().expect("try_wait"),
            None,
            "{} exited",
            instance_id(k)
        );
    }
}

#[test]
fn redis_killed_in_the_middle_of_traffic_then_restarted_2_instances() {
    redis_killed_in_the_middle_of_traffic_then_restarted(2);
}

#[test]
fn redis_killed_in_the_middle_of_traffic_then_restarted_3_instances() {
    redis_killed_in_the_middle_of_traffic_then_restarted(3);
}

// ---- FLUSHALL ----

#[test]
fn redis_flushall_is_repaired_within_the_presence_ttl() {
    let Some(mut cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut members = vec![
        Conn::open(&cluster, 0, "alice"),
        Conn::open(&cluster, 1, "bob"),
    ];
    let mut dave = Conn::open(&cluster, 1, "dave");
    join_all(ROOM, &mut members.iter_mut().collect::<Vec<_>>());
    let in_room = vec!["alice".to_owned(), "bob".to_owned()];
    let connected = vec!["alice".to_owned(), "bob".to_owned(), "dave".to_owned()];
    wait_users_everywhere(&cluster, None, &connected);
    wait_users_everywhere(&cluster, Some(ROOM), &in_room);

    cluster.redis.flushall();
    let flushed = Instant::now();
    // A fresh instance knows only what is in Redis: the others must have noticed and
    // re-registered their users and rooms.
    let fresh = cluster.add(&[]);
    let addr = cluster.addr(fresh);
    let all = users_within_ttl(addr, None, &connected, flushed);
    let room = users_within_ttl(addr, Some(ROOM), &in_room, flushed);
    eprintln!("FLUSHALL: online re-registered {all:?}, room members {room:?} after the flush");
    for node in 0..2 {
        users_within_ttl(cluster.addr(node), None, &connected, flushed);
        users_within_ttl(cluster.addr(node), Some(ROOM), &in_room, flushed);
    }

    let mut eve = Conn::open(&cluster, fresh, "eve");
    assert_eq!(join(&mut eve.client, ROOM)["data"]["count"], 3);
    expect_presence(&mut members, "eve", "join");
    let reply = request_json(
        &mut eve.client,
        r#"{"event":"direct","to":"dave","data":"still there?"}"#,
    );
    assert_eq!(reply, json!({"event": "direct", "code": 0}));
    assert_eq!(
        without_ts(next_json(&mut dave.client)),
        json!({"event": "direct", "from": "eve", "data": "still there?"})
    );
    // Users who never left are not announced as leaving or joining again.
    assert_quiet(members.iter_mut().chain([&mut dave, &mut eve]));
}

// ---- a "Redis" that answers garbage ----

/// A TCP server on a free port that answers every connection with one of `answers` (in turn),
/// at once and after every read, whatever it was sent.
struct FakeRedis {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRedis {
    fn start(answers: Vec<Vec<u8>>) -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake redis");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            let answers = Arc::new(answers);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let n = accepted.fetch_add(1, Ordering::Relaxed);
                            let answers = Arc::clone(&answers);
                            let stop = Arc::clone(&stop);
                            std::thread::spawn(move || {
                                answer_garbage(stream, &answers[n % answers.len()], &stop);
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("fake redis accept: {e}"),
                    }
                }
            })
        };
        FakeRedis {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_garbage(mut stream: TcpStream, answer: &[u8], stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(answer).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if stream.write_all(answer).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Bytes from a fixed-seed xorshift, so a failure can be replayed.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn redis_answering_garbage_never_crashes_and_local_clients_are_served() {
    if RedisServer::program().is_none() {
        return;
    }
    let answers: Vec<Vec<u8>> = vec![
        b"-ERR no\r\n".to_vec(),
        noise(4096),
        b"$999999999999999999\r\nxx".to_vec(),
        b"*1\r\n".repeat(100_000),
        b"+OK\r\n:-1\r\n*-1\r\n$-1\r\n$-5\r\n*x\r\n".to_vec(),
        b"*3\r\n$7\r\nmessage\r\n$5\r\nwshub\r\n$3\r\n{x}\r\n>3\r\n$7\r\nmessage\r\n".to_vec(),
    ];
    let kinds = answers.len();
    let fake = FakeRedis::start(answers);
    let mut node = instance(&format!("redis://{}", fake.addr), "a", &[]);
    within(
        "the instance to try every garbage answer",
        TIMEOUT,
        || match fake.accepted.load(Ordering::Relaxed) {
            n if n >= kinds => Ok(()),
            n => Err(format!("{n} connections of {kinds}")),
        },
    );
    assert_eq!(
        node.child.try_wait().expect("try_wait"),
        None,
        "wshub exited on garbage from Redis; log:\n{}",
        node.log()
    );
    wait_health(&node, DEGRADED);
    assert_eq!(metric_total(node.addr, "wshub_redis_up"), 0);
    within(
        "wshub_redis_errors_total counts the garbage",
        TIMEOUT,
        || match metric_total(node.addr, "wshub_redis_errors_total") {
            0 => Err("0".to_owned()),
            _ => Ok(()),
        },
    );

    let mut alice = Conn::open_at(node.addr, 0, "alice");
    let mut bob = Conn::open_at(node.addr, 0, "bob");
    join_all(ROOM, &mut [&mut alice, &mut bob]);
    send_text(&mut bob.client, &room_message("bob", 0));
    expect_room_message(&mut alice, "bob", 0);
    expect_room_message(&mut bob, "bob", 0);
    assert_eq!(
        request_json(
            &mut alice.client,
            r#"{"event":"direct","to":"bob","data":"hi"}"#
        ),
        json!({"event": "direct", "code": 0})
    );
    assert_eq!(
        without_ts(next_json(&mut bob.client)),
        json!({"event": "direct", "from": "alice", "data": "hi"})
    );
    assert_quiet([&mut alice, &mut bob]);
    assert_eq!(node.child.try_wait().expect("try_wait"), None);
}

// ---- no Redis at start-up ----

#[test]
fn unreachable_redis_at_start_up_serves_locally_then_joins_the_hub_when_redis_appears() {
    if RedisServer::program().is_none() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let first = instance(&url, "a", &[]);
    wait_health(&first, DEGRADED);
    assert_eq!(metric_total(first.addr, "wshub_redis_up"), 0);

    let mut alice = Conn::open_at(first.addr, 0, "alice");
    let mut bob = Conn::open_at(first.addr, 0, "bob");
    join_all(ROOM, &mut [&mut alice, &mut bob]);
    let local_only_before = metric_total(first.addr, "wshub_redis_local_only_total");
    send_text(&mut alice.client, &room_message("alice", 0));
    expect_room_message(&mut alice, "alice", 0);
    expect_room_message(&mut bob, "alice", 0);
    within(
        "the local-only message counted",
        TIMEOUT,
        || match metric_total(first.addr, "wshub_redis_local_only_total") {
            now if now > local_only_before => Ok(()),
            now => Err(format!("{now}")),
        },
    );

    let Some(redis) = RedisServer::start_at(port) else {
        return;
    };
    let appeared = Instant::now();
    wait_redis_up(&first);
    first.wait_for_line("redis: connected");
    eprintln!(
        "late Redis: connected {:?} after it appeared",
        appeared.elapsed()
    );

    // A second instance sees alice and bob, and reaches them in their room.
    let second = instance(&redis.url(), "b", &[]);
    wait_redis_up(&second);
    let mut carol = Conn::open_at(second.addr, 1, "carol");
    within(
        "alice and bob registered once Redis appeared",
        TIMEOUT,
        || match api_users(second.addr, Some(ROOM)) {
            users if users == ["alice", "bob"] => Ok(()),
            users => Err(format!("{users:?}")),
        },
    );
    assert_eq!(join(&mut carol.client, ROOM)["data"]["count"], 3);
    expect_presence([&mut alice, &mut bob], "carol", "join");
    send_text(&mut carol.client, &room_message("carol", 0));
    for conn in [&mut alice, &mut bob, &mut carol] {
        expect_room_message(conn, "carol", 0);
    }
    assert_quiet([&mut alice, &mut bob, &mut carol]);
}

// ---- the Redis the tests start ----

#[test]
fn redis_helper_restarts_an_empty_redis_on_the_same_port() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    assert_eq!(redis.command(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(redis.channels("*"), Vec::<String>::new());
    redis.kill();
    assert!(!redis.ping(), "Redis still answers after kill()");
    assert!(
        TcpStream::connect(("127.0.0.1", redis.port())).is_err(),
        "port {} still accepts connections after kill()",
        redis.port()
    );
    redis.restart();
    assert!(redis.ping());
    assert_eq!(
        redis.command(&["GET", "k"]),
        "$-1\r\n",
        "a restart must lose every key, as the outage tests assume"
    );
    redis.command(&["SET", "k", "v"]);
    redis.flushall();
    assert_eq!(redis.keys("*"), Vec::<String>::new());
}
