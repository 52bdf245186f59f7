//! Caps on a server's open connections: in all, and from one client IP (one
//! IPv6 prefix: see [`crate::edge::per_ip`]). Checked before the WebSocket upgrade, so
//! a refused client costs an HTTP answer, not a connection: 503 when the server
//! is full, 429 when its own IP is.

use crate::config::ConnectionLimits;
use crate::edge::per_ip::{IpGroup, PerIp};
use axum::http::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections of one server, counted against its caps.
pub struct ConnectionCap {
    role: &'static str,
    max_total: usize,
    max_per_ip: usize,
    per_ip: PerIp,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Connections by client. A client's entry goes with its last connection, so
    /// there are never more entries than connections open: at most `max` (with
    /// no cap, as many as the process has file descriptors). Nothing to sweep.
    by_ip: HashMap<IpGroup, usize>,
}

/// A place under the caps, given back when dropped (when the connection ends).
pub struct Place {
    cap: Arc<ConnectionCap>,
    /// The client it counts toward; none for an exempt address.
    group: Option<IpGroup>,
}

/// Why a connection was not let in, as its HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    /// 503 (the server is full) or 429 (this IP is).
    pub status: StatusCode,
    /// What the client reads.
    pub reason: String,
}

impl ConnectionCap {
    /// The configured caps of `role` (a metrics label); 0 means no cap.
    pub fn new(role: &'static str, limits: &ConnectionLimits) -> Arc<Self> {
        let no_cap = |n: usize| if n == 0 { usize::MAX } else { n };
        Arc::new(ConnectionCap {
            role,
            max_total: no_cap(limits.max),
            max_per_ip: no_cap(limits.max_per_ip),
            per_ip: PerIp::new(&limits.per_ip_exempt, limits.ipv6_prefix_len),
            open: Mutex::new(Open::default()),
        })
    }

    /// Takes a place for a connection from `ip`, or says which cap is reached.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Place, Full> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.total >= self.max_total {
            drop(open);
            return Err(self.refuse(
                "server",
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many {} connections (limit {}); try again later", self.role, self.max_total),
            ));
        }
        let group = self.per_ip.group(ip);
        if let Some(group) = group {
            let from_ip = open.by_ip.get(&group).copied().unwrap_or_default();
            if from_ip >= self.max_per_ip {
                drop(open);
                return Err(self.refuse(
                    "ip",
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many {} connections from {group} (limit {})", self.role, self.max_per_ip),
                ));
            }
            open.by_ip.insert(group, from_ip + 1);
        }
        open.total += 1;
        Ok(Place { cap: self.clone(), group })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map(|open| open.total).unwrap_or_default()
    }

    /// The role these caps are of (a metrics label).
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The client `ip` counts as under every per-IP limit of this server, or
    /// `None` if it is exempt from them.
    pub fn group(&self, ip: IpAddr) -> Option<IpGroup> {
        self.per_ip.group(ip)
    }

    /// A refusal by the limit `cap`, counted.
    pub fn refuse(&self, cap: &'static str, status: StatusCode, reason: String) -> Full {
        crate::metrics::add("eligo_connections_over_cap_total", &[("role", self.role), ("cap", cap)], 1);
        Full { status, reason }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        let Some(group) = self.group else { return };
        if let Some(n) = open.by_ip.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                // A client with no connection left takes no memory.
                open.by_ip.remove(&group);
            }
        }
    }
}

impl axum::response::IntoResponse for Full {
    fn into_response(self) -> axum::response::Response {
        (self.status, self.reason).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn limits(max: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits { max, max_per_ip, per_ip_exempt: vec![ip(9)], ..Default::default() }
    }

    #[test]
    fn an_exempt_ip_only_meets_the_total() {
        let cap = ConnectionCap::new("worker", &limits(3, 1));
        let places: Vec<Place> = (0..3).map(|_| cap.enter(ip(9)).expect("exempt from the per-IP cap")).collect();
        assert_eq!(cap.enter(ip(9)).err().map(|full| full.status), Some(StatusCode::SERVICE_UNAVAILABLE));
        drop(places);
    }

    #[test]
    fn an_ip_at_its_cap_is_refused_while_others_come_in() {
        let cap = ConnectionCap::new("worker", &limits(10, 2));
        let places: Vec<Place> = (0..2).map(|_| cap.enter(ip(1)).expect("under the per-IP cap")).collect();
        let full = cap.enter(ip(1)).err().expect("third from one IP");
        assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.reason, "too many worker connections from 10.0.0.1 (limit 2)");
        assert!(cap.enter(ip(2)).is_ok(), "another IP is not affected");
        drop(places);
        assert!(cap.enter(ip(1)).is_ok(), "places come back when connections end");
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn addresses_of_one_ipv6_slash_64_share_its_cap_and_another_slash_64_has_its_own() {
        let cap = ConnectionCap::new("worker", &limits(10, 2));
        let _a = cap.enter(v6("2001:db8:0:1::1")).expect("first of the /64");
        let _b = cap.enter(v6("2001:db8:0:1::2")).expect("second of the /64");
        let full = cap.enter(v6("2001:db8:0:1:ffff::3")).err().expect("third of the /64");
        assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.reason, "too many worker connections from 2001:db8:0:1::/64 (limit 2)");
        assert!(cap.enter(v6("2001:db8:0:2::1")).is_ok(), "another /64 is not affected");
    }

    #[test]
    fn the_ipv6_prefix_length_is_configurable_and_ipv4_mapped_addresses_count_as_ipv4() {
        let per_address = ConnectionLimits { ipv6_prefix_len: 128, ..limits(10, 1) };
        let cap = ConnectionCap::new("worker", &per_address);
        let _a = cap.enter(v6("2001:db8::1")).expect("its own cap");
        assert!(cap.enter(v6("2001:db8::2")).is_ok(), "each address its own at /128");
        let _v4 = cap.enter(ip(1)).expect("10.0.0.1");
        assert!(cap.enter(v6("::ffff:10.0.0.1")).is_err(), "the same client as 10.0.0.1");
    }

    #[test]
    fn an_exempt_ipv6_address_uses_none_of_its_neighbours_cap() {
        let exempt = ConnectionLimits { per_ip_exempt: vec![v6("2001:db8::9")], ..limits(10, 1) };
        let cap = ConnectionCap::new("worker", &exempt);
        let places: Vec<Place> = (0..3).map(|_| cap.enter(v6("2001:db8::9")).expect("exempt")).collect();
        let _neighbour = cap.enter(v6("2001:db8::1")).expect("its /64 is as empty as before");
        assert!(cap.enter(v6("2001:db8::2")).is_err(), "but the /64 itself is capped");
        drop(places);
        assert_eq!(cap.open(), 1);
    }

    #[test]
    fn a_full_server_refuses_with_503_until_one_leaves() {
        let cap = ConnectionCap::new("node", &limits(2, 0));
        let first = cap.enter(ip(1)).expect("1");
        let _second = cap.enter(ip(2)).expect("2");
        let full = cap.enter(ip(3)).err().expect("over the total");
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(full.reason.contains("limit 2"), "{}", full.reason);
        assert_eq!(cap.open(), 2);
        drop(first);
        assert!(cap.enter(ip(3)).is_ok());
    }
}
