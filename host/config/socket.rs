//! What every listener shares: a connection's socket bounds (`[*.socket]`),
//! the caps on open connections (`[*.connections]`) and TLS (`[*.tls]`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// WebSocket buffer sizes and input bounds of one connection. The library's
/// default buffers (128 KiB each way) cost ~130 KiB per idle connection; frames of
/// this protocol are a few hundred bytes, so small buffers cost nothing in speed
/// and keep 100,000 connections affordable. Its default message limit (64 MiB)
/// would let any client make the server buffer that much.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// Bytes read from the socket at a time.
    pub read_buffer_bytes: usize,
    /// Bytes gathered before a write is flushed to the socket.
    pub write_buffer_bytes: usize,
    /// Longest message (and frame) a client may send; a longer one closes the
    /// connection with 1009 before its payload is read.
    pub max_message_bytes: usize,
    /// Longest text field of a frame, in UTF-8 bytes.
    pub max_text_field_bytes: usize,
    /// Longest JSON object field of a frame (`solution`, `epoch_challenge`), as
    /// compact JSON.
    pub max_object_field_bytes: usize,
    /// Longest unique key of a solution (`partial_solution.nonce` as text), in
    /// bytes; a longer one is refused like any field over its limit.
    pub max_solution_key_bytes: usize,
    /// Data frames a connection may send per second, sustained; past that (and
    /// the burst), each frame is dropped with an error frame.
    pub frames_per_second: u32,
    /// Data frames a connection may send at once above the sustained rate. A
    /// flood (drops less than a second apart) is closed with 1008 once it has
    /// dropped this many frames or lasted two seconds.
    pub frame_burst: u32,
    /// Pings and pongs a connection may send per second (burst twice that),
    /// apart from its data frames: each ping costs the server a pong. A flood of
    /// them is closed with 1008 as for data frames.
    pub control_frames_per_second: u32,
    /// Seconds between the server's pings of each connection (0: none). A pong
    /// times the round trip the workers API shows; the first ping goes one to
    /// two intervals (at random) after the connection opens.
    pub ping_interval_seconds: u64,
    /// Error frames and refusals written to a connection per second (burst the
    /// same); past that they are counted in `eligo_error_frames_unsent_total`
    /// and not written, so a client cannot choose how much the server writes.
    pub error_frames_per_second: u32,
    /// Connections the kernel holds for the listener before eligo accepts them
    /// (capped by `net.core.somaxconn`). When every worker reconnects at once, a
    /// full queue shows as clients retrying their SYN after 1 s and 3 s.
    pub listen_backlog: u32,
}

impl Default for SocketConfig {
    fn default() -> Self {
        let fields = crate::protocol::FieldLimits::default();
        SocketConfig {
            read_buffer_bytes: 4096,
            write_buffer_bytes: 4096,
            max_message_bytes: 64 * 1024,
            max_text_field_bytes: fields.text_bytes,
            max_object_field_bytes: fields.object_bytes,
            max_solution_key_bytes: fields.key_bytes,
            // A fast prover sends tens of solutions a second; the load benchmark's
            // workers send ~250.
            frames_per_second: 1000,
            frame_burst: 2000,
            control_frames_per_second: 10,
            ping_interval_seconds: 30,
            error_frames_per_second: 10,
            listen_backlog: 65_535,
        }
    }
}

impl SocketConfig {
    /// The bounds on a frame's fields.
    pub fn fields(&self) -> crate::protocol::FieldLimits {
        crate::protocol::FieldLimits {
            text_bytes: self.max_text_field_bytes,
            object_bytes: self.max_object_field_bytes,
            key_bytes: self.max_solution_key_bytes,
        }
    }
}

/// Caps on one server's open connections; 0 is no cap. Over a cap, the upgrade
/// is answered 503 (server full) or 429 (this IP full) with the limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one client IP.
    pub max_per_ip: usize,
    /// Client IPs the per-IP cap does not apply to: your own TLS proxies and load
    /// testers, whose connections all come from one address.
    pub per_ip_exempt: Vec<std::net::IpAddr>,
    /// Leading bits of an IPv6 address that the per-IP limits count as one
    /// client (0 to 128): a single subscriber is usually handed a whole /64, and
    /// would otherwise have 2^64 addresses to spread over. IPv4 addresses are
    /// counted one by one. An exempt address exempts itself, not its prefix.
    #[serde(deserialize_with = "ipv6_prefix_len")]
    pub ipv6_prefix_len: u8,
    /// Sockets one client IP may open per second (burst the same); past that the
    /// socket is answered 429 before its request is read. 0 is no limit; the
    /// exempt IPs are exempt here too.
    pub attempts_per_ip_per_second: u32,
    /// Seconds a socket has, from its accept, to complete its TLS handshake and
    /// send its whole HTTP request; then it is dropped. Meanwhile it counts
    /// toward the caps.
    pub handshake_timeout_secs: u64,
    /// Connections from one IP refused as unauthorized (a wrong or missing token,
    /// a wrong challenge answer) within a minute before the IP is refused for
    /// `auth_block_secs`: 429 at the accept. 0 is no limit; exempt IPs are exempt.
    pub auth_failures_per_minute: u32,
    /// How long an IP over `auth_failures_per_minute` is refused.
    pub auth_block_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 100_000,
            max_per_ip: 1_000,
            per_ip_exempt: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
            ipv6_prefix_len: 64,
            // A pool behind one NAT address reconnects 200 rigs a second.
            attempts_per_ip_per_second: 200,
            handshake_timeout_secs: 10,
            auth_failures_per_minute: 10,
            auth_block_secs: 300,
        }
    }
}

/// A prefix length of an IPv6 address, refused past 128 when the file is read
/// rather than clamped in silence.
fn ipv6_prefix_len<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let len = u8::deserialize(deserializer)?;
    if len > 128 {
        return Err(serde::de::Error::custom(format!("ipv6_prefix_len is {len}; an IPv6 prefix is 0 to 128 bits")));
    }
    Ok(len)
}

/// A listener's TLS certificate: PEM files, reloaded when they change.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}
