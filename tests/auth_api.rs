//! Who may connect and as whom (SPEC §4: JWT, token carriers, Origin, trusted proxies) and the
//! HTTP API (SPEC §3 `/api/*`), over real sockets with real HS256 tokens.

mod common;

use std::net::{SocketAddr, TcpStream};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use common::*;

const SECRET: &str = "s3cret";
const API_KEY: &str = "k3y";
/// A documentation address (RFC 5737) that never is the test's own peer address.
const FORWARDED_CLIENT: &str = "203.0.113.7";

/// An HS256 token over `claims`, signed with `secret`.
fn sign_with(secret: &str, claims: &Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign test token")
}

/// A token for `sub` valid for an hour, signed with the server's secret.
fn token_for(sub: &str) -> String {
    sign_with(SECRET, &json!({"sub": sub, "exp": now_secs() + 3600}))
}

/// Sends an upgrade request for `path` with `extra` header lines on a fresh connection and
/// returns the status, head and body of an answer that is not a `101` (the server closes
/// after a refusal, so everything it sent is read).
fn refused_upgrade(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let answer = raw_exchange(addr, upgrade_request(addr, path, extra).as_bytes());
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {answer:?}"));
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    assert_ne!(status, 101, "expected a refusal, got {answer}");
    (status, format!("{head}\r\n\r\n"), body.to_owned())
}

/// Asserts a `401` whose body is a short reason mentioning `reason_word` and never `token`.
fn assert_unauthorized(answer: &(u16, String, String), reason_word: &str, token: &str) {
    let (status, head, body) = answer;
    assert_eq!(*status, 401, "{head}{body}");
    assert!(
        body.contains(reason_word),
        "401 body should say why ({reason_word:?}): {body:?}"
    );
    if !token.is_empty() {
        assert!(
            !head.contains(token) && !body.contains(token),
            "the 401 reveals the token: {head}{body}"
        );
    }
}

/// The users `client` sees online, through the `online` event.
fn online_users(client: &mut Client) -> Value {
    request_json(client, r#"{"event":"online"}"#)["data"]["users"].clone()
}

/// The value of the `name` header in a response head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

// ---- JWT ----

#[test]
fn valid_token_upgrades_and_its_sub_is_the_user_id() {
    let addr = start(&["--jwt-secret", SECRET]);
    // `?user=` cannot override the identity the token proves.
    let alice_path = format!("/ws?user=mallory&token={}", token_for("alice"));
    let mut alice = connect(addr, &alice_path);
    assert_eq!(online_users(&mut alice), json!(["alice"]));
    let mut bob = connect(addr, &format!("/ws?token={}", token_for("bob")));
    request_json(&mut alice, r#"{"event":"join","room":"lobby"}"#);
    request_json(&mut bob, r#"{"event":"join","room":"lobby"}"#);
    assert_eq!(
        next_json(&mut alice),
        json!({"event": "presence", "room": "lobby", "data": {"user": "bob", "state": "join"}})
    );
}

#[test]
fn expired_token_is_401_with_a_reason() {
    let addr = start(&["--jwt-secret", SECRET]);
    let expired = sign_with(SECRET, &json!({"sub": "alice", "exp": now_secs() - 3600}));
    let answer = refused_upgrade(addr, &format!("/ws?token={expired}"), "");
    assert_unauthorized(&answer, "expired", &expired);
    assert_eq!(
        header(&answer.1, "WWW-Authenticate"),
        Some("Bearer"),
        "{}",
        answer.1
    );
}

#[test]
fn token_signed_with_another_secret_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    let forged = sign_with(
        "not-the-secret",
        &json!({"sub": "alice", "exp": now_secs() + 3600}),
    );
    let answer = refused_upgrade(addr, &format!("/ws?token={forged}"), "");
    assert_unauthorized(&answer, "signature", &forged);
}

#[test]
fn unsigned_alg_none_token_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({"sub": "alice", "exp": now_secs() + 3600}).to_string();
    let unsigned = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims));
    let answer = refused_upgrade(addr, &format!("/ws?token={unsigned}"), "");
    assert_unauthorized(&answer, "algorithm", &unsigned);
}

