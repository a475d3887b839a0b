//! Liveness and limits over time (SPEC §6): pings, the idle and handshake timeouts, and the
//! per-connection rate limit. Timeouts are set to a few hundred milliseconds so each test stays
//! short; the assertions bound both sides (not too early, not much later).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::{Error, Message};

/// Slack allowed past a deadline before a test calls the server late.
const LATE: Duration = Duration::from_millis(700);

/// Poll period of the tests that wait on a socket while doing something else.
const TICK: Duration = Duration::from_millis(50);

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn silent_client_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let addr = start(&[
        "--protocol",
        "echo",
        "--ping-interval",
        "10s",
        "--idle-timeout",
        "300ms",
    ]);
    let started = Instant::now();
    let mut stream = raw_websocket(addr, "/ws");
    assert_eq!(read_close_code(&mut stream), 1001);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= idle && elapsed < idle + LATE,
        "closed after {elapsed:?}"
    );
    assert_eq!(metric(addr, "wshub_connections"), 0);
}

#[test]
fn client_that_never_writes_receives_server_pings() {
    let addr = start(&[
        "--protocol",
        "echo",
        "--ping-interval",
        "100ms",
        "--idle-timeout",
        "5s",
    ]);
    let started = Instant::now();
    let mut stream = raw_websocket(addr, "/ws");
    for n in 1..=3 {
        assert_eq!(read_frame(&mut stream), (0x89, Vec::new()), "ping {n}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(100 * n),
            "ping {n} came early, after {elapsed:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_millis(300) + LATE);
}

#[test]
fn client_answering_pings_outlives_several_idle_timeouts() {
    let addr = start(&[
        "--protocol",
        "echo",
        "--ping-interval",
        "100ms",
        "--idle-timeout",
        "300ms",
    ]);
    let mut client = connect(addr, "/ws");
    client
        .get_ref()
        .set_read_timeout(Some(TICK))
        .expect("short read timeout");
    let started = Instant::now();
    let mut pings = 0;
    // Four idle timeouts; tungstenite answers each ping with a pong on the next read.
    while started.elapsed() < Duration::from_millis(1200) {
        match client.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Err(Error::Io(e)) if is_timeout(&e) => {}
            other => panic!("the connection should stay open, got {other:?}"),
        }
    }
    assert!(
        pings >= 6,
        "only {pings} pings in 1.2 s at a 100 ms interval"
    );
    client
        .get_ref()
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    send_text(&mut client, "still open");
    assert_eq!(next_text(&mut client), "still open");
}

#[test]
fn slowloris_is_closed_after_the_handshake_timeout() {
    let handshake = Duration::from_millis(300);
    let addr = start(&["--handshake-timeout", "300ms"]);
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TICK))
        .expect("short read timeout");
    stream
        .write_all(format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .expect("send a partial head");
    // Keep trickling a header that never ends: bytes arriving must not extend the deadline.
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            started.elapsed() < handshake + LATE,
            "still open after {:?}",
            started.elapsed()
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if is_timeout(&e) => {
                // The server may already have closed; a failed write shows up as EOF or reset next.
                let _ = stream.write_all(b"a");
            }
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
    assert!(
        started.elapsed() >= handshake,
        "closed early, after {:?}",
        started.elapsed()
    );
    assert!(
        received.is_empty(),
        "no response is owed: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(
        metric(addr, "wshub_handshake_failures_total{reason=\"timeout\"}"),
        1
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let handshake = Duration::from_millis(300);
    let addr = start(&["--handshake-timeout", "300ms"]);
    let mut stream = tcp_connect(addr);
    let (status, _, _) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!(status, 200);
    let answered = Instant::now();
    assert_closed(&mut stream);
    let elapsed = answered.elapsed();
    assert!(
        elapsed + TICK >= handshake && elapsed < handshake + LATE,
        "closed after {elapsed:?}"
    );
}

#[test]
fn rate_limit_drops_excess_messages_in_raw_mode() {
    let addr = start(&["--protocol", "raw", "--rate-limit", "5"]);
    let mut flooder = connect(addr, "/ws");
    let mut receiver = raw_websocket(addr, "/ws");
    let mut other = connect(addr, "/ws");
    // One write: the whole flood reaches the server within a fraction of one refill interval.
    for i in 0..30 {
        flooder
            .write(Message::text(format!("m{i:02}")))
            .expect("queue message");
    }
    flooder.flush().expect("send the flood");
    eventually("the flood to be read", || {
        metric(addr, "wshub_messages_received_total") == 30
    });
    send_text(&mut other, "end");
    // A burst of 2 × 5 gets through; the rest is dropped, not delayed.
    let mut delivered = Vec::new();
    loop {
        let (first, payload) = read_frame(&mut receiver);
        assert_eq!(first, 0x81);
        if payload == b"end" {
            break;
        }
        delivered.push(String::from_utf8(payload).expect("UTF-8"));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("m{i:02}")).collect();
    assert_eq!(delivered, expected);
    assert_eq!(metric(addr, "wshub_messages_delivered_total"), 10 * 3 + 3);
}

#[test]
fn rate_limit_answers_429_in_events_mode() {
    let addr = start(&["--rate-limit", "5"]);
    let mut flooder = connect(addr, "/ws?user=flood");
    let mut observer = connect(addr, "/ws?user=observer");
    for i in 0..30 {
        let request = json!({"event": "message", "data": i, "id": i}).to_string();
        flooder
            .write(Message::text(request))
            .expect("queue message");
    }
    flooder.flush().expect("send the flood");
    // Each frame gets exactly one answer on the flooder's connection, in order: its own
    // broadcast while the burst lasts, then an error per refused frame.
    for i in 0..10 {
        let message = next_json(&mut flooder);
        assert_eq!(
            (&message["event"], &message["from"], &message["data"]),
            (&json!("message"), &json!("flood"), &json!(i))
        );
        assert!(message.get("code").is_none(), "{message}");
    }
    for i in 10..30 {
        assert_eq!(
            next_json(&mut flooder),
            json!({"event": "message", "code": 429, "error": "rate limited", "id": i})
        );
    }
    send_text(&mut observer, r#"{"event":"message","data":"end"}"#);
    let seen: Vec<serde_json::Value> = (0..11)
        .map(|_| next_json(&mut observer)["data"].clone())
        .collect();
    let expected: Vec<serde_json::Value> =
        (0..10).map(|i| json!(i)).chain([json!("end")]).collect();
    assert_eq!(seen, expected);
}
