//! The HTTP side of the one port (SPEC §3): every status the server answers, the page, and the
//! ways a request can arrive (split, pipelined, with a frame behind it).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const ACCEPT_FOR_RFC_KEY: &str = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

/// Error responses carry a short text that says why; nothing like a page or a stack trace.
const MAX_ERROR_BODY: usize = 120;

/// Sends `request` on a fresh connection, asserts the server answers once and then closes the
/// connection, and returns the status, head and body.
fn answer_then_close(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = tcp_connect(addr);
    let (status, head, body) = http_request(&mut stream, request);
    assert_closed(&mut stream);
    (status, head, body)
}

/// Asserts an error response: the status and a short, non-empty body that says why.
fn assert_error(response: &(u16, String, String), status: u16) {
    let (got, head, body) = response;
    assert_eq!(*got, status, "unexpected status in\n{head}{body}");
    assert!(
        !body.is_empty() && body.len() <= MAX_ERROR_BODY,
        "error body should be a short reason: {body:?}"
    );
}

fn upgrade_with(addr: SocketAddr, key: &str, version: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

#[test]
fn valid_upgrade_answers_101_with_the_rfc_accept_key() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    stream
        .write_all(upgrade_request(addr, "/ws", "").as_bytes())
        .expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    for line in [
        "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",
        ACCEPT_FOR_RFC_KEY,
    ] {
        assert!(head.contains(line), "missing {line:?} in\n{head}");
    }
    assert!(
        !head.contains("Content-Length"),
        "a 101 has no body: {head}"
    );
}

#[test]
fn plain_get_on_the_websocket_path_is_426_with_the_version() {
    let addr = start(&[]);
    let response = get(addr, "/ws");
    assert_error(&response, 426);
    assert!(
        response.1.contains("Sec-WebSocket-Version: 13\r\n"),
        "{}",
        response.1
    );
}

#[test]
fn bad_or_missing_key_is_400_and_closed() {
    let addr = start(&[]);
    for key in ["abc", "dGhlIHNhbXBsZSBub25jZQ", "!!!!!!!!!!!!!!!!!!!!!!=="] {
        assert_error(
            &answer_then_close(addr, &upgrade_with(addr, key, "13", "")),
            400,
        );
    }
    let no_key = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_error(&answer_then_close(addr, &no_key), 400);
}

#[test]
fn version_other_than_13_is_400_with_the_supported_version() {
    let addr = start(&[]);
    for version in ["8", "14", ""] {
        let response = answer_then_close(
            addr,
            &upgrade_with(addr, "dGhlIHNhbXBsZSBub25jZQ==", version, ""),
        );
        assert_error(&response, 400);
        assert!(
            response.1.contains("Sec-WebSocket-Version: 13\r\n"),
            "{}",
            response.1
        );
    }
}

#[test]
fn foreign_origin_is_403() {
    let addr = start(&[]);
    let response = answer_then_close(
        addr,
        &upgrade_request(addr, "/ws", "Origin: https://evil.example\r\n"),
    );
    assert_error(&response, 403);
}

#[test]
fn listed_origin_is_allowed() {
    let addr = start(&["--allow-origin", "https://chat.example"]);
    let mut stream = tcp_connect(addr);
    let request = upgrade_request(addr, "/ws", "Origin: https://chat.example\r\n");
    stream.write_all(request.as_bytes()).expect("send upgrade");
    assert!(read_head(&mut stream).starts_with("HTTP/1.1 101 "));
    let other = answer_then_close(
        addr,
        &upgrade_request(addr, "/ws", "Origin: https://other.example\r\n"),
    );
    assert_error(&other, 403);
}

#[test]
fn same_origin_page_may_upgrade() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    let request = upgrade_request(addr, "/ws", &format!("Origin: http://{addr}\r\n"));
    stream.write_all(request.as_bytes()).expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 ") && head.contains(ACCEPT_FOR_RFC_KEY),
        "{head}"
    );
}

#[test]
fn unknown_path_is_404() {
    let addr = start(&[]);
    assert_error(&get(addr, "/nope"), 404);
    assert_error(&get(addr, "/assets/missing.js"), 404);
}

