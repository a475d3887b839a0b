//! The request → answer decision for the one port (SPEC §3). Pure: the loop acts on the result.

use crate::assets::Assets;

use super::{Request, Response, Upgrade, upgrade};

/// What the server knows that the decision depends on.
pub struct RouteContext<'a> {
    /// `--ws-path`: the only path that upgrades.
    pub ws_path: &'a str,
    /// `--allow-origin` entries for the Origin rule.
    pub allow_origins: &'a [String],
    /// The page's files.
    pub assets: &'a Assets,
    /// True when `--max-connections` WebSocket connections are open, so upgrades get 503.
    pub at_capacity: bool,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Route {
    /// Switch to WebSocket (the loop sends `101` and changes the connection's state).
    Upgrade(Upgrade),
    /// `GET /metrics`: the loop renders its counters.
    Metrics,
    /// Answer with this response.
    Respond(Response),
}

/// Decides how to answer `request`.
pub fn route(request: &Request, ctx: &RouteContext) -> Route {
    let path = request.path.as_str();
    if path == ctx.ws_path {
        return match upgrade::check(request, ctx.allow_origins) {
            Ok(_) if ctx.at_capacity => Route::Respond(Response::fatal(503, "server is at its connection limit\n")),
            Ok(upgrade) => Route::Upgrade(upgrade),
            Err(response) => Route::Respond(response),
        };
    }
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    let known = path == "/" || path == "/healthz" || path == "/metrics" || path.starts_with("/assets/");
    if known && !readable {
        return Route::Respond(Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD"));
    }
    match path {
        "/healthz" => Route::Respond(Response::text(200, "ok\n").with_header("Cache-Control", "no-store")),
        "/metrics" => Route::Metrics,
        "/" => serve_asset(ctx.assets, "index.html"),
        _ => match path.strip_prefix("/assets/") {
            Some(name) => serve_asset(ctx.assets, name),
            None => Route::Respond(Response::text(404, "not found\n")),
        },
    }
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

    fn decide(head: &str, at_capacity: bool) -> Route {
        let assets = Assets::embedded();
        let ctx = RouteContext { ws_path: "/ws", allow_origins: &[], assets: &assets, at_capacity };
        route(&parse(head.as_bytes()).unwrap().0, &ctx)
    }

    fn status(route: Route) -> u16 {
        match route {
            Route::Respond(response) => response.status,
            Route::Upgrade(_) => 101,
            Route::Metrics => 200,
        }
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn every_documented_path_gets_its_status() {
        assert_eq!(status(decide(UPGRADE, false)), 101);
        assert_eq!(status(decide(UPGRADE, true)), 503);
        assert_eq!(status(decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", false)), 426);
        assert_eq!(status(decide("GET / HTTP/1.1\r\n\r\n", false)), 200);
        assert_eq!(status(decide("HEAD /assets/app.js HTTP/1.1\r\n\r\n", false)), 200);
        assert_eq!(status(decide("GET /healthz HTTP/1.1\r\n\r\n", false)), 200);
        assert!(matches!(decide("GET /metrics HTTP/1.1\r\n\r\n", false), Route::Metrics));
        assert_eq!(status(decide("GET /nope HTTP/1.1\r\n\r\n", false)), 404);
        assert_eq!(status(decide("GET /assets/../Cargo.toml HTTP/1.1\r\n\r\n", false)), 404);
        assert_eq!(status(decide("DELETE /healthz HTTP/1.1\r\n\r\n", false)), 405);
    }

    #[test]
    fn index_is_served_as_html() {
        let Route::Respond(response) = decide("GET / HTTP/1.1\r\n\r\n", false) else {
            panic!("expected a response");
        };
        assert!(response.headers.contains(&("Content-Type", "text/html; charset=utf-8".into())));
        assert_eq!(response.body, Assets::embedded().get("index.html").unwrap().body);
    }
}