#[test]
fn token_without_sub_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    let anonymous = sign_with(SECRET, &json!({"exp": now_secs() + 3600}));
    let answer = refused_upgrade(addr, &format!("/ws?token={anonymous}"), "");
    assert_unauthorized(&answer, "sub", &anonymous);
}

#[test]
fn token_without_exp_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    let eternal = sign_with(SECRET, &json!({"sub": "alice"}));
    let answer = refused_upgrade(addr, &format!("/ws?token={eternal}"), "");
    assert_unauthorized(&answer, "exp", &eternal);
}

#[test]
fn upgrade_without_a_token_is_401_even_with_a_user_parameter() {
    let addr = start(&["--jwt-secret", SECRET]);
    assert_unauthorized(&refused_upgrade(addr, "/ws", ""), "token", "");
    assert_unauthorized(&refused_upgrade(addr, "/ws?user=alice", ""), "token", "");
}

#[test]
fn rooms_claim_limits_which_rooms_may_be_joined() {
    let addr = start(&["--jwt-secret", SECRET]);
    let token = sign_with(
        SECRET,
        &json!({"sub": "carol", "exp": now_secs() + 3600, "rooms": ["lobby", "team-*"]}),
    );
    let mut carol = connect(addr, &format!("/ws?token={token}"));
    for room in ["lobby", "team-x"] {
        let reply = request_json(
            &mut carol,
            &json!({"event": "join", "room": room}).to_string(),
        );
        assert_eq!(
            (
                &reply["event"],
                &reply["code"],
                &reply["room"],
                &reply["data"]["count"]
            ),
            (&json!("join"), &json!(0), &json!(room), &json!(1)),
            "{reply}"
        );
    }
    for room in ["secret", "team", "lobby2"] {
        let reply = request_json(
            &mut carol,
            &json!({"event": "join", "room": room, "id": room}).to_string(),
        );
        assert_eq!(
            (&reply["event"], &reply["id"], &reply["code"]),
            (&json!("join"), &json!(room), &json!(403)),
            "{reply}"
        );
    }
    let hidden = request_json(&mut carol, r#"{"event":"online","room":"secret"}"#);
    assert_eq!(
        hidden["code"],
        json!(403),
        "a room outside the claim is not visible: {hidden}"
    );
    let mut observer = connect(addr, &format!("/ws?token={}", token_for("observer")));
    for room in ["secret", "team", "lobby2"] {
        let online = request_json(
            &mut observer,
            &json!({"event": "online", "room": room}).to_string(),
        );
        assert_eq!(
            online["data"]["users"],
            json!([]),
            "carol must not be in {room}: {online}"
        );
    }
}

#[test]
fn token_in_the_token_query_parameter_is_accepted() {
    let addr = start(&["--jwt-secret", SECRET]);
    let (_, mut client) =
        connect_with_headers(addr, &format!("/ws?token={}", token_for("alice")), "");
    assert_eq!(online_users(&mut client), json!(["alice"]));
}

#[test]
fn token_in_the_authorization_query_parameter_is_accepted() {
    let addr = start(&["--jwt-secret", SECRET]);
    let path = format!("/ws?authorization=Bearer%20{}", token_for("alice"));
    let (_, mut client) = connect_with_headers(addr, &path, "");
    assert_eq!(online_users(&mut client), json!(["alice"]));
}

#[test]
fn token_in_the_authorization_header_is_accepted() {
    let addr = start(&["--jwt-secret", SECRET]);
    let extra = format!("Authorization: Bearer {}\r\n", token_for("alice"));
    let (_, mut client) = connect_with_headers(addr, "/ws", &extra);
    assert_eq!(online_users(&mut client), json!(["alice"]));
}

#[test]
fn token_in_the_subprotocol_list_is_accepted_and_only_wshub_is_answered() {
    let addr = start(&["--jwt-secret", SECRET]);
    let token = token_for("alice");
    let extra = format!("Sec-WebSocket-Protocol: wshub, bearer.{token}\r\n");
    let (head, mut client) = connect_with_headers(addr, "/ws", &extra);
    assert_eq!(
        header(&head, "Sec-WebSocket-Protocol"),
        Some("wshub"),
        "{head}"
    );
    assert!(!head.contains(&token), "the 101 echoes the token: {head}");
    assert_eq!(online_users(&mut client), json!(["alice"]));
}

#[test]
fn refusals_never_reveal_the_token_in_the_answer_or_the_log() {
    let daemon = Daemon::spawn(&["--jwt-secret", SECRET, "--log-level", "debug"]);
    let addr = daemon.addr;
    let expired = sign_with(SECRET, &json!({"sub": "alice", "exp": now_secs() - 3600}));
    let forged = sign_with("other", &json!({"sub": "alice", "exp": now_secs() + 3600}));
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(json!({"sub": "alice", "exp": now_secs() + 3600}).to_string())
    );
    let attempts = [
        (
            format!("/ws?token={expired}"),
            String::new(),
            "expired",
            &expired,
        ),
        (
            "/ws".to_owned(),
            format!("Authorization: Bearer {forged}\r\n"),
            "signature",
            &forged,
        ),
        (
            "/ws".to_owned(),
            format!("Sec-WebSocket-Protocol: wshub, bearer.{unsigned}\r\n"),
            "algorithm",
            &unsigned,
        ),
    ];
    for (path, extra, reason, token) in &attempts {
        assert_unauthorized(&refused_upgrade(addr, path, extra), reason, token);
        let line = daemon.wait_for_line(reason);
        assert!(line.contains("127.0.0.1: upgrade refused"), "{line}");
    }
    let log = daemon.log();
    for (_, _, _, token) in &attempts {
        // The payload and signature are what make a token usable; neither may be logged.
        for secret_part in token.split('.').skip(1).filter(|part| !part.is_empty()) {
            assert!(
                !log.contains(secret_part),
                "the log reveals a token:\n{log}"
            );
        }
    }
}

