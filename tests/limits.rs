//! Per-address limits (SPEC §6) over real sockets: one address can neither take every
//! WebSocket slot nor lock other addresses out of `/healthz`; refused sockets go soon after
//! their answer; idle sockets give their address's slots back.
//!
//! Clients bind their socket to a chosen loopback address (127.0.0.0/8 all reaches the
//! server on 127.0.0.1), so one test process plays several client addresses.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// A TCP connection to `addr` from the local address `source`.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let source: IpAddr = source.parse().expect("source address");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("tcp connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

/// Sends `request` and reads the answer's head: its status, or what happened instead (the
/// server closed or reset the socket without answering).
fn status_of(stream: &mut TcpStream, request: &str) -> Result<u16, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send failed: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("{:?} without an answer", e.kind())),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
}

/// Tries an upgrade from `source` with `extra` header lines: the status (or what happened
/// instead) and the socket, positioned after the answer's head.
fn upgrade_from(source: &str, addr: SocketAddr, extra: &str) -> (Result<u16, String>, TcpStream) {
    let mut stream = connect_from(source, addr);
    let status = status_of(&mut stream, &upgrade_request(addr, "/ws", extra));
    (status, stream)
}

/// `GET /healthz` on a fresh keep-alive socket from `source`; the socket stays open.
fn healthz_from(source: &str, addr: SocketAddr) -> (Result<u16, String>, TcpStream) {
    let mut stream = connect_from(source, addr);
    let status = status_of(&mut stream, &healthz_request(addr, ""));
    (status, stream)
}

fn healthz_request(addr: SocketAddr, extra: &str) -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n")
}

/// `attempts` upgrades from `source` one after the other: how many got each status, and the
/// sockets that upgraded (held open).
fn upgrades(
    source: &str,
    addr: SocketAddr,
    attempts: usize,
) -> (BTreeMap<String, usize>, Vec<TcpStream>) {
    let mut statuses = BTreeMap::new();
    let mut open = Vec::new();
    for _ in 0..attempts {
        let (status, stream) = upgrade_from(source, addr, "");
        let key = match &status {
            Ok(code) => code.to_string(),
            Err(what) => what.clone(),
        };
        *statuses.entry(key).or_insert(0) += 1;
        if status == Ok(101) {
            open.push(stream);
        }
    }
    (statuses, open)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs
        .iter()
        .map(|&(key, count)| (key.to_owned(), count))
        .collect()
}

