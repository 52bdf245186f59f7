//! A client of server-sent events, read as a browser's `EventSource` reads them.

use futures::StreamExt;
use std::time::Duration;

/// One event of a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty for the default, `message`).
    pub event: String,
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// `data:`, lines joined by `\n`.
    pub data: String,
}

/// An open stream.
pub struct SseStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
    /// Comment lines (keep-alives) read so far.
    pub comments: usize,
}

impl SseStream {
    /// Opens `url` with `Accept: text/event-stream` and `headers`; the response
    /// must be 200 with that content type.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseStream {
        let response = Self::request(url, headers).await;
        assert_eq!(response.status(), 200, "opening {url}: {:?}", response.text().await);
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(kind.starts_with("text/event-stream"), "content type {kind:?}");
        SseStream { body: response.bytes_stream().boxed(), buffer: String::new(), comments: 0 }
    }

    /// The response to a stream request, whatever it is.
    pub async fn request(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(url).header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the stream request is answered")
    }

    /// The next event within `wait`; `None` if the stream ended or nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    /// The next event, `None` once the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.trim_start()));
                    any = true;
                    match field {
                        "event" => event.event = value.to_string(),
                        "id" => event.id = Some(value.to_string()),
                        "data" => data.push(value.to_string()),
                        _ => {}
                    }
                }
                if any {
                    event.data = data.join("\n");
                    return Some(event);
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                _ => return None,
            }
        }
    }
}
