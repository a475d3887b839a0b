//! The daemon's life (SPEC §2, §7): signals on the real binary, and `/metrics` after a known
//! workload.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Slack allowed past the drain timeout for the process to exit.
const LATE: Duration = Duration::from_millis(700);

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0_within_the_drain_timeout() {
    let drain = Duration::from_secs(1);
    let mut daemon = Daemon::spawn(&["--protocol", "raw", "--drain-timeout", "1s"]);
    let mut clients: Vec<Client> = (0..5).map(|_| connect(daemon.addr, "/ws")).collect();
    // A plain HTTP keep-alive connection is let go too.
    let mut http = tcp_connect(daemon.addr);
    assert_eq!(
        http_request(
            &mut http,
            &format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr)
        )
        .0,
        200
    );

    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    for client in &mut clients {
        assert_eq!(close_code(client), 1001);
    }
    assert_closed(&mut http);
    assert!(
        TcpStream::connect(daemon.addr).is_err(),
        "still accepting connections while draining"
    );
    // The clients keep their sockets open, so the daemon waits out the drain timeout at most.
    assert_eq!(daemon.wait_exit(drain + LATE), Some(0));
    assert!(signalled.elapsed() < drain + LATE);
}

#[test]
fn sigterm_exits_as_soon_as_clients_have_gone() {
    let mut daemon = Daemon::spawn(&["--protocol", "raw", "--drain-timeout", "5s"]);
    let mut clients: Vec<Client> = (0..5).map(|_| connect(daemon.addr, "/ws")).collect();
    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    for client in &mut clients {
        assert_eq!(close_code(client), 1001);
    }
    drop(clients);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "waited for the drain timeout needlessly"
    );
}

#[test]
fn sighup_does_not_stop_the_daemon() {
    let mut daemon = Daemon::spawn(&["--protocol", "raw"]);
    let mut client = connect(daemon.addr, "/ws");
    for _ in 0..3 {
        daemon.signal(libc::SIGHUP);
        // The daemon answering after the signal was sent means it ran past its delivery.
        let (status, _, body) = get(daemon.addr, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "the daemon exited"
    );
    send_text(&mut client, "still connected");
    assert_eq!(next_text(&mut client), "still connected");
}

#[test]
fn metrics_count_a_known_workload() {
    let addr = start(&["--protocol", "raw", "--max-header-bytes", "1KiB"]);
    let mut clients: Vec<Client> = (0..3).map(|_| connect(addr, "/ws")).collect();
    let leaver = connect(addr, "/ws");
    drop(leaver);
    eventually("the leaver to be gone", || {
        metric(addr, "wshub_connections") == 3
    });
    for text in ["a", "b", "c", "d"] {
        send_text(&mut clients[0], text);
    }
    clients[1]
        .send(Message::binary(vec![1, 2, 3]))
        .expect("send binary");
    for client in &mut clients {
        for _ in 0..5 {
            next_message(client);
        }
    }
    // Control frames are not messages.
    clients[2]
        .send(Message::Ping(vec![1].into()))
        .expect("send ping");
    assert!(matches!(clients[2].read().expect("pong"), Message::Pong(_)));

    // One failed handshake of each kind a client can cause here.
    let failures = [
        (
            "upgrade_required",
            format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "forbidden",
            upgrade_request(addr, "/ws", "Origin: https://evil.example\r\n"),
        ),
        (
            "malformed",
            upgrade_request(addr, "/ws", "").replace("Version: 13", "Version: 8"),
        ),
        (
            "header_too_large",
            upgrade_request(addr, "/ws", &format!("X-Padding: {}\r\n", "x".repeat(2000))),
        ),
    ];
    for (_, request) in &failures {
        raw_exchange(addr, request.as_bytes());
    }

    assert_eq!(metric(addr, "wshub_connections"), 3);
    assert_eq!(metric(addr, "wshub_connections_total"), 4);
    assert_eq!(metric(addr, "wshub_messages_received_total"), 5);
    assert_eq!(metric(addr, "wshub_messages_delivered_total"), 15);
    assert_eq!(metric(addr, "wshub_slow_consumer_disconnects_total"), 0);
    for (reason, _) in &failures {
        assert_eq!(
            metric(
                addr,
                &format!("wshub_handshake_failures_total{{reason=\"{reason}\"}}")
            ),
            1,
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            addr,
            "wshub_handshake_failures_total{reason=\"at_capacity\"}"
        ),
        0
    );
    // Four 1-byte text frames and a 3-byte binary frame, each with 6 bytes of header and mask,
    // plus the ping, on top of the upgrade requests.
    assert!(metric(addr, "wshub_bytes_received_total") >= 4 * 7 + 9 + 7);
    assert!(metric(addr, "wshub_bytes_sent_total") >= 15 * 3);

    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE wshub_connections gauge\n"), "{body}");
    assert!(
        body.contains("# TYPE wshub_messages_delivered_total counter\n"),
        "{body}"
    );
}
