//! Issue 11, points 5–7, as an attacker would try them over real sockets: a `rooms` claim that
//! reaches past its rooms, DNS rebinding, a `crit` token, an oversized `sub`, a signed
//! `Content-Length`, absolute-form targets, and guessable anonymous ids (SPEC §3, §4).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use common::*;

const SECRET: &str = "s3cret";
const API_KEY: &str = "k3y";
/// The name a rebinding attacker controls: its DNS answer flips to 127.0.0.1 after the page
/// loaded, so the browser sends this Host and a matching Origin to the loopback daemon.
const REBIND_HOST: &str = "rebind.attacker.example";
/// How long a test waits for the server to close a connection it refused; a keep-alive
/// connection the server leaves open shows up as a timeout instead.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// An HS256 token over `claims` with `header`, signed with the server's secret.
fn sign(header: &Header, claims: &Value) -> String {
    encode(header, claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign token")
}

/// A token valid for an hour for `sub`, with extra `claims` merged in.
fn token(sub: &str, claims: Value) -> String {
    let mut all = json!({"sub": sub, "exp": now_secs() + 3600});
    if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), claims) {
        all.extend(extra);
    }
    sign(&Header::new(Algorithm::HS256), &all)
}

/// Sends `request` on a fresh connection; returns what came back and whether the server closed
/// the connection (EOF) within [`CLOSE_WAIT`] of its answer.
fn exchange(addr: SocketAddr, request: &str) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(CLOSE_WAIT))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// The status code of the first response in `answer` (0 when there is none).
fn status(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The status the server answers an upgrade request for `path` with, sent with `Host: host`
/// and `extra` header lines.
fn upgrade_status(addr: SocketAddr, host: &str, path: &str, extra: &str) -> u16 {
    let mut stream = tcp_connect(addr);
    stream
        .write_all(wire::upgrade_request(host, path, extra).as_bytes())
        .expect("send upgrade");
    status(&read_head(&mut stream))
}

/// The user ids `client` sees online.
fn online_users(client: &mut Client) -> Vec<String> {
    let online = request_json(client, r#"{"event":"online"}"#);
    online["data"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {online}"))
        .iter()
        .map(|user| user.as_str().expect("user id").to_owned())
        .collect()
}

// ---- 5. the rooms claim bounds everything reached by room ----

#[test]
fn rooms_claim_without_star_cannot_message_everyone_or_list_who_is_online() {
    let addr = start(&["--jwt-secret", SECRET]);
    let mut bystander = connect(
        addr,
        &format!("/ws?token={}", token("bystander", json!({}))),
    );
    let team_token = token("teamer", json!({"rooms": ["team-*"]}));
    let mut teamer = connect(addr, &format!("/ws?token={team_token}"));

    let broadcast = request_json(
        &mut teamer,
        r#"{"event":"message","data":"to everyone","id":"b"}"#,
    );
    assert_eq!(
        (&broadcast["event"], &broadcast["id"], &broadcast["code"]),
        (&json!("message"), &json!("b"), &json!(403)),
        "a message to everyone went out: {broadcast}"
    );
    assert_nothing_pending(&mut bystander);

    let online = request_json(&mut teamer, r#"{"event":"online"}"#);
    assert_eq!(
        online["code"],
        json!(403),
        "online listed everyone: {online}"
    );
    assert!(online.get("data").is_none(), "{online}");

    // Within its rooms, and to a named user, the token still works.
    request_json(&mut teamer, r#"{"event":"join","room":"team-a"}"#);
    let team_online = request_json(&mut teamer, r#"{"event":"online","room":"team-a"}"#);
    assert_eq!(
        team_online["data"]["users"],
        json!(["teamer"]),
        "{team_online}"
    );
    let direct = request_json(
        &mut teamer,
        r#"{"event":"direct","to":"bystander","data":"hi"}"#,
    );
    assert_eq!(direct["code"], json!(0), "{direct}");
    let received = next_json(&mut bystander);
    assert_eq!(
        (&received["event"], &received["from"]),
        (&json!("direct"), &json!("teamer"))
    );

    // `*` in the claim reaches everyone, as does a token without a claim.
    let star_token = token("star", json!({"rooms": ["team-*", "*"]}));
    let mut star = connect(addr, &format!("/ws?token={star_token}"));
    assert_eq!(online_users(&mut star), ["bystander", "star", "teamer"]);
    send_text(&mut star, r#"{"event":"message","data":"all"}"#);
    assert_eq!(next_json(&mut bystander)["data"], json!("all"));
    assert_eq!(
        online_users(&mut bystander),
        ["bystander", "star", "teamer"]
    );
    send_text(&mut bystander, r#"{"event":"message","data":"back"}"#);
    for client in [&mut teamer, &mut star] {
        assert_eq!(next_json(client)["data"], json!("all"));
        assert_eq!(next_json(client)["data"], json!("back"));
    }
}

// ---- 6. DNS rebinding ----

#[test]
fn same_origin_upgrade_to_a_rebound_name_is_403_on_a_direct_daemon() {
    let addr = start(&[]);
    let port = addr.port();
    let host = format!("{REBIND_HOST}:{port}");
    let origin = format!("Origin: http://{REBIND_HOST}:{port}\r\n");
    assert_eq!(upgrade_status(addr, &host, "/ws", &origin), 403);
    // Names a browser never resolves through DNS cannot be rebound.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
    ] {
        let origin = format!("Origin: http://{host}\r\n");
        assert_eq!(upgrade_status(addr, &host, "/ws", &origin), 101, "{host}");
    }
    // A non-browser client sends no Origin: it passes whatever its Host.
    assert_eq!(upgrade_status(addr, &host, "/ws", ""), 101);
}

#[test]
fn same_origin_upgrade_to_a_name_passes_when_listed_or_behind_a_trusted_proxy() {
    let host = format!("{REBIND_HOST}:8443");
    let origin = format!("Origin: https://{host}\r\n");
    let listed = start(&["--allow-origin", &format!("https://{host}")]);
    assert_eq!(upgrade_status(listed, &host, "/ws", &origin), 101);
    let wildcard = start(&["--allow-origin", "*"]);
    assert_eq!(upgrade_status(wildcard, &host, "/ws", &origin), 101);
    let proxied = start(&["--trusted-proxy", "127.0.0.1/32"]);
    assert_eq!(upgrade_status(proxied, &host, "/ws", &origin), 101);
    let untrusted_proxy = start(&["--trusted-proxy", "10.0.0.0/8"]);
    assert_eq!(upgrade_status(untrusted_proxy, &host, "/ws", &origin), 403);
}

// ---- 7. small ones ----

#[test]
fn token_with_a_crit_header_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let critical = sign(&header, &json!({"sub": "alice", "exp": now_secs() + 3600}));
    let segment = critical.split('.').next().expect("header segment");
    let decoded = URL_SAFE_NO_PAD.decode(segment).expect("base64url header");
    assert!(
        String::from_utf8_lossy(&decoded).contains("\"crit\""),
        "the test token must carry crit"
    );
    let mut stream = tcp_connect(addr);
    let request = upgrade_request(addr, &format!("/ws?token={critical}"), "");
    stream.write_all(request.as_bytes()).expect("send upgrade");
    let answer = read_until_close(&mut stream);
    assert_eq!(status(&answer), 401, "{answer}");
    assert!(answer.contains("critical"), "{answer}");
    assert!(!answer.contains(&critical), "the 401 reveals the token");
}

#[test]
fn sub_longer_than_64_bytes_or_with_control_characters_is_401() {
    let addr = start(&["--jwt-secret", SECRET]);
    for sub in ["x".repeat(65), "line\nbreak".into(), "nul\0".into()] {
        let path = format!("/ws?token={}", token(&sub, json!({})));
        assert_eq!(
            upgrade_status(addr, &addr.to_string(), &path, ""),
            401,
            "{sub:?}"
        );
    }
    let longest = "x".repeat(64);
    let mut client = connect(addr, &format!("/ws?token={}", token(&longest, json!({}))));
    assert_eq!(online_users(&mut client), [longest]);
}

#[test]
fn content_length_that_is_not_only_digits_is_400_and_closed_and_nothing_is_published() {
    let addr = start(&["--api-key", API_KEY]);
    let mut listener = connect(addr, "/ws?user=listener");
    let body = r#"{"data":"smuggled"}"#;
    for length in [
        format!("+{}", body.len()),
        "-1".into(),
        format!(
            " {} {}",
            &body.len().to_string()[..1],
            &body.len().to_string()[1..]
        ),
        "0x13".into(),
        String::new(),
    ] {
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
        );
        let (answer, closed) = exchange(addr, &request);
        assert_eq!(status(&answer), 400, "Content-Length {length:?}: {answer}");
        assert!(closed, "Content-Length {length:?}: connection left open");
    }
    assert_nothing_pending(&mut listener);
}

#[test]
fn absolute_form_targets_are_routed_on_their_path() {
    let addr = start(&[]);
    let (answer, _) = exchange(
        addr,
        &format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        answer.ends_with("ok\n") || answer.ends_with("ok"),
        "{answer}"
    );
    let upgrade = upgrade_status(
        addr,
        &addr.to_string(),
        &format!("http://{addr}/ws?user=absolute"),
        "",
    );
    assert_eq!(upgrade, 101);
}

#[test]
fn absolute_form_authority_replaces_host_for_the_origin_and_rebinding_rules() {
    let addr = start(&[]);
    let port = addr.port();
    // The Host header names the loopback address, the target a rebound name: the target wins.
    let rebound = format!("http://{REBIND_HOST}:{port}/ws");
    let origin = format!("Origin: http://{REBIND_HOST}:{port}\r\n");
    assert_eq!(
        upgrade_status(addr, &addr.to_string(), &rebound, &origin),
        403
    );
    // And the other way round: an IP authority matches its own origin whatever Host says.
    let literal = format!("http://{addr}/ws");
    let origin = format!("Origin: http://{addr}\r\n");
    let host = format!("{REBIND_HOST}:{port}");
    assert_eq!(upgrade_status(addr, &host, &literal, &origin), 101);
}

#[test]
fn anonymous_ids_are_unguessable_and_cannot_be_claimed() {
    let addr = start(&[]);
    let mut first = connect(addr, "/ws");
    let _second = connect(addr, "/ws");
    let users = online_users(&mut first);
    assert_eq!(users.len(), 2, "{users:?}");
    for user in &users {
        assert_anonymous_id(user);
    }
    for claimed in [users[0].as_str(), "anon-1", "anon-2"] {
        for parameter in ["user", "id"] {
            let path = format!("/ws?{parameter}={claimed}");
            assert_eq!(
                upgrade_status(addr, &addr.to_string(), &path, ""),
                400,
                "{path} took over an anonymous identity"
            );
        }
    }
    assert_eq!(online_users(&mut first), users);
}
