//! Who is connecting: JWT verification, the places a token may travel in an upgrade request,
//! the `rooms` claim, and the `/api/*` key check (SPEC §3, §4).
//!
//! Everything here is pure: no I/O and no clock of its own. [`JwtVerifier::verify_at`] takes
//! `now`, so tests (and the loop, which already knows the time) decide what "now" is.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::http::request::query_param;

/// The application subprotocol wshub speaks and echoes back when a client offers it.
pub const SUBPROTOCOL: &str = "wshub";

/// Prefix of the subprotocol entry that carries a JWT (`bearer.<JWT>`), the only token
/// carrier a browser can set besides the URL.
const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// The only signature algorithm accepted; anything else in a token header is refused before
/// any key is touched, which closes the `alg: none` and algorithm-confusion attacks.
const ALLOWED_ALGORITHM: &str = "HS256";

/// Why a token was refused. The text is short, fixed and never contains the token, so it can go
/// into a `401` body and a log line as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Auth is on but the request carried no token in any of the accepted places.
    NoToken,
    /// The token is not three base64url JSON parts, or its payload is not a JSON object.
    Malformed,
    /// The header names an algorithm other than HS256 (`none`, HS512, RS256, …).
    AlgorithmNotAllowed,
    /// The HMAC does not match: wrong secret or a tampered token.
    BadSignature,
    /// `exp` plus the leeway lies in the past.
    Expired,
    /// `nbf` minus the leeway lies in the future.
    NotYetValid,
    /// The token has no `exp`; wshub refuses tokens that never expire.
    MissingExp,
    /// The token has no `sub`, or an empty one, so there is no user to attach the connection to.
    MissingSub,
    /// `sub` breaks the rule every user id follows (1 to 64 characters, no control characters):
    /// ids travel in every message and presence event, and a token must not name a user that
    /// `?user=` could not.
    InvalidSub,
    /// The header has a `crit` parameter: it lists extensions the token's issuer requires the
    /// recipient to understand (RFC 7515 §4.1.11), and wshub understands none.
    CriticalHeader,
    /// A known claim has the wrong type (`sub` not a string, `rooms` not a list of strings, …).
    InvalidClaims,
}

impl AuthError {
    /// Short human reason for a `401` body or a log line.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::NoToken => "no token",
            AuthError::Malformed => "malformed token",
            AuthError::AlgorithmNotAllowed => "algorithm not allowed",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingExp => "missing exp",
            AuthError::MissingSub => "missing sub",
            AuthError::InvalidSub => "sub must be 1 to 64 printable characters",
            AuthError::CriticalHeader => "unsupported critical header",
            AuthError::InvalidClaims => "invalid claims",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// The user a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: the user id that rooms, presence and direct messages are keyed by.
    pub user: String,
    /// The optional `name` claim (a display name). The protocol identifies users by `sub`
    /// alone, so the server only logs it.
    pub name: Option<String>,
    /// The optional `rooms` claim; `None` means the token puts no limit on what it reaches by
    /// room (joins, messages to everyone, `online` without a room).
    pub rooms: Option<RoomRule>,
}

/// Which rooms a user may join, from the `rooms` claim: exact names and `prefix*` patterns; a
/// bare `*` also lets the user reach everyone at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct RoomRule {
    /// Set when the list holds a bare `*`, so `allows` answers without scanning.
    allow_all: bool,
    /// Names that must match a room exactly.
    exact: Vec<String>,
    /// The part before the trailing `*` of each pattern; a room starting with one is allowed.
    prefixes: Vec<String>,
}

impl From<Vec<String>> for RoomRule {
    fn from(patterns: Vec<String>) -> Self {
        let mut rule = RoomRule {
            allow_all: false,
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => rule.allow_all = true,
                Some(prefix) => rule.prefixes.push(prefix.to_owned()),
                None => rule.exact.push(pattern),
            }
        }
        rule
    }
}

impl RoomRule {
    /// Whether the rule holds a bare `*`: only then may its user reach everyone at once (a
    /// message without a room, `online` without a room), since the claim bounds everything
    /// reached by room and "everyone" spans every room.
    pub fn allows_everyone(&self) -> bool {
        self.allow_all
    }

