//! `wss://` and `https://` on eligo's own listeners (no proxy), and a certificate
//! replaced on disk while it runs.

mod support;

use eligo::app::start_with;
use eligo::config::{Config, TlsConfig};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::backends::{Backends, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A new self-signed certificate for localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("a certificate");
    (cert.pem(), key_pair.serialize_pem())
}

/// Writes the pair as a certificate manager does: each file replaced at once.
fn install(dir: &Path, (cert, key): &(String, String)) {
    for (name, pem) in [("key.pem", key), ("cert.pem", cert)] {
        let staged = dir.join(format!(".{name}.new"));
        std::fs::write(&staged, pem).expect("write");
        std::fs::rename(&staged, dir.join(name)).expect("rename");
    }
}

/// A client that trusts only `cert`.
fn trusting(cert: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM")).expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls(addr: SocketAddr, client: &tokio_rustls::TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    client.connect(ServerName::try_from("localhost").expect("name"), tcp).await
}

async fn wss(addr: SocketAddr, client: &tokio_rustls::TlsConnector) -> Wss {
    let stream = tls(addr, client).await.expect("the TLS handshake");
    let (socket, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), stream)
        .await
        .expect("the WebSocket upgrade over TLS");
    socket
}

async fn send(socket: &mut Wss, value: Value) {
    socket.send(Message::text(value.to_string())).await.expect("send");
}

async fn recv(socket: &mut Wss, what: &str) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).expect("JSON"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

fn job(height: i64) -> Value {
    json!({ "epoch_challenge": { "e": height }, "proof_target": 1, "block_height": height })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_workers_and_operators_connect_over_tls_and_a_replaced_certificate_serves_without_a_restart() {
    let backends = Backends::new(Kind::Embedded).await;
    let dir = backends.dir().to_path_buf();
    let first = self_signed();
    install(&dir, &first);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::copy(support::plugin_path("seed-rules"), policies.join("seed-rules.wasm")).expect("copy");
    let certificate = TlsConfig { cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") };
    let mut config = Config::default();
    config.node.listen = ([127, 0, 0, 1], 0).into();
    config.worker.listen = ([127, 0, 0, 1], 0).into();
    config.admin.listen = Some(([127, 0, 0, 1], 0).into());
    config.node.tls = Some(certificate.clone());
    config.worker.tls = Some(certificate.clone());
    config.admin.tls = Some(certificate);
    config.plugins.dir = policies;
    let running = start_with(&config, backends.queue.clone(), backends.log.clone(), backends.store.clone())
        .await
        .expect("eligo starts with TLS");
    let (node_addr, worker_addr) = (running.node_addr.expect("node"), running.worker_addr.expect("worker"));
    let admin_addr = running.admin_addr.expect("admin");

    let old_client = trusting(&first.0);
    let mut worker = wss(worker_addr, &old_client).await;
    send(
        &mut worker,
        json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": "hw", "caption": "c" }),
    )
    .await;
    let mut node = wss(node_addr, &old_client).await;
    send(&mut node, job(10)).await;
    assert_eq!(recv(&mut worker, "the job over wss").await["epoch_challenge"], json!({ "e": 10 }));

    let mut admin = tls(admin_addr, &old_client).await.expect("https to the admin server");
    admin.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("request");
    let mut answer = String::new();
    admin.read_to_string(&mut answer).await.expect("response");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");

    let plain = tokio_tungstenite::connect_async(format!("ws://{worker_addr}/")).await;
    assert!(plain.is_err(), "a TLS listener does not speak plain WebSocket");

    // A new certificate: new clients get it, with no restart; open connections go on.
    let second = self_signed();
    install(&dir, &second);
    let new_client = trusting(&second.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tls(worker_addr, &new_client).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the replaced certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tls(worker_addr, &old_client).await.is_err(), "the old certificate is no longer served");
    send(&mut node, job(11)).await;
    assert_eq!(recv(&mut worker, "a job on a connection opened before").await["epoch_challenge"], json!({ "e": 11 }));

    running.stop().await;
    backends.finish().await;
}