#[test]
fn jwt_secret_file_supplies_the_secret() {
    let path = std::env::temp_dir().join(format!("wshub-auth-api-secret-{}", std::process::id()));
    std::fs::write(&path, "from-a-file\n").expect("write secret file");
    let addr = start(&["--jwt-secret-file", path.to_str().expect("UTF-8 temp path")]);
    std::fs::remove_file(&path).expect("remove secret file");

    let claims = json!({"sub": "alice", "exp": now_secs() + 3600});
    let mut alice = connect(
        addr,
        &format!("/ws?token={}", sign_with("from-a-file", &claims)),
    );
    assert_eq!(online_users(&mut alice), json!(["alice"]));
    let wrong = sign_with("from-a-file\n", &claims);
    assert_unauthorized(
        &refused_upgrade(addr, &format!("/ws?token={wrong}"), ""),
        "signature",
        &wrong,
    );
}

// ---- Origin ----

#[test]
fn foreign_origin_is_403() {
    let addr = start(&[]);
    let (status, head, _) = refused_upgrade(addr, "/ws", "Origin: https://evil.example\r\n");
    assert_eq!(status, 403, "{head}");
}

#[test]
fn listed_origin_is_101_and_others_still_403() {
    let addr = start(&["--allow-origin", "https://chat.example"]);
    connect_with_headers(addr, "/ws", "Origin: https://chat.example\r\n");
    let (status, head, _) = refused_upgrade(addr, "/ws", "Origin: https://evil.example\r\n");
    assert_eq!(status, 403, "{head}");
}

