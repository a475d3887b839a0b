//! Several wshub processes joined through a real Redis behave as one hub (SPEC §10, issue 12):
//! every recipient on every instance gets each room message, message to everyone, direct and
//! `/api/publish` exactly once, a room has one order everywhere, presence, counts and `online`
//! are hub-wide, and Redis subscriptions follow local interest. Each test runs with two and
//! with three instances where the number matters, each with its own Redis.
//!
//! Failures (SIGKILL of an instance, Redis down, restarted, flushed or garbled) are in
//! tests/cluster_failures.rs. Redis comes from `WSHUB_REDIS_SERVER` (default `redis-server`);
//! without it these tests skip, or fail when `CI=true` (install: `sudo bash scripts/test-deps.sh`).

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use common::redis::*;
use common::*;

/// The usual spread over `n` instances: `u<k>` on instance k, and `tabs`, one user with a
/// connection on the first and on the last instance, all in [`ROOM`]; plus `out<k>` on instance
/// k in no room.
struct Spread {
    cluster: Cluster,
    members: Vec<Conn>,
    outsiders: Vec<Conn>,
}

impl Spread {
    fn start(n: usize) -> Option<Spread> {
        let cluster = Cluster::start(n, &[])?;
        let mut members: Vec<Conn> = (0..n)
            .map(|k| Conn::open(&cluster, k, &format!("u{k}")))
            .collect();
        members.push(Conn::open(&cluster, 0, "tabs"));
        members.push(Conn::open(&cluster, n - 1, "tabs"));
        let outsiders = (0..n)
            .map(|k| Conn::open(&cluster, k, &format!("out{k}")))
            .collect();
        join_all(ROOM, &mut members.iter_mut().collect::<Vec<_>>());
        Some(Spread {
            cluster,
            members,
            outsiders,
        })
    }

    fn everyone(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.members.iter_mut().chain(self.outsiders.iter_mut())
    }

    /// Waits until every instance lists every connected user in `/api/online` (users are
    /// registered hub-wide a moment after their 101).
    fn wait_registered(&self) {
        let mut all: Vec<String> = self
            .members
            .iter()
            .chain(&self.outsiders)
            .map(|conn| conn.user.clone())
            .collect();
        all.sort();
        all.dedup();
        wait_users_everywhere(&self.cluster, None, &all);
    }
}

// ---- room messages ----