#[test]
fn wrong_method_on_a_known_path_is_405_with_allow() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    let response = http_request(
        &mut stream,
        &format!("DELETE /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_error(&response, 405);
    assert!(
        response.1.contains("Allow: GET, HEAD\r\n"),
        "{}",
        response.1
    );
    let response = http_request(
        &mut stream,
        &format!("POST /ws HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_error(&response, 405);
    assert!(response.1.contains("Allow: GET\r\n"), "{}", response.1);
}

#[test]
fn head_over_max_header_bytes_is_431_and_closed() {
    let addr = start(&["--max-header-bytes", "1KiB"]);
    let padding = "x".repeat(2000);
    let response = answer_then_close(
        addr,
        &upgrade_request(addr, "/ws", &format!("X-Padding: {padding}\r\n")),
    );
    assert_error(&response, 431);
    // A head that never ends is cut off at the limit too, without waiting for the blank line.
    let endless = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {padding}");
    assert_error(&answer_then_close(addr, &endless), 431);
    // Just under the limit is fine.
    let (status, _, body) = get(addr, &format!("/healthz?{}", "y".repeat(900)));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn upgrade_beyond_max_connections_is_503_until_a_slot_frees() {
    let addr = start(&["--max-connections", "1"]);
    let first = connect(addr, "/ws");
    let response = answer_then_close(addr, &upgrade_request(addr, "/ws", ""));
    assert_error(&response, 503);
    // Plain HTTP is not a WebSocket connection and still works at capacity.
    assert_eq!(get(addr, "/healthz").0, 200);
    drop(first);
    eventually("the slot to free up", || {
        metric(addr, "wshub_connections") == 0
    });
    connect(addr, "/ws");
}

#[test]
fn malformed_request_is_400_and_closed() {
    let addr = start(&[]);
    for request in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://user@example.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_error(&answer_then_close(addr, request), 400);
    }
}

#[test]
fn index_page_is_the_embedded_html() {
    let addr = start(&[]);
    let (status, head, body) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert_eq!(body.as_bytes(), include_bytes!("../assets/index.html"));
}

#[test]
fn page_assets_are_served_with_their_types() {
    let addr = start(&[]);
    let cases: [(&str, &str, &[u8]); 3] = [
        (
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/app.js"),
        ),
        (
            "/assets/wshub.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/wshub.js"),
        ),
        (
            "/assets/style.css",
            "text/css; charset=utf-8",
            include_bytes!("../assets/style.css"),
        ),
    ];
    for (path, content_type, expected) in cases {
        let (status, head, body) = get(addr, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("Content-Type: {content_type}\r\n")),
            "{path}: {head}"
        );
        assert_eq!(body.as_bytes(), expected, "{path}");
    }
}

#[test]
fn path_traversal_is_404() {
    let addr = start(&[]);
    for path in [
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/Cargo.toml",
        "/assets/%2E%2E%2FCargo.toml",
        "/assets/..%2fCargo.toml",
        "/assets//etc/passwd",
        "/assets/../src/main.rs",
    ] {
        let response = get(addr, path);
        assert_error(&response, 404);
        assert!(!response.2.contains("[package]"), "{path} leaked a file");
    }
}

#[test]
fn assets_flag_serves_a_folder_instead_of_the_embedded_page() {
    let dir =
        std::env::temp_dir().join(format!("wshub-http-surface-assets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create asset folder");
    std::fs::write(dir.join("index.html"), "<h1>custom</h1>\n").expect("write index");
    std::fs::write(dir.join("app.js"), "console.log('custom');\n").expect("write app.js");
    let addr = start(&["--assets", dir.to_str().expect("UTF-8 temp path")]);
    std::fs::remove_dir_all(&dir).expect("remove asset folder");

    let (status, head, body) = get(addr, "/");
    assert_eq!((status, body.as_str()), (200, "<h1>custom</h1>\n"));
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    let (status, head, body) = get(addr, "/assets/app.js");
    assert_eq!((status, body.as_str()), (200, "console.log('custom');\n"));
    assert!(
        head.contains("Content-Type: text/javascript; charset=utf-8\r\n"),
        "{head}"
    );
    assert_eq!(
        get(addr, "/assets/style.css").0,
        404,
        "the embedded files are not mixed in"
    );
}

#[test]
fn healthz_answers_ok() {
    let addr = start(&[]);
    let (status, _, body) = get(addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn head_request_gets_the_headers_without_a_body() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    stream
        .write_all(format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("send HEAD");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length = include_bytes!("../assets/index.html").len();
    assert!(
        head.contains(&format!("Content-Length: {length}\r\n")),
        "{head}"
    );
    // The next bytes on the connection belong to the next response, not to a body.
    let (status, _, body) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    let (status, head, body) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(!head.contains("Connection: close"), "{head}");
    let (status, _, body) = http_request(
        &mut stream,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!(
        (status, body.as_bytes()),
        (200, &include_bytes!("../assets/index.html")[..])
    );
    // Two pipelined requests in one write get two responses, in order.
    let pipelined = format!(
        "GET /nope HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    assert_eq!(http_request(&mut stream, &pipelined).0, 404);
    assert_eq!(http_request(&mut stream, "").0, 200);
    // `Connection: close` is honoured.
    let (status, head, _) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_closed(&mut stream);
}

#[test]
fn upgrade_sent_one_byte_at_a_time_still_upgrades() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = tcp_connect(addr);
    stream.set_nodelay(true).expect("nodelay");
    for byte in upgrade_request(addr, "/ws", "").as_bytes() {
        stream
            .write_all(std::slice::from_ref(byte))
            .expect("send one byte");
        stream.flush().expect("flush");
        // Give the server a chance to read each byte on its own.
        std::thread::sleep(Duration::from_micros(500));
    }
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 ") && head.contains(ACCEPT_FOR_RFC_KEY),
        "{head}"
    );
    stream
        .write_all(&client_frame(0x81, b"split"))
        .expect("send frame");
    assert_eq!(read_frame(&mut stream), (0x81, b"split".to_vec()));
}

#[test]
fn frame_in_the_same_write_as_the_upgrade_is_processed() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = tcp_connect(addr);
    let mut bytes = upgrade_request(addr, "/ws", "").into_bytes();
    bytes.extend_from_slice(&client_frame(0x81, b"early"));
    bytes.extend_from_slice(&client_frame(0x82, &[1, 2, 3]));
    stream.write_all(&bytes).expect("send upgrade and frames");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_frame(&mut stream), (0x81, b"early".to_vec()));
    assert_eq!(read_frame(&mut stream), (0x82, vec![1, 2, 3]));
}

#[test]
fn ws_path_flag_moves_the_websocket_endpoint() {
    let addr = start(&["--ws-path", "/chat"]);
    let mut stream = tcp_connect(addr);
    stream
        .write_all(upgrade_request(addr, "/chat", "").as_bytes())
        .expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 ") && head.contains(ACCEPT_FOR_RFC_KEY),
        "{head}"
    );
    assert_error(&get(addr, "/ws"), 404);
}

#[test]
fn http_1_0_request_is_answered_and_closed() {
    let addr = start(&[]);
    let (status, head, body) = answer_then_close(addr, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(head.contains("Connection: close\r\n"), "{head}");
}

#[test]
fn request_body_is_skipped_before_the_next_request() {
    let addr = start(&[]);
    let mut stream = tcp_connect(addr);
    // The body looks like a request of its own; it must not be read as one.
    let body = "GET /nope HTTP/1.1\r\n\r\n";
    let post = format!(
        "POST /healthz HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = http_request(&mut stream, &post);
    assert_error(&response, 405);
    let (status, _, body) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn post_without_content_length_is_411_and_closed() {
    let addr = start(&[]);
    let response = answer_then_close(
        addr,
        &format!("POST /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_error(&response, 411);
}

#[test]
fn keep_alive_connection_may_upgrade_after_a_plain_request() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = tcp_connect(addr);
    let (status, _, _) = http_request(
        &mut stream,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!(status, 200);
    stream
        .write_all(upgrade_request(addr, "/ws", "").as_bytes())
        .expect("send upgrade");
    assert!(read_head(&mut stream).starts_with("HTTP/1.1 101 "));
    stream
        .write_all(&client_frame(0x81, b"upgraded"))
        .expect("send frame");
    assert_eq!(read_frame(&mut stream), (0x81, b"upgraded".to_vec()));
}

/// Resident memory of process `pid` in bytes, from `/proc`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

#[test]
fn pipelined_requests_from_a_client_that_does_not_read_are_not_buffered_without_bound() {
    const REQUESTS: usize = 2000;
    /// Far above --max-buffered, far below the ~48 MB all the answers add up to.
    const MAX_GROWTH: u64 = 16 << 20;
    let daemon = Daemon::spawn(&["--max-buffered", "1MiB"]);
    let request = format!(
        "GET /assets/app.js HTTP/1.1\r\nHost: {}\r\n\r\n",
        daemon.addr
    );
    let mut probe = tcp_connect(daemon.addr);
    let (_, head, body) = http_request(&mut probe, &request);
    let answer = [head.as_bytes(), body.as_bytes()].concat();
    let before = resident_bytes(daemon.child.id());

    let mut stream = tcp_connect(daemon.addr);
    stream
        .write_all(request.repeat(REQUESTS).as_bytes())
        .expect("pipeline the requests");
    // A ~50-byte request asks for a 24 KB answer: while the client reads nothing, the server
    // must stop taking requests (or drop the client) rather than queue every answer.
    for _ in 0..15 {
        let growth = resident_bytes(daemon.child.id()).saturating_sub(before);
        assert!(
            growth < MAX_GROWTH,
            "the server grew by {} MiB for one client that does not read",
            growth >> 20
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answers = vec![0u8; answer.len() * REQUESTS];
    std::io::Read::read_exact(&mut stream, &mut answers).expect("read every answer");
    assert!(
        answers == answer.repeat(REQUESTS),
        "answers lost, damaged or reordered"
    );
}