#[test]
fn wildcard_allow_origin_accepts_every_origin() {
    let addr = start(&["--allow-origin", "*"]);
    for origin in ["https://evil.example", "http://localhost:3000", "null"] {
        connect_with_headers(addr, "/ws", &format!("Origin: {origin}\r\n"));
    }
}

// ---- trusted proxies ----

/// Opens a WebSocket as `user` with `extra` headers on a logged daemon and returns the debug
/// line that records the open connection, which names the client address the server believed.
fn open_line(daemon: &Daemon, user: &str, extra: &str) -> String {
    let (_, client) = connect_with_headers(daemon.addr, &format!("/ws?user={user}"), extra);
    let line = daemon.wait_for_line(&format!("WebSocket open as {user}"));
    drop(client);
    line
}

#[test]
fn forwarded_for_from_a_trusted_proxy_is_believed() {
    let daemon = Daemon::spawn(&["--trusted-proxy", "127.0.0.1/32", "--log-level", "debug"]);
    let forwarded = open_line(
        &daemon,
        "via-xff",
        &format!("X-Forwarded-For: {FORWARDED_CLIENT}\r\n"),
    );
    assert!(
        forwarded.contains(&format!("{FORWARDED_CLIENT}: WebSocket open as via-xff")),
        "{forwarded}"
    );
    let real_ip = open_line(&daemon, "via-real-ip", "X-Real-IP: 198.51.100.9\r\n");
    assert!(
        real_ip.contains("198.51.100.9: WebSocket open as via-real-ip"),
        "{real_ip}"
    );
    let direct = open_line(&daemon, "no-header", "");
    assert!(
        direct.contains("127.0.0.1: WebSocket open as no-header"),
        "{direct}"
    );
}

#[test]
fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    for args in [
        &["--log-level", "debug"][..],
        &["--trusted-proxy", "10.0.0.0/8", "--log-level", "debug"][..],
    ] {
        let daemon = Daemon::spawn(args);
        let extra =
            format!("X-Forwarded-For: {FORWARDED_CLIENT}\r\nX-Real-IP: {FORWARDED_CLIENT}\r\n");
        let line = open_line(&daemon, "spoofer", &extra);
        assert!(
            line.contains("127.0.0.1: WebSocket open as spoofer"),
            "{args:?}: {line}"
        );
        assert!(
            !daemon.log().contains(FORWARDED_CLIENT),
            "{args:?}: the spoofed address was believed:\n{}",
            daemon.log()
        );
    }
}

// ---- HTTP API ----

/// Sends `request` on a fresh connection and reads one response.
fn http_once(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    http_request(&mut stream, request)
}

fn api_get(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\r\n")
}

