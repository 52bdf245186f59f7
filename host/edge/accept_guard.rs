//! What a socket meets between its accept and its WebSocket upgrade.
//!
//! - **Caps from the accept.** A socket takes its place under the connection caps
//!   ([`ConnectionCap`]) as soon as it is accepted, so sockets that never finish
//!   their handshake count too; the place moves to the connection once upgraded.
//! - **Attempts per IP.** Each client IP may open so many sockets a second (a token
//!   bucket; the IPs exempt from the per-IP cap are exempt here too). An IPv6
//!   client is its prefix, as for the cap ([`crate::edge::per_ip`]).
//! - **A deadline for the request.** A socket whose HTTP request (and TLS
//!   handshake) is not complete within the handshake timeout is dropped: a client
//!   that sends its request slowly, or never, holds a file descriptor no longer.
//!
//! - **Failed authentications per IP.** An IP whose connections were refused as
//!   unauthorized too often within a minute is refused (429) for a while, at the
//!   accept; logged once per block.
//!
//! The attempts and failures are remembered for [`REMEMBERED_CLIENTS`] clients
//! each, the least recently seen forgotten first: O(1) an accept, never a sweep.
//! Forgetting a client costs little: a forgotten bucket comes back full (at most
//! one burst more, and only once that many other clients came since), a
//! forgotten block is lifted early only once that many other clients failed to
//! authenticate since its last attempt.
//!
//! Refused before its request is read, a plain socket is answered with the HTTP
//! status and reason by a short task (429 or 503, as after an upgrade request);
//! a TLS socket, which cannot be answered before its handshake, is closed.

use crate::config::ConnectionLimits;
use crate::edge::connection_cap::{ConnectionCap, Full, Place};
use crate::edge::per_ip::{IpGroup, PerIpRate, REMEMBERED_CLIENTS};
use axum::http::StatusCode;
use lru::LruCache;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a refused plain socket is given to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Refused sockets being answered at once; past that a refused socket is closed
/// unanswered, so a flood of connections cannot hold file descriptors this way.
const MAX_ANSWERING: usize = 1024;

/// The checks of one server (node or worker) on the sockets it accepts.
pub struct AcceptGuard {
    cap: Arc<ConnectionCap>,
    attempts_per_second: u32,
    attempts: PerIpRate,
    handshake_timeout: Duration,
    failures: Arc<AuthFailures>,
    answering: Arc<std::sync::atomic::AtomicUsize>,
}

/// Failed authentications by client: so many a minute, then a block.
struct AuthFailures {
    role: &'static str,
    per_minute: u32,
    block: Duration,
    by_ip: Mutex<LruCache<IpGroup, Failures>>,
}

