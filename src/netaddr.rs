//! Client addresses behind reverse proxies: `--trusted-proxy` CIDRs and the
//! `X-Forwarded-For` / `X-Real-IP` walk (SPEC §4).
//!
//! Pure functions over parsed addresses and raw header text; nothing here touches a socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Bits in an IPv4 address: the longest IPv4 prefix.
const IPV4_BITS: u8 = 32;
/// Bits in an IPv6 address: the longest IPv6 prefix.
const IPV6_BITS: u8 = 128;
/// Bits before the IPv4 part of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
const IPV4_MAPPED_PREFIX_BITS: u8 = IPV6_BITS - IPV4_BITS;

/// An address block such as `10.0.0.0/8` or `::1/128`, as given to `--trusted-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The first address of the block, host bits cleared, so `contains` is one mask and compare.
    /// IPv4-mapped IPv6 blocks are stored as IPv4 so they match peers of either spelling.
    network: IpAddr,
    /// How many leading bits of `network` a member must share.
    prefix_len: u8,
}

/// Why a `--trusted-proxy` value is not a CIDR; the text names the input and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrParseError {
    /// The full sentence shown to the operator.
    message: String,
}

impl fmt::Display for CidrParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CidrParseError {}

impl FromStr for Cidr {
    type Err = CidrParseError;

    /// Accepts `ADDR/LEN` or a bare `ADDR` (a single host: /32 or /128). Host bits below the
    /// prefix are cleared, so `10.1.2.3/8` means `10.0.0.0/8`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| CidrParseError {
            message: format!("invalid CIDR {input:?}: {problem}"),
        };
        let text = input.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr_text)
            .map_err(|_| fail(format!("{addr_text:?} is not an IPv4 or IPv6 address")))?;
        let (family, max_len) = match addr {
            IpAddr::V4(_) => ("IPv4", IPV4_BITS),
            IpAddr::V6(_) => ("IPv6", IPV6_BITS),
        };
        let prefix_len = match len_text {
            None => max_len,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|parsed| {
                    *parsed <= max_len && len.bytes().all(|byte| byte.is_ascii_digit())
                })
                .ok_or_else(|| {
                    fail(format!(
                        "prefix length {len:?} must be a number from 0 to {max_len} for an {family} address"
                    ))
                })?,
        };
        Ok(Cidr::new(addr, prefix_len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Cidr {
    /// The block of `addr` with `prefix_len` bits, already checked against the family's width.
    fn new(addr: IpAddr, prefix_len: u8) -> Self {
        match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix_len >= IPV4_MAPPED_PREFIX_BITS => Cidr {
                    network: IpAddr::V4(mask_v4(v4, prefix_len - IPV4_MAPPED_PREFIX_BITS)),
                    prefix_len: prefix_len - IPV4_MAPPED_PREFIX_BITS,
                },
                _ => Cidr {
                    network: IpAddr::V6(mask_v6(v6, prefix_len)),
                    prefix_len,
                },
            },
            IpAddr::V4(v4) => Cidr {
                network: IpAddr::V4(mask_v4(v4, prefix_len)),
                prefix_len,
            },
        }
    }

    /// Whether `ip` lies in this block. An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, what a
    /// dual-stack listener reports for IPv4 peers) counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical(), ip) {
            (IpAddr::V4(network), IpAddr::V4(ip), _) => mask_v4(ip, self.prefix_len) == network,
            (IpAddr::V6(network), _, IpAddr::V6(ip)) => mask_v6(ip, self.prefix_len) == network,
            _ => false,
        }
    }
}

/// `addr` with every bit after the first `prefix_len` cleared.
fn mask_v4(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(u32::from(IPV4_BITS - prefix_len))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// `addr` with every bit after the first `prefix_len` cleared.
fn mask_v6(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(u32::from(IPV6_BITS - prefix_len))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// The address to treat as the client's, in canonical form (IPv4-mapped IPv6 becomes IPv4).
///
/// Headers are believed only when `peer` is a trusted proxy; otherwise anyone could claim any
/// address. For a trusted peer, `X-Forwarded-For` (several headers joined with `,`) is walked
/// from the right, skipping hops that are themselves trusted proxies; the first untrusted hop
/// is the client, since everything left of it was written by parties we cannot vouch for. If
/// every hop is trusted the leftmost wins. An entry that is not an address (`unknown`, garbage)
/// ends the walk and the list is ignored; then `X-Real-IP` is used, and failing that the peer.
pub fn client_addr(
    peer: IpAddr,
    x_forwarded_for: Option<&str>,
    x_real_ip: Option<&str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    x_forwarded_for
        .and_then(|list| forwarded_client(list, trusted))
        .or_else(|| x_real_ip.and_then(parse_forwarded_addr))
        .unwrap_or(peer)
}

/// Whether `ip` belongs to one of the trusted proxy blocks.
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|cidr| cidr.contains(ip))
}

