//! Public miner stats (`[admin] public_miner_stats`): `/api/v1/miners/{address}`
//! answered without the admin token, each client IP (IPv6 by /64) held to
//! `public_miner_stats_per_minute`. A layer around that one route; the rest of the
//! admin server keeps [`super::require_token`].
//!
//! The rate is a token bucket per client ([`PerIpRate`], as for connection
//! attempts and POSTed jobs): a client may ask as many times at once as its
//! per-minute rate, then once per 60/rate seconds. At most
//! [`REMEMBERED_CLIENTS`] clients are remembered, the least recently seen
//! forgotten first.
//!
//! Behind a reverse proxy every request comes from the proxy's address: limit
//! the rate there instead (this layer then only caps the proxy as a whole).

use super::{token_of, unauthorized, AdminState, Token, WRONG_TOKEN};
use crate::edge::per_ip::{PerIp, PerIpRate, REMEMBERED_CLIENTS};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rate of requests without the token, per client.
pub struct PublicRate {
    rate: PerIpRate,
    per_ip: PerIp,
}

impl PublicRate {
    /// `per_minute` requests a minute per client, as many at once.
    pub fn new(per_minute: NonZeroU32) -> Self {
        let rate = PerIpRate::new(f64::from(per_minute.get()) / 60.0, per_minute.get(), REMEMBERED_CLIENTS);
        PublicRate { rate, per_ip: PerIp::new(&[], 64) }
    }

    /// Takes one request of `ip`'s allowance, or says how long until it has one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        // No address is exempt, so every one has a group; `None` would be no limit.
        let Some(group) = self.per_ip.group(ip) else { return Ok(()) };
        self.rate.take(group, Instant::now())
    }
}

/// The layer of the public route: a request with the right token passes as on any
/// admin path, one with a wrong token is refused as there, and one without is
/// served within its client's rate (429 with `Retry-After` past it).
pub async fn public_or_token(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    match token_of(&state, &request) {
        Token::Right => return next.run(request).await,
        Token::Wrong => return unauthorized(WRONG_TOKEN),
        Token::NotRequired | Token::Missing => {}
    }
    let Some(rate) = &state.public_rate else { return next.run(request).await };
    // The admin listener always hands its handlers the peer; without it (a router
    // served otherwise) every request is one client.
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| peer.ip());
    match rate.check(ip) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let seconds = seconds.max(1);
            let why = format!("too many requests from this address: try again in {seconds} s");
            let mut response = super::error::ApiError::new(StatusCode::TOO_MANY_REQUESTS, why).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_apart() {
        let rate = PublicRate::new(NonZeroU32::new(3).expect("not zero"));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        assert!((0..3).all(|_| rate.check(a).is_ok()), "the burst");
        let wait = rate.check(a).expect_err("past the burst");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "one request per 20 s: {wait:?}");
        assert!(rate.check(b).is_ok(), "another client has its own allowance");
        let (c, d): (IpAddr, IpAddr) = ("2001:db8::1".parse().expect("ip"), "2001:db8::2".parse().expect("ip"));
        assert!((0..3).all(|_| rate.check(c).is_ok()));
        assert!(rate.check(d).is_err(), "one /64 is one client");
    }
}
