//! Room history through Redis (SPEC §11 with §10, issue 13): several instances number a room's
//! messages as one (the same offsets for every recipient on every instance), a client recovers
//! on another instance than the one it left, the seam between replay and live messages holds
//! while the room is busy and the reader hops between instances, and while Redis is down there
//! is no history at all. Each test runs its own `redis-server`; without it these tests skip, or
//! fail when `CI=true` (install: `sudo bash scripts/test-deps.sh`).

mod common;

use serde_json::{Value, json};

use common::history::*;
use common::redis::*;
use common::*;

fn client(cluster: &Cluster, node: usize, user: &str) -> Client {
    connect(cluster.addr(node), &format!("/ws?user={user}"))
}

/// Joins ROOM on `node` and waits until every instance counts the user in it, so that what
/// follows is ordered after the join everywhere.
fn joined(cluster: &Cluster, client: &mut Client, users: &[&str]) -> Value {
    let reply = join_room(client, ROOM, None);
    wait_users_everywhere(cluster, Some(ROOM), &strings(users));
    reply
}

#[test]
fn every_recipient_on_every_instance_gets_the_same_offsets_from_messages_sent_anywhere() {
    let Some(cluster) = Cluster::start(3, &[]) else {
        return;
    };
    let mut clients: Vec<Client> = (0..3)
        .map(|node| client(&cluster, node, &format!("u{node}")))
        .collect();
    let mut epochs = Vec::new();
    for (node, c) in clients.iter_mut().enumerate() {
        let users: Vec<String> = (0..=node).map(|k| format!("u{k}")).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        epochs.push(position(&joined(&cluster, c, &users)).epoch);
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );
    // Pipelined from every instance at once, without waiting.
    for round in 0..20 {
        for (node, c) in clients.iter_mut().enumerate() {
            say(c, ROOM, json!({"node": node, "round": round}));
        }
    }
    let got: Vec<Vec<Value>> = clients
        .iter_mut()
        .map(|c| read_messages(c, ROOM, 60))
        .collect();
    let offsets: Vec<u64> = got[0].iter().map(offset).collect();
    assert_eq!(offsets, (1..=60).collect::<Vec<u64>>());
    assert_eq!(
        got[0], got[1],
        "instance a and b delivered different events"
    );
    assert_eq!(
        got[0], got[2],
        "instance a and c delivered different events"
    );
}

