//! A reconnect storm (issue 11, point 1): every member of a big room resets its connection at
//! once while new clients connect. Tearing the members down sends presence to members that are
//! already gone; none of that may reach the newcomers that take their slots, who must get their
//! `101`, their replies and stay connected, and plain HTTP must keep answering.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use common::{client_frame, eventually, get, metric, raw_websocket, read_frame};

const MEMBERS: usize = 1000;
const NEWCOMERS: usize = 200;

/// Sends one `events` request as a masked text frame.
fn send(stream: &mut TcpStream, json: &str) {
    stream
        .write_all(&client_frame(0x81, json.as_bytes()))
        .expect("send request");
}

/// Reads frames until a text frame whose JSON has `event` == `name` and carries no `room`
/// other than the one asked for; returns it. Presence and messages on the way are skipped.
fn reply(stream: &mut TcpStream, name: &str) -> serde_json::Value {
    loop {
        let (first, payload) = read_frame(stream);
        assert_eq!(first, 0x81, "expected a text frame, got {first:#x}");
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON event");
        if json["event"] == name {
            return json;
        }
    }
}

/// A client that joined `room` as `user` and read its join reply.
fn joined(addr: SocketAddr, user: &str, room: &str) -> TcpStream {
    let mut stream = raw_websocket(addr, &format!("/ws?user={user}"));
    send(
        &mut stream,
        &format!(r#"{{"event":"join","room":"{room}"}}"#),
    );
    let answer = reply(&mut stream, "join");
    assert_eq!(answer["code"], 0, "{user} could not join: {answer}");
    stream
}

#[test]
fn newcomers_during_a_mass_reset_keep_their_connections() {
    let addr = common::start(&["--protocol", "events"]);
    let members: Vec<TcpStream> = (0..MEMBERS)
        .map(|i| joined(addr, &format!("m{i}"), "hall"))
        .collect();
    assert_eq!(metric(addr, "wshub_users"), MEMBERS as u64);

    let newcomers = thread::scope(|scope| {
        scope.spawn(move || {
            for member in members {
                // RST instead of FIN: the server learns of each one as a failed read.
                socket2::SockRef::from(&member)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER");
                drop(member);
            }
        });
        let http = scope.spawn(move || {
            (0..20)
                .map(|_| get(addr, "/metrics").0)
                .filter(|&status| status == 200)
                .count()
        });
        let newcomers: Vec<TcpStream> = (0..NEWCOMERS)
            .map(|i| joined(addr, &format!("n{i}"), "hall"))
            .collect();
        assert_eq!(
            http.join().expect("metrics"),
            20,
            "/metrics failed in the storm"
        );
        newcomers
    });

    eventually("every member to be gone", || {
        metric(addr, "wshub_users") == NEWCOMERS as u64
    });
    let mut newcomers = newcomers;
    for (i, newcomer) in newcomers.iter_mut().enumerate() {
        send(newcomer, r#"{"event":"ping","id":1}"#);
        let pong = reply(newcomer, "ping");
        assert_eq!(pong["code"], 0, "newcomer n{i}: {pong}");
    }
    assert_eq!(metric(addr, "wshub_connections"), NEWCOMERS as u64);
}