/// How long after `since` the server stopped holding `stream`: the client keeps writing a
/// byte every 50 ms, which the server reads and drops while it lingers; once it has closed
/// the socket the next byte is answered with a reset and a later write fails. `None` if it
/// still held the socket after `limit`.
fn held_for(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if stream.write_all(b"x").is_err() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Reads until the server's end of stream; true if it came (no reset, no timeout).
fn reaches_eof(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// Issue 11, point 3, scaled down: one address tries to take every WebSocket slot, then
/// opens hundreds of idle sockets. It gets `--max-connections-per-ip` WebSockets (the rest
/// 429) and 32 sockets; another address still upgrades and gets `/healthz`.
#[test]
fn one_address_cannot_take_every_slot_nor_lock_others_out() {
    let addr = start(&["--max-connections", "200", "--max-connections-per-ip", "8"]);
    let (statuses, _websockets) = upgrades("127.0.0.2", addr, 200);
    // More than the HTTP headroom (1 024) above --max-connections.
    let idle: Vec<TcpStream> = (0..1_100)
        .map(|_| connect_from("127.0.0.2", addr))
        .collect();
    let (other_upgrade, _other) = upgrade_from("127.0.0.3", addr, "");
    let (other_healthz, _) = healthz_from("127.0.0.3", addr);
    assert_eq!(
        (statuses, other_upgrade, other_healthz),
        (counts(&[("101", 8), ("429", 192)]), Ok(101), Ok(200)),
        "127.0.0.2's upgrades, then 127.0.0.3's upgrade and /healthz"
    );
    assert_eq!(
        metric(
            addr,
            "wshub_handshake_failures_total{reason=\"address_limit\"}"
        ),
        192
    );
    assert_eq!(metric(addr, "wshub_connections"), 9);
    drop(idle);
}

/// Without the flag, loopback is not limited: a local reverse proxy whose forwarded addresses
/// are not trusted, and local load tests, look like one client.
#[test]
fn loopback_is_exempt_unless_the_limit_is_given() {
    let addr = start(&[]);
    let websockets: Vec<Client> = (0..300).map(|_| connect(addr, "/ws")).collect();
    let mut sockets: Vec<TcpStream> = (0..100).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in &mut sockets {
        assert_eq!(status_of(stream, &healthz_request(addr, "")), Ok(200));
    }
    assert_eq!(metric(addr, "wshub_connections"), 300);
    drop(websockets);
}

/// A refused request (400) and an answer with `Connection: close`: the server sends the answer
/// and FIN, then lingers about a second reading what the client still sends, and closes —
/// not the 10 s write timeout, during which such sockets held slots.
#[test]
fn a_closing_answer_frees_its_socket_within_a_second_or_two() {
    let addr = start(&[]);
    for (request, status) in [
        ("NOT HTTP\r\n\r\n".to_owned(), 400),
        (healthz_request(addr, "Connection: close\r\n"), 200),
    ] {
        let mut stream = connect_from("127.0.0.1", addr);
        assert_eq!(status_of(&mut stream, &request), Ok(status));
        assert!(reaches_eof(&mut stream), "FIN after the {status} answer");
        let answered = Instant::now();
        let held = held_for(&mut stream, answered, Duration::from_secs(4));
        assert!(
            held.is_some_and(
                |held| held > Duration::from_millis(500) && held < Duration::from_secs(2)
            ),
            "after its {status} answer the server held the socket for {held:?} (None: over 4 s)"
        );
    }
}

/// Idle keep-alive sockets count against their address's bound of 32 until
/// `--handshake-timeout` closes them; then the address may connect again.
#[test]
fn idle_keep_alive_sockets_are_bounded_per_address_and_released_by_their_timeout() {
    let timeout = Duration::from_secs(1);
    let addr = start(&["--max-connections-per-ip", "4", "--handshake-timeout", "1s"]);
    let mut idle = Vec::new();
    for _ in 0..32 {
        let (status, stream) = healthz_from("127.0.0.5", addr);
        assert_eq!(status, Ok(200));
        idle.push(stream);
    }
    let answered = Instant::now();
    let (one_more, _) = healthz_from("127.0.0.5", addr);
    let (elsewhere, _) = healthz_from("127.0.0.6", addr);
    assert_eq!(
        (one_more.is_err(), &elsewhere),
        (true, &Ok(200)),
        "a 33rd socket from 127.0.0.5 got {one_more:?}; 127.0.0.6 got {elsewhere:?}"
    );
    for stream in &mut idle {
        assert!(reaches_eof(stream), "an idle keep-alive socket is closed");
    }
    let closed = answered.elapsed();
    assert!(
        closed < timeout + Duration::from_secs(1),
        "idle keep-alive sockets closed after {closed:?}"
    );
    let (again, _) = healthz_from("127.0.0.5", addr);
    assert_eq!(again, Ok(200), "the address's sockets were given back");
}

/// Every way a WebSocket goes — close handshake, end of stream, reset, idle timeout — gives
/// its slot back: the address opens its full share again each round.
#[test]
fn an_address_opens_its_websockets_again_after_they_go_every_way() {
    let addr = start(&["--max-connections-per-ip", "3", "--idle-timeout", "600ms"]);
    let all_gone = || metric(addr, "wshub_connections") == 0;
    let share = counts(&[("101", 3), ("429", 1)]);

    let (statuses, mut open) = upgrades("127.0.0.4", addr, 4);
    assert_eq!(statuses, share, "first round");
    let mut handshake = tungstenite::WebSocket::from_raw_socket(
        open.remove(0),
        tungstenite::protocol::Role::Client,
        None,
    );
    close_handshake(&mut handshake);
    drop(open.remove(0));
    let reset = Socket::from(open.remove(0));
    reset.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(reset);
    eventually("the first round to leave the hub", all_gone);

    let (statuses, mut open) = upgrades("127.0.0.4", addr, 4);
    assert_eq!(
        statuses, share,
        "after a close handshake, an EOF and a reset"
    );
    // Silent clients: the server closes them (1001) after the idle timeout.
    for stream in &mut open {
        assert_eq!(read_close_code(stream), 1001);
    }
    eventually("the second round to leave the hub", all_gone);

    let (statuses, _open) = upgrades("127.0.0.4", addr, 4);
    assert_eq!(statuses, share, "after idle timeouts");
}

/// A trusted proxy carries many clients: its sockets are not bounded, and each forwarded
/// client address has its own WebSocket limit.
#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let proxy = "127.0.0.7";
    let addr = start(&[
        "--trusted-proxy",
        "127.0.0.7/32",
        "--max-connections-per-ip",
        "2",
    ]);
    let mut sockets: Vec<TcpStream> = (0..40).map(|_| connect_from(proxy, addr)).collect();
    for stream in &mut sockets {
        assert_eq!(status_of(stream, &healthz_request(addr, "")), Ok(200));
    }
    let forwarded = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let alice = forwarded("203.0.113.7");
    let mut results = Vec::new();
    let mut held = Vec::new();
    for extra in [&alice, &alice, &alice, &forwarded("203.0.113.8")] {
        let (status, stream) = upgrade_from(proxy, addr, extra);
        results.push(status);
        held.push(stream);
    }
    assert_eq!(results, [Ok(101), Ok(101), Ok(429), Ok(101)]);
}
