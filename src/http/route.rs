//! The request → answer decision for the one port (SPEC §3). Pure: the loop acts on the result.

use crate::assets::Assets;
use crate::auth;

use super::request::Refused;
use super::upgrade::{self, Policy};
use super::{Request, Response, Upgrade};

/// What the server knows that the decision depends on.
pub struct RouteContext<'a> {
    /// `--ws-path`: the only path that upgrades.
    pub ws_path: &'a str,
    /// Origin and token rules for upgrades.
    pub policy: Policy<'a>,
    /// The page's files.
    pub assets: &'a Assets,
    /// True when the client's address holds `--max-connections-per-ip` WebSocket connections,
    /// so its upgrades get 429.
    pub address_full: bool,
    /// True when `--max-connections` WebSocket connections are open, so upgrades get 503.
    pub at_capacity: bool,
    /// `--api-key`; the API answers 404 without one.
    pub api_key: Option<&'a str>,
    /// True when `--redis` is given and Redis is unusable: `/healthz` says the instance is
    /// degraded (it still serves its own clients, so it stays 200).
    pub redis_unavailable: bool,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Route {
    /// Switch to WebSocket (the loop sends `101` and changes the connection's state).
    Upgrade(Upgrade),
    /// `GET /metrics`: the loop renders its counters.
    Metrics,
    /// `GET /api/online[?room=R]`, authorised: the loop lists who is online.
    ApiOnline { room: Option<String> },
    /// `POST /api/publish`, authorised: the loop delivers the body's message.
    ApiPublish,
    /// Answer with this response.
    Respond(Response),
}

/// Decides how to answer `request`.
pub fn route(request: &Request, ctx: &RouteContext) -> Route {
    let path = request.path.as_str();
    if path == ctx.ws_path {
        return match upgrade::check(request, &ctx.policy) {
            // Before the server-wide cap: the client learns the limit is its own.
            Ok(_) if ctx.address_full => Route::Respond(Response::fatal(
                429,
                "too many connections from your address\n",
            )),
            Ok(_) if ctx.at_capacity => {
                Route::Respond(Response::fatal(503, "server is at its connection limit\n"))
            }
            Ok(upgrade) => Route::Upgrade(upgrade),
            Err(response) => Route::Respond(response),
        };
    }
    if let Some(endpoint) = path.strip_prefix("/api/") {
        return api(request, endpoint, ctx.api_key);
    }
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    let known =
        path == "/" || path == "/healthz" || path == "/metrics" || path.starts_with("/assets/");
    if known && !readable {
        return Route::Respond(
            Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD"),
        );
    }
    match path {
        "/healthz" => {
            let health = if ctx.redis_unavailable {
                "degraded: redis unavailable\n"
            } else {
                "ok\n"
            };
            Route::Respond(Response::text(200, health).with_header("Cache-Control", "no-store"))
        }
        "/metrics" => Route::Metrics,
        "/" => serve_asset(ctx.assets, "index.html"),
        _ => match path.strip_prefix("/assets/") {
            Some(name) => serve_asset(ctx.assets, name),
            None => Route::Respond(Response::text(404, "not found\n")),
        },
    }
}

/// The HTTP API: off (404) without a key, then the key, then the method.
fn api(request: &Request, endpoint: &str, api_key: Option<&str>) -> Route {
    let method = match endpoint {
        "online" => "GET",
        "publish" => "POST",
        _ => return Route::Respond(json_error(404, "no such endpoint")),
    };
    let Some(api_key) = api_key else {
        return Route::Respond(json_error(
            404,
            "the API is off: start wshub with --api-key",
        ));
    };
    if !auth::api_key_matches(request.header("authorization"), api_key) {
        return Route::Respond(
            json_error(401, "missing or wrong API key").with_header("WWW-Authenticate", "Bearer"),
        );
    }
    if request.method != method {
        return Route::Respond(json_error(405, "method not allowed").with_header("Allow", method));
    }
    match endpoint {
        "online" => match request
            .query
            .as_deref()
            .map(|_| request.query_param("room"))
        {
            Some(Some(room)) if !room.is_empty() => Route::ApiOnline {
                room: Some(room.into_owned()),
            },
            Some(Some(_)) => Route::Respond(json_error(400, "room must not be empty")),
            _ => Route::ApiOnline { room: None },
        },
        _ => {
            let json = request.header("content-type").is_none_or(|value| {
                let media_type = value.split(';').next().unwrap_or_default().trim();
                media_type.eq_ignore_ascii_case("application/json")
            });
            if json {
                Route::ApiPublish
            } else {
                Route::Respond(json_error(415, "send the body as application/json"))
            }
        }
    }
}

/// The answer to a request refused before routing: JSON on the API, plain text elsewhere; the
/// connection is closed after it either way.
pub fn refusal(refused: &Refused) -> Response {
    let on_api = refused
        .path
        .as_deref()
        .is_some_and(|path| path.starts_with("/api/"));
    let response = if on_api {
        json_error(refused.status, refused.why)
    } else {
        Response::text(refused.status, format!("{}\n", refused.why))
    };
    response.closing()
}

/// An API error: `{"error": why}` with `status`.
pub fn json_error(status: u16, why: &str) -> Response {
    Response::json(status, serde_json::json!({ "error": why }).to_string())
}

