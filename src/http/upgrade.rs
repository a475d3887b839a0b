//! The WebSocket opening handshake, server side (RFC 6455 §4.2), and the Origin rule (SPEC §4).

use std::borrow::Cow;
use std::time::SystemTime;

use super::{Request, Response};
use crate::auth::{self, Identity, JwtVerifier, TokenCarrier};

/// The only protocol version RFC 6455 defines.
const WEBSOCKET_VERSION: &str = "13";

/// Longest user id accepted from `?user=` / `?id=`.
const MAX_USER_BYTES: usize = 64;

/// Who a connection says it is (SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A verified JWT: `sub`, display name and the rooms it may join.
    Token(Identity),
    /// `?user=` or `?id=` (auth off): taken at its word.
    Named(String),
    /// Nothing given (auth off): the loop names it `anon-<n>`.
    Anonymous,
}

/// The server's rules for accepting an upgrade.
pub struct Policy<'a> {
    /// `--allow-origin` entries for the Origin rule.
    pub allow_origins: &'a [String],
    /// Present when `--jwt-secret` is set: every upgrade needs a valid token.
    pub verifier: Option<&'a JwtVerifier>,
    /// The wall clock for `exp`, passed in so the decision stays pure.
    pub now: SystemTime,
}

/// A request that may be switched to WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value proving the server read the client's key.
    pub accept: String,
    /// The subprotocol echoed back, when the client offered one the server speaks.
    pub subprotocol: Option<&'static str>,
    /// Who the client is.
    pub claim: Claim,
}

/// Checks an upgrade request on the WebSocket path; the error is the response to send instead.
pub fn check(request: &Request, policy: &Policy) -> Result<Upgrade, Response> {
    if request.method != "GET" {
        return Err(Response::text(405, "WebSocket upgrades use GET\n").with_header("Allow", "GET"));
    }
    if !request.header_has_token("upgrade", "websocket")
        || !request.header_has_token("connection", "upgrade")
    {
        return Err(
            Response::text(426, "this path speaks WebSocket: send Upgrade: websocket\n")
                .with_header("Sec-WebSocket-Version", WEBSOCKET_VERSION)
                .with_header("Upgrade", "websocket"),
        );
    }
    if request.minor_version < 1 {
        return Err(Response::fatal(400, "WebSocket needs HTTP/1.1\n"));
    }
    if request.header_count("sec-websocket-version") != 1
        || request.header("sec-websocket-version") != Some(WEBSOCKET_VERSION)
    {
        return Err(
            Response::fatal(400, "unsupported Sec-WebSocket-Version: use 13\n")
                .with_header("Sec-WebSocket-Version", WEBSOCKET_VERSION),
        );
    }
    let key = match request.header("sec-websocket-key") {
        Some(key) if request.header_count("sec-websocket-key") == 1 && is_valid_key(key) => key,
        _ => {
            return Err(Response::fatal(
                400,
                "missing or invalid Sec-WebSocket-Key\n",
            ));
        }
    };
    if request.header("host").is_none_or(str::is_empty) {
        return Err(Response::fatal(400, "missing Host header\n"));
    }
    if !origin_allowed(
        request.header("origin"),
        request.header("host"),
        policy.allow_origins,
    ) {
        return Err(Response::fatal(403, "origin not allowed\n"));
    }
    let protocols = request.header_list("sec-websocket-protocol");
    let mut subprotocol = protocols
        .as_deref()
        .and_then(auth::select_subprotocol)
        .map(|_| auth::SUBPROTOCOL);
    let claim = match policy.verifier {
        Some(verifier) => {
            let found = auth::find_token(
                request.query.as_deref(),
                request.header("authorization"),
                protocols.as_deref(),
            )
            .ok_or_else(|| unauthorized(auth::AuthError::NoToken))?;
            if let TokenCarrier::Subprotocol { echo } = found.carrier {
                subprotocol = echo.map(|_| auth::SUBPROTOCOL);
            }
            Claim::Token(
                verifier
                    .verify_at(&found.token, policy.now)
                    .map_err(unauthorized)?,
            )
        }
        None => match request
            .query_param("user")
            .or_else(|| request.query_param("id"))
        {
            Some(user) if valid_user(&user) => Claim::Named(user.into_owned()),
            Some(_) => {
                return Err(Response::fatal(
                    400,
                    "user must be 1 to 64 printable characters\n",
                ));
            }
            None => Claim::Anonymous,
        },
    };
    Ok(Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        subprotocol,
        claim,
    })
}

