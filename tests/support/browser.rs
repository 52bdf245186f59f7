//! Headless Chromium driven through the DevTools protocol (CDP) over its
//! WebSocket: enough to open a page, read its DOM and take a screenshot.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Where Chromium is: `$CHROMIUM`, else Debian's package.
pub fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(path.is_file(), "{} is missing: install Debian's chromium (scripts/setup does)", path.display());
    path
}

/// A running headless browser with one page attached.
pub struct Browser {
    child: Child,
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium headless with a `width`×`height` window and opens a blank page.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        let stderr = child.stderr.take().expect("stderr");
        // Chromium prints where its DevTools endpoint listens on stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium printed its DevTools address");
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("connecting to DevTools");
        let mut browser = Browser { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached =
            browser.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        browser.session = attached["sessionId"].as_str().expect("session id").to_string();
        browser.page("Page.enable", json!({})).await;
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        browser.page("Emulation.setDeviceMetricsOverride", metrics).await;
        browser
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session);
        }
        self.socket.send(Message::text(message.to_string())).await.expect("sending to DevTools");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"))
                .expect("DevTools closed")
                .expect("reading from DevTools");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method} failed: {}", answer["error"]);
                return answer["result"].clone();
            }
        }
    }

    /// Calls a browser-level method.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// Calls a method of the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session)).await
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates a JavaScript expression in the page; its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self.page("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }

    /// The text of the element `selector` (empty if absent).
    pub async fn text(&mut self, selector: &str) -> String {
        let expression = format!("(document.querySelector({selector:?}) || {{}}).innerText || ''");
        self.eval(&expression).await.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `selector` satisfies `done`; panics with the last text after `wait`.
    pub async fn wait_for_text(&mut self, selector: &str, wait: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let text = self.text(selector).await;
            if done(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector} never showed what was expected; it shows: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as it is shown.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.page("Page.captureScreenshot", json!({ "format": "png" })).await;
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("png data")).expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
