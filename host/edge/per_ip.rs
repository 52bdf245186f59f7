//! Who the per-IP limits count as one client.
//!
//! An IPv4 address is one client. An IPv6 client is usually handed a whole prefix
//! (a /64 for a home line, a /48 for a site) and could spread over 2^64
//! addresses, each with a budget of its own: IPv6 addresses are counted by their
//! first `ipv6_prefix_len` bits instead. An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, how a dual-stack socket sees an IPv4 client) is that IPv4
//! address.
//!
//! An exempt address is in no group: no per-IP limit applies to it, and what it
//! does counts toward nobody, so exempting one address of a /64 leaves its
//! neighbours' budgets as they were.

use crate::session::token_bucket::TokenBucket;
use lru::LruCache;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients (IPv4 addresses, IPv6 prefixes) a per-IP map remembers at most, the
/// least recently seen forgotten first: one bound for every such map (connection
/// attempts and failures, POSTed jobs, public miner stats), each growing with the
/// clients seen up to it (about 100 bytes a client: a few MiB at most).
pub const REMEMBERED_CLIENTS: NonZeroUsize = NonZeroUsize::new(65_536).expect("not zero");

/// A cache bound of at least one entry: a configured zero still remembers one.
pub fn at_least_one(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// One client as the per-IP limits count it: an IPv4 address or an IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpGroup {
    /// The address with its bits past the prefix cleared.
    network: IpAddr,
    /// 32 for IPv4; the configured length for IPv6.
    prefix_len: u8,
}

impl fmt::Display for IpGroup {
    /// The address alone when the group is one address (every IPv4 one), else
    /// `network/len`: a client refused for its prefix is told which.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) if self.prefix_len == 128 => write!(f, "{v6}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.prefix_len),
        }
    }
}

/// How one server's per-IP limits see client addresses.
#[derive(Clone, Debug)]
pub struct PerIp {
    exempt: Vec<IpAddr>,
    ipv6_prefix_len: u8,
}

impl PerIp {
    /// `exempt` addresses in no group; IPv6 ones grouped by their first
    /// `ipv6_prefix_len` bits (past 128 is 128).
    pub fn new(exempt: &[IpAddr], ipv6_prefix_len: u8) -> Self {
        PerIp { exempt: exempt.iter().map(IpAddr::to_canonical).collect(), ipv6_prefix_len: ipv6_prefix_len.min(128) }
    }

    /// The group `ip` counts in, or `None` if it is exempt from the per-IP limits.
    pub fn group(&self, ip: IpAddr) -> Option<IpGroup> {
        let ip = ip.to_canonical();
        if self.exempt.contains(&ip) {
            return None;
        }
        Some(match ip {
            IpAddr::V4(_) => IpGroup { network: ip, prefix_len: 32 },
            IpAddr::V6(v6) => {
                let len = self.ipv6_prefix_len;
                // A shift by 128 overflows: a zero-length prefix is every address.
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpGroup { network: Ipv6Addr::from(u128::from(v6) & mask).into(), prefix_len: len }
            }
        })
    }
}

/// An allowance per client: a token bucket for each [`IpGroup`], `burst` at
/// once and refilled at `per_second`. The one per-IP rate of eligo: connection
/// attempts, POSTed jobs and public miner stats.
///
/// At most `clients` groups are kept, the least recently seen forgotten first, so
/// memory has a bound (about 100 bytes a client) however many addresses come. A
/// forgotten client comes back with a full allowance, and only once that many
/// other clients came since.
pub struct PerIpRate {
    buckets: Mutex<LruCache<IpGroup, TokenBucket>>,
    per_second: f64,
    burst: u32,
}

impl PerIpRate {
    /// `per_second` (not necessarily whole) after `burst` at once, for each of up
    /// to `clients` clients.
    pub fn new(per_second: f64, burst: u32, clients: NonZeroUsize) -> Self {
        // Sparse: the map grows with the clients seen, not to its bound at once.
        PerIpRate { buckets: Mutex::new(LruCache::sparse(clients)), per_second, burst }
    }