fn publish_request(addr: SocketAddr, body: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Asserts a JSON answer with `status` and returns its body.
fn json_answer(answer: &(u16, String, String), status: u16) -> Value {
    let (got, head, body) = answer;
    assert_eq!(*got, status, "{head}{body}");
    let content_type = header(head, "Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "not JSON: {head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"))
}

/// Asserts an API error: `status` and `{"error": reason}`.
fn assert_api_error(answer: &(u16, String, String), status: u16) {
    let body = json_answer(answer, status);
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
}

/// Publishes `body` and returns the answer's `delivered`.
fn publish(addr: SocketAddr, body: &str) -> Value {
    json_answer(&http_once(addr, &publish_request(addr, body)), 200)
}

fn api_server() -> SocketAddr {
    start(&["--api-key", API_KEY])
}

#[test]
fn api_is_404_without_an_api_key() {
    let addr = start(&[]);
    assert_api_error(&http_once(addr, &api_get(addr, "/api/online")), 404);
    assert_api_error(
        &http_once(addr, &publish_request(addr, r#"{"data":1}"#)),
        404,
    );
}

#[test]
fn api_without_or_with_a_wrong_key_is_401() {
    let addr = api_server();
    let missing = http_once(
        addr,
        &format!("GET /api/online HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert_api_error(&missing, 401);
    assert_eq!(
        header(&missing.1, "WWW-Authenticate"),
        Some("Bearer"),
        "{}",
        missing.1
    );
    for authorization in ["Bearer k3y-not", "Bearer K3Y", "Basic k3y", "k3y"] {
        let wrong = format!(
            "GET /api/online HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\r\n"
        );
        assert_api_error(&http_once(addr, &wrong), 401);
    }
}

#[test]
fn api_wrong_method_is_405_with_allow() {
    let addr = api_server();
    let post_online = format!(
        "POST /api/online HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = http_once(addr, &post_online);
    assert_api_error(&answer, 405);
    assert_eq!(header(&answer.1, "Allow"), Some("GET"), "{}", answer.1);
    let answer = http_once(addr, &api_get(addr, "/api/publish"));
    assert_api_error(&answer, 405);
    assert_eq!(header(&answer.1, "Allow"), Some("POST"), "{}", answer.1);
}

#[test]
fn api_online_matches_the_connected_users_and_room_members() {
    let addr = api_server();
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let _alice_tab2 = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let _carol = connect(addr, "/ws?user=carol");
    request_json(&mut alice_tab1, r#"{"event":"join","room":"lobby"}"#);
    request_json(&mut bob, r#"{"event":"join","room":"lobby"}"#);
    assert_eq!(
        json_answer(&http_once(addr, &api_get(addr, "/api/online")), 200),
        json!({"room": null, "count": 3, "users": ["alice", "bob", "carol"], "connections": 4})
    );
    assert_eq!(
        json_answer(
            &http_once(addr, &api_get(addr, "/api/online?room=lobby")),
            200
        ),
        json!({"room": "lobby", "count": 2, "users": ["alice", "bob"], "connections": 2})
    );
    request_json(&mut bob, r#"{"event":"join","room":"café 2"}"#);
    assert_eq!(
        json_answer(
            &http_once(addr, &api_get(addr, "/api/online?room=caf%C3%A9+2")),
            200
        ),
        json!({"room": "café 2", "count": 1, "users": ["bob"], "connections": 1})
    );
    assert_eq!(
        json_answer(
            &http_once(addr, &api_get(addr, "/api/online?room=empty")),
            200
        ),
        json!({"room": "empty", "count": 0, "users": [], "connections": 0})
    );
}

/// Removes `ts` after checking it is a Unix time in milliseconds.
fn without_ts(mut event: Value) -> Value {
    let ts = event.as_object_mut().and_then(|fields| fields.remove("ts"));
    let now_ms = now_secs() * 1000;
    assert!(
        ts.as_ref()
            .and_then(Value::as_u64)
            .is_some_and(|ts| ts.abs_diff(now_ms) < 10_000),
        "expected a ts near {now_ms} in {event} (got {ts:?})"
    );
    event
}

#[test]
fn api_publish_to_a_room_reaches_its_members_without_from() {
    let addr = api_server();
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let mut carol = connect(addr, "/ws?user=carol");
    request_json(&mut alice, r#"{"event":"join","room":"lobby"}"#);
    request_json(&mut bob, r#"{"event":"join","room":"lobby"}"#);
    assert_eq!(next_json(&mut alice)["event"], "presence");

    let answer = publish(
        addr,
        r#"{"room":"lobby","data":{"note":"maintenance at 5"}}"#,
    );
    // A room message is numbered (SPEC §11): the answer says where it landed.
    let epoch = &answer["epoch"];
    assert!(epoch.is_string(), "{answer}");
    assert_eq!(answer, json!({"delivered": 2, "offset": 1, "epoch": epoch}));
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            without_ts(next_json(client)),
            json!({"event": "message", "room": "lobby", "data": {"note": "maintenance at 5"},
                   "offset": 1})
        );
    }
    assert_nothing_pending(&mut carol);
}

#[test]
fn api_publish_to_a_user_sends_direct_without_from_to_each_connection() {
    let addr = api_server();
    let mut alice_tab1 = connect(addr, "/ws?user=alice");
    let mut alice_tab2 = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    assert_eq!(
        publish(addr, r#"{"to":"alice","data":"ding"}"#),
        json!({"delivered": 2})
    );
    for client in [&mut alice_tab1, &mut alice_tab2] {
        assert_eq!(
            without_ts(next_json(client)),
            json!({"event": "direct", "data": "ding"})
        );
    }
    assert_nothing_pending(&mut bob);
}

#[test]
fn api_publish_to_everyone_has_neither_room_nor_from() {
    let addr = api_server();
    let mut alice = connect(addr, "/ws?user=alice");
    let mut bob = connect(addr, "/ws?user=bob");
    let mut anonymous = connect(addr, "/ws");
    request_json(&mut bob, r#"{"event":"join","room":"lobby"}"#);
    assert_eq!(
        publish(addr, r#"{"data":[1,2.50,"three"]}"#),
        json!({"delivered": 3})
    );
    for client in [&mut alice, &mut bob, &mut anonymous] {
        let text = next_text(client);
        assert!(text.contains(r#""data":[1,2.50,"three"]"#), "{text}");
        let event: Value = serde_json::from_str(&text).expect("JSON event");
        assert_eq!(
            without_ts(event),
            json!({"event": "message", "data": [1, 2.50, "three"]})
        );
    }
}

#[test]
fn api_publish_with_bad_json_is_400_json() {
    let addr = api_server();
    for body in ["{oops", "[1]", "", r#"{"room":"lobby"}"#] {
        let answer = http_once(addr, &publish_request(addr, body));
        assert_api_error(&answer, 400);
    }
}

#[test]
fn api_publish_without_content_length_is_411() {
    let addr = api_server();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n\r\n"
    );
    let (status, head, body) = http_once(addr, &request);
    assert_eq!(status, 411, "{head}{body}");
}

#[test]
fn api_publish_body_over_the_size_limit_is_413() {
    let addr = start(&["--api-key", API_KEY, "--max-message-size", "1KiB"]);
    let body = json!({"data": "x".repeat(2048)}).to_string();
    let (status, head, text) = http_once(addr, &publish_request(addr, &body));
    assert_eq!(status, 413, "{head}{text}");
}

#[test]
fn api_publish_with_a_non_json_content_type_is_415() {
    let addr = api_server();
    let body = r#"{"data":1}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_api_error(&http_once(addr, &request), 415);
}

#[test]
fn api_publish_accepts_json_content_type_in_any_case_and_with_parameters() {
    // RFC 9110 §8.3.1: type and subtype are case-insensitive; parameters may follow.
    let addr = api_server();
    let body = r#"{"data":1}"#;
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "APPLICATION/JSON;charset=UTF-8",
    ] {
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = http_once(addr, &request);
        assert_eq!(
            answer.0, 200,
            "Content-Type: {content_type} was refused: {}{}",
            answer.1, answer.2
        );
        assert_eq!(json_answer(&answer, 200), json!({"delivered": 0}));
    }
}

#[test]
fn api_serves_two_calls_on_one_keep_alive_connection() {
    let addr = api_server();
    let mut alice = connect(addr, "/ws?user=alice");
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let online = json_answer(
        &http_request(&mut stream, &api_get(addr, "/api/online")),
        200,
    );
    assert_eq!(online["users"], json!(["alice"]), "{online}");
    let published = json_answer(
        &http_request(
            &mut stream,
            &publish_request(addr, r#"{"data":"second call"}"#),
        ),
        200,
    );
    assert_eq!(published, json!({"delivered": 1}));
    assert_eq!(next_json(&mut alice)["data"], "second call");
}