    /// Whether a user holding this rule may join `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.allow_all
            || self.exact.iter().any(|name| name == room)
            || self
                .prefixes
                .iter()
                .any(|prefix| room.starts_with(prefix.as_str()))
    }
}

/// The claims wshub reads. Registered claims it does not use (`iat`, `iss`, `aud`, …) are
/// ignored; wshub has no issuer or audience to compare them with (as Centrifugo does when none
/// is configured).
#[derive(Deserialize)]
struct Claims {
    /// Expiry as a NumericDate (seconds, fractions allowed); required so a leaked token dies.
    exp: Option<f64>,
    /// Not-before as a NumericDate; honoured when present so tokens issued early wait.
    nbf: Option<f64>,
    /// The user id; required because every connection belongs to a user.
    sub: Option<String>,
    /// The display name claim (logged; users are identified by `sub`).
    name: Option<String>,
    /// Room allowance; absent means unrestricted.
    rooms: Option<RoomRule>,
}

/// Just enough of a JOSE header to refuse a token before handing it to `jsonwebtoken`, whose
/// `Algorithm` type cannot even represent `none` and whose header has no `crit`.
#[derive(Deserialize)]
struct JoseHeader {
    /// The `alg` member, compared against [`ALLOWED_ALGORITHM`].
    alg: String,
    /// Whether the header has a `crit` member at all: whatever it lists (even `null` or `[]`),
    /// the issuer meant something wshub would ignore, so the token is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// Deserialises any value as `true`: with `#[serde(default)]`, a field that says whether a
/// member was present.
fn present<'de, D: serde::Deserializer<'de>>(member: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(member).map(|_| true)
}

/// Longest user id, in characters, from a token's `sub` or from `?user=` / `?id=` (SPEC §4).
const MAX_USER_CHARS: usize = 64;

/// The one rule for user ids, whoever names them (a token's `sub`, `?user=`, `?id=`): 1 to 64
/// printable characters (no control characters), so an id fits in a log line and in every event
/// it rides in.
pub fn valid_user_id(user: &str) -> bool {
    !user.is_empty()
        && user.chars().count() <= MAX_USER_CHARS
        && !user.chars().any(char::is_control)
}

/// Verifies HS256 JWTs against one shared secret.
///
/// The caller should refuse an empty secret when reading its configuration: anyone can sign
/// with an empty key.
#[derive(Clone)]
pub struct JwtVerifier {
    /// The `--jwt-secret` bytes, kept in the form the signature check consumes.
    key: DecodingKey,
    /// Signature and algorithm checks only; wshub checks the time claims itself so that it can
    /// take `now` from the caller instead of reading the clock.
    validation: Validation,
    /// Clock skew tolerated on `exp` and `nbf` between the token issuer and this host.
    leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("key", &"<redacted>")
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret`, tolerating `leeway` of clock skew.
    pub fn new(secret: &[u8], leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        JwtVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
            leeway,
        }
    }

    /// Verifies `token` as of `now`: HS256 only, no `crit` header, `exp` required, `nbf`
    /// honoured, both with the leeway; `sub` must be a valid user id ([`valid_user_id`]).
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::NoToken);
        }
        let header = jose_header(token)?;
        if header.alg != ALLOWED_ALGORITHM {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if header.crit {
            return Err(AuthError::CriticalHeader);
        }
        let payload = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
                _ => AuthError::Malformed,
            })?
            .claims;
        if !payload.is_object() {
            return Err(AuthError::Malformed);
        }
        let claims =
            serde_json::from_value::<Claims>(payload).map_err(|_| AuthError::InvalidClaims)?;

        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        let exp = claims.exp.ok_or(AuthError::MissingExp)?;
        if now >= exp + leeway {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        let user = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(AuthError::MissingSub)?;
        if !valid_user_id(&user) {
            return Err(AuthError::InvalidSub);
        }
        Ok(Identity {
            user,
            name: claims.name.filter(|name| !name.is_empty()),
            rooms: claims.rooms,
        })
    }
}

/// Reads the header of a compact JWT without trusting anything else in it.
fn jose_header(token: &str) -> Result<JoseHeader, AuthError> {
    let (header, _) = token.split_once('.').ok_or(AuthError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)
}

/// Where a token was found; the loop logs it and, for the subprotocol, answers with `echo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCarrier<'a> {
    /// The `token` or `authorization` query parameter (ends up in proxy logs, but works
    /// everywhere).
    Query,
    /// An `Authorization: Bearer` request header (non-browser clients).
    AuthorizationHeader,
    /// A `bearer.<JWT>` entry in `Sec-WebSocket-Protocol` (browsers).
    Subprotocol {
        /// The offered protocol to put in the 101's `Sec-WebSocket-Protocol` (`wshub`), never
        /// the bearer entry. `None` when the client offered nothing else; Chromium then fails
        /// the handshake, so the chat page always offers `wshub` next to its token.
        echo: Option<&'a str>,
    },
}

/// A token taken from an upgrade request, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken<'a> {
    /// The token text, borrowed from the request unless percent-decoding had to rewrite it.
    pub token: Cow<'a, str>,
    /// Where it came from.
    pub carrier: TokenCarrier<'a>,
}