    /// How many clients are remembered now.
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Takes one of `group`'s allowance at `now`, or says how long until it has one.
    pub fn take(&self, group: IpGroup, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (per_second, burst) = (self.per_second, self.burst);
        buckets.get_or_insert_mut(group, || TokenBucket::at_rate(per_second, burst)).take_or_wait(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn two_addresses_of_one_slash_64_are_one_client_and_of_two_are_two() {
        let per_ip = PerIp::new(&[], 64);
        assert_eq!(per_ip.group(ip("2001:db8:1:2::1")), per_ip.group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(per_ip.group(ip("2001:db8:1:2::1")), per_ip.group(ip("2001:db8:1:3::1")));
        assert_eq!(per_ip.group(ip("2001:db8:1:2::1")).map(|g| g.to_string()).as_deref(), Some("2001:db8:1:2::/64"));
    }

    #[test]
    fn the_prefix_length_is_configurable() {
        let (a, b) = (ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(PerIp::new(&[], 48).group(a), PerIp::new(&[], 48).group(b), "one /48");
        let whole = PerIp::new(&[], 128);
        assert_ne!(whole.group(a), whole.group(ip("2001:db8:1:2::2")), "each address its own");
        assert_eq!(whole.group(a).map(|g| g.to_string()).as_deref(), Some("2001:db8:1:2::1"));
        assert_eq!(PerIp::new(&[], 0).group(a), PerIp::new(&[], 0).group(ip("fe80::1")), "every IPv6 address");
        assert_eq!(PerIp::new(&[], 200).group(a), whole.group(a), "past 128 is 128");
    }

    #[test]
    fn ipv4_is_per_address_and_an_ipv4_mapped_address_is_the_ipv4_one() {
        let per_ip = PerIp::new(&[ip("10.0.0.9")], 0);
        assert_ne!(per_ip.group(ip("10.0.0.1")), per_ip.group(ip("10.0.0.2")));
        assert_eq!(per_ip.group(ip("::ffff:10.0.0.1")), per_ip.group(ip("10.0.0.1")));
        assert_eq!(per_ip.group(ip("::ffff:10.0.0.1")).map(|g| g.to_string()).as_deref(), Some("10.0.0.1"));
        assert_eq!(per_ip.group(ip("::ffff:10.0.0.9")), None, "exempt as its IPv4 address");
    }

    #[test]
    fn an_exempt_address_exempts_itself_and_not_its_prefix() {
        let per_ip = PerIp::new(&[ip("2001:db8::1"), ip("::ffff:192.0.2.1")], 64);
        assert_eq!(per_ip.group(ip("2001:db8::1")), None);
        assert!(per_ip.group(ip("2001:db8::2")).is_some(), "its neighbour in the /64");
        assert_eq!(per_ip.group(ip("192.0.2.1")), None, "an exempt mapped address exempts the IPv4 one");
        assert!(per_ip.group(ip("192.0.2.2")).is_some());
    }

    #[test]
    fn a_rate_per_client_is_bounded_and_forgets_the_least_recent() {
        let rate = PerIpRate::new(1.0 / 20.0, 3, NonZeroUsize::new(2).expect("not zero"));
        let per_ip = PerIp::new(&[], 64);
        let group = |text: &str| per_ip.group(ip(text)).expect("not exempt");
        let now = Instant::now();
        assert!((0..3).all(|_| rate.take(group("192.0.2.1"), now).is_ok()), "the burst");
        let wait = rate.take(group("192.0.2.1"), now).expect_err("past the burst");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20), "one per 20 s: {wait:?}");
        assert!(rate.take(group("2001:db8::1"), now).is_ok(), "another client has its own allowance");
        assert!(rate.take(group("2001:db8::2"), now).is_ok());
        // Two clients are kept: a third forgets the least recently seen (192.0.2.1).
        assert!(rate.take(group("198.51.100.1"), now).is_ok());
        assert!(rate.take(group("192.0.2.1"), now).is_ok(), "forgotten, so full again");
    }
}