fn room_messages_reach_every_member_on_every_instance_exactly_once_in_one_order(n: usize) {
    const EACH: u64 = 3;
    let Some(mut spread) = Spread::start(n) else {
        return;
    };
    // Senders on the first and the last instance, interleaved without waiting.
    let senders = [0, n - 1];
    let names: Vec<String> = senders
        .iter()
        .map(|&i| spread.members[i].user.clone())
        .collect();
    for seq in 0..EACH {
        for &i in &senders {
            let by = spread.members[i].user.clone();
            send_text(&mut spread.members[i].client, &room_message(&by, seq));
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut first_order: Option<(String, Vec<(String, u64)>)> = None;
    for member in &mut spread.members {
        let got = read_room_messages(member, names.len() * EACH as usize);
        assert_per_sender_order(&member.name(), &got, &names, EACH);
        match &first_order {
            None => first_order = Some((member.name(), got)),
            Some((first, order)) => assert_eq!(
                &got,
                order,
                "{} and {first} saw the room in different orders",
                member.name()
            ),
        }
    }
    assert_quiet(spread.everyone());
}

#[test]
fn room_messages_reach_every_member_on_every_instance_exactly_once_in_one_order_2_instances() {
    room_messages_reach_every_member_on_every_instance_exactly_once_in_one_order(2);
}

#[test]
fn room_messages_reach_every_member_on_every_instance_exactly_once_in_one_order_3_instances() {
    room_messages_reach_every_member_on_every_instance_exactly_once_in_one_order(3);
}

// ---- messages to everyone ----

fn message_to_everyone_reaches_every_connection_on_every_instance_exactly_once(n: usize) {
    let Some(mut spread) = Spread::start(n) else {
        return;
    };
    let first = ("u0", json!({"hello": "from a"}));
    let last = (format!("out{}", n - 1), json!([1, 2.50, "last"]));
    send_text(
        &mut spread.members[0].client,
        &json!({"event": "message", "data": first.1}).to_string(),
    );
    send_text(
        &mut spread.outsiders[n - 1].client,
        &json!({"event": "message", "data": last.1}).to_string(),
    );
    let mut expected = vec![
        json!({"event": "message", "from": first.0, "data": first.1}),
        json!({"event": "message", "from": last.0, "data": last.1}),
    ];
    expected.sort_by_key(Value::to_string);
    for conn in spread.everyone() {
        let mut got: Vec<Value> = (0..2)
            .map(|_| without_ts(next_json(&mut conn.client)))
            .collect();
        got.sort_by_key(Value::to_string);
        assert_eq!(got, expected, "{}", conn.name());
    }
    assert_quiet(spread.everyone());
}

#[test]
fn message_to_everyone_reaches_every_connection_on_every_instance_exactly_once_2_instances() {
    message_to_everyone_reaches_every_connection_on_every_instance_exactly_once(2);
}

#[test]
fn message_to_everyone_reaches_every_connection_on_every_instance_exactly_once_3_instances() {
    message_to_everyone_reaches_every_connection_on_every_instance_exactly_once(3);
}

// ---- directs ----

fn direct(client: &mut Client, to: &str, data: &str) -> Value {
    request_json(
        client,
        &json!({"event": "direct", "id": data, "to": to, "data": data}).to_string(),
    )
}

fn direct_reaches_every_tab_on_every_instance_and_is_404_only_when_offline_everywhere(n: usize) {
    let Some(cluster) = Cluster::start(n, &[]) else {
        return;
    };
    let last = n - 1;
    let mut alice = Conn::open(&cluster, 0, "alice");
    // For two instances both of bob's tabs are on the other one; for three, one on each other.
    let mut bob_tabs = [
        Conn::open(&cluster, 1, "bob"),
        Conn::open(&cluster, last, "bob"),
    ];
    let mut carol = Conn::open(&cluster, last, "carol");
    wait_users_everywhere(&cluster, None, &strings(&["alice", "bob", "carol"]));

    assert_eq!(
        direct(&mut alice.client, "bob", "d1"),
        json!({"event": "direct", "id": "d1", "code": 0})
    );
    for tab in &mut bob_tabs {
        assert_eq!(
            without_ts(next_json(&mut tab.client)),
            json!({"event": "direct", "from": "alice", "data": "d1"}),
            "{}",
            tab.name()
        );
    }
    assert_eq!(direct(&mut bob_tabs[1].client, "alice", "d2")["code"], 0);
    assert_eq!(
        without_ts(next_json(&mut alice.client)),
        json!({"event": "direct", "from": "bob", "data": "d2"})
    );
    let unknown = direct(&mut alice.client, "nobody", "d3");
    assert_eq!(
        (&unknown["event"], &unknown["code"]),
        (&json!("direct"), &json!(404)),
        "{unknown}"
    );
    assert_quiet([&mut alice, &mut carol].into_iter().chain(&mut bob_tabs));

    // One tab left (on instance 1): still online hub-wide.
    let [remaining, closed] = &mut bob_tabs;
    close_handshake(&mut closed.client);
    assert_eq!(direct(&mut alice.client, "bob", "d4")["code"], 0);
    assert_eq!(
        without_ts(next_json(&mut remaining.client)),
        json!({"event": "direct", "from": "alice", "data": "d4"})
    );

    // No tab anywhere: 404 once the hub knows.
    close_handshake(&mut remaining.client);
    wait_users_everywhere(&cluster, None, &strings(&["alice", "carol"]));
    let gone = direct(&mut alice.client, "bob", "d5");
    assert_eq!(gone["code"], 404, "{gone}");
    assert_quiet([&mut alice, &mut carol]);
}

#[test]
fn direct_reaches_every_tab_on_every_instance_and_is_404_only_when_offline_everywhere_2_instances()
{
    direct_reaches_every_tab_on_every_instance_and_is_404_only_when_offline_everywhere(2);
}

#[test]
fn direct_reaches_every_tab_on_every_instance_and_is_404_only_when_offline_everywhere_3_instances()
{
    direct_reaches_every_tab_on_every_instance_and_is_404_only_when_offline_everywhere(3);
}

// ---- /api/publish ----

fn api_publish_reaches_room_user_and_everyone_on_every_instance_exactly_once(n: usize) {
    let Some(mut spread) = Spread::start(n) else {
        return;
    };
    spread.wait_registered();
    let local = |conns: &[Conn], node: usize, pred: &dyn Fn(&Conn) -> bool| {
        conns
            .iter()
            .filter(|conn| conn.node == node && pred(conn))
            .count()
    };

    // To the room, through instance 1.
    let answer = api_publish(
        spread.cluster.addr(1),
        r#"{"room":"lobby","data":{"note":"room"}}"#,
    );
    assert_eq!(
        answer["delivered"],
        json!(local(&spread.members, 1, &|_| true)),
        "delivered counts instance 1's members: {answer}"
    );
    for member in &mut spread.members {
        assert_eq!(
            without_ts(next_json(&mut member.client)),
            json!({"event": "message", "room": ROOM, "data": {"note": "room"}, "offset": 1}),
            "{}",
            member.name()
        );
    }
    assert_quiet(spread.everyone());

    // To one user, through instance 1 (where `tabs` has a connection only with two instances).
    let answer = api_publish(spread.cluster.addr(1), r#"{"to":"tabs","data":"ding"}"#);
    assert_eq!(
        answer,
        json!({"delivered": local(&spread.members, 1, &|conn| conn.user == "tabs")})
    );
    for tab in spread.members.iter_mut().filter(|conn| conn.user == "tabs") {
        assert_eq!(
            without_ts(next_json(&mut tab.client)),
            json!({"event": "direct", "data": "ding"}),
            "{}",
            tab.name()
        );
    }
    assert_quiet(spread.everyone());

    // To everyone, through the last instance.
    let last = n - 1;
    let answer = api_publish(spread.cluster.addr(last), r#"{"data":[1,2.50,"all"]}"#);
    let connections =
        local(&spread.members, last, &|_| true) + local(&spread.outsiders, last, &|_| true);
    assert_eq!(answer, json!({"delivered": connections}));
    for conn in spread.everyone() {
        assert_eq!(
            without_ts(next_json(&mut conn.client)),
            json!({"event": "message", "data": [1, 2.50, "all"]}),
            "{}",
            conn.name()
        );
    }
    assert_quiet(spread.everyone());
}

#[test]
fn api_publish_reaches_room_user_and_everyone_on_every_instance_exactly_once_2_instances() {
    api_publish_reaches_room_user_and_everyone_on_every_instance_exactly_once(2);
}

#[test]
fn api_publish_reaches_room_user_and_everyone_on_every_instance_exactly_once_3_instances() {
    api_publish_reaches_room_user_and_everyone_on_every_instance_exactly_once(3);
}

// ---- counts, online, presence ----

fn online_event(client: &mut Client, room: Option<&str>) -> (u64, Vec<String>) {
    let request = match room {
        Some(room) => json!({"event": "online", "room": room}),
        None => json!({"event": "online"}),
    };
    let reply = request_json(client, &request.to_string());
    assert_eq!(
        (&reply["event"], &reply["code"]),
        (&json!("online"), &json!(0)),
        "{reply}"
    );
    let users = sorted_names(&reply["data"]["users"], &reply);
    (reply["data"]["count"].as_u64().expect("count"), users)
}

fn counts_online_and_presence_are_hub_wide_and_tabs_count_once(n: usize) {
    let Some(cluster) = Cluster::start(n, &[]) else {
        return;
    };
    let last = n - 1;
    let mut dave = Conn::open(&cluster, 0, "dave");
    let mut alice1 = Conn::open(&cluster, 0, "alice");
    let mut bob = Conn::open(&cluster, 1, "bob");
    let mut alice2 = Conn::open(&cluster, last, "alice");
    let mut carol = Conn::open(&cluster, last, "carol");

    let count = |reply: Value| reply["data"]["count"].clone();
    assert_eq!(count(join(&mut alice1.client, ROOM)), 1);
    assert_eq!(count(join(&mut bob.client, ROOM)), 2);
    assert_eq!(next_json(&mut alice1.client), presence(ROOM, "bob", "join"));
    // alice's second tab, on another instance: still two users, and no presence.
    assert_eq!(count(join(&mut alice2.client, ROOM)), 2);
    assert_eq!(count(join(&mut carol.client, ROOM)), 3);
    expect_presence([&mut alice1, &mut bob, &mut alice2], "carol", "join");

    let in_room = strings(&["alice", "bob", "carol"]);
    let connected = strings(&["alice", "bob", "carol", "dave"]);
    wait_users_everywhere(&cluster, Some(ROOM), &in_room);
    wait_users_everywhere(&cluster, None, &connected);
    for node in 0..n {
        let room = api_online(cluster.addr(node), Some(ROOM));
        assert_eq!(
            (&room["room"], &room["count"]),
            (&json!(ROOM), &json!(3)),
            "{room}"
        );
        assert_eq!(api_online(cluster.addr(node), None)["count"], 4);
    }
    for conn in [&mut dave, &mut bob, &mut carol] {
        assert_eq!(
            online_event(&mut conn.client, Some(ROOM)),
            (3, in_room.clone()),
            "{}",
            conn.name()
        );
        assert_eq!(
            online_event(&mut conn.client, None),
            (4, connected.clone()),
            "{}",
            conn.name()
        );
    }
    assert_quiet([&mut dave, &mut alice1, &mut bob, &mut alice2, &mut carol]);

    // alice quits on instance 0 but is still in through her tab elsewhere: no presence.
    quit(&mut alice1.client, ROOM);
    assert_quiet([&mut bob, &mut alice2, &mut carol]);
    assert_eq!(online_event(&mut bob.client, Some(ROOM)), (3, in_room));

    // Her last tab in the room disconnects without a close: everyone else hears she left.
    drop(alice2);
    expect_presence([&mut bob, &mut carol], "alice", "leave");
    quit(&mut bob.client, ROOM);
    assert_eq!(next_json(&mut carol.client), presence(ROOM, "bob", "leave"));
    wait_users_everywhere(&cluster, Some(ROOM), &strings(&["carol"]));
    wait_users_everywhere(&cluster, None, &connected);
    assert_eq!(count(join(&mut dave.client, ROOM)), 2);
    assert_eq!(next_json(&mut carol.client), presence(ROOM, "dave", "join"));
    assert_quiet([&mut dave, &mut alice1, &mut bob, &mut carol]);
}

#[test]
fn counts_online_and_presence_are_hub_wide_and_tabs_count_once_2_instances() {
    counts_online_and_presence_are_hub_wide_and_tabs_count_once(2);
}

#[test]
fn counts_online_and_presence_are_hub_wide_and_tabs_count_once_3_instances() {
    counts_online_and_presence_are_hub_wide_and_tabs_count_once(3);
}

// ---- subscriptions ----

/// The channels under `prefix` whose name contains `needle`.
fn channels_with(redis: &RedisServer, prefix: &str, needle: &str) -> Vec<String> {
    redis
        .channels(&format!("{prefix}*"))
        .into_iter()
        .filter(|channel| channel.contains(needle))
        .collect()
}

/// The one channel under `prefix` naming `needle`, and its subscriber count.
fn one_channel(redis: &RedisServer, prefix: &str, needle: &str) -> (String, i64) {
    let found = channels_with(redis, prefix, needle);
    assert_eq!(
        found.len(),
        1,
        "expected one channel for {needle}, got {found:?}"
    );
    let channel = found[0].clone();
    let subscribers = redis.numsub(&channel);
    (channel, subscribers)
}

/// Sends `request` and returns the reply to it, skipping presence events that arrive first.
fn reply_skipping_presence(client: &mut Client, request: &Value) -> Value {
    send_text(client, &request.to_string());
    loop {
        let event = next_json(client);
        if event["event"] != "presence" {
            return event;
        }
    }
}

#[test]
fn subscriptions_follow_local_interest_one_per_instance_never_one_per_socket() {
    const PREFIX: &str = "hubtest";
    const CROWD: usize = 50;
    let room = "interest-room";
    let user = "interest-user";
    let Some(cluster) = Cluster::start(2, &["--redis-prefix", PREFIX]) else {
        return;
    };
    let redis = &cluster.redis;
    within("the instances' own channels", TIMEOUT, || {
        let all = redis.channels("*");
        if all.is_empty() {
            Err("no channel".to_owned())
        } else {
            assert!(
                all.iter().all(|c| c.starts_with(PREFIX)),
                "every channel must be under --redis-prefix {PREFIX}: {all:?}"
            );
            Ok(())
        }
    });
    assert_eq!(channels_with(redis, PREFIX, room), Vec::<String>::new());

    let join_request = json!({"event": "join", "room": room});
    let quit_request = json!({"event": "quit", "room": room});
    let mut first = Conn::open(&cluster, 0, "first");
    join(&mut first.client, room);
    let (channel, subscribers) = one_channel(redis, PREFIX, room);
    assert_eq!(subscribers, 1, "{channel} after the first join");

    let mut crowd: Vec<Conn> = (0..CROWD)
        .map(|i| Conn::open(&cluster, 0, &format!("m{i}")))
        .collect();
    for conn in &mut crowd {
        let reply = reply_skipping_presence(&mut conn.client, &join_request);
        assert_eq!(reply["code"], 0, "{reply}");
    }
    assert_eq!(
        one_channel(redis, PREFIX, room),
        (channel.clone(), 1),
        "{} members on one instance must share one subscription",
        CROWD + 1
    );

    let mut other = Conn::open(&cluster, 1, "other");
    join(&mut other.client, room);
    assert_eq!(one_channel(redis, PREFIX, room), (channel.clone(), 2));

    let mut tabs: Vec<Conn> = (0..CROWD).map(|_| Conn::open(&cluster, 1, user)).collect();
    within("the user's channel", TIMEOUT, || {
        match channels_with(redis, PREFIX, user).as_slice() {
            [one] if redis.numsub(one) == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let keys = redis.keys("*");
    assert!(
        !keys.is_empty() && keys.iter().all(|key| key.starts_with(PREFIX)),
        "every key must be under --redis-prefix {PREFIX}: {keys:?}"
    );

    // Half the crowd quits, the other half disconnects: the channel stays while one is left.
    for (i, conn) in crowd.iter_mut().enumerate() {
        if i % 2 == 0 {
            let reply = reply_skipping_presence(&mut conn.client, &quit_request);
            assert_eq!(reply["code"], 0, "{reply}");
        } else {
            close_handshake(&mut conn.client);
        }
    }
    assert_eq!(one_channel(redis, PREFIX, room), (channel.clone(), 2));
    let reply = reply_skipping_presence(&mut first.client, &quit_request);
    assert_eq!(reply["code"], 0, "{reply}");
    within(
        "instance a unsubscribed from the room",
        TIMEOUT,
        || match redis.numsub(&channel) {
            1 => Ok(()),
            other => Err(format!("{other} subscribers")),
        },
    );
    let reply = reply_skipping_presence(&mut other.client, &quit_request);
    assert_eq!(reply["code"], 0, "{reply}");
    within(
        "no instance subscribed to the room",
        TIMEOUT,
        || match channels_with(redis, PREFIX, room).as_slice() {
            [] => Ok(()),
            left => Err(format!("{left:?}")),
        },
    );

    for tab in &mut tabs {
        close_handshake(&mut tab.client);
    }
    within(
        "no instance subscribed to the user",
        TIMEOUT,
        || match channels_with(redis, PREFIX, user).as_slice() {
            [] => Ok(()),
            left => Err(format!("{left:?}")),
        },
    );
}

// ---- a burst from several instances ----

/// Messages each sender sends as fast as it can.
const BURST: u64 = 1_500;
/// Publishes to Redis besides the burst's own that the check tolerates (heartbeats, control).
const PUBLISH_SLACK: u64 = 100;

#[test]
fn burst_from_three_instances_arrives_exactly_once_in_one_order_everywhere() {
    let Some(cluster) = Cluster::start(3, &[]) else {
        return;
    };
    let mut members: Vec<Conn> = (0..3)
        .flat_map(|k| {
            [
                Conn::open(&cluster, k, &format!("sender{k}")),
                Conn::open(&cluster, k, &format!("listener{k}")),
            ]
        })
        .collect();
    join_all(ROOM, &mut members.iter_mut().collect::<Vec<_>>());
    let senders: Vec<String> = (0..3).map(|k| format!("sender{k}")).collect();
    let total = BURST as usize * senders.len();
    let publishes_before = cluster.redis.publish_calls();
    let published_before: Vec<u64> = (0..3)
        .map(|k| metric_total(cluster.addr(k), "wshub_redis_published_total"))
        .collect();
    let received_before: Vec<u64> = (0..3)
        .map(|k| metric_total(cluster.addr(k), "wshub_redis_received_total"))
        .collect();

    let started = Instant::now();
    let threads: Vec<_> = members
        .into_iter()
        .map(|mut conn| {
            std::thread::spawn(move || {
                conn.client
                    .get_mut()
                    .set_write_timeout(Some(TIMEOUT))
                    .expect("write timeout");
                if conn.user.starts_with("sender") {
                    // Pipelined: every frame written before the first flush.
                    for seq in 0..BURST {
                        conn.client
                            .write(Message::text(room_message(&conn.user, seq)))
                            .expect("queue message");
                    }
                    conn.client.flush().expect("send burst");
                }
                let got = read_room_messages(&mut conn, total);
                (conn, got)
            })
        })
        .collect();
    let mut results: Vec<(Conn, Vec<(String, u64)>)> = threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
        .collect();
    let elapsed = started.elapsed();
    eprintln!(
        "burst: {total} messages from 3 instances to 6 members in {elapsed:?} \
         ({:.0} deliveries/s)",
        (total * 6) as f64 / elapsed.as_secs_f64()
    );

    let names: Vec<&str> = senders.iter().map(String::as_str).collect();
    let (first, order) = (&results[0].0.name(), results[0].1.clone());
    for (conn, got) in &results {
        assert_per_sender_order(&conn.name(), got, &names, BURST);
        if *got != order {
            let at = got.iter().zip(&order).position(|(a, b)| a != b);
            panic!(
                "{} and {first} saw different orders, first difference at {at:?}",
                conn.name()
            );
        }
    }
    assert_quiet(results.iter_mut().map(|(conn, _)| conn));

    // One PUBLISH per message, not per recipient or per instance.
    let publishes = cluster.redis.publish_calls() - publishes_before;
    assert!(
        (total as u64..=total as u64 + PUBLISH_SLACK).contains(&publishes),
        "{publishes} PUBLISH commands for {total} messages"
    );
    for k in 0..3 {
        let published =
            metric_total(cluster.addr(k), "wshub_redis_published_total") - published_before[k];
        let received =
            metric_total(cluster.addr(k), "wshub_redis_received_total") - received_before[k];
        assert!(
            (BURST..=BURST + PUBLISH_SLACK).contains(&published),
            "instance {}: wshub_redis_published_total grew by {published} for {BURST} messages",
            instance_id(k)
        );
        assert!(
            (total as u64..=total as u64 + PUBLISH_SLACK).contains(&received),
            "instance {}: wshub_redis_received_total grew by {received} for {total} messages",
            instance_id(k)
        );
    }
}

/// A join answers at its place in the room's order, even while the room is busy: the joiner
/// gets its reply first, then every message published after the join and none from before,
/// without a gap.
#[test]
fn a_join_into_a_busy_room_is_answered_before_its_messages_and_misses_none_after() {
    let Some(cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut sender = Conn::open(&cluster, 0, "sender");
    join(&mut sender.client, ROOM);
    let sends = 6_000;
    let mut joiners: Vec<Conn> = (0..16)
        .map(|k| Conn::open(&cluster, k % 2, &format!("joiner{k}")))
        .collect();
    // The sender floods the room from another thread, about 100 messages a millisecond, while
    // the joiners join one by one.
    let flood = std::thread::spawn(move || {
        for seq in 0..sends {
            sender
                .client
                .write(Message::text(room_message("sender", seq)))
                .expect("queue a message");
            if seq % 50 == 49 {
                sender.client.flush().expect("send the flood");
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        sender.client.flush().expect("send the flood");
        sender
    });
    for joiner in &mut joiners {
        std::thread::sleep(Duration::from_millis(2));
        send_text(
            &mut joiner.client,
            &json!({"event": "join", "room": ROOM}).to_string(),
        );
    }
    let sender = flood.join().expect("flood thread");
    for joiner in &mut joiners {
        let reply = next_json(&mut joiner.client);
        assert_eq!(
            (&reply["event"], &reply["code"]),
            (&json!("join"), &json!(0)),
            "{}: the join reply comes before any message of the room: {reply}",
            joiner.name()
        );
        // Then the messages published after the join, consecutive up to the last one, each
        // once (presence of the later joiners aside).
        let mut next: Option<u64> = None;
        while next != Some(sends) {
            let event = next_json(&mut joiner.client);
            if event["event"] == "presence" {
                continue;
            }
            let seq = event["data"]["seq"].as_u64().expect("seq");
            if let Some(expected) = next {
                assert_eq!(seq, expected, "{}: a gap or a duplicate", joiner.name());
            }
            next = Some(seq + 1);
        }
    }
    assert_quiet(&mut joiners);
    drop(sender);
}

/// `--protocol raw` (gorilla-chat compatible, what the bench speaks) is relayed too: every
/// message, text or binary, reaches every client of every instance once, with its opcode.
#[test]
fn raw_broadcasts_reach_every_client_on_every_instance_once_with_their_opcode() {
    let Some(cluster) = Cluster::start(2, &["--protocol", "raw"]) else {
        return;
    };
    let mut clients: Vec<Client> = (0..4)
        .map(|k| connect(cluster.addr(k % 2), "/ws"))
        .collect();
    clients[0]
        .send(Message::text("hello from a"))
        .expect("send text");
    clients[1]
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .expect("send binary");
    for client in &mut clients {
        let mut got = vec![next_message(client), next_message(client)];
        got.sort_by_key(|m| m.is_binary());
        assert_eq!(
            got,
            [
                Message::text("hello from a"),
                Message::binary(vec![0u8, 1, 2, 255])
            ]
        );
        client
            .get_mut()
            .set_read_timeout(Some(QUIET))
            .expect("read timeout");
        match client.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected nothing more, got {other:?}"),
        }
    }
}