/// Finds the client's token, trying in order: the first non-empty `token` or `authorization`
/// query parameter (`query` is the raw query string without `?`; values are percent-decoded,
/// `authorization` may read `Bearer <t>` or be the bare token), the `Authorization: Bearer`
/// header (scheme case-insensitive), then a `bearer.<JWT>` entry of the comma-separated
/// `Sec-WebSocket-Protocol` list (several such headers must be joined with `,` first).
pub fn find_token<'a>(
    query: Option<&'a str>,
    authorization_header: Option<&'a str>,
    subprotocols: Option<&'a str>,
) -> Option<FoundToken<'a>> {
    if let Some(token) = query.and_then(token_from_query) {
        return Some(FoundToken {
            token,
            carrier: TokenCarrier::Query,
        });
    }
    if let Some(token) = authorization_header.and_then(strip_bearer) {
        return Some(FoundToken {
            token: Cow::Borrowed(token),
            carrier: TokenCarrier::AuthorizationHeader,
        });
    }
    let offered = subprotocols?;
    let token = offered
        .split(',')
        .map(str::trim)
        .find_map(|entry| strip_prefix_ignore_ascii_case(entry, BEARER_SUBPROTOCOL_PREFIX))
        .filter(|token| !token.is_empty())?;
    Some(FoundToken {
        token: Cow::Borrowed(token),
        carrier: TokenCarrier::Subprotocol {
            echo: select_subprotocol(offered),
        },
    })
}

/// The protocol to answer a `Sec-WebSocket-Protocol` offer with: `wshub` if offered, else none
/// (the 101 then carries no `Sec-WebSocket-Protocol`). Used with and without auth.
pub fn select_subprotocol(offered: &str) -> Option<&str> {
    offered
        .split(',')
        .map(str::trim)
        .find(|entry| *entry == SUBPROTOCOL)
}

/// Whether `Authorization: Bearer <key>` presents `api_key`. Always false for an empty
/// configured key, so a blank setting never opens the API.
///
/// The comparison uses `subtle`'s constant-time equality: it is the audited crate for this,
/// and it is already compiled as part of `jsonwebtoken`'s RustCrypto backend, so it costs
/// nothing. Only the length of the key can leak through timing, as with any such compare.
pub fn api_key_matches(authorization_header: Option<&str>, api_key: &str) -> bool {
    if api_key.is_empty() {
        return false;
    }
    authorization_header
        .and_then(strip_bearer)
        .is_some_and(|presented| presented.as_bytes().ct_eq(api_key.as_bytes()).into())
}

/// The credentials of a `Bearer <credentials>` value, or `None` for another scheme or an
/// empty credential.
fn strip_bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(rest.trim()).filter(|credentials| !credentials.is_empty())
}

