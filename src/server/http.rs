//! HTTP serving: every complete request a connection holds is routed (`crate::http::route`
//! decides) and answered — the page, `/healthz`, `/metrics`, the API — or upgraded to WebSocket.
//!
//! Owns executing what the router decided: the API calls, the upgrade (the `101`, the hub, the
//! session) and refused-upgrade accounting. Must not parse or decide anything the core
//! `crate::http` modules do, and must not answer a client that does not read its answers (the
//! connection pauses instead).

use std::io;
use std::time::SystemTime;

use log::{debug, warn};

use super::Server;
use super::fanout::unix_ms;
use super::redis::{ApiAnswer, online_response};
use crate::events;
use crate::frame::OpCode;
use crate::history::Position;
use crate::http::request::Limits;
use crate::http::route::{self, json_error};
use crate::http::upgrade::{Claim, Policy, anonymous_id, switching_protocols};
use crate::http::{Response, Route, RouteContext, Upgrade};
use crate::hub::{ConnId, Target};
use crate::metrics::{Gauges, HandshakeFailure};
use crate::netaddr;
use crate::ratelimit::TokenBucket;
use crate::session::Session;

/// The interim answer to `Expect: 100-continue`: the client sends the body once it sees it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Server {
    /// Answers every complete request buffered on an HTTP connection.
    pub(super) fn serve_requests(&mut self, id: ConnId) {
        let limits = Limits {
            max_head: self.config.max_header_bytes,
            max_body: self.config.max_message_size,
        };
        loop {
            let waits = self.redis.as_ref().is_some_and(|r| r.holds_answer_for(id));
            let Some(conn) = self.table.get_mut(id) else {
                return;
            };
            if waits || conn.pending() > self.config.max_buffered {
                // A client pipelining requests without reading the answers, or whose last
                // request waits for Redis: stop answering and reading until its output drains
                // (the write pass resumes it).
                conn.pause_reading();
                return;
            }
            let Some(reader) = conn.requests() else {
                return;
            };
            let (request, body) = match reader.next(limits) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    if reader.take_continue() {
                        self.table.push(id, CONTINUE, self.now);
                    }
                    return;
                }
                Err(refused) => {
                    debug!(
                        "{}: request refused with {}: {}",
                        conn.client, refused.status, refused.why
                    );
                    if refused
                        .path
                        .as_deref()
                        .is_none_or(|path| path == self.config.ws_path)
                    {
                        self.metrics
                            .handshake_failed(HandshakeFailure::from_status(refused.status));
                    }
                    self.respond(id, &route::refusal(&refused), true);
                    return;
                }
            };
            if !self.config.trusted_proxies.is_empty() {
                conn.client = netaddr::client_addr(
                    conn.peer,
                    request.header_list("x-forwarded-for").as_deref(),
                    request.header("x-real-ip"),
                    &self.config.trusted_proxies,
                );
            }
            let ctx = RouteContext {
                ws_path: &self.config.ws_path,
                policy: Policy {
                    allow_origins: &self.config.allow_origins,
                    verifier: self.verifier.as_ref(),
                    now: SystemTime::now(),
                    peer_is_trusted_proxy: netaddr::is_trusted(
                        conn.peer,
                        &self.config.trusted_proxies,
                    ),
                },
                assets: &self.assets,
                address_full: !self.peers.may_upgrade(conn.client),
                at_capacity: self.hub.connection_count() >= self.config.max_connections,
                api_key: self.config.api_key.as_deref(),
                redis_unavailable: self.redis.as_ref().is_some_and(|r| !r.is_up()),
            };
            let response = match route::route(&request, &ctx) {
                Route::Upgrade(upgrade) => {
                    self.upgrade(id, upgrade);
                    return;
                }
                Route::ApiOnline { room } => {
                    let keep_alive = request.keep_alive();
                    let head = request.method == "HEAD";
                    if self.ask_api_online(id, room.clone(), keep_alive, head) {
                        if let Some(conn) = self.table.get_mut(id) {
                            conn.pause_reading();
                        }
                        return;
                    }
                    self.api_online(room.as_deref())
                }
                Route::ApiPublish => {
                    let keep_alive = request.keep_alive();
                    let head = request.method == "HEAD";
                    match self.api_publish(id, &body, keep_alive, head) {
                        Some(response) => response,
                        None => {
                            if let Some(conn) = self.table.get_mut(id) {
                                conn.pause_reading();
                            }
                            return;
                        }
                    }
                }
                Route::Metrics => Response::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.render_metrics().into_bytes(),
                ),
                Route::Respond(response) => {
                    if request.path == self.config.ws_path {
                        self.upgrade_refused(id, &response);
                    }
                    response
                }
            };
            let response = if request.keep_alive() {
                response
            } else {
                response.closing()
            };
            self.respond(id, &response, request.method != "HEAD");
            if response.close {
                return;
            }
        }
    }

    /// Counts a refused upgrade by reason and logs why (auth failures at warn: an operator
    /// wants to see those; the body holds the reason, never the token).
    fn upgrade_refused(&mut self, id: ConnId, response: &Response) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let why = String::from_utf8_lossy(&response.body);
        if response.status == 401 {
            warn!("{}: upgrade refused: {}", conn.client, why.trim());
        } else {
            debug!(
                "{}: upgrade refused with {}: {}",
                conn.client,
                response.status,
                why.trim()
            );
        }
        self.metrics
            .handshake_failed(HandshakeFailure::from_status(response.status));
    }

    /// `GET /api/online` from this instance's hub: who is online, in a room or anywhere.
    fn api_online(&self, room: Option<&str>) -> Response {
        online_response(room, self.local_users(room), self.local_connections(room))
    }

    /// `POST /api/publish`: delivers the body's message like a client's, without `from`. A
    /// room message's answer carries its offset and epoch; through Redis (which numbers it)
    /// that answer waits for Redis, and `None` says so: the connection is answered later.
    fn api_publish(
        &mut self,
        id: ConnId,
        body: &[u8],
        keep_alive: bool,
        head: bool,
    ) -> Option<Response> {
        let Ok(body) = std::str::from_utf8(body) else {
            return Some(json_error(400, "body must be UTF-8 JSON"));
        };
        let hub_wide = self.redis.as_ref().is_some_and(|r| r.routes());
        let published = events::publish(
            &mut self.history,
            self.now,
            unix_ms(),
            self.config.max_message_size,
            hub_wide,
            body,
        );
        let (delivery, position) = match published {
            Ok(published) => published,
            Err(failure) => return Some(json_error(failure.code, failure.error)),
        };
        if hub_wide && self.history.is_on() && matches!(delivery.target, Target::Room(_)) {
            // Through Redis, `delivered` counts this instance's connections the event is for
            // now; it is delivered to them when it comes back.
            let delivered = delivery.target.recipients(&self.hub).count() as u64;
            let answer = ApiAnswer {
                conn: id,
                keep_alive,
                head,
            };
            if self.ask_api_publish(&delivery, delivered, answer) {
                return None;
            }
        }
        let delivered = self
            .relay(&delivery.target, OpCode::Text, delivery.json.as_bytes())
            .unwrap_or_else(|| delivery.target.recipients(&self.hub).count() as u64);
        Some(publish_response(delivered, position.as_ref()))
    }

    fn render_metrics(&self) -> String {
        self.metrics.render(Gauges {
            connections: self.hub.connection_count(),
            rooms: self.hub.room_count(),
            users: self.hub.user_count(),
            output_bytes: self.table.output_bytes(),
            history_bytes: self.history.bytes(),
            redis: self.redis.as_ref().map(|r| (r.is_up(), r.stats())),
        })
    }

    /// Queues an HTTP response; a closing response ends the connection once it is written.
    pub(super) fn respond(&mut self, id: ConnId, response: &Response, include_body: bool) {
        let mut bytes = Vec::with_capacity(256 + response.body.len());
        response.encode(include_body, &mut bytes);
        self.table.push(id, &bytes, self.now);
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if response.close {
            conn.finish_http(self.now);
            self.reschedule(id);
        } else {
            conn.restart_phase(self.now);
        }
    }

    /// Switches an HTTP connection to WebSocket: `101`, the hub, and any bytes that came
    /// after the request head in the same packet.
    fn upgrade(&mut self, id: ConnId, upgrade: Upgrade) {
        let mut switching = Vec::with_capacity(256);
        switching_protocols(&upgrade).encode(true, &mut switching);
        let (user, rooms) = match upgrade.claim {
            Claim::Token(identity) => {
                let name = identity.name.as_deref().unwrap_or("-");
                if let Some(conn) = self.table.get_mut(id) {
                    debug!(
                        "{}: token accepted for {} (name {name})",
                        conn.client, identity.user
                    );
                }
                (identity.user, identity.rooms)
            }
            Claim::Named(user) => (user, None),
            Claim::Anonymous => match self.anonymous_user() {
                Ok(user) => (user, None),
                Err(err) => {
                    warn!("no randomness for an anonymous id: {err}");
                    let response = Response::fatal(503, "cannot name an anonymous user\n");
                    self.upgrade_refused(id, &response);
                    self.respond(id, &response, true);
                    return;
                }
            },
        };
        self.table.push(id, &switching, self.now);
        let bucket = self
            .config
            .rate_limit
            .map(|rate| TokenBucket::new(rate, self.now));
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let rest = conn.requests().map(|reader| reader.take_rest());
        debug!("{}: WebSocket open as {user}", conn.client);
        let session = Session::new(
            rooms,
            bucket,
            self.liveness.timeouts.ping_interval,
            self.now,
        );
        conn.open(session, self.now);
        self.peers.upgraded(conn.peer, conn.client);
        self.hub.connect(id, &user);
        self.redis_connected(&user);
        self.metrics.connections_total += 1;
        self.reschedule(id);
        if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
            self.feed(id, &rest);
        }
    }

    /// A fresh anonymous user id that no one online holds. A clash of 71 random bits will not
    /// happen, but it is cheap to rule out, and it would merge two strangers into one user.
    fn anonymous_user(&self) -> io::Result<String> {
        loop {
            let user = anonymous_id(os_random()?);
            if self.hub.user_connections(&user).is_empty() {
                return Ok(user);
            }
        }
    }
}

/// 16 bytes from the kernel's CSPRNG (`getrandom(2)`, the source std's `HashMap` keys use). It
/// does not block once the pool is initialised at boot, long before a daemon takes clients.
pub(super) fn os_random() -> io::Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    loop {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call; getrandom
        // writes at most that many bytes.
        let read = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if read == bytes.len() as isize {
            return Ok(bytes);
        }
        let err = io::Error::last_os_error();
        if read < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if read < 0 {
            err
        } else {
            io::Error::other("getrandom returned fewer bytes than asked")
        });
    }
}

/// The answer to `POST /api/publish`: how many connections here took it, and for a room
/// message with history, its offset and its room's epoch.
pub(super) fn publish_response(delivered: u64, position: Option<&Position>) -> Response {
    let body = match position {
        Some(position) => serde_json::json!({
            "delivered": delivered,
            "offset": position.offset,
            "epoch": position.epoch,
        }),
        None => serde_json::json!({ "delivered": delivered }),
    };
    Response::json(200, body.to_string())
}
