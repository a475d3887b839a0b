//! The cluster core driven by hand: the test plays Redis, reading the commands the core
//! writes and feeding it replies, split and pipelined at will.

use super::*;

const START: &str = "wshub";

fn settings() -> Settings {
    Settings {
        prefix: START.into(),
        instance: "i1".into(),
        presence_ttl: Duration::from_secs(5),
        presence_max_members: 1000,
        username: None,
        password: Some("pw".into()),
        db: 2,
        history_size: 0,
        history_ttl: Duration::from_secs(60),
        max_replay: 1 << 20,
    }
}

/// Every command the core wrote to `link` since the last call, as strings.
fn sent(cluster: &mut Cluster, link: Link) -> Vec<Vec<String>> {
    let bytes = cluster.transmit(link).to_vec();
    cluster.transmitted(link, bytes.len());
    let mut commands = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (reply, used) = resp::decode_one(&bytes[at..]).unwrap().unwrap();
        at += used;
        let Reply::Array(parts) = reply else {
            panic!("a command that is not an array")
        };
        commands.push(
            parts
                .iter()
                .map(|p| String::from_utf8_lossy(resp::bytes(p).unwrap()).into_owned())
                .collect(),
        );
    }
    commands
}

fn events(cluster: &mut Cluster) -> Vec<Event> {
    std::iter::from_fn(|| cluster.poll_event()).collect()
}

fn bulk(text: &str) -> String {
    format!("${}\r\n{text}\r\n", text.len())
}

/// The push Redis sends a subscriber for a message on `channel`.
fn message(channel: &str, payload: &str) -> String {
    format!(
        "*3\r\n{}{}{}",
        bulk("message"),
        bulk(channel),
        bulk(payload)
    )
}

fn ack(kind: &str, channel: &str) -> String {
    format!("*3\r\n{}{}:1\r\n", bulk(kind), bulk(channel))
}

/// What Redis answers to the handshake (AUTH, SELECT, the five SCRIPT LOADs on the commands
/// link; AUTH, SELECT and the subscriptions to `channels` on the other).
fn answer_handshake(cluster: &mut Cluster, channels: &[String], now: Instant) {
    let mut replies = String::from("+OK\r\n+OK\r\n");
    for _ in 0..6 {
        replies += &bulk(&"0".repeat(40));
    }
    cluster.receive(Link::Commands, replies.as_bytes(), now);
    let mut acks = String::from("+OK\r\n+OK\r\n");
    for channel in channels {
        acks += &ack("subscribe", channel);
    }
    cluster.receive(Link::Subscriptions, acks.as_bytes(), now);
}

/// An instance holding one connection, ann's, in `room`.
fn ann_in(room: &str) -> Snapshot {
    Snapshot {
        rooms: vec![(room.into(), 1, vec!["ann".into()])],
        users: vec!["ann".into()],
        connections: 1,
    }
}

/// A cluster that connected, registered `snapshot` and is up; returns it and the time.
fn up_with(snapshot: Snapshot) -> (Cluster, Instant) {
    let now = Instant::now();
    let mut cluster = Cluster::new(settings(), 7, now);
    cluster.handle_timeout(now);
    assert_eq!(events(&mut cluster), [Event::Connect]);
    cluster.connected(Link::Commands, now);
    assert!(events(&mut cluster).is_empty(), "waits for both links");
    cluster.connected(Link::Subscriptions, now);
    assert_eq!(events(&mut cluster), [Event::Register]);
    let handshake = sent(&mut cluster, Link::Commands);
    assert_eq!(handshake[0], ["AUTH", "pw"]);
    assert_eq!(handshake[1], ["SELECT", "2"]);
    assert_eq!(handshake.len(), 8, "AUTH, SELECT and six SCRIPT LOADs");
    assert!(handshake[2..].iter().all(|c| c[..2] == ["SCRIPT", "LOAD"]));
    assert_eq!(sent(&mut cluster, Link::Subscriptions).len(), 2);
    assert!(cluster.routes() && !cluster.is_up());

    cluster.register(snapshot);
    cluster.flush(now);
    let subscribe = sent(&mut cluster, Link::Subscriptions);
    assert_eq!(subscribe.len(), 1, "one batched SUBSCRIBE");
    assert_eq!(subscribe[0][0], "SUBSCRIBE");
    assert!(
        sent(&mut cluster, Link::Commands).is_empty(),
        "registering waits for the subscriptions"
    );
    answer_handshake(&mut cluster, &subscribe[0][1..], now);
    cluster.flush(now);
    let register = sent(&mut cluster, Link::Commands);
    assert_eq!(register.len(), 1);
    assert_eq!(register[0][0], "EVALSHA");
    assert_eq!(register[0][3..7], [START, "i1", "1000", "3000"]);
    cluster.receive(Link::Commands, b":1\r\n", now);
    assert_eq!(events(&mut cluster), [Event::Up]);
    assert!(cluster.is_up());
    (cluster, now)
}