#[test]
fn a_client_recovers_on_another_instance_than_the_one_it_left() {
    let Some(cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut alice = client(&cluster, 0, "alice");
    let mut bob = client(&cluster, 0, "bob");
    joined(&cluster, &mut alice, &["alice"]);
    let mut seen = position(&joined(&cluster, &mut bob, &["alice", "bob"]));
    say(&mut alice, ROOM, json!("one"));
    seen.offset = offset(&read_messages(&mut bob, ROOM, 1)[0]);
    close_handshake(&mut bob);
    for text in ["two", "three"] {
        say(&mut alice, ROOM, json!(text));
    }
    let sent = read_messages(&mut alice, ROOM, 3);

    let mut bob = client(&cluster, 1, "bob");
    let reply = join_room(&mut bob, ROOM, Some(&seen));
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(
        position(&reply),
        Position {
            offset: 3,
            ..seen.clone()
        }
    );
    assert_eq!(read_messages(&mut bob, ROOM, 2), sent[1..].to_vec());
    say(&mut alice, ROOM, json!("four"));
    assert_eq!(offset(&read_messages(&mut bob, ROOM, 1)[0]), 4);
    assert_nothing_pending(&mut bob);
}

#[test]
fn the_seam_holds_through_redis_while_the_room_is_busy_and_the_reader_hops_between_instances() {
    let Some(cluster) = Cluster::start(2, &["--history-size", "5000"]) else {
        return;
    };
    let addrs = [cluster.addr(0), cluster.addr(1)];
    let total = 3_000;
    let rejoins = flapping_reader(&addrs, ROOM, total, || {
        Busy::start(addrs[0], "publisher", ROOM, total)
    });
    assert!(
        rejoins >= 20,
        "only {rejoins} rejoins: the test cut too rarely"
    );
}

#[test]
fn api_publish_through_redis_answers_the_offset_redis_gave() {
    let Some(cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut alice = client(&cluster, 1, "alice");
    let epoch = position(&joined(&cluster, &mut alice, &["alice"])).epoch;
    for expected in 1..=2 {
        let answer = api_publish(
            cluster.addr(0),
            &json!({"room": ROOM, "data": expected}).to_string(),
        );
        assert_eq!(
            answer,
            json!({"delivered": 0, "offset": expected, "epoch": epoch})
        );
        let event = read_messages(&mut alice, ROOM, 1).remove(0);
        assert_eq!(
            (offset(&event), &event["data"]),
            (expected, &json!(expected))
        );
    }
}

#[test]
fn trimmed_or_expired_messages_in_redis_are_not_recovered() {
    let Some(cluster) = Cluster::start(2, &["--history-size", "3", "--history-ttl", "2s"]) else {
        return;
    };
    let mut alice = client(&cluster, 0, "alice");
    let at_start = position(&joined(&cluster, &mut alice, &["alice"]));
    for n in 1..=5 {
        say(&mut alice, ROOM, json!(n));
    }
    read_messages(&mut alice, ROOM, 5);
    let since = |offset| Position {
        epoch: at_start.epoch.clone(),
        offset,
    };
    let mut bob = client(&cluster, 1, "bob");
    let reply = join_room(&mut bob, ROOM, Some(&since(1)));
    assert_eq!(reply["data"]["recovered"], false, "trimmed: {reply}");
    assert_nothing_pending(&mut bob);
    let reply = join_room(&mut bob, ROOM, Some(&since(2)));
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    let replay: Vec<u64> = read_messages(&mut bob, ROOM, 3)
        .iter()
        .map(offset)
        .collect();
    assert_eq!(replay, [3, 4, 5]);

    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let reply = join_room(&mut bob, ROOM, Some(&since(4)));
    assert_eq!(reply["data"]["recovered"], false, "expired: {reply}");
    assert_nothing_pending(&mut bob);
    // The position outlives the messages: nothing missed still recovers.
    let reply = join_room(&mut bob, ROOM, Some(&since(5)));
    assert_eq!(
        (position(&reply), &reply["data"]["recovered"]),
        (since(5), &json!(true))
    );
}

#[test]
fn while_redis_is_down_there_is_no_history_and_after_it_lost_its_data_a_new_epoch() {
    let Some(mut cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut alice = client(&cluster, 0, "alice");
    let before = position(&joined(&cluster, &mut alice, &["alice"]));
    say(&mut alice, ROOM, json!("kept"));
    let seen = Position {
        offset: offset(&read_messages(&mut alice, ROOM, 1)[0]),
        ..before.clone()
    };

    cluster.redis.kill();
    wait_health(&cluster.nodes[0], "degraded: redis unavailable\n");
    say(&mut alice, ROOM, json!("not kept"));
    let event = read_messages(&mut alice, ROOM, 1).remove(0);
    assert!(
        event.get("offset").is_none(),
        "no offsets while Redis is down: {event}"
    );
    let mut bob = client(&cluster, 0, "bob");
    let reply = join_room(&mut bob, ROOM, Some(&seen));
    assert_eq!(
        reply["data"],
        json!({"count": 2, "recovered": false}),
        "{reply}"
    );
    assert_nothing_pending(&mut bob);

    // Restarted without persistence, Redis lost the room: its offsets start over under a new
    // epoch, and nobody recovers across it.
    cluster.redis.restart();
    for node in &cluster.nodes {
        wait_health(node, "ok\n");
    }
    let mut carol = client(&cluster, 1, "carol");
    let reply = join_room(&mut carol, ROOM, Some(&seen));
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    let after = position(&reply);
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 0);
    say(&mut carol, ROOM, json!("again"));
    assert_eq!(offset(&read_messages(&mut carol, ROOM, 1)[0]), 1);
}

#[test]
fn through_redis_a_gap_larger_than_half_the_output_bound_is_not_replayed() {
    let flags = ["--max-buffered", "64KiB", "--max-message-size", "16KiB"];
    let Some(cluster) = Cluster::start(2, &flags) else {
        return;
    };
    let mut alice = client(&cluster, 0, "alice");
    let at_start = position(&joined(&cluster, &mut alice, &["alice"]));
    let mut bob = client(&cluster, 1, "bob");
    assert_replay_bounded(&mut alice, &mut bob, ROOM, at_start);
}