/// `text` without `prefix`, matching the prefix case-insensitively (ASCII).
fn strip_prefix_ignore_ascii_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// The first non-empty `token`, else `authorization`, value of a raw query string.
fn token_from_query(query: &str) -> Option<Cow<'_, str>> {
    let non_empty = |token: &Cow<'_, str>| !token.is_empty();
    query_param(query, "token")
        .map(|value| map_cow(value, str::trim))
        .filter(non_empty)
        .or_else(|| {
            query_param(query, "authorization")
                .map(|value| map_cow(value, |text| strip_bearer(text).unwrap_or(text.trim())))
                .filter(non_empty)
        })
}

/// Applies a narrowing `&str -> &str` function to a `Cow`, staying borrowed when it was.
fn map_cow<'a>(text: Cow<'a, str>, narrow: impl for<'x> Fn(&'x str) -> &'x str) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(narrow(text)),
        Cow::Owned(text) => Cow::Owned(narrow(&text).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-of-reasonable-length";
    /// A fixed "now" (2023-11-14) so expiry tests never depend on the machine clock.
    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(SECRET, Duration::from_secs(30))
    }

    fn sign_with(algorithm: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("test claims encode")
    }

    fn sign(claims: &serde_json::Value) -> String {
        sign_with(Algorithm::HS256, SECRET, claims)
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn valid_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": NOW_SECS + 3600})
    }

    #[test]
    fn valid_token_yields_user_name_and_rooms() {
        let token = sign(&json!({
            "sub": "alice", "name": "Alice A.", "exp": NOW_SECS + 60, "rooms": ["lobby", "team-*"],
        }));
        let identity = verifier().verify_at(&token, now()).expect("valid token");
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.name.as_deref(), Some("Alice A."));
        let rooms = identity.rooms.expect("rooms claim");
        assert!(rooms.allows("lobby"));
        assert!(rooms.allows("team-red"));
        assert!(!rooms.allows("admin"));
    }

    #[test]
    fn token_without_name_or_rooms_is_unrestricted() {
        let identity = verifier()
            .verify_at(&sign(&valid_claims()), now())
            .expect("valid token");
        assert_eq!(
            identity,
            Identity {
                user: "alice".into(),
                name: None,
                rooms: None
            }
        );
    }

    #[test]
    fn fractional_exp_is_accepted() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS as f64 + 0.5}));
        assert!(verifier().verify_at(&token, now()).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS - 3600}));
        assert_eq!(verifier().verify_at(&token, now()), Err(AuthError::Expired));
    }

    #[test]
    fn token_expired_within_leeway_is_accepted() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS - 29}));
        assert!(verifier().verify_at(&token, now()).is_ok());
    }

    #[test]
    fn token_expired_exactly_at_leeway_is_refused() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS - 30}));
        assert_eq!(verifier().verify_at(&token, now()), Err(AuthError::Expired));
    }

    #[test]
    fn zero_leeway_refuses_a_token_at_its_exp() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS}));
        let strict = JwtVerifier::new(SECRET, Duration::ZERO);
        assert_eq!(strict.verify_at(&token, now()), Err(AuthError::Expired));
    }

    #[test]
    fn token_before_nbf_is_refused_unless_within_leeway() {
        let early = sign(&json!({"sub": "alice", "exp": NOW_SECS + 600, "nbf": NOW_SECS + 60}));
        assert_eq!(
            verifier().verify_at(&early, now()),
            Err(AuthError::NotYetValid)
        );
        let skewed = sign(&json!({"sub": "alice", "exp": NOW_SECS + 600, "nbf": NOW_SECS + 10}));
        assert!(verifier().verify_at(&skewed, now()).is_ok());
    }

    #[test]
    fn token_signed_with_another_secret_is_bad_signature() {
        let token = sign_with(Algorithm::HS256, b"some-other-secret", &valid_claims());
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = sign(&valid_claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&json!({"sub": "mallory", "exp": NOW_SECS + 3600}));
        parts[1] = &forged;
        assert_eq!(
            verifier().verify_at(&parts.join("."), now()),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_token_is_refused() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let token = format!("{header}.{}.", b64(&valid_claims()));
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn hs512_token_is_refused_even_with_the_right_secret() {
        let token = sign_with(Algorithm::HS512, SECRET, &valid_claims());
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn rs256_token_is_refused() {
        let header = b64(&json!({"alg": "RS256", "typ": "JWT"}));
        let token = format!("{header}.{}.c2lnbmF0dXJl", b64(&valid_claims()));
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn missing_or_empty_sub_is_refused() {
        for claims in [
            json!({"exp": NOW_SECS + 60}),
            json!({"sub": "", "exp": NOW_SECS + 60}),
            json!({"sub": null, "exp": NOW_SECS + 60}),
        ] {
            assert_eq!(
                verifier().verify_at(&sign(&claims), now()),
                Err(AuthError::MissingSub),
                "{claims}"
            );
        }
    }

    #[test]
    fn token_with_a_crit_header_is_refused_whatever_it_lists() {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let listed =
            jsonwebtoken::encode(&header, &valid_claims(), &EncodingKey::from_secret(SECRET))
                .expect("test claims encode");
        assert_eq!(
            verifier().verify_at(&listed, now()),
            Err(AuthError::CriticalHeader)
        );
        for crit in [json!(null), json!([]), json!("b64")] {
            let signing_input = format!(
                "{}.{}",
                b64(&json!({"alg": "HS256", "typ": "JWT", "crit": crit})),
                b64(&valid_claims())
            );
            let signature = jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
            )
            .expect("sign");
            assert_eq!(
                verifier().verify_at(&format!("{signing_input}.{signature}"), now()),
                Err(AuthError::CriticalHeader),
                "crit {crit}"
            );
        }
    }

    #[test]
    fn sub_follows_the_user_id_rule() {
        for sub in [
            "x".repeat(65),
            "a\nb".into(),
            "tab\there".into(),
            "\u{7f}".into(),
        ] {
            let token = sign(&json!({"sub": sub, "exp": NOW_SECS + 60}));
            assert_eq!(
                verifier().verify_at(&token, now()),
                Err(AuthError::InvalidSub),
                "{sub:?}"
            );
        }
        for sub in ["x".repeat(64), "Zoë Ünïcode".into(), "a b".into()] {
            let token = sign(&json!({"sub": sub, "exp": NOW_SECS + 60}));
            assert_eq!(
                verifier().verify_at(&token, now()).map(|id| id.user),
                Ok(sub)
            );
        }
    }

    #[test]
    fn user_id_rule_counts_characters_and_refuses_control_characters() {
        assert!(valid_user_id("alice"));
        assert!(valid_user_id(&"é".repeat(64)), "characters, not bytes");
        assert!(!valid_user_id(&"é".repeat(65)));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a\rb"));
    }

    #[test]
    fn missing_exp_is_refused() {
        let token = sign(&json!({"sub": "alice"}));
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::MissingExp)
        );
    }

    #[test]
    fn claims_of_the_wrong_type_are_invalid() {
        for claims in [
            json!({"sub": 42, "exp": NOW_SECS + 60}),
            json!({"sub": "alice", "exp": "tomorrow"}),
            json!({"sub": "alice", "exp": NOW_SECS + 60, "rooms": "lobby"}),
            json!({"sub": "alice", "exp": NOW_SECS + 60, "rooms": [1, 2]}),
        ] {
            assert_eq!(
                verifier().verify_at(&sign(&claims), now()),
                Err(AuthError::InvalidClaims),
                "{claims}"
            );
        }
    }

    #[test]
    fn signed_payload_that_is_not_an_object_is_malformed() {
        let token = sign(&json!(["sub", "alice"]));
        assert_eq!(
            verifier().verify_at(&token, now()),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn garbage_tokens_are_malformed_without_panicking() {
        let header = b64(&json!({"alg": "HS256"}));
        for token in [
            "abc",
            "a.b",
            "a.b.c",
            "....",
            "é.é.é",
            "%%%.%%%.%%%",
            header.as_str(),
            &format!("{header}.{}", b64(&valid_claims())),
            &format!("{header}.{}.***", b64(&valid_claims())),
        ] {
            assert_eq!(
                verifier().verify_at(token, now()),
                Err(AuthError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn empty_token_is_no_token() {
        assert_eq!(verifier().verify_at("", now()), Err(AuthError::NoToken));
    }

    #[test]
    fn error_reasons_are_short_fixed_texts() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS - 3600}));
        let err = verifier().verify_at(&token, now()).expect_err("expired");
        assert_eq!(err.to_string(), "token expired");
        assert!(!err.to_string().contains(&token));
        assert_eq!(AuthError::BadSignature.to_string(), "bad signature");
        assert_eq!(
            AuthError::AlgorithmNotAllowed.to_string(),
            "algorithm not allowed"
        );
        assert_eq!(AuthError::MissingSub.to_string(), "missing sub");
        assert_eq!(AuthError::Malformed.to_string(), "malformed token");
        assert_eq!(AuthError::NoToken.to_string(), "no token");
    }

    #[test]
    fn verifier_debug_does_not_reveal_the_secret() {
        let shown = format!("{:?}", verifier());
        assert!(!shown.contains("test-secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    fn rule(patterns: &[&str]) -> RoomRule {
        RoomRule::from(patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn room_rule_allows_exact_names_and_prefix_patterns_only() {
        let rule = rule(&["lobby", "team-*", "a*b"]);
        assert!(rule.allows("lobby"));
        assert!(rule.allows("team-"));
        assert!(rule.allows("team-blue"));
        assert!(rule.allows("a*b"));
        assert!(!rule.allows("lobby2"));
        assert!(!rule.allows("Lobby"));
        assert!(!rule.allows("team"));
        assert!(!rule.allows("axb"));
        assert!(!rule.allows(""));
    }

    #[test]
    fn room_rule_star_allows_every_room() {
        let rule = rule(&["*"]);
        assert!(rule.allows("anything"));
        assert!(rule.allows(""));
    }

    #[test]
    fn only_a_bare_star_reaches_everyone() {
        assert!(rule(&["lobby", "*"]).allows_everyone());
        for patterns in [&["team-*"][..], &["lobby"], &["**"], &["*x"], &[]] {
            assert!(!rule(patterns).allows_everyone(), "{patterns:?}");
        }
    }

    #[test]
    fn empty_rooms_claim_allows_no_room() {
        let token = sign(&json!({"sub": "alice", "exp": NOW_SECS + 60, "rooms": []}));
        let rooms = verifier()
            .verify_at(&token, now())
            .expect("valid token")
            .rooms
            .expect("rooms claim");
        assert!(!rooms.allows("lobby"));
    }

    #[test]
    fn query_token_parameter_is_found() {
        let found = find_token(Some("room=a&token=abc.def.ghi&x=1"), None, None);
        assert_eq!(
            found,
            Some(FoundToken {
                token: Cow::Borrowed("abc.def.ghi"),
                carrier: TokenCarrier::Query
            })
        );
    }

    #[test]
    fn query_token_is_percent_decoded() {
        let found = find_token(Some("token=abc%2Edef%2eghi"), None, None).expect("token");
        assert_eq!(found.token, "abc.def.ghi");
        assert!(matches!(found.token, Cow::Owned(_)));
    }

    #[test]
    fn query_authorization_parameter_accepts_bearer_or_bare_token() {
        for query in [
            "authorization=Bearer%20abc.def.ghi",
            "authorization=bearer+abc.def.ghi",
            "authorization=abc.def.ghi",
        ] {
            let found = find_token(Some(query), None, None).expect(query);
            assert_eq!(found.token, "abc.def.ghi", "{query}");
            assert_eq!(found.carrier, TokenCarrier::Query);
        }
    }

    #[test]
    fn empty_query_token_falls_through_to_the_header() {
        let found = find_token(Some("token=&authorization="), Some("Bearer hdr"), None);
        assert_eq!(
            found.map(|f| f.carrier),
            Some(TokenCarrier::AuthorizationHeader)
        );
    }

    #[test]
    fn broken_percent_escapes_do_not_panic() {
        for query in [
            "token=%",
            "token=%4",
            "token=%zz",
            "token=%ff%fe",
            "token=é%",
            "=&&==",
        ] {
            let _ = find_token(Some(query), None, None);
        }
        assert_eq!(find_token(Some("token=a%zz"), None, None), None);
    }

    #[test]
    fn authorization_header_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER   abc  ", "Bearer\tabc"] {
            let found = find_token(None, Some(header), None).expect(header);
            assert_eq!(found.token, "abc", "{header:?}");
            assert_eq!(found.carrier, TokenCarrier::AuthorizationHeader);
        }
    }

    #[test]
    fn authorization_header_of_another_scheme_is_ignored() {
        for header in [
            "Basic YWxhZGRpbjpvcGVu",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "é",
        ] {
            assert_eq!(find_token(None, Some(header), None), None, "{header:?}");
        }
    }

    #[test]
    fn subprotocol_token_is_found_and_wshub_is_echoed() {
        let found = find_token(None, None, Some("wshub,  bearer.abc.def.ghi ")).expect("token");
        assert_eq!(found.token, "abc.def.ghi");
        assert_eq!(
            found.carrier,
            TokenCarrier::Subprotocol {
                echo: Some("wshub")
            }
        );
    }

    #[test]
    fn subprotocol_token_without_wshub_has_nothing_to_echo() {
        let found = find_token(None, None, Some("bearer.abc, chat")).expect("token");
        assert_eq!(found.carrier, TokenCarrier::Subprotocol { echo: None });
    }

    #[test]
    fn subprotocol_list_without_bearer_entry_has_no_token() {
        assert_eq!(find_token(None, None, Some("wshub, chat")), None);
        assert_eq!(find_token(None, None, Some("bearer.")), None);
        assert_eq!(find_token(None, None, None), None);
    }

    #[test]
    fn query_wins_over_header_and_header_over_subprotocol() {
        let all = find_token(Some("token=q"), Some("Bearer h"), Some("bearer.s"));
        assert_eq!(all.map(|f| f.token), Some(Cow::Borrowed("q")));
        let no_query = find_token(Some("room=x"), Some("Bearer h"), Some("bearer.s"));
        assert_eq!(no_query.map(|f| f.token), Some(Cow::Borrowed("h")));
    }

    #[test]
    fn subprotocol_token_verifies_end_to_end() {
        let token = sign(&valid_claims());
        let offered = format!("wshub, bearer.{token}");
        let found = find_token(None, None, Some(&offered)).expect("token");
        let identity = verifier().verify_at(&found.token, now()).expect("valid");
        assert_eq!(identity.user, "alice");
    }

    #[test]
    fn select_subprotocol_picks_wshub_only() {
        assert_eq!(select_subprotocol("chat, wshub"), Some("wshub"));
        assert_eq!(select_subprotocol(" wshub "), Some("wshub"));
        assert_eq!(select_subprotocol("chat, bearer.x"), None);
        assert_eq!(select_subprotocol("wshubx, WSHUB"), None);
        assert_eq!(select_subprotocol(""), None);
    }

    #[test]
    fn api_key_matches_only_the_exact_bearer_key() {
        assert!(api_key_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(api_key_matches(Some("bearer  s3cret "), "s3cret"));
        assert!(!api_key_matches(Some("Bearer s3creT"), "s3cret"));
        assert!(!api_key_matches(Some("Bearer s3cret-longer"), "s3cret"));
        assert!(!api_key_matches(Some("Bearer s3"), "s3cret"));
    }

    #[test]
    fn api_key_missing_or_wrong_scheme_is_refused() {
        assert!(!api_key_matches(None, "s3cret"));
        assert!(!api_key_matches(Some("s3cret"), "s3cret"));
        assert!(!api_key_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!api_key_matches(Some("Bearer "), "s3cret"));
    }

    #[test]
    fn empty_configured_api_key_never_matches() {
        assert!(!api_key_matches(Some("Bearer "), ""));
        assert!(!api_key_matches(None, ""));
    }
}