fn up() -> (Cluster, Instant) {
    up_with(Snapshot::default())
}

#[test]
fn registering_subscribes_to_every_room_and_user_held_and_replaces_what_redis_holds() {
    let now = Instant::now();
    let mut cluster = Cluster::new(settings(), 7, now);
    cluster.handle_timeout(now);
    cluster.connected(Link::Commands, now);
    cluster.connected(Link::Subscriptions, now);
    sent(&mut cluster, Link::Commands);
    sent(&mut cluster, Link::Subscriptions);
    cluster.register(Snapshot {
        rooms: vec![("lobby".into(), 3, vec!["ann".into(), "bob".into()])],
        users: vec!["ann".into(), "bob".into()],
        connections: 3,
    });
    cluster.flush(now);
    let mut channels = sent(&mut cluster, Link::Subscriptions).remove(0);
    channels.sort();
    assert_eq!(
        channels,
        [
            "SUBSCRIBE",
            "wshub:all",
            "wshub:ctl",
            "wshub:r:lobby",
            "wshub:u:ann",
            "wshub:u:bob"
        ]
    );
    for channel in &channels[1..] {
        cluster.receive(
            Link::Subscriptions,
            ack("subscribe", channel).as_bytes(),
            now,
        );
    }
    cluster.flush(now);
    let register = sent(&mut cluster, Link::Commands).pop().unwrap();
    let mut fields: Vec<(String, String)> = register[7..]
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    fields.sort();
    let expected = [
        ("c\0lobby", "3"),
        ("m\0lobby\0ann", "1"),
        ("m\0lobby\0bob", "1"),
        ("n\0", "3"),
        ("u\0ann", "1"),
        ("u\0bob", "1"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(fields, expected);
}

#[test]
fn published_events_are_delivered_when_they_come_back_even_byte_by_byte() {
    let (mut cluster, now) = up();
    assert!(cluster.publish(&Target::All, false, b"{\"n\":1}", None));
    assert!(cluster.publish(&Target::All, true, b"\x00\x01", None));
    assert!(
        events(&mut cluster).is_empty(),
        "nothing is delivered before Redis has it"
    );
    cluster.flush(now);
    let commands = sent(&mut cluster, Link::Commands);
    assert_eq!(commands.len(), 2, "pipelined");
    assert_eq!(commands[0][..2], ["PUBLISH", "wshub:all"]);
    assert_eq!(commands[0][2], "i1 1 t\n{\"n\":1}");
    // Both PUBLISH replies and both messages back, one byte at a time.
    let replies = ":2\r\n:2\r\n";
    let pushes =
        message("wshub:all", "i1 1 t\n{\"n\":1}") + &message("wshub:all", "i1 2 b\n\u{0}\u{1}");
    for byte in replies.as_bytes() {
        cluster.receive(Link::Commands, &[*byte], now);
    }
    let mut delivered = Vec::new();
    for byte in pushes.as_bytes() {
        cluster.receive(Link::Subscriptions, &[*byte], now);
        delivered.extend(events(&mut cluster));
    }
    assert_eq!(
        delivered,
        [
            Event::Deliver {
                target: Target::All,
                except_user: None,
                binary: false,
                payload: b"{\"n\":1}".to_vec()
            },
            Event::Deliver {
                target: Target::All,
                except_user: None,
                binary: true,
                payload: vec![0, 1]
            }
        ]
    );
    assert!(cluster.echoes.is_empty(), "both came back");
    assert_eq!(cluster.stats().published, 2);
    assert_eq!(cluster.stats().received, 2);
}

#[test]
fn other_instances_events_and_presence_reach_their_audience() {
    let (mut cluster, now) = up();
    let pushes = message("wshub:r:lobby", "i2 9 t\n{\"m\":1}")
        + &message("wshub:u:ann", "i2 10 t\n{\"d\":1}")
        + &message("wshub:r:lobby", "i2 0 p\nbob\n{\"p\":1}")
        + &message("wshub:ctl", "gone i3");
    cluster.receive(Link::Subscriptions, pushes.as_bytes(), now);
    let targets: Vec<Target> = events(&mut cluster)
        .into_iter()
        .map(|event| match event {
            Event::Deliver {
                target,
                except_user,
                ..
            } => match except_user {
                Some(user) => Target::User(format!("{target:?} but {user}")),
                None => target,
            },
            Event::Reaped(gone) => Target::User(format!("reaped {gone}")),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        [
            Target::Room("lobby".into()),
            Target::User("ann".into()),
            Target::User(format!("{:?} but bob", Target::Room("lobby".into()))),
            Target::User("reaped i3".into()),
        ]
    );
}

#[test]
fn a_join_waits_for_its_subscription_and_publishes_after_it_stay_in_order() {
    let (mut cluster, now) = up();
    cluster.joined("lobby", "ann", true, true, None, 41);
    assert!(cluster.publish(&Target::Room("lobby".into()), false, b"hi", None));
    assert!(cluster.publish(&Target::All, false, b"later", None));
    cluster.flush(now);
    assert_eq!(
        sent(&mut cluster, Link::Subscriptions),
        [["SUBSCRIBE", "wshub:r:lobby"]]
    );
    assert!(
        sent(&mut cluster, Link::Commands).is_empty(),
        "nothing passes the join before this instance listens to the room"
    );
    cluster.receive(
        Link::Subscriptions,
        ack("subscribe", "wshub:r:lobby").as_bytes(),
        now,
    );
    cluster.flush(now);
    let commands = sent(&mut cluster, Link::Commands);
    assert_eq!(commands.len(), 3);
    assert_eq!(commands[0][0], "EVALSHA");
    assert_eq!(
        commands[0][6..],
        [
            "c\0lobby",
            "1",
            "m\0lobby\0ann",
            "1",
            "j\0\0\0\0\0lobby",
            "41"
        ]
    );
    assert_eq!(commands[1][..2], ["PUBLISH", "wshub:r:lobby"]);
    assert_eq!(commands[2][..2], ["PUBLISH", "wshub:all"]);
    cluster.receive(Link::Commands, b"*3\r\n:0\r\n:3\r\n:3\r\n:1\r\n:1\r\n", now);
    assert!(
        events(&mut cluster).is_empty(),
        "the script's reply answers no join"
    );
    // The join is answered at its place in the room's order: after an event published before
    // it, before one published after it. Another instance's marker is not ours.
    let pushes = message("wshub:r:lobby", "i2 5 t\nbefore")
        + &message("wshub:r:lobby", "i2 0 j\n41\n7\n")
        + &message("wshub:r:lobby", "i1 0 j\n41\n3\n")
        + &message("wshub:r:lobby", "i2 6 t\nafter");
    cluster.receive(Link::Subscriptions, pushes.as_bytes(), now);
    let happened: Vec<String> = events(&mut cluster)
        .into_iter()
        .map(|event| match event {
            Event::Deliver { payload, .. } => String::from_utf8(payload).unwrap(),
            Event::Answer { waiter, answer } => format!("{waiter}: {answer:?}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        happened,
        [
            "before",
            "41: Joined(Joined { count: 3, position: None, recovered: None, replay: [] })",
            "after"
        ]
    );
}

#[test]
fn changes_in_one_turn_are_one_script_call_and_the_last_member_unsubscribes() {
    let (mut cluster, now) = up();
    cluster.connected_user("ann", true);
    cluster.joined("lobby", "ann", true, true, None, 1);
    cluster.flush(now);
    let subscribe = sent(&mut cluster, Link::Subscriptions);
    assert_eq!(subscribe, [["SUBSCRIBE", "wshub:u:ann", "wshub:r:lobby"]]);
    for channel in ["wshub:u:ann", "wshub:r:lobby"] {
        cluster.receive(
            Link::Subscriptions,
            ack("subscribe", channel).as_bytes(),
            now,
        );
    }
    cluster.flush(now);
    let commands = sent(&mut cluster, Link::Commands);
    assert_eq!(
        commands.len(),
        1,
        "one call for the connection and the join"
    );
    assert_eq!(
        commands[0][6..],
        [
            "n\0",
            "1",
            "u\0ann",
            "1",
            "c\0lobby",
            "1",
            "m\0lobby\0ann",
            "1",
            "j\0\0\0\0\0lobby",
            "1"
        ]
    );
    cluster.disconnected("ann", &[("lobby", true, true)], true);
    cluster.flush(now);
    let mut unsubscribe = sent(&mut cluster, Link::Subscriptions).remove(0);
    unsubscribe.sort();
    assert_eq!(unsubscribe, ["UNSUBSCRIBE", "wshub:r:lobby", "wshub:u:ann"]);
    assert_eq!(
        sent(&mut cluster, Link::Commands)[0][6..],
        [
            "c\0lobby",
            "-1",
            "m\0lobby\0ann",
            "-1",
            "u\0ann",
            "-1",
            "n\0",
            "-1"
        ]
    );
}

#[test]
fn wanting_a_channel_again_before_the_flush_sends_nothing() {
    let (mut cluster, now) = up_with(ann_in("lobby"));
    cluster.quit("lobby", "ann", true, true);
    cluster.joined("lobby", "ann", true, true, None, 5);
    cluster.flush(now);
    assert!(sent(&mut cluster, Link::Subscriptions).is_empty());
    assert_eq!(
        sent(&mut cluster, Link::Commands).len(),
        1,
        "the join did not wait: the room's subscription never lapsed"
    );
}

#[test]
fn a_lost_connection_delivers_locally_what_did_not_come_back_and_answers_every_waiter() {
    let (mut cluster, now) = up_with(ann_in("lobby"));
    cluster.publish(&Target::Room("lobby".into()), false, b"sent", None);
    cluster.flush(now);
    cluster.publish(&Target::Room("lobby".into()), false, b"queued", None);
    cluster.online(None, 8);
    cluster.joined("lobby", "ann", false, false, None, 12);
    cluster.flush(now);
    cluster.closed(Link::Subscriptions, now);
    let happened = events(&mut cluster);
    assert_eq!(happened[0], Event::Disconnect);
    assert!(matches!(happened[1], Event::Down(ref why) if why.contains("subscriptions")));
    let delivered: Vec<&[u8]> = happened
        .iter()
        .filter_map(|e| match e {
            Event::Deliver { payload, .. } => Some(payload.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [&b"sent"[..], b"queued"], "in order, once each");
    for waiter in [8, 12] {
        assert!(happened.contains(&Event::Answer {
            waiter,
            answer: Answer::Failed
        }));
    }
    assert_eq!(cluster.stats().local_only, 2);
    assert!(!cluster.routes());
    // While down, events are the loop's to deliver, and counted.
    assert!(!cluster.publish(&Target::All, false, b"x", None));
    assert_eq!(cluster.stats().local_only, 3);
    // A second failure of the same outage reports nothing new.
    cluster.closed(Link::Commands, now);
    assert!(events(&mut cluster).is_empty());
}

#[test]
fn reconnects_back_off_with_jitter_and_resubscribe() {
    let (mut cluster, now) = up();
    cluster.closed(Link::Commands, now);
    events(&mut cluster);
    let first = cluster.poll_timeout() - now;
    assert!(
        first >= MIN_BACKOFF / 2 && first <= MIN_BACKOFF,
        "{first:?}"
    );
    cluster.handle_timeout(now + first);
    assert_eq!(events(&mut cluster), [Event::Connect]);
    cluster.closed(Link::Commands, now + first);
    assert_eq!(
        events(&mut cluster),
        [Event::Disconnect],
        "still down: logged once"
    );
    let second = cluster.poll_timeout() - (now + first);
    assert!(
        second >= MIN_BACKOFF && second <= 2 * MIN_BACKOFF,
        "{second:?}"
    );
    let mut delays = Vec::new();
    for _ in 0..12 {
        let at = cluster.poll_timeout();
        cluster.handle_timeout(at);
        cluster.closed(Link::Subscriptions, at);
        delays.push(cluster.poll_timeout() - at);
        events(&mut cluster);
    }
    assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
    assert!(delays.iter().rev().take(4).all(|d| *d >= MAX_BACKOFF / 2));
    delays.sort();
    delays.dedup();
    assert!(delays.len() > 6, "jittered: {delays:?}");
}

#[test]
fn a_reconnect_after_an_outage_is_counted_and_starts_from_a_new_snapshot() {
    let (mut cluster, now) = up();
    cluster.closed(Link::Commands, now);
    events(&mut cluster);
    let at = cluster.poll_timeout();
    cluster.handle_timeout(at);
    cluster.connected(Link::Commands, at);
    cluster.connected(Link::Subscriptions, at);
    assert_eq!(events(&mut cluster), [Event::Connect, Event::Register]);
    sent(&mut cluster, Link::Commands);
    sent(&mut cluster, Link::Subscriptions);
    cluster.register(ann_in("kept"));
    cluster.flush(at);
    let mut channels = sent(&mut cluster, Link::Subscriptions).remove(0);
    channels.sort();
    assert_eq!(
        channels,
        [
            "SUBSCRIBE",
            "wshub:all",
            "wshub:ctl",
            "wshub:r:kept",
            "wshub:u:ann"
        ]
    );
    answer_handshake(&mut cluster, &channels[1..], at);
    cluster.flush(at);
    sent(&mut cluster, Link::Commands);
    cluster.receive(Link::Commands, b":1\r\n", at);
    assert_eq!(events(&mut cluster), [Event::Up]);
    assert_eq!(cluster.stats().reconnects, 1);
}

#[test]
fn heartbeats_renew_and_a_lost_registration_registers_again() {
    let (mut cluster, now) = up();
    let due = cluster.poll_timeout();
    assert_eq!(due - now, Duration::from_secs(1), "a fifth of the TTL");
    cluster.handle_timeout(due);
    let beat = sent(&mut cluster, Link::Commands);
    assert_eq!(beat.len(), 1);
    assert_eq!(beat[0][3..], [START, "i1", "1000", "3000"]);
    cluster.receive(Link::Commands, b"*2\r\n:1\r\n:0\r\n", due);
    assert!(events(&mut cluster).is_empty());
    let due = cluster.poll_timeout();
    cluster.handle_timeout(due);
    sent(&mut cluster, Link::Commands);
    // Redis lost this instance's keys (flushed, or it was reaped while cut off).
    cluster.receive(Link::Commands, b"*2\r\n:0\r\n:0\r\n", due);
    assert_eq!(events(&mut cluster), [Event::Register]);
    cluster.register(Snapshot::default());
    cluster.flush(due);
    assert_eq!(
        sent(&mut cluster, Link::Commands).len(),
        1,
        "the registration"
    );
}

#[test]
fn garbage_errors_and_silence_fail_the_connection_without_panicking() {
    for (link, bytes) in [
        (Link::Commands, &b"?what\r\n"[..]),
        (Link::Commands, b"-ERR nope\r\n"),
        (Link::Commands, b":1\r\n"),
        (Link::Subscriptions, b"+OK\r\n"),
        (Link::Subscriptions, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
        (
            Link::Subscriptions,
            b"*3\r\n$4\r\nnope\r\n$1\r\na\r\n$1\r\nb\r\n",
        ),
    ] {
        let (mut cluster, now) = up();
        cluster.receive(link, bytes, now);
        let happened = events(&mut cluster);
        assert_eq!(happened.first(), Some(&Event::Disconnect), "{bytes:?}");
        assert_eq!(cluster.stats().errors, 1);
    }
    let (mut cluster, now) = up();
    cluster.receive(
        Link::Subscriptions,
        message("wshub:all", "not an envelope").as_bytes(),
        now,
    );
    assert!(
        events(&mut cluster).is_empty(),
        "a foreign message is skipped"
    );
    assert_eq!(cluster.stats().errors, 1);
    assert!(cluster.is_up());

    let (mut cluster, now) = up();
    cluster.online(Some("lobby"), 3);
    cluster.flush(now);
    cluster.handle_timeout(now + REPLY_TIMEOUT);
    let happened = events(&mut cluster);
    assert_eq!(happened[0], Event::Disconnect);
    assert!(happened.contains(&Event::Answer {
        waiter: 3,
        answer: Answer::Failed
    }));

    // A subscription Redis never confirms times out like a command.
    let (mut cluster, now) = up();
    cluster.joined("lobby", "ann", true, true, None, 9);
    cluster.flush(now);
    cluster.handle_timeout(now + REPLY_TIMEOUT);
    assert_eq!(events(&mut cluster)[0], Event::Disconnect);
}

#[test]
fn a_redis_that_does_not_read_is_given_up_on_before_memory_grows() {
    let (mut cluster, now) = up();
    let payload = vec![b'x'; 1 << 20];
    let mut published = 0;
    while cluster.publish(&Target::All, false, &payload, None) {
        published += 1;
        cluster.flush(now);
        assert!(published <= 65, "64 MiB waiting and still routing");
    }
    let happened = events(&mut cluster);
    assert_eq!(
        happened[0],
        Event::Disconnect,
        "nothing was written to Redis"
    );
    assert!(cluster.transmit(Link::Commands).is_empty());
    let delivered = happened
        .iter()
        .filter(|e| matches!(e, Event::Deliver { .. }))
        .count();
    assert_eq!(
        delivered, published,
        "what did not come back is delivered here"
    );
}

#[test]
fn online_answers_users_and_connections() {
    let (mut cluster, now) = up();
    cluster.online(Some("lobby"), 4);
    cluster.flush(now);
    assert_eq!(sent(&mut cluster, Link::Commands)[0][3..], [START, "lobby"]);
    let reply = format!("*3\r\n:5\r\n{}{}", bulk("ann"), bulk("bob"));
    cluster.receive(Link::Commands, reply.as_bytes(), now);
    assert_eq!(
        events(&mut cluster),
        [Event::Answer {
            waiter: 4,
            answer: Answer::Online {
                connections: 5,
                users: vec!["ann".into(), "bob".into()]
            }
        }]
    );
}

#[test]
fn a_direct_is_answered_by_whether_any_instance_listens_to_the_user() {
    let (mut cluster, now) = up();
    cluster.publish(&Target::User("bob".into()), false, b"d", Some(6));
    cluster.publish(&Target::User("nobody".into()), false, b"d", Some(7));
    cluster.flush(now);
    assert_eq!(sent(&mut cluster, Link::Commands).len(), 2);
    cluster.receive(Link::Commands, b":1\r\n:0\r\n", now);
    assert_eq!(
        events(&mut cluster),
        [
            Event::Answer {
                waiter: 6,
                answer: Answer::Reached(true)
            },
            Event::Answer {
                waiter: 7,
                answer: Answer::Reached(false)
            }
        ]
    );
    assert!(
        cluster.echoes.is_empty(),
        "no local listener: nothing to wait for"
    );
}