/// `401` with the reason (never the token) in the body.
fn unauthorized(error: auth::AuthError) -> Response {
    Response::fatal(401, error.reason()).with_header("WWW-Authenticate", "Bearer")
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_BYTES && !user.chars().any(char::is_control)
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn switching_protocols(upgrade: &Upgrade) -> Response {
    let mut response = Response {
        status: 101,
        headers: vec![
            ("Upgrade", "websocket".into()),
            ("Connection", "Upgrade".into()),
            ("Sec-WebSocket-Accept", upgrade.accept.clone().into()),
        ],
        body: Cow::Borrowed(b""),
        close: false,
    };
    if let Some(protocol) = upgrade.subprotocol {
        response
            .headers
            .push(("Sec-WebSocket-Protocol", protocol.into()));
    }
    response
}

/// A key is the base64 encoding of 16 bytes: 22 significant characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && key.ends_with("==")
        && bytes[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// SPEC §4: no Origin (a non-browser client) passes; a browser Origin must match the Host header
/// unless it is listed in `--allow-origin` (`*` allows every origin).
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allow_origins: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allow_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let strip = |authority: &str| {
        authority
            .strip_suffix(default_port)
            .unwrap_or(authority)
            .to_ascii_lowercase()
    };
    host.is_some_and(|host| strip(authority) == strip(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn check(request: &Request, allow_origins: &[String]) -> Result<Upgrade, Response> {
        super::check(
            request,
            &Policy {
                allow_origins,
                verifier: None,
                now: SystemTime::now(),
            },
        )
    }

    fn request(extra: &str) -> Request {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        );
        parse(head.as_bytes()).unwrap().0
    }

    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn valid_upgrade_gets_the_rfc_accept_key() {
        let upgrade = check(&request(&format!("{KEY}{VERSION}")), &[]).unwrap();
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.subprotocol, None);
        let mut out = Vec::new();
        switching_protocols(&upgrade).encode(true, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
        );
    }

    #[test]
    fn missing_upgrade_headers_get_426_with_the_version() {
        let plain = parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().0;
        let response = check(&plain, &[]).unwrap_err();
        assert_eq!(response.status, 426);
        assert!(
            response
                .headers
                .contains(&("Sec-WebSocket-Version", "13".into()))
        );
    }

    #[test]
    fn bad_version_or_key_get_400() {
        let wrong_version =
            check(&request(&format!("{KEY}Sec-WebSocket-Version: 8\r\n")), &[]).unwrap_err();
        assert_eq!(wrong_version.status, 400);
        assert!(
            wrong_version
                .headers
                .contains(&("Sec-WebSocket-Version", "13".into()))
        );
        assert_eq!(check(&request(VERSION), &[]).unwrap_err().status, 400);
        let short_key = check(
            &request(&format!("Sec-WebSocket-Key: abc\r\n{VERSION}")),
            &[],
        )
        .unwrap_err();
        assert_eq!(short_key.status, 400);
    }

    #[test]
    fn post_to_the_websocket_path_is_405() {
        let post = parse(b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().0;
        let response = check(&post, &[]).unwrap_err();
        assert_eq!(response.status, 405);
        assert!(response.headers.contains(&("Allow", "GET".into())));
    }

    #[test]
    fn offered_wshub_subprotocol_is_echoed() {
        let offered = request(&format!(
            "{KEY}{VERSION}Sec-WebSocket-Protocol: wshub, bearer.abc\r\n"
        ));
        assert_eq!(check(&offered, &[]).unwrap().subprotocol, Some("wshub"));
        let other = request(&format!("{KEY}{VERSION}Sec-WebSocket-Protocol: chat\r\n"));
        assert_eq!(check(&other, &[]).unwrap().subprotocol, None);
    }

    #[test]
    fn identity_comes_from_user_or_id_without_auth() {
        let named = parse(upgrade_head("/ws?user=alice").as_bytes()).unwrap().0;
        assert_eq!(
            check(&named, &[]).unwrap().claim,
            Claim::Named("alice".into())
        );
        let id = parse(upgrade_head("/ws?id=bob").as_bytes()).unwrap().0;
        assert_eq!(check(&id, &[]).unwrap().claim, Claim::Named("bob".into()));
        let anonymous = parse(upgrade_head("/ws").as_bytes()).unwrap().0;
        assert_eq!(check(&anonymous, &[]).unwrap().claim, Claim::Anonymous);
        let control = parse(upgrade_head("/ws?user=a%0Ab").as_bytes()).unwrap().0;
        assert_eq!(check(&control, &[]).unwrap_err().status, 400);
        let long = parse(upgrade_head(&format!("/ws?user={}", "x".repeat(65))).as_bytes())
            .unwrap()
            .0;
        assert_eq!(check(&long, &[]).unwrap_err().status, 400);
    }

    #[test]
    fn with_auth_a_token_is_required_and_never_echoed() {
        let verifier = JwtVerifier::new(b"secret", std::time::Duration::ZERO);
        let policy = Policy {
            allow_origins: &[],
            verifier: Some(&verifier),
            now: SystemTime::now(),
        };
        let missing = super::check(
            &parse(upgrade_head("/ws?user=mallory").as_bytes())
                .unwrap()
                .0,
            &policy,
        )
        .unwrap_err();
        assert_eq!((missing.status, &*missing.body), (401, &b"no token"[..]));
        let bad = super::check(
            &parse(upgrade_head("/ws?token=abc.def.ghi").as_bytes())
                .unwrap()
                .0,
            &policy,
        )
        .unwrap_err();
        assert_eq!(bad.status, 401);
        assert!(!String::from_utf8_lossy(&bad.body).contains("abc.def"));
    }

    fn upgrade_head(target: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}{VERSION}\r\n"
        )
    }

    #[test]
    fn foreign_origin_is_403() {
        let foreign = request(&format!("{KEY}{VERSION}Origin: https://evil.example\r\n"));
        assert_eq!(check(&foreign, &[]).unwrap_err().status, 403);
        assert!(check(&foreign, &["https://evil.example".into()]).is_ok());
    }

    #[test]
    fn origin_rule_follows_the_spec() {
        let none: &[String] = &[];
        assert!(origin_allowed(None, Some("a.example"), none));
        assert!(origin_allowed(
            Some("https://a.example"),
            Some("a.example"),
            none
        ));
        assert!(origin_allowed(
            Some("http://a.example:80"),
            Some("A.example"),
            none
        ));
        assert!(origin_allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            none
        ));
        assert!(!origin_allowed(
            Some("http://127.0.0.1:9999"),
            Some("127.0.0.1:8080"),
            none
        ));
        assert!(!origin_allowed(Some("null"), Some("a.example"), none));
        assert!(!origin_allowed(Some("https://a.example"), None, none));
        assert!(origin_allowed(Some("null"), None, &["*".into()]));
        assert!(origin_allowed(
            Some("https://b.example"),
            Some("a.example"),
            &["https://b.example/".into()]
        ));
    }
}