/// The rightmost untrusted hop of an `X-Forwarded-For` list, the leftmost hop if all are
/// trusted, or `None` when the list is empty or breaks off in an unparseable entry.
fn forwarded_client(list: &str, trusted: &[Cidr]) -> Option<IpAddr> {
    let mut leftmost_trusted = None;
    for entry in list.rsplit(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let hop = parse_forwarded_addr(entry)?;
        if !is_trusted(hop, trusted) {
            return Some(hop);
        }
        leftmost_trusted = Some(hop);
    }
    leftmost_trusted
}

/// One forwarded address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]` or
/// `[::1]:5678`; canonicalised so mapped IPv4 compares as IPv4.
fn parse_forwarded_addr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    IpAddr::from_str(unbracketed)
        .ok()
        .or_else(|| SocketAddr::from_str(text).ok().map(|addr| addr.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect(text)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect(text)
    }

    fn proxies() -> Vec<Cidr> {
        vec![cidr("10.0.0.0/8"), cidr("::1")]
    }

    #[test]
    fn ipv4_cidr_contains_only_its_block() {
        let block = cidr("10.0.0.0/8");
        assert!(block.contains(ip("10.0.0.0")));
        assert!(block.contains(ip("10.255.255.255")));
        assert!(!block.contains(ip("11.0.0.0")));
        assert!(!block.contains(ip("9.255.255.255")));
    }

    #[test]
    fn bare_address_is_a_single_host() {
        assert_eq!(cidr("127.0.0.1"), cidr("127.0.0.1/32"));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));
        assert_eq!(cidr("::1"), cidr("::1/128"));
    }

    #[test]
    fn ipv6_cidr_contains_only_its_block() {
        let block = cidr("2001:db8::/32");
        assert!(block.contains(ip("2001:db8::1")));
        assert!(block.contains(ip("2001:db8:ffff::1")));
        assert!(!block.contains(ip("2001:db9::1")));
        assert!(cidr("::1/128").contains(ip("::1")));
        assert!(!cidr("::1/128").contains(ip("::2")));
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(cidr("10.1.2.3/8"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn zero_prefix_matches_its_whole_family_only() {
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("203.0.113.9")));
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_cidr() {
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_cidr_matches_plain_ipv4_peer() {
        let block = cidr("::ffff:10.0.0.0/104");
        assert_eq!(block, cidr("10.0.0.0/8"));
        assert!(block.contains(ip("10.9.8.7")));
    }

    #[test]
    fn bad_cidr_input_explains_the_problem() {
        let cases = [
            ("", "is not an IPv4 or IPv6 address"),
            (
                "proxy.local",
                "\"proxy.local\" is not an IPv4 or IPv6 address",
            ),
            ("/8", "is not an IPv4 or IPv6 address"),
            ("10.0.0/8", "is not an IPv4 or IPv6 address"),
            (
                "10.0.0.0/33",
                "must be a number from 0 to 32 for an IPv4 address",
            ),
            (
                "::1/129",
                "must be a number from 0 to 128 for an IPv6 address",
            ),
            ("10.0.0.0/", "prefix length \"\""),
            ("10.0.0.0/x", "prefix length \"x\""),
            ("10.0.0.0/+8", "prefix length \"+8\""),
            ("10.0.0.0/-1", "prefix length \"-1\""),
            ("10.0.0.0/8/8", "prefix length \"8/8\""),
            ("10.0.0.0/300", "prefix length \"300\""),
        ];
        for (input, expected) in cases {
            let message = input.parse::<Cidr>().expect_err(input).to_string();
            assert!(message.starts_with("invalid CIDR"), "{message}");
            assert!(message.contains(expected), "{input:?}: {message}");
        }
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(cidr(" 10.0.0.0/8 "), cidr("10.0.0.0/8"));
    }

    #[test]
    fn cidr_display_round_trips() {
        for text in [
            "10.0.0.0/8",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "0.0.0.0/0",
        ] {
            assert_eq!(cidr(text).to_string(), text);
        }
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let addr = client_addr(
            ip("203.0.113.9"),
            Some("1.1.1.1"),
            Some("2.2.2.2"),
            &proxies(),
        );
        assert_eq!(addr, ip("203.0.113.9"));
    }

    #[test]
    fn no_trusted_proxies_means_headers_are_ignored() {
        let addr = client_addr(ip("10.0.0.1"), Some("1.1.1.1"), Some("2.2.2.2"), &[]);
        assert_eq!(addr, ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peer_yields_the_forwarded_client() {
        let addr = client_addr(ip("10.0.0.1"), Some("198.51.100.7"), None, &proxies());
        assert_eq!(addr, ip("198.51.100.7"));
    }

    #[test]
    fn spoofed_entries_left_of_the_real_client_are_ignored() {
        let addr = client_addr(
            ip("10.0.0.1"),
            Some("6.6.6.6, 10.0.0.99, 198.51.100.7, 10.0.0.2"),
            None,
            &proxies(),
        );
        assert_eq!(addr, ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_list_of_only_trusted_hops_yields_the_leftmost() {
        let addr = client_addr(ip("::1"), Some("10.0.0.3, 10.0.0.2"), None, &proxies());
        assert_eq!(addr, ip("10.0.0.3"));
    }

    #[test]
    fn forwarded_entries_with_ports_and_brackets_are_understood() {
        for (list, expected) in [
            ("198.51.100.7:4242", "198.51.100.7"),
            ("[2001:db8::7]:4242", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            (" 198.51.100.7 ,, 10.0.0.2:80 ", "198.51.100.7"),
        ] {
            let addr = client_addr(ip("10.0.0.1"), Some(list), None, &proxies());
            assert_eq!(addr, ip(expected), "{list:?}");
        }
    }

    #[test]
    fn missing_forwarded_for_falls_back_to_x_real_ip() {
        let addr = client_addr(ip("10.0.0.1"), None, Some(" 198.51.100.8 "), &proxies());
        assert_eq!(addr, ip("198.51.100.8"));
        let empty_list = client_addr(
            ip("10.0.0.1"),
            Some(" , "),
            Some("198.51.100.8"),
            &proxies(),
        );
        assert_eq!(empty_list, ip("198.51.100.8"));
    }

    #[test]
    fn unparseable_forwarded_for_falls_back_to_x_real_ip() {
        let addr = client_addr(
            ip("10.0.0.1"),
            Some("198.51.100.7, unknown"),
            Some("198.51.100.8"),
            &proxies(),
        );
        assert_eq!(addr, ip("198.51.100.8"));
    }

    #[test]
    fn garbage_headers_fall_back_to_the_peer_without_panicking() {
        let long_garbage = "x,".repeat(10_000);
        for (list, real_ip) in [
            (Some("not an ip"), Some("neither")),
            (Some(",,,,"), None),
            (Some("[::1"), Some("::1]")),
            (Some("1.2.3.4:99999"), Some("é")),
            (Some("%00\u{0}\u{7f}"), Some("")),
            (Some(long_garbage.as_str()), Some(long_garbage.as_str())),
            (None, None),
        ] {
            let addr = client_addr(ip("10.0.0.1"), list, real_ip, &proxies());
            assert_eq!(addr, ip("10.0.0.1"), "{list:?} {real_ip:?}");
        }
    }

    #[test]
    fn ipv4_mapped_peer_is_trusted_and_reported_as_ipv4() {
        let via_proxy = client_addr(
            ip("::ffff:10.0.0.1"),
            Some("198.51.100.7"),
            None,
            &proxies(),
        );
        assert_eq!(via_proxy, ip("198.51.100.7"));
        let direct = client_addr(ip("::ffff:203.0.113.9"), Some("1.1.1.1"), None, &proxies());
        assert_eq!(direct, ip("203.0.113.9"));
    }
}