/// One IP's failures in its current minute, and its block.
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl AuthFailures {
    /// Until when `group` is blocked, if it is. A blocked client that keeps
    /// trying stays the most recently seen, the last to be forgotten.
    fn blocked(&self, group: &IpGroup, now: Instant) -> Option<Instant> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_ip.get(group).and_then(|f| f.blocked_until).filter(|until| *until > now)
    }

    /// Counts a failure of the client `group`; one of an exempt address (no
    /// group) blocks nothing.
    fn record(&self, group: Option<IpGroup>) {
        crate::metrics::add("eligo_auth_failures_total", &[("role", self.role)], 1);
        let Some(group) = group.filter(|_| self.per_minute > 0) else {
            return;
        };
        let now = Instant::now();
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let failures = by_ip.get_or_insert_mut(group, || Failures { since: now, count: 0, blocked_until: None });
        if now.saturating_duration_since(failures.since) >= MINUTE {
            *failures = Failures { since: now, count: 0, blocked_until: None };
        }
        failures.count += 1;
        if failures.count >= self.per_minute && failures.blocked_until.is_none_or(|until| until <= now) {
            failures.blocked_until = Some(now + self.block);
            crate::metrics::add("eligo_auth_blocks_total", &[("role", self.role)], 1);
            tracing::warn!(
                role = self.role,
                ip = %group,
                failures = failures.count,
                block_secs = self.block.as_secs(),
                "too many failed authentications; refusing this IP for a while"
            );
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl AcceptGuard {
    /// The guard in front of `cap` (whose exempt IPs it shares), as `limits` set it.
    pub fn new(cap: Arc<ConnectionCap>, limits: &ConnectionLimits) -> Arc<Self> {
        let role = cap.role();
        Arc::new(AcceptGuard {
            cap,
            attempts_per_second: limits.attempts_per_ip_per_second,
            // The burst is a second's worth.
            attempts: PerIpRate::new(
                f64::from(limits.attempts_per_ip_per_second),
                limits.attempts_per_ip_per_second,
                REMEMBERED_CLIENTS,
            ),
            handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs.max(1)),
            failures: Arc::new(AuthFailures {
                role,
                per_minute: limits.auth_failures_per_minute,
                block: Duration::from_secs(limits.auth_block_secs),
                by_ip: Mutex::new(LruCache::sparse(REMEMBERED_CLIENTS)),
            }),
            answering: Arc::default(),
        })
    }

    /// Decides on a socket just accepted from `remote`: its place under the caps,
    /// or the refusal to answer it with.
    pub fn admit(&self, remote: SocketAddr) -> Result<Peer, Full> {
        let group = self.cap.group(remote.ip());
        if let Some(group) = &group {
            if let Some(until) = self.failures.blocked(group, Instant::now()) {
                let secs = until.saturating_duration_since(Instant::now()).as_secs().max(1);
                let reason = format!("too many failed authentications from {group}; try again in {secs} s");
                return Err(self.cap.refuse("auth", StatusCode::TOO_MANY_REQUESTS, reason));
            }
            if self.attempts_per_second > 0 && !self.attempt(*group) {
                let (role, limit) = (self.cap.role(), self.attempts_per_second);
                let reason = format!("too many {role} connection attempts from {group} (limit {limit} a second)");
                return Err(self.cap.refuse("attempts", StatusCode::TOO_MANY_REQUESTS, reason));
            }
        }
        let place = self.cap.enter(remote.ip())?;
        Ok(Peer(Arc::new(PeerState {
            remote,
            place: Mutex::new(Some(place)),
            request_read: AtomicBool::new(false),
            failures: self.failures.clone(),
            group,
        })))
    }

    /// Spends one attempt of `group`.
    fn attempt(&self, group: IpGroup) -> bool {
        self.attempts.take(group, Instant::now()).is_ok()
    }

    /// How long a socket has for its TLS handshake and request.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Wraps an admitted socket so it is dropped unless its request is read in time.
    pub fn guard<S>(&self, stream: S, peer: &Peer) -> GuardedIo<S> {
        GuardedIo {
            inner: stream,
            deadline: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
            peer: peer.clone(),
        }
    }

    /// Answers a refused plain socket with the status and the reason, then closes
    /// it, in a task of its own bounded by [`REFUSAL_LINGER`]; with
    /// [`MAX_ANSWERING`] such tasks running, closes it unanswered.
    pub fn refuse(&self, stream: TcpStream, full: Full) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answering = self.answering.clone();
        if answering.fetch_add(1, Ordering::AcqRel) >= MAX_ANSWERING {
            answering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        tokio::spawn(async move {
            let mut stream = stream;
            let response = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                full.status.as_u16(),
                full.status.canonical_reason().unwrap_or(""),
                full.reason.len(),
                full.reason
            );
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await?;
                // Read what the client sends until it closes: a socket dropped with
                // unread data is reset, and the answer could be lost with it.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                std::io::Result::Ok(())
            })
            .await;
            answering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A socket as the request handlers see it: its address and its place under the
/// caps (`ConnectInfo<Peer>`).
#[derive(Clone)]
pub struct Peer(Arc<PeerState>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("remote", &self.0.remote).finish_non_exhaustive()
    }
}

struct PeerState {
    remote: SocketAddr,
    place: Mutex<Option<Place>>,
    request_read: AtomicBool,
    failures: Arc<AuthFailures>,
    /// The client it counts as; none if exempt from the per-IP limits.
    group: Option<IpGroup>,
}

impl Peer {
    /// The client's address.
    pub fn remote(&self) -> SocketAddr {
        self.0.remote
    }

    /// Hands over the socket's place under the caps, once.
    pub fn take_place(&self) -> Option<Place> {
        self.0.place.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    /// Gives a place back to the socket, once a plain HTTP request that took it
    /// is answered: the connection, kept alive for the next request, still
    /// counts under the caps until it closes.
    pub fn keep_place(&self, place: Place) {
        let mut kept = self.0.place.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.is_none() {
            *kept = Some(place);
        }
    }

    /// The request was admitted and the socket is being upgraded: the handshake
    /// deadline no longer applies. A refused socket keeps it, so one that idles
    /// after its refusal is dropped all the same.
    pub fn upgrading(&self) {
        self.0.request_read.store(true, Ordering::Release);
    }

    /// Counts a failed authentication of this peer's IP (a refusal as
    /// unauthorized); too many within a minute block the IP (the IPv6 prefix)
    /// for a while.
    pub fn auth_failed(&self) {
        self.0.failures.record(self.0.group);
    }
}

/// A socket that fails its reads once the handshake timeout passes without its
/// request having been read; writes pass through.
pub struct GuardedIo<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    peer: Peer,
}

impl<S> GuardedIo<S> {
    /// The socket's peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.peer.0.request_read.load(Ordering::Acquire) {
            self.deadline = None;
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                crate::metrics::add("eligo_handshakes_timed_out_total", &[], 1);
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no complete request within the handshake timeout",
                )));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(attempts: u32) -> ConnectionLimits {
        ConnectionLimits { max: 10, max_per_ip: 5, attempts_per_ip_per_second: attempts, ..Default::default() }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 4000))
    }

    #[test]
    fn attempts_over_the_rate_are_refused_with_429_while_other_ips_come_in() {
        let cap = ConnectionCap::new("worker", &limits(3));
        let guard = AcceptGuard::new(cap, &limits(3));
        let peers: Vec<Peer> = (0..3).map(|_| guard.admit(addr(1)).expect("within the attempts")).collect();
        drop(peers);
        let refused = guard.admit(addr(1)).expect_err("a fourth attempt within the second");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.reason.contains("limit 3 a second"), "{}", refused.reason);
        assert!(guard.admit(addr(2)).is_ok(), "another IP is not affected");
    }

    #[test]
    fn an_ip_failing_to_authenticate_too_often_is_blocked_while_others_come_in() {
        let limits = ConnectionLimits { auth_failures_per_minute: 3, ..limits(0) };
        let cap = ConnectionCap::new("worker", &limits);
        let guard = AcceptGuard::new(cap, &limits);
        for _ in 0..3 {
            guard.admit(addr(1)).expect("not blocked yet").auth_failed();
        }
        let refused = guard.admit(addr(1)).expect_err("blocked");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.reason.starts_with("too many failed authentications from 10.0.0.1"), "{}", refused.reason);
        assert!(guard.admit(addr(2)).is_ok(), "another IP is not affected");
    }

    fn v6(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().expect("an address"), 4000)
    }

    #[test]
    fn addresses_of_one_ipv6_slash_64_share_its_attempts_and_another_slash_64_has_its_own() {
        let cap = ConnectionCap::new("worker", &limits(2));
        let guard = AcceptGuard::new(cap, &limits(2));
        let _a = guard.admit(v6("2001:db8:0:1::1")).expect("first of the /64");
        let _b = guard.admit(v6("2001:db8:0:1::2")).expect("second of the /64");
        let refused = guard.admit(v6("2001:db8:0:1::3")).expect_err("third of the /64 within the second");
        assert!(refused.reason.contains("attempts from 2001:db8:0:1::/64"), "{}", refused.reason);
        assert!(guard.admit(v6("2001:db8:0:2::1")).is_ok(), "another /64 is not affected");
    }

    #[test]
    fn a_slash_64_failing_to_authenticate_is_blocked_but_not_its_exempt_address() {
        let limits = ConnectionLimits {
            auth_failures_per_minute: 2,
            per_ip_exempt: vec!["2001:db8::9".parse().expect("an address")],
            ..limits(0)
        };
        let guard = AcceptGuard::new(ConnectionCap::new("worker", &limits), &limits);
        guard.admit(v6("2001:db8::1")).expect("not blocked yet").auth_failed();
        guard.admit(v6("2001:db8::2")).expect("not blocked yet").auth_failed();
        let refused = guard.admit(v6("2001:db8::3")).expect_err("its /64 is blocked");
        assert!(refused.reason.starts_with("too many failed authentications from 2001:db8::/64"), "{}", refused.reason);
        assert!(guard.admit(v6("2001:db8:0:1::1")).is_ok(), "another /64 is not affected");
        assert!(guard.admit(v6("2001:db8::9")).is_ok(), "an exempt address is exempt from its prefix's block");
    }

    #[test]
    fn what_is_remembered_per_client_stays_bounded_under_100k_sources() {
        let limits = ConnectionLimits { auth_failures_per_minute: 5, ..limits(1) };
        let guard = AcceptGuard::new(ConnectionCap::new("worker", &ConnectionLimits::default()), &limits);
        for n in 0..100_000u32 {
            let source = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | n), 4000));
            guard.admit(source).expect("a new source has its own attempt").auth_failed();
        }
        let attempts = guard.attempts.clients();
        let failures = guard.failures.by_ip.lock().map(|f| f.len()).unwrap_or_default();
        assert_eq!((attempts, failures), (REMEMBERED_CLIENTS.get(), REMEMBERED_CLIENTS.get()));
        let last = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | 99_999), 4000));
        assert!(guard.admit(last).is_err(), "the most recent are remembered: its one attempt is spent");
    }

    #[test]
    fn a_blocked_client_that_keeps_trying_is_not_forgotten_for_newer_ones() {
        let limits = ConnectionLimits { auth_failures_per_minute: 2, ..limits(0) };
        let guard = AcceptGuard::new(ConnectionCap::new("worker", &ConnectionLimits::default()), &limits);
        let blocked = v6("2001:db8::1");
        for _ in 0..2 {
            guard.admit(blocked).expect("not blocked yet").auth_failed();
        }
        for n in 0..100_000u32 {
            let source = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | n), 4000));
            guard.admit(source).expect("one failure blocks nobody").auth_failed();
            if n % 1000 == 0 {
                assert!(guard.admit(blocked).is_err(), "still blocked after {n} other clients");
            }
        }
        assert!(guard.admit(blocked).is_err());
        assert_eq!(guard.failures.by_ip.lock().map(|f| f.len()).unwrap_or_default(), REMEMBERED_CLIENTS.get());
    }

    #[test]
    fn a_socket_holds_its_place_from_the_accept_and_hands_it_over_once() {
        let cap = ConnectionCap::new("node", &limits(0));
        let guard = AcceptGuard::new(cap.clone(), &limits(0));
        let peer = guard.admit(addr(1)).expect("admitted");
        assert_eq!(cap.open(), 1, "counted before its request is read");
        let place = peer.take_place().expect("the place");
        assert!(peer.take_place().is_none(), "handed over once");
        drop(peer);
        assert_eq!(cap.open(), 1, "the connection holds it now");
        drop(place);
        assert_eq!(cap.open(), 0);
    }
}
