//! The WebSocket opening handshake, server side (RFC 6455 §4.2), and the Origin rule (SPEC §4).

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use super::{Request, Response};
use crate::auth::{self, Identity, JwtVerifier, TokenCarrier};

/// The only protocol version RFC 6455 defines.
const WEBSOCKET_VERSION: &str = "13";

/// What every generated anonymous id starts with. No `?user=` may start with it, so nobody can
/// take over a generated identity by naming it.
pub const ANONYMOUS_PREFIX: &str = "anon-";

/// Random characters after [`ANONYMOUS_PREFIX`]: 12 base62 digits carry 71 bits, far beyond
/// guessing while the id is online.
const ANONYMOUS_ID_CHARS: usize = 12;

/// The digits of an anonymous id: letters and digits only, so it needs no escaping anywhere.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Who a connection says it is (SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A verified JWT: `sub`, display name and the rooms it may join.
    Token(Identity),
    /// `?user=` or `?id=` (auth off): taken at its word.
    Named(String),
    /// Nothing given (auth off): the loop names it with [`anonymous_id`] from OS randomness.
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
    /// The peer is a `--trusted-proxy`: the proxy answers for which host names reach wshub, so
    /// a same-origin browser upgrade to a named `Host` needs no `--allow-origin` entry.
    pub peer_is_trusted_proxy: bool,
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
        policy.peer_is_trusted_proxy,
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
            Some(user) if user.starts_with(ANONYMOUS_PREFIX) => {
                return Err(Response::fatal(
                    400,
                    "user ids starting with anon- are reserved for anonymous users\n",
                ));
            }
            Some(user) if auth::valid_user_id(&user) => Claim::Named(user.into_owned()),
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

/// An anonymous user id (`anon-` and 12 base62 characters) from 128 random bits, which the
/// caller takes from the OS: a counter would let `?user=anon-1` step into someone's identity.
pub fn anonymous_id(random: [u8; 16]) -> String {
    let mut bits = u128::from_le_bytes(random);
    let mut id = String::with_capacity(ANONYMOUS_PREFIX.len() + ANONYMOUS_ID_CHARS);
    id.push_str(ANONYMOUS_PREFIX);
    for _ in 0..ANONYMOUS_ID_CHARS {
        id.push(char::from(BASE62[(bits % 62) as usize]));
        bits /= 62;
    }
    id
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
///
/// Matching Host is not enough when Host is a DNS name and no trusted proxy vouches for it: a
/// page on `rebind.attacker.example` whose name the attacker re-points at 127.0.0.1 sends an
/// Origin and a Host that match each other (DNS rebinding). Only an IP literal or `localhost`
/// cannot be re-pointed, so a named Host passes only through `--allow-origin`.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    allow_origins: &[String],
    peer_is_trusted_proxy: bool,
) -> bool {
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
    if !peer_is_trusted_proxy && host.is_some_and(host_is_dns_name) {
        return false;
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

/// Whether a `Host` value (with or without a port) is a name that DNS resolves: anything but an
/// IPv4 literal, a bracketed IPv6 literal or `localhost`, which browsers never look up.
fn host_is_dns_name(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let ipv6_literal = name
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
    !(ipv6_literal || name.parse::<Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost"))
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
                peer_is_trusted_proxy: false,
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
            peer_is_trusted_proxy: false,
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
        let allowed = |origin, host, listed: &[String]| origin_allowed(origin, host, listed, false);
        assert!(allowed(None, Some("a.example"), none));
        assert!(allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            none
        ));
        assert!(allowed(
            Some("http://127.0.0.1"),
            Some("127.0.0.1:80"),
            none
        ));
        assert!(allowed(Some("http://[::1]:8080"), Some("[::1]:8080"), none));
        assert!(allowed(
            Some("http://localhost:3000"),
            Some("LOCALHOST:3000"),
            none
        ));
        assert!(!allowed(
            Some("http://127.0.0.1:9999"),
            Some("127.0.0.1:8080"),
            none
        ));
        assert!(!allowed(Some("null"), Some("a.example"), none));
        assert!(!allowed(Some("https://a.example"), None, none));
        assert!(allowed(Some("null"), None, &["*".into()]));
        assert!(allowed(
            Some("https://b.example"),
            Some("a.example"),
            &["https://b.example/".into()]
        ));
    }

    #[test]
    fn same_origin_on_a_named_host_needs_a_listed_origin_or_a_trusted_proxy() {
        let none: &[String] = &[];
        for (origin, host) in [
            (
                "http://rebind.attacker.example:8080",
                "rebind.attacker.example:8080",
            ),
            ("https://a.example", "a.example"),
            ("http://a.example:80", "A.example"),
            ("http://localhost.", "localhost."),
            ("http://1.2.3.4.example", "1.2.3.4.example"),
        ] {
            assert!(
                !origin_allowed(Some(origin), Some(host), none, false),
                "{host}"
            );
            assert!(
                origin_allowed(Some(origin), Some(host), none, true),
                "{host}"
            );
            let listed = [origin.to_owned()];
            assert!(
                origin_allowed(Some(origin), Some(host), &listed, false),
                "{host}"
            );
            assert!(origin_allowed(
                Some(origin),
                Some(host),
                &["*".into()],
                false
            ));
        }
        assert!(origin_allowed(
            None,
            Some("rebind.attacker.example"),
            none,
            false
        ));
    }

    #[test]
    fn only_ip_literals_and_localhost_are_not_dns_names() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "localhost",
            "LocalHost:1",
        ] {
            assert!(!host_is_dns_name(host), "{host}");
        }
        for host in [
            "a.example",
            "a.example:80",
            "localhost.",
            "localhost.example",
            "::1",
            "[::1]:",
            "[::1]:x",
            "127.0.0.1:",
            "0127.0.0.1",
            "127.1",
            "[127.0.0.1]",
            "",
        ] {
            assert!(host_is_dns_name(host), "{host}");
        }
    }

    #[test]
    fn user_parameters_in_the_anonymous_namespace_are_400() {
        for target in ["/ws?user=anon-1", "/ws?id=anon-x", "/ws?user=anon-"] {
            let request = parse(upgrade_head(target).as_bytes()).unwrap().0;
            let refused = check(&request, &[]).unwrap_err();
            assert_eq!(refused.status, 400, "{target}");
            assert!(refused.close, "{target}");
        }
        let lookalike = parse(upgrade_head("/ws?user=anonymous").as_bytes())
            .unwrap()
            .0;
        assert_eq!(
            check(&lookalike, &[]).unwrap().claim,
            Claim::Named("anonymous".into())
        );
    }

    #[test]
    fn anonymous_ids_are_twelve_base62_characters_of_the_random_bits() {
        let zero = anonymous_id([0; 16]);
        assert_eq!(zero, "anon-000000000000");
        let id = anonymous_id([0xA5; 16]);
        let suffix = id.strip_prefix(ANONYMOUS_PREFIX).expect("prefix");
        assert_eq!(suffix.len(), ANONYMOUS_ID_CHARS);
        assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        assert_ne!(anonymous_id([1; 16]), anonymous_id([2; 16]));
        assert!(auth::valid_user_id(&id));
    }
}
