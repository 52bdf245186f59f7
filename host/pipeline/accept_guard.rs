//! What a socket meets between its accept and its WebSocket upgrade.
//!
//! - **Caps from the accept.** A socket takes its place under the connection caps
//!   ([`ConnectionCap`]) as soon as it is accepted, so sockets that never finish
//!   their handshake count too; the place moves to the connection once upgraded.
//! - **Attempts per IP.** Each client IP may open so many sockets a second (a token
//!   bucket; the IPs exempt from the per-IP cap are exempt here too).
//! - **A deadline for the request.** A socket whose HTTP request (and TLS
//!   handshake) is not complete within the handshake timeout is dropped: a client
//!   that sends its request slowly, or never, holds a file descriptor no longer.
//!
//! - **Failed authentications per IP.** An IP whose connections were refused as
//!   unauthorized too often within a minute is refused (429) for a while, at the
//!   accept; logged once per block.
//!
//! Refused before its request is read, a plain socket is answered with the HTTP
//! status and reason by a short task (429 or 503, as after an upgrade request);
//! a TLS socket, which cannot be answered before its handshake, is closed.

use super::connection_cap::{ConnectionCap, Full, Place};
use super::token_bucket::TokenBucket;
use crate::config::ConnectionLimits;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

/// IPs whose buckets are kept before idle ones are forgotten.
const REMEMBERED_IPS: usize = 65_536;

/// The checks of one server (node or worker) on the sockets it accepts.
pub struct AcceptGuard {
    cap: Arc<ConnectionCap>,
    attempts_per_second: u32,
    attempts: Mutex<HashMap<IpAddr, TokenBucket>>,
    handshake_timeout: Duration,
    failures: Arc<AuthFailures>,
    answering: Arc<std::sync::atomic::AtomicUsize>,
}

/// Failed authentications by IP: so many a minute, then a block.
struct AuthFailures {
    role: &'static str,
    per_minute: u32,
    block: Duration,
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
}

/// One IP's failures in its current minute, and its block.
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl AuthFailures {
    /// Until when `ip` is blocked, if it is.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let by_ip = self.by_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_ip.get(&ip).and_then(|f| f.blocked_until).filter(|until| *until > now)
    }

    /// Counts a failure of `ip`; one of an `exempt` IP blocks nothing.
    fn record(&self, ip: IpAddr, exempt: bool) {
        crate::metrics::add("eligo_auth_failures_total", &[("role", self.role)], 1);
        if self.per_minute == 0 || exempt {
            return;
        }
        let now = Instant::now();
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if by_ip.len() >= REMEMBERED_IPS {
            by_ip.retain(|_, f| f.blocked_until.is_some_and(|until| until > now) || now - f.since < MINUTE);
        }
        let failures = by_ip.entry(ip).or_insert(Failures { since: now, count: 0, blocked_until: None });
        if now.saturating_duration_since(failures.since) >= MINUTE {
            *failures = Failures { since: now, count: 0, blocked_until: None };
        }
        failures.count += 1;
        if failures.count >= self.per_minute && failures.blocked_until.is_none_or(|until| until <= now) {
            failures.blocked_until = Some(now + self.block);
            crate::metrics::add("eligo_auth_blocks_total", &[("role", self.role)], 1);
            tracing::warn!(
                role = self.role,
                %ip,
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
            attempts: Mutex::new(HashMap::new()),
            handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs.max(1)),
            failures: Arc::new(AuthFailures {
                role,
                per_minute: limits.auth_failures_per_minute,
                block: Duration::from_secs(limits.auth_block_secs),
                by_ip: Mutex::new(HashMap::new()),
            }),
            answering: Arc::default(),
        })
    }

    /// Decides on a socket just accepted from `remote`: its place under the caps,
    /// or the refusal to answer it with.
    pub fn admit(&self, remote: SocketAddr) -> Result<Peer, Full> {
        let ip = remote.ip();
        let exempt = self.cap.is_exempt(ip);
        if let Some(until) = self.failures.blocked(ip, Instant::now()) {
            let secs = until.saturating_duration_since(Instant::now()).as_secs().max(1);
            let reason = format!("too many failed authentications from {ip}; try again in {secs} s");
            return Err(self.cap.refuse("auth", StatusCode::TOO_MANY_REQUESTS, reason));
        }
        if self.attempts_per_second > 0 && !exempt && !self.attempt(ip) {
            let (role, limit) = (self.cap.role(), self.attempts_per_second);
            let reason = format!("too many {role} connection attempts from {ip} (limit {limit} a second)");
            return Err(self.cap.refuse("attempts", StatusCode::TOO_MANY_REQUESTS, reason));
        }
        let place = self.cap.enter(ip)?;
        Ok(Peer(Arc::new(PeerState {
            remote,
            place: Mutex::new(Some(place)),
            request_read: AtomicBool::new(false),
            failures: self.failures.clone(),
            exempt,
        })))
    }

    /// Spends one attempt of `ip`; the burst is a second's worth.
    fn attempt(&self, ip: IpAddr) -> bool {
        let mut attempts = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if attempts.len() >= REMEMBERED_IPS {
            // A full bucket is what a forgotten IP starts with: losing it loses nothing.
            attempts.retain(|_, bucket| !bucket.is_full(now));
        }
        attempts
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.attempts_per_second, self.attempts_per_second))
            .take(now)
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
    /// Exempt from the per-IP limits.
    exempt: bool,
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

    /// The request was admitted and the socket is being upgraded: the handshake
    /// deadline no longer applies. A refused socket keeps it, so one that idles
    /// after its refusal is dropped all the same.
    pub fn upgrading(&self) {
        self.0.request_read.store(true, Ordering::Release);
    }

    /// Counts a failed authentication of this peer's IP (a refusal as
    /// unauthorized); too many within a minute block the IP for a while.
    pub fn auth_failed(&self) {
        self.0.failures.record(self.0.remote.ip(), self.0.exempt);
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
