//! Reading a log topic for the whole process: one reader per topic feeds every
//! connection, reconnecting with backoff until shutdown.

use super::Backoff;
use crate::transport::{EventLog, Topic};
use futures::StreamExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Reads `topic` from its end and hands each message to `deliver` (the next
/// waits for it: messages are delivered in order), until
/// `shutdown`. `ready` fires once the first reader is in place, so a caller (a
/// test, or start-up) knows no later message can be missed.
pub async fn tail_forever<T: serde::de::DeserializeOwned, Fut>(
    log: Arc<dyn EventLog>,
    topic: Topic,
    shutdown: CancellationToken,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    mut deliver: impl FnMut(T) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = Backoff::default();
    let name = topic.name();
    while !shutdown.is_cancelled() {
        let mut tail = match log.tail(topic).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "cannot read the log; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let item = tokio::select! { _ = shutdown.cancelled() => return, item = tail.next() => item };
            match item {
                Some(Ok(bytes)) => match serde_json::from_slice::<T>(&bytes) {
                    Ok(event) => {
                        backoff.reset();
                        deliver(event).await;
                    }
                    Err(e) => tracing::warn!(topic = name, error = %e, "skipping an unreadable event"),
                },
                Some(Err(e)) => {
                    tracing::warn!(topic = name, error = %e, "log reader broke; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
    }
}
