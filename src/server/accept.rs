//! Where connections come from and where they go: the listening socket, accepting under the
//! connection cap and the per-peer socket bound (with a backoff when descriptors run out), and
//! reaping doomed connections at the end of the turn.
//!
//! Owns the listener. Must not accept during a write pass (the pass defers the listener's
//! readiness to the next turn), and must not free a slot before its key has left the hub, every
//! per-turn list and the timer wheel.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::{debug, error};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::Server;
use crate::conn::Connection;
use crate::hub::ConnId;

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// How long to wait before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listening socket and the rules for taking connections from it.
pub(super) struct Acceptor {
    /// The listening socket; dropped when shutdown starts so new connections are refused.
    listener: Option<TcpListener>,
    /// The address actually bound (useful with port 0).
    local_addr: SocketAddr,
    /// Most sockets held at once (WebSocket and HTTP): `--max-connections` plus headroom for
    /// connections still speaking HTTP, so plain HTTP clients cannot exhaust descriptors.
    cap: usize,
    /// Accepting is paused until then after the process ran out of file descriptors.
    paused_until: Option<Instant>,
}

impl Acceptor {
    /// Binds `listen` and registers the listener with `registry` under `token`.
    pub(super) fn bind(
        listen: &str,
        registry: &Registry,
        token: Token,
        cap: usize,
    ) -> io::Result<Acceptor> {
        let mut listener = TcpListener::from_std(bind_listener(resolve(listen)?)?);
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            local_addr,
            cap,
            paused_until: None,
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How long until accepting resumes after a descriptor shortage, if it is paused.
    pub(super) fn resume_in(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .map(|until| until.saturating_duration_since(now))
    }

    /// Closes the port: connections that arrive from now on are refused by the kernel.
    pub(super) fn close(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            // Dropping the listener closes the port; deregistering first keeps poll tidy.
            let _ = registry.deregister(&mut listener);
        }
    }
}

impl Server {
    /// Accepts every pending connection, refusing those past the cap at once.
    pub(super) fn accept(&mut self) {
        loop {
            if self.acceptor.paused_until.is_some() {
                return;
            }
            let Some(listener) = &self.acceptor.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) if self.table.len() >= self.acceptor.cap => {
                    // Every slot is taken (WebSocket connections up to the limit plus HTTP
                    // headroom): closing at once beats letting the descriptor table fill up.
                    debug!("{peer}: refused, {} connections open", self.table.len());
                    drop(socket);
                }
                Ok((socket, peer)) if !self.peers.may_accept(peer.ip()) => {
                    // One address holding this many sockets outside the hub would otherwise
                    // fill the HTTP headroom every other address needs.
                    debug!("{peer}: refused, too many sockets from this address");
                    drop(socket);
                }
                Ok((socket, peer)) => self.add_connection(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Typically EMFILE: the descriptor limit is reached. The pending connection
                    // stays in the backlog; try again shortly instead of spinning.
                    error!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.acceptor.paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Resumes accepting once a descriptor backoff is over.
    pub(super) fn accept_after_backoff(&mut self) {
        if self
            .acceptor
            .paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.acceptor.paused_until = None;
            self.accept();
        }
    }

    fn add_connection(&mut self, socket: TcpStream, peer: SocketAddr) {
        // Writes are already coalesced per pass, so Nagle would only add latency.
        if let Err(e) = socket.set_nodelay(true) {
            debug!("{peer}: set_nodelay failed: {e}");
        }
        let conn = Connection::new(socket, peer.ip(), self.now);
        let Some(id) = self.table.insert(conn, self.poll.registry()) else {
            return;
        };
        self.peers.accepted(peer.ip());
        if let Some(conn) = self.table.get_mut(id) {
            self.liveness.arm(conn, id);
        }
    }

    /// Ends a connection in any phase: out of the hub (telling its rooms), then removed at the
    /// end of the turn.
    pub(super) fn doom(&mut self, id: ConnId) {
        self.leave_hub(id);
        self.table.doom(id);
    }

    /// Removes the connections doomed this turn: out of every list, timer cancelled, slot freed.
    pub(super) fn reap(&mut self) {
        let liveness = &mut self.liveness;
        let peers = &mut self.peers;
        let redis = &mut self.redis;
        self.table.reap(|id, conn| {
            liveness.disarm(conn);
            peers.removed(conn.peer);
            if let Some(redis) = redis {
                redis.forget(id);
            }
            debug!("{}: connection removed", conn.client);
        });
    }
}

/// A listening socket with a backlog deep enough for connection bursts (std's 128 drops SYNs
/// when a thousand clients connect at once, and each drop costs the client a 1 s retry).
fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("could not bind {addr}: {e}"));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(context)?;
    socket.listen(LISTEN_BACKLOG).map_err(context)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn resolve(listen: &str) -> io::Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("invalid --listen address {listen:?}: {e}"),
            )
        })?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--listen {listen:?} resolves to no address"),
            )
        })
}
