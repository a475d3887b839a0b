//! What each client address holds, for the per-address limits of SPEC §6: WebSocket
//! connections per client address (`--max-connections-per-ip`) and other sockets per peer (a
//! small fixed bound), so that one address can neither take every slot nor lock other addresses
//! out of `/healthz`.
//!
//! Plain data: the loop reports a connection's four moves — accepted, upgraded into the hub,
//! out of the hub, removed — each from one place, and asks before it accepts a socket or
//! upgrades one. At any time every connection is counted exactly once: as a WebSocket of its
//! client address while it is in the hub, otherwise as a socket of its peer (speaking HTTP,
//! answered and closing, or a WebSocket that left the hub and is not gone yet). An address is
//! forgotten when it holds nothing, so memory follows the live connections.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use crate::netaddr::Cidr;

/// `--max-connections-per-ip` when the flag is not given; loopback is then exempt.
pub const DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS: u32 = 256;

/// Sockets outside the hub one peer may hold at once; past it a new socket is closed as soon as
/// it is accepted. A browser opens about 6 connections per host, so a few tabs loading the page
/// and upgrading stay far below; a handshake lasts one round trip, so even a NAT whose users all
/// reconnect at once only sees some sockets refused (and retried), while one address holding
/// idle sockets can no longer fill the HTTP headroom every other address needs.
pub const MAX_SOCKETS_PER_PEER: u32 = 32;

/// What every address holds, and the limits that apply to it.
pub struct Peers {
    /// Addresses holding at least one connection; an address is removed when its counts reach
    /// zero, so a churn of distinct addresses leaves nothing behind.
    held: HashMap<IpAddr, Held>,
    /// WebSocket connections one client address may hold.
    max_websockets: u32,
    /// The limit was not given explicitly: loopback addresses (a reverse proxy on the same host
    /// whose forwarded addresses are not trusted, local load tests) are not limited.
    loopback_exempt: bool,
    /// `--trusted-proxy` blocks: such a peer carries many clients, so its sockets are not
    /// bounded (the clients behind it are, by their forwarded address, once they upgrade).
    trusted_proxies: Vec<Cidr>,
}

/// One address's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    /// Connections in the hub whose client is this address.
    websockets: u32,
    /// Connections outside the hub whose peer is this address.
    sockets: u32,
}

impl Peers {
    /// The limits for `--max-connections-per-ip` (`None`: the default, loopback exempt) and
    /// `--trusted-proxy`.
    pub fn new(max_connections_per_ip: Option<u32>, trusted_proxies: &[Cidr]) -> Peers {
        Peers {
            held: HashMap::new(),
            max_websockets: max_connections_per_ip.unwrap_or(DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS),
            loopback_exempt: max_connections_per_ip.is_none(),
            trusted_proxies: trusted_proxies.to_vec(),
        }
    }

    /// Whether a socket just accepted from `peer` may stay.
    pub fn may_accept(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.exempt(peer)
            || self.trusted_proxies.iter().any(|cidr| cidr.contains(peer))
            || self.held(peer).sockets < MAX_SOCKETS_PER_PEER
    }

    /// Whether `client` may open another WebSocket connection (else its upgrade gets 429).
    pub fn may_upgrade(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.exempt(client) || self.held(client).websockets < self.max_websockets
    }

    /// A socket from `peer` was accepted and kept.
    pub fn accepted(&mut self, peer: IpAddr) {
        self.entry(peer).sockets += 1;
    }

    /// A connection from `peer` entered the hub as a WebSocket of `client`.
    pub fn upgraded(&mut self, peer: IpAddr, client: IpAddr) {
        self.release(peer, |held| &mut held.sockets);
        self.entry(client).websockets += 1;
    }

    /// The WebSocket of `client` left the hub; its socket (from `peer`) is closing.
    pub fn left_hub(&mut self, peer: IpAddr, client: IpAddr) {
        self.release(client, |held| &mut held.websockets);
        self.entry(peer).sockets += 1;
    }

    /// A connection from `peer`, outside the hub, is gone.
    pub fn removed(&mut self, peer: IpAddr) {
        self.release(peer, |held| &mut held.sockets);
    }

