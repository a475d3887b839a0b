//! wshub: a WebSocket hub on one `mio` event loop.
//!
//! # Layout
//!
//! The shell (touches sockets, owns time):
//! - [`server`]: the event loop and its turn, one file per concern (accept and reap, input,
//!   HTTP, WebSocket dispatch, fan-out, the connection table, the write pass, liveness,
//!   shutdown).
//! - [`conn`]: one connection's socket, its phase and write state machines, and liveness; the
//!   only module that reads or writes a client socket.
//! - [`signals`]: SIGINT/SIGTERM/SIGHUP delivered to the loop through socket pairs.
//!
//! The core (plain data, no mio, time passed in):
//! - [`http`]: request parsing, the route decision, the WebSocket upgrade, responses.
//! - [`hub`]: rooms, users and their connections.
//! - [`auth`]: JWT verification, token carriers, the `rooms` claim, the API key check.
//! - [`netaddr`]: CIDRs and the client address behind trusted proxies.
//! - [`peers`]: what each client address holds, against the per-address limits.
//! - [`session`]: an open connection's WebSocket side: tungstenite over bytes, its budget and
//!   `rooms` claim.
//! - [`events`]: the JSON `events` protocol on top of the hub.
//! - [`history`]: each room's last messages, numbered, for clients that reconnect (one
//!   instance; with `--redis` they live in Redis).
//! - [`frame`]: server frames, encoded once per fan-out.
//! - [`outbuf`]: a connection's pending output.
//! - [`timer`]: the hashed timing wheel behind every timeout.
//! - [`ratelimit`]: the per-connection token bucket.
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`assets`]: the embedded chat page.
//! - [`config`], [`units`]: flags, environment, config file; sizes and durations.

pub mod assets;
pub mod auth;
pub mod config;
pub mod conn;
pub mod events;
pub mod frame;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod netaddr;
pub mod outbuf;
pub mod peers;
pub mod ratelimit;
pub mod redis;
pub mod server;
pub mod session;
pub mod signals;
pub mod timer;
pub mod units;

pub use config::{Config, Protocol};
pub use server::Server;
