//! A WebSocket client speaking the original protocol, as nodes and workers do.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// One client connection.
pub struct Client {
    socket: Socket,
}

/// What a flood got back.
#[derive(Debug)]
pub struct Flooded {
    /// Frames that went out before the server closed.
    pub sent: usize,
    /// What the server wrote meanwhile.
    pub frames: Vec<Value>,
    /// How it ended.
    pub end: Next,
}

/// What the server did next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame.
    Closed(u16, String),
    /// Nothing within the wait.
    Quiet,
}

impl Client {
    /// Connects to `ws://addr/`.
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        Self::try_connect(addr).await.expect("the server accepts WebSocket connections")
    }

    /// Connects with a receive buffer of a few KiB, as a peer on a slow link or
    /// one that stopped reading: what the server sends soon waits on it.
    pub async fn connect_slow(addr: std::net::SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        let (socket, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(tcp))
            .await
            .expect("the server accepts WebSocket connections");
        Client { socket }
    }

    /// Connects to `ws://addr/`, or says why not.
    pub async fn try_connect(addr: std::net::SocketAddr) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = connect_async(format!("ws://{addr}/")).await?;
        Ok(Client { socket })
    }

    /// Connects to `ws://addr/?query` with extra request headers; a refused
    /// upgrade is its HTTP status and body.
    pub async fn connect_with(
        addr: std::net::SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = if query.is_empty() { format!("ws://{addr}/") } else { format!("ws://{addr}/?{query}") };
        let mut request = url.into_client_request().expect("a valid request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        match connect_async(request).await {
            Ok((socket, _)) => Ok(Client { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Err((response.status().as_u16(), body.into_owned()))
            }
            Err(other) => panic!("expected an upgrade or an HTTP refusal, got {other}"),
        }
    }

    /// Connects to `ws://addr/` expecting the upgrade to be refused: its HTTP
    /// status and body.
    pub async fn refused(addr: std::net::SocketAddr) -> (u16, String) {
        match Self::attempt(addr).await {
            Err(refusal) => refusal,
            Ok(_) => panic!("expected an HTTP refusal, the connection was accepted"),
        }
    }

    /// Connects, or returns the status and body of the HTTP answer that refused
    /// the upgrade. Any other failure is a panic.
    pub async fn attempt(addr: std::net::SocketAddr) -> Result<Client, (u16, String)> {
        match connect_async(format!("ws://{addr}/")).await {
            Ok((socket, _)) => Ok(Client { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Err((response.status().as_u16(), body.into_owned()))
            }
            Err(other) => panic!("expected a connection or an HTTP refusal, got {other}"),
        }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text.to_string())).await.expect("send");
    }

    /// Sends one frame of any kind (a pong nobody asked for, say).
    pub async fn send_frame(&mut self, frame: Message) {
        self.socket.send(frame).await.expect("send");
    }

    /// Sends `frame` `count` times as fast as the socket takes it, reading what
    /// the server answers meanwhile, until the server closes the connection (or
    /// says nothing for 10 s once the frames are out).
    pub async fn flood(&mut self, frame: Message, count: usize) -> Flooded {
        self.flood_at(frame, count, None).await
    }

    /// [`flood`](Self::flood) at `per_second` frames a second (as fast as it
    /// goes when `None`), sent a millisecond's worth at a time.
    pub async fn flood_at(&mut self, frame: Message, count: usize, per_second: Option<u32>) -> Flooded {
        let (mut sink, mut stream) = (&mut self.socket).split();
        let sent = std::cell::Cell::new(0usize);
        let send = async {
            let started = tokio::time::Instant::now();
            for _ in 0..count {
                if let Some(rate) = per_second {
                    // Ahead of the rate: flush and wait for the clock to catch up.
                    let due = started + Duration::from_secs_f64(sent.get() as f64 / f64::from(rate));
                    if due > tokio::time::Instant::now() + Duration::from_millis(1) {
                        if sink.flush().await.is_err() {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                    }
                }
                if sink.feed(frame.clone()).await.is_err() {
                    break;
                }
                sent.set(sent.get() + 1);
                if sent.get().is_multiple_of(256) && sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.flush().await;
            std::future::pending::<()>().await
        };
        let receive = async {
            let mut frames = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Err(_) => return (frames, Next::Quiet),
                    Ok(None) | Ok(Some(Err(_))) => return (frames, Next::Closed(1006, String::new())),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        frames.push(serde_json::from_str(&t).expect("server frames are JSON"))
                    }
                    Ok(Some(Ok(Message::Close(Some(f))))) => {
                        return (frames, Next::Closed(u16::from(f.code), f.reason.to_string()))
                    }
                    Ok(Some(Ok(Message::Close(None)))) => return (frames, Next::Closed(1005, String::new())),
                    Ok(Some(Ok(_))) => {}
                }
            }
        };
        let (frames, end) = tokio::select! {
            _ = send => unreachable!("the sender never finishes"),
            answered = receive => answered,
        };
        Flooded { sent: sent.get(), frames, end }
    }

    /// Sends raw text that the server may refuse part-way (by closing).
    pub async fn send_text_refusable(&mut self, text: String) {
        let _ = self.socket.send(Message::text(text)).await;
    }

    /// The next frame or close within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        loop {
            match tokio::time::timeout(wait, self.socket.next()).await {
                Err(_) => return Next::Quiet,
                Ok(None) | Ok(Some(Err(_))) => return Next::Closed(1006, String::new()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Next::Frame(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return match frame {
                        Some(f) => Next::Closed(u16::from(f.code), f.reason.to_string()),
                        None => Next::Closed(1005, String::new()),
                    }
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame; panics if none comes within 10 s.
    pub async fn recv(&mut self, what: &str) -> Value {
        self.recv_within(what, Duration::from_secs(10)).await
    }

    /// The next frame; panics if none comes within `wait`.
    pub async fn recv_within(&mut self, what: &str, wait: Duration) -> Value {
        match self.next_within(wait).await {
            Next::Frame(v) => v,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// Sends `frame` with `"id": id` added.
    pub async fn send_with_id(&mut self, frame: &Value, id: &str) {
        let mut frame = frame.clone();
        frame["id"] = Value::from(id);
        self.send(&frame).await;
    }

    /// Sends a job or a solution with `id`; returns once the server has queued it,
    /// when its next frame must be the `accepted` ack.
    pub async fn send_queued(&mut self, frame: &Value, id: &str) {
        self.send_with_id(frame, id).await;
        let ack = self.recv("the ack").await;
        assert_eq!(ack, serde_json::json!({ "type": "ack", "id": id, "status": "accepted" }), "for {frame}");
    }

    /// Sends a solution with `id`; returns its verdict once the processor has
    /// judged it. Its next two frames must be its ack and its verdict (either
    /// first: the ack leaves when the queue confirms, the verdict when the
    /// processor is done, and a busy machine may hold the first back).
    pub async fn send_judged(&mut self, frame: &Value, id: &str) -> Value {
        self.send_with_id(frame, id).await;
        let (first, second) = (self.recv("the ack or the verdict").await, self.recv("the verdict or the ack").await);
        let (ack, verdict) = if first["type"] == "ack" { (first, second) } else { (second, first) };
        assert_eq!(ack, serde_json::json!({ "type": "ack", "id": id, "status": "accepted" }), "for {frame}");
        assert_eq!((&verdict["type"], &verdict["id"]), (&Value::from("verdict"), &Value::from(id)), "{verdict}");
        verdict
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