fn serve_asset(assets: &Assets, name: &str) -> Route {
    Route::Respond(match assets.get(name) {
        Some(asset) => Response {
            status: 200,
            headers: vec![
                ("Content-Type", asset.content_type.into()),
                ("Cache-Control", "no-cache".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            body: asset.body.clone(),
            close: false,
        },
        None => Response::text(404, "not found\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    /// What the server knows besides the request, for one decision.
    #[derive(Default)]
    struct Situation<'k> {
        address_full: bool,
        at_capacity: bool,
        api_key: Option<&'k str>,
        redis_unavailable: bool,
    }

    fn decide_in(head: &str, situation: Situation) -> Route {
        let assets = Assets::embedded();
        let ctx = RouteContext {
            ws_path: "/ws",
            policy: Policy {
                allow_origins: &[],
                verifier: None,
                now: std::time::SystemTime::now(),
                peer_is_trusted_proxy: false,
            },
            assets: &assets,
            address_full: situation.address_full,
            at_capacity: situation.at_capacity,
            api_key: situation.api_key,
            redis_unavailable: situation.redis_unavailable,
        };
        route(&parse(head.as_bytes()).unwrap().0, &ctx)
    }

    fn decide_with_key(head: &str, at_capacity: bool, api_key: Option<&str>) -> Route {
        decide_in(
            head,
            Situation {
                at_capacity,
                api_key,
                ..Situation::default()
            },
        )
    }

    fn decide(head: &str, at_capacity: bool) -> Route {
        decide_with_key(head, at_capacity, None)
    }

    #[test]
    fn api_is_off_without_a_key_and_guarded_with_one() {
        let online = "GET /api/online?room=lobby HTTP/1.1\r\nAuthorization: Bearer k3y\r\n\r\n";
        assert_eq!(status(decide(online, false)), 404);
        assert!(matches!(
            decide_with_key(online, false, Some("k3y")),
            Route::ApiOnline { room: Some(room) } if room == "lobby"
        ));
        let wrong_key = "GET /api/online HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n";
        assert_eq!(status(decide_with_key(wrong_key, false, Some("k3y"))), 401);
        let no_key = "GET /api/online HTTP/1.1\r\n\r\n";
        assert_eq!(status(decide_with_key(no_key, false, Some("k3y"))), 401);
        let wrong_method = "GET /api/publish HTTP/1.1\r\nAuthorization: Bearer k3y\r\n\r\n";
        assert_eq!(
            status(decide_with_key(wrong_method, false, Some("k3y"))),
            405
        );
        let publish = "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer k3y\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            decide_with_key(publish, false, Some("k3y")),
            Route::ApiPublish
        ));
        let form = "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer k3y\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(status(decide_with_key(form, false, Some("k3y"))), 415);
    }

    fn status(route: Route) -> u16 {
        match route {
            Route::Respond(response) => response.status,
            Route::Upgrade(_) => 101,
            Route::Metrics | Route::ApiOnline { .. } | Route::ApiPublish => 200,
        }
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn every_documented_path_gets_its_status() {
        assert_eq!(status(decide(UPGRADE, false)), 101);
        assert_eq!(status(decide(UPGRADE, true)), 503);
        assert_eq!(
            status(decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", false)),
            426
        );
        assert_eq!(status(decide("GET / HTTP/1.1\r\n\r\n", false)), 200);
        assert_eq!(
            status(decide("HEAD /assets/app.js HTTP/1.1\r\n\r\n", false)),
            200
        );
        assert_eq!(status(decide("GET /healthz HTTP/1.1\r\n\r\n", false)), 200);
        assert!(matches!(
            decide("GET /metrics HTTP/1.1\r\n\r\n", false),
            Route::Metrics
        ));
        assert_eq!(status(decide("GET /nope HTTP/1.1\r\n\r\n", false)), 404);
        assert_eq!(
            status(decide("GET /assets/../Cargo.toml HTTP/1.1\r\n\r\n", false)),
            404
        );
        assert_eq!(
            status(decide("DELETE /healthz HTTP/1.1\r\n\r\n", false)),
            405
        );
    }

    #[test]
    fn healthz_says_when_redis_is_unavailable_but_stays_200() {
        let body = |redis_unavailable| match decide_in(
            "GET /healthz HTTP/1.1\r\n\r\n",
            Situation {
                redis_unavailable,
                ..Situation::default()
            },
        ) {
            Route::Respond(response) => (response.status, response.body.into_owned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(body(false), (200, b"ok\n".to_vec()));
        assert_eq!(body(true), (200, b"degraded: redis unavailable\n".to_vec()));
    }

    #[test]
    fn an_address_at_its_limit_gets_429_for_upgrades_only() {
        let full = |head: &str| {
            decide_in(
                head,
                Situation {
                    address_full: true,
                    ..Situation::default()
                },
            )
        };
        let Route::Respond(refusal) = full(UPGRADE) else {
            panic!("expected a response");
        };
        assert_eq!(refusal.status, 429);
        assert!(refusal.close, "a refused upgrade closes the connection");
        let both = Situation {
            address_full: true,
            at_capacity: true,
            ..Situation::default()
        };
        assert_eq!(
            status(decide_in(UPGRADE, both)),
            429,
            "the client's own limit is named first"
        );
        assert_eq!(
            status(full("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")),
            426,
            "a request that is no upgrade is told so"
        );
        assert_eq!(status(full("GET /healthz HTTP/1.1\r\n\r\n")), 200);
    }

    #[test]
    fn index_is_served_as_html() {
        let Route::Respond(response) = decide("GET / HTTP/1.1\r\n\r\n", false) else {
            panic!("expected a response");
        };
        assert!(
            response
                .headers
                .contains(&("Content-Type", "text/html; charset=utf-8".into()))
        );
        assert_eq!(
            response.body,
            Assets::embedded().get("index.html").unwrap().body
        );
    }
}