    /// How many addresses hold a connection (the tests check that none is left behind).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.held.len()
    }

    fn exempt(&self, addr: IpAddr) -> bool {
        self.loopback_exempt && addr.is_loopback()
    }

    fn held(&self, addr: IpAddr) -> Held {
        self.held.get(&addr).copied().unwrap_or_default()
    }

    fn entry(&mut self, addr: IpAddr) -> &mut Held {
        self.held.entry(addr.to_canonical()).or_default()
    }

    /// Takes one off the count `which` picks, forgetting the address once it holds nothing.
    fn release(&mut self, addr: IpAddr, which: fn(&mut Held) -> &mut u32) {
        let Entry::Occupied(mut entry) = self.held.entry(addr.to_canonical()) else {
            debug_assert!(false, "{addr} released a connection it never held");
            return;
        };
        let count = which(entry.get_mut());
        debug_assert!(*count > 0, "{addr} released a connection it never held");
        *count = count.saturating_sub(1);
        if *entry.get() == Held::default() {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect(text)
    }

    /// Accepts a socket from `addr` and upgrades it as its own client.
    fn open(peers: &mut Peers, addr: IpAddr) {
        assert!(peers.may_accept(addr));
        peers.accepted(addr);
        assert!(peers.may_upgrade(addr));
        peers.upgraded(addr, addr);
    }

    #[test]
    fn an_explicit_limit_bounds_every_address_and_is_released_when_connections_go() {
        let mut peers = Peers::new(Some(2), &[]);
        for addr in [ip("127.0.0.2"), ip("198.51.100.7")] {
            open(&mut peers, addr);
            open(&mut peers, addr);
            assert!(!peers.may_upgrade(addr), "{addr}: a third WebSocket");
        }
        assert!(peers.may_upgrade(ip("198.51.100.8")), "others are not held");
        let addr = ip("198.51.100.7");
        peers.left_hub(addr, addr);
        assert!(
            peers.may_upgrade(addr),
            "a slot is free once one leaves the hub"
        );
        peers.removed(addr);
        peers.left_hub(addr, addr);
        peers.removed(addr);
        assert_eq!(peers.addresses(), 1, "only 127.0.0.2 holds anything");
    }

    #[test]
    fn by_default_loopback_is_exempt_and_others_get_256() {
        let mut peers = Peers::new(None, &[]);
        let local = ip("127.0.0.1");
        let remote = ip("203.0.113.9");
        for _ in 0..DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS {
            open(&mut peers, local);
            open(&mut peers, remote);
        }
        assert!(peers.may_upgrade(local));
        assert!(peers.may_upgrade(ip("::1")));
        assert!(!peers.may_upgrade(remote));
        for _ in 0..MAX_SOCKETS_PER_PEER {
            peers.accepted(local);
            peers.accepted(remote);
        }
        assert!(peers.may_accept(local));
        assert!(!peers.may_accept(remote));
    }

    #[test]
    fn sockets_are_bounded_per_peer_except_for_trusted_proxies() {
        let proxy: Cidr = "10.0.0.0/8".parse().expect("CIDR");
        let mut peers = Peers::new(Some(1), &[proxy]);
        let peer = ip("192.0.2.1");
        let nginx = ip("10.1.2.3");
        for _ in 0..MAX_SOCKETS_PER_PEER {
            assert!(peers.may_accept(peer));
            peers.accepted(peer);
            peers.accepted(nginx);
        }
        assert!(!peers.may_accept(peer), "the bound is reached");
        assert!(
            peers.may_accept(nginx),
            "a trusted proxy carries many clients"
        );
        // Behind the proxy each forwarded client has its own WebSocket limit.
        let (alice, bob) = (ip("198.51.100.1"), ip("198.51.100.2"));
        peers.upgraded(nginx, alice);
        assert!(!peers.may_upgrade(alice));
        assert!(peers.may_upgrade(bob));
        peers.upgraded(nginx, bob);
        // An upgrade frees the peer's socket slot; a WebSocket leaving the hub takes it again
        // until its socket is gone.
        peers.upgraded(peer, peer);
        assert!(peers.may_accept(peer));
        peers.left_hub(peer, peer);
        assert!(!peers.may_accept(peer));
        peers.removed(peer);
        assert!(peers.may_accept(peer));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let mut peers = Peers::new(Some(1), &[]);
        open(&mut peers, ip("::ffff:192.0.2.5"));
        assert!(!peers.may_upgrade(ip("192.0.2.5")));
        peers.left_hub(ip("192.0.2.5"), ip("::ffff:192.0.2.5"));
        peers.removed(ip("::ffff:192.0.2.5"));
        assert_eq!(peers.addresses(), 0);
    }

    /// A phase as the loop sees it, for the randomised lifecycle below.
    #[derive(Clone, Copy, PartialEq)]
    enum Stage {
        Http,
        InHub,
        Closing,
    }

    /// Hundreds of connections from a few addresses, interleaved, each going one of the ways a
    /// connection can go (removed while speaking HTTP; upgraded, then out of the hub by a close
    /// or by doom, then removed), with clients that differ from peers as behind a proxy: the
    /// counts always match the connections alive, and nothing is left once they are all gone.
    #[test]
    fn every_way_out_releases_exactly_what_was_taken() {
        let mut peers = Peers::new(Some(1_000), &[]);
        let addrs: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("192.0.2.{i}"))).collect();
        // (peer, client, stage)
        let mut live: Vec<(IpAddr, IpAddr, Stage)> = Vec::new();
        let mut seed = 0x2545_f491_u32;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % bound
        };
        for step in 0..2_000 {
            match next(4) {
                0 | 1 if step < 1_500 => {
                    let peer = addrs[next(addrs.len())];
                    peers.accepted(peer);
                    live.push((peer, peer, Stage::Http));
                }
                2 if !live.is_empty() => {
                    let index = next(live.len());
                    let (peer, client, stage) = &mut live[index];
                    match stage {
                        Stage::Http => {
                            *client = addrs[next(addrs.len())];
                            peers.upgraded(*peer, *client);
                            *stage = Stage::InHub;
                        }
                        Stage::InHub => {
                            peers.left_hub(*peer, *client);
                            *stage = Stage::Closing;
                        }
                        Stage::Closing => {}
                    }
                }
                _ if !live.is_empty() => {
                    let (peer, client, stage) = live.swap_remove(next(live.len()));
                    if stage == Stage::InHub {
                        peers.left_hub(peer, client);
                    }
                    peers.removed(peer);
                }
                _ => {}
            }
            for &addr in &addrs {
                let websockets = live
                    .iter()
                    .filter(|&&(_, client, stage)| stage == Stage::InHub && client == addr)
                    .count();
                let sockets = live
                    .iter()
                    .filter(|&&(peer, _, stage)| stage != Stage::InHub && peer == addr)
                    .count();
                assert_eq!(
                    peers.held(addr),
                    Held {
                        websockets: websockets as u32,
                        sockets: sockets as u32,
                    }
                );
            }
        }
        while let Some((peer, client, stage)) = live.pop() {
            if stage == Stage::InHub {
                peers.left_hub(peer, client);
            }
            peers.removed(peer);
        }
        assert_eq!(peers.addresses(), 0);
    }
}
